//! The lifecycle as a runtime drives it: retried ADD, DEL twice / without ADD / with the
//! namespace gone / with empty CNI_NETNS, CHECK after ADD and after drift, STATUS, GC.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use meshcap_tests::chain::Attachment;
use meshcap_tests::flows::{
    run_flow, EXCLUDE_INTERFACES, EXCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_PORTS,
    INTERCEPTION_MODE,
};
use meshcap_tests::node::Node;

#[test]
fn retried_add_leaves_one_copy_of_each_rule() {
    privileged!("retried_add_leaves_one_copy_of_each_rule");
    for mode in crate::modes() {
        let node = Node::new(&format!("idem-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        for (name, ann) in [
            ("default", crate::meshed(&[])),
            ("tproxy", crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")])),
        ] {
            let pod = node.pod(name, &chain, ann).expect("ADD");
            let first = pod.state().unwrap();
            assert!(first.has_meshcap(), "{}: nothing installed", mode.name);
            for _ in 0..2 {
                pod.meshcap("ADD")
                    .unwrap_or_else(|e| panic!("{}: retried ADD: {e}", mode.name));
            }
            let after = pod.state().unwrap();
            assert!(
                first == after,
                "{} {name}: retried ADD changed the rules:\n{}",
                mode.name,
                first.diff(&after)
            );
            let dups = after.duplicate_rules();
            assert!(
                dups.is_empty(),
                "{} {name}: duplicated rules:\n{}",
                mode.name,
                dups.join("\n")
            );
            let f = crate::flow(if name == "tproxy" {
                "tproxy-in-v4"
            } else {
                "out-v4"
            });
            assert_eq!(
                run_flow(&node, &pod, &f, "idem").unwrap(),
                f.expected(),
                "{}: {}",
                mode.name,
                f.name
            );
        }
    }
}

#[test]
fn del_twice_without_add_and_after_netns_gone() {
    privileged!("del_twice_without_add_and_after_netns_gone");
    for mode in crate::modes() {
        let node = Node::new(&format!("del-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        let m = &mode.name;

        // DEL twice.
        let mut pod = node.pod("twice", &chain, crate::meshed(&[])).expect("ADD");
        pod.del().unwrap_or_else(|e| panic!("{m}: first DEL: {e}"));
        pod.del().unwrap_or_else(|e| panic!("{m}: second DEL: {e}"));
        assert!(
            pod.state().unwrap().meshcap_leftovers().is_empty(),
            "{m}: state left after DEL"
        );

        // DEL without ADD (meshcap alone and the whole chain).
        let mut fresh = node
            .unattached_pod("noadd", &chain, crate::meshed(&[]))
            .unwrap();
        fresh
            .meshcap("DEL")
            .unwrap_or_else(|e| panic!("{m}: meshcap DEL without ADD: {e}"));
        fresh
            .del()
            .unwrap_or_else(|e| panic!("{m}: chain DEL without ADD: {e}"));

        // DEL with the namespace gone.
        let mut gone = node
            .pod(
                "gone",
                &chain,
                crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
            )
            .expect("ADD");
        gone.stop_servers();
        meshcap_tests::netns::run_checked(std::process::Command::new("ip").args([
            "netns",
            "delete",
            gone.ns.name(),
        ]))
        .unwrap();
        assert!(!gone.ns.path().exists());
        gone.meshcap("DEL")
            .unwrap_or_else(|e| panic!("{m}: meshcap DEL with netns gone: {e}"));
        gone.del()
            .unwrap_or_else(|e| panic!("{m}: chain DEL with netns gone: {e}"));

        // DEL with empty CNI_NETNS (containerd, once the sandbox is gone).
        let empty = node.pod("empty", &chain, crate::meshed(&[])).expect("ADD");
        let mut att: Attachment = empty.att.clone();
        att.netns = PathBuf::new();
        let prev = chain.cached_result(&empty.att);
        chain
            .invoke(empty.meshcap_index(), "DEL", &att, prev.as_ref())
            .unwrap_or_else(|e| panic!("{m}: meshcap DEL with empty CNI_NETNS: {e}"));
        chain
            .invoke(empty.meshcap_index(), "DEL", &att, None)
            .unwrap_or_else(|e| {
                panic!("{m}: meshcap DEL with empty CNI_NETNS, no prevResult: {e}")
            });
    }
}

#[test]
fn check_passes_after_add_and_fails_after_drift() {
    privileged!("check_passes_after_add_and_fails_after_drift");
    for mode in crate::modes() {
        let node = Node::new(&format!("check-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        let m = &mode.name;
        for (name, ann) in [
            ("default", crate::meshed(&[])),
            ("tproxy", crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")])),
            // Values Istio accepts that are stored as something else: port 0, an octal port
            // (8), host bits (10.0.0.0/8), a name with spaces around it.
            (
                "spellings",
                crate::meshed(&[
                    (EXCLUDE_OUTBOUND_PORTS, "0, 010"),
                    (EXCLUDE_OUTBOUND_IP_RANGES, "10.1.2.3/8"),
                    (EXCLUDE_INTERFACES, " net1 "),
                ]),
            ),
        ] {
            let pod = node.pod(name, &chain, ann).expect("ADD");
            pod.meshcap("CHECK")
                .unwrap_or_else(|e| panic!("{m} {name}: meshcap CHECK right after ADD: {e}"));
            pod.check()
                .unwrap_or_else(|e| panic!("{m} {name}: chain CHECK right after ADD: {e}"));
            // Drift: everything netfilter holds in the pod vanishes.
            let _ = pod.ns.exec("nft", &["flush", "ruleset"]);
            for bin in ["iptables-legacy", "ip6tables-legacy"] {
                for table in ["nat", "mangle", "raw"] {
                    let _ = pod.ns.exec(bin, &["-t", table, "-F"]);
                }
            }
            let err = pod.meshcap("CHECK").expect_err(&format!(
                "{m} {name}: CHECK passed after rules were flushed"
            ));
            assert!(
                err.code().is_some(),
                "{m} {name}: CHECK failure is not CNI error JSON: {err}"
            );
        }
        // Non-meshed pods: CHECK has nothing to verify and passes.
        let pod = node
            .pod("unmeshed", &chain, Default::default())
            .expect("ADD");
        pod.meshcap("CHECK")
            .unwrap_or_else(|e| panic!("{m}: CHECK of an unmeshed pod: {e}"));
    }
}

#[test]
fn status_and_gc_succeed() {
    privileged!("status_and_gc_succeed");
    for mode in crate::modes() {
        let node = Node::new(&format!("status-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        let m = &mode.name;
        let i = chain.index_of("meshcap-cni").unwrap();
        chain
            .status(i)
            .unwrap_or_else(|e| panic!("{m}: STATUS: {e}"));
        let keep = node.pod("keep", &chain, crate::meshed(&[])).expect("ADD");
        let drop_me = node.pod("drop", &chain, crate::meshed(&[])).expect("ADD");
        chain
            .gc(i, std::slice::from_ref(&keep.att))
            .unwrap_or_else(|e| panic!("{m}: GC: {e}"));
        chain
            .gc(i, &[])
            .unwrap_or_else(|e| panic!("{m}: GC with nothing valid: {e}"));
        // GC removes host-side state only; the pods' rules stay and still check out.
        keep.meshcap("CHECK")
            .unwrap_or_else(|e| panic!("{m}: CHECK after GC: {e}"));
        drop(drop_me);
        chain
            .status(i)
            .unwrap_or_else(|e| panic!("{m}: STATUS after GC: {e}"));
    }
}

/// Where the plugin keeps xtables templates (the dataplane's run dir).
const TEMPLATES: &str = "/run/meshcap/templates/";

/// iptables mode writes a fresh pod's rules from a template when this node has seen the same
/// restore before (crates/meshcap-nft/src/replay.rs): the second pod of each kind gets exactly
/// the first one's netfilter state, its capture works, and the plugin's debug log says where
/// its rules came from.
#[test]
fn iptables_pods_of_a_known_ruleset_are_written_from_a_template() {
    privileged!("iptables_pods_of_a_known_ruleset_are_written_from_a_template");
    let node = Node::new("tmpl").expect("node");
    let log = node.env.scratch.path().join("plugin.log");
    let chain = node.chain(&serde_json::json!({
        "mode": "iptables",
        "log_level": "debug",
        "log_file": log,
    }));
    for (name, ann, flow) in [
        ("default", crate::meshed(&[]), "out-v4"),
        (
            "tproxy",
            crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
            "tproxy-in-v4",
        ),
    ] {
        let first = node
            .pod(&format!("{name}-a"), &chain, ann.clone())
            .expect("first ADD");
        let seen = std::fs::read_to_string(&log).unwrap_or_default().len();
        // Every stored template made old: the one the second pod replays must be marked used,
        // or the store's bound would evict it first.
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        for entry in std::fs::read_dir(TEMPLATES).expect("the first ADD kept a template") {
            let path = entry.expect("template entry").path();
            if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                let _ = file.set_modified(day_ago);
            }
        }
        let second = node
            .pod(&format!("{name}-b"), &chain, ann)
            .expect("second ADD");
        let text = std::fs::read_to_string(&log).expect("plugin log");
        let replayed = text[seen..]
            .lines()
            .find(|l| l.contains("xtables rules written from templates"))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: the second pod's rules did not come from a template:\n{}",
                    &text[seen..]
                )
            });
        let files: Vec<&str> = replayed
            .split(['"', '[', ']', ','])
            .filter(|w| w.starts_with(TEMPLATES))
            .collect();
        assert!(
            !files.is_empty(),
            "{name}: no template named in {replayed:?}"
        );
        for file in files {
            let used = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
            assert!(
                used > day_ago + Duration::from_secs(3600),
                "{name}: {file} was replayed but not marked used"
            );
        }
        let (a, b) = (first.state().unwrap(), second.state().unwrap());
        assert!(a.has_meshcap(), "{name}: nothing installed");
        assert!(
            a == b,
            "{name}: template and restore differ:\n{}",
            a.diff(&b)
        );
        let f = crate::flow(flow);
        assert_eq!(
            run_flow(&node, &second, &f, "tmpl").unwrap(),
            f.expected(),
            "{name}: {}",
            f.name
        );
    }
}

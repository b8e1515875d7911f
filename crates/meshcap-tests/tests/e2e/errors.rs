//! Errors are CNI error JSON with the right code, and a failed ADD changes nothing.

use std::collections::BTreeMap;

use meshcap_tests::chain::{parse_output, Chain, PluginError};
use meshcap_tests::flows::*;
use meshcap_tests::node::Node;
use serde_json::json;

/// Invalid values of model annotations, each of which must fail ADD with code 7 naming it.
fn invalid_annotations() -> Vec<(&'static str, &'static str)> {
    vec![
        (INTERCEPTION_MODE, "BOGUS"),
        (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
        (EXCLUDE_OUTBOUND_IP_RANGES, "not-a-cidr"),
        (INCLUDE_INBOUND_PORTS, "80,http"),
        (EXCLUDE_INBOUND_PORTS, "70000"),
        (INCLUDE_OUTBOUND_PORTS, "-1"),
        (EXCLUDE_OUTBOUND_PORTS, "80;81"),
        (EXCLUDE_INTERFACES, "bad name!"),
        (
            PROXY_CONFIG,
            r#"{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"maybe"}}"#,
        ),
        (
            PROXY_CONFIG,
            r#"{"proxyMetadata":{"INVALID_DROP":"sometimes"}}"#,
        ),
        (
            PROXY_CONFIG,
            r#"{"proxyMetadata":{"ISTIO_DUAL_STACK":"both"}}"#,
        ),
        ("status.sidecar.istio.io/port", "health"),
    ]
}

/// Inputs of Linkerd and Kuma pods their own CNI plugins refuse (a failed ADD there too), each
/// with the annotation the error must name.
fn invalid_mesh_annotations() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let linkerd = |key: &str, value: &str| {
        BTreeMap::from([
            (LINKERD_PROXY_VERSION.to_string(), "stable-2.14".to_string()),
            (key.to_string(), value.to_string()),
        ])
    };
    let kuma = |config: &str| {
        BTreeMap::from([
            (KUMA_INJECTED.to_string(), "true".to_string()),
            (KUMA_TPROXY_CONFIG.to_string(), config.to_string()),
        ])
    };
    vec![
        (SKIP_SUBNETS, linkerd(SKIP_SUBNETS, "not-a-cidr")),
        // linkerd-cni always writes IPv4 rules, where iptables refuses an IPv6 subnet.
        (SKIP_SUBNETS, linkerd(SKIP_SUBNETS, "fd00::/8")),
        (PROXY_UID_LINKERD, linkerd(PROXY_UID_LINKERD, "abc")),
        (KUMA_TPROXY_CONFIG, kuma("ipFamilyMode: both\n")),
        (
            KUMA_TPROXY_CONFIG,
            kuma("redirect:\n  outbound:\n    excludePortsForUIDs: [\"tcp:80:*\"]\n"),
        ),
        // kuma-cni validates a dry run's config before it decides to install nothing.
        (
            KUMA_TPROXY_CONFIG,
            kuma("dryRun: true\nipFamilyMode: both\n"),
        ),
    ]
}

const SKIP_SUBNETS: &str = "config.linkerd.io/skip-subnets";
const PROXY_UID_LINKERD: &str = "config.linkerd.io/proxy-uid";

#[test]
fn invalid_annotation_fails_add_with_code_7_and_changes_nothing() {
    privileged!("invalid_annotation_fails_add_with_code_7_and_changes_nothing");
    for mode in crate::modes() {
        let node = Node::new(&format!("badann-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        let istio = invalid_annotations()
            .into_iter()
            .map(|(key, value)| (key, crate::meshed(&[(key, value)])));
        for (key, annotations) in istio.chain(invalid_mesh_annotations()) {
            let value = annotations[key].clone();
            let mut pod = node.unattached_pod("bad", &chain, annotations).unwrap();
            let before = pod.state().unwrap();
            let err = pod
                .add()
                .expect_err(&format!("{}: ADD accepted {key}={value}", mode.name));
            let cni = err.cni().unwrap_or_else(|| {
                panic!("{}: {key}={value}: not CNI error JSON: {err}", mode.name)
            });
            assert_eq!(cni.code, 7, "{}: {key}={value}: {err}", mode.name);
            assert!(
                format!("{} {}", cni.msg, cni.details).contains(key),
                "{}: error for {key}={value} does not name the annotation: {err}",
                mode.name
            );
            let after = pod.state().unwrap();
            assert!(
                before == after,
                "{}: failed ADD ({key}) changed the namespace:\n{}",
                mode.name,
                before.diff(&after)
            );
            // The runtime DELs after a failed ADD; that must work too.
            pod.added = true;
            pod.del()
                .unwrap_or_else(|e| panic!("{}: DEL after failed ADD: {e}", mode.name));
        }
    }
}

fn run_raw(
    chain: &Chain,
    vars: &[(&str, &str)],
    stdin: &str,
) -> Result<Option<serde_json::Value>, PluginError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = chain.run_plugin("meshcap-cni", "raw", &vars, stdin.as_bytes())?;
    parse_output("meshcap-cni", "raw", out)
}

#[test]
fn bad_config_env_and_version_errors() {
    privileged!("bad_config_env_and_version_errors");
    let node = Node::new("badconf").expect("node");
    let chain = node.chain(&json!({}));
    let pod = node.unattached_pod("p", &chain, BTreeMap::new()).unwrap();
    let path = pod.ns.path().to_string_lossy().into_owned();
    let env = |cmd: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_NETNS", path.clone()),
            ("CNI_IFNAME", "eth0".into()),
        ]
    };
    let call = |vars: Vec<(&'static str, String)>, stdin: &str| {
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_raw(&chain, &refs, stdin)
    };
    let good = |extra: serde_json::Value| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "meshcap-e2e", "type": "meshcap-cni"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    };
    let code = |r: Result<Option<serde_json::Value>, PluginError>, what: &str| -> u64 {
        match r {
            Ok(v) => panic!("{what}: succeeded: {v:?}"),
            Err(e) => e
                .code()
                .unwrap_or_else(|| panic!("{what}: no CNI error JSON: {e}")),
        }
    };

    assert_eq!(
        code(call(env("ADD"), "this is not json"), "undecodable config"),
        6
    );
    let c = code(
        call(env("ADD"), &good(json!({"mode": "bogus"}))),
        "mode bogus",
    );
    assert!(c == 6 || c == 7, "mode bogus: code {c}, want 6 or 7");
    let c = code(
        call(env("ADD"), &good(json!({"selection": "some"}))),
        "selection some",
    );
    assert!(c == 6 || c == 7, "selection some: code {c}, want 6 or 7");
    assert_eq!(
        code(
            call(env("ADD"), &good(json!({"cniVersion": "9.9.9"}))),
            "cniVersion 9.9.9"
        ),
        1
    );
    let mut no_netns = env("ADD");
    no_netns.retain(|(k, _)| *k != "CNI_NETNS");
    assert_eq!(
        code(call(no_netns, &good(json!({}))), "ADD without CNI_NETNS"),
        4
    );
    let mut no_cmd = env("ADD");
    no_cmd.retain(|(k, _)| *k != "CNI_COMMAND");
    assert_eq!(code(call(no_cmd, &good(json!({}))), "no CNI_COMMAND"), 4);

    let v = call(vec![("CNI_COMMAND", "VERSION".into())], &good(json!({})))
        .expect("VERSION")
        .expect("VERSION prints a result");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&want), "VERSION lacks {want}: {v}");
    }
    // The namespace of every failed call above is untouched.
    assert!(pod.state().unwrap().meshcap_leftovers().is_empty());
}

#[test]
fn add_check_del_in_every_cni_version() {
    privileged!("add_check_del_in_every_cni_version");
    let node = Node::new("versions").expect("node");
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        // Debian's reference plugins stop at 1.0.0: run `bridge` at the highest version it
        // speaks and hand its result to meshcap in `version`, as a mixed-version node would.
        let bridge_version = if version == "1.1.0" { "1.0.0" } else { version };
        let env = node.env.clone();
        let bridge = std::sync::Arc::new(Chain::new(
            env.clone(),
            meshcap_tests::node::NETWORK_NAME,
            bridge_version,
            vec![Chain::bridge_plugin(&env)],
        ));
        let meshcap = Chain::new(
            env.clone(),
            meshcap_tests::node::NETWORK_NAME,
            version,
            vec![Chain::meshcap_plugin(&env, &json!({}))],
        );
        let mut pod = node
            .unattached_pod("v", &bridge, crate::meshed(&[]))
            .unwrap();
        let mut prev = pod
            .add()
            .unwrap_or_else(|e| panic!("bridge ADD {bridge_version}: {e}"));
        prev["cniVersion"] = json!(version);
        let out = meshcap
            .invoke(0, "ADD", &pod.att, Some(&prev))
            .unwrap_or_else(|e| panic!("ADD with cniVersion {version}: {e}"))
            .unwrap_or_else(|| panic!("ADD with cniVersion {version} printed no result"));
        assert_eq!(out["cniVersion"], json!(version), "result version: {out}");
        assert!(
            pod.state().unwrap().has_meshcap(),
            "cniVersion {version}: nothing installed"
        );
        if version != "0.3.0" && version != "0.3.1" {
            meshcap
                .invoke(0, "CHECK", &pod.att, Some(&out))
                .unwrap_or_else(|e| panic!("CHECK with cniVersion {version}: {e}"));
        }
        meshcap
            .invoke(0, "DEL", &pod.att, Some(&out))
            .unwrap_or_else(|e| panic!("DEL with cniVersion {version}: {e}"));
        assert!(
            pod.state().unwrap().meshcap_leftovers().is_empty(),
            "cniVersion {version}: left state"
        );
        pod.del()
            .unwrap_or_else(|e| panic!("bridge DEL {bridge_version}: {e}"));
    }
}

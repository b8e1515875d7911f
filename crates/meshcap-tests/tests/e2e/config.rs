//! Plugin configuration as docs/CONFIGURATION.md describes it: `selection`, `exclude_namespaces`, fail-closed
//! annotations for Kubernetes pods, and iptables-flavour detection (legacy only where legacy
//! rules already exist).

use std::collections::BTreeMap;
use std::sync::Arc;

use meshcap_tests::chain::Chain;
use meshcap_tests::flows::run_flow;
use meshcap_tests::node::Node;
use serde_json::json;

/// `mode`'s meshcap config with `extra` merged in.
fn with(mode: &meshcap_tests::compare::Mode, extra: serde_json::Value) -> serde_json::Value {
    let mut c = mode.meshcap.clone();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn selection_all_captures_pods_without_sidecar_annotations() {
    privileged!("selection_all_captures_pods_without_sidecar_annotations");
    for mode in crate::modes() {
        let node = Node::new(&format!("selall-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&with(&mode, json!({"selection": "all"})));
        let pod = node.pod("plain", &chain, BTreeMap::new()).expect("ADD");
        for name in ["out-v4", "out-v6", "in-v4", "proxy-out-v4"] {
            let f = crate::flow(name);
            let got = run_flow(&node, &pod, &f, "selall").unwrap();
            assert_eq!(
                got,
                f.expected(),
                "{}: selection all, flow {name}",
                mode.name
            );
        }
    }
}

#[test]
fn excluded_namespaces_are_left_alone() {
    privileged!("excluded_namespaces_are_left_alone");
    for mode in crate::modes() {
        let node = Node::new(&format!("exns-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&with(&mode, json!({"exclude_namespaces": ["kube-system"]})));
        let mut pod = node
            .unattached_pod("sys", &chain, crate::meshed(&[]))
            .unwrap();
        pod.att.k8s_namespace = "kube-system".into();
        pod.add()
            .unwrap_or_else(|e| panic!("{}: ADD in kube-system: {e}", mode.name));
        pod.start_servers().unwrap();
        assert!(
            pod.state().unwrap().meshcap_leftovers().is_empty(),
            "{}: rules in an excluded namespace",
            mode.name
        );
        let f = crate::uncaptured("out-v4");
        assert_eq!(
            run_flow(&node, &pod, &f, "exns").unwrap(),
            f.expected(),
            "{}",
            mode.name
        );
    }
}

#[test]
fn kubernetes_pod_without_annotations_fails_closed() {
    privileged!("kubernetes_pod_without_annotations_fails_closed");
    for mode in crate::modes() {
        let node = Node::new(&format!("closed-{}", crate::tag(&mode))).expect("node");
        // No annotations capability: the runtime hands none over, and the API is unreachable.
        let mut meshcap = Chain::meshcap_plugin(
            &node.env,
            &with(
                &mode,
                json!({"kubernetes": {"kubeconfig": "/nonexistent/meshcap-e2e-kubeconfig"}}),
            ),
        );
        meshcap.as_object_mut().unwrap().remove("capabilities");
        let plugins = vec![Chain::bridge_plugin(&node.env), meshcap];
        let chain = Arc::new(Chain::new(
            node.env.clone(),
            meshcap_tests::node::NETWORK_NAME,
            "1.0.0",
            plugins,
        ));
        let mut pod = node
            .unattached_pod("k8s", &chain, crate::meshed(&[]))
            .unwrap();
        let before = pod.state().unwrap();
        let started = std::time::Instant::now();
        let err = pod.add().expect_err(&format!(
            "{}: ADD without obtainable annotations succeeded",
            mode.name
        ));
        assert!(
            err.code().is_some(),
            "{}: not CNI error JSON: {err}",
            mode.name
        );
        let after = pod.state().unwrap();
        assert!(
            before == after,
            "{}: failed ADD changed the namespace:\n{}",
            mode.name,
            before.diff(&after)
        );
        eprintln!(
            "{}: fail-closed ADD took {:?}: {err}",
            mode.name,
            started.elapsed()
        );
        pod.added = true;
        pod.del()
            .unwrap_or_else(|e| panic!("{}: DEL after failed ADD: {e}", mode.name));
    }
}

#[test]
fn iptables_mode_uses_legacy_where_legacy_rules_exist() {
    privileged!("iptables_mode_uses_legacy_where_legacy_rules_exist");
    let Some(mode) = crate::modes().into_iter().find(|m| m.name == "iptables") else {
        return;
    };
    let node = Node::new("legacy").expect("node");
    let chain = node.chain(&mode.meshcap);
    let mut pod = node
        .unattached_pod("legacy", &chain, crate::meshed(&[]))
        .unwrap();
    // Something else (an old istio-init, a CNI) already uses legacy xtables in this namespace.
    pod.ns
        .exec("iptables-legacy", &["-t", "nat", "-N", "OTHER_COMPONENT"])
        .unwrap();
    pod.ns
        .exec("ip6tables-legacy", &["-t", "nat", "-N", "OTHER_COMPONENT"])
        .unwrap();
    pod.add().expect("ADD");
    pod.start_servers().unwrap();
    let state = pod.state().unwrap();
    let section = |cmd: &str| {
        state
            .sections
            .iter()
            .find(|(c, _)| c == cmd)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    assert!(
        section("iptables-legacy-save").contains("MESHCAP_"),
        "rules not in legacy xtables:\n{state}"
    );
    assert!(
        !section("iptables-nft-save").contains("MESHCAP_"),
        "rules in nft xtables too:\n{state}"
    );
    for name in ["out-v4", "in-v4", "out-v6"] {
        let f = crate::flow(name);
        assert_eq!(
            run_flow(&node, &pod, &f, "legacy").unwrap(),
            f.expected(),
            "legacy: flow {name}"
        );
    }
    pod.meshcap("CHECK").expect("CHECK in legacy mode");
    pod.del().expect("DEL");
    let left = pod.state().unwrap().meshcap_leftovers();
    assert!(left.is_empty(), "legacy: left {left:?}");
    assert!(
        pod.state()
            .unwrap()
            .sections
            .iter()
            .any(|(c, t)| c == "iptables-legacy-save" && t.contains("OTHER_COMPONENT")),
        "DEL removed another component's chain"
    );
}

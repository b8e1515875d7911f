//! ADD/DEL cycles: captured after ADD, uncaptured and nothing of meshcap's left after DEL,
//! captured again after the next ADD.

use meshcap_tests::flows::{run_flow, Flow, DNS_CAPTURE_CONFIG, INTERCEPTION_MODE, PROXY_CONFIG};
use meshcap_tests::node::{Node, Pod};

fn expect_flows(node: &Node, pod: &Pod, flows: &[Flow], when: &str) {
    for f in flows {
        let got = run_flow(node, pod, f, "cycle").expect("run flow");
        assert_eq!(
            got,
            f.expected(),
            "{when}: flow {} in pod {}",
            f.name,
            pod.name
        );
    }
}

fn assert_clean(pod: &Pod, when: &str) {
    let state = pod.state().expect("snapshot");
    let left = state.meshcap_leftovers();
    assert!(
        left.is_empty(),
        "{when}: meshcap state left in pod {}:\n{}",
        pod.name,
        left.join("\n")
    );
}

#[test]
fn del_add_cycles() {
    privileged!("del_add_cycles");
    for mode in crate::modes() {
        let node = Node::new(&format!("cycle-{}", crate::tag(&mode))).expect("node");
        let chain = node.chain(&mode.meshcap);
        let specs = [
            (
                "default",
                crate::meshed(&[]),
                vec!["out-v4", "out-v6", "in-v4", "in-v6"],
            ),
            (
                "tproxy",
                crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
                vec!["tproxy-in-v4", "tproxy-in-v6", "tproxy-out-v4"],
            ),
            (
                "dns",
                crate::meshed(&[(PROXY_CONFIG, DNS_CAPTURE_CONFIG)]),
                vec!["dns-udp-v4", "dns-tcp-v6"],
            ),
        ];
        for (name, annotations, flow_names) in specs {
            let mut pod = node.pod(name, &chain, annotations).expect("ADD");
            let captured: Vec<Flow> = flow_names.iter().map(|n| crate::flow(n)).collect();
            let direct: Vec<Flow> = flow_names.iter().map(|n| crate::uncaptured(n)).collect();
            for round in 1..=2 {
                let when = format!("{} round {round}", mode.name);
                expect_flows(&node, &pod, &captured, &format!("{when} after ADD"));
                assert!(
                    pod.state().unwrap().has_meshcap(),
                    "{when}: nothing installed after ADD"
                );
                // The first step of a runtime's DEL: meshcap alone, the network still up.
                pod.meshcap("DEL")
                    .unwrap_or_else(|e| panic!("{when}: meshcap DEL: {e}"));
                expect_flows(&node, &pod, &direct, &format!("{when} after DEL"));
                assert_clean(&pod, &format!("{when} after DEL"));
                // Then the rest of the chain (meshcap's DEL runs a second time here).
                pod.del()
                    .unwrap_or_else(|e| panic!("{when}: chain DEL: {e}"));
                assert_clean(&pod, &format!("{when} after chain DEL"));
                pod.add().unwrap_or_else(|e| panic!("{when}: re-ADD: {e}"));
            }
            expect_flows(
                &node,
                &pod,
                &captured,
                &format!("{} after last ADD", mode.name),
            );
        }
    }
}

//! Many ADDs at once on one node, as the kubelet starts pods in parallel.

use std::sync::Arc;

use meshcap_tests::flows::INTERCEPTION_MODE;
use meshcap_tests::node::{Node, Pod};

const PODS: usize = 16;

#[test]
fn sixteen_parallel_adds_and_dels() {
    privileged!("sixteen_parallel_adds_and_dels");
    for mode in crate::modes() {
        let node = Arc::new(Node::new(&format!("par-{}", crate::tag(&mode))).expect("node"));
        let chain = node.chain(&mode.meshcap);
        let m = mode.name.clone();
        let pods: Vec<Pod> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PODS)
                .map(|i| {
                    let (node, chain) = (node.clone(), chain.clone());
                    s.spawn(move || {
                        let ann = if i % 2 == 0 {
                            crate::meshed(&[])
                        } else {
                            crate::meshed(&[(INTERCEPTION_MODE, "TPROXY")])
                        };
                        let mut pod = node.unattached_pod(&format!("p{i}"), &chain, ann).unwrap();
                        pod.add().map(|_| pod)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("parallel ADD: {e}"))
                })
                .collect()
        });
        for pod in &pods {
            let state = pod.state().unwrap();
            assert!(state.has_meshcap(), "{m}: pod {} has no rules", pod.name);
            assert!(
                state.duplicate_rules().is_empty(),
                "{m}: pod {} duplicates: {:?}",
                pod.name,
                state.duplicate_rules()
            );
            pod.meshcap("CHECK")
                .unwrap_or_else(|e| panic!("{m}: CHECK pod {}: {e}", pod.name));
        }
        // A pod's rules do not depend on which ADD ran first: same annotations, same rules.
        let (even, odd) = (pods[0].state().unwrap(), pods[1].state().unwrap());
        for (i, pod) in pods.iter().enumerate() {
            let want = if i % 2 == 0 { &even } else { &odd };
            let got = pod.state().unwrap();
            let (want, got) = (normalize(want, &pods[i % 2]), normalize(&got, pod));
            assert!(
                want == got,
                "{m}: pod {} differs from pod {}:\n{got}\nvs\n{want}",
                pod.name,
                pods[i % 2].name
            );
        }
        std::thread::scope(|s| {
            for mut pod in pods {
                s.spawn(move || {
                    pod.del()
                        .unwrap_or_else(|e| panic!("parallel DEL {}: {e}", pod.name));
                    let left = pod.state().unwrap().meshcap_leftovers();
                    assert!(left.is_empty(), "pod {} left {left:?}", pod.name);
                });
            }
        });
    }
}

/// A snapshot with the pod's own addresses replaced, so pods can be compared.
fn normalize(state: &meshcap_tests::state::NetfilterState, pod: &Pod) -> String {
    let mut s = state.to_string();
    if let Some(a) = pod.v4 {
        s = s.replace(&a.to_string(), "POD4");
    }
    if let Some(a) = pod.v6 {
        s = s.replace(&a.to_string(), "POD6");
    }
    s
}

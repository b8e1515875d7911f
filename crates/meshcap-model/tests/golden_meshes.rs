//! Golden tests of the model features Linkerd and Kuma pods need (chain prefix, no passthrough
//! or hairpin, TCP-only port exclusions, port ranges, inbound source exclusions, outbound
//! bypasses, uid/port exclusions, UDP-only DNS), through the mesh front ends, in both
//! renderers: tests/golden/meshes/CASE.{v4,v6}.{rules,nft}.
//! Regenerate after an intended change with `MESHCAP_UPDATE_GOLDEN=1 cargo test -p meshcap-model`.

mod cases;

use std::path::PathBuf;

use meshcap_model::mesh::{kuma, linkerd};
use meshcap_model::{Annotations, RedirectModel};

use meshcap_model::annotations::from_pairs as ann;

const KUMA_ALL: &str = "kumaDPUser: \"5678\"\nredirect:\n  dns:\n    enabled: true\n    port: 15053\n    captureAll: true\n  inbound:\n    excludePorts: [4444]\n    excludePortsForIPs: [\"192.168.0.1,fd00::1\"]\n  outbound:\n    excludePorts: [6]\n    excludePortsForUIDs: [\"tcp:53,3000-5000:106-107\"]\n    excludePortsForIPs: [\"10.0.0.1,fd00::/8\"]\ndropInvalidPackets: true\n";
const KUMA_RESOLV: &str = "kumaDPUser: \"5678\"\nredirect:\n  dns:\n    enabled: true\n    captureAll: false\n    resolvConfigPath: /test/resolv.conf\n  outbound:\n    enabled: false\n  inbound:\n    includePorts: [8080]\n";

fn cases() -> Vec<(&'static str, &'static str, RedirectModel)> {
    let mut w = Vec::new();
    let node = linkerd::LinkerdNode::default();
    let v6 = linkerd::LinkerdNode {
        ipv6: true,
        ports_to_redirect: vec![8080, 9090],
        ..linkerd::LinkerdNode::default()
    };
    let resolv = |_: &str| Ok("nameserver 10.96.0.10\nnameserver fd00::10\n".to_string());
    let kuma_ann = |yaml: &str| {
        ann(&[
            (kuma::SIDECAR_INJECTED, "true"),
            (kuma::TPROXY_CONFIG, yaml),
        ])
    };
    vec![
        (
            "linkerd_default",
            "a Linkerd pod with the linkerd2-cni chart's defaults",
            linkerd::model(
                &Annotations::new(),
                &linkerd::PodSettings::resolve(&node, None, None),
                &mut w,
            )
            .unwrap(),
        ),
        (
            "linkerd_skips_ipv6",
            "Linkerd skip annotations, a gid, redirect-listed inbound ports and IPv6 rules (no \
             skip-subnets: with IPv6 on, linkerd-cni fails any, each family's iptables refusing \
             the other's)",
            linkerd::model(
                &ann(&[
                    (linkerd::SKIP_INBOUND_PORTS, "25,8000-8010"),
                    (linkerd::SKIP_OUTBOUND_PORTS, "3306"),
                    (linkerd::PROXY_GID, "2103"),
                ]),
                &linkerd::PodSettings::resolve(&v6, None, None),
                &mut w,
            )
            .unwrap(),
        ),
        (
            "kuma_all",
            "a Kuma pod with DNS capture, exclusions of every kind and the invalid drop",
            kuma::model(&kuma_ann(KUMA_ALL), true, &resolv, &mut w).unwrap(),
        ),
        (
            "kuma_resolv_no_outbound",
            "a Kuma pod with DNS to resolv.conf servers, outbound off, one inbound port",
            kuma::model(&kuma_ann(KUMA_RESOLV), true, &resolv, &mut w).unwrap(),
        ),
    ]
}

#[test]
fn mesh_goldens() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/meshes");
    let cases: Vec<cases::Golden> = cases()
        .into_iter()
        .map(|(name, shows, model)| cases::Golden {
            name,
            shows,
            inputs: String::new(),
            model,
        })
        .collect();
    let failures = cases::check_backends(&cases, |_| dir.clone());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! The annotation sets the golden tests pin, shared by the iptables and nftables goldens.
//! Each case is one behaviour of the model, described in the fixture's header comment.

#![allow(dead_code)]

use meshcap_model::annotations as ann;
use meshcap_model::Annotations;

pub struct Case {
    pub name: &'static str,
    pub shows: &'static str,
    pub annotations: &'static [(&'static str, &'static str)],
}

pub const DNS_ON: &str = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n";

pub const CASES: &[Case] = &[
    Case {
        name: "default",
        shows: "a default sidecar pod: REDIRECT, everything captured, status ports excluded",
        annotations: &[],
    },
    Case {
        name: "tproxy",
        shows: "TPROXY inbound interception: mangle table, mark 1337, policy route table 133",
        annotations: &[(ann::INTERCEPTION_MODE, "TPROXY")],
    },
    Case {
        name: "tproxy_ports_dns",
        shows: "TPROXY for two inbound ports only, with DNS capture",
        annotations: &[
            (ann::INTERCEPTION_MODE, "TPROXY"),
            (ann::INCLUDE_INBOUND_PORTS, "80,8443"),
            (ann::PROXY_CONFIG, DNS_ON),
        ],
    },
    Case {
        name: "dns_capture",
        shows: "DNS capture: UDP and TCP 53 to 15053 except from the proxy, conntrack zones",
        annotations: &[(ann::PROXY_CONFIG, DNS_ON)],
    },
    Case {
        name: "include_outbound_ranges",
        shows: "outbound capture limited to service CIDRs of both families",
        annotations: &[(
            ann::INCLUDE_OUTBOUND_IP_RANGES,
            "10.96.0.0/12,fd00:10:96::/112",
        )],
    },
    Case {
        name: "exclude_outbound",
        shows: "excluded outbound CIDRs and ports, plus outbound ports captured whatever the destination",
        annotations: &[
            (ann::EXCLUDE_OUTBOUND_IP_RANGES, "169.254.169.254/32,fd00:ec2::254/128"),
            (ann::EXCLUDE_OUTBOUND_PORTS, "3306,5432"),
            (ann::INCLUDE_OUTBOUND_PORTS, "9092"),
        ],
    },
    Case {
        name: "include_inbound_ports",
        shows: "inbound capture of listed ports only",
        annotations: &[(ann::INCLUDE_INBOUND_PORTS, "80,8080")],
    },
    Case {
        name: "no_inbound",
        shows: "no inbound capture at all (includeInboundPorts empty), no outbound either",
        annotations: &[
            (ann::INCLUDE_INBOUND_PORTS, ""),
            (ann::INCLUDE_OUTBOUND_IP_RANGES, ""),
        ],
    },
    Case {
        name: "exclude_interfaces",
        shows: "traffic through an excluded interface is never captured, in both directions",
        annotations: &[
            (ann::EXCLUDE_INTERFACES, "net1,net2"),
            (ann::EXCLUDE_INBOUND_PORTS, "9000"),
        ],
    },
    Case {
        name: "reroute_virtual_interfaces",
        shows: "inbound on a virtual interface is treated as outbound (KubeVirt)",
        annotations: &[
            (ann::REROUTE_VIRTUAL_INTERFACES, "tap0"),
            (ann::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,fd00::/8"),
        ],
    },
    Case {
        name: "include_loopback",
        shows: "loopback explicitly included outbound: the app-over-lo bypass is dropped",
        annotations: &[(ann::INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.0/8,10.0.0.0/8")],
    },
];

pub fn annotations(case: &Case) -> Annotations {
    case.annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Compare `rendered` with the fixture at `path`, or rewrite the fixture when
/// `MESHCAP_UPDATE_GOLDEN=1`. Returns a description of the mismatch.
pub fn check_golden(path: &std::path::Path, rendered: &str) -> Result<(), String> {
    if std::env::var_os("MESHCAP_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, rendered).unwrap();
        return Ok(());
    }
    let want = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (run with MESHCAP_UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    })?;
    if want == rendered {
        return Ok(());
    }
    let first = want
        .lines()
        .zip(rendered.lines())
        .position(|(a, b)| a != b)
        .map(|i| {
            format!(
                "first difference at line {}:\n  fixture:  {}\n  rendered: {}",
                i + 1,
                want.lines().nth(i).unwrap_or(""),
                rendered.lines().nth(i).unwrap_or("")
            )
        })
        .unwrap_or_else(|| "one is a prefix of the other".to_owned());
    Err(format!(
        "{} differs from the rendering; {first}",
        path.display()
    ))
}

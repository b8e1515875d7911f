//! The case table of the golden tests: every case is pinned in both renderers (iptables-restore
//! text and the nft script), per family, by [`check_backends`]. Each case is one behaviour of
//! the model, described in the fixture's header comment.

#![allow(dead_code)]

use std::path::Path;

use meshcap_model::annotations as ann;
use meshcap_model::render::{iptables, nftables};
use meshcap_model::{Annotations, Families, Family, OwnerGroups, ProxyPorts, RedirectModel};

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

/// A case of the settings a mesh front end sets besides annotations (Istio's environment
/// variables, mesh config, the pod's addresses): annotations first, then `apply`.
pub struct SettingsCase {
    pub name: &'static str,
    pub shows: &'static str,
    pub annotations: &'static [(&'static str, &'static str)],
    /// The settings `apply` makes, for the fixture header.
    pub settings: &'static str,
    pub apply: fn(&mut RedirectModel),
}

pub const SETTINGS_CASES: &[SettingsCase] = &[
    SettingsCase {
        name: "proxy_id_lists",
        shows: "proxy uid and gid lists: the per-owner rules repeat per id, uids first \
                (istio-iptables -u 3,4 -g 1,2; capture/testdata/dns-uid-gid.golden)",
        annotations: &[(ann::PROXY_CONFIG, DNS_ON)],
        settings: "proxy_uids [3, 4], proxy_gids [1, 2]",
        apply: |m| {
            m.proxy_uids = vec![3, 4];
            m.proxy_gids = vec![1, 2];
        },
    },
    SettingsCase {
        name: "outbound_owner_groups",
        shows: "only sockets of the listed groups are captured outbound \
                (ISTIO_OUTBOUND_OWNER_GROUPS; capture/testdata/outbound-owner-groups.golden)",
        annotations: &[],
        settings: "outbound_owner_groups Only [201, 202]",
        apply: |m| m.outbound_owner_groups = OwnerGroups::Only(vec![201, 202]),
    },
    SettingsCase {
        name: "outbound_owner_groups_exclude",
        shows: "sockets of the listed groups are not captured outbound \
                (ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE; outbound-owner-groups-exclude.golden)",
        annotations: &[(ann::PROXY_CONFIG, DNS_ON)],
        settings: "outbound_owner_groups AllExcept [201, 202]",
        apply: |m| m.outbound_owner_groups = OwnerGroups::AllExcept(vec![201, 202]),
    },
    SettingsCase {
        name: "drop_invalid",
        shows: "invalid packets are dropped in mangle PREROUTING \
                (INVALID_DROP; capture/testdata/drop-invalid.golden)",
        annotations: &[],
        settings: "drop_invalid true",
        apply: |m| m.drop_invalid = true,
    },
    SettingsCase {
        name: "drop_invalid_tproxy",
        shows:
            "invalid drop in TPROXY mode: after the excluded interfaces, before inbound capture \
                (istio-cni plugin testdata invalid-drop.txt.golden)",
        annotations: &[
            (ann::INTERCEPTION_MODE, "TPROXY"),
            (ann::EXCLUDE_INTERFACES, "net1"),
        ],
        settings: "drop_invalid true",
        apply: |m| m.drop_invalid = true,
    },
    SettingsCase {
        name: "ipv4_loopback_cidr",
        shows: "a wider IPv4 loopback range in every rule that names loopback \
                (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR; host-ipv4-loopback-cidr.golden)",
        annotations: &[(ann::INTERCEPTION_MODE, "TPROXY")],
        settings: "ipv4_loopback 127.0.0.0/8",
        apply: |m| m.ipv4_loopback = "127.0.0.0/8".parse().unwrap(),
    },
    SettingsCase {
        name: "custom_ports",
        shows: "custom proxy ports (mesh config proxyListenPort, proxyInboundListenPort)",
        annotations: &[(ann::PROXY_CONFIG, DNS_ON)],
        settings: "ports outbound 16001, inbound 16006",
        apply: |m| {
            m.ports = ProxyPorts {
                outbound: 16001,
                inbound: 16006,
                ..ProxyPorts::default()
            }
        },
    },
    SettingsCase {
        name: "custom_ports_tproxy",
        shows: "custom proxy inbound port in TPROXY mode",
        annotations: &[(ann::INTERCEPTION_MODE, "TPROXY")],
        settings: "ports outbound 16001, inbound 16006",
        apply: |m| {
            m.ports = ProxyPorts {
                outbound: 16001,
                inbound: 16006,
                ..ProxyPorts::default()
            }
        },
    },
    SettingsCase {
        name: "dns_servers",
        shows: "DNS capture of the resolv.conf nameservers only; IPv6 has none, so no nat DNS \
                chain there (istio-init without capture-all; dns-uid-gid.golden)",
        annotations: &[(ann::PROXY_CONFIG, DNS_ON)],
        settings: "dns_servers [10.96.0.10, 127.0.0.53]",
        apply: |m| {
            m.dns_servers = Some(vec![
                "10.96.0.10".parse().unwrap(),
                "127.0.0.53".parse().unwrap(),
            ])
        },
    },
    SettingsCase {
        name: "ipv4_only_pod",
        shows: "a pod with only an IPv4 address gets no IPv6 rules at all",
        annotations: &[(ann::INTERCEPTION_MODE, "TPROXY")],
        settings: "families v4",
        apply: |m| {
            m.families = Families {
                v4: true,
                v6: false,
            }
        },
    },
];

/// One golden case, annotation-only or with settings.
pub struct Golden {
    pub name: &'static str,
    pub shows: &'static str,
    /// Header comment lines naming the inputs (annotations, settings).
    pub inputs: String,
    pub model: RedirectModel,
}

impl Golden {
    /// The fixture's header comment for `family` (`ipv4`, `ipv6`, or both for nftables).
    pub fn header(&self, family: &str) -> String {
        format!(
            "# {}\n# case {:?}, {family}\n{}",
            self.shows, self.name, self.inputs
        )
    }
}

/// Every golden case: the annotation cases, then the settings cases.
pub fn all() -> Vec<Golden> {
    let header = |annotations: &[(&str, &str)]| {
        let mut text = String::new();
        for (k, v) in annotations {
            text.push_str(&format!("# annotation {k}={v:?}\n"));
        }
        text
    };
    let mut out = Vec::new();
    for case in CASES {
        let model = RedirectModel::from_annotations(&annotations(case)).expect(case.name);
        out.push(Golden {
            name: case.name,
            shows: case.shows,
            inputs: header(case.annotations),
            model,
        });
    }
    for case in SETTINGS_CASES {
        let mut model =
            RedirectModel::from_annotations(&ann::from_pairs(case.annotations)).expect(case.name);
        (case.apply)(&mut model);
        model.validate().expect(case.name);
        let mut inputs = header(case.annotations);
        inputs.push_str(&format!("# settings {}\n", case.settings));
        out.push(Golden {
            name: case.name,
            shows: case.shows,
            inputs,
            model,
        });
    }
    out
}

pub fn annotations(case: &Case) -> Annotations {
    ann::from_pairs(case.annotations)
}

/// A renderer: one family's rules as text.
pub type Render = fn(&meshcap_model::Ruleset) -> String;

/// The renderers every case is pinned in: its golden directory under `tests/golden`, the
/// fixtures' extension, and the text.
pub const BACKENDS: [(&str, &str, Render); 2] = [
    ("iptables", "rules", iptables::render),
    ("nftables", "nft", |rs| {
        nftables::render(std::slice::from_ref(rs))
    }),
];

/// Checks every case of `cases` in every backend and family against
/// `<dir(backend)>/<case>.<v4|v6>.<ext>`; returns the mismatches.
pub fn check_backends(cases: &[Golden], dir: impl Fn(&str) -> std::path::PathBuf) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        for family in Family::ALL {
            let suffix = match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            };
            let ruleset = case.model.ruleset(family);
            for (backend, ext, render) in BACKENDS {
                let mut text = case.header(&family.to_string());
                text.push_str(&render(&ruleset));
                let path = dir(backend).join(format!("{}.{suffix}.{ext}", case.name));
                if let Err(e) = check_golden(&path, &text) {
                    failures.push(e);
                }
            }
        }
    }
    failures
}

/// Compare `rendered` with the fixture at `path`, or rewrite the fixture when
/// `MESHCAP_UPDATE_GOLDEN=1`. Returns a description of the mismatch.
pub fn check_golden(path: &Path, rendered: &str) -> Result<(), String> {
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

//! Istio's own golden test cases as pods: each case of istio-iptables' capture goldens
//! (`tools/istio-iptables/pkg/capture/run_test.go`) and istio-cni's plugin goldens
//! (`cni/pkg/plugin/plugin_dryrun_test.go`), written as the pod (annotations, `istio-proxy`
//! env and securityContext, `istio-init` env and args) and the node defaults that give a CNI
//! plugin the same inputs. The expected rules are Istio's, kept under `tests/peer/istio/`
//! with the Istio file each comes from.
//!
//! How a case's istio-iptables config maps to a pod:
//! - `InboundInterceptionMode`, `Inbound/OutboundPorts*`, `OutboundIPRanges*`,
//!   `RerouteVirtualInterfaces`, `ExcludeInterfaces`: the `traffic.sidecar.istio.io/*` (and
//!   `sidecar.istio.io/interceptionMode`, `istio.io/reroute-virtual-interfaces`) annotations.
//!   The capture tests' base config leaves includes and excludes empty, unlike the injector:
//!   the pods say so explicitly (`includeInboundPorts: ""` and so on).
//! - `RedirectDNS`: `ISTIO_META_DNS_CAPTURE=true` on `istio-proxy`; `DNSServersV4/V6` (no
//!   `CaptureAllDNS`): node default `dns_servers`.
//! - `DropInvalid`: `INVALID_DROP=true` on `istio-proxy`.
//! - `ProxyUID`/`ProxyGID` lists: node defaults `proxy_uids`/`proxy_gids` (a securityContext
//!   holds one id).
//! - `OwnerGroupsInclude/Exclude`, `HostIPv4LoopbackCidr`: `istio-init`'s env, where
//!   istio-iptables reads them.
//! - `EnableIPv6`: the pod has an IPv6 address; otherwise only IPv4 rules are compared.
//!
//! On the runtime-annotation path ([`Case::runtime_defaults`]) the settings the pod spec holds
//! come from the documented node defaults instead.

use serde_json::{json, Map, Value};

/// Where a case's expected rules come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// istio-iptables, `tools/istio-iptables/pkg/capture/testdata/NAME.golden`.
    Capture,
    /// istio-cni, `cni/pkg/plugin/testdata/NAME.txt.golden`.
    Cni,
}

#[derive(Debug, Clone)]
pub struct Case {
    /// The Istio test case's name.
    pub name: &'static str,
    pub origin: Origin,
    /// The golden file's stem (istio-cni's `custom-uid-zero` reuses `basic`).
    pub golden: &'static str,
    pub annotations: &'static [(&'static str, &'static str)],
    pub proxy_env: &'static [(&'static str, &'static str)],
    /// `istio-proxy`'s securityContext runAsUser / runAsGroup.
    pub run_as: (Option<u32>, Option<u32>),
    pub init_env: &'static [(&'static str, &'static str)],
    /// Node defaults no pod can carry (id lists, DNS servers), the plugin config's `istio`.
    pub node_defaults: &'static str,
    /// Istio wrote IPv6 rules (`EnableIPv6`): the pod has an IPv6 address.
    pub ipv6: bool,
    /// Group names in Istio's case replaced by numeric gids (meshcap takes gids only).
    pub group_names: &'static [(&'static str, &'static str)],
    /// Istio's case runs istio-iptables without `-d`, which no Istio pod gets (see
    /// [`INJECTOR_STATUS_PORTS`]): compared with the golden plus the RETURNs istio-iptables
    /// writes for `-d 15020,15021,15090`.
    pub injector_status_ports: bool,
    /// Why this case cannot apply to a CNI plugin as Istio wrote it; such cases are listed,
    /// not compared.
    pub not_applicable: Option<&'static str>,
}

/// The capture tests' base config with nothing captured by default (`constructTestConfig`).
const CAPTURE_BASE: &[(&str, &str)] = &[
    ("sidecar.istio.io/status", "{}"),
    ("traffic.sidecar.istio.io/includeInboundPorts", ""),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", ""),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", ""),
];

/// Why the wildcard inbound cases are compared with the status ports excluded.
pub const INJECTOR_STATUS_PORTS: &str = "istio-iptables run with `-b *` and no `-d`: every \
    Istio pod has 15020, 15021 and 15090 excluded inbound (istio-cni's NewRedirect appends them; \
    the injector passes them to istio-init as `-d`), so these cases are compared with the \
    RETURNs istio-iptables writes for them added to Istio's golden";

/// The inbound ports every Istio pod excludes.
const STATUS_PORTS: [u16; 3] = [15020, 15021, 15090];

macro_rules! ann {
    ($($k:expr => $v:expr),* $(,)?) => { &[("sidecar.istio.io/status", "{}"),
        ("traffic.sidecar.istio.io/includeInboundPorts", ""),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", ""),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", ""),
        $(($k, $v)),*] };
}

const fn capture(name: &'static str) -> Case {
    Case {
        name,
        origin: Origin::Capture,
        golden: name,
        annotations: CAPTURE_BASE,
        proxy_env: &[],
        run_as: (None, None),
        init_env: &[],
        node_defaults: "{}",
        ipv6: false,
        group_names: &[],
        injector_status_ports: false,
        not_applicable: None,
    }
}

const fn cni(name: &'static str) -> Case {
    Case {
        name,
        origin: Origin::Cni,
        golden: name,
        annotations: &[("sidecar.istio.io/status", "true")],
        proxy_env: &[],
        run_as: (None, None),
        init_env: &[],
        node_defaults: "{}",
        ipv6: false,
        group_names: &[],
        injector_status_ports: false,
        not_applicable: None,
    }
}

const DNS_ON: &[(&str, &str)] = &[("ISTIO_META_DNS_CAPTURE", "true")];
const IN_4000_5000: &str = "4000,5000";

/// Every case, in Istio's order.
pub fn cases() -> Vec<Case> {
    vec![
        // tools/istio-iptables/pkg/capture/run_test.go, getCommonTestCases
        Case {
            ipv6: true,
            ..capture("ipv6-empty-inbound-ports")
        },
        Case {
            annotations: ann!(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges" => "1.1.0.0/16",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "9.9.0.0/16",
            ),
            proxy_env: DNS_ON,
            node_defaults: r#"{"proxy_uids": [3, 4], "proxy_gids": [1, 2], "dns_servers": ["127.0.0.53"]}"#,
            ..capture("ip-range")
        },
        Case {
            annotations: ann!(
                "sidecar.istio.io/interceptionMode" => "TPROXY",
                "traffic.sidecar.istio.io/includeInboundPorts" => "*",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges" => "1.1.0.0/16",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "9.9.0.0/16",
                "traffic.sidecar.istio.io/excludeInterfaces" => "not-istio-nic",
            ),
            proxy_env: DNS_ON,
            node_defaults: r#"{"dns_servers": ["127.0.0.53"]}"#,
            ipv6: true,
            injector_status_ports: true,
            ..capture("tproxy")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeInboundPorts" => IN_4000_5000),
            ipv6: true,
            ..capture("ipv6-inbound-ports")
        },
        Case {
            annotations: ann!(
                "traffic.sidecar.istio.io/includeInboundPorts" => IN_4000_5000,
                "istio.io/reroute-virtual-interfaces" => "eth0,eth1",
            ),
            ipv6: true,
            ..capture("ipv6-virt-interfaces")
        },
        Case {
            // Istio's case says "6000,7000,": istio-iptables ignores the empty entry, but
            // istio-cni refuses it in the annotation (parsePorts), as meshcap does.
            annotations: ann!(
                "traffic.sidecar.istio.io/includeInboundPorts" => IN_4000_5000,
                "traffic.sidecar.istio.io/excludeInboundPorts" => "6000,7000",
                "istio.io/reroute-virtual-interfaces" => "eth0,eth1",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges" => "2001:db8::/32",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "2001:db8::/32",
            ),
            ipv6: true,
            ..capture("ipv6-ipnets")
        },
        Case {
            annotations: ann!(
                "traffic.sidecar.istio.io/includeInboundPorts" => IN_4000_5000,
                "traffic.sidecar.istio.io/excludeInboundPorts" => "6000,7000",
                "istio.io/reroute-virtual-interfaces" => "eth0,eth1",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges" => "2001:db8::/32",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "2001:db8::/32",
            ),
            node_defaults: r#"{"proxy_uids": [3, 4], "proxy_gids": [1, 2]}"#,
            ipv6: true,
            ..capture("ipv6-uid-gid")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeOutboundPorts" => "32000,31000"),
            ipv6: true,
            ..capture("ipv6-outbound-ports")
        },
        capture("empty"),
        Case {
            annotations: ann!(
                "istio.io/reroute-virtual-interfaces" => "eth1,eth2",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "*",
            ),
            ..capture("kube-virt-interfaces")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeOutboundIPRanges" => "10.0.0.0/8"),
            ..capture("ipnets")
        },
        Case {
            annotations: ann!(
                "istio.io/reroute-virtual-interfaces" => "eth1,eth2",
                "traffic.sidecar.istio.io/includeOutboundIPRanges" => "10.0.0.0/8",
            ),
            ..capture("ipnets-with-kube-virt-interfaces")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeInboundPorts" => "32000,31000"),
            ..capture("inbound-ports-include")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeInboundPorts" => "*"),
            injector_status_ports: true,
            ..capture("inbound-ports-wildcard")
        },
        Case {
            annotations: ann!(
                "traffic.sidecar.istio.io/includeInboundPorts" => "32000,31000",
                "sidecar.istio.io/interceptionMode" => "TPROXY",
            ),
            ..capture("inbound-ports-tproxy")
        },
        Case {
            annotations: ann!(
                "traffic.sidecar.istio.io/includeInboundPorts" => "*",
                "sidecar.istio.io/interceptionMode" => "TPROXY",
            ),
            injector_status_ports: true,
            ..capture("inbound-ports-wildcard-tproxy")
        },
        Case {
            proxy_env: DNS_ON,
            node_defaults: r#"{"proxy_uids": [3, 4], "proxy_gids": [1, 2], "dns_servers": ["127.0.0.53", "::127.0.0.53"]}"#,
            ipv6: true,
            ..capture("dns-uid-gid")
        },
        Case {
            // DNS capture on, no DNS servers and not capture-all: Istio turns DNS capture off.
            proxy_env: DNS_ON,
            node_defaults: r#"{"proxy_uids": [3, 4], "proxy_gids": [1, 2], "dns_servers": []}"#,
            ipv6: true,
            ..capture("ipv6-dns-uid-gid")
        },
        Case {
            init_env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "1001,202")],
            group_names: &[("java", "1001")],
            ..capture("outbound-owner-groups")
        },
        Case {
            init_env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,21")],
            group_names: &[("ftp", "21")],
            ..capture("outbound-owner-groups-exclude")
        },
        Case {
            proxy_env: DNS_ON,
            init_env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "1001,202")],
            group_names: &[("java", "1001")],
            node_defaults: r#"{"dns_servers": []}"#,
            ipv6: true,
            ..capture("ipv6-dns-outbound-owner-groups")
        },
        Case {
            proxy_env: DNS_ON,
            init_env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,21")],
            group_names: &[("ftp", "21")],
            node_defaults: r#"{"dns_servers": []}"#,
            ipv6: true,
            ..capture("ipv6-dns-outbound-owner-groups-exclude")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeOutboundPorts" => "32000,31000"),
            ..capture("outbound-ports-include")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/includeOutboundIPRanges" => "127.1.2.3/32"),
            proxy_env: DNS_ON,
            node_defaults: r#"{"proxy_uids": [3, 4], "proxy_gids": [1, 2], "dns_servers": ["127.0.0.53"]}"#,
            ..capture("loopback-outbound-iprange")
        },
        Case {
            annotations: ann!("traffic.sidecar.istio.io/excludeInterfaces" => "not-istio-nic"),
            ..capture("basic-exclude-nic")
        },
        Case {
            proxy_env: &[("INVALID_DROP", "true")],
            ..capture("drop-invalid")
        },
        Case {
            init_env: &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8")],
            ..capture("host-ipv4-loopback-cidr")
        },
        // cni/pkg/plugin/plugin_dryrun_test.go, TestIPTablesRuleGeneration (IPv4 only: the
        // test's mock namespace has no IPv6 address).
        cni("basic"),
        Case {
            annotations: &[
                ("sidecar.istio.io/status", "true"),
                (
                    "traffic.sidecar.istio.io/includeOutboundIPRanges",
                    "127.0.0.0/8",
                ),
                (
                    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                    "10.0.0.0/8",
                ),
            ],
            ..cni("include-exclude-ip")
        },
        Case {
            annotations: &[
                ("sidecar.istio.io/status", "true"),
                ("traffic.sidecar.istio.io/includeInboundPorts", "1111,2222"),
                ("traffic.sidecar.istio.io/excludeInboundPorts", "3333,4444"),
                ("traffic.sidecar.istio.io/excludeOutboundPorts", "5555,6666"),
            ],
            ..cni("include-exclude-ports")
        },
        Case {
            annotations: &[
                ("sidecar.istio.io/status", "true"),
                ("sidecar.istio.io/interceptionMode", "TPROXY"),
            ],
            ..cni("tproxy")
        },
        Case {
            proxy_env: DNS_ON,
            ..cni("dns")
        },
        Case {
            proxy_env: &[("INVALID_DROP", "true")],
            ..cni("invalid-drop")
        },
        Case {
            run_as: (Some(1000670000), Some(1000670001)),
            ..cni("custom-uid")
        },
        Case {
            run_as: (Some(0), None),
            golden: "basic",
            ..cni("custom-uid-zero")
        },
        Case {
            annotations: &[
                ("sidecar.istio.io/status", "true"),
                ("sidecar.istio.io/interceptionMode", "TPROXY"),
            ],
            run_as: (Some(1000670000), Some(1000670001)),
            ..cni("custom-uid-tproxy")
        },
    ]
}

/// Golden files of Istio's with no case that produces them.
pub const ORPHAN_GOLDENS: &[(&str, &str)] = &[(
    "cni/status-ports",
    "no case of plugin_dryrun_test.go writes or reads cni/pkg/plugin/testdata/status-ports.txt.golden \
     (a leftover of an older test; its rules, e.g. `-A OUTPUT -p tcp -j ISTIO_OUTPUT`, are not \
     what istio-cni writes today)",
)];

/// Cases of Istio's nftables backend without an iptables golden.
pub const NFT_ONLY: &[(&str, &str)] = &[(
    "inbound-ports-empty-tproxy",
    "istio-nftables only; its iptables twin is not among istio-iptables' cases (compared with \
     meshcap's nftables rendering in IPv4 only)",
)];

impl Case {
    /// The case's name with its origin (`capture/tproxy`, `cni/tproxy`): names repeat across
    /// Istio's two test suites.
    pub fn id(&self) -> String {
        match self.origin {
            Origin::Capture => format!("capture/{}", self.name),
            Origin::Cni => format!("cni/{}", self.name),
        }
    }

    /// The expected rules' file, relative to the repository root.
    pub fn golden_path(&self) -> String {
        match self.origin {
            Origin::Capture => format!("tests/peer/istio/capture/{}.rules", self.golden),
            Origin::Cni => format!("tests/peer/istio/cni/{}.rules", self.golden),
        }
    }

    /// Istio's nftables golden of the same case (capture cases only).
    pub fn nft_golden_path(&self) -> Option<String> {
        (self.origin == Origin::Capture)
            .then(|| format!("tests/peer/istio/capture-nft/{}.nft", self.golden))
    }

    /// Istio's expected text with group names replaced by the case's gids, and, for an
    /// iptables golden of a case with [`Case::injector_status_ports`], the status ports'
    /// RETURNs where istio-iptables writes them for `-d`: in the chain `ISTIO_INBOUND` of the
    /// capturing table, just before its capture (`-j ISTIO_IN_REDIRECT` in REDIRECT mode, the
    /// established/divert rule in TPROXY mode), as in istio-cni's `basic` and `tproxy` goldens.
    pub fn adapt(&self, text: &str) -> String {
        let mut t = if self.injector_status_ports {
            let mut out = String::new();
            for line in text.lines() {
                if line == "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"
                    || line.starts_with(
                        "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED",
                    )
                {
                    for p in STATUS_PORTS {
                        out.push_str(&format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN\n"));
                    }
                }
                out.push_str(line);
                out.push('\n');
            }
            out
        } else {
            text.to_owned()
        };
        for (name, gid) in self.group_names {
            t = t.replace(
                &format!("--gid-owner {name} "),
                &format!("--gid-owner {gid} "),
            );
            t = t.replace(&format!("skgid {name} "), &format!("skgid {gid} "));
            t = t.replace(&format!("skgid != {name} "), &format!("skgid != {gid} "));
        }
        t
    }

    /// The pod Istio's injector would produce for this case.
    pub fn pod(&self) -> Value {
        let annotations: Map<String, Value> = self
            .annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let env = |list: &[(&str, &str)]| -> Value {
            list.iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect()
        };
        let mut proxy = json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0",
            "args": ["proxy", "sidecar"], "env": env(self.proxy_env)});
        let mut sc = Map::new();
        if let Some(uid) = self.run_as.0 {
            sc.insert("runAsUser".into(), json!(uid));
        }
        if let Some(gid) = self.run_as.1 {
            sc.insert("runAsGroup".into(), json!(gid));
        }
        if !sc.is_empty() {
            proxy["securityContext"] = Value::Object(sc);
        }
        let mut init =
            json!({"name": "istio-validation", "args": ["istio-iptables", "--run-validation"]});
        if !self.init_env.is_empty() {
            init = json!({"name": "istio-init", "args": ["istio-iptables"], "env": env(self.init_env)});
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": "peer", "annotations": annotations},
            "spec": {"initContainers": [init], "containers": [{"name": "app", "image": "app"}, proxy]}
        })
    }

    /// The case's node defaults (the plugin configuration's `istio`).
    pub fn node_defaults(&self) -> Value {
        serde_json::from_str(self.node_defaults).expect("valid case JSON")
    }

    /// The node defaults that give the runtime-annotation path the same inputs: the case's
    /// own, plus the spec settings the pod holds (docs/CONFIGURATION.md, node defaults).
    pub fn runtime_defaults(&self) -> Value {
        let mut d = self.node_defaults();
        for (k, v) in self.proxy_env {
            let key = match *k {
                "ISTIO_META_DNS_CAPTURE" => "dns_capture",
                "INVALID_DROP" => "invalid_drop",
                _ => continue,
            };
            d[key] = json!(*v == "true");
        }
        for (k, v) in self.init_env {
            let key = match *k {
                "ISTIO_OUTBOUND_OWNER_GROUPS" => "outbound_owner_groups",
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" => "outbound_owner_groups_exclude",
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" => "ipv4_loopback_cidr",
                _ => continue,
            };
            d[key] = json!(v);
        }
        if let Some(uid) = self.run_as.0.filter(|u| *u != 0) {
            d["proxy_uids"] = json!([uid]);
        }
        if let Some(gid) = self.run_as.1.filter(|g| *g != 0) {
            d["proxy_gids"] = json!([gid]);
        }
        d
    }

    /// The pod's annotations as the runtime passes them.
    pub fn annotations(&self) -> Value {
        self.pod()["metadata"]["annotations"].clone()
    }
}

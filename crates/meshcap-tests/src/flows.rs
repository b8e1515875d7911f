//! The flow matrix: named flows with the pod annotations they need and the outcome docs/DESIGN.md's
//! "Observable behaviour" promises for them.
//!
//! Flows are grouped by pod ([`PodSpec`]): one pod per annotation set serves all of its flows.
//! Destinations are symbolic ([`Host`]) so expectations and observations read the same in every
//! mode: `P4`/`P6` the pod's own addresses, `R4`/`R6` the remote host on the pod subnet,
//! `IN4`/`IN6` and `EX4`/`EX6` remote addresses beyond it (used as included and excluded
//! CIDRs), `LO4`/`LO6` loopback.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::node::{self, Node, Pod};
use crate::standin::{ClientReport, PROXY_ID, SIDECAR_TCP_PORTS, SIDECAR_UDP_PORTS};

pub use meshcap_model::annotations::{
    EXCLUDE_INBOUND_PORTS, EXCLUDE_INTERFACES, EXCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_INBOUND_PORTS, INCLUDE_OUTBOUND_IP_RANGES, INCLUDE_OUTBOUND_PORTS, INTERCEPTION_MODE,
    PROXY_CONFIG, REROUTE_VIRTUAL_INTERFACES, SIDECAR_INJECT as INJECT, SIDECAR_STATUS as STATUS,
};
/// A value of `sidecar.istio.io/status` like the injector writes.
pub const STATUS_VALUE: &str =
    r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy"]}"#;
/// `proxy.istio.io/config` turning invalid-packet drop on.
pub const INVALID_DROP_CONFIG: &str = r#"{"proxyMetadata":{"INVALID_DROP":"true"}}"#;
/// `proxy.istio.io/config` turning DNS capture on.
pub const DNS_CAPTURE_CONFIG: &str = r#"{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"true"}}"#;

/// Connect timeout of a flow's client: refused or black-holed flows must not stall the suite.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);

/// A symbolic address (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    P4,
    P6,
    R4,
    R6,
    In4,
    Ex4,
    In6,
    Ex6,
    Lo4,
    /// 127.0.0.2: loopback, but not 127.0.0.1 (Istio's default "explicitly local" address).
    Lo4b,
    Lo6,
}

impl Host {
    pub fn label(self) -> &'static str {
        match self {
            Host::P4 => "P4",
            Host::P6 => "P6",
            Host::R4 => "R4",
            Host::R6 => "R6",
            Host::In4 => "IN4",
            Host::Ex4 => "EX4",
            Host::In6 => "IN6",
            Host::Ex6 => "EX6",
            Host::Lo4 => "LO4",
            Host::Lo4b => "LO4B",
            Host::Lo6 => "LO6",
        }
    }

    /// The concrete address on `node` as seen from `pod`.
    pub fn resolve(self, node: &Node, pod: &Pod) -> Option<IpAddr> {
        Some(match self {
            Host::P4 => pod.v4?.into(),
            Host::P6 => pod.v6?.into(),
            Host::R4 => node.remote.v4.into(),
            Host::R6 => node.remote.v6.into(),
            Host::In4 => node::INCLUDED4.into(),
            Host::Ex4 => node::EXCLUDED4.into(),
            Host::In6 => node::INCLUDED6.into(),
            Host::Ex6 => node::EXCLUDED6.into(),
            Host::Lo4 => std::net::Ipv4Addr::LOCALHOST.into(),
            Host::Lo4b => std::net::Ipv4Addr::new(127, 0, 0, 2).into(),
            Host::Lo6 => std::net::Ipv6Addr::LOCALHOST.into(),
        })
    }

    /// Which server answers on this host when nothing captures the flow.
    pub fn server(self, port: u16) -> &'static str {
        match self {
            Host::P4 | Host::P6 | Host::Lo4 | Host::Lo4b | Host::Lo6
                if SIDECAR_TCP_PORTS.contains(&port) =>
            {
                "sidecar"
            }
            Host::P4 | Host::P6 | Host::Lo4 | Host::Lo4b | Host::Lo6 => "app",
            _ => "remote",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// One TCP segment conntrack finds invalid (SYN, FIN and ACK), from a raw socket, IPv4.
    /// Let through, the pod's kernel answers it with a RST; dropped, nothing answers.
    TcpInvalid,
}

/// Who originates a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// An app process in the pod as root.
    App,
    /// An app process in the pod as uid/gid 1000.
    User,
    /// The proxy: uid 1337, gid 1337.
    Proxy,
    /// uid 1337 with gid 1000.
    ProxyUid,
    /// gid 1337 with uid 1000.
    ProxyGid,
    /// The remote host (inbound flows).
    Remote,
}

impl From {
    /// The label with the ids the client really runs as in a pod with `proxy`.
    pub fn label_for(self, proxy: &ProxyProfile) -> String {
        match self.ids(proxy) {
            Some((uid, gid)) if self != From::User => format!("proxy({uid}:{gid})"),
            _ => self.label().to_string(),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            From::App => "app(0)",
            From::User => "app(1000)",
            From::Proxy => "proxy(1337:1337)",
            From::ProxyUid => "proxy(1337:1000)",
            From::ProxyGid => "proxy(1000:1337)",
            From::Remote => "remote",
        }
    }

    /// The uid/gid the flow's client runs as, the proxy's being those of the pod's proxy.
    fn ids(self, proxy: &ProxyProfile) -> Option<(u32, u32)> {
        match self {
            From::App | From::Remote => None,
            From::User => Some((1000, 1000)),
            From::Proxy => Some((proxy.uid, proxy.gid)),
            From::ProxyUid => Some((proxy.uid, 1000)),
            From::ProxyGid => Some((1000, proxy.gid)),
        }
    }
}

/// What should happen to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Outbound capture: arrives at 15001 with the dialled address as original destination.
    Out,
    /// Inbound capture: arrives at 15006 with the dialled address as original destination.
    In,
    /// DNS capture: arrives at 15053 (TCP with its original destination).
    Dns,
    /// Not captured: the server at the dialled address gets it.
    Direct,
    /// (An invalid segment) let through: the kernel answers with a RST.
    Reset,
    /// Dropped: nothing answers (an invalid segment, or a connection).
    Dropped,
}

/// One flow of the matrix.
#[derive(Debug, Clone)]
pub struct Flow {
    pub name: &'static str,
    /// The [`PodSpec`] whose pod the flow starts from (or is addressed to, for inbound).
    pub pod: &'static str,
    pub from: From,
    pub proto: Proto,
    pub to: Host,
    pub port: u16,
    /// Source address the client binds (the sidecar's 127.0.0.6 passthrough).
    pub bind: Option<&'static str>,
    pub expect: Expect,
}

impl Flow {
    /// The outcome [`Flow::expect`] stands for.
    pub fn expected(&self) -> Outcome {
        let dialled = format!("{}:{}", self.to.label(), self.port);
        let proxy = profile_of(self.pod);
        match self.expect {
            Expect::Out => Outcome::Captured {
                port: proxy.outbound,
                orig: Some(dialled),
            },
            Expect::In => Outcome::Captured {
                port: proxy.inbound,
                orig: Some(dialled),
            },
            Expect::Dns => Outcome::Captured {
                port: proxy.dns,
                orig: (self.proto == Proto::Tcp).then_some(dialled),
            },
            Expect::Direct => Outcome::Direct {
                server: self.to.server(self.port).into(),
                at: match self.proto {
                    Proto::Tcp | Proto::TcpInvalid => dialled,
                    Proto::Udp => format!("*:{}", self.port),
                },
            },
            Expect::Reset => Outcome::Reset,
            Expect::Dropped if self.proto == Proto::TcpInvalid => Outcome::Dropped,
            // A connection nothing answers: the client gives up.
            Expect::Dropped => Outcome::Failed("timeout".into()),
        }
    }

    pub fn describe_to(&self) -> String {
        let p = match self.proto {
            Proto::Tcp => "",
            Proto::Udp => "udp ",
            Proto::TcpInvalid => "invalid tcp ",
        };
        match self.bind {
            Some(b) => format!("{p}{}:{} (src {b})", self.to.label(), self.port),
            None => format!("{p}{}:{}", self.to.label(), self.port),
        }
    }
}

/// What was observed for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar's capture listener `port` got it; `orig` is its original destination.
    Captured { port: u16, orig: Option<String> },
    /// `server` got it, unredirected, at `at`.
    Direct { server: String, at: String },
    /// The client failed (`refused`, `timeout`, `unreachable`, ...) and no server saw it.
    Failed(String),
    /// The client got an answer but no record names its token (something else answered).
    Unrecorded,
    /// The invalid segment got the kernel's RST.
    Reset,
    /// The invalid segment got no answer.
    Dropped,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Captured {
                port,
                orig: Some(o),
            } => write!(f, "captured@{port} orig={o}"),
            Outcome::Captured { port, orig: None } => write!(f, "captured@{port}"),
            Outcome::Direct { server, at } => write!(f, "direct {server}@{at}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::Unrecorded => write!(f, "answered, unrecorded"),
            Outcome::Reset => write!(f, "reset by the kernel"),
            Outcome::Dropped => write!(f, "dropped"),
        }
    }
}

/// The proxy a pod's mesh runs: its uid/gid, capture ports, the ports the stand-in sidecar
/// listens on, and whether the eBPF fast path registers such pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyProfile {
    pub mesh: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub outbound: u16,
    pub inbound: u16,
    pub dns: u16,
    pub tcp_ports: &'static [u16],
    pub udp_ports: &'static [u16],
    pub fast_path: bool,
}

impl ProxyProfile {
    /// The proxy uid meshcap exempts (and registers with the fast path) for this sidecar:
    /// the one it runs as, except that an Istio proxy running as root counts as unset and
    /// 1337 is exempted, as istio-cni reads `runAsUser: 0`.
    pub fn exempt_uid(&self) -> u32 {
        if self.mesh == "istio" && self.uid == 0 {
            PROXY_ID
        } else {
            self.uid
        }
    }
}

/// Istio's sidecar (the stand-in's defaults).
pub const ISTIO: ProxyProfile = ProxyProfile {
    mesh: "istio",
    uid: PROXY_ID,
    gid: PROXY_ID,
    outbound: 15001,
    inbound: 15006,
    dns: 15053,
    tcp_ports: &SIDECAR_TCP_PORTS,
    udp_ports: &SIDECAR_UDP_PORTS,
    fast_path: true,
};
/// Istio's sidecar in a TPROXY pod as the injector writes it: `runAsUser: 0`,
/// `runAsGroup: 1337` (the proxy runs as root to bind transparent sockets). Its capture rules
/// still exempt uid and gid 1337 (istio-cni reads uid 0 as unset), so the proxy is exempt by
/// its group and the app's root processes are captured.
pub const ISTIO_TPROXY_ROOT: ProxyProfile = ProxyProfile {
    uid: 0,
    gid: PROXY_ID,
    ..ISTIO
};
/// A sidecar running as uid and gid 2000, in a pod whose node exempts the proxy ids
/// `[1337, 2000]` (istio-iptables `-u 1337,2000 -g 1337,2000`). The fast path exempts one id
/// pair, so such pods keep to the rules.
pub const ISTIO_ID_LIST: ProxyProfile = ProxyProfile {
    uid: 2000,
    gid: 2000,
    fast_path: false,
    ..ISTIO
};
/// Istio's sidecar while its inbound listener (15006) is not bound: starting or restarting.
pub const ISTIO_NO_INBOUND_LISTENER: ProxyProfile = ProxyProfile {
    tcp_ports: &[15001, 15008, 15020, 15021, 15090, 15053],
    ..ISTIO
};
/// Istio's sidecar with the mesh config's `proxyListenPort: 15101`,
/// `proxyInboundListenPort: 15106`.
pub const ISTIO_CUSTOM_PORTS: ProxyProfile = ProxyProfile {
    outbound: 15101,
    inbound: 15106,
    tcp_ports: &[15101, 15106, 15008, 15020, 15021, 15090, 15053],
    ..ISTIO
};
/// linkerd-proxy with the linkerd2-cni chart's defaults: uid 2102, 4143 in, 4140 out, admin
/// 4191 and control 4190 (never captured inbound).
pub const LINKERD: ProxyProfile = ProxyProfile {
    mesh: "linkerd",
    uid: 2102,
    gid: 2102,
    outbound: 4140,
    inbound: 4143,
    dns: 0,
    tcp_ports: &[4140, 4143, 4190, 4191],
    udp_ports: &[],
    fast_path: true,
};
/// kuma-dp with Kuma's defaults: uid 5678, 15006 in, 15001 out, DNS 15053.
pub const KUMA: ProxyProfile = ProxyProfile {
    mesh: "kuma",
    uid: 5678,
    gid: 5678,
    outbound: 15001,
    inbound: 15006,
    dns: 15053,
    tcp_ports: &[15001, 15006, 15053],
    udp_ports: &[15053],
    fast_path: true,
};

/// The proxy profile of the matrix pod `name` (Istio's for unknown names).
pub fn profile_of(name: &str) -> ProxyProfile {
    pods()
        .into_iter()
        .find(|p| p.name == name)
        .map_or(ISTIO, |p| p.proxy)
}

/// A pod of the matrix: its name, annotations and proxy.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: &'static str,
    pub annotations: Vec<(&'static str, String)>,
    pub proxy: ProxyProfile,
    /// Node defaults (the plugin configuration's `istio`) of the node this pod lands on: the
    /// runtime-annotation path's stand-in for settings in the pod spec or the mesh config.
    pub istio: Option<Value>,
    /// The pod's `spec` as the API server holds it: the plugin reads the pod from the API
    /// (`kubernetes.read_pod: meshed`), as for pods whose settings live in their spec.
    pub spec: Option<Value>,
}

impl PodSpec {
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The pod the API server returns for this spec (name and namespace set on insertion).
    pub fn api_pod(&self) -> Option<Value> {
        let spec = self.spec.as_ref()?;
        Some(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"annotations": self.annotations(), "uid": format!("e2e-{}", self.name)},
            "spec": spec,
            "status": {"phase": "Pending"}
        }))
    }

    /// What this pod adds to meshcap's plugin configuration: its node defaults, and the API
    /// server to read it from (`kubeconfig`) when it has a spec.
    pub fn plugin_extra(&self, kubeconfig: Option<&std::path::Path>) -> Value {
        let mut extra = json!({});
        if let Some(d) = &self.istio {
            extra["istio"] = d.clone();
        }
        if let (Some(_), Some(kc)) = (&self.spec, kubeconfig) {
            extra["kubernetes"] = json!({"kubeconfig": kc, "read_pod": "meshed"});
        }
        extra
    }
}

/// An `istio-proxy` container as the injector writes it, with `env` and `securityContext`.
fn istio_proxy(env: Value, security_context: Value) -> Value {
    json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0",
           "args": ["proxy", "sidecar"], "env": env, "securityContext": security_context})
}

/// A pod spec: the app, `istio-proxy`, and the init containers given.
fn pod_spec(proxy: Value, init: Value) -> Value {
    json!({"containers": [{"name": "app", "image": "app"}, proxy], "initContainers": init})
}

fn meshed(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut v = vec![(STATUS, STATUS_VALUE.to_string())];
    v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
    v
}

/// The pods of the full matrix.
pub fn pods() -> Vec<PodSpec> {
    let inc = format!("{},{}", node::INCLUDED4_NET, node::INCLUDED6_NET);
    let exc = format!("{},{}", node::EXCLUDED4_NET, node::EXCLUDED6_NET);
    vec![
        PodSpec {
            name: "default",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "dns",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[(PROXY_CONFIG, DNS_CAPTURE_CONFIG)]),
        },
        PodSpec {
            name: "include",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[
                (INCLUDE_OUTBOUND_IP_RANGES, &inc),
                (INCLUDE_OUTBOUND_PORTS, "9090"),
            ]),
        },
        PodSpec {
            name: "exclude",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[
                (EXCLUDE_OUTBOUND_IP_RANGES, &exc),
                (EXCLUDE_OUTBOUND_PORTS, "8443"),
                (EXCLUDE_INBOUND_PORTS, "8081"),
            ]),
        },
        PodSpec {
            name: "inlist",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[
                (INCLUDE_INBOUND_PORTS, "8080"),
                (INCLUDE_OUTBOUND_IP_RANGES, ""),
            ]),
        },
        PodSpec {
            name: "exclif",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[(EXCLUDE_INTERFACES, "eth0")]),
        },
        PodSpec {
            name: "reroute",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[(REROUTE_VIRTUAL_INTERFACES, "eth0")]),
        },
        PodSpec {
            name: "tproxy",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
        },
        PodSpec {
            name: "tproxy-root",
            proxy: ISTIO_TPROXY_ROOT,
            istio: None,
            spec: Some(pod_spec(
                istio_proxy(json!([]), json!({"runAsUser": 0, "runAsGroup": 1337})),
                json!([{"name": "istio-validation", "args": ["istio-iptables", "--run-validation"]}]),
            )),
            annotations: meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
        },
        PodSpec {
            name: "tproxy-nolisten",
            proxy: ISTIO_NO_INBOUND_LISTENER,
            istio: None,
            spec: None,
            annotations: meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
        },
        PodSpec {
            name: "idlist",
            proxy: ISTIO_ID_LIST,
            istio: Some(json!({"proxy_uids": [1337, 2000], "proxy_gids": [1337, 2000]})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "loopcidr",
            proxy: ISTIO,
            istio: Some(json!({"ipv4_loopback_cidr": "127.0.0.1/8"})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "grp-excl",
            proxy: ISTIO,
            istio: Some(json!({"outbound_owner_groups_exclude": "1000"})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "grp-incl",
            proxy: ISTIO,
            istio: None,
            spec: Some(pod_spec(
                istio_proxy(json!([]), json!({"runAsUser": 1337, "runAsGroup": 1337})),
                json!([{"name": "istio-init", "args": ["istio-iptables"],
                        "env": [{"name": "ISTIO_OUTBOUND_OWNER_GROUPS", "value": "1000"}]}]),
            )),
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "invalid",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[(PROXY_CONFIG, INVALID_DROP_CONFIG)]),
        },
        PodSpec {
            name: "invalid-tproxy",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: meshed(&[
                (INTERCEPTION_MODE, "TPROXY"),
                (PROXY_CONFIG, INVALID_DROP_CONFIG),
            ]),
        },
        PodSpec {
            name: "ports",
            proxy: ISTIO_CUSTOM_PORTS,
            istio: Some(json!({"proxy_listen_port": 15101, "proxy_inbound_listen_port": 15106})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "ports-tproxy",
            proxy: ISTIO_CUSTOM_PORTS,
            istio: None,
            spec: Some(pod_spec(
                istio_proxy(json!([]), json!({"runAsUser": 1337, "runAsGroup": 1337})),
                json!([{"name": "istio-init", "args": ["istio-iptables", "-p", "15101",
                        "-z", "15106", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
                        "-b", "*", "-d", "15090,15021,15020"]}]),
            )),
            annotations: meshed(&[(INTERCEPTION_MODE, "TPROXY")]),
        },
        PodSpec {
            name: "meshdns",
            proxy: ISTIO,
            istio: None,
            spec: Some(pod_spec(
                istio_proxy(
                    json!([{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]),
                    json!({"runAsUser": 1337, "runAsGroup": 1337}),
                ),
                json!([]),
            )),
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "meshdns-node",
            proxy: ISTIO,
            istio: Some(json!({"dns_capture": true})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "dns-servers",
            proxy: ISTIO,
            istio: Some(json!({"dns_capture": true,
                "dns_servers": [node::INCLUDED4.to_string(), node::INCLUDED6.to_string()]})),
            spec: None,
            annotations: meshed(&[]),
        },
        PodSpec {
            name: "unmeshed",
            proxy: ISTIO,
            istio: None,
            spec: None,
            annotations: vec![],
        },
        PodSpec {
            name: "optout",
            proxy: ISTIO,
            istio: None,
            spec: None,
            // Go's ParseBool spelling of false that is not "false": istio-cni opts out on it.
            annotations: meshed(&[(INJECT, "False")]),
        },
        PodSpec {
            name: "linkerd",
            proxy: LINKERD,
            istio: None,
            spec: None,
            annotations: vec![
                (LINKERD_PROXY_VERSION, "stable-2.14".to_string()),
                (LINKERD_SKIP_OUTBOUND_PORTS, "8443".to_string()),
            ],
        },
        PodSpec {
            name: "kuma",
            proxy: KUMA,
            istio: None,
            spec: None,
            annotations: vec![
                (KUMA_INJECTED, "true".to_string()),
                (KUMA_TPROXY_CONFIG, KUMA_CONFIG.to_string()),
            ],
        },
    ]
}

pub const LINKERD_PROXY_VERSION: &str = "linkerd.io/proxy-version";
pub const LINKERD_SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
pub const KUMA_INJECTED: &str = "kuma.io/sidecar-injected";
pub const KUMA_TPROXY_CONFIG: &str = "traffic.kuma.io/transparent-proxy-config";
/// What Kuma's injector writes for a pod with builtin DNS on (captureAll, as its Helm chart).
pub const KUMA_CONFIG: &str = "cniMode: true\nkumaDPUser: \"5678\"\nredirect:\n  dns:\n    enabled: true\n    captureAll: true\n    port: 15053\n  inbound:\n    enabled: true\n    port: 15006\n    excludePorts: [8081]\n  outbound:\n    enabled: true\n    port: 15001\n    excludePorts: [8443]\n";

macro_rules! flow {
    ($name:literal, $pod:literal, $from:ident, $proto:ident, $to:ident : $port:literal, $expect:ident) => {
        Flow {
            name: $name,
            pod: $pod,
            from: From::$from,
            proto: Proto::$proto,
            to: Host::$to,
            port: $port,
            bind: None,
            expect: Expect::$expect,
        }
    };
    ($name:literal, $pod:literal, $from:ident, $proto:ident, $to:ident : $port:literal, bind $bind:literal, $expect:ident) => {
        Flow {
            name: $name,
            pod: $pod,
            from: From::$from,
            proto: Proto::$proto,
            to: Host::$to,
            port: $port,
            bind: Some($bind),
            expect: Expect::$expect,
        }
    };
}

/// The full flow matrix.
pub fn flows() -> Vec<Flow> {
    vec![
        // Default annotations: everything outbound and inbound captured, the usual exceptions.
        flow!("out-v4", "default", App, Tcp, R4:80, Out),
        flow!("out-v6", "default", App, Tcp, R6:80, Out),
        flow!("out-v4-uid1000", "default", User, Tcp, R4:80, Out),
        flow!("out-v4-routed", "default", App, Tcp, In4:80, Out),
        flow!("out-v6-routed", "default", App, Tcp, In6:80, Out),
        flow!("out-v4-tcp53-nodns", "default", App, Tcp, R4:53, Out),
        flow!("out-v4-15020-excluded", "default", App, Tcp, R4:15020, Direct),
        flow!("out-v4-udp", "default", App, Udp, R4:5353, Direct),
        flow!("out-v6-udp", "default", App, Udp, R6:5353, Direct),
        flow!("out-v4-udp53-nodns", "default", App, Udp, R4:53, Direct),
        flow!("in-v4", "default", Remote, Tcp, P4:8080, In),
        flow!("in-v6", "default", Remote, Tcp, P6:8080, In),
        flow!("in-v4-closed-port", "default", Remote, Tcp, P4:9999, In),
        flow!("in-v4-15008", "default", Remote, Tcp, P4:15008, Direct),
        flow!("in-v4-15020", "default", Remote, Tcp, P4:15020, Direct),
        flow!("in-v4-15021", "default", Remote, Tcp, P4:15021, Direct),
        flow!("in-v4-15090", "default", Remote, Tcp, P4:15090, Direct),
        flow!("in-v6-15021", "default", Remote, Tcp, P6:15021, Direct),
        flow!("in-v4-udp", "default", Remote, Udp, P4:5353, Direct),
        flow!("lo-v4", "default", App, Tcp, Lo4:8080, Direct),
        flow!("lo-v6", "default", App, Tcp, Lo6:8080, Direct),
        flow!("app-self-v4", "default", App, Tcp, P4:8080, Direct),
        flow!("app-self-v6", "default", App, Tcp, P6:8080, Direct),
        flow!("proxy-out-v4", "default", Proxy, Tcp, R4:80, Direct),
        flow!("proxy-out-v6", "default", Proxy, Tcp, R6:80, Direct),
        flow!("proxy-uid-out-v4", "default", ProxyUid, Tcp, R4:80, Direct),
        flow!("proxy-gid-out-v4", "default", ProxyGid, Tcp, R4:80, Direct),
        flow!("proxy-self-v4", "default", Proxy, Tcp, P4:8080, In),
        flow!("proxy-self-v6", "default", Proxy, Tcp, P6:8080, In),
        flow!("proxy-lo-v4", "default", Proxy, Tcp, Lo4:8080, Direct),
        // Only 127.0.0.1 is "explicitly local" by default: the proxy dialling another
        // loopback address is captured inbound (compare the loopback-CIDR pod).
        flow!("proxy-lo2-v4", "default", Proxy, Tcp, Lo4b:8080, In),
        flow!("passthrough-127.0.0.6", "default", Proxy, Tcp, P4:8080, bind "127.0.0.6", Direct),
        // IPv6's passthrough source is an address meshcap puts on lo: without it the pod's
        // answer to ::6 would leave by the default route.
        flow!("passthrough-::6", "default", Proxy, Tcp, P6:8080, bind "::6", Direct),
        // DNS capture.
        flow!("dns-udp-v4", "dns", App, Udp, R4:53, Dns),
        flow!("dns-tcp-v4", "dns", App, Tcp, R4:53, Dns),
        flow!("dns-udp-v6", "dns", App, Udp, R6:53, Dns),
        flow!("dns-tcp-v6", "dns", App, Tcp, R6:53, Dns),
        flow!("dns-udp-uid1000", "dns", User, Udp, R4:53, Dns),
        flow!("dns-proxy-udp-v4", "dns", Proxy, Udp, R4:53, Direct),
        flow!("dns-proxy-tcp-v4", "dns", Proxy, Tcp, R4:53, Direct),
        flow!("dns-udp-other-port", "dns", App, Udp, R4:5353, Direct),
        flow!("dns-out-v4", "dns", App, Tcp, R4:80, Out),
        // includeOutboundIPRanges + includeOutboundPorts.
        flow!("inc-range-v4", "include", App, Tcp, In4:80, Out),
        flow!("inc-range-v6", "include", App, Tcp, In6:80, Out),
        flow!("inc-outside-v4", "include", App, Tcp, Ex4:80, Direct),
        flow!("inc-outside-v6", "include", App, Tcp, Ex6:80, Direct),
        flow!("inc-outside-subnet-v4", "include", App, Tcp, R4:80, Direct),
        flow!("inc-port-v4", "include", App, Tcp, R4:9090, Out),
        flow!("inc-port-v6", "include", App, Tcp, R6:9090, Out),
        flow!("inc-inbound-v4", "include", Remote, Tcp, P4:8080, In),
        // excludeOutboundIPRanges, excludeOutboundPorts, excludeInboundPorts.
        flow!("exc-range-v4", "exclude", App, Tcp, Ex4:80, Direct),
        flow!("exc-range-v6", "exclude", App, Tcp, Ex6:80, Direct),
        flow!("exc-other-v4", "exclude", App, Tcp, In4:80, Out),
        flow!("exc-other-v6", "exclude", App, Tcp, In6:80, Out),
        flow!("exc-port-v4", "exclude", App, Tcp, R4:8443, Direct),
        flow!("exc-port-v6", "exclude", App, Tcp, R6:8443, Direct),
        flow!("exc-inport-v4", "exclude", Remote, Tcp, P4:8081, Direct),
        flow!("exc-inport-v6", "exclude", Remote, Tcp, P6:8081, Direct),
        flow!("exc-in-other-v4", "exclude", Remote, Tcp, P4:8080, In),
        // includeInboundPorts, and includeOutboundIPRanges empty.
        flow!("inlist-listed-v4", "inlist", Remote, Tcp, P4:8080, In),
        flow!("inlist-listed-v6", "inlist", Remote, Tcp, P6:8080, In),
        flow!("inlist-unlisted-v4", "inlist", Remote, Tcp, P4:8082, Direct),
        flow!("inlist-unlisted-v6", "inlist", Remote, Tcp, P6:8082, Direct),
        flow!("inlist-no-outbound-v4", "inlist", App, Tcp, R4:80, Direct),
        flow!("inlist-no-outbound-v6", "inlist", App, Tcp, R6:80, Direct),
        // excludeInterfaces eth0: nothing through eth0 is captured, loopback still is.
        flow!("exclif-in-v4", "exclif", Remote, Tcp, P4:8080, Direct),
        flow!("exclif-in-v6", "exclif", Remote, Tcp, P6:8080, Direct),
        flow!("exclif-out-v4", "exclif", App, Tcp, R4:80, Direct),
        flow!("exclif-out-v6", "exclif", App, Tcp, R6:80, Direct),
        flow!("exclif-proxy-self-v4", "exclif", Proxy, Tcp, P4:8080, In),
        // reroute-virtual-interfaces eth0: inbound on it is treated as outbound.
        flow!("reroute-in-v4", "reroute", Remote, Tcp, P4:8080, Out),
        flow!("reroute-in-v6", "reroute", Remote, Tcp, P6:8080, Out),
        flow!("reroute-out-v4", "reroute", App, Tcp, R4:80, Out),
        // TPROXY inbound.
        flow!("tproxy-in-v4", "tproxy", Remote, Tcp, P4:8080, In),
        flow!("tproxy-in-v6", "tproxy", Remote, Tcp, P6:8080, In),
        flow!("tproxy-in-closed-port", "tproxy", Remote, Tcp, P4:9999, In),
        flow!("tproxy-in-15020", "tproxy", Remote, Tcp, P4:15020, Direct),
        flow!("tproxy-in-15008", "tproxy", Remote, Tcp, P4:15008, In),
        flow!("tproxy-in-udp", "tproxy", Remote, Udp, P4:5353, Direct),
        flow!("tproxy-out-v4", "tproxy", App, Tcp, R4:80, Out),
        flow!("tproxy-out-v6", "tproxy", App, Tcp, R6:80, Out),
        flow!("tproxy-proxy-out-v4", "tproxy", Proxy, Tcp, R4:80, Direct),
        flow!("tproxy-app-self-v4", "tproxy", App, Tcp, P4:8080, Direct),
        flow!("tproxy-proxy-self-v4", "tproxy", Proxy, Tcp, P4:8080, In),
        // A TPROXY pod as Istio's injector writes it (istio-proxy runAsUser 0, runAsGroup
        // 1337), read from the API: root processes of the app are captured, the proxy (root,
        // group 1337) is not.
        flow!("tproxy-root-out-v4", "tproxy-root", App, Tcp, R4:80, Out),
        flow!("tproxy-root-out-v6", "tproxy-root", App, Tcp, R6:80, Out),
        flow!("tproxy-root-uid1000-out-v4", "tproxy-root", User, Tcp, R4:80, Out),
        flow!("tproxy-root-in-v4", "tproxy-root", Remote, Tcp, P4:8080, In),
        flow!("tproxy-root-proxy-out-v4", "tproxy-root", Proxy, Tcp, R4:80, Direct),
        flow!("tproxy-root-proxy-self-v4", "tproxy-root", Proxy, Tcp, P4:8080, In),
        // TPROXY while the sidecar's inbound listener is not bound: iptables' TPROXY drops
        // what it cannot hand to a transparent socket, and so does meshcap's nftables
        // rendering (Istio's nftables `tproxy` would pass it to the app, past the sidecar).
        flow!("tproxy-nolisten-in-v4", "tproxy-nolisten", Remote, Tcp, P4:8080, Dropped),
        flow!("tproxy-nolisten-in-v6", "tproxy-nolisten", Remote, Tcp, P6:8080, Dropped),
        flow!("tproxy-nolisten-out-v4", "tproxy-nolisten", App, Tcp, R4:80, Out),
        // Proxy id lists: the second uid/gid of the list is exempt from outbound capture like
        // the first.
        flow!("idlist-proxy-out-v4", "idlist", Proxy, Tcp, R4:80, Direct),
        flow!("idlist-proxy-out-v6", "idlist", Proxy, Tcp, R6:80, Direct),
        flow!("idlist-proxy-uid-out-v4", "idlist", ProxyUid, Tcp, R4:80, Direct),
        flow!("idlist-proxy-gid-out-v4", "idlist", ProxyGid, Tcp, R4:80, Direct),
        // As istio-iptables writes `-u 1337,2000`: the rules repeat per id in order, so the
        // first id's "app talking to itself over lo" RETURN (`! --uid-owner 1337`) comes
        // before the second id's hairpin; a uid-2000 proxy dialling the pod is not captured.
        flow!("idlist-proxy-self-v4", "idlist", Proxy, Tcp, P4:8080, Direct),
        flow!("idlist-out-v4", "idlist", App, Tcp, R4:80, Out),
        flow!("idlist-uid1000-out-v4", "idlist", User, Tcp, R4:80, Out),
        flow!("idlist-in-v4", "idlist", Remote, Tcp, P4:8080, In),
        // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8 (node default): all of 127/8 is
        // explicitly local, so the proxy dialling 127.0.0.2 is not captured.
        flow!("loopcidr-proxy-lo2-v4", "loopcidr", Proxy, Tcp, Lo4b:8080, Direct),
        flow!("loopcidr-proxy-self-v4", "loopcidr", Proxy, Tcp, P4:8080, In),
        flow!("loopcidr-out-v4", "loopcidr", App, Tcp, R4:80, Out),
        // Outbound owner groups: gid 1000 excluded (node default), or the only one captured
        // (istio-init's ISTIO_OUTBOUND_OWNER_GROUPS, read from the API).
        flow!("grp-excl-excluded-v4", "grp-excl", User, Tcp, R4:80, Direct),
        flow!("grp-excl-excluded-v6", "grp-excl", User, Tcp, R6:80, Direct),
        flow!("grp-excl-other-v4", "grp-excl", App, Tcp, R4:80, Out),
        flow!("grp-excl-in-v4", "grp-excl", Remote, Tcp, P4:8080, In),
        flow!("grp-incl-listed-v4", "grp-incl", User, Tcp, R4:80, Out),
        flow!("grp-incl-other-v4", "grp-incl", App, Tcp, R4:80, Direct),
        flow!("grp-incl-other-v6", "grp-incl", App, Tcp, R6:80, Direct),
        flow!("grp-incl-in-v4", "grp-incl", Remote, Tcp, P4:8080, In),
        // INVALID_DROP: a segment conntrack finds invalid is dropped before it reaches a
        // socket, in both interception modes; without it the pod's kernel answers it.
        flow!("invalid-control-v4", "default", Remote, TcpInvalid, P4:8080, Reset),
        flow!("invalid-dropped-v4", "invalid", Remote, TcpInvalid, P4:8080, Dropped),
        flow!("invalid-in-v4", "invalid", Remote, Tcp, P4:8080, In),
        flow!("invalid-out-v4", "invalid", App, Tcp, R4:80, Out),
        flow!("invalid-tproxy-control-v4", "tproxy", Remote, TcpInvalid, P4:8080, Reset),
        flow!("invalid-tproxy-dropped-v4", "invalid-tproxy", Remote, TcpInvalid, P4:8080, Dropped),
        flow!("invalid-tproxy-in-v4", "invalid-tproxy", Remote, Tcp, P4:8080, In),
        // Custom proxy ports (mesh config proxyListenPort 15101, proxyInboundListenPort
        // 15106): node defaults on the runtime path, istio-init's -p/-z from the API.
        flow!("ports-out-v4", "ports", App, Tcp, R4:80, Out),
        flow!("ports-out-v6", "ports", App, Tcp, R6:80, Out),
        flow!("ports-in-v4", "ports", Remote, Tcp, P4:8080, In),
        flow!("ports-in-v6", "ports", Remote, Tcp, P6:8080, In),
        flow!("ports-proxy-out-v4", "ports", Proxy, Tcp, R4:80, Direct),
        flow!("ports-proxy-self-v4", "ports", Proxy, Tcp, P4:8080, In),
        flow!("ports-tproxy-in-v4", "ports-tproxy", Remote, Tcp, P4:8080, In),
        flow!("ports-tproxy-in-v6", "ports-tproxy", Remote, Tcp, P6:8080, In),
        flow!("ports-tproxy-out-v4", "ports-tproxy", App, Tcp, R4:80, Out),
        // Mesh-wide DNS capture (meshConfig.defaultConfig.proxyMetadata): the injector puts
        // ISTIO_META_DNS_CAPTURE into istio-proxy's env, with no annotation. Read from the
        // API, or stated by the node default on the runtime path.
        flow!("meshdns-udp-v4", "meshdns", App, Udp, R4:53, Dns),
        flow!("meshdns-tcp-v4", "meshdns", App, Tcp, R4:53, Dns),
        flow!("meshdns-udp-v6", "meshdns", App, Udp, R6:53, Dns),
        flow!("meshdns-proxy-udp-v4", "meshdns", Proxy, Udp, R4:53, Direct),
        flow!("meshdns-node-udp-v4", "meshdns-node", App, Udp, R4:53, Dns),
        flow!("meshdns-node-tcp-v6", "meshdns-node", App, Tcp, R6:53, Dns),
        // DNS capture restricted to the resolvers of the pod's resolv.conf (node default
        // dns_servers, istio-init's mode without capture-all): DNS to others is not sent to
        // 15053 (its TCP is ordinary outbound traffic).
        flow!("dnssrv-listed-udp-v4", "dns-servers", App, Udp, In4:53, Dns),
        flow!("dnssrv-listed-tcp-v4", "dns-servers", App, Tcp, In4:53, Dns),
        flow!("dnssrv-listed-udp-v6", "dns-servers", App, Udp, In6:53, Dns),
        flow!("dnssrv-other-udp-v4", "dns-servers", App, Udp, Ex4:53, Direct),
        flow!("dnssrv-other-udp-v6", "dns-servers", App, Udp, Ex6:53, Direct),
        flow!("dnssrv-other-tcp-v4", "dns-servers", App, Tcp, Ex4:53, Out),
        // A Linkerd pod (linkerd-cni's rules): outbound to 4140, inbound to 4143, uid 2102;
        // everything over lo and everything the proxy sends bypass capture; no IPv6 rules
        // (the chart's default); skip-outbound-ports 8443.
        flow!("l5d-out-v4", "linkerd", App, Tcp, R4:80, Out),
        flow!("l5d-out-v4-uid1000", "linkerd", User, Tcp, R4:80, Out),
        flow!("l5d-out-v6-no-ipv6-rules", "linkerd", App, Tcp, R6:80, Direct),
        flow!("l5d-out-skipped-port", "linkerd", App, Tcp, R4:8443, Direct),
        flow!("l5d-out-udp53", "linkerd", App, Udp, R4:53, Direct),
        flow!("l5d-in-v4", "linkerd", Remote, Tcp, P4:8080, In),
        flow!("l5d-in-v6-no-ipv6-rules", "linkerd", Remote, Tcp, P6:8080, Direct),
        flow!("l5d-proxy-out-v4", "linkerd", Proxy, Tcp, R4:80, Direct),
        flow!("l5d-proxy-self-v4", "linkerd", Proxy, Tcp, P4:8080, Direct),
        flow!("l5d-app-self-v4", "linkerd", App, Tcp, P4:8080, Direct),
        flow!("l5d-lo-v4", "linkerd", App, Tcp, Lo4:8080, Direct),
        // A Kuma pod (kuma-cni's rules): outbound to 15001, inbound to 15006, uid 5678, UDP DNS
        // to 15053 (apps' TCP DNS is not captured), IPv6 rules as the pod has IPv6.
        flow!("kuma-out-v4", "kuma", App, Tcp, R4:80, Out),
        flow!("kuma-out-v6", "kuma", App, Tcp, R6:80, Out),
        flow!("kuma-out-excluded-port", "kuma", App, Tcp, R4:8443, Direct),
        flow!("kuma-in-v4", "kuma", Remote, Tcp, P4:8080, In),
        flow!("kuma-in-v6", "kuma", Remote, Tcp, P6:8080, In),
        flow!("kuma-in-excluded-port", "kuma", Remote, Tcp, P4:8081, Direct),
        flow!("kuma-dns-udp-v4", "kuma", App, Udp, R4:53, Dns),
        flow!("kuma-dns-udp-v6", "kuma", App, Udp, R6:53, Dns),
        flow!("kuma-dns-tcp-not-captured", "kuma", App, Tcp, R4:53, Direct),
        flow!("kuma-proxy-dns-udp", "kuma", Proxy, Udp, R4:53, Direct),
        flow!("kuma-proxy-out-v4", "kuma", Proxy, Tcp, R4:80, Direct),
        flow!("kuma-proxy-self-v4", "kuma", Proxy, Tcp, P4:8080, In),
        flow!("kuma-passthrough-127.0.0.6", "kuma", Proxy, Tcp, P4:8080, bind "127.0.0.6", Direct),
        flow!("kuma-passthrough-::6", "kuma", Proxy, Tcp, P6:8080, bind "::6", Direct),
        flow!("kuma-app-self-v4", "kuma", App, Tcp, P4:8080, Direct),
        // Pods meshcap must leave alone.
        flow!("unmeshed-out-v4", "unmeshed", App, Tcp, R4:80, Direct),
        flow!("unmeshed-out-v6", "unmeshed", App, Tcp, R6:80, Direct),
        flow!("unmeshed-in-v4", "unmeshed", Remote, Tcp, P4:8080, Direct),
        flow!("unmeshed-udp53", "unmeshed", App, Udp, R4:53, Direct),
        flow!("optout-out-v4", "optout", App, Tcp, R4:80, Direct),
        flow!("optout-in-v4", "optout", Remote, Tcp, P4:8080, Direct),
    ]
}

/// A short, representative subset (the demo's).
pub fn representative() -> (Vec<PodSpec>, Vec<Flow>) {
    const NAMES: &[&str] = &[
        "out-v4",
        "out-v6",
        "out-v4-15020-excluded",
        "out-v4-udp",
        "in-v4",
        "in-v6",
        "in-v4-15021",
        "lo-v4",
        "app-self-v4",
        "proxy-out-v4",
        "proxy-self-v4",
        "passthrough-127.0.0.6",
        "dns-udp-v4",
        "dns-tcp-v6",
        "dns-proxy-udp-v4",
        "tproxy-in-v4",
        "tproxy-in-v6",
        "l5d-out-v4",
        "l5d-in-v4",
        "l5d-proxy-out-v4",
        "l5d-lo-v4",
        "kuma-out-v4",
        "kuma-in-v6",
        "kuma-dns-udp-v4",
        "kuma-dns-tcp-not-captured",
        "kuma-proxy-self-v4",
        "unmeshed-out-v4",
    ];
    let flows: Vec<Flow> = flows()
        .into_iter()
        .filter(|f| NAMES.contains(&f.name))
        .collect();
    let pods = pods()
        .into_iter()
        .filter(|p| flows.iter().any(|f| f.pod == p.name))
        .collect();
    (pods, flows)
}

static TOKEN: AtomicUsize = AtomicUsize::new(0);

/// Run `flow` once on `node` (from or to `pod`) and observe where it landed. `tag` goes into
/// the token (the mode's name) so records of concurrent runs never mix.
pub fn run_flow(node: &Node, pod: &Pod, flow: &Flow, tag: &str) -> Result<Outcome> {
    let Some(ip) = flow.to.resolve(node, pod) else {
        return Ok(Outcome::Failed(format!(
            "pod has no {} address",
            flow.to.label()
        )));
    };
    let addr = SocketAddr::new(ip, flow.port);
    let token = format!(
        "{tag}/{}/{}/{}",
        pod.name,
        flow.name,
        TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    let ns = if flow.from == From::Remote {
        &node.remote.ns
    } else {
        &pod.ns
    };
    let standin = crate::bins::standin()?;
    let mut cmd = match flow.from.ids(&profile_of(flow.pod)) {
        Some((uid, gid)) => ns.command_as(standin, uid, gid)?,
        None => ns.command(standin)?,
    };
    cmd.args(["client", "--addr", &addr.to_string(), "--token", &token])
        .args([
            "--proto",
            match flow.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
                Proto::TcpInvalid => "tcp-invalid",
            },
        ])
        .args(["--timeout-ms", &CLIENT_TIMEOUT.as_millis().to_string()]);
    if let Some(b) = flow.bind {
        cmd.args(["--bind", b]);
    }
    let out = cmd.output().context("run standin client")?;
    let report: ClientReport = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "client output {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if flow.proto == Proto::TcpInvalid {
        // No server ever sees the segment: the kernel's answer is the outcome.
        return Ok(match report.result.as_str() {
            "reset" => Outcome::Reset,
            "timeout" => Outcome::Dropped,
            other => Outcome::Failed(other.to_owned()),
        });
    }
    // The server writes its record before answering, but an unanswered datagram may still be
    // in flight: look again briefly before calling it lost.
    let mut record = node.find(&token);
    for _ in 0..5 {
        if record.is_some() || report.result == "ok" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        record = node.find(&token);
    }
    let names = node.names(pod);
    Ok(match record {
        Some(r) => observed(&r, &names, &profile_of(flow.pod)),
        None if report.result == "ok" => Outcome::Unrecorded,
        None => Outcome::Failed(report.result),
    })
}

fn symbolic(addr: &str, names: &[(IpAddr, &'static str)]) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(sa) => match names.iter().find(|(ip, _)| *ip == sa.ip()) {
            Some((_, label)) => format!("{label}:{}", sa.port()),
            None => sa.to_string(),
        },
        Err(_) => addr.to_string(),
    }
}

/// The outcome a server's record stands for: the sidecar's record at one of its proxy's
/// capture ports is a capture.
pub fn observed(
    r: &crate::standin::Record,
    names: &[(IpAddr, &'static str)],
    proxy: &ProxyProfile,
) -> Outcome {
    if r.server == "sidecar" && [proxy.outbound, proxy.inbound, proxy.dns].contains(&r.port) {
        Outcome::Captured {
            port: r.port,
            orig: r.orig.as_deref().map(|o| symbolic(o, names)),
        }
    } else {
        Outcome::Direct {
            server: r.server.clone(),
            at: symbolic(&r.local, names),
        }
    }
}

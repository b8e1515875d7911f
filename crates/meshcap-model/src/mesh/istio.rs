//! The Istio front end: from an Istio pod (or only its annotations, plus the node's defaults)
//! to the [`RedirectModel`], deriving every setting istio-cni and istio-iptables derive.
//!
//! Where Istio reads each setting (istio/istio, `cni/pkg/plugin/sidecar_redirect.go`
//! NewRedirect, `cni/pkg/plugin/kubernetes.go` ExtractPodInfo, `tools/common/config/config.go`
//! FillConfigFromEnvironment, the injection template's `istio-init` args):
//!
//! | setting | Istio's source | meshcap reads, first that states it |
//! |---|---|---|
//! | capture annotations | pod annotations | annotations |
//! | proxy uid / gid | `istio-proxy` `securityContext.runAsUser/runAsGroup` (0 = unset) | pod spec, node default, 1337 |
//! | DNS capture | `istio-proxy` env `ISTIO_META_DNS_CAPTURE` | pod env, `proxy.istio.io/config` proxyMetadata, node default, off |
//! | invalid drop | `istio-proxy` env `INVALID_DROP` | pod env, proxyMetadata, node default, off |
//! | dual stack | `istio-proxy` env `ISTIO_DUAL_STACK` | pod env, proxyMetadata, node default, off (validated only: the prevResult's addresses decide the families) |
//! | owner groups include / exclude | istio-iptables' own env `ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE)` (istio-cni: its plugin process's, i.e. the container runtime's) | `istio-init` env, node default, `*` |
//! | IPv4 loopback CIDR | istio-iptables' own env `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` | `istio-init` env, node default, 127.0.0.1/32 |
//! | proxy ports | mesh config `proxyListenPort`/`proxyInboundListenPort`, as `istio-init -p/-z` (istio-cni: always 15001/15006) | `istio-init`/`istio-validation` args, node default, 15001/15006 |
//! | status port | `status.sidecar.istio.io/port`, which the injector adds to `excludeInboundPorts` | annotation |
//! | DNS servers | `istio-init`: the pod's resolv.conf; istio-cni: all DNS | node default, all DNS |
//!
//! The result records where each spec-derived setting came from ([`Resolved::sources`]), so a
//! plugin that could not see the pod says which default it used. Every input is validated:
//! a bad value is an [`InputError`] naming its source (CNI code 7).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::annotations::{self as ann, AnnotationError, Annotations};
use crate::model::{Families, ProxyPorts, RedirectModel, MAX_PROXY_IDS, PROXY_GID, PROXY_UID};
use crate::pod::{PodView, ISTIO_PROXY};

/// `istio-proxy` env: DNS capture by the agent (Istio's `DNSCaptureByAgent`).
pub const ENV_DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
/// `istio-proxy` env: drop packets conntrack finds invalid (`cmd.InvalidDropByIptables`).
pub const ENV_INVALID_DROP: &str = "INVALID_DROP";
/// `istio-proxy` env: the pod is dual-stack.
pub const ENV_DUAL_STACK: &str = "ISTIO_DUAL_STACK";
/// istio-iptables env: the groups whose outbound traffic is captured (`*` = all).
pub const ENV_OWNER_GROUPS: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
/// istio-iptables env: the groups whose outbound traffic is not captured.
pub const ENV_OWNER_GROUPS_EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
/// istio-iptables env: what counts as explicitly local for IPv4.
pub const ENV_IPV4_LOOPBACK_CIDR: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
/// The health/status port annotation; the injector adds it to `excludeInboundPorts`.
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// Istio's default `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
pub const DEFAULT_IPV4_LOOPBACK_CIDR: &str = "127.0.0.1/32";

/// An input meshcap refuses, named by where it came from: an annotation, a container's
/// environment variable or argument, or a plugin configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {origin}={value:?}: {reason}")]
pub struct InputError {
    /// e.g. `annotation traffic.sidecar.istio.io/excludeInboundPorts`,
    /// `env INVALID_DROP of container istio-proxy`, `plugin config istio.dns_capture`.
    pub origin: String,
    pub value: String,
    pub reason: String,
}

impl InputError {
    fn new(source: impl Into<String>, value: &str, reason: impl Into<String>) -> InputError {
        let mut value = value.to_owned();
        if value.len() > 120 {
            let mut end = 120;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            value.push_str("...");
        }
        InputError {
            origin: source.into(),
            value,
            reason: reason.into(),
        }
    }
}

/// A shared parser's error, for an input named `origin`.
fn named(origin: impl Into<String>) -> impl FnOnce(AnnotationError) -> InputError {
    let origin = origin.into();
    move |e| InputError {
        origin,
        value: e.value,
        reason: e.reason,
    }
}

impl From<AnnotationError> for InputError {
    fn from(e: AnnotationError) -> Self {
        InputError {
            origin: format!("annotation {}", e.annotation),
            value: e.value,
            reason: e.reason,
        }
    }
}

/// The plugin configuration's `istio` object: node-wide values for the settings Istio takes
/// from the pod spec or the mesh config, which the runtime-annotation path cannot see. Each
/// applies where the pod does not state the setting (or cannot be seen). Left out: Istio's
/// default. See docs/CONFIGURATION.md.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDefaults {
    /// `istio.proxy_uids`: the proxy's uids (istio-iptables `-u` takes a list).
    pub proxy_uids: Option<Vec<u32>>,
    /// `istio.proxy_gids`.
    pub proxy_gids: Option<Vec<u32>>,
    /// `istio.dns_capture`: the mesh-wide `proxyMetadata.ISTIO_META_DNS_CAPTURE`.
    pub dns_capture: Option<bool>,
    /// `istio.invalid_drop`: the mesh-wide `proxyMetadata.INVALID_DROP`.
    pub invalid_drop: Option<bool>,
    /// `istio.dual_stack`: the mesh-wide `proxyMetadata.ISTIO_DUAL_STACK`.
    pub dual_stack: Option<bool>,
    /// `istio.outbound_owner_groups`: `ISTIO_OUTBOUND_OWNER_GROUPS` as istio-cni's node agent
    /// has it.
    pub owner_groups_include: Option<String>,
    /// `istio.outbound_owner_groups_exclude`.
    pub owner_groups_exclude: Option<String>,
    /// `istio.ipv4_loopback_cidr`: `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
    pub ipv4_loopback_cidr: Option<IpNet>,
    /// `istio.proxy_listen_port`: mesh config `proxyListenPort`.
    pub proxy_listen_port: Option<u16>,
    /// `istio.proxy_inbound_listen_port`: mesh config `proxyInboundListenPort`.
    pub proxy_inbound_listen_port: Option<u16>,
    /// `istio.dns_servers`: capture DNS only to these resolvers (istio-init's behaviour with
    /// the pod's resolv.conf); left out, all DNS is captured (istio-cni's).
    pub dns_servers: Option<Vec<IpAddr>>,
}

/// The keys of [`NodeDefaults`] in the plugin configuration's `istio` object.
pub const NODE_DEFAULT_KEYS: &[&str] = &[
    "proxy_uids",
    "proxy_gids",
    "dns_capture",
    "invalid_drop",
    "dual_stack",
    "outbound_owner_groups",
    "outbound_owner_groups_exclude",
    "ipv4_loopback_cidr",
    "proxy_listen_port",
    "proxy_inbound_listen_port",
    "dns_servers",
];

impl NodeDefaults {
    /// Reads the `istio` object of the plugin configuration. Every key is validated as the pod
    /// value it stands in for; unknown keys are errors (a typo would otherwise silently leave
    /// Istio's default in place). Errors name `istio.KEY`.
    pub fn from_json(obj: &Map<String, Value>) -> Result<NodeDefaults, InputError> {
        let mut d = NodeDefaults::default();
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            let source = format!("plugin config istio.{key}");
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let bad = |reason: &str| InputError::new(source.clone(), &text, reason);
            match key.as_str() {
                "proxy_uids" | "proxy_gids" => {
                    let ids = id_list(v).ok_or_else(|| {
                        bad("expected a list of 1 to 16 ids (1 to 4294967294; 0 is refused: it would exempt root)")
                    })?;
                    if key == "proxy_uids" {
                        d.proxy_uids = Some(ids);
                    } else {
                        d.proxy_gids = Some(ids);
                    }
                }
                "dns_capture" | "invalid_drop" | "dual_stack" => {
                    let b = v.as_bool().ok_or_else(|| bad("expected true or false"))?;
                    match key.as_str() {
                        "dns_capture" => d.dns_capture = Some(b),
                        "invalid_drop" => d.invalid_drop = Some(b),
                        _ => d.dual_stack = Some(b),
                    }
                }
                "outbound_owner_groups" | "outbound_owner_groups_exclude" => {
                    // A single gid may come as a JSON number.
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(bad("expected a string of gids (\"1,2\" or \"*\")")),
                    };
                    let s = s.as_str();
                    let include = key == "outbound_owner_groups";
                    check_groups(s, include).map_err(|e| bad(&e.reason))?;
                    if include {
                        d.owner_groups_include = Some(s.to_owned());
                    } else {
                        d.owner_groups_exclude = Some(s.to_owned());
                    }
                }
                "ipv4_loopback_cidr" => {
                    let s = v.as_str().ok_or_else(|| bad("expected a string"))?;
                    d.ipv4_loopback_cidr =
                        Some(ann::ipv4_loopback(key, s).map_err(|e| bad(&e.reason))?);
                }
                "proxy_listen_port" | "proxy_inbound_listen_port" => {
                    let p = v
                        .as_u64()
                        .filter(|p| (1..=65535).contains(p))
                        .ok_or_else(|| bad("expected a port number (1-65535)"))?
                        as u16;
                    if key == "proxy_listen_port" {
                        d.proxy_listen_port = Some(p);
                    } else {
                        d.proxy_inbound_listen_port = Some(p);
                    }
                }
                "dns_servers" => {
                    let list = v
                        .as_array()
                        .filter(|l| l.len() <= ann::MAX_LIST_LEN)
                        .ok_or_else(|| bad("expected a list of IP addresses"))?;
                    let mut servers = Vec::new();
                    for item in list {
                        let ip = item
                            .as_str()
                            .and_then(|s| s.parse::<IpAddr>().ok())
                            .ok_or_else(|| bad(&format!("{item} is not an IP address")))?;
                        servers.push(ip);
                    }
                    d.dns_servers = Some(servers);
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown key; known: {}",
                        NODE_DEFAULT_KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(d)
    }
}

fn id_list(v: &Value) -> Option<Vec<u32>> {
    let items = v.as_array()?;
    if items.is_empty() || items.len() > MAX_PROXY_IDS {
        return None;
    }
    items
        .iter()
        .map(|i| {
            i.as_u64()
                .filter(|n| *n >= 1 && *n < u64::from(u32::MAX))
                .map(|n| n as u32)
        })
        .collect()
}

/// Where one spec-derived setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The pod spec (a JSON path) or one of its annotations.
    Pod(String),
    /// The plugin configuration's `istio.KEY`.
    NodeDefault(&'static str),
    /// Neither says: Istio's own default.
    IstioDefault,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pod(p) => write!(f, "pod {p}"),
            Source::NodeDefault(k) => write!(f, "node default istio.{k}"),
            Source::IstioDefault => f.write_str("Istio's default"),
        }
    }
}

/// The settings Istio takes from somewhere other than the capture annotations, resolved.
/// Kept in the attachment record so the agent's repair recomputes exactly what ADD installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecSettings {
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub dns_capture: bool,
    pub invalid_drop: bool,
    pub dual_stack: bool,
    /// `*`, or the gids captured (Istio's `ISTIO_OUTBOUND_OWNER_GROUPS`).
    pub owner_groups_include: String,
    pub owner_groups_exclude: String,
    pub ipv4_loopback_cidr: IpNet,
    pub proxy_listen_port: u16,
    pub proxy_inbound_listen_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<IpAddr>>,
}

impl Default for SpecSettings {
    /// Istio's defaults.
    fn default() -> Self {
        let ports = ProxyPorts::default();
        SpecSettings {
            proxy_uids: vec![PROXY_UID],
            proxy_gids: vec![PROXY_GID],
            dns_capture: false,
            invalid_drop: false,
            dual_stack: false,
            owner_groups_include: "*".into(),
            owner_groups_exclude: String::new(),
            ipv4_loopback_cidr: DEFAULT_IPV4_LOOPBACK_CIDR.parse().expect("valid literal"),
            proxy_listen_port: ports.outbound,
            proxy_inbound_listen_port: ports.inbound,
            dns_servers: None,
        }
    }
}

/// A pod's model and where its spec-derived settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub model: RedirectModel,
    pub settings: SpecSettings,
    /// `(setting, source)` for each spec-derived setting, in a fixed order.
    pub sources: Vec<(&'static str, Source)>,
}

impl Resolved {
    /// The settings that came from a node default or Istio's default, for the log.
    pub fn defaulted(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|(_, s)| !matches!(s, Source::Pod(_)))
            .map(|(name, s)| format!("{name} from {s}"))
            .collect()
    }
}

/// The address families an Istio pod gets rules for, from its addresses (the prevResult's
/// `ips` in the plugin, `status.podIPs` in `render -f`): IPv4 always (istio-iptables writes
/// its IPv4 rules for every pod), IPv6 when the pod has an IPv6 address that is not
/// link-local (Istio's `getLocalIP` with `ISTIO_DUAL_STACK`; without it Istio looks only at
/// the first address and leaves a dual-stack pod's IPv6 uncaptured, which meshcap does not
/// copy: see docs/CONFIGURATION.md). Without any address, both: what the pod has is unknown,
/// and capturing a family too many fails closed where missing one would bypass the proxy.
pub fn families_of(addresses: &[IpAddr]) -> Families {
    if addresses.is_empty() {
        return Families::BOTH;
    }
    let v6 = addresses.iter().any(|a| match a {
        IpAddr::V6(a) => {
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            a.to_ipv4_mapped().is_none() && !link_local
        }
        IpAddr::V4(_) => false,
    });
    Families { v4: true, v6 }
}

/// The one pod-to-model function for Istio, used by the plugin (runtime annotations and the
/// Kubernetes API), `meshcap render` and the agent. `pod` holds whatever the path can see: on
/// the runtime path only its annotations.
pub fn resolve(pod: &PodView, defaults: &NodeDefaults) -> Result<Resolved, InputError> {
    let annotations = &pod.annotations;
    let mut sources = Vec::new();
    let mut s = SpecSettings::default();

    // Proxy uid/gid: 0 counts as unset, as istio-cni reads it (sidecar_redirect.go,
    // NewRedirect): Istio's injector writes `runAsUser: 0` with `runAsGroup: 1337` for TPROXY
    // pods, and exempting uid 0 would let every root process of the app bypass capture.
    let ids = [
        (
            "proxy uid",
            pod.proxy_uid,
            "securityContext.runAsUser",
            &defaults.proxy_uids,
            "proxy_uids",
            &mut s.proxy_uids,
        ),
        (
            "proxy gid",
            pod.proxy_gid,
            "securityContext.runAsGroup",
            &defaults.proxy_gids,
            "proxy_gids",
            &mut s.proxy_gids,
        ),
    ];
    for (name, from_pod, field, default, key, out) in ids {
        let source = if let Some(id) = from_pod.filter(|id| *id != 0) {
            *out = vec![id];
            Source::Pod(format!("{ISTIO_PROXY} {field}"))
        } else if let Some(list) = default {
            *out = list.clone();
            Source::NodeDefault(key)
        } else {
            Source::IstioDefault
        };
        sources.push((name, source));
    }

    // The proxy's boolean environment: the injector writes the merged proxyMetadata (mesh
    // default, then the pod's `proxy.istio.io/config`) into it; istio-cni reads the env.
    let metadata = ann::proxy_metadata(annotations)?;
    let bools = [
        (
            "DNS capture",
            ENV_DNS_CAPTURE,
            defaults.dns_capture,
            "dns_capture",
        ),
        (
            "invalid drop",
            ENV_INVALID_DROP,
            defaults.invalid_drop,
            "invalid_drop",
        ),
        (
            "dual stack",
            ENV_DUAL_STACK,
            defaults.dual_stack,
            "dual_stack",
        ),
    ];
    let mut values = [false; 3];
    for (i, (name, var, default, key)) in bools.into_iter().enumerate() {
        let env_source = || format!("env {var} of container {ISTIO_PROXY}");
        let (value, source) = if let Some(v) = pod.proxy_env.get(var) {
            (go_bool(v, env_source())?, Source::Pod(env_source()))
        } else if let Some(v) = metadata.get(var) {
            let src = format!("annotation {} proxyMetadata.{var}", ann::PROXY_CONFIG);
            (go_bool(v, src.clone())?, Source::Pod(src))
        } else if let Some(b) = default {
            (b, Source::NodeDefault(key))
        } else {
            (false, Source::IstioDefault)
        };
        values[i] = value;
        sources.push((name, source));
    }
    [s.dns_capture, s.invalid_drop, s.dual_stack] = values;

    // istio-iptables' own environment: istio-init's in the init-container mode; istio-cni
    // reads it in its plugin process, which the container runtime starts with its own
    // environment (in practice Istio's defaults); the node defaults stand in for it.
    let init_env_source = |var: &str| {
        format!(
            "env {var} of {}",
            pod.init_path.as_deref().unwrap_or("the init container")
        )
    };
    let strings = [
        (
            "outbound owner groups",
            ENV_OWNER_GROUPS,
            &defaults.owner_groups_include,
            "outbound_owner_groups",
        ),
        (
            "outbound owner groups exclude",
            ENV_OWNER_GROUPS_EXCLUDE,
            &defaults.owner_groups_exclude,
            "outbound_owner_groups_exclude",
        ),
    ];
    for (name, var, default, key) in strings {
        let include = var == ENV_OWNER_GROUPS;
        let source = if let Some(v) = pod.init_env.get(var) {
            check_groups(v, include).map_err(named(init_env_source(var)))?;
            set_groups(&mut s, include, v);
            Source::Pod(init_env_source(var))
        } else if let Some(v) = default {
            set_groups(&mut s, include, v);
            Source::NodeDefault(key)
        } else {
            Source::IstioDefault
        };
        sources.push((name, source));
    }
    let source = if let Some(v) = pod.init_env.get(ENV_IPV4_LOOPBACK_CIDR) {
        s.ipv4_loopback_cidr = ann::ipv4_loopback(ENV_IPV4_LOOPBACK_CIDR, v)
            .map_err(named(init_env_source(ENV_IPV4_LOOPBACK_CIDR)))?;
        Source::Pod(init_env_source(ENV_IPV4_LOOPBACK_CIDR))
    } else if let Some(net) = defaults.ipv4_loopback_cidr {
        s.ipv4_loopback_cidr = net;
        Source::NodeDefault("ipv4_loopback_cidr")
    } else {
        Source::IstioDefault
    };
    sources.push(("IPv4 loopback CIDR", source));

    // Mesh config ports: the injector passes them to istio-init (and istio-validation) as
    // `-p`/`-z`.
    let ports = [
        (
            "outbound capture port",
            ["-p", "--envoy-port"],
            defaults.proxy_listen_port,
            "proxy_listen_port",
        ),
        (
            "inbound capture port",
            ["-z", "--inbound-capture-port"],
            defaults.proxy_inbound_listen_port,
            "proxy_inbound_listen_port",
        ),
    ];
    for (i, (name, flags, default, key)) in ports.into_iter().enumerate() {
        let out = if i == 0 {
            &mut s.proxy_listen_port
        } else {
            &mut s.proxy_inbound_listen_port
        };
        let source = if let Some(v) = flag_value(&pod.init_args, &flags) {
            let src = format!(
                "{} argument {}",
                pod.init_path.as_deref().unwrap_or("init container"),
                flags[0]
            );
            *out = ann::port(&src, v).map_err(named(src.clone()))?;
            Source::Pod(src)
        } else if let Some(p) = default {
            *out = p;
            Source::NodeDefault(key)
        } else {
            Source::IstioDefault
        };
        sources.push((name, source));
    }

    // DNS servers: istio-init reads the pod's resolv.conf, which no path can see.
    let source = match &defaults.dns_servers {
        Some(list) => {
            s.dns_servers = Some(list.clone());
            Source::NodeDefault("dns_servers")
        }
        None => Source::IstioDefault,
    };
    sources.push(("DNS servers", source));

    let model = model(annotations, &s)?;
    Ok(Resolved {
        model,
        settings: s,
        sources,
    })
}

/// The model of a pod from its annotations and its resolved spec settings: what ADD computes,
/// and what the agent recomputes from an attachment record.
pub fn model(annotations: &Annotations, s: &SpecSettings) -> Result<RedirectModel, InputError> {
    let mut m = RedirectModel::from_rule_annotations(annotations)?;
    if let Some(port) = status_port(annotations)? {
        if !m.exclude_inbound_ports.contains(&port) {
            m.exclude_inbound_ports.push(port);
        }
    }
    m.proxy_uids = s.proxy_uids.clone();
    m.proxy_gids = s.proxy_gids.clone();
    m.dns_capture = s.dns_capture;
    m.drop_invalid = s.invalid_drop;
    m.outbound_owner_groups = ann::owner_groups(
        (ENV_OWNER_GROUPS, &s.owner_groups_include),
        (ENV_OWNER_GROUPS_EXCLUDE, &s.owner_groups_exclude),
    )
    .map_err(|e| named(e.annotation.clone())(e))?;
    m.ipv4_loopback = s.ipv4_loopback_cidr;
    m.ports.outbound = s.proxy_listen_port;
    m.ports.inbound = s.proxy_inbound_listen_port;
    m.dns_servers = s.dns_servers.clone();
    m.validate()
        .map_err(|e| named(format!("model setting {}", e.annotation))(e))?;
    Ok(m)
}

fn set_groups(s: &mut SpecSettings, include: bool, v: &str) {
    if include {
        s.owner_groups_include = v.trim().to_owned();
    } else {
        s.owner_groups_exclude = v.trim().to_owned();
    }
}

/// `status.sidecar.istio.io/port`: the injector appends it, trimmed, to the excluded inbound
/// ports (`excludeInboundPort` in its templates), so it is read as an entry of that list is
/// (a leading 0 is octal to iptables); `0` (or empty) means no status port.
fn status_port(annotations: &Annotations) -> Result<Option<u16>, InputError> {
    let Some(v) = annotations.get(STATUS_PORT) else {
        return Ok(None);
    };
    let t = v.trim();
    if t.is_empty() || t == "0" {
        return Ok(None);
    }
    ann::istio_port(STATUS_PORT, v, t)
        .map(Some)
        .map_err(InputError::from)
}

/// Go's `strconv.ParseBool`, as Istio reads the proxy's boolean env. Istio only warns on a
/// bad value and reads it as false; meshcap refuses it, so a typo never silently turns a
/// capture feature off. Empty reads as false.
fn go_bool(v: &str, source: String) -> Result<bool, InputError> {
    if v.is_empty() {
        return Ok(false);
    }
    ann::go_bool(&source, v).map_err(named(source.clone()))
}

/// Validates one side of the owner groups as Istio writes them (gids, `*` for the include
/// side) with the other side at Istio's default. meshcap takes numeric gids only: Istio passes
/// group names to iptables, which resolves them in whatever `/etc/group` its process sees (the
/// node's, for istio-cni), so a name would mean different groups on different paths.
fn check_groups(v: &str, include: bool) -> Result<(), AnnotationError> {
    if include {
        ann::owner_groups(("", v), ("", "")).map(|_| ())
    } else if v.trim() == "*" {
        Err(AnnotationError::new("", v, "`*` is not allowed here"))
    } else {
        ann::owner_groups(("", "*"), ("", v)).map(|_| ())
    }
}

/// The value of a flag in an argument list: `-p 15001`, `-p=15001`, `--envoy-port 15001`.
fn flag_value<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        for f in flags {
            if a == *f {
                found = args.get(i + 1).map(String::as_str);
                i += 1;
            } else if let Some(v) = a.strip_prefix(f).and_then(|r| r.strip_prefix('=')) {
                found = Some(v);
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OwnerGroups;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn injected() -> Value {
        json!({
            "metadata": {"namespace": "default", "name": "web-0",
                "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": [
                {"name": "app", "image": "nginx"},
                {"name": "istio-proxy", "args": ["proxy", "sidecar"],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}
            ]}
        })
    }

    fn resolve_pod(v: &Value, d: &NodeDefaults) -> Result<Resolved, InputError> {
        resolve(&PodView::from_pod(v).unwrap(), d)
    }

    fn model_of(v: &Value) -> RedirectModel {
        resolve_pod(v, &NodeDefaults::default()).unwrap().model
    }

    fn proxy_env(v: &mut Value, env: Value) {
        v["spec"]["containers"][1]["env"] = env;
    }

    fn defaults(j: Value) -> NodeDefaults {
        NodeDefaults::from_json(j.as_object().unwrap()).unwrap()
    }

    #[test]
    fn plain_injected_pod_gets_istios_defaults() {
        let r = resolve_pod(&injected(), &NodeDefaults::default()).unwrap();
        assert_eq!(r.model, RedirectModel::default());
        assert_eq!(r.settings, SpecSettings::default());
        // The ids came from the pod; the rest are Istio's defaults, and say so.
        assert_eq!(
            r.sources[0].1,
            Source::Pod("istio-proxy securityContext.runAsUser".into())
        );
        assert!(r
            .defaulted()
            .iter()
            .any(|d| d == "DNS capture from Istio's default"));
    }

    #[test]
    fn custom_proxy_uid_and_gid_reach_the_model() {
        let mut v = injected();
        v["spec"]["containers"][1]["securityContext"] =
            json!({"runAsUser": 2000, "runAsGroup": 3000});
        let m = model_of(&v);
        assert_eq!((m.proxy_uids, m.proxy_gids), (vec![2000], vec![3000]));
        // Only the uid stated: the gid stays Istio's default.
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 2000});
        let m = model_of(&v);
        assert_eq!((m.proxy_uids, m.proxy_gids), (vec![2000], vec![1337]));
        // The pod-level securityContext is not the proxy's (istio-cni reads the container's).
        v["spec"]["containers"][1]["securityContext"] = Value::Null;
        v["spec"]["securityContext"] = json!({"runAsUser": 5});
        assert_eq!(model_of(&v).proxy_uids, vec![1337]);
    }

    #[test]
    fn uid_and_gid_zero_count_as_unset() {
        // Istio's injector writes this for TPROXY pods; istio-cni then exempts 1337, not root.
        let mut v = injected();
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 1337});
        let m = model_of(&v);
        assert_eq!((m.proxy_uids, m.proxy_gids), (vec![1337], vec![1337]));
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 0});
        // Zero falls through to the node default, never to root.
        let r = resolve_pod(&v, &defaults(json!({"proxy_uids": [7, 8]}))).unwrap();
        assert_eq!(
            (r.model.proxy_uids, r.model.proxy_gids),
            (vec![7, 8], vec![1337])
        );
    }

    #[test]
    fn proxy_env_wins_over_the_annotation_which_wins_over_the_node_default() {
        let mut v = injected();
        v["metadata"]["annotations"]["proxy.istio.io/config"] =
            json!("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n  INVALID_DROP: \"true\"");
        proxy_env(
            &mut v,
            json!([{"name": "ISTIO_META_DNS_CAPTURE", "value": "false"}]),
        );
        let node =
            defaults(json!({"dns_capture": true, "invalid_drop": false, "dual_stack": true}));
        let r = resolve_pod(&v, &node).unwrap();
        assert!(!r.model.dns_capture, "env says false");
        assert!(r.model.drop_invalid, "the annotation says true");
        assert!(r.settings.dual_stack, "the node default says true");
        let by_name: BTreeMap<_, _> = r.sources.iter().cloned().collect();
        assert_eq!(
            by_name["DNS capture"],
            Source::Pod("env ISTIO_META_DNS_CAPTURE of container istio-proxy".into())
        );
        assert_eq!(by_name["dual stack"], Source::NodeDefault("dual_stack"));
        // Mesh-wide DNS capture written into the env by the injector is honoured.
        let mut v = injected();
        proxy_env(
            &mut v,
            json!([{"name": "ISTIO_META_DNS_CAPTURE", "value": "True"},
                                 {"name": "INVALID_DROP", "value": "1"}]),
        );
        let m = model_of(&v);
        assert!(m.dns_capture && m.drop_invalid);
    }

    #[test]
    fn a_null_proxy_config_or_metadata_sets_nothing() {
        for doc in [
            "proxyMetadata: null",
            "proxyMetadata: ~",
            "proxyMetadata:",
            "null",
            "~",
        ] {
            let mut v = injected();
            v["metadata"]["annotations"]["proxy.istio.io/config"] = json!(doc);
            assert_eq!(model_of(&v), RedirectModel::default(), "{doc:?}");
        }
    }

    #[test]
    fn bad_env_values_name_their_source() {
        for var in [ENV_DNS_CAPTURE, ENV_INVALID_DROP, ENV_DUAL_STACK] {
            let mut v = injected();
            proxy_env(&mut v, json!([{"name": var, "value": "yes"}]));
            let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
            assert_eq!(err.origin, format!("env {var} of container istio-proxy"));
            assert!(err.to_string().contains("\"yes\""), "{err}");
        }
        let mut v = injected();
        v["spec"]["initContainers"] = json!([{"name": "istio-init", "args": ["-p", "0"],
            "env": [{"name": "ISTIO_OUTBOUND_OWNER_GROUPS", "value": "java,202"}]}]);
        let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
        assert_eq!(
            err.origin,
            "env ISTIO_OUTBOUND_OWNER_GROUPS of spec.initContainers[0]"
        );
        v["spec"]["initContainers"][0]["env"] = json!([]);
        let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
        assert_eq!(err.origin, "spec.initContainers[0] argument -p");
        v["spec"]["initContainers"][0]["args"] = json!([]);
        v["spec"]["initContainers"][0]["env"] =
            json!([{"name": "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "value": "10.0.0.0/8"}]);
        let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
        assert_eq!(
            err.origin,
            "env ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR of spec.initContainers[0]"
        );
        let mut v = injected();
        v["metadata"]["annotations"][STATUS_PORT] = json!("http");
        let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
        assert_eq!(err.origin, format!("annotation {STATUS_PORT}"));
    }

    #[test]
    fn istio_init_environment_and_args() {
        let mut v = injected();
        v["spec"]["initContainers"] = json!([{"name": "istio-init",
            "args": ["istio-iptables", "-p", "15101", "-z=15106", "-u", "1337"],
            "env": [{"name": "ISTIO_OUTBOUND_OWNER_GROUPS", "value": "*"},
                    {"name": "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "value": "888, 999"},
                    {"name": "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "value": "127.0.0.1/8"}]}]);
        let m = model_of(&v);
        assert_eq!((m.ports.outbound, m.ports.inbound), (15101, 15106));
        assert_eq!(
            m.outbound_owner_groups,
            OwnerGroups::AllExcept(vec![888, 999])
        );
        assert_eq!(m.ipv4_loopback, "127.0.0.0/8".parse::<IpNet>().unwrap());
        // An include list other than `*` wins over the exclude list, as in Istio.
        v["spec"]["initContainers"][0]["env"][0]["value"] = json!("202");
        assert_eq!(
            model_of(&v).outbound_owner_groups,
            OwnerGroups::Only(vec![202])
        );
    }

    #[test]
    fn node_defaults_fill_what_the_pod_does_not_say() {
        let node = defaults(json!({
            "proxy_uids": [3, 4], "proxy_gids": [1, 2],
            "outbound_owner_groups_exclude": "888",
            "ipv4_loopback_cidr": "127.0.0.0/8",
            "proxy_listen_port": 15101, "proxy_inbound_listen_port": 15106,
            "dns_servers": ["10.96.0.10", "fd00::a"], "dns_capture": true
        }));
        // The runtime path: annotations only.
        let pod = PodView {
            annotations: [("sidecar.istio.io/status".to_owned(), "{}".to_owned())].into(),
            ..PodView::default()
        };
        let r = resolve(&pod, &node).unwrap();
        let m = &r.model;
        assert_eq!(
            (m.proxy_uids.clone(), m.proxy_gids.clone()),
            (vec![3, 4], vec![1, 2])
        );
        assert_eq!(m.outbound_owner_groups, OwnerGroups::AllExcept(vec![888]));
        assert_eq!((m.ports.outbound, m.ports.inbound), (15101, 15106));
        assert!(m.dns_capture);
        assert_eq!(m.dns_servers.as_ref().map(Vec::len), Some(2));
        assert!(r
            .sources
            .iter()
            .all(|(_, s)| matches!(s, Source::NodeDefault(_)) || *s == Source::IstioDefault));
        // The record's settings give the same model back (the agent's repair).
        assert_eq!(model(&pod.annotations, &r.settings).unwrap(), r.model);
        let json = serde_json::to_string(&r.settings).unwrap();
        assert_eq!(
            serde_json::from_str::<SpecSettings>(&json).unwrap(),
            r.settings
        );
    }

    #[test]
    fn status_port_is_excluded_inbound() {
        let mut v = injected();
        v["metadata"]["annotations"][STATUS_PORT] = json!("15999");
        assert!(model_of(&v).exclude_inbound_ports.contains(&15999));
        v["metadata"]["annotations"][STATUS_PORT] = json!("0");
        assert_eq!(model_of(&v), RedirectModel::default());
        // An entry of excludeInboundPorts once injected: iptables reads a leading 0 as octal.
        v["metadata"]["annotations"][STATUS_PORT] = json!(" 010 ");
        let m = model_of(&v);
        assert!(m.exclude_inbound_ports.contains(&8) && !m.exclude_inbound_ports.contains(&10));
        let notes = crate::annotations::reading_notes(&ann::from_pairs(&[(STATUS_PORT, "010")]));
        assert!(notes.iter().any(|n| n.contains("is port 8")), "{notes:?}");
    }

    #[test]
    fn bad_node_defaults_name_their_key() {
        for (j, key) in [
            (json!({"dns_capture": "yes"}), "dns_capture"),
            (json!({"proxy_uids": [0]}), "proxy_uids"),
            (json!({"proxy_uids": []}), "proxy_uids"),
            (json!({"proxy_gids": [4294967295u64]}), "proxy_gids"),
            (
                json!({"outbound_owner_groups": "java"}),
                "outbound_owner_groups",
            ),
            (
                json!({"outbound_owner_groups_exclude": "*"}),
                "outbound_owner_groups_exclude",
            ),
            (
                json!({"ipv4_loopback_cidr": "127.0.0.1/7"}),
                "ipv4_loopback_cidr",
            ),
            (json!({"proxy_listen_port": 70000}), "proxy_listen_port"),
            (json!({"dns_servers": ["dns.local"]}), "dns_servers"),
            (json!({"dns_captrue": true}), "dns_captrue"),
        ] {
            let err = NodeDefaults::from_json(j.as_object().unwrap()).unwrap_err();
            assert_eq!(err.origin, format!("plugin config istio.{key}"), "{err}");
        }
    }

    #[test]
    fn invalid_annotation_is_named() {
        let mut v = injected();
        v["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] = json!("BOGUS");
        let err = resolve_pod(&v, &NodeDefaults::default()).unwrap_err();
        assert_eq!(err.origin, "annotation sidecar.istio.io/interceptionMode");
    }
}

//! The Linkerd front end: a Linkerd-injected pod gets what linkerd-cni installs for it
//! (linkerd/linkerd2-proxy-init `cni-plugin/main.go` cmdAdd, rules by `pkg/iptables`):
//!
//! | setting | linkerd-cni's source | meshcap's source | default |
//! |---|---|---|---|
//! | inbound port | CNI conf `incoming-proxy-port` | plugin `linkerd.inbound_proxy_port` | 4143 |
//! | outbound port | CNI conf `outgoing-proxy-port` | plugin `linkerd.outbound_proxy_port` | 4140 |
//! | proxy uid | conf `proxy-uid`, annotation `config.linkerd.io/proxy-uid` | same | 2102 |
//! | proxy gid | conf `proxy-gid`, annotation `config.linkerd.io/proxy-gid` | same | none |
//! | ignored inbound ports | conf + annotation `config.linkerd.io/skip-inbound-ports` appended | same | 4191,4190 |
//! | ignored outbound ports | conf, replaced by `config.linkerd.io/skip-outbound-ports` | same | none |
//! | skipped inbound sources | `config.linkerd.io/skip-subnets` | same | none |
//! | redirected inbound ports | conf `ports-to-redirect` | plugin `linkerd.ports_to_redirect` | all |
//! | IPv6 rules | conf `ipv6` | plugin `linkerd.ipv6` | off |
//!
//! Rules (nat only, TCP only): inbound TCP goes to the inbound port except ignored ports and
//! skipped sources; outbound, the proxy's uid/gid and everything over lo are never captured,
//! ignored ports neither, all other TCP goes to the outbound port. No DNS, no 127.0.0.6
//! passthrough, no hairpin of the proxy's own connections to the pod address.
//!
//! Input handling is Linkerd's: a malformed port entry is logged and dropped (the ADD
//! succeeds, `makeMultiportDestinations`); a bad subnet or uid fails the ADD; a subnet means
//! what iptables makes of it as linkerd-cni writes it (host bits cleared, a prefix length with a
//! leading 0 octal). Settings the pod leaves unset come from its Namespace where the caller can
//! read it ([`fill_from_namespace`]).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::annotations::{AnnotationError, Annotations, InputKind, Selector};
use crate::model::{Families, PortRange, ProxyPorts, RedirectModel};

/// Linkerd's sidecar container.
pub const PROXY_CONTAINER: &str = "linkerd-proxy";
/// Linkerd's privileged init container: a pod with it sets up its own rules.
pub const INIT_CONTAINER: &str = "linkerd-init";
/// Written by the injector on every injected pod.
pub const PROXY_VERSION: &str = "linkerd.io/proxy-version";
pub const SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
pub const SKIP_SUBNETS: &str = "config.linkerd.io/skip-subnets";
pub const PROXY_UID: &str = "config.linkerd.io/proxy-uid";
pub const PROXY_GID: &str = "config.linkerd.io/proxy-gid";
/// The annotations linkerd-cni reads from the pod's Namespace when the pod has none or an
/// empty one (`getAnnotationOverride`).
pub const NAMESPACE_FALLBACK: [&str; 5] = [
    SKIP_OUTBOUND_PORTS,
    SKIP_INBOUND_PORTS,
    SKIP_SUBNETS,
    PROXY_UID,
    PROXY_GID,
];
/// Label of Linkerd's control-plane pods: they also skip the API server's ports outbound.
pub const CONTROL_PLANE_LABEL: &str = "linkerd.io/control-plane-component";
/// The ports linkerd-cni skips outbound for control-plane pods when it cannot read the
/// `default/kubernetes` Service (and meshcap wherever it does not read it).
pub const API_SERVER_PORTS: [u16; 2] = [443, 6443];
pub const CHAIN_PREFIX: &str = "MESHCAP_LINKERD";

/// Node-wide settings linkerd-cni keeps in its own CNI config (`linkerd` in meshcap's
/// plugin config), with the linkerd2-cni chart's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkerdNode {
    pub inbound_proxy_port: u16,
    pub outbound_proxy_port: u16,
    pub proxy_uid: i64,
    /// Negative: no gid rule (the chart's `proxyGID: -1`).
    pub proxy_gid: i64,
    pub ports_to_redirect: Vec<u16>,
    pub inbound_ports_to_ignore: Vec<String>,
    pub outbound_ports_to_ignore: Vec<String>,
    /// Inbound sources never captured (linkerd-cni's `subnets-to-ignore`), for pods without
    /// `config.linkerd.io/skip-subnets`, which replaces them.
    pub subnets_to_ignore: Vec<String>,
    pub ipv6: bool,
    /// Where the pod's labels cannot be seen (the runtime-annotation path), pods of these
    /// namespaces count as control-plane components (the label
    /// `linkerd.io/control-plane-component`): Linkerd installs its control plane in `linkerd`.
    pub control_plane_namespaces: Vec<String>,
}

impl Default for LinkerdNode {
    fn default() -> Self {
        LinkerdNode {
            inbound_proxy_port: 4143,
            outbound_proxy_port: 4140,
            proxy_uid: 2102,
            proxy_gid: -1,
            ports_to_redirect: Vec::new(),
            inbound_ports_to_ignore: vec!["4191".into(), "4190".into()],
            outbound_ports_to_ignore: Vec::new(),
            subnets_to_ignore: Vec::new(),
            ipv6: false,
            control_plane_namespaces: vec!["linkerd".into()],
        }
    }
}

/// What a Linkerd pod's model takes besides its annotations, as resolved when the pod was set
/// up: the node's settings in force then, and whether the pod is a control-plane component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    /// Read leniently: a record a later release wrote may hold settings this one does not
    /// know (the plugin configuration itself refuses unknown keys).
    #[serde(deserialize_with = "known_node_settings")]
    pub node: LinkerdNode,
    pub control_plane: bool,
    /// For a control-plane pod, the API server's ports as the `default/kubernetes` Service
    /// states them (each port, and its target port when a number), where the path read the
    /// Service (the plugin's API path); `None`: [`API_SERVER_PORTS`], linkerd-cni's fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_ports: Option<Vec<u16>>,
}

/// A [`LinkerdNode`] from a stored record, keys this release does not know left out.
fn known_node_settings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LinkerdNode, D::Error> {
    let mut v = Value::deserialize(d)?;
    let known = serde_json::to_value(LinkerdNode::default()).map_err(serde::de::Error::custom)?;
    if let (Some(obj), Some(known)) = (v.as_object_mut(), known.as_object()) {
        obj.retain(|k, _| known.contains_key(k));
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

impl PodSettings {
    /// A control-plane pod by its label when the labels are seen (`Some`, the pod spec is
    /// known), else by its namespace (`linkerd.control_plane_namespaces`).
    pub fn resolve(
        node: &LinkerdNode,
        labels: Option<&BTreeMap<String, String>>,
        namespace: Option<&str>,
    ) -> PodSettings {
        let control_plane = match labels {
            Some(l) => is_control_plane(l),
            None => {
                namespace.is_some_and(|ns| node.control_plane_namespaces.iter().any(|n| n == ns))
            }
        };
        PodSettings {
            node: node.clone(),
            control_plane,
            api_server_ports: None,
        }
    }

    /// The API server's ports read from the `default/kubernetes` Service, kept for a
    /// control-plane pod only.
    pub fn with_api_server_ports(mut self, ports: Option<&[u16]>) -> PodSettings {
        self.api_server_ports = ports.filter(|_| self.control_plane).map(<[u16]>::to_vec);
        self
    }
}

/// Whether the pod's labels make it a Linkerd control-plane component.
pub fn is_control_plane(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(CONTROL_PLANE_LABEL)
        .is_some_and(|v| !v.is_empty())
}

/// The ports linkerd-cni skips outbound for a control-plane pod from the `default/kubernetes`
/// Service (`getAPIServerPorts`): each port, and its target port when that is a number (a
/// named target port adds nothing). `None` when the object is not such a Service.
pub fn api_server_ports(service: &Value) -> Option<Vec<u16>> {
    let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
    let mut out = Vec::new();
    for p in service.pointer("/spec/ports")?.as_array()? {
        out.push(port(p.get("port")?)?);
        if let Some(target) = p.get("targetPort").and_then(port) {
            out.push(target);
        }
    }
    Some(out)
}

/// Whether linkerd-cni would set this pod up: a `linkerd-proxy` container (or native sidecar)
/// and no `linkerd-init` init container.
pub fn wants_pod(pod: &Value) -> Result<(), String> {
    let spec = pod.get("spec");
    if super::has_init_container(spec, INIT_CONTAINER) {
        return Err(format!("{INIT_CONTAINER} init container is present"));
    }
    if !super::has_container(spec, PROXY_CONTAINER) {
        return Err(format!("no {PROXY_CONTAINER} container"));
    }
    Ok(())
}

/// The model of a Linkerd pod from its annotations and its resolved settings. `warnings` gets
/// one line per dropped port entry.
pub fn model(
    annotations: &Annotations,
    settings: &PodSettings,
    warnings: &mut Vec<String>,
) -> Result<RedirectModel, AnnotationError> {
    let node = &settings.node;
    // Each entry with where it was written, for the warning that drops it.
    let from_node = |key: &'static str, entries: &[String]| -> Vec<(&'static str, String)> {
        entries.iter().map(|e| (key, e.clone())).collect()
    };
    let mut inbound_ignored = from_node(
        "linkerd.inbound_ports_to_ignore",
        &node.inbound_ports_to_ignore,
    );
    let mut outbound_ignored = from_node(
        "linkerd.outbound_ports_to_ignore",
        &node.outbound_ports_to_ignore,
    );
    // linkerd-cni splits on "," without trimming, so " 80" is a malformed entry there too.
    if let Some(v) = non_empty(annotations, SKIP_OUTBOUND_PORTS) {
        outbound_ignored = v
            .split(',')
            .map(|e| (SKIP_OUTBOUND_PORTS, e.to_owned()))
            .collect();
    }
    if let Some(v) = non_empty(annotations, SKIP_INBOUND_PORTS) {
        inbound_ignored.extend(v.split(',').map(|e| (SKIP_INBOUND_PORTS, e.to_owned())));
    }
    // The annotation replaces the node's list, as linkerd-cni overrides `SubnetsToIgnore`.
    // Errors name where the entries came from.
    let (subnet_source, subnet_entries): (&str, Vec<String>) =
        match non_empty(annotations, SKIP_SUBNETS) {
            Some(v) => (SKIP_SUBNETS, v.split(',').map(str::to_owned).collect()),
            None => ("linkerd.subnets_to_ignore", node.subnets_to_ignore.clone()),
        };
    let subnet_error = |value: &str, why: &str| source_error(subnet_source, value, why);
    at_most(subnet_source, subnet_entries.len())?;
    let mut subnets = Vec::new();
    for entry in &subnet_entries {
        let (net, note) = skip_subnet(entry).map_err(|why| subnet_error(entry, &why))?;
        warnings.extend(note.map(|n| format!("{subnet_source}: {n}")));
        subnets.push(net);
    }
    let mut uid = node.proxy_uid;
    let uid_annotated = non_empty(annotations, PROXY_UID);
    if let Some(v) = uid_annotated {
        uid = go_atoi(v).ok_or_else(|| AnnotationError::new(PROXY_UID, v, "not an integer"))?;
    }
    let mut gid = node.proxy_gid;
    if let Some(v) = non_empty(annotations, PROXY_GID) {
        gid = go_atoi(v).ok_or_else(|| AnnotationError::new(PROXY_GID, v, "not an integer"))?;
    }
    if settings.control_plane {
        let ports = settings
            .api_server_ports
            .as_deref()
            .unwrap_or(&API_SERVER_PORTS);
        outbound_ignored.extend(
            ports
                .iter()
                .map(|p| ("the API server's ports", p.to_string())),
        );
    }
    // linkerd-cni writes the uid rule only for a uid above 0 and the gid rule only for a gid
    // above 0; with neither, its rules send the proxy's own connections back to the proxy.
    // meshcap refuses that pod instead, naming where the uid came from.
    if uid <= 0 && gid <= 0 {
        const WHY: &str = "with no proxy gid either, no rule exempts the proxy's own traffic, \
                           which would loop back to the proxy (linkerd-cni writes no uid rule for \
                           a uid of 0 or less)";
        return Err(match uid_annotated {
            Some(v) => source_error(PROXY_UID, v, WHY),
            None => source_error("linkerd.proxy_uid", &uid.to_string(), WHY),
        });
    }
    let id = |v: i64, what: &str| -> Result<Vec<u32>, AnnotationError> {
        match v {
            v if v <= 0 => Ok(Vec::new()),
            v if v < i64::from(u32::MAX) => Ok(vec![v as u32]),
            v => Err(AnnotationError::new(what, &v.to_string(), "out of range")),
        }
    };
    // linkerd-cni writes every subnet into its IPv4 rules, always, where iptables refuses an
    // IPv6 one; and with `ipv6` into its IPv6 rules too, where ip6tables refuses an IPv4 one.
    if let Some(net) = subnets.iter().find(|n| n.addr().is_ipv6()) {
        return Err(subnet_error(
            &net.to_string(),
            "an IPv6 subnet cannot be skipped in the IPv4 rules linkerd-cni always writes",
        ));
    }
    if node.ipv6 {
        if let Some(net) = subnets.iter().find(|n| n.addr().is_ipv4()) {
            return Err(subnet_error(
                &net.to_string(),
                "an IPv4 subnet cannot be skipped in the IPv6 rules linkerd.ipv6 asks for",
            ));
        }
    }
    at_most("linkerd.ports_to_redirect", node.ports_to_redirect.len())?;
    let model = RedirectModel {
        include_inbound_ports: if node.ports_to_redirect.is_empty() {
            Selector::All
        } else {
            Selector::Only(node.ports_to_redirect.clone())
        },
        exclude_inbound_ports: Vec::new(),
        exclude_outbound_ports: Vec::new(),
        exclude_inbound_port_ranges: port_ranges(&inbound_ignored, warnings)?,
        exclude_outbound_port_ranges: port_ranges(&outbound_ignored, warnings)?,
        exclude_inbound_sources: subnets,
        proxy_uids: id(uid, PROXY_UID)?,
        proxy_gids: id(gid, PROXY_GID)?,
        ports: ProxyPorts {
            outbound: node.outbound_proxy_port,
            inbound: node.inbound_proxy_port,
            tunnel: None,
            ..ProxyPorts::default()
        },
        families: Families {
            v4: true,
            v6: node.ipv6,
        },
        chain_prefix: CHAIN_PREFIX.to_owned(),
        inbound_passthrough: false,
        proxy_hairpin: false,
        exclude_outbound_udp: false,
        ..RedirectModel::default()
    };
    model
        .validate()
        .map_err(|e| e.of_kind(InputKind::PluginSetting))?;
    Ok(model)
}

/// Whether linkerd-cni would read the pod's Namespace: one of [`NAMESPACE_FALLBACK`] is unset
/// or empty on the pod.
pub fn reads_namespace(annotations: &Annotations) -> bool {
    NAMESPACE_FALLBACK
        .iter()
        .any(|key| non_empty(annotations, key).is_none())
}

/// The pod's annotations with each of [`NAMESPACE_FALLBACK`] the pod leaves unset or empty
/// taken from its Namespace's annotations, where that one is not empty. Returns the keys
/// taken.
pub fn fill_from_namespace(
    annotations: &mut Annotations,
    namespace_annotations: &Annotations,
) -> Vec<&'static str> {
    let mut taken = Vec::new();
    for key in NAMESPACE_FALLBACK {
        if non_empty(annotations, key).is_some() {
            continue;
        }
        if let Some(value) = non_empty(namespace_annotations, key) {
            annotations.insert(key.to_owned(), value.to_owned());
            taken.push(key);
        }
    }
    taken
}

fn non_empty<'a>(annotations: &'a Annotations, key: &str) -> Option<&'a str> {
    annotations
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// One `config.linkerd.io/skip-subnets` entry as linkerd-cni checks it and iptables then reads
/// it. linkerd-cni trims the entry and checks it with Go's `net.ParseCIDR` (the length in
/// decimal, leading zeros allowed), then hands it to iptables as written, which reads a length
/// with a leading 0 as octal (`/010` is /8, `/032` is /26) and refuses `/08` and `/09`, failing
/// linkerd-cni's ADD. iptables also clears host bits. Returns the subnet the rules match and, when
/// that is not what the entry looks like, a note saying why.
fn skip_subnet(entry: &str) -> Result<(IpNet, Option<String>), String> {
    let trimmed = entry.trim();
    let invalid = || format!("{trimmed} is not a valid CIDR address");
    let (addr, bits) = trimmed.split_once('/').ok_or_else(invalid)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| invalid())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    // Go's `dtoi`: at least one decimal digit and nothing else; then at most the address's bits.
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let decimal = bits
        .bytes()
        .try_fold(0u32, |n, b| {
            n.checked_mul(10)?.checked_add(u32::from(b - b'0'))
        })
        .filter(|n| *n <= max)
        .ok_or_else(invalid)?;
    let octal = bits.len() > 1 && bits.starts_with('0');
    let len = if octal {
        // Below the decimal value, so within range.
        u8::from_str_radix(bits, 8).map_err(|_| {
            format!(
                "iptables refuses the prefix length of {trimmed}: a leading 0 makes it octal, and \
                 8 and 9 are not octal digits (linkerd-cni's ADD fails on it too)"
            )
        })?
    } else {
        decimal as u8
    };
    let net = IpNet::new(addr, len).expect("length checked").trunc();
    let note = if octal && u32::from(len) != decimal {
        Some(format!(
            "{trimmed} is {net} (iptables reads a leading 0 as octal, as under linkerd-cni)"
        ))
    } else if net.addr() != addr {
        Some(format!(
            "{trimmed} is {net} (iptables clears the host bits, as under linkerd-cni)"
        ))
    } else {
        None
    };
    Ok((net, note))
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, nothing else.
fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Linkerd's `ParsePortRange`: `N` or `A-B`, each 0 to 65535, `A <= B`.
fn parse_port_range(s: &str) -> Option<PortRange> {
    let bounds: Vec<&str> = s.split('-').collect();
    let (lo, hi) = match bounds.as_slice() {
        [one] => (*one, *one),
        [lo, hi] => (*lo, *hi),
        _ => return None,
    };
    let port = |p: &str| go_atoi(p).and_then(|v| u16::try_from(v).ok());
    let (first, last) = (port(lo)?, port(hi)?);
    (first <= last).then_some(PortRange { first, last })
}

/// An error about an input named by `source`: a node setting (`linkerd.KEY`) or else what the
/// pod wrote.
fn source_error(source: &str, value: &str, why: impl Into<String>) -> AnnotationError {
    of_source(AnnotationError::new(source, value, why))
}

/// `error` of the kind its input's name says: a node setting (`linkerd.KEY`) or the pod's.
fn of_source(error: AnnotationError) -> AnnotationError {
    if error.annotation.starts_with("linkerd.") {
        error.of_kind(InputKind::PluginSetting)
    } else {
        error
    }
}

/// A list of `len` entries from `source`, at most
/// [`MAX_LIST_LEN`](crate::annotations::MAX_LIST_LEN) of them.
fn at_most(source: &str, len: usize) -> Result<(), AnnotationError> {
    crate::annotations::at_most(source, len).map_err(of_source)
}

/// The port entries linkerd-cni keeps: a malformed entry is logged and dropped. A list with
/// entries none of which is valid fails, as it does under linkerd-cni: its multiport grouping
/// then hands iptables an empty `--dports`, which iptables refuses.
fn port_ranges(
    entries: &[(&'static str, String)],
    warnings: &mut Vec<String>,
) -> Result<Vec<PortRange>, AnnotationError> {
    // Each source (the node's list, the pod's annotation) at most MAX_LIST_LEN entries.
    let mut per_origin: BTreeMap<&str, usize> = BTreeMap::new();
    for (origin, _) in entries {
        *per_origin.entry(origin).or_default() += 1;
    }
    for (origin, count) in per_origin {
        at_most(origin, count)?;
    }
    let mut out = Vec::new();
    for (origin, entry) in entries {
        match parse_port_range(entry) {
            Some(r) => {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            None => warnings.push(format!(
                "{origin}: ignoring invalid port entry {entry:?} (as linkerd-cni does)"
            )),
        }
    }
    if let (true, Some((origin, _))) = (out.is_empty(), entries.first()) {
        let written: Vec<&str> = entries.iter().map(|(_, e)| e.as_str()).collect();
        return Err(source_error(
            origin,
            &written.join(","),
            "no valid port entry (N or A-B): linkerd-cni's iptables command would get an empty port list and fail",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::annotations::from_pairs as ann;

    fn model(
        annotations: &Annotations,
        labels: Option<&BTreeMap<String, String>>,
        node: &LinkerdNode,
        warnings: &mut Vec<String>,
    ) -> Result<RedirectModel, AnnotationError> {
        super::model(
            annotations,
            &PodSettings::resolve(node, labels, None),
            warnings,
        )
    }

    #[test]
    fn a_proxy_without_a_positive_uid_or_gid_is_refused_naming_the_source() {
        let mut w = Vec::new();
        let node = LinkerdNode::default();
        for uid in ["0", "-1"] {
            let err = model(&ann(&[(PROXY_UID, uid)]), None, &node, &mut w).unwrap_err();
            assert_eq!(err.annotation, PROXY_UID, "{err}");
            assert_eq!(err.kind, InputKind::Annotation, "{err}");
            assert!(err.to_string().contains("loop back"), "{err}");
        }
        // A gid alone exempts the proxy, as linkerd-cni's gid rule does.
        let m = model(
            &ann(&[(PROXY_UID, "0"), (PROXY_GID, "2102")]),
            None,
            &node,
            &mut w,
        )
        .unwrap();
        assert!(m.proxy_uids.is_empty());
        assert_eq!(m.proxy_gids, vec![2102]);
        // From the node's setting: named as the plugin setting.
        let node = LinkerdNode {
            proxy_uid: 0,
            ..LinkerdNode::default()
        };
        let err = model(&Annotations::new(), None, &node, &mut w).unwrap_err();
        assert_eq!(err.annotation, "linkerd.proxy_uid", "{err}");
        assert_eq!(err.kind, InputKind::PluginSetting, "{err}");
    }

    #[test]
    fn lists_are_bounded() {
        let mut w = Vec::new();
        let node = LinkerdNode::default();
        let ports: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
        for key in [SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS] {
            let err = model(&ann(&[(key, &ports.join(","))]), None, &node, &mut w).unwrap_err();
            assert_eq!(err.annotation, key, "{err}");
            assert!(err.to_string().contains("more than 256"), "{err}");
        }
        let nets: Vec<String> = (0..300).map(|i| format!("10.{}.0.0/16", i % 250)).collect();
        let err = model(
            &ann(&[(SKIP_SUBNETS, &nets.join(","))]),
            None,
            &node,
            &mut w,
        )
        .unwrap_err();
        assert_eq!(err.annotation, SKIP_SUBNETS, "{err}");
        let m = model(
            &ann(&[(SKIP_OUTBOUND_PORTS, &ports[..256].join(","))]),
            None,
            &node,
            &mut w,
        );
        assert!(m.is_ok(), "{m:?}");
        // The pod's 256 ignored inbound ports join the node's two: each source is bounded.
        let m = model(
            &ann(&[(SKIP_INBOUND_PORTS, &ports[..256].join(","))]),
            None,
            &node,
            &mut w,
        );
        assert_eq!(m.unwrap().exclude_inbound_port_ranges.len(), 258);
    }

    #[test]
    fn the_nodes_subnets_to_ignore_unless_the_pod_names_its_own() {
        let mut w = Vec::new();
        let node = LinkerdNode {
            subnets_to_ignore: vec!["10.1.0.0/16".into(), "192.168.0.0/24".into()],
            ..LinkerdNode::default()
        };
        let m = model(&Annotations::new(), None, &node, &mut w).unwrap();
        let nets: Vec<String> = m
            .exclude_inbound_sources
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.1.0.0/16", "192.168.0.0/24"]);
        // The annotation replaces the node's list, as linkerd-cni overrides it.
        let m = model(&ann(&[(SKIP_SUBNETS, "10.9.0.0/16")]), None, &node, &mut w).unwrap();
        assert_eq!(m.exclude_inbound_sources.len(), 1);
        assert_eq!(m.exclude_inbound_sources[0].to_string(), "10.9.0.0/16");
        // A bad entry of the node's is named as the plugin setting.
        let node = LinkerdNode {
            subnets_to_ignore: vec!["10.1.0.0/16".into(), "nope".into()],
            ..LinkerdNode::default()
        };
        let err = model(&Annotations::new(), None, &node, &mut w).unwrap_err();
        assert_eq!(err.annotation, "linkerd.subnets_to_ignore", "{err}");
        assert_eq!(err.kind, InputKind::PluginSetting, "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn defaults_are_the_charts() {
        let mut w = Vec::new();
        let m = model(&Annotations::new(), None, &LinkerdNode::default(), &mut w).unwrap();
        assert_eq!(m.proxy_uids, vec![2102]);
        assert!(m.proxy_gids.is_empty());
        assert_eq!(m.ports.inbound, 4143);
        assert_eq!(m.ports.outbound, 4140);
        assert_eq!(
            m.exclude_inbound_port_ranges,
            vec![
                PortRange {
                    first: 4191,
                    last: 4191
                },
                PortRange {
                    first: 4190,
                    last: 4190
                }
            ]
        );
        assert!(!m.families.v6 && w.is_empty());
    }

    #[test]
    fn a_port_list_with_no_valid_entry_fails_as_under_linkerd_cni() {
        let node = LinkerdNode::default();
        for bad in ["abc", ",", " 80", "80-x,y"] {
            let mut w = Vec::new();
            let e = model(&ann(&[(SKIP_OUTBOUND_PORTS, bad)]), None, &node, &mut w).unwrap_err();
            assert_eq!(e.annotation, SKIP_OUTBOUND_PORTS, "{bad:?}");
            assert!(e.reason.contains("no valid port entry"), "{e}");
        }
        // The inbound list keeps the node's valid entries, so bad annotation entries drop.
        let mut w = Vec::new();
        let m = model(&ann(&[(SKIP_INBOUND_PORTS, "abc")]), None, &node, &mut w).unwrap();
        assert_eq!(m.exclude_inbound_port_ranges.len(), 2);
        assert_eq!(w.len(), 1, "{w:?}");
        let only_bad = LinkerdNode {
            inbound_ports_to_ignore: vec!["x".into()],
            ..LinkerdNode::default()
        };
        let e = model(&Annotations::new(), None, &only_bad, &mut w).unwrap_err();
        assert_eq!(
            (e.annotation.as_str(), e.kind),
            ("linkerd.inbound_ports_to_ignore", InputKind::PluginSetting)
        );
    }

    #[test]
    fn annotations_append_replace_and_drop_bad_entries() {
        let mut w = Vec::new();
        let m = model(
            &ann(&[
                (SKIP_INBOUND_PORTS, "25,8000-8010, 9"),
                (SKIP_OUTBOUND_PORTS, "3306,x"),
                (SKIP_SUBNETS, "10.1.1.1/24 "),
                (PROXY_UID, "3000"),
                (PROXY_GID, "3001"),
            ]),
            None,
            &LinkerdNode::default(),
            &mut w,
        )
        .unwrap();
        assert_eq!(m.exclude_inbound_port_ranges.len(), 4);
        assert_eq!(
            m.exclude_outbound_port_ranges,
            vec![PortRange {
                first: 3306,
                last: 3306
            }]
        );
        // Two dropped port entries, and the subnet's host bits cleared.
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("10.1.1.1/24 is 10.1.1.0/24"), "{w:?}");
        // Each warning starts with the annotation that held the value.
        assert!(
            w[0].starts_with("config.linkerd.io/skip-subnets: "),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("config.linkerd.io/skip-inbound-ports: ") && w[1].contains("\" 9\""),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("config.linkerd.io/skip-outbound-ports: ") && w[2].contains("\"x\""),
            "{w:?}"
        );
        assert_eq!(
            m.exclude_inbound_sources,
            vec!["10.1.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            (m.proxy_uids.clone(), m.proxy_gids.clone()),
            (vec![3000], vec![3001])
        );
    }

    #[test]
    fn control_plane_pods_skip_the_api_servers_ports_from_the_service_else_443_and_6443() {
        let service = serde_json::json!({"kind": "Service", "spec": {"ports": [
            {"name": "https", "port": 443, "targetPort": 8443},
            {"name": "alt", "port": 7443, "targetPort": "https"}
        ]}});
        assert_eq!(api_server_ports(&service), Some(vec![443, 8443, 7443]));
        assert_eq!(
            api_server_ports(&serde_json::json!({"kind": "Status"})),
            None
        );
        let labels: BTreeMap<String, String> =
            [(CONTROL_PLANE_LABEL.to_owned(), "destination".to_owned())].into();
        let node = LinkerdNode::default();
        let skipped = |s: &PodSettings| {
            let m = super::model(&Annotations::new(), s, &mut Vec::new()).unwrap();
            m.exclude_outbound_port_ranges
                .iter()
                .map(|r| r.first)
                .collect::<Vec<_>>()
        };
        let read = PodSettings::resolve(&node, Some(&labels), None)
            .with_api_server_ports(Some(&[443, 8443]));
        assert_eq!(skipped(&read), [443, 8443]);
        let fallback = PodSettings::resolve(&node, Some(&labels), None).with_api_server_ports(None);
        assert_eq!(skipped(&fallback), API_SERVER_PORTS);
        // Not a control-plane pod: the ports are neither kept nor skipped.
        let app = PodSettings::resolve(&node, Some(&BTreeMap::new()), None)
            .with_api_server_ports(Some(&[443, 8443]));
        assert_eq!(app.api_server_ports, None);
        assert!(skipped(&app).is_empty());
    }

    #[test]
    fn namespace_fills_what_the_pod_leaves_unset_or_empty() {
        let pod: Annotations = [
            (SKIP_INBOUND_PORTS, "9000"),
            (SKIP_SUBNETS, ""),
            (PROXY_VERSION, "stable"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(reads_namespace(&pod));
        let namespace: Annotations = [
            (SKIP_INBOUND_PORTS, "7000"),
            (SKIP_SUBNETS, "10.1.0.0/16"),
            (SKIP_OUTBOUND_PORTS, "3306"),
            (PROXY_GID, ""),
            ("config.linkerd.io/proxy-cpu-limit", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut filled = pod.clone();
        let taken = fill_from_namespace(&mut filled, &namespace);
        assert_eq!(taken, [SKIP_OUTBOUND_PORTS, SKIP_SUBNETS]);
        assert_eq!(
            filled[SKIP_INBOUND_PORTS], "9000",
            "the pod's own value wins"
        );
        assert_eq!(
            filled[SKIP_SUBNETS], "10.1.0.0/16",
            "an empty pod value is unset"
        );
        assert_eq!(filled[SKIP_OUTBOUND_PORTS], "3306");
        assert!(
            !filled.contains_key(PROXY_GID),
            "an empty namespace value is unset"
        );
        assert!(!filled.contains_key("config.linkerd.io/proxy-cpu-limit"));
        let all: Annotations = NAMESPACE_FALLBACK
            .iter()
            .map(|k| (k.to_string(), "1".to_owned()))
            .collect();
        assert!(!reads_namespace(&all));
    }

    #[test]
    fn skip_subnets_read_as_linkerd_cni_checks_and_iptables_reads_them() {
        let net = |e: &str| skip_subnet(e).map(|(n, _)| n.to_string());
        // Go's ParseCIDR takes the length in decimal, leading zeros too; iptables reads those
        // as octal (checked with iptables 1.8.9: `-s 10.1.0.0/010` is stored as 10.0.0.0/8).
        assert_eq!(net("10.1.0.0/010").unwrap(), "10.0.0.0/8");
        assert_eq!(net("10.1.0.0/032").unwrap(), "10.1.0.0/26");
        assert_eq!(net("10.1.0.0/0000010").unwrap(), "10.0.0.0/8");
        assert_eq!(net("10.1.0.0/00").unwrap(), "0.0.0.0/0");
        assert_eq!(net(" 10.1.2.3/16 ").unwrap(), "10.1.0.0/16");
        assert_eq!(net("10.1.0.0/16").unwrap(), "10.1.0.0/16");
        assert!(skip_subnet("10.1.0.0/16").unwrap().1.is_none());
        let (_, note) = skip_subnet("10.1.0.0/010").unwrap();
        assert!(note.unwrap().contains("octal"));
        let (_, note) = skip_subnet("10.1.2.3/16").unwrap();
        assert!(note.unwrap().contains("host bits"));
        // iptables refuses these; linkerd-cni's ADD fails.
        for e in ["10.1.0.0/08", "10.1.0.0/09", "10.1.0.0/0000008"] {
            assert!(net(e).unwrap_err().contains("octal"), "{e}");
        }
        // Go's ParseCIDR refuses these.
        for e in [
            "10.0.0.1",
            "10.1.0.0/33",
            "10.1.0.0/033",
            "10.1.0.0/+8",
            "10.1.0.0/",
            "10.01.0.0/16",
            "fe80::1%eth0/64",
            "10.1.0.0/99999999999",
        ] {
            assert!(net(e).unwrap_err().contains("not a valid CIDR"), "{e}");
        }
    }

    #[test]
    fn bad_subnet_or_uid_fails() {
        let mut w = Vec::new();
        let err = model(
            &ann(&[(SKIP_SUBNETS, "0.0.0.0")]),
            None,
            &LinkerdNode::default(),
            &mut w,
        )
        .unwrap_err();
        assert_eq!(err.annotation, SKIP_SUBNETS);
        let err = model(
            &ann(&[(PROXY_UID, "abc")]),
            None,
            &LinkerdNode::default(),
            &mut w,
        )
        .unwrap_err();
        assert_eq!(err.annotation, PROXY_UID);
        let node = LinkerdNode {
            ipv6: true,
            ..LinkerdNode::default()
        };
        assert!(model(&ann(&[(SKIP_SUBNETS, "10.0.0.0/8")]), None, &node, &mut w).is_err());
        // An IPv6 subnet fails whatever `ipv6` says: linkerd-cni always writes IPv4 rules.
        for node in [LinkerdNode::default(), node] {
            let err = model(&ann(&[(SKIP_SUBNETS, "fd00::1/8")]), None, &node, &mut w).unwrap_err();
            assert_eq!(err.annotation, SKIP_SUBNETS);
            assert!(err.to_string().contains("fd00::/8"), "{err}");
        }
        // An IPv4 subnet is fine without `ipv6`.
        model(
            &ann(&[(SKIP_SUBNETS, "10.0.0.0/8")]),
            None,
            &LinkerdNode::default(),
            &mut w,
        )
        .unwrap();
    }

    #[test]
    fn stored_settings_read_leniently() {
        let stored = serde_json::json!({"node": {"proxy_uid": 3000, "some_later_key": 1},
                                        "control_plane": true});
        let s: PodSettings = serde_json::from_value(stored).unwrap();
        assert_eq!((s.node.proxy_uid, s.node.outbound_proxy_port), (3000, 4140));
        let back: PodSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // The plugin configuration stays strict.
        assert!(serde_json::from_value::<LinkerdNode>(serde_json::json!({"proxy_id": 1})).is_err());
    }

    #[test]
    fn control_plane_by_label_else_by_namespace() {
        let node = LinkerdNode::default();
        let label: BTreeMap<String, String> =
            [(CONTROL_PLANE_LABEL.to_string(), "destination".to_string())].into();
        assert!(PodSettings::resolve(&node, Some(&label), Some("anywhere")).control_plane);
        // The labels are seen and say no: the namespace does not matter.
        assert!(
            !PodSettings::resolve(&node, Some(&BTreeMap::new()), Some("linkerd")).control_plane
        );
        // The runtime path: the namespace stands in.
        assert!(PodSettings::resolve(&node, None, Some("linkerd")).control_plane);
        assert!(!PodSettings::resolve(&node, None, Some("emojivoto")).control_plane);
        let mut w = Vec::new();
        let s = PodSettings::resolve(&node, None, Some("linkerd"));
        let m = super::model(&Annotations::new(), &s, &mut w).unwrap();
        let skipped: Vec<u16> = m
            .exclude_outbound_port_ranges
            .iter()
            .map(|r| r.first)
            .collect();
        assert_eq!(skipped, [443, 6443]);
    }
}

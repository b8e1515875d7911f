//! The Kuma front end: a Kuma-injected pod gets what kuma-cni installs for it (kumahq/kuma
//! `app/cni/pkg/cni`, rules by `pkg/transparentproxy/iptables/builder`).
//!
//! kuma-cni's only input is the annotation `traffic.kuma.io/transparent-proxy-config`: a YAML
//! transparent-proxy config the injector folded every other setting into (the
//! `traffic.kuma.io/exclude-*` annotations, `kuma.io/gateway`, the probe port, the control
//! plane's runtime config). meshcap reads the same YAML over the same defaults
//! (`DefaultConfig`), its keys in any letter case as Kuma's loader reads them; a pod without it
//! fails the ADD, as with kuma-cni.
//!
//! | YAML field | meaning | default |
//! |---|---|---|
//! | `kumaDPUser` | the proxy uid (numeric) | 5678 |
//! | `ipFamilyMode` | `dualstack` (IPv6 rules when the pod has IPv6) or `ipv4`, any letter case, but only `ipv4` as written drops the IPv6 rules (as Kuma compares it) | dualstack |
//! | `redirect.inbound.enabled/port/excludePorts/excludePortsForIPs/includePorts` | inbound capture | true / 15006 / - |
//! | `redirect.outbound.enabled/port/excludePorts/excludePortsForUIDs/excludePortsForIPs/includePorts` | outbound capture | true / 15001 / - |
//! | `redirect.dns.enabled/port/captureAll/skipConntrackZoneSplit/resolvConfigPath` | DNS capture | false / 15053 / false / false / /etc/resolv.conf |
//! | `dropInvalidPackets` | drop conntrack-invalid packets | false |
//!
//! | `redirect.vnet.networks` | `IFACE:CIDR` networks behind an interface: their DNS and their TCP out of the network are captured | - |
//!
//! Differences, each deliberate: `log` (LOG rules) and `insertRedirectInsteadOfAppend` are ignored
//! with a warning (meshcap owns its entry chains); a bad port (0, out of range, quoted) is
//! refused like Kuma's loader does, used or not, except a DNS port of 0 while DNS capture is
//! off and no virtual network is set (Kuma's
//! injector writes `port: 0` there when its builtin DNS is off, and the value is then never
//! used; kuma-cni would redirect a virtual network's DNS to port 0).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::annotations::{AnnotationError, Annotations, InputKind, Selector};
use crate::model::{
    DnsScope, Families, OwnerPortExclusion, PortRange, ProxyPorts, RedirectModel, VirtualNetwork,
};
use crate::rules::Proto;

pub const SIDECAR_CONTAINER: &str = "kuma-sidecar";
pub const INIT_CONTAINER: &str = "kuma-init";
pub const SIDECAR_INJECTED: &str = "kuma.io/sidecar-injected";
pub const TPROXY_CONFIG: &str = "traffic.kuma.io/transparent-proxy-config";
/// kuma-cni's uid for the proxy when the config names none (`consts.OwnerDefaultUID`).
pub const DEFAULT_UID: u32 = 5678;
pub const CHAIN_PREFIX: &str = "MESHCAP_KUMA";

/// Node-wide settings kuma-cni keeps in its own CNI config (`kuma` in meshcap's plugin
/// config), with the kuma chart's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KumaNode {
    /// Pods of these namespaces are left alone (`cni.excludeNamespaces`).
    pub exclude_namespaces: Vec<String>,
}

impl Default for KumaNode {
    fn default() -> Self {
        KumaNode {
            exclude_namespaces: vec!["kube-system".into()],
        }
    }
}

/// What a Kuma pod's model takes besides its annotations, as resolved when the pod was set up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PodSettings {
    /// Whether the pod had an IPv6 address (Kuma writes IPv6 rules only then).
    pub pod_has_ipv6: bool,
    /// The `nameserver` entries of the resolv.conf that DNS capture limited to its servers read
    /// when the pod was set up (`redirect.dns.resolvConfigPath`, on the node), in order; only
    /// those, never the file (the pod names the path). Later models (CHECK, the agent's
    /// repair) take the servers from here: in the agent's container that path names another
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
}

/// The words after `nameserver` in a resolv.conf, as [`nameservers`] reads them.
pub fn nameserver_entries(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .map(str::to_owned)
        })
        .collect()
}

/// The resolv.conf at `path` as a Kuma pod's model reads it: a text of the `nameservers` its
/// record kept from ADD when there are any (read by [`nameservers`] as the file they came
/// from), else the file, through `read_file`.
pub fn stored_or_read(
    nameservers: Option<&[String]>,
    path: &str,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> std::io::Result<String> {
    match nameservers {
        Some(entries) => Ok(entries
            .iter()
            .map(|e| format!("nameserver {e}\n"))
            .collect()),
        None => read_file(path),
    }
}

/// Whether kuma-cni would set this pod up (`getAndValidatePodAnnotations`).
pub fn wants_pod(pod: &Value, node: &KumaNode) -> Result<(), String> {
    let spec = pod.get("spec");
    if let Some(ns) = pod.pointer("/metadata/namespace").and_then(Value::as_str) {
        if node.exclude_namespaces.iter().any(|n| n == ns) {
            return Err(format!(
                "namespace {ns} is excluded (kuma.exclude_namespaces)"
            ));
        }
    }
    if super::has_init_container(spec, INIT_CONTAINER) {
        return Err(format!("{INIT_CONTAINER} init container is present"));
    }
    if !super::has_container(spec, SIDECAR_CONTAINER) {
        return Err(format!("no {SIDECAR_CONTAINER} container"));
    }
    wants_annotations(&super::annotations_of(pod))
}

/// The annotation half of [`wants_pod`] (the runtime path sees only annotations).
pub fn wants_annotations(annotations: &Annotations) -> Result<(), String> {
    if annotations.get(SIDECAR_INJECTED).map(String::as_str) != Some("true") {
        return Err(format!("{SIDECAR_INJECTED} is not \"true\""));
    }
    Ok(())
}

/// Why kuma-cni would install nothing for a pod whose config [`model`] accepted: with
/// `dryRun: true` it validates the config (`Initialize`) and then prints the rules instead of
/// installing them (`iptables.Setup`). Asked after the model is built, so that a bad config
/// fails the ADD first, as under kuma-cni.
pub fn dry_run(annotations: &Annotations) -> Option<String> {
    #[derive(Deserialize)]
    struct DryRun {
        #[serde(default, rename = "dryRun")]
        dry_run: bool,
    }
    // The injector leaves the key out unless it is set (`omitempty`): most pods are answered
    // without a second parse of their config.
    let names_it = |yaml: &str| {
        yaml.as_bytes()
            .windows("dryrun".len())
            .any(|w| w.eq_ignore_ascii_case(b"dryrun"))
    };
    annotations
        .get(TPROXY_CONFIG)
        .filter(|yaml| names_it(yaml) && yaml.len() <= crate::annotations::MAX_VALUE_LEN)
        .and_then(|yaml| parse_as_kuma::<Option<DryRun>>(yaml).ok())
        .flatten()
        .is_some_and(|c| c.dry_run)
        .then(|| format!("{TPROXY_CONFIG} sets dryRun, with which kuma-cni installs nothing"))
}

/// Every config key meshcap reads, spelled as Kuma's `Config` names it (its `json` tags).
const KEYS: &[&str] = &[
    "kumaDPUser",
    "ipFamilyMode",
    "redirect",
    "dropInvalidPackets",
    "dryRun",
    "log",
    "enabled",
    "inbound",
    "outbound",
    "dns",
    "vnet",
    "networks",
    "port",
    "includePorts",
    "excludePorts",
    "excludePortsForUIDs",
    "excludePortsForIPs",
    "insertRedirectInsteadOfAppend",
    "captureAll",
    "skipConntrackZoneSplit",
    "resolvConfigPath",
];

/// Reads the config as Kuma's loader does: `sigs.k8s.io/yaml` turns it into JSON for Go's
/// `encoding/json`, which takes a key in any letter case for a field (`KumaDPUser` is
/// `kumaDPUser`; of two spellings of one key, the later wins). A config whose keys are all
/// spelled as the fields are (what the injector writes) is read as it is; otherwise every key
/// that names a field is respelled first, and an error then names no line, since the lines
/// are those of the respelled text. (Go also folds the Kelvin sign and the long s into `k` and
/// `s`; only ASCII case is folded here.)
fn parse_as_kuma<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, String> {
    if let Some(at) = crate::annotations::yaml_anchor_or_alias(yaml) {
        return Err(format!(
            "a YAML anchor or alias at byte {at}: not accepted (an alias repeats a value without \
             bound, and Kuma's injector writes none)"
        ));
    }
    if !may_misspell_a_key(yaml) {
        return serde_yaml::from_str(yaml).map_err(|e| e.to_string());
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    if !respell_keys(&mut value) {
        return serde_yaml::from_str(yaml).map_err(|e| e.to_string());
    }
    let respelled = serde_yaml::to_string(&value).map_err(|e| e.to_string())?;
    serde_yaml::from_str(&respelled).map_err(|e| {
        let message = e.to_string();
        match e.location() {
            Some(at) => message
                .trim_end_matches(&format!(" at line {} column {}", at.line(), at.column()))
                .to_owned(),
            None => message,
        }
    })
}

/// Whether the text holds a field's name in another letter case anywhere (a key, or by chance
/// a value): only then is the config read through a generic value to respell its keys, so a
/// config as the injector writes it is parsed once.
fn may_misspell_a_key(yaml: &str) -> bool {
    let text = yaml.as_bytes();
    KEYS.iter().any(|field| {
        text.windows(field.len())
            .any(|w| w.eq_ignore_ascii_case(field.as_bytes()) && w != field.as_bytes())
    })
}

/// Spells every mapping key that names a field in another letter case as the field does;
/// returns whether any key changed.
fn respell_keys(value: &mut serde_yaml::Value) -> bool {
    match value {
        serde_yaml::Value::Mapping(map) => {
            let mut changed = false;
            for (key, mut item) in std::mem::take(map) {
                changed |= respell_keys(&mut item);
                let field = key
                    .as_str()
                    .and_then(|k| KEYS.iter().find(|f| f.eq_ignore_ascii_case(k) && **f != k));
                let key = match field {
                    Some(field) => {
                        changed = true;
                        serde_yaml::Value::String((*field).to_owned())
                    }
                    None => key,
                };
                map.insert(key, item);
            }
            changed
        }
        serde_yaml::Value::Sequence(items) => items
            .iter_mut()
            .fold(false, |changed, item| respell_keys(item) | changed),
        serde_yaml::Value::Tagged(tagged) => respell_keys(&mut tagged.value),
        _ => false,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Config {
    #[serde(rename = "kumaDPUser")]
    kuma_dp_user: Option<Value>,
    ip_family_mode: Option<String>,
    redirect: Redirect,
    drop_invalid_packets: bool,
    log: Option<Log>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Log {
    enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Redirect {
    inbound: Flow,
    outbound: Flow,
    dns: Dns,
    vnet: VNet,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VNet {
    networks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Flow {
    enabled: Option<bool>,
    port: Option<Value>,
    include_ports: Option<Value>,
    exclude_ports: Option<Value>,
    #[serde(rename = "excludePortsForUIDs")]
    exclude_ports_for_uids: Vec<String>,
    #[serde(rename = "excludePortsForIPs")]
    exclude_ports_for_ips: Vec<String>,
    insert_redirect_instead_of_append: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Dns {
    enabled: bool,
    port: Option<Value>,
    capture_all: bool,
    skip_conntrack_zone_split: bool,
    resolv_config_path: Option<String>,
}

/// A list of the config longer than [`MAX_LIST_LEN`](crate::annotations::MAX_LIST_LEN) (a
/// YAML alias repeats an entry for free, so the annotation's size alone does not bound it):
/// refused, as Istio's lists are.
fn at_most(field: &str, len: usize) -> Result<(), AnnotationError> {
    crate::annotations::at_most(&config_field(field), len)
}

fn bad(field: &str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError::new(&config_field(field), value, reason)
}

/// How errors name a field of the config annotation.
fn config_field(field: &str) -> String {
    format!("{TPROXY_CONFIG} ({field})")
}

/// A Kuma pod set up now: its [`model`], and the settings that rebuild that model later, with
/// the `nameserver` entries it read from the node's resolv.conf (the entries only: the pod
/// names the path).
pub fn resolve(
    annotations: &Annotations,
    pod_has_ipv6: bool,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
    warnings: &mut Vec<String>,
) -> Result<(PodSettings, RedirectModel), AnnotationError> {
    let read_entries = std::cell::RefCell::new(None);
    let reading = |path: &str| {
        let text = read_file(path)?;
        *read_entries.borrow_mut() = Some(nameserver_entries(&text));
        Ok(text)
    };
    let model = model(annotations, pod_has_ipv6, &reading, warnings)?;
    let settings = PodSettings {
        pod_has_ipv6,
        nameservers: read_entries.into_inner(),
    };
    Ok((settings, model))
}

/// The model of a Kuma pod. `pod_has_ipv6` says whether the pod has an IPv6 address (Kuma
/// writes IPv6 rules only then); `read_resolv_conf` reads a resolv.conf (only asked when DNS
/// capture is limited to its servers). `warnings` gets one line per ignored setting.
pub fn model(
    annotations: &Annotations,
    pod_has_ipv6: bool,
    read_resolv_conf: &dyn Fn(&str) -> std::io::Result<String>,
    warnings: &mut Vec<String>,
) -> Result<RedirectModel, AnnotationError> {
    let Some(yaml) = annotations.get(TPROXY_CONFIG).filter(|v| !v.is_empty()) else {
        return Err(AnnotationError::new(
            TPROXY_CONFIG,
            "",
            "is required for transparent proxy configuration (as kuma-cni requires it)",
        ));
    };
    if yaml.len() > crate::annotations::MAX_VALUE_LEN {
        return Err(AnnotationError::new(
            TPROXY_CONFIG,
            yaml,
            format!(
                "value is longer than {} bytes",
                crate::annotations::MAX_VALUE_LEN
            ),
        ));
    }
    let cfg: Config = parse_as_kuma(yaml).map_err(|e| {
        AnnotationError::new(
            TPROXY_CONFIG,
            yaml,
            format!("not a transparent proxy config: {e}"),
        )
    })?;
    let uid = match cfg.kuma_dp_user.as_ref() {
        None => DEFAULT_UID,
        Some(v) => {
            let text = scalar(v);
            if text.is_empty() {
                DEFAULT_UID
            } else {
                text.parse::<u32>()
                    .ok()
                    .filter(|u| *u != u32::MAX)
                    .ok_or_else(|| {
                        bad(
                            "kumaDPUser",
                            &text,
                            "meshcap needs a numeric uid (it has no passwd to look names up in)",
                        )
                    })?
            }
        }
    };
    // Kuma checks the mode in any letter case but keeps it as written, and writes IPv4 rules
    // only for exactly `ipv4` (`IPFamilyMode.Set`, then `c.IPFamilyMode == IPFamilyModeIPv4`):
    // `IPv4` gets IPv6 rules too.
    let mode = cfg.ip_family_mode.as_deref().unwrap_or("");
    let v6_allowed = match mode.to_lowercase().as_str() {
        "" | "dualstack" => true,
        "ipv4" if mode == "ipv4" => false,
        "ipv4" => {
            warnings.push(format!(
                "kuma: ipFamilyMode {mode:?} keeps the IPv6 rules, as kuma-cni (only \"ipv4\" as written drops them)"
            ));
            true
        }
        _ => {
            return Err(bad(
                "ipFamilyMode",
                mode,
                "must be one of 'dualstack' or 'ipv4'",
            ))
        }
    };

    let virtual_networks = virtual_networks(&cfg.redirect.vnet.networks)?;
    if cfg.log.as_ref().is_some_and(|l| l.enabled) {
        warnings.push("kuma: log.enabled ignored: meshcap writes no LOG rules".into());
    }
    for (name, flow) in [
        ("inbound", &cfg.redirect.inbound),
        ("outbound", &cfg.redirect.outbound),
    ] {
        if flow.insert_redirect_instead_of_append {
            warnings.push(format!(
                "kuma: redirect.{name}.insertRedirectInsteadOfAppend ignored: meshcap's entry chains come first"
            ));
        }
    }

    let inbound = &cfg.redirect.inbound;
    let outbound = &cfg.redirect.outbound;
    let dns = &cfg.redirect.dns;
    // kuma-cni parses inbound uid exclusions as it parses outbound ones, but its inbound chain
    // matches them by source address only, which they lack: each becomes a rule returning every
    // inbound packet, so any entry turns inbound capture off (the proxy's hairpin stays).
    let in_uid_exclusions = uid_exclusions(
        "redirect.inbound.excludePortsForUIDs",
        &inbound.exclude_ports_for_uids,
    )?;
    if !in_uid_exclusions.is_empty() && inbound.enabled.unwrap_or(true) {
        warnings.push(
            "kuma: redirect.inbound.excludePortsForUIDs turns inbound capture off, as under \
             kuma-cni (its inbound rule for an entry matches every packet)"
                .into(),
        );
    }
    let inbound_on = inbound.enabled.unwrap_or(true) && in_uid_exclusions.is_empty();
    let outbound_on = outbound.enabled.unwrap_or(true);
    let inbound_port = port_field("redirect.inbound.port", inbound.port.as_ref(), 15006)?;
    let outbound_port = port_field("redirect.outbound.port", outbound.port.as_ref(), 15001)?;
    // Virtual networks' DNS goes to this port even with DNS capture off. Kuma's injector
    // writes `port: 0` when its builtin DNS is off; the port is then never used, so that 0
    // alone is let through. Any other bad value is refused, as Kuma's loader refuses it.
    let dns_port_used = dns.enabled || !virtual_networks.is_empty();
    let dns_port = match port_field("redirect.dns.port", dns.port.as_ref(), 15053) {
        Err(_) if !dns_port_used && dns.port.as_ref().and_then(Value::as_u64) == Some(0) => 15053,
        port => port?,
    };
    let in_include = ports_field(
        "redirect.inbound.includePorts",
        inbound.include_ports.as_ref(),
    )?;
    let in_exclude = ports_field(
        "redirect.inbound.excludePorts",
        inbound.exclude_ports.as_ref(),
    )?;
    let out_include = ports_field(
        "redirect.outbound.includePorts",
        outbound.include_ports.as_ref(),
    )?;
    let out_exclude = ports_field(
        "redirect.outbound.excludePorts",
        outbound.exclude_ports.as_ref(),
    )?;
    let in_ips = ip_list(
        "redirect.inbound.excludePortsForIPs",
        &inbound.exclude_ports_for_ips,
    )?;
    let out_ips = ip_list(
        "redirect.outbound.excludePortsForIPs",
        &outbound.exclude_ports_for_ips,
    )?;
    let uid_exclusions = uid_exclusions(
        "redirect.outbound.excludePortsForUIDs",
        &outbound.exclude_ports_for_uids,
    )?;

    let mut any_resolver_v6 = false;
    let dns_servers = if dns.enabled && !dns.capture_all {
        let path = dns
            .resolv_config_path
            .as_deref()
            .unwrap_or("/etc/resolv.conf");
        let text = read_resolv_conf(path).map_err(|e| {
            bad(
                "redirect.dns.resolvConfigPath",
                path,
                format!("unable to read: {e}"),
            )
        })?;
        let (servers, unreadable) = nameservers(&text);
        if let Some(entry) = unreadable.first() {
            warnings.push(format!(
                "kuma: nameserver {entry:?} of {path} is no address: kuma-cni counts it as an \
                 IPv6 resolver without an address, so all IPv6 DNS is captured, here too"
            ));
        }
        any_resolver_v6 = !unreadable.is_empty();
        Some(servers)
    } else {
        None
    };

    let mut model = RedirectModel {
        include_inbound_ports: match (inbound_on, in_include.is_empty()) {
            (false, _) => Selector::Only(Vec::new()),
            (true, true) => Selector::All,
            (true, false) => Selector::Only(in_include),
        },
        exclude_inbound_ports: if inbound_on { in_exclude } else { Vec::new() },
        exclude_inbound_sources: if inbound_on { in_ips } else { Vec::new() },
        exclude_outbound_ports: if out_include.is_empty() {
            out_exclude
        } else {
            Vec::new()
        },
        include_outbound_ports: out_include.clone(),
        include_outbound_ranges: if out_include.is_empty() && outbound_on {
            Selector::All
        } else {
            Selector::Only(Vec::new())
        },
        // With outbound capture off the outbound chain returns everything, hairpin included.
        proxy_hairpin: outbound_on,
        bypass_outbound_ranges: out_ips,
        owner_port_exclusions: uid_exclusions,
        dns_capture: dns.enabled,
        dns_servers,
        dns_any_resolver: Families {
            v4: false,
            v6: any_resolver_v6,
        },
        dns_scope: DnsScope::UdpOnly,
        dns_conntrack_zones: !dns.skip_conntrack_zone_split,
        dns_zones_need_family_resolver: true,
        dns_loopback_resolver_zone: true,
        proxy_uids: vec![uid],
        proxy_gids: Vec::new(),
        drop_invalid: cfg.drop_invalid_packets,
        ports: ProxyPorts {
            outbound: outbound_port,
            inbound: inbound_port,
            dns: dns_port,
            tunnel: None,
        },
        families: Families {
            v4: true,
            v6: v6_allowed && pod_has_ipv6,
        },
        chain_prefix: CHAIN_PREFIX.to_owned(),
        exclude_outbound_udp: false,
        virtual_networks,
        ..RedirectModel::default()
    };
    if !outbound_on {
        model.include_outbound_ports.clear();
    }
    model
        .validate()
        .map_err(|e| e.of_kind(InputKind::Annotation))?;
    Ok(model)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Kuma's `parsePort`: 1 to 65535.
fn parse_port(field: &str, s: &str) -> Result<u16, AnnotationError> {
    s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
        bad(
            field,
            s,
            "not a valid port (uint16 in the range [1, 65535])",
        )
    })
}

/// Kuma's `Port`, which parses the raw JSON of the value: a number, never a quoted one (a
/// list of ports, [`ports_field`], takes strings too).
fn port_field(field: &str, v: Option<&Value>, default: u16) -> Result<u16, AnnotationError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Err(bad(
            field,
            &format!("{s:?}"),
            "a port is a number, not a string (Kuma's loader refuses a quoted port)",
        )),
        Some(v) => parse_port(field, &scalar(v)),
    }
}

/// Kuma's `Ports`: a list of numbers or strings, or one comma-separated string.
fn ports_field(field: &str, v: Option<&Value>) -> Result<Vec<u16>, AnnotationError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Some(v) => scalar(v),
    };
    let mut out = Vec::new();
    for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(parse_port(field, p)?);
        at_most(field, out.len())?;
    }
    Ok(out)
}

/// Kuma's `VNet.Initialize`: each entry is `IFACE:CIDR`, split at the first `:` (so an IPv6
/// CIDR keeps its colons), the CIDR with a prefix length (host bits allowed, masked in the
/// rules as iptables masks them). `IFACE` may be iptables' wildcard `PREFIX+` (`br+`: every
/// Docker bridge), which kuma-cni passes to iptables as it is.
fn virtual_networks(entries: &[String]) -> Result<Vec<VirtualNetwork>, AnnotationError> {
    const FIELD: &str = "redirect.vnet.networks";
    at_most(FIELD, entries.len())?;
    let mut out = Vec::new();
    for entry in entries {
        let Some((interface, cidr)) = entry.split_once(':') else {
            return Err(bad(
                FIELD,
                entry,
                "invalid virtual network definition (IFACE:CIDR)",
            ));
        };
        let net = cidr
            .parse::<IpNet>()
            .map_err(|_| bad(FIELD, entry, format!("invalid CIDR definition for {cidr}")))?;
        if !crate::annotations::is_valid_interface_pattern(interface) {
            return Err(bad(
                FIELD,
                entry,
                "not an interface name or a NAME+ wildcard",
            ));
        }
        out.push(VirtualNetwork {
            interface: interface.to_owned(),
            net,
        });
    }
    Ok(out)
}

/// Kuma's `parseExcludePortsForIPs`: entries may hold comma lists; each address (host bits
/// masked, as iptables does) goes to its family.
fn ip_list(field: &str, entries: &[String]) -> Result<Vec<IpNet>, AnnotationError> {
    let mut out = Vec::new();
    for entry in entries {
        if entry.is_empty() {
            return Err(bad(field, entry, "the rule cannot be empty"));
        }
        for address in entry.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let net = address
                .parse::<IpNet>()
                .or_else(|_| address.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    bad(
                        field,
                        address,
                        "invalid IP address: expected <ip> or <ip>/<cidr>",
                    )
                })?;
            out.push(net.trunc());
            at_most(field, out.len())?;
        }
    }
    Ok(out)
}

fn uint_range(field: &str, s: &str) -> Result<(u32, u32), AnnotationError> {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str| {
        p.parse::<u16>()
            .map(u32::from)
            .map_err(|_| bad(field, s, "invalid uint16 value"))
    };
    match parts.as_slice() {
        [one] => Ok((num(one)?, num(one)?)),
        [a, b] => Ok((num(a)?, num(b)?)),
        _ => Err(bad(field, s, "expected a value or a range a-b")),
    }
}

/// Kuma's `parseExcludePortsForUIDs`: `[proto:][ports:]uids`; ports `*` or empty for all,
/// proto `*` or empty for TCP and UDP, uids one value or a range, never `*` or a list.
fn uid_exclusions(
    field: &str,
    entries: &[String],
) -> Result<Vec<OwnerPortExclusion>, AnnotationError> {
    let mut out = Vec::new();
    for entry in entries {
        let parts: Vec<&str> = entry.split(':').collect();
        let (protos, ports, uids) = match parts.as_slice() {
            [u] => ("*", "*", *u),
            [p, u] => ("*", *p, *u),
            [pr, p, u] => (*pr, *p, *u),
            _ => return Err(bad(field, entry, "expected <protocol:>?<ports:>?<uids>")),
        };
        if uids == "*" {
            return Err(bad(field, entry, "wildcard '*' is not allowed for UIDs"));
        }
        if uids.contains(',') {
            return Err(bad(field, entry, "UIDs must be a single item or a range"));
        }
        let uids = uint_range(field, uids)?;
        let ports = if ports == "*" || ports.is_empty() {
            "1-65535"
        } else {
            ports
        };
        let mut ranges = Vec::new();
        for p in ports.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = uint_range(field, p)?;
            ranges.push(PortRange {
                first: first as u16,
                last: last as u16,
            });
            at_most(field, ranges.len())?;
        }
        let protos: Vec<Proto> = if protos.is_empty() || protos == "*" {
            vec![Proto::Tcp, Proto::Udp]
        } else {
            let mut v = Vec::new();
            for p in protos.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let proto = match p.to_ascii_lowercase().as_str() {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => {
                        return Err(bad(
                            field,
                            entry,
                            format!("invalid or unsupported protocol: '{p}'"),
                        ))
                    }
                };
                if !v.contains(&proto) {
                    v.push(proto);
                }
            }
            v
        };
        // Each port range of each entry becomes a rule per protocol: counted before copying.
        let so_far: usize = out.iter().map(|e: &OwnerPortExclusion| e.ports.len()).sum();
        at_most(field, so_far + protos.len() * ranges.len())?;
        for proto in protos {
            out.push(OwnerPortExclusion {
                proto,
                ports: ranges.clone(),
                uids,
            });
        }
    }
    Ok(out)
}

/// The `nameserver` entries of a resolv.conf: the addresses, and the entries that are none
/// (Go's `net.ParseIP` refuses them too: a zone such as `fe80::1%eth0`).
pub fn nameservers(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let (mut servers, mut unreadable) = (Vec::new(), Vec::new());
    for entry in nameserver_entries(text) {
        match entry.parse::<IpAddr>() {
            // Go keeps an IPv4-mapped address as IPv4 (`To4`).
            Ok(address) => servers.push(address.to_canonical()),
            Err(_) => unreadable.push(entry),
        }
    }
    (servers, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(yaml: &str) -> Annotations {
        [
            (SIDECAR_INJECTED.to_string(), "true".to_string()),
            (TPROXY_CONFIG.to_string(), yaml.to_string()),
        ]
        .into_iter()
        .collect()
    }

    fn no_file(_: &str) -> std::io::Result<String> {
        Err(std::io::Error::other("no file in this test"))
    }

    #[test]
    fn only_ipv4_as_written_drops_the_ipv6_rules() {
        for (mode, v6, warned) in [
            ("ipv4", false, false),
            ("IPv4", true, true),
            ("IPV4", true, true),
            ("DualStack", true, false),
            ("\"\"", true, false),
        ] {
            let mut w = Vec::new();
            let m = model(
                &ann(&format!("ipFamilyMode: {mode}\n")),
                true,
                &no_file,
                &mut w,
            )
            .unwrap();
            assert_eq!(m.families.v6, v6, "{mode}");
            assert_eq!(!w.is_empty(), warned, "{mode}: {w:?}");
        }
        let mut w = Vec::new();
        let e = model(&ann("ipFamilyMode: ipv6\n"), true, &no_file, &mut w).unwrap_err();
        assert!(e.reason.contains("dualstack"), "{e}");
    }

    #[test]
    fn inbound_uid_exclusions_turn_inbound_capture_off_as_under_kuma_cni() {
        let base = "redirect:\n  inbound:\n    excludePorts: [9000]\n";
        let mut w = Vec::new();
        let on = model(&ann(base), false, &no_file, &mut w).unwrap();
        assert_eq!(on.include_inbound_ports, Selector::All);
        let yaml = format!("{base}    excludePortsForUIDs: [\"tcp:22:1000\"]\n");
        let off = model(&ann(&yaml), false, &no_file, &mut w).unwrap();
        let disabled = model(
            &ann("redirect:\n  inbound:\n    enabled: false\n"),
            false,
            &no_file,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(off, disabled);
        assert!(w.iter().any(|l| l.contains("inbound capture off")), "{w:?}");
        // A bad entry fails, as kuma-cni's parser refuses it.
        let yaml = format!("{base}    excludePortsForUIDs: [\"tcp:22:*\"]\n");
        let e = model(&ann(&yaml), false, &no_file, &mut w).unwrap_err();
        assert!(
            e.annotation
                .contains("redirect.inbound.excludePortsForUIDs"),
            "{e}"
        );
    }

    #[test]
    fn a_dry_run_config_leaves_the_pod_alone_as_kuma_cni_does() {
        assert_eq!(dry_run(&ann("kumaDPUser: \"5678\"\n")), None);
        assert_eq!(dry_run(&ann("dryRun: false\n")), None);
        let why = dry_run(&ann("dryRun: true\nkumaDPUser: \"5678\"\n")).unwrap();
        assert!(why.contains("dryRun"), "{why}");
        // A dry run is still selected: its config is validated like any other, and a bad one
        // fails (kuma-cni's `Initialize` runs before `Setup` looks at dryRun).
        let bad = ann("dryRun: true\nipFamilyMode: both\n");
        assert!(wants_annotations(&bad).is_ok());
        assert!(model(&bad, false, &no_file, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_nameserver_that_is_no_address_captures_all_ipv6_dns_as_under_kuma_cni() {
        let (servers, unreadable) = nameservers(
            "nameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver ::ffff:10.0.0.2\n",
        );
        assert_eq!(
            servers,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(unreadable, ["fe80::1%eth0"]);

        let resolv = |_: &str| Ok("nameserver 10.96.0.10\nnameserver fe80::1%eth0\n".to_owned());
        let yaml = "redirect:\n  dns:\n    enabled: true\n";
        let mut w = Vec::new();
        let m = model(&ann(yaml), true, &resolv, &mut w).unwrap();
        assert!(w.iter().any(|l| l.contains("fe80::1%eth0")), "{w:?}");
        assert_eq!(m.dns_servers_of(crate::rules::Family::V6), None);
        assert_eq!(
            m.dns_servers_of(crate::rules::Family::V4),
            Some(vec!["10.96.0.10/32".parse().unwrap()])
        );
        let v6 = crate::render::iptables::render(&m.ruleset(crate::rules::Family::V6));
        assert!(
            v6.contains("-p udp -m udp --dport 53 -m comment --comment \"DNS capture: UDP DNS goes to the proxy DNS port\" -j REDIRECT"),
            "{v6}"
        );
    }

    #[test]
    fn the_config_is_bounded_like_every_annotation() {
        let yaml = format!("kumaDPUser: \"5678\"\n#{}\n", "x".repeat(20_000));
        let e = model(&ann(&yaml), false, &no_file, &mut Vec::new()).unwrap_err();
        assert!(e.reason.contains("longer than"), "{e}");
    }

    #[test]
    fn virtual_networks_parse_as_kuma_reads_them() {
        let mut w = Vec::new();
        let yaml =
            "redirect:\n  vnet:\n    networks:\n    - docker0:172.17.0.1/16\n    - iface:::1/64\n    - br+:172.18.0.0/16\n";
        let m = model(&ann(yaml), true, &no_file, &mut w).unwrap();
        assert_eq!(
            m.virtual_networks,
            vec![
                VirtualNetwork {
                    interface: "docker0".into(),
                    net: "172.17.0.1/16".parse().unwrap(),
                },
                VirtualNetwork {
                    interface: "iface".into(),
                    net: "::1/64".parse().unwrap(),
                },
                VirtualNetwork {
                    interface: "br+".into(),
                    net: "172.18.0.0/16".parse().unwrap(),
                },
            ]
        );
        // Their DNS goes to the DNS port, default 15053, though DNS capture is off.
        assert!(!m.dns_capture);
        assert_eq!(m.ports.dns, 15053);
        for (entry, why) in [
            ("docker0", "IFACE:CIDR"),
            ("docker0:172.17.0.1", "invalid CIDR"),
            ("br*:172.18.0.0/16", "NAME+ wildcard"),
            ("+:172.18.0.0/16", "NAME+ wildcard"),
            (":10.0.0.0/8", "interface name"),
        ] {
            let yaml = format!("redirect:\n  vnet:\n    networks:\n    - \"{entry}\"\n");
            let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
            assert!(err.to_string().contains(why), "{entry}: {err}");
        }
        // kuma-cni would send their DNS to port 0: refused.
        let yaml = "redirect:\n  dns:\n    enabled: false\n    port: 0\n  vnet:\n    networks:\n    - docker0:172.17.0.0/16\n";
        let err = model(&ann(yaml), true, &no_file, &mut w).unwrap_err();
        assert!(err.to_string().contains("redirect.dns.port"), "{err}");
    }

    #[test]
    fn bad_ports_are_refused_as_kumas_loader_refuses_them() {
        let mut w = Vec::new();
        // The injector's `port: 0` with its DNS off is let through: the port is never used.
        let yaml = "redirect:\n  dns:\n    enabled: false\n    port: 0\n";
        let m = model(&ann(yaml), true, &no_file, &mut w).unwrap();
        assert_eq!(m.ports.dns, 15053);
        for (field, value, why) in [
            ("dns", "abc", "not a string"),
            ("dns", "70000", "not a valid port"),
            ("dns", "-1", "not a valid port"),
            ("dns", "\"15053\"", "not a string"),
            ("inbound", "\"15006\"", "not a string"),
            ("outbound", "0", "not a valid port"),
        ] {
            let dns = if field == "dns" {
                "    enabled: false\n"
            } else {
                ""
            };
            let yaml = format!("redirect:\n  {field}:\n{dns}    port: {value}\n");
            let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("redirect.{field}.port")) && text.contains(why),
                "{field} {value}: {text}"
            );
        }
        // A list of ports takes strings, as Kuma's `Ports` does.
        let yaml = "redirect:\n  inbound:\n    excludePorts:\n    - \"9000\"\n    - 9001\n";
        let m = model(&ann(yaml), true, &no_file, &mut w).unwrap();
        assert_eq!(m.exclude_inbound_ports, vec![9000, 9001]);
    }

    /// YAML aliases repeat a value for free: a config well inside the annotation's 16 KiB
    /// could otherwise stand for billions of values or a million rules, so anchors and aliases
    /// are refused before the YAML is read; and every list is bounded as Istio's are.
    #[test]
    fn lists_are_bounded_and_yaml_aliases_refused() {
        let mut w = Vec::new();
        let ports: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
        let entry = format!("tcp:{}:5", ports[..200].join(","));
        let aliases = "    - *x\n".repeat(50);
        let yaml = format!(
            "redirect:\n  outbound:\n    excludePortsForUIDs:\n    - &x \"{entry}\"\n{aliases}"
        );
        assert!(yaml.len() < 16 * 1024);
        let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
        assert!(err.to_string().contains("anchor or alias"), "{err}");
        // Nested aliases (billions of values once expanded) never reach the parser.
        let scalars = vec!["1"; 2000].join(", ");
        let yaml = format!(
            "x: &a [{scalars}]\ny: &b [{}]\nredirect:\n  inbound:\n    includePorts: [{}]\n",
            vec!["*a"; 500].join(", "),
            vec!["*b"; 500].join(", ")
        );
        let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
        assert!(err.to_string().contains("anchor or alias"), "{err}");
        // Without aliases, a list past the bound.
        let entries = vec![format!("\"tcp:{}:5\"", ports[..200].join(",")); 2].join(", ");
        let yaml = format!("redirect:\n  outbound:\n    excludePortsForUIDs: [{entries}]\n");
        let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
        assert!(
            err.to_string()
                .contains("redirect.outbound.excludePortsForUIDs")
                && err.to_string().contains("more than 256"),
            "{err}"
        );
        for field in ["inbound.excludePorts", "outbound.includePorts"] {
            let (side, key) = field.split_once('.').unwrap();
            let yaml = format!("redirect:\n  {side}:\n    {key}: \"{}\"\n", ports.join(","));
            let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
            assert!(err.to_string().contains("more than 256"), "{field}: {err}");
        }
        let ips: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let yaml = format!(
            "redirect:\n  outbound:\n    excludePortsForIPs:\n    - \"{}\"\n",
            ips.join(",")
        );
        let err = model(&ann(&yaml), true, &no_file, &mut w).unwrap_err();
        assert!(err.to_string().contains("more than 256"), "{err}");
        // At the bound, accepted.
        let yaml = format!(
            "redirect:\n  inbound:\n    excludePorts: \"{}\"\n",
            ports[..256].join(",")
        );
        assert!(model(&ann(&yaml), true, &no_file, &mut w).is_ok());
    }

    #[test]
    fn injector_output_parses() {
        let yaml = "cniMode: true\nipFamilyMode: ipv4\nkumaDPUser: \"5678\"\nredirect:\n  dns:\n    captureAll: true\n    enabled: true\n    port: 15053\n  inbound:\n    enabled: true\n    port: 15006\n    excludePorts:\n    - 9000\n  outbound:\n    enabled: true\n    port: 15001\n";
        let mut w = Vec::new();
        let m = model(&ann(yaml), true, &no_file, &mut w).unwrap();
        assert_eq!(m.proxy_uids, vec![5678]);
        assert_eq!(m.exclude_inbound_ports, vec![9000]);
        assert!(m.dns_capture && m.dns_servers.is_none());
        assert!(!m.families.v6);
    }

    #[test]
    fn keys_are_read_in_any_letter_case_as_kumas_loader_reads_them() {
        let yaml = "KumaDPUser: \"1000\"\nIPFAMILYMODE: ipv4\nRedirect:\n  Inbound:\n    ExcludePorts:\n    - 9000\n  DNS:\n    Enabled: true\n    captureall: true\n  outbound:\n    port: 15002\n    Port: 15003\n";
        let mut w = Vec::new();
        let m = model(&ann(yaml), true, &no_file, &mut w).unwrap();
        assert_eq!(m.proxy_uids, vec![1000]);
        assert!(!m.families.v6);
        assert_eq!(m.exclude_inbound_ports, vec![9000]);
        assert!(m.dns_capture && m.dns_servers.is_none());
        // Of two spellings of one key, the later wins, as in Go.
        assert_eq!(m.ports.outbound, 15003);
        assert!(dry_run(&ann("DryRun: true\n")).is_some());
        // A key no field has in any case is ignored, as Kuma ignores it.
        assert!(model(&ann("kumaDPUserName: x\n"), true, &no_file, &mut w).is_ok());
    }

    #[test]
    fn missing_config_and_bad_uid_spec_fail() {
        let mut w = Vec::new();
        let only_injected: Annotations = [(SIDECAR_INJECTED.to_string(), "true".to_string())]
            .into_iter()
            .collect();
        assert!(model(&only_injected, false, &no_file, &mut w).is_err());
        let yaml = "redirect:\n  outbound:\n    excludePortsForUIDs:\n    - \"*\"\n";
        let err = model(&ann(yaml), false, &no_file, &mut w).unwrap_err();
        assert!(err.annotation.contains("excludePortsForUIDs"), "{err}");
    }

    #[test]
    fn every_rule_of_a_full_kuma_pod_states_a_storable_purpose() {
        let yaml = "redirect:\n  dns:\n    enabled: true\n    captureAll: true\n  inbound:\n    excludePorts: [1]\n    excludePortsForIPs: [10.0.0.1]\n  outbound:\n    excludePorts: [2]\n    excludePortsForUIDs: [\"1-2\"]\n    excludePortsForIPs: [10.0.0.2]\ndropInvalidPackets: true\n";
        let m = model(&ann(yaml), true, &no_file, &mut Vec::new()).unwrap();
        for rs in m.rulesets() {
            for c in rs.tables.iter().flat_map(|t| &t.chains) {
                assert!(c.name.starts_with(CHAIN_PREFIX), "{}", c.name);
                for r in &c.rules {
                    assert!(crate::rules::is_valid_purpose(r.purpose), "{:?}", r.purpose);
                }
            }
        }
    }

    #[test]
    fn a_wide_uid_range_is_one_rule_per_port_range_as_kuma_writes_it() {
        // Kuma's own example of the annotation.
        let yaml = "redirect:\n  outbound:\n    excludePortsForUIDs: [\"tcp:22:1000-2000\"]\n";
        let m = model(&ann(yaml), false, &no_file, &mut Vec::new()).unwrap();
        assert_eq!(m.owner_port_exclusions.len(), 1);
        assert_eq!(m.owner_port_exclusions[0].uids, (1000, 2000));
        let rules = crate::render::iptables::render(&m.ruleset(crate::rules::Family::V4));
        assert_eq!(rules.matches("--uid-owner 1000-2000").count(), 1, "{rules}");
        // A reversed range matches nothing under Kuma; meshcap refuses it.
        let yaml = "redirect:\n  outbound:\n    excludePortsForUIDs: [\"tcp:22:2000-1000\"]\n";
        assert!(model(&ann(yaml), false, &no_file, &mut Vec::new()).is_err());
    }

    #[test]
    fn uid_exclusions_expand_protocols() {
        let e = uid_exclusions("f", &["53,3000-5000:106-108".to_string()]).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].uids, (106, 108));
        assert_eq!(
            e[0].ports[1],
            PortRange {
                first: 3000,
                last: 5000
            }
        );
    }
}

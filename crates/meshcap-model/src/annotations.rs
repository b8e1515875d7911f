//! Istio-compatible pod annotations: names, parsing and validation.
//!
//! Annotation values are written by pod authors, so they are untrusted data: each one is
//! parsed into a typed value (ports, CIDRs, interface names, a mode) with bounded length and
//! list size, and anything else is an [`AnnotationError`] naming the annotation. A value is
//! accepted exactly where istio-cni accepts it, and means what iptables makes of the text
//! istio-iptables writes from it (docs/CONFIGURATION.md, "Validation"). Nothing here ever
//! reaches a shell: the renderers only print typed values.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Deserialize;

/// Pod annotations, as the runtime passes them (`io.kubernetes.cri.pod-annotations`).
pub type Annotations = BTreeMap<String, String>;

/// Annotations from `(key, value)` pairs (tests, fixtures and the node tool's `-a`).
pub fn from_pairs(pairs: &[(&str, &str)]) -> Annotations {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// The older name of [`REROUTE_VIRTUAL_INTERFACES`]; the new name wins when both are present.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";

/// Every annotation that changes the redirect model, for documentation and `meshcap render`.
pub const MODEL_ANNOTATIONS: &[&str] = &[
    INTERCEPTION_MODE,
    INCLUDE_OUTBOUND_IP_RANGES,
    EXCLUDE_OUTBOUND_IP_RANGES,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_INTERFACES,
    REROUTE_VIRTUAL_INTERFACES,
    KUBEVIRT_INTERFACES,
    PROXY_CONFIG,
];

/// Longest annotation value meshcap accepts (Kubernetes allows 256 KiB for all annotations
/// together; a capture annotation never needs more than this).
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Most entries a list annotation may hold; every entry becomes at least one rule.
pub const MAX_LIST_LEN: usize = 256;

/// Where a refused value came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InputKind {
    /// A pod annotation.
    #[default]
    Annotation,
    /// An environment variable of the proxy container (Istio reads several from there).
    ProxyEnv,
    /// A setting of meshcap's plugin configuration (node-wide).
    PluginSetting,
    /// A model field set by a front end (a bug in the front end, or an input it passed on
    /// without checking).
    ModelField,
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputKind::Annotation => "annotation",
            InputKind::ProxyEnv => "proxy environment variable",
            InputKind::PluginSetting => "plugin setting",
            InputKind::ModelField => "model setting",
        })
    }
}

/// An input value meshcap refuses. `Display` names the input (annotation, environment
/// variable, setting), the offending value (truncated) and why, so the CNI error tells the pod
/// author what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {annotation}={value:?}: {reason}")]
pub struct AnnotationError {
    /// The input's name: the annotation, environment variable or setting.
    pub annotation: String,
    pub value: String,
    pub reason: String,
    pub kind: InputKind,
}

impl AnnotationError {
    /// The same error, for an input of another kind.
    pub fn of_kind(mut self, kind: InputKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn new(annotation: &str, value: &str, reason: impl Into<String>) -> Self {
        const SHOWN: usize = 120;
        let value = if value.len() > SHOWN {
            let mut end = SHOWN;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &value[..end])
        } else {
            value.to_owned()
        };
        AnnotationError {
            annotation: annotation.to_owned(),
            value,
            reason: reason.into(),
            kind: InputKind::Annotation,
        }
    }
}

/// A list annotation that also accepts `*` ("everything").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector<T> {
    All,
    Only(Vec<T>),
}

impl<T> Selector<T> {
    pub fn is_empty(&self) -> bool {
        matches!(self, Selector::Only(v) if v.is_empty())
    }

    /// How many entries an `Only` lists (0 for `All`).
    pub fn listed(&self) -> usize {
        match self {
            Selector::All => 0,
            Selector::Only(v) => v.len(),
        }
    }
}

/// Read a raw annotation value, enforcing the length bound.
fn raw<'a>(annotations: &'a Annotations, name: &str) -> Result<Option<&'a str>, AnnotationError> {
    match annotations.get(name) {
        None => Ok(None),
        Some(v) if v.len() > MAX_VALUE_LEN => Err(AnnotationError::new(
            name,
            v,
            format!("value is longer than {MAX_VALUE_LEN} bytes"),
        )),
        Some(v) => Ok(Some(v.as_str())),
    }
}

/// A list of `len` entries read from `name` (whose value is `value`): refused past
/// [`MAX_LIST_LEN`], since every entry becomes at least one rule.
pub(crate) fn bounded(name: &str, value: &str, len: usize) -> Result<(), AnnotationError> {
    if len > MAX_LIST_LEN {
        return Err(AnnotationError::new(
            name,
            value,
            format!("more than {MAX_LIST_LEN} entries"),
        ));
    }
    Ok(())
}

/// [`bounded`] for a list the error shows by its length: one parsed from YAML, where aliases
/// could make it long, or joined from several inputs.
pub(crate) fn at_most(name: &str, len: usize) -> Result<(), AnnotationError> {
    bounded(name, &format!("{len} entries"), len)
}

/// Split a comma-separated list; whitespace around items is ignored, empty items are errors
/// (a trailing comma is a typo we would rather report than guess about).
fn items<'a>(name: &str, value: &'a str) -> Result<Vec<&'a str>, AnnotationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = trimmed.split(',').map(str::trim).collect();
    bounded(name, value, items.len())?;
    if items.iter().any(|i| i.is_empty()) {
        return Err(AnnotationError::new(name, value, "empty list entry"));
    }
    Ok(items)
}

fn dedup<T: Ord + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

/// A TCP/UDP port: decimal 1-65535, nothing else (no names, no ranges, no signs).
pub fn parse_port(name: &str, value: &str, item: &str) -> Result<u16, AnnotationError> {
    if item.is_empty() || item.len() > 5 || !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AnnotationError::new(
            name,
            value,
            format!("{item:?} is not a port number (1-65535)"),
        ));
    }
    match item.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(AnnotationError::new(
            name,
            value,
            format!("port {item} is out of range (1-65535)"),
        )),
    }
}

/// Split an Istio list value as istio-cni does (`strings.Split` on `,`), bounding its length.
/// `""` is the empty list; every other value has at least one entry.
fn istio_items<'a>(name: &str, value: &'a str) -> Result<Vec<&'a str>, AnnotationError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = value.split(',').collect();
    bounded(name, value, items.len())?;
    Ok(items)
}

/// One entry of an Istio port list, as istio-cni checks it (`parsePort`: whitespace around it
/// trimmed, then decimal 0-65535) and as iptables then reads it (`--dport`, `strtoul` with base
/// 0: a leading 0 makes the entry octal, so `010` is port 8 and `08` is refused).
pub fn istio_port(name: &str, value: &str, item: &str) -> Result<u16, AnnotationError> {
    let digits = istio_port_entry(name, value, item)?;
    iptables_word(name, value, item)?;
    iptables_port(name, value, digits)
}

/// An entry istio-cni checks trimmed but hands to iptables as written: around the word,
/// iptables-restore separates on spaces and tabs only, so any other whitespace (a
/// non-breaking space pasted from a web page, a newline) stays in the word: a port iptables
/// refuses, or an interface name no interface has.
fn iptables_word(name: &str, value: &str, item: &str) -> Result<(), AnnotationError> {
    match item
        .chars()
        .find(|c| c.is_whitespace() && !matches!(c, ' ' | '\t'))
    {
        Some(c) => Err(AnnotationError::new(
            name,
            value,
            format!(
                "{item:?} holds {c:?}, which iptables does not read as a space (istio-cni \
                 passes the entry on as written)"
            ),
        )),
        None => Ok(()),
    }
}

/// [`istio_port`]'s first half: the entry istio-cni accepts, trimmed.
fn istio_port_entry<'a>(
    name: &str,
    value: &str,
    item: &'a str,
) -> Result<&'a str, AnnotationError> {
    let digits = item.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AnnotationError::new(
            name,
            value,
            format!("{item:?} is not a port number (0-65535)"),
        ));
    }
    if digits.parse::<u16>().is_err() {
        return Err(AnnotationError::new(
            name,
            value,
            format!("port {digits} is out of range (0-65535)"),
        ));
    }
    Ok(digits)
}

/// Whether iptables reads a port entry istio-cni accepted as octal (a leading 0).
fn is_octal(digits: &str) -> bool {
    digits.len() > 1 && digits.starts_with('0')
}

/// [`istio_port`]'s second half: the port iptables reads from an entry istio-cni accepted.
fn iptables_port(name: &str, value: &str, digits: &str) -> Result<u16, AnnotationError> {
    if is_octal(digits) {
        // Below the decimal value, so within range.
        return u16::from_str_radix(digits, 8).map_err(|_| {
            AnnotationError::new(
                name,
                value,
                format!(
                    "iptables refuses port {digits}: a leading 0 makes it octal, and 8 and 9 are \
                     not octal digits"
                ),
            )
        });
    }
    Ok(digits.parse().expect("checked by istio_port_entry"))
}

/// An Istio port list, exactly as istio-cni checks it and iptables reads it (each entry as
/// [`istio_port`]; duplicates dropped). `""` is no ports; `*` alone, where `allow_all`, is
/// every port. Elsewhere istio-cni lets `*` through, and iptables then refuses it.
pub fn ports(
    annotations: &Annotations,
    name: &str,
    allow_all: bool,
) -> Result<Option<Selector<u16>>, AnnotationError> {
    let Some(value) = raw(annotations, name)? else {
        return Ok(None);
    };
    istio_ports(name, value, allow_all).map(Some)
}

/// `*` where istio-cni lets it through and iptables then refuses it as a port.
fn star_refused(name: &str, value: &str) -> AnnotationError {
    AnnotationError::new(name, value, "`*` is not a port here (iptables refuses it)")
}

fn istio_ports(name: &str, value: &str, allow_all: bool) -> Result<Selector<u16>, AnnotationError> {
    if value == "*" {
        return if allow_all {
            Ok(Selector::All)
        } else {
            Err(star_refused(name, value))
        };
    }
    let ports = istio_items(name, value)?
        .into_iter()
        .map(|item| istio_port(name, value, item))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Selector::Only(dedup(ports)))
}

/// `traffic.sidecar.istio.io/excludeInboundPorts` as istio-cni takes it: the value trimmed,
/// each entry checked as [`istio_port`]'s first half, `*` allowed. The ports reach iptables
/// only when every inbound port is captured (`rendered`); only then are they read as iptables
/// reads them, so only then can iptables refuse one.
pub fn exclude_inbound_ports(
    annotations: &Annotations,
    rendered: bool,
) -> Result<Vec<u16>, AnnotationError> {
    let name = EXCLUDE_INBOUND_PORTS;
    let Some(value) = raw(annotations, name)? else {
        return Ok(Vec::new());
    };
    // istio-cni checks the value as written (`*` alone, not ` * `), then trims it.
    if value == "*" {
        return if rendered {
            Err(star_refused(name, value))
        } else {
            Ok(Vec::new())
        };
    }
    let mut ports = Vec::new();
    for item in istio_items(name, value.trim())? {
        let digits = istio_port_entry(name, value, item)?;
        if rendered {
            iptables_word(name, value, item)?;
            ports.push(iptables_port(name, value, digits)?);
        }
    }
    Ok(dedup(ports))
}

/// An Istio CIDR list, as istio-cni checks it (`validateCIDRList`: Go's `netip.ParsePrefix` on
/// each entry as written) and istio-iptables uses it: `ADDRESS/LEN` of either family, with
/// nothing around it (no whitespace, no bare address). Host bits are allowed and cleared, as
/// iptables clears them when it stores the rule. `""` is no ranges; `*` alone, where
/// `allow_all`, is every destination.
pub fn cidrs(
    annotations: &Annotations,
    name: &str,
    allow_all: bool,
) -> Result<Option<Selector<IpNet>>, AnnotationError> {
    Ok(cidrs_as_written(annotations, name, allow_all)?.map(cleared))
}

/// [`cidrs`] before iptables clears the host bits: each entry as written, in order.
pub fn cidrs_as_written(
    annotations: &Annotations,
    name: &str,
    allow_all: bool,
) -> Result<Option<Selector<IpNet>>, AnnotationError> {
    let Some(value) = raw(annotations, name)? else {
        return Ok(None);
    };
    if value == "*" {
        return if allow_all {
            Ok(Some(Selector::All))
        } else {
            Err(AnnotationError::new(name, value, "`*` is not allowed here"))
        };
    }
    let nets = istio_items(name, value)?
        .into_iter()
        .map(|item| go_prefix(item).map_err(|reason| AnnotationError::new(name, value, reason)))
        .collect::<Result<_, _>>()?;
    Ok(Some(Selector::Only(nets)))
}

/// Written CIDRs as iptables stores them: host bits cleared, duplicates dropped.
pub fn cleared(written: Selector<IpNet>) -> Selector<IpNet> {
    match written {
        Selector::All => Selector::All,
        Selector::Only(nets) => Selector::Only(dedup(nets.iter().map(IpNet::trunc).collect())),
    }
}

/// Whether an address is loopback as Go's `netip.Addr.IsLoopback` reads it: `127.0.0.0/8`,
/// `::1`, and an IPv4-mapped `::ffff:127.x.y.z`.
pub fn go_loopback(address: std::net::IpAddr) -> bool {
    match address {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        std::net::IpAddr::V6(a) => a
            .to_ipv4_mapped()
            .map_or(a.is_loopback(), |a| a.is_loopback()),
    }
}

/// Go's `netip.ParsePrefix`: an address, `/`, and a decimal length without sign or leading
/// zero, as written (host bits kept: iptables clears them, `IpNet::trunc`).
fn go_prefix(item: &str) -> Result<IpNet, String> {
    if item.trim() != item {
        return Err(format!(
            "{item:?} has whitespace around it (istio-cni refuses it)"
        ));
    }
    let Some((addr, bits)) = item.split_once('/') else {
        return Err(if item.parse::<std::net::IpAddr>().is_ok() {
            format!("{item:?} has no prefix length (one address is {item}/32 or /128)")
        } else {
            format!("{item:?} is not a CIDR")
        });
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{item:?} is not a CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let canonical = !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    match bits.parse::<u8>() {
        Ok(len) if canonical && len <= max => Ok(IpNet::new(addr, len).expect("length checked")),
        _ => Err(format!("{item:?}: the prefix length is not 0-{max}")),
    }
}

/// What the rules make of annotation values written otherwise, one line each, for the log and
/// `meshcap render`: host bits of a CIDR (cleared), a port with a leading 0 (octal), the old
/// name of the rerouted interfaces next to the new one (ignored). The values are valid and the
/// pod gets what istio-cni gives it, which may not be what its author meant. Call it on
/// annotations the model accepted.
pub fn reading_notes(annotations: &Annotations) -> Vec<String> {
    let mut notes = Vec::new();
    for name in [INCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_IP_RANGES] {
        let Some(value) = annotations.get(name).filter(|v| *v != "*") else {
            continue;
        };
        for written in value.split(',').filter_map(|item| go_prefix(item).ok()) {
            if written != written.trunc() {
                notes.push(format!(
                    "{name}: {written} is {} (iptables clears the host bits, as under istio-cni)",
                    written.trunc()
                ));
            }
        }
    }
    // Excluded inbound ports reach iptables only when every inbound port is captured.
    let every_inbound = annotations
        .get(INCLUDE_INBOUND_PORTS)
        .is_none_or(|v| v == "*");
    for name in [
        INCLUDE_INBOUND_PORTS,
        EXCLUDE_INBOUND_PORTS,
        crate::mesh::istio::STATUS_PORT,
        INCLUDE_OUTBOUND_PORTS,
        EXCLUDE_OUTBOUND_PORTS,
    ] {
        if [EXCLUDE_INBOUND_PORTS, crate::mesh::istio::STATUS_PORT].contains(&name)
            && !every_inbound
        {
            continue;
        }
        let Some(value) = annotations.get(name) else {
            continue;
        };
        for item in value.split(',') {
            let Ok(digits) = istio_port_entry(name, value, item) else {
                continue;
            };
            if !is_octal(digits) {
                continue;
            }
            if let Ok(port) = iptables_port(name, value, digits) {
                notes.push(format!(
                    "{name}: {digits} is port {port} (iptables reads a leading 0 as octal, as \
                     under istio-cni)"
                ));
            }
        }
    }
    if annotations.contains_key(REROUTE_VIRTUAL_INTERFACES)
        && annotations.contains_key(KUBEVIRT_INTERFACES)
    {
        notes.push(format!(
            "{KUBEVIRT_INTERFACES} is ignored: {REROUTE_VIRTUAL_INTERFACES} is set (istio-cni \
             reads the old name only without the new one)"
        ));
    }
    notes
}

/// An interface name of an Istio annotation, as istio-cni checks it
/// (`ValidateInterfaceNames`): a letter, then letters, digits, `_`, `.` or `-`, at most 15
/// bytes in all. Narrower than what the kernel accepts, and no `+` wildcard.
pub fn is_istio_interface_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..16).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An interface name as the kernel accepts it (`dev_valid_name`): 1-15 bytes, not `.` or `..`,
/// no `/`, `:` or whitespace. meshcap is stricter and also refuses control characters and
/// quotes, which no real interface needs and which would only make rules hard to read, and a
/// trailing `+` or `*`: iptables reads `eth+` as a wildcard and nftables text `eth*`, so a name
/// here is always exact; where a wildcard is meant (Kuma's virtual networks), the caller takes
/// `NAME+` apart and checks `NAME`.
/// [`is_valid_interface_name`], or iptables' wildcard `NAME+` (every interface whose name
/// starts with `NAME`) of a valid `NAME`.
pub fn is_valid_interface_pattern(pattern: &str) -> bool {
    is_valid_interface_name(pattern.strip_suffix('+').unwrap_or(pattern))
}

pub fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.ends_with(['+', '*'])
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'"' | b'\'' | b'\\'))
}

pub fn interfaces(
    annotations: &Annotations,
    name: &str,
) -> Result<Option<Vec<String>>, AnnotationError> {
    let Some(value) = raw(annotations, name)? else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for item in istio_items(name, value)? {
        // istio-cni trims each name; iptables-restore, which reads the rule's words, too.
        iptables_word(name, value, item)?;
        let item = item.trim();
        if item.is_empty() {
            return Err(AnnotationError::new(name, value, "empty interface name"));
        }
        if !is_istio_interface_name(item) {
            return Err(AnnotationError::new(
                name,
                value,
                format!(
                    "{item:?} is not an interface name Istio accepts (a letter, then letters, \
                     digits, _ . or -; at most 15 bytes)"
                ),
            ));
        }
        names.push(item.to_owned());
    }
    Ok(Some(dedup(names)))
}

/// The inbound interception mode.
pub fn interception_mode(
    annotations: &Annotations,
) -> Result<Option<crate::model::InterceptionMode>, AnnotationError> {
    use crate::model::InterceptionMode;
    let Some(value) = raw(annotations, INTERCEPTION_MODE)? else {
        return Ok(None);
    };
    match value {
        "REDIRECT" => Ok(Some(InterceptionMode::Redirect)),
        "TPROXY" => Ok(Some(InterceptionMode::Tproxy)),
        _ => Err(AnnotationError::new(
            INTERCEPTION_MODE,
            value,
            "must be REDIRECT or TPROXY",
        )),
    }
}

/// The part of Istio's ProxyConfig that matters for capture. Other fields are allowed and
/// ignored: the annotation carries the whole proxy configuration.
#[derive(Debug, Default, Deserialize)]
struct ProxyConfigSubset {
    // `null` (or `~`) is no metadata, as Go's YAML reads it into a map.
    #[serde(default, rename = "proxyMetadata")]
    proxy_metadata: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// Where a YAML document uses an anchor (`&a`) or an alias (`*a`), if it does: the byte offset.
/// An alias repeats a value for free, so a document of a few KiB can stand for billions of
/// values (serde_yaml bounds the replays, not what they build); the YAML of pod annotations
/// never needs one (no injector writes any), so it is refused before it is parsed. The look is
/// lexical: a `&` or `*` where a node starts, outside quoted scalars and comments (a block
/// scalar's lines are not told apart, so such a line in one is refused too).
pub fn yaml_anchor_or_alias(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut node_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => node_start = true,
            b' ' | b'\t' | b'\r' => {}
            b'#' if i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'&' | b'*' if node_start => return Some(i),
            b'"' if node_start => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                node_start = false;
            }
            b'\'' if node_start => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                node_start = false;
            }
            // What may come right before a node: a sequence entry, a mapping value or key, a
            // flow collection's opening or separator.
            b'-' | b':' | b'?' if bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) => {
                node_start = true
            }
            b'[' | b'{' | b',' => node_start = true,
            _ => node_start = false,
        }
        i += 1;
    }
    None
}

/// `proxyMetadata` of the `proxy.istio.io/config` annotation (YAML; JSON is valid YAML), each
/// value as the string Istio's agent sees in its environment: a YAML boolean or number as
/// written, `null` as empty.
pub fn proxy_metadata(
    annotations: &Annotations,
) -> Result<BTreeMap<String, String>, AnnotationError> {
    let Some(value) = raw(annotations, PROXY_CONFIG)? else {
        return Ok(BTreeMap::new());
    };
    if value.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Some(at) = yaml_anchor_or_alias(value) {
        return Err(AnnotationError::new(
            PROXY_CONFIG,
            value,
            format!(
                "a YAML anchor or alias at byte {at}: not accepted (an alias repeats a value \
                 without bound, and no injector writes one)"
            ),
        ));
    }
    // A document that is only `null` sets nothing, as with Go's YAML.
    let config: Option<ProxyConfigSubset> = serde_yaml::from_str(value).map_err(|e| {
        AnnotationError::new(
            PROXY_CONFIG,
            value,
            format!("not a ProxyConfig document: {e}"),
        )
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in config.and_then(|c| c.proxy_metadata).unwrap_or_default() {
        let text = match v {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Bool(b) => b.to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Null => String::new(),
            _ => {
                return Err(AnnotationError::new(
                    PROXY_CONFIG,
                    value,
                    format!("proxyMetadata.{k} must be a string"),
                ))
            }
        };
        out.insert(k, text);
    }
    Ok(out)
}

/// Whether `proxy.istio.io/config` turns DNS capture on (`proxyMetadata.ISTIO_META_DNS_CAPTURE`).
/// Booleans follow Go's `strconv.ParseBool`, as Istio's agent reads them; empty is false.
pub fn dns_capture(annotations: &Annotations) -> Result<bool, AnnotationError> {
    match proxy_metadata(annotations)?.get("ISTIO_META_DNS_CAPTURE") {
        None => Ok(false),
        Some(v) if v.is_empty() => Ok(false),
        Some(v) => go_bool(PROXY_CONFIG, v).map_err(|_| {
            AnnotationError::new(
                PROXY_CONFIG,
                annotations.get(PROXY_CONFIG).map_or("", String::as_str),
                format!("proxyMetadata.ISTIO_META_DNS_CAPTURE={v:?} is not a boolean"),
            )
        }),
    }
}

// Parsers of single values, for front ends that read a setting from an annotation, an
// environment variable or a plugin setting. `name` is that source (set the error's kind with
// [`AnnotationError::of_kind`]); the syntax is Istio's for the same setting.

/// Go's `strconv.ParseBool`, as Istio reads its boolean settings.
pub fn go_bool(name: &str, value: &str) -> Result<bool, AnnotationError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(AnnotationError::new(
            name,
            value,
            "not a boolean (true or false)",
        )),
    }
}

/// One port (1-65535).
pub fn port(name: &str, value: &str) -> Result<u16, AnnotationError> {
    parse_port(name, value, value.trim())
}

/// A uid or gid: decimal 0-4294967294 (4294967295 is the kernel's "no id").
fn id(name: &str, value: &str, item: &str) -> Result<u32, AnnotationError> {
    match item.parse::<u32>() {
        Ok(id) if id != u32::MAX && item.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(AnnotationError::new(
            name,
            value,
            format!("{item:?} is not a numeric id (0-4294967294)"),
        )),
    }
}

/// A comma-separated list of numeric uids or gids (istio-iptables `-u`/`-g`), 1 to
/// [`crate::model::MAX_PROXY_IDS`] entries.
pub fn id_list(name: &str, value: &str) -> Result<Vec<u32>, AnnotationError> {
    let ids = items(name, value)?
        .into_iter()
        .map(|item| id(name, value, item))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() || ids.len() > crate::model::MAX_PROXY_IDS {
        return Err(AnnotationError::new(
            name,
            value,
            format!("must list 1 to {} ids", crate::model::MAX_PROXY_IDS),
        ));
    }
    Ok(dedup(ids))
}

/// Istio's outbound owner-group filter (`tools/common/config/types.go`
/// `ParseInterceptFilter`): an include value of `*` captures every group but the excluded
/// ones; any other include value (even empty) captures only the listed groups and ignores the
/// exclude list. Groups must be numeric gids: meshcap resolves no names (the node's group
/// database is not the pod's).
pub fn owner_groups(
    include: (&str, &str),
    exclude: (&str, &str),
) -> Result<crate::model::OwnerGroups, AnnotationError> {
    use crate::model::{OwnerGroups, MAX_OWNER_GROUPS_INCLUDE};
    let gids = |(name, value): (&str, &str)| -> Result<Vec<u32>, AnnotationError> {
        let ids = items(name, value)?
            .into_iter()
            .map(|item| id(name, value, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(dedup(ids))
    };
    if include.1.trim() == "*" {
        let groups = gids(exclude)?;
        return Ok(if groups.is_empty() {
            OwnerGroups::All
        } else {
            OwnerGroups::AllExcept(groups)
        });
    }
    let groups = gids(include)?;
    if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
        return Err(AnnotationError::new(
            include.0,
            include.1,
            format!("at most {MAX_OWNER_GROUPS_INCLUDE} groups may be included"),
        ));
    }
    Ok(OwnerGroups::Only(groups))
}

/// Why `net` cannot be the IPv4 loopback range, if it cannot (Istio's
/// `ValidateIPv4LoopbackCidr`: an IPv4 loopback address with a /8 to /32 mask).
pub fn check_ipv4_loopback(net: &IpNet) -> Result<(), String> {
    match net {
        IpNet::V4(n) if n.addr().is_loopback() && (8..=32).contains(&n.prefix_len()) => Ok(()),
        IpNet::V4(n) if n.addr().is_loopback() => {
            Err(format!("mask /{} is outside /8 to /32", n.prefix_len()))
        }
        _ => Err(format!("{net} is not an IPv4 loopback range")),
    }
}

/// The IPv4 loopback range (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`). Host bits are cleared, as
/// iptables does when it stores the rule.
pub fn ipv4_loopback(name: &str, value: &str) -> Result<IpNet, AnnotationError> {
    let net: IpNet = value
        .trim()
        .parse()
        .map_err(|_| AnnotationError::new(name, value, "not a CIDR"))?;
    check_ipv4_loopback(&net).map_err(|reason| AnnotationError::new(name, value, reason))?;
    Ok(net.trunc())
}

/// Resolver addresses (the nameservers of a resolv.conf), either family.
pub fn addresses(name: &str, value: &str) -> Result<Vec<std::net::IpAddr>, AnnotationError> {
    let addrs = items(name, value)?
        .into_iter()
        .map(|item| {
            item.parse::<std::net::IpAddr>().map_err(|_| {
                AnnotationError::new(name, value, format!("{item:?} is not an address"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dedup(addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> Annotations {
        [(name.to_owned(), value.to_owned())].into_iter().collect()
    }

    // Case: port lists as istio-cni checks them (`validatePortList`: entries trimmed, decimal
    // 0-65535, `*` alone) and as iptables-restore then reads each entry (checked with iptables
    // 1.8.9: `--dport 010` is stored as 8, `--dport 08` refused, `--dport 0` stored as 0).
    #[test]
    fn ports_follow_istio_cni_and_iptables() {
        let n = EXCLUDE_OUTBOUND_PORTS;
        let got = |v: &str| ports(&one(n, v), n, false);
        assert_eq!(
            got("80, 443,80").unwrap(),
            Some(Selector::Only(vec![80, 443]))
        );
        assert_eq!(got("").unwrap(), Some(Selector::Only(vec![])));
        assert_eq!(got("0").unwrap(), Some(Selector::Only(vec![0])));
        assert_eq!(got(" 8080 ").unwrap(), Some(Selector::Only(vec![8080])));
        assert_eq!(got("\t80").unwrap(), Some(Selector::Only(vec![80])));
        // Whitespace iptables does not separate on stays in the port it refuses.
        for odd in ["80,\u{a0}9000", "80\n", "\u{2003}443"] {
            let e = got(odd).unwrap_err();
            assert!(
                e.reason.contains("does not read as a space"),
                "{odd:?}: {e}"
            );
        }
        let iface = |v: &str| interfaces(&one(EXCLUDE_INTERFACES, v), EXCLUDE_INTERFACES);
        assert!(iface("eth1, eth2").is_ok());
        assert!(iface("eth1,\u{a0}eth2").is_err());
        assert_eq!(
            got("010,65535").unwrap(),
            Some(Selector::Only(vec![8, 65535]))
        );
        assert_eq!(ports(&Annotations::new(), n, false).unwrap(), None);
        for bad in [
            "65536",
            "-1",
            "+80",
            "80;rm -rf /",
            "http",
            "80,",
            ",80",
            "8 0",
            "*",
            " ",
            "0x50",
            "08",
            "0080",
        ] {
            let err = got(bad).unwrap_err();
            assert_eq!(err.annotation, n, "{bad}");
        }
        assert!(got("08").unwrap_err().reason.contains("octal"));
        let inc = |v: &str| ports(&one(INCLUDE_INBOUND_PORTS, v), INCLUDE_INBOUND_PORTS, true);
        assert_eq!(inc("*").unwrap(), Some(Selector::All));
        // istio-cni compares the value with "*" untrimmed, then fails to parse " * ".
        assert!(inc(" * ").is_err());
    }

    // Case: excludeInboundPorts is trimmed as a whole and reaches iptables only when every
    // inbound port is captured; an entry iptables refuses matters only then.
    #[test]
    fn excluded_inbound_ports_are_read_only_where_rendered() {
        let a = |v: &str| one(EXCLUDE_INBOUND_PORTS, v);
        assert_eq!(
            exclude_inbound_ports(&a(" 80,010 "), true).unwrap(),
            vec![80, 8]
        );
        assert!(exclude_inbound_ports(&a("08"), true).is_err());
        assert!(exclude_inbound_ports(&a("*"), true).is_err());
        assert_eq!(
            exclude_inbound_ports(&a("08"), false).unwrap(),
            Vec::<u16>::new()
        );
        assert!(exclude_inbound_ports(&a(" * "), false).is_err());
        assert!(exclude_inbound_ports(&a("http"), false).is_err());
        assert!(exclude_inbound_ports(&a("80,,81"), false).is_err());
        assert_eq!(
            exclude_inbound_ports(&Annotations::new(), true).unwrap(),
            Vec::<u16>::new()
        );
    }

    #[test]
    fn error_names_annotation_and_value() {
        let err = ports(
            &one(EXCLUDE_INBOUND_PORTS, "99999"),
            EXCLUDE_INBOUND_PORTS,
            false,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(EXCLUDE_INBOUND_PORTS), "{text}");
        assert!(text.contains("99999"), "{text}");
    }

    // Case: CIDR lists as istio-cni checks them (Go's `netip.ParsePrefix` on each entry as
    // written): a prefix length always, nothing around the entry, host bits allowed and
    // cleared (as iptables stores `-d 10.0.0.1/8`: 10.0.0.0/8).
    #[test]
    fn cidrs_follow_istio_cni() {
        let n = EXCLUDE_OUTBOUND_IP_RANGES;
        let got = cidrs(
            &one(n, "10.0.0.0/8,fd00::/8,192.168.1.1/32,10.1.2.3/16"),
            n,
            false,
        );
        assert_eq!(
            got.unwrap(),
            Some(Selector::Only(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
                "192.168.1.1/32".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ]))
        );
        assert_eq!(
            cidrs(&one(n, ""), n, false).unwrap(),
            Some(Selector::Only(vec![]))
        );
        for bad in [
            "192.168.1.1",
            "10.0.0.0/8, 192.168.0.0/16",
            " 10.0.0.0/8",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "not-a-cidr",
            "*",
            " ",
            "10.0.0.0/8,",
        ] {
            assert!(cidrs(&one(n, bad), n, false).is_err(), "{bad}");
        }
        let reason = cidrs(&one(n, "192.168.1.1"), n, false).unwrap_err().reason;
        assert!(reason.contains("192.168.1.1/32"), "{reason}");
        let inc = |v: &str| {
            cidrs(
                &one(INCLUDE_OUTBOUND_IP_RANGES, v),
                INCLUDE_OUTBOUND_IP_RANGES,
                true,
            )
        };
        assert_eq!(inc("*").unwrap(), Some(Selector::All));
        assert!(inc(" *").is_err());
    }

    // Case: values the rules read otherwise than they are written are named, each once.
    #[test]
    fn values_read_otherwise_are_noted() {
        let a = from_pairs(&[
            (
                EXCLUDE_OUTBOUND_IP_RANGES,
                "10.1.2.3/8,10.0.0.0/8,fd00::1/8,FD00::/8",
            ),
            (EXCLUDE_OUTBOUND_PORTS, " 010,0,80"),
            (EXCLUDE_INBOUND_PORTS, "017"),
            (REROUTE_VIRTUAL_INTERFACES, "net1"),
            (KUBEVIRT_INTERFACES, "net2"),
        ]);
        let notes = reading_notes(&a);
        assert_eq!(notes.len(), 5, "{notes:#?}");
        assert!(notes[0].contains("10.1.2.3/8 is 10.0.0.0/8"), "{notes:#?}");
        assert!(notes[1].contains("fd00::1/8 is fd00::/8"), "{notes:#?}");
        assert!(
            notes.iter().any(|n| n.contains("010 is port 8")),
            "{notes:#?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("017 is port 15")),
            "{notes:#?}"
        );
        assert!(notes[4].starts_with(KUBEVIRT_INTERFACES), "{notes:#?}");
        // Excluded inbound ports that never reach the rules are not explained.
        let listed = from_pairs(&[
            (INCLUDE_INBOUND_PORTS, "80"),
            (EXCLUDE_INBOUND_PORTS, "017"),
        ]);
        assert!(reading_notes(&listed).is_empty());
        assert!(reading_notes(&from_pairs(&[(INCLUDE_OUTBOUND_IP_RANGES, "*")])).is_empty());
    }

    // Case: interface names as istio-cni checks them (`ValidateInterfaceNames`), each trimmed.
    #[test]
    fn interface_names_follow_istio_cni() {
        let n = EXCLUDE_INTERFACES;
        let got = |v: &str| interfaces(&one(n, v), n);
        assert_eq!(
            got("eth1, net-2.a_b ,abcdefghijklmno").unwrap(),
            Some(vec![
                "eth1".into(),
                "net-2.a_b".into(),
                "abcdefghijklmno".into()
            ])
        );
        assert_eq!(got("").unwrap(), Some(vec![]));
        for bad in [
            " ",
            "eth1,",
            "eth1,,eth2",
            "1eth",
            "_x",
            "veth@x",
            "eth+",
            "eth*",
            "+",
            "a/b",
            "a:b",
            "a\"b",
            "abcdefghijklmnop",
            "$(x)x",
        ] {
            assert!(got(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        for good in ["eth0", "net1", "veth-a.b_c@x", "abcdefghijklmno", "1x"] {
            assert!(is_valid_interface_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a/b",
            "a:b",
            "a b",
            "a\"b",
            "$(x)x\n",
            "+",
            "eth+",
            "eth*",
        ] {
            assert!(!is_valid_interface_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn over_long_values_and_lists_are_refused() {
        let n = EXCLUDE_INBOUND_PORTS;
        let long = "1,".repeat(MAX_VALUE_LEN);
        assert!(ports(&one(n, &long), n, false)
            .unwrap_err()
            .reason
            .contains("longer"));
        let many = (1..=(MAX_LIST_LEN as u32 + 1))
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(ports(&one(n, &many), n, false)
            .unwrap_err()
            .reason
            .contains("entries"));
    }

    #[test]
    fn dns_capture_from_yaml_or_json() {
        let yaml = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n";
        assert!(dns_capture(&one(PROXY_CONFIG, yaml)).unwrap());
        let json = r#"{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"false"}}"#;
        assert!(!dns_capture(&one(PROXY_CONFIG, json)).unwrap());
        let other = "holdApplicationUntilProxyStarts: true\n";
        assert!(!dns_capture(&one(PROXY_CONFIG, other)).unwrap());
        assert!(dns_capture(&one(PROXY_CONFIG, "proxyMetadata: [1")).is_err());
        let not_bool = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"yes please\"\n";
        assert!(dns_capture(&one(PROXY_CONFIG, not_bool)).is_err());
        assert!(!dns_capture(&Annotations::new()).unwrap());
    }
}

#[cfg(test)]
mod value_tests {
    use super::*;

    #[test]
    fn yaml_anchors_and_aliases_are_found_where_a_node_starts() {
        for text in [
            "a: *x",
            "- &x [1]",
            "[1, *a]",
            "{k: *a}",
            "a:\n  - *x\n",
            "? *k\n: v",
        ] {
            assert!(yaml_anchor_or_alias(text).is_some(), "{text:?}");
        }
        for text in [
            "cniMode: true",
            "ports: \"*\"",
            "excludePortsForUIDs:\n- \"*:*:0\"",
            "- tcp:*:0",
            "a: b # *x",
            "# &x\na: 1",
            "key: 'it''s *'",
            "a: foo *bar &baz",
            "n: -1",
            "url: http://x/*",
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n",
        ] {
            assert_eq!(yaml_anchor_or_alias(text), None, "{text:?}");
        }
        let with_alias = from_pairs(&[(
            PROXY_CONFIG,
            "x: &a [1, 2]\nproxyMetadata:\n  INVALID_DROP: *a\n",
        )]);
        let err = proxy_metadata(&with_alias).unwrap_err();
        assert!(err.to_string().contains("anchor or alias"), "{err}");
    }
    use crate::model::OwnerGroups;

    #[test]
    fn id_lists_are_numeric_and_bounded() {
        assert_eq!(id_list("u", "1337, 0,1337").unwrap(), vec![1337, 0]);
        for bad in ["", "root", "-1", "4294967295", "1,,2", "+5"] {
            let err = id_list("ISTIO_X", bad).unwrap_err();
            assert_eq!(err.annotation, "ISTIO_X", "{bad}");
        }
    }

    #[test]
    fn owner_groups_follow_istios_filter() {
        let inc = |v| ("ISTIO_OUTBOUND_OWNER_GROUPS", v);
        let exc = |v| ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", v);
        assert_eq!(owner_groups(inc("*"), exc("")).unwrap(), OwnerGroups::All);
        assert_eq!(
            owner_groups(inc("*"), exc("20,30")).unwrap(),
            OwnerGroups::AllExcept(vec![20, 30])
        );
        assert_eq!(
            owner_groups(inc("10"), exc("20")).unwrap(),
            OwnerGroups::Only(vec![10])
        );
        let err = owner_groups(inc("*"), exc("wheel")).unwrap_err();
        assert_eq!(err.annotation, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE");
        let many = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(owner_groups(inc(&many), exc("")).is_err());
    }

    #[test]
    fn loopback_cidr_is_istios() {
        assert_eq!(
            ipv4_loopback("L", "127.0.0.1/8").unwrap(),
            "127.0.0.0/8".parse::<IpNet>().unwrap()
        );
        for bad in ["10.0.0.1/32", "127.0.0.1/7", "::1/128", "127.0.0.1", "x"] {
            let err = ipv4_loopback("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", bad).unwrap_err();
            let text = err.of_kind(InputKind::ProxyEnv).to_string();
            assert!(
                text.starts_with("invalid proxy environment variable ISTIO_OUTBOUND_IPV4"),
                "{text}"
            );
        }
    }
}

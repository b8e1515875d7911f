//! Shared pieces of meshcap's fuzz targets: structured inputs that build well-formed (or
//! nearly well-formed) annotations, and the injection invariants every rendering must hold.
//!
//! The invariants need no root: they read the rendered text. `scripts/fuzz.sh --validate`
//! additionally feeds a corpus sample to `iptables-restore --test` and `nft -c -f` in a scratch
//! network namespace (see the `render_corpus` binary).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use meshcap_model::annotations::{self as ann, Annotations, MAX_LIST_LEN};
use meshcap_model::render::{iptables, nftables};
use meshcap_model::{RedirectModel, Ruleset};

/// Annotation names the annotation fuzzers pick from, so most keys hit a real parser.
pub const KNOWN_NAMES: &[&str] = &[
    ann::INTERCEPTION_MODE,
    ann::INCLUDE_OUTBOUND_IP_RANGES,
    ann::EXCLUDE_OUTBOUND_IP_RANGES,
    ann::INCLUDE_INBOUND_PORTS,
    ann::EXCLUDE_INBOUND_PORTS,
    ann::INCLUDE_OUTBOUND_PORTS,
    ann::EXCLUDE_OUTBOUND_PORTS,
    ann::EXCLUDE_INTERFACES,
    ann::REROUTE_VIRTUAL_INTERFACES,
    ann::KUBEVIRT_INTERFACES,
    ann::PROXY_CONFIG,
    ann::SIDECAR_STATUS,
    ann::SIDECAR_INJECT,
];

/// An annotation key: usually a real one, sometimes anything.
#[derive(Arbitrary, Debug)]
pub enum Key {
    Known(u8),
    Other(String),
}

impl Key {
    pub fn name(&self) -> String {
        match self {
            Key::Known(i) => KNOWN_NAMES[*i as usize % KNOWN_NAMES.len()].to_owned(),
            Key::Other(s) => s.clone(),
        }
    }
}

/// One piece of a list value; mostly plausible items, so the parsers get past the first
/// comma, with hostile text mixed in.
#[derive(Arbitrary, Debug)]
pub enum Piece {
    Port(u32),
    V4([u8; 4], u8),
    V6([u8; 16], u8),
    Star,
    Iface(Vec<u8>),
    Text(String),
}

impl Piece {
    fn text(&self) -> String {
        match self {
            Piece::Port(p) => p.to_string(),
            Piece::V4(a, len) => format!("{}/{}", Ipv4Addr::from(*a), len),
            Piece::V6(a, len) => format!("{}/{}", Ipv6Addr::from(*a), len),
            Piece::Star => "*".to_owned(),
            Piece::Iface(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Piece::Text(s) => s.clone(),
        }
    }
}

/// An annotation value: raw text, or pieces joined by a separator.
#[derive(Arbitrary, Debug)]
pub enum Value {
    Raw(String),
    List { pieces: Vec<Piece>, sep: u8 },
}

impl Value {
    pub fn text(&self) -> String {
        match self {
            Value::Raw(s) => s.clone(),
            Value::List { pieces, sep } => {
                let sep = [",", ", ", " ,", ",,", ";", "\n,"][*sep as usize % 6];
                pieces.iter().map(Piece::text).collect::<Vec<_>>().join(sep)
            }
        }
    }
}

/// Arbitrary annotations biased to the real names.
#[derive(Arbitrary, Debug)]
pub struct AnnotationsInput(pub Vec<(Key, Value)>);

impl AnnotationsInput {
    pub fn annotations(&self) -> Annotations {
        self.0.iter().map(|(k, v)| (k.name(), v.text())).collect()
    }
}

// ---- well-formed models ----

/// A typed network with its prefix length in range. Written with host bits as they come
/// (Istio accepts them); parsed, they are cleared.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Net {
    V4([u8; 4], u8),
    V6([u8; 16], u8),
}

impl Net {
    /// The annotation text: the address as given, and the length.
    pub fn text(self) -> String {
        match self {
            Net::V4(a, len) => format!("{}/{}", Ipv4Addr::from(a), len % 33),
            Net::V6(a, len) => format!("{}/{}", Ipv6Addr::from(a), len % 129),
        }
    }

    /// The network the text stands for (host bits cleared).
    pub fn net(self) -> IpNet {
        match self {
            Net::V4(a, len) => IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(a), len % 33)
                    .expect("prefix <= 32")
                    .trunc(),
            ),
            Net::V6(a, len) => IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(a), len % 129)
                    .expect("prefix <= 128")
                    .trunc(),
            ),
        }
    }
}

/// A port, 0-65535 (Istio accepts 0; iptables matches it).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Port(pub u16);

impl Port {
    pub fn get(self) -> u16 {
        self.0
    }
}

/// An interface name, mapped into what Istio's annotations accept
/// ([`ann::is_istio_interface_name`]), or ([`Iface::hostile`]) into what the model accepts
/// ([`ann::is_valid_interface_name`]: the kernel's names, so including `$`, `;`, backticks and
/// other shell and nft metacharacters, and `*`, `+` anywhere but at the end).
#[derive(Arbitrary, Debug, Clone)]
pub struct Iface(pub Vec<u8>);

impl Iface {
    pub fn name(&self) -> String {
        const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCXYZ";
        const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.ABCXYZ";
        let mut bytes = self.0.iter().take(15);
        let first = bytes
            .next()
            .map_or(b'x', |b| FIRST[*b as usize % FIRST.len()]);
        let name: String = std::iter::once(first)
            .chain(bytes.map(|b| REST[*b as usize % REST.len()]))
            .map(char::from)
            .collect();
        debug_assert!(ann::is_istio_interface_name(&name), "{name:?}");
        name
    }

    pub fn hostile(&self) -> String {
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyz0123456789-_.@+*$;`&|<>(){}[]#!?%=,~^ABCXYZ";
        let mut name: String = self
            .0
            .iter()
            .take(15)
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        // A trailing `+` or `*` would be a wildcard in one backend and a literal in another, so
        // the validator refuses it (`+`/`*` elsewhere in the name are fine).
        if name.ends_with(['+', '*']) {
            name.pop();
            name.push('w');
        }
        if name.is_empty() || name == "." || name == ".." {
            name.push('x');
            name = name.replace('.', "d");
        }
        debug_assert!(ann::is_valid_interface_name(&name), "{name:?}");
        name
    }
}

#[derive(Arbitrary, Debug)]
pub enum Ranges {
    All,
    Only(Vec<Net>),
}

#[derive(Arbitrary, Debug)]
pub enum Ports {
    All,
    Only(Vec<Port>),
}

/// A model described by typed, valid values. Rendered into annotation text, it must always be
/// accepted: the parsers may refuse garbage, never a well-formed value.
#[derive(Arbitrary, Debug)]
pub struct ModelInput {
    pub tproxy: Option<bool>,
    pub include_ranges: Option<Ranges>,
    pub exclude_ranges: Option<Vec<Net>>,
    pub include_inbound: Option<Ports>,
    pub exclude_inbound: Option<Vec<Port>>,
    pub include_outbound: Option<Vec<Port>>,
    pub exclude_outbound: Option<Vec<Port>>,
    pub exclude_ifaces: Option<Vec<Iface>>,
    pub reroute: Option<Vec<Iface>>,
    pub kubevirt: Option<Vec<Iface>>,
    pub dns: Option<bool>,
    pub json_proxy_config: bool,
    pub spaced: bool,
    /// After parsing, put the interface names' [`Iface::hostile`] forms into the model, which
    /// the renderers must handle although no annotation can carry them.
    pub hostile_names: bool,
    /// `securityContext.runAsUser`/`runAsGroup` of the sidecar, as a pod may state them.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

fn join<T>(items: &[T], spaced: bool, f: impl Fn(&T) -> String) -> String {
    let sep = if spaced { ", " } else { "," };
    items
        .iter()
        .take(MAX_LIST_LEN)
        .map(f)
        .collect::<Vec<_>>()
        .join(sep)
}

fn dedup<T: Ord + Clone>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

impl ModelInput {
    /// The annotations that describe this model.
    pub fn annotations(&self) -> Annotations {
        let s = self.spaced;
        let mut a = Annotations::new();
        let mut put = |k: &str, v: String| {
            a.insert(k.to_owned(), v);
        };
        if let Some(t) = self.tproxy {
            put(
                ann::INTERCEPTION_MODE,
                if t { "TPROXY" } else { "REDIRECT" }.into(),
            );
        }
        match &self.include_ranges {
            Some(Ranges::All) => put(ann::INCLUDE_OUTBOUND_IP_RANGES, "*".into()),
            Some(Ranges::Only(n)) => put(
                ann::INCLUDE_OUTBOUND_IP_RANGES,
                // Istio refuses whitespace around a CIDR.
                join(n, false, |n| n.text()),
            ),
            None => {}
        }
        if let Some(n) = &self.exclude_ranges {
            put(
                ann::EXCLUDE_OUTBOUND_IP_RANGES,
                join(n, false, |n| n.text()),
            );
        }
        match &self.include_inbound {
            Some(Ports::All) => put(ann::INCLUDE_INBOUND_PORTS, "*".into()),
            Some(Ports::Only(p)) => put(
                ann::INCLUDE_INBOUND_PORTS,
                join(p, s, |p| p.get().to_string()),
            ),
            None => {}
        }
        for (name, ports) in [
            (ann::EXCLUDE_INBOUND_PORTS, &self.exclude_inbound),
            (ann::INCLUDE_OUTBOUND_PORTS, &self.include_outbound),
            (ann::EXCLUDE_OUTBOUND_PORTS, &self.exclude_outbound),
        ] {
            if let Some(p) = ports {
                put(name, join(p, s, |p| p.get().to_string()));
            }
        }
        for (name, ifaces) in [
            (ann::EXCLUDE_INTERFACES, &self.exclude_ifaces),
            (ann::REROUTE_VIRTUAL_INTERFACES, &self.reroute),
            (ann::KUBEVIRT_INTERFACES, &self.kubevirt),
        ] {
            if let Some(i) = ifaces {
                put(name, join(i, s, Iface::name));
            }
        }
        if let Some(dns) = self.dns {
            let v = if self.json_proxy_config {
                format!(r#"{{"proxyMetadata":{{"ISTIO_META_DNS_CAPTURE":"{dns}"}}}}"#)
            } else {
                format!("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"{dns}\"\n")
            };
            put(ann::PROXY_CONFIG, v);
        }
        a
    }

    /// Parses [`Self::annotations`], which must succeed, checks the parsed model states what
    /// the input said, and applies the pod's uid/gid as the plugin does.
    pub fn model(&self) -> RedirectModel {
        let annotations = self.annotations();
        let mut model = RedirectModel::from_annotations(&annotations)
            .unwrap_or_else(|e| panic!("well-formed annotations refused: {e}\n{annotations:#?}"));
        let cap = |v: &[Port]| dedup(v.iter().take(MAX_LIST_LEN).map(|p| p.get()));
        if let Some(p) = &self.include_outbound {
            assert_eq!(model.include_outbound_ports, cap(p));
        }
        if let Some(p) = &self.exclude_outbound {
            assert_eq!(model.exclude_outbound_ports, cap(p));
        }
        if let Some(n) = &self.exclude_ranges {
            let want = dedup(n.iter().take(MAX_LIST_LEN).map(|n| n.net()));
            assert_eq!(model.exclude_outbound_ranges, want);
        }
        let names = |v: &[Iface]| dedup(v.iter().take(MAX_LIST_LEN).map(Iface::name));
        if let Some(i) = &self.exclude_ifaces {
            assert_eq!(model.exclude_interfaces, names(i));
        }
        if let Some(i) = self.reroute.as_ref().or(self.kubevirt.as_ref()) {
            assert_eq!(model.reroute_virtual_interfaces, names(i));
        }
        assert_eq!(model.dns_capture, self.dns == Some(true));
        if self.hostile_names {
            let hostile = |v: &[Iface]| dedup(v.iter().take(MAX_LIST_LEN).map(Iface::hostile));
            if let Some(i) = &self.exclude_ifaces {
                model.exclude_interfaces = hostile(i);
            }
            if let Some(i) = self.reroute.as_ref().or(self.kubevirt.as_ref()) {
                model.reroute_virtual_interfaces = hostile(i);
            }
        }
        // PodView::id accepts 0..=4294967294 (u32::MAX is the kernel's "no id").
        if let Some(uid) = self.uid {
            model.proxy_uids = vec![uid.min(u32::MAX - 1)];
        }
        if let Some(gid) = self.gid {
            model.proxy_gids = vec![gid.min(u32::MAX - 1)];
        }
        model
    }
}

// ---- invariants ----

/// Checks what any parsed model must satisfy, then renders it both ways and checks the text.
pub fn check_model(model: &RedirectModel) {
    for port in meshcap_model::model::ALWAYS_EXCLUDED_INBOUND_PORTS {
        assert!(
            model.exclude_inbound_ports.contains(&port),
            "{port} not excluded"
        );
    }
    for name in model
        .exclude_interfaces
        .iter()
        .chain(&model.reroute_virtual_interfaces)
    {
        assert!(ann::is_valid_interface_name(name), "{name:?}");
    }
    // Lists stay bounded: a pod cannot make meshcap install an unbounded number of rules.
    assert!(model.exclude_interfaces.len() <= MAX_LIST_LEN);
    assert!(model.reroute_virtual_interfaces.len() <= MAX_LIST_LEN);
    assert!(model.exclude_outbound_ranges.len() <= MAX_LIST_LEN);
    assert!(model.include_outbound_ports.len() <= MAX_LIST_LEN);
    assert!(model.exclude_outbound_ports.len() <= MAX_LIST_LEN);
    assert!(model.exclude_inbound_ports.len() <= MAX_LIST_LEN + 3);

    // Every list entry costs a few rules, except that each rerouted virtual interface gets one
    // rule per included outbound range (as in istio-iptables): a product of two bounded lists.
    let ranges = match &model.include_outbound_ranges {
        ann::Selector::All => 1,
        ann::Selector::Only(nets) => nets.len(),
    };
    let bound = 16 * MAX_LIST_LEN + 64 + model.reroute_virtual_interfaces.len() * ranges;
    for rs in &model.rulesets() {
        assert!(
            rs.rule_count() <= bound,
            "{} rules > {bound}",
            rs.rule_count()
        );
    }
    check_rendered(model);
}

/// Both renderings of any model a front end accepted: every iptables ruleset reads back as
/// itself and holds only meshcap's statements, and the nftables text is well-formed.
pub fn check_rendered(model: &RedirectModel) {
    let rulesets = model.rulesets();
    for rs in &rulesets {
        check_ruleset(rs);
    }
    check_nft(&nftables::render(&rulesets));
}

/// A Linkerd or Kuma pod as its front end reads it: the annotations those meshes define, with
/// arbitrary values (Kuma's whole transparent-proxy config, a YAML document, among them), and
/// the node's resolv.conf that Kuma's DNS capture may read.
#[derive(Arbitrary, Debug)]
pub struct MeshPodInput {
    pub kuma: bool,
    pub has_ipv6: bool,
    pub kuma_config: String,
    pub resolv_conf: String,
    pub linkerd: Vec<(u8, String)>,
}

/// The Linkerd annotations the front end reads.
pub const LINKERD_NAMES: &[&str] = &[
    meshcap_model::mesh::linkerd::SKIP_INBOUND_PORTS,
    meshcap_model::mesh::linkerd::SKIP_OUTBOUND_PORTS,
    meshcap_model::mesh::linkerd::SKIP_SUBNETS,
    meshcap_model::mesh::linkerd::PROXY_UID,
    meshcap_model::mesh::linkerd::PROXY_GID,
];

/// The pod's model through `mesh::resolve`, the step ADD, CHECK, `render -f` and repair share:
/// an accepted model renders cleanly and stays bounded; a refusal names an input of the pod.
pub fn check_mesh_pod(input: &MeshPodInput) {
    use meshcap_model::mesh::{self, istio, kuma, linkerd, Mesh};
    let mut annotations = Annotations::new();
    let mesh_of_pod = if input.kuma {
        annotations.insert(kuma::SIDECAR_INJECTED.into(), "true".into());
        annotations.insert(kuma::TPROXY_CONFIG.into(), input.kuma_config.clone());
        Mesh::Kuma
    } else {
        annotations.insert(linkerd::PROXY_VERSION.into(), "stable".into());
        for (key, value) in input.linkerd.iter().take(16) {
            let key = LINKERD_NAMES[usize::from(*key) % LINKERD_NAMES.len()];
            annotations.insert(key.into(), value.clone());
        }
        Mesh::Linkerd
    };
    let pod = meshcap_model::pod::PodView {
        annotations,
        ..Default::default()
    };
    let seen = mesh::Seen {
        pod: &pod,
        spec_seen: false,
        namespace: Some("default"),
        has_ipv6: input.has_ipv6,
        api_server_ports: None,
    };
    let node = mesh::NodeSettings {
        istio: &istio::NodeDefaults::default(),
        linkerd: &linkerd::LinkerdNode::default(),
    };
    let read = |_: &str| Ok(input.resolv_conf.clone());
    let resolved = match mesh::resolve(mesh_of_pod, &seen, &node, &read) {
        Ok(resolved) => resolved,
        Err(mesh::FrontEndError::Annotation(e)) => {
            // Named by an annotation the pod has (Kuma's with the field in parentheses), or
            // by the node setting it came from.
            assert!(
                pod.annotations.keys().any(|k| e.annotation.starts_with(k.as_str()))
                    || e.annotation.starts_with("linkerd."),
                "{e:?}"
            );
            assert!(e.value.len() <= 124, "{} bytes", e.value.len());
            return;
        }
        Err(e) => panic!("a Linkerd or Kuma pod refused as an Istio input: {e:?}"),
    };
    let model = &resolved.model;
    for rs in &model.rulesets() {
        assert!(rs.rule_count() <= 64 * MAX_LIST_LEN, "{} rules", rs.rule_count());
    }
    check_rendered(model);
    // What later models (CHECK, repair) compute from the stored settings is the same model.
    let mut warnings = Vec::new();
    let again = resolved
        .front_end
        .model(&pod.annotations, &|_: &str| Ok(String::new()), &mut warnings)
        .expect("the stored settings build the model again");
    assert_eq!(&again, model, "a later model differs from ADD's");
}

/// The iptables rendering of one ruleset: line grammar, and it reads back as itself.
pub fn check_ruleset(rs: &Ruleset) {
    let text = iptables::render(rs);
    check_iptables(&text);
    assert_eq!(
        iptables::Installed::parse_save(&text),
        iptables::Installed::from_ruleset(rs),
        "rendered text does not read back as its ruleset:\n{text}"
    );
}

/// Every line of `iptables-restore` input meshcap writes is one of its own statements: no
/// value can start a new line, a quoted string or a comment. The only quoted string is the
/// rule's purpose (`-m comment --comment "..."`, a constant of the model without quotes or
/// backslashes), right before `-j`.
pub fn check_iptables(text: &str) {
    for full_line in text.lines() {
        let line = &strip_purpose(full_line);
        assert!(
            ["-A ", "-D ", "-X ", ":", "*", "COMMIT", "#"]
                .iter()
                .any(|p| line.starts_with(p)),
            "unexpected line {line:?}"
        );
        assert!(
            line.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "non-printable byte in {line:?}"
        );
        assert!(!line.contains(['"', '\'', '\\']), "quote in {line:?}");
        if line == "COMMIT" || line.starts_with('*') {
            continue;
        }
        let words: Vec<&str> = line.split(' ').collect();
        assert!(
            words.iter().all(|w| !w.is_empty()),
            "empty word in {line:?}"
        );
        // An interface name is one argv word after -i/-o, whatever it looks like: xtables
        // takes the next word as the option's argument even when it is `-j` or `!` (checked
        // with iptables-restore 1.8.9), so skip it when looking at the other options.
        let mut i = 0;
        while i + 1 < words.len() {
            let (opt, arg) = (words[i], words[i + 1]);
            if opt == "-i" || opt == "-o" {
                assert!(ann::is_valid_interface_name(arg), "{line:?}");
                i += 2;
                continue;
            }
            if opt == "-A" || opt == "-D" || opt == "-X" || opt == "-j" {
                assert!(
                    arg.bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit()),
                    "chain or target {arg:?} in {line:?}"
                );
            }
            i += 1;
        }
    }
}

/// `line` without its `-m comment --comment "PURPOSE"` (checked to be a valid purpose).
fn strip_purpose(line: &str) -> String {
    const OPEN: &str = " -m comment --comment \"";
    let Some(start) = line.find(OPEN) else {
        return line.to_owned();
    };
    let rest = &line[start + OPEN.len()..];
    let end = rest
        .find("\" -j ")
        .unwrap_or_else(|| panic!("comment not closed before -j in {line:?}"));
    assert!(
        meshcap_model::rules::is_valid_purpose(&rest[..end]),
        "purpose {:?} in {line:?}",
        &rest[..end]
    );
    format!("{}{}", &line[..start], &rest[end + 1..])
}

/// The nft script: quotes balance on every line, and outside quotes only the characters of
/// meshcap's own statements appear (no `;`, `#`, `$`, `@` or braces a value could smuggle in).
pub fn check_nft(text: &str) {
    for line in text.lines() {
        let t = line.trim_start_matches('\t');
        if t.is_empty() || t == "}" {
            continue;
        }
        if t.starts_with("table ") || t.starts_with("delete table ") {
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b" {".contains(&b)),
                "{line:?}"
            );
            continue;
        }
        // The table's comment: the rules format's marker, which no input changes.
        if t.starts_with("comment ") {
            assert_eq!(
                t,
                format!("comment \"{}\"", meshcap_model::rules::format_marker()),
                "{line:?}"
            );
            continue;
        }
        if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.strip_suffix(" {").expect("chain line ends with {");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line:?}"
            );
            continue;
        }
        if t.starts_with("type ") {
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b" -;".contains(&b)),
                "{line:?}"
            );
            continue;
        }
        // A rule: `<rule text> comment "<comment>"`.
        let (rule, comment) = t
            .split_once(" comment \"")
            .unwrap_or_else(|| panic!("rule without comment: {line:?}"));
        let comment = comment
            .strip_suffix('"')
            .unwrap_or_else(|| panic!("unterminated comment: {line:?}"));
        assert!(!comment.contains('"'), "quote inside comment: {line:?}");
        assert!(
            comment.len() <= nftables::COMMENT_MAX_LEN,
            "comment of {} bytes: {line:?}",
            comment.len()
        );
        let mut quoted = false;
        let mut word = String::new();
        let mut prev_words: Vec<String> = Vec::new();
        for c in rule.chars() {
            if c == '"' {
                if quoted {
                    // The only strings are interface names after iifname/oifname.
                    let kw = prev_words.last().map(String::as_str);
                    assert!(
                        matches!(kw, Some("iifname" | "oifname")),
                        "string after {kw:?}: {line:?}"
                    );
                    assert!(ann::is_valid_interface_name(&word), "{word:?} in {line:?}");
                    word.clear();
                }
                quoted = !quoted;
                continue;
            }
            if quoted {
                word.push(c);
                continue;
            }
            assert!(
                c.is_ascii_alphanumeric() || " _.:/!=,-".contains(c),
                "{c:?} outside quotes: {line:?}"
            );
            if c == ' ' {
                if !word.is_empty() {
                    prev_words.push(std::mem::take(&mut word));
                }
            } else {
                word.push(c);
            }
        }
        assert!(!quoted, "unbalanced quote: {line:?}");
    }
}

/// The nftables netlink reply parsers on arbitrary bytes: every message and attribute they
/// hand out lies inside the input, nesting is walked a few levels deep, and the xtables shape
/// parser (what DEL decides from) counts no more rules than there are messages.
pub fn check_nft_reply(data: &[u8]) {
    use meshcap_nft::{sys::NFGENMSG_LEN, wire, xtables};

    fn walk(buf: &[u8], depth: u32) {
        for (_ty, v) in wire::AttrIter::new(buf) {
            assert!(v.len() <= buf.len(), "attribute longer than its container");
            let _ = wire::attr_str(v);
            let _ = wire::attr_be32(v);
            let _ = wire::attr_be64(v);
            let _ = wire::userdata_comment(v);
            if depth < 4 {
                walk(v, depth + 1);
            }
        }
    }

    let Some(messages) = wire::parse_messages(data) else {
        return;
    };
    let mut payloads = Vec::with_capacity(messages.len());
    for m in &messages {
        assert!(
            m.payload.len() <= data.len(),
            "payload longer than the datagram"
        );
        let _ = m.error_code();
        let attrs: Vec<_> = m.attrs().collect();
        walk(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[]), 0);
        assert!(attrs.len() <= m.payload.len() / 4 + 1);
        payloads.push(m.payload.to_vec());
    }
    // Each attribute as an expression list (what a rule's NFTA_RULE_EXPRESSIONS holds, read
    // back by CHECK and the ADD retry) and its text.
    for m in &messages {
        for (_ty, v) in wire::AttrIter::new(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            if let Ok(exprs) = meshcap_nft_types::Expr::parse_list(v) {
                for nfproto in [2, 10] {
                    let text = meshcap_nft_types::text::rule_text(&exprs, nfproto);
                    assert!(!text.contains('\n'), "one rule, one line: {text:?}");
                }
            }
            let _ = meshcap_nft_types::Expr::parse(v);
        }
    }
    // The same messages as a chain dump and as a rule dump, for the two table names DEL asks
    // about most.
    for table in ["nat", "mangle"] {
        let rules = xtables::parse_rules(table, &payloads);
        assert!(rules.len() <= payloads.len(), "more rules than rule messages");
        let shape = xtables::parse_shape(table, &payloads, &payloads);
        let rules: usize = shape.chains.iter().map(|c| c.rules).sum();
        assert!(rules <= payloads.len(), "more rules than rule messages");
        let mut names: Vec<&str> = shape.chains.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert!(
            names.len() + rules >= before,
            "a chain listed twice without a rule explaining it"
        );
    }
}

//! The redirect model: what one pod's capture looks like, validated, for both families.
//!
//! [`RedirectModel::from_annotations`] applies Istio's defaults and the pod's annotations; the
//! other fields (proxy ids and ports, owner groups, invalid drop, the loopback range, the
//! pod's address families, the DNS servers) are set by a front end from wherever its mesh
//! keeps them. [`RedirectModel::ruleset`] (in [`crate::layout`]) lays the model out as rules in
//! the order Istio's `istio-iptables` uses (tools/istio-iptables/pkg/capture/run.go), with one
//! difference of layout: meshcap never appends to a built-in chain beyond one jump into its
//! own entry chain (see [`crate::rules::Chain`]).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::annotations::{self as ann, AnnotationError, Annotations, Selector};
use crate::rules::{Family, Proto, Ruleset};

/// Outbound capture port (Envoy's virtual outbound listener; mesh config `proxyListenPort`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture port (Envoy's virtual inbound listener; `proxyInboundListenPort`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// HBONE tunnel port: never captured inbound, never redirected back by the proxy.
pub const TUNNEL_PORT: u16 = 15008;
/// The istio-agent's DNS proxy.
pub const DNS_CAPTURE_PORT: u16 = 15053;
pub const DNS_PORT: u16 = 53;
/// Status/health/metrics ports that are never captured inbound.
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];
/// `excludeOutboundPorts` when the annotation is absent.
pub const DEFAULT_EXCLUDED_OUTBOUND_PORTS: [u16; 1] = [15020];
pub const PROXY_UID: u32 = 1337;
pub const PROXY_GID: u32 = 1337;
/// Mark of packets TPROXY diverted (and of their connections).
pub const TPROXY_MARK: u32 = 1337;
/// Mark the proxy's own loopback connections to the pod address carry in TPROXY mode, so that
/// they are still captured inbound (Istio's OutboundMark).
pub const PROXY_LOOPBACK_MARK: u32 = 1338;
/// Most rules the virtual-interface x included-range product may produce.
pub const MAX_REROUTE_RULES: usize = 1024;
/// Policy routing table that delivers TPROXY-marked packets locally.
pub const TPROXY_ROUTE_TABLE: u32 = 133;
/// conntrack zones that keep the proxy's DNS flows apart from the app's (Istio's fix for UDP
/// conntrack races when both sides of the DNS proxy share a 5-tuple).
pub const DNS_ZONE_UPSTREAM: u16 = 1;
pub const DNS_ZONE_CLIENT: u16 = 2;
/// Istio's `HostIPv4LoopbackCidr` default (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
pub const DEFAULT_IPV4_LOOPBACK: &str = "127.0.0.1/32";
/// Most proxy uids or gids a model may list (each repeats a handful of rules).
pub const MAX_PROXY_IDS: usize = 16;
/// Most owner groups an include list may hold: all of them go into one rule
/// (Istio's `maxOwnerGroupsInclude`, tools/common/config/validation.go).
pub const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

/// How inbound connections reach the sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InterceptionMode {
    /// NAT to 15006; the sidecar reads `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// TPROXY to 15006 with mark 1337 and policy routing; the original destination stays the
    /// socket's local address.
    Tproxy,
}

/// The ports the proxy listens on for captured traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Where outbound TCP is redirected (Istio: mesh config `proxyListenPort`, 15001).
    pub outbound: u16,
    /// Where inbound TCP is redirected or TPROXYed (`proxyInboundListenPort`, 15006).
    pub inbound: u16,
    /// Where DNS is redirected when DNS capture is on (the istio-agent's 15053).
    pub dns: u16,
    /// A port the proxy listens on directly and that is never captured, inbound in REDIRECT
    /// mode nor as the proxy's own hairpin (Istio's HBONE tunnel port 15008); `None` for a mesh
    /// without one.
    pub tunnel: Option<u16>,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        ProxyPorts {
            outbound: OUTBOUND_CAPTURE_PORT,
            inbound: INBOUND_CAPTURE_PORT,
            dns: DNS_CAPTURE_PORT,
            tunnel: Some(TUNNEL_PORT),
        }
    }
}

/// Whose outbound traffic is captured, by the sending socket's group
/// (`ISTIO_OUTBOUND_OWNER_GROUPS` / `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Every group (Istio's default `*`).
    #[default]
    All,
    /// Only sockets of these gids; everything else bypasses capture.
    Only(Vec<u32>),
    /// Every group except these.
    AllExcept(Vec<u32>),
}

/// The address families of the pod: only these get rules. Istio writes ip6tables rules only
/// for a pod with an IPv6 address; a v4-only pod gets no ip6 rules or tables at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const BOTH: Families = Families { v4: true, v6: true };
    pub const NONE: Families = Families {
        v4: false,
        v6: false,
    };

    /// The families named in `names` (`ipv4`, `ipv6`: [`Family`]'s `Display`, as attachment
    /// records list what ADD installed).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Families {
        let named = |f: Family| names.iter().any(|n| n.as_ref() == f.to_string());
        Families {
            v4: named(Family::V4),
            v6: named(Family::V6),
        }
    }

    pub fn has(self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

impl Default for Families {
    /// Both, which is what meshcap did before it knew the pod's addresses.
    fn default() -> Self {
        Families::BOTH
    }
}

/// The capture of one pod, validated. Built from annotations; renders to rules per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectModel {
    pub interception: InterceptionMode,
    /// `*` or the CIDRs captured outbound (either family).
    pub include_outbound_ranges: Selector<IpNet>,
    /// An included outbound range was written with a loopback address (Istio's
    /// `HasLoopBackIP`, either family): the "over lo is not captured" rules are left out.
    pub include_outbound_loopback: bool,
    pub exclude_outbound_ranges: Vec<IpNet>,
    /// `*` (all but the excluded) or the ports captured inbound.
    pub include_inbound_ports: Selector<u16>,
    /// Excluded inbound ports, always including 15090, 15021 and 15020.
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
    pub reroute_virtual_interfaces: Vec<String>,
    pub dns_capture: bool,
    /// With DNS capture: `None` captures DNS to any address (istio-cni, `captureAllDNS`);
    /// `Some` only DNS to these resolvers (istio-init reading the pod's resolv.conf). A family
    /// without a listed resolver gets no DNS redirect; an empty list turns DNS capture off, as
    /// Istio does.
    pub dns_servers: Option<Vec<IpAddr>>,
    /// Families whose DNS is captured to any address although `dns_servers` lists resolvers
    /// (Kuma: a resolv.conf `nameserver` that is no address counts as an IPv6 resolver, and
    /// its rules, without an address, match all of that family's DNS).
    pub dns_any_resolver: Families,
    /// The proxy's uids and gids (istio-iptables `-u`/`-g` lists): their traffic bypasses
    /// capture. The per-id rules repeat for each, in order. Never empty.
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub outbound_owner_groups: OwnerGroups,
    /// Drop packets conntrack finds invalid (out-of-window segments) instead of letting them
    /// reach the app and reset the connection (`INVALID_DROP`).
    pub drop_invalid: bool,
    /// What counts as "explicitly local" for IPv4 (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`); IPv6
    /// always uses `::1/128`.
    pub ipv4_loopback: IpNet,
    pub ports: ProxyPorts,
    pub families: Families,
    /// What the chain names start with (`MESHCAP`, or a mesh-named prefix such as
    /// `MESHCAP_LINKERD`), so a reader of `iptables-save` or `nft list ruleset` sees which
    /// mesh a rule serves. Always starts with `MESHCAP`: cleanup finds chains by that prefix.
    pub chain_prefix: String,
    /// Outbound traffic from the inbound passthrough source (127.0.0.6 / ::6) over lo is the
    /// proxy handing inbound connections to the app, and is not captured.
    pub inbound_passthrough: bool,
    /// The proxy dialling the pod's own address over lo is captured inbound. Without it, all
    /// traffic over lo bypasses capture, whoever sends it.
    pub proxy_hairpin: bool,
    /// Excluded outbound ports also return UDP (Istio does; meshes that never capture UDP
    /// outbound return TCP only).
    pub exclude_outbound_udp: bool,
    /// Excluded inbound and outbound TCP port ranges (inclusive), one rule each, in addition
    /// to the single ports above.
    pub exclude_inbound_port_ranges: Vec<PortRange>,
    pub exclude_outbound_port_ranges: Vec<PortRange>,
    /// Inbound traffic from these sources is not captured.
    pub exclude_inbound_sources: Vec<IpNet>,
    /// Destinations never captured outbound, DNS included: checked before anything else.
    pub bypass_outbound_ranges: Vec<IpNet>,
    /// Sockets of these uids sending to these ports are never captured: checked first.
    pub owner_port_exclusions: Vec<OwnerPortExclusion>,
    /// Which DNS is captured when DNS capture is on.
    pub dns_scope: DnsScope,
    /// With DNS capture, the proxy's upstream queries and the apps' queries get separate
    /// conntrack zones.
    pub dns_conntrack_zones: bool,
    /// With listed resolvers (`dns_servers`), a family without one gets no conntrack zone at
    /// all, as Kuma turns DNS off for it; otherwise (Istio) the proxy's own DNS keeps its zones.
    pub dns_zones_need_family_resolver: bool,
    /// A loopback resolver's UDP to the family's localhost address is in the upstream zone
    /// too (Kuma: Docker's resolver at 127.0.0.11 answers through a DNAT that changes the
    /// query's port).
    pub dns_loopback_resolver_zone: bool,
    /// Networks behind an interface in the pod (a Docker bridge, a VM's network: Kuma's
    /// `redirect.vnet.networks`) whose traffic leaving them is the pod's outbound: arriving on
    /// the interface, DNS goes to the proxy's DNS port and TCP not addressed within the network
    /// to its outbound port. Per family, one network per interface (the last named).
    pub virtual_networks: Vec<VirtualNetwork>,
}

/// A network behind `interface` ([`RedirectModel::virtual_networks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualNetwork {
    /// An interface name, or iptables' wildcard `PREFIX+` for every interface whose name
    /// starts with `PREFIX` (nftables: `iifname "PREFIX*"`).
    pub interface: String,
    pub net: IpNet,
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Traffic of `uid` (one uid, or an inclusive range) to `ports` over `proto` is not captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPortExclusion {
    pub proto: Proto,
    pub ports: Vec<PortRange>,
    pub uids: (u32, u32),
}

/// Which DNS queries DNS capture redirects to the proxy's DNS port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DnsScope {
    /// UDP and TCP, after the proxy's own traffic has left the outbound chain (Istio).
    #[default]
    UdpAndTcp,
    /// UDP only, before any other outbound rule but the bypasses; the apps' TCP DNS is not
    /// captured at all.
    UdpOnly,
}

impl Default for RedirectModel {
    /// Istio's defaults: capture everything, exclude the status ports.
    fn default() -> Self {
        RedirectModel {
            interception: InterceptionMode::Redirect,
            include_outbound_ranges: Selector::All,
            include_outbound_loopback: false,
            exclude_outbound_ranges: Vec::new(),
            include_inbound_ports: Selector::All,
            exclude_inbound_ports: ALWAYS_EXCLUDED_INBOUND_PORTS.to_vec(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: DEFAULT_EXCLUDED_OUTBOUND_PORTS.to_vec(),
            exclude_interfaces: Vec::new(),
            reroute_virtual_interfaces: Vec::new(),
            dns_capture: false,
            dns_servers: None,
            dns_any_resolver: Families::NONE,
            proxy_uids: vec![PROXY_UID],
            proxy_gids: vec![PROXY_GID],
            outbound_owner_groups: OwnerGroups::All,
            drop_invalid: false,
            ipv4_loopback: DEFAULT_IPV4_LOOPBACK.parse().expect("valid literal"),
            ports: ProxyPorts::default(),
            families: Families::BOTH,
            chain_prefix: DEFAULT_CHAIN_PREFIX.to_owned(),
            inbound_passthrough: true,
            proxy_hairpin: true,
            exclude_outbound_udp: true,
            exclude_inbound_port_ranges: Vec::new(),
            exclude_outbound_port_ranges: Vec::new(),
            exclude_inbound_sources: Vec::new(),
            bypass_outbound_ranges: Vec::new(),
            owner_port_exclusions: Vec::new(),
            dns_scope: DnsScope::UdpAndTcp,
            dns_conntrack_zones: true,
            dns_zones_need_family_resolver: false,
            dns_loopback_resolver_zone: false,
            virtual_networks: Vec::new(),
        }
    }
}

fn only<T>(sel: Selector<T>, name: &str) -> Result<Vec<T>, AnnotationError> {
    match sel {
        Selector::Only(v) => Ok(v),
        // The parsers refuse `*` where it is not allowed; keep the invariant explicit.
        Selector::All => Err(AnnotationError::new(name, "*", "`*` is not allowed here")),
    }
}

impl RedirectModel {
    /// Validate every model annotation and apply it over Istio's defaults. The first invalid
    /// annotation (in a fixed order) is the error; nothing partial is ever returned.
    pub fn from_annotations(annotations: &Annotations) -> Result<Self, AnnotationError> {
        let mut model = RedirectModel::from_rule_annotations(annotations)?;
        model.dns_capture = ann::dns_capture(annotations)?;
        Ok(model)
    }

    /// [`RedirectModel::from_annotations`] without DNS capture, which the Istio front end
    /// resolves from the proxy's environment, `proxy.istio.io/config` and the node defaults,
    /// parsing that annotation's YAML once.
    pub(crate) fn from_rule_annotations(
        annotations: &Annotations,
    ) -> Result<Self, AnnotationError> {
        let mut model = RedirectModel::default();
        if let Some(mode) = ann::interception_mode(annotations)? {
            model.interception = mode;
        }
        if let Some(written) =
            ann::cidrs_as_written(annotations, ann::INCLUDE_OUTBOUND_IP_RANGES, true)?
        {
            // Istio tests the address as written, before iptables clears host bits
            // (`127.0.0.1/7` is loopback to it).
            model.include_outbound_loopback = matches!(&written,
                Selector::Only(nets) if nets.iter().any(|n| ann::go_loopback(n.addr())));
            model.include_outbound_ranges = ann::cleared(written);
        }
        if let Some(sel) = ann::cidrs(annotations, ann::EXCLUDE_OUTBOUND_IP_RANGES, false)? {
            model.exclude_outbound_ranges = only(sel, ann::EXCLUDE_OUTBOUND_IP_RANGES)?;
        }
        if let Some(sel) = ann::ports(annotations, ann::INCLUDE_INBOUND_PORTS, true)? {
            model.include_inbound_ports = sel;
        }
        let rendered = model.include_inbound_ports == Selector::All;
        for port in ann::exclude_inbound_ports(annotations, rendered)? {
            if !model.exclude_inbound_ports.contains(&port) {
                model.exclude_inbound_ports.push(port);
            }
        }
        if let Some(sel) = ann::ports(annotations, ann::INCLUDE_OUTBOUND_PORTS, false)? {
            model.include_outbound_ports = only(sel, ann::INCLUDE_OUTBOUND_PORTS)?;
        }
        if let Some(sel) = ann::ports(annotations, ann::EXCLUDE_OUTBOUND_PORTS, false)? {
            model.exclude_outbound_ports = only(sel, ann::EXCLUDE_OUTBOUND_PORTS)?;
        }
        if let Some(names) = ann::interfaces(annotations, ann::EXCLUDE_INTERFACES)? {
            model.exclude_interfaces = names;
        }
        // istio-cni reads (and checks) the old name only when the new one is absent.
        let rerouted = match ann::interfaces(annotations, ann::REROUTE_VIRTUAL_INTERFACES)? {
            Some(names) => Some(names),
            None => ann::interfaces(annotations, ann::KUBEVIRT_INTERFACES)?,
        };
        if let Some(names) = rerouted {
            model.reroute_virtual_interfaces = names;
        }
        // Each virtual interface gets one rule per included range: bound the product so a few
        // KiB of annotations cannot make every pod start load tens of thousands of rules.
        if let Selector::Only(nets) = &model.include_outbound_ranges {
            let rules = model.reroute_virtual_interfaces.len() * nets.len();
            if rules > MAX_REROUTE_RULES {
                let name = if annotations.contains_key(ann::REROUTE_VIRTUAL_INTERFACES) {
                    ann::REROUTE_VIRTUAL_INTERFACES
                } else {
                    ann::KUBEVIRT_INTERFACES
                };
                return Err(AnnotationError::new(
                    name,
                    &model.reroute_virtual_interfaces.join(","),
                    format!(
                        "{} interfaces x {} includeOutboundIPRanges entries need {rules} rules; \
                         at most {MAX_REROUTE_RULES}",
                        model.reroute_virtual_interfaces.len(),
                        nets.len()
                    ),
                ));
            }
        }
        Ok(model)
    }

    /// The rules for the pod's families, IPv4 first.
    pub fn rulesets(&self) -> Vec<Ruleset> {
        Family::ALL
            .iter()
            .filter(|f| self.families.has(**f))
            .map(|f| self.ruleset(*f))
            .collect()
    }

    /// The proxy's uid and gid when it has exactly one of each: the eBPF fast path exempts a
    /// single pair, so a pod with id lists keeps to the rules.
    pub fn single_proxy_ids(&self) -> Option<(u32, Option<u32>)> {
        match (self.proxy_uids.as_slice(), self.proxy_gids.as_slice()) {
            ([uid], [gid]) => Some((*uid, Some(*gid))),
            ([uid], []) => Some((*uid, None)),
            _ => None,
        }
    }

    pub(crate) fn captures_inbound(&self) -> bool {
        !self.include_inbound_ports.is_empty()
    }

    /// Istio skips the "app talking to itself over lo" bypass when loopback is explicitly
    /// included outbound (in either family).
    pub(crate) fn includes_loopback(&self) -> bool {
        self.include_outbound_loopback && self.include_outbound_ranges != Selector::All
    }

    /// The "explicitly local" destination range of `family`.
    pub(crate) fn loopback(&self, family: Family) -> IpNet {
        match family {
            Family::V4 => self.ipv4_loopback,
            Family::V6 => Family::V6.loopback(),
        }
    }

    /// With DNS capture, the resolvers of `family` whose queries are captured: `None` for all.
    pub(crate) fn dns_servers_of(&self, family: Family) -> Option<Vec<IpNet>> {
        if self.dns_any_resolver.has(family) {
            return None;
        }
        self.dns_servers.as_ref().map(|servers| {
            servers
                .iter()
                .map(|a| IpNet::from(*a))
                .filter(|n| family.contains(n))
                .collect()
        })
    }

    /// Whether DNS is captured at all: Istio turns it off when only listed resolvers are to be
    /// captured and there are none.
    pub(crate) fn captures_dns(&self) -> bool {
        self.dns_capture
            && (self.dns_servers.as_ref().is_none_or(|s| !s.is_empty())
                || self.dns_any_resolver != Families::NONE)
    }

    /// Check the fields a front end sets directly (everything `from_annotations` does not
    /// already validate). The error names the model field; front ends that read a value from
    /// an annotation or environment variable use the parsers in [`crate::annotations`], whose
    /// errors name that source.
    pub fn validate(&self) -> Result<(), AnnotationError> {
        let field = |name: &str, value: String, reason: &str| {
            Err(AnnotationError::new(name, &value, reason).of_kind(ann::InputKind::ModelField))
        };
        for (name, ids) in [
            ("proxy_uids", &self.proxy_uids),
            ("proxy_gids", &self.proxy_gids),
        ] {
            let shown = format!("{ids:?}");
            if ids.len() > MAX_PROXY_IDS {
                return field(name, shown, "must list at most 16 ids");
            }
            if ids.contains(&u32::MAX) {
                return field(name, shown, "4294967295 is the kernel's \"no id\"");
            }
        }
        if let OwnerGroups::Only(groups) = &self.outbound_owner_groups {
            if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
                return field(
                    "outbound_owner_groups",
                    format!("{groups:?}"),
                    "at most 64 groups may be included",
                );
            }
        }
        if let Err(reason) = ann::check_ipv4_loopback(&self.ipv4_loopback) {
            return field("ipv4_loopback", self.ipv4_loopback.to_string(), &reason);
        }
        let p = &self.ports;
        if [p.outbound, p.inbound, p.dns, p.tunnel.unwrap_or(1)].contains(&0) {
            return field("ports", format!("{p:?}"), "port 0 cannot be listened on");
        }
        if !self.families.v4 && !self.families.v6 {
            return field(
                "families",
                format!("{:?}", self.families),
                "no address family",
            );
        }
        if self.proxy_uids.is_empty() && self.proxy_gids.is_empty() {
            return field(
                "proxy_uids",
                "[]".to_owned(),
                "the proxy needs a uid or a gid, or its own traffic loops back to it",
            );
        }
        let prefix = &self.chain_prefix;
        if !prefix.starts_with(DEFAULT_CHAIN_PREFIX)
            || prefix.len() > MAX_CHAIN_PREFIX_LEN
            || !prefix.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        {
            return field(
                "chain_prefix",
                prefix.clone(),
                "must start with MESHCAP, be upper case or _ and at most 16 bytes",
            );
        }
        for r in self
            .exclude_inbound_port_ranges
            .iter()
            .chain(&self.exclude_outbound_port_ranges)
            .chain(self.owner_port_exclusions.iter().flat_map(|e| &e.ports))
        {
            if r.first > r.last {
                return field("port ranges", format!("{r:?}"), "first port after last");
            }
        }
        for e in &self.owner_port_exclusions {
            if e.uids.0 > e.uids.1 {
                return field(
                    "owner_port_exclusions",
                    format!("{:?}", e.uids),
                    "uid range must be ascending",
                );
            }
        }
        // Every front end bounds each list it reads at MAX_LIST_LEN entries; a list may join
        // two of them (a node's and a pod's) and the always-excluded ports. Past that a
        // front end let an unbounded list through: refused before any rule is rendered.
        const MAX_MODEL_LIST: usize = 2 * ann::MAX_LIST_LEN + 8;
        for (name, len) in [
            (
                "include_outbound_ranges",
                self.include_outbound_ranges.listed(),
            ),
            (
                "exclude_outbound_ranges",
                self.exclude_outbound_ranges.len(),
            ),
            ("include_inbound_ports", self.include_inbound_ports.listed()),
            ("exclude_inbound_ports", self.exclude_inbound_ports.len()),
            ("include_outbound_ports", self.include_outbound_ports.len()),
            ("exclude_outbound_ports", self.exclude_outbound_ports.len()),
            ("exclude_interfaces", self.exclude_interfaces.len()),
            (
                "reroute_virtual_interfaces",
                self.reroute_virtual_interfaces.len(),
            ),
            (
                "exclude_inbound_port_ranges",
                self.exclude_inbound_port_ranges.len(),
            ),
            (
                "exclude_outbound_port_ranges",
                self.exclude_outbound_port_ranges.len(),
            ),
            (
                "exclude_inbound_sources",
                self.exclude_inbound_sources.len(),
            ),
            ("bypass_outbound_ranges", self.bypass_outbound_ranges.len()),
            (
                "owner_port_exclusions",
                self.owner_port_exclusions
                    .iter()
                    .map(|e| e.ports.len())
                    .sum(),
            ),
        ] {
            if len > MAX_MODEL_LIST {
                return field(name, format!("{len} entries"), "too many entries");
            }
        }
        if let Some(servers) = &self.dns_servers {
            if servers.len() > ann::MAX_LIST_LEN {
                return field("dns_servers", format!("{servers:?}"), "too many resolvers");
            }
        }
        if self.virtual_networks.len() > ann::MAX_LIST_LEN {
            return field(
                "virtual_networks",
                format!("{} networks", self.virtual_networks.len()),
                "too many virtual networks",
            );
        }
        for name in self
            .exclude_interfaces
            .iter()
            .chain(&self.reroute_virtual_interfaces)
        {
            if !ann::is_valid_interface_name(name) {
                return field("interfaces", name.clone(), "not an interface name");
            }
        }
        for vn in &self.virtual_networks {
            if !ann::is_valid_interface_pattern(&vn.interface) {
                return field(
                    "virtual_networks",
                    vn.interface.clone(),
                    "not an interface name or a NAME+ wildcard",
                );
            }
        }
        Ok(())
    }
}

/// The chain prefix of Istio pods (and of every pod before meshes were told apart).
pub const DEFAULT_CHAIN_PREFIX: &str = "MESHCAP";
/// Longest chain prefix: iptables chain names have at most 28 bytes, and the longest suffix
/// is `_IN_REDIRECT`.
pub const MAX_CHAIN_PREFIX_LEN: usize = 16;

// meshcap's chain names (Istio's equivalents in comments). A model with another
// `chain_prefix` gets the same names with `MESHCAP` replaced by it.
/// Entry chain jumped to from the built-in PREROUTING.
pub const PREROUTING: &str = "MESHCAP_PREROUTING";
/// Entry chain jumped to from the built-in OUTPUT.
pub const OUTPUT: &str = "MESHCAP_OUTPUT";
/// ISTIO_INBOUND.
pub const INBOUND: &str = "MESHCAP_INBOUND";
/// ISTIO_OUTPUT.
pub const OUTBOUND: &str = "MESHCAP_OUTBOUND";
/// ISTIO_REDIRECT: to the outbound capture port.
pub const REDIRECT: &str = "MESHCAP_REDIRECT";
/// ISTIO_IN_REDIRECT: to the inbound capture port.
pub const IN_REDIRECT: &str = "MESHCAP_IN_REDIRECT";
/// ISTIO_OUTPUT_DNS.
pub const DNS: &str = "MESHCAP_DNS";
/// ISTIO_DIVERT.
pub const DIVERT: &str = "MESHCAP_DIVERT";
/// ISTIO_TPROXY.
pub const TPROXY: &str = "MESHCAP_TPROXY";
/// ISTIO_DROP.
pub const DROP: &str = "MESHCAP_DROP";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{PolicyRoute, Table, Target};

    use crate::annotations::from_pairs as ann;

    /// The backstop under every front end's own bounds: no list reaches the renderers longer
    /// than two inputs' worth.
    #[test]
    fn no_list_longer_than_two_inputs_worth_reaches_the_renderers() {
        let mut m = RedirectModel {
            exclude_outbound_ports: (1..=520).collect(),
            ..RedirectModel::default()
        };
        assert!(m.validate().is_ok());
        m.exclude_outbound_ports.push(521);
        let err = m.validate().unwrap_err();
        assert_eq!(err.annotation, "exclude_outbound_ports", "{err}");
        let m = RedirectModel {
            owner_port_exclusions: vec![
                OwnerPortExclusion {
                    proto: Proto::Tcp,
                    ports: vec![PortRange { first: 1, last: 1 }; 300],
                    uids: (5, 5),
                };
                2
            ],
            ..RedirectModel::default()
        };
        let err = m.validate().unwrap_err();
        assert_eq!(err.annotation, "owner_port_exclusions", "{err}");
    }

    #[test]
    fn an_included_loopback_is_read_as_written_as_istio_reads_it() {
        for (written, loopback) in [
            ("127.0.0.1/32", true),
            ("127.0.0.1/7", true),
            ("10.0.0.0/8,::1/127", true),
            ("::ffff:127.0.0.1/128", true),
            ("126.0.0.0/7", false),
            ("10.0.0.0/8", false),
            ("::ffff:10.0.0.1/128", false),
            ("*", false),
        ] {
            let m = RedirectModel::from_annotations(&ann(&[(
                ann::INCLUDE_OUTBOUND_IP_RANGES,
                written,
            )]))
            .unwrap();
            assert_eq!(m.includes_loopback(), loopback, "{written}");
        }
    }

    #[test]
    fn defaults_are_istios() {
        let m = RedirectModel::from_annotations(&Annotations::new()).unwrap();
        assert_eq!(m, RedirectModel::default());
        assert_eq!(m.exclude_inbound_ports, vec![15090, 15021, 15020]);
        assert_eq!(m.exclude_outbound_ports, vec![15020]);
    }

    #[test]
    fn always_excluded_inbound_ports_stay() {
        let m =
            RedirectModel::from_annotations(&ann(&[(ann::EXCLUDE_INBOUND_PORTS, "8080,15021")]))
                .unwrap();
        assert_eq!(m.exclude_inbound_ports, vec![15090, 15021, 15020, 8080]);
    }

    #[test]
    fn explicit_exclude_outbound_ports_replace_the_default() {
        let m = RedirectModel::from_annotations(&ann(&[(ann::EXCLUDE_OUTBOUND_PORTS, "9000")]))
            .unwrap();
        assert_eq!(m.exclude_outbound_ports, vec![9000]);
        let m =
            RedirectModel::from_annotations(&ann(&[(ann::EXCLUDE_OUTBOUND_PORTS, "")])).unwrap();
        assert!(m.exclude_outbound_ports.is_empty());
    }

    #[test]
    fn new_virtual_interface_name_wins_and_the_old_is_read_only_without_it() {
        let m = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, "net1"),
            (ann::KUBEVIRT_INTERFACES, "net2"),
        ]))
        .unwrap();
        assert_eq!(m.reroute_virtual_interfaces, vec!["net1".to_string()]);
        let m =
            RedirectModel::from_annotations(&ann(&[(ann::KUBEVIRT_INTERFACES, "net2")])).unwrap();
        assert_eq!(m.reroute_virtual_interfaces, vec!["net2".to_string()]);
        // As istio-cni: the old name is not even checked when the new one is present.
        let m = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, "net1"),
            (ann::KUBEVIRT_INTERFACES, "bad/name"),
        ]))
        .unwrap();
        assert_eq!(m.reroute_virtual_interfaces, vec!["net1".to_string()]);
        let err = RedirectModel::from_annotations(&ann(&[(ann::KUBEVIRT_INTERFACES, "bad/name")]))
            .unwrap_err();
        assert_eq!(err.annotation, ann::KUBEVIRT_INTERFACES);
    }

    #[test]
    fn reroute_rules_are_bounded() {
        let ifaces: Vec<String> = (0..64).map(|i| format!("tap{i}")).collect();
        let nets: Vec<String> = (0..32).map(|i| format!("10.{i}.0.0/16")).collect();
        let err = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, &ifaces.join(",")),
            (ann::INCLUDE_OUTBOUND_IP_RANGES, &nets.join(",")),
        ]))
        .unwrap_err();
        assert_eq!(err.annotation, ann::REROUTE_VIRTUAL_INTERFACES);
        assert!(err.reason.contains("2048 rules"), "{}", err.reason);
        let ok = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, &ifaces[..32].join(",")),
            (ann::INCLUDE_OUTBOUND_IP_RANGES, &nets.join(",")),
        ]));
        assert!(ok.is_ok());
    }

    #[test]
    fn bad_mode_is_an_error_naming_the_annotation() {
        let err =
            RedirectModel::from_annotations(&ann(&[(ann::INTERCEPTION_MODE, "NONE")])).unwrap_err();
        assert_eq!(err.annotation, ann::INTERCEPTION_MODE);
    }

    #[test]
    fn tproxy_brings_policy_routing_only_with_inbound_capture() {
        let m =
            RedirectModel::from_annotations(&ann(&[(ann::INTERCEPTION_MODE, "TPROXY")])).unwrap();
        let rs = m.ruleset(Family::V6);
        assert_eq!(
            rs.policy_route,
            Some(PolicyRoute {
                family: Family::V6,
                mark: 1337,
                table: 133
            })
        );
        assert!(rs.table(Table::Mangle).is_some());
        let m = RedirectModel::from_annotations(&ann(&[
            (ann::INTERCEPTION_MODE, "TPROXY"),
            (ann::INCLUDE_INBOUND_PORTS, ""),
        ]))
        .unwrap();
        assert_eq!(m.ruleset(Family::V4).policy_route, None);
        assert_eq!(
            RedirectModel::default().ruleset(Family::V4).policy_route,
            None
        );
    }

    #[test]
    fn every_jump_target_exists_in_its_table() {
        let models = [
            RedirectModel::default(),
            RedirectModel::from_annotations(&ann(&[
                (ann::INTERCEPTION_MODE, "TPROXY"),
                (ann::INCLUDE_INBOUND_PORTS, "80,443"),
                (ann::REROUTE_VIRTUAL_INTERFACES, "net1"),
                (ann::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,fd00::/8"),
                (
                    ann::PROXY_CONFIG,
                    "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"",
                ),
            ]))
            .unwrap(),
        ];
        for m in &models {
            for rs in m.rulesets() {
                for t in &rs.tables {
                    let names: Vec<_> = t.chains.iter().map(|c| c.name.as_str()).collect();
                    for c in &t.chains {
                        assert!(c.name.starts_with(crate::rules::CHAIN_PREFIX));
                        for r in &c.rules {
                            if let Target::Jump(to) = &r.target {
                                assert!(names.contains(&to.as_str()), "{to} in {names:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ranges_are_split_by_family() {
        let m = RedirectModel::from_annotations(&ann(&[
            (ann::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,fd00::/8"),
            (ann::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16"),
        ]))
        .unwrap();
        let v6 = m.ruleset(Family::V6);
        let text = format!("{v6:?}");
        assert!(!text.contains("10.0.0.0"), "{text}");
        assert!(text.contains("fd00::"));
        let v4 = format!("{:?}", m.ruleset(Family::V4));
        assert!(v4.contains("10.1.0.0") && !v4.contains("fd00::"));
    }
}

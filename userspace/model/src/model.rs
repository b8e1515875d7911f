//! The redirect model: what one pod's capture looks like, validated, for both families.
//!
//! [`RedirectModel::from_annotations`] applies Istio's defaults and the pod's annotations;
//! [`RedirectModel::ruleset`] lays the model out as rules in the order Istio's
//! `istio-iptables` uses (tools/istio-iptables/pkg/capture), with one difference of layout:
//! meshcap never appends to a built-in chain beyond one jump into its own entry chain
//! (see [`crate::rules::Chain`]).

use ipnet::IpNet;

use crate::annotations::{self as ann, AnnotationError, Annotations, Selector};
use crate::rules::{
    Chain, Family, Hook, Match, PolicyRoute, Proto, Rule, Ruleset, Table, TableRules, Target,
};

/// Outbound capture port (Envoy's virtual outbound listener).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture port (Envoy's virtual inbound listener).
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

/// The capture of one pod, validated. Built from annotations; renders to rules per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectModel {
    pub interception: InterceptionMode,
    /// `*` or the CIDRs captured outbound (either family).
    pub include_outbound_ranges: Selector<IpNet>,
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
    pub proxy_uid: u32,
    pub proxy_gid: u32,
}

impl Default for RedirectModel {
    /// Istio's defaults: capture everything, exclude the status ports.
    fn default() -> Self {
        RedirectModel {
            interception: InterceptionMode::Redirect,
            include_outbound_ranges: Selector::All,
            exclude_outbound_ranges: Vec::new(),
            include_inbound_ports: Selector::All,
            exclude_inbound_ports: ALWAYS_EXCLUDED_INBOUND_PORTS.to_vec(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: DEFAULT_EXCLUDED_OUTBOUND_PORTS.to_vec(),
            exclude_interfaces: Vec::new(),
            reroute_virtual_interfaces: Vec::new(),
            dns_capture: false,
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
        }
    }
}

fn only<T>(sel: Selector<T>, name: &str) -> Result<Vec<T>, AnnotationError> {
    match sel {
        Selector::Only(v) => Ok(v),
        // The parsers refuse `*` where it is not allowed; keep the invariant explicit.
        Selector::All => Err(AnnotationError {
            annotation: name.to_owned(),
            value: "*".to_owned(),
            reason: "`*` is not allowed here".to_owned(),
        }),
    }
}

impl RedirectModel {
    /// Validate every model annotation and apply it over Istio's defaults. The first invalid
    /// annotation (in a fixed order) is the error; nothing partial is ever returned.
    pub fn from_annotations(annotations: &Annotations) -> Result<Self, AnnotationError> {
        let mut model = RedirectModel::default();
        if let Some(mode) = ann::interception_mode(annotations)? {
            model.interception = mode;
        }
        if let Some(sel) = ann::cidrs(annotations, ann::INCLUDE_OUTBOUND_IP_RANGES, true)? {
            model.include_outbound_ranges = sel;
        }
        if let Some(sel) = ann::cidrs(annotations, ann::EXCLUDE_OUTBOUND_IP_RANGES, false)? {
            model.exclude_outbound_ranges = only(sel, ann::EXCLUDE_OUTBOUND_IP_RANGES)?;
        }
        if let Some(sel) = ann::ports(annotations, ann::INCLUDE_INBOUND_PORTS, true)? {
            model.include_inbound_ports = sel;
        }
        if let Some(sel) = ann::ports(annotations, ann::EXCLUDE_INBOUND_PORTS, false)? {
            for port in only(sel, ann::EXCLUDE_INBOUND_PORTS)? {
                if !model.exclude_inbound_ports.contains(&port) {
                    model.exclude_inbound_ports.push(port);
                }
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
        // The old name is still validated, so a typo in it is not silently ignored.
        let old = ann::interfaces(annotations, ann::KUBEVIRT_INTERFACES)?;
        let new = ann::interfaces(annotations, ann::REROUTE_VIRTUAL_INTERFACES)?;
        if let Some(names) = new.or(old) {
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
                return Err(AnnotationError {
                    annotation: name.to_owned(),
                    value: model.reroute_virtual_interfaces.join(","),
                    reason: format!(
                        "{} interfaces x {} includeOutboundIPRanges entries need {rules} rules; \
                         at most {MAX_REROUTE_RULES}",
                        model.reroute_virtual_interfaces.len(),
                        nets.len()
                    ),
                });
            }
        }
        model.dns_capture = ann::dns_capture(annotations)?;
        Ok(model)
    }

    /// The rules for both families, IPv4 first.
    pub fn rulesets(&self) -> Vec<Ruleset> {
        Family::ALL.iter().map(|f| self.ruleset(*f)).collect()
    }

    fn captures_inbound(&self) -> bool {
        !self.include_inbound_ports.is_empty()
    }

    /// Istio skips the "app talking to itself over lo" bypass when loopback is explicitly
    /// included outbound (in either family).
    fn includes_loopback(&self) -> bool {
        match &self.include_outbound_ranges {
            Selector::All => false,
            Selector::Only(nets) => nets.iter().any(|n| n.addr().is_loopback()),
        }
    }

    /// Lay the model out as rules for one family.
    pub fn ruleset(&self, family: Family) -> Ruleset {
        let mut tables = Vec::new();
        if self.dns_capture {
            tables.push(self.raw_table());
        }
        if self.interception == InterceptionMode::Tproxy {
            tables.push(self.mangle_table(family));
        }
        tables.push(self.nat_table(family));
        let policy_route = (self.interception == InterceptionMode::Tproxy
            && self.captures_inbound())
        .then_some(PolicyRoute {
            family,
            mark: TPROXY_MARK,
            table: TPROXY_ROUTE_TABLE,
        });
        Ruleset {
            family,
            tables,
            policy_route,
        }
    }

    fn nat_table(&self, family: Family) -> TableRules {
        let loopback = family.loopback();
        let mut chains = Vec::new();

        // Entry from PREROUTING: virtual interfaces are treated as outbound, excluded
        // interfaces bypass capture, then inbound capture (REDIRECT mode only).
        let mut prerouting = Vec::new();
        for vif in &self.reroute_virtual_interfaces {
            match &self.include_outbound_ranges {
                Selector::All => prerouting.push(Rule::new(
                    vec![Match::InInterface { name: vif.clone() }],
                    jump(REDIRECT),
                )),
                Selector::Only(nets) => {
                    for net in nets.iter().filter(|n| family.contains(n)) {
                        prerouting.push(Rule::new(
                            vec![
                                Match::Destination {
                                    net: *net,
                                    negate: false,
                                },
                                Match::InInterface { name: vif.clone() },
                            ],
                            jump(REDIRECT),
                        ));
                    }
                }
            }
        }
        prerouting.extend(interface_returns(&self.reroute_virtual_interfaces, true));
        prerouting.extend(interface_returns(&self.exclude_interfaces, true));
        let redirect_inbound =
            self.interception == InterceptionMode::Redirect && self.captures_inbound();
        if redirect_inbound {
            prerouting.push(Rule::new(vec![tcp()], jump(INBOUND)));
        }
        if !prerouting.is_empty() {
            chains.push(entry(PREROUTING, Hook::Prerouting, prerouting));
        }

        if redirect_inbound {
            let mut inbound = vec![Rule::new(vec![tcp(), dport(TUNNEL_PORT)], Target::Return)];
            match &self.include_inbound_ports {
                Selector::All => {
                    for port in &self.exclude_inbound_ports {
                        inbound.push(Rule::new(vec![tcp(), dport(*port)], Target::Return));
                    }
                    inbound.push(Rule::new(vec![tcp()], jump(IN_REDIRECT)));
                }
                Selector::Only(ports) => {
                    for port in ports {
                        inbound.push(Rule::new(vec![tcp(), dport(*port)], jump(IN_REDIRECT)));
                    }
                }
            }
            chains.push(own(INBOUND, inbound));
        }

        // Entry from OUTPUT.
        let mut output = Vec::new();
        output.extend(interface_returns(&self.exclude_interfaces, false));
        output.push(Rule::new(vec![], jump(OUTBOUND)));
        chains.push(entry(OUTPUT, Hook::Output, output));

        let mut outbound = Vec::new();
        for port in &self.exclude_outbound_ports {
            for proto in [Proto::Tcp, Proto::Udp] {
                outbound.push(Rule::new(
                    vec![Match::Protocol(proto), dport(*port)],
                    Target::Return,
                ));
            }
        }
        outbound.push(Rule::new(
            vec![
                Match::Source {
                    net: family.inbound_passthrough_source(),
                    negate: false,
                },
                Match::OutInterface { name: LO.into() },
            ],
            Target::Return,
        ));
        let not_to_loopback = || Match::Destination {
            net: loopback,
            negate: true,
        };
        let lo_out = || Match::OutInterface { name: LO.into() };
        // The proxy dialling the pod's own address over lo is treated as inbound; apps talking
        // to themselves over lo, and everything else the proxy sends, bypass capture.
        let owners = [
            (
                Match::UidOwner {
                    uid: self.proxy_uid,
                    negate: false,
                },
                Match::UidOwner {
                    uid: self.proxy_uid,
                    negate: true,
                },
                true,
            ),
            (
                Match::GidOwner {
                    gid: self.proxy_gid,
                    negate: false,
                },
                Match::GidOwner {
                    gid: self.proxy_gid,
                    negate: true,
                },
                false,
            ),
        ];
        for (is_proxy, is_not_proxy, is_uid) in owners {
            // Istio skips port 53 here only in the uid rule; the gid rule keeps 15008 alone.
            let skipped_ports = if self.dns_capture && is_uid {
                vec![DNS_PORT, TUNNEL_PORT]
            } else {
                vec![TUNNEL_PORT]
            };
            outbound.push(Rule::new(
                vec![
                    not_to_loopback(),
                    lo_out(),
                    tcp(),
                    Match::DestPort {
                        ports: skipped_ports,
                        negate: true,
                    },
                    is_proxy.clone(),
                ],
                jump(IN_REDIRECT),
            ));
            if !self.includes_loopback() {
                if self.dns_capture {
                    // Keep TCP DNS to a resolver on lo capturable.
                    outbound.push(Rule::new(
                        vec![
                            lo_out(),
                            tcp(),
                            Match::DestPort {
                                ports: vec![DNS_PORT],
                                negate: true,
                            },
                            is_not_proxy,
                        ],
                        Target::Return,
                    ));
                } else {
                    outbound.push(Rule::new(vec![lo_out(), is_not_proxy], Target::Return));
                }
            }
            outbound.push(Rule::new(vec![is_proxy], Target::Return));
        }
        if self.dns_capture {
            outbound.push(Rule::new(vec![], jump(DNS)));
        }
        outbound.push(Rule::new(
            vec![Match::Destination {
                net: loopback,
                negate: false,
            }],
            Target::Return,
        ));
        for net in self
            .exclude_outbound_ranges
            .iter()
            .filter(|n| family.contains(n))
        {
            outbound.push(Rule::new(
                vec![Match::Destination {
                    net: *net,
                    negate: false,
                }],
                Target::Return,
            ));
        }
        for port in &self.include_outbound_ports {
            outbound.push(Rule::new(vec![tcp(), dport(*port)], jump(REDIRECT)));
        }
        match &self.include_outbound_ranges {
            Selector::All => outbound.push(Rule::new(vec![], jump(REDIRECT))),
            Selector::Only(nets) => {
                for net in nets.iter().filter(|n| family.contains(n)) {
                    outbound.push(Rule::new(
                        vec![Match::Destination {
                            net: *net,
                            negate: false,
                        }],
                        jump(REDIRECT),
                    ));
                }
            }
        }
        chains.push(own(OUTBOUND, outbound));

        if self.dns_capture {
            chains.push(own(
                DNS,
                [Proto::Tcp, Proto::Udp]
                    .into_iter()
                    .map(|proto| {
                        Rule::new(
                            vec![Match::Protocol(proto), dport(DNS_PORT)],
                            Target::Redirect {
                                port: DNS_CAPTURE_PORT,
                            },
                        )
                    })
                    .collect(),
            ));
        }
        chains.push(own(
            REDIRECT,
            vec![Rule::new(
                vec![tcp()],
                Target::Redirect {
                    port: OUTBOUND_CAPTURE_PORT,
                },
            )],
        ));
        chains.push(own(
            IN_REDIRECT,
            vec![Rule::new(
                vec![tcp()],
                Target::Redirect {
                    port: INBOUND_CAPTURE_PORT,
                },
            )],
        ));
        TableRules {
            table: Table::Nat,
            chains,
        }
    }

    /// TPROXY inbound: divert new connections to the transparent listener, keep established
    /// ones on the local route, and carry the mark across the connection.
    fn mangle_table(&self, family: Family) -> TableRules {
        let loopback = family.loopback();
        let mut chains = Vec::new();

        let mut prerouting = Vec::new();
        prerouting.extend(interface_returns(&self.exclude_interfaces, true));
        if self.captures_inbound() {
            prerouting.push(Rule::new(vec![tcp()], jump(INBOUND)));
        }
        prerouting.push(Rule::new(
            vec![
                tcp(),
                Match::Mark {
                    value: TPROXY_MARK,
                    negate: false,
                },
            ],
            Target::SaveMark,
        ));
        chains.push(entry(PREROUTING, Hook::Prerouting, prerouting));

        let mut output = Vec::new();
        output.extend(interface_returns(&self.exclude_interfaces, false));
        output.push(Rule::new(
            vec![
                Match::OutInterface { name: LO.into() },
                tcp(),
                Match::Mark {
                    value: TPROXY_MARK,
                    negate: false,
                },
            ],
            Target::Return,
        ));
        for owner in [
            Match::UidOwner {
                uid: self.proxy_uid,
                negate: false,
            },
            Match::GidOwner {
                gid: self.proxy_gid,
                negate: false,
            },
        ] {
            output.push(Rule::new(
                vec![
                    Match::Destination {
                        net: loopback,
                        negate: true,
                    },
                    Match::OutInterface { name: LO.into() },
                    tcp(),
                    owner,
                ],
                Target::SetMark(PROXY_LOOPBACK_MARK),
            ));
        }
        output.push(Rule::new(
            vec![tcp(), Match::ConnMark { value: TPROXY_MARK }],
            Target::RestoreMark,
        ));
        chains.push(entry(OUTPUT, Hook::Output, output));

        if self.captures_inbound() {
            chains.push(own(
                DIVERT,
                vec![
                    Rule::new(vec![], Target::SetMark(TPROXY_MARK)),
                    Rule::new(vec![], Target::Accept),
                ],
            ));
            let mut inbound = vec![
                // Already diverted: don't loop.
                Rule::new(
                    vec![
                        tcp(),
                        Match::Mark {
                            value: TPROXY_MARK,
                            negate: false,
                        },
                    ],
                    Target::Return,
                ),
                // The proxy's inbound passthrough to the app.
                Rule::new(
                    vec![
                        Match::Source {
                            net: family.inbound_passthrough_source(),
                            negate: false,
                        },
                        Match::InInterface { name: LO.into() },
                        tcp(),
                    ],
                    Target::Return,
                ),
                // An app talking to its own pod address over lo (only the proxy's own such
                // connections carry the loopback mark and are captured).
                Rule::new(
                    vec![
                        Match::InInterface { name: LO.into() },
                        tcp(),
                        Match::Mark {
                            value: PROXY_LOOPBACK_MARK,
                            negate: true,
                        },
                    ],
                    Target::Return,
                ),
                // No tunnel-port RETURN here: Istio puts it only in the nat inbound chain, so
                // in TPROXY mode inbound 15008 is captured like any other port
                // (istio/istio cni/pkg/plugin/testdata/tproxy.txt.golden).
            ];
            match &self.include_inbound_ports {
                Selector::All => {
                    for port in &self.exclude_inbound_ports {
                        inbound.push(Rule::new(vec![tcp(), dport(*port)], Target::Return));
                    }
                    inbound.push(Rule::new(
                        vec![tcp(), Match::CtStateRelatedEstablished],
                        jump(DIVERT),
                    ));
                    inbound.push(Rule::new(vec![tcp()], jump(TPROXY)));
                }
                Selector::Only(ports) => {
                    for port in ports {
                        inbound.push(Rule::new(
                            vec![tcp(), dport(*port), Match::CtStateRelatedEstablished],
                            jump(DIVERT),
                        ));
                        inbound.push(Rule::new(vec![tcp(), dport(*port)], jump(TPROXY)));
                    }
                }
            }
            chains.push(own(INBOUND, inbound));
            chains.push(own(
                TPROXY,
                vec![Rule::new(
                    vec![
                        Match::Destination {
                            net: loopback,
                            negate: true,
                        },
                        tcp(),
                    ],
                    Target::Tproxy {
                        port: INBOUND_CAPTURE_PORT,
                        mark: TPROXY_MARK,
                    },
                )],
            ));
        }
        TableRules {
            table: Table::Mangle,
            chains,
        }
    }

    /// DNS capture: separate conntrack zones for the proxy's upstream queries and the app's
    /// queries to the proxy, so their UDP flows never collide.
    fn raw_table(&self) -> TableRules {
        let udp = || Match::Protocol(Proto::Udp);
        let mut dns = Vec::new();
        for owner in [
            Match::UidOwner {
                uid: self.proxy_uid,
                negate: false,
            },
            Match::GidOwner {
                gid: self.proxy_gid,
                negate: false,
            },
        ] {
            dns.push(Rule::new(
                vec![udp(), dport(DNS_PORT), owner.clone()],
                Target::CtZone(DNS_ZONE_UPSTREAM),
            ));
            dns.push(Rule::new(
                vec![
                    udp(),
                    Match::SourcePort {
                        port: DNS_CAPTURE_PORT,
                    },
                    owner,
                ],
                Target::CtZone(DNS_ZONE_CLIENT),
            ));
        }
        dns.push(Rule::new(
            vec![udp(), dport(DNS_PORT)],
            Target::CtZone(DNS_ZONE_CLIENT),
        ));
        TableRules {
            table: Table::Raw,
            chains: vec![
                entry(
                    PREROUTING,
                    Hook::Prerouting,
                    vec![Rule::new(vec![], jump(INBOUND))],
                ),
                entry(OUTPUT, Hook::Output, vec![Rule::new(vec![], jump(DNS))]),
                own(
                    INBOUND,
                    vec![Rule::new(
                        vec![udp(), Match::SourcePort { port: DNS_PORT }],
                        Target::CtZone(DNS_ZONE_UPSTREAM),
                    )],
                ),
                own(DNS, dns),
            ],
        }
    }
}

const LO: &str = "lo";

// meshcap's chain names (Istio's equivalents in comments).
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

fn tcp() -> Match {
    Match::Protocol(Proto::Tcp)
}

fn dport(port: u16) -> Match {
    Match::DestPort {
        ports: vec![port],
        negate: false,
    }
}

/// `-i IFACE -j RETURN` (inbound) or `-o IFACE -j RETURN` (outbound) for each interface.
fn interface_returns(ifaces: &[String], inbound: bool) -> impl Iterator<Item = Rule> + '_ {
    ifaces.iter().map(move |name| {
        let name = name.clone();
        let m = if inbound {
            Match::InInterface { name }
        } else {
            Match::OutInterface { name }
        };
        Rule::new(vec![m], Target::Return)
    })
}

fn jump(chain: &str) -> Target {
    Target::Jump(chain.to_owned())
}

fn entry(name: &str, hook: Hook, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.to_owned(),
        hook: Some(hook),
        rules,
    }
}

fn own(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.to_owned(),
        hook: None,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
    fn new_virtual_interface_name_wins_but_old_is_validated() {
        let m = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, "net1"),
            (ann::KUBEVIRT_INTERFACES, "net2"),
        ]))
        .unwrap();
        assert_eq!(m.reroute_virtual_interfaces, vec!["net1".to_string()]);
        let m =
            RedirectModel::from_annotations(&ann(&[(ann::KUBEVIRT_INTERFACES, "net2")])).unwrap();
        assert_eq!(m.reroute_virtual_interfaces, vec!["net2".to_string()]);
        let err = RedirectModel::from_annotations(&ann(&[
            (ann::REROUTE_VIRTUAL_INTERFACES, "net1"),
            (ann::KUBEVIRT_INTERFACES, "bad/name"),
        ]))
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

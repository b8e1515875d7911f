//! Laying a [`RedirectModel`] out as rules, one builder per concern, called in the order
//! Istio's `istio-iptables` appends its rules (tools/istio-iptables/pkg/capture/run.go):
//!
//! - [`interfaces`]: excluded interfaces bypass capture; KubeVirt-style virtual interfaces are
//!   captured as outbound;
//! - [`inbound`]: inbound capture, by REDIRECT (nat) or TPROXY (mangle), and the invalid-packet
//!   drop;
//! - [`outbound`]: outbound capture (nat) and, in TPROXY mode, the marks of the proxy's own
//!   loopback connections (mangle);
//! - [`dns`]: DNS capture and its conntrack zones (raw).
//!
//! Each builder appends to the chains of a [`TableBuilder`]; the order of chains within a table
//! is fixed by the table's chain list, the order of rules within a chain by the order of the
//! calls in [`RedirectModel::ruleset`]. Every rule states its purpose.

mod dns;
mod inbound;
mod interfaces;
mod outbound;

use crate::model::{
    InterceptionMode, RedirectModel, DEFAULT_CHAIN_PREFIX, DIVERT, DNS, DROP, INBOUND, IN_REDIRECT,
    OUTBOUND, OUTPUT, PREROUTING, REDIRECT, TPROXY, TPROXY_MARK, TPROXY_ROUTE_TABLE,
};
use crate::rules::{
    Chain, Family, Hook, Match, PolicyRoute, Proto, Rule, Ruleset, Table, TableRules, Target,
};

type ChainOrder = &'static [(&'static str, Option<Hook>)];

const RAW_CHAINS: ChainOrder = &[
    (PREROUTING, Some(Hook::Prerouting)),
    (OUTPUT, Some(Hook::Output)),
    (INBOUND, None),
    (DNS, None),
];
const MANGLE_CHAINS: ChainOrder = &[
    (PREROUTING, Some(Hook::Prerouting)),
    (OUTPUT, Some(Hook::Output)),
    (DROP, None),
    (DIVERT, None),
    (INBOUND, None),
    (TPROXY, None),
];
const NAT_CHAINS: ChainOrder = &[
    (PREROUTING, Some(Hook::Prerouting)),
    (INBOUND, None),
    (OUTPUT, Some(Hook::Output)),
    (OUTBOUND, None),
    (DNS, None),
    (REDIRECT, None),
    (IN_REDIRECT, None),
];

/// The chains of one table under construction. A chain exists once a rule is pushed to it.
pub(crate) struct TableBuilder {
    table: Table,
    order: ChainOrder,
    chains: Vec<Chain>,
}

impl TableBuilder {
    fn new(table: Table, order: ChainOrder) -> Self {
        TableBuilder {
            table,
            order,
            chains: Vec::new(),
        }
    }

    fn chain(&mut self, name: &str) -> &mut Vec<Rule> {
        let i = match self.chains.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                let hook = self
                    .order
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("chain {name} is not in the {:?} table", self.table))
                    .1;
                self.chains.push(Chain {
                    name: name.to_owned(),
                    hook,
                    rules: Vec::new(),
                });
                self.chains.len() - 1
            }
        };
        &mut self.chains[i].rules
    }

    pub(crate) fn push(&mut self, name: &str, rule: Rule) {
        debug_assert!(
            !rule.purpose.is_empty(),
            "every model rule states its purpose"
        );
        self.chain(name).push(rule);
    }

    pub(crate) fn extend(&mut self, name: &str, rules: impl IntoIterator<Item = Rule>) {
        for rule in rules {
            self.push(name, rule);
        }
    }

    fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    fn finish(mut self) -> TableRules {
        let order = self.order;
        let rank = |name: &str| order.iter().position(|(n, _)| *n == name);
        self.chains.sort_by_key(|c| rank(&c.name));
        TableRules {
            table: self.table,
            chains: self.chains,
        }
    }
}

impl RedirectModel {
    /// Lay the model out as rules for one family. A family the pod has no address of gets
    /// nothing at all.
    pub fn ruleset(&self, family: Family) -> Ruleset {
        if !self.families.has(family) {
            return Ruleset {
                family,
                tables: Vec::new(),
                policy_route: None,
                passthrough_source: false,
            };
        }
        let tproxy = self.interception == InterceptionMode::Tproxy;

        let mut raw = TableBuilder::new(Table::Raw, RAW_CHAINS);
        let family_has_zones = !self.dns_zones_need_family_resolver
            || self.dns_servers_of(family).is_none_or(|s| !s.is_empty());
        if self.captures_dns() && self.dns_conntrack_zones && family_has_zones {
            dns::conntrack_zones(self, family, &mut raw);
        }

        let mut mangle = TableBuilder::new(Table::Mangle, MANGLE_CHAINS);
        if tproxy {
            interfaces::exclude_mangle(self, &mut mangle);
        }
        if self.drop_invalid {
            inbound::drop_invalid(&mut mangle);
        }
        if tproxy {
            inbound::tproxy(self, family, &mut mangle);
            outbound::tproxy_marks(self, family, &mut mangle);
        }

        let mut nat = TableBuilder::new(Table::Nat, NAT_CHAINS);
        interfaces::reroute_virtual(self, family, &mut nat);
        interfaces::virtual_networks(self, family, &mut nat);
        interfaces::exclude_nat(self, &mut nat);
        if !tproxy {
            inbound::redirect(self, family, &mut nat);
        }
        outbound::nat(self, family, &mut nat);
        dns::nat_chain(self, family, &mut nat);
        inbound::redirect_target(self, &mut nat);

        let mut tables: Vec<TableRules> = [raw, mangle, nat]
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(TableBuilder::finish)
            .collect();
        if self.chain_prefix != DEFAULT_CHAIN_PREFIX {
            for table in &mut tables {
                rename_chains(table, &self.chain_prefix);
            }
        }
        let policy_route = (tproxy && self.captures_inbound()).then_some(PolicyRoute {
            family,
            mark: TPROXY_MARK,
            table: TPROXY_ROUTE_TABLE,
        });
        Ruleset {
            family,
            tables,
            policy_route,
            passthrough_source: self.inbound_passthrough,
        }
    }
}

/// Give every chain of `table` (and every jump) the model's prefix instead of `MESHCAP`.
fn rename_chains(table: &mut TableRules, prefix: &str) {
    let renamed = |name: &str| match name.strip_prefix(DEFAULT_CHAIN_PREFIX) {
        Some(rest) => format!("{prefix}{rest}"),
        None => name.to_owned(),
    };
    for chain in &mut table.chains {
        chain.name = renamed(&chain.name);
        for r in &mut chain.rules {
            if let Target::Jump(to) = &mut r.target {
                *to = renamed(to);
            }
        }
    }
}

/// `--dport A:B`, or `--dport A` for a one-port range.
fn port_range(r: crate::model::PortRange) -> Match {
    if r.first == r.last {
        dport(r.first)
    } else {
        Match::DestPortRange {
            first: r.first,
            last: r.last,
        }
    }
}

fn rule(purpose: &'static str, matches: Vec<Match>, target: Target) -> Rule {
    Rule::new(matches, target).because(purpose)
}

fn tcp() -> Match {
    Match::Protocol(Proto::Tcp)
}

fn udp() -> Match {
    Match::Protocol(Proto::Udp)
}

fn dport(port: u16) -> Match {
    Match::DestPort {
        ports: vec![port],
        negate: false,
    }
}

fn to(net: ipnet::IpNet) -> Match {
    Match::Destination { net, negate: false }
}

fn not_to(net: ipnet::IpNet) -> Match {
    Match::Destination { net, negate: true }
}

fn jump(chain: &str) -> Target {
    Target::Jump(chain.to_owned())
}

const LO: &str = "lo";

fn lo_in() -> Match {
    Match::InInterface { name: LO.into() }
}

fn lo_out() -> Match {
    Match::OutInterface { name: LO.into() }
}

/// The owner matches of the proxy, per id in order: uids first, then gids, as Istio repeats
/// its per-owner rules. Each item is (`owner is X`, `owner is not X`, is a uid).
fn proxy_owners(model: &RedirectModel) -> Vec<(Match, Match, bool)> {
    let uids = model.proxy_uids.iter().map(|&uid| {
        (
            Match::UidOwner { uid, negate: false },
            Match::UidOwner { uid, negate: true },
            true,
        )
    });
    let gids = model.proxy_gids.iter().map(|&gid| {
        (
            Match::GidOwner { gid, negate: false },
            Match::GidOwner { gid, negate: true },
            false,
        )
    });
    uids.chain(gids).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OwnerGroups, ProxyPorts};
    use crate::rules::is_valid_purpose;

    /// Models that between them use every builder and branch.
    fn models() -> Vec<RedirectModel> {
        let mut all = RedirectModel {
            interception: InterceptionMode::Tproxy,
            dns_capture: true,
            drop_invalid: true,
            exclude_interfaces: vec!["net1".into()],
            reroute_virtual_interfaces: vec!["tap0".into()],
            outbound_owner_groups: OwnerGroups::AllExcept(vec![5]),
            proxy_uids: vec![1337, 1338],
            proxy_gids: vec![1337, 1339],
            include_outbound_ports: vec![9092],
            exclude_outbound_ranges: vec!["10.1.0.0/16".parse().unwrap()],
            ..RedirectModel::default()
        };
        let mut redirect = all.clone();
        redirect.interception = InterceptionMode::Redirect;
        redirect.outbound_owner_groups = OwnerGroups::Only(vec![5, 6]);
        redirect.dns_servers = Some(vec!["10.96.0.10".parse().unwrap()]);
        redirect.include_inbound_ports = Selector::Only(vec![80]);
        redirect.include_outbound_ranges = Selector::Only(vec!["10.0.0.0/8".parse().unwrap()]);
        all.include_outbound_ranges = Selector::Only(vec!["127.0.0.0/8".parse().unwrap()]);
        all.include_outbound_loopback = true;
        // Kuma's resolver handling: a loopback resolver, and no IPv6 one.
        let mut resolvers = redirect.clone();
        resolvers.dns_servers = Some(vec!["127.0.0.53".parse().unwrap()]);
        resolvers.dns_zones_need_family_resolver = true;
        resolvers.dns_loopback_resolver_zone = true;
        vec![RedirectModel::default(), all, redirect, resolvers]
    }

    #[test]
    fn resolver_zones_follow_the_families_resolvers_where_the_model_says_so() {
        let m = models().pop().unwrap();
        let raw = |family| -> Vec<String> {
            m.ruleset(family)
                .tables
                .into_iter()
                .filter(|t| t.table == Table::Raw)
                .flat_map(|t| t.chains)
                .flat_map(|c| c.rules)
                .map(|r| r.purpose.to_string())
                .collect()
        };
        let v4 = raw(Family::V4);
        assert!(v4.iter().any(|p| p.contains("loopback resolver")), "{v4:?}");
        assert_eq!(raw(Family::V6), Vec::<String>::new());
        // Istio keeps the proxy's own zones in a family without a resolver.
        let mut istio = m.clone();
        istio.dns_zones_need_family_resolver = false;
        istio.dns_loopback_resolver_zone = false;
        let v6 = istio.ruleset(Family::V6);
        assert!(v6.tables.iter().any(|t| t.table == Table::Raw));
        let v4 = istio.ruleset(Family::V4);
        assert!(!format!("{v4:?}").contains("loopback resolver"));
    }

    use crate::annotations::Selector;

    #[test]
    fn every_rule_states_a_purpose_every_backend_can_store() {
        for m in models() {
            for rs in m.rulesets() {
                for t in &rs.tables {
                    for c in &t.chains {
                        for r in &c.rules {
                            assert!(!r.purpose.is_empty(), "{} {r:?}", c.name);
                            assert!(is_valid_purpose(r.purpose), "{:?}", r.purpose);
                            assert!(!r.purpose.contains("-j"), "{:?}", r.purpose);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_family_the_pod_lacks_gets_nothing() {
        let m = RedirectModel {
            families: crate::model::Families {
                v4: true,
                v6: false,
            },
            ..RedirectModel::default()
        };
        let rs = m.rulesets();
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].family, Family::V4);
        let v6 = m.ruleset(Family::V6);
        assert!(v6.tables.is_empty() && v6.policy_route.is_none());
    }

    #[test]
    fn ports_come_from_the_model() {
        let m = RedirectModel {
            ports: ProxyPorts {
                outbound: 16001,
                inbound: 16006,
                dns: 16053,
                tunnel: None,
            },
            dns_capture: true,
            ..RedirectModel::default()
        };
        let text = format!("{:?}", m.ruleset(Family::V4));
        for port in ["16001", "16006", "16053"] {
            assert!(text.contains(port), "{port}");
        }
        for port in ["15001", "15006", "15053", "15008"] {
            assert!(!text.contains(port), "{port}");
        }
    }
}

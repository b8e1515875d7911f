//! DNS capture (`ISTIO_META_DNS_CAPTURE`): the pod's DNS goes to the proxy DNS port, to any
//! resolver or only to the listed ones; conntrack zones keep the proxy's upstream queries
//! apart from the apps' queries to the proxy, so their UDP flows never collide.

use super::{dport, jump, proxy_owners, rule, to, udp, TableBuilder};
use crate::model::{
    DnsScope, RedirectModel, DNS, DNS_PORT, DNS_ZONE_CLIENT, DNS_ZONE_UPSTREAM, INBOUND, OUTPUT,
    PREROUTING,
};
use crate::rules::{Family, Match, Proto, Rule, Target};

fn from(net: ipnet::IpNet) -> Match {
    Match::Source { net, negate: false }
}

/// The jump from nat OUTBOUND into the DNS chain, when this family has DNS to capture.
pub(super) fn nat_jump(model: &RedirectModel, family: Family) -> Option<Rule> {
    if !model.captures_dns() || model.dns_scope != DnsScope::UdpAndTcp {
        return None;
    }
    if model.dns_servers_of(family).is_some_and(|s| s.is_empty()) {
        return None;
    }
    Some(rule("DNS capture", vec![], jump(DNS)))
}

/// nat OUTPUT with [`DnsScope::UdpOnly`]: the proxy's own UDP DNS leaves, all other UDP DNS
/// (or that to the listed resolvers) goes to the proxy DNS port, and the apps' TCP DNS is not
/// captured at all.
pub(super) fn nat_entry(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    if !model.captures_dns() || model.dns_scope != DnsScope::UdpOnly {
        return;
    }
    let servers = model.dns_servers_of(family);
    if servers.as_ref().is_some_and(|s| s.is_empty()) {
        return;
    }
    let owners = proxy_owners(model);
    for (is_proxy, _, _) in &owners {
        nat.push(
            OUTPUT,
            rule(
                "DNS capture: DNS queries of the proxy are not captured",
                vec![udp(), dport(DNS_PORT), is_proxy.clone()],
                Target::Return,
            ),
        );
    }
    let redirect = Target::Redirect {
        port: model.ports.dns,
    };
    match servers {
        None => nat.push(
            OUTPUT,
            rule(
                "DNS capture: UDP DNS goes to the proxy DNS port",
                vec![udp(), dport(DNS_PORT)],
                redirect,
            ),
        ),
        Some(servers) => {
            for server in servers {
                nat.push(
                    OUTPUT,
                    rule(
                        "DNS capture: DNS to a resolv.conf server goes to the proxy",
                        vec![to(server), udp(), dport(DNS_PORT)],
                        redirect.clone(),
                    ),
                );
            }
        }
    }
    let mut tcp_dns = vec![Match::Protocol(Proto::Tcp), dport(DNS_PORT)];
    tcp_dns.extend(owners.into_iter().map(|(_, is_not_proxy, _)| is_not_proxy));
    nat.push(
        OUTPUT,
        rule(
            "DNS capture: TCP DNS of apps is not captured",
            tcp_dns,
            Target::Return,
        ),
    );
}

/// nat DNS: TCP and UDP DNS to the proxy's DNS port (all TCP rules first, as Istio).
pub(super) fn nat_chain(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    if nat_jump(model, family).is_none() {
        return;
    }
    let redirect = Target::Redirect {
        port: model.ports.dns,
    };
    let servers = model.dns_servers_of(family);
    for (proto, purpose) in [
        (
            Proto::Tcp,
            "DNS capture: TCP DNS goes to the proxy DNS port",
        ),
        (
            Proto::Udp,
            "DNS capture: UDP DNS goes to the proxy DNS port",
        ),
    ] {
        let base = vec![Match::Protocol(proto), dport(DNS_PORT)];
        match &servers {
            None => nat.push(DNS, rule(purpose, base, redirect.clone())),
            Some(servers) => {
                for server in servers {
                    let mut matches = vec![to(*server)];
                    matches.extend(base.iter().cloned());
                    nat.push(
                        DNS,
                        rule(
                            "DNS capture: DNS to a resolv.conf server goes to the proxy",
                            matches,
                            redirect.clone(),
                        ),
                    );
                }
            }
        }
    }
}

/// raw: the proxy's queries upstream and their replies in one zone, the apps' queries to the
/// proxy and its answers in the other.
pub(super) fn conntrack_zones(model: &RedirectModel, family: Family, raw: &mut TableBuilder) {
    let servers = model.dns_servers_of(family);
    if servers.as_ref().is_none_or(|s| !s.is_empty()) {
        raw.push(
            PREROUTING,
            rule(
                "DNS capture: conntrack zones of DNS replies",
                vec![],
                jump(INBOUND),
            ),
        );
    }
    raw.push(
        OUTPUT,
        rule(
            "DNS capture: conntrack zones of DNS queries",
            vec![],
            jump(DNS),
        ),
    );
    for (owner, _, is_uid) in proxy_owners(model) {
        raw.push(
            DNS,
            rule(
                if is_uid {
                    "DNS capture: proxy uid queries upstream are in the upstream zone"
                } else {
                    "DNS capture: proxy gid queries upstream are in the upstream zone"
                },
                vec![udp(), dport(DNS_PORT), owner.clone()],
                Target::CtZone(DNS_ZONE_UPSTREAM),
            ),
        );
        raw.push(
            DNS,
            rule(
                if is_uid {
                    "DNS capture: proxy uid answers to apps are in the client zone"
                } else {
                    "DNS capture: proxy gid answers to apps are in the client zone"
                },
                vec![
                    udp(),
                    Match::SourcePort {
                        port: model.ports.dns,
                    },
                    owner,
                ],
                Target::CtZone(DNS_ZONE_CLIENT),
            ),
        );
    }
    const QUERIES: &str = "DNS capture: app queries are in the client zone";
    const REPLIES: &str = "DNS capture: resolver replies are in the upstream zone";
    match servers {
        None => {
            raw.push(
                DNS,
                rule(
                    QUERIES,
                    vec![udp(), dport(DNS_PORT)],
                    Target::CtZone(DNS_ZONE_CLIENT),
                ),
            );
            raw.push(
                INBOUND,
                rule(
                    REPLIES,
                    vec![udp(), Match::SourcePort { port: DNS_PORT }],
                    Target::CtZone(DNS_ZONE_UPSTREAM),
                ),
            );
        }
        Some(servers) => {
            for server in servers {
                raw.push(
                    DNS,
                    rule(
                        QUERIES,
                        vec![to(server), udp(), dport(DNS_PORT)],
                        Target::CtZone(DNS_ZONE_CLIENT),
                    ),
                );
                if model.dns_loopback_resolver_zone && server.addr().is_loopback() {
                    raw.push(
                        DNS,
                        rule(
                            "DNS capture: replies of a loopback resolver to localhost are in the upstream zone",
                            vec![from(server), to(model.loopback(family)), udp()],
                            Target::CtZone(DNS_ZONE_UPSTREAM),
                        ),
                    );
                }
                raw.push(
                    INBOUND,
                    rule(
                        REPLIES,
                        vec![from(server), udp(), Match::SourcePort { port: DNS_PORT }],
                        Target::CtZone(DNS_ZONE_UPSTREAM),
                    ),
                );
            }
        }
    }
}

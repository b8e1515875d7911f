//! Outbound capture: TCP the pod sends goes to the proxy outbound port, except the proxy's
//! own traffic (by uid and gid), excluded ports and ranges, traffic to loopback, and sockets of
//! groups not captured; the proxy dialling the pod address is captured inbound instead.

use super::{dns, dport, jump, lo_out, not_to, proxy_owners, rule, tcp, to, TableBuilder};
use crate::annotations::Selector;
use crate::model::{
    OwnerGroups, RedirectModel, DNS_PORT, IN_REDIRECT, OUTBOUND, OUTPUT, PROXY_LOOPBACK_MARK,
    REDIRECT, TPROXY_MARK,
};
use crate::rules::{Family, Match, Proto, Target};

/// nat OUTPUT -> OUTBOUND -> REDIRECT, in Istio's order.
pub(super) fn nat(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    entry_bypasses(model, family, nat);
    dns::nat_entry(model, family, nat);
    nat.push(OUTPUT, rule("outbound capture", vec![], jump(OUTBOUND)));
    if model.proxy_hairpin {
        excluded_ports(model, nat);
        passthrough(model, family, nat);
        proxy_bypass(model, family, nat);
    } else {
        // Nothing the proxy sends and nothing over lo is captured.
        passthrough(model, family, nat);
        for (is_proxy, _, is_uid) in proxy_owners(model) {
            nat.push(
                OUTBOUND,
                rule(
                    if is_uid {
                        "proxy uid bypasses outbound capture"
                    } else {
                        "proxy gid bypasses outbound capture"
                    },
                    vec![is_proxy],
                    Target::Return,
                ),
            );
        }
        if !model.includes_loopback() {
            nat.push(
                OUTBOUND,
                rule(
                    "traffic over lo is not captured",
                    vec![lo_out()],
                    Target::Return,
                ),
            );
        }
        excluded_ports(model, nat);
    }
    owner_groups(model, nat);
    if let Some(jump_to_dns) = dns::nat_jump(model, family) {
        nat.push(OUTBOUND, jump_to_dns);
    }
    if model.proxy_hairpin {
        nat.push(
            OUTBOUND,
            rule(
                "traffic to loopback is not captured",
                vec![to(model.loopback(family))],
                Target::Return,
            ),
        );
    }
    for net in model
        .exclude_outbound_ranges
        .iter()
        .filter(|n| family.contains(n))
    {
        nat.push(
            OUTBOUND,
            rule(
                "excludeOutboundIPRanges: destination is not captured",
                vec![to(*net)],
                Target::Return,
            ),
        );
    }
    for port in &model.include_outbound_ports {
        nat.push(
            OUTBOUND,
            rule(
                "includeOutboundPorts: port is captured whatever the destination",
                vec![tcp(), dport(*port)],
                jump(REDIRECT),
            ),
        );
    }
    match &model.include_outbound_ranges {
        Selector::All => nat.push(
            OUTBOUND,
            rule("all other outbound TCP is captured", vec![], jump(REDIRECT)),
        ),
        Selector::Only(nets) => {
            for net in nets.iter().filter(|n| family.contains(n)) {
                nat.push(
                    OUTBOUND,
                    rule(
                        "includeOutboundIPRanges: destination is captured",
                        vec![to(*net)],
                        jump(REDIRECT),
                    ),
                );
            }
        }
    }
    nat.push(
        REDIRECT,
        rule(
            "to the proxy outbound port",
            vec![tcp()],
            Target::Redirect {
                port: model.ports.outbound,
            },
        ),
    );
}

/// nat OUTPUT, before the outbound chain: the uid/port exclusions, then the bypassed
/// destinations. Nothing after them (DNS capture included) sees their traffic.
fn entry_bypasses(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    for e in &model.owner_port_exclusions {
        let owner = match e.uids {
            (uid, last) if uid == last => Match::UidOwner { uid, negate: false },
            (first, last) => Match::UidOwnerRange { first, last },
        };
        for range in &e.ports {
            nat.push(
                OUTPUT,
                rule(
                    "excluded uid and port are not captured outbound",
                    vec![
                        Match::Protocol(e.proto),
                        super::port_range(*range),
                        owner.clone(),
                    ],
                    Target::Return,
                ),
            );
        }
    }
    for net in model
        .bypass_outbound_ranges
        .iter()
        .filter(|n| family.contains(n))
    {
        nat.push(
            OUTPUT,
            rule(
                "excluded destination is not captured outbound, DNS included",
                vec![to(*net)],
                Target::Return,
            ),
        );
    }
}

/// Excluded outbound ports (TCP, and UDP where the model says so) and port ranges (TCP).
fn excluded_ports(model: &RedirectModel, nat: &mut TableBuilder) {
    let protos: &[Proto] = if model.exclude_outbound_udp {
        &[Proto::Tcp, Proto::Udp]
    } else {
        &[Proto::Tcp]
    };
    for port in &model.exclude_outbound_ports {
        for proto in protos {
            nat.push(
                OUTBOUND,
                rule(
                    "excludeOutboundPorts: port is not captured outbound",
                    vec![Match::Protocol(*proto), dport(*port)],
                    Target::Return,
                ),
            );
        }
    }
    for range in &model.exclude_outbound_port_ranges {
        nat.push(
            OUTBOUND,
            rule(
                "excluded outbound port or range is not captured",
                vec![tcp(), super::port_range(*range)],
                Target::Return,
            ),
        );
    }
}

fn passthrough(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    if !model.inbound_passthrough {
        return;
    }
    nat.push(
        OUTBOUND,
        rule(
            "inbound passthrough from the proxy to the app is not captured",
            vec![
                Match::Source {
                    net: family.inbound_passthrough_source(),
                    negate: false,
                },
                lo_out(),
            ],
            Target::Return,
        ),
    );
}

/// Per proxy uid, then per gid: the proxy dialling the pod address over lo is captured
/// inbound; apps talking to themselves over lo are not captured; nothing else the proxy sends
/// is captured.
fn proxy_bypass(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    let dns = model.captures_dns() && model.dns_scope == crate::model::DnsScope::UdpAndTcp;
    for (is_proxy, is_not_proxy, is_uid) in proxy_owners(model) {
        // Istio skips port 53 here only in the uid rule; the gid rule keeps the tunnel alone.
        let mut skipped = Vec::new();
        if dns && is_uid {
            skipped.push(DNS_PORT);
        }
        skipped.extend(model.ports.tunnel);
        let mut hairpin = vec![not_to(model.loopback(family)), lo_out(), tcp()];
        if !skipped.is_empty() {
            hairpin.push(Match::DestPort {
                ports: skipped,
                negate: true,
            });
        }
        hairpin.push(is_proxy.clone());
        nat.push(
            OUTBOUND,
            rule(
                if is_uid {
                    "proxy uid dialling the pod address is captured inbound"
                } else {
                    "proxy gid dialling the pod address is captured inbound"
                },
                hairpin,
                jump(IN_REDIRECT),
            ),
        );
        if !model.includes_loopback() {
            let purpose = "an app talking to itself over lo is not captured";
            if dns {
                nat.push(
                    OUTBOUND,
                    rule(
                        "an app talking to itself over lo is not captured, but TCP DNS is",
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
                    ),
                );
            } else {
                nat.push(
                    OUTBOUND,
                    rule(purpose, vec![lo_out(), is_not_proxy], Target::Return),
                );
            }
        }
        nat.push(
            OUTBOUND,
            rule(
                if is_uid {
                    "proxy uid bypasses outbound capture"
                } else {
                    "proxy gid bypasses outbound capture"
                },
                vec![is_proxy],
                Target::Return,
            ),
        );
    }
}

/// Only sockets of the captured owner groups are captured (Istio's
/// `handleCaptureByOwnerGroup`): an include list is one rule returning every other group, an
/// exclude list one RETURN per group.
fn owner_groups(model: &RedirectModel, nat: &mut TableBuilder) {
    match &model.outbound_owner_groups {
        OwnerGroups::All => {}
        OwnerGroups::AllExcept(groups) => {
            for &gid in groups {
                nat.push(
                    OUTBOUND,
                    rule(
                        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: group is not captured",
                        vec![Match::GidOwner { gid, negate: false }],
                        Target::Return,
                    ),
                );
            }
        }
        OwnerGroups::Only(groups) => nat.push(
            OUTBOUND,
            rule(
                "ISTIO_OUTBOUND_OWNER_GROUPS: other groups are not captured",
                groups
                    .iter()
                    .map(|&gid| Match::GidOwner { gid, negate: true })
                    .collect(),
                Target::Return,
            ),
        ),
    }
}

/// mangle OUTPUT (TPROXY mode): the proxy's own connections to the pod address carry the
/// loopback mark, so they are captured inbound; replies of diverted connections get the
/// divert mark back, so policy routing keeps them local.
pub(super) fn tproxy_marks(
    model: &RedirectModel,
    family: Family,
    mangle: &mut super::TableBuilder,
) {
    let marked = |negate| Match::Mark {
        value: TPROXY_MARK,
        negate,
    };
    mangle.push(
        OUTPUT,
        rule(
            "TPROXY: packets already marked keep their mark",
            vec![lo_out(), tcp(), marked(false)],
            Target::Return,
        ),
    );
    for (is_proxy, _, is_uid) in proxy_owners(model) {
        mangle.push(
            OUTPUT,
            rule(
                if is_uid {
                    "TPROXY: proxy uid dialling the pod address is marked"
                } else {
                    "TPROXY: proxy gid dialling the pod address is marked"
                },
                vec![not_to(model.loopback(family)), lo_out(), tcp(), is_proxy],
                Target::SetMark(PROXY_LOOPBACK_MARK),
            ),
        );
    }
    mangle.push(
        OUTPUT,
        rule(
            "TPROXY: replies of diverted connections are routed locally",
            vec![tcp(), Match::ConnMark { value: TPROXY_MARK }],
            Target::RestoreMark,
        ),
    );
}

//! Inbound capture: TCP arriving at the pod goes to the proxy inbound port, by REDIRECT in
//! the nat table or by TPROXY in the mangle table (`sidecar.istio.io/interceptionMode`), except
//! the excluded ports; and the invalid-packet drop (`INVALID_DROP`).

use super::{dport, jump, lo_in, not_to, port_range, rule, tcp, TableBuilder};
use crate::annotations::Selector;
use crate::model::{
    RedirectModel, DIVERT, DROP, INBOUND, IN_REDIRECT, PREROUTING, PROXY_LOOPBACK_MARK, TPROXY,
    TPROXY_MARK,
};
use crate::rules::{Family, Match, Target};

const EXCLUDED: &str = "excludeInboundPorts: port is not captured inbound";

/// nat (REDIRECT mode): PREROUTING sends inbound TCP to INBOUND, which skips the tunnel and
/// excluded ports and redirects the rest (or only the included ports).
pub(super) fn redirect(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    if !model.captures_inbound() {
        return;
    }
    nat.push(
        PREROUTING,
        rule("inbound TCP capture", vec![tcp()], jump(INBOUND)),
    );
    if let Some(tunnel) = model.ports.tunnel {
        nat.push(
            INBOUND,
            rule(
                "tunnel port reaches the proxy directly",
                vec![tcp(), dport(tunnel)],
                Target::Return,
            ),
        );
    }
    match &model.include_inbound_ports {
        Selector::All => {
            for port in &model.exclude_inbound_ports {
                nat.push(
                    INBOUND,
                    rule(EXCLUDED, vec![tcp(), dport(*port)], Target::Return),
                );
            }
            nat.extend(INBOUND, exclusions(model, family));
            nat.push(
                INBOUND,
                rule(
                    "all other inbound TCP is captured",
                    vec![tcp()],
                    jump(IN_REDIRECT),
                ),
            );
        }
        Selector::Only(ports) => {
            nat.extend(INBOUND, exclusions(model, family));
            for port in ports {
                nat.push(
                    INBOUND,
                    rule(
                        "includeInboundPorts: port is captured inbound",
                        vec![tcp(), dport(*port)],
                        jump(IN_REDIRECT),
                    ),
                );
            }
        }
    }
}

/// Excluded inbound port ranges, then excluded sources: neither is captured inbound.
fn exclusions(model: &RedirectModel, family: Family) -> Vec<crate::rules::Rule> {
    let ranges = model.exclude_inbound_port_ranges.iter().map(|r| {
        rule(
            "excluded inbound port or range is not captured",
            vec![tcp(), port_range(*r)],
            Target::Return,
        )
    });
    let sources = model
        .exclude_inbound_sources
        .iter()
        .filter(|n| family.contains(n))
        .map(|net| {
            rule(
                "inbound traffic from an excluded source is not captured",
                vec![Match::Source {
                    net: *net,
                    negate: false,
                }],
                Target::Return,
            )
        });
    ranges.chain(sources).collect()
}

/// nat IN_REDIRECT: the inbound capture port. It exists in every mode, as Istio's does: the
/// proxy's hairpin to the pod's own address is captured inbound through it.
pub(super) fn redirect_target(model: &RedirectModel, nat: &mut TableBuilder) {
    nat.push(
        IN_REDIRECT,
        rule(
            "to the proxy inbound port",
            vec![tcp()],
            Target::Redirect {
                port: model.ports.inbound,
            },
        ),
    );
}

/// mangle PREROUTING: packets conntrack finds invalid (out of window) are dropped rather than
/// reaching the app, which would reset the connection.
pub(super) fn drop_invalid(mangle: &mut TableBuilder) {
    mangle.push(
        PREROUTING,
        rule(
            "INVALID_DROP: invalid packets are dropped",
            vec![Match::CtStateInvalid],
            super::jump(DROP),
        ),
    );
    mangle.push(
        DROP,
        rule(
            "INVALID_DROP: invalid packets are dropped",
            vec![],
            Target::Drop,
        ),
    );
}

fn marked(mark: u32, negate: bool) -> Match {
    Match::Mark {
        value: mark,
        negate,
    }
}

/// mangle (TPROXY mode): new inbound connections are TPROXYed to the inbound port with mark
/// 1337 (policy routing delivers them locally), established ones follow the mark, and the mark
/// is saved on the connection.
pub(super) fn tproxy(model: &RedirectModel, family: Family, mangle: &mut TableBuilder) {
    if model.captures_inbound() {
        mangle.push(
            PREROUTING,
            rule("inbound TCP capture (TPROXY)", vec![tcp()], jump(INBOUND)),
        );
    }
    mangle.push(
        PREROUTING,
        rule(
            "TPROXY: the divert mark is kept on the connection",
            vec![tcp(), marked(TPROXY_MARK, false)],
            Target::SaveMark,
        ),
    );
    if !model.captures_inbound() {
        return;
    }
    mangle.extend(
        DIVERT,
        [
            rule(
                "TPROXY: diverted packets are marked for local delivery",
                vec![],
                Target::SetMark(TPROXY_MARK),
            ),
            rule(
                "TPROXY: diverted packets are accepted",
                vec![],
                Target::Accept,
            ),
        ],
    );
    mangle.extend(
        INBOUND,
        [
            rule(
                "TPROXY: already diverted",
                vec![tcp(), marked(TPROXY_MARK, false)],
                Target::Return,
            ),
            rule(
                "inbound passthrough from the proxy to the app is not captured",
                vec![
                    Match::Source {
                        net: family.inbound_passthrough_source(),
                        negate: false,
                    },
                    lo_in(),
                    tcp(),
                ],
                Target::Return,
            ),
            // Only the proxy's own connections to the pod address carry the loopback mark.
            rule(
                "an app talking to its own pod address over lo is not captured",
                vec![lo_in(), tcp(), marked(PROXY_LOOPBACK_MARK, true)],
                Target::Return,
            ),
            // No tunnel-port RETURN here: Istio puts it only in the nat inbound chain, so
            // in TPROXY mode inbound 15008 is captured like any other port
            // (istio/istio cni/pkg/plugin/testdata/tproxy.txt.golden).
        ],
    );
    const ESTABLISHED: &str = "TPROXY: established inbound connections are delivered locally";
    const NEW: &str = "TPROXY: new inbound connections go to the proxy";
    match &model.include_inbound_ports {
        Selector::All => {
            for port in &model.exclude_inbound_ports {
                mangle.push(
                    INBOUND,
                    rule(EXCLUDED, vec![tcp(), dport(*port)], Target::Return),
                );
            }
            mangle.extend(INBOUND, exclusions(model, family));
            mangle.push(
                INBOUND,
                rule(
                    ESTABLISHED,
                    vec![tcp(), Match::CtStateRelatedEstablished],
                    jump(DIVERT),
                ),
            );
            mangle.push(INBOUND, rule(NEW, vec![tcp()], jump(TPROXY)));
        }
        Selector::Only(ports) => {
            mangle.extend(INBOUND, exclusions(model, family));
            for port in ports {
                mangle.push(
                    INBOUND,
                    rule(
                        ESTABLISHED,
                        vec![tcp(), dport(*port), Match::CtStateRelatedEstablished],
                        jump(DIVERT),
                    ),
                );
                mangle.push(INBOUND, rule(NEW, vec![tcp(), dport(*port)], jump(TPROXY)));
            }
        }
    }
    mangle.push(
        TPROXY,
        rule(
            "TPROXY: to the proxy inbound port",
            vec![not_to(model.loopback(family)), tcp()],
            Target::Tproxy {
                port: model.ports.inbound,
                mark: TPROXY_MARK,
            },
        ),
    );
}

//! Interfaces: excluded ones bypass capture in both directions (`excludeInterfaces`); traffic
//! arriving on a virtual interface (a KubeVirt VM's tap, `istio.io/reroute-virtual-interfaces`)
//! is the VM's outbound traffic and is captured as such.

use super::{jump, rule, to, TableBuilder};
use crate::annotations::Selector;
use crate::model::{RedirectModel, OUTPUT, PREROUTING, REDIRECT};
use crate::rules::{Family, Match, Target};

fn in_iface(name: &str) -> Match {
    Match::InInterface {
        name: name.to_owned(),
    }
}

fn out_iface(name: &str) -> Match {
    Match::OutInterface {
        name: name.to_owned(),
    }
}

/// nat PREROUTING: the VM's outbound traffic (to the included ranges) goes to the proxy's
/// outbound port; nothing else arriving on the interface is captured inbound.
pub(super) fn reroute_virtual(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    const CAPTURED: &str = "reroute-virtual-interfaces: outbound traffic of the VM is captured";
    for vif in &model.reroute_virtual_interfaces {
        match &model.include_outbound_ranges {
            Selector::All => nat.push(
                PREROUTING,
                rule(CAPTURED, vec![in_iface(vif)], jump(REDIRECT)),
            ),
            Selector::Only(nets) => {
                for net in nets.iter().filter(|n| family.contains(n)) {
                    nat.push(
                        PREROUTING,
                        rule(CAPTURED, vec![to(*net), in_iface(vif)], jump(REDIRECT)),
                    );
                }
            }
        }
    }
    for vif in &model.reroute_virtual_interfaces {
        nat.push(
            PREROUTING,
            rule(
                "reroute-virtual-interfaces: nothing else from the VM is captured",
                vec![in_iface(vif)],
                Target::Return,
            ),
        );
    }
}

const EXCLUDED: &str = "excludeInterfaces: traffic on this interface is not captured";

/// nat PREROUTING and OUTPUT: nothing through an excluded interface is captured.
pub(super) fn exclude_nat(model: &RedirectModel, nat: &mut TableBuilder) {
    for name in &model.exclude_interfaces {
        nat.push(
            PREROUTING,
            rule(EXCLUDED, vec![in_iface(name)], Target::Return),
        );
    }
    for name in &model.exclude_interfaces {
        nat.push(
            OUTPUT,
            rule(EXCLUDED, vec![out_iface(name)], Target::Return),
        );
    }
}

/// mangle PREROUTING and OUTPUT (TPROXY mode): the same for the TPROXY rules.
pub(super) fn exclude_mangle(model: &RedirectModel, mangle: &mut TableBuilder) {
    for name in &model.exclude_interfaces {
        mangle.push(
            PREROUTING,
            rule(EXCLUDED, vec![in_iface(name)], Target::Return),
        );
    }
    for name in &model.exclude_interfaces {
        mangle.push(
            OUTPUT,
            rule(EXCLUDED, vec![out_iface(name)], Target::Return),
        );
    }
}

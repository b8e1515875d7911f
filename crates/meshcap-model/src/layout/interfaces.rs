//! Interfaces: excluded ones bypass capture in both directions (`excludeInterfaces`); traffic
//! arriving on a virtual interface (a KubeVirt VM's tap, `istio.io/reroute-virtual-interfaces`)
//! is the VM's outbound traffic and is captured as such, and so is traffic leaving a virtual
//! network behind an interface (Kuma's `redirect.vnet.networks`).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{dport, jump, not_to, rule, tcp, to, udp, TableBuilder};
use crate::annotations::Selector;
use crate::model::{RedirectModel, DNS_PORT, OUTPUT, PREROUTING, REDIRECT};
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

/// nat PREROUTING: what leaves a virtual network behind an interface in the pod is the pod's
/// outbound traffic: its DNS goes to the proxy's DNS port (whether DNS capture is on or not, as
/// kuma-cni does), its TCP not addressed within the network to the outbound port. Interfaces
/// in name order, one network each per family (the last named), as kuma-cni writes them.
pub(super) fn virtual_networks(model: &RedirectModel, family: Family, nat: &mut TableBuilder) {
    let nets: BTreeMap<&str, IpNet> = model
        .virtual_networks
        .iter()
        .filter(|vn| family.contains(&vn.net))
        .map(|vn| (vn.interface.as_str(), vn.net.trunc()))
        .collect();
    for (interface, net) in nets {
        nat.push(
            PREROUTING,
            rule(
                "virtual network: its DNS goes to the proxy DNS port",
                vec![in_iface(interface), udp(), dport(DNS_PORT)],
                Target::Redirect {
                    port: model.ports.dns,
                },
            ),
        );
        nat.push(
            PREROUTING,
            rule(
                "virtual network: its TCP out of the network is captured outbound",
                vec![not_to(net), in_iface(interface), tcp()],
                Target::Redirect {
                    port: model.ports.outbound,
                },
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

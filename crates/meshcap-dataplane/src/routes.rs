//! TPROXY policy routing, over rtnetlink.
//!
//! TPROXY leaves the packet's destination alone, so the kernel would forward it instead of
//! delivering it to the proxy; marked packets therefore look up a table whose only route is
//! `local default dev lo` (Documentation/networking/tproxy.rst). Per family that means
//! `ip rule add fwmark 1337 lookup 133` and `ip route add local default dev lo table 133`.
//! For IPv6, Istio and Kuma also put `::6/128` on `lo`: their sidecar binds it as the source
//! of inbound passthrough connections (IPv4 needs nothing, `127.0.0.6` is in `127/8`); a
//! Linkerd pod gets no address, as linkerd-cni adds none.
//!
//! Everything is idempotent (look before adding, `NLM_F_EXCL`, tolerate `EEXIST`), and
//! [`sync`] records what it changed so that a failed apply can be undone.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};

use meshcap_model::rules::{Family, PolicyRoute, Ruleset};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::Rtnl;
use crate::sys::Routes;
use crate::DataplaneError;

/// The fixed TPROXY mark and routing table of docs/DESIGN.md: how meshcap's policy routing is found
/// when no ruleset says otherwise (remove, inspect).
pub use meshcap_model::model::{TPROXY_MARK, TPROXY_ROUTE_TABLE};

/// `lo` is always interface 1 in a network namespace (`LOOPBACK_IFINDEX`, net/core/dev.c).
const LOOPBACK_IFINDEX: u32 = 1;

/// The IPv6 inbound passthrough source (`::6`).
pub(crate) const PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// One piece of kernel state this module manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// `ip rule … fwmark MARK lookup TABLE`.
    Rule(PolicyRoute),
    /// `ip route add local default dev lo table TABLE`.
    Route(PolicyRoute),
    /// `::6/128` on `lo`.
    PassthroughV6,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cmd = |pr: &PolicyRoute| match pr.family {
            Family::V4 => "ip",
            Family::V6 => "ip -6",
        };
        match self {
            Item::Rule(pr) => write!(
                f,
                "{} rule fwmark {:#x} lookup {}",
                cmd(pr),
                pr.mark,
                pr.table
            ),
            Item::Route(pr) => write!(
                f,
                "{} route local default dev lo table {}",
                cmd(pr),
                pr.table
            ),
            Item::PassthroughV6 => write!(f, "ip -6 addr {PASSTHROUGH_V6}/128 dev lo"),
        }
    }
}

/// A change made by [`sync`], for undoing it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    Added(Item),
    Removed(Item),
}

/// What policy routing `rulesets` need, in the order to add it: route before rule, so that
/// a marked packet never looks up an empty table.
pub(crate) fn wanted(rulesets: &[Ruleset]) -> Vec<Item> {
    let mut items = Vec::new();
    for rs in rulesets {
        if let Some(pr) = rs.policy_route {
            items.push(Item::Route(pr));
            items.push(Item::Rule(pr));
        }
    }
    if rulesets
        .iter()
        .any(|r| r.family == Family::V6 && r.passthrough_source)
    {
        items.push(Item::PassthroughV6);
    }
    items
}

/// Everything of meshcap's that exists now: the rules, routes and address that `wanted`
/// could have produced with the fixed mark and table, plus those of `rulesets`.
pub(crate) fn present(
    rtnl: &mut dyn Routes,
    rulesets: &[Ruleset],
) -> Result<Vec<Item>, DataplaneError> {
    let mut candidates: Vec<Item> = Family::ALL
        .into_iter()
        .flat_map(|family| {
            let pr = PolicyRoute {
                family,
                mark: TPROXY_MARK,
                table: TPROXY_ROUTE_TABLE,
            };
            [Item::Route(pr), Item::Rule(pr)]
        })
        .collect();
    for item in wanted(rulesets).into_iter().chain([Item::PassthroughV6]) {
        if !candidates.contains(&item) {
            candidates.push(item);
        }
    }
    rtnl.present(&candidates)
}

/// Makes the namespace hold exactly `wanted(rulesets)`; on error undoes its own changes.
pub(crate) fn sync(
    rtnl: &mut dyn Routes,
    rulesets: &[Ruleset],
) -> Result<Vec<Change>, DataplaneError> {
    let wanted = wanted(rulesets);
    let present = present(rtnl, rulesets)?;
    let mut changes = Vec::new();
    // Stale items first (rule before route: never leave a rule pointing at an empty table).
    let mut stale: Vec<Item> = present
        .iter()
        .copied()
        .filter(|i| !wanted.contains(i))
        .collect();
    stale.sort_by_key(|i| match i {
        Item::Rule(_) => 0,
        Item::Route(_) => 1,
        Item::PassthroughV6 => 2,
    });
    let steps = stale.into_iter().map(|i| (i, false)).chain(
        wanted
            .iter()
            .filter(|i| !present.contains(i))
            .map(|&i| (i, true)),
    );
    for (item, add) in steps {
        let result = if add { rtnl.add(item) } else { rtnl.del(item) };
        match result {
            Ok(true) => changes.push(if add {
                Change::Added(item)
            } else {
                Change::Removed(item)
            }),
            Ok(false) => {}
            Err(original) => {
                return Err(match undo(rtnl, &changes) {
                    Ok(()) => original,
                    Err(rollback) => DataplaneError::RollbackFailed {
                        original: Box::new(original),
                        rollback: Box::new(rollback),
                    },
                })
            }
        }
    }
    Ok(changes)
}

/// Reverts `changes`, newest first.
pub(crate) fn undo(rtnl: &mut dyn Routes, changes: &[Change]) -> Result<(), DataplaneError> {
    for change in changes.iter().rev() {
        match *change {
            Change::Added(item) => rtnl.del(item)?,
            Change::Removed(item) => rtnl.add(item)?,
        };
    }
    Ok(())
}

/// Differences between `wanted(rulesets)` and the namespace.
pub(crate) fn check(
    rtnl: &mut dyn Routes,
    rulesets: &[Ruleset],
) -> Result<Vec<String>, DataplaneError> {
    let wanted = wanted(rulesets);
    let present = present(rtnl, rulesets)?;
    let mut details = Vec::new();
    for item in &wanted {
        if !present.contains(item) {
            details.push(format!("missing: {item}"));
        }
    }
    for item in &present {
        // An unexpected ::6 is harmless and may be someone else's; rules and routes are not.
        if !wanted.contains(item) && *item != Item::PassthroughV6 {
            details.push(format!("unexpected: {item}"));
        }
    }
    Ok(details)
}

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn rule_message(pr: PolicyRoute) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(pr.family);
    msg.header.action = RuleAction::ToTable;
    // The header's table byte cannot hold tables above 255; FRA_TABLE always can.
    msg.header.table = u8::try_from(pr.table).unwrap_or(0);
    msg.attributes = vec![
        RuleAttribute::FwMark(pr.mark),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(pr.table),
    ];
    msg
}

fn route_message(pr: PolicyRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(pr.family);
    msg.header.destination_prefix_length = 0;
    msg.header.table = u8::try_from(pr.table).unwrap_or(0);
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes = vec![
        RouteAttribute::Table(pr.table),
        RouteAttribute::Oif(LOOPBACK_IFINDEX),
    ];
    msg
}

fn address_message() -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = 128;
    msg.header.index = LOOPBACK_IFINDEX;
    msg.attributes = vec![
        AddressAttribute::Local(IpAddr::V6(PASSTHROUGH_V6)),
        AddressAttribute::Address(IpAddr::V6(PASSTHROUGH_V6)),
    ];
    msg
}

fn rule_matches(msg: &RuleMessage, pr: PolicyRoute) -> bool {
    let mut mark = None;
    let mut mask = u32::MAX;
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = *m,
            RuleAttribute::Table(t) => table = *t,
            // A rule with further selectors is not the one meshcap adds.
            RuleAttribute::Source(_)
            | RuleAttribute::Destination(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_) => return false,
            _ => {}
        }
    }
    msg.header.family == address_family(pr.family)
        && msg.header.action == RuleAction::ToTable
        && mark == Some(pr.mark)
        && mask == u32::MAX
        && table == pr.table
}

fn route_matches(msg: &RouteMessage, pr: PolicyRoute) -> bool {
    let mut table = u32::from(msg.header.table);
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    msg.header.address_family == address_family(pr.family)
        && msg.header.kind == RouteType::Local
        && msg.header.destination_prefix_length == 0
        && table == pr.table
        && oif == Some(LOOPBACK_IFINDEX)
}

fn address_matches(msg: &AddressMessage) -> bool {
    msg.header.family == AddressFamily::Inet6
        && msg.header.index == LOOPBACK_IFINDEX
        && msg.header.prefix_len == 128
        && msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(IpAddr::V6(ip)) | AddressAttribute::Local(IpAddr::V6(ip)) if *ip == PASSTHROUGH_V6)
        })
}

/// What one dump lists: every family's rules or routes (`AF_UNSPEC`, which the kernel answers
/// by walking each family in turn), or the IPv6 addresses.
enum Listing {
    Rules,
    Routes,
    AddressesV6,
}

/// The kernel's objects of one [`Listing`].
fn list(rtnl: &mut Rtnl, listing: Listing) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
    let (request, what) = match listing {
        Listing::Rules => (
            RouteNetlinkMessage::GetRule(RuleMessage::default()),
            "list rules",
        ),
        Listing::Routes => (
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            "list routes",
        ),
        Listing::AddressesV6 => {
            let mut msg = AddressMessage::default();
            msg.header.family = AddressFamily::Inet6;
            (RouteNetlinkMessage::GetAddress(msg), "list IPv6 addresses")
        }
    };
    match rtnl.dump(request) {
        Ok(answers) => Ok(answers),
        // No IPv6 in this namespace (ipv6.disable=1): nothing of that family can exist.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(Vec::new()),
        Err(e) => Err(rtnl.error(what.to_owned(), e)),
    }
}

impl Routes for Rtnl {
    fn present(&mut self, candidates: &[Item]) -> Result<Vec<Item>, DataplaneError> {
        present_in_kernel(self, candidates)
    }

    fn add(&mut self, item: Item) -> Result<bool, DataplaneError> {
        add(self, item)
    }

    fn del(&mut self, item: Item) -> Result<bool, DataplaneError> {
        del(self, item)
    }

    fn ipv6_addresses(&mut self) -> Result<Vec<Ipv6Addr>, DataplaneError> {
        let mut out = Vec::new();
        for msg in list(self, Listing::AddressesV6)? {
            let RouteNetlinkMessage::NewAddress(a) = msg else {
                continue;
            };
            // IFA_ADDRESS is the address itself (IFA_LOCAL only differs on point-to-point).
            out.extend(a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            }));
        }
        Ok(out)
    }
}

/// One dump per kind of item among `candidates`, each covering both families: at most three
/// round trips, however many families and items are asked about.
fn present_in_kernel(rtnl: &mut Rtnl, candidates: &[Item]) -> Result<Vec<Item>, DataplaneError> {
    let mut rules: Option<Vec<RouteNetlinkMessage>> = None;
    let (mut routes, mut addresses) = (None, None);
    let mut found = Vec::new();
    for &item in candidates {
        let (listed, listing) = match item {
            Item::Rule(_) => (&mut rules, Listing::Rules),
            Item::Route(_) => (&mut routes, Listing::Routes),
            Item::PassthroughV6 => (&mut addresses, Listing::AddressesV6),
        };
        let answers = match listed {
            Some(answers) => answers,
            None => listed.insert(list(rtnl, listing)?),
        };
        if answers.iter().any(|m| matches(item, m)) {
            found.push(item);
        }
    }
    Ok(found)
}

/// Whether the kernel's object `msg` is `item`.
fn matches(item: Item, msg: &RouteNetlinkMessage) -> bool {
    match (item, msg) {
        (Item::Rule(pr), RouteNetlinkMessage::NewRule(r)) => rule_matches(r, pr),
        (Item::Route(pr), RouteNetlinkMessage::NewRoute(r)) => route_matches(r, pr),
        (Item::PassthroughV6, RouteNetlinkMessage::NewAddress(a)) => address_matches(a),
        _ => false,
    }
}

/// Adds `item`; `Ok(false)` when it was already there.
fn add(rtnl: &mut Rtnl, item: Item) -> Result<bool, DataplaneError> {
    let msg = match item {
        Item::Rule(pr) => RouteNetlinkMessage::NewRule(rule_message(pr)),
        Item::Route(pr) => RouteNetlinkMessage::NewRoute(route_message(pr)),
        Item::PassthroughV6 => RouteNetlinkMessage::NewAddress(address_message()),
    };
    match rtnl.change(msg, NLM_F_CREATE | NLM_F_EXCL) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(rtnl.error(format!("add {item}"), e)),
    }
}

/// Deletes `item`; `Ok(false)` when it was not there.
fn del(rtnl: &mut Rtnl, item: Item) -> Result<bool, DataplaneError> {
    let msg = match item {
        Item::Rule(pr) => RouteNetlinkMessage::DelRule(rule_message(pr)),
        Item::Route(pr) => RouteNetlinkMessage::DelRoute(route_message(pr)),
        Item::PassthroughV6 => RouteNetlinkMessage::DelAddress(address_message()),
    };
    match rtnl.change(msg, 0) {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(e) => Err(rtnl.error(format!("delete {item}"), e)),
    }
}

/// The errnos the kernel uses for "no such rule/route/address".
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
    )
}

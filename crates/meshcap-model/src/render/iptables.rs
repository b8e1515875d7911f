//! `iptables-restore` rendering, and reading meshcap's part back from `iptables-save`.
//!
//! Lines are printed in the canonical form `iptables-save` prints them (`-s`, `-d`, `-i`,
//! `-o`, `-p` first, implicit `-m tcp`, `--set-xmark`, hex marks), so that what meshcap wrote
//! and what it reads back compare line for line: that is how CHECK detects drift and how a
//! retried ADD knows what to replace.
//!
//! Everything meshcap installs is recognisable by name: its chains start with `MESHCAP_`, and
//! the only rules it puts into built-in chains are jumps into those chains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use crate::rules::{
    format_marker, parse_format_marker, Family, Match, Rule, Ruleset, Table, Target, CHAIN_PREFIX,
};

/// meshcap's part of one netfilter table, as canonical `iptables-save` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledTable {
    /// meshcap's chains, by name.
    pub chains: BTreeSet<String>,
    /// `-A PREROUTING -j MESHCAP_PREROUTING`-style jumps from built-in chains, in order.
    pub jumps: Vec<String>,
    /// `-A MESHCAP_...` rule lines per chain, in order.
    pub rules: BTreeMap<String, Vec<String>>,
}

/// meshcap's part of one family's `iptables-save` output, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub tables: BTreeMap<Table, InstalledTable>,
}

fn table_from_name(name: &str) -> Option<Table> {
    match name {
        "raw" => Some(Table::Raw),
        "mangle" => Some(Table::Mangle),
        "nat" => Some(Table::Nat),
        _ => None,
    }
}

impl Installed {
    /// Extract meshcap's chains, jumps and rules from `iptables-save` output. Other content is
    /// ignored; tables meshcap never uses (filter, security) are skipped.
    pub fn parse_save(text: &str) -> Installed {
        let mut installed = Installed::default();
        let mut current: Option<Table> = None;
        for line in text.lines().map(str::trim_end) {
            if let Some(name) = line.strip_prefix('*') {
                current = table_from_name(name.trim());
                continue;
            }
            let Some(table) = current else { continue };
            if line == "COMMIT" {
                current = None;
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    let t = installed.tables.entry(table).or_default();
                    t.chains.insert(name.to_owned());
                    t.rules.entry(name.to_owned()).or_default();
                }
                continue;
            }
            let Some(rest) = line.strip_prefix("-A ") else {
                continue;
            };
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(CHAIN_PREFIX) {
                installed
                    .tables
                    .entry(table)
                    .or_default()
                    .rules
                    .entry(chain.to_owned())
                    .or_default()
                    .push(line.to_owned());
            } else if jump_target(line).is_some_and(|t| t.starts_with(CHAIN_PREFIX)) {
                installed
                    .tables
                    .entry(table)
                    .or_default()
                    .jumps
                    .push(line.to_owned());
            }
        }
        installed.tables.retain(|_, t| !t.is_empty());
        installed
    }

    /// What `ruleset` installs, in canonical form.
    pub fn from_ruleset(ruleset: &Ruleset) -> Installed {
        let mut installed = Installed::default();
        for table in &ruleset.tables {
            let mut t = InstalledTable::default();
            for chain in &table.chains {
                t.chains.insert(chain.name.clone());
                if let Some(hook) = chain.hook {
                    t.jumps.push(jump_line(hook.builtin_chain(), &chain.name));
                }
                t.rules.insert(
                    chain.name.clone(),
                    chain
                        .rules
                        .iter()
                        .map(|r| rule_line(&chain.name, r, ruleset.family))
                        .collect(),
                );
            }
            installed.tables.insert(table.table, t);
        }
        installed
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(InstalledTable::is_empty)
    }

    /// The rules format ([`crate::rules::RULES_FORMAT`]) of meshcap's state here, read from the marker on
    /// its jumps: `None` when meshcap has nothing here, 1 for the first release's unmarked
    /// jumps (or chains without a jump), the lowest when jumps disagree.
    pub fn format(&self) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        let marked = self.tables.values().flat_map(|t| &t.jumps).map(|j| {
            saved_comment(j)
                .and_then(|c| parse_format_marker(&c))
                .unwrap_or(1)
        });
        Some(marked.min().unwrap_or(1))
    }
}

/// The jump from built-in chain `from` into meshcap's entry chain `to`, with the rules
/// format's marker, as `iptables-save` prints it.
fn jump_line(from: &str, to: &str) -> String {
    let mut line = format!("-A {from} -m comment --comment ");
    push_saved_string(&mut line, &format_marker());
    let _ = write!(line, " -j {to}");
    line
}

/// The text of a saved rule line's `--comment` (unquoted and unescaped as libxtables quotes
/// it, see [`push_saved_string`]).
fn saved_comment(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" --comment ")?;
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest.split_whitespace().next().map(str::to_owned);
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

impl InstalledTable {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty() && self.rules.values().all(Vec::is_empty)
    }
}

/// The `-j` target of a rule line, if any.
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "--jump" {
            return words.next();
        }
    }
    None
}

/// [`transition`] as it is fed to iptables-restore: the same rules, with owner ranges spelt
/// `A:B` (`0:4294967294`). iptables' owner match first looks each `--uid-owner`/`--gid-owner`
/// argument up as a user or group name (getpwnam/getgrnam) and only then parses it as ids;
/// `0-4294967294` is a valid name to NSS modules such as systemd's, which then probe userdb
/// directories and sockets (about 200 system calls per restore on a systemd host), while no
/// name can hold `:`. The kernel gets the same range, and iptables-save prints it with `-`.
pub fn restore_input(from: &Installed, to: &Installed) -> Option<String> {
    transition(from, to).map(|text| owner_ranges_with_colons(&text))
}

fn owner_ranges_with_colons(text: &str) -> String {
    const OWNER: &str = "-owner ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OWNER) {
        let (head, tail) = rest.split_at(at + OWNER.len());
        out.push_str(head);
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let (word, after) = tail.split_at(end);
        let ids = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match word.split_once('-') {
            Some((first, last)) if ids(first) && ids(last) => {
                out.push_str(first);
                out.push(':');
                out.push_str(last);
            }
            _ => out.push_str(word),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `iptables-restore --noflush` input that moves a namespace's meshcap state from `from` to
/// `to`, one transaction per table; `None` when they are already the same.
///
/// Declaring a user chain (`:MESHCAP_X - [0:0]`) under `--noflush` creates it or flushes it;
/// stale jumps are deleted by their exact saved spec; chains `to` no longer has are deleted last.
/// So a retried ADD ends with exactly one copy of everything, and an empty `to` removes all.
pub fn transition(from: &Installed, to: &Installed) -> Option<String> {
    if from == to {
        return None;
    }
    let empty = InstalledTable::default();
    let tables: BTreeSet<Table> = from
        .tables
        .keys()
        .chain(to.tables.keys())
        .copied()
        .collect();
    let mut out = String::new();
    for table in tables {
        let old = from.tables.get(&table).unwrap_or(&empty);
        let new = to.tables.get(&table).unwrap_or(&empty);
        if old == new {
            continue;
        }
        let _ = writeln!(out, "*{}", table.name());
        // Declaring a chain that exists flushes it: do that for every chain involved, so stale
        // rules vanish and chains to delete are empty (and no longer reference each other).
        for chain in old.chains.union(&new.chains) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for jump in &old.jumps {
            let _ = writeln!(out, "-D{}", &jump[2..]);
        }
        for jump in &new.jumps {
            let _ = writeln!(out, "{jump}");
        }
        for chain in &new.chains {
            for line in new.rules.get(chain).into_iter().flatten() {
                let _ = writeln!(out, "{line}");
            }
        }
        for chain in old.chains.difference(&new.chains) {
            let _ = writeln!(out, "-X {chain}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    (!out.is_empty()).then_some(out)
}

/// Full `iptables-restore --noflush` input for a namespace where meshcap has nothing yet:
/// what `meshcap render` prints.
pub fn render(ruleset: &Ruleset) -> String {
    transition(&Installed::default(), &Installed::from_ruleset(ruleset)).unwrap_or_default()
}

/// Human-readable differences between what should be installed and what is; empty when equal.
pub fn drift(expected: &Installed, actual: &Installed) -> Vec<String> {
    let empty = InstalledTable::default();
    let tables: BTreeSet<Table> = expected
        .tables
        .keys()
        .chain(actual.tables.keys())
        .copied()
        .collect();
    let mut out = Vec::new();
    if let (Some(want), Some(have)) = (expected.format(), actual.format()) {
        if want != have {
            out.push(format!(
                "rules of format {have} are installed, this release installs format {want}"
            ));
        }
    }
    for table in tables {
        let want = expected.tables.get(&table).unwrap_or(&empty);
        let have = actual.tables.get(&table).unwrap_or(&empty);
        let t = table.name();
        for chain in want.chains.difference(&have.chains) {
            out.push(format!("{t}: chain {chain} is missing"));
        }
        for chain in have.chains.difference(&want.chains) {
            out.push(format!("{t}: unexpected chain {chain}"));
        }
        for jump in &want.jumps {
            match have.jumps.iter().filter(|j| *j == jump).count() {
                0 => out.push(format!("{t}: jump missing: {jump}")),
                1 => {}
                n => out.push(format!("{t}: jump present {n} times: {jump}")),
            }
        }
        for jump in have.jumps.iter().filter(|j| !want.jumps.contains(j)) {
            out.push(format!("{t}: unexpected jump: {jump}"));
        }
        for chain in want.chains.intersection(&have.chains) {
            let w = want.rules.get(chain).map(Vec::as_slice).unwrap_or_default();
            let h = have.rules.get(chain).map(Vec::as_slice).unwrap_or_default();
            if w != h {
                let first = w.iter().zip(h).position(|(a, b)| a != b);
                let detail = match first {
                    Some(i) => format!("rule {} is {:?}, expected {:?}", i + 1, h[i], w[i]),
                    None if h.len() < w.len() => format!("missing rule {:?}", w[h.len()]),
                    None => format!("extra rule {:?}", h[w.len()]),
                };
                out.push(format!(
                    "{t}: chain {chain} has {} rules, expected {}: {detail}",
                    h.len(),
                    w.len()
                ));
            }
        }
    }
    out
}

fn net(n: &IpNet) -> String {
    // iptables-save always prints the prefix length.
    format!("{}/{}", n.network(), n.prefix_len())
}

/// Every valid uid or gid (4294967295 is the kernel's "no id"): an owner range that holds
/// exactly when the packet's socket has an owner.
const ANY_ID: &str = "0-4294967294";

fn bang(negate: bool) -> &'static str {
    if negate {
        "! "
    } else {
        ""
    }
}

/// A string argument as `iptables-save` prints it (`xtables_save_string` in libxtables): bare
/// when it is only letters, digits, `_` and `-`, otherwise in double quotes with `"`, `\` and
/// `'` escaped by a backslash.
fn push_saved_string(line: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            line.push('\\');
        }
        line.push(c);
    }
    line.push('"');
}

/// One rule as `iptables-save` prints it: `-A CHAIN [-s][-d][-i][-o][-p] [-m ...]
/// [-m comment --comment PURPOSE] -j TARGET`.
pub fn rule_line(chain: &str, rule: &Rule, family: Family) -> String {
    let mut line = format!("-A {chain}");
    // iptables-save prints the "ipt_entry" fields first, in this order, whatever order they
    // were given in; module matches follow in the order given.
    for m in &rule.matches {
        if let Match::Source { net: n, negate } = m {
            let _ = write!(line, " {}-s {}", bang(*negate), net(n));
        }
    }
    for m in &rule.matches {
        if let Match::Destination { net: n, negate } = m {
            let _ = write!(line, " {}-d {}", bang(*negate), net(n));
        }
    }
    for m in &rule.matches {
        if let Match::InInterface { name } = m {
            let _ = write!(line, " -i {name}");
        }
    }
    for m in &rule.matches {
        if let Match::OutInterface { name } = m {
            let _ = write!(line, " -o {name}");
        }
    }
    let proto = rule.matches.iter().find_map(|m| match m {
        Match::Protocol(p) => Some(*p),
        _ => None,
    });
    if let Some(p) = proto {
        let _ = write!(line, " -p {}", p.name());
    }
    for m in &rule.matches {
        match m {
            Match::DestPort { ports, negate } => {
                let p = proto.map(|p| p.name()).unwrap_or("tcp");
                if ports.len() == 1 {
                    let _ = write!(line, " -m {p} {}--dport {}", bang(*negate), ports[0]);
                } else {
                    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                    let _ = write!(
                        line,
                        " -m multiport {}--dports {}",
                        bang(*negate),
                        list.join(",")
                    );
                }
            }
            Match::DestPortRange { first, last } => {
                let p = proto.map(|p| p.name()).unwrap_or("tcp");
                let _ = write!(line, " -m {p} --dport {first}:{last}");
            }
            Match::SourcePort { port } => {
                let p = proto.map(|p| p.name()).unwrap_or("tcp");
                let _ = write!(line, " -m {p} --sport {port}");
            }
            // A negated owner match first requires an owner, a socket with a file
            // (`--uid-owner 0-4294967294` fails without one), as nftables' `meta skuid != X`
            // does: alone, `! --uid-owner X` matches packets the kernel sends without a
            // socket or from its own sockets (RSTs, ICMP errors), so the backends would treat
            // them differently.
            Match::UidOwner { uid, negate } => {
                if *negate {
                    let _ = write!(
                        line,
                        " -m owner --uid-owner {ANY_ID} -m owner ! --uid-owner {uid}"
                    );
                } else {
                    let _ = write!(line, " -m owner --uid-owner {uid}");
                }
            }
            Match::UidOwnerRange { first, last } => {
                let _ = write!(line, " -m owner --uid-owner {first}-{last}");
            }
            Match::GidOwner { gid, negate } => {
                if *negate {
                    let _ = write!(
                        line,
                        " -m owner --gid-owner {ANY_ID} -m owner ! --gid-owner {gid}"
                    );
                } else {
                    let _ = write!(line, " -m owner --gid-owner {gid}");
                }
            }
            Match::Mark { value, negate } => {
                let _ = write!(line, " -m mark {}--mark {value:#x}", bang(*negate));
            }
            Match::ConnMark { value } => {
                let _ = write!(line, " -m connmark --mark {value:#x}");
            }
            Match::CtStateRelatedEstablished => {
                line.push_str(" -m conntrack --ctstate RELATED,ESTABLISHED");
            }
            Match::CtStateInvalid => line.push_str(" -m conntrack --ctstate INVALID"),
            Match::Protocol(_)
            | Match::Source { .. }
            | Match::Destination { .. }
            | Match::InInterface { .. }
            | Match::OutInterface { .. } => {}
        }
    }
    if !rule.purpose.is_empty() {
        // Last of the matches, where iptables-save prints it when it was given last.
        line.push_str(" -m comment --comment ");
        push_saved_string(&mut line, rule.purpose);
    }
    line.push_str(" -j ");
    match &rule.target {
        Target::Jump(to) => line.push_str(to),
        Target::Return => line.push_str("RETURN"),
        Target::Accept => line.push_str("ACCEPT"),
        Target::Drop => line.push_str("DROP"),
        Target::Redirect { port } => {
            let _ = write!(line, "REDIRECT --to-ports {port}");
        }
        Target::Tproxy { port, mark } => {
            let any = match family {
                Family::V4 => "0.0.0.0",
                Family::V6 => "::",
            };
            let _ = write!(
                line,
                "TPROXY --on-port {port} --on-ip {any} --tproxy-mark {mark:#x}/0xffffffff"
            );
        }
        Target::SetMark(mark) => {
            let _ = write!(line, "MARK --set-xmark {mark:#x}/0xffffffff");
        }
        Target::SaveMark => {
            line.push_str("CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff")
        }
        Target::RestoreMark => {
            line.push_str("CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff")
        }
        Target::CtZone(zone) => {
            let _ = write!(line, "CT --zone {zone}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RedirectModel;
    use crate::rules::RULES_FORMAT;
    use crate::Annotations;

    fn default_v4() -> Ruleset {
        RedirectModel::default().ruleset(Family::V4)
    }

    /// For a namespace that had nothing, restore text reads like iptables-save output.
    fn as_save(restore: &str) -> String {
        restore.to_owned()
    }

    const MARKED: &str = "-m comment --comment \"meshcap rules format 2\"";

    #[test]
    fn jumps_carry_the_rules_format() {
        let want = Installed::from_ruleset(&default_v4());
        assert_eq!(
            want.tables[&Table::Nat].jumps,
            vec![
                format!("-A PREROUTING {MARKED} -j MESHCAP_PREROUTING"),
                format!("-A OUTPUT {MARKED} -j MESHCAP_OUTPUT"),
            ]
        );
        assert_eq!(want.format(), Some(RULES_FORMAT));
        assert_eq!(Installed::default().format(), None);
        // Nothing installed is not "another format": it is missing rules.
        let gone = drift(&want, &Installed::default());
        assert!(!gone.iter().any(|l| l.starts_with("rules of")), "{gone:?}");
    }

    /// The first release's rules (the fixture of its ADD) have unmarked jumps: format 1, which
    /// CHECK names before the rule differences, and which a transition replaces in place.
    #[test]
    fn the_first_release_rules_read_as_format_1() {
        let old = Installed::parse_save(include_str!(
            "../../../meshcap/tests/fixtures/previous-format/iptables.v4.rules"
        ));
        assert_eq!(old.format(), Some(1));
        let want = Installed::from_ruleset(&default_v4());
        let d = drift(&want, &old);
        assert_eq!(
            d[0], "rules of format 1 are installed, this release installs format 2",
            "{d:?}"
        );
        let text = transition(&old, &want).unwrap();
        assert!(
            text.contains("-D PREROUTING -j MESHCAP_PREROUTING\n-D OUTPUT -j MESHCAP_OUTPUT\n"),
            "{text}"
        );
        assert_eq!(
            saved_comment("-A OUTPUT -m comment --comment \"a \\\"b\\\" c\" -j X").as_deref(),
            Some("a \"b\" c")
        );
        assert_eq!(
            saved_comment("-A OUTPUT -m comment --comment plain -j X").as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn parse_save_finds_only_meshcap_parts() {
        let save = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MESHCAP_SOMETHING
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:MESHCAP_OUTPUT - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j MESHCAP_OUTPUT
-A OUTPUT -p tcp -j KUBE-SERVICES
-A MESHCAP_OUTPUT -j RETURN
COMMIT
";
        let installed = Installed::parse_save(save);
        assert_eq!(installed.tables.len(), 1, "filter is not a meshcap table");
        let nat = &installed.tables[&Table::Nat];
        assert_eq!(nat.jumps, vec!["-A OUTPUT -j MESHCAP_OUTPUT".to_string()]);
        assert_eq!(
            nat.rules["MESHCAP_OUTPUT"],
            vec!["-A MESHCAP_OUTPUT -j RETURN".to_string()]
        );
        assert!(nat.chains.contains("MESHCAP_OUTPUT"));
    }

    #[test]
    fn rendered_text_reads_back_as_the_ruleset() {
        let rs = default_v4();
        let text = render(&rs);
        assert_eq!(
            Installed::parse_save(&as_save(&text)),
            Installed::from_ruleset(&rs)
        );
    }

    #[test]
    fn restore_input_spells_the_owner_range_with_a_colon_and_changes_nothing_else() {
        let want = Installed::from_ruleset(&default_v4());
        let text = transition(&Installed::default(), &want).unwrap();
        let input = restore_input(&Installed::default(), &want).unwrap();
        assert!(text.contains("--uid-owner 0-4294967294 -m owner ! --uid-owner 1337"));
        assert!(text.contains("--gid-owner 0-4294967294 -m owner ! --gid-owner 1337"));
        assert!(!input.contains("0-4294967294"));
        assert_eq!(input.replace("0:4294967294", "0-4294967294"), text);
    }

    #[test]
    fn every_owner_range_and_only_ranges_get_the_colon() {
        let text = "-A O -m owner --uid-owner 1000-2000 -j RETURN\n\
                    -A O -m owner --gid-owner 7 -m comment --comment \"a-b\" -j RETURN\n\
                    -A O -m owner --uid-owner 4-5\n";
        assert_eq!(
            owner_ranges_with_colons(text),
            "-A O -m owner --uid-owner 1000:2000 -j RETURN\n\
             -A O -m owner --gid-owner 7 -m comment --comment \"a-b\" -j RETURN\n\
             -A O -m owner --uid-owner 4:5\n"
        );
    }

    #[test]
    fn transition_to_the_same_state_is_nothing() {
        let want = Installed::from_ruleset(&default_v4());
        assert_eq!(transition(&want, &want), None);
        assert_eq!(restore_input(&want, &want), None);
        assert_eq!(
            transition(&Installed::default(), &Installed::default()),
            None
        );
    }

    #[test]
    fn transition_replaces_jumps_and_deletes_stale_chains() {
        let dns: Annotations = [(
            crate::annotations::PROXY_CONFIG.to_owned(),
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}".to_owned(),
        )]
        .into_iter()
        .collect();
        let with_dns = Installed::from_ruleset(
            &RedirectModel::from_annotations(&dns)
                .unwrap()
                .ruleset(Family::V4),
        );
        let plain = Installed::from_ruleset(&default_v4());
        let text = transition(&with_dns, &plain).unwrap();
        // The old jumps are deleted by spec before the new ones are added: one copy each.
        assert!(
            text.contains(&format!(
                "-D PREROUTING {m} -j MESHCAP_PREROUTING\n-D OUTPUT {m} -j MESHCAP_OUTPUT\n-A PREROUTING",
                m = MARKED
            )),
            "{text}"
        );
        assert!(text.contains("-X MESHCAP_DNS"), "{text}");
        // raw only held DNS capture: it is emptied and its chains deleted.
        assert!(text.contains("*raw\n:MESHCAP_DNS - [0:0]"), "{text}");
        assert!(
            text.contains(&format!(
                "-D OUTPUT {MARKED} -j MESHCAP_OUTPUT\n-X MESHCAP_DNS\n-X MESHCAP_INBOUND"
            )),
            "{text}"
        );
        let removal = transition(&plain, &Installed::default()).unwrap();
        assert!(!removal.contains("-A "), "{removal}");
        assert!(removal.contains("-X MESHCAP_OUTBOUND"), "{removal}");
    }

    #[test]
    fn drift_names_what_changed() {
        let want = Installed::from_ruleset(&default_v4());
        assert!(drift(&want, &want).is_empty());
        let mut have = want.clone();
        let nat = have.tables.get_mut(&Table::Nat).unwrap();
        nat.rules.get_mut("MESHCAP_OUTBOUND").unwrap().pop();
        let output_jump = nat.jumps.last().unwrap().clone();
        nat.jumps.push(output_jump);
        let d = drift(&want, &have);
        assert!(d.iter().any(|l| l.contains("present 2 times")), "{d:?}");
        assert!(
            d.iter().any(|l| l.contains("MESHCAP_OUTBOUND has")),
            "{d:?}"
        );
        let gone = drift(&want, &Installed::default());
        assert!(
            gone.iter()
                .any(|l| l.contains("chain MESHCAP_REDIRECT is missing")),
            "{gone:?}"
        );
    }
}

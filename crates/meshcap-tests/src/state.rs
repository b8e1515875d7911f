//! Snapshots of a namespace's netfilter and policy-routing state, to prove what meshcap left
//! behind: rules after ADD (exactly one copy), nothing after DEL, nothing after a failed ADD.
//!
//! A snapshot holds the normalized output of `iptables-save`/`ip6tables-save` in both xtables
//! flavours, `nft list ruleset`, `ip rule` and the TPROXY route table (133) for both families.

use std::fmt;

use anyhow::Result;

use crate::netns::Netns;

/// The commands a snapshot runs, in order.
pub const COMMANDS: &[&[&str]] = &[
    &["iptables-nft-save"],
    &["ip6tables-nft-save"],
    &["iptables-legacy-save"],
    &["ip6tables-legacy-save"],
    &["nft", "list", "ruleset"],
    &["ip", "-4", "rule", "show"],
    &["ip", "-6", "rule", "show"],
    &["ip", "-4", "route", "show", "table", "133"],
    &["ip", "-6", "route", "show", "table", "133"],
];

/// One namespace's state: `(command, normalized output)` per [`COMMANDS`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetfilterState {
    pub sections: Vec<(String, String)>,
}

impl NetfilterState {
    /// Run [`COMMANDS`] inside `ns`. A command that fails (missing binary, absent route table)
    /// contributes an empty section.
    pub fn capture(ns: &Netns) -> Result<NetfilterState> {
        let mut sections = Vec::new();
        for cmd in COMMANDS {
            let out = ns.exec(cmd[0], &cmd[1..]).unwrap_or_default();
            sections.push((cmd.join(" "), normalize(&out)));
        }
        Ok(NetfilterState { sections })
    }

    /// Lines that name something of meshcap's: `MESHCAP_*` chains, `meshcap` nftables tables,
    /// the TPROXY ip rule (`lookup 133`) and any route in table 133.
    pub fn meshcap_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (cmd, text) in &self.sections {
            for line in text.lines() {
                let hit = line.contains("MESHCAP")
                    || line.contains("table ip meshcap")
                    || line.contains("table ip6 meshcap")
                    || line.contains("table inet meshcap")
                    || line.contains("lookup 133")
                    || (cmd.contains("table 133") && !line.trim().is_empty());
                if hit {
                    out.push(format!("{cmd}: {line}"));
                }
            }
        }
        out
    }

    /// Whether anything of meshcap's is installed.
    pub fn has_meshcap(&self) -> bool {
        !self.meshcap_leftovers().is_empty()
    }

    /// Rule lines (`-A ...` in save output, rules inside nft chains, ip rules) that appear more
    /// than once in one section: a retried ADD must leave exactly one copy of each.
    pub fn duplicate_rules(&self) -> Vec<String> {
        let mut dups = Vec::new();
        for (cmd, text) in &self.sections {
            let mut seen = std::collections::HashMap::<String, usize>::new();
            let mut table = "";
            let mut chain = String::new();
            for line in text.lines() {
                let l = line.trim();
                if l.starts_with('*') || l.starts_with("table ") {
                    table = l;
                    continue;
                }
                if l.starts_with("chain ") {
                    chain = l.to_string();
                    continue;
                }
                let is_rule = l.starts_with("-A ")
                    || (cmd.starts_with("nft")
                        && !l.is_empty()
                        && !l.ends_with('{')
                        && l != "}"
                        && !l.starts_with("type "))
                    || (cmd.contains(" rule ") && !l.is_empty());
                if is_rule {
                    // Identical rules in different chains (a `return` in two chains) are fine.
                    *seen.entry(format!("{table} {chain} {l}")).or_default() += 1;
                }
            }
            for (rule, n) in seen {
                if n > 1 {
                    dups.push(format!("{cmd}: {n}x {rule}"));
                }
            }
        }
        dups
    }

    /// Sections that differ from `other`, with both versions.
    pub fn diff(&self, other: &NetfilterState) -> String {
        let mut out = String::new();
        for ((cmd, a), (_, b)) in self.sections.iter().zip(&other.sections) {
            if a != b {
                out.push_str(&format!(
                    "--- {cmd} (before)\n{a}\n+++ {cmd} (after)\n{b}\n"
                ));
            }
        }
        out
    }
}

impl fmt::Display for NetfilterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (cmd, text) in &self.sections {
            if !text.trim().is_empty() {
                writeln!(f, "## {cmd}\n{text}")?;
            }
        }
        Ok(())
    }
}

/// Drop comments (timestamps) and packet counters (`[0:0]` on chain lines of save output,
/// `counter packets N bytes M` in nft listings) so snapshots compare by content.
fn normalize(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.find(" [")) {
            (true, Some(i)) => l[..i].to_string(),
            _ => strip_nft_counters(l),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn strip_nft_counters(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if (words[i] == "packets" || words[i] == "bytes")
            && words
                .get(i + 1)
                .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// `nft list ruleset` with each table's chains, and the tables, in name order: the kernel lists
/// chains in creation order, which a rollback that recreates chains changes without changing
/// any verdict. The order of rules inside a chain is kept.
pub fn sorted_nft_blocks(text: &str) -> String {
    let mut loose = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with("table ") {
            if !line.trim().is_empty() {
                loose.push(line.to_string());
            }
            continue;
        }
        let mut other = Vec::new();
        let mut chains: Vec<String> = Vec::new();
        let mut chain: Option<Vec<&str>> = None;
        for l in lines.by_ref() {
            if l == "}" {
                break;
            }
            if l.trim().is_empty() {
                continue;
            }
            match chain.as_mut() {
                Some(c) => {
                    c.push(l);
                    if l == "\t}" {
                        chains.push(chain.take().unwrap_or_default().join("\n"));
                    }
                }
                None if l.starts_with("\tchain ") => chain = Some(vec![l]),
                None => other.push(l),
            }
        }
        if let Some(c) = chain {
            chains.push(c.join("\n"));
        }
        chains.sort();
        tables.push(format!(
            "{line}\n{}\n{}\n}}",
            other.join("\n"),
            chains.join("\n")
        ));
    }
    tables.sort();
    loose.extend(tables);
    loose.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_comments_do_not_count() {
        let a = "# Generated by iptables-nft-save v1.8.9 on Sun\n*nat\n:OUTPUT ACCEPT [3:180]\n-A OUTPUT -j MESHCAP_OUTPUT";
        let b = "# Generated by iptables-nft-save v1.8.9 on Mon\n*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j MESHCAP_OUTPUT";
        assert_eq!(normalize(a), normalize(b));
        assert_eq!(
            normalize("\t\tcounter packets 12 bytes 960 jump MESHCAP_OUTPUT"),
            normalize("\t\tcounter packets 0 bytes 0 jump MESHCAP_OUTPUT")
        );
        assert_eq!(
            strip_nft_counters("meta l4proto tcp counter packets 3 bytes 7 redirect to :15001"),
            "meta l4proto tcp counter redirect to :15001"
        );
    }

    #[test]
    fn leftovers_and_duplicates_are_found() {
        let s = NetfilterState {
            sections: vec![
                (
                    "iptables-nft-save".into(),
                    "*nat\n-A OUTPUT -j MESHCAP_OUTPUT\n-A OUTPUT -j MESHCAP_OUTPUT".into(),
                ),
                (
                    "ip -4 rule show".into(),
                    "0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x539 lookup 133".into(),
                ),
                ("ip -4 route show table 133".into(), String::new()),
            ],
        };
        assert_eq!(s.meshcap_leftovers().len(), 3);
        assert_eq!(s.duplicate_rules().len(), 1);
        let clean = NetfilterState {
            sections: vec![("nft list ruleset".into(), "table ip nat {\n}".into())],
        };
        assert!(!clean.has_meshcap());
    }
}

//! Semantic comparison of capture rule sets across layouts and backends: Istio's
//! `iptables-save` text, Istio's nftables commands, meshcap's `iptables-restore` and
//! nftables renderings, and what `iptables-save`/`nft list ruleset` read back from a namespace.
//!
//! Each rule becomes a set of normalised conditions (`proto=tcp`, `!dport=15008`,
//! `skuid=1337`, ...; implicit matches like `-m tcp`, mark notation, counters and comments
//! normalised away) and an action. Each hook of each table is then flattened: jumps are
//! inlined with the jumping rule's conditions, a RETURN becomes a guard ("not all of these")
//! on the rest of its chain, and a terminal action (ACCEPT, DROP, REDIRECT, TPROXY) a guard on
//! everything after it in that hook. Two rule sets are equivalent when every hook gives the
//! same multiset of (guards, conditions, action) and the same order of non-terminal actions
//! (marks, conntrack zones): so chain names and where a RETURN sits do not matter, and any
//! change of order that could change a verdict does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// IPv4 or IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    V4,
    V6,
}

/// A table's name as iptables spells it: `raw`, `mangle`, `nat`.
pub type TableName = String;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PRule {
    pub conds: BTreeSet<String>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Jump(String),
    Return,
    /// Ends the walk of this hook: accept, drop, redirect, tproxy.
    Terminal(String),
    /// Changes state and continues: mark, connmark, ct zone.
    Continue(String),
}

/// The rules of one family: (table, chain) -> rules, and which chain each hook enters.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub chains: BTreeMap<(TableName, String), Vec<PRule>>,
    /// (table, hook) -> entry chain.
    pub hooks: BTreeMap<(TableName, String), String>,
}

/// One flattened decision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub guards: BTreeSet<BTreeSet<String>>,
    pub conds: BTreeSet<String>,
    pub action: String,
    pub terminal: bool,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conds: Vec<&str> = self.conds.iter().map(String::as_str).collect();
        write!(f, "[{}] -> {}", conds.join(" "), self.action)?;
        for g in &self.guards {
            let g: Vec<&str> = g.iter().map(String::as_str).collect();
            write!(f, "\n        unless [{}]", g.join(" "))?;
        }
        Ok(())
    }
}

/// Per (table, hook): the flattened entries.
pub type Flat = BTreeMap<(TableName, String), Vec<Entry>>;

// ---------------------------------------------------------------------------------------------
// iptables-save / iptables-restore text

/// Parses iptables-save (or -restore) text. Istio's goldens hold the IPv4 tables and then,
/// with IPv6 on, the IPv6 ones: a table name seen a second time starts the IPv6 block.
pub fn parse_iptables_blocks(text: &str) -> Result<Vec<Rules>, String> {
    let mut blocks: Vec<Rules> = vec![Rules::default()];
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut table = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if line == "iptables-save" || line == "ip6tables-save" || line.starts_with("iptables") {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
            if !seen.insert(table.clone()) {
                blocks.push(Rules::default());
                seen = BTreeSet::from([table.clone()]);
            }
            for hook in ["PREROUTING", "OUTPUT"] {
                blocks
                    .last_mut()
                    .unwrap()
                    .hooks
                    .insert((table.clone(), hook.into()), hook.into());
            }
            continue;
        }
        let rules = blocks.last_mut().unwrap();
        if let Some(rest) = line.strip_prefix(':') {
            let chain = rest.split_whitespace().next().unwrap_or("").to_owned();
            rules.chains.entry((table.clone(), chain)).or_default();
            continue;
        }
        let toks = tokenize(line);
        match toks.first().map(String::as_str) {
            Some("-N") => {
                rules
                    .chains
                    .entry((table.clone(), toks[1].clone()))
                    .or_default();
            }
            Some("-A") | Some("-I") => {
                let chain = toks[1].clone();
                let (index, rest) = if toks[0] == "-I" {
                    match toks.get(2).and_then(|t| t.parse::<usize>().ok()) {
                        Some(i) => (Some(i - 1), &toks[3..]),
                        None => (Some(0), &toks[2..]),
                    }
                } else {
                    (None, &toks[2..])
                };
                let rule =
                    parse_ipt_rule(rest).map_err(|e| format!("line {}: {e}: {raw}", n + 1))?;
                let list = rules.chains.entry((table.clone(), chain)).or_default();
                match index {
                    Some(i) => list.insert(i.min(list.len()), rule),
                    None => list.push(rule),
                }
            }
            Some("-P") | Some("-F") | Some("-X") => {}
            _ => return Err(format!("line {}: unknown: {raw}", n + 1)),
        }
    }
    blocks.retain(|b| !b.chains.is_empty());
    for b in &mut blocks {
        normalize(b);
    }
    Ok(blocks)
}

/// One family's iptables-save text.
pub fn parse_iptables(text: &str) -> Result<Rules, String> {
    let mut blocks = parse_iptables_blocks(text)?;
    match blocks.len() {
        0 => Ok(Rules::default()),
        1 => Ok(blocks.remove(0)),
        n => Err(format!("{n} blocks where one family was expected")),
    }
}

fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn norm_net(s: &str) -> String {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()),
        None => (s, None),
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            let len = len.unwrap_or(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let len = len.unwrap_or(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
        Err(_) => s.to_owned(),
    }
}

fn norm_num(s: &str) -> String {
    let s = s.split('/').next().unwrap_or(s);
    let n = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse::<u64>().ok()
    };
    n.map_or_else(|| s.to_owned(), |n| n.to_string())
}

fn cond(neg: bool, key: &str, value: &str) -> String {
    format!("{}{key}={value}", if neg { "!" } else { "" })
}

fn parse_ipt_rule(toks: &[String]) -> Result<PRule, String> {
    let mut conds = BTreeSet::new();
    let mut action = None;
    let mut neg = false;
    let mut i = 0;
    let next = |i: &mut usize| -> Result<String, String> {
        *i += 1;
        toks.get(*i)
            .cloned()
            .ok_or_else(|| "missing value".to_string())
    };
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-p" | "--protocol" => {
                conds.insert(cond(neg, "proto", &next(&mut i)?));
            }
            "-s" | "--source" => {
                conds.insert(cond(neg, "saddr", &norm_net(&next(&mut i)?)));
            }
            "-d" | "--destination" => {
                conds.insert(cond(neg, "daddr", &norm_net(&next(&mut i)?)));
            }
            "-i" | "--in-interface" => {
                conds.insert(cond(neg, "iif", &next(&mut i)?));
            }
            "-o" | "--out-interface" => {
                conds.insert(cond(neg, "oif", &next(&mut i)?));
            }
            "-m" => {
                let module = next(&mut i)?;
                if module == "comment" {
                    // `-m comment --comment TEXT`: skip both.
                    if toks.get(i + 1).map(String::as_str) == Some("--comment") {
                        i += 2;
                    }
                }
            }
            "--dport" | "--destination-port" => {
                conds.insert(cond(neg, "dport", &next(&mut i)?));
            }
            "--sport" | "--source-port" => {
                conds.insert(cond(neg, "sport", &next(&mut i)?));
            }
            "--dports" | "--destination-ports" => {
                let v = next(&mut i)?;
                add_port_set(
                    &mut conds,
                    neg,
                    "dport",
                    v.split(',').map(str::to_owned).collect(),
                );
            }
            "--uid-owner" => {
                conds.insert(cond(neg, "skuid", &next(&mut i)?));
            }
            "--gid-owner" => {
                conds.insert(cond(neg, "skgid", &next(&mut i)?));
            }
            "--mark" => {
                // `-m mark --mark` or `-m connmark --mark`: the module before decides.
                let module = toks[..i]
                    .iter()
                    .rposition(|t| t == "-m")
                    .and_then(|j| toks.get(j + 1));
                let key = if module.is_some_and(|m| m == "connmark") {
                    "ctmark"
                } else {
                    "mark"
                };
                conds.insert(cond(neg, key, &norm_num(&next(&mut i)?)));
            }
            "--ctstate" | "--state" => {
                let v = next(&mut i)?;
                let mut states: Vec<String> = v.split(',').map(|s| s.to_lowercase()).collect();
                states.sort();
                conds.insert(cond(neg, "ctstate", &states.join(",")));
            }
            "-j" | "-g" => {
                let target = next(&mut i)?;
                let rest: Vec<String> = toks[i + 1..].to_vec();
                action = Some(ipt_target(&target, &rest)?);
                break;
            }
            other => return Err(format!("unknown token {other:?}")),
        }
        neg = false;
        i += 1;
    }
    let action = action.ok_or("no target")?;
    drop_owner_required(&mut conds);
    Ok(PRule { conds, action })
}

/// Largest uid range split into one rule per uid (meshcap's rendering writes one rule per uid
/// for ranges this small).
const MAX_SPLIT_IDS: u64 = 64;

/// Cosmetic differences of layout, normalised away (the module docs say what is compared):
/// - a port range is `A-B` whatever the notation (`A:B` in iptables);
/// - a RETURN or terminal rule matching one of several ports (`multiport --dports A,B:C`) or a
///   small uid or gid range (`--uid-owner 4-5`) becomes one rule per port, range or id: the
///   same verdict for every packet, as meshcap writes such lists.
fn normalize(rules: &mut Rules) {
    for list in rules.chains.values_mut() {
        let mut out = Vec::with_capacity(list.len());
        for mut r in list.drain(..) {
            r.conds = r
                .conds
                .iter()
                .map(|c| {
                    let (neg, k, v) = key_value(c);
                    if matches!(k, "dport" | "sport") {
                        cond(neg, k, &v.replace(':', "-"))
                    } else {
                        c.clone()
                    }
                })
                .collect();
            if !matches!(r.action, Action::Return | Action::Terminal(_)) {
                out.push(r);
                continue;
            }
            let mut split = vec![r];
            for key in ["dport", "sport", "skuid", "skgid"] {
                split = split
                    .into_iter()
                    .flat_map(|r| split_alternatives(r, key))
                    .collect();
            }
            out.extend(split);
        }
        *list = out;
    }
}

/// `r` as one rule per alternative of its `key` condition (a port set, or a small id range).
fn split_alternatives(r: PRule, key: &str) -> Vec<PRule> {
    let Some(c) = r
        .conds
        .iter()
        .find(|c| !c.starts_with('!') && key_value(c).1 == key)
        .cloned()
    else {
        return vec![r];
    };
    let (_, _, v) = key_value(&c);
    let alternatives: Vec<String> = if let Some(set) = v.strip_prefix('{') {
        set.trim_end_matches('}')
            .split(',')
            .map(str::to_owned)
            .collect()
    } else if matches!(key, "skuid" | "skgid") {
        match v
            .split_once('-')
            .map(|(a, b)| (a.parse::<u64>(), b.parse::<u64>()))
        {
            Some((Ok(a), Ok(b))) if a <= b && b - a < MAX_SPLIT_IDS => {
                (a..=b).map(|id| id.to_string()).collect()
            }
            _ => return vec![r],
        }
    } else {
        return vec![r];
    };
    alternatives
        .into_iter()
        .map(|alt| {
            let mut one = r.clone();
            one.conds.remove(&c);
            one.conds.insert(cond(false, key, &alt));
            one
        })
        .collect()
}

fn add_port_set(conds: &mut BTreeSet<String>, neg: bool, key: &str, ports: Vec<String>) {
    let mut ports: Vec<String> = ports.into_iter().map(|p| p.trim().to_owned()).collect();
    ports.sort_by_key(|p| p.parse::<u32>().unwrap_or(0));
    ports.dedup();
    if neg {
        // Not any of: a conjunction of single negations.
        for p in ports {
            conds.insert(cond(true, key, &p));
        }
    } else if ports.len() == 1 {
        conds.insert(cond(false, key, &ports[0]));
    } else {
        conds.insert(cond(false, key, &format!("{{{}}}", ports.join(","))));
    }
}

fn ipt_target(target: &str, rest: &[String]) -> Result<Action, String> {
    let opt = |name: &str| {
        rest.iter()
            .position(|t| t == name)
            .and_then(|i| rest.get(i + 1).cloned())
    };
    Ok(match target {
        "RETURN" => Action::Return,
        "ACCEPT" => Action::Terminal("accept".into()),
        "DROP" => Action::Terminal("drop".into()),
        "REDIRECT" => {
            let port = opt("--to-ports")
                .or_else(|| opt("--to-port"))
                .ok_or("REDIRECT without a port")?;
            Action::Terminal(format!("redirect:{port}"))
        }
        "TPROXY" => {
            let port = opt("--on-port").ok_or("TPROXY without a port")?;
            let mark = opt("--tproxy-mark")
                .map(|m| norm_num(&m))
                .unwrap_or_default();
            Action::Terminal(format!("tproxy:{port} mark:{mark}"))
        }
        "MARK" => {
            let m = opt("--set-mark")
                .or_else(|| opt("--set-xmark"))
                .ok_or("MARK without a value")?;
            Action::Continue(format!("mark:{}", norm_num(&m)))
        }
        "CONNMARK" => {
            if rest.iter().any(|t| t == "--save-mark") {
                Action::Continue("ctmark:save".into())
            } else if rest.iter().any(|t| t == "--restore-mark") {
                Action::Continue("ctmark:restore".into())
            } else {
                return Err(format!("CONNMARK {rest:?}"));
            }
        }
        "CT" => {
            let z = opt("--zone").ok_or("CT without a zone")?;
            Action::Continue(format!("ctzone:{z}"))
        }
        chain => Action::Jump(chain.to_owned()),
    })
}

// ---------------------------------------------------------------------------------------------
// nftables

/// A rule as read: nft family, table, chain, insert position, tokens.
type PendingRule = (String, String, String, Option<usize>, Vec<String>);

/// Parses nftables text: `nft list ruleset` output or meshcap's rendering (`table F NAME {
/// chain C { type T hook H priority P; ...; RULE... } }`), or Istio's command form
/// (`add table inet T`, `add chain inet T C { type ... }`, `add rule inet T C RULE`,
/// `insert rule inet T C index N RULE`). Returns the rules per family: an `inet` table's rule
/// goes to the family its addresses name, or to both.
pub fn parse_nft(text: &str) -> Result<BTreeMap<Fam, Rules>, String> {
    let mut out: BTreeMap<Fam, Rules> = BTreeMap::new();
    // (family, nft table) -> (chain -> (hook, type, priority))
    let mut table_fam = String::new();
    let mut table_name = String::new();
    let mut chain = String::new();
    let mut pending: Vec<PendingRule> = Vec::new();
    let mut chain_meta: BTreeMap<(String, String), (String, String, i32)> = BTreeMap::new();
    let mut declared: Vec<(String, String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim().trim_end_matches(';').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let toks = tokenize(line);
        let t0 = toks[0].as_str();
        match t0 {
            "table" if toks.len() >= 3 => {
                table_fam = toks[1].clone();
                table_name = toks[2].clone();
            }
            "delete" | "flush" => {}
            // A table's comment (meshcap's names its rules format), normalised away as rules'
            // comments are.
            "comment" if chain.is_empty() => {}
            "}" => {
                if !chain.is_empty() {
                    chain.clear();
                } else {
                    table_name.clear();
                }
            }
            "chain" => {
                chain = toks[1].clone();
                declared.push((table_fam.clone(), table_name.clone(), chain.clone()));
            }
            "type" if !chain.is_empty() => {
                let hook = toks[3].clone();
                let prio = toks[5].trim_end_matches(';').parse::<i32>().unwrap_or(0);
                chain_meta.insert(
                    (table_name.clone(), chain.clone()),
                    (toks[1].clone(), hook, prio),
                );
            }
            "policy" => {}
            "add" | "insert" => match toks.get(1).map(String::as_str) {
                Some("table") => {}
                Some("chain") => {
                    // add chain inet T C { type nat hook prerouting priority -100 ; }
                    declared.push((toks[2].clone(), toks[3].clone(), toks[4].clone()));
                    if let Some(ti) = toks.iter().position(|t| t == "type") {
                        let prio = toks[ti + 5].trim_end_matches(';').parse().unwrap_or(0);
                        chain_meta.insert(
                            (toks[3].clone(), toks[4].clone()),
                            (toks[ti + 1].clone(), toks[ti + 3].clone(), prio),
                        );
                    }
                }
                Some("rule") => {
                    let (fam, t, c) = (toks[2].clone(), toks[3].clone(), toks[4].clone());
                    let (index, body) = if toks.get(5).map(String::as_str) == Some("index") {
                        (toks[6].parse::<usize>().ok(), toks[7..].to_vec())
                    } else {
                        (None, toks[5..].to_vec())
                    };
                    let index = if t0 == "insert" {
                        Some(index.unwrap_or(0))
                    } else {
                        None
                    };
                    pending.push((fam, t, c, index, body));
                }
                _ => return Err(format!("unknown: {raw}")),
            },
            _ if !chain.is_empty() => {
                pending.push((
                    table_fam.clone(),
                    table_name.clone(),
                    chain.clone(),
                    None,
                    toks,
                ));
            }
            _ => return Err(format!("unknown: {raw}")),
        }
    }
    for (fam, table, chain, index, body) in pending {
        let rule = parse_nft_rule(&body).map_err(|e| format!("{e}: {}", body.join(" ")))?;
        let fams: Vec<Fam> = match fam.as_str() {
            "ip" => vec![Fam::V4],
            "ip6" => vec![Fam::V6],
            _ => rule_families(&rule),
        };
        let tname = nft_table_kind(
            &table,
            &chain,
            chain_meta.get(&(table.clone(), chain.clone())),
        );
        for f in fams {
            let rules = out.entry(f).or_default();
            let key = (tname.clone(), format!("{table}/{chain}"));
            let list = rules.chains.entry(key).or_default();
            match index {
                Some(i) => list.insert(i.min(list.len()), rule.clone()),
                None => list.push(rule.clone()),
            }
        }
    }
    for ((table, chain), (_, hook, _)) in &chain_meta {
        let tname = nft_table_kind(
            table,
            chain,
            chain_meta.get(&(table.clone(), chain.clone())),
        );
        for rules in out.values_mut() {
            rules.hooks.insert(
                (tname.clone(), hook.to_uppercase()),
                format!("{table}/{chain}"),
            );
            rules
                .chains
                .entry((tname.clone(), format!("{table}/{chain}")))
                .or_default();
        }
    }
    for (fam, table, chain) in &declared {
        let tname = nft_table_kind(
            table,
            chain,
            chain_meta.get(&(table.clone(), chain.clone())),
        );
        let fams = match fam.as_str() {
            "ip" => vec![Fam::V4],
            "ip6" => vec![Fam::V6],
            _ => vec![Fam::V4, Fam::V6],
        };
        for f in fams {
            out.entry(f)
                .or_default()
                .chains
                .entry((tname.clone(), format!("{table}/{chain}")))
                .or_default();
        }
    }
    // Jumps name chains of the same nft table.
    for rules in out.values_mut() {
        let keys: Vec<_> = rules.chains.keys().cloned().collect();
        for key in keys {
            let table = key.1.split('/').next().unwrap_or("").to_owned();
            for r in rules.chains.get_mut(&key).unwrap() {
                if let Action::Jump(c) = &mut r.action {
                    *c = format!("{table}/{c}");
                }
            }
        }
        // meshcap's nftables TPROXY: `tproxy ... accept` then the same conditions `drop`, as
        // iptables' TPROXY target drops what finds no transparent socket. One iptables rule.
        for list in rules.chains.values_mut() {
            let mut i = 0;
            while i + 1 < list.len() {
                if matches!(&list[i].action, Action::Terminal(a) if a.ends_with("(no socket: accept)"))
                    && list[i + 1].action == Action::Terminal("drop".into())
                    && list[i + 1].conds == list[i].conds
                {
                    if let Action::Terminal(a) = &mut list[i].action {
                        *a = a.trim_end_matches(" (no socket: accept)").to_owned();
                    }
                    list.remove(i + 1);
                }
                i += 1;
            }
        }
    }
    for rules in out.values_mut() {
        normalize(rules);
    }
    // Keep the chain names of an nft table but file them under the table kind they hook as.
    Ok(out)
}

/// Which iptables table an nft chain stands for: by its table name (`istio-proxy-nat`), its
/// chain name prefix (`nat_MESHCAP_...`) or its hook type and priority.
fn nft_table_kind(table: &str, chain: &str, meta: Option<&(String, String, i32)>) -> String {
    for kind in ["raw", "mangle", "nat"] {
        if table.ends_with(&format!("-{kind}")) || chain.starts_with(&format!("{kind}_")) {
            return kind.into();
        }
    }
    match meta {
        Some((t, _, _)) if t == "nat" => "nat".into(),
        Some((_, _, p)) if *p <= -300 => "raw".into(),
        _ => "mangle".into(),
    }
}

fn rule_families(rule: &PRule) -> Vec<Fam> {
    let mut v4 = false;
    let mut v6 = false;
    for c in &rule.conds {
        if let Some((_, v)) = c.trim_start_matches('!').split_once('=') {
            if c.contains("addr=") {
                if v.contains(':') {
                    v6 = true;
                } else {
                    v4 = true;
                }
            }
        }
    }
    match (v4, v6) {
        (true, false) => vec![Fam::V4],
        (false, true) => vec![Fam::V6],
        _ => vec![Fam::V4, Fam::V6],
    }
}

fn parse_nft_rule(toks: &[String]) -> Result<PRule, String> {
    let mut conds = BTreeSet::new();
    let mut i = 0;
    let mut action: Option<Action> = None;
    let mut pending_tproxy: Option<String> = None;
    let mut set_mark: Option<String> = None;
    // `[!=] VALUE` or `[!=] { A, B }` after a selector.
    let value = |i: &mut usize| -> (bool, Vec<String>) {
        let mut neg = false;
        if toks.get(*i).map(String::as_str) == Some("!=") {
            neg = true;
            *i += 1;
        }
        if toks.get(*i).map(String::as_str) == Some("{") {
            let mut vals = Vec::new();
            *i += 1;
            while *i < toks.len() && toks[*i] != "}" {
                for v in toks[*i].split(',') {
                    if !v.is_empty() {
                        vals.push(v.to_owned());
                    }
                }
                *i += 1;
            }
            (neg, vals)
        } else if toks.get(*i).is_some_and(|t| t.starts_with('{')) {
            let mut joined = String::new();
            while *i < toks.len() {
                joined.push_str(&toks[*i]);
                if toks[*i].ends_with('}') {
                    break;
                }
                *i += 1;
            }
            let vals = joined
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (neg, vals)
        } else {
            let v = toks.get(*i).cloned().unwrap_or_default();
            (neg, v.split(',').map(str::to_owned).collect())
        }
    };
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "counter" => {}
            "comment" => {
                i += 1;
            }
            "meta" => {
                // meta l4proto / skuid / skgid / mark [set ...]
                i += 1;
                let what = toks.get(i).cloned().unwrap_or_default();
                if toks.get(i + 1).map(String::as_str) == Some("set") {
                    i += 2;
                    let v = toks.get(i).cloned().unwrap_or_default();
                    if what == "mark" && v == "ct" {
                        i += 1;
                        action = Some(Action::Continue("ctmark:restore".into()));
                    } else if what == "mark" {
                        set_mark = Some(norm_num(&v));
                    }
                } else {
                    i += 1;
                    let (neg, vals) = value(&mut i);
                    let key = match what.as_str() {
                        "l4proto" | "protocol" => "proto",
                        "skuid" => "skuid",
                        "skgid" => "skgid",
                        "mark" => "mark",
                        other => return Err(format!("meta {other}")),
                    };
                    let v = if key == "mark" {
                        norm_num(&vals[0])
                    } else {
                        vals[0].clone()
                    };
                    conds.insert(cond(neg, key, &v));
                }
            }
            "skuid" | "skgid" | "mark" => {
                i += 1;
                let (neg, vals) = value(&mut i);
                let v = if t == "mark" {
                    norm_num(&vals[0])
                } else {
                    vals[0].clone()
                };
                conds.insert(cond(neg, t, &v));
            }
            "tcp" | "udp" => {
                conds.insert(cond(false, "proto", t));
                i += 1;
                let field = toks.get(i).cloned().unwrap_or_default();
                i += 1;
                let (neg, vals) = value(&mut i);
                add_port_set(&mut conds, neg, &field, vals);
            }
            "ip" | "ip6" => {
                i += 1;
                let field = toks.get(i).cloned().unwrap_or_default();
                if field == "to" {
                    // `tproxy ip to :PORT`
                    continue;
                }
                i += 1;
                let (neg, vals) = value(&mut i);
                conds.insert(cond(neg, &field, &norm_net(&vals[0])));
            }
            "iifname" | "oifname" => {
                i += 1;
                let (neg, vals) = value(&mut i);
                let key = if t == "iifname" { "iif" } else { "oif" };
                // nft's wildcard `eth*` is iptables' `eth+`.
                let name = vals[0].trim_matches('"');
                let name = match name.strip_suffix('*') {
                    Some(prefix) => format!("{prefix}+"),
                    None => name.to_owned(),
                };
                conds.insert(cond(neg, key, &name));
            }
            "ct" => {
                i += 1;
                let what = toks.get(i).cloned().unwrap_or_default();
                if toks.get(i + 1).map(String::as_str) == Some("set") {
                    i += 2;
                    let v = toks.get(i).cloned().unwrap_or_default();
                    if what == "mark" {
                        if v == "meta" {
                            i += 1;
                        }
                        action = Some(Action::Continue("ctmark:save".into()));
                    } else if what == "zone" {
                        action = Some(Action::Continue(format!("ctzone:{v}")));
                    }
                } else {
                    i += 1;
                    let (neg, vals) = value(&mut i);
                    match what.as_str() {
                        "state" => {
                            let mut s: Vec<String> =
                                vals.iter().map(|v| v.to_lowercase()).collect();
                            s.sort();
                            conds.insert(cond(neg, "ctstate", &s.join(",")));
                        }
                        "mark" => {
                            conds.insert(cond(neg, "ctmark", &norm_num(&vals[0])));
                        }
                        other => return Err(format!("ct {other}")),
                    }
                }
            }
            "return" => action = Some(Action::Return),
            "accept" => {
                if let Some(p) = pending_tproxy.take() {
                    // nftables' tproxy statement does not end the rule when no transparent
                    // socket is found: the packet goes on to `accept` (iptables' TPROXY
                    // drops it). meshcap follows with a `drop` of the same conditions.
                    let mark = set_mark.take().unwrap_or_default();
                    action = Some(Action::Terminal(format!(
                        "tproxy:{p} mark:{mark} (no socket: accept)"
                    )));
                } else {
                    action = Some(Action::Terminal("accept".into()));
                }
            }
            "drop" => action = Some(Action::Terminal("drop".into())),
            "jump" | "goto" => {
                i += 1;
                action = Some(Action::Jump(toks[i].clone()));
            }
            "redirect" => {
                // redirect to :PORT
                i += 2;
                let port = toks[i].trim_start_matches(':').to_owned();
                action = Some(Action::Terminal(format!("redirect:{port}")));
            }
            "tproxy" => {
                i += 1;
                if matches!(toks.get(i).map(String::as_str), Some("ip" | "ip6")) {
                    i += 1;
                }
                // to :PORT
                i += 1;
                pending_tproxy = Some(toks[i].trim_start_matches(':').to_owned());
            }
            other => return Err(format!("unknown token {other:?}")),
        }
        i += 1;
    }
    if let Some(p) = pending_tproxy {
        // `tproxy` without `accept`: nftables' tproxy statement does not end the walk when no
        // transparent socket is found.
        let mark = set_mark.take().unwrap_or_default();
        action = Some(Action::Terminal(format!("tproxy-continue:{p} mark:{mark}")));
    }
    if let Some(m) = set_mark {
        action = Some(Action::Continue(format!("mark:{m}")));
    }
    let action = action.ok_or("no verdict or statement")?;
    Ok(PRule { conds, action })
}

// ---------------------------------------------------------------------------------------------
// flattening and comparison

/// Flattens every hook of `rules` (see the module docs).
pub fn flatten(rules: &Rules) -> Result<Flat, String> {
    let mut flat = Flat::new();
    for ((table, hook), entry) in &rules.hooks {
        if !rules.chains.contains_key(&(table.clone(), entry.clone())) {
            continue;
        }
        let mut out = Vec::new();
        let mut terminal = Vec::new();
        walk(
            rules,
            table,
            entry,
            &BTreeSet::new(),
            &[],
            &mut terminal,
            &mut out,
            0,
        )?;
        if !out.is_empty() {
            flat.insert((table.clone(), hook.clone()), out);
        }
    }
    Ok(flat)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    rules: &Rules,
    table: &str,
    chain: &str,
    path: &BTreeSet<String>,
    outer_guards: &[BTreeSet<String>],
    terminal: &mut Vec<BTreeSet<String>>,
    out: &mut Vec<Entry>,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 {
        return Err(format!("jump loop at {chain}"));
    }
    let Some(list) = rules.chains.get(&(table.to_owned(), chain.to_owned())) else {
        return Err(format!("{table}: jump to missing chain {chain}"));
    };
    let mut guards: Vec<BTreeSet<String>> = outer_guards.to_vec();
    for r in list {
        let conds: BTreeSet<String> = path.union(&r.conds).cloned().collect();
        if contradictory(&conds) {
            continue;
        }
        match &r.action {
            Action::Return => guards.push(conds),
            Action::Jump(c) => walk(rules, table, c, &conds, &guards, terminal, out, depth + 1)?,
            Action::Terminal(a) | Action::Continue(a) => {
                let is_terminal = matches!(r.action, Action::Terminal(_));
                let all: Vec<BTreeSet<String>> =
                    guards.iter().chain(terminal.iter()).cloned().collect();
                if let Some(guards) = simplify(&conds, &all) {
                    out.push(Entry {
                        guards,
                        conds: conds.clone(),
                        action: a.clone(),
                        terminal: is_terminal,
                    });
                }
                if is_terminal {
                    terminal.push(conds);
                }
            }
        }
    }
    Ok(())
}

fn key_value(c: &str) -> (bool, &str, &str) {
    let neg = c.starts_with('!');
    let c = c.trim_start_matches('!');
    let (k, v) = c.split_once('=').unwrap_or((c, ""));
    (neg, k, v)
}

/// Whether no packet can satisfy all of `conds`.
fn contradictory(conds: &BTreeSet<String>) -> bool {
    for a in conds {
        let (na, ka, va) = key_value(a);
        for b in conds {
            let (nb, kb, vb) = key_value(b);
            if ka != kb {
                continue;
            }
            if !na
                && !nb
                && va != vb
                && single_valued(ka)
                && !va.starts_with('{')
                && !vb.starts_with('{')
            {
                return true;
            }
            if na != nb && va == vb {
                return true;
            }
        }
    }
    false
}

/// meshcap's iptables rules put `--uid-owner 0-4294967294` (any owner) beside a negated owner
/// match, so that a packet without a socket (a kernel RST or ICMP error) fails the rule as it
/// fails nftables' `meta skuid != X` (docs/CONFIGURATION.md, "Packets without a socket"). For
/// every packet that has a socket the range always holds (4294967295 is no uid), and these
/// comparisons model packets of sockets: the range says nothing there and is dropped.
fn drop_owner_required(conds: &mut BTreeSet<String>) {
    for key in ["skuid", "skgid"] {
        let negated = format!("!{key}=");
        if conds.iter().any(|c| c.starts_with(&negated)) {
            conds.remove(&format!("{key}=0-4294967294"));
        }
    }
}

fn single_valued(key: &str) -> bool {
    matches!(
        key,
        "proto" | "iif" | "oif" | "dport" | "sport" | "mark" | "ctmark" | "skuid" | "skgid"
    )
}

/// The guards that can matter for `conds`: `None` when one of them excludes every packet the
/// entry matches (it is dead); guards no such packet can meet, and guards implied by another
/// guard, are dropped.
fn simplify(
    conds: &BTreeSet<String>,
    guards: &[BTreeSet<String>],
) -> Option<BTreeSet<BTreeSet<String>>> {
    let mut kept: Vec<BTreeSet<String>> = Vec::new();
    for g in guards {
        if g.is_subset(conds) {
            return None;
        }
        let both: BTreeSet<String> = g.union(conds).cloned().collect();
        if contradictory(&both) {
            continue;
        }
        // Conditions the entry already has say nothing new inside the guard.
        let rest: BTreeSet<String> = g.difference(conds).cloned().collect();
        kept.push(rest);
    }
    let mut out = BTreeSet::new();
    for (i, g) in kept.iter().enumerate() {
        let implied = kept
            .iter()
            .enumerate()
            .any(|(j, h)| j != i && h.is_subset(g) && (h != g || j < i));
        if !implied {
            out.insert(g.clone());
        }
    }
    Some(out)
}

/// Differences between two flattened rule sets; empty when equivalent.
pub fn diff(expected: &Flat, actual: &Flat) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<_> = expected.keys().chain(actual.keys()).cloned().collect();
    for key in keys {
        let e = expected.get(&key).cloned().unwrap_or_default();
        let a = actual.get(&key).cloned().unwrap_or_default();
        let mut es = e.clone();
        let mut as_ = a.clone();
        es.sort();
        as_.sort();
        if es != as_ {
            let missing: Vec<String> = es
                .iter()
                .filter(|x| !as_.contains(x))
                .map(|x| format!("  - {x}"))
                .collect();
            let extra: Vec<String> = as_
                .iter()
                .filter(|x| !es.contains(x))
                .map(|x| format!("  + {x}"))
                .collect();
            out.push(format!(
                "{}/{}: expected but missing / present but not expected:\n{}\n{}",
                key.0,
                key.1,
                missing.join("\n"),
                extra.join("\n")
            ));
            continue;
        }
        let order =
            |v: &[Entry]| -> Vec<Entry> { v.iter().filter(|x| !x.terminal).cloned().collect() };
        if order(&e) != order(&a) {
            out.push(format!(
                "{}/{}: the non-terminal actions run in another order",
                key.0, key.1
            ));
        }
    }
    out
}

/// Renders a flattened set for messages.
pub fn show(flat: &Flat) -> String {
    let mut s = String::new();
    for ((t, h), entries) in flat {
        s.push_str(&format!("{t}/{h}:\n"));
        for e in entries {
            s.push_str(&format!("    {e}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_with_the_same_verdicts_are_equal_and_order_matters() {
        let istio = "* nat\n-N ISTIO_OUTPUT\n-N ISTIO_REDIRECT\n\
            -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
            -A OUTPUT -j ISTIO_OUTPUT\n\
            -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n\
            -A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n";
        let meshcap = "*nat\n:MESHCAP_OUTPUT - [0:0]\n:MESHCAP_OUTBOUND - [0:0]\n:MESHCAP_REDIRECT - [0:0]\n\
            -A OUTPUT -j MESHCAP_OUTPUT\n-A MESHCAP_OUTPUT -j MESHCAP_OUTBOUND\n\
            -A MESHCAP_OUTBOUND -m owner --uid-owner 1337 -m comment --comment \"proxy\" -j RETURN\n\
            -A MESHCAP_OUTBOUND -j MESHCAP_REDIRECT\n\
            -A MESHCAP_REDIRECT -p tcp -m tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        let a = flatten(&parse_iptables(istio).unwrap()).unwrap();
        let b = flatten(&parse_iptables(meshcap).unwrap()).unwrap();
        assert!(diff(&a, &b).is_empty(), "{}", diff(&a, &b).join("\n"));
        // The RETURN after the redirect no longer exempts the proxy: a different verdict.
        let swapped = "* nat\n-N O\n-A OUTPUT -j O\n-A O -p tcp -j REDIRECT --to-ports 15001\n\
            -A O -m owner --uid-owner 1337 -j RETURN\nCOMMIT\n";
        let c = flatten(&parse_iptables(swapped).unwrap()).unwrap();
        assert!(!diff(&a, &c).is_empty());
        // The same rules in nftables.
        let nft = "table ip meshcap {\n chain nat_MESHCAP_OUTPUT {\n type nat hook output priority -100; policy accept;\n\
            jump nat_MESHCAP_OUTBOUND comment \"x y\"\n }\n chain nat_MESHCAP_OUTBOUND {\n\
            meta skuid 1337 return\n meta l4proto tcp redirect to :15001\n }\n}\n";
        let d = flatten(&parse_nft(nft).unwrap()[&Fam::V4]).unwrap();
        assert!(diff(&a, &d).is_empty(), "{}\n{}", show(&a), show(&d));
    }

    #[test]
    fn port_lists_id_ranges_and_the_owner_guard_are_layout_only() {
        let flat = |t: &str| flatten(&parse_iptables(t).unwrap()).unwrap();
        let linkerd = "*nat\n:O - [0:0]\n-A OUTPUT -j O\n\
            -A O -p tcp -m multiport --dports 3306,8000:8010 -j RETURN\n\
            -A O -m owner --uid-owner 4-5 -j RETURN\n\
            -A O -o lo -m owner ! --uid-owner 1337 -j RETURN\n\
            -A O -p tcp -j REDIRECT --to-ports 4140\nCOMMIT\n";
        let meshcap = "*nat\n:M - [0:0]\n-A OUTPUT -j M\n\
            -A M -p tcp -m tcp --dport 3306 -j RETURN\n\
            -A M -p tcp -m tcp --dport 8000:8010 -j RETURN\n\
            -A M -m owner --uid-owner 4 -j RETURN\n-A M -m owner --uid-owner 5 -j RETURN\n\
            -A M -o lo -m owner --uid-owner 0-4294967294 -m owner ! --uid-owner 1337 -j RETURN\n\
            -A M -p tcp -j REDIRECT --to-ports 4140\nCOMMIT\n";
        let (a, b) = (flat(linkerd), flat(meshcap));
        assert!(diff(&a, &b).is_empty(), "{}", diff(&a, &b).join("\n"));
        let nft = "table ip meshcap {\n chain nat_M {\n type nat hook output priority -100;\n\
            tcp dport 3306 return\n tcp dport 8000-8010 return\n meta skuid 4-5 return\n\
            oifname \"lo\" meta skuid != 1337 return\n meta l4proto tcp redirect to :4140\n }\n}\n";
        let c = flatten(&parse_nft(nft).unwrap()[&Fam::V4]).unwrap();
        assert!(diff(&a, &c).is_empty(), "{}", diff(&a, &c).join("\n"));
        // Another range, another port or a missing id is a different verdict.
        for other in [
            linkerd.replace("4-5", "4-6"),
            linkerd.replace("8000:8010", "8000:8011"),
            linkerd.replace("3306,", ""),
        ] {
            assert!(!diff(&a, &flat(&other)).is_empty(), "{other}");
        }
    }
}

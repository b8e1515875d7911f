//! The nf_tables tables that `iptables-nft` keeps (`ip nat`, `ip6 mangle`, ...), seen from
//! outside: which exist with which base chains, and removing the ones an `iptables-restore`
//! brought into being once nothing is left in them.
//!
//! `iptables-nft` creates a table, and each built-in chain in it, the first time a rule goes
//! there, and never deletes them. meshcap's iptables mode notes what its restore created
//! ([`shapes`] before and after) and, when the pod goes, hands that list to
//! [`remove_if_unused`]. The kernel makes that removal safe against everyone else: the
//! chains are deleted with `NLM_F_NONREC` (refused with EBUSY while a rule or a jump still
//! uses one) and the table likewise (refused while any chain, set or object is left), all in
//! one transaction, so a rule another component adds at the same moment makes the whole
//! removal fail instead of losing that rule.

use meshcap_model::rules::Family;
use nix::errno::Errno;

use crate::conn::{BatchOutcome, Conn};
use crate::sys::*;
use crate::wire::{attr_be32, attr_be64, attr_str, AttrIter, Attrs, Batch};
use crate::NftError;

/// `NLM_F_NONREC` (linux/netlink.h): do not delete what the object still holds; refuse.
const NLM_F_NONREC: u16 = 0x100;

/// One existing table: its chains, each with whether it is a base chain (has a hook) and how
/// many rules it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub name: String,
    pub chains: Vec<ChainShape>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainShape {
    pub name: String,
    pub base: bool,
    pub rules: usize,
}

impl TableShape {
    pub fn chain(&self, name: &str) -> Option<&ChainShape> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// Names of the base chains.
    pub fn base_chains(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .filter(|c| c.base)
            .map(|c| c.name.as_str())
    }
}

/// What [`remove_if_unused`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub chains: Vec<String>,
    pub table: bool,
    /// Why something asked for stays (another component's rule, chain or set in it).
    pub kept: Vec<String>,
}

pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

pub(crate) fn keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn name_attrs(table: &str) -> Attrs {
    let mut a = Attrs::new();
    a.put_str(NFTA_TABLE_NAME, table);
    a
}

/// The tables among `names` that exist in `family`, with their chains and rule counts, in the
/// order of `names`. Works in the calling thread's namespace.
pub fn shapes(family: Family, names: &[&str]) -> Result<Vec<TableShape>, NftError> {
    let op = "list xtables tables";
    let mut conn = Conn::open(op)?;
    let mut out = Vec::new();
    for name in names {
        if let Some(shape) = shape(&mut conn, op, family, name)? {
            out.push(shape);
        }
    }
    Ok(out)
}

/// [`shapes`] of several families over one socket: one table dump answers which of `names`
/// exist in every family (in a fresh pod, none: one round trip in all), then a chain dump per
/// family that has one, and, when `rule_counts`, a rule dump per table (without, every
/// [`ChainShape::rules`] is 0: enough to tell which base chains exist).
pub fn shapes_of(
    families: &[Family],
    names: &[&str],
    rule_counts: bool,
) -> Result<Vec<(Family, Vec<TableShape>)>, NftError> {
    let op = "list xtables tables";
    let mut conn = Conn::open(op)?;
    let kernel = |request| move |errno| NftError::Kernel { op, request, errno };
    let present = conn.tables()?;
    let mut out = Vec::new();
    for family in families {
        let proto = nfproto(*family);
        let here: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| present.iter().any(|(f, t)| *f == proto && t == n))
            .collect();
        let mut shapes = Vec::new();
        if !here.is_empty() {
            // The chain dump has no table filter; the rule dumps do.
            let chain_dump = conn
                .dump(NFT_MSG_GETCHAIN, proto, &Attrs::new())?
                .map_err(kernel("NFT_MSG_GETCHAIN"))?;
            for name in here {
                let rules = if rule_counts {
                    let mut filter = Attrs::new();
                    filter.put_str(NFTA_RULE_TABLE, name);
                    conn.dump(NFT_MSG_GETRULE, proto, &filter)?
                        .map_err(kernel("NFT_MSG_GETRULE"))?
                        .messages
                } else {
                    Vec::new()
                };
                shapes.push(parse_shape(name, &chain_dump.messages, &rules));
            }
        }
        out.push((*family, shapes));
    }
    Ok(out)
}

fn shape(
    conn: &mut Conn,
    op: &'static str,
    family: Family,
    table: &str,
) -> Result<Option<TableShape>, NftError> {
    let proto = nfproto(family);
    let kernel = |request| move |errno| NftError::Kernel { op, request, errno };
    match conn.request(NFT_MSG_GETTABLE, proto, &name_attrs(table))? {
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(kernel("NFT_MSG_GETTABLE")(errno)),
    }
    // The chain dump has no table filter; the rule dump does.
    let chain_dump = conn
        .dump(NFT_MSG_GETCHAIN, proto, &Attrs::new())?
        .map_err(kernel("NFT_MSG_GETCHAIN"))?;
    let mut filter = Attrs::new();
    filter.put_str(NFTA_RULE_TABLE, table);
    let rule_dump = conn
        .dump(NFT_MSG_GETRULE, proto, &filter)?
        .map_err(kernel("NFT_MSG_GETRULE"))?;
    Ok(Some(parse_shape(
        table,
        &chain_dump.messages,
        &rule_dump.messages,
    )))
}

/// `table`'s shape from the payloads of a chain dump (every table's chains) and a rule dump.
/// Pure: anything malformed is skipped, never trusted for more than it says.
pub fn parse_shape(table: &str, chain_dump: &[Vec<u8>], rule_dump: &[Vec<u8>]) -> TableShape {
    let mut chains: Vec<ChainShape> = Vec::new();
    for payload in chain_dump {
        let (mut in_table, mut name, mut base) = (false, String::new(), false);
        for (ty, v) in AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_CHAIN_TABLE => in_table = attr_str(v) == table,
                NFTA_CHAIN_NAME => name = attr_str(v),
                NFTA_CHAIN_HOOK => base = true,
                _ => {}
            }
        }
        if in_table && !chains.iter().any(|c| c.name == name) {
            chains.push(ChainShape {
                name,
                base,
                rules: 0,
            });
        }
    }
    for payload in rule_dump {
        let (mut in_table, mut chain) = (false, String::new());
        for (ty, v) in AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_RULE_TABLE => in_table = attr_str(v) == table,
                NFTA_RULE_CHAIN => chain = attr_str(v),
                _ => {}
            }
        }
        if !in_table {
            continue;
        }
        match chains.iter_mut().find(|c| c.name == chain) {
            Some(c) => c.rules += 1,
            // A chain created between the two dumps: count it, so it is never taken for empty.
            None => chains.push(ChainShape {
                name: chain,
                base: false,
                rules: 1,
            }),
        }
    }
    TableShape {
        name: table.to_string(),
        chains,
    }
}

/// Removes, in one transaction, those of `chains` (base chains of `table`) that hold no rule,
/// and the table itself when `with_table` and nothing else would be left in it. Absent chains
/// and an absent table are fine. When someone else changes the table at the same moment the
/// kernel refuses the transaction (EBUSY) and nothing is removed; it is looked at once more.
pub fn remove_if_unused(
    family: Family,
    table: &str,
    chains: &[String],
    with_table: bool,
) -> Result<Removed, NftError> {
    let op = "remove unused xtables table";
    let mut conn = Conn::open(op)?;
    let label = format!("table {} {table}", keyword(family));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(shape) = shape(&mut conn, op, family, table)? else {
            return Ok(Removed::default());
        };
        let mut removed = Removed::default();
        for name in chains {
            match shape.chain(name) {
                None => {}
                Some(c) if c.rules == 0 => removed.chains.push(name.clone()),
                Some(c) => removed
                    .kept
                    .push(format!("chain {name} of {label} holds {} rule(s)", c.rules)),
            }
        }
        let others: Vec<&str> = shape
            .chains
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| !removed.chains.iter().any(|r| r == c))
            .collect();
        if with_table {
            if others.is_empty() {
                removed.table = true;
            } else {
                removed.kept.push(format!(
                    "{label} still holds chain(s) {}",
                    others.join(", ")
                ));
            }
        }
        if removed.chains.is_empty() && !removed.table {
            return Ok(removed);
        }
        let proto = nfproto(family);
        let first = conn.reserve_seqs(1);
        let mut batch = Batch::new(first);
        for name in &removed.chains {
            let mut a = Attrs::new();
            a.put_str(NFTA_CHAIN_TABLE, table)
                .put_str(NFTA_CHAIN_NAME, name);
            batch.push(
                NFT_MSG_DELCHAIN,
                NLM_F_NONREC,
                proto,
                &a,
                format!("delete chain {name} of {label}"),
            );
        }
        if removed.table {
            batch.push(
                NFT_MSG_DELTABLE,
                NLM_F_NONREC,
                proto,
                &name_attrs(table),
                format!("delete {label}"),
            );
        }
        let (bytes, info) = batch.finish();
        conn.reserve_seqs(info.entries.len() as u32 + 1);
        match conn.run_batch(&bytes, &info)? {
            BatchOutcome::Committed => return Ok(removed),
            // Changed under us (a rule, a chain or the table itself): look again, once.
            BatchOutcome::Rejected(_, Errno::EBUSY | Errno::ENOENT | Errno::ENOTEMPTY)
                if attempt < 2 => {}
            BatchOutcome::Rejected(seq, errno) => {
                return Err(NftError::rejected(op, &info, &bytes, seq, errno))
            }
        }
    }
}

/// One rule of an xtables table as [`remove_prefixed`] needs it: where it is, its handle, and
/// the chain it jumps to, if it ends in a jump (`-j CHAIN`, an nf_tables `immediate` verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub chain: String,
    pub handle: u64,
    pub jump: Option<String>,
}

/// The rules of `table` in a rule dump, in dump order. Pure: other expressions (including
/// xtables' `match`/`target`) are skipped, never interpreted.
pub fn parse_rules(table: &str, rule_dump: &[Vec<u8>]) -> Vec<RuleRef> {
    let mut out = Vec::new();
    for payload in rule_dump {
        let (mut in_table, mut chain, mut handle, mut jump) = (false, String::new(), None, None);
        for (ty, v) in AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_RULE_TABLE => in_table = attr_str(v) == table,
                NFTA_RULE_CHAIN => chain = attr_str(v),
                NFTA_RULE_HANDLE => handle = attr_be64(v),
                NFTA_RULE_EXPRESSIONS => jump = jump_of(v),
                _ => {}
            }
        }
        if let (true, Some(handle)) = (in_table, handle) {
            out.push(RuleRef {
                chain,
                handle,
                jump,
            });
        }
    }
    out
}

/// The chain an expression list jumps to: an `immediate` expression whose data is an
/// `NFT_JUMP` verdict.
fn jump_of(exprs: &[u8]) -> Option<String> {
    let mut jump = None;
    for (ty, elem) in AttrIter::new(exprs) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let (mut name, mut data) = (String::new(), None);
        for (ety, ev) in AttrIter::new(elem) {
            match ety {
                NFTA_EXPR_NAME => name = attr_str(ev),
                NFTA_EXPR_DATA => data = Some(ev),
                _ => {}
            }
        }
        let Some(data) = data.filter(|_| name == "immediate") else {
            continue;
        };
        for (ity, iv) in AttrIter::new(data) {
            if ity != NFTA_IMMEDIATE_DATA {
                continue;
            }
            for (dty, dv) in AttrIter::new(iv) {
                if dty != NFTA_DATA_VERDICT {
                    continue;
                }
                let (mut code, mut chain) = (None, None);
                for (vty, vv) in AttrIter::new(dv) {
                    match vty {
                        NFTA_VERDICT_CODE => code = attr_be32(vv),
                        NFTA_VERDICT_CHAIN => chain = Some(attr_str(vv)),
                        _ => {}
                    }
                }
                if code == Some(NFT_JUMP as u32) {
                    jump = chain;
                }
            }
        }
    }
    jump
}

/// What an earlier apply brought into being in one xtables table ([`remove_prefixed`] deletes
/// it once nothing else is left in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created<'a> {
    pub family: Family,
    pub table: &'a str,
    /// Base chains the apply created.
    pub chains: &'a [String],
    /// The whole table was created by the apply.
    pub whole_table: bool,
}

/// What [`remove_prefixed`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixRemoval {
    /// Chains named with the prefix, deleted with their rules.
    pub chains: usize,
    /// Rules elsewhere that jumped to them, deleted.
    pub jumps: usize,
    /// Created base chains and tables deleted, as `table ip nat` / `chain OUTPUT of table ip nat`.
    pub created: Vec<String>,
    /// Why something of `created` stays (another component's rule, chain or set in it).
    pub kept: Vec<String>,
}

/// One existing xtables table as [`remove_prefixed`] dumped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedTable {
    pub family: Family,
    pub name: String,
    /// Chain names, in the kernel's order.
    pub chains: Vec<String>,
    pub rules: Vec<RuleRef>,
}

/// The batch of [`remove_prefixed`] for the tables as dumped. Pure; exposed for tests.
pub fn prefixed_removal_batch(
    tables: &[DumpedTable],
    prefix: &str,
    created: &[Created<'_>],
    first_seq: u32,
) -> (Vec<u8>, crate::wire::BatchInfo, PrefixRemoval) {
    let mut batch = Batch::new(first_seq);
    let mut done = PrefixRemoval::default();
    for DumpedTable {
        family,
        name: table,
        chains,
        rules,
    } in tables
    {
        let proto = nfproto(*family);
        let label = format!("table {} {table}", keyword(*family));
        let ours = |c: &str| c.starts_with(prefix);
        let jumps: Vec<&RuleRef> = rules
            .iter()
            .filter(|r| !ours(&r.chain) && r.jump.as_deref().is_some_and(ours))
            .collect();
        // Jumps into the prefixed chains first, then every prefixed chain's rules (they may jump
        // to each other), then the chains: by then nothing references them.
        for r in &jumps {
            let mut a = Attrs::new();
            a.put_str(NFTA_RULE_TABLE, table)
                .put_str(NFTA_RULE_CHAIN, &r.chain)
                .put(NFTA_RULE_HANDLE, &r.handle.to_be_bytes());
            batch.push(
                NFT_MSG_DELRULE,
                0,
                proto,
                &a,
                format!("delete rule {} of chain {} of {label}", r.handle, r.chain),
            );
        }
        let prefixed: Vec<&str> = chains
            .iter()
            .map(String::as_str)
            .filter(|c| ours(c))
            .collect();
        for chain in &prefixed {
            if rules.iter().any(|r| r.chain == *chain) {
                let mut a = Attrs::new();
                a.put_str(NFTA_RULE_TABLE, table)
                    .put_str(NFTA_RULE_CHAIN, chain);
                batch.push(
                    NFT_MSG_DELRULE,
                    0,
                    proto,
                    &a,
                    format!("flush chain {chain} of {label}"),
                );
            }
        }
        for chain in &prefixed {
            let mut a = Attrs::new();
            a.put_str(NFTA_CHAIN_TABLE, table)
                .put_str(NFTA_CHAIN_NAME, chain);
            batch.push(
                NFT_MSG_DELCHAIN,
                0,
                proto,
                &a,
                format!("delete chain {chain} of {label}"),
            );
        }
        done.chains += prefixed.len();
        done.jumps += jumps.len();
        // What the applies created goes too when nothing but meshcap's rules was in it; the
        // kernel checks again (NLM_F_NONREC), atomically with the rest.
        let Some(c) = created
            .iter()
            .find(|c| c.family == *family && c.table == table)
        else {
            continue;
        };
        let left = |chain: &str| {
            rules
                .iter()
                .filter(|r| r.chain == chain && !ours(chain) && !jumps.contains(r))
                .count()
        };
        let mut deleted: Vec<&str> = prefixed.clone();
        for name in c.chains {
            if !chains.contains(name) {
                continue;
            }
            match left(name) {
                0 => {
                    let mut a = Attrs::new();
                    a.put_str(NFTA_CHAIN_TABLE, table)
                        .put_str(NFTA_CHAIN_NAME, name);
                    batch.push(
                        NFT_MSG_DELCHAIN,
                        NLM_F_NONREC,
                        proto,
                        &a,
                        format!("delete chain {name} of {label}"),
                    );
                    done.created.push(format!("chain {name} of {label}"));
                    deleted.push(name);
                }
                n => done
                    .kept
                    .push(format!("chain {name} of {label} holds {n} rule(s)")),
            }
        }
        if c.whole_table {
            let others: Vec<&str> = chains
                .iter()
                .map(String::as_str)
                .filter(|n| !deleted.contains(n))
                .collect();
            if others.is_empty() {
                batch.push(
                    NFT_MSG_DELTABLE,
                    NLM_F_NONREC,
                    proto,
                    &name_attrs(table),
                    format!("delete {label}"),
                );
                done.created.push(label);
            } else {
                done.kept.push(format!(
                    "{label} still holds chain(s) {}",
                    others.join(", ")
                ));
            }
        }
    }
    let (bytes, info) = batch.finish();
    (bytes, info, done)
}

/// Removes, in one transaction over both families, every chain named with `prefix` in the
/// xtables tables `names` (with its rules) and every rule elsewhere in them that jumps to one,
/// which is what `iptables-nft-restore --noflush` does given `:CHAIN`, `-D` of each jump and
/// `-X CHAIN`; then, in the same transaction, what `created` lists once nothing but those
/// rules was in it (as [`remove_if_unused`]). Works in the calling thread's namespace, over
/// one netlink socket: the kernel waits for one RCU grace period when a socket that committed
/// deletions closes, so one socket waits once where a restore per family, then one removal
/// per created table, each waited on their own.
///
/// When someone else changes a table at the same moment the kernel refuses the transaction
/// and nothing is removed; it is looked at once more.
pub fn remove_prefixed(
    families: &[Family],
    names: &[&str],
    prefix: &str,
    created: &[Created<'_>],
) -> Result<PrefixRemoval, NftError> {
    let op = "remove meshcap's xtables chains";
    let mut conn = Conn::open(op)?;
    let kernel = |request| move |errno| NftError::Kernel { op, request, errno };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tables = Vec::new();
        for family in families {
            let proto = nfproto(*family);
            let mut present = Vec::new();
            for name in names {
                match conn.request(NFT_MSG_GETTABLE, proto, &name_attrs(name))? {
                    Ok(_) => present.push(*name),
                    Err(Errno::ENOENT) => {}
                    Err(errno) => return Err(kernel("NFT_MSG_GETTABLE")(errno)),
                }
            }
            if present.is_empty() {
                continue;
            }
            // The chain dump has no table filter; the rule dumps do.
            let chain_dump = conn
                .dump(NFT_MSG_GETCHAIN, proto, &Attrs::new())?
                .map_err(kernel("NFT_MSG_GETCHAIN"))?;
            for name in present {
                let mut filter = Attrs::new();
                filter.put_str(NFTA_RULE_TABLE, name);
                let rule_dump = conn
                    .dump(NFT_MSG_GETRULE, proto, &filter)?
                    .map_err(kernel("NFT_MSG_GETRULE"))?;
                let shape = parse_shape(name, &chain_dump.messages, &[]);
                tables.push(DumpedTable {
                    family: *family,
                    name: name.to_string(),
                    chains: shape.chains.into_iter().map(|c| c.name).collect(),
                    rules: parse_rules(name, &rule_dump.messages),
                });
            }
        }
        let first = conn.reserve_seqs(1);
        let (bytes, info, done) = prefixed_removal_batch(&tables, prefix, created, first);
        if info.entries.is_empty() {
            return Ok(done);
        }
        conn.reserve_seqs(info.entries.len() as u32 + 1);
        match conn.run_batch(&bytes, &info)? {
            BatchOutcome::Committed => return Ok(done),
            // Changed under us (a rule, a chain or a table): look again, once.
            BatchOutcome::Rejected(_, Errno::EBUSY | Errno::ENOENT | Errno::ENOTEMPTY)
                if attempt < 2 => {}
            BatchOutcome::Rejected(seq, errno) => {
                return Err(NftError::rejected(op, &info, &bytes, seq, errno))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule as the kernel dumps it: nfgenmsg, table, chain, handle, expressions.
    fn rule_payload(table: &str, chain: &str, handle: u64, jump: Option<&str>) -> Vec<u8> {
        let mut a = Attrs::new();
        a.put_str(NFTA_RULE_TABLE, table)
            .put_str(NFTA_RULE_CHAIN, chain)
            .put(NFTA_RULE_HANDLE, &handle.to_be_bytes());
        a.nested(NFTA_RULE_EXPRESSIONS, |list| {
            list.nested(NFTA_LIST_ELEM, |e| {
                e.put_str(NFTA_EXPR_NAME, "counter");
            });
            list.nested(NFTA_LIST_ELEM, |e| {
                e.put_str(NFTA_EXPR_NAME, "immediate");
                e.nested(NFTA_EXPR_DATA, |d| {
                    d.put_be32(NFTA_IMMEDIATE_DREG, 0);
                    d.nested(NFTA_IMMEDIATE_DATA, |v| {
                        v.nested(NFTA_DATA_VERDICT, |vd| {
                            match jump {
                                Some(target) => vd
                                    .put_be32(NFTA_VERDICT_CODE, NFT_JUMP as u32)
                                    .put_str(NFTA_VERDICT_CHAIN, target),
                                None => vd.put_be32(NFTA_VERDICT_CODE, 1),
                            };
                        });
                    });
                });
            });
        });
        let mut payload = vec![NFPROTO_IPV4, 0, 0, 0];
        payload.extend_from_slice(a.bytes());
        payload
    }

    #[test]
    fn parse_rules_finds_jumps_only() {
        let dump = vec![
            rule_payload("nat", "OUTPUT", 4, Some("MESHCAP_OUTPUT")),
            rule_payload("nat", "OUTPUT", 5, None),
            rule_payload("mangle", "OUTPUT", 6, Some("MESHCAP_X")),
        ];
        let rules = parse_rules("nat", &dump);
        assert_eq!(
            rules,
            vec![
                RuleRef {
                    chain: "OUTPUT".into(),
                    handle: 4,
                    jump: Some("MESHCAP_OUTPUT".into())
                },
                RuleRef {
                    chain: "OUTPUT".into(),
                    handle: 5,
                    jump: None
                },
            ]
        );
    }

    fn r(chain: &str, handle: u64, jump: Option<&str>) -> RuleRef {
        RuleRef {
            chain: chain.into(),
            handle,
            jump: jump.map(Into::into),
        }
    }

    fn table(family: Family, chains: &[&str], rules: Vec<RuleRef>) -> DumpedTable {
        DumpedTable {
            family,
            name: "nat".to_string(),
            chains: chains.iter().map(|c| c.to_string()).collect(),
            rules,
        }
    }

    fn described(info: &crate::wire::BatchInfo) -> Vec<&str> {
        info.entries
            .iter()
            .map(|(_, _, w)| match w {
                crate::wire::What::Text(text) => text.as_str(),
                crate::wire::What::Rule => "(a rule, named from its message)",
            })
            .collect()
    }

    #[test]
    fn removal_deletes_jumps_then_chains_then_what_was_created() {
        let tables = vec![table(
            Family::V4,
            &["PREROUTING", "OUTPUT", "MESHCAP_OUTPUT", "MESHCAP_REDIRECT"],
            vec![
                r("OUTPUT", 7, Some("MESHCAP_OUTPUT")),
                r("MESHCAP_OUTPUT", 8, Some("MESHCAP_REDIRECT")),
                r("MESHCAP_REDIRECT", 9, None),
            ],
        )];
        let chains = ["PREROUTING".to_string(), "OUTPUT".to_string()];
        let created = [Created {
            family: Family::V4,
            table: "nat",
            chains: &chains,
            whole_table: true,
        }];
        let (_, info, done) = prefixed_removal_batch(&tables, "MESHCAP_", &created, 1);
        assert_eq!(
            described(&info),
            [
                "delete rule 7 of chain OUTPUT of table ip nat",
                "flush chain MESHCAP_OUTPUT of table ip nat",
                "flush chain MESHCAP_REDIRECT of table ip nat",
                "delete chain MESHCAP_OUTPUT of table ip nat",
                "delete chain MESHCAP_REDIRECT of table ip nat",
                "delete chain PREROUTING of table ip nat",
                "delete chain OUTPUT of table ip nat",
                "delete table ip nat",
            ]
        );
        assert_eq!((done.chains, done.jumps), (2, 1));
        assert!(done.kept.is_empty());
    }

    #[test]
    fn removal_keeps_what_another_component_uses() {
        let tables = vec![table(
            Family::V6,
            &["OUTPUT", "POSTROUTING", "OTHER", "MESHCAP_OUTPUT"],
            vec![
                r("OUTPUT", 3, Some("MESHCAP_OUTPUT")),
                r("OUTPUT", 4, Some("OTHER")),
                r("MESHCAP_OUTPUT", 5, None),
            ],
        )];
        let chains = ["OUTPUT".to_string(), "POSTROUTING".to_string()];
        let created = [Created {
            family: Family::V6,
            table: "nat",
            chains: &chains,
            whole_table: true,
        }];
        let (_, info, done) = prefixed_removal_batch(&tables, "MESHCAP_", &created, 1);
        assert_eq!(
            described(&info),
            [
                "delete rule 3 of chain OUTPUT of table ip6 nat",
                "flush chain MESHCAP_OUTPUT of table ip6 nat",
                "delete chain MESHCAP_OUTPUT of table ip6 nat",
                "delete chain POSTROUTING of table ip6 nat",
            ]
        );
        assert_eq!(
            done.kept,
            [
                "chain OUTPUT of table ip6 nat holds 1 rule(s)",
                "table ip6 nat still holds chain(s) OUTPUT, OTHER",
            ]
        );
    }

    #[test]
    fn nothing_of_meshcap_means_no_message() {
        let tables = vec![table(Family::V4, &["OUTPUT"], vec![r("OUTPUT", 3, None)])];
        let (_, info, done) = prefixed_removal_batch(&tables, "MESHCAP_", &[], 1);
        assert!(info.entries.is_empty());
        assert_eq!(done, PrefixRemoval::default());
    }
}

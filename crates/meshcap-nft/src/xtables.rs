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
use crate::wire::{attr_str, AttrIter, Attrs, Batch};
use crate::NftError;

/// `NFT_MSG_DELCHAIN` (enum nf_tables_msg_types).
const NFT_MSG_DELCHAIN: u16 = 5;
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

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn keyword(family: Family) -> &'static str {
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
                return Err(NftError::Rejected {
                    op,
                    message: info
                        .describe(seq)
                        .map(str::to_string)
                        .unwrap_or_else(|| "the transaction".to_string()),
                    errno,
                })
            }
        }
    }
}

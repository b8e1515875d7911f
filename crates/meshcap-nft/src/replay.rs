//! Writing xtables-nft rules without `iptables-restore`: what a restore wrote into a fresh
//! namespace, read back from the kernel and sent again as one nf_tables batch.
//!
//! `iptables-nft-restore` turns each rule into nf_tables expressions (native ones where it can,
//! `match`/`target` compat expressions carrying the xtables structures otherwise) and stores the
//! comment as rule userdata; `iptables-save` reads them back. A [`Template`] is that encoding,
//! taken from the kernel after a real restore ([`capture`]): the tables, their chains with
//! hooks and policies, and the rules in order, without handles and with counters at zero. Sent
//! again in another fresh namespace ([`replay`]), it creates the same objects byte for byte, so
//! `iptables-save`, `iptables-nft` and the kernel cannot tell it from the restore's, at the
//! cost of one netlink round trip instead of a process.
//!
//! A rule dump does not carry `NFTA_RULE_COMPAT` (the layer-4 protocol xtables' compat
//! extensions are checked against, `-p tcp` and its negation), which `iptables-nft` sends with
//! every rule; [`capture`] derives it from the rule's own protocol match, as `iptables-nft` set
//! it. Callers verify a template once before they trust it: replayed into a scratch namespace,
//! it must read back as itself.

use meshcap_model::rules::Family;
use nix::errno::Errno;

use crate::conn::{BatchOutcome, Conn};
use crate::sys::*;
use meshcap_nft_types::{CmpOp, Expr, MetaKey, PayloadBase};

use crate::wire::{attr_be32, attr_str, AttrIter, Attrs, Batch, RawAttrIter};
use crate::xtables::{keyword, nfproto};
use crate::NftError;

/// Expressions that refer to objects outside the table's chains (sets, stateful objects):
/// a template holds only tables, chains and rules, so it is not taken where these appear.
const UNSUPPORTED_EXPRESSIONS: &[&str] = &["lookup", "dynset", "objref", "flow_offload"];

/// Magic first line of a stored template.
const MAGIC: &[u8] = b"meshcap xtables template 1\n";

/// One message of a template: an nf_tables NEW* message type and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg: u16,
    pub attrs: Vec<u8>,
}

/// The tables, chains and rules of one family, as messages that recreate them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub family: Family,
    pub messages: Vec<Message>,
}

/// Reads `tables` of `family` (every chain and rule in them) in the calling thread's
/// namespace. `Ok(None)` when the tables hold something a template cannot carry (a set or
/// stateful object reference, an owner or dormant flag) or one of them is missing.
pub fn capture(family: Family, tables: &[&str]) -> Result<Option<Template>, NftError> {
    let op = "read xtables tables";
    let proto = nfproto(family);
    let kernel = |request| move |errno| NftError::Kernel { op, request, errno };
    let mut conn = Conn::open(op)?;
    let chain_dump = conn
        .dump(NFT_MSG_GETCHAIN, proto, &Attrs::new())?
        .map_err(kernel("NFT_MSG_GETCHAIN"))?;
    if chain_dump.interrupted {
        return Ok(None);
    }
    let mut messages = Vec::new();
    for table in tables {
        let mut name = Attrs::new();
        name.put_str(NFTA_TABLE_NAME, table);
        let reply = match conn.request(NFT_MSG_GETTABLE, proto, &name)? {
            Ok(reply) => reply,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(kernel("NFT_MSG_GETTABLE")(errno)),
        };
        let Some(payload) = reply.first() else {
            return Ok(None);
        };
        let mut attrs = Attrs::new();
        for (ty, v, whole) in RawAttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_TABLE_NAME | NFTA_TABLE_USERDATA => {
                    attrs.put_whole(whole);
                }
                // Owner, dormant or persist: not what a restore makes.
                NFTA_TABLE_FLAGS if attr_be32(v) != Some(0) => return Ok(None),
                _ => {}
            }
        }
        messages.push(Message {
            msg: NFT_MSG_NEWTABLE,
            attrs: attrs.bytes().to_vec(),
        });

        for payload in &chain_dump.messages {
            let body = payload.get(NFGENMSG_LEN..).unwrap_or(&[]);
            let in_table = RawAttrIter::new(body)
                .any(|(ty, v, _)| ty == NFTA_CHAIN_TABLE && attr_str(v) == *table);
            if !in_table {
                continue;
            }
            let mut attrs = Attrs::new();
            for (ty, _, whole) in RawAttrIter::new(body) {
                match ty {
                    NFTA_CHAIN_TABLE | NFTA_CHAIN_NAME | NFTA_CHAIN_HOOK | NFTA_CHAIN_POLICY
                    | NFTA_CHAIN_TYPE | NFTA_CHAIN_FLAGS | NFTA_CHAIN_USERDATA => {
                        attrs.put_whole(whole);
                    }
                    // Base chains created with counters keep them, from zero.
                    NFTA_CHAIN_COUNTERS => {
                        attrs.nested(NFTA_CHAIN_COUNTERS, zero_counters);
                    }
                    _ => {}
                }
            }
            messages.push(Message {
                msg: NFT_MSG_NEWCHAIN,
                attrs: attrs.bytes().to_vec(),
            });
        }

        let mut filter = Attrs::new();
        filter.put_str(NFTA_RULE_TABLE, table);
        let rule_dump = conn
            .dump(NFT_MSG_GETRULE, proto, &filter)?
            .map_err(kernel("NFT_MSG_GETRULE"))?;
        if rule_dump.interrupted {
            return Ok(None);
        }
        for payload in &rule_dump.messages {
            let body = payload.get(NFGENMSG_LEN..).unwrap_or(&[]);
            let mut attrs = Attrs::new();
            let mut compat = (0u32, false);
            for (ty, v, whole) in RawAttrIter::new(body) {
                match ty {
                    NFTA_RULE_TABLE | NFTA_RULE_CHAIN | NFTA_RULE_USERDATA => {
                        attrs.put_whole(whole);
                    }
                    NFTA_RULE_EXPRESSIONS => {
                        let Some(exprs) = expressions(v) else {
                            return Ok(None);
                        };
                        compat = l4proto_match(v).unwrap_or((0, false));
                        attrs.nested(NFTA_RULE_EXPRESSIONS, |a| {
                            a.extend(&exprs);
                        });
                    }
                    _ => {}
                }
            }
            attrs.nested(NFTA_RULE_COMPAT, |a| {
                a.put_be32(NFTA_RULE_COMPAT_PROTO, compat.0);
                a.put_be32(
                    NFTA_RULE_COMPAT_FLAGS,
                    if compat.1 { NFT_RULE_COMPAT_F_INV } else { 0 },
                );
            });
            messages.push(Message {
                msg: NFT_MSG_NEWRULE,
                attrs: attrs.bytes().to_vec(),
            });
        }
    }
    Ok(Some(Template { family, messages }))
}

fn zero_counters(a: &mut Attrs) {
    a.put(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
    a.put(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
}

/// A rule's expression list as it is sent again: every expression as it came, except that
/// counters start from zero. `None` when one refers to something outside the rule.
fn expressions(list: &[u8]) -> Option<Vec<u8>> {
    let mut out = Attrs::new();
    for (ty, elem, whole) in RawAttrIter::new(list) {
        if ty != NFTA_LIST_ELEM {
            return None;
        }
        let name = AttrIter::new(elem)
            .find(|(t, _)| *t == NFTA_EXPR_NAME)
            .map(|(_, v)| attr_str(v))?;
        if UNSUPPORTED_EXPRESSIONS.contains(&name.as_str()) {
            return None;
        }
        if name == "counter" {
            out.nested(NFTA_LIST_ELEM, |e| {
                e.put_str(NFTA_EXPR_NAME, "counter");
                e.nested(NFTA_EXPR_DATA, zero_counters);
            });
        } else {
            out.put_whole(whole);
        }
    }
    Some(out.bytes().to_vec())
}

/// The rule's match on the layer-4 protocol (`-p tcp`: a `meta l4proto` or IPv4 protocol
/// field load, then an equality or inequality with one byte), as `(protocol, negated)`.
fn l4proto_match(list: &[u8]) -> Option<(u32, bool)> {
    let mut loaded = None;
    for expr in Expr::parse_list(list).ok()? {
        match expr {
            Expr::MetaLoad {
                key: MetaKey::L4proto,
                dreg,
            }
            | Expr::Payload {
                base: PayloadBase::Network,
                offset: 9,
                len: 1,
                dreg,
            } => loaded = Some(dreg),
            Expr::Cmp { sreg, op, data } if Some(sreg) == loaded => {
                let [proto] = data.as_bytes() else {
                    return None;
                };
                return match op {
                    CmpOp::Eq => Some((u32::from(*proto), false)),
                    CmpOp::Neq => Some((u32::from(*proto), true)),
                    _ => None,
                };
            }
            _ => loaded = None,
        }
    }
    None
}

/// Creates everything `templates` hold in the calling thread's namespace, in one transaction.
/// Every table must be absent (they are created exclusively): a table that appeared since the
/// caller looked makes the whole batch fail, and nothing is created.
pub fn replay(templates: &[&Template]) -> Result<(), NftError> {
    let op = "write xtables rules";
    let mut conn = Conn::open(op)?;
    let mut batch = Batch::new(conn.reserve_seqs(1));
    for t in templates {
        let family = nfproto(t.family);
        for m in &t.messages {
            let flags = match m.msg {
                NFT_MSG_NEWRULE => NLM_F_CREATE | NLM_F_APPEND,
                _ => NLM_F_CREATE | NLM_F_EXCL,
            };
            batch.push_encoded(m.msg, flags, family, &m.attrs, describe(t.family, m));
        }
    }
    let (bytes, info) = batch.finish();
    conn.reserve_seqs(u32::try_from(info.entries.len() + 1).unwrap_or(u32::MAX));
    match conn.run_batch(&bytes, &info)? {
        BatchOutcome::Committed => Ok(()),
        BatchOutcome::Rejected(seq, errno) => {
            Err(NftError::rejected(op, &info, &bytes, seq, errno))
        }
    }
}

fn describe(family: Family, m: &Message) -> String {
    let name = |ty| {
        AttrIter::new(&m.attrs)
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| attr_str(v))
            .unwrap_or_default()
    };
    let keyword = keyword(family);
    match m.msg {
        NFT_MSG_NEWTABLE => format!("table {keyword} {}", name(NFTA_TABLE_NAME)),
        NFT_MSG_NEWCHAIN => format!(
            "chain {} of table {keyword} {}",
            name(NFTA_CHAIN_NAME),
            name(NFTA_CHAIN_TABLE)
        ),
        _ => format!(
            "a rule in chain {} of table {keyword} {}",
            name(NFTA_RULE_CHAIN),
            name(NFTA_RULE_TABLE)
        ),
    }
}

impl Template {
    /// How many rules the template writes.
    pub fn rule_count(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.msg == NFT_MSG_NEWRULE)
            .count()
    }

    /// The names of the chains it creates without a hook (user chains).
    pub fn user_chains(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.msg == NFT_MSG_NEWCHAIN)
            .filter(|m| !AttrIter::new(&m.attrs).any(|(t, _)| t == NFTA_CHAIN_HOOK))
            .filter_map(|m| {
                AttrIter::new(&m.attrs)
                    .find(|(t, _)| *t == NFTA_CHAIN_NAME)
                    .map(|(_, v)| attr_str(v))
            })
            .collect()
    }

    /// The stored form: a magic line, `key` (what the template was made for, compared on
    /// load), the family, then each message as type, length and attributes.
    pub fn encode(&self, key: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_bytes(&mut out, key.as_bytes());
        out.push(nfproto(self.family));
        out.extend_from_slice(
            &u32::try_from(self.messages.len())
                .unwrap_or(0)
                .to_le_bytes(),
        );
        for m in &self.messages {
            out.extend_from_slice(&m.msg.to_le_bytes());
            put_bytes(&mut out, &m.attrs);
        }
        out
    }

    /// The template stored in `bytes` when it was made for `key`; `None` for anything else
    /// (another key, a torn or foreign file).
    pub fn decode(bytes: &[u8], key: &str) -> Option<Template> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        if take_bytes(&mut rest)? != key.as_bytes() {
            return None;
        }
        let family = match take(&mut rest, 1)?[0] {
            NFPROTO_IPV4 => Family::V4,
            NFPROTO_IPV6 => Family::V6,
            _ => return None,
        };
        let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let mut messages = Vec::new();
        for _ in 0..count {
            let msg = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
            if !matches!(msg, NFT_MSG_NEWTABLE | NFT_MSG_NEWCHAIN | NFT_MSG_NEWRULE) {
                return None;
            }
            messages.push(Message {
                msg,
                attrs: take_bytes(&mut rest)?.to_vec(),
            });
        }
        rest.is_empty().then_some(Template { family, messages })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?);
    take(rest, usize::try_from(n).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(name: &str, data: impl FnOnce(&mut Attrs)) -> Vec<u8> {
        let mut a = Attrs::new();
        a.nested(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, name);
            e.nested(NFTA_EXPR_DATA, data);
        });
        a.bytes().to_vec()
    }

    fn proto_match(op: u32, proto: u8) -> Vec<u8> {
        let mut list = expr("payload", |d| {
            d.put_be32(NFTA_PAYLOAD_DREG, 1)
                .put_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
                .put_be32(NFTA_PAYLOAD_OFFSET, 9)
                .put_be32(NFTA_PAYLOAD_LEN, 1);
        });
        list.extend(expr("cmp", |d| {
            d.put_be32(NFTA_CMP_SREG, 1).put_be32(NFTA_CMP_OP, op);
            d.nested(NFTA_CMP_DATA, |v| {
                v.put(NFTA_DATA_VALUE, &[proto]);
            });
        }));
        list
    }

    #[test]
    fn the_protocol_match_gives_the_rules_compat_protocol() {
        assert_eq!(l4proto_match(&proto_match(NFT_CMP_EQ, 6)), Some((6, false)));
        assert_eq!(
            l4proto_match(&proto_match(NFT_CMP_NEQ, 17)),
            Some((17, true))
        );
        let mut meta = expr("meta", |d| {
            d.put_be32(NFTA_META_KEY, NFT_META_L4PROTO)
                .put_be32(NFTA_META_DREG, 1);
        });
        meta.extend(expr("cmp", |d| {
            d.put_be32(NFTA_CMP_SREG, 1)
                .put_be32(NFTA_CMP_OP, NFT_CMP_EQ);
            d.nested(NFTA_CMP_DATA, |v| {
                v.put(NFTA_DATA_VALUE, &[6]);
            });
        }));
        assert_eq!(l4proto_match(&meta), Some((6, false)));
        // A comparison of some other register, or none at all, is no protocol match.
        let other = expr("cmp", |d| {
            d.put_be32(NFTA_CMP_SREG, 1)
                .put_be32(NFTA_CMP_OP, NFT_CMP_EQ);
        });
        assert_eq!(l4proto_match(&other), None);
    }

    #[test]
    fn counters_restart_from_zero_and_set_lookups_are_refused() {
        let counted = expr("counter", |d| {
            d.put(NFTA_COUNTER_BYTES, &99u64.to_be_bytes())
                .put(NFTA_COUNTER_PACKETS, &3u64.to_be_bytes());
        });
        let zero = expr("counter", zero_counters);
        assert_eq!(expressions(&counted), Some(zero));
        let lookup = expr("lookup", |d| {
            d.put_str(1, "someset");
        });
        assert_eq!(expressions(&lookup), None);
    }

    #[test]
    fn a_stored_template_reads_back_only_for_its_key() {
        let t = Template {
            family: Family::V6,
            messages: vec![
                Message {
                    msg: NFT_MSG_NEWTABLE,
                    attrs: vec![1, 2, 3, 4],
                },
                Message {
                    msg: NFT_MSG_NEWRULE,
                    attrs: Vec::new(),
                },
            ],
        };
        let bytes = t.encode("key");
        assert_eq!(Template::decode(&bytes, "key"), Some(t));
        assert_eq!(Template::decode(&bytes, "other"), None);
        assert_eq!(Template::decode(&bytes[..bytes.len() - 1], "key"), None);
        assert_eq!(Template::decode(b"junk", "key"), None);
    }
}

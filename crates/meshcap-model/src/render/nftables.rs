//! nftables renderer: the IR's rules as nf_tables expressions ([`nft_rules`]), and from those
//! the `nft -f` script [`render`] prints. `meshcap-nft` sends the very same expressions over
//! netlink, so the text and the bytes cannot disagree; the expression types, their encoding
//! and their nft syntax are in `meshcap_nft_types`.
//!
//! # Mapping
//!
//! - meshcap owns one table per family: `table ip meshcap` ([`Family::V4`]) and
//!   `table ip6 meshcap` ([`Family::V6`]) ([`NFT_TABLE`]). Nothing outside it is touched.
//! - The IR's iptables tables share that one nft table, so chain names are prefixed with the
//!   iptables table: `{table}_{chain}` ([`chain_name`]), e.g. `nat_MESHCAP_OUTPUT`; IR chain
//!   names are unique only within one iptables table (`MESHCAP_INBOUND` exists in raw, mangle
//!   and nat). Jump targets are mapped the same way, within the rule's own table.
//! - A chain with a hook is a base chain ([`base_chain`]): nat -> `type nat hook
//!   {prerouting|output} priority -100`; mangle -> `type filter hook prerouting priority -150` /
//!   `type route hook output priority -150` (route, so a mark set on output triggers a reroute
//!   as the iptables mangle table does); raw -> `type filter hook {prerouting|output} priority
//!   -300`; always `policy accept`. Others are regular chains.
//! - Matches ([`match_exprs`]) and targets ([`target_exprs`]) become the expressions `nft`
//!   generates for `meta l4proto tcp`, `tcp dport 15008`, a negated port set as one `!=` per
//!   port (`tcp dport != 53 tcp dport != 15008`), a port range (`tcp dport 4190-4191`),
//!   `udp sport 53`, `ip saddr 127.0.0.6/32`, `ip6 daddr != ::1/128`, `iifname "lo"`,
//!   `meta skuid 1337`, `meta skgid != 1337`,
//!   `meta mark 0x539`, `ct mark 0x539`, `ct state established,related`, `ct state invalid`;
//!   `jump nat_MESHCAP_X`, `return`, `accept`, `drop`, `redirect to :15001`, `tproxy to :15006
//!   meta mark set 0x539 accept`, `meta mark set 0x539` (non-terminal, like iptables MARK),
//!   `ct mark set meta mark`, `meta mark set ct mark`, `ct zone set 2`.
//! - TPROXY: iptables' TPROXY target drops a packet for which no socket is found, but nft's
//!   `tproxy` expression then BREAKs (the rule simply stops and evaluation goes on with the next
//!   rule, `nft_tproxy_eval` in net/netfilter/nft_tproxy.c). So a [`Target::Tproxy`] rule
//!   expands to two nft rules: the tproxy rule, then the same matches with `drop`. The matches
//!   only read the packet, so the second rule sees exactly the packets for which the first one
//!   broke.
//!
//! Every nft rule carries a comment: the IR rule's purpose (which mesh behaviour or setting it
//! implements; both rules of a TPROXY pair share it), or the rule's own syntax for a rule
//! without one ([`rule_comment`]). It is stored as the rule's userdata exactly as `nft` stores
//! one, so `nft list ruleset` and `meshcap inspect` say why each rule is there whichever way
//! the rules were installed. CHECK does not trust comments: it compares the expressions it
//! reads back.
//!
//! [`render`] prints a complete replace transaction: `nft -f` applies a file atomically, and
//! `table` + `delete table` first makes it idempotent (an absent table is created, then the
//! whole old table goes), exactly what the netlink backend's batch does.

use std::fmt::Write as _;

use ipnet::IpNet;
use meshcap_nft_types::sys::{
    CT_STATE_ESTABLISHED_RELATED, CT_STATE_INVALID, IFNAMSIZ, NFPROTO_IPV4, NFPROTO_IPV6,
    NFT_REG_1, NF_NAT_RANGE_PROTO_SPECIFIED,
};
use meshcap_nft_types::{
    ByteorderOp, CmpOp, CtKey, Expr, MetaKey, NftRule, PayloadBase, Value, Verdict,
};

use crate::rules::{
    format_marker, Chain, Family, Hook, Match, Rule, Ruleset, Table, Target, NFT_TABLE,
};

pub use meshcap_nft_types::COMMENT_MAX_LEN;

/// The nft family keyword of a meshcap table.
pub fn family_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The netlink family (`NFPROTO_*`) of a meshcap table.
pub fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// The nft chain name of IR chain `chain` of iptables table `table`.
pub fn chain_name(table: Table, chain: &str) -> String {
    format!("{}_{}", table.name(), chain)
}

/// Type, hook and priority of an nft base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter`, `nat` or `route`.
    pub chain_type: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

impl BaseChain {
    /// The nft hook keyword.
    pub fn hook_name(&self) -> &'static str {
        match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
        }
    }
}

/// The base chain that stands for the iptables built-in chain `hook` of `table`. Priorities are
/// the iptables ones (NF_IP_PRI_RAW -300, NF_IP_PRI_MANGLE -150, NF_IP_PRI_NAT_DST -100), so
/// meshcap's chains run where the iptables backend's would.
pub fn base_chain(table: Table, hook: Hook) -> BaseChain {
    let (chain_type, priority) = match (table, hook) {
        (Table::Nat, _) => ("nat", -100),
        (Table::Mangle, Hook::Prerouting) => ("filter", -150),
        (Table::Mangle, Hook::Output) => ("route", -150),
        (Table::Raw, _) => ("filter", -300),
    };
    BaseChain {
        chain_type,
        hook,
        priority,
    }
}

/// Why an IR rule has no nftables form. The model never produces these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unexpressible {
    PositivePortSet,
    AddressFamily(IpNet),
    InterfaceName(String),
}

impl std::fmt::Display for Unexpressible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unexpressible::PositivePortSet => {
                f.write_str("positive match on several ports (needs an nft set)")
            }
            Unexpressible::AddressFamily(net) => {
                write!(f, "address {net} does not belong to this family")
            }
            Unexpressible::InterfaceName(name) => write!(
                f,
                "interface name {name:?} is empty or longer than 15 bytes"
            ),
        }
    }
}

impl std::error::Error for Unexpressible {}

/// Every nft rule that IR `rule` of `table` becomes, in order: one, or two for
/// [`Target::Tproxy`] (the tproxy rule and its `drop` fallback for packets without a
/// transparent socket; see the module docs).
pub fn nft_rules(table: Table, rule: &Rule, family: Family) -> Result<Vec<NftRule>, Unexpressible> {
    let mut matches = Vec::with_capacity(rule.matches.len() * 3 + 6);
    match_exprs(&mut matches, &rule.matches, family)?;
    let fallback = matches!(rule.target, Target::Tproxy { .. }).then(|| matches.clone());
    let mut exprs = matches;
    target_exprs(&mut exprs, table, &rule.target, family);
    let mut out = Vec::with_capacity(2);
    out.push(commented(exprs, rule, family));
    if let Some(mut fallback) = fallback {
        // nft_tproxy_eval BREAKs when no socket is found; this rule then drops the packet, as
        // iptables TPROXY does.
        fallback.push(Expr::Verdict(Verdict::Drop));
        out.push(commented(fallback, rule, family));
    }
    Ok(out)
}

/// The nft rules of every rule of `chain`, in order: what a correctly installed chain holds.
pub fn chain_rules(
    table: Table,
    chain: &Chain,
    family: Family,
) -> Result<Vec<NftRule>, Unexpressible> {
    let mut out = Vec::with_capacity(chain.rules.len() + 1);
    for rule in &chain.rules {
        out.extend(nft_rules(table, rule, family)?);
    }
    Ok(out)
}

/// The nft rule `exprs` with its comment: the IR rule's purpose (why it exists), or, for a
/// rule without one, its own nft syntax ([`rule_comment`]).
fn commented(exprs: Vec<Expr>, rule: &Rule, family: Family) -> NftRule {
    let comment = if rule.purpose.is_empty() {
        rule_comment(&meshcap_nft_types::text::rule_text(&exprs, nfproto(family)))
    } else {
        rule.purpose.to_string()
    };
    NftRule { exprs, comment }
}

/// The one-line nft syntax of `rule` (its first nft rule when it expands to several).
pub fn rule_text(table: Table, rule: &Rule, family: Family) -> String {
    rule_texts(table, rule, family).swap_remove(0)
}

/// The nft syntax of every nft rule `rule` becomes (see [`nft_rules`]). A rule nftables
/// cannot express reads as the reason.
pub fn rule_texts(table: Table, rule: &Rule, family: Family) -> Vec<String> {
    match nft_rules(table, rule, family) {
        Ok(rules) => rules.iter().map(|r| r.text(nfproto(family))).collect(),
        Err(e) => vec![format!("# not expressible in nftables: {e}")],
    }
}

/// The comment stored with the nft rule whose text is `text`: the text itself, with `"` turned
/// into `'` (nft strings cannot contain `"`, and `nft list` output should stay loadable) and,
/// past [`COMMENT_MAX_LEN`] bytes, cut and suffixed with a hash of the whole text so that two
/// long rules still get different comments.
pub fn rule_comment(text: &str) -> String {
    let comment = text.replace('"', "'");
    if comment.len() <= COMMENT_MAX_LEN {
        return comment;
    }
    let suffix = format!("... #{:016x}", fnv1a64(comment.as_bytes()));
    let mut cut = COMMENT_MAX_LEN - suffix.len();
    while !comment.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &comment[..cut])
}

/// An `nft -f` script that replaces meshcap's table of each ruleset's family with that
/// ruleset, in one atomic transaction. A ruleset without tables just removes the table. A rule
/// nftables cannot express (the model never produces one) is printed as a `#` line saying why,
/// which `meshcap-nft` refuses to install.
pub fn render(rulesets: &[Ruleset]) -> String {
    let mut out = String::new();
    for ruleset in rulesets {
        let family = family_keyword(ruleset.family);
        // `table` creates the table when absent so that `delete table` cannot fail.
        let _ = writeln!(out, "table {family} {NFT_TABLE}");
        let _ = writeln!(out, "delete table {family} {NFT_TABLE}");
        if ruleset.tables.is_empty() {
            continue;
        }
        let _ = writeln!(out, "table {family} {NFT_TABLE} {{");
        // The rules format, as the table's comment (its userdata, as meshcap-nft writes it).
        let _ = writeln!(out, "\tcomment \"{}\"\n", format_marker());
        let mut first = true;
        for table_rules in &ruleset.tables {
            for chain in &table_rules.chains {
                if !first {
                    out.push('\n');
                }
                first = false;
                render_chain(&mut out, table_rules.table, chain, ruleset.family);
            }
        }
        out.push_str("}\n");
    }
    out
}

fn render_chain(out: &mut String, table: Table, chain: &Chain, family: Family) {
    let _ = writeln!(out, "\tchain {} {{", chain_name(table, &chain.name));
    if let Some(hook) = chain.hook {
        let base = base_chain(table, hook);
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            base.chain_type,
            base.hook_name(),
            base.priority
        );
    }
    for rule in &chain.rules {
        match nft_rules(table, rule, family) {
            Ok(rules) => {
                for r in rules {
                    let _ = writeln!(out, "\t\t{}", r.line(nfproto(family)));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "\t\t# not expressible in nftables: {e}");
            }
        }
    }
    out.push_str("\t}\n");
}

// --- IR to expressions: one arm per IR match and target ----------------------------------

fn load_meta(out: &mut Vec<Expr>, key: MetaKey) {
    out.push(Expr::MetaLoad {
        key,
        dreg: NFT_REG_1,
    });
}

fn load_ct(out: &mut Vec<Expr>, key: CtKey) {
    out.push(Expr::CtLoad {
        key,
        dreg: NFT_REG_1,
    });
}

fn load_payload(out: &mut Vec<Expr>, base: PayloadBase, offset: u32, len: u32) {
    out.push(Expr::Payload {
        base,
        offset,
        len,
        dreg: NFT_REG_1,
    });
}

fn cmp(out: &mut Vec<Expr>, negate: bool, data: Value) {
    out.push(Expr::Cmp {
        sreg: NFT_REG_1,
        op: CmpOp::eq_unless(negate),
        data,
    });
}

/// Register 1 between `first` and `last`, inclusive, compared byte-wise (network order), as
/// nft writes a range `A-B`.
fn within(out: &mut Vec<Expr>, first: Value, last: Value) {
    out.push(Expr::Cmp {
        sreg: NFT_REG_1,
        op: CmpOp::Gte,
        data: first,
    });
    out.push(Expr::Cmp {
        sreg: NFT_REG_1,
        op: CmpOp::Lte,
        data: last,
    });
}

fn mask(out: &mut Vec<Expr>, mask: Value) {
    out.push(Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        len: mask.len() as u32,
        mask,
        xor: Value::new(&[0u8; 16][..mask.len()]).expect("same length as the mask"),
    });
}

fn immediate(out: &mut Vec<Expr>, data: Value) {
    out.push(Expr::Immediate {
        dreg: NFT_REG_1,
        data,
    });
}

/// The expressions of `matches`, in order.
pub fn match_exprs(
    out: &mut Vec<Expr>,
    matches: &[Match],
    family: Family,
) -> Result<(), Unexpressible> {
    for m in matches {
        match m {
            Match::Protocol(p) => {
                load_meta(out, MetaKey::L4proto);
                cmp(out, false, Value::new(&[p.number()]).expect("1 byte"));
            }
            // tcp and udp both keep the destination port at offset 2, the source port at 0.
            // Without a preceding protocol match this is nft's `th dport`.
            Match::DestPort { ports, negate } => {
                if !negate && ports.len() != 1 {
                    return Err(Unexpressible::PositivePortSet);
                }
                for port in ports {
                    load_payload(out, PayloadBase::Transport, 2, 2);
                    cmp(out, *negate, Value::port(*port));
                }
            }
            // Ports are big-endian on the wire, so byte-wise comparison orders them.
            Match::DestPortRange { first, last } => {
                load_payload(out, PayloadBase::Transport, 2, 2);
                within(out, Value::port(*first), Value::port(*last));
            }
            Match::SourcePort { port } => {
                load_payload(out, PayloadBase::Transport, 0, 2);
                cmp(out, false, Value::port(*port));
            }
            Match::Source { net, negate } => address(out, family, net, true, *negate)?,
            Match::Destination { net, negate } => address(out, family, net, false, *negate)?,
            Match::InInterface { name } => {
                load_meta(out, MetaKey::Iifname);
                cmp(out, false, ifname(name)?);
            }
            Match::OutInterface { name } => {
                load_meta(out, MetaKey::Oifname);
                cmp(out, false, ifname(name)?);
            }
            Match::UidOwner { uid, negate } => {
                load_meta(out, MetaKey::Skuid);
                cmp(out, *negate, Value::u32(*uid));
            }
            // The uid is in host order; in network order it compares byte-wise in numeric
            // order, as nft writes `meta skuid A-B`.
            Match::UidOwnerRange { first, last } => {
                load_meta(out, MetaKey::Skuid);
                out.push(Expr::Byteorder {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    op: ByteorderOp::Hton,
                    len: 4,
                    size: 4,
                });
                within(out, Value::be32(*first), Value::be32(*last));
            }
            Match::GidOwner { gid, negate } => {
                load_meta(out, MetaKey::Skgid);
                cmp(out, *negate, Value::u32(*gid));
            }
            Match::Mark { value, negate } => {
                load_meta(out, MetaKey::Mark);
                cmp(out, *negate, Value::u32(*value));
            }
            Match::ConnMark { value } => {
                load_ct(out, CtKey::Mark);
                cmp(out, false, Value::u32(*value));
            }
            Match::CtStateRelatedEstablished => {
                load_ct(out, CtKey::State);
                mask(out, Value::u32(CT_STATE_ESTABLISHED_RELATED));
                cmp(out, true, Value::u32(0));
            }
            Match::CtStateInvalid => {
                load_ct(out, CtKey::State);
                mask(out, Value::u32(CT_STATE_INVALID));
                cmp(out, true, Value::u32(0));
            }
        }
    }
    Ok(())
}

/// `ip saddr NET`: like nft, a byte-aligned prefix loads only its bytes and compares them;
/// any other prefix loads the whole address and masks it first.
fn address(
    out: &mut Vec<Expr>,
    family: Family,
    net: &IpNet,
    source: bool,
    negate: bool,
) -> Result<(), Unexpressible> {
    if !family.contains(net) {
        return Err(Unexpressible::AddressFamily(*net));
    }
    let net = net.trunc();
    let (addr, netmask, offset): (Value, Value, u32) = match net {
        // struct iphdr: saddr at 12, daddr at 16; struct ipv6hdr: saddr at 8, daddr at 24.
        IpNet::V4(n) => (
            Value::new(&n.addr().octets()).expect("4 bytes"),
            Value::new(&n.netmask().octets()).expect("4 bytes"),
            if source { 12 } else { 16 },
        ),
        IpNet::V6(n) => (
            Value::new(&n.addr().octets()).expect("16 bytes"),
            Value::new(&n.netmask().octets()).expect("16 bytes"),
            if source { 8 } else { 24 },
        ),
    };
    let prefix = usize::from(net.prefix_len());
    if prefix % 8 == 0 && prefix > 0 {
        let len = prefix / 8;
        load_payload(out, PayloadBase::Network, offset, len as u32);
        cmp(
            out,
            negate,
            Value::new(&addr.as_bytes()[..len]).expect("prefix of the address"),
        );
    } else {
        load_payload(out, PayloadBase::Network, offset, addr.len() as u32);
        mask(out, netmask);
        cmp(out, negate, addr);
    }
    Ok(())
}

/// An interface name as nft compares it: all IFNAMSIZ bytes, NUL-padded.
/// The compare data of an interface name: the whole NUL-padded name, or for iptables'
/// wildcard `PREFIX+` only the prefix, which the kernel's `cmp` then matches as a prefix (as
/// `nft` encodes `iifname "PREFIX*"`).
fn ifname(name: &str) -> Result<Value, Unexpressible> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(Unexpressible::InterfaceName(name.to_string()));
    }
    if let Some(prefix) = name.strip_suffix('+') {
        return Value::new(prefix.as_bytes())
            .filter(|_| !prefix.is_empty())
            .ok_or_else(|| Unexpressible::InterfaceName(name.to_string()));
    }
    let mut buf = [0u8; IFNAMSIZ];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    Ok(Value::new(&buf).expect("IFNAMSIZ bytes"))
}

/// The expressions of `target` in `table` (jumps stay within the table).
pub fn target_exprs(out: &mut Vec<Expr>, table: Table, target: &Target, family: Family) {
    match target {
        Target::Jump(chain) => out.push(Expr::Verdict(Verdict::Jump(chain_name(table, chain)))),
        Target::Return => out.push(Expr::Verdict(Verdict::Return)),
        Target::Accept => out.push(Expr::Verdict(Verdict::Accept)),
        Target::Drop => out.push(Expr::Verdict(Verdict::Drop)),
        Target::Redirect { port } => {
            immediate(out, Value::port(*port));
            out.push(Expr::Redir {
                reg_proto_min: Some(NFT_REG_1),
                reg_proto_max: None,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            });
        }
        Target::Tproxy { port, mark } => {
            immediate(out, Value::port(*port));
            out.push(Expr::Tproxy {
                family: nfproto(family),
                reg_addr: None,
                reg_port: Some(NFT_REG_1),
            });
            // Only reached when tproxy found a socket (otherwise it BREAKs).
            immediate(out, Value::u32(*mark));
            out.push(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: NFT_REG_1,
            });
            out.push(Expr::Verdict(Verdict::Accept));
        }
        Target::SetMark(mark) => {
            immediate(out, Value::u32(*mark));
            out.push(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: NFT_REG_1,
            });
        }
        Target::SaveMark => {
            load_meta(out, MetaKey::Mark);
            out.push(Expr::CtSet {
                key: CtKey::Mark,
                sreg: NFT_REG_1,
            });
        }
        Target::RestoreMark => {
            load_ct(out, CtKey::Mark);
            out.push(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: NFT_REG_1,
            });
        }
        Target::CtZone(zone) => {
            // nft_ct_set reads a host-order u16 for the zone.
            immediate(out, Value::u16(*zone));
            out.push(Expr::CtSet {
                key: CtKey::Zone,
                sreg: NFT_REG_1,
            });
        }
    }
}

/// FNV-1a, 64 bit: a stable, dependency-free hash for long comments.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Proto, TableRules};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn chain(name: &str, hook: Option<Hook>, rules: Vec<Rule>) -> Chain {
        Chain {
            name: name.to_string(),
            hook,
            rules,
        }
    }

    fn tcp() -> Match {
        Match::Protocol(Proto::Tcp)
    }

    // Case: every Match variant, alone, in a v4 nat rule.
    #[test]
    fn each_match_v4() {
        let cases: Vec<(Match, &str)> = vec![
            (tcp(), "meta l4proto tcp return"),
            (Match::Protocol(Proto::Udp), "meta l4proto udp return"),
            (
                Match::InInterface { name: "lo".into() },
                "iifname \"lo\" return",
            ),
            (
                Match::OutInterface {
                    name: "eth0".into(),
                },
                "oifname \"eth0\" return",
            ),
            (
                Match::Source {
                    net: net("127.0.0.6/32"),
                    negate: false,
                },
                "ip saddr 127.0.0.6/32 return",
            ),
            (
                Match::Destination {
                    net: net("10.1.2.3/8"),
                    negate: true,
                },
                "ip daddr != 10.0.0.0/8 return",
            ),
            (
                Match::UidOwner {
                    uid: 1337,
                    negate: false,
                },
                "meta skuid 1337 return",
            ),
            (
                Match::GidOwner {
                    gid: 1337,
                    negate: true,
                },
                "meta skgid != 1337 return",
            ),
            (
                Match::Mark {
                    value: 1337,
                    negate: false,
                },
                "meta mark 0x539 return",
            ),
            (
                Match::Mark {
                    value: 1337,
                    negate: true,
                },
                "meta mark != 0x539 return",
            ),
            (Match::ConnMark { value: 1337 }, "ct mark 0x539 return"),
            (
                Match::CtStateRelatedEstablished,
                "ct state established,related return",
            ),
        ];
        for (m, want) in cases {
            let rule = Rule::new(vec![m], Target::Return);
            assert_eq!(rule_text(Table::Nat, &rule, Family::V4), want);
        }
    }

    // Case: port matches take the protocol of the preceding Protocol match; a negated port set
    // is one `!=` per port, a single port a plain compare.
    #[test]
    fn ports() {
        let rule = Rule::new(
            vec![
                tcp(),
                Match::DestPort {
                    ports: vec![53, 15008],
                    negate: true,
                },
            ],
            Target::Redirect { port: 15001 },
        );
        assert_eq!(
            rule_text(Table::Nat, &rule, Family::V4),
            "meta l4proto tcp tcp dport != 53 tcp dport != 15008 redirect to :15001"
        );
        let rule = Rule::new(
            vec![
                Match::Protocol(Proto::Udp),
                Match::DestPort {
                    ports: vec![53],
                    negate: false,
                },
                Match::SourcePort { port: 53 },
            ],
            Target::Accept,
        );
        assert_eq!(
            rule_text(Table::Nat, &rule, Family::V4),
            "meta l4proto udp udp dport 53 udp sport 53 accept"
        );
    }

    // Case: v6 addresses use the ip6 keyword.
    #[test]
    fn v6_addresses() {
        let rule = Rule::new(
            vec![
                Match::Source {
                    net: net("::6/128"),
                    negate: false,
                },
                Match::Destination {
                    net: net("::1/128"),
                    negate: true,
                },
            ],
            Target::Return,
        );
        assert_eq!(
            rule_text(Table::Nat, &rule, Family::V6),
            "ip6 saddr ::6/128 ip6 daddr != ::1/128 return"
        );
    }

    // Case: every Target variant; jumps are prefixed with the rule's own table.
    #[test]
    fn each_target() {
        let cases: Vec<(Table, Target, &str)> = vec![
            (
                Table::Nat,
                Target::Jump("MESHCAP_INBOUND".into()),
                "jump nat_MESHCAP_INBOUND",
            ),
            (
                Table::Mangle,
                Target::Jump("MESHCAP_INBOUND".into()),
                "jump mangle_MESHCAP_INBOUND",
            ),
            (Table::Nat, Target::Return, "return"),
            (Table::Nat, Target::Accept, "accept"),
            (Table::Nat, Target::Drop, "drop"),
            (
                Table::Nat,
                Target::Redirect { port: 15001 },
                "redirect to :15001",
            ),
            (
                Table::Mangle,
                Target::Tproxy {
                    port: 15006,
                    mark: 1337,
                },
                "tproxy to :15006 meta mark set 0x539 accept",
            ),
            (Table::Mangle, Target::SetMark(1337), "meta mark set 0x539"),
            (Table::Mangle, Target::SaveMark, "ct mark set meta mark"),
            (Table::Mangle, Target::RestoreMark, "meta mark set ct mark"),
            (Table::Raw, Target::CtZone(2), "ct zone set 2"),
        ];
        for (table, target, want) in cases {
            let rule = Rule::new(vec![], target);
            assert_eq!(rule_text(table, &rule, Family::V4), want);
        }
    }

    // Case: a TPROXY rule becomes the tproxy rule plus a drop rule with the same matches, so a
    // failed socket lookup (nft BREAK) drops like iptables TPROXY.
    #[test]
    fn tproxy_expands_to_drop_fallback() {
        let rule = Rule::new(
            vec![tcp()],
            Target::Tproxy {
                port: 15006,
                mark: 1337,
            },
        );
        assert_eq!(
            rule_texts(Table::Mangle, &rule, Family::V4),
            vec![
                "meta l4proto tcp tproxy to :15006 meta mark set 0x539 accept".to_string(),
                "meta l4proto tcp drop".to_string(),
            ]
        );
    }

    // Case: comments replace double quotes and cap long texts at 128 bytes with a hash.
    #[test]
    fn comments() {
        assert_eq!(rule_comment("iifname \"lo\" return"), "iifname 'lo' return");
        let ports: Vec<u16> = (1000..1020).collect();
        let rule = Rule::new(
            vec![
                tcp(),
                Match::DestPort {
                    ports: ports.clone(),
                    negate: true,
                },
            ],
            Target::Return,
        );
        let text = rule_text(Table::Nat, &rule, Family::V4);
        let comment = rule_comment(&text);
        assert!(text.len() > COMMENT_MAX_LEN);
        assert!(comment.len() <= COMMENT_MAX_LEN, "{comment}");
        assert!(comment.starts_with("meta l4proto tcp tcp dport != 1000"));
        assert!(comment.contains("... #"));
        let other = Rule::new(
            vec![
                tcp(),
                Match::DestPort {
                    ports: ports.iter().map(|p| p + 1).collect(),
                    negate: true,
                },
            ],
            Target::Return,
        );
        assert_ne!(
            rule_comment(&rule_text(Table::Nat, &other, Family::V4)),
            comment
        );
    }

    // Case: a rule's purpose is its nft comment, on both rules of a TPROXY pair; a rule
    // without one is commented with its own syntax.
    #[test]
    fn purpose_is_the_comment() {
        let rule = Rule::new(
            vec![tcp()],
            Target::Tproxy {
                port: 15006,
                mark: 1337,
            },
        )
        .because("inbound TCP to the sidecar (TPROXY)");
        let rules = nft_rules(Table::Mangle, &rule, Family::V4).unwrap();
        let comments: Vec<&str> = rules.iter().map(|r| r.comment.as_str()).collect();
        assert_eq!(
            comments,
            [
                "inbound TCP to the sidecar (TPROXY)",
                "inbound TCP to the sidecar (TPROXY)"
            ]
        );
        assert_eq!(
            rules[1].line(nfproto(Family::V4)),
            "meta l4proto tcp drop comment \"inbound TCP to the sidecar (TPROXY)\""
        );
        let plain = Rule::new(vec![tcp()], Target::Return);
        assert_eq!(
            nft_rules(Table::Nat, &plain, Family::V4).unwrap()[0].comment,
            "meta l4proto tcp return"
        );
    }

    // Case: what nftables cannot express is an error (the model never produces it), and the
    // script says so instead of printing a rule; a port without a protocol is nft's `th`.
    #[test]
    fn unexpressible_rules() {
        let ports = |ports: Vec<u16>| Match::DestPort {
            ports,
            negate: false,
        };
        let set = Rule::new(vec![tcp(), ports(vec![1, 2])], Target::Accept);
        assert_eq!(
            nft_rules(Table::Nat, &set, Family::V4),
            Err(Unexpressible::PositivePortSet)
        );
        assert_eq!(
            rule_text(Table::Nat, &set, Family::V4),
            "# not expressible in nftables: positive match on several ports (needs an nft set)"
        );
        let v6_in_v4 = Rule::new(
            vec![Match::Source {
                net: net("::1/128"),
                negate: false,
            }],
            Target::Accept,
        );
        assert!(matches!(
            nft_rules(Table::Nat, &v6_in_v4, Family::V4),
            Err(Unexpressible::AddressFamily(_))
        ));
        let long = Rule::new(
            vec![Match::InInterface {
                name: "a-very-long-name0".into(),
            }],
            Target::Accept,
        );
        assert!(matches!(
            nft_rules(Table::Nat, &long, Family::V4),
            Err(Unexpressible::InterfaceName(_))
        ));
        let bare = Rule::new(vec![ports(vec![53])], Target::Accept);
        assert_eq!(
            rule_text(Table::Nat, &bare, Family::V4),
            "th dport 53 accept"
        );
    }

    // Case: iptables' `br+` is a compare of the prefix's bytes only, which reads back as
    // nft's `br*`; an exact name compares all 16 NUL-padded bytes.
    #[test]
    fn interface_wildcard_is_a_prefix_compare() {
        let iface = |name: &str| {
            Rule::new(
                vec![Match::InInterface { name: name.into() }],
                Target::Accept,
            )
        };
        let rules = nft_rules(Table::Nat, &iface("br+"), Family::V4).unwrap();
        assert!(
            rules
                .iter()
                .flat_map(|r| &r.exprs)
                .any(|e| matches!(e, Expr::Cmp { data, .. } if data.as_bytes() == b"br")),
            "{rules:?}"
        );
        assert_eq!(
            rule_text(Table::Nat, &iface("br+"), Family::V4),
            "iifname \"br*\" accept"
        );
        assert_eq!(
            rule_text(Table::Nat, &iface("eth0"), Family::V4),
            "iifname \"eth0\" accept"
        );
        assert!(matches!(
            nft_rules(Table::Nat, &iface("+"), Family::V4),
            Err(Unexpressible::InterfaceName(_))
        ));
    }

    // Case: byte-aligned prefixes load only their bytes; others load the address and mask it.
    #[test]
    fn address_prefix_forms() {
        let masked = |n: &str| {
            let rule = Rule::new(
                vec![Match::Destination {
                    net: net(n),
                    negate: false,
                }],
                Target::Accept,
            );
            let rules = nft_rules(Table::Nat, &rule, Family::V4).unwrap();
            assert_eq!(rules[0].text(NFPROTO_IPV4), format!("ip daddr {n} accept"));
            rules[0]
                .exprs
                .iter()
                .any(|e| matches!(e, Expr::Bitwise { .. }))
        };
        assert!(!masked("10.0.0.1/32"));
        assert!(!masked("10.0.0.0/8"));
        assert!(masked("10.0.0.0/12"));
        assert!(masked("0.0.0.0/0"));
    }

    // Case: base chain types and priorities per table and hook.
    #[test]
    fn base_chains() {
        let cases = [
            (Table::Nat, Hook::Prerouting, "nat", -100),
            (Table::Nat, Hook::Output, "nat", -100),
            (Table::Mangle, Hook::Prerouting, "filter", -150),
            (Table::Mangle, Hook::Output, "route", -150),
            (Table::Raw, Hook::Prerouting, "filter", -300),
            (Table::Raw, Hook::Output, "filter", -300),
        ];
        for (table, hook, chain_type, priority) in cases {
            let base = base_chain(table, hook);
            assert_eq!((base.chain_type, base.priority), (chain_type, priority));
        }
    }

    // Case: a full v4 ruleset with raw, mangle and nat tables, base and regular chains, and an
    // empty v6 ruleset (which only removes the v6 table).
    #[test]
    fn render_golden() {
        let v4 = Ruleset {
            family: Family::V4,
            tables: vec![
                TableRules {
                    table: Table::Raw,
                    chains: vec![chain(
                        "MESHCAP_OUTPUT",
                        Some(Hook::Output),
                        vec![Rule::new(
                            vec![Match::OutInterface { name: "lo".into() }],
                            Target::CtZone(1),
                        )],
                    )],
                },
                TableRules {
                    table: Table::Mangle,
                    chains: vec![
                        chain(
                            "MESHCAP_PREROUTING",
                            Some(Hook::Prerouting),
                            vec![Rule::new(
                                vec![tcp()],
                                Target::Jump("MESHCAP_INBOUND".into()),
                            )],
                        ),
                        chain(
                            "MESHCAP_INBOUND",
                            None,
                            vec![Rule::new(
                                vec![tcp()],
                                Target::Tproxy {
                                    port: 15006,
                                    mark: 1337,
                                },
                            )],
                        ),
                    ],
                },
                TableRules {
                    table: Table::Nat,
                    chains: vec![chain(
                        "MESHCAP_OUTPUT",
                        Some(Hook::Output),
                        vec![Rule::new(
                            vec![
                                tcp(),
                                Match::Destination {
                                    net: net("127.0.0.1/32"),
                                    negate: true,
                                },
                            ],
                            Target::Redirect { port: 15001 },
                        )],
                    )],
                },
            ],
            policy_route: None,
            passthrough_source: true,
        };
        let v6 = Ruleset {
            family: Family::V6,
            tables: vec![],
            policy_route: None,
            passthrough_source: true,
        };
        let want = "\
table ip meshcap
delete table ip meshcap
table ip meshcap {
\tcomment \"meshcap rules format 2\"

\tchain raw_MESHCAP_OUTPUT {
\t\ttype filter hook output priority -300; policy accept;
\t\toifname \"lo\" ct zone set 1 comment \"oifname 'lo' ct zone set 1\"
\t}

\tchain mangle_MESHCAP_PREROUTING {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tmeta l4proto tcp jump mangle_MESHCAP_INBOUND comment \"meta l4proto tcp jump mangle_MESHCAP_INBOUND\"
\t}

\tchain mangle_MESHCAP_INBOUND {
\t\tmeta l4proto tcp tproxy to :15006 meta mark set 0x539 accept comment \"meta l4proto tcp tproxy to :15006 meta mark set 0x539 accept\"
\t\tmeta l4proto tcp drop comment \"meta l4proto tcp drop\"
\t}

\tchain nat_MESHCAP_OUTPUT {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta l4proto tcp ip daddr != 127.0.0.1/32 redirect to :15001 comment \"meta l4proto tcp ip daddr != 127.0.0.1/32 redirect to :15001\"
\t}
}
table ip6 meshcap
delete table ip6 meshcap
";
        assert_eq!(render(&[v4, v6]), want);
    }

    // Case: a v6 nat ruleset with a prerouting base chain, a regular chain and an empty base
    // chain.
    #[test]
    fn render_golden_v6() {
        let v6 = Ruleset {
            family: Family::V6,
            tables: vec![TableRules {
                table: Table::Nat,
                chains: vec![
                    chain(
                        "MESHCAP_PREROUTING",
                        Some(Hook::Prerouting),
                        vec![Rule::new(
                            vec![tcp()],
                            Target::Jump("MESHCAP_INBOUND".into()),
                        )],
                    ),
                    chain(
                        "MESHCAP_INBOUND",
                        None,
                        vec![Rule::new(
                            vec![
                                tcp(),
                                Match::DestPort {
                                    ports: vec![15008],
                                    negate: false,
                                },
                            ],
                            Target::Return,
                        )],
                    ),
                    chain("MESHCAP_OUTPUT", Some(Hook::Output), vec![]),
                ],
            }],
            policy_route: None,
            passthrough_source: true,
        };
        let want = "\
table ip6 meshcap
delete table ip6 meshcap
table ip6 meshcap {
\tcomment \"meshcap rules format 2\"

\tchain nat_MESHCAP_PREROUTING {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta l4proto tcp jump nat_MESHCAP_INBOUND comment \"meta l4proto tcp jump nat_MESHCAP_INBOUND\"
\t}

\tchain nat_MESHCAP_INBOUND {
\t\tmeta l4proto tcp tcp dport 15008 return comment \"meta l4proto tcp tcp dport 15008 return\"
\t}

\tchain nat_MESHCAP_OUTPUT {
\t\ttype nat hook output priority -100; policy accept;
\t}
}
";
        assert_eq!(render(&[v6]), want);
    }
}

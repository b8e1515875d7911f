//! nftables renderer: [`Ruleset`]s as an `nft -f` script, and the one-line nft text of each rule.
//!
//! # Mapping (shared with the netlink backend in `meshcap-nft`, which must encode the same
//! decisions as bytecode)
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
//! - Matches: `meta l4proto tcp`; `tcp dport 15008`, a negated port set as one `!=` per port
//!   (`tcp dport != 53 tcp dport != 15008`); `udp sport 53`; `ip saddr 127.0.0.6/32`,
//!   `ip6 daddr != ::1/128`; `iifname "lo"`; `meta skuid 1337`; `meta skgid != 1337`;
//!   `meta mark 0x539`; `ct mark 0x539`; `ct state established,related`.
//! - Targets: `jump nat_MESHCAP_X`, `return`, `accept`, `drop`, `redirect to :15001`,
//!   `tproxy to :15006 meta mark set 0x539 accept`, `meta mark set 0x539` (non-terminal, like
//!   iptables MARK), `ct mark set meta mark`, `meta mark set ct mark`, `ct zone set 2`.
//! - TPROXY: iptables' TPROXY target drops a packet for which no socket is found, but nft's
//!   `tproxy` expression then BREAKs (the rule simply stops and evaluation goes on with the next
//!   rule, `nft_tproxy_eval` in net/netfilter/nft_tproxy.c). So a [`Target::Tproxy`] rule
//!   expands to two nft rules: the tproxy rule, then the same matches with `drop`. The matches
//!   only read the packet, so the second rule sees exactly the packets for which the first one
//!   broke ([`rule_texts`]).
//!
//! Every nft rule carries a comment ([`rule_comment`]) derived from its own text. The netlink
//! backend stores the same string as the rule's userdata, so `nft list` shows the same thing
//! whichever way the rules were installed, and CHECK compares installed comments against the
//! expected ones.
//!
//! [`render`] prints a complete replace transaction: `nft -f` applies a file atomically, and
//! `table` + `delete table` first makes it idempotent (an absent table is created, then the
//! whole old table goes), exactly what the netlink backend's batch does.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::rules::{Chain, Family, Hook, Match, Proto, Rule, Ruleset, Table, Target, NFT_TABLE};

/// nft keeps rule comments to this many bytes (`NFTNL_UDATA_COMMENT_MAXLEN` in libnftnl; `nft`
/// refuses longer ones on input).
pub const COMMENT_MAX_LEN: usize = 128;

/// The nft family keyword of a meshcap table.
pub fn family_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
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

/// The one-line nft syntax of `rule` (its first nft rule when it expands to several, see
/// [`rule_texts`]).
pub fn rule_text(table: Table, rule: &Rule, _family: Family) -> String {
    let mut text = matches_text(&rule.matches);
    push_word(&mut text, &target_text(table, &rule.target));
    text
}

/// Every nft rule that `rule` becomes, in order: one, or two for [`Target::Tproxy`] (the tproxy
/// rule and its `drop` fallback for packets without a transparent socket; see the module docs).
pub fn rule_texts(table: Table, rule: &Rule, family: Family) -> Vec<String> {
    let mut texts = vec![rule_text(table, rule, family)];
    if matches!(rule.target, Target::Tproxy { .. }) {
        let mut fallback = matches_text(&rule.matches);
        push_word(&mut fallback, "drop");
        texts.push(fallback);
    }
    texts
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

/// The comments of all nft rules of `chain`, in order: what a correctly installed chain holds.
pub fn chain_comments(table: Table, chain: &Chain, family: Family) -> Vec<String> {
    chain
        .rules
        .iter()
        .flat_map(|rule| rule_texts(table, rule, family))
        .map(|text| rule_comment(&text))
        .collect()
}

/// An `nft -f` script that replaces meshcap's table of each ruleset's family with that
/// ruleset, in one atomic transaction. A ruleset without tables just removes the table.
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
        for text in rule_texts(table, rule, family) {
            let _ = writeln!(out, "\t\t{text} comment \"{}\"", rule_comment(&text));
        }
    }
    out.push_str("\t}\n");
}

fn push_word(text: &mut String, word: &str) {
    if word.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(word);
}

fn matches_text(matches: &[Match]) -> String {
    let mut text = String::new();
    // Port matches name the protocol of the closest preceding `Protocol` match; without one
    // (the model never does that) nft's raw transport header `th` stands in.
    let mut proto: Option<Proto> = None;
    for m in matches {
        let l4 = proto.map_or("th", Proto::name);
        let word = match m {
            Match::Protocol(p) => {
                proto = Some(*p);
                format!("meta l4proto {}", p.name())
            }
            Match::DestPort { ports, negate } if *negate => ports
                .iter()
                .map(|p| format!("{l4} dport != {p}"))
                .collect::<Vec<_>>()
                .join(" "),
            Match::DestPort { ports, .. } => match ports.as_slice() {
                [port] => format!("{l4} dport {port}"),
                // Not produced by the model; printed as the anonymous set nft would need. The
                // netlink encoder refuses it.
                _ => format!(
                    "{l4} dport {{ {} }}",
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            Match::DestPortRange { first, last } => format!("{l4} dport {first}-{last}"),
            Match::SourcePort { port } => format!("{l4} sport {port}"),
            Match::Source { net, negate } => addr_text("saddr", net, *negate),
            Match::Destination { net, negate } => addr_text("daddr", net, *negate),
            Match::InInterface { name } => format!("iifname \"{name}\""),
            Match::OutInterface { name } => format!("oifname \"{name}\""),
            Match::UidOwner { uid, negate } => format!("meta skuid {}{uid}", neq(*negate)),
            Match::GidOwner { gid, negate } => format!("meta skgid {}{gid}", neq(*negate)),
            Match::Mark { value, negate } => format!("meta mark {}{value:#x}", neq(*negate)),
            Match::ConnMark { value } => format!("ct mark {value:#x}"),
            Match::CtStateRelatedEstablished => "ct state established,related".to_string(),
            Match::CtStateInvalid => "ct state invalid".to_string(),
        };
        push_word(&mut text, &word);
    }
    text
}

fn neq(negate: bool) -> &'static str {
    if negate {
        "!= "
    } else {
        ""
    }
}

/// `ip saddr 10.0.0.0/8`: the keyword follows the address (a mismatched family is an IR bug
/// that nft and the netlink encoder both reject), the prefix is always printed and host bits
/// are cleared as nft itself does.
fn addr_text(field: &str, net: &IpNet, negate: bool) -> String {
    let keyword = match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    };
    format!("{keyword} {field} {}{}", neq(negate), net.trunc())
}

fn target_text(table: Table, target: &Target) -> String {
    match target {
        Target::Jump(chain) => format!("jump {}", chain_name(table, chain)),
        Target::Return => "return".to_string(),
        Target::Accept => "accept".to_string(),
        Target::Drop => "drop".to_string(),
        Target::Redirect { port } => format!("redirect to :{port}"),
        Target::Tproxy { port, mark } => {
            format!("tproxy to :{port} meta mark set {mark:#x} accept")
        }
        Target::SetMark(mark) => format!("meta mark set {mark:#x}"),
        Target::SaveMark => "ct mark set meta mark".to_string(),
        Target::RestoreMark => "meta mark set ct mark".to_string(),
        Target::CtZone(zone) => format!("ct zone set {zone}"),
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
    use crate::rules::TableRules;

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
        };
        let v6 = Ruleset {
            family: Family::V6,
            tables: vec![],
            policy_route: None,
        };
        let want = "\
table ip meshcap
delete table ip meshcap
table ip meshcap {
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
        };
        let want = "\
table ip6 meshcap
delete table ip6 meshcap
table ip6 meshcap {
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

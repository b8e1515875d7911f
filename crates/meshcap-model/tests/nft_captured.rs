//! The IR's nftables mapping against the real `nft`: for every rule form meshcap emits, the
//! expressions `render::nftables::nft_rules` gives an IR rule encode to exactly the bytes `nft`
//! sent for the same rule (captured in meshcap-nft-types' tests/fixtures/captured.txt).

#[path = "../../meshcap-nft-types/tests/fixtures/mod.rs"]
mod fixtures;

use ipnet::IpNet;
use meshcap_model::render::nftables::nft_rules;
use meshcap_model::rules::{Family, Match, Proto, Rule, Table, Target};
use meshcap_nft_types::attr::Attrs;
use meshcap_nft_types::{Expr, Verdict};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The IR rule (table and family) each captured nft rule stands for. The captures jump to a
/// chain named `target`.
fn ir(name: &str) -> (Table, Family, Rule) {
    let tcp = Match::Protocol(Proto::Tcp);
    let udp = Match::Protocol(Proto::Udp);
    let lo_out = Match::OutInterface { name: "lo".into() };
    let jump = Target::Jump("target".into());
    let (table, family, matches, target) = match name {
        "l4proto_return" => (Table::Nat, Family::V4, vec![tcp], Target::Return),
        "dport_ne_redirect" => (
            Table::Nat,
            Family::V4,
            vec![
                tcp,
                Match::DestPort {
                    ports: vec![53, 15008],
                    negate: true,
                },
            ],
            Target::Redirect { port: 15001 },
        ),
        "dport_range_return" => (
            Table::Nat,
            Family::V4,
            vec![
                tcp,
                Match::DestPortRange {
                    first: 4190,
                    last: 4191,
                },
            ],
            Target::Return,
        ),
        "udp_dport_accept" => (
            Table::Nat,
            Family::V4,
            vec![
                udp,
                Match::DestPort {
                    ports: vec![53],
                    negate: false,
                },
            ],
            Target::Accept,
        ),
        "udp_sport_ct_zone" => (
            Table::Raw,
            Family::V4,
            vec![udp, Match::SourcePort { port: 53 }],
            Target::CtZone(1),
        ),
        "saddr_oifname_return" => (
            Table::Nat,
            Family::V4,
            vec![
                Match::Source {
                    net: net("127.0.0.6/32"),
                    negate: false,
                },
                lo_out,
            ],
            Target::Return,
        ),
        "daddr_masked_drop" => (
            Table::Nat,
            Family::V4,
            vec![Match::Destination {
                net: net("10.0.0.0/12"),
                negate: true,
            }],
            Target::Drop,
        ),
        "owner_jump" => (
            Table::Nat,
            Family::V4,
            vec![
                Match::InInterface { name: "lo".into() },
                Match::UidOwner {
                    uid: 1337,
                    negate: true,
                },
                Match::GidOwner {
                    gid: 1337,
                    negate: false,
                },
            ],
            jump,
        ),
        "owner_range_return" => (
            Table::Nat,
            Family::V4,
            vec![Match::UidOwnerRange {
                first: 1000,
                last: 2000,
            }],
            Target::Return,
        ),
        "ct_state_marks" => (
            Table::Mangle,
            Family::V4,
            vec![
                tcp,
                Match::CtStateRelatedEstablished,
                Match::Mark {
                    value: 0x539,
                    negate: false,
                },
                Match::ConnMark { value: 0x539 },
            ],
            jump,
        ),
        "ct_state_invalid_drop" => (
            Table::Mangle,
            Family::V4,
            vec![Match::CtStateInvalid],
            Target::Drop,
        ),
        "tproxy_v4" | "tproxy_v6" => (
            Table::Mangle,
            if name == "tproxy_v4" {
                Family::V4
            } else {
                Family::V6
            },
            vec![tcp],
            Target::Tproxy {
                port: 15006,
                mark: 0x539,
            },
        ),
        "v6_addresses" => (
            Table::Nat,
            Family::V6,
            vec![
                Match::Source {
                    net: net("::6/128"),
                    negate: false,
                },
                Match::Destination {
                    net: net("fd00::/8"),
                    negate: true,
                },
            ],
            Target::Return,
        ),
        "save_mark" => (Table::Mangle, Family::V4, vec![], Target::SaveMark),
        "restore_mark" => (Table::Mangle, Family::V4, vec![], Target::RestoreMark),
        "set_mark" => (Table::Mangle, Family::V4, vec![], Target::SetMark(0x53a)),
        "ct_zone" => (Table::Raw, Family::V4, vec![lo_out], Target::CtZone(1)),
        other => panic!("no IR rule for captured case {other}"),
    };
    (table, family, Rule::new(matches, target))
}

#[test]
fn ir_rules_encode_as_nft_does() {
    for case in fixtures::load() {
        let (table, family, rule) = ir(&case.name);
        let mut exprs = nft_rules(table, &rule, family)
            .unwrap()
            .swap_remove(0)
            .exprs;
        // meshcap prefixes chain names with the iptables table (`nat_target`); the capture
        // jumps to a chain named just `target`.
        for e in &mut exprs {
            if let Expr::Verdict(Verdict::Jump(chain)) = e {
                *chain = chain.split_once('_').unwrap().1.to_string();
            }
        }
        let mut list = Attrs::new();
        Expr::emit_list(&exprs, &mut list);
        assert_eq!(
            list.bytes(),
            case.expressions(),
            "{}: meshcap (left) vs nft (right)",
            case.name
        );
    }
}

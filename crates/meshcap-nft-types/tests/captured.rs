//! The typed expressions against what the real `nft` sends (fixtures/captured.txt, captured on
//! this kernel by scripts/capture-nft-fixtures.sh): for every rule form meshcap emits, the
//! captured bytes parse into the expected expressions, those expressions emit exactly the
//! captured bytes, print as `nft --debug=netlink` printed them, and read as the rule's nft
//! syntax again.

mod fixtures;

use meshcap_nft_types::attr::{comment_userdata, Attrs};
use meshcap_nft_types::sys::*;
use meshcap_nft_types::text::rule_text;
use meshcap_nft_types::{ByteorderOp, CmpOp, CtKey, Expr, MetaKey, PayloadBase, Value, Verdict};

fn meta(key: MetaKey) -> Expr {
    Expr::MetaLoad {
        key,
        dreg: NFT_REG_1,
    }
}

fn ct(key: CtKey) -> Expr {
    Expr::CtLoad {
        key,
        dreg: NFT_REG_1,
    }
}

fn payload(base: PayloadBase, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg: NFT_REG_1,
    }
}

fn cmp(op: CmpOp, data: Value) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data,
    }
}

fn bytes(b: &[u8]) -> Value {
    Value::new(b).unwrap()
}

fn ifname(name: &str) -> Value {
    let mut buf = [0u8; 16];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    bytes(&buf)
}

fn mask(m: Value) -> Expr {
    Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        len: m.len() as u32,
        mask: m,
        xor: bytes(&[0u8; 16][..m.len()]),
    }
}

fn imm(data: Value) -> Expr {
    Expr::Immediate {
        dreg: NFT_REG_1,
        data,
    }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Verdict(v)
}

fn meta_set(key: MetaKey) -> Expr {
    Expr::MetaSet {
        key,
        sreg: NFT_REG_1,
    }
}

fn ct_set(key: CtKey) -> Expr {
    Expr::CtSet {
        key,
        sreg: NFT_REG_1,
    }
}

fn tcp() -> [Expr; 2] {
    [meta(MetaKey::L4proto), cmp(CmpOp::Eq, bytes(&[6]))]
}

fn tproxy(family: u8) -> Vec<Expr> {
    let mut e = tcp().to_vec();
    e.extend([
        imm(Value::port(15006)),
        Expr::Tproxy {
            family,
            reg_addr: None,
            reg_port: Some(NFT_REG_1),
        },
        imm(Value::u32(0x539)),
        meta_set(MetaKey::Mark),
        verdict(Verdict::Accept),
    ]);
    e
}

/// The typed value each captured rule must parse into.
fn expected(name: &str) -> Vec<Expr> {
    use CmpOp::{Eq, Neq};
    let dport = || payload(PayloadBase::Transport, 2, 2);
    match name {
        "l4proto_return" => [&tcp()[..], &[verdict(Verdict::Return)]].concat(),
        "dport_ne_redirect" => [
            &tcp()[..],
            &[
                dport(),
                cmp(Neq, Value::port(53)),
                dport(),
                cmp(Neq, Value::port(15008)),
                imm(Value::port(15001)),
                Expr::Redir {
                    reg_proto_min: Some(NFT_REG_1),
                    reg_proto_max: None,
                    flags: NF_NAT_RANGE_PROTO_SPECIFIED,
                },
            ],
        ]
        .concat(),
        "dport_range_return" => [
            &tcp()[..],
            &[
                dport(),
                cmp(CmpOp::Gte, Value::port(4190)),
                cmp(CmpOp::Lte, Value::port(4191)),
                verdict(Verdict::Return),
            ],
        ]
        .concat(),
        "udp_dport_accept" => vec![
            meta(MetaKey::L4proto),
            cmp(Eq, bytes(&[17])),
            dport(),
            cmp(Eq, Value::port(53)),
            verdict(Verdict::Accept),
        ],
        "udp_sport_ct_zone" => vec![
            meta(MetaKey::L4proto),
            cmp(Eq, bytes(&[17])),
            payload(PayloadBase::Transport, 0, 2),
            cmp(Eq, Value::port(53)),
            imm(Value::u16(1)),
            ct_set(CtKey::Zone),
        ],
        "saddr_oifname_return" => vec![
            payload(PayloadBase::Network, 12, 4),
            cmp(Eq, bytes(&[127, 0, 0, 6])),
            meta(MetaKey::Oifname),
            cmp(Eq, ifname("lo")),
            verdict(Verdict::Return),
        ],
        "daddr_masked_drop" => vec![
            payload(PayloadBase::Network, 16, 4),
            mask(bytes(&[255, 240, 0, 0])),
            cmp(Neq, bytes(&[10, 0, 0, 0])),
            verdict(Verdict::Drop),
        ],
        "owner_jump" => vec![
            meta(MetaKey::Iifname),
            cmp(Eq, ifname("lo")),
            meta(MetaKey::Skuid),
            cmp(Neq, Value::u32(1337)),
            meta(MetaKey::Skgid),
            cmp(Eq, Value::u32(1337)),
            verdict(Verdict::Jump("target".into())),
        ],
        "owner_range_return" => vec![
            meta(MetaKey::Skuid),
            Expr::Byteorder {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                op: ByteorderOp::Hton,
                len: 4,
                size: 4,
            },
            cmp(CmpOp::Gte, Value::be32(1000)),
            cmp(CmpOp::Lte, Value::be32(2000)),
            verdict(Verdict::Return),
        ],
        "ct_state_marks" => [
            &tcp()[..],
            &[
                ct(CtKey::State),
                mask(Value::u32(CT_STATE_ESTABLISHED_RELATED)),
                cmp(Neq, Value::u32(0)),
                meta(MetaKey::Mark),
                cmp(Eq, Value::u32(0x539)),
                ct(CtKey::Mark),
                cmp(Eq, Value::u32(0x539)),
                verdict(Verdict::Jump("target".into())),
            ],
        ]
        .concat(),
        "ct_state_invalid_drop" => vec![
            ct(CtKey::State),
            mask(Value::u32(CT_STATE_INVALID)),
            cmp(Neq, Value::u32(0)),
            verdict(Verdict::Drop),
        ],
        "tproxy_v4" => tproxy(NFPROTO_IPV4),
        "tproxy_v6" => tproxy(NFPROTO_IPV6),
        "v6_addresses" => vec![
            payload(PayloadBase::Network, 8, 16),
            cmp(
                Eq,
                bytes(&"::6".parse::<std::net::Ipv6Addr>().unwrap().octets()),
            ),
            payload(PayloadBase::Network, 24, 1),
            cmp(Neq, bytes(&[0xfd])),
            verdict(Verdict::Return),
        ],
        "save_mark" => vec![meta(MetaKey::Mark), ct_set(CtKey::Mark)],
        "restore_mark" => vec![ct(CtKey::Mark), meta_set(MetaKey::Mark)],
        "set_mark" => vec![imm(Value::u32(0x53a)), meta_set(MetaKey::Mark)],
        "ct_zone" => vec![
            meta(MetaKey::Oifname),
            cmp(Eq, ifname("lo")),
            imm(Value::u16(1)),
            ct_set(CtKey::Zone),
        ],
        other => panic!("no expected value for captured case {other}"),
    }
}

#[test]
fn captured_bytes_parse_into_the_typed_rule() {
    for case in fixtures::load() {
        let parsed = Expr::parse_list(case.expressions()).unwrap();
        assert_eq!(parsed, expected(&case.name), "{}", case.name);
    }
}

#[test]
fn typed_rules_emit_the_captured_bytes() {
    for case in fixtures::load() {
        let mut list = Attrs::new();
        Expr::emit_list(&expected(&case.name), &mut list);
        assert_eq!(
            hex(list.bytes()),
            hex(case.expressions()),
            "{}: emitted (left) vs nft (right)",
            case.name
        );
        let (_, comment) = case.text_and_comment();
        if let Some(comment) = comment {
            assert_eq!(
                case.attr(NFTA_RULE_USERDATA),
                Some(&comment_userdata(comment)[..]),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn typed_rules_print_as_nft_does() {
    for case in fixtures::load() {
        let exprs = expected(&case.name);
        let lines: Vec<String> = exprs.iter().map(Expr::to_string).collect();
        assert_eq!(lines, case.exprs, "{}: --debug=netlink", case.name);
        let (text, _) = case.text_and_comment();
        assert_eq!(
            rule_text(&exprs, case.nfproto()),
            text,
            "{}: rule syntax",
            case.name
        );
    }
}

// Every expression kind meshcap emits has a captured case (a new kind fails to compile here
// until it is added to the match, and then fails until a case captures it).
#[test]
fn every_expression_kind_is_captured() {
    let mut seen = [false; 12];
    for case in fixtures::load() {
        for e in expected(&case.name) {
            let i = match e {
                Expr::MetaLoad { .. } => 0,
                Expr::MetaSet { .. } => 1,
                Expr::CtLoad { .. } => 2,
                Expr::CtSet { .. } => 3,
                Expr::Payload { .. } => 4,
                Expr::Cmp { .. } => 5,
                Expr::Bitwise { .. } => 6,
                Expr::Immediate { .. } => 7,
                Expr::Verdict(_) => 8,
                Expr::Redir { .. } => 9,
                Expr::Tproxy { .. } => 10,
                Expr::Byteorder { .. } => 11,
                Expr::Other { .. } => panic!("meshcap never emits an opaque expression"),
            };
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|s| *s), "{seen:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

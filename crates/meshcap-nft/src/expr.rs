//! IR rules as nf_tables expressions: the bytecode `nft` itself generates for the text that
//! `meshcap_model::render::nftables::rule_texts` prints (checked against `nft --debug=netlink`
//! output by the privileged tests, which compare listings of both).

use ipnet::IpNet;
use meshcap_model::render::nftables::{chain_name, rule_comment, rule_texts};
use meshcap_model::rules::{Family, Match, Proto, Rule, Table, Target};

use crate::sys::*;
use crate::wire::Attrs;

/// One nft rule ready to be sent: its expressions and the comment stored as userdata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRule {
    pub text: String,
    pub comment: String,
    /// Content of NFTA_RULE_EXPRESSIONS.
    pub exprs: Attrs,
}

/// Why an IR rule cannot be encoded. The model never produces these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    PortWithoutProtocol,
    PositivePortSet,
    AddressFamily(IpNet),
    InterfaceName(String),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::PortWithoutProtocol => {
                f.write_str("port match without a preceding protocol match")
            }
            EncodeError::PositivePortSet => {
                f.write_str("positive match on several ports (needs an nft set)")
            }
            EncodeError::AddressFamily(net) => {
                write!(f, "address {net} does not belong to this family")
            }
            EncodeError::InterfaceName(name) => write!(
                f,
                "interface name {name:?} is empty or longer than 15 bytes"
            ),
        }
    }
}

/// The nft rules of IR `rule` in `table` (one, or two for TPROXY; see the renderer's docs).
pub fn encode_rule(
    table: Table,
    rule: &Rule,
    family: Family,
) -> Result<Vec<EncodedRule>, EncodeError> {
    let texts = rule_texts(table, rule, family);
    let mut matches = Attrs::new();
    encode_matches(&mut matches, &rule.matches, family)?;
    let mut out = Vec::with_capacity(texts.len());
    let mut texts = texts.into_iter();
    let mut first = matches.clone();
    encode_target(&mut first, table, &rule.target, family);
    let text = texts.next().expect("rule_texts yields at least one rule");
    out.push(EncodedRule {
        comment: rule_comment(&text),
        text,
        exprs: first,
    });
    if matches!(rule.target, Target::Tproxy { .. }) {
        // nft_tproxy_eval BREAKs when no socket is found; this rule then drops the packet, as
        // iptables TPROXY does.
        let mut fallback = matches;
        verdict(&mut fallback, NF_DROP, None);
        let text = texts.next().expect("tproxy rule has a fallback text");
        out.push(EncodedRule {
            comment: rule_comment(&text),
            text,
            exprs: fallback,
        });
    }
    Ok(out)
}

fn expr(list: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    list.nested(NFTA_LIST_ELEM, |e| {
        e.put_str(NFTA_EXPR_NAME, name);
        e.nested(NFTA_EXPR_DATA, data);
    });
}

fn meta_load(list: &mut Attrs, key: u32) {
    expr(list, "meta", |d| {
        d.put_be32(NFTA_META_KEY, key)
            .put_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn meta_set(list: &mut Attrs, key: u32) {
    expr(list, "meta", |d| {
        d.put_be32(NFTA_META_KEY, key)
            .put_be32(NFTA_META_SREG, NFT_REG_1);
    });
}

fn ct_load(list: &mut Attrs, key: u32) {
    expr(list, "ct", |d| {
        d.put_be32(NFTA_CT_KEY, key)
            .put_be32(NFTA_CT_DREG, NFT_REG_1);
    });
}

fn ct_set(list: &mut Attrs, key: u32) {
    expr(list, "ct", |d| {
        d.put_be32(NFTA_CT_KEY, key)
            .put_be32(NFTA_CT_SREG, NFT_REG_1);
    });
}

fn payload(list: &mut Attrs, base: u32, offset: u32, len: u32) {
    expr(list, "payload", |d| {
        d.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .put_be32(NFTA_PAYLOAD_BASE, base)
            .put_be32(NFTA_PAYLOAD_OFFSET, offset)
            .put_be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn cmp(list: &mut Attrs, negate: bool, data: &[u8]) {
    cmp_op(list, if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, data);
}

fn cmp_op(list: &mut Attrs, op: u32, data: &[u8]) {
    expr(list, "cmp", |d| {
        d.put_be32(NFTA_CMP_SREG, NFT_REG_1)
            .put_be32(NFTA_CMP_OP, op);
        d.nested(NFTA_CMP_DATA, |v| {
            v.put(NFTA_DATA_VALUE, data);
        });
    });
}

fn bitwise(list: &mut Attrs, mask: &[u8]) {
    let xor = vec![0u8; mask.len()];
    expr(list, "bitwise", |d| {
        d.put_be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .put_be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .put_be32(NFTA_BITWISE_LEN, mask.len() as u32);
        d.nested(NFTA_BITWISE_MASK, |v| {
            v.put(NFTA_DATA_VALUE, mask);
        });
        d.nested(NFTA_BITWISE_XOR, |v| {
            v.put(NFTA_DATA_VALUE, &xor);
        });
    });
}

fn immediate(list: &mut Attrs, data: &[u8]) {
    expr(list, "immediate", |d| {
        d.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        d.nested(NFTA_IMMEDIATE_DATA, |v| {
            v.put(NFTA_DATA_VALUE, data);
        });
    });
}

fn verdict(list: &mut Attrs, code: i32, chain: Option<&str>) {
    expr(list, "immediate", |d| {
        d.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        d.nested(NFTA_IMMEDIATE_DATA, |data| {
            data.nested(NFTA_DATA_VERDICT, |v| {
                v.put_be32(NFTA_VERDICT_CODE, code as u32);
                if let Some(chain) = chain {
                    v.put_str(NFTA_VERDICT_CHAIN, chain);
                }
            });
        });
    });
}

fn encode_matches(list: &mut Attrs, matches: &[Match], family: Family) -> Result<(), EncodeError> {
    let mut proto: Option<Proto> = None;
    for m in matches {
        match m {
            Match::Protocol(p) => {
                proto = Some(*p);
                meta_load(list, NFT_META_L4PROTO);
                cmp(list, false, &[p.number()]);
            }
            Match::DestPort { ports, negate } => {
                proto.ok_or(EncodeError::PortWithoutProtocol)?;
                if !negate && ports.len() != 1 {
                    return Err(EncodeError::PositivePortSet);
                }
                // tcp and udp both keep the destination port at offset 2.
                for port in ports {
                    payload(list, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                    cmp(list, *negate, &port.to_be_bytes());
                }
            }
            Match::DestPortRange { first, last } => {
                proto.ok_or(EncodeError::PortWithoutProtocol)?;
                // Ports are big-endian on the wire, so byte-wise comparison orders them.
                payload(list, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                cmp_op(list, NFT_CMP_GTE, &first.to_be_bytes());
                cmp_op(list, NFT_CMP_LTE, &last.to_be_bytes());
            }
            Match::SourcePort { port } => {
                proto.ok_or(EncodeError::PortWithoutProtocol)?;
                payload(list, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2);
                cmp(list, false, &port.to_be_bytes());
            }
            Match::Source { net, negate } => address(list, family, net, true, *negate)?,
            Match::Destination { net, negate } => address(list, family, net, false, *negate)?,
            Match::InInterface { name } => {
                meta_load(list, NFT_META_IIFNAME);
                cmp(list, false, &ifname(name)?);
            }
            Match::OutInterface { name } => {
                meta_load(list, NFT_META_OIFNAME);
                cmp(list, false, &ifname(name)?);
            }
            Match::UidOwner { uid, negate } => {
                meta_load(list, NFT_META_SKUID);
                cmp(list, *negate, &uid.to_ne_bytes());
            }
            Match::GidOwner { gid, negate } => {
                meta_load(list, NFT_META_SKGID);
                cmp(list, *negate, &gid.to_ne_bytes());
            }
            Match::Mark { value, negate } => {
                meta_load(list, NFT_META_MARK);
                cmp(list, *negate, &value.to_ne_bytes());
            }
            Match::ConnMark { value } => {
                ct_load(list, NFT_CT_MARK);
                cmp(list, false, &value.to_ne_bytes());
            }
            Match::CtStateRelatedEstablished => {
                ct_load(list, NFT_CT_STATE);
                bitwise(list, &CT_STATE_ESTABLISHED_RELATED.to_ne_bytes());
                cmp(list, true, &0u32.to_ne_bytes());
            }
            Match::CtStateInvalid => {
                ct_load(list, NFT_CT_STATE);
                bitwise(list, &CT_STATE_INVALID.to_ne_bytes());
                cmp(list, true, &0u32.to_ne_bytes());
            }
        }
    }
    Ok(())
}

/// `ip saddr NET`: like nft, a byte-aligned prefix loads only its bytes and compares them;
/// any other prefix loads the whole address and masks it first.
fn address(
    list: &mut Attrs,
    family: Family,
    net: &IpNet,
    source: bool,
    negate: bool,
) -> Result<(), EncodeError> {
    if !family.contains(net) {
        return Err(EncodeError::AddressFamily(*net));
    }
    let net = net.trunc();
    let (bytes, mask, offset) = match net {
        // struct iphdr: saddr at 12, daddr at 16; struct ipv6hdr: saddr at 8, daddr at 24.
        IpNet::V4(n) => (
            n.addr().octets().to_vec(),
            n.netmask().octets().to_vec(),
            if source { 12 } else { 16 },
        ),
        IpNet::V6(n) => (
            n.addr().octets().to_vec(),
            n.netmask().octets().to_vec(),
            if source { 8 } else { 24 },
        ),
    };
    let prefix = usize::from(net.prefix_len());
    if prefix % 8 == 0 && prefix > 0 {
        let len = prefix / 8;
        payload(list, NFT_PAYLOAD_NETWORK_HEADER, offset, len as u32);
        cmp(list, negate, &bytes[..len]);
    } else {
        payload(list, NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len() as u32);
        bitwise(list, &mask);
        cmp(list, negate, &bytes);
    }
    Ok(())
}

fn ifname(name: &str) -> Result<[u8; IFNAMSIZ], EncodeError> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(EncodeError::InterfaceName(name.to_string()));
    }
    let mut buf = [0u8; IFNAMSIZ];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

fn encode_target(list: &mut Attrs, table: Table, target: &Target, family: Family) {
    match target {
        Target::Jump(chain) => verdict(list, NFT_JUMP, Some(&chain_name(table, chain))),
        Target::Return => verdict(list, NFT_RETURN, None),
        Target::Accept => verdict(list, NF_ACCEPT, None),
        Target::Drop => verdict(list, NF_DROP, None),
        Target::Redirect { port } => {
            immediate(list, &port.to_be_bytes());
            expr(list, "redir", |d| {
                d.put_be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1)
                    .put_be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            });
        }
        Target::Tproxy { port, mark } => {
            immediate(list, &port.to_be_bytes());
            let nfproto = match family {
                Family::V4 => NFPROTO_IPV4,
                Family::V6 => NFPROTO_IPV6,
            };
            expr(list, "tproxy", |d| {
                d.put_be32(NFTA_TPROXY_FAMILY, u32::from(nfproto))
                    .put_be32(NFTA_TPROXY_REG_PORT, NFT_REG_1);
            });
            // Only reached when tproxy found a socket (otherwise it BREAKs).
            immediate(list, &mark.to_ne_bytes());
            meta_set(list, NFT_META_MARK);
            verdict(list, NF_ACCEPT, None);
        }
        Target::SetMark(mark) => {
            immediate(list, &mark.to_ne_bytes());
            meta_set(list, NFT_META_MARK);
        }
        Target::SaveMark => {
            meta_load(list, NFT_META_MARK);
            ct_set(list, NFT_CT_MARK);
        }
        Target::RestoreMark => {
            ct_load(list, NFT_CT_MARK);
            meta_set(list, NFT_META_MARK);
        }
        Target::CtZone(zone) => {
            // nft_ct_set reads a host-order u16 for the zone.
            immediate(list, &zone.to_ne_bytes());
            ct_set(list, NFT_CT_ZONE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcap_model::rules::Proto;

    // `meta l4proto tcp return` is exactly: meta load l4proto => reg 1; cmp eq reg 1 0x06;
    // immediate reg 0 return. Bytes spelled out from the uapi layout.
    #[test]
    fn encodes_meta_cmp_verdict_bytes() {
        let rule = Rule::new(vec![Match::Protocol(Proto::Tcp)], Target::Return);
        let encoded = encode_rule(Table::Nat, &rule, Family::V4).unwrap();
        assert_eq!(encoded.len(), 1);
        assert_eq!(encoded[0].text, "meta l4proto tcp return");
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // NFTA_LIST_ELEM (nested), 36 bytes: meta
            &[36, 0, 1, 0x80][..],
            &[9, 0, 1, 0, b'm', b'e', b't', b'a', 0, 0, 0, 0],      // NFTA_EXPR_NAME "meta"
            &[20, 0, 2, 0x80],                                      // NFTA_EXPR_DATA
            &[8, 0, 2, 0, 0, 0, 0, 16],                             //   NFTA_META_KEY l4proto
            &[8, 0, 1, 0, 0, 0, 0, 1],                              //   NFTA_META_DREG reg 1
            // cmp, 44 bytes
            &[44, 0, 1, 0x80],
            &[8, 0, 1, 0, b'c', b'm', b'p', 0],                     // NFTA_EXPR_NAME "cmp"
            &[32, 0, 2, 0x80],
            &[8, 0, 1, 0, 0, 0, 0, 1],                              //   NFTA_CMP_SREG reg 1
            &[8, 0, 2, 0, 0, 0, 0, 0],                              //   NFTA_CMP_OP eq
            &[12, 0, 3, 0x80, 5, 0, 1, 0, 6, 0, 0, 0],              //   NFTA_CMP_DATA {VALUE 06}
            // immediate verdict, 48 bytes
            &[48, 0, 1, 0x80],
            &[14, 0, 1, 0, b'i', b'm', b'm', b'e', b'd', b'i', b'a', b't', b'e', 0, 0, 0],
            &[28, 0, 2, 0x80],
            &[8, 0, 1, 0, 0, 0, 0, 0],                              //   NFTA_IMMEDIATE_DREG verdict
            &[16, 0, 2, 0x80, 12, 0, 2, 0x80],                      //   DATA { VERDICT {
            &[8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfb],                  //     CODE NFT_RETURN (-5) }}
        ]
        .concat();
        assert_eq!(encoded[0].exprs.bytes(), &want[..]);
    }

    // Byte-aligned prefixes load only their bytes; others load the address and mask it; a
    // full-length one needs no mask.
    #[test]
    fn address_prefix_forms() {
        let count = |net: &str| {
            let rule = Rule::new(
                vec![Match::Destination {
                    net: net.parse().unwrap(),
                    negate: false,
                }],
                Target::Accept,
            );
            let e = encode_rule(Table::Nat, &rule, Family::V4).unwrap();
            let bytes = e[0].exprs.bytes().to_vec();
            let has = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
            (has(b"bitwise\0"), bytes.len())
        };
        assert!(!count("10.0.0.1/32").0);
        assert!(!count("10.0.0.0/8").0);
        assert!(count("10.0.0.0/12").0);
        assert!(count("0.0.0.0/0").0);
    }

    #[test]
    fn refuses_what_the_model_never_produces() {
        let port = |negate, ports: Vec<u16>, proto: bool| {
            let mut matches = vec![];
            if proto {
                matches.push(Match::Protocol(Proto::Tcp));
            }
            matches.push(Match::DestPort { ports, negate });
            encode_rule(Table::Nat, &Rule::new(matches, Target::Accept), Family::V4)
        };
        assert_eq!(
            port(false, vec![1, 2], true),
            Err(EncodeError::PositivePortSet)
        );
        assert_eq!(
            port(false, vec![1], false),
            Err(EncodeError::PortWithoutProtocol)
        );
        assert!(port(true, vec![1, 2], true).is_ok());
        let v6_in_v4 = Rule::new(
            vec![Match::Source {
                net: "::1/128".parse().unwrap(),
                negate: false,
            }],
            Target::Accept,
        );
        assert!(matches!(
            encode_rule(Table::Nat, &v6_in_v4, Family::V4),
            Err(EncodeError::AddressFamily(_))
        ));
        let long = Rule::new(
            vec![Match::InInterface {
                name: "a-very-long-name0".into(),
            }],
            Target::Accept,
        );
        assert!(matches!(
            encode_rule(Table::Nat, &long, Family::V4),
            Err(EncodeError::InterfaceName(_))
        ));
    }
}

//! nft rule syntax from expressions: the statements `nft list ruleset` would print for a list of
//! [`Expr`]s, e.g. `meta l4proto tcp tcp dport != 53 redirect to :15001`.
//!
//! Like nft's own `netlink_delinearize`, this follows register 1: a load (`meta`, `ct`,
//! `payload`, `immediate`), an optional mask (`bitwise`), then the expression that uses it
//! (`cmp` for a match, `meta set`/`ct set`/`redir`/`tproxy` for a statement) make one
//! statement. The patterns are the ones meshcap's rules use (and `nft` generates for that
//! syntax); anything else is printed in `nft --debug=netlink` notation, so an unexpected rule
//! in the kernel still reads as what it is.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::expr::{ByteorderOp, CmpOp, CtKey, Expr, MetaKey, PayloadBase, Value, Verdict};
use crate::sys::*;

/// What register 1 holds while a statement is being read.
#[derive(Clone, Copy)]
enum Loaded {
    Meta(MetaKey),
    Ct(CtKey),
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    Immediate(Value),
}

/// The nft syntax of the rule made of `exprs`, in a table of family `nfproto`
/// (NFPROTO_IPV4/IPV6: it decides whether an address is `ip` or `ip6`).
pub fn rule_text(exprs: &[Expr], nfproto: u8) -> String {
    let mut out = String::new();
    // The protocol of the last `meta l4proto` match, which names port matches.
    let mut l4: Option<u8> = None;
    let mut loaded: Option<Loaded> = None;
    let mut mask: Option<Value> = None;
    // The lower bound of a port (or owner) range whose upper bound comes next.
    let mut range_from: Option<Value> = None;
    // Register 1 holds a host-order owner id converted to network order (`byteorder hton`),
    // as nft loads one for a range: `meta skuid 1000-2000`.
    let mut swapped = false;
    // The expressions read into `loaded`/`mask`, printed raw if no pattern uses them.
    let mut pending: Vec<&Expr> = Vec::new();
    for expr in exprs {
        let step = match expr {
            Expr::MetaLoad { key, dreg } if *dreg == NFT_REG_1 => Step::Load(Loaded::Meta(*key)),
            Expr::CtLoad { key, dreg } if *dreg == NFT_REG_1 => Step::Load(Loaded::Ct(*key)),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } if *dreg == NFT_REG_1 => Step::Load(Loaded::Payload {
                base: *base,
                offset: *offset,
                len: *len,
            }),
            Expr::Immediate { dreg, data } if *dreg == NFT_REG_1 => {
                Step::Load(Loaded::Immediate(*data))
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask: m,
                xor,
                ..
            } if *sreg == NFT_REG_1
                && *dreg == NFT_REG_1
                && loaded.is_some()
                && mask.is_none()
                && xor.as_bytes().iter().all(|b| *b == 0) =>
            {
                mask = Some(*m);
                Step::Hold
            }
            Expr::Byteorder {
                sreg,
                dreg,
                op: ByteorderOp::Hton,
                len: 4,
                size: 4,
            } if *sreg == NFT_REG_1
                && *dreg == NFT_REG_1
                && !swapped
                && mask.is_none()
                && matches!(loaded, Some(Loaded::Meta(MetaKey::Skuid | MetaKey::Skgid))) =>
            {
                swapped = true;
                Step::Hold
            }
            // `tcp dport 4190-4191`, `meta skuid 1000-2000`: two compares of the same load.
            Expr::Cmp {
                sreg,
                op: CmpOp::Gte,
                data,
            } if *sreg == NFT_REG_1
                && range_from.is_none()
                && mask.is_none()
                && (port_field(loaded).is_some() || swapped) =>
            {
                range_from = Some(*data);
                Step::Hold
            }
            Expr::Cmp {
                sreg,
                op: CmpOp::Lte,
                data,
            } if *sreg == NFT_REG_1 && range_from.is_some() && swapped => {
                let first = range_from.and_then(|v| v.to_be32());
                match (loaded, first, data.to_be32()) {
                    (Some(Loaded::Meta(key)), Some(first), Some(last)) => {
                        Step::Word(format!("meta {key} {first}-{last}"))
                    }
                    _ => Step::Raw,
                }
            }
            Expr::Cmp {
                sreg,
                op: CmpOp::Lte,
                data,
            } if *sreg == NFT_REG_1 && range_from.is_some() => {
                let first = range_from.and_then(|v| v.to_port());
                match (port_field(loaded), first, data.to_port()) {
                    (Some(field), Some(first), Some(last)) => {
                        Step::Word(format!("{} {field} {first}-{last}", l4_name(l4)))
                    }
                    _ => Step::Raw,
                }
            }
            Expr::Cmp { sreg, op, data }
                if *sreg == NFT_REG_1 && range_from.is_none() && !swapped =>
            {
                loaded
                    .and_then(|l| match_text(l, mask, *op, data, nfproto, &mut l4))
                    .map_or(Step::Raw, Step::Word)
            }
            Expr::MetaSet { key, sreg } if *sreg == NFT_REG_1 && mask.is_none() => {
                match (key, loaded) {
                    (MetaKey::Mark, Some(Loaded::Immediate(v))) => {
                        v.to_u32().map(|m| format!("meta mark set {m:#x}"))
                    }
                    (MetaKey::Mark, Some(Loaded::Ct(CtKey::Mark))) => {
                        Some("meta mark set ct mark".to_string())
                    }
                    _ => None,
                }
                .map_or(Step::Raw, Step::Word)
            }
            Expr::CtSet { key, sreg } if *sreg == NFT_REG_1 && mask.is_none() => {
                match (key, loaded) {
                    (CtKey::Mark, Some(Loaded::Meta(MetaKey::Mark))) => {
                        Some("ct mark set meta mark".to_string())
                    }
                    (CtKey::Zone, Some(Loaded::Immediate(v))) => {
                        v.to_u16().map(|z| format!("ct zone set {z}"))
                    }
                    _ => None,
                }
                .map_or(Step::Raw, Step::Word)
            }
            Expr::Redir {
                reg_proto_min: Some(NFT_REG_1),
                reg_proto_max: None,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            } if mask.is_none() => match loaded {
                Some(Loaded::Immediate(v)) => v.to_port().map(|p| format!("redirect to :{p}")),
                _ => None,
            }
            .map_or(Step::Raw, Step::Word),
            Expr::Tproxy {
                family,
                reg_addr: None,
                reg_port: Some(NFT_REG_1),
            } if mask.is_none() && *family == nfproto => match loaded {
                Some(Loaded::Immediate(v)) => v.to_port().map(|p| format!("tproxy to :{p}")),
                _ => None,
            }
            .map_or(Step::Raw, Step::Word),
            Expr::Verdict(verdict) => {
                // A verdict reads no register: whatever was loaded is left over.
                flush(&mut out, &mut pending);
                Step::Word(verdict_text(verdict))
            }
            _ => Step::Raw,
        };
        match step {
            Step::Load(what) => {
                // A load nothing used: show it as it is.
                flush(&mut out, &mut pending);
                loaded = Some(what);
                mask = None;
                range_from = None;
                swapped = false;
                pending.push(expr);
                continue;
            }
            Step::Hold => {
                pending.push(expr);
                continue;
            }
            Step::Word(word) => {
                pending.clear();
                push_word(&mut out, &word);
            }
            Step::Raw => {
                // Nothing this module knows: show the raw expressions.
                pending.push(expr);
                flush(&mut out, &mut pending);
            }
        }
        // The statement used the register; the next one loads its own.
        loaded = None;
        mask = None;
        range_from = None;
        swapped = false;
    }
    flush(&mut out, &mut pending);
    out
}

/// What one expression does to the statement being read.
enum Step {
    /// Loads register 1 (starting a statement).
    Load(Loaded),
    /// Modifies what is loaded (a mask).
    Hold,
    /// Completes a statement.
    Word(String),
    /// Not a pattern of this module.
    Raw,
}

/// Prints `pending` expressions in `nft --debug=netlink` notation and empties it.
fn flush(out: &mut String, pending: &mut Vec<&Expr>) {
    for raw in pending.drain(..) {
        push_word(out, &raw.to_string());
    }
}

fn push_word(out: &mut String, word: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(word);
}

fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Jump(chain) => format!("jump {}", crate::expr::shown_name(chain)),
        Verdict::Goto(chain) => format!("goto {}", crate::expr::shown_name(chain)),
        other => other.to_string(),
    }
}

fn op_text(op: CmpOp) -> Option<&'static str> {
    Some(match op {
        CmpOp::Eq => "",
        CmpOp::Neq => "!= ",
        CmpOp::Lt => "< ",
        CmpOp::Lte => "<= ",
        CmpOp::Gt => "> ",
        CmpOp::Gte => ">= ",
        CmpOp::Other(_) => return None,
    })
}

/// A match statement: what `loaded` (masked by `mask`) is compared with.
fn match_text(
    loaded: Loaded,
    mask: Option<Value>,
    op: CmpOp,
    data: &Value,
    nfproto: u8,
    l4: &mut Option<u8>,
) -> Option<String> {
    let ne = op_text(op)?;
    match (loaded, mask) {
        (Loaded::Meta(MetaKey::L4proto), None) => {
            let [proto] = data.as_bytes() else {
                return None;
            };
            if op == CmpOp::Eq {
                *l4 = Some(*proto);
            }
            let name = match *proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                other => other.to_string(),
            };
            Some(format!("meta l4proto {ne}{name}"))
        }
        (Loaded::Meta(key @ (MetaKey::Iifname | MetaKey::Oifname)), None) => {
            let bytes = data.as_bytes();
            // The whole NUL-padded name is an exact match; a shorter compare without a NUL is a
            // prefix match, which nft writes as a wildcard.
            let (name, wildcard) = if bytes.len() == IFNAMSIZ {
                (&bytes[..bytes.iter().position(|b| *b == 0)?], "")
            } else if !bytes.is_empty() && !bytes.contains(&0) {
                (bytes, "*")
            } else {
                return None;
            };
            let name = std::str::from_utf8(name).ok()?;
            Some(format!("{key} {ne}\"{name}{wildcard}\""))
        }
        (Loaded::Meta(key @ (MetaKey::Skuid | MetaKey::Skgid)), None) => {
            Some(format!("meta {key} {ne}{}", data.to_u32()?))
        }
        (Loaded::Meta(MetaKey::Mark), None) => Some(format!("meta mark {ne}{:#x}", data.to_u32()?)),
        (Loaded::Ct(CtKey::Mark), None) => Some(format!("ct mark {ne}{:#x}", data.to_u32()?)),
        (Loaded::Ct(CtKey::State), Some(mask)) if op == CmpOp::Neq && data.to_u32()? == 0 => {
            let bits = mask.to_u32()?;
            let names: Vec<&str> = CT_STATE_NAMES
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|(_, name)| *name)
                .collect();
            let named: u32 = CT_STATE_NAMES.iter().map(|(bit, _)| bit).sum();
            if names.is_empty() || bits & !named != 0 {
                return None;
            }
            Some(format!("ct state {}", names.join(",")))
        }
        (loaded @ Loaded::Payload { .. }, None) if port_field(Some(loaded)).is_some() => {
            Some(format!(
                "{} {} {ne}{}",
                l4_name(*l4),
                port_field(Some(loaded))?,
                data.to_port()?
            ))
        }
        (
            Loaded::Payload {
                base: PayloadBase::Network,
                offset,
                len,
            },
            mask,
        ) => address_text(nfproto, offset, len, mask, data, ne),
        _ => None,
    }
}

/// `sport`/`dport` when `loaded` is a transport header port.
fn port_field(loaded: Option<Loaded>) -> Option<&'static str> {
    match loaded? {
        Loaded::Payload {
            base: PayloadBase::Transport,
            offset: 0,
            len: 2,
        } => Some("sport"),
        Loaded::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        } => Some("dport"),
        _ => None,
    }
}

/// Port matches name the protocol of the closest preceding `meta l4proto` match, as nft prints
/// them; without one, nft's raw transport header `th` stands in.
fn l4_name(l4: Option<u8>) -> &'static str {
    match l4 {
        Some(6) => "tcp",
        Some(17) => "udp",
        _ => "th",
    }
}

/// `ip saddr 10.0.0.0/8`: a prefix compare of the loaded bytes, or a masked compare of the
/// whole address. The prefix is always printed, as meshcap's rules always carry one.
fn address_text(
    nfproto: u8,
    offset: u32,
    len: u32,
    mask: Option<Value>,
    data: &Value,
    ne: &str,
) -> Option<String> {
    let (keyword, field, size) = match (nfproto, offset) {
        // struct iphdr: saddr at 12, daddr at 16; struct ipv6hdr: saddr at 8, daddr at 24.
        (NFPROTO_IPV4, 12) => ("ip", "saddr", 4),
        (NFPROTO_IPV4, 16) => ("ip", "daddr", 4),
        (NFPROTO_IPV6, 8) => ("ip6", "saddr", 16),
        (NFPROTO_IPV6, 24) => ("ip6", "daddr", 16),
        _ => return None,
    };
    let len = usize::try_from(len).ok()?;
    if len == 0 || len > size || data.len() != len {
        return None;
    }
    let prefix = match mask {
        None => len * 8,
        Some(mask) => {
            if len != size || mask.len() != size {
                return None;
            }
            let ones: u32 = mask.as_bytes().iter().map(|b| b.count_ones()).sum();
            // Only a contiguous prefix mask reads back as a prefix.
            let expected = prefix_mask(ones as usize, size);
            if mask.as_bytes() != &expected[..size] {
                return None;
            }
            ones as usize
        }
    };
    let mut full = [0u8; 16];
    full[..len].copy_from_slice(data.as_bytes());
    let mut text = format!("{keyword} {field} {ne}");
    if size == 4 {
        let addr = Ipv4Addr::new(full[0], full[1], full[2], full[3]);
        let _ = write!(text, "{addr}/{prefix}");
    } else {
        let _ = write!(text, "{}/{prefix}", Ipv6Addr::from(full));
    }
    Some(text)
}

/// The first `prefix` bits set, over `size` bytes.
pub fn prefix_mask(prefix: usize, size: usize) -> [u8; 16] {
    let mut mask = [0u8; 16];
    for (i, byte) in mask.iter_mut().enumerate().take(size) {
        let bits = prefix.saturating_sub(i * 8).min(8);
        *byte = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_mark() -> Expr {
        Expr::MetaLoad {
            key: MetaKey::Mark,
            dreg: NFT_REG_1,
        }
    }

    // Expressions outside the known patterns are shown raw, never dropped or misread: a load
    // nothing uses, a mask with an xor, a compare on another register.
    #[test]
    fn unknown_patterns_print_raw() {
        let exprs = [load_mark(), Expr::Verdict(Verdict::Accept)];
        assert_eq!(
            rule_text(&exprs, NFPROTO_IPV4),
            "[ meta load mark => reg 1 ] accept"
        );
        let exprs = [
            load_mark(),
            Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                len: 4,
                mask: Value::u32(0xff),
                xor: Value::u32(1),
            },
            Expr::Cmp {
                sreg: NFT_REG_1,
                op: CmpOp::Eq,
                data: Value::u32(1),
            },
        ];
        assert_eq!(
            rule_text(&exprs, NFPROTO_IPV4),
            "[ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x000000ff ) ^ 0x00000001 ] \
             [ cmp eq reg 1 0x00000001 ]"
        );
        let exprs = [
            load_mark(),
            load_mark(),
            Expr::Cmp {
                sreg: NFT_REG_1,
                op: CmpOp::Eq,
                data: Value::u32(1),
            },
        ];
        assert_eq!(
            rule_text(&exprs, NFPROTO_IPV4),
            "[ meta load mark => reg 1 ] meta mark 0x1"
        );
    }

    #[test]
    fn an_owner_range_reads_as_nft_writes_it() {
        let load = Expr::MetaLoad {
            key: MetaKey::Skuid,
            dreg: NFT_REG_1,
        };
        let hton = Expr::Byteorder {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            op: ByteorderOp::Hton,
            len: 4,
            size: 4,
        };
        let cmp = |op, v| Expr::Cmp {
            sreg: NFT_REG_1,
            op,
            data: Value::be32(v),
        };
        let exprs = [
            load.clone(),
            hton.clone(),
            cmp(CmpOp::Gte, 1000),
            cmp(CmpOp::Lte, 2000),
            Expr::Verdict(Verdict::Return),
        ];
        assert_eq!(
            rule_text(&exprs, NFPROTO_IPV4),
            "meta skuid 1000-2000 return"
        );
        assert_eq!(hton.to_string(), "[ byteorder reg 1 = hton(reg 1, 4, 4) ]");
        // A converted value compared for equality is no pattern here: shown raw, not misread.
        let exprs = [load, hton, cmp(CmpOp::Eq, 1000)];
        assert!(
            rule_text(&exprs, NFPROTO_IPV4).contains("byteorder"),
            "{}",
            rule_text(&exprs, NFPROTO_IPV4)
        );
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(&prefix_mask(12, 4)[..4], &[255, 240, 0, 0]);
        assert_eq!(&prefix_mask(0, 4)[..4], &[0, 0, 0, 0]);
        assert_eq!(&prefix_mask(32, 4)[..4], &[255; 4]);
    }
}

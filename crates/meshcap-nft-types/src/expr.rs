//! nf_tables expressions as typed values.
//!
//! An nftables rule is a list of expressions that the kernel runs in order over a few
//! registers: loads (`meta`, `ct`, `payload`, `immediate`) fill register 1, `cmp` and `bitwise`
//! test it, statements (`meta set`, `ct set`, `redir`, `tproxy`) consume it, and a verdict ends
//! the rule. [`Expr`] is one of those expressions, with exactly the attributes the kernel
//! knows it by:
//!
//! - [`Expr::emit`] writes it as the `NFTA_LIST_ELEM` that `nft` sends (same attributes, same
//!   order, same bytes: pinned by the captured fixtures under `tests/fixtures/`);
//! - [`Expr::parse`] reads it back from a kernel dump (or from `nft`'s request), normalising
//!   what the kernel adds on its own (the redirect's maximum port register, bitwise's default
//!   operation), so `parse(emit(e)) == e` and an installed rule compares equal to the rule that
//!   installed it;
//! - `Display` prints it the way `nft --debug=netlink` does (`[ cmp eq reg 1 0x00000006 ]`).
//!
//! The nft *rule* syntax (`tcp dport 15008 return`) is a property of a whole list, not of one
//! expression; [`crate::text`] derives it.

use std::fmt;

use crate::attr::{attr_be32, attr_str, AttrIter, Attrs};
use crate::sys::*;

/// The content of one data register (at most 16 bytes), held inline: building a rule allocates
/// nothing per value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Value {
    len: u8,
    bytes: [u8; 16],
}

impl Value {
    pub const MAX_LEN: usize = 16;

    /// `None` when `bytes` is longer than a register.
    pub fn new(bytes: &[u8]) -> Option<Value> {
        if bytes.len() > Self::MAX_LEN {
            return None;
        }
        let mut value = Value {
            len: bytes.len() as u8,
            bytes: [0; 16],
        };
        value.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(value)
    }

    /// A u32 in host order, as `meta mark`, `meta skuid`, `ct mark` hold it.
    pub fn u32(v: u32) -> Value {
        Value::new(&v.to_ne_bytes()).expect("4 bytes")
    }

    /// A u16 in host order (`ct zone`).
    pub fn u16(v: u16) -> Value {
        Value::new(&v.to_ne_bytes()).expect("2 bytes")
    }

    /// A u32 in network order: a host-order value after `byteorder hton`, which compares
    /// byte-wise in numeric order.
    pub fn be32(v: u32) -> Value {
        Value::new(&v.to_be_bytes()).expect("4 bytes")
    }

    /// A port, in network order as the packet carries it.
    pub fn port(port: u16) -> Value {
        Value::new(&port.to_be_bytes()).expect("2 bytes")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value read as a host-order u32, when it is 4 bytes.
    pub fn to_u32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.as_bytes().try_into().ok()?))
    }

    /// The value read as a host-order u16, when it is 2 bytes.
    pub fn to_u16(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.as_bytes().try_into().ok()?))
    }

    /// The value read as a network-order u32, when it is 4 bytes.
    pub fn to_be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.as_bytes().try_into().ok()?))
    }

    /// The value read as a network-order port, when it is 2 bytes.
    pub fn to_port(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.as_bytes().try_into().ok()?))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// libnftnl's notation: the register as host-order 32-bit words, zero padded.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = self.len().div_ceil(4);
        for i in 0..words {
            let mut word = [0u8; 4];
            let end = (i * 4 + 4).min(self.len());
            word[..end - i * 4].copy_from_slice(&self.bytes[i * 4..end]);
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "0x{:08x}", u32::from_ne_bytes(word))?;
        }
        Ok(())
    }
}

/// `enum nft_meta_keys`, the ones meshcap uses by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKey {
    Mark,
    Iifname,
    Oifname,
    Skuid,
    Skgid,
    L4proto,
    Other(u32),
}

impl MetaKey {
    pub fn from_raw(raw: u32) -> MetaKey {
        match raw {
            NFT_META_MARK => MetaKey::Mark,
            NFT_META_IIFNAME => MetaKey::Iifname,
            NFT_META_OIFNAME => MetaKey::Oifname,
            NFT_META_SKUID => MetaKey::Skuid,
            NFT_META_SKGID => MetaKey::Skgid,
            NFT_META_L4PROTO => MetaKey::L4proto,
            other => MetaKey::Other(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            MetaKey::Mark => NFT_META_MARK,
            MetaKey::Iifname => NFT_META_IIFNAME,
            MetaKey::Oifname => NFT_META_OIFNAME,
            MetaKey::Skuid => NFT_META_SKUID,
            MetaKey::Skgid => NFT_META_SKGID,
            MetaKey::L4proto => NFT_META_L4PROTO,
            MetaKey::Other(raw) => raw,
        }
    }
}

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaKey::Mark => f.write_str("mark"),
            MetaKey::Iifname => f.write_str("iifname"),
            MetaKey::Oifname => f.write_str("oifname"),
            MetaKey::Skuid => f.write_str("skuid"),
            MetaKey::Skgid => f.write_str("skgid"),
            MetaKey::L4proto => f.write_str("l4proto"),
            MetaKey::Other(raw) => write!(f, "key#{raw}"),
        }
    }
}

/// `enum nft_ct_keys`, the ones meshcap uses by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtKey {
    State,
    Mark,
    Zone,
    Other(u32),
}

impl CtKey {
    pub fn from_raw(raw: u32) -> CtKey {
        match raw {
            NFT_CT_STATE => CtKey::State,
            NFT_CT_MARK => CtKey::Mark,
            NFT_CT_ZONE => CtKey::Zone,
            other => CtKey::Other(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            CtKey::State => NFT_CT_STATE,
            CtKey::Mark => NFT_CT_MARK,
            CtKey::Zone => NFT_CT_ZONE,
            CtKey::Other(raw) => raw,
        }
    }
}

impl fmt::Display for CtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtKey::State => f.write_str("state"),
            CtKey::Mark => f.write_str("mark"),
            CtKey::Zone => f.write_str("zone"),
            CtKey::Other(raw) => write!(f, "key#{raw}"),
        }
    }
}

/// `enum nft_payload_bases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    Link,
    Network,
    Transport,
    Other(u32),
}

impl PayloadBase {
    pub fn from_raw(raw: u32) -> PayloadBase {
        match raw {
            NFT_PAYLOAD_LL_HEADER => PayloadBase::Link,
            NFT_PAYLOAD_NETWORK_HEADER => PayloadBase::Network,
            NFT_PAYLOAD_TRANSPORT_HEADER => PayloadBase::Transport,
            other => PayloadBase::Other(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            PayloadBase::Link => NFT_PAYLOAD_LL_HEADER,
            PayloadBase::Network => NFT_PAYLOAD_NETWORK_HEADER,
            PayloadBase::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
            PayloadBase::Other(raw) => raw,
        }
    }
}

impl fmt::Display for PayloadBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadBase::Link => f.write_str("link header"),
            PayloadBase::Network => f.write_str("network header"),
            PayloadBase::Transport => f.write_str("transport header"),
            PayloadBase::Other(raw) => write!(f, "base#{raw}"),
        }
    }
}

/// `enum nft_byteorder_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteorderOp {
    Ntoh,
    Hton,
    Other(u32),
}

impl ByteorderOp {
    pub fn from_raw(raw: u32) -> ByteorderOp {
        match raw {
            NFT_BYTEORDER_NTOH => ByteorderOp::Ntoh,
            NFT_BYTEORDER_HTON => ByteorderOp::Hton,
            other => ByteorderOp::Other(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            ByteorderOp::Ntoh => NFT_BYTEORDER_NTOH,
            ByteorderOp::Hton => NFT_BYTEORDER_HTON,
            ByteorderOp::Other(raw) => raw,
        }
    }
}

impl fmt::Display for ByteorderOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteorderOp::Ntoh => f.write_str("ntoh"),
            ByteorderOp::Hton => f.write_str("hton"),
            ByteorderOp::Other(raw) => write!(f, "op{raw}"),
        }
    }
}

/// `enum nft_cmp_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Other(u32),
}

impl CmpOp {
    pub fn from_raw(raw: u32) -> CmpOp {
        match raw {
            NFT_CMP_EQ => CmpOp::Eq,
            NFT_CMP_NEQ => CmpOp::Neq,
            NFT_CMP_LT => CmpOp::Lt,
            NFT_CMP_LTE => CmpOp::Lte,
            NFT_CMP_GT => CmpOp::Gt,
            NFT_CMP_GTE => CmpOp::Gte,
            other => CmpOp::Other(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            CmpOp::Eq => NFT_CMP_EQ,
            CmpOp::Neq => NFT_CMP_NEQ,
            CmpOp::Lt => NFT_CMP_LT,
            CmpOp::Lte => NFT_CMP_LTE,
            CmpOp::Gt => NFT_CMP_GT,
            CmpOp::Gte => NFT_CMP_GTE,
            CmpOp::Other(raw) => raw,
        }
    }

    /// `Eq` when `negate` is false, `Neq` otherwise.
    pub fn eq_unless(negate: bool) -> CmpOp {
        if negate {
            CmpOp::Neq
        } else {
            CmpOp::Eq
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmpOp::Eq => f.write_str("eq"),
            CmpOp::Neq => f.write_str("neq"),
            CmpOp::Lt => f.write_str("lt"),
            CmpOp::Lte => f.write_str("lte"),
            CmpOp::Gt => f.write_str("gt"),
            CmpOp::Gte => f.write_str("gte"),
            CmpOp::Other(raw) => write!(f, "op#{raw}"),
        }
    }
}

/// A verdict (`immediate` into the verdict register).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Break,
    Return,
    Jump(String),
    Goto(String),
    Other(i32),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Continue => NFT_CONTINUE,
            Verdict::Break => NFT_BREAK,
            Verdict::Return => NFT_RETURN,
            Verdict::Jump(_) => NFT_JUMP,
            Verdict::Goto(_) => NFT_GOTO,
            Verdict::Other(code) => *code,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(chain) | Verdict::Goto(chain) => Some(chain),
            _ => None,
        }
    }

    fn from_parts(code: i32, chain: Option<String>) -> Result<Verdict, ParseError> {
        Ok(match (code, chain) {
            (NF_ACCEPT, None) => Verdict::Accept,
            (NF_DROP, None) => Verdict::Drop,
            (NFT_CONTINUE, None) => Verdict::Continue,
            (NFT_BREAK, None) => Verdict::Break,
            (NFT_RETURN, None) => Verdict::Return,
            (NFT_JUMP, Some(chain)) => Verdict::Jump(chain),
            (NFT_GOTO, Some(chain)) => Verdict::Goto(chain),
            (NFT_JUMP | NFT_GOTO, None) => {
                return Err(ParseError::new("verdict", "jump without a chain"))
            }
            (code, _) => Verdict::Other(code),
        })
    }
}

/// A name read from a dump (a chain, an expression type) as it goes into a rule's text: as
/// it is when it is one printable word, else quoted and escaped, so the text stays one line
/// and one token whatever the dump held.
pub fn shown_name(name: &str) -> std::borrow::Cow<'_, str> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{name:?}"))
    }
}

/// libnftnl's notation (`jump -> CHAIN`).
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Break => f.write_str("break"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(chain) => write!(f, "jump -> {}", shown_name(chain)),
            Verdict::Goto(chain) => write!(f, "goto -> {}", shown_name(chain)),
            Verdict::Other(code) => write!(f, "verdict#{code}"),
        }
    }
}

/// One nf_tables expression. Registers are the kernel's numbers (`NFT_REG_*`); meshcap, like
/// `nft` for these rules, only uses [`NFT_REG_1`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `meta load KEY => reg D`.
    MetaLoad { key: MetaKey, dreg: u32 },
    /// `meta set KEY with reg S`.
    MetaSet { key: MetaKey, sreg: u32 },
    /// `ct load KEY => reg D` (keys without a direction).
    CtLoad { key: CtKey, dreg: u32 },
    /// `ct set KEY with reg S`.
    CtSet { key: CtKey, sreg: u32 },
    /// `payload load LENb @ BASE + OFFSET => reg D`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `cmp OP reg S DATA`.
    Cmp { sreg: u32, op: CmpOp, data: Value },
    /// `byteorder reg D = OP(reg S, SIZE, LEN)`: `len` bytes of `size`-byte words converted
    /// (`hton` makes a host-order value compare in numeric order).
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: ByteorderOp,
        len: u32,
        size: u32,
    },
    /// `bitwise reg D = ( reg S & MASK ) ^ XOR` (the boolean operation).
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Value,
        xor: Value,
    },
    /// `immediate reg D DATA`: a value into a data register.
    Immediate { dreg: u32, data: Value },
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict),
    /// `redir proto_min reg R flags F`: NAT to a local port held in a register.
    Redir {
        reg_proto_min: Option<u32>,
        /// Only when it differs from the minimum (the kernel reports the minimum again when
        /// no maximum was sent).
        reg_proto_max: Option<u32>,
        flags: u32,
    },
    /// `tproxy FAMILY port reg R`: assign the packet to a transparent socket, or BREAK.
    Tproxy {
        /// NFPROTO_IPV4 or NFPROTO_IPV6.
        family: u8,
        reg_addr: Option<u32>,
        reg_port: Option<u32>,
    },
    /// An expression meshcap does not model (or a known one with attributes it does not use),
    /// kept as the kernel sent it so that it compares unequal to anything meshcap installs.
    Other { name: String, data: Vec<u8> },
}

/// Why bytes are not a well-formed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub expr: String,
    pub detail: &'static str,
}

impl ParseError {
    fn new(expr: &str, detail: &'static str) -> Self {
        ParseError {
            expr: expr.to_string(),
            detail,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expression {:?}: {}", self.expr, self.detail)
    }
}

impl std::error::Error for ParseError {}

impl Expr {
    /// The kernel's name of the expression type (`NFTA_EXPR_NAME`).
    pub fn name(&self) -> &str {
        match self {
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => "meta",
            Expr::CtLoad { .. } | Expr::CtSet { .. } => "ct",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Byteorder { .. } => "byteorder",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Redir { .. } => "redir",
            Expr::Tproxy { .. } => "tproxy",
            Expr::Other { name, .. } => name,
        }
    }

    /// Appends this expression to `list` (the content of `NFTA_RULE_EXPRESSIONS`) as one
    /// `NFTA_LIST_ELEM`, attributes in libnftnl's order.
    pub fn emit(&self, list: &mut Attrs) {
        list.nested(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, self.name());
            if let Expr::Other { data, .. } = self {
                e.put(NFTA_EXPR_DATA | NLA_F_NESTED, data);
                return;
            }
            e.nested(NFTA_EXPR_DATA, |d| self.emit_data(d));
        });
    }

    fn emit_data(&self, d: &mut Attrs) {
        match self {
            Expr::MetaLoad { key, dreg } => {
                d.put_be32(NFTA_META_KEY, key.raw())
                    .put_be32(NFTA_META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                d.put_be32(NFTA_META_KEY, key.raw())
                    .put_be32(NFTA_META_SREG, *sreg);
            }
            Expr::CtLoad { key, dreg } => {
                d.put_be32(NFTA_CT_KEY, key.raw())
                    .put_be32(NFTA_CT_DREG, *dreg);
            }
            Expr::CtSet { key, sreg } => {
                d.put_be32(NFTA_CT_KEY, key.raw())
                    .put_be32(NFTA_CT_SREG, *sreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                d.put_be32(NFTA_PAYLOAD_DREG, *dreg)
                    .put_be32(NFTA_PAYLOAD_BASE, base.raw())
                    .put_be32(NFTA_PAYLOAD_OFFSET, *offset)
                    .put_be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                d.put_be32(NFTA_CMP_SREG, *sreg)
                    .put_be32(NFTA_CMP_OP, op.raw());
                d.nested(NFTA_CMP_DATA, |v| {
                    v.put(NFTA_DATA_VALUE, data.as_bytes());
                });
            }
            Expr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => {
                d.put_be32(NFTA_BYTEORDER_SREG, *sreg)
                    .put_be32(NFTA_BYTEORDER_DREG, *dreg)
                    .put_be32(NFTA_BYTEORDER_OP, op.raw())
                    .put_be32(NFTA_BYTEORDER_LEN, *len)
                    .put_be32(NFTA_BYTEORDER_SIZE, *size);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                d.put_be32(NFTA_BITWISE_SREG, *sreg)
                    .put_be32(NFTA_BITWISE_DREG, *dreg)
                    .put_be32(NFTA_BITWISE_LEN, *len);
                d.nested(NFTA_BITWISE_MASK, |v| {
                    v.put(NFTA_DATA_VALUE, mask.as_bytes());
                });
                d.nested(NFTA_BITWISE_XOR, |v| {
                    v.put(NFTA_DATA_VALUE, xor.as_bytes());
                });
            }
            Expr::Immediate { dreg, data } => {
                d.put_be32(NFTA_IMMEDIATE_DREG, *dreg);
                d.nested(NFTA_IMMEDIATE_DATA, |v| {
                    v.put(NFTA_DATA_VALUE, data.as_bytes());
                });
            }
            Expr::Verdict(verdict) => {
                d.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                d.nested(NFTA_IMMEDIATE_DATA, |data| {
                    data.nested(NFTA_DATA_VERDICT, |v| {
                        v.put_be32(NFTA_VERDICT_CODE, verdict.code() as u32);
                        if let Some(chain) = verdict.chain() {
                            v.put_str(NFTA_VERDICT_CHAIN, chain);
                        }
                    });
                });
            }
            Expr::Redir {
                reg_proto_min,
                reg_proto_max,
                flags,
            } => {
                if let Some(reg) = reg_proto_min {
                    d.put_be32(NFTA_REDIR_REG_PROTO_MIN, *reg);
                }
                if let Some(reg) = reg_proto_max {
                    d.put_be32(NFTA_REDIR_REG_PROTO_MAX, *reg);
                }
                if *flags != 0 {
                    d.put_be32(NFTA_REDIR_FLAGS, *flags);
                }
            }
            Expr::Tproxy {
                family,
                reg_addr,
                reg_port,
            } => {
                d.put_be32(NFTA_TPROXY_FAMILY, u32::from(*family));
                if let Some(reg) = reg_addr {
                    d.put_be32(NFTA_TPROXY_REG_ADDR, *reg);
                }
                if let Some(reg) = reg_port {
                    d.put_be32(NFTA_TPROXY_REG_PORT, *reg);
                }
            }
            Expr::Other { .. } => unreachable!("emitted verbatim by emit()"),
        }
    }

    /// Parses the payload of one `NFTA_LIST_ELEM`.
    pub fn parse(elem: &[u8]) -> Result<Expr, ParseError> {
        let (mut name, mut data) = (None, None);
        for (ty, v) in AttrIter::new(elem) {
            match ty {
                NFTA_EXPR_NAME => name = Some(attr_str(v)),
                NFTA_EXPR_DATA => data = Some(v),
                _ => {}
            }
        }
        let name = name.ok_or(ParseError::new("?", "no NFTA_EXPR_NAME"))?;
        let data = data.unwrap_or(&[]);
        let attrs = Fields::read(&name, data)?;
        let parsed = match name.as_str() {
            "meta" => match (attrs.be32(NFTA_META_DREG), attrs.be32(NFTA_META_SREG)) {
                (Some(dreg), None) => Some(Expr::MetaLoad {
                    key: MetaKey::from_raw(attrs.need_be32(NFTA_META_KEY)?),
                    dreg,
                }),
                (None, Some(sreg)) => Some(Expr::MetaSet {
                    key: MetaKey::from_raw(attrs.need_be32(NFTA_META_KEY)?),
                    sreg,
                }),
                _ => None,
            },
            "ct" if attrs.get(NFTA_CT_DIRECTION).is_none() => {
                match (attrs.be32(NFTA_CT_DREG), attrs.be32(NFTA_CT_SREG)) {
                    (Some(dreg), None) => Some(Expr::CtLoad {
                        key: CtKey::from_raw(attrs.need_be32(NFTA_CT_KEY)?),
                        dreg,
                    }),
                    (None, Some(sreg)) => Some(Expr::CtSet {
                        key: CtKey::from_raw(attrs.need_be32(NFTA_CT_KEY)?),
                        sreg,
                    }),
                    _ => None,
                }
            }
            "payload" if attrs.get(NFTA_PAYLOAD_SREG).is_none() => Some(Expr::Payload {
                base: PayloadBase::from_raw(attrs.need_be32(NFTA_PAYLOAD_BASE)?),
                offset: attrs.need_be32(NFTA_PAYLOAD_OFFSET)?,
                len: attrs.need_be32(NFTA_PAYLOAD_LEN)?,
                dreg: attrs.need_be32(NFTA_PAYLOAD_DREG)?,
            }),
            "cmp" => Some(Expr::Cmp {
                sreg: attrs.need_be32(NFTA_CMP_SREG)?,
                op: CmpOp::from_raw(attrs.need_be32(NFTA_CMP_OP)?),
                data: attrs.value(NFTA_CMP_DATA)?,
            }),
            "byteorder" => Some(Expr::Byteorder {
                sreg: attrs.need_be32(NFTA_BYTEORDER_SREG)?,
                dreg: attrs.need_be32(NFTA_BYTEORDER_DREG)?,
                op: ByteorderOp::from_raw(attrs.need_be32(NFTA_BYTEORDER_OP)?),
                len: attrs.need_be32(NFTA_BYTEORDER_LEN)?,
                size: attrs.need_be32(NFTA_BYTEORDER_SIZE)?,
            }),
            "bitwise"
                if attrs.be32(NFTA_BITWISE_OP).unwrap_or(NFT_BITWISE_BOOL) == NFT_BITWISE_BOOL =>
            {
                Some(Expr::Bitwise {
                    sreg: attrs.need_be32(NFTA_BITWISE_SREG)?,
                    dreg: attrs.need_be32(NFTA_BITWISE_DREG)?,
                    len: attrs.need_be32(NFTA_BITWISE_LEN)?,
                    mask: attrs.value(NFTA_BITWISE_MASK)?,
                    xor: attrs.value(NFTA_BITWISE_XOR)?,
                })
            }
            "immediate" => {
                let dreg = attrs.need_be32(NFTA_IMMEDIATE_DREG)?;
                let imm = attrs
                    .get(NFTA_IMMEDIATE_DATA)
                    .ok_or(ParseError::new(&name, "no NFTA_IMMEDIATE_DATA"))?;
                if dreg == NFT_REG_VERDICT {
                    Some(Expr::Verdict(parse_verdict(imm)?))
                } else {
                    Some(Expr::Immediate {
                        dreg,
                        data: attrs.value(NFTA_IMMEDIATE_DATA)?,
                    })
                }
            }
            "redir" => {
                let min = attrs.be32(NFTA_REDIR_REG_PROTO_MIN);
                let max = attrs.be32(NFTA_REDIR_REG_PROTO_MAX);
                Some(Expr::Redir {
                    reg_proto_min: min,
                    reg_proto_max: if max == min { None } else { max },
                    flags: attrs.be32(NFTA_REDIR_FLAGS).unwrap_or(0),
                })
            }
            "tproxy" => Some(Expr::Tproxy {
                family: u8::try_from(attrs.need_be32(NFTA_TPROXY_FAMILY)?)
                    .map_err(|_| ParseError::new(&name, "family out of range"))?,
                reg_addr: attrs.be32(NFTA_TPROXY_REG_ADDR),
                reg_port: attrs.be32(NFTA_TPROXY_REG_PORT),
            }),
            _ => None,
        };
        Ok(match parsed {
            Some(expr) if attrs.all_known(&expr) => expr,
            _ => Expr::Other {
                name,
                data: data.to_vec(),
            },
        })
    }

    /// Parses the content of `NFTA_RULE_EXPRESSIONS`.
    pub fn parse_list(list: &[u8]) -> Result<Vec<Expr>, ParseError> {
        AttrIter::new(list)
            .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
            .map(|(_, elem)| Expr::parse(elem))
            .collect()
    }

    /// The content of `NFTA_RULE_EXPRESSIONS` for `exprs`.
    pub fn emit_list(exprs: &[Expr], list: &mut Attrs) {
        for expr in exprs {
            expr.emit(list);
        }
    }
}

fn parse_verdict(imm: &[u8]) -> Result<Verdict, ParseError> {
    let verdict = AttrIter::new(imm)
        .find(|(ty, _)| *ty == NFTA_DATA_VERDICT)
        .map(|(_, v)| v)
        .ok_or(ParseError::new(
            "immediate",
            "verdict register without a verdict",
        ))?;
    let (mut code, mut chain) = (None, None);
    for (ty, v) in AttrIter::new(verdict) {
        match ty {
            NFTA_VERDICT_CODE => code = attr_be32(v).map(|c| c as i32),
            NFTA_VERDICT_CHAIN => chain = Some(attr_str(v)),
            _ => {}
        }
    }
    Verdict::from_parts(
        code.ok_or(ParseError::new("immediate", "verdict without a code"))?,
        chain,
    )
}

/// The attributes of one expression's NFTA_EXPR_DATA, by type.
struct Fields<'a> {
    name: &'a str,
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Fields<'a> {
    fn read(name: &'a str, data: &'a [u8]) -> Result<Self, ParseError> {
        let attrs: Vec<(u16, &[u8])> = AttrIter::new(data).collect();
        Ok(Fields { name, attrs })
    }

    fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
    }

    fn be32(&self, ty: u16) -> Option<u32> {
        self.get(ty).and_then(attr_be32)
    }

    fn need_be32(&self, ty: u16) -> Result<u32, ParseError> {
        self.be32(ty)
            .ok_or(ParseError::new(self.name, "missing integer attribute"))
    }

    /// A nested `NFTA_DATA_VALUE`.
    fn value(&self, ty: u16) -> Result<Value, ParseError> {
        let nested = self
            .get(ty)
            .ok_or(ParseError::new(self.name, "missing data attribute"))?;
        let bytes = AttrIter::new(nested)
            .find(|(t, _)| *t == NFTA_DATA_VALUE)
            .map(|(_, v)| v)
            .ok_or(ParseError::new(self.name, "data without NFTA_DATA_VALUE"))?;
        Value::new(bytes).ok_or(ParseError::new(self.name, "value longer than a register"))
    }

    /// Whether every attribute present is one the typed form accounts for; otherwise the
    /// expression does something meshcap's form would not show, and stays [`Expr::Other`].
    fn all_known(&self, expr: &Expr) -> bool {
        let known: &[u16] = match expr {
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => {
                &[NFTA_META_KEY, NFTA_META_DREG, NFTA_META_SREG]
            }
            Expr::CtLoad { .. } | Expr::CtSet { .. } => &[NFTA_CT_KEY, NFTA_CT_DREG, NFTA_CT_SREG],
            Expr::Payload { .. } => &[
                NFTA_PAYLOAD_DREG,
                NFTA_PAYLOAD_BASE,
                NFTA_PAYLOAD_OFFSET,
                NFTA_PAYLOAD_LEN,
            ],
            Expr::Cmp { .. } => &[NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA],
            Expr::Byteorder { .. } => &[
                NFTA_BYTEORDER_SREG,
                NFTA_BYTEORDER_DREG,
                NFTA_BYTEORDER_OP,
                NFTA_BYTEORDER_LEN,
                NFTA_BYTEORDER_SIZE,
            ],
            Expr::Bitwise { .. } => &[
                NFTA_BITWISE_SREG,
                NFTA_BITWISE_DREG,
                NFTA_BITWISE_LEN,
                NFTA_BITWISE_MASK,
                NFTA_BITWISE_XOR,
                NFTA_BITWISE_OP,
            ],
            Expr::Immediate { .. } | Expr::Verdict(_) => {
                &[NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA]
            }
            Expr::Redir { .. } => &[
                NFTA_REDIR_REG_PROTO_MIN,
                NFTA_REDIR_REG_PROTO_MAX,
                NFTA_REDIR_FLAGS,
            ],
            Expr::Tproxy { .. } => &[
                NFTA_TPROXY_FAMILY,
                NFTA_TPROXY_REG_ADDR,
                NFTA_TPROXY_REG_PORT,
            ],
            Expr::Other { .. } => return true,
        };
        self.attrs.iter().all(|(ty, _)| known.contains(ty))
    }
}

/// `nft --debug=netlink`'s line for the expression.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[ ")?;
        match self {
            Expr::MetaLoad { key, dreg } => write!(f, "meta load {key} => reg {dreg}")?,
            Expr::MetaSet { key, sreg } => write!(f, "meta set {key} with reg {sreg}")?,
            Expr::CtLoad { key, dreg } => write!(f, "ct load {key} => reg {dreg}")?,
            Expr::CtSet { key, sreg } => write!(f, "ct set {key} with reg {sreg}")?,
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => write!(f, "payload load {len}b @ {base} + {offset} => reg {dreg}")?,
            Expr::Cmp { sreg, op, data } => write!(f, "cmp {op} reg {sreg} {data}")?,
            Expr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => write!(f, "byteorder reg {dreg} = {op}(reg {sreg}, {size}, {len})")?,
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                ..
            } => write!(f, "bitwise reg {dreg} = ( reg {sreg} & {mask} ) ^ {xor}")?,
            Expr::Immediate { dreg, data } => write!(f, "immediate reg {dreg} {data}")?,
            Expr::Verdict(verdict) => write!(f, "immediate reg {NFT_REG_VERDICT} {verdict}")?,
            Expr::Redir {
                reg_proto_min,
                reg_proto_max,
                flags,
            } => {
                f.write_str("redir")?;
                if let Some(reg) = reg_proto_min {
                    write!(f, " proto_min reg {reg}")?;
                }
                if let Some(reg) = reg_proto_max {
                    write!(f, " proto_max reg {reg}")?;
                }
                if *flags != 0 {
                    write!(f, " flags 0x{flags:x}")?;
                }
            }
            Expr::Tproxy {
                family,
                reg_addr,
                reg_port,
            } => {
                f.write_str(match *family {
                    NFPROTO_IPV4 => "tproxy ip",
                    NFPROTO_IPV6 => "tproxy ip6",
                    _ => "tproxy inet",
                })?;
                if let Some(reg) = reg_addr {
                    write!(f, " addr reg {reg}")?;
                }
                if let Some(reg) = reg_port {
                    write!(f, " port reg {reg}")?;
                }
            }
            Expr::Other { name, data } => write!(
                f,
                "{} <{} bytes not modelled>",
                shown_name(name),
                data.len()
            )?,
        }
        f.write_str(" ]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump's unknown expression or a verdict's chain keeps the rule's text on one line
    /// whatever its name holds.
    #[test]
    fn an_unknown_expressions_name_cannot_break_the_line() {
        assert_eq!(
            Verdict::Jump("A\nB".into()).to_string(),
            "jump -> \"A\\nB\""
        );
        assert_eq!(
            Verdict::Goto("KUBE-SVC".into()).to_string(),
            "goto -> KUBE-SVC"
        );
        let odd = Expr::Other {
            name: "\n".into(),
            data: Vec::new(),
        };
        assert_eq!(odd.to_string(), "[ \"\\n\" <0 bytes not modelled> ]");
        let plain = Expr::Other {
            name: "quota".into(),
            data: vec![0; 4],
        };
        assert_eq!(plain.to_string(), "[ quota <4 bytes not modelled> ]");
    }

    fn meta_l4proto_tcp_return() -> Vec<Expr> {
        vec![
            Expr::MetaLoad {
                key: MetaKey::L4proto,
                dreg: NFT_REG_1,
            },
            Expr::Cmp {
                sreg: NFT_REG_1,
                op: CmpOp::Eq,
                data: Value::new(&[6]).unwrap(),
            },
            Expr::Verdict(Verdict::Return),
        ]
    }

    // `meta l4proto tcp return` is exactly: meta load l4proto => reg 1; cmp eq reg 1 0x06;
    // immediate reg 0 return. Bytes spelled out from the uapi layout.
    #[test]
    fn meta_cmp_verdict_bytes() {
        let mut list = Attrs::new();
        Expr::emit_list(&meta_l4proto_tcp_return(), &mut list);
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
        assert_eq!(list.bytes(), &want[..]);
        assert_eq!(Expr::parse_list(&want).unwrap(), meta_l4proto_tcp_return());
    }

    // What the kernel adds when dumping is normalised away: the redirect's maximum register
    // (equal to the minimum) and bitwise's boolean operation.
    #[test]
    fn parse_normalises_kernel_additions() {
        let mut redir = Attrs::new();
        redir.nested(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, "redir");
            e.nested(NFTA_EXPR_DATA, |d| {
                d.put_be32(NFTA_REDIR_REG_PROTO_MIN, 1)
                    .put_be32(NFTA_REDIR_REG_PROTO_MAX, 1)
                    .put_be32(NFTA_REDIR_FLAGS, 2);
            });
        });
        assert_eq!(
            Expr::parse_list(redir.bytes()).unwrap(),
            vec![Expr::Redir {
                reg_proto_min: Some(1),
                reg_proto_max: None,
                flags: 2
            }]
        );
        let bitwise = Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            len: 4,
            mask: Value::u32(6),
            xor: Value::u32(0),
        };
        let mut list = Attrs::new();
        list.nested(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, "bitwise");
            e.nested(NFTA_EXPR_DATA, |d| {
                bitwise.emit_data(d);
                d.put_be32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
            });
        });
        assert_eq!(Expr::parse_list(list.bytes()).unwrap(), vec![bitwise]);
    }

    // An expression with an attribute the typed form does not carry (a payload *write*) stays
    // opaque, so it never compares equal to a load.
    #[test]
    fn unknown_attributes_stay_opaque() {
        let mut list = Attrs::new();
        list.nested(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, "payload");
            e.nested(NFTA_EXPR_DATA, |d| {
                d.put_be32(NFTA_PAYLOAD_SREG, 1)
                    .put_be32(NFTA_PAYLOAD_BASE, 1)
                    .put_be32(NFTA_PAYLOAD_OFFSET, 16)
                    .put_be32(NFTA_PAYLOAD_LEN, 4);
            });
        });
        let parsed = Expr::parse_list(list.bytes()).unwrap();
        assert!(matches!(&parsed[..], [Expr::Other { name, .. }] if name == "payload"));
    }
}

//! Netlink wire format: nested attributes, nfnetlink messages and batches, and their parsing.
//!
//! Hand-written on purpose. Netlink framing is a few lines (4-byte aligned `nlattr`s inside
//! `nlmsghdr` + `nfgenmsg`), and no permissively licensed Rust crate models nf_tables messages:
//! `rustables` is GPL, `nftnl` binds the libnftnl/libmnl C libraries, the `nftables` crate runs
//! the `nft` binary. `netlink-packet-core` would only contribute the 16-byte header, while its
//! message types expect a per-family payload enum we would write anyway; so headers are written
//! here too and `netlink-sys` provides just the socket.

use crate::sys::*;
pub use meshcap_nft_types::attr::*;

/// One nfnetlink message: `nlmsghdr`, `nfgenmsg`, attributes. `pid` is left 0 (the kernel).
pub fn message(
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::new();
    put_message(&mut buf, msg_type, flags, seq, family, res_id, attrs);
    buf
}

/// Appends [`message`]'s bytes to `buf`, padded to 4 bytes for the next message.
fn put_message(
    buf: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    buf.reserve(align(len));
    buf.extend_from_slice(&u32::try_from(len).expect("message fits u32").to_ne_bytes());
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
    buf.resize(align(buf.len()), 0);
}

/// The nlmsg type of nf_tables message `msg`: subsystem in the high byte.
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// What a batch reserves up front: a dual-stack pod's whole ruleset is about 14 KiB, and every
/// growth of the buffer copies it.
const BATCH_CAPACITY: usize = 32 << 10;

/// An nf_tables transaction: messages between BATCH_BEGIN and BATCH_END, applied by the kernel
/// all or nothing (nfnetlink_rcv_batch aborts the whole batch when any message fails).
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    begin_seq: u32,
    next_seq: u32,
    /// (seq, offset of the message in `buf`, what it is) of each content message.
    entries: Vec<(u32, usize, What)>,
}

/// How a batch message is named when the kernel refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Named when it was added.
    Text(String),
    /// An nf_tables rule, named from its own message (table, chain, expressions in nft
    /// syntax) only when it is refused: formatting every rule of every ADD for an error that
    /// almost never comes cost more than encoding the rules.
    Rule,
}

impl From<String> for What {
    fn from(text: String) -> Self {
        What::Text(text)
    }
}

impl Batch {
    pub fn new(first_seq: u32) -> Self {
        let begin = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let mut buf = Vec::with_capacity(BATCH_CAPACITY);
        buf.extend_from_slice(&begin);
        Batch {
            buf,
            begin_seq: first_seq,
            next_seq: first_seq.wrapping_add(1),
            entries: Vec::new(),
        }
    }

    /// Appends nf_tables message `msg`; `what` names it in errors ("rule ... in chain ...").
    pub fn push(&mut self, msg: u16, flags: u16, family: u8, attrs: &Attrs, what: impl Into<What>) {
        self.push_encoded(msg, flags, family, attrs.bytes(), what);
    }

    /// [`Batch::push`] with the attributes already encoded.
    pub fn push_encoded(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
        what: impl Into<What>,
    ) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.entries.push((seq, self.buf.len(), what.into()));
        put_message(
            &mut self.buf,
            nft_type(msg),
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
            attrs,
        );
    }

    /// Closes the batch and returns its bytes. The last content message asks for an ACK: the
    /// kernel reports every failing message (ACK flag or not) and queues all answers until the
    /// batch is done, so that ACK arriving means every error has been seen. (Acking each message
    /// instead could overflow the receive buffer on large batches.)
    pub fn finish(mut self) -> (Vec<u8>, BatchInfo) {
        if let Some((_, offset, _)) = self.entries.last() {
            let flags_at = offset + 6;
            let flags =
                u16::from_ne_bytes([self.buf[flags_at], self.buf[flags_at + 1]]) | NLM_F_ACK;
            self.buf[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        let end = message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.buf.extend_from_slice(&end);
        let info = BatchInfo {
            begin_seq: self.begin_seq,
            entries: self.entries,
        };
        (self.buf, info)
    }
}

/// What a sent batch contained, to match the kernel's answers by sequence number.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub begin_seq: u32,
    /// (seq, offset of the message in the batch's bytes, what it is) of each content message.
    pub entries: Vec<(u32, usize, What)>,
}

impl BatchInfo {
    /// Names the message of `seq` in `batch`, the bytes [`Batch::finish`] returned with this.
    pub fn describe(&self, seq: u32, batch: &[u8]) -> Option<String> {
        let (_, offset, what) = self.entries.iter().find(|(s, _, _)| *s == seq)?;
        match what {
            What::Text(text) => Some(text.clone()),
            What::Rule => describe_rule(batch.get(*offset..)?),
        }
    }

    pub fn last_seq(&self) -> Option<u32> {
        self.entries.last().map(|(seq, _, _)| *seq)
    }
}

/// "rule `<nft syntax>` in chain C of table F T" from a NEWRULE message at the start of `bytes`.
fn describe_rule(bytes: &[u8]) -> Option<String> {
    let len = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let payload = bytes.get(NLMSG_HDRLEN..len)?;
    let family = *payload.first()?;
    let (mut table, mut chain, mut exprs) = (None, None, None);
    for (ty, value) in AttrIter::new(payload.get(NFGENMSG_LEN..)?) {
        match ty {
            NFTA_RULE_TABLE => table = Some(attr_str(value)),
            NFTA_RULE_CHAIN => chain = Some(attr_str(value)),
            NFTA_RULE_EXPRESSIONS => {
                exprs = meshcap_nft_types::expr::Expr::parse_list(value).ok();
            }
            _ => {}
        }
    }
    let keyword = match family {
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        _ => "?",
    };
    Some(format!(
        "rule `{}` in chain {} of table {keyword} {}",
        meshcap_nft_types::text::rule_text(&exprs?, family),
        chain?,
        table?
    ))
}

/// One received netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after `nlmsghdr`.
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// For NLMSG_ERROR: the errno (0 for an ACK). `None` when the payload is too short.
    pub fn error_code(&self) -> Option<i32> {
        self.payload
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// For nf_tables messages: the attributes after `nfgenmsg`.
    pub fn attrs(&self) -> AttrIter<'_> {
        AttrIter::new(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }
}

/// Splits one datagram into messages; `None` when a header is inconsistent.
pub fn parse_messages(buf: &[u8]) -> Option<Vec<Received<'_>>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        out.push(Received {
            msg_type: u16::from_ne_bytes(rest[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(rest[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(rest[8..12].try_into().ok()?),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = &rest[align(len).min(rest.len())..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrip() {
        let mut a = Attrs::new();
        a.put_str(NFTA_CHAIN_NAME, "x")
            .put_be32(NFTA_CHAIN_POLICY, 1);
        let m = message(
            nft_type(NFT_MSG_NEWCHAIN),
            NLM_F_REQUEST,
            7,
            NFPROTO_IPV4,
            0,
            a.bytes(),
        );
        let msgs = parse_messages(&m).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        let attrs: Vec<_> = msgs[0].attrs().collect();
        assert_eq!(attrs[0], (NFTA_CHAIN_NAME, &b"x\0"[..]));
        assert_eq!(attr_be32(attrs[1].1), Some(1));
    }
}

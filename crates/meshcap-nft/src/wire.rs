//! Netlink wire format: nested attributes, nfnetlink messages and batches, and their parsing.
//!
//! Hand-written on purpose. Netlink framing is a few lines (4-byte aligned `nlattr`s inside
//! `nlmsghdr` + `nfgenmsg`), and no permissively licensed Rust crate models nf_tables messages:
//! `rustables` is GPL, `nftnl` binds the libnftnl/libmnl C libraries, the `nftables` crate runs
//! the `nft` binary. `netlink-packet-core` would only contribute the 16-byte header, while its
//! message types expect a per-family payload enum we would write anyway; so headers are written
//! here too and `netlink-sys` provides just the socket.

use crate::sys::*;

/// Rounds up to the 4-byte netlink alignment (`NLA_ALIGN`, `NLMSG_ALIGN`).
pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A growing stream of netlink attributes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// One attribute: `{u16 len, u16 type}` header, the payload, padding to 4 bytes.
    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(
            &u16::try_from(len)
                .expect("attribute fits u16")
                .to_ne_bytes(),
        );
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string, as nf_tables' `NLA_STRING` names are sent by libnftnl.
    pub fn put_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.put(ty, &payload)
    }

    /// A big-endian u32 (`NLA_BE32`), nf_tables' integer encoding.
    pub fn put_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A nested attribute whose content `f` writes.
    pub fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.buf)
    }
}

/// One nfnetlink message: `nlmsghdr`, `nfgenmsg`, attributes. `pid` is left 0 (the kernel).
pub fn message(
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut buf = Vec::with_capacity(align(len));
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
    buf
}

/// The nlmsg type of nf_tables message `msg`: subsystem in the high byte.
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// An nf_tables transaction: messages between BATCH_BEGIN and BATCH_END, applied by the kernel
/// all or nothing (nfnetlink_rcv_batch aborts the whole batch when any message fails).
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    begin_seq: u32,
    next_seq: u32,
    /// (seq, offset of the message in `buf`, human description) of each content message.
    entries: Vec<(u32, usize, String)>,
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
        Batch {
            buf: begin,
            begin_seq: first_seq,
            next_seq: first_seq.wrapping_add(1),
            entries: Vec::new(),
        }
    }

    /// Appends nf_tables message `msg`; `what` names it in errors ("rule ... in chain ...").
    pub fn push(&mut self, msg: u16, flags: u16, family: u8, attrs: &Attrs, what: String) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.entries.push((seq, self.buf.len(), what));
        let m = message(
            nft_type(msg),
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
            attrs.bytes(),
        );
        self.buf.extend_from_slice(&m);
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
            entries: self
                .entries
                .into_iter()
                .map(|(seq, _, what)| (seq, what))
                .collect(),
        };
        (self.buf, info)
    }
}

/// What a sent batch contained, to match the kernel's answers by sequence number.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub begin_seq: u32,
    pub entries: Vec<(u32, String)>,
}

impl BatchInfo {
    pub fn describe(&self, seq: u32) -> Option<&str> {
        self.entries
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, what)| what.as_str())
    }

    pub fn last_seq(&self) -> Option<u32> {
        self.entries.last().map(|(seq, _)| *seq)
    }
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
        AttrIter {
            buf: self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]),
        }
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

/// Iterates over `(type without flags, payload)` of an attribute stream; stops at the first
/// malformed header.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
}

impl<'a> AttrIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        AttrIter { buf }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.buf[0], self.buf[1]]));
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let payload = &self.buf[4..len];
        self.buf = &self.buf[align(len).min(self.buf.len())..];
        Some((ty, payload))
    }
}

/// A NUL-terminated (or not) string attribute.
pub fn attr_str(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

pub fn attr_be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

pub fn attr_be64(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Rule userdata in libnftnl's TLV layout holding one comment, as `nft` writes and reads it.
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut value = comment.as_bytes().to_vec();
    value.push(0);
    let mut out = vec![
        NFTNL_UDATA_RULE_COMMENT,
        u8::try_from(value.len()).expect("comment under 255 bytes"),
    ];
    out.extend_from_slice(&value);
    out
}

/// The comment in rule userdata, if it has one.
pub fn userdata_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(attr_str(value));
        }
        udata = &udata[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_padding_and_nesting() {
        let mut a = Attrs::new();
        a.put_str(NFTA_TABLE_NAME, "meshcap");
        // len 4 + 8 ("meshcap\0"), already aligned.
        assert_eq!(
            a.bytes(),
            &[12, 0, 1, 0, b'm', b'e', b's', b'h', b'c', b'a', b'p', 0]
        );
        let mut n = Attrs::new();
        n.nested(NFTA_CHAIN_HOOK, |h| {
            h.put_be32(NFTA_HOOK_HOOKNUM, 3);
        });
        assert_eq!(n.bytes(), &[12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 3]);
        let mut p = Attrs::new();
        p.put(NFTA_DATA_VALUE, &[6]);
        // len 5, padded to 8.
        assert_eq!(p.bytes(), &[5, 0, 1, 0, 6, 0, 0, 0]);
    }

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

    #[test]
    fn userdata_comment_roundtrip() {
        let u = comment_userdata("a b");
        // The exact bytes `nft ... comment "a b"` stores.
        assert_eq!(u, b"\x00\x04a b\x00");
        assert_eq!(userdata_comment(&u).as_deref(), Some("a b"));
        assert_eq!(
            userdata_comment(b"\x05\x01x\x00\x02c\x00").as_deref(),
            Some("c")
        );
    }
}

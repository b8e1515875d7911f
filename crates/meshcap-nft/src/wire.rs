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

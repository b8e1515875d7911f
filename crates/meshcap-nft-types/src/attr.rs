//! Netlink attributes: the `{u16 len, u16 type}` TLVs, 4-byte aligned and nested, that carry
//! every nf_tables object, and libnftnl's userdata TLVs that carry a rule's comment.

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

    /// Room for `bytes` before the buffer grows (each growth copies it).
    pub fn with_capacity(bytes: usize) -> Self {
        Attrs {
            buf: Vec::with_capacity(bytes),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// One attribute: `{u16 len, u16 type}` header, the payload, padding to 4 bytes.
    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        self.put_parts(ty, &[payload])
    }

    /// One attribute whose payload is the concatenation of `parts` (no temporary buffer).
    fn put_parts(&mut self, ty: u16, parts: &[&[u8]]) -> &mut Self {
        let len = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.buf.reserve(align(len));
        self.put_header(len, ty);
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.pad();
        self
    }

    // The fixed-size writes below compile to plain stores; a variable-length copy of a few
    // bytes is a call to libc's memcpy, and an ADD encodes hundreds of these.

    fn put_header(&mut self, len: usize, ty: u16) {
        let len = u16::try_from(len)
            .expect("attribute fits u16")
            .to_ne_bytes();
        let ty = ty.to_ne_bytes();
        self.buf.extend_from_slice(&[len[0], len[1], ty[0], ty[1]]);
    }

    /// Zeroes up to the next 4-byte boundary.
    fn pad(&mut self) {
        let aligned = align(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.truncate(aligned);
    }

    /// A NUL-terminated string, as nf_tables' `NLA_STRING` names are sent by libnftnl.
    pub fn put_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let len = 4 + s.len() + 1;
        let start = self.buf.len();
        self.buf.reserve(align(len) + 4);
        self.put_header(len, ty);
        self.buf.extend_from_slice(s.as_bytes());
        // The NUL and the padding.
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.truncate(start + align(len));
        self
    }

    /// A big-endian u32 (`NLA_BE32`), nf_tables' integer encoding.
    pub fn put_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put_header(8, ty);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A nested attribute whose content `f` writes, in place: the header's length is filled in
    /// once the content is known.
    pub fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).expect("attribute fits u16");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Appends already encoded attributes.
    pub fn extend(&mut self, encoded: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(encoded);
        self
    }

    /// Appends one attribute taken whole from a received stream ([`RawAttrIter`]), padded to
    /// 4 bytes for the next one (a received attribute's length does not count its padding).
    pub fn put_whole(&mut self, whole: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(whole);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }
}

/// Iterates over `(type without flags, payload)` of an attribute stream; stops at the first
/// malformed header.
#[derive(Debug, Clone)]
pub struct AttrIter<'a>(RawAttrIter<'a>);

impl<'a> AttrIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        AttrIter(RawAttrIter::new(buf))
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(ty, payload, _)| (ty, payload))
    }
}

/// Like [`AttrIter`], but yields `(type without flags, payload, the whole attribute)`: the
/// header as it came (flags such as `NLA_F_NESTED` kept), for copying an attribute as it is
/// ([`Attrs::put_whole`]).
#[derive(Debug, Clone)]
pub struct RawAttrIter<'a> {
    buf: &'a [u8],
}

impl<'a> RawAttrIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        RawAttrIter { buf }
    }
}

impl<'a> Iterator for RawAttrIter<'a> {
    type Item = (u16, &'a [u8], &'a [u8]);

    /// Takes the first attribute off the stream: its type without flags, its payload, and its
    /// bytes with the header and without the padding. A malformed header ends the stream.
    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.buf;
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            self.buf = &[];
            return None;
        }
        let whole = &buf[..len];
        self.buf = &buf[align(len).min(buf.len())..];
        Some((ty, &whole[4..], whole))
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

/// Rule (or table: the same TLV, `NFTNL_UDATA_TABLE_COMMENT`) userdata in libnftnl's layout
/// holding one comment, as `nft` writes and reads it.
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

/// The comment in rule (or table) userdata, if it has one.
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

//! nf_tables rules as typed values: the one nftables layer of meshcap.
//!
//! [`Expr`] is one kernel expression (meta, ct, payload, cmp, bitwise, immediate, verdict,
//! redir, tproxy) with its netlink encoding ([`Expr::emit`]), its parser for the kernel's dumps
//! ([`Expr::parse`]) and `nft --debug=netlink` notation (`Display`); [`text`] derives the nft
//! rule syntax of a list of them; [`NftRule`] is a rule with its comment. The kernel's numbers
//! are in [`sys`], the attribute framing in [`attr`].
//!
//! The IR-to-expressions mapping is in `meshcap_model::render::nftables` (one function per
//! IR match and target). From its [`NftRule`]s come both the text `meshcap render --format
//! nftables` prints and the bytes `meshcap-nft` sends; CHECK and `meshcap inspect` parse the
//! installed rules back into [`Expr`]s and compare those.
//!
//! # Why a crate of its own
//!
//! The model crate is pure data, and the netlink crate (`meshcap-nft`) depends on it, so the
//! typed layer cannot live in `meshcap-nft` without the model depending on a crate with
//! sockets (and a dependency cycle). This crate has no I/O and no dependencies: the model
//! maps its IR onto these types, `meshcap-nft` sends and reads them.
#![forbid(unsafe_code)]

pub mod attr;
pub mod expr;
pub mod rule;
pub mod sys;
pub mod text;

pub use expr::{ByteorderOp, CmpOp, CtKey, Expr, MetaKey, ParseError, PayloadBase, Value, Verdict};
pub use rule::{NftRule, COMMENT_MAX_LEN};

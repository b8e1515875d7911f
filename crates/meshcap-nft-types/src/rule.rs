//! One nftables rule as meshcap installs it: its expressions and its comment.

use crate::attr::{comment_userdata, Attrs};
use crate::expr::Expr;
use crate::text::rule_text;

/// nft keeps rule comments to this many bytes (`NFTNL_UDATA_COMMENT_MAXLEN` in libnftnl; `nft`
/// refuses longer ones on input).
pub const COMMENT_MAX_LEN: usize = 128;

/// An nftables rule: `exprs` run in order; `comment` is stored as the rule's userdata (the way
/// `nft ... comment "..."` stores it) and says why the rule exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NftRule {
    pub exprs: Vec<Expr>,
    pub comment: String,
}

impl NftRule {
    /// The rule's statements in nft syntax, without the comment (see [`crate::text`]).
    pub fn text(&self, nfproto: u8) -> String {
        rule_text(&self.exprs, nfproto)
    }

    /// The rule as `nft -f` reads it: statements, then `comment "..."`.
    pub fn line(&self, nfproto: u8) -> String {
        format!("{} comment \"{}\"", self.text(nfproto), self.comment)
    }

    /// Appends the content of `NFTA_RULE_EXPRESSIONS` to `list`.
    pub fn emit_exprs(&self, list: &mut Attrs) {
        Expr::emit_list(&self.exprs, list);
    }

    /// The content of `NFTA_RULE_USERDATA`.
    pub fn userdata(&self) -> Vec<u8> {
        comment_userdata(&self.comment)
    }
}

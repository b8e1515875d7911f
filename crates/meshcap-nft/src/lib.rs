//! meshcap's native nftables backend: installs [`Ruleset`]s as meshcap-owned nf_tables tables
//! over netlink, with no `nft` binary and no C library.
//!
//! The nftables mapping (table per family, chain names, base chains, the expressions of each
//! IR match and target, the TPROXY drop fallback) is `meshcap_model::render::nftables`; it
//! yields typed rules (`meshcap_nft_types::NftRule`) whose expressions this crate sends and
//! whose comments it stores as rule userdata, so `nft list` shows the same thing as `nft -f`
//! of the rendered script would have installed. Reading back ([`list`]) parses each installed
//! rule's expressions into the same types, and [`verify`] compares those, not the comments.
//!
//! Every function works in the network namespace of the **calling thread**: the netlink
//! socket is opened inside the call, so a caller enters the pod's namespace (setns on this
//! thread) first and calls in.
//!
//! Changes are one nfnetlink batch (NFNL_MSG_BATCH_BEGIN .. END), which the kernel commits
//! atomically: either every message applies or none does, and concurrent readers never see a
//! half-applied table.
#![forbid(unsafe_code)]

mod conn;
pub mod replay;
pub mod wire;
pub mod xtables;

pub use meshcap_nft_types::sys;

use std::time::Duration;

use meshcap_model::render::nftables::{
    base_chain, chain_name, chain_rules, family_keyword, nfproto, nft_rules,
};
use meshcap_model::rules::{
    format_marker, parse_format_marker, Family, Hook, Ruleset, NFT_TABLE, RULES_FORMAT,
};
use meshcap_nft_types::{Expr, NftRule};
use nix::errno::Errno;

use conn::{BatchOutcome, Conn};
use sys::*;
use wire::{
    attr_be32, attr_be64, attr_str, comment_userdata, userdata_comment, AttrIter, Attrs, Batch,
};

/// Errors of the nftables backend. Each names the operation (`replace`, `delete`, `list`,
/// `verify`, `probe`).
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables {op}: netlink socket: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a batch: nothing was changed. `message` names the refused table,
    /// chain or rule (or the commit, when the batch as a whole failed validation).
    #[error("nftables {op}: kernel rejected {message}: {errno}")]
    Rejected {
        op: &'static str,
        message: String,
        errno: Errno,
    },
    /// A request outside a batch (dump, generation query) failed.
    #[error("nftables {op}: {request} failed: {errno}")]
    Kernel {
        op: &'static str,
        request: &'static str,
        errno: Errno,
    },
    #[error("nftables {op}: no answer from the kernel within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("nftables {op}: malformed netlink reply: {detail}")]
    Malformed { op: &'static str, detail: String },
    /// A rule nftables cannot express (the model never produces one).
    #[error("nftables {op}: cannot encode rule {rule} of chain {chain}: {reason}")]
    Unsupported {
        op: &'static str,
        chain: String,
        rule: String,
        reason: String,
    },
    /// The table kept changing while it was being listed.
    #[error("nftables {op}: ruleset changed during every one of {attempts} listing attempts")]
    Unstable { op: &'static str, attempts: u32 },
    /// What is installed differs from what the rulesets say.
    #[error("nftables rules drifted: {}", .differences.join("; "))]
    Drift { differences: Vec<String> },
}

impl NftError {
    /// The kernel refused the message `seq` of `batch` (the bytes [`Batch::finish`] returned
    /// with `info`), or the commit: named by its message, else as "the transaction".
    pub(crate) fn rejected(
        op: &'static str,
        info: &wire::BatchInfo,
        batch: &[u8],
        seq: u32,
        errno: Errno,
    ) -> NftError {
        NftError::Rejected {
            op,
            message: info
                .describe(seq, batch)
                .unwrap_or_else(|| "the transaction".to_string()),
            errno,
        }
    }

    /// The kernel's errno, when the kernel refused something.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { errno, .. } | NftError::Kernel { errno, .. } => {
                Some(*errno as i32)
            }
            _ => None,
        }
    }
}

/// meshcap's table of one family as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTable {
    pub family: Family,
    /// The table's comment (its userdata), where meshcap marks its rules' format.
    pub comment: Option<String>,
    /// In the kernel's order (creation order).
    pub chains: Vec<InstalledChain>,
}

impl InstalledTable {
    /// The rules format the table's comment names ([`RULES_FORMAT`]); 1, the first release's,
    /// for a table without the marker.
    pub fn format(&self) -> u32 {
        self.comment
            .as_deref()
            .and_then(parse_format_marker)
            .unwrap_or(1)
    }

    pub fn chain(&self, name: &str) -> Option<&InstalledChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledChain {
    pub name: String,
    /// Present for base chains.
    pub hook: Option<InstalledHook>,
    pub rules: Vec<InstalledRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledHook {
    /// `filter`, `nat`, `route`.
    pub chain_type: String,
    /// NF_INET_* hook number.
    pub hooknum: u32,
    pub priority: i32,
}

impl InstalledHook {
    /// The hook, when it is one meshcap uses.
    pub fn hook(&self) -> Option<Hook> {
        match self.hooknum {
            NF_INET_PRE_ROUTING => Some(Hook::Prerouting),
            NF_INET_LOCAL_OUT => Some(Hook::Output),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRule {
    pub handle: u64,
    /// The rule's expressions as the kernel reports them.
    pub exprs: Vec<Expr>,
    /// The comment in the rule's userdata (meshcap and `nft` store the same format); `None`
    /// for a rule without one, which meshcap never installs.
    pub comment: Option<String>,
}

impl InstalledRule {
    /// The rule's expressions in nft syntax.
    pub fn text(&self, family: Family) -> String {
        meshcap_nft_types::text::rule_text(&self.exprs, nfproto(family))
    }

    /// The rule in nft syntax, comment included, as `nft list` would show it.
    pub fn line(&self, family: Family) -> String {
        match &self.comment {
            Some(comment) => format!("{} comment \"{comment}\"", self.text(family)),
            None => self.text(family),
        }
    }
}

fn hooknum(hook: Hook) -> u32 {
    match hook {
        Hook::Prerouting => NF_INET_PRE_ROUTING,
        Hook::Output => NF_INET_LOCAL_OUT,
    }
}

fn table_label(family: Family) -> String {
    format!("table {} {NFT_TABLE}", family_keyword(family))
}

fn table_attrs() -> Attrs {
    let mut a = Attrs::new();
    a.put_str(NFTA_TABLE_NAME, NFT_TABLE);
    a
}

/// The table as meshcap creates it: commented with the rules format's marker, as
/// `table ip meshcap { comment "meshcap rules format 2"; ... }` would be.
fn marked_table_attrs() -> Attrs {
    let mut a = table_attrs();
    a.put(NFTA_TABLE_USERDATA, &comment_userdata(&format_marker()));
    a
}

/// Adds "create if absent, then delete" for `family`'s table: DELTABLE alone fails with ENOENT
/// on an absent table, NEWTABLE without NLM_F_EXCL accepts an existing one.
fn push_remove_table(batch: &mut Batch, family: Family) {
    let label = table_label(family);
    batch.push(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        nfproto(family),
        &table_attrs(),
        label.clone(),
    );
    batch.push(
        NFT_MSG_DELTABLE,
        0,
        nfproto(family),
        &table_attrs(),
        format!("delete {label}"),
    );
}

/// Builds the replace batch for a namespace where meshcap's tables may already exist (pure;
/// exposed for tests and for `meshcap` to show byte counts).
pub fn replace_batch(
    rulesets: &[Ruleset],
    first_seq: u32,
) -> Result<(Vec<u8>, wire::BatchInfo), NftError> {
    build_replace(rulesets, first_seq, &|_| true)
}

/// The replace batch; `present(family)` says whether meshcap's table of that family exists.
///
/// Only an existing table is deleted: deleting one makes the kernel wait for an RCU grace
/// period before the transaction's socket is released (about 8-12 ms here, measured by
/// `meshcap-bench`), which a first ADD, the common case, never needs. A table believed absent
/// is created with NLM_F_EXCL, so if something created it meanwhile the batch fails as a
/// whole (EEXIST) instead of adding a second copy of the rules.
fn build_replace(
    rulesets: &[Ruleset],
    first_seq: u32,
    present: &dyn Fn(Family) -> bool,
) -> Result<(Vec<u8>, wire::BatchInfo), NftError> {
    let op = "replace";
    let mut batch = Batch::new(first_seq);
    for rs in rulesets {
        let family = rs.family;
        let proto = nfproto(family);
        let existed = present(family);
        if existed {
            push_remove_table(&mut batch, family);
        }
        if rs.tables.is_empty() {
            continue;
        }
        let label = table_label(family);
        batch.push(
            NFT_MSG_NEWTABLE,
            if existed {
                NLM_F_CREATE
            } else {
                NLM_F_CREATE | NLM_F_EXCL
            },
            proto,
            &marked_table_attrs(),
            label.clone(),
        );
        // All chains first: jumps may point at chains listed later.
        for tr in &rs.tables {
            for chain in &tr.chains {
                let name = chain_name(tr.table, &chain.name);
                let mut a = Attrs::new();
                a.put_str(NFTA_CHAIN_TABLE, NFT_TABLE)
                    .put_str(NFTA_CHAIN_NAME, &name);
                if let Some(hook) = chain.hook {
                    let base = base_chain(tr.table, hook);
                    a.nested(NFTA_CHAIN_HOOK, |h| {
                        h.put_be32(NFTA_HOOK_HOOKNUM, hooknum(hook))
                            .put_be32(NFTA_HOOK_PRIORITY, base.priority as u32);
                    });
                    a.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32)
                        .put_str(NFTA_CHAIN_TYPE, base.chain_type);
                }
                batch.push(
                    NFT_MSG_NEWCHAIN,
                    NLM_F_CREATE,
                    proto,
                    &a,
                    format!("chain {name} of {label}"),
                );
            }
        }
        for tr in &rs.tables {
            for chain in &tr.chains {
                let name = chain_name(tr.table, &chain.name);
                for rule in &chain.rules {
                    let encoded =
                        nft_rules(tr.table, rule, family).map_err(|e| NftError::Unsupported {
                            op,
                            chain: name.clone(),
                            rule: format!("{rule:?}"),
                            reason: e.to_string(),
                        })?;
                    for r in &encoded {
                        push_rule(&mut batch, proto, &name, r);
                    }
                }
            }
        }
    }
    Ok(batch.finish())
}

fn push_rule(batch: &mut Batch, proto: u8, chain: &str, rule: &NftRule) {
    // Enough for meshcap's longest rules (a TPROXY rule with its comment is under 600 bytes).
    let mut a = Attrs::with_capacity(1024);
    a.put_str(NFTA_RULE_TABLE, NFT_TABLE)
        .put_str(NFTA_RULE_CHAIN, chain);
    a.nested(NFTA_RULE_EXPRESSIONS, |list| rule.emit_exprs(list));
    a.put(NFTA_RULE_USERDATA, &rule.userdata());
    batch.push(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        proto,
        &a,
        wire::What::Rule,
    );
}

fn run_on(
    mut conn: Conn,
    op: &'static str,
    build: impl FnOnce(u32) -> Result<(Vec<u8>, wire::BatchInfo), NftError>,
) -> Result<(), NftError> {
    let first = conn.reserve_seqs(1);
    let (bytes, info) = build(first)?;
    // BATCH_BEGIN took `first`; the content messages and BATCH_END follow it.
    conn.reserve_seqs(info.entries.len() as u32 + 1);
    match conn.run_batch(&bytes, &info)? {
        BatchOutcome::Committed => Ok(()),
        BatchOutcome::Rejected(seq, errno) => {
            Err(NftError::rejected(op, &info, &bytes, seq, errno))
        }
    }
}

/// Replaces meshcap's table of each ruleset's family with that ruleset, atomically, in one
/// batch: per family NEWTABLE (create if absent), DELTABLE, then (when the ruleset has tables)
/// NEWTABLE, every chain, every rule. Idempotent. A ruleset without tables leaves no meshcap
/// table for its family. If the kernel rejects any message, nothing changes.
pub fn replace(rulesets: &[Ruleset]) -> Result<(), NftError> {
    let op = "replace";
    let mut conn = Conn::open(op)?;
    let present = tables_present(&mut conn, rulesets.iter().map(|rs| rs.family))?;
    run_on(conn, op, |seq| {
        build_replace(rulesets, seq, &|f| present.contains(&f))
    })
}

/// Which of `families` hold meshcap's table, from one listing of the namespace's tables.
fn tables_present(
    conn: &mut Conn,
    families: impl IntoIterator<Item = Family>,
) -> Result<Vec<Family>, NftError> {
    let tables = conn.tables()?;
    Ok(families
        .into_iter()
        .filter(|family| {
            tables
                .iter()
                .any(|(proto, name)| *proto == nfproto(*family) && name == NFT_TABLE)
        })
        .collect())
}

/// Removes meshcap's tables of `families` in one batch; succeeds when they are absent.
pub fn delete(families: &[Family]) -> Result<(), NftError> {
    let op = "delete";
    let mut conn = Conn::open(op)?;
    // As in `replace`: touch only tables that exist, so a DEL with nothing to remove sends no
    // transaction and leaves nothing on the kernel's destroy list.
    let present = tables_present(&mut conn, families.iter().copied())?;
    if present.is_empty() {
        return Ok(());
    }
    run_on(conn, op, |seq| {
        let mut batch = Batch::new(seq);
        for family in &present {
            push_remove_table(&mut batch, *family);
        }
        Ok(batch.finish())
    })
}

fn generation(conn: &mut Conn, op: &'static str) -> Result<u32, NftError> {
    let replies = conn
        .request(NFT_MSG_GETGEN, NFPROTO_UNSPEC, &Attrs::new())?
        .map_err(|errno| NftError::Kernel {
            op,
            request: "NFT_MSG_GETGEN",
            errno,
        })?;
    replies
        .iter()
        .flat_map(|p| AttrIter::new(p.get(NFGENMSG_LEN..).unwrap_or(&[])))
        .find(|(ty, _)| *ty == NFTA_GEN_ID)
        .and_then(|(_, v)| attr_be32(v))
        .ok_or(NftError::Malformed {
            op,
            detail: "NFT_MSG_NEWGEN without NFTA_GEN_ID".to_string(),
        })
}

/// Checks that nf_tables answers in the calling thread's namespace (one NFT_MSG_GETGEN).
pub fn probe() -> Result<(), NftError> {
    let mut conn = Conn::open("probe")?;
    generation(&mut conn, "probe").map(|_| ())
}

/// Lists meshcap's table of `family`: chains with their hooks and each rule's comment.
/// `None` when the table does not exist. The listing is consistent: it is retried when the
/// ruleset generation changed while dumping.
pub fn list(family: Family) -> Result<Option<InstalledTable>, NftError> {
    let op = "list";
    let mut conn = Conn::open(op)?;
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let before = generation(&mut conn, op)?;
        let Some((table, interrupted)) = list_once(&mut conn, op, family)? else {
            if generation(&mut conn, op)? == before {
                return Ok(None);
            }
            continue;
        };
        if !interrupted && generation(&mut conn, op)? == before {
            return Ok(Some(table));
        }
    }
    Err(NftError::Unstable {
        op,
        attempts: ATTEMPTS,
    })
}

fn list_once(
    conn: &mut Conn,
    op: &'static str,
    family: Family,
) -> Result<Option<(InstalledTable, bool)>, NftError> {
    let proto = nfproto(family);
    let comment = match conn.request(NFT_MSG_GETTABLE, proto, &table_attrs())? {
        Ok(replies) => replies
            .iter()
            .flat_map(|p| AttrIter::new(p.get(NFGENMSG_LEN..).unwrap_or(&[])))
            .find(|(ty, _)| *ty == NFTA_TABLE_USERDATA)
            .and_then(|(_, v)| userdata_comment(v)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => {
            return Err(NftError::Kernel {
                op,
                request: "NFT_MSG_GETTABLE",
                errno,
            })
        }
    };
    let kernel = |request| move |errno| NftError::Kernel { op, request, errno };
    // The chain dump has no table filter; the rule dump does (NFTA_RULE_TABLE).
    let chain_dump = conn
        .dump(NFT_MSG_GETCHAIN, proto, &Attrs::new())?
        .map_err(kernel("NFT_MSG_GETCHAIN"))?;
    let mut chains = Vec::new();
    for payload in &chain_dump.messages {
        let mut table = None;
        let mut chain = InstalledChain {
            name: String::new(),
            hook: None,
            rules: Vec::new(),
        };
        let (mut chain_type, mut hook) = (String::new(), None::<(u32, i32)>);
        for (ty, v) in AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_CHAIN_TABLE => table = Some(attr_str(v)),
                NFTA_CHAIN_NAME => chain.name = attr_str(v),
                NFTA_CHAIN_TYPE => chain_type = attr_str(v),
                NFTA_CHAIN_HOOK => {
                    let (mut num, mut prio) = (None, 0i32);
                    for (hty, hv) in AttrIter::new(v) {
                        match hty {
                            NFTA_HOOK_HOOKNUM => num = attr_be32(hv),
                            NFTA_HOOK_PRIORITY => prio = attr_be32(hv).unwrap_or(0) as i32,
                            _ => {}
                        }
                    }
                    hook = num.map(|n| (n, prio));
                }
                _ => {}
            }
        }
        if table.as_deref() != Some(NFT_TABLE) {
            continue;
        }
        chain.hook = hook.map(|(hooknum, priority)| InstalledHook {
            chain_type: chain_type.clone(),
            hooknum,
            priority,
        });
        chains.push(chain);
    }
    let mut filter = Attrs::new();
    filter.put_str(NFTA_RULE_TABLE, NFT_TABLE);
    let rule_dump = conn
        .dump(NFT_MSG_GETRULE, proto, &filter)?
        .map_err(kernel("NFT_MSG_GETRULE"))?;
    for payload in &rule_dump.messages {
        let (mut table, mut chain_name, mut handle, mut comment) = (None, String::new(), 0, None);
        let mut exprs = Vec::new();
        for (ty, v) in AttrIter::new(payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            match ty {
                NFTA_RULE_TABLE => table = Some(attr_str(v)),
                NFTA_RULE_CHAIN => chain_name = attr_str(v),
                NFTA_RULE_HANDLE => handle = attr_be64(v).unwrap_or(0),
                NFTA_RULE_EXPRESSIONS => {
                    exprs = Expr::parse_list(v).map_err(|e| NftError::Malformed {
                        op,
                        detail: format!("rule {handle} of chain {chain_name}: {e}"),
                    })?;
                }
                NFTA_RULE_USERDATA => comment = userdata_comment(v),
                _ => {}
            }
        }
        if table.as_deref() != Some(NFT_TABLE) {
            continue;
        }
        match chains.iter_mut().find(|c| c.name == chain_name) {
            Some(c) => c.rules.push(InstalledRule {
                handle,
                exprs,
                comment,
            }),
            // A chain created between the two dumps: the generation check retries.
            None => {
                return Ok(Some((
                    InstalledTable {
                        family,
                        comment,
                        chains,
                    },
                    true,
                )))
            }
        }
    }
    Ok(Some((
        InstalledTable {
            family,
            comment,
            chains,
        },
        chain_dump.interrupted || rule_dump.interrupted,
    )))
}

/// Differences between what `rulesets` describe and what is installed, as sentences.
pub fn diff(rulesets: &[Ruleset], installed: &[(Family, Option<InstalledTable>)]) -> Vec<String> {
    let mut out = Vec::new();
    for rs in rulesets {
        let label = table_label(rs.family);
        let table = installed
            .iter()
            .find(|(f, _)| *f == rs.family)
            .and_then(|(_, t)| t.as_ref());
        let table = match (table, rs.tables.is_empty()) {
            (None, true) => continue,
            (None, false) => {
                out.push(format!("{label} is missing"));
                continue;
            }
            (Some(_), true) => {
                out.push(format!("{label} exists but meshcap expects none"));
                continue;
            }
            (Some(t), false) => t,
        };
        if table.format() != RULES_FORMAT {
            out.push(format!(
                "{label} holds rules of format {}, this release installs format {RULES_FORMAT}",
                table.format()
            ));
        }
        let mut expected_names = Vec::new();
        for tr in &rs.tables {
            for chain in &tr.chains {
                let name = chain_name(tr.table, &chain.name);
                expected_names.push(name.clone());
                let Some(found) = table.chain(&name) else {
                    out.push(format!("chain {name} of {label} is missing"));
                    continue;
                };
                let want_hook = chain.hook.map(|h| {
                    let b = base_chain(tr.table, h);
                    (b.chain_type.to_string(), hooknum(h), b.priority)
                });
                let have_hook = found
                    .hook
                    .as_ref()
                    .map(|h| (h.chain_type.clone(), h.hooknum, h.priority));
                if want_hook != have_hook {
                    out.push(format!(
                        "chain {name} of {label}: hook is {have_hook:?}, expected {want_hook:?}"
                    ));
                }
                let want = match chain_rules(tr.table, chain, rs.family) {
                    Ok(want) => want,
                    Err(e) => {
                        out.push(format!("chain {name} of {label}: {e}"));
                        continue;
                    }
                };
                let proto = nfproto(rs.family);
                if want.len() != found.rules.len() {
                    out.push(format!(
                        "chain {name} of {label} has {} rules, expected {}",
                        found.rules.len(),
                        want.len()
                    ));
                }
                for i in 0..want.len().max(found.rules.len()) {
                    match (want.get(i), found.rules.get(i)) {
                        (Some(w), Some(h)) if w.exprs == h.exprs => {}
                        (Some(w), Some(h)) => {
                            let want_text = w.text(proto);
                            let have_text = h.text(rs.family);
                            if want_text == have_text {
                                // Same syntax, different bytes (a register, an attribute).
                                out.push(format!(
                                    "chain {name} of {label}: rule {i} `{want_text}` has expressions {}, expected {}",
                                    debug_exprs(&h.exprs),
                                    debug_exprs(&w.exprs)
                                ));
                            } else {
                                out.push(format!(
                                    "chain {name} of {label}: rule {i} is `{have_text}`, expected `{want_text}`"
                                ));
                            }
                        }
                        (Some(w), None) => out.push(format!(
                            "chain {name} of {label}: rule {i} `{}` is missing",
                            w.text(proto)
                        )),
                        (None, Some(h)) => out.push(format!(
                            "chain {name} of {label}: unexpected rule {i} `{}`",
                            h.line(rs.family)
                        )),
                        (None, None) => {}
                    }
                }
            }
        }
        for chain in &table.chains {
            if !expected_names.contains(&chain.name) {
                out.push(format!("unexpected chain {} in {label}", chain.name));
            }
        }
    }
    out
}

fn debug_exprs(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(Expr::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that what is installed is exactly `rulesets` (table presence, chains and hooks,
/// every rule's expressions in order; comments are not trusted); [`NftError::Drift`] lists the
/// differences.
pub fn verify(rulesets: &[Ruleset]) -> Result<(), NftError> {
    let mut installed = Vec::new();
    for rs in rulesets {
        installed.push((rs.family, list(rs.family)?));
    }
    let differences = diff(rulesets, &installed);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(NftError::Drift { differences })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcap_model::rules::{Chain, Match, Proto, Rule, Table, TableRules, Target};
    use wire::parse_messages;

    fn sample() -> Vec<Ruleset> {
        let chains = vec![
            Chain {
                name: "MESHCAP_OUTPUT".into(),
                hook: Some(Hook::Output),
                rules: vec![Rule::new(
                    vec![Match::Protocol(Proto::Tcp)],
                    Target::Jump("MESHCAP_REDIRECT".into()),
                )],
            },
            Chain {
                name: "MESHCAP_REDIRECT".into(),
                hook: None,
                rules: vec![Rule::new(
                    vec![Match::Protocol(Proto::Tcp)],
                    Target::Redirect { port: 15001 },
                )],
            },
        ];
        vec![
            Ruleset {
                family: Family::V4,
                tables: vec![TableRules {
                    table: Table::Nat,
                    chains,
                }],
                policy_route: None,
                passthrough_source: true,
            },
            Ruleset {
                family: Family::V6,
                tables: vec![],
                policy_route: None,
                passthrough_source: true,
            },
        ]
    }

    // The batch frames: BEGIN (res_id NFTABLES), per family create+delete, then the v4 table,
    // chains before rules, END; consecutive seqs; only the last content message asks for ACK.
    #[test]
    fn replace_batch_layout() {
        let (bytes, info) = replace_batch(&sample(), 100).unwrap();
        let msgs = parse_messages(&bytes).unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.msg_type).collect();
        let t = wire::nft_type;
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                t(NFT_MSG_NEWRULE),
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                NFNL_MSG_BATCH_END,
            ]
        );
        let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (100..111).collect::<Vec<_>>());
        // nfgenmsg of BEGIN: family unspec, v0, res_id = NFNL_SUBSYS_NFTABLES big-endian.
        assert_eq!(msgs[0].payload, &[0, 0, 0, 10]);
        assert_eq!(msgs[1].payload[0], NFPROTO_IPV4);
        assert_eq!(msgs[8].payload[0], NFPROTO_IPV6);
        let acked: Vec<usize> = (0..msgs.len())
            .filter(|i| msgs[*i].flags & NLM_F_ACK != 0)
            .collect();
        assert_eq!(acked, vec![9]);
        assert_eq!(msgs[6].flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
        assert_eq!(info.begin_seq, 100);
        assert_eq!(
            info.describe(107, &bytes).as_deref(),
            Some("rule `meta l4proto tcp redirect to :15001` in chain nat_MESHCAP_REDIRECT of table ip meshcap")
        );
        // The base chain carries its hook, priority, policy and type.
        let attrs: Vec<(u16, Vec<u8>)> = msgs[4].attrs().map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(attrs[0], (NFTA_CHAIN_TABLE, b"meshcap\0".to_vec()));
        assert_eq!(
            attrs[1],
            (NFTA_CHAIN_NAME, b"nat_MESHCAP_OUTPUT\0".to_vec())
        );
        assert_eq!(
            attrs[2],
            (
                NFTA_CHAIN_HOOK,
                vec![8, 0, 1, 0, 0, 0, 0, 3, 8, 0, 2, 0, 0xff, 0xff, 0xff, 0x9c]
            )
        );
        assert_eq!(attrs[3], (NFTA_CHAIN_POLICY, vec![0, 0, 0, 1]));
        assert_eq!(attrs[4], (NFTA_CHAIN_TYPE, b"nat\0".to_vec()));
        // Rules carry their comment as nft-compatible userdata.
        let udata = msgs[6]
            .attrs()
            .find(|(t, _)| *t == NFTA_RULE_USERDATA)
            .unwrap()
            .1;
        assert_eq!(
            wire::userdata_comment(udata).as_deref(),
            Some("meta l4proto tcp jump nat_MESHCAP_REDIRECT")
        );
    }

    #[test]
    fn unsupported_rule_is_an_error_before_sending() {
        let mut rs = sample();
        rs[0].tables[0].chains[1].rules.push(Rule::new(
            vec![
                Match::Protocol(Proto::Tcp),
                Match::DestPort {
                    ports: vec![1, 2],
                    negate: false,
                },
            ],
            Target::Accept,
        ));
        let err = replace_batch(&rs, 1).unwrap_err();
        assert!(matches!(err, NftError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("nat_MESHCAP_REDIRECT"), "{err}");
    }

    fn installed(table: Table, rule: &Rule, handle: u64, comment: Option<&str>) -> InstalledRule {
        let nft = nft_rules(table, rule, Family::V4).unwrap().swap_remove(0);
        InstalledRule {
            handle,
            exprs: nft.exprs,
            comment: comment.map(str::to_string),
        }
    }

    // Expressions decide, not comments: a rule with the right expressions and another comment
    // passes; a rule whose comment is right but whose expressions differ is reported, as is an
    // extra rule.
    #[test]
    fn diff_compares_expressions_not_comments() {
        let rs = sample();
        let jump = &rs[0].tables[0].chains[0].rules[0];
        let redirect = &rs[0].tables[0].chains[1].rules[0];
        let other_port = Rule::new(
            vec![Match::Protocol(Proto::Tcp)],
            Target::Redirect { port: 15002 },
        );
        let redirect_comment = nft_rules(Table::Nat, redirect, Family::V4).unwrap()[0]
            .comment
            .clone();
        let installed = InstalledTable {
            family: Family::V4,
            comment: Some(format_marker()),
            chains: vec![
                InstalledChain {
                    name: "nat_MESHCAP_OUTPUT".into(),
                    hook: Some(InstalledHook {
                        chain_type: "nat".into(),
                        hooknum: NF_INET_LOCAL_OUT,
                        priority: -100,
                    }),
                    rules: vec![installed(Table::Nat, jump, 2, Some("another comment"))],
                },
                InstalledChain {
                    name: "nat_MESHCAP_REDIRECT".into(),
                    hook: None,
                    rules: vec![
                        installed(Table::Nat, &other_port, 3, Some(&redirect_comment)),
                        installed(Table::Nat, redirect, 4, None),
                    ],
                },
            ],
        };
        let d = diff(&rs, &[(Family::V4, Some(installed)), (Family::V6, None)]);
        assert_eq!(
            d,
            vec![
                "chain nat_MESHCAP_REDIRECT of table ip meshcap has 2 rules, expected 1",
                "chain nat_MESHCAP_REDIRECT of table ip meshcap: rule 0 is `meta l4proto tcp redirect to :15002`, expected `meta l4proto tcp redirect to :15001`",
                "chain nat_MESHCAP_REDIRECT of table ip meshcap: unexpected rule 1 `meta l4proto tcp redirect to :15001`",
            ]
        );
    }

    // Two rules with the same nft syntax but different bytes are told apart, and the report
    // shows the expressions.
    #[test]
    fn diff_reports_expressions_when_syntax_is_equal() {
        let rs = sample();
        let redirect = &rs[0].tables[0].chains[1].rules[0];
        let mut odd = installed(Table::Nat, redirect, 3, None);
        // The same redirect, but reading the port from register 2.
        for e in &mut odd.exprs {
            match e {
                Expr::Immediate { dreg, .. } => *dreg = 2,
                Expr::Redir { reg_proto_min, .. } => *reg_proto_min = Some(2),
                _ => {}
            }
        }
        let table = InstalledTable {
            family: Family::V4,
            comment: Some(format_marker()),
            chains: vec![
                InstalledChain {
                    name: "nat_MESHCAP_OUTPUT".into(),
                    hook: Some(InstalledHook {
                        chain_type: "nat".into(),
                        hooknum: NF_INET_LOCAL_OUT,
                        priority: -100,
                    }),
                    rules: vec![installed(
                        Table::Nat,
                        &rs[0].tables[0].chains[0].rules[0],
                        2,
                        None,
                    )],
                },
                InstalledChain {
                    name: "nat_MESHCAP_REDIRECT".into(),
                    hook: None,
                    rules: vec![odd],
                },
            ],
        };
        let d = diff(&rs, &[(Family::V4, Some(table)), (Family::V6, None)]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("[ immediate reg 2 0x0000993a ] [ redir proto_min reg 2 flags 0x2 ]"),
            "{d:?}"
        );
    }

    // The table's comment names the rules format: a table of the first release (no comment)
    // or of another format is drift, named first; the rules themselves may well be the same.
    #[test]
    fn diff_reports_another_rules_format() {
        let rs = sample();
        let table = |comment: Option<&str>| InstalledTable {
            family: Family::V4,
            comment: comment.map(str::to_string),
            chains: rs[0].tables[0]
                .chains
                .iter()
                .map(|c| InstalledChain {
                    name: chain_name(Table::Nat, &c.name),
                    hook: c.hook.map(|_| InstalledHook {
                        chain_type: "nat".into(),
                        hooknum: NF_INET_LOCAL_OUT,
                        priority: -100,
                    }),
                    rules: c
                        .rules
                        .iter()
                        .map(|r| installed(Table::Nat, r, 2, None))
                        .collect(),
                })
                .collect(),
        };
        let marked = table(Some("meshcap rules format 2"));
        assert_eq!(marked.format(), RULES_FORMAT);
        assert!(diff(&rs, &[(Family::V4, Some(marked)), (Family::V6, None)]).is_empty());
        for (comment, format) in [
            (None, 1),
            (Some("a comment someone else wrote"), 1),
            (Some("meshcap rules format 3"), 3),
        ] {
            let d = diff(
                &rs,
                &[(Family::V4, Some(table(comment))), (Family::V6, None)],
            );
            assert_eq!(
                d,
                vec![format!(
                    "table ip meshcap holds rules of format {format}, this release installs format 2"
                )]
            );
        }
    }

    // The table meshcap creates carries the marker in its userdata, as `nft` stores a table's
    // comment.
    #[test]
    fn replace_marks_the_table() {
        let (bytes, _) = replace_batch(&sample(), 1).unwrap();
        let msgs = parse_messages(&bytes).unwrap();
        let tables: Vec<_> = msgs
            .iter()
            .filter(|m| m.msg_type == wire::nft_type(NFT_MSG_NEWTABLE))
            .map(|m| {
                AttrIter::new(&m.payload[NFGENMSG_LEN..])
                    .find(|(ty, _)| *ty == NFTA_TABLE_USERDATA)
                    .map(|(_, v)| v.to_vec())
            })
            .collect();
        // The "create if absent" before each delete has none; the table installed has it.
        assert_eq!(
            tables,
            vec![
                None,
                Some(b"\x00\x17meshcap rules format 2\x00".to_vec()),
                None
            ]
        );
    }
}

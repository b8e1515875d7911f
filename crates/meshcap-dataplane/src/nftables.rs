//! `nftables` mode: meshcap's own `ip meshcap` / `ip6 meshcap` tables, written by
//! `meshcap-nft` in one atomic netlink transaction. No process is spawned; every call works in
//! the calling thread's namespace, so each runs inside [`crate::PodNetns::run`].

use std::fmt::Write as _;
use std::path::Path;

use meshcap_model::rules::{Family, Ruleset, NFT_TABLE};
use meshcap_nft::NftError;

use crate::sys::Sys;
use crate::DataplaneError;

fn err<'a>(op: &'static str, netns: &'a Path) -> impl FnOnce(NftError) -> DataplaneError + 'a {
    move |source| DataplaneError::Nftables {
        op,
        netns: netns.to_owned(),
        source: Box::new(source),
    }
}

/// One ruleset per family: the given one, or an empty one, which tells `meshcap-nft` that the
/// family must have no meshcap table. So both families change in the same transaction.
fn every_family(rulesets: &[Ruleset]) -> Vec<Ruleset> {
    Family::ALL
        .into_iter()
        .map(|family| {
            rulesets
                .iter()
                .find(|r| r.family == family)
                .cloned()
                .unwrap_or(Ruleset {
                    family,
                    tables: Vec::new(),
                    policy_route: None,
                    passthrough_source: false,
                })
        })
        .collect()
}

/// Replaces meshcap's tables with `rulesets` (families without a ruleset lose their table).
pub(crate) fn apply(
    sys: &dyn Sys,
    netns: &Path,
    rulesets: &[Ruleset],
) -> Result<(), DataplaneError> {
    sys.nft_replace(&every_family(rulesets))
        .map_err(err("install meshcap's tables", netns))
}

pub(crate) fn remove(sys: &dyn Sys, netns: &Path) -> Result<(), DataplaneError> {
    sys.nft_delete(&Family::ALL)
        .map_err(err("remove meshcap's tables", netns))
}

/// Differences between `rulesets` and meshcap's tables.
pub(crate) fn check(
    sys: &dyn Sys,
    netns: &Path,
    rulesets: &[Ruleset],
) -> Result<Vec<String>, DataplaneError> {
    match sys.nft_verify(&every_family(rulesets)) {
        Ok(()) => Ok(Vec::new()),
        Err(NftError::Drift { differences }) => Ok(differences
            .into_iter()
            .map(|d| format!("nftables: {d}"))
            .collect()),
        Err(e) => Err(err("verify meshcap's tables", netns)(e)),
    }
}

/// meshcap's table of `family`, in a form for people: chains with their hooks, and each rule
/// as the kernel reports it (its expressions in nft syntax, then its comment, which says why
/// the rule exists), like `nft list` prints it.
pub(crate) fn describe(
    sys: &dyn Sys,
    netns: &Path,
    family: Family,
) -> Result<Option<String>, DataplaneError> {
    let Some(table) = sys
        .nft_list(family)
        .map_err(err("read meshcap's table", netns))?
    else {
        return Ok(None);
    };
    let keyword = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut out = match &table.comment {
        Some(comment) => format!(
            "table {keyword} {NFT_TABLE} comment \"{comment}\" (rules format {})\n",
            table.format()
        ),
        None => format!(
            "table {keyword} {NFT_TABLE} (rules format {}: no marker)\n",
            table.format()
        ),
    };
    for chain in &table.chains {
        let _ = match &chain.hook {
            Some(h) => writeln!(
                out,
                "  chain {} (type {} hook {} priority {})",
                chain.name,
                h.chain_type,
                h.hook()
                    .map(|k| k.builtin_chain().to_ascii_lowercase())
                    .unwrap_or_else(|| h.hooknum.to_string()),
                h.priority
            ),
            None => writeln!(out, "  chain {}", chain.name),
        };
        for rule in &chain.rules {
            let _ = writeln!(out, "    {} # handle {}", rule.line(family), rule.handle);
        }
    }
    Ok(Some(out))
}

/// Whether nf_tables answers in the calling thread's namespace.
pub(crate) fn probe(sys: &dyn Sys) -> Result<(), DataplaneError> {
    sys.nft_probe()
        .map_err(err("probe", Path::new("/proc/thread-self/ns/net")))
}

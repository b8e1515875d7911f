//! `meshcap inspect --netns PATH`: what meshcap has in a namespace, for a person to read.
//!
//! Inspection reports what it finds and notes what it could not look at (a missing program,
//! no nf_tables), instead of failing as a whole: it is a diagnostic tool.

use std::fmt;
use std::path::PathBuf;

use meshcap_model::render::iptables::Installed;
use meshcap_model::rules::Family;

use crate::iptables::{meshcap_lines, Flavour};
use crate::netns::NetnsId;
use crate::routes::Item;

/// meshcap's iptables state of one family in one xtables flavour.
#[derive(Debug, Clone)]
pub struct XtablesState {
    pub family: Family,
    pub flavour: Flavour,
    /// Whether this is the flavour meshcap's `iptables` mode uses in this namespace.
    pub selected: bool,
    /// meshcap's lines (chain declarations, rules, jumps into its chains) per table.
    pub tables: Vec<(String, Vec<String>)>,
    /// The rules format marked on meshcap's jumps (`RULES_FORMAT`); `None` without rules.
    pub format: Option<u32>,
}

/// meshcap's native nftables table of one family.
#[derive(Debug, Clone)]
pub struct NftState {
    pub family: Family,
    /// The table, rendered by `meshcap-nft`; `None` when there is none.
    pub table: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Inspection {
    pub netns: PathBuf,
    pub id: NetnsId,
    pub iptables: Vec<XtablesState>,
    pub nftables: Vec<NftState>,
    /// TPROXY policy routing meshcap manages that is present (`ip rule`/`ip route` form).
    pub policy_routing: Vec<String>,
    /// What could not be inspected, and why.
    pub notes: Vec<String>,
}

impl Inspection {
    /// Whether any meshcap state was found.
    pub fn has_meshcap_state(&self) -> bool {
        self.iptables.iter().any(|x| !x.tables.is_empty())
            || self.nftables.iter().any(|n| n.table.is_some())
            || !self.policy_routing.is_empty()
    }

    pub(crate) fn xtables_state(
        family: Family,
        flavour: Flavour,
        selected: bool,
        save: &str,
    ) -> XtablesState {
        XtablesState {
            family,
            flavour,
            selected,
            tables: meshcap_lines(save),
            format: Installed::parse_save(save).format(),
        }
    }

    pub(crate) fn routing_lines(items: &[Item]) -> Vec<String> {
        items.iter().map(Item::to_string).collect()
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "network namespace {} (dev {}, inode {})",
            self.netns.display(),
            self.id.dev,
            self.id.ino
        )?;
        writeln!(f, "iptables:")?;
        if self.iptables.is_empty() {
            writeln!(f, "  (not inspected)")?;
        }
        for x in &self.iptables {
            let selected = if x.selected {
                ", used by iptables mode"
            } else {
                ""
            };
            if x.tables.is_empty() {
                writeln!(
                    f,
                    "  {} ({}{selected}): no meshcap rules",
                    x.family, x.flavour
                )?;
                continue;
            }
            let format = x
                .format
                .map(|n| format!(", rules format {n}"))
                .unwrap_or_default();
            writeln!(f, "  {} ({}{selected}{format}):", x.family, x.flavour)?;
            for (table, lines) in &x.tables {
                writeln!(f, "    *{table}")?;
                for line in lines {
                    writeln!(f, "      {line}")?;
                }
            }
        }
        writeln!(f, "nftables:")?;
        if self.nftables.is_empty() {
            writeln!(f, "  (not inspected)")?;
        }
        for n in &self.nftables {
            match &n.table {
                None => writeln!(f, "  {}: no meshcap table", n.family)?,
                Some(table) => {
                    writeln!(f, "  {}:", n.family)?;
                    for line in table.lines() {
                        writeln!(f, "    {line}")?;
                    }
                }
            }
        }
        writeln!(f, "policy routing:")?;
        if self.policy_routing.is_empty() {
            writeln!(f, "  none")?;
        }
        for line in &self.policy_routing {
            writeln!(f, "  {line}")?;
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for note in &self.notes {
                writeln!(f, "  {note}")?;
            }
        }
        if !self.has_meshcap_state() {
            writeln!(f, "no meshcap state found")?;
        }
        Ok(())
    }
}

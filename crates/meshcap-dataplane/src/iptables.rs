//! `iptables` mode: meshcap's chains installed with `iptables-restore --noflush`.
//!
//! The xtables flavour is chosen per namespace and family the way Istio does it: legacy only
//! where legacy rules already exist (someone else in the pod uses legacy, and mixing flavours
//! in one namespace would split the rules between two kernels' worth of tables), nft-backed
//! otherwise. Everything runs inside the pod namespace: the children inherit the calling
//! thread's namespace. Changes are computed by the model's renderer ([`transition`]), which
//! only touches `MESHCAP_` chains and meshcap's jumps into them; each table is committed
//! atomically by the kernel, and a failure in one family moves the other one back.
//!
//! `iptables-nft` creates a table and each built-in chain in it the first time a rule goes
//! there, and never deletes them. So an apply notes which of those its restore brought into
//! being ([`CreatedTable`]; the caller keeps the list with the pod) and a remove given that
//! list deletes them again once nothing but meshcap's rules ever sat in them, leaving the
//! namespace as the first apply found it. Legacy tables cannot be removed at all (the kernel
//! keeps an `ip_tables` table until the namespace goes); meshcap only writes legacy where
//! legacy rules already exist.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use meshcap_model::render::iptables::{drift, restore_input, Installed};
use meshcap_model::rules::{Family, Ruleset, Table, CHAIN_PREFIX};
use meshcap_nft::replay::Template;
use meshcap_nft::xtables::{Created, TableShape};

use crate::exec::describe_search;
use crate::sys::{Invocation, Spawned, Started, Sys};
use crate::templates::TemplateStore;
use crate::DataplaneError;

/// Which xtables implementation a namespace's rules live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-legacy-*`: the setsockopt-based ip_tables kernel tables.
    Legacy,
    /// `iptables-nft-*`: xtables rules stored in nf_tables.
    Nft,
    /// Plain `iptables-*` names, used when neither suffixed program is installed (the
    /// flavour is then whatever the distribution's alternative points at).
    Unsuffixed,
}

impl Flavour {
    fn suffix(self) -> &'static str {
        match self {
            Flavour::Legacy => "-legacy",
            Flavour::Nft => "-nft",
            Flavour::Unsuffixed => "",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
            Flavour::Unsuffixed => "default",
        })
    }
}

/// A table, or built-in chains of an existing table, that an apply's `iptables-restore`
/// brought into being in nf_tables (the nft flavour creates them on first use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTable {
    pub family: Family,
    /// `nat`, `mangle`, `raw`.
    pub table: String,
    /// The table itself did not exist before.
    pub whole_table: bool,
    /// Built-in chains that did not exist before (all of the table's when `whole_table`).
    pub chains: Vec<String>,
}

/// The xtables tables meshcap may write to.
const XTABLES_TABLES: [Table; 3] = [Table::Raw, Table::Mangle, Table::Nat];

fn xtables_shapes(
    sys: &dyn Sys,
    netns: &Path,
    family: Family,
) -> Result<Vec<TableShape>, DataplaneError> {
    let names = XTABLES_TABLES.map(Table::name);
    sys.xtables_shapes(family, &names)
        .map_err(|source| DataplaneError::Nftables {
            op: "list the xtables tables",
            netns: netns.to_owned(),
            source: Box::new(source),
        })
}

fn xtables_shapes_of(
    sys: &dyn Sys,
    netns: &Path,
    families: &[Family],
    rule_counts: bool,
) -> Result<Vec<(Family, Vec<TableShape>)>, DataplaneError> {
    let names = XTABLES_TABLES.map(Table::name);
    sys.xtables_shapes_of(families, &names, rule_counts)
        .map_err(|source| DataplaneError::Nftables {
            op: "list the xtables tables",
            netns: netns.to_owned(),
            source: Box::new(source),
        })
}

/// What exists in `after` and did not in `before`.
fn created_between(
    family: Family,
    before: &[TableShape],
    after: &[TableShape],
) -> Vec<CreatedTable> {
    let mut out = Vec::new();
    for table in after {
        let old = before.iter().find(|t| t.name == table.name);
        let chains: Vec<String> = table
            .base_chains()
            .filter(|c| old.is_none_or(|o| o.chain(c).is_none()))
            .map(str::to_string)
            .collect();
        if old.is_none() || !chains.is_empty() {
            out.push(CreatedTable {
                family,
                table: table.name.clone(),
                whole_table: old.is_none(),
                chains,
            });
        }
    }
    out
}

/// Adds `new` to `into`, one entry per (family, table).
pub fn merge_created(into: &mut Vec<CreatedTable>, new: Vec<CreatedTable>) {
    for n in new {
        match into
            .iter_mut()
            .find(|c| c.family == n.family && c.table == n.table)
        {
            Some(c) => {
                c.whole_table |= n.whole_table;
                for chain in n.chains {
                    if !c.chains.contains(&chain) {
                        c.chains.push(chain);
                    }
                }
            }
            None => into.push(n),
        }
    }
}

/// Whether a save with `tools` could show any of meshcap's state, asked of the kernel without
/// spawning the save: the nft flavour keeps meshcap's chains in the nf_tables tables
/// `raw`/`mangle`/`nat` of the family (`shapes`, one netlink dump), legacy ones are listed in
/// /proc. In a fresh pod neither exists and a save would show nothing.
fn may_hold_rules(sys: &dyn Sys, tools: &Tools, shapes: &[TableShape]) -> bool {
    match tools.flavour {
        Flavour::Legacy => sys.legacy_tables_present(tools.family),
        Flavour::Nft => !shapes.is_empty(),
        Flavour::Unsuffixed => sys.legacy_tables_present(tools.family) || !shapes.is_empty(),
    }
}

/// `iptables-nft-save`, `ip6tables-legacy-restore`, ...
pub fn program_name(family: Family, flavour: Flavour, op: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    format!("{base}{}-{op}", flavour.suffix())
}

/// The save/restore pair of one family and flavour.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub family: Family,
    pub flavour: Flavour,
    pub save: PathBuf,
    pub restore: PathBuf,
}

/// The xtables programs of one namespace operation. Methods that run programs must be
/// called inside the namespace ([`crate::PodNetns::run`]).
pub(crate) struct Xtables<'a> {
    pub sys: &'a dyn Sys,
    pub search: &'a [PathBuf],
    /// Only labels errors.
    pub netns: &'a Path,
    /// `XTABLES_LOCKFILE` for legacy programs.
    pub xt_lock: PathBuf,
    /// The namespace's journal of what an apply may bring into being ([`Journal`]).
    pub journal: PathBuf,
    /// Where verified [`Template`]s are kept; `None` when templates are off.
    pub templates: Option<TemplateStore>,
}

/// What an apply may bring into being (tables and built-in chains), written before its
/// restores run and dropped once the caller has recorded what the apply returned
/// ([`crate::LockedNetns::settle`]) or a remove went through.
///
/// An apply cut short (the plugin killed between its restores, or before it wrote its record)
/// leaves tables that the next apply finds already there, and so would not report as its own:
/// DEL would then leave them behind. The journal survives the kill (it is a file under the
/// run directory, keyed by the namespace's identity), and the next apply or remove of the
/// namespace takes what it lists as created too. Listing a table or chain that was not created
/// after all is harmless: only what holds nothing is ever removed.
pub(crate) struct Journal;

impl Journal {
    pub fn read(path: &Path) -> Vec<CreatedTable> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        // Complete lines only: a writer killed in its one write leaves at most a cut last one.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                let family = match words.next()? {
                    "ipv4" => Family::V4,
                    "ipv6" => Family::V6,
                    _ => return None,
                };
                let table = words.next()?.to_owned();
                let whole_table = words.next()? == "table";
                let chains = words.map(str::to_owned).collect();
                Some(CreatedTable {
                    family,
                    table,
                    whole_table,
                    chains,
                })
            })
            .collect()
    }

    /// Writes `entries` as the journal. The first journal of a namespace is created in place
    /// (one directory operation, on every fresh pod's apply): only the holder of the
    /// namespace's lock reads or writes it, and [`Journal::read`] takes complete lines only.
    /// An existing one is replaced atomically (a temp file renamed over it), so its entries
    /// are never lost in between.
    pub fn write(path: &Path, entries: &[CreatedTable]) -> Result<(), DataplaneError> {
        let mut text = String::new();
        for c in entries {
            text.push_str(&format!(
                "{} {} {}",
                c.family,
                c.table,
                if c.whole_table { "table" } else { "chains" }
            ));
            for chain in &c.chains {
                text.push(' ');
                text.push_str(chain);
            }
            text.push('\n');
        }
        let create_new = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        };
        match crate::create_in_dir(create_new, || crate::create_parent(path), |e| e) {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(text.as_bytes())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                crate::write_replacing(path, ".tmp", text.as_bytes())
            }
            Err(e) => Err(e),
        }
        .map_err(|source| DataplaneError::Lock {
            path: path.to_owned(),
            source,
        })
    }

    pub fn drop(path: &Path) {
        // Most namespaces have none (nftables mode, a settled apply): looking needs no lock
        // on the directory, removing takes it exclusively.
        if path.symlink_metadata().is_ok() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The tables and built-in chains that moving `before` (the family's xtables tables) to
/// `target` may create: meshcap's tables that are absent, and the built-in chains its jumps
/// start from that are absent.
fn may_create(family: Family, before: &[TableShape], target: &Installed) -> Vec<CreatedTable> {
    let mut out = Vec::new();
    for (table, t) in &target.tables {
        let name = table.name();
        let from: Vec<String> = t
            .jumps
            .iter()
            .filter_map(|j| j.strip_prefix("-A ")?.split(' ').next())
            .map(str::to_owned)
            .collect();
        let old = before.iter().find(|s| s.name == name);
        let chains: Vec<String> = from
            .into_iter()
            .filter(|c| old.is_none_or(|o| o.chain(c).is_none()))
            .collect();
        if old.is_none() || !chains.is_empty() {
            out.push(CreatedTable {
                family,
                table: name.to_owned(),
                whole_table: old.is_none(),
                chains,
            });
        }
    }
    out
}

/// Whether `iptables-save` output shows anything: a rule or a user-defined chain. The
/// built-in chains appear with policy lines in any table the kernel instantiated, so they do
/// not count.
pub(crate) fn shows_rules(save: &str) -> bool {
    const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    save.lines().any(|l| {
        l.starts_with("-A ")
            || l.strip_prefix(':')
                .and_then(|c| c.split_whitespace().next())
                .is_some_and(|chain| !BUILTIN.contains(&chain))
    })
}

/// meshcap's lines of `iptables-save` output, per table, for people to read.
pub(crate) fn meshcap_lines(save: &str) -> Vec<(String, Vec<String>)> {
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<String> = None;
    for line in save.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            current = Some(table.to_owned());
            continue;
        }
        let ours = line.starts_with(&format!(":{CHAIN_PREFIX}"))
            || line.starts_with(&format!("-A {CHAIN_PREFIX}"))
            || (line.starts_with("-A ") && line.contains(&format!("-j {CHAIN_PREFIX}")));
        if let (true, Some(table)) = (ours, &current) {
            match tables.iter_mut().find(|(t, _)| t == table) {
                Some((_, lines)) => lines.push(line.to_owned()),
                None => tables.push((table.clone(), vec![line.to_owned()])),
            }
        }
    }
    tables
}

impl Xtables<'_> {
    pub fn tools(&self, family: Family, flavour: Flavour) -> Option<Tools> {
        Some(Tools {
            family,
            flavour,
            save: (self.sys).find_program(self.search, &program_name(family, flavour, "save"))?,
            restore: (self.sys)
                .find_program(self.search, &program_name(family, flavour, "restore"))?,
        })
    }

    /// The flavours that may hold rules here and whose programs are installed, legacy first.
    pub fn available(&self, family: Family) -> Vec<Tools> {
        let suffixed: Vec<Tools> = [Flavour::Legacy, Flavour::Nft]
            .into_iter()
            .filter(|f| *f != Flavour::Legacy || self.sys.legacy_tables_present(family))
            .filter_map(|f| self.tools(family, f))
            .collect();
        if suffixed.is_empty() {
            self.tools(family, Flavour::Unsuffixed)
                .into_iter()
                .collect()
        } else {
            suffixed
        }
    }

    /// Picks the flavour for `family` in the current namespace.
    pub fn detect(&self, family: Family) -> Result<Tools, DataplaneError> {
        let legacy = if self.sys.legacy_tables_present(family) {
            self.tools(family, Flavour::Legacy)
        } else {
            None
        };
        if let Some(legacy) = legacy {
            match self.save(&legacy) {
                Ok(out) if shows_rules(&out) => return Ok(legacy),
                Ok(_) => {}
                // A kernel without ip_tables has no legacy rules to respect.
                Err(e) => tracing::debug!(error = %e, "legacy save failed; not using legacy"),
            }
        }
        self.tools(family, Flavour::Nft)
            .or_else(|| self.tools(family, Flavour::Unsuffixed))
            .ok_or_else(|| DataplaneError::BinaryMissing {
                program: format!(
                    "{} or {}",
                    program_name(family, Flavour::Nft, "restore"),
                    program_name(family, Flavour::Unsuffixed, "restore")
                ),
                searched: describe_search(self.search),
            })
    }

    fn env(&self, tools: &Tools) -> Vec<(&'static str, OsString)> {
        match tools.flavour {
            Flavour::Legacy | Flavour::Unsuffixed => {
                // xtables creates the file but not its directory; if this fails the program
                // reports the lock it could not open.
                if let Some(dir) = self.xt_lock.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                vec![("XTABLES_LOCKFILE", self.xt_lock.clone().into_os_string())]
            }
            Flavour::Nft => Vec::new(),
        }
    }

    fn start_save(&self, tools: &Tools) -> Result<Started, DataplaneError> {
        self.sys.start(&Invocation {
            program: &tools.save,
            args: &[],
            env: &self.env(tools),
            stdin: None,
            netns: self.netns,
        })
    }

    pub fn save(&self, tools: &Tools) -> Result<String, DataplaneError> {
        self.start_save(tools)?.finish()
    }

    pub fn installed(&self, tools: &Tools) -> Result<Installed, DataplaneError> {
        Ok(Installed::parse_save(&self.save(tools)?))
    }

    /// [`Xtables::installed`] of each `(tools, shapes)`, without a save where the kernel holds
    /// no xtables table of the family ([`may_hold_rules`]), and with the saves that are needed
    /// running at once.
    fn installed_all(
        &self,
        of: &[(Tools, Vec<TableShape>)],
    ) -> Result<Vec<Installed>, DataplaneError> {
        let started: Vec<Option<Result<Started, DataplaneError>>> = of
            .iter()
            .map(|(tools, shapes)| {
                may_hold_rules(self.sys, tools, shapes).then(|| self.start_save(tools))
            })
            .collect();
        started
            .into_iter()
            .map(|s| match s {
                None => Ok(empty()),
                Some(running) => Ok(Installed::parse_save(&running?.finish()?)),
            })
            .collect()
    }

    fn start_restore(&self, tools: &Tools, input: &str) -> Result<Started, DataplaneError> {
        tracing::debug!(family = %tools.family, flavour = %tools.flavour, "iptables-restore");
        // --wait: legacy restores take the (per-namespace) xtables lock; someone else in the
        // pod may briefly hold it. nft ignores the flag.
        self.sys.start(&Invocation {
            program: &tools.restore,
            args: &["--noflush", "--wait"],
            env: &self.env(tools),
            stdin: Some(input),
            netns: self.netns,
        })
    }

    /// A restore of `tools` whose input comes later ([`Spawned::feed`]).
    fn spawn_restore(&self, tools: &Tools) -> Result<Spawned, DataplaneError> {
        tracing::debug!(family = %tools.family, flavour = %tools.flavour, "iptables-restore");
        self.sys.spawn(&Invocation {
            program: &tools.restore,
            args: &["--noflush", "--wait"],
            env: &self.env(tools),
            stdin: None,
            netns: self.netns,
        })
    }

    pub fn restore(&self, tools: &Tools, input: &str) -> Result<(), DataplaneError> {
        self.start_restore(tools, input)?.finish().map(drop)
    }

    /// Moves `tools`' family from `from` to `to`; returns whether anything changed.
    fn transition(
        &self,
        tools: &Tools,
        from: &Installed,
        to: &Installed,
    ) -> Result<bool, DataplaneError> {
        match restore_input(from, to) {
            None => Ok(false),
            Some(input) => self.restore(tools, &input).map(|()| true),
        }
    }

    /// Each of `tools` with its family's xtables tables (one netlink socket for all).
    fn read_families(
        &self,
        tools: Vec<Tools>,
    ) -> Result<Vec<(Tools, Vec<TableShape>)>, DataplaneError> {
        let families: Vec<Family> = tools.iter().map(|t| t.family).collect();
        let mut shapes = xtables_shapes_of(self.sys, self.netns, &families, true)?;
        Ok(tools
            .into_iter()
            .map(|t| {
                let at = shapes.iter().position(|(f, _)| *f == t.family);
                (t, at.map(|i| shapes.swap_remove(i).1).unwrap_or_default())
            })
            .collect())
    }

    /// Runs the restore that moves each `(tools, from, to)` from `from` to `to`. Returns the
    /// families that ran a restore with their previous state, and the first failure (a failed
    /// restore may still have committed some of its tables: xtables-restore commits each at
    /// its COMMIT line, so it counts as changed too).
    ///
    /// `side_by_side`: all restores at once. Each restore that deletes something waits on the
    /// kernel by itself (an RCU grace period when its netlink socket closes), so side by side
    /// those waits overlap. Otherwise the restores commit one after another, in family order,
    /// so the kernel creates (and `nft list ruleset` lists) every pod's tables in the same
    /// order; with the nft flavour every restore is started at once ([`Sys::spawn`]: its exec
    /// and dynamic loading, most of a restore's cost, overlap the previous family's restore)
    /// and given its input only when the previous one has exited. After a failure the
    /// restores not yet fed get no input and change nothing.
    fn write_all(
        &self,
        plans: Vec<(Tools, Installed, Installed)>,
        side_by_side: bool,
    ) -> (Vec<(Tools, Installed)>, Option<DataplaneError>) {
        let plans: Vec<(Tools, Installed, String)> = plans
            .into_iter()
            .filter_map(|(tools, from, to)| {
                restore_input(&from, &to).map(|input| (tools, from, input))
            })
            .collect();
        let mut changed = Vec::new();
        let mut failure = None;
        if side_by_side {
            let running: Vec<_> = plans
                .into_iter()
                .map(|(tools, from, input)| (self.start_restore(&tools, &input), tools, from))
                .collect();
            for (started, tools, previous) in running {
                if let Err(e) = started.and_then(Started::finish) {
                    failure.get_or_insert(e);
                }
                changed.push((tools, previous));
            }
            return (changed, failure);
        }
        let early = plans
            .iter()
            .all(|(tools, _, _)| tools.flavour == Flavour::Nft);
        let mut spawned: Vec<Option<Result<Spawned, DataplaneError>>> = plans
            .iter()
            .map(|(tools, _, _)| early.then(|| self.spawn_restore(tools)))
            .collect();
        for ((tools, from, input), child) in plans.into_iter().zip(spawned.iter_mut()) {
            let child = child.take();
            if failure.is_some() {
                if let Some(Ok(unfed)) = child {
                    unfed.abandon();
                }
                continue;
            }
            let result = match child {
                Some(spawned) => spawned
                    .and_then(|s| s.feed(self.sys, &input))
                    .and_then(Started::finish),
                None => self.start_restore(&tools, &input).and_then(Started::finish),
            };
            changed.push((tools, from));
            if let Err(e) = result {
                failure = Some(e);
            }
        }
        (changed, failure)
    }

    /// Installs exactly `rulesets` (families without one end up with no meshcap state), all
    /// or nothing: when a family fails, every family that changed goes back to its old state,
    /// and tables the attempt created go again. Returns the tables and built-in chains this
    /// apply brought into being, for [`Xtables::remove`].
    ///
    /// Both families are read first (a netlink look at their xtables tables; a save only
    /// where those exist, the saves at once), then written: a fresh pod costs one
    /// `iptables-restore` per family and nothing else.
    pub fn apply(&self, rulesets: &[Ruleset]) -> Result<Vec<CreatedTable>, DataplaneError> {
        let tools = Family::ALL
            .into_iter()
            .map(|family| self.detect(family))
            .collect::<Result<Vec<_>, _>>()?;
        let read = self.read_families(tools)?;
        let current = self.installed_all(&read)?;
        let mut before: Vec<(Family, Vec<TableShape>)> = Vec::new();
        let mut plans = Vec::new();
        // What an earlier apply cut short may have created (see [`Journal`]).
        let earlier = Journal::read(&self.journal);
        let mut journal = earlier.clone();
        for ((tools, shapes), current) in read.into_iter().zip(current) {
            let target = rulesets
                .iter()
                .find(|r| r.family == tools.family)
                .map(Installed::from_ruleset)
                .unwrap_or_else(empty);
            if current != target {
                merge_created(&mut journal, may_create(tools.family, &shapes, &target));
                before.push((tools.family, shapes));
                plans.push((tools, current, target));
            }
        }
        if journal != earlier {
            // Without it the apply still works; only one cut short could then leave tables.
            if let Err(e) = Journal::write(&self.journal, &journal) {
                tracing::warn!(error = %e, "cannot journal what this apply may create");
            }
        }
        let replayed = self.replay_templates(plans, &before);
        let (mut changed, failure) = self.write_all(replayed.rest, false);
        changed.splice(0..0, replayed.written);
        if failure.is_none() {
            self.keep_templates(&replayed.fresh, &changed);
        }
        let mut created = earlier.clone();
        let outcome = match failure {
            Some(e) => Err(e),
            // Which base chains exist now: chain names are enough.
            None => {
                let families: Vec<Family> = before.iter().map(|(f, _)| *f).collect();
                xtables_shapes_of(self.sys, self.netns, &families, false).map(|after| {
                    for ((family, before), (_, after)) in before.iter().zip(&after) {
                        merge_created(&mut created, created_between(*family, before, after));
                    }
                })
            }
        };
        let Err(original) = outcome else {
            return Ok(created);
        };
        let undone = self.roll_back(&changed).and_then(|()| {
            for (family, before) in &before {
                let now = xtables_shapes(self.sys, self.netns, *family)?;
                remove_created(
                    self.sys,
                    self.netns,
                    &created_between(*family, before, &now),
                )?;
            }
            // This attempt left nothing; what an earlier one may have created is still listed.
            match earlier.is_empty() {
                true => Journal::drop(&self.journal),
                false => {
                    if let Err(e) = Journal::write(&self.journal, &earlier) {
                        tracing::warn!(error = %e, "cannot journal what this apply may create");
                    }
                }
            }
            Ok(())
        });
        Err(match undone {
            Ok(()) => original,
            Err(rollback) => DataplaneError::RollbackFailed {
                original: Box::new(original),
                rollback: Box::new(rollback),
            },
        })
    }

    /// Installs from stored [`Template`]s every plan that a template can write: an nft-flavour
    /// family with no xtables table at all yet (a fresh pod), for which a template of this very
    /// restore input was verified on this node. All of them in one transaction; when it fails
    /// (a table appeared meanwhile, a template the kernel no longer takes), nothing was
    /// written and their restores run instead.
    fn replay_templates(
        &self,
        plans: Vec<(Tools, Installed, Installed)>,
        before: &[(Family, Vec<TableShape>)],
    ) -> Replayed {
        let mut fresh = Vec::new();
        let Some(store) = &self.templates else {
            return Replayed {
                written: Vec::new(),
                rest: plans,
                fresh,
            };
        };
        for (tools, from, to) in &plans {
            let untouched = before
                .iter()
                .any(|(f, shapes)| *f == tools.family && shapes.is_empty());
            if tools.flavour != Flavour::Nft || !untouched || !from.is_empty() {
                continue;
            }
            let Some(input) = restore_input(from, to) else {
                continue;
            };
            let Some(key) = template_key(tools, &input) else {
                continue;
            };
            let stored = store.read(tools.family, &key);
            fresh.push(FreshFamily {
                family: tools.family,
                tables: to.tables.keys().map(|t| t.name()).collect(),
                rules: to
                    .tables
                    .values()
                    .map(|t| t.jumps.len() + t.rules.values().map(Vec::len).sum::<usize>())
                    .sum(),
                chains: to
                    .tables
                    .values()
                    .flat_map(|t| t.chains.iter().cloned())
                    .collect(),
                template: stored
                    .as_ref()
                    .and_then(|stored| Template::decode(&stored.bytes, &key)),
                used_at: stored.and_then(|stored| stored.used_at),
                key,
            });
        }
        let usable: Vec<&Template> = fresh.iter().filter_map(|f| f.template.as_ref()).collect();
        if usable.is_empty() {
            return Replayed {
                written: Vec::new(),
                rest: plans,
                fresh,
            };
        }
        if let Err(e) = self.sys.xtables_replay(&usable) {
            tracing::debug!(error = %e, "xtables templates not taken; running the restores");
            for f in &fresh {
                if f.template.is_some() {
                    store.forget(f.family, &f.key);
                }
            }
            return Replayed {
                written: Vec::new(),
                rest: plans,
                fresh: Vec::new(),
            };
        }
        let written = || fresh.iter().filter(|f| f.template.is_some());
        for f in written() {
            store.used(f.family, &f.key, f.used_at);
        }
        tracing::debug!(
            files = ?written()
                .map(|f| store.path(f.family, &f.key).display().to_string())
                .collect::<Vec<_>>(),
            "xtables rules written from templates"
        );
        let mut replayed = Vec::new();
        let mut rest = Vec::new();
        for (tools, from, to) in plans {
            if fresh
                .iter()
                .any(|f| f.family == tools.family && f.template.is_some())
            {
                replayed.push((tools, from));
            } else {
                rest.push((tools, from, to));
            }
        }
        Replayed {
            written: replayed,
            rest,
            fresh,
        }
    }

    /// After a successful apply: for each fresh family that ran its restore, reads back what
    /// the restore wrote and keeps it as a template once it has passed its check (replayed
    /// into a scratch namespace, it reads back as itself). Costs the first pod of each
    /// ruleset a read-back and a scratch namespace; failures only mean no template.
    fn keep_templates(&self, fresh: &[FreshFamily], changed: &[(Tools, Installed)]) {
        let Some(store) = &self.templates else {
            return;
        };
        for f in fresh.iter().filter(|f| f.template.is_none()) {
            if !changed.iter().any(|(t, _)| t.family == f.family) {
                continue;
            }
            let template = match self.sys.xtables_capture(f.family, &f.tables) {
                Ok(Some(t))
                    if t.rule_count() == f.rules
                        && t.user_chains()
                            .into_iter()
                            .collect::<std::collections::BTreeSet<_>>()
                            == f.chains =>
                {
                    t
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read back the restore's rules");
                    continue;
                }
            };
            match self.sys.xtables_template_holds(&template, &f.tables) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(family = %f.family, "xtables template does not read back as itself; not kept");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check an xtables template");
                    continue;
                }
            }
            match store.keep(f.family, &f.key, &template.encode(&f.key)) {
                Ok(path) => tracing::debug!(path = %path.display(), "xtables template kept"),
                Err(e) => tracing::debug!(error = %e, "cannot keep an xtables template"),
            }
        }
    }

    /// Puts each family of `changed` back into its recorded state, newest first.
    pub fn roll_back(&self, changed: &[(Tools, Installed)]) -> Result<(), DataplaneError> {
        for (tools, previous) in changed.iter().rev() {
            let now = self.installed(tools)?;
            self.transition(tools, &now, previous)?;
        }
        Ok(())
    }

    /// Removes meshcap's chains from both families, and then those of `created` (what the
    /// applies brought into being) that hold nothing any more.
    ///
    /// The nf_tables side (`iptables-nft`, where meshcap's chains live unless the pod already
    /// used legacy xtables) is one netlink transaction over both families, with no process:
    /// the kernel makes every process that closes a netlink socket after deleting nf_tables
    /// objects wait for an RCU grace period, so a restore per family and a removal per created
    /// table each waited for one, one after another (their closes also serialise on the
    /// namespace's nf_tables mutex); one transaction waits once. Legacy tables, where the
    /// kernel lists any, go through the flavour's programs first, read and written side by
    /// side; if the nf_tables transaction then fails, they get their chains back, so that a
    /// retried DEL finds the namespace as it was.
    pub fn remove(&self, created: &[CreatedTable]) -> Result<(), DataplaneError> {
        let legacy: Vec<(Tools, Vec<TableShape>)> = Family::ALL
            .into_iter()
            .filter(|family| self.sys.legacy_tables_present(*family))
            .flat_map(|family| self.available(family))
            .filter(|tools| tools.flavour != Flavour::Nft)
            .map(|tools| (tools, Vec::new()))
            .collect();
        let current = self.installed_all(&legacy)?;
        let plans = legacy
            .into_iter()
            .zip(current)
            .map(|((tools, _), current)| (tools, current, empty()))
            .collect();
        // DEL must not leave half the rules behind either.
        let (changed, failure) = self.write_all(plans, true);
        // What an apply cut short may have created goes too, then its journal.
        let mut all = created.to_vec();
        merge_created(&mut all, Journal::read(&self.journal));
        let outcome = match failure {
            Some(e) => Err(e),
            None => remove_nft(self.sys, self.netns, &all),
        };
        outcome.map_err(|original| match self.roll_back(&changed) {
            Ok(()) => original,
            Err(rollback) => DataplaneError::RollbackFailed {
                original: Box::new(original),
                rollback: Box::new(rollback),
            },
        })?;
        Journal::drop(&self.journal);
        Ok(())
    }

    /// Differences between `rulesets` and what the detected flavour holds.
    pub fn check(&self, rulesets: &[Ruleset]) -> Result<Vec<String>, DataplaneError> {
        let mut details = Vec::new();
        for family in Family::ALL {
            let expected = rulesets
                .iter()
                .find(|r| r.family == family)
                .map(Installed::from_ruleset)
                .unwrap_or_else(empty);
            let tools = self.detect(family)?;
            let actual = self.installed(&tools)?;
            details.extend(
                drift(&expected, &actual)
                    .into_iter()
                    .map(|d| format!("{family} iptables ({}): {d}", tools.flavour)),
            );
        }
        Ok(details)
    }
}

/// meshcap's chains and the jumps to them in the nf_tables xtables tables of both families,
/// and what `created` lists once nothing else is left in it, in one transaction.
fn remove_nft(sys: &dyn Sys, netns: &Path, created: &[CreatedTable]) -> Result<(), DataplaneError> {
    let created: Vec<Created<'_>> = created
        .iter()
        .map(|c| Created {
            family: c.family,
            table: &c.table,
            chains: &c.chains,
            whole_table: c.whole_table,
        })
        .collect();
    let names = XTABLES_TABLES.map(Table::name);
    let done = sys
        .xtables_remove_prefixed(&Family::ALL, &names, CHAIN_PREFIX, &created)
        .map_err(|source| DataplaneError::Nftables {
            op: "remove meshcap's xtables chains",
            netns: netns.to_owned(),
            source: Box::new(source),
        })?;
    if !done.kept.is_empty() {
        tracing::info!(kept = ?done.kept, "left in place: in use by another component");
    }
    Ok(())
}

/// Deletes what `created` lists once nothing is left in it (another component's rule keeps a
/// chain, its chain or set keeps the table; the kernel checks, atomically).
fn remove_created(
    sys: &dyn Sys,
    netns: &Path,
    created: &[CreatedTable],
) -> Result<(), DataplaneError> {
    for c in created {
        let removed = sys
            .xtables_remove_if_unused(c.family, &c.table, &c.chains, c.whole_table)
            .map_err(|source| DataplaneError::Nftables {
                op: "remove the xtables tables meshcap created",
                netns: netns.to_owned(),
                source: Box::new(source),
            })?;
        if !removed.kept.is_empty() {
            tracing::info!(family = %c.family, table = %c.table, kept = ?removed.kept, "left in place: in use by another component");
        }
    }
    Ok(())
}

/// What [`Xtables::replay_templates`] wrote, and what is left for restores.
struct Replayed {
    /// Families written from templates, with their state before (as `write_all` returns).
    written: Vec<(Tools, Installed)>,
    /// The plans left for restores.
    rest: Vec<(Tools, Installed, Installed)>,
    /// The fresh families, with the key their template has or would have.
    fresh: Vec<FreshFamily>,
}

/// A family with no xtables table before the apply, and what a template for it is keyed by.
struct FreshFamily {
    family: Family,
    /// The tables the rules go to (what a template of them holds).
    tables: Vec<&'static str>,
    /// How many rules, and which user chains, the restore writes there: a read-back that
    /// holds anything else (another component wrote at the same moment) is no template.
    rules: usize,
    chains: std::collections::BTreeSet<String>,
    key: String,
    /// The stored template of `key`, verified when it was kept.
    template: Option<Template>,
    /// When the stored template was last marked used.
    used_at: Option<std::time::SystemTime>,
}

/// What a template stands for: the restore input it replaces, for this family, written by
/// this `iptables-nft-restore` (path, size, mtime, inode) on this kernel. Any change to one of
/// them is another key, so a template is never used for anything but the restore it was read
/// back from. `None` when the program or the kernel release cannot be read.
fn template_key(tools: &Tools, input: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    static KERNEL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let kernel = KERNEL.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|r| r.trim().to_owned())
    });
    let program = std::fs::metadata(&tools.restore).ok()?;
    let kernel = kernel.as_deref()?;
    Some(format!(
        "{}\n{} {} {} {} {}\n{}\n{input}",
        tools.family,
        tools.restore.display(),
        program.size(),
        program.mtime(),
        program.mtime_nsec(),
        program.ino(),
        kernel,
    ))
}

fn empty() -> Installed {
    Installed::parse_save("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "\
# Generated by iptables-save v1.8.9 on Sun Nov 22 04:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MESHCAP_OUTPUT - [0:0]
-A OUTPUT -j MESHCAP_OUTPUT
-A OUTPUT -j DOCKER
-A MESHCAP_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
";

    #[test]
    fn builtin_policies_alone_are_not_rules() {
        assert!(!shows_rules(
            "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        ));
        assert!(shows_rules(
            "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-X - [0:0]\nCOMMIT\n"
        ));
        assert!(shows_rules(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"
        ));
        assert!(!shows_rules(""));
    }

    #[test]
    fn meshcap_lines_keep_only_meshcap() {
        assert_eq!(
            meshcap_lines(SAVE),
            vec![(
                "nat".to_string(),
                vec![
                    ":MESHCAP_OUTPUT - [0:0]".to_string(),
                    "-A OUTPUT -j MESHCAP_OUTPUT".to_string(),
                    "-A MESHCAP_OUTPUT -p tcp -j REDIRECT --to-ports 15001".to_string(),
                ]
            )]
        );
    }

    #[test]
    fn the_journal_reads_back_what_was_written() {
        let dir = meshcap_testkit::ScratchDir::new("journal");
        let path = dir.path().join("pending/xtables-1-2");
        assert_eq!(Journal::read(&path), Vec::new(), "no journal: nothing");
        let entries = vec![
            CreatedTable {
                family: Family::V4,
                table: "nat".into(),
                whole_table: true,
                chains: vec!["PREROUTING".into(), "OUTPUT".into()],
            },
            CreatedTable {
                family: Family::V6,
                table: "mangle".into(),
                whole_table: false,
                chains: vec!["PREROUTING".into()],
            },
        ];
        Journal::write(&path, &entries[..1]).unwrap();
        assert_eq!(Journal::read(&path), entries[..1]);
        // A later apply replaces it whole.
        Journal::write(&path, &entries).unwrap();
        assert_eq!(Journal::read(&path), entries);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            [path.file_name().unwrap()],
            "no temporary file left"
        );
        Journal::drop(&path);
        assert_eq!(Journal::read(&path), Vec::new());
        Journal::drop(&path);
    }

    /// A writer killed in its write leaves a cut last line: only the complete lines count.
    #[test]
    fn a_cut_journal_line_is_ignored() {
        let dir = meshcap_testkit::ScratchDir::new("journal-cut");
        let path = dir.path().join("xtables-1-2");
        std::fs::write(
            &path,
            "ipv4 nat table PREROUTING OUTPUT\nipv6 mangle chains PRE",
        )
        .unwrap();
        assert_eq!(
            Journal::read(&path),
            [CreatedTable {
                family: Family::V4,
                table: "nat".into(),
                whole_table: true,
                chains: vec!["PREROUTING".into(), "OUTPUT".into()],
            }]
        );
        std::fs::write(&path, "ipv4 nat table PRE").unwrap();
        assert_eq!(Journal::read(&path), Vec::new());
    }

    // An apply may create meshcap's tables that are absent, and the built-in chains its jumps
    // start from that are absent, and nothing else.
    #[test]
    fn may_create_lists_absent_tables_and_entry_chains() {
        let target = Installed::parse_save(SAVE);
        let nat = |chains: &[&str]| TableShape {
            name: "nat".into(),
            chains: chains
                .iter()
                .map(|c| meshcap_nft::xtables::ChainShape {
                    name: c.to_string(),
                    base: true,
                    rules: 0,
                })
                .collect(),
        };
        assert_eq!(
            may_create(Family::V4, &[], &target),
            vec![CreatedTable {
                family: Family::V4,
                table: "nat".into(),
                whole_table: true,
                chains: vec!["OUTPUT".into()],
            }]
        );
        assert_eq!(
            may_create(Family::V4, &[nat(&["PREROUTING"])], &target),
            vec![CreatedTable {
                family: Family::V4,
                table: "nat".into(),
                whole_table: false,
                chains: vec!["OUTPUT".into()],
            }]
        );
        assert_eq!(
            may_create(Family::V4, &[nat(&["OUTPUT"])], &target),
            Vec::new()
        );
    }

    #[test]
    fn program_names() {
        assert_eq!(
            program_name(Family::V4, Flavour::Nft, "save"),
            "iptables-nft-save"
        );
        assert_eq!(
            program_name(Family::V6, Flavour::Legacy, "restore"),
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            program_name(Family::V6, Flavour::Unsuffixed, "save"),
            "ip6tables-save"
        );
    }
}

//! Applying meshcap rulesets inside a pod network namespace.
//!
//! All functions are synchronous: each enters the pod namespace by file descriptor only for
//! the duration of a closure ([`PodNetns::run`]) and spawns `iptables-restore` from there
//! (`iptables` mode) or talks netlink from there (`nftables` mode, policy routing). Every
//! operation on one namespace holds that namespace's lock, and only that one: different pods
//! never wait on each other.
//!
//! An apply is all-or-nothing: policy routing is synced first and undone if the rules fail;
//! the iptables families are each atomic per table and moved back if a later one fails; the
//! nftables backend commits all families in one transaction.
//!
//! Everything that reaches the kernel or starts a process goes through [`sys::Sys`] (entering
//! the namespace, the xtables programs, the nf_tables and rtnetlink calls); [`sys::Host`] is
//! the real one, and the unit tests drive apply, rollback, remove and check through a
//! recording fake of it, without root.
#![deny(unsafe_code)]

mod error;
mod exec;
#[cfg(test)]
mod fake;
pub mod inspect;
pub mod iptables;
mod lock;
pub mod netns;
mod nftables;
pub mod routes;
mod rtnl;
pub mod sys;
mod templates;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use meshcap_model::rules::{Family, Ruleset};

pub use error::DataplaneError;
pub use inspect::Inspection;
pub use iptables::{merge_created, CreatedTable, Flavour};
pub use netns::{NetnsId, PodNetns};

use iptables::Xtables;
use sys::{run_in, Host, Sys};
use templates::TemplateStore;

/// Which rule backend a pod uses (`mode` in the plugin config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        })
    }
}

/// Default directory for meshcap's runtime files (legacy iptables' per-namespace xtables lock
/// files, the apply journal, the xtables templates; the namespace lock itself is a `flock` on
/// the namespace, no file).
pub const DEFAULT_RUN_DIR: &str = "/run/meshcap";

/// Under the run directory: the verified xtables templates.
const TEMPLATES_DIR: &str = "templates";
/// Under the run directory: the journals of iptables-mode applies.
const JOURNALS_DIR: &str = "pending";
/// Under the run directory: legacy xtables' per-namespace lock files.
pub(crate) const LOCKS_DIR: &str = "locks";

/// Where the dataplane finds its programs and keeps its lock files, and what it reaches the
/// kernel through ([`Sys`]: the [`Host`], or a fake in tests). The free functions use
/// [`Dataplane::default`]; tests and the node tool may point it elsewhere.
#[derive(Debug, Clone)]
pub struct Dataplane {
    /// Filled on first use: nftables mode never runs a program, so it never reads `$PATH`.
    search_path: std::sync::OnceLock<Vec<PathBuf>>,
    run_dir: PathBuf,
    sys: Arc<dyn Sys>,
    xtables_templates: bool,
}

impl Default for Dataplane {
    /// `$PATH` plus `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`; run directory `/run/meshcap`.
    fn default() -> Self {
        Dataplane {
            search_path: std::sync::OnceLock::new(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            sys: Arc::new(Host),
            xtables_templates: true,
        }
    }
}

impl Dataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// Searches only `dirs` for the xtables programs.
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_path = std::sync::OnceLock::from(dirs);
        self
    }

    /// Whether iptables mode writes fresh pods from xtables templates and keeps new ones
    /// (docs/DESIGN.md, "The plugin's hot path"); off, every apply runs its restores.
    pub fn with_xtables_templates(mut self, on: bool) -> Self {
        self.xtables_templates = on;
        self
    }

    /// Keeps the legacy xtables lock files under `dir/locks` instead of `/run/meshcap/locks`.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = dir.into();
        self
    }

    /// Reaches the kernel and the xtables programs through `sys` instead of the [`Host`].
    pub fn with_sys(mut self, sys: Arc<dyn Sys>) -> Self {
        self.sys = sys;
        self
    }

    pub fn search_path(&self) -> &[PathBuf] {
        self.search_path.get_or_init(exec::default_search_path)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn xtables<'a>(&'a self, ns: &'a PodNetns) -> Xtables<'a> {
        Xtables {
            sys: &*self.sys,
            search: self.search_path(),
            netns: ns.path(),
            xt_lock: lock::xtables_lock_path(&self.run_dir, ns.id()),
            journal: journal_path(&self.run_dir, ns.id()),
            templates: self
                .xtables_templates
                .then(|| TemplateStore::new(self.run_dir.join(TEMPLATES_DIR))),
        }
    }

    /// Takes `ns`'s lock (blocks while another meshcap process holds it). What one caller
    /// does to a pod under one lock (the plugin: apply and write the record, or remove and
    /// drop it; the agent: read the record, check and repair) never interleaves with another.
    pub fn lock<'a>(&'a self, ns: &'a PodNetns) -> Result<LockedNetns<'a>, DataplaneError> {
        Ok(LockedNetns {
            dataplane: self,
            ns,
            _lock: lock::lock_netns(ns)?,
        })
    }

    /// [`LockedNetns::apply`] and [`LockedNetns::settle`] under the namespace's lock: for
    /// callers that keep what it returns themselves (a caller that records it under the same
    /// lock, as the plugin does, locks and settles once recorded).
    pub fn apply(
        &self,
        ns: &PodNetns,
        backend: Backend,
        rulesets: &[Ruleset],
    ) -> Result<Vec<CreatedTable>, DataplaneError> {
        let locked = self.lock(ns)?;
        let created = locked.apply(backend, rulesets)?;
        locked.settle();
        Ok(created)
    }

    /// [`LockedNetns::remove`] under the namespace's lock.
    pub fn remove(
        &self,
        ns: &PodNetns,
        backend: Backend,
        created: &[CreatedTable],
    ) -> Result<(), DataplaneError> {
        self.lock(ns)?.remove(backend, created)
    }

    /// [`LockedNetns::check`] under the namespace's lock.
    pub fn check(
        &self,
        ns: &PodNetns,
        backend: Backend,
        rulesets: &[Ruleset],
    ) -> Result<(), DataplaneError> {
        self.lock(ns)?.check(backend, rulesets)
    }

    /// Drops the legacy xtables lock file of a namespace that no longer exists (DEL after the
    /// sandbox is gone), so such files do not pile up for every pod a node ever ran. A new
    /// namespace that reuses the inode number is unaffected: meshcap's own operations on it
    /// are serialised by the lock on the namespace, not by this file.
    pub fn forget(&self, id: NetnsId) -> Result<(), DataplaneError> {
        iptables::Journal::drop(&journal_path(&self.run_dir, id));
        match std::fs::remove_file(lock::xtables_lock_path(&self.run_dir, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataplaneError::Lock {
                path: lock::xtables_lock_path(&self.run_dir, id),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `backend` can do its job on this node: for iptables, the save/restore programs
    /// of both families are installed (nft-suffixed or plain); for nftables, nf_tables answers
    /// in the calling thread's namespace.
    pub fn backend_ready(&self, backend: Backend) -> Result<(), DataplaneError> {
        match backend {
            Backend::Iptables => {
                for family in Family::ALL {
                    for op in ["save", "restore"] {
                        let found = [Flavour::Nft, Flavour::Unsuffixed].into_iter().any(|fl| {
                            self.sys
                                .find_program(
                                    self.search_path(),
                                    &iptables::program_name(family, fl, op),
                                )
                                .is_some()
                        });
                        if !found {
                            return Err(DataplaneError::BinaryMissing {
                                program: format!(
                                    "{} or {}",
                                    iptables::program_name(family, Flavour::Nft, op),
                                    iptables::program_name(family, Flavour::Unsuffixed, op)
                                ),
                                searched: exec::describe_search(self.search_path()),
                            });
                        }
                    }
                }
                Ok(())
            }
            Backend::Nftables => nftables::probe(&*self.sys),
        }
    }

    /// Whether an interface of `ns` holds an IPv6 address other than `::1`, link-local and
    /// tentative ones included: kuma-cni's test (`HasLocalIPv6`, run in the pod's namespace)
    /// for whether a `dualstack` pod gets IPv6 rules.
    pub fn has_ipv6_address(&self, ns: &PodNetns) -> Result<bool, DataplaneError> {
        let sys = &*self.sys;
        let addresses = run_in(sys, ns, || sys.routes(ns.path())?.ipv6_addresses())??;
        Ok(addresses.iter().any(|a| !a.is_loopback()))
    }

    /// Everything meshcap has in the namespace, whichever backend put it there.
    pub fn inspect(&self, ns: &PodNetns) -> Result<Inspection, DataplaneError> {
        let _lock = lock::lock_netns(ns)?;
        let sys = &*self.sys;
        run_in(sys, ns, || {
            let mut inspection = Inspection {
                netns: ns.path().to_owned(),
                id: ns.id(),
                iptables: Vec::new(),
                nftables: Vec::new(),
                policy_routing: Vec::new(),
                notes: Vec::new(),
            };
            let xt = self.xtables(ns);
            for family in Family::ALL {
                let selected = match xt.detect(family) {
                    Ok(tools) => Some(tools.flavour),
                    Err(e) => {
                        inspection.notes.push(format!("{family} iptables: {e}"));
                        None
                    }
                };
                for tools in xt.available(family) {
                    match xt.save(&tools) {
                        Ok(out) => inspection.iptables.push(Inspection::xtables_state(
                            family,
                            tools.flavour,
                            selected == Some(tools.flavour),
                            &out,
                        )),
                        Err(e) => inspection.notes.push(e.to_string()),
                    }
                }
                match nftables::describe(sys, ns.path(), family) {
                    Ok(table) => inspection
                        .nftables
                        .push(inspect::NftState { family, table }),
                    Err(e) => inspection.notes.push(e.to_string()),
                }
            }
            match sys
                .routes(ns.path())
                .and_then(|mut rtnl| routes::present(&mut *rtnl, &[]))
            {
                Ok(items) => inspection.policy_routing = Inspection::routing_lines(&items),
                Err(e) => inspection.notes.push(e.to_string()),
            }
            inspection
        })
    }
}

/// Removes everything the dataplane keeps under `run_dir` (xtables templates, apply journals,
/// legacy xtables lock files) and the directory itself once empty; what is already gone is
/// fine. For `meshcap uninstall`, once no plugin runs any more: a journal then only stands for
/// a pod whose DEL will not come from meshcap.
pub fn remove_run_state(run_dir: &Path) -> std::io::Result<()> {
    for dir in [TEMPLATES_DIR, JOURNALS_DIR, LOCKS_DIR] {
        match std::fs::remove_dir_all(run_dir.join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Something else of the node's may live there too: keep a directory that is not empty.
    match std::fs::remove_dir(run_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to `path` through a temporary file beside it (its name plus `tmp_suffix`),
/// renamed into place: a reader sees the whole file or none. Creates the directory; removes
/// the temporary file again when a step fails.
pub(crate) fn write_replacing(path: &Path, tmp_suffix: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(tmp_suffix);
    let tmp = PathBuf::from(tmp);
    let written = create_in_dir(
        || std::fs::write(&tmp, bytes),
        || create_parent(path),
        |e| e,
    )
    .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path`'s directory and those above it, as the process umask allows.
pub(crate) fn create_parent(path: &Path) -> std::io::Result<()> {
    path.parent().map_or(Ok(()), std::fs::create_dir_all)
}

/// Runs `create`, which makes a file in a directory; when that fails because the directory
/// does not exist yet, runs `make_dir` and then `create` once more. `create_failed` turns a
/// failure of `create` into the caller's error, `make_dir` returns its own.
///
/// meshcap's directories (records, journals, templates, the log file's) exist after a node's
/// first pod, and creating them every time would lock their parent exclusively (even `mkdir`
/// of one that exists does), which pods started together would queue on.
pub fn create_in_dir<T, E>(
    create: impl Fn() -> std::io::Result<T>,
    make_dir: impl FnOnce() -> Result<(), E>,
    create_failed: impl FnOnce(std::io::Error) -> E,
) -> Result<T, E> {
    match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            make_dir()?;
            create().map_err(create_failed)
        }
        done => done.map_err(create_failed),
    }
}

/// The journal of what an iptables-mode apply of namespace `id` may create (see
/// `iptables::Journal`).
fn journal_path(run_dir: &Path, id: NetnsId) -> PathBuf {
    run_dir.join(JOURNALS_DIR).join(format!("xtables-{id}"))
}

/// A namespace whose lock this process holds ([`Dataplane::lock`]); unlocks on drop.
pub struct LockedNetns<'a> {
    dataplane: &'a Dataplane,
    ns: &'a PodNetns,
    _lock: lock::NetnsLock,
}

impl LockedNetns<'_> {
    /// Install `rulesets` (at most one per family) and their policy routes; replaces any
    /// earlier meshcap state of `backend` in the namespace; all-or-nothing. Returns what the
    /// apply brought into being besides meshcap's own chains (iptables mode: tables and
    /// built-in chains iptables-nft created, including what an earlier apply cut short may
    /// have created), which [`LockedNetns::remove`] needs to leave the namespace as it was:
    /// keep it with the pod, then call [`LockedNetns::settle`].
    pub fn apply(
        &self,
        backend: Backend,
        rulesets: &[Ruleset],
    ) -> Result<Vec<CreatedTable>, DataplaneError> {
        let ns = self.ns;
        tracing::debug!(netns = %ns.path().display(), %backend, "applying rules");
        // Where the apply's time goes, logged at debug level: `Instant` reads only.
        let start = Instant::now();
        let mut marks = [start; 3];
        let sys = &*self.dataplane.sys;
        let applied = run_in(sys, ns, || {
            marks[0] = Instant::now();
            let mut rtnl = sys.routes(ns.path())?;
            let route_changes = routes::sync(&mut *rtnl, rulesets)?;
            marks[1] = Instant::now();
            let rules = match backend {
                Backend::Iptables => self.dataplane.xtables(ns).apply(rulesets),
                Backend::Nftables => nftables::apply(sys, ns.path(), rulesets).map(|()| Vec::new()),
            };
            marks[2] = Instant::now();
            rules.map_err(|original| match routes::undo(&mut *rtnl, &route_changes) {
                Ok(()) => original,
                Err(rollback) => DataplaneError::RollbackFailed {
                    original: Box::new(original),
                    rollback: Box::new(rollback),
                },
            })
        })?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
            tracing::debug!(
                enter_us = us(start, marks[0]),
                routes_us = us(marks[0], marks[1]),
                rules_us = us(marks[1], marks[2]),
                leave_us = us(marks[2], Instant::now()),
                "apply phases"
            );
        }
        applied
    }

    /// The caller has recorded what [`LockedNetns::apply`] returned (the pod's record): the
    /// journal that let an apply cut short before that point be undone is no longer needed.
    pub fn settle(&self) {
        iptables::Journal::drop(&journal_path(&self.dataplane.run_dir, self.ns.id()));
    }

    /// Remove everything meshcap installed with `backend`, and its policy routing, and what
    /// the applies brought into being (`created`, as they returned it) when nothing else uses
    /// it; succeeds when nothing is there.
    pub fn remove(&self, backend: Backend, created: &[CreatedTable]) -> Result<(), DataplaneError> {
        let ns = self.ns;
        tracing::debug!(netns = %ns.path().display(), %backend, "removing rules");
        let sys = &*self.dataplane.sys;
        run_in(sys, ns, || {
            match backend {
                Backend::Iptables => self.dataplane.xtables(ns).remove(created)?,
                Backend::Nftables => nftables::remove(sys, ns.path())?,
            }
            let mut rtnl = sys.routes(ns.path())?;
            routes::sync(&mut *rtnl, &[]).map(drop)
        })??;
        // Nothing of meshcap's is left: the legacy xtables lock file (if a legacy restore
        // made one) goes too, so files do not pile up for every pod a node ever ran.
        let _ = std::fs::remove_file(lock::xtables_lock_path(&self.dataplane.run_dir, ns.id()));
        Ok(())
    }

    /// Verify that exactly `rulesets` and their policy routes are installed;
    /// [`DataplaneError::Drift`] otherwise.
    pub fn check(&self, backend: Backend, rulesets: &[Ruleset]) -> Result<(), DataplaneError> {
        let ns = self.ns;
        let sys = &*self.dataplane.sys;
        let details = run_in(sys, ns, || {
            let mut details = match backend {
                Backend::Iptables => self.dataplane.xtables(ns).check(rulesets)?,
                Backend::Nftables => nftables::check(sys, ns.path(), rulesets)?,
            };
            let mut rtnl = sys.routes(ns.path())?;
            details.extend(routes::check(&mut *rtnl, rulesets)?);
            Ok::<_, DataplaneError>(details)
        })??;
        if details.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Drift { details })
        }
    }
}

/// [`Dataplane::apply`] with the default search path and run directory.
pub fn apply(
    ns: &PodNetns,
    backend: Backend,
    rulesets: &[Ruleset],
) -> Result<Vec<CreatedTable>, DataplaneError> {
    Dataplane::default().apply(ns, backend, rulesets)
}

/// [`Dataplane::remove`] with the default search path and run directory.
pub fn remove(
    ns: &PodNetns,
    backend: Backend,
    created: &[CreatedTable],
) -> Result<(), DataplaneError> {
    Dataplane::default().remove(ns, backend, created)
}

/// [`Dataplane::check`] with the default search path and run directory.
pub fn check(ns: &PodNetns, backend: Backend, rulesets: &[Ruleset]) -> Result<(), DataplaneError> {
    Dataplane::default().check(ns, backend, rulesets)
}

/// [`Dataplane::forget`] with the default run directory.
pub fn forget(id: NetnsId) -> Result<(), DataplaneError> {
    Dataplane::default().forget(id)
}

/// [`Dataplane::backend_ready`] with the default search path.
pub fn backend_ready(backend: Backend) -> Result<(), DataplaneError> {
    Dataplane::default().backend_ready(backend)
}

/// [`Dataplane::has_ipv6_address`] on the host.
pub fn has_ipv6_address(ns: &PodNetns) -> Result<bool, DataplaneError> {
    Dataplane::default().has_ipv6_address(ns)
}

/// [`Dataplane::inspect`] with the default search path and run directory.
pub fn inspect(ns: &PodNetns) -> Result<Inspection, DataplaneError> {
    Dataplane::default().inspect(ns)
}

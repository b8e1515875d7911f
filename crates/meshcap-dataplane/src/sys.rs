//! The seam under the dataplane: every call that reaches the kernel or starts a process goes
//! through [`Sys`], so apply, rollback and remove, and the order of their steps, can be tested
//! without root against a recording fake (the crate's unit tests), while [`Host`] does the
//! real thing. The seam sits where the kernel answers: entering a namespace, the xtables
//! programs (started, then collected, so several can run at once), the nf_tables calls of
//! `meshcap-nft`, and one TPROXY routing item at a time. What to do with the answers (which
//! flavour, what changed, what to undo) stays above it, in `iptables.rs`, `nftables.rs` and
//! `routes.rs`, and is what the fake-driven tests exercise.

use std::ffi::OsString;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use meshcap_model::rules::{Family, Ruleset};
use meshcap_nft::replay::Template;
use meshcap_nft::xtables::{Created, PrefixRemoval, Removed, TableShape};
use meshcap_nft::{InstalledTable, NftError};

use crate::exec;
use crate::netns::PodNetns;
use crate::routes::Item;
use crate::rtnl::Rtnl;
use crate::DataplaneError;

/// One program to run: argv (never a shell), extra environment, optional stdin.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(&'static str, OsString)],
    pub stdin: Option<&'a str>,
    /// Only labels errors: the child runs in the calling thread's namespace.
    pub netns: &'a Path,
}

/// A program [`Sys::start`] started; [`Started::finish`] waits for it.
pub struct Started(StartedInner);

enum StartedInner {
    Child(exec::Running),
    Done(Result<String, DataplaneError>),
}

impl Started {
    /// A program that already ended with this stdout or error (what a fake returns).
    pub fn finished(result: Result<String, DataplaneError>) -> Started {
        Started(StartedInner::Done(result))
    }

    /// Waits for the program; its stdout, or why it failed.
    pub fn finish(self) -> Result<String, DataplaneError> {
        match self.0 {
            StartedInner::Child(running) => running.finish(),
            StartedInner::Done(result) => result,
        }
    }
}

/// A program [`Sys::spawn`] started with its stdin still open; [`Spawned::feed`] gives it its
/// input. On a [`Host`] the process runs from the spawn on (its exec and dynamic loading
/// overlap whatever the caller waits for meanwhile); elsewhere it starts when fed.
pub struct Spawned(SpawnedInner);

enum SpawnedInner {
    Child(exec::Running),
    Later {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(&'static str, OsString)>,
        netns: PathBuf,
    },
}

impl Spawned {
    /// A program to start only when fed (what [`Sys::spawn`] does unless overridden).
    pub fn later(run: &Invocation<'_>) -> Spawned {
        Spawned(SpawnedInner::Later {
            program: run.program.to_owned(),
            args: run.args.iter().map(|a| a.to_string()).collect(),
            env: run.env.to_vec(),
            netns: run.netns.to_owned(),
        })
    }

    /// Writes `input` to the program's stdin and closes it.
    pub fn feed(self, sys: &dyn Sys, input: &str) -> Result<Started, DataplaneError> {
        match self.0 {
            SpawnedInner::Child(mut running) => {
                running.feed(input)?;
                Ok(Started(StartedInner::Child(running)))
            }
            SpawnedInner::Later {
                program,
                args,
                env,
                netns,
            } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sys.start(&Invocation {
                    program: &program,
                    args: &args,
                    env: &env,
                    stdin: Some(input),
                    netns: &netns,
                })
            }
        }
    }

    /// Never to be fed: closes its stdin (a restore then has nothing to do) and waits.
    pub fn abandon(self) {
        if let SpawnedInner::Child(running) = self.0 {
            let _ = running.finish();
        }
    }
}

/// The TPROXY routing items of one namespace (rtnetlink on a [`Host`]).
pub trait Routes {
    /// The `candidates` that exist now, in their order.
    fn present(&mut self, candidates: &[Item]) -> Result<Vec<Item>, DataplaneError>;
    /// Adds `item`; `Ok(false)` when it was already there.
    fn add(&mut self, item: Item) -> Result<bool, DataplaneError>;
    /// Deletes `item`; `Ok(false)` when it was not there.
    fn del(&mut self, item: Item) -> Result<bool, DataplaneError>;
    /// Every IPv6 address of every interface, tentative ones included.
    fn ipv6_addresses(&mut self) -> Result<Vec<Ipv6Addr>, DataplaneError>;
}

/// What the dataplane asks of the kernel and of the xtables programs. Every method but
/// [`Sys::enter`] and [`Sys::find_program`] works in the calling thread's namespace, so it is
/// called from inside [`Sys::enter`].
pub trait Sys: fmt::Debug + Send + Sync {
    /// Runs `f` once, on the calling thread, inside `ns`, and returns the thread to its own
    /// namespace afterwards.
    fn enter(&self, ns: &PodNetns, f: &mut dyn FnMut()) -> Result<(), DataplaneError>;

    /// The first executable called `name` in `search`.
    fn find_program(&self, search: &[PathBuf], name: &str) -> Option<PathBuf>;
    /// Whether any legacy (setsockopt) xtables table of `family` may exist.
    fn legacy_tables_present(&self, family: Family) -> bool;
    /// Starts a program and feeds it its stdin.
    fn start(&self, run: &Invocation<'_>) -> Result<Started, DataplaneError>;

    /// Starts a program whose stdin [`Spawned::feed`] writes later (by default it starts only
    /// then, through [`Sys::start`]).
    fn spawn(&self, run: &Invocation<'_>) -> Result<Spawned, DataplaneError> {
        Ok(Spawned::later(run))
    }

    /// `meshcap_nft::xtables::shapes`: the nf_tables tables iptables-nft keeps.
    fn xtables_shapes(&self, family: Family, names: &[&str]) -> Result<Vec<TableShape>, NftError>;
    /// `meshcap_nft::xtables::shapes_of`: [`Sys::xtables_shapes`] of several families at once
    /// (by default one call each; without `rule_counts` the counts may be 0).
    fn xtables_shapes_of(
        &self,
        families: &[Family],
        names: &[&str],
        rule_counts: bool,
    ) -> Result<Vec<(Family, Vec<TableShape>)>, NftError> {
        let _ = rule_counts;
        families
            .iter()
            .map(|f| Ok((*f, self.xtables_shapes(*f, names)?)))
            .collect()
    }
    /// `meshcap_nft::xtables::remove_prefixed`: one transaction over both families.
    fn xtables_remove_prefixed(
        &self,
        families: &[Family],
        names: &[&str],
        prefix: &str,
        created: &[Created<'_>],
    ) -> Result<PrefixRemoval, NftError>;
    /// `meshcap_nft::xtables::remove_if_unused`.
    fn xtables_remove_if_unused(
        &self,
        family: Family,
        table: &str,
        chains: &[String],
        with_table: bool,
    ) -> Result<Removed, NftError>;

    /// `meshcap_nft::replay::capture`: what a restore wrote into `tables`, as a template. By
    /// default none, and every apply runs its restores.
    fn xtables_capture(
        &self,
        family: Family,
        tables: &[&str],
    ) -> Result<Option<Template>, NftError> {
        let _ = (family, tables);
        Ok(None)
    }
    /// `meshcap_nft::replay::replay`: every template in one transaction.
    fn xtables_replay(&self, templates: &[&Template]) -> Result<(), NftError> {
        let _ = templates;
        Err(NftError::Malformed {
            op: "write xtables rules",
            detail: "no templates on this system".into(),
        })
    }
    /// Whether `template`, replayed into a scratch namespace of its own, reads back as
    /// itself: the check a captured template passes once before it is stored.
    fn xtables_template_holds(
        &self,
        template: &Template,
        tables: &[&str],
    ) -> Result<bool, NftError> {
        let _ = (template, tables);
        Ok(false)
    }

    /// `meshcap_nft::replace`: one transaction for every family given.
    fn nft_replace(&self, rulesets: &[Ruleset]) -> Result<(), NftError>;
    /// `meshcap_nft::delete`.
    fn nft_delete(&self, families: &[Family]) -> Result<(), NftError>;
    /// `meshcap_nft::verify`: [`NftError::Drift`] lists the differences.
    fn nft_verify(&self, rulesets: &[Ruleset]) -> Result<(), NftError>;
    /// `meshcap_nft::list`.
    fn nft_list(&self, family: Family) -> Result<Option<InstalledTable>, NftError>;
    /// `meshcap_nft::probe`.
    fn nft_probe(&self) -> Result<(), NftError>;

    /// The TPROXY routing of the namespace the calling thread is in (`netns` labels errors).
    fn routes(&self, netns: &Path) -> Result<Box<dyn Routes + '_>, DataplaneError>;
}

/// The real system: `setns(2)`, processes, netlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

impl Sys for Host {
    fn enter(&self, ns: &PodNetns, f: &mut dyn FnMut()) -> Result<(), DataplaneError> {
        ns.run(f)
    }

    fn find_program(&self, search: &[PathBuf], name: &str) -> Option<PathBuf> {
        exec::find_program(search, name)
    }

    /// The kernel lists them in `/proc/<tid>/net/ip_tables_names` (`ip6_tables_names`); the
    /// file is absent without the module and empty while no table was ever used in the
    /// namespace. That is all `iptables-legacy-save` would find, without spawning it: in the
    /// common case (no legacy rules) an ADD spawns only the nft-flavour save and restore.
    /// Anything unreadable counts as "maybe", which falls back to asking `*-legacy-save`.
    fn legacy_tables_present(&self, family: Family) -> bool {
        let file = match family {
            Family::V4 => "/proc/thread-self/net/ip_tables_names",
            Family::V6 => "/proc/thread-self/net/ip6_tables_names",
        };
        match std::fs::read_to_string(file) {
            Ok(names) => !names.trim().is_empty(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => true,
        }
    }

    fn start(&self, run: &Invocation<'_>) -> Result<Started, DataplaneError> {
        exec::start(run.program, run.args, run.env, run.stdin, run.netns)
            .map(|r| Started(StartedInner::Child(r)))
    }

    fn spawn(&self, run: &Invocation<'_>) -> Result<Spawned, DataplaneError> {
        exec::spawn(run.program, run.args, run.env, true, run.netns)
            .map(|r| Spawned(SpawnedInner::Child(r)))
    }

    fn xtables_shapes(&self, family: Family, names: &[&str]) -> Result<Vec<TableShape>, NftError> {
        meshcap_nft::xtables::shapes(family, names)
    }

    fn xtables_shapes_of(
        &self,
        families: &[Family],
        names: &[&str],
        rule_counts: bool,
    ) -> Result<Vec<(Family, Vec<TableShape>)>, NftError> {
        meshcap_nft::xtables::shapes_of(families, names, rule_counts)
    }

    fn xtables_remove_prefixed(
        &self,
        families: &[Family],
        names: &[&str],
        prefix: &str,
        created: &[Created<'_>],
    ) -> Result<PrefixRemoval, NftError> {
        meshcap_nft::xtables::remove_prefixed(families, names, prefix, created)
    }

    fn xtables_remove_if_unused(
        &self,
        family: Family,
        table: &str,
        chains: &[String],
        with_table: bool,
    ) -> Result<Removed, NftError> {
        meshcap_nft::xtables::remove_if_unused(family, table, chains, with_table)
    }

    fn xtables_capture(
        &self,
        family: Family,
        tables: &[&str],
    ) -> Result<Option<Template>, NftError> {
        meshcap_nft::replay::capture(family, tables)
    }

    fn xtables_replay(&self, templates: &[&Template]) -> Result<(), NftError> {
        meshcap_nft::replay::replay(templates)
    }

    fn xtables_template_holds(
        &self,
        template: &Template,
        tables: &[&str],
    ) -> Result<bool, NftError> {
        // A thread of its own in a namespace of its own, gone when the thread ends.
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NftError::Socket {
                        op: "scratch namespace for an xtables template",
                        source: e.into(),
                    }
                })?;
                meshcap_nft::replay::replay(&[template])?;
                let back = meshcap_nft::replay::capture(template.family, tables)?;
                Ok(back.as_ref() == Some(template))
            })
            .join()
            .unwrap_or(Ok(false))
        })
    }

    fn nft_replace(&self, rulesets: &[Ruleset]) -> Result<(), NftError> {
        meshcap_nft::replace(rulesets)
    }

    fn nft_delete(&self, families: &[Family]) -> Result<(), NftError> {
        meshcap_nft::delete(families)
    }

    fn nft_verify(&self, rulesets: &[Ruleset]) -> Result<(), NftError> {
        meshcap_nft::verify(rulesets)
    }

    fn nft_list(&self, family: Family) -> Result<Option<InstalledTable>, NftError> {
        meshcap_nft::list(family)
    }

    fn nft_probe(&self) -> Result<(), NftError> {
        meshcap_nft::probe()
    }

    fn routes(&self, netns: &Path) -> Result<Box<dyn Routes + '_>, DataplaneError> {
        Ok(Box::new(Rtnl::open(netns)?))
    }
}

/// Runs `f` inside `ns` through `sys` and returns what it returned.
pub(crate) fn run_in<T>(
    sys: &dyn Sys,
    ns: &PodNetns,
    f: impl FnOnce() -> T,
) -> Result<T, DataplaneError> {
    let mut f = Some(f);
    let mut out = None;
    sys.enter(ns, &mut || out = f.take().map(|f| f()))?;
    Ok(out.expect("Sys::enter runs its closure when it succeeds"))
}

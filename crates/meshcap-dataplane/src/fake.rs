//! A recording fake of [`Sys`] for unit tests: a small in-memory kernel (the xtables tables of
//! each family and flavour, meshcap's nftables tables, the TPROXY routing items) and a log of
//! every call that changes something or starts a program, in order. A test may make the next
//! call whose log line starts with a given prefix fail.
//!
//! The xtables programs are played by a reader of the restore format meshcap writes (`*table`,
//! `:CHAIN`, `-A`, `-D`, `-X`, `COMMIT`; each table committed at its `COMMIT`) and a writer of
//! the save format; like `iptables-nft`, a restore creates a table and each built-in chain the
//! first time it is used and never deletes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use meshcap_model::rules::{Family, Ruleset};
use meshcap_nft::xtables::{ChainShape, Created, PrefixRemoval, Removed, TableShape};
use meshcap_nft::{InstalledChain, InstalledTable, NftError};
use nix::errno::Errno;

use crate::netns::PodNetns;
use crate::routes::Item;
use crate::sys::{Invocation, Routes, Started, Sys};
use crate::DataplaneError;

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    name: String,
    rules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct XtTable {
    name: String,
    chains: Vec<Chain>,
}

impl XtTable {
    fn chain_mut(&mut self, name: &str, create_builtin: bool) -> Option<&mut Chain> {
        if create_builtin && BUILTIN.contains(&name) && !self.chains.iter().any(|c| c.name == name)
        {
            self.chains.push(Chain {
                name: name.to_owned(),
                rules: Vec::new(),
            });
        }
        self.chains.iter_mut().find(|c| c.name == name)
    }
}

/// The kernel state the fake keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kernel {
    /// xtables tables by (family, legacy flavour).
    xtables: BTreeMap<(Family, bool), Vec<XtTable>>,
    /// meshcap's nftables table of each family, as the ruleset that made it.
    nft: BTreeMap<Family, Ruleset>,
    routes: Vec<Item>,
}

#[derive(Debug, Default)]
struct State {
    kernel: Kernel,
    calls: Vec<String>,
    fail: Vec<String>,
    /// Program names the fake has "installed"; all of the nft flavour by default.
    programs: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Fake {
    state: Mutex<State>,
}

impl Default for Fake {
    fn default() -> Self {
        let programs = ["iptables", "ip6tables"]
            .iter()
            .flat_map(|b| ["save", "restore"].map(|op| format!("{b}-nft-{op}")))
            .collect();
        Fake {
            state: Mutex::new(State {
                programs,
                ..State::default()
            }),
        }
    }
}

fn family_of(program: &str) -> Family {
    if program.starts_with("ip6") {
        Family::V6
    } else {
        Family::V4
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far that changed something or ran a program, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The next call whose log line starts with `prefix` fails (logged all the same).
    pub fn fail_next(&self, prefix: &str) {
        self.state().fail.push(prefix.to_owned());
    }

    /// The whole kernel state, to compare before and after.
    pub fn kernel(&self) -> Kernel {
        let mut kernel = self.state().kernel.clone();
        kernel.xtables.retain(|_, tables| !tables.is_empty());
        kernel
    }

    /// Runs `input` as another component's `iptables-nft-restore --noflush` would, unlogged.
    pub fn restore_as_other(&self, family: Family, input: &str) {
        let mut st = self.state();
        let tables = st.kernel.xtables.entry((family, false)).or_default();
        restore(tables, input).expect("valid restore input");
    }

    /// What `iptables-save` of `family` (nft flavour) would print now.
    pub fn save_text(&self, family: Family) -> String {
        let st = self.state();
        save(
            st.kernel
                .xtables
                .get(&(family, false))
                .map_or(&[][..], |t| t),
        )
    }

    /// Logs `line`; `Err` when a test asked for it to fail.
    fn call(&self, line: String) -> Result<(), String> {
        let mut st = self.state();
        let failing = st.fail.iter().position(|p| line.starts_with(p.as_str()));
        st.calls.push(line.clone());
        match failing {
            Some(i) => {
                st.fail.remove(i);
                Err(format!("injected failure of `{line}`"))
            }
            None => Ok(()),
        }
    }
}

fn nft_error() -> NftError {
    NftError::Kernel {
        op: "fake",
        request: "injected",
        errno: Errno::EPERM,
    }
}

fn save(tables: &[XtTable]) -> String {
    let mut out = String::from("# Generated by the fake\n");
    for t in tables {
        out.push_str(&format!("*{}\n", t.name));
        for c in &t.chains {
            let policy = if BUILTIN.contains(&c.name.as_str()) {
                "ACCEPT"
            } else {
                "-"
            };
            out.push_str(&format!(":{} {policy} [0:0]\n", c.name));
        }
        for c in &t.chains {
            for r in &c.rules {
                out.push_str(r);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Applies restore `input` (`--noflush`) to `tables`, committing each table at `COMMIT`.
fn restore(tables: &mut Vec<XtTable>, input: &str) -> Result<(), String> {
    let mut current: Option<XtTable> = None;
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix('*') {
            current = Some(
                tables
                    .iter()
                    .find(|t| t.name == name)
                    .cloned()
                    .unwrap_or(XtTable {
                        name: name.to_owned(),
                        chains: Vec::new(),
                    }),
            );
            continue;
        }
        let t = current.as_mut().ok_or("a line outside of a table")?;
        if line == "COMMIT" {
            let t = current.take().expect("checked above");
            match tables.iter_mut().find(|x| x.name == t.name) {
                Some(x) => *x = t,
                None => tables.push(t),
            }
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            match t.chain_mut(name, true) {
                Some(c) if !BUILTIN.contains(&name) => c.rules.clear(),
                Some(_) => {}
                None => t.chains.push(Chain {
                    name: name.to_owned(),
                    rules: Vec::new(),
                }),
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            // The owner match takes an id range as `a:b` or `a-b`; the save prints `a-b`.
            let saved = line.replace("-owner 0:4294967294 ", "-owner 0-4294967294 ");
            t.chain_mut(chain, true)
                .ok_or(format!("no chain {chain}"))?
                .rules
                .push(saved);
        } else if let Some(rest) = line.strip_prefix("-D ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            let c = t
                .chain_mut(chain, true)
                .ok_or(format!("no chain {chain}"))?;
            let spec = format!("-A {rest}");
            let at = c
                .rules
                .iter()
                .position(|r| *r == spec)
                .ok_or(format!("no rule `{spec}`"))?;
            c.rules.remove(at);
        } else if let Some(chain) = line.strip_prefix("-X ") {
            let at = t
                .chains
                .iter()
                .position(|c| c.name == chain && !BUILTIN.contains(&chain))
                .ok_or(format!("no chain {chain} to delete"))?;
            t.chains.remove(at);
        } else {
            return Err(format!("the fake does not know `{line}`"));
        }
    }
    match current {
        Some(t) => Err(format!("table {} without COMMIT", t.name)),
        None => Ok(()),
    }
}

/// [`Sys::xtables_remove_prefixed`] on `kernel`.
fn remove_prefixed(
    kernel: &mut Kernel,
    families: &[Family],
    names: &[&str],
    prefix: &str,
    created: &[Created<'_>],
) -> PrefixRemoval {
    let mut done = PrefixRemoval::default();
    for family in families {
        let Some(tables) = kernel.xtables.get_mut(&(*family, false)) else {
            continue;
        };
        for t in tables
            .iter_mut()
            .filter(|t| names.contains(&t.name.as_str()))
        {
            let before = t.chains.len();
            t.chains.retain(|c| !c.name.starts_with(prefix));
            done.chains += before - t.chains.len();
            for c in &mut t.chains {
                let n = c.rules.len();
                c.rules.retain(|r| {
                    !r.split_whitespace()
                        .skip_while(|w| *w != "-j")
                        .nth(1)
                        .is_some_and(|target| target.starts_with(prefix))
                });
                done.jumps += n - c.rules.len();
            }
        }
        for c in created.iter().filter(|c| c.family == *family) {
            let Some(t) = tables.iter_mut().find(|t| t.name == c.table) else {
                continue;
            };
            t.chains.retain(|ch| {
                let gone = c.chains.contains(&ch.name) && ch.rules.is_empty();
                if gone {
                    done.created
                        .push(format!("chain {} of {}", ch.name, c.table));
                } else if c.chains.contains(&ch.name) {
                    done.kept.push(format!("chain {} holds rules", ch.name));
                }
                !gone
            });
            if c.whole_table {
                if t.chains.is_empty() {
                    done.created.push(format!("table {}", c.table));
                } else {
                    done.kept.push(format!("table {} holds chains", c.table));
                }
            }
        }
        tables.retain(|t| {
            !(t.chains.is_empty()
                && created
                    .iter()
                    .any(|c| c.family == *family && c.table == t.name && c.whole_table))
        });
    }
    done
}

impl Sys for Fake {
    fn enter(&self, ns: &PodNetns, f: &mut dyn FnMut()) -> Result<(), DataplaneError> {
        self.call(format!("enter {}", ns.path().display()))
            .map_err(|e| DataplaneError::Netns {
                op: "setns into",
                path: ns.path().to_owned(),
                source: std::io::Error::other(e),
            })?;
        f();
        Ok(())
    }

    fn find_program(&self, search: &[PathBuf], name: &str) -> Option<PathBuf> {
        let installed = self.state().programs.iter().any(|p| p == name);
        installed.then(|| search.first().map_or_else(|| name.into(), |d| d.join(name)))
    }

    fn legacy_tables_present(&self, family: Family) -> bool {
        self.state()
            .kernel
            .xtables
            .get(&(family, true))
            .is_some_and(|t| !t.is_empty())
    }

    fn start(&self, run: &Invocation<'_>) -> Result<Started, DataplaneError> {
        let program = run
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut line = program.clone();
        for a in run.args {
            line.push(' ');
            line.push_str(a);
        }
        let failed = |stderr: String| DataplaneError::Command {
            binary: run.program.to_owned(),
            args: run.args.iter().map(|a| a.to_string()).collect(),
            netns: run.netns.to_owned(),
            status: "exit status: 1".into(),
            stderr,
        };
        if let Err(e) = self.call(format!("run {line}")) {
            return Ok(Started::finished(Err(failed(e))));
        }
        let key = (family_of(&program), program.contains("-legacy"));
        let mut st = self.state();
        let tables = st.kernel.xtables.entry(key).or_default();
        let result = if program.ends_with("-save") {
            Ok(save(tables))
        } else {
            // All or nothing per table, as xtables-restore commits at each COMMIT.
            restore(tables, run.stdin.unwrap_or_default())
                .map(|()| String::new())
                .map_err(failed)
        };
        Ok(Started::finished(result))
    }

    fn xtables_shapes(&self, family: Family, names: &[&str]) -> Result<Vec<TableShape>, NftError> {
        let st = self.state();
        let tables = st.kernel.xtables.get(&(family, false));
        Ok(names
            .iter()
            .filter_map(|n| tables?.iter().find(|t| t.name == *n))
            .map(|t| TableShape {
                name: t.name.clone(),
                chains: t
                    .chains
                    .iter()
                    .map(|c| ChainShape {
                        name: c.name.clone(),
                        base: BUILTIN.contains(&c.name.as_str()),
                        rules: c.rules.len(),
                    })
                    .collect(),
            })
            .collect())
    }

    fn xtables_remove_if_unused(
        &self,
        family: Family,
        table: &str,
        chains: &[String],
        with_table: bool,
    ) -> Result<Removed, NftError> {
        self.call(format!(
            "xtables remove {} {table} {} table={with_table}",
            family_name(family),
            chains.join(",")
        ))
        .map_err(|_| nft_error())?;
        let mut st = self.state();
        let tables = st.kernel.xtables.entry((family, false)).or_default();
        let Some(t) = tables.iter_mut().find(|t| t.name == table) else {
            return Ok(Removed::default());
        };
        let mut removed = Removed::default();
        t.chains.retain(|c| {
            let gone = chains.contains(&c.name) && c.rules.is_empty();
            if gone {
                removed.chains.push(c.name.clone());
            } else if chains.contains(&c.name) {
                removed.kept.push(format!("chain {} holds rules", c.name));
            }
            !gone
        });
        if with_table {
            if t.chains.is_empty() {
                removed.table = true;
                tables.retain(|t| t.name != table);
            } else {
                removed.kept.push(format!("table {table} holds chains"));
            }
        }
        Ok(removed)
    }

    /// As the kernel does it: all or nothing, the jumps to `prefix` chains and those chains,
    /// then what `created` lists once nothing but those was in it; a transaction with nothing
    /// in it is not sent, so not logged.
    fn xtables_remove_prefixed(
        &self,
        families: &[Family],
        names: &[&str],
        prefix: &str,
        created: &[Created<'_>],
    ) -> Result<PrefixRemoval, NftError> {
        let mut kernel = self.state().kernel.clone();
        let done = remove_prefixed(&mut kernel, families, names, prefix, created);
        if kernel == self.state().kernel {
            return Ok(done);
        }
        let fams: Vec<&str> = families.iter().map(|f| family_name(*f)).collect();
        self.call(format!(
            "xtables remove-prefixed {} {prefix}",
            fams.join(",")
        ))
        .map_err(|_| nft_error())?;
        self.state().kernel = kernel;
        Ok(done)
    }

    fn nft_replace(&self, rulesets: &[Ruleset]) -> Result<(), NftError> {
        let families: Vec<&str> = rulesets.iter().map(|r| family_name(r.family)).collect();
        self.call(format!("nft replace {}", families.join(",")))
            .map_err(|_| nft_error())?;
        let mut st = self.state();
        for rs in rulesets {
            if rs.tables.is_empty() {
                st.kernel.nft.remove(&rs.family);
            } else {
                st.kernel.nft.insert(rs.family, rs.clone());
            }
        }
        Ok(())
    }

    fn nft_delete(&self, families: &[Family]) -> Result<(), NftError> {
        let names: Vec<&str> = families.iter().map(|f| family_name(*f)).collect();
        self.call(format!("nft delete {}", names.join(",")))
            .map_err(|_| nft_error())?;
        let mut st = self.state();
        for f in families {
            st.kernel.nft.remove(f);
        }
        Ok(())
    }

    fn nft_verify(&self, rulesets: &[Ruleset]) -> Result<(), NftError> {
        let st = self.state();
        let differences: Vec<String> = rulesets
            .iter()
            .filter(|rs| {
                let want = (!rs.tables.is_empty()).then_some(*rs);
                want != st.kernel.nft.get(&rs.family)
            })
            .map(|rs| format!("{} table differs", family_name(rs.family)))
            .collect();
        if differences.is_empty() {
            Ok(())
        } else {
            Err(NftError::Drift { differences })
        }
    }

    fn nft_list(&self, family: Family) -> Result<Option<InstalledTable>, NftError> {
        Ok(self
            .state()
            .kernel
            .nft
            .get(&family)
            .map(|rs| InstalledTable {
                family,
                comment: Some(meshcap_model::rules::format_marker()),
                chains: rs
                    .tables
                    .iter()
                    .flat_map(|t| &t.chains)
                    .map(|c| InstalledChain {
                        name: c.name.clone(),
                        hook: None,
                        rules: Vec::new(),
                    })
                    .collect(),
            }))
    }

    fn nft_probe(&self) -> Result<(), NftError> {
        Ok(())
    }

    fn routes(&self, _netns: &Path) -> Result<Box<dyn Routes + '_>, DataplaneError> {
        Ok(Box::new(FakeRoutes(self)))
    }
}

/// The fake's TPROXY routing, borrowed for one namespace operation.
struct FakeRoutes<'a>(&'a Fake);

impl FakeRoutes<'_> {
    fn error(item: Item, e: String) -> DataplaneError {
        DataplaneError::Netlink {
            op: format!("{item}"),
            netns: PathBuf::from("fake"),
            source: std::io::Error::other(e),
        }
    }
}

impl Routes for FakeRoutes<'_> {
    fn present(&mut self, candidates: &[Item]) -> Result<Vec<Item>, DataplaneError> {
        let routes = &self.0.state().kernel.routes;
        Ok(candidates
            .iter()
            .copied()
            .filter(|item| routes.contains(item))
            .collect())
    }

    fn add(&mut self, item: Item) -> Result<bool, DataplaneError> {
        self.0
            .call(format!("route add {item}"))
            .map_err(|e| Self::error(item, e))?;
        let mut st = self.0.state();
        if st.kernel.routes.contains(&item) {
            return Ok(false);
        }
        st.kernel.routes.push(item);
        Ok(true)
    }

    fn del(&mut self, item: Item) -> Result<bool, DataplaneError> {
        self.0
            .call(format!("route del {item}"))
            .map_err(|e| Self::error(item, e))?;
        let mut st = self.0.state();
        let before = st.kernel.routes.len();
        st.kernel.routes.retain(|i| *i != item);
        Ok(st.kernel.routes.len() != before)
    }

    /// The fake namespace has only `lo`: `::1`, and `::6` once added.
    fn ipv6_addresses(&mut self) -> Result<Vec<std::net::Ipv6Addr>, DataplaneError> {
        let routes = &self.0.state().kernel.routes;
        let mut out = vec![std::net::Ipv6Addr::LOCALHOST];
        if routes.contains(&Item::PassthroughV6) {
            out.push(crate::routes::PASSTHROUGH_V6);
        }
        Ok(out)
    }
}

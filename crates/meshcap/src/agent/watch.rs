//! Config watch: keep meshcap's entry last in the node's primary CNI config.
//!
//! Primary CNI daemons (flannel, Calico, Cilium install jobs, cloud node bootstrap) rewrite
//! their conflist on restart or upgrade, dropping entries they do not know; pods started after
//! that would run without capture. Polling (default every second) is enough for a file that
//! changes a few times a day, needs no inotify plumbing, and survives the directory itself
//! being replaced.
//!
//! Which entry goes back: the one the last `meshcap install` recorded
//! ([`install::ENTRY_FILE`], read on every poll, so new install flags win). Learning it from
//! the conflist alone is racy: a component rewriting the file in a loop can replace it between
//! install's write and the agent's first read, and the agent would never see the entry. Without
//! a recorded entry (an install by an older release), the agent remembers the entry whenever
//! the primary config holds one. Either way it writes exactly that entry back, last in the chain, with
//! `install`'s own code ([`crate::install::ensure_entry`]): same file choice, same
//! `.conf` -> `.conflist` conversion, same permissions, atomic rename.
//!
//! Intent: `meshcap uninstall` removes the entry and then the plugin binary, and the agent
//! must not undo it. It restores only while `<cni-bin-dir>/meshcap-cni` exists and no
//! uninstall is under way (`uninstall` keeps a marker file in the config dir while it waits
//! for the runtime to drop the plugin before removing the binary), and only after the entry
//! was missing on two consecutive polls. An agent started when the entry is already missing has nothing to restore: it
//! says so once, and guards the entry from the next `meshcap install` on.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::metrics::Metrics;
use crate::install::{self, PLUGIN_TYPE};

pub struct Watcher {
    conf_dir: PathBuf,
    plugin_binary: PathBuf,
    /// meshcap's entry as last seen in the primary config.
    entry: Option<Value>,
    /// The entry was missing on the previous poll.
    missing_before: bool,
    /// Why nothing could be done, as last logged (logged again only when it changes).
    last_note: Option<String>,
}

/// Where meshcap's entry is in the primary config.
#[derive(Debug, PartialEq)]
enum Placement {
    /// Exactly one entry, last in the chain.
    InPlace,
    /// Missing, not last, or more than one.
    Displaced,
}

impl Watcher {
    pub fn new(conf_dir: &Path, bin_dir: &Path) -> Watcher {
        Watcher {
            conf_dir: conf_dir.to_owned(),
            plugin_binary: bin_dir.join(PLUGIN_TYPE),
            entry: None,
            missing_before: false,
            last_note: None,
        }
    }

    fn note(&mut self, why: String) {
        if self.last_note.as_deref() != Some(why.as_str()) {
            tracing::warn!(cni_conf_dir = %self.conf_dir.display(), "{why}");
            self.last_note = Some(why);
        }
    }

    /// One poll.
    pub fn tick(&mut self, metrics: &Metrics) {
        let primary = match install::primary_config(&self.conf_dir) {
            Ok(p) => p,
            Err(e) => {
                // The primary CNI may not have written its config yet.
                return self.note(format!("no primary CNI config to guard: {e:#}"));
            }
        };
        let conf: Map<String, Value> = match fs::read(&primary)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
        {
            Ok(c) => c,
            // A writer that does not rename atomically; the next poll sees the whole file.
            Err(e) => {
                return tracing::debug!(file = %primary.display(), error = %e, "unreadable config")
            }
        };
        let (found, placement) = inspect(&conf, install::is_list(&primary));
        if let Some(entry) = install::recorded_entry(&self.conf_dir).or(found) {
            if self.entry.as_ref() != Some(&entry) {
                tracing::info!(file = %primary.display(), "guarding meshcap's CNI chain entry");
                self.entry = Some(entry);
                self.last_note = None;
            }
        }
        if placement == Placement::InPlace {
            self.missing_before = false;
            return;
        }
        if !std::mem::replace(&mut self.missing_before, true) {
            return; // Confirm on the next poll (see the module docs on uninstall).
        }
        let Some(entry) = self.entry.clone() else {
            return self.note(format!(
                "meshcap is not last in the chain of {} and this agent never saw its entry; run `meshcap install`",
                primary.display()
            ));
        };
        // Held to the last write: an uninstall cannot start between this look and the restore.
        let locked = match install::lock_if_installed(&self.conf_dir) {
            Ok(locked) => locked,
            Err(e) => return self.note(format!("{e:#}")),
        };
        if locked.is_none() || !self.plugin_binary.exists() {
            return self.note(format!(
                "meshcap's entry is not in {} and meshcap is uninstalled ({} or {} absent) or being uninstalled: not restoring",
                primary.display(),
                self.plugin_binary.display(),
                self.conf_dir.join(install::ENTRY_FILE).display()
            ));
        }
        match install::ensure_entry(&self.conf_dir, &entry) {
            Ok((file, true)) => {
                metrics.config_rewrite_seen();
                self.missing_before = false;
                self.last_note = None;
                tracing::warn!(
                    file = %file.display(),
                    "another component rewrote the CNI config without meshcap last in the chain; put meshcap's entry back"
                );
            }
            Ok((_, false)) => self.missing_before = false,
            Err(e) => {
                metrics.config_restore_failed();
                tracing::warn!(
                    error = format!("{e:#}"),
                    "putting meshcap's CNI entry back failed; retrying"
                );
            }
        }
    }
}

/// Readiness (`/readyz`): the plugin binary is in `bin_dir` and meshcap is last in the
/// chain of the primary config of `conf_dir`. `Err` names what is missing.
pub fn readiness(conf_dir: &Path, bin_dir: &Path) -> Result<(), String> {
    let binary = bin_dir.join(PLUGIN_TYPE);
    if !binary.is_file() {
        return Err(format!("{} is not installed", binary.display()));
    }
    let primary = install::primary_config(conf_dir).map_err(|e| format!("{e:#}"))?;
    let conf: Map<String, Value> = fs::read(&primary)
        .map_err(anyhow::Error::from)
        .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
        .map_err(|e| format!("reading {}: {e:#}", primary.display()))?;
    match inspect(&conf, install::is_list(&primary)) {
        (_, Placement::InPlace) => Ok(()),
        _ => Err(format!(
            "meshcap-cni is not last in the chain of {}",
            primary.display()
        )),
    }
}

/// meshcap's entry (the last one, if several) and whether it sits where install puts it.
fn inspect(conf: &Map<String, Value>, list: bool) -> (Option<Value>, Placement) {
    if !list {
        // A single-plugin .conf never holds meshcap (install makes it a .conflist).
        let own = install::is_meshcap(&Value::Object(conf.clone()));
        return (
            None,
            if own {
                Placement::InPlace
            } else {
                Placement::Displaced
            },
        );
    }
    let plugins = conf
        .get("plugins")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let ours: Vec<&Value> = plugins.iter().filter(|p| install::is_meshcap(p)).collect();
    let placement = if ours.len() == 1 && plugins.last().is_some_and(install::is_meshcap) {
        Placement::InPlace
    } else {
        Placement::Displaced
    };
    (ours.last().map(|v| (*v).clone()), placement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placement() {
        let entry = json!({"type": PLUGIN_TYPE, "mode": "nftables"});
        let conf = |plugins: Value| {
            json!({"name": "n", "plugins": plugins})
                .as_object()
                .unwrap()
                .clone()
        };
        let (found, p) = inspect(&conf(json!([{"type": "flannel"}, entry.clone()])), true);
        assert_eq!((found, p), (Some(entry.clone()), Placement::InPlace));
        let (found, p) = inspect(&conf(json!([entry.clone(), {"type": "portmap"}])), true);
        assert_eq!((found, p), (Some(entry.clone()), Placement::Displaced));
        let (found, p) = inspect(&conf(json!([{"type": "flannel"}])), true);
        assert_eq!((found, p), (None, Placement::Displaced));
        let (_, p) = inspect(&conf(json!([entry.clone(), entry.clone()])), true);
        assert_eq!(p, Placement::Displaced);
    }
}

//! Adoption: install the capture of pods whose sandbox was set up before meshcap was chained
//! into the node's CNI config (`meshcap install` on a node that already runs pods).
//!
//! Such a pod has no attachment record, so [`super::repair`] never sees it. The runtime's own
//! bookkeeping does: containerd, CRI-O and podman's CNI backend all run CNI through libcni,
//! which after a successful ADD of a network list writes
//! `<cache dir>/results/<network>-<container id>-<ifname>` (`cniCacheV1`, Go libcni's
//! `cachedInfo`): the conflist bytes the ADD used, `CNI_ARGS`, the capability args, the final
//! result and, from libcni 1.2 on, the netns path. An attachment is adopted when all hold:
//!
//! 1. the cached conflist has no meshcap-cni entry: the pod was set up by a chain without
//!    meshcap. A pod ADDed with meshcap never qualifies, not even while its DEL runs (DEL
//!    removes the record before libcni removes the cache file), so adoption never races the
//!    teardown of a meshed pod;
//! 2. the network's current conflist in `--cni-conf-dir` (same `name`) has a meshcap-cni entry;
//! 3. there is no attachment record for it;
//! 4. its netns (the cache's `netns`; older libcni, e.g. podman 4's, has none, and then the
//!    result's container interface `sandbox`, which the primary plugin sets to the netns path)
//!    is a network namespace other than the agent's own, and the cache file was written since
//!    the last boot (`/var/lib/cni` survives reboots; a stale entry may name a recycled path).
//!
//! Adopting runs the installed `<cni-bin-dir>/meshcap-cni` exactly as the runtime would have,
//! as the chain's last plugin: `CNI_COMMAND=ADD` with the cached container id, netns, ifname
//! and `CNI_ARGS`; on stdin meshcap's entry with the list's `name` and `cniVersion`, the
//! `runtimeConfig` libcni derives from the cached capability args and the entry's
//! `capabilities`, and the cached result as `prevResult`. One code path: the plugin decides
//! selection (runtime annotations or the Kubernetes API), applies the rules and writes its
//! record, and from then on repair treats the pod like any other. (The agent is long-running:
//! spawning here costs nothing that matters; the plugin's hot path is where meshcap avoids
//! it.) The plugin gets `MESHCAP_STATE_DIR` = the agent's `--state-dir`, so its record lands
//! where repair looks.
//!
//! Teardown: containerd tears a pod down with the current conflist, so meshcap's DEL runs as
//! for any pod. podman and CRI-O (ocicni) tear down with the config libcni cached at ADD
//! (`GetNetworkListCachedConfig`), the chain without meshcap, so the runtime never calls
//! meshcap for an adopted pod. The agent covers both: when the cache file of a pod that has a
//! record disappears (the runtime's DEL finished) and that record, as the agent saw it, is
//! still there, it runs the plugin's DEL itself, entering the namespace only while it is
//! still the one ADD recorded (else with an empty `CNI_NETNS`: the rules went with it). The
//! same check right after an adoption covers an adoption that raced a teardown.
//!
//! Bookkeeping, in memory: each cache file is evaluated once per version (mtime, size, inode),
//! except while it waits (for meshcap in the network's conflist, or to retry a failed ADD).
//! A pod that selection skips gets no record and is not exec'd again; an agent restart runs
//! its ADD once more, which is harmless (ADD is idempotent).
//!
//! Safety: cache entries are read without following symlinks and only when at most
//! `MAX_CACHE_FILE` bytes; an unreadable or unparseable entry is logged once and skipped;
//! ids from the cache are validated as the plugin validates them before they name a file;
//! nothing runs a shell.
//!
//! The code: [`cache`] reads the runtime's cache files, [`invoke`] runs the plugin as the
//! runtime would have, and this module decides, per cache file and scan, what to do.

mod cache;
mod invoke;
#[cfg(test)]
mod testdata;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use meshcap_cni_runtime::cache::{CacheEntry, RESULTS_DIR};
use meshcap_dataplane::{DataplaneError, PodNetns};
use meshcap_records::{AttachmentRecord, StateDir};

use super::metrics::Metrics;
use crate::install::PLUGIN_TYPE;
use cache::{pod_name, Stamp};
use invoke::{chained, load_networks, plugin_stdin, Network, Plugin};

/// Where one cache file (one version of it) stands.
#[derive(Debug)]
enum Seen {
    /// Nothing to do: set up with meshcap, not a cniCacheV1 entry, or not adoptable (why is
    /// logged when decided).
    Ignored,
    /// Not adopted yet; evaluated again every scan. `why` is logged when it changes.
    Waiting { entry: Box<CacheEntry>, why: String },
    /// The plugin ran and its selection left the pod alone (no record).
    Skipped,
    /// Has a record (adopted now or by an earlier agent): watched for a teardown that missed it.
    Meshed {
        entry: Box<CacheEntry>,
        record: RecordId,
    },
}

/// Which ADD wrote a record: a later ADD of the same container (a restart) writes another one,
/// which a DEL for the earlier attachment must not remove.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordId {
    netns: PathBuf,
    added_at_unix: u64,
}

impl RecordId {
    fn of(record: &AttachmentRecord) -> RecordId {
        RecordId {
            netns: record.netns.clone(),
            added_at_unix: record.added_at_unix,
        }
    }
}

pub struct Adopter {
    results: PathBuf,
    conf_dir: PathBuf,
    plugin: Plugin,
    state: StateDir,
    /// Cache files older than this describe sandboxes of an earlier boot.
    booted: Option<SystemTime>,
    /// The agent's own netns (the host's, in the DaemonSet): never adopted.
    own_netns: Option<(u64, u64)>,
    seen: HashMap<OsString, (Stamp, Seen)>,
    /// Why the cache dir cannot be read, as last logged.
    dir_note: Option<String>,
}

/// What evaluating one cache file came to.
enum Verdict {
    Adopted {
        record: RecordId,
        mode: &'static str,
    },
    Skipped,
    Failed(String),
}

impl Adopter {
    pub fn new(cache_dir: &Path, conf_dir: &Path, bin_dir: &Path, state_root: &Path) -> Adopter {
        Adopter {
            results: cache_dir.join(RESULTS_DIR),
            conf_dir: conf_dir.to_owned(),
            plugin: Plugin {
                path: bin_dir.join(PLUGIN_TYPE),
                bin_dir: bin_dir.to_owned(),
                state_root: state_root.to_owned(),
            },
            state: StateDir::new(state_root),
            booted: cache::boot_time(),
            own_netns: PodNetns::open(Path::new("/proc/self/ns/net"))
                .ok()
                .map(|ns| (ns.dev(), ns.ino())),
            seen: HashMap::new(),
            dir_note: None,
        }
    }

    /// One pass over libcni's results cache.
    pub fn scan(&mut self, metrics: &Metrics) {
        let names = match fs::read_dir(&self.results) {
            Ok(dir) => {
                self.dir_note = None;
                dir.flatten().map(|e| e.file_name()).collect::<Vec<_>>()
            }
            Err(e) => {
                let note = format!("cannot read the CNI results cache: {e}");
                if self.dir_note.as_ref() != Some(&note) {
                    // Normal on a node that has not started a pod yet.
                    tracing::info!(dir = %self.results.display(), "{note}; adopting nothing");
                    self.dir_note = Some(note);
                }
                return;
            }
        };
        let mut networks = None;
        let mut present = HashSet::new();
        for name in names {
            let path = self.results.join(&name);
            present.insert(name.clone());
            // lstat: a symlink (or anything but a regular file) is never followed.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue; // Removed since the listing.
            };
            let stamp = Stamp::of(&meta);
            let next = match self.seen.remove(&name) {
                Some((s, Seen::Waiting { entry, why })) if s == stamp => {
                    Some(self.evaluate(&path, entry, Some(why), &mut networks, metrics))
                }
                Some((s, seen)) if s == stamp => Some(seen),
                _ => match cache::read(&path, &meta, self.booted) {
                    None => None,
                    Some(None) => Some(Seen::Ignored),
                    Some(Some(entry)) => {
                        Some(self.evaluate(&path, Box::new(entry), None, &mut networks, metrics))
                    }
                },
            };
            if let Some(next) = next {
                self.seen.insert(name, (stamp, next));
            }
        }
        // Cache files gone since the last scan: the runtime's DEL of those pods finished.
        let gone: Vec<OsString> = self
            .seen
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            let Some((stamp, seen)) = self.seen.remove(&name) else {
                continue;
            };
            if let Seen::Meshed { entry, record } = &seen {
                let networks = networks.get_or_insert_with(|| self.networks());
                if !self.release_if_recorded(entry, record, networks) {
                    // Retried next scan.
                    self.seen.insert(name, (stamp, seen));
                }
            }
        }
    }

    /// Checks conditions 2 to 4 (module docs) and adopts when they hold.
    fn evaluate(
        &self,
        path: &Path,
        entry: Box<CacheEntry>,
        last_why: Option<String>,
        networks: &mut Option<BTreeMap<String, Network>>,
        metrics: &Metrics,
    ) -> Seen {
        let wait = |entry: Box<CacheEntry>, why: String| {
            if last_why.as_ref() != Some(&why) {
                tracing::debug!(file = %path.display(), %why, "not adopting yet");
            }
            Seen::Waiting { entry, why }
        };
        let networks: &BTreeMap<String, Network> = networks.get_or_insert_with(|| self.networks());
        let Some((network, plugin_entry)) = chained(networks, &entry.network) else {
            let why = format!(
                "network {:?} has no meshcap-cni entry in {}",
                entry.network,
                self.conf_dir.display()
            );
            return wait(entry, why);
        };
        match self
            .state
            .read(&entry.network, &entry.container_id, &entry.if_name)
        {
            Ok(None) => {}
            Ok(Some(record)) => {
                let record = RecordId::of(&record);
                return Seen::Meshed { entry, record };
            }
            Err(e) => return wait(entry, format!("its attachment record is unreadable: {e}")),
        }
        let Some(netns) = entry.netns_path() else {
            tracing::warn!(file = %path.display(), "the CNI cache entry names no network namespace (neither netns nor an interface sandbox); cannot adopt this pod");
            return Seen::Ignored;
        };
        match PodNetns::open(&netns) {
            Ok(ns) if Some((ns.dev(), ns.ino())) == self.own_netns => {
                tracing::warn!(file = %path.display(), netns = %netns.display(), "the CNI cache entry names the agent's own network namespace; not adopting it");
                return Seen::Ignored;
            }
            Ok(_) => {}
            Err(DataplaneError::NetnsVanished { .. }) => {
                tracing::debug!(file = %path.display(), netns = %netns.display(), "the pod's namespace is gone; nothing to adopt");
                return Seen::Ignored;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), netns = %netns.display(), error = %e, "not adopting this pod");
                return Seen::Ignored;
            }
        }
        if !self.plugin.is_installed() {
            let why = format!("{} is not installed", self.plugin.path.display());
            return wait(entry, why);
        }

        let stdin = plugin_stdin(network, plugin_entry, &entry);
        let verdict = match self.plugin.exec("ADD", &entry, Some(&netns), &stdin) {
            Err(error) => Verdict::Failed(error),
            Ok(()) => match self
                .state
                .read(&entry.network, &entry.container_id, &entry.if_name)
            {
                Ok(Some(record)) => Verdict::Adopted {
                    record: RecordId::of(&record),
                    mode: record.mode.as_str(),
                },
                Ok(None) => Verdict::Skipped,
                Err(e) => {
                    Verdict::Failed(format!("ADD succeeded but its record is unreadable: {e}"))
                }
            },
        };
        let pod = pod_name(&entry);
        match verdict {
            Verdict::Adopted { record, mode } => {
                metrics.adopted();
                tracing::info!(
                    %pod,
                    container_id = %entry.container_id,
                    ifname = %entry.if_name,
                    network = %entry.network,
                    netns = %netns.display(),
                    mode,
                    "adopted a pod that started before meshcap was installed: capture rules installed in place"
                );
                if fs::symlink_metadata(path).is_err() {
                    // The runtime tore the pod down while the plugin ran (if this DEL fails,
                    // the next scan sees the file gone and retries it).
                    self.release_if_recorded(&entry, &record, networks);
                }
                Seen::Meshed { entry, record }
            }
            Verdict::Skipped => {
                tracing::info!(%pod, container_id = %entry.container_id, network = %entry.network, "pod started before meshcap was installed is not selected for capture; leaving it alone");
                Seen::Skipped
            }
            Verdict::Failed(error) => {
                metrics.adoption_failed();
                let why = format!("ADD failed: {error}");
                if last_why.as_ref() != Some(&why) {
                    tracing::warn!(%pod, container_id = %entry.container_id, netns = %netns.display(), %error, "adopting a pod failed; retrying every scan");
                }
                Seen::Waiting { entry, why }
            }
        }
    }

    fn networks(&self) -> BTreeMap<String, Network> {
        load_networks(&self.conf_dir).unwrap_or_else(|e| {
            tracing::debug!(dir = %self.conf_dir.display(), error = %e, "cannot read the CNI config dir");
            BTreeMap::new()
        })
    }

    /// Runs the plugin's DEL for an attachment whose cache entry is gone but whose record
    /// remains. Returns whether there is nothing left to do.
    fn release_if_recorded(
        &self,
        entry: &CacheEntry,
        seen: &RecordId,
        networks: &BTreeMap<String, Network>,
    ) -> bool {
        let record = match self
            .state
            .read(&entry.network, &entry.container_id, &entry.if_name)
        {
            Ok(Some(r)) if RecordId::of(&r) == *seen => r,
            // A new ADD of the same container (restarted since) owns the record now.
            Ok(Some(_)) => return true,
            // The runtime's DEL went through meshcap: the usual case.
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable record of a torn-down pod; GC removes it");
                return true;
            }
        };
        let Some((network, plugin_entry)) = chained(networks, &entry.network) else {
            tracing::warn!(network = %entry.network, container_id = %entry.container_id, "a torn-down pod still has its record, and its network no longer chains meshcap-cni to remove it");
            return true;
        };
        if !self.plugin.is_installed() {
            return true; // Uninstalled: stale records are GC's.
        }
        // Enter the namespace only while it is the one ADD recorded (a /proc/PID/ns/net path
        // may have been recycled); otherwise DEL with an empty CNI_NETNS, as containerd sends
        // once a sandbox is gone: only host-side state is removed.
        let netns = PodNetns::open(&record.netns)
            .ok()
            .filter(|ns| {
                record
                    .netns_dev
                    .zip(record.netns_ino)
                    .is_some_and(|id| id == (ns.dev(), ns.ino()))
            })
            .map(|_| record.netns.clone());
        let stdin = plugin_stdin(network, plugin_entry, entry);
        match self.plugin.exec("DEL", entry, netns.as_deref(), &stdin) {
            Ok(()) => {
                tracing::info!(pod = %pod_name(entry), container_id = %entry.container_id, "the pod was torn down while it was adopted: ran meshcap-cni DEL so nothing is left behind");
                true
            }
            Err(error) => {
                tracing::warn!(pod = %pod_name(entry), container_id = %entry.container_id, %error, "DEL of a torn-down adopted pod failed; retrying next scan");
                false
            }
        }
    }
}

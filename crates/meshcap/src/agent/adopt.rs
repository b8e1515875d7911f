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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcap_cni_runtime::cache::{read_capped, CacheEntry, RESULTS_DIR};
use meshcap_cni_runtime::invoke::{self, Failure, Invocation};
use meshcap_dataplane::{DataplaneError, PodNetns};
use meshcap_records::{AttachmentRecord, StateDir};
use serde_json::{Map, Value};

use super::metrics::Metrics;
use crate::install::{self, PLUGIN_TYPE};

/// libcni writes the cache file in place (not atomically): a younger file that does not parse
/// may still be being written, so it is read again next scan instead of reported.
const SETTLE: Duration = Duration::from_secs(2);
/// Longer than the plugin's own longest deadline (the Kubernetes API path, at most 60 s).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(90);

/// What adoption asks of a cache entry beyond its format.
trait CacheEntryExt {
    fn set_up_with_meshcap(&self) -> Option<bool>;
    fn validate(&self) -> anyhow::Result<()>;
}

impl CacheEntryExt for CacheEntry {
    /// Whether the conflist the ADD used chained meshcap; `None` when it does not parse.
    fn set_up_with_meshcap(&self) -> Option<bool> {
        match serde_json::from_slice::<Value>(&self.config).ok()? {
            Value::Object(conf) => Some(install::conf_has_meshcap(&conf)),
            _ => None,
        }
    }

    /// The ids the plugin would refuse (and that must not name a file here either).
    fn validate(&self) -> anyhow::Result<()> {
        meshcap_records::names::validate_container_id(&self.container_id)?;
        meshcap_records::names::validate_ifname(&self.if_name)?;
        anyhow::ensure!(
            meshcap_records::names::is_valid_network_name(&self.network),
            "network name {:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
            self.network
        );
        Ok(())
    }
}

/// A network as its current config in `--cni-conf-dir` defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: Option<Value>,
    /// meshcap's entry in its chain (the last one, if several).
    pub entry: Option<Map<String, Value>>,
}

/// Every network of `dir` by name. Like libcni's `LoadConfList`, the first file in lexical
/// order (`.conf`, `.conflist`, `.json`) that defines a name wins; a single-plugin `.conf`
/// defines a network without meshcap (`meshcap install` turns it into a `.conflist`).
pub fn load_networks(dir: &Path) -> io::Result<BTreeMap<String, Network>> {
    let mut networks = BTreeMap::new();
    for (_, conf) in install::config_files(dir)? {
        let Some(name) = conf.get("name").and_then(Value::as_str) else {
            continue;
        };
        if networks.contains_key(name) {
            continue;
        }
        let entry = conf
            .get("plugins")
            .and_then(Value::as_array)
            .and_then(|p| p.iter().rev().find(|p| install::is_meshcap(p)))
            .and_then(Value::as_object)
            .cloned();
        networks.insert(
            name.to_owned(),
            Network {
                name: name.to_owned(),
                cni_version: conf.get("cniVersion").cloned(),
                entry,
            },
        );
    }
    Ok(networks)
}

/// The network named `name` and meshcap's entry in its chain, when it chains meshcap.
fn chained<'a>(
    networks: &'a BTreeMap<String, Network>,
    name: &str,
) -> Option<(&'a Network, &'a Map<String, Value>)> {
    let network = networks.get(name)?;
    Some((network, network.entry.as_ref()?))
}

/// The plugin's stdin, as libcni's `buildOneConfig` makes it for the last plugin of the list:
/// the entry with the list's `name` and `cniVersion`, `runtimeConfig` holding the capability
/// args the entry declares in `capabilities` (only when there are any, as libcni does), and the
/// chain's result as `prevResult`.
pub fn plugin_stdin(network: &Network, entry: &Map<String, Value>, cache: &CacheEntry) -> Value {
    invoke::plugin_stdin(
        entry,
        &network.name,
        network.cni_version.as_ref(),
        &cache.capability_args,
        cache.result.clone().map(Value::Object).as_ref(),
    )
}

/// What the plugin's exit status and stdout say for `command`: `Ok` on success (a result
/// object for ADD; DEL prints nothing), else the CNI error (`code`, `msg`, `details`) or, when
/// stdout is not one, the status and stderr.
pub fn plugin_outcome(
    command: &str,
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<(), String> {
    match invoke::outcome(success, stdout) {
        Ok(Some(Value::Object(_))) => Ok(()),
        Ok(None) if command != "ADD" => Ok(()),
        Ok(_) | Err(Failure::BadOutput) if success => Err(format!(
            "exit status 0 but stdout is not a CNI result: {:?}",
            invoke::tail(stdout)
        )),
        Err(Failure::Cni(error)) => Err(error.to_string()),
        _ => Err(format!(
            "failed without a CNI error on stdout ({:?}); stderr: {:?}",
            invoke::tail(stdout),
            invoke::tail(stderr)
        )),
    }
}

/// Identifies one version of a cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    len: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            mtime: (meta.mtime(), meta.mtime_nsec()),
            len: meta.len(),
            ino: meta.ino(),
        }
    }
}

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
    bin_dir: PathBuf,
    plugin: PathBuf,
    state_root: PathBuf,
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
            bin_dir: bin_dir.to_owned(),
            plugin: bin_dir.join(PLUGIN_TYPE),
            state_root: state_root.to_owned(),
            state: StateDir::new(state_root),
            booted: boot_time(),
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
                _ => match self.read(&path, &meta) {
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

    /// Reads and parses a cache file. `None`: try again next scan (young and incomplete);
    /// `Some(None)`: nothing to adopt in it (reasons logged here, once per version).
    fn read(&self, path: &Path, meta: &fs::Metadata) -> Option<Option<CacheEntry>> {
        if !meta.is_file() {
            tracing::warn!(file = %path.display(), "not a regular file in the CNI results cache; skipping it");
            return Some(None);
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        let parsed = read_capped(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| CacheEntry::parse(&bytes));
        let entry = match parsed {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                tracing::debug!(file = %path.display(), "not a cniCacheV1 entry; skipping it");
                return Some(None);
            }
            Err(_) if age < SETTLE => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = format!("{e:#}"), "unreadable CNI cache entry; skipping it");
                return Some(None);
            }
        };
        if let Err(e) = entry.validate() {
            tracing::warn!(file = %path.display(), error = format!("{e:#}"), "CNI cache entry with ids the plugin would refuse; skipping it");
            return Some(None);
        }
        match entry.set_up_with_meshcap() {
            Some(false) => {}
            Some(true) => return Some(None), // The runtime ran meshcap itself: not ours to adopt.
            None => {
                tracing::warn!(file = %path.display(), "the cached network config does not parse; not adopting this pod");
                return Some(None);
            }
        }
        let stale = self
            .booted
            .zip(meta.modified().ok())
            .is_some_and(|(booted, written)| written < booted);
        if stale {
            tracing::debug!(file = %path.display(), "cache entry from an earlier boot; skipping it");
            return Some(None);
        }
        Some(Some(entry))
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
        if !self.plugin.is_file() {
            let why = format!("{} is not installed", self.plugin.display());
            return wait(entry, why);
        }

        let stdin = plugin_stdin(network, plugin_entry, &entry);
        let verdict = match self.exec("ADD", &entry, Some(&netns), &stdin) {
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
        if !self.plugin.is_file() {
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
        match self.exec("DEL", entry, netns.as_deref(), &stdin) {
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

    /// Runs the installed plugin as a runtime does.
    fn exec(
        &self,
        command: &str,
        entry: &CacheEntry,
        netns: Option<&Path>,
        stdin: &Value,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.plugin);
        Invocation {
            command,
            container_id: &entry.container_id,
            netns,
            ifname: &entry.if_name,
            args: &entry.cni_args_env(),
            path: &self.bin_dir,
        }
        .apply(&mut cmd);
        cmd.env(meshcap_records::STATE_DIR_VAR, &self.state_root);
        let stdin = serde_json::to_vec(stdin).expect("a JSON value serializes");
        let out = invoke::run(cmd, &stdin, Some(PLUGIN_TIMEOUT)).map_err(|e| e.to_string())?;
        plugin_outcome(command, out.status.success(), &out.stdout, &out.stderr)
    }
}

fn pod_name(entry: &CacheEntry) -> String {
    let arg = |key: &str| {
        entry
            .cni_args
            .iter()
            .find(|(k, _)| k == key)
            .map_or("-", |(_, v)| v.as_str())
    };
    format!("{}/{}", arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME"))
}

/// The last boot, from `btime` in /proc/stat (proc(5)).
fn boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use meshcap_cni_runtime::cache::MAX_CACHE_FILE;
    use serde_json::json;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn conflist(with_meshcap: bool) -> Value {
        let mut plugins =
            vec![json!({"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}})];
        if with_meshcap {
            plugins.push(json!({"type": PLUGIN_TYPE, "selection": "all"}));
        }
        json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": plugins})
    }

    /// A cache file as Go libcni's `cacheAdd` writes it (`netns` only from libcni 1.2).
    fn cache_file(config: &Value, netns: Option<&str>) -> Vec<u8> {
        let mut v = json!({
            "kind": "cniCacheV1",
            "containerId": "0123abcd",
            "config": B64.encode(serde_json::to_vec(config).unwrap()),
            "ifName": "eth0",
            "networkName": "podnet",
            "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "shop"], ["K8S_POD_NAME", "cart-0"]],
            "capabilityArgs": {
                "io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"},
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
            },
            "result": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                    {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/cni-result"}
                ],
                "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}]
            }
        });
        if let Some(n) = netns {
            v["netns"] = json!(n);
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn libcni_1_2_entry_with_netns() {
        let e = CacheEntry::parse(&cache_file(&conflist(false), Some("/var/run/netns/cni-1")))
            .unwrap()
            .unwrap();
        assert_eq!(e.container_id, "0123abcd");
        assert_eq!(e.if_name, "eth0");
        assert_eq!(e.network, "podnet");
        assert_eq!(e.netns_path(), Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(
            e.cni_args_env(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0"
        );
        assert_eq!(pod_name(&e), "shop/cart-0");
        assert_eq!(e.set_up_with_meshcap(), Some(false));
        e.validate().unwrap();
    }

    #[test]
    fn older_libcni_entry_falls_back_to_the_interface_sandbox() {
        let e = CacheEntry::parse(&cache_file(&conflist(false), None))
            .unwrap()
            .unwrap();
        assert_eq!(e.netns, None);
        // The container-side interface (named ifName), not the host-side ones.
        assert_eq!(
            e.netns_path(),
            Some(PathBuf::from("/var/run/netns/cni-result"))
        );
        // podman 4: no K8S_POD_NAMESPACE, no capability args, an empty netns is absent.
        let mut v: Value = serde_json::from_slice(&cache_file(&conflist(false), Some(""))).unwrap();
        v["cniArgs"] = json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]]);
        v.as_object_mut().unwrap().remove("capabilityArgs");
        v["result"]["interfaces"] = json!([{"name": "eth1", "sandbox": "/run/netns/other"}]);
        let e = CacheEntry::parse(&serde_json::to_vec(&v).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(e.netns, None);
        assert!(e.capability_args.is_empty());
        assert_eq!(pod_name(&e), "-/web");
        // No interface named eth0: any interface with a sandbox.
        assert_eq!(e.netns_path(), Some(PathBuf::from("/run/netns/other")));
        v["result"]["interfaces"] = json!([{"name": "eth0"}]);
        let e = CacheEntry::parse(&serde_json::to_vec(&v).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(e.netns_path(), None);
    }

    #[test]
    fn legacy_and_broken_files() {
        // libcni before 0.8 cached the bare result: not ours to parse, not an error.
        let legacy = json!({"cniVersion": "0.4.0", "interfaces": [], "ips": []});
        assert_eq!(
            CacheEntry::parse(&serde_json::to_vec(&legacy).unwrap()).unwrap(),
            None
        );
        assert!(CacheEntry::parse(b"{\"kind\":\"cniCacheV1\"").is_err());
        assert!(CacheEntry::parse(b"[1,2]").is_err());
        let mut v: Value = serde_json::from_slice(&cache_file(&conflist(false), None)).unwrap();
        v["config"] = json!("not base64!");
        let err = CacheEntry::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("config"), "{err:#}");
        v.as_object_mut().unwrap().remove("containerId");
        v["config"] = json!(B64.encode(b"{}"));
        let err = CacheEntry::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("containerId"), "{err}");
    }

    #[test]
    fn cached_config_with_or_without_meshcap() {
        let with = CacheEntry::parse(&cache_file(&conflist(true), None))
            .unwrap()
            .unwrap();
        assert_eq!(with.set_up_with_meshcap(), Some(true));
        let without = CacheEntry::parse(&cache_file(&conflist(false), None))
            .unwrap()
            .unwrap();
        assert_eq!(without.set_up_with_meshcap(), Some(false));
        // A single-plugin network (libcni's AddNetwork caches that plugin's config).
        let single = CacheEntry::parse(&cache_file(
            &json!({"cniVersion": "1.0.0", "name": "podnet", "type": "bridge"}),
            None,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(single.set_up_with_meshcap(), Some(false));
        let mut garbage = without.clone();
        garbage.config = b"not json".to_vec();
        assert_eq!(garbage.set_up_with_meshcap(), None);
    }

    #[test]
    fn ids_are_validated_before_they_name_a_file() {
        let mut e = CacheEntry::parse(&cache_file(&conflist(false), None))
            .unwrap()
            .unwrap();
        e.container_id = "../../etc".into();
        assert!(e.validate().is_err());
        e.container_id = "abc".into();
        e.network = "a/b".into();
        assert!(e.validate().is_err());
        e.network = "podnet".into();
        e.if_name = "eth0/..".into();
        assert!(e.validate().is_err());
    }

    #[test]
    fn stdin_is_what_libcni_gives_the_last_plugin() {
        let cache = CacheEntry::parse(&cache_file(&conflist(false), None))
            .unwrap()
            .unwrap();
        let network = Network {
            name: "podnet".into(),
            cni_version: Some(json!("1.1.0")),
            entry: None,
        };
        let entry = json!({
            "type": PLUGIN_TYPE,
            "mode": "nftables",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": false, "bandwidth": true}
        });
        let stdin = plugin_stdin(&network, entry.as_object().unwrap(), &cache);
        assert_eq!(stdin["name"], "podnet");
        assert_eq!(stdin["cniVersion"], "1.1.0");
        assert_eq!(stdin["type"], PLUGIN_TYPE);
        assert_eq!(stdin["mode"], "nftables");
        // Declared and passed: in; declared false: out; declared but not passed: absent.
        assert_eq!(
            stdin["runtimeConfig"],
            json!({"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}})
        );
        assert_eq!(
            stdin["prevResult"],
            Value::Object(cache.result.clone().unwrap())
        );

        // Nothing declared that the runtime passed: no runtimeConfig at all.
        let bare = json!({"type": PLUGIN_TYPE, "capabilities": {"portMappings": false}});
        let stdin = plugin_stdin(&network, bare.as_object().unwrap(), &cache);
        assert!(stdin.get("runtimeConfig").is_none(), "{stdin}");
        let no_caps = json!({"type": PLUGIN_TYPE});
        let stdin = plugin_stdin(&network, no_caps.as_object().unwrap(), &cache);
        assert!(stdin.get("runtimeConfig").is_none(), "{stdin}");

        // The plugin accepts it.
        let entry = json!({"type": PLUGIN_TYPE, "capabilities": {"io.kubernetes.cri.pod-annotations": true}});
        let stdin = plugin_stdin(&network, entry.as_object().unwrap(), &cache);
        let config = meshcap_cni::config::Config::parse(&serde_json::to_vec(&stdin).unwrap())
            .expect("the plugin decodes it");
        assert_eq!(config.name, "podnet");
        assert!(config.prev_result.is_some());
        assert_eq!(
            config
                .pod_annotations
                .unwrap()
                .get("sidecar.istio.io/status")
                .map(String::as_str),
            Some("{}")
        );
    }

    #[test]
    fn plugin_outcomes() {
        assert_eq!(
            plugin_outcome("ADD", true, br#"{"cniVersion":"1.0.0"}"#, b""),
            Ok(())
        );
        // ADD prints a result; DEL prints nothing (CNI spec).
        let err = plugin_outcome("ADD", true, b"", b"").unwrap_err();
        assert!(err.contains("not a CNI result"), "{err}");
        assert_eq!(plugin_outcome("DEL", true, b"", b""), Ok(()));
        assert!(plugin_outcome("DEL", true, b"garbage", b"").is_err());
        let err = plugin_outcome(
            "ADD",
            false,
            br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid pod annotation","details":"x"}"#,
            b"",
        )
        .unwrap_err();
        assert_eq!(err, "CNI error 7: invalid pod annotation (x)");
        let err = plugin_outcome("DEL", false, b"", b"thread main panicked").unwrap_err();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn networks_by_name_first_file_wins() {
        let dir = std::env::temp_dir().join(format!("meshcap-adopt-nets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: &Value| fs::write(dir.join(name), v.to_string()).unwrap();
        write("10-podnet.conflist", &conflist(true));
        // Same name later in lexical order: shadowed, as libcni's LoadConfList does.
        write("20-podnet.conflist", &conflist(false));
        write(
            "30-other.conf",
            &json!({"cniVersion": "0.4.0", "name": "other", "type": "bridge"}),
        );
        fs::write(dir.join("40-broken.conflist"), "{").unwrap();
        write("50-ignored.txt", &json!({"name": "txt", "plugins": []}));
        let nets = load_networks(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(nets.keys().collect::<Vec<_>>(), ["other", "podnet"]);
        assert_eq!(nets["podnet"].cni_version, Some(json!("1.0.0")));
        assert_eq!(nets["podnet"].entry.as_ref().unwrap()["type"], PLUGIN_TYPE);
        assert_eq!(nets["other"].entry, None);
    }

    #[test]
    fn cache_files_are_read_capped_and_never_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("meshcap-adopt-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("small"), b"{}").unwrap();
        fs::write(dir.join("big"), vec![b' '; MAX_CACHE_FILE as usize + 1]).unwrap();
        std::os::unix::fs::symlink(dir.join("small"), dir.join("link")).unwrap();
        let small = read_capped(&dir.join("small"));
        let big = read_capped(&dir.join("big"));
        let link = read_capped(&dir.join("link"));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(small.unwrap(), b"{}");
        assert!(big.is_err());
        assert!(link.is_err(), "O_NOFOLLOW refuses the symlink");
    }
}

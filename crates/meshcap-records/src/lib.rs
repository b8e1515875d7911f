//! Host-side attachment records: one small JSON file per attachment that ADD captured,
//! at `<state dir>/<network name>/<container id>@<ifname>.json`.
//!
//! The records are what GC works from (CNI 1.1: remove host-side state of attachments not in
//! `cni.dev/valid-attachments`) and what DEL uses to know which backend ADD used. The CNI
//! spec keys plugin state by (network name, container id, ifname); the network is a
//! directory so GC of one network never touches another's records. `@` cannot occur in a
//! container id (CNI spec), so the file name splits unambiguously.
//!
//! Writes are atomic (a temp file in the same directory, then rename) so a concurrent
//! reader or a crash never sees half a record; each attachment has its own file, so parallel
//! ADDs of different pods never contend.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcap_model::mesh::istio::SpecSettings;
use meshcap_model::mesh::{kuma, linkerd, FrontEnd};
use serde::{Deserialize, Serialize};

use meshcap_dataplane::{Backend, CreatedTable};
use meshcap_model::rules::Family;

pub mod names;
pub mod node_kubeconfig;

/// The node agent's datagram socket for the plugin's log lines, next to the records of
/// `state_dir` (`/var/run/meshcap/cni-log.sock` by default), so a test's private state dir has
/// a private socket. The plugin sends, the agent binds.
pub fn agent_log_socket(state_dir: &Path) -> PathBuf {
    state_dir.parent().unwrap_or(state_dir).join("cni-log.sock")
}

/// Where attachment records live unless [`STATE_DIR_VAR`] says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/run/meshcap/attachments";

/// Environment variable that overrides [`DEFAULT_STATE_DIR`] (tests, non-standard nodes).
pub const STATE_DIR_VAR: &str = "MESHCAP_STATE_DIR";

/// Temp files older than this are leftovers of a crashed writer; GC removes them. Writers
/// finish in milliseconds, and the runtime runs no ADD or DEL during GC (CNI 1.1, section 3).
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

const RECORD_SUFFIX: &str = ".json";
const TEMP_PREFIX: &str = ".tmp-";

/// A failed state-directory operation; carries the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attachment record {path} is not valid JSON: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The format of the records this build writes. 1: the first release (no `format` key);
/// 2: adds `format`, `created` and `istio_settings`; 3: adds `linkerd_settings` and
/// `kuma_settings` (the front-end settings of a Linkerd or Kuma pod). Readers take every
/// format up to this one; fields a later format adds are optional, so an older record reads
/// with their defaults.
pub const RECORD_FORMAT: u32 = 3;

fn first_format() -> u32 {
    1
}

/// The plugin config's `mode`: which rule backend installs the capture (recorded so DEL and
/// repair use the backend ADD used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Iptables,
    Nftables,
}

impl Mode {
    pub fn backend(self) -> Backend {
        match self {
            Mode::Iptables => Backend::Iptables,
            Mode::Nftables => Backend::Nftables,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// A table, or built-in chains of it, that ADD's (or a repair's) `iptables-restore` brought
/// into being ([`meshcap_dataplane::CreatedTable`]); DEL removes it again once nothing else
/// uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedRecord {
    /// "ipv4" or "ipv6".
    pub family: String,
    pub table: String,
    pub whole_table: bool,
    pub chains: Vec<String>,
}

impl CreatedRecord {
    pub fn from_dataplane(c: &CreatedTable) -> CreatedRecord {
        CreatedRecord {
            family: c.family.to_string(),
            table: c.table.clone(),
            whole_table: c.whole_table,
            chains: c.chains.clone(),
        }
    }

    /// `None` for a family this build does not know (then there is nothing to remove).
    pub fn to_dataplane(&self) -> Option<CreatedTable> {
        let family = Family::ALL
            .into_iter()
            .find(|f| f.to_string() == self.family)?;
        Some(CreatedTable {
            family,
            table: self.table.clone(),
            whole_table: self.whole_table,
            chains: self.chains.clone(),
        })
    }
}

/// What ADD recorded about one captured attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// [`RECORD_FORMAT`] when written by this build; 1 for the first release's records.
    #[serde(default = "first_format")]
    pub format: u32,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub mode: Mode,
    /// Address families with rules installed ("ipv4", "ipv6").
    pub families: Vec<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// Whether the eBPF fast path accepted the pod (DEL and GC must then unregister it).
    pub ebpf_registered: bool,
    /// When ADD wrote the record, seconds since the Unix epoch.
    pub added_at_unix: u64,
    /// The model inputs ADD used, so `meshcap agent` can recompute the rules and repair
    /// drift: the pod's effective annotations (from the runtime or the API)...
    /// `None` in records written before this field existed: those cannot be repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// ...and the proxy's uid/gid as the pod states them (`istio-proxy`'s securityContext,
    /// API path only; `None` keeps the model's value from the annotations or its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_gid: Option<u32>,
    /// ...and every other setting Istio takes from the pod spec or the mesh config, as ADD
    /// resolved it (pod, node default or Istio's default). `None` in older records: the
    /// uid/gid above and Istio's defaults then stand in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_settings: Option<SpecSettings>,
    /// A Linkerd pod's front-end settings (the node's `linkerd` settings at ADD, whether it is
    /// a control-plane pod); format 3 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkerd_settings: Option<linkerd::PodSettings>,
    /// A Kuma pod's front-end settings (whether it had an IPv6 address); format 3 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kuma_settings: Option<kuma::PodSettings>,
    /// Identity (st_dev, st_ino) of the namespace ADD captured, so a repair never touches
    /// another namespace that reuses the path (a recycled `/proc/PID/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_dev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_ino: Option<u64>,
    /// What ADD and repairs brought into being besides meshcap's own chains (iptables mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedRecord>,
}

impl AttachmentRecord {
    /// The pod's front-end settings as ADD resolved them, for recomputing its model
    /// ([`FrontEnd::model`]). `None` for a record written before they were stored: an Istio
    /// pod's is then made of its proxy uid/gid and Istio's defaults by the reader, a Linkerd or
    /// Kuma pod's cannot be known.
    pub fn front_end(&self) -> Option<FrontEnd> {
        if let Some(s) = &self.linkerd_settings {
            return Some(FrontEnd::Linkerd(s.clone()));
        }
        if let Some(s) = &self.kuma_settings {
            return Some(FrontEnd::Kuma(s.clone()));
        }
        self.istio_settings.clone().map(FrontEnd::Istio)
    }

    /// Records the pod's front-end settings (replacing any).
    pub fn set_front_end(&mut self, front_end: FrontEnd) {
        self.istio_settings = None;
        self.linkerd_settings = None;
        self.kuma_settings = None;
        match front_end {
            FrontEnd::Istio(s) => self.istio_settings = Some(s),
            FrontEnd::Linkerd(s) => self.linkerd_settings = Some(s),
            FrontEnd::Kuma(s) => self.kuma_settings = Some(s),
        }
    }

    /// [`AttachmentRecord::created`] for the dataplane.
    pub fn created_tables(&self) -> Vec<CreatedTable> {
        self.created
            .iter()
            .filter_map(CreatedRecord::to_dataplane)
            .collect()
    }

    /// Adds what an apply created to the record.
    pub fn add_created(&mut self, new: Vec<CreatedTable>) {
        let mut all = self.created_tables();
        meshcap_dataplane::merge_created(&mut all, new);
        self.created = all.iter().map(CreatedRecord::from_dataplane).collect();
    }
}

/// The (container id, ifname) pair that names an attachment (CNI 1.1, section 3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// One file found in a network's state directory.
#[derive(Debug)]
pub struct StateEntry {
    pub path: PathBuf,
    /// `None` for files whose name is not a record's (they are left alone).
    pub key: Option<AttachmentKey>,
}

/// The state directory root (all networks).
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one network's records. `network` is validated by the config
    /// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), so it is one path component.
    pub fn network_dir(&self, network: &str) -> PathBuf {
        self.root.join(network)
    }

    pub fn record_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir(network)
            .join(format!("{container_id}@{ifname}{RECORD_SUFFIX}"))
    }

    /// Writes `record` atomically, replacing any earlier one (a retried ADD).
    pub fn write(&self, record: &AttachmentRecord) -> Result<PathBuf, StateError> {
        let dir = self.network_dir(&record.network);
        let path = self.record_path(&record.network, &record.container_id, &record.ifname);
        let temp = dir.join(temp_name());
        let body = serde_json::to_vec_pretty(record).expect("a record always serializes");
        let create = || {
            fs::OpenOptions::new()
                .mode(0o644)
                .write(true)
                .create_new(true)
                .open(&temp)
        };
        let written = (|| {
            let mut f = meshcap_dataplane::create_in_dir(
                create,
                || private_dirs(&dir).map_err(io_err("create directory", &dir)),
                io_err("create", &temp),
            )?;
            f.write_all(&body).map_err(io_err("write", &temp))?;
            // No fsync: records live under /run, which a reboot empties anyway (and is tmpfs
            // on real nodes); the rename alone keeps readers from seeing a partial record.
            // An fsync on a disk-backed /run costs milliseconds on every pod start.
            fs::rename(&temp, &path).map_err(io_err("rename into", &path))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map(|()| path)
    }

    /// Reads one record; `Ok(None)` when there is none.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>, StateError> {
        read_record(&self.record_path(network, container_id, ifname))
    }

    /// Removes one record; `Ok(false)` when there was none (DEL is idempotent).
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, StateError> {
        remove_file(&self.record_path(network, container_id, ifname))
    }

    /// Every record file of `network` (an absent directory has none).
    pub fn list(&self, network: &str) -> Result<Vec<StateEntry>, StateError> {
        let dir = self.network_dir(network);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            out.push(StateEntry {
                path: entry.path(),
                key: parse_record_name(name),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes temp files of `network` older than [`STALE_TEMP_AGE`]; returns how many.
    pub fn remove_stale_temps(&self, network: &str) -> Result<usize, StateError> {
        let dir = self.network_dir(network);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let is_temp = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if is_temp && old && remove_file(&entry.path())? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Reads a record file; `Ok(None)` when it does not exist.
pub fn read_record(path: &Path) -> Result<Option<AttachmentRecord>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Removes a file; `Ok(false)` when it was already gone.
pub fn remove_file(path: &Path) -> Result<bool, StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The per-node outcome log in the state root: one line per invocation,
/// `<COMMAND> <code>[ <mode> <microseconds>]` (code 0 is success; the mode and the time the
/// plugin spent, from its start to its result, once the configuration was read), appended by
/// the plugin and aggregated into metrics by `meshcap agent`, which also rotates it. The
/// leading dot keeps it apart from the network directories (a network name never starts
/// with one).
pub const OUTCOMES_FILE: &str = ".outcomes";

/// The size past which the plugin empties the outcome log before it appends: a log nobody
/// reads (a node with the plugin and no agent) stays bounded. The agent moves the log aside at
/// 1 MiB on every scan, so with an agent running this is never reached.
pub const OUTCOMES_UNREAD_CAP: u64 = 16 << 20;

/// Appends one invocation's outcome to `<root>/`[`OUTCOMES_FILE`], without timing.
pub fn count_outcome(root: &Path, command: &str, code: u32) {
    record_outcome(root, command, code, None);
}

/// Appends one invocation's outcome to `<root>/`[`OUTCOMES_FILE`]; `timing` is the mode and
/// the time the plugin spent. Best effort and cheap on the plugin's hot path: one
/// `open(O_APPEND)`, one `fstat` (see [`OUTCOMES_UNREAD_CAP`]) and one write of a few bytes, which the kernel appends whole for a regular
/// file, so concurrent plugins never interleave lines and no lock is taken. Never fails:
/// metrics must not fail an ADD.
pub fn record_outcome(
    root: &Path,
    command: &str,
    code: u32,
    timing: Option<(&str, std::time::Duration)>,
) {
    let path = root.join(OUTCOMES_FILE);
    let open = || {
        fs::OpenOptions::new()
            .mode(0o644)
            .append(true)
            .create(true)
            .open(&path)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => private_dirs(root).and_then(|()| open()),
        other => other,
    };
    let line = match timing {
        Some((mode, spent)) => format!("{command} {code} {mode} {}\n", spent.as_micros()),
        None => format!("{command} {code}\n"),
    };
    let written = file.and_then(|mut f| {
        // Appends land at the end whatever another plugin truncated meanwhile (O_APPEND).
        if f.metadata()?.len() >= OUTCOMES_UNREAD_CAP {
            f.set_len(0)?;
        }
        f.write_all(line.as_bytes())
    });
    if let Err(e) = written {
        tracing::debug!(error = %e, path = %path.display(), "could not count the outcome");
    }
}

/// One line of the outcome log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeLine<'a> {
    pub command: &'a str,
    pub code: u32,
    /// The mode and the microseconds the plugin spent, when the line has them.
    pub timing: Option<(&'a str, u64)>,
}

/// One line of the outcome log: (command, code). `None` for anything else.
pub fn parse_outcome(line: &str) -> Option<(&str, u32)> {
    parse_outcome_line(line).map(|o| (o.command, o.code))
}

/// One line of the outcome log, with its timing when it has one. `None` for anything else.
pub fn parse_outcome_line(line: &str) -> Option<OutcomeLine<'_>> {
    let mut words = line.trim_end().split(' ');
    let command = words.next()?;
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let code = words.next()?.parse().ok()?;
    let timing = match (words.next(), words.next(), words.next()) {
        (None, _, _) => None,
        (Some(mode), Some(us), None)
            if !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_lowercase()) =>
        {
            Some((mode, us.parse().ok()?))
        }
        _ => return None,
    };
    Some(OutcomeLine {
        command,
        code,
        timing,
    })
}

/// `<container id>@<ifname>.json` -> key.
fn parse_record_name(name: &str) -> Option<AttachmentKey> {
    let stem = name.strip_suffix(RECORD_SUFFIX)?;
    let (container_id, ifname) = stem.split_once('@')?;
    if container_id.is_empty() || ifname.is_empty() {
        return None;
    }
    Some(AttachmentKey {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

/// Unique within the host: pid, a per-process counter and the clock's nanoseconds.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{TEMP_PREFIX}{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `dir` and its missing parents as root-owned 0755: the modes are explicit, so a
/// permissive umask of the runtime can never make meshcap's state world-writable.
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    use meshcap_testkit::ScratchDir as TempDir;

    pub(crate) fn record(network: &str, cid: &str, ifname: &str) -> AttachmentRecord {
        AttachmentRecord {
            format: RECORD_FORMAT,
            network: network.into(),
            container_id: cid.into(),
            ifname: ifname.into(),
            netns: "/run/netns/x".into(),
            mode: Mode::Nftables,
            families: vec!["ipv4".into(), "ipv6".into()],
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            pod_uid: None,
            ebpf_registered: false,
            added_at_unix: now_unix(),
            annotations: None,
            proxy_uid: None,
            proxy_gid: None,
            istio_settings: None,
            linkerd_settings: None,
            kuma_settings: None,
            netns_dev: None,
            netns_ino: None,
            created: Vec::new(),
        }
    }

    #[test]
    fn records_of_every_format_read_and_keep_their_front_end() {
        let tmp = TempDir::new("state-formats");
        let dir = tmp.0.join("net");
        fs::create_dir_all(&dir).unwrap();
        // Format 1 (no `format` key) and format 2 (an Istio pod's settings), as those
        // releases wrote them.
        let v1 = r#"{"network":"net","container_id":"c1","ifname":"eth0","netns":"/run/netns/a","mode":"iptables","families":["ipv4"],"pod_namespace":null,"pod_name":null,"pod_uid":null,"ebpf_registered":false,"added_at_unix":1}"#;
        let v2 = r#"{"format":2,"network":"net","container_id":"c2","ifname":"eth0","netns":"/run/netns/b","mode":"nftables","families":["ipv4"],"pod_namespace":"ns","pod_name":"p","pod_uid":null,"ebpf_registered":true,"added_at_unix":1,"annotations":{"sidecar.istio.io/status":"{}"},"proxy_uid":1337,"istio_settings":{"proxy_uids":[1337],"proxy_gids":[1337],"dns_capture":true,"invalid_drop":false,"dual_stack":false,"owner_groups_include":"*","owner_groups_exclude":"","ipv4_loopback_cidr":"127.0.0.1/32","proxy_listen_port":15001,"proxy_inbound_listen_port":15006}}"#;
        fs::write(dir.join("c1@eth0.json"), v1).unwrap();
        fs::write(dir.join("c2@eth0.json"), v2).unwrap();
        let r1 = read_record(&dir.join("c1@eth0.json")).unwrap().unwrap();
        assert_eq!((r1.format, r1.front_end()), (1, None));
        let r2 = read_record(&dir.join("c2@eth0.json")).unwrap().unwrap();
        match r2.front_end() {
            Some(FrontEnd::Istio(s)) => assert!(s.dns_capture && s.proxy_uids == [1337]),
            other => panic!("{other:?}"),
        }

        // Format 3 keeps a Linkerd or Kuma pod's settings, and only the one given.
        let state = StateDir::new(tmp.0.clone());
        let node = linkerd::LinkerdNode {
            proxy_uid: 4242,
            ..linkerd::LinkerdNode::default()
        };
        for (cid, fe) in [
            (
                "c3",
                FrontEnd::Linkerd(linkerd::PodSettings {
                    node,
                    control_plane: true,
                    api_server_ports: Some(vec![443, 8443]),
                }),
            ),
            (
                "c4",
                FrontEnd::Kuma(kuma::PodSettings {
                    pod_has_ipv6: true,
                    nameservers: None,
                }),
            ),
            (
                "c5",
                FrontEnd::Kuma(kuma::PodSettings {
                    pod_has_ipv6: false,
                    nameservers: Some(vec!["10.0.0.10".into(), "fe80::1%eth0".into()]),
                }),
            ),
        ] {
            let mut rec = record("net", cid, "eth0");
            rec.set_front_end(FrontEnd::Istio(SpecSettings::default()));
            rec.set_front_end(fe.clone());
            assert!(rec.istio_settings.is_none());
            state.write(&rec).unwrap();
            let back = read_record(&dir.join(format!("{cid}@eth0.json")))
                .unwrap()
                .unwrap();
            assert_eq!(back, rec);
            assert_eq!((back.format, back.front_end()), (3, Some(fe)));
        }
    }

    #[test]
    fn write_read_replace_remove() {
        let tmp = TempDir::new("state-rw");
        let dir = StateDir::new(tmp.0.join("attachments"));
        assert_eq!(dir.read("net", "c1", "eth0").unwrap(), None);
        let mut rec = record("net", "c1", "eth0");
        let path = dir.write(&rec).unwrap();
        assert_eq!(path, tmp.0.join("attachments/net/c1@eth0.json"));
        assert_eq!(dir.read("net", "c1", "eth0").unwrap(), Some(rec.clone()));
        rec.mode = Mode::Iptables;
        dir.write(&rec).unwrap();
        assert_eq!(
            dir.read("net", "c1", "eth0").unwrap().unwrap().mode,
            Mode::Iptables
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.network_dir("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c1@eth0.json"]);
        assert!(dir.remove("net", "c1", "eth0").unwrap());
        assert!(!dir.remove("net", "c1", "eth0").unwrap());
    }

    #[test]
    fn list_is_per_network_and_parses_names() {
        let tmp = TempDir::new("state-list");
        let dir = StateDir::new(&tmp.0);
        assert!(dir.list("net").unwrap().is_empty());
        dir.write(&record("net", "c1", "eth0")).unwrap();
        dir.write(&record("net", "c2", "net1")).unwrap();
        dir.write(&record("other", "c3", "eth0")).unwrap();
        fs::write(dir.network_dir("net").join("README"), "x").unwrap();
        fs::write(dir.network_dir("net").join(".tmp-1-2-3"), "x").unwrap();
        let keys: Vec<_> = dir
            .list("net")
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            vec![
                None,
                Some(AttachmentKey {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }),
                Some(AttachmentKey {
                    container_id: "c2".into(),
                    ifname: "net1".into()
                }),
            ]
        );
        // A fresh temp file is not stale.
        assert_eq!(dir.remove_stale_temps("net").unwrap(), 0);
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let tmp = TempDir::new("state-corrupt");
        let dir = StateDir::new(&tmp.0);
        fs::create_dir_all(dir.network_dir("net")).unwrap();
        fs::write(dir.record_path("net", "c", "eth0"), "{").unwrap();
        assert!(matches!(
            dir.read("net", "c", "eth0"),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn outcomes_are_appended_and_parsed() {
        let tmp = TempDir::new("state-outcomes");
        let root = tmp.0.join("attachments");
        count_outcome(&root, "ADD", 0);
        count_outcome(&root, "ADD", 100);
        let text = fs::read_to_string(root.join(OUTCOMES_FILE)).unwrap();
        assert_eq!(text, "ADD 0\nADD 100\n");
        let parsed: Vec<_> = text.lines().filter_map(parse_outcome).collect();
        assert_eq!(parsed, [("ADD", 0), ("ADD", 100)]);
        assert_eq!(parse_outcome("ADD"), None);
        record_outcome(
            &root,
            "ADD",
            0,
            Some(("nftables", std::time::Duration::from_micros(1834))),
        );
        let text = fs::read_to_string(root.join(OUTCOMES_FILE)).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(last, "ADD 0 nftables 1834");
        assert_eq!(
            parse_outcome_line(last),
            Some(OutcomeLine {
                command: "ADD",
                code: 0,
                timing: Some(("nftables", 1834))
            })
        );
        assert_eq!(parse_outcome(last), Some(("ADD", 0)));
        assert_eq!(parse_outcome_line("ADD 0 nftables"), None);
        assert_eq!(parse_outcome_line("ADD 0 nftables x"), None);
        assert_eq!(parse_outcome_line("ADD 0 nftables 1 2"), None);
        assert_eq!(parse_outcome("add 0"), None);
        assert_eq!(parse_outcome("ADD x"), None);
        // An old record (no model inputs) still reads.
        let old = r#"{"network":"n","container_id":"c","ifname":"eth0","netns":"/x","mode":"iptables",
            "families":["ipv4"],"pod_namespace":null,"pod_name":null,"pod_uid":null,
            "ebpf_registered":false,"added_at_unix":0}"#;
        let rec: AttachmentRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.annotations, None);
        assert_eq!(rec.netns_ino, None);
    }

    #[test]
    fn an_outcome_log_nobody_reads_stays_bounded() {
        let tmp = TempDir::new("state-outcomes-cap");
        let root = tmp.0.join("attachments");
        count_outcome(&root, "ADD", 0);
        let path = root.join(OUTCOMES_FILE);
        // As an agent-less node leaves it after some millions of pods.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(OUTCOMES_UNREAD_CAP - 1)
            .unwrap();
        count_outcome(&root, "DEL", 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), OUTCOMES_UNREAD_CAP + 5);
        count_outcome(&root, "ADD", 7);
        assert_eq!(fs::read_to_string(&path).unwrap(), "ADD 7\n");
    }

    #[test]
    fn record_names() {
        assert_eq!(
            parse_record_name("a-b.c@eth0.json"),
            Some(AttachmentKey {
                container_id: "a-b.c".into(),
                ifname: "eth0".into()
            })
        );
        assert_eq!(parse_record_name("a@b@c.json").unwrap().ifname, "b@c");
        assert_eq!(parse_record_name("ab.json"), None);
        assert_eq!(parse_record_name("@eth0.json"), None);
        assert_eq!(parse_record_name("a@eth0"), None);
    }
}

//! Access to the agent's pinned maps from any process on the node (the CNI plugin, `meshcap
//! inspect`): pod registration, cleanup and counters. Nothing here needs the agent process
//! itself, only what it left pinned on the bpffs.
#![forbid(unsafe_code)]

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, SockHash};
use meshcap_ebpf_common::{counters, names, ConnectInfo, PodConfig, SockKey};

use crate::{agent::LINK_SOCK_OPS, FastPathError, PodFastPath};

/// Counters of the fast path, summed over CPUs (node-wide, all pods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages sk_msg delivered straight into the peer socket.
    pub redirected_msgs: u64,
    pub redirected_bytes: u64,
    /// Messages sk_msg left to the normal TCP path.
    pub passed_msgs: u64,
    pub passed_bytes: u64,
    /// Sockets paired so far, by side.
    pub app_sockets: u64,
    pub sidecar_sockets: u64,
    /// Failed map updates in the programs.
    pub update_errors: u64,
    /// Connections not paired because the proxy's uid/gid made them.
    pub proxy_skipped: u64,
}

/// What `meshcap inspect` shows about the fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Where the agent pins its maps and links.
    pub pin_dir: PathBuf,
    /// `Err(reason)` when the fast path is not installed on this node.
    pub available: Result<(), String>,
    /// The pod's registration, when a netns cookie was asked about and it is registered.
    pub pod: Option<PodFastPath>,
    /// Sockets of that pod currently in the sockhash (both sides of each paired connection,
    /// plus app sockets that found no sidecar peer).
    pub pod_sockets: usize,
    /// Registered pods on the node.
    pub registered_pods: usize,
    /// Node-wide counters.
    pub counters: Counters,
}

/// The agent's pinned state under one pin directory (default `/sys/fs/bpf/meshcap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new(crate::DEFAULT_PIN_DIR)
    }
}

fn not_available(path: &Path, source: &io::Error) -> FastPathError {
    let reason = if source.kind() == io::ErrorKind::NotFound {
        format!(
            "{} is not pinned: the meshcap agent is not running on this node (start `meshcap agent`)",
            path.display()
        )
    } else {
        format!("cannot open {}: {source}", path.display())
    };
    FastPathError::NotAvailable { reason }
}

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self, name: &'static str) -> Result<MapData, FastPathError> {
        let path = self.path.join(name);
        MapData::from_pin(&path).map_err(|e| match &e {
            MapError::SyscallError(s) => not_available(&path, &s.io_error),
            _ => FastPathError::map(name, "open pinned", e),
        })
    }

    fn pods(&self) -> Result<HashMap<MapData, u64, PodConfig>, FastPathError> {
        let map = Map::HashMap(self.open(names::PODS)?);
        HashMap::try_from(map).map_err(|e| FastPathError::map(names::PODS, "open", e))
    }

    fn socks(&self) -> Result<SockHash<MapData, SockKey>, FastPathError> {
        let map = Map::SockHash(self.open(names::SOCKS)?);
        SockHash::try_from(map).map_err(|e| FastPathError::map(names::SOCKS, "open", e))
    }

    fn apps(&self) -> Result<HashMap<MapData, SockKey, u64>, FastPathError> {
        let map = Map::LruHashMap(self.open(names::APPS)?);
        HashMap::try_from(map).map_err(|e| FastPathError::map(names::APPS, "open", e))
    }

    fn connects(&self) -> Result<HashMap<MapData, u64, ConnectInfo>, FastPathError> {
        let map = Map::LruHashMap(self.open(names::CONNECTS)?);
        HashMap::try_from(map).map_err(|e| FastPathError::map(names::CONNECTS, "open", e))
    }

    fn counters_map(&self) -> Result<PerCpuArray<MapData, u64>, FastPathError> {
        let map = Map::PerCpuArray(self.open(names::COUNTERS)?);
        PerCpuArray::try_from(map).map_err(|e| FastPathError::map(names::COUNTERS, "open", e))
    }

    /// `Ok` when the agent's maps are pinned and its sock_ops program is attached.
    pub fn check_available(&self) -> Result<(), FastPathError> {
        self.pods()?;
        let link = self.path.join(LINK_SOCK_OPS);
        crate::sys::obj_get(&link).map_err(|e| not_available(&link, &e))?;
        Ok(())
    }

    /// Registers a pod: its sockets are paired from now on (connections established before
    /// stay on the normal path). Idempotent: a second call overwrites the entry.
    pub fn register(&self, pod: &PodFastPath) -> Result<(), FastPathError> {
        self.check_available()?;
        let mut pods = self.pods()?;
        pods.insert(pod.netns_cookie, pod.config(), 0)
            .map_err(|e| FastPathError::map(names::PODS, "insert", e))
    }

    /// Removes a pod and every map entry that names its namespace. Idempotent; succeeds when
    /// the pod was never registered.
    pub fn unregister(&self, netns_cookie: u64) -> Result<(), FastPathError> {
        let mut pods = self.pods()?;
        match pods.remove(&netns_cookie) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            // Older kernels report a missing key as a syscall error with ENOENT.
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(FastPathError::map(names::PODS, "remove", e)),
        }
        // Sockets of a live pod leave the sockhash when they close; purge what remains so a
        // reused cookie value could never find a stale pairing. (Cookies are never reused
        // within a boot, so this is belt and braces, and it keeps DEL's promise literally.)
        let mut socks = self.socks()?;
        let stale: Vec<SockKey> = socks
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns_cookie)
            .collect();
        for k in stale {
            let _ = socks.remove(&k);
        }
        let mut apps = self.apps()?;
        let stale: Vec<SockKey> = apps
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns_cookie)
            .collect();
        for k in stale {
            let _ = apps.remove(&k);
        }
        let mut connects = self.connects()?;
        let stale: Vec<u64> = connects
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.netns_cookie == netns_cookie)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = connects.remove(&k);
        }
        Ok(())
    }

    /// Unregisters every pod registered by this CNI attachment; returns how many.
    pub fn unregister_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<usize, FastPathError> {
        let id = crate::attachment_id(container_id, ifname);
        self.unregister_where(|c| c.attachment == id)
    }

    /// Unregisters pods whose attachment is not in `valid`; pods without one stay.
    pub fn gc<'a>(
        &self,
        valid: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<usize, FastPathError> {
        let valid: std::collections::HashSet<u64> = valid
            .into_iter()
            .map(|(c, i)| crate::attachment_id(c, i))
            .collect();
        self.unregister_where(|c| c.attachment != 0 && !valid.contains(&c.attachment))
    }

    fn unregister_where(&self, pred: impl Fn(&PodConfig) -> bool) -> Result<usize, FastPathError> {
        let doomed: Vec<u64> = self
            .pods()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| pred(c))
            .map(|(k, _)| k)
            .collect();
        for cookie in &doomed {
            self.unregister(*cookie)?;
        }
        Ok(doomed.len())
    }

    /// The registration of one pod, if any.
    pub fn lookup(&self, netns_cookie: u64) -> Result<Option<PodFastPath>, FastPathError> {
        let pods = self.pods()?;
        match pods.get(&netns_cookie, 0) {
            Ok(c) => Ok(Some(PodFastPath::from_config(netns_cookie, &c))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(FastPathError::map(names::PODS, "lookup", e)),
        }
    }

    /// Netns cookies of every registered pod (for CNI GC).
    pub fn registered(&self) -> Result<Vec<u64>, FastPathError> {
        Ok(self.pods()?.keys().filter_map(Result::ok).collect())
    }

    /// Map entries that name `netns_cookie`: (pods, sockets, pending apps, connect records).
    /// All zero after [`PinDir::unregister`].
    pub fn entries_for(&self, netns_cookie: u64) -> Result<[usize; 4], FastPathError> {
        let pods = self
            .pods()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| *k == netns_cookie)
            .count();
        let socks = self
            .socks()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns_cookie)
            .count();
        let apps = self
            .apps()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns_cookie)
            .count();
        let connects = self
            .connects()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.netns_cookie == netns_cookie)
            .count();
        Ok([pods, socks, apps, connects])
    }

    /// Node-wide counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, FastPathError> {
        let map = self.counters_map()?;
        let read = |i: u32| -> Result<u64, FastPathError> {
            let per_cpu = map
                .get(&i, 0)
                .map_err(|e| FastPathError::map(names::COUNTERS, "read", e))?;
            Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Counters {
            redirected_msgs: read(counters::REDIRECTED_MSGS)?,
            redirected_bytes: read(counters::REDIRECTED_BYTES)?,
            passed_msgs: read(counters::PASSED_MSGS)?,
            passed_bytes: read(counters::PASSED_BYTES)?,
            app_sockets: read(counters::APP_SOCKETS)?,
            sidecar_sockets: read(counters::SIDECAR_SOCKETS)?,
            update_errors: read(counters::UPDATE_ERRORS)?,
            proxy_skipped: read(counters::PROXY_SKIPPED)?,
        })
    }

    /// Everything `meshcap inspect` shows. Never fails for an absent fast path: that is
    /// reported in [`Status::available`].
    pub fn status(&self, netns_cookie: Option<u64>) -> Result<Status, FastPathError> {
        let mut status = Status {
            pin_dir: self.path.clone(),
            available: Ok(()),
            pod: None,
            pod_sockets: 0,
            registered_pods: 0,
            counters: Counters::default(),
        };
        if let Err(e) = self.check_available() {
            if e.is_not_available() {
                status.available = Err(e.to_string());
                return Ok(status);
            }
            return Err(e);
        }
        status.registered_pods = self.registered()?.len();
        status.counters = self.counters()?;
        if let Some(cookie) = netns_cookie {
            status.pod = self.lookup(cookie)?;
            status.pod_sockets = self.entries_for(cookie)?[1];
        }
        Ok(status)
    }
}

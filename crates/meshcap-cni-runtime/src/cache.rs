//! libcni's result cache: after a successful ADD of a network list, libcni (containerd, CRI-O,
//! podman's CNI backend) writes `<cache dir>/results/<network>-<container id>-<ifname>`
//! (`cniCacheV1`, Go libcni's `cachedInfo`): the conflist bytes the ADD used, `CNI_ARGS`, the
//! capability args, the final result and, from libcni 1.2 on, the netns path.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::{Map, Value};

/// libcni's results cache, under the cache dir.
pub const RESULTS_DIR: &str = "results";
/// `cachedInfo.Kind` of the only cache format there is (libcni 0.8 to 1.2).
const CACHE_KIND: &str = "cniCacheV1";
/// Largest cache file read: a conflist plus a result are a few KiB.
pub const MAX_CACHE_FILE: u64 = 1 << 20;

/// One libcni cache entry (`cniCacheV1`), the fields meshcap uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub container_id: String,
    pub if_name: String,
    pub network: String,
    /// The conflist bytes the ADD used.
    pub config: Vec<u8>,
    /// libcni >= 1.2 only.
    pub netns: Option<PathBuf>,
    pub cni_args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
    /// The chain's final result.
    pub result: Option<Map<String, Value>>,
}

impl CacheEntry {
    /// Parses a cache file; `Ok(None)` for anything that is not a `cniCacheV1` entry (libcni
    /// before 0.8 cached the bare result under the same name).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Option<CacheEntry>> {
        let value: Value = serde_json::from_slice(bytes).context("not JSON")?;
        let Value::Object(obj) = value else {
            bail!("not a JSON object");
        };
        if obj.get("kind").and_then(Value::as_str) != Some(CACHE_KIND) {
            return Ok(None);
        }
        let string = |key: &str| -> anyhow::Result<String> {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => bail!("{key} is missing or not a non-empty string"),
            }
        };
        // Go encodes []byte as standard base64.
        let config = base64::engine::general_purpose::STANDARD
            .decode(string("config")?)
            .context("config is not base64")?;
        let netns = match obj.get("netns") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(_) => bail!("netns is not a string"),
        };
        let cni_args = match obj.get("cniArgs") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<(String, String)>>(v.clone())
                .context("cniArgs is not a list of [key, value] pairs")?,
        };
        let capability_args = match obj.get("capabilityArgs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => bail!("capabilityArgs is not an object"),
        };
        let result = match obj.get("result") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => bail!("result is not an object"),
        };
        Ok(Some(CacheEntry {
            container_id: string("containerId")?,
            if_name: string("ifName")?,
            network: string("networkName")?,
            config,
            netns,
            cni_args,
            capability_args,
            result,
        }))
    }

    /// The pod's netns: the cached `netns`, else the `sandbox` of the result's interface named
    /// `ifName` (any interface with a sandbox when none is named so).
    pub fn netns_path(&self) -> Option<PathBuf> {
        if let Some(netns) = &self.netns {
            return Some(netns.clone());
        }
        let interfaces = self.result.as_ref()?.get("interfaces")?.as_array()?;
        let sandbox = |i: &Value| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        interfaces
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(self.if_name.as_str()))
            .and_then(sandbox)
            .or_else(|| interfaces.iter().find_map(sandbox))
    }

    /// `CNI_ARGS` as libcni renders them: `K=V` pairs joined by `;`.
    pub fn cni_args_env(&self) -> String {
        self.cni_args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Reads a regular file of at most [`MAX_CACHE_FILE`] bytes without following a symlink
/// (`O_NOFOLLOW`) or blocking on a FIFO put in its place (`O_NONBLOCK`).
pub fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    use nix::fcntl::OFlag;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CACHE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CACHE_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_CACHE_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

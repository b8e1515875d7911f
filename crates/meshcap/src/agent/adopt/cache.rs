//! The runtime's side of an attachment, as adoption reads it: one file of libcni's results
//! cache (parsed by `meshcap-cni-runtime`), whether its chain had meshcap, whether its ids are
//! ones the plugin accepts, which version of the file was seen, and whether it is from this
//! boot.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcap_cni_runtime::cache::{read_capped, CacheEntry};
use serde_json::Value;

use crate::install;

/// libcni writes the cache file in place (not atomically): a younger file that does not parse
/// may still be being written, so it is read again next scan instead of reported.
const SETTLE: Duration = Duration::from_secs(2);

/// What adoption asks of a cache entry beyond its format.
pub(super) trait CacheEntryExt {
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

/// Identifies one version of a cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    mtime: (i64, i64),
    len: u64,
    ino: u64,
}

impl Stamp {
    pub(super) fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            mtime: (meta.mtime(), meta.mtime_nsec()),
            len: meta.len(),
            ino: meta.ino(),
        }
    }
}

/// Reads and parses a cache file. `None`: try again next scan (young and incomplete);
/// `Some(None)`: nothing to adopt in it (reasons logged here, once per version). Files
/// written before `booted` describe sandboxes of an earlier boot.
pub(super) fn read(
    path: &Path,
    meta: &fs::Metadata,
    booted: Option<SystemTime>,
) -> Option<Option<CacheEntry>> {
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
    let stale = booted
        .zip(meta.modified().ok())
        .is_some_and(|(booted, written)| written < booted);
    if stale {
        tracing::debug!(file = %path.display(), "cache entry from an earlier boot; skipping it");
        return Some(None);
    }
    Some(Some(entry))
}

/// `namespace/name` from the cached `CNI_ARGS` (`-` for what is missing).
pub(super) fn pod_name(entry: &CacheEntry) -> String {
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
pub(super) fn boot_time() -> Option<SystemTime> {
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
    use std::path::PathBuf;

    use base64::Engine as _;
    use meshcap_cni_runtime::cache::MAX_CACHE_FILE;
    use serde_json::json;

    use super::super::testdata::{cache_file, conflist, B64};
    use super::*;

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
    fn cache_files_are_read_capped_and_never_through_a_symlink() {
        let scratch = meshcap_testkit::ScratchDir::new("adopt-read");
        let dir = scratch.path();
        fs::write(dir.join("small"), b"{}").unwrap();
        fs::write(dir.join("big"), vec![b' '; MAX_CACHE_FILE as usize + 1]).unwrap();
        std::os::unix::fs::symlink(dir.join("small"), dir.join("link")).unwrap();
        let small = read_capped(&dir.join("small"));
        let big = read_capped(&dir.join("big"));
        let link = read_capped(&dir.join("link"));
        assert_eq!(small.unwrap(), b"{}");
        assert!(big.is_err());
        assert!(link.is_err(), "O_NOFOLLOW refuses the symlink");
    }
}

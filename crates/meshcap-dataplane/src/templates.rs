//! The node's store of verified xtables templates (`/run/meshcap/templates`, docs/DESIGN.md
//! "The plugin's hot path"): one file per family and restore input, named by a hash of its key.
//!
//! `/run` is a tmpfs on a node, so the store is bounded: a node that meets many distinct
//! rulesets over its lifetime (per-pod port exclusions, an upgraded `iptables-nft-restore`
//! making every old key unreachable) keeps the [`CAPACITY`] most recently used templates. A
//! replay marks its template used (its mtime); keeping a new one evicts the least recently
//! used beyond the bound. An evicted template only costs its next pod a restore.

use std::io::{self, Read as _};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use meshcap_model::rules::Family;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// Templates kept per node: about 16 KiB each, so at most a few MiB of tmpfs.
pub(crate) const CAPACITY: usize = 256;

/// How fine the use marks are: a template marked used this recently is not marked again, so
/// the pods that replay it together do not queue on its inode to set its mtime.
const USE_RESOLUTION: Duration = Duration::from_secs(60);

/// A writer's temporary file older than this was left by a writer that died before its rename.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// Marks the temporary file a writer renames into place.
const TMP_MARK: &str = ".tmp";

/// A stored template's bytes, and when it was last marked used (its mtime).
pub(crate) struct Stored {
    pub bytes: Vec<u8>,
    pub used_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub(crate) struct TemplateStore {
    dir: PathBuf,
    capacity: usize,
}

impl TemplateStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self::with_capacity(dir, CAPACITY)
    }

    pub(crate) fn with_capacity(dir: PathBuf, capacity: usize) -> Self {
        Self { dir, capacity }
    }

    /// What is stored for `key`, if anything (the caller compares the key held inside).
    pub(crate) fn read(&self, family: Family, key: &str) -> Option<Stored> {
        let mut file = std::fs::File::open(self.path(family, key)).ok()?;
        let meta = file.metadata().ok();
        let mut bytes = Vec::with_capacity(meta.as_ref().map_or(0, |m| m.len() as usize));
        file.read_to_end(&mut bytes).ok()?;
        Some(Stored {
            bytes,
            used_at: meta.and_then(|m| m.modified().ok()),
        })
    }

    /// Marks the template of `key` as just used, so eviction takes others first, unless
    /// `used_at` (what [`TemplateStore::read`] found) is within [`USE_RESOLUTION`].
    pub(crate) fn used(&self, family: Family, key: &str, used_at: Option<SystemTime>) {
        let recent = used_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < USE_RESOLUTION);
        if !recent {
            let now = TimeSpec::UTIME_NOW;
            let path = self.path(family, key);
            let _ = utimensat(None, &path, &now, &now, UtimensatFlags::NoFollowSymlink);
        }
    }

    /// Drops the template of `key` (one the kernel refused).
    pub(crate) fn forget(&self, family: Family, key: &str) {
        let _ = std::fs::remove_file(self.path(family, key));
    }

    /// Stores `bytes` as the template of `key` (written aside, renamed into place, so a
    /// reader sees the whole file or none), then evicts beyond the bound; returns its file.
    pub(crate) fn keep(&self, family: Family, key: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.path(family, key);
        let tmp_suffix = format!("{TMP_MARK}{}", std::process::id());
        crate::write_replacing(&path, &tmp_suffix, bytes)?;
        self.evict();
        Ok(path)
    }

    /// Removes the least recently used templates beyond the bound, and temporary files whose
    /// writer is gone. Concurrent plugins may evict the same file: a vanished one is fine.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut kept: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if entry.file_name().to_string_lossy().contains(TMP_MARK) {
                if now.duration_since(modified).unwrap_or_default() > ABANDONED_AFTER {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            kept.push((modified, entry.path()));
        }
        if kept.len() <= self.capacity {
            return;
        }
        kept.sort();
        let excess = kept.len() - self.capacity;
        for (_, path) in kept.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }

    pub(crate) fn path(&self, family: Family, key: &str) -> PathBuf {
        self.dir
            .join(format!("{family}-{:016x}", fnv1a(key.as_bytes())))
    }
}

/// FNV-1a, 64 bits: a stable file name for a key (the file holds the key itself, compared on
/// load, so a collision only costs a restore).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::Path;

    fn store(capacity: usize) -> (meshcap_testkit::ScratchDir, TemplateStore) {
        let dir = meshcap_testkit::ScratchDir::new("templates");
        let store = TemplateStore::with_capacity(dir.path().join("templates"), capacity);
        (dir, store)
    }

    fn age(path: &Path, secs: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    fn bytes(store: &TemplateStore, family: Family, key: &str) -> Option<Vec<u8>> {
        store.read(family, key).map(|stored| stored.bytes)
    }

    /// A replay's use of `key`: read, then marked.
    fn use_once(store: &TemplateStore, family: Family, key: &str) {
        let used_at = store.read(family, key).and_then(|stored| stored.used_at);
        store.used(family, key, used_at);
    }

    fn names(store: &TemplateStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_and_reads_back_per_family_and_key() {
        let (_dir, s) = store(8);
        s.keep(Family::V4, "a", b"four").unwrap();
        s.keep(Family::V6, "a", b"six").unwrap();
        assert_eq!(bytes(&s, Family::V4, "a").as_deref(), Some(&b"four"[..]));
        assert_eq!(bytes(&s, Family::V6, "a").as_deref(), Some(&b"six"[..]));
        assert_eq!(bytes(&s, Family::V4, "b"), None);
        s.forget(Family::V4, "a");
        assert_eq!(bytes(&s, Family::V4, "a"), None);
        assert_eq!(bytes(&s, Family::V6, "a").as_deref(), Some(&b"six"[..]));
    }

    #[test]
    fn keeping_beyond_the_bound_evicts_the_least_recently_used() {
        let (_dir, s) = store(3);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let path = s.keep(Family::V4, key, key.as_bytes()).unwrap();
            // a oldest, then b, then c.
            age(&path, 300 - 100 * i as u64);
        }
        // A replay of `a` makes it the most recently used: `b` goes first.
        use_once(&s, Family::V4, "a");
        s.keep(Family::V4, "d", b"d").unwrap();
        assert_eq!(names(&s).len(), 3);
        assert!(s.read(Family::V4, "a").is_some());
        assert!(s.read(Family::V4, "b").is_none());
        assert!(s.read(Family::V4, "c").is_some());
        assert!(s.read(Family::V4, "d").is_some());
    }

    #[test]
    fn a_use_is_marked_once_per_resolution() {
        let (_dir, s) = store(8);
        let path = s.keep(Family::V4, "a", b"a").unwrap();
        let mtime = |p: &Path| p.metadata().unwrap().modified().unwrap();
        age(&path, 10);
        let recent = mtime(&path);
        use_once(&s, Family::V4, "a");
        assert_eq!(
            mtime(&path),
            recent,
            "marked again within {USE_RESOLUTION:?}"
        );
        age(&path, USE_RESOLUTION.as_secs() + 10);
        use_once(&s, Family::V4, "a");
        let age_now = SystemTime::now().duration_since(mtime(&path)).unwrap();
        assert!(
            age_now < Duration::from_secs(5),
            "not marked: {age_now:?} old"
        );
    }

    #[test]
    fn an_abandoned_temporary_file_is_removed_and_a_live_one_left() {
        let (_dir, s) = store(8);
        s.keep(Family::V4, "a", b"a").unwrap();
        let abandoned = s.dir.join(format!("ipv4-0000000000000001{TMP_MARK}1"));
        let live = s.dir.join(format!("ipv4-0000000000000002{TMP_MARK}2"));
        std::fs::write(&abandoned, b"torn").unwrap();
        std::fs::write(&live, b"being written").unwrap();
        age(&abandoned, 3600);
        s.keep(Family::V4, "b", b"b").unwrap();
        assert!(!abandoned.exists());
        assert!(live.exists());
        assert_eq!(names(&s).len(), 3);
    }
}

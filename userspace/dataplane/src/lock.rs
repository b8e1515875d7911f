//! Per-namespace serialisation. There is deliberately no node-wide lock: the kubelet starts
//! pods in parallel and none may wait for another. What must not interleave is two operations
//! on the same namespace (a retried ADD racing the DEL of the same sandbox), so each takes an
//! exclusive `flock(2)` on a file named after the namespace's device and inode.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::netns::NetnsId;
use crate::DataplaneError;

/// Directory, under the run directory, that holds the lock files.
const LOCK_SUBDIR: &str = "locks";

/// Held for the duration of one apply/remove/check of one namespace; unlocks on drop.
#[derive(Debug)]
pub(crate) struct NetnsLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl NetnsLock {
    /// Deletes the lock file (and `extra`, e.g. the xtables lock) while still holding the
    /// lock, once a namespace has nothing of meshcap's left, so that lock files do not pile up
    /// for every pod a node ever ran. Waiters notice the unlink and retry on a fresh file.
    pub fn unlink(self, extra: &Path) {
        let _ = fs::remove_file(extra);
        let _ = fs::remove_file(&self.path);
    }
}

pub(crate) fn lock_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(LOCK_SUBDIR)
}

/// `<run_dir>/locks/<dev>-<ino>`.
pub(crate) fn lock_path(run_dir: &Path, id: NetnsId) -> PathBuf {
    lock_dir(run_dir).join(id.to_string())
}

/// The file `iptables-legacy` locks instead of the node-wide `/run/xtables.lock`
/// (`XTABLES_LOCKFILE`, read by xtables' `xtables_lock()`), so legacy restores in different
/// pods never wait on each other.
pub(crate) fn xtables_lock_path(run_dir: &Path, id: NetnsId) -> PathBuf {
    lock_dir(run_dir).join(format!("xtables-{id}"))
}

/// Blocks until this process holds the namespace's lock.
pub(crate) fn lock_netns(run_dir: &Path, id: NetnsId) -> Result<NetnsLock, DataplaneError> {
    let dir = lock_dir(run_dir);
    let path = lock_path(run_dir, id);
    let err = |path: &Path, source: io::Error| DataplaneError::Lock {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
    let mut file = open(&path).map_err(|e| err(&path, e))?;
    loop {
        let lock = match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => lock,
            Err((f, Errno::EINTR)) => {
                file = f;
                continue;
            }
            Err((_, errno)) => return Err(err(&path, errno.into())),
        };
        // The holder we waited for may have unlinked the file (see `unlink`): a lock on an
        // unlinked inode excludes nobody, so only a lock on what the path names now counts.
        let locked = lock.metadata().map_err(|e| err(&path, e))?;
        match fs::metadata(&path) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                return Ok(NetnsLock { _lock: lock, path });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&path, e)),
        }
        drop(lock);
        file = open(&path).map_err(|e| err(&path, e))?;
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_survives_unlink_by_previous_holder() {
        let dir = std::env::temp_dir().join(format!("dp-lock-{}", std::process::id()));
        let id = NetnsId { dev: 1, ino: 2 };
        let first = lock_netns(&dir, id).unwrap();
        assert!(lock_path(&dir, id).exists());
        first.unlink(&xtables_lock_path(&dir, id));
        assert!(!lock_path(&dir, id).exists());
        // A new lock recreates the file.
        let second = lock_netns(&dir, id).unwrap();
        assert!(lock_path(&dir, id).exists());
        drop(second);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn waiter_gets_the_lock_after_unlink() {
        let dir = std::env::temp_dir().join(format!("dp-lock-wait-{}", std::process::id()));
        let id = NetnsId { dev: 3, ino: 4 };
        let first = lock_netns(&dir, id).unwrap();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || lock_netns(&dir, id).map(drop))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        first.unlink(Path::new("/nonexistent"));
        waiter.join().unwrap().unwrap();
        let _ = fs::remove_dir_all(&dir);
    }
}

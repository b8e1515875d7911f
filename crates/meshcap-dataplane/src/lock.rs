//! Per-namespace serialisation. There is deliberately no node-wide lock: the kubelet starts
//! pods in parallel and none may wait for another. What must not interleave is two operations
//! on the same namespace (a retried ADD racing the DEL of the same sandbox, the agent's repair
//! racing either), so each takes an exclusive `flock(2)` on the namespace itself.
//!
//! `/run/netns/<name>`, `/proc/<pid>/ns/net` and any other handle of one network namespace
//! open the same nsfs inode, and flock locks belong to the inode: every meshcap process that
//! opened the namespace, under whatever path, contends on the same lock. So there are no lock
//! files: nothing to create on the pod-start path, nothing to clean up when the namespace goes.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::netns::{NetnsId, PodNetns};
use crate::DataplaneError;

/// Held for the duration of one apply/remove/check/inspect of one namespace; unlocks on drop.
#[derive(Debug)]
pub struct NetnsLock {
    _lock: Flock<File>,
}

/// The file `iptables-legacy` locks instead of the node-wide `/run/xtables.lock`
/// (`XTABLES_LOCKFILE`, read by xtables' `xtables_lock()`), so legacy restores in different
/// pods never wait on each other. Only legacy programs create it; DEL removes it.
pub(crate) fn xtables_lock_path(run_dir: &Path, id: NetnsId) -> PathBuf {
    run_dir.join(crate::LOCKS_DIR).join(format!("xtables-{id}"))
}

/// Blocks until this process holds the namespace's lock.
pub(crate) fn lock_netns(ns: &PodNetns) -> Result<NetnsLock, DataplaneError> {
    let err = |source: std::io::Error| DataplaneError::Lock {
        path: ns.path().to_owned(),
        source,
    };
    // A duplicate of the namespace handle (same open file description): the lock is released
    // when the guard drops, while the `PodNetns` stays usable.
    let mut file = ns.file().try_clone().map_err(err)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(NetnsLock { _lock: lock }),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(err(errno.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Two handles of the same namespace opened by different paths exclude each other.
    #[test]
    fn handles_of_one_namespace_share_the_lock() {
        let (Ok(a), Ok(b)) = (
            PodNetns::open(Path::new("/proc/self/ns/net")),
            PodNetns::open(Path::new("/proc/thread-self/ns/net")),
        ) else {
            meshcap_testkit::skip_or_fail(
                "handles_of_one_namespace_share_the_lock",
                "/proc/*/ns/net not readable",
            );
            return;
        };
        assert_eq!(a.id(), b.id());
        let held = lock_netns(&a).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock = lock_netns(&b).map(drop);
            tx.send(()).unwrap();
            lock
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second handle of the namespace got the lock while the first held it"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the waiter got the lock once it was released");
        waiter.join().unwrap().unwrap();
    }
}

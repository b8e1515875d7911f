//! Entering a network namespace, the one way meshcap does it (the plugin's dataplane, the fast
//! path, the benchmarks and the tests all come here).
//!
//! Namespaces belong to threads: `setns(2)` moves only the calling thread, and a child process
//! starts in the namespace of the thread that forks it. So there are three ways in:
//! - [`run_in`]: the calling thread enters, runs a closure and returns, also when the closure
//!   panics (the model is ztunnel's `InpodNetns::run`); the guard that switches back is
//!   `!Send`, so it never moves to another thread.
//! - [`run_on_thread`]: a fresh scoped thread enters and runs the closure; the caller's thread
//!   never changes.
//! - [`enter_for_good`]: the calling thread stays in the namespace for the rest of its life (a
//!   thread that plays a pod's app or sidecar).
//!
//! One case stays outside: entering between `fork` and `exec` (a `pre_exec` hook) must use only
//! async-signal-safe calls, so the end-to-end suite's `setns_before_exec` (`crates/meshcap-tests/src/sys.rs`) calls `setns(2)` itself.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sched::{setns, CloneFlags};

/// The calling thread's own network namespace. `/proc/self` would name the main thread's,
/// which differs while another thread is inside a pod.
pub const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a thread could not enter a namespace.
#[derive(Debug)]
pub struct EnterError {
    /// `open the calling thread's` (its own namespace, to come back to) or `setns into`.
    pub op: &'static str,
    pub source: io::Error,
}

impl EnterError {
    /// Whether the failure was about the calling thread's own namespace (not the target's).
    pub fn is_home(&self) -> bool {
        self.op == OPEN_HOME
    }
}

const OPEN_HOME: &str = "open the calling thread's";
const SETNS: &str = "setns into";

impl fmt::Display for EnterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} network namespace: {}", self.op, self.source)
    }
}

impl std::error::Error for EnterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn enter(ns: BorrowedFd<'_>) -> Result<(), EnterError> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| EnterError {
        op: SETNS,
        source: e.into(),
    })
}

/// Runs `f` on the calling thread inside the namespace `ns` refers to, then switches the thread
/// back to the namespace it was in, also when `f` panics. Processes spawned by `f` start in
/// `ns`; threads must not be spawned by `f`, and nothing inside may await.
///
/// # Panics
/// When the thread cannot return to its original namespace: carrying on would do the next
/// piece of work in the wrong namespace, so this is not a recoverable error.
pub fn run_in<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> Result<T, EnterError> {
    let home = File::open(THREAD_NETNS).map_err(|source| EnterError {
        op: OPEN_HOME,
        source,
    })?;
    enter(ns)?;
    let _back = ReturnGuard {
        home,
        _not_send: PhantomData,
    };
    Ok(f())
}

/// Runs `f` on a fresh thread that entered `ns` (the thread ends with `f`, so nothing else
/// ever runs in that namespace by accident); the caller's thread is untouched. A panic in `f`
/// is resumed on the caller's thread.
pub fn run_on_thread<T: Send>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, EnterError> {
    std::thread::scope(|s| {
        match s
            .spawn(move || {
                enter(ns)?;
                Ok(f())
            })
            .join()
        {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread into `ns` for the rest of its life.
pub fn enter_for_good(ns: BorrowedFd<'_>) -> Result<(), EnterError> {
    enter(ns)
}

/// Switches the thread back to `home` when dropped (normal return or unwinding).
struct ReturnGuard {
    home: File,
    /// A raw pointer makes the guard `!Send` and `!Sync`: namespaces belong to threads.
    _not_send: PhantomData<*const ()>,
}

impl Drop for ReturnGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("cannot return the thread to its network namespace: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_which_step_failed() {
        let e = EnterError {
            op: SETNS,
            source: io::Error::from_raw_os_error(1),
        };
        assert!(!e.is_home());
        assert!(e.to_string().starts_with("setns into network namespace: "));
    }
}

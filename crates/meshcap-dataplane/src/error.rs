//! The crate's error type. Every variant names the operation and its inputs so that the CNI
//! plugin can put a useful `msg`/`details` into its error JSON without further context.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The namespace path does not exist (any more).
    #[error("network namespace {path} does not exist")]
    NetnsVanished { path: PathBuf },

    /// A syscall on a namespace file failed (`op` says which: open, fstatfs, setns into, ...).
    #[error("{op} network namespace {path}: {source}")]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace: {reason}")]
    NotNetns { path: PathBuf, reason: String },

    /// Creating or taking the per-namespace lock failed.
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A required program is in none of the searched directories.
    #[error("{program} not found in {searched}")]
    BinaryMissing { program: String, searched: String },

    /// A program could not be started (or fed its input).
    #[error("run {binary} in {netns}: {source}")]
    Spawn {
        binary: PathBuf,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A program ran and failed.
    #[error("{} {} in {netns} failed ({status}): {stderr}", binary.display(), args.join(" "))]
    Command {
        binary: PathBuf,
        args: Vec<String>,
        netns: PathBuf,
        status: String,
        /// The program's stderr, trimmed and cut to a few KiB.
        stderr: String,
    },

    /// An rtnetlink request failed; `source.raw_os_error()` carries the errno when the kernel
    /// answered with one.
    #[error("netlink {op} in {netns}: {source}")]
    Netlink {
        op: String,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A native nftables operation failed: `op` is what the dataplane was doing, the source
    /// the netlink request that failed.
    #[error("{op} in {netns}: {source}")]
    Nftables {
        op: &'static str,
        netns: PathBuf,
        /// Boxed: it is large, and errors travel through every `Result` of the crate.
        #[source]
        source: Box<meshcap_nft::NftError>,
    },

    /// An apply failed and undoing its partial changes failed as well: the namespace may hold
    /// part of the new state.
    #[error("{original}; rolling back also failed: {rollback}")]
    RollbackFailed {
        original: Box<DataplaneError>,
        rollback: Box<DataplaneError>,
    },

    /// CHECK: installed state differs from the expected state.
    #[error("meshcap rules drifted: {}", .details.join("; "))]
    Drift { details: Vec<String> },
}

impl DataplaneError {
    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Netns { source, .. }
            | DataplaneError::Lock { source, .. }
            | DataplaneError::Spawn { source, .. }
            | DataplaneError::Netlink { source, .. } => source.raw_os_error(),
            DataplaneError::RollbackFailed { original, .. } => original.errno(),
            DataplaneError::Nftables { source, .. } => source.errno(),
            _ => None,
        }
    }
}

/// Keeps error messages readable: the head of a child's stderr is what explains a failure
/// (`iptables-restore: line 3 failed`).
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

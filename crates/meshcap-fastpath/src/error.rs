//! The crate's error type. Variants carry the operation and its inputs so a log line alone
//! says what failed where.
use std::{io, path::PathBuf};

/// Errors of the eBPF fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The crate was compiled without `MESHCAP_BUILD_EBPF=1`, so it embeds an empty stub.
    #[error("built without the eBPF object; rebuild with MESHCAP_BUILD_EBPF=1 (scripts/setup.sh installs what that needs)")]
    NoObject,

    /// The agent has not installed the fast path on this node (or it was uninstalled). The CNI
    /// plugin logs this and carries on with rules alone.
    #[error("eBPF fast path not available: {reason}")]
    NotAvailable { reason: String },

    /// This kernel, host or privilege level cannot carry the fast path.
    #[error("this host cannot carry the eBPF fast path: {reason}")]
    Unsupported { reason: String },

    /// A file-system operation on a bpffs or cgroup path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A raw system call failed.
    #[error("{call} failed: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },

    /// aya could not parse or load the object, or create or reuse its pinned maps.
    #[error("loading the eBPF object (maps pinned under {}): {source}", pin_dir.display())]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// A program is missing from the object, or the kernel refused to load or attach it.
    #[error("eBPF program {name}: {op}: {source}")]
    Program {
        name: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// A map operation failed.
    #[error("eBPF map {name}: {op}: {source}")]
    Map {
        name: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// The object lacks a program or map this loader expects (object and loader out of step).
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
}

impl FastPathError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn map(name: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            name,
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(
        name: &'static str,
        op: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        Self::Program {
            name,
            op,
            source: Box::new(source),
        }
    }

    /// True when the fast path is simply absent on this node (not installed, stub build,
    /// unsupported host): callers that can do without it should log and go on.
    pub fn is_not_available(&self) -> bool {
        matches!(
            self,
            Self::NotAvailable { .. } | Self::NoObject | Self::Unsupported { .. }
        )
    }
}

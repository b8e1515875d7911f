//! A pod network namespace: opened and checked by file descriptor, entered for a synchronous
//! closure only (through `meshcap-netns`, the one way meshcap enters namespaces).
//!
//! This is the one module of the crate that makes raw syscalls (the `NS_GET_NSTYPE` ioctl);
//! everything else goes through safe wrappers.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use meshcap_netns::THREAD_NETNS;
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::DataplaneError;

/// Identity of a network namespace: device and inode of its nsfs file. Stable for the
/// namespace's lifetime and the same through every bind mount of it (`ip netns`, CRI pins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.dev, self.ino)
    }
}

/// An open handle on a pod network namespace.
#[derive(Debug)]
pub struct PodNetns {
    path: PathBuf,
    file: File,
    id: NetnsId,
}

impl PodNetns {
    /// Opens `path` (a bind-mounted nsfs file such as `/var/run/netns/cni-…` or
    /// `/proc/PID/ns/net`) and checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<Self, DataplaneError> {
        // std opens with O_CLOEXEC, so children we spawn never inherit the handle.
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DataplaneError::NetnsVanished {
                path: path.to_owned(),
            },
            _ => DataplaneError::Netns {
                op: "open",
                path: path.to_owned(),
                source,
            },
        })?;
        let netns = Self::from_file(path, file)?;
        Ok(netns)
    }

    /// The calling thread's current network namespace.
    pub fn current_thread() -> Result<Self, DataplaneError> {
        Self::open(Path::new(THREAD_NETNS))
    }

    fn from_file(path: &Path, file: File) -> Result<Self, DataplaneError> {
        let netns_err = |op, source| DataplaneError::Netns {
            op,
            path: path.to_owned(),
            source,
        };
        let fs = fstatfs(&file).map_err(|e| netns_err("fstatfs", io::Error::from(e)))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(DataplaneError::NotNetns {
                path: path.to_owned(),
                reason: format!("filesystem type {:#x} is not nsfs", fs.filesystem_type().0),
            });
        }
        let nstype = ns_get_nstype(&file).map_err(|e| netns_err("ioctl NS_GET_NSTYPE", e))?;
        if nstype != libc::CLONE_NEWNET {
            return Err(DataplaneError::NotNetns {
                path: path.to_owned(),
                reason: format!("namespace type {nstype:#x} is not CLONE_NEWNET"),
            });
        }
        let meta = file.metadata().map_err(|e| netns_err("fstat", e))?;
        Ok(PodNetns {
            path: path.to_owned(),
            id: NetnsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the namespace (lock names, eBPF fast-path keys).
    pub fn id(&self) -> NetnsId {
        self.id
    }

    pub fn dev(&self) -> u64 {
        self.id.dev
    }

    pub fn ino(&self) -> u64 {
        self.id.ino
    }

    /// The open namespace handle (the per-namespace lock is taken on it).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on the calling thread inside this namespace, then switches the thread back to
    /// the namespace it was in, also when `f` panics. Processes spawned by `f` start in this
    /// namespace (a child inherits the namespaces of the thread that forks it); threads must
    /// not be spawned by `f`, and nothing inside may await.
    ///
    /// # Panics
    /// When the thread cannot return to its original namespace: carrying on would apply the
    /// next pod's rules to the wrong namespace, so this is not a recoverable error.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, DataplaneError> {
        meshcap_netns::run_in(self.file.as_fd(), f).map_err(|e| DataplaneError::Netns {
            op: e.op,
            path: if e.is_home() {
                PathBuf::from(THREAD_NETNS)
            } else {
                self.path.clone()
            },
            source: e.source,
        })
    }
}

/// `ioctl(fd, NS_GET_NSTYPE)` (linux/nsfs.h, Linux 4.11+): the `CLONE_NEW*` type of an nsfs fd.
fn ns_get_nstype(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps open
    // for the duration of the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

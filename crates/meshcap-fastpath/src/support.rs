//! Can this host carry the fast path? Finds the cgroup v2 root and the bpffs, and turns the
//! kernel's refusals into reasons a person can act on.
#![forbid(unsafe_code)]

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{statfs, FsType};

use crate::{sys, FastPathError};

/// `BPF_FS_MAGIC` and `CGROUP2_SUPER_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Oldest kernel whose sock_ops and sk_msg programs may call `bpf_get_netns_cookie` (5.15).
const MIN_KERNEL: (u32, u32) = (5, 15);

/// What [`check`] found.
pub(crate) struct Support {
    /// cgroup v2 directory to attach the cgroup programs to.
    pub cgroup: PathBuf,
}

fn unsupported(reason: impl Into<String>) -> FastPathError {
    FastPathError::Unsupported {
        reason: reason.into(),
    }
}

fn fs_magic(path: &Path) -> Option<i64> {
    // `f_type` is an i64 here but narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    statfs(path)
        .ok()
        .map(|s| s.filesystem_type())
        .map(|FsType(t)| t as i64)
}

/// Kernel release as (major, minor), from /proc/sys/kernel/osrelease.
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The mount point of the cgroup v2 hierarchy's root: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one (systemd's layout), wherever mountinfo says.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&mountinfo)
}

/// mountinfo lines: `id parent maj:min root mountpoint opts [optional...] - fstype source ...`
/// (Documentation/filesystems/proc.rst). Only a mount of the hierarchy's root ("/") counts:
/// attaching there covers every cgroup on the node.
pub(crate) fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mut f = pre.split_whitespace();
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
        })
        .min_by_key(|p| p.components().count())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks privileges, kernel, bpffs and cgroup v2, mounting the bpffs when it is missing.
pub(crate) fn check(pin_dir: &Path, cgroup: Option<&Path>) -> Result<Support, FastPathError> {
    if sys::geteuid() != 0 {
        return Err(unsupported(
            "the agent must run as root (loading and attaching cgroup BPF programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        ));
    }
    match kernel_version() {
        Some(v) if v < MIN_KERNEL => {
            return Err(unsupported(format!(
                "kernel {}.{} is older than {}.{}: its sock_ops and sk_msg programs cannot call bpf_get_netns_cookie",
                v.0, v.1, MIN_KERNEL.0, MIN_KERNEL.1
            )))
        }
        _ => {}
    }

    // The pin directory's parent must be on a bpffs; mount the conventional one if absent.
    let bpffs = pin_dir.parent().unwrap_or(Path::new("/"));
    if fs_magic(bpffs) != Some(BPF_FS_MAGIC) {
        if bpffs == Path::new("/sys/fs/bpf") {
            sys::mount_bpffs(bpffs).map_err(|e| {
                unsupported(format!(
                    "/sys/fs/bpf is not a bpffs and mounting one failed: {e}"
                ))
            })?;
        } else {
            return Err(unsupported(format!(
                "{} is not on a bpffs (mount -t bpf bpf {})",
                bpffs.display(),
                bpffs.display()
            )));
        }
    }

    let cgroup = match cgroup {
        Some(c) => c.to_path_buf(),
        None => cgroup2_root().ok_or_else(|| {
            unsupported(
                "no cgroup v2 hierarchy is mounted (neither unified /sys/fs/cgroup nor hybrid /sys/fs/cgroup/unified); sock_ops needs one",
            )
        })?,
    };
    if fs_magic(&cgroup) != Some(CGROUP2_SUPER_MAGIC) {
        return Err(unsupported(format!(
            "{} is not a cgroup v2 directory",
            cgroup.display()
        )));
    }
    Ok(Support { cgroup })
}

/// Turns a failed cgroup attach into a reason.
pub(crate) fn explain_attach(
    name: &'static str,
    cgroup: &Path,
    source: io::Error,
) -> FastPathError {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => "permission denied: needs CAP_BPF/CAP_NET_ADMIN and, in a container, the host's cgroup namespace",
        Some(libc::EINVAL) => "the kernel does not support this attach type with bpf_link (Linux 5.7+ needed)",
        Some(libc::EBADF) => "not a cgroup directory",
        _ => "the kernel refused the attachment",
    };
    unsupported(format!(
        "attaching {name} to cgroup {}: {source} ({hint})",
        cgroup.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_roots() {
        // Debian 12 hybrid layout (cgroup v1 controllers plus the unified hierarchy).
        let hybrid = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // Pure v2, plus a container's view of a sub-hierarchy that must not count.
        let unified = "\
31 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
90 31 0:27 /kubepods /var/lib/x rw shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_root("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}

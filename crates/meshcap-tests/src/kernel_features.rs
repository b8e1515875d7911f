//! Which kernel features this kernel carries, probed the way meshcap uses them, so the suite
//! can say what it relied on and skip, by name, what the kernel cannot carry.
//!
//! Each probe does the smallest real thing meshcap needs and returns `Ok(())` or why not:
//! - [`Feature::Nftables`]: an `ip` table with a NAT `redirect` chain in a fresh network
//!   namespace (nf_tables, nft_nat, nft_redir).
//! - [`Feature::XtTproxy`]: the iptables `TPROXY` target in a fresh namespace (xt_TPROXY, through
//!   nft_compat when iptables is the nft flavour).
//! - [`Feature::NftTproxy`]: the native nftables `tproxy` statement (nft_tproxy).
//! - [`Feature::Sockmap`]: creating a `BPF_MAP_TYPE_SOCKHASH` map (CONFIG_BPF_STREAM_PARSER),
//!   which the eBPF fast path's sk_msg program redirects through.
//! - [`Feature::CgroupV2`]: a mounted cgroup2 hierarchy, where the sockops program attaches.
//!
//! The namespace probes run `nft`/`iptables` in a scratch namespace of their own
//! (`meshcap_testkit::ScratchNetns`), so nothing outlives the probe and the caller's namespace
//! is never touched. Results are cached per process: every test asking for the same feature
//! sees the same answer, and the probe runs once.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

/// A kernel feature the suite relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// nf_tables with NAT redirect, usable in a fresh network namespace (`mode: nftables`, and
    /// `mode: iptables` with the nft-backed flavour).
    Nftables,
    /// The xtables `TPROXY` target (`mode: iptables` with `interceptionMode: TPROXY`).
    XtTproxy,
    /// The native nftables `tproxy` statement (`mode: nftables` with TPROXY).
    NftTproxy,
    /// sockmap/sockhash BPF maps (the eBPF fast path).
    Sockmap,
    /// A mounted cgroup v2 hierarchy (the eBPF fast path's sockops attach point).
    CgroupV2,
}

impl Feature {
    /// Every feature, in report order.
    pub const ALL: [Feature; 5] = [
        Feature::Nftables,
        Feature::XtTproxy,
        Feature::NftTproxy,
        Feature::Sockmap,
        Feature::CgroupV2,
    ];

    /// The feature's name in reports and skip messages.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Nftables => "nftables",
            Feature::XtTproxy => "xt_TPROXY",
            Feature::NftTproxy => "nft tproxy",
            Feature::Sockmap => "sockmap",
            Feature::CgroupV2 => "cgroup v2",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a feature cannot be used on this kernel (or this machine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} unavailable: {reason}")]
pub struct Unavailable {
    /// The feature probed.
    pub feature: Feature,
    /// What the probe saw: the tool's error line, the syscall's errno, the missing mount.
    pub reason: String,
}

/// Probes `feature` (once per process; later calls return the cached answer).
pub fn probe(feature: Feature) -> Result<(), Unavailable> {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<Feature, Result<(), Unavailable>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&feature)
    {
        return r.clone();
    }
    let result = match feature {
        Feature::Nftables => nftables(),
        Feature::XtTproxy => xt_tproxy(),
        Feature::NftTproxy => nft_tproxy(),
        Feature::Sockmap => sockmap(),
        Feature::CgroupV2 => cgroup_v2(),
    }
    .map_err(|reason| Unavailable { feature, reason });
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(feature, result.clone());
    result
}

/// nf_tables with a NAT redirect chain in a fresh network namespace.
pub fn nftables() -> Result<(), String> {
    in_fresh_netns(
        &["nft", "-f", "-"],
        Some(
            "table ip meshcap_probe {\n\
             \tchain out {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tmeta l4proto tcp redirect to :15001\n\
             \t}\n\
             }\n",
        ),
    )
}

/// The xtables TPROXY target in a fresh network namespace, as Istio's TPROXY mode writes it.
pub fn xt_tproxy() -> Result<(), String> {
    in_fresh_netns(
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "TPROXY",
            "--on-port",
            "15006",
            "--tproxy-mark",
            "1337/0xffffffff",
        ],
        None,
    )
}

/// The native nftables tproxy statement in a fresh network namespace.
pub fn nft_tproxy() -> Result<(), String> {
    in_fresh_netns(
        &["nft", "-f", "-"],
        Some(
            "table ip meshcap_probe {\n\
             \tchain pre {\n\
             \t\ttype filter hook prerouting priority mangle; policy accept;\n\
             \t\tmeta l4proto tcp tproxy to :15006 meta mark set 1337 accept\n\
             \t}\n\
             }\n",
        ),
    )
}

/// Creating a sockhash map (the fast path's map type); needs CAP_BPF or root.
pub fn sockmap() -> Result<(), String> {
    // BPF_MAP_TYPE_SOCKHASH; the value of a sockhash is the socket's fd (u32) on update.
    const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
    bpf_map_create(BPF_MAP_TYPE_SOCKHASH, 8, 4, 1)
        .map_err(|e| format!("bpf(BPF_MAP_CREATE, SOCKHASH): {e}"))
}

/// A mounted cgroup2 filesystem (any mount point: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup_v2() -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    // mountinfo: "... mount-point ... - fstype source options"; the fs type follows " - ".
    let found = mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .map(|(_, rest)| rest.split_whitespace().next() == Some("cgroup2"))
            .unwrap_or(false)
    });
    if found {
        Ok(())
    } else {
        Err("no cgroup2 filesystem is mounted (a cgroup v1-only host?)".into())
    }
}

/// Every feature's probe result, in [`Feature::ALL`] order.
pub fn report() -> Vec<(Feature, Result<(), Unavailable>)> {
    Feature::ALL.iter().map(|&f| (f, probe(f))).collect()
}

/// Prints the kernel release and every feature's state to stderr, one line each, so a test
/// run's log says what the kernel carried.
pub fn print_report() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "kernel {kernel}: features the suite relies on");
    for (feature, result) in report() {
        let _ = match result {
            Ok(()) => writeln!(err, "  {feature}: ok"),
            Err(e) => writeln!(err, "  {feature}: MISSING ({})", e.reason),
        };
    }
}

/// Whether the test `name` can use every feature in `needs`. When one is missing, prints
/// `SKIPPED <name>: kernel lacks <feature>: <reason>` and returns `false`; under `CI=true` it
/// panics instead, so CI never passes by skipping (the same contract as `privileged`).
pub fn require(name: &str, needs: &[Feature]) -> bool {
    for &feature in needs {
        if let Err(e) = probe(feature) {
            let why = format!("kernel {} lacks {feature}: {}", kernel_release(), e.reason);
            meshcap_testkit::skip_or_fail(name, &why);
            return false;
        }
    }
    true
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Runs `argv` in a scratch network namespace of its own, feeding `stdin`.
fn in_fresh_netns(argv: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let ns = meshcap_testkit::ScratchNetns::new("probe")
        .map_err(|e| format!("create a scratch network namespace: {e}"))?;
    ns.exec(argv, stdin).map(drop).map_err(|e| {
        let e = e.to_string();
        let first = e
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        format!("`{}` failed: {first}", argv.join(" "))
    })
}

/// bpf(BPF_MAP_CREATE) for a map of `map_type`, closed again at once.
#[allow(unsafe_code)]
fn bpf_map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const BPF_MAP_CREATE: libc::c_long = 0;
    // The head of `union bpf_attr` for BPF_MAP_CREATE (include/uapi/linux/bpf.h); the kernel
    // accepts a shorter attr as long as every byte it does not know is zero.
    #[repr(C)]
    #[derive(Default)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `size_of::<MapCreateAttr>()` bytes from a live, initialised struct
    // and returns a new fd or -1; it keeps no pointer to the struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report names every feature once, in order; a probe that cannot run still answers.
    #[test]
    fn report_covers_every_feature() {
        let r = report();
        let names: Vec<_> = r.iter().map(|(f, _)| f.name()).collect();
        assert_eq!(
            names,
            [
                "nftables",
                "xt_TPROXY",
                "nft tproxy",
                "sockmap",
                "cgroup v2"
            ]
        );
        for (f, res) in &r {
            if let Err(e) = res {
                assert_eq!(e.feature, *f);
                assert!(!e.reason.is_empty());
            }
        }
    }

    /// Probing twice gives the same answer (the cache), including the reason.
    #[test]
    fn probes_are_cached() {
        for f in Feature::ALL {
            assert_eq!(probe(f), probe(f));
        }
    }
}

//! Pod network namespaces, made the way a primary CNI plugin leaves them: `lo` up, an `eth0`
//! with the pod address and a default route. `eth0` is one end of a veth pair whose other end
//! stays down inside the pod rather than on a host bridge: nothing here needs packets to leave
//! the pod (what leaves `eth0` is dropped), the pod sees the interface and routes a bridge
//! plugin would give it, and the node keeps no host-side interface per pod, so a pool of
//! hundreds is built in seconds (always outside the timed sections). The dummy driver would
//! be lighter but is not built into every kernel.
//!
//! Names are `meshcap-bench-<pid>-<n>`, so parallel runs never collide; each namespace is
//! deleted when its guard drops, and namespaces left by a run that died are removed at start
//! ([`remove_stale`]).

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

const PREFIX: &str = "meshcap-bench";
const NETNS_DIR: &str = "/run/netns";
/// The pods' subnet gateway (the bridge address of a bridge/host-local setup).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const PREFIX_LEN: u8 = 16;
/// The IPv6 gateway of a dual-stack pod, and the prefix length of its address.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
pub const PREFIX_LEN6: u8 = 64;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Which addresses a pod has: what the anchors' exec baseline and meshcap each do depends on
/// it (a v4-only pod needs no IPv6 rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodShape {
    /// An IPv4 and an IPv6 address on `eth0`, a default route of each family.
    DualStack,
    /// An IPv4 address and default route only.
    V4Only,
}

impl PodShape {
    pub const ALL: [PodShape; 2] = [PodShape::DualStack, PodShape::V4Only];

    pub fn name(self) -> &'static str {
        match self {
            PodShape::DualStack => "dual-stack",
            PodShape::V4Only => "v4-only",
        }
    }

    pub fn dual_stack(self) -> bool {
        self == PodShape::DualStack
    }
}

/// One pod network namespace, deleted on drop.
#[derive(Debug)]
pub struct PodNetns {
    name: String,
    path: PathBuf,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
}

impl PodNetns {
    /// Create a namespace with `lo` up and `eth0` carrying a unique 10.244.0.0/16 address
    /// (a v4-only pod).
    pub fn create() -> Result<PodNetns> {
        Self::create_shaped(PodShape::V4Only)
    }

    /// As [`PodNetns::create`]; a dual-stack pod's `eth0` also carries a unique fd00:10:244::/64
    /// address and an IPv6 default route, as a dual-stack bridge + host-local setup leaves it.
    pub fn create_shaped(shape: PodShape) -> Result<PodNetns> {
        let dual_stack = shape.dual_stack();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}", std::process::id());
        // .2 upwards in each /24-sized block, never the gateway's .1.
        let ip = Ipv4Addr::new(10, 244, ((n / 250) % 256) as u8, (n % 250 + 2) as u8);
        let ip6 = dual_stack.then(|| {
            let low = n as u64 + 2;
            Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, (low >> 16) as u16, low as u16)
        });
        run(Command::new("ip").args(["netns", "add", &name]), None)?;
        let ns = PodNetns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
            ip,
            ip6,
        };
        // One `ip` process for the whole setup instead of five. `nodad`: the address is usable
        // at once, as it is after a bridge plugin's ADD.
        let mut script = format!(
            "link set lo up\n\
             link add eth0 type veth peer name eth0peer\n\
             addr add {ip}/{PREFIX_LEN} dev eth0\n"
        );
        if let Some(ip6) = ip6 {
            script.push_str(&format!("addr add {ip6}/{PREFIX_LEN6} dev eth0 nodad\n"));
        }
        script.push_str(&format!(
            "link set eth0 up\n\
             route add default via {GATEWAY} dev eth0\n"
        ));
        if ip6.is_some() {
            script.push_str(&format!("route add ::/0 via {GATEWAY6} dev eth0\n"));
        }
        run(
            Command::new("ip").args(["-n", &ns.name, "-batch", "-"]),
            Some(&script),
        )
        .with_context(|| format!("setting up namespace {}", ns.name))?;
        Ok(ns)
    }

    /// `count` fresh namespaces of `shape`.
    pub fn pool(count: usize, shape: PodShape) -> Result<Vec<PodNetns>> {
        (0..count).map(|_| PodNetns::create_shaped(shape)).collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pod address on `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's IPv6 address on `eth0`, for a dual-stack pod.
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.ip6
    }

    pub fn shape(&self) -> PodShape {
        if self.ip6.is_some() {
            PodShape::DualStack
        } else {
            PodShape::V4Only
        }
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Network namespaces the kernel holds, live or still being torn down (`net_namespace` slab
/// objects); `None` when `/proc/slabinfo` is not readable.
fn kernel_net_namespaces() -> Option<u64> {
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let line = slabinfo.lines().find(|l| l.starts_with("net_namespace "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wait until the kernel has finished tearing down deleted namespaces. `ip netns delete`
/// returns at once and the kernel's cleanup_net worker does the work afterwards, on a CPU the
/// next measurement would share; so a section waits here after dropping a pool. Stops when the
/// count no longer falls between two polls 100 ms apart (other users of the machine may hold
/// namespaces of their own), or after 10 s.
pub fn settle() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = kernel_net_namespaces();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = kernel_net_namespaces();
        match (last, now) {
            (Some(a), Some(b)) if b < a => last = now,
            _ => return,
        }
    }
}

/// Delete `meshcap-bench-<pid>-*` namespaces whose process is gone (a run killed midway).
/// Returns how many were removed.
pub fn remove_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let ok = Command::new("ip")
            .args(["netns", "delete", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        removed += usize::from(ok);
    }
    removed
}

/// Run a setup command, feeding `stdin`, and fail with its stderr when it fails.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(text) = stdin {
        // Small inputs: the pipe buffer holds them, so writing before reading cannot deadlock.
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing stdin of {cmd:?}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

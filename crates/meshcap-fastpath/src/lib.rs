//! meshcap's optional eBPF fast path.
//!
//! With the capture rules in place, every byte between an app and its sidecar crosses the
//! loopback TCP/IP stack twice. The node agent ([`agent::run`], `meshcap agent`) loads
//! programs (see `ebpf/meshcap-ebpf`) that pair the app's socket with the sidecar's accepted
//! socket and move each message directly between them with `sk_msg` redirection. It works per
//! pod: the CNI plugin [`register`]s a pod's network namespace (by its netns cookie, see
//! [`netns_cookie`]) on ADD and [`unregister`]s it on DEL, through maps the agent pinned under
//! [`DEFAULT_PIN_DIR`]. When the agent is absent these return
//! [`FastPathError::NotAvailable`] and the pod keeps working on rules alone.
//!
//! The eBPF object is embedded at build time; build with `MESHCAP_BUILD_EBPF=1` to get the real
//! one (see build.rs). Only [`sys`] holds unsafe code.
#![deny(unsafe_code)]

pub mod agent;
mod error;
mod pinned;
mod support;
mod sys;

use std::{fs::File, os::fd::AsFd, os::fd::BorrowedFd, path::Path};

use meshcap_ebpf_common::PodConfig;

pub use agent::{AgentOptions, Installed};
pub use error::FastPathError;
pub use pinned::{Counters, PinDir, Status};
pub use support::cgroup2_root;

/// Where the agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/meshcap";

pub use meshcap_ebpf_common::NO_GID;

/// Istio's fixed values, defined once in the model (docs/DESIGN.md, "Fixed values").
pub use meshcap_model::model::{INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT, PROXY_GID, PROXY_UID};

/// One pod's registration with the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodFastPath {
    /// Cookie of the pod's network namespace ([`netns_cookie`]).
    pub netns_cookie: u64,
    /// The sidecar's uid and gid: its own connections are never short-circuited. [`NO_GID`]
    /// when the pod's mesh exempts no gid.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Capture ports the sidecar listens on; sockets it accepts there are paired with apps.
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// [`attachment_id`] of the CNI attachment that registered the pod (0: unknown). Lets DEL
    /// without a netns ([`unregister_attachment`]) and CNI GC ([`gc`]) find the entry.
    pub attachment: u64,
}

/// Stable id of a CNI attachment (container id and interface name): FNV-1a 64 of
/// `container_id NUL ifname`, never 0.
pub fn attachment_id(container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

impl PodFastPath {
    /// A pod with Istio's defaults: proxy uid/gid 1337, capture ports 15001 and 15006.
    pub fn new(netns_cookie: u64) -> Self {
        Self {
            netns_cookie,
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
            attachment: 0,
        }
    }

    /// Records which CNI attachment this registration belongs to.
    pub fn for_attachment(mut self, container_id: &str, ifname: &str) -> Self {
        self.attachment = attachment_id(container_id, ifname);
        self
    }

    pub(crate) fn config(&self) -> PodConfig {
        PodConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            _pad: 0,
            attachment: self.attachment,
        }
    }

    pub(crate) fn from_config(netns_cookie: u64, c: &PodConfig) -> Self {
        Self {
            netns_cookie,
            proxy_uid: c.proxy_uid,
            proxy_gid: c.proxy_gid,
            outbound_port: c.outbound_port,
            inbound_port: c.inbound_port,
            attachment: c.attachment,
        }
    }
}

/// Registers a pod with the node's fast path (default pin directory). Returns
/// [`FastPathError::NotAvailable`] with the reason when the agent has not installed it.
pub fn register(pod: &PodFastPath) -> Result<(), FastPathError> {
    PinDir::default().register(pod)
}

/// Removes a pod's registration and every map entry naming its namespace. Idempotent.
pub fn unregister(netns_cookie: u64) -> Result<(), FastPathError> {
    PinDir::default().unregister(netns_cookie)
}

/// Unregisters every pod registered by this CNI attachment (DEL when CNI_NETNS is empty or
/// the namespace is gone). Returns how many were removed.
pub fn unregister_attachment(container_id: &str, ifname: &str) -> Result<usize, FastPathError> {
    PinDir::default().unregister_attachment(container_id, ifname)
}

/// CNI GC: unregisters pods whose attachment is not among `valid` (container id, ifname)
/// pairs. Pods registered without an attachment are left alone. Returns how many were removed.
pub fn gc<'a>(valid: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<usize, FastPathError> {
    PinDir::default().gc(valid)
}

/// Fast path status for `meshcap inspect`; `netns_cookie` asks about one pod.
pub fn status(netns_cookie: Option<u64>) -> Result<Status, FastPathError> {
    PinDir::default().status(netns_cookie)
}

/// The netns cookie (`SO_NETNS_COOKIE`, the value `bpf_get_netns_cookie` returns) of the
/// network namespace `netns` refers to: the calling thread enters it, creates a socket and
/// returns to its own namespace before anything else runs on it (no thread is spawned: the
/// plugin's ADD calls this).
pub fn netns_cookie(netns: BorrowedFd<'_>) -> Result<u64, FastPathError> {
    meshcap_netns::run_in(netns, sys::current_netns_cookie)
        .map_err(|e| FastPathError::Syscall {
            call: "setns(CLONE_NEWNET)",
            source: e.source,
        })?
        .map_err(|source| FastPathError::Syscall {
            call: "getsockopt(SO_NETNS_COOKIE)",
            source,
        })
}

/// [`netns_cookie`] of a namespace given by path (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn netns_cookie_at(path: &Path) -> Result<u64, FastPathError> {
    let f = File::open(path).map_err(|e| FastPathError::io("open netns", path, e))?;
    netns_cookie(f.as_fd())
}

/// Helpers for tests and benchmarks that play an app and a sidecar on threads of one process.
#[doc(hidden)]
pub mod testing {

    /// Sets the calling thread's uid and gid (only this thread's; irreversible for it).
    pub fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
        crate::sys::set_thread_ids(uid, gid)
    }

    /// The calling thread's netns cookie.
    pub fn current_netns_cookie() -> std::io::Result<u64> {
        crate::sys::current_netns_cookie()
    }

    /// The capture the fast path accelerates, reduced to one rule (an `iptables` argv): every
    /// TCP connection not to 127.0.0.1 and not from the sidecar's uid 1337 goes to 15001.
    pub const SIDECAR_REDIRECT: &[&str] = &redirect_rule("1337", "15001");

    /// [`SIDECAR_REDIRECT`] for a mesh whose proxy runs as `proxy_uid` and captures outbound
    /// on `port`.
    pub const fn redirect_rule<'a>(proxy_uid: &'a str, port: &'a str) -> [&'a str; 19] {
        [
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "!",
            "-d",
            "127.0.0.1",
            "-m",
            "owner",
            "!",
            "--uid-owner",
            proxy_uid,
            "-j",
            "REDIRECT",
            "--to-ports",
            port,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_redirect_uses_the_models_fixed_values() {
        let args = testing::SIDECAR_REDIRECT;
        assert!(args.contains(&PROXY_UID.to_string().as_str()), "{args:?}");
        assert_eq!(
            args.last().copied(),
            Some(OUTBOUND_CAPTURE_PORT.to_string().as_str())
        );
    }

    #[test]
    fn attachment_ids_are_stable_and_distinct() {
        let a = attachment_id("ctr", "eth0");
        assert_eq!(a, attachment_id("ctr", "eth0"));
        assert_ne!(a, attachment_id("ctr", "eth1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(attachment_id("ab", "c"), attachment_id("a", "bc"));
        assert_ne!(a, 0);
        let pod = PodFastPath::new(5).for_attachment("ctr", "eth0");
        assert_eq!(PodFastPath::from_config(5, &pod.config()), pod);
    }
}

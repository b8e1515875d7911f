//! Map key and value types shared by meshcap's eBPF programs (`meshcap-ebpf`) and their
//! userspace loader (`meshcap-fastpath`).
//!
//! Every type is `#[repr(C)]` with explicit padding fields so its layout is identical on both
//! sides and no byte of a map key is left uninitialised (the kernel hashes whole keys). The
//! `user` feature adds `aya::Pod` impls so userspace can read and write the maps.
#![no_std]

/// Pin and object names of the maps. Kernel object names are capped at 15 bytes
/// (`BPF_OBJ_NAME_LEN`), so keep them short.
pub mod names {
    /// `HashMap<u64 netns cookie, PodConfig>`: the pods registered for the fast path.
    pub const PODS: &str = "MESHCAP_PODS";
    /// `SockHash<SockKey>`: app and sidecar sockets paired for sk_msg redirection.
    pub const SOCKS: &str = "MESHCAP_SOCKS";
    /// `LruHashMap<SockKey, u64 socket cookie>`: app sockets awaiting their sidecar peer.
    pub const APPS: &str = "MESHCAP_APPS";
    /// `LruHashMap<u64 socket cookie, ConnectInfo>`: who called connect(), recorded in process
    /// context for the sock_ops program, which runs in softirq context and cannot ask.
    pub const CONNECTS: &str = "MESHCAP_CONNS";
    /// `PerCpuArray<u64>` of [`counters`].
    pub const COUNTERS: &str = "MESHCAP_COUNTS";
}

/// Program names (the Rust function names in `meshcap-ebpf`).
pub mod programs {
    pub const SOCK_OPS: &str = "meshcap_sockops";
    pub const SK_MSG: &str = "meshcap_skmsg";
    pub const CONNECT4: &str = "meshcap_connect4";
    pub const CONNECT6: &str = "meshcap_connect6";
}

/// Indices into the `COUNTERS` per-CPU array.
pub mod counters {
    /// Messages sk_msg redirected straight into the peer socket's receive queue.
    pub const REDIRECTED_MSGS: u32 = 0;
    /// Bytes of those messages.
    pub const REDIRECTED_BYTES: u32 = 1;
    /// Messages sk_msg let through the normal TCP path (no peer paired, or pod unregistered).
    pub const PASSED_MSGS: u32 = 2;
    /// Bytes of those messages.
    pub const PASSED_BYTES: u32 = 3;
    /// App sockets inserted into the sockhash.
    pub const APP_SOCKETS: u32 = 4;
    /// Sidecar (accepted on a capture port) sockets inserted into the sockhash.
    pub const SIDECAR_SOCKETS: u32 = 5;
    /// Failed sockhash/map updates (map full, kernel refusal).
    pub const UPDATE_ERRORS: u32 = 6;
    /// Established connections skipped because they belong to the proxy's uid/gid.
    pub const PROXY_SKIPPED: u32 = 7;
    /// Number of slots in the array.
    pub const LEN: u32 = 8;
}

/// `SockKey::role` of an application socket (the active side, dialling out).
pub const ROLE_APP: u32 = 1;
/// `SockKey::role` of the sidecar's socket accepted on a capture port.
pub const ROLE_SIDECAR: u32 = 2;

/// `PodConfig::proxy_gid` of a pod whose mesh exempts no gid (Linkerd by default, Kuma): the
/// kernel's "no id" value, which no task's gid can be.
pub const NO_GID: u32 = u32::MAX;

/// Value of the `PODS` map, keyed by the pod's network namespace cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodConfig {
    /// Connections made by this uid are the sidecar's own upstream connections: never paired.
    pub proxy_uid: u32,
    /// Same for the gid (Istio excludes both); [`NO_GID`] for a mesh that exempts no gid.
    pub proxy_gid: u32,
    /// The pod's outbound capture port (Istio 15001, Linkerd 4140): sockets accepted here are
    /// sidecar sockets.
    pub outbound_port: u16,
    /// The pod's inbound capture port (Istio 15006, Linkerd 4143): likewise.
    pub inbound_port: u16,
    /// Reserved, zero.
    pub _pad: u32,
    /// Userspace only: which CNI attachment (container id, interface) registered this pod, as
    /// a hash, so DEL without a netns and GC can find the entry. 0 when unknown.
    pub attachment: u64,
}

/// Key of the `SOCKS` sockhash and the `APPS` map.
///
/// Both sockets of one app<->sidecar connection are keyed by the *app's* endpoint: with NAT
/// REDIRECT the app's socket still names the original destination as its peer, while the
/// sidecar's accepted socket names the app's address and port as its peer. So the app inserts
/// (netns, local addr, local port, APP) and the sidecar (netns, remote addr, remote port,
/// SIDECAR), and each side finds the other by flipping `role`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `bpf_get_netns_cookie` of the namespace both sockets live in.
    pub netns_cookie: u64,
    /// IPv6 address, or IPv4 as v4-mapped IPv6 (`::ffff:a.b.c.d`), as four words in network
    /// byte order exactly as `bpf_sock_ops`/`sk_msg_md` hold them.
    pub ip: [u32; 4],
    /// App port, host byte order.
    pub port: u32,
    /// [`ROLE_APP`] or [`ROLE_SIDECAR`].
    pub role: u32,
}

/// Value of the `CONNECTS` map, keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectInfo {
    /// Netns cookie at connect() time, so unregister can purge a pod's stale entries.
    pub netns_cookie: u64,
    pub uid: u32,
    pub gid: u32,
}

/// Third word of a v4-mapped IPv6 address (`::ffff:0:0/96`), in network byte order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Builds the [`SockKey::ip`] form of an IPv4 address given as a network-order word.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, ip4_be]
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are `#[repr(C)]`, `Copy`, contain only integers and have no implicit
    // padding (explicit `_pad` fields fill the gaps), so every bit pattern is valid.
    unsafe impl aya::Pod for super::PodConfig {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PodConfig>(), 24);
        assert_eq!(core::mem::size_of::<SockKey>(), 32);
        assert_eq!(core::mem::size_of::<ConnectInfo>(), 16);
    }

    #[test]
    fn v4_mapped_matches_std() {
        let ip = std::net::Ipv4Addr::new(10, 1, 2, 3);
        let words = v4_mapped(u32::from_ne_bytes(ip.octets()));
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(std::net::Ipv6Addr::from(bytes), ip.to_ipv6_mapped());
    }
}

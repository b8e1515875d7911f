//! meshcap's eBPF fast path: short-circuits the loopback hop between an app and its sidecar.
//!
//! With the capture rules in place an app's outbound connection is NAT-redirected to the
//! sidecar's outbound port (Istio's 127.0.0.1:15001), so each byte crosses the TCP/IP stack twice on loopback. These
//! programs pair the two ends of that hop and let `sk_msg` move each message straight into the
//! peer socket's receive queue (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`):
//!
//! - `meshcap_connect4`/`meshcap_connect6` (cgroup connect hooks) run in the caller's process
//!   context and record the caller's uid/gid by socket cookie. The sock_ops callbacks that see
//!   the connection established run in softirq context, where `bpf_get_current_uid_gid` would
//!   name whatever task happened to be interrupted, so the uid must be captured here. This is how
//!   the sidecar's own upstream connections (the pod's registered proxy uid/gid, Istio's 1337)
//!   are told apart and never paired.
//! - `meshcap_sockops` (attached to the cgroup v2 root) inserts, for pods registered in
//!   `MESHCAP_PODS` by netns cookie, the app's socket on ACTIVE_ESTABLISHED and the sidecar's
//!   accepted socket (local port: the pod's registered outbound or inbound port) on
//!   PASSIVE_ESTABLISHED into `MESHCAP_SOCKS`, both
//!   keyed by the app's endpoint (see `SockKey`).
//! - `meshcap_skmsg` (attached to `MESHCAP_SOCKS`) redirects each message to the paired peer
//!   and passes it to the normal TCP path when there is none.
//!
//! Sockets leave the sockhash by themselves when they close: the kernel unlinks a socket from
//! every sockmap/sockhash in its `close` hook (net/core/sock_map.c, `sock_map_close`).
#![no_std]
#![no_main]

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, sk_msg_md, BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::{bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use meshcap_ebpf_common::{
    counters, v4_mapped, ConnectInfo, PodConfig, SockKey, ROLE_APP, ROLE_SIDECAR,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Pods on a node are at most a few hundred; room for plenty.
#[map]
static MESHCAP_PODS: HashMap<u64, PodConfig> = HashMap::pinned(4096, 0);

/// Two sockets per accelerated connection.
#[map]
static MESHCAP_SOCKS: SockHash<SockKey> = SockHash::pinned(65536, 0);

/// LRU: an app socket whose sidecar peer never shows up (an uncaptured destination) ages out.
#[map]
static MESHCAP_APPS: LruHashMap<SockKey, u64> = LruHashMap::pinned(65536, 0);

/// LRU: a connect() that never establishes leaves an entry that ages out.
#[map]
static MESHCAP_CONNS: LruHashMap<u64, ConnectInfo> = LruHashMap::pinned(65536, 0);

#[map]
static MESHCAP_COUNTS: PerCpuArray<u64> = PerCpuArray::pinned(counters::LEN, 0);

#[inline(always)]
fn bump(index: u32, by: u64) {
    if let Some(slot) = MESHCAP_COUNTS.get_ptr_mut(index) {
        // Per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *slot += by };
    }
}

/// Loads one 32-bit context field. Context accesses are rewritten by the verifier field by
/// field and must keep their exact size; a volatile read stops LLVM from merging neighbouring
/// fields (the four words of an IPv6 address) into 64-bit loads the verifier would reject.
#[inline(always)]
unsafe fn ld(field: *const u32) -> u32 {
    unsafe { read_volatile(field) }
}

#[inline(always)]
unsafe fn ld6(words: *const [u32; 4]) -> [u32; 4] {
    let p = words as *const u32;
    unsafe { [ld(p), ld(p.add(1)), ld(p.add(2)), ld(p.add(3))] }
}

// ---------------------------------------------------------------------------------------------
// connect4 / connect6: remember who dialled.

#[cgroup_sock_addr(connect4)]
pub fn meshcap_connect4(ctx: SockAddrContext) -> i32 {
    record_connect(&ctx);
    1 // always allow: this hook only observes
}

#[cgroup_sock_addr(connect6)]
pub fn meshcap_connect6(ctx: SockAddrContext) -> i32 {
    record_connect(&ctx);
    1
}

#[inline(always)]
fn record_connect(ctx: &SockAddrContext) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if unsafe { MESHCAP_PODS.get(&netns_cookie) }.is_none() {
        return;
    }
    let sock_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let uid_gid = bpf_get_current_uid_gid();
    let info = ConnectInfo {
        netns_cookie,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    };
    if MESHCAP_CONNS
        .insert(&sock_cookie, &info, BPF_ANY as u64)
        .is_err()
    {
        bump(counters::UPDATE_ERRORS, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// sock_ops: pair app and sidecar sockets as they become established.

#[sock_ops]
pub fn meshcap_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        _ => {}
    }
    1
}

/// Both ends of a socket as read from a context. Every field is loaded unconditionally, at a
/// constant offset: if the loads sat in per-family branches LLVM would merge them into one load
/// through a computed context pointer, which the verifier rejects ("dereference of modified ctx
/// ptr").
struct Ends {
    family: u32,
    local4: u32,
    remote4: u32,
    local6: [u32; 4],
    remote6: [u32; 4],
    /// Host byte order.
    local_port: u32,
    /// Network-order port in the upper half on little-endian (include/uapi/linux/bpf.h);
    /// `u32::from_be` (ntohl) yields the port.
    remote_port_raw: u32,
}

macro_rules! read_ends {
    ($ctx:expr) => {{
        let c = $ctx;
        unsafe {
            Ends {
                family: ld(addr_of!((*c).family)),
                local4: ld(addr_of!((*c).local_ip4)),
                remote4: ld(addr_of!((*c).remote_ip4)),
                local6: ld6(addr_of!((*c).local_ip6)),
                remote6: ld6(addr_of!((*c).remote_ip6)),
                local_port: ld(addr_of!((*c).local_port)),
                remote_port_raw: ld(addr_of!((*c).remote_port)),
            }
        }
    }};
}

impl Ends {
    /// (address in `SockKey` form, port) of the local or the remote end.
    #[inline(always)]
    fn endpoint(&self, local: bool) -> Option<([u32; 4], u32)> {
        let ip = match (self.family, local) {
            (AF_INET, true) => v4_mapped(self.local4),
            (AF_INET, false) => v4_mapped(self.remote4),
            (AF_INET6, true) => self.local6,
            (AF_INET6, false) => self.remote6,
            _ => return None,
        };
        let port = if local {
            self.local_port
        } else {
            u32::from_be(self.remote_port_raw)
        };
        Some((ip, port))
    }
}

fn on_active_established(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(pod) = (unsafe { MESHCAP_PODS.get(&netns_cookie) }) else {
        return;
    };
    let (proxy_uid, proxy_gid) = (pod.proxy_uid, pod.proxy_gid);
    let sock_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // No record means connect() ran before the pod was registered (or bypassed the hook):
    // the owner is unknown, so stay out of the way.
    let Some(info) = (unsafe { MESHCAP_CONNS.get(&sock_cookie) }).copied() else {
        return;
    };
    let _ = MESHCAP_CONNS.remove(&sock_cookie);
    if info.uid == proxy_uid || info.gid == proxy_gid {
        // The sidecar's own upstream connection: its traffic must go out through the stack.
        bump(counters::PROXY_SKIPPED, 1);
        return;
    }
    let Some((ip, port)) = read_ends!(ops).endpoint(true) else {
        return;
    };
    let mut key = SockKey {
        netns_cookie,
        ip,
        port,
        role: ROLE_APP,
    };
    if MESHCAP_SOCKS
        .update(&mut key, unsafe { &mut *ops }, BPF_ANY as u64)
        .is_err()
    {
        bump(counters::UPDATE_ERRORS, 1);
        return;
    }
    bump(counters::APP_SOCKETS, 1);
    if MESHCAP_APPS
        .insert(&key, &sock_cookie, BPF_ANY as u64)
        .is_err()
    {
        bump(counters::UPDATE_ERRORS, 1);
    }
}

fn on_passive_established(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(pod) = (unsafe { MESHCAP_PODS.get(&netns_cookie) }) else {
        return;
    };
    let ends = read_ends!(ops);
    if ends.local_port != pod.outbound_port as u32 && ends.local_port != pod.inbound_port as u32 {
        return;
    }
    let Some((ip, port)) = ends.endpoint(false) else {
        return;
    };
    // Only sockets whose peer is a paired-up app socket in this namespace: connections from
    // other hosts (on the inbound port) would gain nothing and pay the sk_msg cost.
    let app = SockKey {
        netns_cookie,
        ip,
        port,
        role: ROLE_APP,
    };
    if unsafe { MESHCAP_APPS.get(&app) }.is_none() {
        return;
    }
    let _ = MESHCAP_APPS.remove(&app);
    let mut key = SockKey {
        role: ROLE_SIDECAR,
        ..app
    };
    if MESHCAP_SOCKS
        .update(&mut key, unsafe { &mut *ops }, BPF_ANY as u64)
        .is_err()
    {
        bump(counters::UPDATE_ERRORS, 1);
        return;
    }
    bump(counters::SIDECAR_SOCKETS, 1);
}

// ---------------------------------------------------------------------------------------------
// sk_msg: hand each message to the paired peer.

#[sk_msg]
pub fn meshcap_skmsg(ctx: SkMsgContext) -> u32 {
    let md: *const sk_msg_md = ctx.msg;
    let size = unsafe { ld(addr_of!((*md).size)) } as u64;
    let redirected = match peer_key(&ctx, md) {
        Some(mut key) => {
            MESHCAP_SOCKS.redirect_msg(&ctx, &mut key, BPF_F_INGRESS as u64) == SK_PASS as i64
        }
        None => false,
    };
    if redirected {
        bump(counters::REDIRECTED_MSGS, 1);
        bump(counters::REDIRECTED_BYTES, size);
    } else {
        bump(counters::PASSED_MSGS, 1);
        bump(counters::PASSED_BYTES, size);
    }
    // With a redirect set up by the helper SK_PASS delivers to the peer; without one it sends
    // the message down the normal TCP path.
    SK_PASS
}

#[inline(always)]
fn peer_key(ctx: &SkMsgContext, md: *const sk_msg_md) -> Option<SockKey> {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // An unregistered pod gets no more redirects, even on sockets paired before.
    let pod = unsafe { MESHCAP_PODS.get(&netns_cookie) }?;
    let ends = read_ends!(md);
    if ends.local_port == pod.outbound_port as u32 || ends.local_port == pod.inbound_port as u32 {
        // The sidecar's accepted socket: its peer is the app, named by our remote end.
        let (ip, port) = ends.endpoint(false)?;
        Some(SockKey {
            netns_cookie,
            ip,
            port,
            role: ROLE_APP,
        })
    } else {
        // The app's socket: its peer is the sidecar socket keyed by our local end.
        let (ip, port) = ends.endpoint(true)?;
        Some(SockKey {
            netns_cookie,
            ip,
            port,
            role: ROLE_SIDECAR,
        })
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

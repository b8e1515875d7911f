//! The one module of the harness that makes raw syscalls: entering a network namespace in a
//! child before `exec`, and the socket options the stand-in sidecar needs (transparent
//! listeners for TPROXY, the NAT original destination for REDIRECT).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd` enter the network namespace `ns` between fork and exec, then (when `ids` is
/// given) drop to that uid/gid with no supplementary groups. `CommandExt::uid` cannot be used
/// for that: std switches uid *before* running pre_exec hooks, and setns needs CAP_SYS_ADMIN.
/// This is the one place outside `meshcap-netns` that calls setns(2): between fork and exec
/// only async-signal-safe calls are allowed, and `meshcap-netns` (nix, errors, guards) is not
/// written for that. The file stays open in the parent for as long as `cmd` lives, so the fd is valid in the child.
pub fn setns_before_exec(cmd: &mut Command, ns: File, ids: Option<(u32, u32)>) {
    let fd = ns.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
    // setgroups(2), setgid(2) and setuid(2), which are async-signal-safe and allocate nothing.
    unsafe {
        cmd.pre_exec(move || {
            let _keep_open = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes `io_uring_setup(2)` fail with EPERM in the child (a seccomp filter installed between
/// fork and exec), as a container runtime's default seccomp profile does. The system call's
/// number, 425, is the same on every architecture (it came after the numbering was unified).
pub fn deny_io_uring_before_exec(cmd: &mut Command) {
    const IO_URING_SETUP: u32 = 425;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) with
    // a filter on its own stack; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Classic BPF: load the system call number; EPERM for io_uring_setup, else allow.
            let mut filter = [
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0, // offsetof(struct seccomp_data, nr)
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `IP_TRANSPARENT` / `IPV6_TRANSPARENT`: lets a listener accept TPROXY'd connections whose
/// destination is not a local address (ip(7), ipv6(7)). Needs CAP_NET_ADMIN at the time of the
/// call, so the stand-in sets it before dropping to uid 1337.
pub fn set_transparent(fd: RawFd, v6: bool) -> io::Result<()> {
    let (level, opt) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    enable(fd, level, opt)
}

/// Sets the integer socket option `level`/`opt` to 1.
fn enable(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a valid pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `IPV6_FREEBIND`: lets a client bind `::6`, which is not configured on `lo`, the way the
/// sidecar's inbound passthrough does.
pub fn set_freebind(fd: RawFd, v6: bool) -> io::Result<()> {
    let (level, opt) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_FREEBIND)
    } else {
        (libc::SOL_IP, libc::IP_FREEBIND)
    };
    enable(fd, level, opt)
}

/// `SO_ORIGINAL_DST` (v4) / `IP6T_SO_ORIGINAL_DST` (v6, same value 80): the destination of
/// the connection before NAT, looked up in conntrack (linux/netfilter_ipv4.h, netfilter_ipv6/
/// ip6_tables.h). Fails with ENOENT when the connection has no conntrack entry.
pub fn original_dst(fd: RawFd, v6: bool) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    if v6 {
        // SAFETY: sockaddr_in6 is plain data; the kernel writes at most `len` bytes.
        let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut sa as *mut libc::sockaddr_in6 as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    } else {
        // SAFETY: sockaddr_in is plain data; the kernel writes at most `len` bytes.
        let mut sa: libc::sockaddr_in = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                &mut sa as *mut libc::sockaddr_in as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    }
}

/// SIGTERM `child` and reap it; SIGKILL when it has not exited within `grace`. Its status
/// when it exited by itself, `None` when it had to be killed.
pub fn terminate(
    child: &mut std::process::Child,
    grace: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Make `cmd`'s child get SIGTERM when the thread that spawned it exits (prctl(2),
/// `PR_SET_PDEATHSIG`). Spawn from a thread that lives as long as the process, so the child
/// stops exactly when the process ends, however it ends.
pub fn term_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

//! Privileged tests of the eBPF fast path on the real kernel: load, attach, pin and detach;
//! an app and a sidecar in a network namespace with the REDIRECT rule exchanging data that the
//! sk_msg redirect demonstrably carries; and unregister leaving no map entries.
//!
//! They need root, kernel BTF and the real eBPF object (`MESHCAP_BUILD_EBPF=1`). When one of
//! those is missing they print why and pass, except under `CI=true`, where they fail.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use meshcap_fastpath::{
    agent::{self, AgentOptions},
    netns_cookie_at, testing, FastPathError, PinDir, PodFastPath,
};
use meshcap_testkit::ScratchNetns;

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 1337;

/// Whether this privileged test can run; says why by name when not, and fails under CI=true.
fn can_run(test: &str) -> bool {
    let missing: Vec<String> = [
        meshcap_testkit::missing_root(),
        (!Path::new("/sys/kernel/btf/vmlinux").exists())
            .then(|| "the kernel has no BTF (/sys/kernel/btf/vmlinux)".into()),
        (!agent::has_object())
            .then(|| "built without the eBPF object (MESHCAP_BUILD_EBPF=1)".into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    meshcap_testkit::skip_or_fail(test, &missing.join("; "));
    false
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A scratch network namespace ([`ScratchNetns`]), deleted on drop.
struct Netns(ScratchNetns);

impl Netns {
    fn new(test: &str) -> Result<Self> {
        Ok(Self(ScratchNetns::new(&format!("mcfp-{test}"))?))
    }

    fn path(&self) -> PathBuf {
        self.0.path().to_owned()
    }

    fn exec(&self, cmd: &[&str]) -> Result<String> {
        Ok(self.0.exec(cmd, None)?)
    }

    fn lo_tx_bytes(&self) -> Result<u64> {
        Ok(self
            .exec(&["cat", "/sys/class/net/lo/statistics/tx_bytes"])?
            .trim()
            .parse()?)
    }
}

/// A private pin directory, uninstalled on drop even when the test fails.
struct Pins {
    dir: PathBuf,
}

impl Pins {
    fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/meshcap-test-{test}-{}",
            std::process::id()
        ));
        let _ = agent::uninstall(&dir);
        Self { dir }
    }

    fn options(&self) -> AgentOptions {
        AgentOptions {
            pin_dir: self.dir.clone(),
            ..AgentOptions::default()
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = agent::uninstall(&self.dir);
    }
}

/// What every redirect test starts from: a pod's namespace with `capture` in place and the
/// agent serving from a private pin dir. Fields drop in order: the agent goes before the
/// namespace.
struct Pod {
    pin_dir: PinDir,
    cookie: u64,
    _installed: agent::Installed,
    _pins: Pins,
    netns: Netns,
}

impl Pod {
    fn new(test: &str, capture: &[&str]) -> Result<Pod> {
        let netns = Netns::new(test)?;
        netns.exec(capture)?;
        let pins = Pins::new(test);
        let installed = agent::install(&pins.options())?;
        Ok(Pod {
            pin_dir: PinDir::new(&pins.dir),
            cookie: netns_cookie_at(&netns.path())?,
            _installed: installed,
            _pins: pins,
            netns,
        })
    }
}

fn link_id(pin: &Path) -> Result<u64> {
    let out = run(
        "bpftool",
        &["link", "show", "pinned", &pin.display().to_string()],
    )?;
    // "12: cgroup  prog 34 ..."
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no link id in {out:?}"))
}

fn link_exists(id: u64) -> bool {
    run("bpftool", &["link", "show", "id", &id.to_string()]).is_ok()
}

fn wait_for(what: &str, cond: impl FnMut() -> Result<bool>) -> Result<()> {
    ensure!(
        meshcap_testkit::poll(Duration::from_secs(5), Duration::from_millis(20), cond)?,
        "timed out waiting for {what}"
    );
    Ok(())
}

#[test]
fn load_attach_pin_and_detach() -> Result<()> {
    if !can_run("load_attach_pin_and_detach") {
        return Ok(());
    }
    let pins = Pins::new("attach");
    let installed = agent::install(&pins.options())?;
    let cgroup = installed.cgroup().to_path_buf();
    assert!(
        meshcap_fastpath::cgroup2_root().as_deref() == Some(cgroup.as_path()),
        "attached to {} rather than the cgroup v2 root",
        cgroup.display()
    );

    let mut ids = Vec::new();
    for link in ["link_sockops", "link_connect4", "link_connect6"] {
        let pin = pins.dir.join(link);
        ids.push(link_id(&pin).with_context(|| format!("{} not pinned", pin.display()))?);
    }
    for map in [
        "MESHCAP_PODS",
        "MESHCAP_SOCKS",
        "MESHCAP_APPS",
        "MESHCAP_CONNS",
        "MESHCAP_COUNTS",
    ] {
        assert!(pins.dir.join(map).exists(), "map {map} not pinned");
    }
    let attached = run(
        "bpftool",
        &["cgroup", "show", &cgroup.display().to_string()],
    )?;
    assert!(
        attached.contains("sock_ops"),
        "no sock_ops program on {}: {attached}",
        cgroup.display()
    );

    let pin_dir = PinDir::new(&pins.dir);
    pin_dir.check_available()?;
    let status = pin_dir.status(None)?;
    assert_eq!(status.available, Ok(()));

    // The pinned links keep the programs attached after this process lets go of them.
    drop(installed);
    for id in &ids {
        assert!(
            link_exists(*id),
            "link {id} vanished when the agent's handle was dropped"
        );
    }

    // Registrations can be found again by CNI attachment, for DEL without a netns and GC.
    pin_dir.register(&PodFastPath::new(11).for_attachment("ctr-a", "eth0"))?;
    pin_dir.register(&PodFastPath::new(12).for_attachment("ctr-b", "eth0"))?;
    pin_dir.register(&PodFastPath::new(13))?;
    assert_eq!(pin_dir.unregister_attachment("ctr-a", "eth0")?, 1);
    assert_eq!(pin_dir.lookup(11)?, None);
    assert_eq!(
        pin_dir.gc([("ctr-c", "eth0")])?,
        1,
        "ctr-b is not valid any more"
    );
    assert_eq!(
        pin_dir.registered()?,
        vec![13],
        "a pod without attachment survives GC"
    );
    pin_dir.unregister(13)?;

    // An agent restart reuses the pinned maps (registrations survive) and replaces the links.
    pin_dir.register(&PodFastPath::new(7))?;
    let again = agent::install(&pins.options())?;
    drop(again);
    assert_eq!(pin_dir.lookup(7)?, Some(PodFastPath::new(7)));
    wait_for("the previous agent's links to detach", || {
        Ok(ids.iter().all(|id| !link_exists(*id)))
    })?;
    let mut new_ids = Vec::new();
    for link in ["link_sockops", "link_connect4", "link_connect6"] {
        new_ids.push(link_id(&pins.dir.join(link))?);
    }

    agent::uninstall(&pins.dir)?;
    assert!(!pins.dir.exists(), "pin directory left behind");
    wait_for("links to detach", || {
        Ok(new_ids.iter().all(|id| !link_exists(*id)))
    })?;
    match pin_dir.register(&PodFastPath::new(1)) {
        Err(FastPathError::NotAvailable { reason }) => {
            assert!(reason.contains("not running"), "unhelpful reason: {reason}")
        }
        other => panic!("register after uninstall: {other:?}"),
    }
    // Uninstalling twice is fine.
    agent::uninstall(&pins.dir)?;
    Ok(())
}

/// Sidecar stand-in: uid 1337 in the pod's namespace, accepts one connection on 15001 and
/// echoes everything until EOF.
fn spawn_sidecar(netns: &Path) -> Result<thread::JoinHandle<Result<u64>>> {
    spawn_sidecar_as(netns, PROXY_UID, 15001)
}

/// [`spawn_sidecar`] for another mesh's proxy: `uid` (and gid) listening on `port`.
fn spawn_sidecar_as(netns: &Path, uid: u32, port: u16) -> Result<thread::JoinHandle<Result<u64>>> {
    let ns = File::open(netns)?;
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || -> Result<u64> {
        meshcap_netns::enter_for_good(ns.as_fd())?;
        testing::become_user(uid, uid)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        tx.send(())?;
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            conn.write_all(&buf[..n])?;
            total += n as u64;
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("sidecar did not start listening")?;
    Ok(handle)
}

/// App stand-in: uid 1000, dials 127.0.0.2:8080 (captured by the REDIRECT rule) and does
/// `rounds` request/response exchanges of `size` bytes, checking every echo.
fn run_app(netns: &Path, rounds: usize, size: usize) -> Result<u64> {
    run_app_to(netns, "127.0.0.2:8080", rounds, size)
}

fn run_app_to(netns: &Path, dest: &'static str, rounds: usize, size: usize) -> Result<u64> {
    let ns = File::open(netns)?;
    thread::spawn(move || -> Result<u64> {
        meshcap_netns::enter_for_good(ns.as_fd())?;
        testing::become_user(APP_UID, APP_UID)?;
        let dest: SocketAddr = dest.parse()?;
        let mut conn = TcpStream::connect_timeout(&dest, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut back = vec![0u8; size];
        for round in 0..rounds {
            let msg: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
            conn.write_all(&msg)?;
            conn.read_exact(&mut back)?;
            ensure!(back == msg, "echo {round} differs");
        }
        Ok((rounds * size) as u64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("app thread panicked"))?
}

/// The proxy's own upstream connection (uid 1337) to a plain server in the pod (127.0.0.1 is
/// never captured): must not be paired.
fn proxy_upstream(netns: &Path) -> Result<()> {
    proxy_upstream_as(netns, PROXY_UID)
}

/// [`proxy_upstream`] for a proxy running as `uid` (and gid).
fn proxy_upstream_as(netns: &Path, uid: u32) -> Result<()> {
    let ns = File::open(netns)?;
    let ns2 = ns.try_clone()?;
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || -> Result<()> {
        meshcap_netns::enter_for_good(ns.as_fd())?;
        testing::become_user(APP_UID, APP_UID)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 9000))?;
        tx.send(())?;
        let (mut c, _) = listener.accept()?;
        let mut b = [0u8; 5];
        c.read_exact(&mut b)?;
        c.write_all(&b)?;
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(5))?;
    thread::spawn(move || -> Result<()> {
        meshcap_netns::enter_for_good(ns2.as_fd())?;
        testing::become_user(uid, uid)?;
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, 9000))?;
        c.write_all(b"hello")?;
        let mut b = [0u8; 5];
        c.read_exact(&mut b)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("proxy client panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?
}

#[test]
fn sk_msg_redirect_carries_app_sidecar_traffic() -> Result<()> {
    const TEST: &str = "sk_msg_redirect_carries_app_sidecar_traffic";
    if !can_run(TEST) {
        return Ok(());
    }
    let pod = Pod::new("redir", testing::SIDECAR_REDIRECT)?;
    let (netns, pin_dir, cookie) = (&pod.netns, &pod.pin_dir, pod.cookie);
    assert_ne!(cookie, testing::current_netns_cookie()?);

    const ROUNDS: usize = 256;
    const SIZE: usize = 4096;

    // Control: the pod is not registered, so the data crosses loopback through the rules.
    let sidecar = spawn_sidecar(&netns.path())?;
    let lo_before = netns.lo_tx_bytes()?;
    let sent = run_app(&netns.path(), ROUNDS, SIZE)?;
    let echoed = sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    assert_eq!(echoed, sent);
    let lo_control = netns.lo_tx_bytes()? - lo_before;
    assert!(
        lo_control >= 2 * sent,
        "control run moved only {lo_control} bytes over lo"
    );
    assert_eq!(pin_dir.counters()?.redirected_msgs, 0);

    // Fast path: register the pod and do it again.
    pin_dir.register(&PodFastPath::new(cookie))?;
    assert_eq!(pin_dir.lookup(cookie)?, Some(PodFastPath::new(cookie)));
    let sidecar = spawn_sidecar(&netns.path())?;
    let lo_before = netns.lo_tx_bytes()?;
    let sent = run_app(&netns.path(), ROUNDS, SIZE)?;
    let echoed = sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    assert_eq!(echoed, sent);
    let lo_fast = netns.lo_tx_bytes()? - lo_before;
    let c = pin_dir.counters()?;
    eprintln!("{TEST}: counters {c:?}; lo bytes control {lo_control}, fast path {lo_fast}");
    assert_eq!(c.app_sockets, 1, "{c:?}");
    assert_eq!(c.sidecar_sockets, 1, "{c:?}");
    // Every byte each way went through sk_msg's redirect, none through TCP.
    assert_eq!(c.redirected_bytes, 2 * sent, "{c:?}");
    assert!(c.redirected_msgs >= 2 * ROUNDS as u64, "{c:?}");
    assert_eq!(c.passed_bytes, 0, "{c:?}");
    assert!(
        lo_fast < sent / 4,
        "{lo_fast} bytes still crossed lo (sent {sent})"
    );

    // The proxy's own connection is recognised by uid and left alone.
    proxy_upstream(&netns.path())?;
    let c2 = pin_dir.counters()?;
    assert_eq!(c2.proxy_skipped, c.proxy_skipped + 1, "{c2:?}");
    assert_eq!(c2.app_sockets, c.app_sockets, "{c2:?}");

    // Closed sockets leave the sockhash by themselves.
    wait_for("closed sockets to leave the sockhash", || {
        Ok(pin_dir.entries_for(cookie)?[1] == 0)
    })?;
    let status = pin_dir.status(Some(cookie))?;
    assert_eq!(status.pod, Some(PodFastPath::new(cookie)));
    assert_eq!(status.registered_pods, 1);

    // Leave a paired connection open, then unregister: nothing may remain.
    let sidecar = spawn_sidecar(&netns.path())?;
    let ns = File::open(netns.path())?;
    let (opened_tx, opened_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let app = thread::spawn(move || -> Result<()> {
        meshcap_netns::enter_for_good(ns.as_fd())?;
        testing::become_user(APP_UID, APP_UID)?;
        let mut conn = TcpStream::connect("127.0.0.2:8080")?;
        conn.write_all(b"ping")?;
        let mut b = [0u8; 4];
        conn.read_exact(&mut b)?;
        opened_tx.send(())?;
        let _ = close_rx.recv();
        Ok(())
    });
    opened_rx.recv_timeout(Duration::from_secs(5))?;
    assert_eq!(
        pin_dir.entries_for(cookie)?[1],
        2,
        "the open pair is not in the sockhash"
    );
    pin_dir.unregister(cookie)?;
    assert_eq!(pin_dir.entries_for(cookie)?, [0, 0, 0, 0]);
    assert_eq!(pin_dir.lookup(cookie)?, None);
    pin_dir.unregister(cookie)?; // idempotent
    close_tx.send(())?;
    app.join().map_err(|_| anyhow::anyhow!("app panicked"))??;
    sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    Ok(())
}

#[test]
fn register_without_agent_is_not_available() {
    let pins = PinDir::new(format!(
        "/sys/fs/bpf/meshcap-test-absent-{}",
        std::process::id()
    ));
    match pins.register(&PodFastPath::new(42)) {
        Err(e @ FastPathError::NotAvailable { .. }) => assert!(e.is_not_available()),
        other => panic!("expected NotAvailable, got {other:?}"),
    }
    let status = pins
        .status(Some(42))
        .expect("status never fails for an absent agent");
    assert!(status.available.is_err());
}

/// An app on an IPv6 socket dialling a v4-mapped address (connect6 hook, AF_INET6 sock_ops)
/// pairs with the sidecar's IPv4 socket: both sides key by the v4-mapped form.
#[test]
fn sk_msg_redirect_pairs_v6_app_socket_with_v4_sidecar() -> Result<()> {
    const TEST: &str = "sk_msg_redirect_pairs_v6_app_socket_with_v4_sidecar";
    if !can_run(TEST) {
        return Ok(());
    }
    let pod = Pod::new("mapped", testing::SIDECAR_REDIRECT)?;
    let (netns, pin_dir, cookie) = (&pod.netns, &pod.pin_dir, pod.cookie);
    pin_dir.register(&PodFastPath::new(cookie))?;

    let sidecar = spawn_sidecar(&netns.path())?;
    let sent = run_app_to(&netns.path(), "[::ffff:127.0.0.2]:8080", 64, 1024)?;
    let echoed = sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    assert_eq!(echoed, sent);
    let c = pin_dir.counters()?;
    assert_eq!((c.app_sockets, c.sidecar_sockets), (1, 1), "{c:?}");
    assert_eq!(c.redirected_bytes, 2 * sent, "{c:?}");
    pin_dir.unregister(cookie)?;
    assert_eq!(pin_dir.entries_for(cookie)?, [0, 0, 0, 0]);
    Ok(())
}

/// A Linkerd pod: proxy uid 2102 with no gid exempted, outbound capture on 4140. Registered
/// with Istio's values the sidecar's accepted socket (on 4140) is not recognised and nothing is
/// spliced; registered with the pod's own uid and ports, as the plugin does from the pod's
/// model, every byte goes through the splice and the proxy's own upstream connection (uid
/// 2102) is skipped.
#[test]
fn sk_msg_redirect_uses_the_pods_own_proxy_uid_and_ports() -> Result<()> {
    const TEST: &str = "sk_msg_redirect_uses_the_pods_own_proxy_uid_and_ports";
    if !can_run(TEST) {
        return Ok(());
    }
    const LINKERD_UID: u32 = 2102;
    const LINKERD_OUTBOUND: u16 = 4140;
    let (uid, port) = (LINKERD_UID.to_string(), LINKERD_OUTBOUND.to_string());
    let pod = Pod::new("linkerd", &testing::redirect_rule(&uid, &port))?;
    let (netns, pin_dir, cookie) = (&pod.netns, &pod.pin_dir, pod.cookie);

    // Istio's values: the app socket is taken, the sidecar's is not, nothing is spliced.
    pin_dir.register(&PodFastPath::new(cookie))?;
    let sidecar = spawn_sidecar_as(&netns.path(), LINKERD_UID, LINKERD_OUTBOUND)?;
    let sent = run_app(&netns.path(), 16, 1024)?;
    let echoed = sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    assert_eq!(echoed, sent);
    let c = pin_dir.counters()?;
    assert_eq!((c.sidecar_sockets, c.redirected_bytes), (0, 0), "{c:?}");

    // The pod's own values.
    let mut pod = PodFastPath::new(cookie);
    pod.proxy_uid = LINKERD_UID;
    pod.proxy_gid = meshcap_fastpath::NO_GID;
    pod.outbound_port = LINKERD_OUTBOUND;
    pod.inbound_port = 4143;
    pin_dir.register(&pod)?;
    assert_eq!(pin_dir.lookup(cookie)?, Some(pod));
    let before = pin_dir.counters()?;
    let sidecar = spawn_sidecar_as(&netns.path(), LINKERD_UID, LINKERD_OUTBOUND)?;
    let sent = run_app(&netns.path(), 64, 4096)?;
    let echoed = sidecar
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;
    assert_eq!(echoed, sent);
    let c = pin_dir.counters()?;
    eprintln!("{TEST}: counters {c:?}");
    assert_eq!(c.sidecar_sockets - before.sidecar_sockets, 1, "{c:?}");
    assert_eq!(c.app_sockets - before.app_sockets, 1, "{c:?}");
    assert_eq!(
        c.redirected_bytes - before.redirected_bytes,
        2 * sent,
        "{c:?}"
    );
    // The pod's proxy's own upstream connection is recognised by the pod's uid, left alone.
    proxy_upstream_as(&netns.path(), LINKERD_UID)?;
    let c2 = pin_dir.counters()?;
    assert_eq!(c2.proxy_skipped, c.proxy_skipped + 1, "{c2:?}");
    assert_eq!(c2.app_sockets, c.app_sockets, "{c2:?}");
    pin_dir.unregister(cookie)?;
    assert_eq!(pin_dir.entries_for(cookie)?, [0, 0, 0, 0]);
    Ok(())
}

/// A map pinned by an agent with another layout is refused with a reason, not reused.
#[test]
fn incompatible_pinned_maps_are_refused() -> Result<()> {
    if !can_run("incompatible_pinned_maps_are_refused") {
        return Ok(());
    }
    let pins = Pins::new("layout");
    std::fs::create_dir_all(&pins.dir)?;
    let pods = pins.dir.join("MESHCAP_PODS").display().to_string();
    run(
        "bpftool",
        &[
            "map",
            "create",
            &pods,
            "type",
            "hash",
            "key",
            "8",
            "value",
            "16",
            "entries",
            "16",
            "name",
            "MESHCAP_PODS",
        ],
    )?;
    match agent::install(&pins.options()) {
        Err(FastPathError::Unsupported { reason }) => {
            assert!(reason.contains("incompatible"), "{reason}")
        }
        other => panic!("expected the stale map to be refused, got {other:?}"),
    }
    agent::uninstall(&pins.dir)?;
    assert!(!pins.dir.exists());
    Ok(())
}

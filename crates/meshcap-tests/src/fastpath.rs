//! The eBPF fast path in e2e runs: the node agent (`meshcap agent`) that the `+ebpf` modes
//! need, reading what it pinned, and a sidecar/app pair that keeps connections open.
//!
//! - [`shared`] starts one agent per test process on the default pin directory (the one the
//!   plugin uses unless `ebpf.pin_dir` says otherwise) and never uninstalls it: test binaries
//!   running at the same time share the pinned data path, and an agent that exits leaves it in
//!   place (that is `meshcap agent`'s default), so nobody tears down anybody else's pods. The
//!   agent gets SIGTERM when the test process ends.
//! - [`Agent`] is an agent of a test's own, on a [`PrivatePins`] directory, for tests that stop,
//!   restart or remove it without disturbing the shared one.
//! - [`EchoSidecar`] and [`open_app_connection`]: a sidecar on 15001 (uid 1337) that answers each
//!   connection with its original destination and then echoes, and an app (uid 1000) dialling
//!   through the capture rules, for tests that need a live app-to-sidecar connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
pub use meshcap_fastpath::{Counters, PinDir, DEFAULT_PIN_DIR};

use crate::netns::Netns;
use crate::standin::PROXY_ID;

/// uid/gid of the app side of [`open_app_connection`].
pub const APP_ID: u32 = 1000;
/// How long an agent may take to load, attach and pin.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pin of the agent's sock_ops link: written last, so a new one means the agent is serving.
const LINK_SOCK_OPS: &str = "link_sockops";

/// Why the fast path cannot run here, if it cannot: root, kernel BTF and the built `meshcap`
/// binary (which must embed the real eBPF object; [`shared`] reports it when it does not).
pub fn missing_prerequisite() -> Option<String> {
    if let Some(why) = meshcap_testkit::missing_root() {
        return Some(format!("{why} (bpf(2), cgroup attach)"));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if let Err(e) = crate::bins::meshcap() {
        return Some(e.to_string());
    }
    None
}

/// Whether a privileged fast-path test named `name` can run: [`crate::privileged`]'s checks,
/// then [`missing_prerequisite`], then the shared agent. Skips by name, fails under `CI=true`.
pub fn usable(name: &str) -> bool {
    if !crate::privileged(name) {
        return false;
    }
    let why = missing_prerequisite().or_else(|| shared().err());
    match why {
        None => true,
        Some(why) => {
            crate::skip_or_fail(name, &why);
            false
        }
    }
}

/// Makes sure this process's shared agent (default pin directory) is serving; starts it on
/// first use. The agent runs from a thread that lives as long as the process and gets SIGTERM
/// when the process ends, which leaves the pinned data path in place.
pub fn shared() -> std::result::Result<(), String> {
    static SHARED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            if let Some(why) = missing_prerequisite() {
                return Err(why);
            }
            remove_stale_agent_state();
            if !Path::new(DEFAULT_PIN_DIR).exists() {
                INSTALLED_HERE.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("meshcap-agent".into())
                .spawn(move || {
                    match Agent::start_with(Path::new(DEFAULT_PIN_DIR), true, None) {
                        Ok(agent) => {
                            let _ = tx.send(Ok(()));
                            // Keep the agent (and this thread, its parent for
                            // PR_SET_PDEATHSIG) alive for the rest of the process.
                            let _agent = agent;
                            loop {
                                std::thread::park();
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:#}")));
                        }
                    }
                })
                .map_err(|e| format!("spawn the agent thread: {e}"))?;
            rx.recv()
                .map_err(|_| "the agent thread died".to_string())?
                .map_err(|e| format!("cannot start the shared meshcap agent: {e}"))
        })
        .clone()
}

/// Whether [`shared`] found no fast path on the node and installed it.
static INSTALLED_HERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Takes the node's fast path down again when [`shared`] installed it (the demo cleans up
/// after itself); leaves one that was there before alone. Test binaries do not call this:
/// other test processes may be using the shared data path at the same time.
pub fn uninstall_if_installed_here() {
    if !INSTALLED_HERE.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Ok(bin) = crate::bins::meshcap() else {
        return;
    };
    let status = std::process::Command::new(bin)
        .args(["agent", "--uninstall", "--pin-dir", DEFAULT_PIN_DIR])
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("could not uninstall the eBPF fast path from {DEFAULT_PIN_DIR}: {status:?}");
    }
}

/// The shared agent's scratch state dir outlives its process: remove those of processes gone.
fn remove_stale_agent_state() {
    let Ok(dirs) = std::fs::read_dir("/tmp/meshcap-e2e") else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("agent-state-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

/// A running `meshcap agent`; SIGTERMed (and reaped) on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pin_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    // An empty attachment-record dir of its own, so the agent never repairs real pods (none
    // for an agent started over a test node's records).
    _state: Option<crate::chain::Scratch>,
}

/// `meshcap agent --help`, to pass only the options this build of the agent knows.
fn agent_help() -> Result<String> {
    static HELP: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    HELP.get_or_init(|| {
        let bin = crate::bins::meshcap().map_err(|e| e.to_string())?;
        let out = Command::new(bin)
            .args(["agent", "--help"])
            .output()
            .map_err(|e| format!("meshcap agent --help: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn link_inode(pin_dir: &Path) -> Option<u64> {
    std::fs::metadata(pin_dir.join(LINK_SOCK_OPS))
        .ok()
        .map(|m| m.ino())
}

impl Agent {
    /// Starts `meshcap agent --pin-dir PIN_DIR` and waits until it has pinned a fresh sock_ops
    /// link (so a restart is only "done" once the new agent serves).
    pub fn start(pin_dir: &Path) -> Result<Agent> {
        Self::start_with(pin_dir, false, None)
    }

    /// [`Agent::start`] for a test node's own records (`state_dir`): this agent also repairs
    /// and reclaims them, scanning every 200 ms; it adopts nothing.
    pub fn start_over_records(pin_dir: &Path, state_dir: &Path) -> Result<Agent> {
        Self::start_with(pin_dir, false, Some(state_dir))
    }

    fn start_with(pin_dir: &Path, term_with_parent: bool, records: Option<&Path>) -> Result<Agent> {
        let before = link_inode(pin_dir);
        let mut cmd = Command::new(crate::bins::meshcap()?);
        cmd.arg("agent").arg("--pin-dir").arg(pin_dir);
        // Newer agents also repair recorded pods, watch the node's CNI config and serve
        // metrics on a fixed port: a test's agent must do none of that to the real node, and
        // two of them (the shared one and a test's own) must not fight over the port.
        let scratch = match records {
            Some(_) => None,
            None => Some(crate::chain::Scratch::new("agent-state")?),
        };
        let state_dir = records.or(scratch.as_ref().map(|s| s.path())).unwrap();
        let help = agent_help()?;
        let mut flags = vec![
            ("--no-config-watch", None),
            ("--metrics-addr", Some(std::ffi::OsStr::new("127.0.0.1:0"))),
            ("--state-dir", Some(state_dir.as_os_str())),
        ];
        if records.is_some() {
            flags.push(("--no-adopt", None));
            flags.push(("--repair-interval-ms", Some(std::ffi::OsStr::new("200"))));
            // What each scan found, for a test that waits on one.
            cmd.env("RUST_LOG", "info,meshcap::agent::repair=debug");
        }
        for (flag, value) in flags {
            if help.contains(flag) {
                cmd.arg(flag);
                if let Some(v) = value {
                    cmd.arg(v);
                }
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if term_with_parent {
            crate::sys::term_with_parent(&mut cmd);
        }
        let mut child = cmd.spawn().context("spawn meshcap agent")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut agent = Agent {
            child: Some(child),
            pin_dir: pin_dir.to_path_buf(),
            stderr,
            _state: scratch,
        };
        let start = Instant::now();
        loop {
            let now = link_inode(pin_dir);
            if now.is_some() && now != before && PinDir::new(pin_dir).check_available().is_ok() {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "meshcap agent --pin-dir {} exited ({status}): {}",
                    pin_dir.display(),
                    agent.stderr().trim()
                );
            }
            if start.elapsed() > AGENT_READY_TIMEOUT {
                bail!(
                    "meshcap agent --pin-dir {} did not pin its links within {AGENT_READY_TIMEOUT:?}: {}",
                    pin_dir.display(),
                    agent.stderr().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What the agent wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM (the agent's normal stop: the data path stays pinned) and wait for it to exit.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().expect("agent child");
        crate::sys::terminate(&mut child, Duration::from_secs(10))
            .ok_or_else(|| anyhow!("meshcap agent ignored SIGTERM for 10s"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::sys::terminate(&mut child, Duration::from_secs(5));
        }
    }
}

/// `meshcap agent --uninstall --pin-dir PIN_DIR`: detach and unpin.
pub fn uninstall(pin_dir: &Path) -> Result<()> {
    let out = Command::new(crate::bins::meshcap()?)
        .args(["agent", "--uninstall", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .context("run meshcap agent --uninstall")?;
    ensure!(
        out.status.success(),
        "meshcap agent --uninstall --pin-dir {}: {}",
        pin_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A pin directory of a test's own (`/sys/fs/bpf/meshcap-e2e-<test>-<pid>`), uninstalled on
/// drop, also when the test fails.
#[derive(Debug)]
pub struct PrivatePins {
    pub dir: PathBuf,
}

impl PrivatePins {
    pub fn new(test: &str) -> PrivatePins {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/meshcap-e2e-{test}-{}",
            std::process::id()
        ));
        let _ = meshcap_fastpath::agent::uninstall(&dir);
        PrivatePins { dir }
    }

    pub fn pins(&self) -> PinDir {
        PinDir::new(&self.dir)
    }
}

impl Drop for PrivatePins {
    fn drop(&mut self) {
        let _ = meshcap_fastpath::agent::uninstall(&self.dir);
    }
}

/// The netns cookie of a namespace (what the plugin registers a pod by).
pub fn cookie(ns: &Netns) -> Result<u64> {
    meshcap_fastpath::netns_cookie_at(ns.path()).context("netns cookie")
}

/// Bytes the namespace's loopback has transmitted (`ip -s link show lo`).
pub fn lo_tx_bytes(ns: &Netns) -> Result<u64> {
    let out = ns.ip(&["-s", "-j", "link", "show", "lo"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("no lo tx bytes in {out}"))
}

/// A sidecar stand-in on `0.0.0.0:15001` in a pod namespace, running as 1337: every accepted
/// connection first gets one line `ORIGINAL_DESTINATION\n` (`SO_ORIGINAL_DST`), then everything
/// it sends is echoed until EOF. Stops accepting on drop.
#[derive(Debug)]
pub struct EchoSidecar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoSidecar {
    pub fn start(ns: &Netns) -> Result<EchoSidecar> {
        let fd = ns.open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                meshcap_netns::enter_for_good(std::os::fd::AsFd::as_fd(&fd))?;
                meshcap_fastpath::testing::become_user(PROXY_ID, PROXY_ID)?;
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 15001))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = echo(conn);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("sidecar did not start")??;
        Ok(EchoSidecar {
            stop,
            thread: Some(thread),
        })
    }
}

fn echo(mut conn: TcpStream) -> Result<()> {
    conn.set_nonblocking(false)?;
    let v6 = conn.local_addr()?.is_ipv6();
    let orig = crate::sys::original_dst(conn.as_raw_fd(), v6)
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("none ({e})"));
    conn.write_all(format!("{orig}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

impl Drop for EchoSidecar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An app connection through the capture rules: dialled from `ns` as uid/gid 1000, with the
/// original destination the sidecar reported.
#[derive(Debug)]
pub struct AppConnection {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// What [`EchoSidecar`] read with `SO_ORIGINAL_DST`.
    pub original_dst: String,
}

/// Dials `to` from `ns` as the app (uid/gid 1000) and reads the sidecar's first line.
pub fn open_app_connection(ns: &Netns, to: SocketAddr) -> Result<AppConnection> {
    let fd = ns.open()?;
    let stream = std::thread::spawn(move || -> Result<TcpStream> {
        meshcap_netns::enter_for_good(std::os::fd::AsFd::as_fd(&fd))?;
        meshcap_fastpath::testing::become_user(APP_ID, APP_ID)?;
        Ok(TcpStream::connect_timeout(&to, Duration::from_secs(5))?)
    })
    .join()
    .map_err(|_| anyhow!("app thread panicked"))?
    .with_context(|| format!("app connect to {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("read the sidecar's original-destination line")?;
    Ok(AppConnection {
        stream,
        reader,
        original_dst: line.trim().to_string(),
    })
}

impl AppConnection {
    /// Sends `total` bytes in chunks and checks every chunk comes back unchanged. Returns the
    /// bytes sent (as many came back).
    pub fn exchange(&mut self, total: usize) -> Result<u64> {
        const CHUNK: usize = 16 * 1024;
        let mut back = vec![0u8; CHUNK];
        let mut sent = 0usize;
        let mut round = 0usize;
        while sent < total {
            let n = CHUNK.min(total - sent);
            let msg: Vec<u8> = (0..n).map(|i| (i + round * 7) as u8).collect();
            self.stream.write_all(&msg)?;
            self.reader
                .read_exact(&mut back[..n])
                .with_context(|| format!("echo of chunk {round} after {sent} bytes"))?;
            ensure!(back[..n] == msg[..], "echo of chunk {round} differs");
            sent += n;
            round += 1;
        }
        Ok(sent as u64)
    }
}

/// Polls `cond` every 20ms for up to 5s.
pub fn wait_for(what: &str, cond: impl FnMut() -> Result<bool>) -> Result<()> {
    if !meshcap_testkit::poll(Duration::from_secs(5), Duration::from_millis(20), cond)? {
        bail!("timed out waiting for {what}");
    }
    Ok(())
}

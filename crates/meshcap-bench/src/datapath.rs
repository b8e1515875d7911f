//! The datapath through the capture: an app inside the pod talks to a stand-in sidecar, as a
//! meshed app talks to Envoy.
//!
//! The sidecar is this binary's hidden `sidecar` subcommand, started in the pod namespace as
//! uid/gid 1337 by `nsenter --setuid 1337 --setgid 1337` (so it is the proxy the rules exempt),
//! listening on 0.0.0.0:15001 and echoing fixed-size messages. The app is a thread that entered
//! the namespace (`meshcap_netns::enter_for_good`) and dials [`SERVICE_ADDR`], an
//! outside address: only the capture can bring that connection to the sidecar, because the
//! pod's `eth0` leads nowhere (its veth peer is down). The physical reference ("direct") is
//! the same app dialling 127.0.0.1:15001 in a namespace without rules, so without conntrack or
//! NAT at all.
//!
//! The app and the sidecar are pinned to the same CPU (the last one), as netperf's `-T` would:
//! unpinned, the scheduler sometimes puts them on one core (a wakeup is cheap) and sometimes on
//! two (on a VM a cross-CPU wakeup is an IPI and a VM exit), which moves latency by tens of
//! microseconds for reasons that have nothing to do with the capture.
//!
//! Two shapes, like netperf's: `rr` (one connection, back-to-back request/response) and `crr`
//! (a new connection per request/response, which is where NAT and the rule walk cost most).
//! Every run is bounded by a duration.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use meshcap_model::model::PROXY_UID;

/// A ClusterIP-like destination the app dials; captured to 15001.
pub const SERVICE_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// The sidecar's outbound listener.
pub const SIDECAR_PORT: u16 = 15001;
/// Request and response size (bytes).
pub const MESSAGE_SIZE: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Request/response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// One connection, requests back to back.
    Rr,
    /// A new connection per request.
    Crr,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Rr, Shape::Crr];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Rr => "rr",
            Shape::Crr => "crr",
        }
    }
}

/// What one bounded run measured.
#[derive(Debug, Default)]
pub struct Run {
    pub transactions: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

/// The echo loop of the `sidecar` subcommand: serves one connection at a time (the app never
/// opens two at once), so the sidecar adds no thread churn to what is measured.
pub fn sidecar_main(port: u16, cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        pin(cpu)?;
    }
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("sidecar: bind 0.0.0.0:{port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [0u8; MESSAGE_SIZE];
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        while conn.read_exact(&mut buf).is_ok() {
            if conn.write_all(&buf).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// The stand-in sidecar process, killed on drop.
pub struct Sidecar {
    child: Child,
}

impl Sidecar {
    /// Start `exe sidecar` in `netns` as uid/gid 1337, pinned to `cpu`, and wait until it
    /// listens.
    pub fn start(exe: &Path, netns: &Path, cpu: usize) -> Result<Sidecar> {
        let id = PROXY_UID.to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--setuid", &id, "--setgid", &id])
            .arg(exe)
            .args(["sidecar", "--port", &SIDECAR_PORT.to_string()])
            .args(["--cpu", &cpu.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the sidecar")?;
        // From here the guard kills it, also when it never gets ready.
        let mut sidecar = Sidecar { child };
        let stdout = sidecar.child.stdout.take().context("sidecar stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the sidecar's readiness")?;
        if line.trim() != "ready" {
            bail!("the sidecar did not start (printed {line:?})");
        }
        Ok(sidecar)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU the app and the sidecar share: the last one.
pub fn shared_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("cpu {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to cpu {cpu}"))
}

/// Run the app in `netns` on a thread of its own (it enters the namespace and never leaves;
/// the thread ends with the run), pinned to `cpu`, dialling `target` for `duration`.
pub fn app(
    netns: &Path,
    target: SocketAddr,
    shape: Shape,
    duration: Duration,
    cpu: usize,
) -> Result<Run> {
    let file = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            meshcap_netns::enter_for_good(file.as_fd()).context("setns into the pod")?;
            pin(cpu)?;
            // One probe first, so a broken capture is an error, not a zero rate.
            let mut probe = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
                .with_context(|| format!("app: connect {target}"))?;
            exchange(&mut probe, &mut [0u8; MESSAGE_SIZE])?;
            drop(probe);
            match shape {
                Shape::Rr => rr(target, duration),
                Shape::Crr => crr(target, duration),
            }
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the app thread panicked"))?
    })
}

fn connect(target: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
        .with_context(|| format!("app: connect {target}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    Ok(conn)
}

fn exchange(conn: &mut TcpStream, buf: &mut [u8; MESSAGE_SIZE]) -> Result<()> {
    conn.write_all(buf).context("app: send")?;
    conn.read_exact(buf).context("app: receive")?;
    Ok(())
}

fn rr(target: SocketAddr, duration: Duration) -> Result<Run> {
    let mut conn = connect(target)?;
    let mut buf = [0u8; MESSAGE_SIZE];
    let mut run = Run::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        exchange(&mut conn, &mut buf)?;
        run.latencies.push(t.elapsed());
        run.transactions += 1;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

fn crr(target: SocketAddr, duration: Duration) -> Result<Run> {
    let mut buf = [0u8; MESSAGE_SIZE];
    let mut run = Run::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut conn = connect(target)?;
        exchange(&mut conn, &mut buf)?;
        drop(conn);
        run.latencies.push(t.elapsed());
        run.transactions += 1;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

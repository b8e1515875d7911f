//! App <-> sidecar over the capture rules, with and without the eBPF fast path.
//!
//! `cargo bench -p meshcap-fastpath --bench fastpath` (as root, built with
//! `MESHCAP_BUILD_EBPF=1`). In a network namespace of its own with the REDIRECT rule, a
//! sidecar stand-in (uid 1337) listens on 15001 and an app (uid 1000) dials 127.0.0.2:8080:
//! - round trips: small request/response messages on one connection;
//! - throughput: 64 KiB writes streamed to the sidecar.
//!
//! Rules-only and fast-path runs are interleaved in one process (the pod is registered for
//! the fast-path runs and unregistered for the others; each run opens its own connection,
//! since sockets are paired when they are established) and the medians are compared.
//! Environment: MESHCAP_BENCH_RUNS (default 7), MESHCAP_BENCH_ROUNDS (round trips per run,
//! default 20000), MESHCAP_BENCH_MIB (MiB per throughput run, default 256), MESHCAP_BENCH_JSON
//! (write the medians there as JSON, for `meshcap-bench --fastpath-json`'s chart),
//! MESHCAP_BENCH_CPU (the CPU the app and the sidecar are pinned to, default the last one, as
//! meshcap-bench's datapath section and netperf's `-T` do; `none` leaves them unpinned, and
//! then the scheduler sometimes puts them on one core and sometimes on two: on a loaded VM a
//! cross-CPU wakeup costs an IPI and a VM exit, tens of µs, in both variants alike, and single
//! round-trip runs scattered from 3 to 50 µs).

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::PathBuf,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use meshcap_fastpath::{
    agent::{self, AgentOptions},
    netns_cookie_at, testing, PinDir, PodFastPath,
};
use meshcap_testkit::ScratchNetns;

const SMALL: usize = 64;
const CHUNK: usize = 64 * 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's namespace and pin dir: the agent is uninstalled before the namespace goes.
struct Env {
    netns: ScratchNetns,
    pins: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = agent::uninstall(&self.pins);
    }
}

/// The CPU of MESHCAP_BENCH_CPU: the last one unless it says otherwise, `None` for `none`.
fn bench_cpu() -> Option<usize> {
    match std::env::var("MESHCAP_BENCH_CPU") {
        Ok(v) if v == "none" => None,
        Ok(v) => v.parse().ok(),
        Err(_) => Some(thread::available_parallelism().map_or(1, |n| n.get()) - 1),
    }
}

/// Pins the calling thread to [`bench_cpu`], if any.
fn pin() -> Result<()> {
    if let Some(cpu) = bench_cpu() {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    }
    Ok(())
}

/// Sidecar stand-in: accepts connections forever; the first byte picks echo ('e') or sink
/// ('t', answering one byte at EOF of the announced length).
fn sidecar(ns: File, ready: mpsc::Sender<()>) -> Result<()> {
    pin()?;
    meshcap_netns::enter_for_good(ns.as_fd())?;
    testing::become_user(1337, 1337)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 15001))?;
    ready.send(())?;
    let mut buf = vec![0u8; CHUNK];
    for conn in listener.incoming() {
        let mut c = conn?;
        c.set_nodelay(true)?;
        let mut mode = [0u8; 9];
        c.read_exact(&mut mode)?;
        let len = u64::from_le_bytes(mode[1..].try_into()?);
        match mode[0] {
            b'e' => loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                c.write_all(&buf[..n])?;
            },
            b'q' => return Ok(()),
            _ => {
                let mut got = 0u64;
                while got < len {
                    let n = c.read(&mut buf)?;
                    ensure!(n > 0, "early EOF");
                    got += n as u64;
                }
                c.write_all(b"k")?;
            }
        }
    }
    Ok(())
}

/// Called on a fresh thread: enters the namespace and becomes the app's uid (not 1337, so the
/// REDIRECT rule captures it) before dialling.
fn app_conn(ns: &File, mode: u8, len: u64) -> Result<TcpStream> {
    pin()?;
    meshcap_netns::enter_for_good(ns.as_fd())?;
    testing::become_user(1000, 1000)?;
    let mut c = TcpStream::connect("127.0.0.2:8080")?;
    c.set_nodelay(true)?;
    let mut hello = [0u8; 9];
    hello[0] = mode;
    hello[1..].copy_from_slice(&len.to_le_bytes());
    c.write_all(&hello)?;
    Ok(c)
}

/// Mean microseconds per round trip.
fn round_trips(ns: &File, rounds: usize) -> Result<f64> {
    let ns = ns.try_clone()?;
    thread::spawn(move || -> Result<f64> {
        let mut c = app_conn(&ns, b'e', 0)?;
        let msg = [7u8; SMALL];
        let mut back = [0u8; SMALL];
        let start = Instant::now();
        for _ in 0..rounds {
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / rounds as f64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("app panicked"))?
}

/// MiB per second.
fn throughput(ns: &File, mib: usize) -> Result<f64> {
    let ns = ns.try_clone()?;
    thread::spawn(move || -> Result<f64> {
        let total = (mib * 1024 * 1024) as u64;
        let mut c = app_conn(&ns, b't', total)?;
        let chunk = vec![1u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            c.write_all(&chunk)?;
            sent += CHUNK as u64;
        }
        let mut k = [0u8; 1];
        c.read_exact(&mut k)?;
        Ok(mib as f64 / start.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("app panicked"))?
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fastpath bench: run with `cargo bench -p meshcap-fastpath --bench fastpath`");
        return Ok(());
    }
    // A benchmark is no test: it says why it cannot run and returns, also under `CI=true`.
    let missing = meshcap_testkit::missing_root().or_else(|| {
        (!agent::has_object())
            .then(|| "built without the eBPF object (MESHCAP_BUILD_EBPF=1)".into())
    });
    if let Some(why) = missing {
        println!("fastpath bench skipped: {why}");
        return Ok(());
    }
    let runs = env_or("MESHCAP_BENCH_RUNS", 7);
    let rounds = env_or("MESHCAP_BENCH_ROUNDS", 20_000);
    let mib = env_or("MESHCAP_BENCH_MIB", 256);

    let env = Env {
        netns: ScratchNetns::new("mcfp-bench")?,
        pins: PathBuf::from(format!("/sys/fs/bpf/meshcap-bench-{}", std::process::id())),
    };
    env.netns.exec(testing::SIDECAR_REDIRECT, None)?;
    let ns_path = env.netns.path().to_owned();
    let _installed = agent::install(&AgentOptions {
        pin_dir: env.pins.clone(),
        ..AgentOptions::default()
    })?;
    let pins = PinDir::new(&env.pins);
    let pod = PodFastPath::new(netns_cookie_at(&ns_path)?);

    let (tx, rx) = mpsc::channel();
    let ns = File::open(&ns_path)?;
    let side_ns = ns.try_clone()?;
    let server = thread::spawn(move || sidecar(side_ns, tx));
    rx.recv_timeout(Duration::from_secs(5))
        .context("sidecar did not start")?;

    let (mut rt_rules, mut rt_fast, mut tp_rules, mut tp_fast) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // Alternate which mode goes first so drift does not favour one.
        for fast in if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if fast {
                pins.register(&pod)?;
            } else {
                pins.unregister(pod.netns_cookie)?;
            }
            let before = pins.counters()?.redirected_bytes;
            let rt = round_trips(&ns, rounds)?;
            let tp = throughput(&ns, mib)?;
            let redirected = pins.counters()?.redirected_bytes - before;
            ensure!(
                (redirected > 0) == fast,
                "fast path {} but {redirected} bytes redirected",
                if fast { "on" } else { "off" }
            );
            if fast {
                rt_fast.push(rt);
                tp_fast.push(tp);
            } else {
                rt_rules.push(rt);
                tp_rules.push(tp);
            }
            println!(
                "run {run} {:9}: {rt:8.2} us/round trip ({SMALL} B), {tp:9.1} MiB/s ({} KiB writes)",
                if fast { "fast path" } else { "rules" },
                CHUNK / 1024
            );
        }
    }
    pins.unregister(pod.netns_cookie)?;
    // Stop the sidecar.
    let ns2 = ns.try_clone()?;
    thread::spawn(move || app_conn(&ns2, b'q', 0).map(drop))
        .join()
        .map_err(|_| anyhow::anyhow!("stopper panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("sidecar panicked"))??;

    let (rr, rf) = (median(&mut rt_rules), median(&mut rt_fast));
    let (tr, tf) = (median(&mut tp_rules), median(&mut tp_fast));
    match bench_cpu() {
        Some(cpu) => println!("app and sidecar on cpu {cpu} (MESHCAP_BENCH_CPU)"),
        None => println!("app and sidecar unpinned (MESHCAP_BENCH_CPU=none)"),
    }
    println!(
        "median round trip: rules {rr:.2} us, fast path {rf:.2} us: {:.2}x faster",
        rr / rf
    );
    println!(
        "median throughput: rules {tr:.1} MiB/s, fast path {tf:.1} MiB/s: {:.2}x",
        tf / tr
    );
    if let Some(path) = std::env::var_os("MESHCAP_BENCH_JSON") {
        let json = format!(
            "{{\"round_trip_us_rules\": {rr}, \"round_trip_us_fast\": {rf}, \
             \"throughput_mib_s_rules\": {tr}, \"throughput_mib_s_fast\": {tf}, \
             \"round_trip_ratio\": {}, \"throughput_ratio\": {}, \"runs\": {runs}, \
             \"pinned_cpu\": {}}}\n",
            rr / rf,
            tf / tr,
            bench_cpu().map_or("null".to_string(), |c| c.to_string())
        );
        std::fs::write(&path, json)
            .with_context(|| format!("writing {}", PathBuf::from(&path).display()))?;
    }
    Ok(())
}

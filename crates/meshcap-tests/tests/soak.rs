//! Soak: many pods, many rounds of parallel ADD then parallel DEL, per mode, through the real
//! chain a runtime runs (`bridge` + `host-local` -> `meshcap-cni`), and then nothing left.
//!
//! Per mode, one node and [`pods`] pod namespaces (64 by default: the pods and the remote host
//! fit the chain's /24 with room to spare, and host-local releases every address on DEL). The
//! namespaces live through all rounds, the way a pod sandbox outlives restarts of its
//! containers, so leftovers of one round would pile up where the next round and the final
//! comparison see them; each round uses new container ids, like new sandboxes. Each round
//! starts all ADDs at once, waits for all, CHECKs one pod, then starts all DELs at once.
//!
//! Every call must succeed, and afterwards:
//! - every pod namespace is exactly as before round 1 (iptables/ip6tables-save in both
//!   flavours, `nft list ruleset`, ip rules, route table 133, lo's addresses, every route
//!   table), compared as text with nothing left out but packet counters and timestamps: a
//!   table or built-in chain that ADD's iptables-restore created and DEL left behind is a
//!   difference;
//! - no attachment record or temp file in `MESHCAP_STATE_DIR`; the outcome log (`.outcomes`,
//!   one line per call, rotated by the agent) holds exactly one `ADD 0` and one `DEL 0` per pod
//!   and round;
//! - no file under `/run/meshcap/locks` for any pod (the per-namespace lock is a `flock` on
//!   the namespace itself; only legacy iptables makes an xtables lock file, and DEL drops it),
//!   nor a journal under `/run/meshcap/pending` (an iptables-mode apply's, dropped once the
//!   record holds what it created);
//! - no IPAM reservation but the remote host's, no pod veth left on the bridge;
//! - the test process has as many open fds and child processes as before;
//! - with the eBPF fast path: no pod map entry for any pod, and the agent's RSS after the
//!   last round within [`RSS_TOLERANCE_KB`] of its RSS after round 1.
//!
//! Modes: `iptables`, `nftables`, and `iptables+ebpf`. The eBPF mode runs against an agent of
//! its own ([`meshcap_tests::fastpath::Agent`] on private pins) when `meshcap` with the real
//! eBPF object is built (`MESHCAP_BUILD_EBPF=1 cargo build -p meshcap`); otherwise it runs the
//! documented fallback (`ebpf.enabled` with no agent: rules alone) and says so by name.
//!
//! Environment: `MESHCAP_SOAK_ROUNDS` (default 5), `MESHCAP_SOAK_PODS` (default 64, at most
//! 200), `MESHCAP_SOAK_MODES` (comma-separated subset of the modes above).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshcap_tests::fastpath::{Agent, PrivatePins};
use meshcap_tests::flows::{INTERCEPTION_MODE, STATUS, STATUS_VALUE};
use meshcap_tests::netns::Netns;
use meshcap_tests::node::{Node, Pod};
use meshcap_tests::state::NetfilterState;
use serde_json::{json, Value};

const DEFAULT_ROUNDS: usize = 5;
const DEFAULT_PODS: usize = 64;
/// The agent's RSS may grow this much between round 1 and the last round (allocator noise).
const RSS_TOLERANCE_KB: u64 = 4096;
/// Where the plugin keeps its per-namespace locks (meshcap-dataplane `DEFAULT_RUN_DIR`).
const LOCK_DIR: &str = "/run/meshcap/locks";
/// Where its iptables-mode applies keep their journal until the record holds what they created.
const JOURNAL_DIR: &str = "/run/meshcap/pending";
/// crates/meshcap-records/src/lib.rs `OUTCOMES_FILE`.
const OUTCOMES_FILE: &str = ".outcomes";

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn rounds() -> usize {
    env_usize("MESHCAP_SOAK_ROUNDS", DEFAULT_ROUNDS).max(1)
}

fn pods() -> usize {
    let n = env_usize("MESHCAP_SOAK_PODS", DEFAULT_PODS);
    assert!(
        (1..=200).contains(&n),
        "MESHCAP_SOAK_PODS must be 1..=200 (the chain's /24)"
    );
    n
}

fn selected(mode: &str) -> bool {
    match std::env::var("MESHCAP_SOAK_MODES") {
        Ok(list) => list.split(',').any(|m| m.trim() == mode),
        Err(_) => true,
    }
}

/// Half the pods REDIRECT, half TPROXY (ip rules and route table 133 too).
fn annotations(i: usize) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(STATUS.to_string(), STATUS_VALUE.to_string());
    if i % 2 == 1 {
        a.insert(INTERCEPTION_MODE.to_string(), "TPROXY".to_string());
    }
    a
}

// ---- process-level leak checks ----

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Pids whose parent is this process.
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ---- namespace state ----

const EXTRA: &[&[&str]] = &[
    &["ip", "-4", "addr", "show", "dev", "lo"],
    &["ip", "-6", "addr", "show", "dev", "lo"],
    &["ip", "-4", "route", "show", "table", "all"],
    &["ip", "-6", "route", "show", "table", "all"],
];

/// A pod namespace's state, as comparable text per section.
fn snapshot(ns: &Netns) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = NetfilterState::capture(ns).expect("snapshot").sections;
    for cmd in EXTRA {
        let text = ns.exec(cmd[0], &cmd[1..]).unwrap_or_default();
        let text: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("valid_lft"))
            .collect();
        out.push((cmd.join(" "), text.join("\n")));
    }
    out
}

/// The per-namespace files the dataplane makes for `ns` (`xtables-<dev>-<ino>`): the legacy
/// xtables lock file, and the journal of what an iptables-mode apply may create, which goes
/// once the record holds it (the per-namespace lock itself is a flock on the namespace).
fn lock_files(ns: &Netns) -> Vec<PathBuf> {
    let Ok(meta) = std::fs::metadata(ns.path()) else {
        return Vec::new();
    };
    [LOCK_DIR, JOURNAL_DIR]
        .into_iter()
        .map(|dir| Path::new(dir).join(format!("xtables-{}-{}", meta.dev(), meta.ino())))
        .filter(|file| file.exists())
        .collect()
}

/// Runs `f` over `items` on up to `threads` threads; results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

// ---- one mode ----

struct ModeReport {
    mode: String,
    round_secs: Vec<f64>,
    agent_rss_kb: Vec<u64>,
    note: Option<String>,
}

/// The eBPF agent of the `+ebpf` mode, when one can run here.
struct FastPath {
    pins: PrivatePins,
    agent: Agent,
    pid: u32,
}

fn start_agent() -> Result<FastPath, String> {
    if let Some(why) = meshcap_tests::fastpath::missing_prerequisite() {
        return Err(why);
    }
    let before = children();
    let pins = PrivatePins::new("soak");
    let agent = Agent::start(&pins.dir).map_err(|e| format!("{e:#}"))?;
    let pid = children()
        .into_iter()
        .find(|p| !before.contains(p) && comm(*p).starts_with("meshcap"))
        .ok_or("cannot find the agent's pid")?;
    Ok(FastPath { pins, agent, pid })
}

fn soak_mode(mode: &str, mut conf: Value, fastpath: Option<&FastPath>) -> ModeReport {
    let (rounds, n) = (rounds(), pods());
    if let Some(fp) = fastpath {
        conf["ebpf"] = json!({"enabled": true, "pin_dir": fp.pins.dir});
    }
    let tag: String = mode
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let node = Arc::new(Node::new(&format!("soak-{tag}")).expect("node"));
    let chain = node.chain(&conf);
    let idx: Vec<usize> = (0..n).collect();
    let mut pods: Vec<Pod> = par_map(&idx, 8, |i| {
        node.unattached_pod(&format!("p{i}"), &chain, annotations(*i))
            .expect("pod namespace")
    });
    let baseline = par_map(&pods, 4, |p| snapshot(&p.ns));
    let mut report = ModeReport {
        mode: mode.to_string(),
        round_secs: Vec::new(),
        agent_rss_kb: Vec::new(),
        note: None,
    };

    for round in 0..rounds {
        let started = Instant::now();
        for (i, pod) in pods.iter_mut().enumerate() {
            pod.att.container_id = format!("soak{round}-{i}-{}", std::process::id());
            pod.att.k8s_pod = pod.att.container_id.clone();
        }
        // All ADDs at once.
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter_mut()
                .map(|pod| s.spawn(move || pod.add().err().map(|e| format!("{}: {e}", pod.name))))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("ADD thread"))
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{mode} round {}: {} of {n} ADDs failed:\n{}",
            round + 1,
            failures.len(),
            failures.join("\n")
        );
        // One pod per round, a different one each time, gets the full look.
        let probe = &pods[round % n];
        let state = probe.state().expect("state");
        assert!(
            state.has_meshcap(),
            "{mode} round {}: {} has no rules",
            round + 1,
            probe.name
        );
        assert!(
            state.duplicate_rules().is_empty(),
            "{mode} round {}: {} duplicates {:?}",
            round + 1,
            probe.name,
            state.duplicate_rules()
        );
        assert!(
            lock_files(&probe.ns).is_empty(),
            "{mode}: ADD left lock files for {}: {:?}",
            probe.name,
            lock_files(&probe.ns)
        );
        probe
            .meshcap("CHECK")
            .unwrap_or_else(|e| panic!("{mode} round {}: CHECK {}: {e}", round + 1, probe.name));
        if let Some(fp) = fastpath {
            let cookie = meshcap_tests::fastpath::cookie(&probe.ns).expect("cookie");
            let registered = fp.pins.pins().registered().expect("registered pods");
            assert!(
                registered.contains(&cookie),
                "{mode} round {}: {} not registered with the fast path",
                round + 1,
                probe.name
            );
        }
        // All DELs at once.
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter_mut()
                .map(|pod| s.spawn(move || pod.del().err().map(|e| format!("{}: {e}", pod.name))))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("DEL thread"))
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{mode} round {}: {} of {n} DELs failed:\n{}",
            round + 1,
            failures.len(),
            failures.join("\n")
        );
        report.round_secs.push(started.elapsed().as_secs_f64());
        if let Some(fp) = fastpath {
            report
                .agent_rss_kb
                .push(rss_kb(fp.pid).expect("the agent died during the soak"));
        }
    }

    // ---- nothing left behind ----
    let after = par_map(&pods, 4, |p| snapshot(&p.ns));
    for ((pod, before), after) in pods.iter().zip(&baseline).zip(&after) {
        let diff: Vec<String> = before
            .iter()
            .zip(after)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((cmd, a), (_, b))| format!("--- {cmd} (before)\n{a}\n+++ {cmd} (after)\n{b}"))
            .collect();
        assert!(
            diff.is_empty(),
            "{mode}: pod {} differs after {rounds} rounds:\n{}",
            pod.name,
            diff.join("\n")
        );
        let locks = lock_files(&pod.ns);
        assert!(
            locks.is_empty(),
            "{mode}: pod {} lock files left: {locks:?}",
            pod.name
        );
    }
    let state_dir = &node.env.state_dir;
    let leftovers: Vec<PathBuf> = meshcap_tests::files_below(state_dir)
        .into_iter()
        .filter(|p| p.file_name().is_none_or(|f| f != OUTCOMES_FILE))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{mode}: state files left: {leftovers:?}"
    );
    let outcomes = std::fs::read_to_string(state_dir.join(OUTCOMES_FILE)).unwrap_or_default();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in outcomes.lines() {
        // `<COMMAND> <code> <mode> <microseconds>` (crates/meshcap-records/src/lib.rs).
        let words: Vec<&str> = line.split(' ').collect();
        assert!(
            words.len() == 4 && mode.starts_with(words[2]) && words[3].parse::<u64>().is_ok(),
            "{mode}: outcome line {line:?}"
        );
        *counts.entry(words[..2].join(" ")).or_default() += 1;
    }
    // Plus the CHECKs of the probe pods.
    let want: BTreeMap<String, usize> = [
        ("ADD 0", rounds * n),
        ("DEL 0", rounds * n),
        ("CHECK 0", rounds),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, want, "{mode}: outcome log");
    // host-local keeps one file per reserved address; only the remote host's may remain.
    let reserved: Vec<PathBuf> = meshcap_tests::files_below(&node.env.ipam_dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.parse::<std::net::IpAddr>().is_ok())
        })
        .collect();
    assert_eq!(
        reserved.len(),
        2,
        "{mode}: IPAM reservations left: {reserved:?}"
    );
    let links = node
        .ns
        .ip(&["-o", "link", "show", "master", "mc0"])
        .unwrap_or_default();
    assert_eq!(
        links.lines().count(),
        1,
        "{mode}: veths left on the bridge:\n{links}"
    );
    if let Some(fp) = fastpath {
        let registered = fp.pins.pins().registered().expect("registered pods");
        for pod in &pods {
            let cookie = meshcap_tests::fastpath::cookie(&pod.ns).expect("cookie");
            assert!(
                !registered.contains(&cookie),
                "{mode}: {} still registered",
                pod.name
            );
            let entries = fp.pins.pins().entries_for(cookie).expect("entries");
            assert_eq!(entries, [0; 4], "{mode}: {} map entries left", pod.name);
        }
        let (first, last) = (report.agent_rss_kb[0], *report.agent_rss_kb.last().unwrap());
        assert!(
            last <= first + RSS_TOLERANCE_KB,
            "{mode}: agent RSS grew from {first} kB after round 1 to {last} kB after round {rounds}"
        );
    } else if conf["ebpf"]["enabled"] == json!(true) {
        report.note = Some("no eBPF agent: ran the rules-only fallback".into());
    }
    drop(pods);
    drop(chain);
    drop(node);
    report
}

#[test]
fn soak_parallel_add_del_every_mode() {
    const TEST: &str = "soak_parallel_add_del_every_mode";
    if !meshcap_tests::privileged(TEST) {
        return;
    }
    let fds_before = open_fds();
    let children_before = children();
    let started = Instant::now();
    let mut reports = Vec::new();
    for (mode, conf) in [
        ("iptables", json!({"mode": "iptables"})),
        ("nftables", json!({"mode": "nftables"})),
    ] {
        if selected(mode) {
            reports.push(soak_mode(mode, conf, None));
        }
    }
    if selected("iptables+ebpf") {
        let conf = json!({"mode": "iptables", "ebpf": {"enabled": true}});
        match start_agent() {
            Ok(fp) => {
                reports.push(soak_mode("iptables+ebpf", conf, Some(&fp)));
                let FastPath { pins, agent, .. } = fp;
                drop(agent);
                drop(pins);
            }
            Err(why) => {
                // Under CI=true the fast path must be what is soaked. Elsewhere the fallback
                // path is soaked instead, and said so.
                assert!(
                    !meshcap_testkit::gate::ci(),
                    "{TEST}: iptables+ebpf cannot run its eBPF agent under CI=true: {why}"
                );
                eprintln!("{TEST}: iptables+ebpf: no eBPF agent can run here ({why}); soaking the rules-only fallback");
                let mut r = soak_mode("iptables+ebpf", conf, None);
                r.note = Some(format!("no agent ({why}): rules-only fallback"));
                reports.push(r);
            }
        }
    }
    // Let reaper threads of the last plugin calls finish.
    std::thread::sleep(Duration::from_millis(200));
    let fds_after = open_fds();
    let children_after = children();
    for r in &reports {
        let secs: Vec<String> = r.round_secs.iter().map(|s| format!("{s:.1}s")).collect();
        eprintln!(
            "{TEST}: {}: {} pods x {} rounds ok, rounds took [{}]{}{}",
            r.mode,
            pods(),
            r.round_secs.len(),
            secs.join(", "),
            if r.agent_rss_kb.is_empty() {
                String::new()
            } else {
                format!(", agent RSS kB per round {:?}", r.agent_rss_kb)
            },
            r.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    eprintln!("{TEST}: total {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(
        fds_after, fds_before,
        "open fds of the test process: {fds_before} before, {fds_after} after"
    );
    assert_eq!(
        children_after,
        children_before,
        "child processes left: {:?}",
        children_after
            .iter()
            .filter(|p| !children_before.contains(p))
            .map(|p| format!("{p} ({})", comm(*p)))
            .collect::<Vec<_>>()
    );
}

//! The benchmark sections. Each creates its namespaces before its clock starts and deletes
//! them after it stops; modes are interleaved so that drift of the machine (other builds,
//! thermal, page cache) spreads over all of them instead of biasing one.
//!
//! A mode that fails is recorded with its error and skipped from then on, so a broken plugin
//! still leaves the baseline's figures (and the run exits non-zero).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cni::{verify_installed, Driver, Mode};
use crate::datapath::{self, Shape, Sidecar, SERVICE_ADDR, SIDECAR_PORT};
use crate::netns::{self, PodNetns, PodShape};
use crate::stats::{
    children_cpu, machine_idle, own_cpu, ratio, summarize_ms, summarize_us, Summary,
};

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Timed ADDs per mode (and DELs per plugin mode).
    pub runs: usize,
    /// ADDs started at once per burst.
    pub parallel: usize,
    /// Bursts per mode.
    pub parallel_rounds: usize,
    /// Seconds per datapath run.
    pub datapath_secs: f64,
    /// Datapath runs per target and shape.
    pub datapath_rounds: usize,
    /// Pods in the scale section.
    pub scale: usize,
    /// Rounds of the scale section, each on a node of its own pods.
    pub scale_rounds: usize,
    /// Sections to run: add (with del), parallel, datapath, scale.
    pub sections: Vec<String>,
}

/// Latency of one mode, or why it has none.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mode: String,
    pub how: String,
    /// Wall time, spawn to exit.
    pub ms: Option<Summary>,
    /// CPU time (user + system) of the whole process tree, per invocation.
    pub cpu_ms: Option<Summary>,
    /// Every wall-time sample in ms, in the order measured (for the chart).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub samples_ms: Vec<f64>,
    pub error: Option<String>,
}

/// ADD and DEL of one pod shape.
#[derive(Debug, Clone, Serialize)]
pub struct AddShape {
    /// `dual-stack` or `v4-only`.
    pub shape: String,
    pub modes: Vec<Latency>,
    /// Medians and p90s relative to this shape's baseline, from the same interleaved run;
    /// and each plugin mode's DEL median over its ADD median.
    pub ratios: BTreeMap<String, Option<f64>>,
    pub del: Vec<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddSection {
    pub runs: usize,
    /// Dual-stack first, then v4-only; each against its own baseline.
    pub shapes: Vec<AddShape>,
    /// Process floors: `meshcap-cni` VERSION (start, parse, exit) and `nsenter --net true`.
    pub floors: Vec<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelMode {
    pub mode: String,
    /// Wall time of each burst, first spawn to last exit.
    pub wall_ms: Vec<f64>,
    pub wall_ms_median: Option<f64>,
    /// Per-ADD latency over all bursts.
    pub ms: Option<Summary>,
    /// p99 of the per-ADD latency over the single-ADD median of the ADD section.
    pub p99_over_single_median: Option<f64>,
    /// CPU time of all the burst's processes over the cores, median over bursts: the wall
    /// time the burst could not beat even if nothing waited on anything.
    pub cpu_bound_ms_median: Option<f64>,
    /// Median over bursts of each burst's wall time over its own CPU floor (1.0: nothing
    /// waited).
    pub wall_over_cpu_bound_median: Option<f64>,
    /// CPU time this benchmark's own threads spent starting, feeding and reaping the burst's
    /// processes, over the cores, median over bursts: a runtime pays its share of that too,
    /// and it is not in the floor above.
    pub harness_cpu_ms_median: Option<f64>,
    /// Median over bursts of the wall time over the floor counting the harness's CPU as well.
    pub wall_over_cpu_with_harness_median: Option<f64>,
    /// Time the machine's CPUs sat idle while the burst ran, over the cores, median over
    /// bursts (`None` without a cpuidle driver). With the floor and the harness it splits the
    /// wall: whatever is left is CPU spent outside both (kernel threads, interrupts).
    pub idle_ms_median: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelSection {
    pub concurrency: usize,
    pub rounds: usize,
    pub modes: Vec<ParallelMode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatapathTarget {
    pub target: String,
    pub transactions: u64,
    pub rate_per_s: Option<f64>,
    pub us: Option<Summary>,
    pub rate_vs_direct: Option<f64>,
    pub p99_vs_direct: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatapathShape {
    pub shape: String,
    pub targets: Vec<DatapathTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatapathSection {
    pub seconds_per_run: f64,
    pub rounds: usize,
    pub message_bytes: usize,
    /// The CPU the app and the sidecar are both pinned to.
    pub pinned_cpu: usize,
    pub shapes: Vec<DatapathShape>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleSection {
    pub pods: usize,
    pub mode: String,
    /// Rounds, each filling a node with `pods` pods of its own; the buckets pool all rounds.
    pub rounds: usize,
    /// How many ADDs the first and last buckets hold per round.
    pub bucket: usize,
    /// Each round's own p99 last / first.
    pub p99_last_over_first_rounds: Vec<f64>,
    pub first_ms: Option<Summary>,
    pub last_ms: Option<Summary>,
    pub all_ms: Option<Summary>,
    pub p99_last_over_first: Option<f64>,
    pub error: Option<String>,
}

/// State shared by the sections.
pub struct Bench {
    pub driver: Driver,
    pub settings: Settings,
    /// This executable, started again as the stand-in sidecar.
    pub exe: PathBuf,
    /// `meshcap-bench-control`, for the parallel section's control; `None`: no control.
    pub control: Option<PathBuf>,
    /// Modes that failed, with the first error.
    pub broken: BTreeMap<Mode, String>,
}

fn err_string(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

impl Bench {
    fn usable(&self, mode: Mode) -> Result<(), String> {
        match self.broken.get(&mode) {
            Some(e) => Err(format!("skipped: {} failed earlier: {e}", mode.name())),
            None => Ok(()),
        }
    }

    fn mark_broken(&mut self, mode: Mode, e: &anyhow::Error) {
        eprintln!("meshcap-bench: {} failed: {e:#}", mode.name());
        self.broken.entry(mode).or_insert_with(|| err_string(e));
    }

    /// ADD latency per pod shape and mode, all interleaved on fresh namespaces, then DEL on
    /// them (interleaved the same way).
    pub fn add_section(&mut self) -> Result<AddSection> {
        let runs = self.settings.runs;
        let per_shape = Mode::ALL.len() * (runs + 1);
        eprintln!(
            "add: creating {} namespaces",
            per_shape * PodShape::ALL.len()
        );
        let pools: BTreeMap<PodShape, Vec<PodNetns>> = PodShape::ALL
            .into_iter()
            .map(|shape| Ok((shape, PodNetns::pool(per_shape, shape)?)))
            .collect::<Result<_>>()?;
        let mut fresh: BTreeMap<PodShape, std::slice::Iter<'_, PodNetns>> =
            pools.iter().map(|(s, p)| (*s, p.iter())).collect();
        let mut next = |shape: PodShape| {
            fresh
                .get_mut(&shape)
                .and_then(Iterator::next)
                .context("namespace pool exhausted")
        };

        // Untimed warm-up (page cache) that also proves each mode installs the capture for
        // real, for each shape.
        for shape in PodShape::ALL {
            for mode in Mode::ALL {
                let ns = next(shape)?;
                if let Err(e) = self.driver.add(mode, ns).and_then(|_| verify_installed(ns)) {
                    self.mark_broken(mode, &e);
                }
            }
        }

        eprintln!("add: {runs} runs per shape and mode, interleaved");
        type Key = (PodShape, Mode);
        let mut samples: BTreeMap<Key, Vec<Duration>> = BTreeMap::new();
        let mut cpu: BTreeMap<Key, Vec<Duration>> = BTreeMap::new();
        let mut added: Vec<(PodShape, Mode, &PodNetns)> = Vec::new();
        let mut version = Vec::new();
        let mut nsenter = Vec::new();
        let mut floor_errors: [Option<String>; 3] = [None, None, None];
        let any_ns = &pools[&PodShape::V4Only][0];
        // iptables ADDs with no template of their restore: the first pod of a ruleset on a
        // node (the plugin restores, reads back, checks and keeps the template).
        let cold_pool = PodNetns::pool(runs, PodShape::V4Only)?;
        let mut cold_ns = cold_pool.iter();
        let mut cold = Vec::new();
        let mut cold_cpu = Vec::new();
        for _ in 0..runs {
            for shape in PodShape::ALL {
                for mode in Mode::ALL {
                    let ns = next(shape)?;
                    if self.usable(mode).is_err() {
                        continue;
                    }
                    let cpu_before = children_cpu();
                    match self.driver.add(mode, ns) {
                        Ok(d) => {
                            samples.entry((shape, mode)).or_default().push(d);
                            cpu.entry((shape, mode))
                                .or_default()
                                .push(children_cpu().saturating_sub(cpu_before));
                            if mode != Mode::Baseline {
                                added.push((shape, mode, ns));
                            }
                        }
                        Err(e) => self.mark_broken(mode, &e),
                    }
                }
            }
            match self.driver.version() {
                Ok(d) => version.push(d),
                Err(e) => floor_errors[0] = Some(err_string(&e)),
            }
            match nsenter_true(any_ns) {
                Ok(d) => nsenter.push(d),
                Err(e) => floor_errors[1] = Some(err_string(&e)),
            }
            if self.usable(Mode::Iptables).is_ok() {
                let ns = cold_ns.next().context("namespace pool exhausted")?;
                let cpu_before = children_cpu();
                let timed = forget_templates().and_then(|()| self.driver.add(Mode::Iptables, ns));
                match timed {
                    Ok(d) => {
                        cold.push(d);
                        cold_cpu.push(children_cpu().saturating_sub(cpu_before));
                    }
                    Err(e) => floor_errors[2] = Some(err_string(&e)),
                }
            }
        }
        drop(cold_pool);

        eprintln!("add: DEL on the {} plugin attachments", added.len());
        let mut del_samples: BTreeMap<Key, Vec<Duration>> = BTreeMap::new();
        let mut del_cpu: BTreeMap<Key, Vec<Duration>> = BTreeMap::new();
        let mut del_errors: BTreeMap<Mode, String> = BTreeMap::new();
        for (shape, mode, ns) in &added {
            if del_errors.contains_key(mode) {
                continue;
            }
            let cpu_before = children_cpu();
            match self.driver.del(*mode, ns) {
                Ok(d) => {
                    del_samples.entry((*shape, *mode)).or_default().push(d);
                    del_cpu
                        .entry((*shape, *mode))
                        .or_default()
                        .push(children_cpu().saturating_sub(cpu_before));
                }
                Err(e) => {
                    eprintln!("meshcap-bench: DEL {} failed: {e:#}", mode.name());
                    del_errors.insert(*mode, err_string(&e));
                }
            }
        }
        drop(pools);
        netns::settle();

        let shapes = PodShape::ALL
            .into_iter()
            .map(|shape| {
                let modes: Vec<Latency> = Mode::ALL
                    .iter()
                    .map(|m| {
                        latency(
                            *m,
                            samples.get(&(shape, *m)),
                            cpu.get(&(shape, *m)),
                            self.broken.get(m).cloned(),
                        )
                    })
                    .collect();
                let del: Vec<Latency> = Mode::PLUGIN
                    .iter()
                    .map(|m| {
                        let error = self.usable(*m).err().or(del_errors.get(m).cloned());
                        latency(
                            *m,
                            del_samples.get(&(shape, *m)),
                            del_cpu.get(&(shape, *m)),
                            error,
                        )
                    })
                    .collect();
                let stat = |rows: &[Latency], m: Mode, p: fn(&Summary) -> f64| {
                    rows.iter()
                        .find(|l| l.mode == m.name())
                        .and_then(|l| l.ms.as_ref().map(p))
                };
                let mut ratios = BTreeMap::new();
                for m in Mode::PLUGIN {
                    for (label, p) in [
                        ("median", (|s: &Summary| s.median) as fn(&Summary) -> f64),
                        ("p90", |s: &Summary| s.p90),
                    ] {
                        ratios.insert(
                            format!("{}/baseline {label}", m.name()),
                            ratio(stat(&modes, m, p), stat(&modes, Mode::Baseline, p)),
                        );
                    }
                    ratios.insert(
                        format!("{} DEL/ADD median", m.name()),
                        ratio(stat(&del, m, |s| s.median), stat(&modes, m, |s| s.median)),
                    );
                }
                AddShape {
                    shape: shape.name().to_owned(),
                    modes,
                    ratios,
                    del,
                }
            })
            .collect();
        let floor = |name: &str, how: &str, v: &[Duration], e: &Option<String>| Latency {
            mode: name.to_owned(),
            how: how.to_owned(),
            ms: (!v.is_empty()).then(|| summarize_ms(v)),
            cpu_ms: None,
            samples_ms: Vec::new(),
            error: e.clone(),
        };
        let mut first_of_ruleset = floor(
            "iptables, 1st",
            "iptables ADD, v4-only, no template yet (first pod of its ruleset)",
            &cold,
            &floor_errors[2],
        );
        first_of_ruleset.cpu_ms = (!cold_cpu.is_empty()).then(|| summarize_ms(&cold_cpu));
        let floors = vec![
            first_of_ruleset,
            floor(
                "plugin VERSION",
                "meshcap-cni CNI_COMMAND=VERSION",
                &version,
                &floor_errors[0],
            ),
            floor(
                "nsenter true",
                "nsenter --net=NETNS true",
                &nsenter,
                &floor_errors[1],
            ),
        ];
        Ok(AddSection {
            runs,
            shapes,
            floors,
        })
    }

    /// Bursts of `parallel` ADDs (dual-stack pods) released at once, per mode, interleaved;
    /// after each round's nftables burst, a burst of the control (`meshcap-bench-control`)
    /// burning the CPU that burst's ADDs used each: what this harness on this machine gives a
    /// plugin that never waits.
    pub fn parallel_section(&mut self, single: &BTreeMap<String, f64>) -> Result<ParallelSection> {
        let (p, rounds) = (self.settings.parallel, self.settings.parallel_rounds);
        let count = p * rounds * Mode::ALL.len();
        eprintln!("parallel: creating {count} namespaces");
        // All up front: deleting namespaces queues kernel cleanup work that would run during
        // the next burst.
        let pool = PodNetns::pool(count, PodShape::DualStack)?;
        let mut chunks = pool.chunks(p);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut stats: BTreeMap<&'static str, BurstStats> = BTreeMap::new();
        let mut control_error = None;
        let mut control_overshoot = Duration::ZERO;
        for round in 0..rounds {
            for mode in Mode::ALL {
                let nss = chunks.next().context("namespace pool exhausted")?;
                if self.usable(mode).is_err() {
                    continue;
                }
                eprintln!("parallel: round {round}, {p} x {}", mode.name());
                let driver = &self.driver;
                match measured_burst(p, |i| driver.add(mode, &nss[i])) {
                    Ok(b) => {
                        let per_add = b.cpu / p as u32;
                        stats.entry(mode.name()).or_default().push(b, cores);
                        let Some(control_exe) = &self.control else {
                            continue;
                        };
                        if mode != Mode::Nftables || control_error.is_some() {
                            continue;
                        }
                        // The control spends a little after it stops burning (its result,
                        // its exit): aim that much lower, as measured in the round before.
                        let target = per_add.saturating_sub(control_overshoot);
                        eprintln!("parallel: round {round}, {p} x control ({target:?} CPU each)");
                        match measured_burst(p, |i| driver.control(control_exe, target, &nss[i])) {
                            Ok(b) => {
                                control_overshoot = (b.cpu / p as u32).saturating_sub(target);
                                stats.entry(CONTROL).or_default().push(b, cores);
                            }
                            Err(e) => {
                                eprintln!("meshcap-bench: control burst failed: {e:#}");
                                control_error = Some(format!("{e:#}"));
                            }
                        }
                    }
                    Err(e) => self.mark_broken(mode, &e),
                }
            }
        }
        drop(pool);
        netns::settle();
        let mut modes: Vec<ParallelMode> = Mode::ALL
            .iter()
            .map(|m| {
                let mut pm = stats.remove(m.name()).unwrap_or_default().summary(m.name());
                pm.p99_over_single_median =
                    ratio(pm.ms.as_ref().map(|s| s.p99), single.get(m.name()).copied());
                pm.error = self.broken.get(m).cloned();
                pm
            })
            .collect();
        if let Some(control) = stats.remove(CONTROL) {
            let mut pm = control.summary(CONTROL);
            pm.error = control_error;
            modes.push(pm);
        }
        Ok(ParallelSection {
            concurrency: p,
            rounds,
            modes,
        })
    }

    /// The app talking to the sidecar through each capture, and direct.
    pub fn datapath_section(&mut self) -> Result<DatapathSection> {
        let duration = Duration::from_secs_f64(self.settings.datapath_secs);
        let rounds = self.settings.datapath_rounds;
        // None: the direct reference.
        let targets: [Option<Mode>; 4] = [
            None,
            Some(Mode::Baseline),
            Some(Mode::Iptables),
            Some(Mode::Nftables),
        ];
        let name = |t: Option<Mode>| t.map_or("direct", Mode::name);
        let mut acc: BTreeMap<(Shape, &str), datapath::Run> = BTreeMap::new();
        let mut errors: BTreeMap<&str, String> = BTreeMap::new();
        for round in 0..rounds {
            // Each round starts with the next target, so no target always runs first.
            for i in 0..targets.len() {
                let target = targets[(i + round) % targets.len()];
                let label = name(target);
                if errors.contains_key(label) {
                    continue;
                }
                if let Some(mode) = target {
                    if let Err(e) = self.usable(mode) {
                        errors.insert(label, e);
                        continue;
                    }
                }
                eprintln!("datapath: round {round}, {label}");
                match self.datapath_run(target, duration) {
                    Ok(runs) => {
                        for (shape, run) in runs {
                            let a = acc.entry((shape, label)).or_default();
                            a.transactions += run.transactions;
                            a.elapsed += run.elapsed;
                            a.latencies.extend(run.latencies);
                        }
                    }
                    Err(e) => {
                        eprintln!("meshcap-bench: datapath {label} failed: {e:#}");
                        errors.insert(label, err_string(&e));
                    }
                }
            }
        }
        let shapes = Shape::ALL
            .iter()
            .map(|shape| {
                let row = |t: Option<Mode>| {
                    let label = name(t);
                    let run = acc.get(&(*shape, label));
                    let rate = run.and_then(|r| {
                        (r.elapsed > Duration::ZERO)
                            .then(|| r.transactions as f64 / r.elapsed.as_secs_f64())
                    });
                    let us = run
                        .filter(|r| !r.latencies.is_empty())
                        .map(|r| summarize_us(&r.latencies));
                    (label, run.map_or(0, |r| r.transactions), rate, us)
                };
                let direct = row(None);
                let targets = targets
                    .iter()
                    .map(|t| {
                        let (label, transactions, rate, us) = row(*t);
                        DatapathTarget {
                            target: label.to_owned(),
                            transactions,
                            rate_per_s: rate,
                            rate_vs_direct: ratio(rate, direct.2),
                            p99_vs_direct: ratio(
                                us.as_ref().map(|s| s.p99),
                                direct.3.as_ref().map(|s| s.p99),
                            ),
                            us,
                            error: errors.get(label).cloned(),
                        }
                    })
                    .collect();
                DatapathShape {
                    shape: shape.name().to_owned(),
                    targets,
                }
            })
            .collect();
        Ok(DatapathSection {
            seconds_per_run: self.settings.datapath_secs,
            rounds,
            message_bytes: datapath::MESSAGE_SIZE,
            pinned_cpu: datapath::shared_cpu(),
            shapes,
        })
    }

    /// One fresh pod: capture installed by `target` (none for direct), the sidecar, then each
    /// shape for `duration`.
    fn datapath_run(
        &self,
        target: Option<Mode>,
        duration: Duration,
    ) -> Result<Vec<(Shape, datapath::Run)>> {
        netns::settle();
        let ns = PodNetns::create()?;
        let dial: SocketAddr = match target {
            Some(mode) => {
                self.driver.add(mode, &ns)?;
                SERVICE_ADDR.into()
            }
            None => ([127, 0, 0, 1], SIDECAR_PORT).into(),
        };
        let cpu = datapath::shared_cpu();
        let _sidecar = Sidecar::start(&self.exe, ns.path(), cpu)?;
        Shape::ALL
            .iter()
            .map(|shape| {
                let run = datapath::app(ns.path(), dial, *shape, duration, cpu)?;
                Ok((*shape, run))
            })
            .collect()
    }

    /// `scale` dual-stack pods ADDed one after another in nftables mode, all kept until the end.
    pub fn scale_section(&mut self) -> Result<ScaleSection> {
        let (pods, rounds) = (self.settings.scale, self.settings.scale_rounds);
        let mode = Mode::Nftables;
        let bucket = (pods / 2).clamp(1, 100);
        let mut section = ScaleSection {
            pods,
            mode: mode.name().to_owned(),
            rounds,
            bucket,
            p99_last_over_first_rounds: Vec::new(),
            first_ms: None,
            last_ms: None,
            all_ms: None,
            p99_last_over_first: None,
            error: None,
        };
        if let Err(e) = self.usable(mode) {
            section.error = Some(e);
            return Ok(section);
        }
        let (mut first, mut last, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            eprintln!("scale: round {round}, creating {pods} namespaces");
            let pool = PodNetns::pool(pods, PodShape::DualStack)?;
            eprintln!("scale: round {round}, {pods} ADDs in {} mode", mode.name());
            let mut lat = Vec::with_capacity(pods);
            for ns in &pool {
                match self.driver.add(mode, ns) {
                    Ok(d) => lat.push(d),
                    Err(e) => {
                        section.error = Some(err_string(&e));
                        self.mark_broken(mode, &e);
                        break;
                    }
                }
            }
            drop(pool);
            netns::settle();
            if lat.len() != pods || pods == 0 {
                return Ok(section);
            }
            section.p99_last_over_first_rounds.push(
                ratio(
                    Some(summarize_ms(&lat[pods - bucket..]).p99),
                    Some(summarize_ms(&lat[..bucket]).p99),
                )
                .unwrap_or(f64::NAN),
            );
            first.extend_from_slice(&lat[..bucket]);
            last.extend_from_slice(&lat[pods - bucket..]);
            all.extend(lat);
        }
        let (f, l) = (summarize_ms(&first), summarize_ms(&last));
        section.p99_last_over_first = ratio(Some(l.p99), Some(f.p99));
        section.first_ms = Some(f);
        section.last_ms = Some(l);
        section.all_ms = Some(summarize_ms(&all));
        Ok(section)
    }
}

fn latency(
    mode: Mode,
    samples: Option<&Vec<Duration>>,
    cpu: Option<&Vec<Duration>>,
    error: Option<String>,
) -> Latency {
    Latency {
        mode: mode.name().to_owned(),
        how: mode.describe().to_owned(),
        ms: samples.filter(|v| !v.is_empty()).map(|v| summarize_ms(v)),
        cpu_ms: cpu.filter(|v| !v.is_empty()).map(|v| summarize_ms(v)),
        samples_ms: samples.map_or_else(Vec::new, |v| {
            v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
        }),
        error,
    }
}

/// Where `meshcap-cni` keeps its xtables templates (its run directory, `/run/meshcap`).
const TEMPLATES_DIR: &str = "/run/meshcap/templates";

/// Removes the plugin's IPv4 xtables templates (`ipv4-*`), so that the next v4-only iptables
/// ADD restores and keeps a new one: what the first pod of a ruleset pays. The IPv6 ones stay,
/// so the dual-stack ADDs around it keep theirs.
fn forget_templates() -> Result<()> {
    let entries = match std::fs::read_dir(TEMPLATES_DIR) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.with_context(|| format!("list {TEMPLATES_DIR}"))?,
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("list {TEMPLATES_DIR}"))?;
        if entry.file_name().to_string_lossy().starts_with("ipv4-") {
            match std::fs::remove_file(entry.path()) {
                // Another run of the plugin or the bench took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => {
                    other.with_context(|| format!("remove {}", entry.path().display()))?;
                }
            }
        }
    }
    Ok(())
}

/// `nsenter --net=NETNS true`: one exec into the namespace, doing nothing.
fn nsenter_true(ns: &PodNetns) -> Result<Duration> {
    let start = Instant::now();
    netns::run(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("true"),
        None,
    )?;
    Ok(start.elapsed())
}

/// The name of the control's row in the parallel section.
const CONTROL: &str = "control";

/// One burst: its wall time, each process's latency, and the CPU of its processes and of
/// this benchmark's own threads meanwhile.
struct Burst {
    wall: Duration,
    each: Vec<Duration>,
    cpu: Duration,
    harness: Duration,
    idle: Option<Duration>,
}

/// Bursts of one mode.
#[derive(Default)]
struct BurstStats {
    walls: Vec<Duration>,
    lats: Vec<Duration>,
    /// Per burst, in ms: CPU over the cores; wall over that floor; the harness's CPU over
    /// the cores; wall over the floor with the harness's CPU counted.
    floor: Vec<f64>,
    wall_over_floor: Vec<f64>,
    harness: Vec<f64>,
    wall_over_all: Vec<f64>,
    idle: Vec<f64>,
}

impl BurstStats {
    fn push(&mut self, b: Burst, cores: f64) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let floor = ms(b.cpu) / cores;
        let all = ms(b.cpu + b.harness) / cores;
        self.floor.push(floor);
        self.harness.push(ms(b.harness) / cores);
        if let Some(idle) = b.idle {
            self.idle.push(ms(idle) / cores);
        }
        if floor > 0.0 {
            self.wall_over_floor.push(ms(b.wall) / floor);
        }
        if all > 0.0 {
            self.wall_over_all.push(ms(b.wall) / all);
        }
        self.walls.push(b.wall);
        self.lats.extend(b.each);
    }

    fn summary(self, mode: &str) -> ParallelMode {
        let median = |v: &[f64]| {
            let mut sorted = v.to_vec();
            sorted.sort_by(f64::total_cmp);
            (!sorted.is_empty()).then(|| crate::stats::percentile(&sorted, 50.0))
        };
        let wall: Vec<f64> = self.walls.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ParallelMode {
            mode: mode.to_owned(),
            wall_ms_median: median(&wall),
            cpu_bound_ms_median: median(&self.floor),
            wall_over_cpu_bound_median: median(&self.wall_over_floor),
            harness_cpu_ms_median: median(&self.harness),
            wall_over_cpu_with_harness_median: median(&self.wall_over_all),
            idle_ms_median: median(&self.idle),
            wall_ms: wall,
            p99_over_single_median: None,
            ms: (!self.lats.is_empty()).then(|| summarize_ms(&self.lats)),
            error: None,
        }
    }
}

/// Runs `n` invocations of `run` at once (one thread each, released together) and measures
/// the burst: wall time from the first start to the last exit, and CPU.
fn measured_burst(n: usize, run: impl Fn(usize) -> Result<Duration> + Sync) -> Result<Burst> {
    let cpu_before = children_cpu();
    let barrier = Barrier::new(n);
    // The harness's CPU and the machine's idle time are read at the release, by the thread
    // the barrier elects, so that starting the threads stays out of both.
    let at_release = std::sync::OnceLock::new();
    let results: Vec<(Instant, Result<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, run, at_release) = (&barrier, &run, &at_release);
                s.spawn(move || {
                    if barrier.wait().is_leader() {
                        let _ = at_release.set((own_cpu(), machine_idle()));
                    }
                    (Instant::now(), run(i))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a burst thread panicked"))
            .collect()
    });
    let cpu = children_cpu().saturating_sub(cpu_before);
    let (own_before, idle_before) = at_release
        .into_inner()
        .context("the burst's barrier elected no leader")?;
    let harness = own_cpu().saturating_sub(own_before);
    let idle = machine_idle()
        .zip(idle_before)
        .map(|(after, before)| after.saturating_sub(before));
    let first = results
        .iter()
        .map(|(start, _)| *start)
        .min()
        .context("empty burst")?;
    let mut last = first;
    let mut each = Vec::with_capacity(results.len());
    for (start, r) in results {
        let d = r?;
        last = last.max(start + d);
        each.push(d);
    }
    Ok(Burst {
        wall: last - first,
        each,
        cpu,
        harness,
        idle,
    })
}

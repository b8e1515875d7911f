//! The report: the JSON document (`--json`) and the tables printed on stdout from it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{AddSection, DatapathSection, Latency, ParallelSection, ScaleSection, Settings};
use crate::machine::Machine;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    pub version: &'static str,
    /// The command line this report came from.
    pub command: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub machine: Machine,
    pub settings: Settings,
    pub add: Option<AddSection>,
    pub parallel: Option<ParallelSection>,
    pub datapath: Option<DatapathSection>,
    pub scale: Option<ScaleSection>,
    /// The eBPF fast path's figures, when `--fastpath-json` named its report.
    pub fastpath: Option<crate::chart::FastPath>,
    /// Every failure, one line each; empty when everything ran.
    pub errors: Vec<String>,
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

fn latency_rows(out: &mut String, rows: &[Latency]) {
    let _ = writeln!(
        out,
        "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}  what",
        "mode", "median", "p90", "p99", "max", "cpu(med)", "n"
    );
    for l in rows {
        let s = l.ms.as_ref();
        let _ = writeln!(
            out,
            "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}  {}",
            l.mode,
            num(s.map(|s| s.median), 2),
            num(s.map(|s| s.p90), 2),
            num(s.map(|s| s.p99), 2),
            num(s.map(|s| s.max), 2),
            num(l.cpu_ms.as_ref().map(|s| s.median), 2),
            s.map_or(0, |s| s.n),
            l.error
                .as_deref()
                .map_or(l.how.clone(), |e| format!("ERROR: {e}")),
        );
    }
}

impl Report {
    /// Human-readable tables.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "meshcap benchmark ({} {})",
            self.benchmark, self.version
        );
        let _ = writeln!(out, "command:  {}", self.command);
        let _ = writeln!(
            out,
            "machine:  kernel {}, {} cores ({}), {} MiB, {}",
            m.kernel, m.cores, m.cpu_model, m.memory_mib, m.os
        );
        let _ = writeln!(
            out,
            "load:     {} at start, {} at end (1/5/15 min)",
            m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(out, "baseline: {}", m.iptables);
        let _ = writeln!(
            out,
            "plugin:   {} ({} bytes, {}), revision {}",
            m.plugin,
            m.plugin_bytes.map_or("?".to_owned(), |b| b.to_string()),
            m.plugin_linkage,
            m.revision.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "state:    the plugin's MESHCAP_STATE_DIR on {} (a node's /run is tmpfs)",
            m.state_dir_fs
        );

        if let Some(add) = &self.add {
            for shape in &add.shapes {
                let _ = writeln!(
                    out,
                    "\nADD latency, {} pod, whole process, default sidecar pod, fresh netns, {} runs/mode interleaved (ms)",
                    shape.shape, add.runs
                );
                latency_rows(&mut out, &shape.modes);
                for (k, v) in &shape.ratios {
                    let _ = writeln!(out, "  ratio {k:<26} {}", num(*v, 2));
                }
                let _ = writeln!(
                    out,
                    "\nDEL latency, {} pod, on namespaces that had an ADD (ms)",
                    shape.shape
                );
                latency_rows(&mut out, &shape.del);
            }
            let _ = writeln!(out, "\nProcess floors (ms)");
            latency_rows(&mut out, &add.floors);
        }

        if let Some(p) = &self.parallel {
            let _ = writeln!(
                out,
                "\nParallel pod starts: {} ADDs at once, {} burst(s) per mode (ms)",
                p.concurrency, p.rounds
            );
            let _ = writeln!(
                out,
                "  {:<10} {:>11} {:>11} {:>10} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9}  bursts wall",
                "mode",
                "wall(med)",
                "cpu/cores",
                "wall/floor",
                "harness/cor",
                "w/floor+h",
                "idle/cor",
                "median",
                "p99",
                "p99/1x"
            );
            for pm in &p.modes {
                let s = pm.ms.as_ref();
                let walls: Vec<String> = pm.wall_ms.iter().map(|w| format!("{w:.1}")).collect();
                let _ = writeln!(
                    out,
                    "  {:<10} {:>11} {:>11} {:>10} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9}  {}",
                    pm.mode,
                    num(pm.wall_ms_median, 1),
                    num(pm.cpu_bound_ms_median, 1),
                    num(pm.wall_over_cpu_bound_median, 2),
                    num(pm.harness_cpu_ms_median, 1),
                    num(pm.wall_over_cpu_with_harness_median, 2),
                    num(pm.idle_ms_median, 1),
                    num(s.map(|s| s.median), 2),
                    num(s.map(|s| s.p99), 2),
                    num(pm.p99_over_single_median, 2),
                    pm.error
                        .as_deref()
                        .map_or(walls.join(" "), |e| format!("ERROR: {e}")),
                );
            }
            if p.modes.iter().any(|m| m.mode == "control") {
                let _ = writeln!(
                    out,
                    "  control: meshcap-bench-control in place of each nftables ADD, started and fed the same way, burning the CPU\n  \
                     that round's ADDs used each and nothing else: the wall/floor this harness and machine give a plugin that never waits"
                );
            }
        }

        if let Some(d) = &self.datapath {
            let _ = writeln!(
                out,
                "\nDatapath: app -> captured 10.96.0.10:80 -> sidecar (uid 1337) on 15001, {} B messages, {} x {:.1} s per target, both on cpu {} (us)",
                d.message_bytes, d.rounds, d.seconds_per_run, d.pinned_cpu
            );
            for shape in &d.shapes {
                let _ = writeln!(
                    out,
                    "  {:<4} {:<9} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9}",
                    shape.shape, "target", "rate/s", "median", "p99", "max", "rate/dir", "p99/dir"
                );
                for t in &shape.targets {
                    let s = t.us.as_ref();
                    let _ = write!(
                        out,
                        "       {:<9} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9}",
                        t.target,
                        num(t.rate_per_s, 0),
                        num(s.map(|s| s.median), 1),
                        num(s.map(|s| s.p99), 1),
                        num(s.map(|s| s.max), 1),
                        num(t.rate_vs_direct, 3),
                        num(t.p99_vs_direct, 3),
                    );
                    if let Some(e) = &t.error {
                        let _ = write!(out, "  ERROR: {e}");
                    }
                    out.push('\n');
                }
            }
        }

        if let Some(sc) = &self.scale {
            let _ = writeln!(
                out,
                "\nScale: {} pods on one node, ADD in {} mode one after another, {} round(s), buckets pooled (ms)",
                sc.pods, sc.mode, sc.rounds
            );
            let _ = writeln!(
                out,
                "  {:<14} {:>9} {:>9} {:>9} {:>5}",
                "pods", "median", "p90", "p99", "n"
            );
            let row = |out: &mut String, label: String, s: Option<&crate::stats::Summary>| {
                let _ = writeln!(
                    out,
                    "  {:<14} {:>9} {:>9} {:>9} {:>5}",
                    label,
                    num(s.map(|s| s.median), 2),
                    num(s.map(|s| s.p90), 2),
                    num(s.map(|s| s.p99), 2),
                    s.map_or(0, |s| s.n)
                );
            };
            row(
                &mut out,
                format!("first {}", sc.bucket),
                sc.first_ms.as_ref(),
            );
            row(&mut out, format!("last {}", sc.bucket), sc.last_ms.as_ref());
            row(&mut out, "all".to_owned(), sc.all_ms.as_ref());
            let each: Vec<String> = sc
                .p99_last_over_first_rounds
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect();
            let _ = writeln!(
                out,
                "  ratio p99 last/first       {}  (each round: {})",
                num(sc.p99_last_over_first, 2),
                each.join(" ")
            );
            if let Some(e) = &sc.error {
                let _ = writeln!(out, "  ERROR: {e}");
            }
        }

        let _ = writeln!(out, "\ntook {:.1} s", self.duration_s);
        if !self.errors.is_empty() {
            let _ = writeln!(out, "errors:");
            for e in &self.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}

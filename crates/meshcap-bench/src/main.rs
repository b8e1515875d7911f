//! `meshcap-bench`: how fast meshcap installs the capture and what it costs on the datapath,
//! measured on this machine's kernel against the exec-based `iptables-restore` baseline that
//! istio-cni and linkerd-cni use. See docs/BENCHMARKS.md for the method; `scripts/bench.sh`
//! builds in release and runs it.
//!
//! Needs root (it creates network namespaces). Prints tables on stdout and writes the same
//! figures as JSON (`--json`). Exits non-zero when any measurement failed.
#![forbid(unsafe_code)]

mod bench;
mod chart;
mod cni;
mod datapath;
mod machine;
mod netns;
mod report;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::bench::{Bench, Settings};
use crate::cni::Driver;
use crate::report::Report;

const SECTIONS: [&str; 4] = ["add", "parallel", "datapath", "scale"];

#[derive(Debug, Parser)]
#[command(
    name = "meshcap-bench",
    version,
    about = "Benchmark meshcap-cni (ADD/DEL, parallel starts, datapath, scale) against nsenter + iptables-restore"
)]
struct Cli {
    /// The meshcap-cni binary (default: next to this executable).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The burst control, `meshcap-bench-control` built static (default: next to the
    /// plugin); without it the parallel section has no control row.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench-results.json")]
    json: PathBuf,
    /// Short run for CI smoke (every section, small sizes); explicit sizes still win.
    #[arg(long)]
    quick: bool,
    /// Timed ADDs (and DELs) per mode [default: 100, quick 10].
    #[arg(long)]
    runs: Option<usize>,
    /// ADDs started at once [default: 64, quick 16].
    #[arg(long)]
    parallel: Option<usize>,
    /// Parallel bursts per mode [default: 3, quick 1].
    #[arg(long)]
    parallel_rounds: Option<usize>,
    /// Seconds per datapath run [default: 2, quick 0.3].
    #[arg(long)]
    datapath_secs: Option<f64>,
    /// Datapath runs per target [default: 3, quick 1].
    #[arg(long)]
    datapath_rounds: Option<usize>,
    /// Pods in the scale section [default: 500, quick 50].
    #[arg(long)]
    scale: Option<usize>,
    /// Scale rounds, each with its own pods [default: 3, quick 1]; the buckets pool over them.
    #[arg(long)]
    scale_rounds: Option<usize>,
    /// Comma-separated sections to run: add (with DEL), parallel, datapath, scale.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "add,parallel,datapath,scale"
    )]
    sections: Vec<String>,
    /// Keep the plugin's MESHCAP_STATE_DIR in the scratch directory on disk instead of a
    /// private tmpfs. A node keeps it under /run, which is a tmpfs on Kubernetes nodes.
    #[arg(long)]
    state_dir_on_disk: bool,
    /// Where to write the SVG chart of the run.
    #[arg(long, default_value = "target/bench-chart.svg")]
    svg: PathBuf,
    /// The eBPF fast path's JSON report (`MESHCAP_BENCH_JSON` of its cargo bench), drawn in
    /// the chart and copied into this report.
    #[arg(long)]
    fastpath_json: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) The stand-in sidecar: echo server on PORT, started in the pod as uid 1337.
    #[command(hide = true)]
    Sidecar {
        #[arg(long)]
        port: u16,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Draw the SVG chart of an earlier run from its JSON report.
    Chart {
        /// The JSON report of meshcap-bench.
        #[arg(long, default_value = "target/bench-results.json")]
        results: PathBuf,
        /// The eBPF fast path's JSON report, if any.
        #[arg(long)]
        fastpath_json: Option<PathBuf>,
        /// Where to write the SVG.
        #[arg(long, default_value = "target/bench-chart.svg")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Sidecar { port, cpu }) => {
            return match datapath::sidecar_main(port, cpu) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshcap-bench sidecar: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Chart {
            results,
            fastpath_json,
            out,
        }) => {
            return match redraw(&results, fastpath_json.as_deref(), &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshcap-bench chart: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("meshcap-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    for s in &cli.sections {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown section {s:?} (known: {})", SECTIONS.join(", "));
        }
    }
    let s = Settings {
        runs: cli.runs.unwrap_or(if q { 10 } else { 100 }),
        parallel: cli.parallel.unwrap_or(if q { 16 } else { 64 }),
        parallel_rounds: cli.parallel_rounds.unwrap_or(if q { 1 } else { 3 }),
        datapath_secs: cli.datapath_secs.unwrap_or(if q { 0.3 } else { 2.0 }),
        datapath_rounds: cli.datapath_rounds.unwrap_or(if q { 1 } else { 3 }),
        scale: cli.scale.unwrap_or(if q { 50 } else { 500 }),
        scale_rounds: cli.scale_rounds.unwrap_or(if q { 1 } else { 3 }),
        sections: cli.sections.clone(),
    };
    if s.runs == 0
        || s.parallel == 0
        || s.parallel_rounds == 0
        || s.datapath_rounds == 0
        || s.scale_rounds == 0
    {
        bail!(
            "--runs, --parallel, --parallel-rounds, --datapath-rounds and --scale-rounds must be at least 1"
        );
    }
    if !(s.datapath_secs > 0.0 && s.datapath_secs <= 60.0) {
        bail!("--datapath-secs must be in (0, 60]");
    }
    Ok(s)
}

/// The command line, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the sections; `Ok(false)` when some measurement failed (the report says which).
fn run(cli: Cli) -> Result<bool> {
    let settings = settings(&cli)?;
    let fastpath = cli
        .fastpath_json
        .as_deref()
        .map(chart::read_fast_path)
        .transpose()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root: it creates network namespaces and installs rules in them");
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let plugin = match &cli.plugin {
        Some(p) => p.clone(),
        None => exe.with_file_name("meshcap-cni"),
    };
    if !plugin.is_file() {
        bail!(
            "plugin {} not found: build it (cargo build --release -p meshcap-cni) or pass --plugin",
            plugin.display()
        );
    }
    let plugin = plugin.canonicalize()?;
    let control = cli
        .control
        .clone()
        .unwrap_or_else(|| plugin.with_file_name("meshcap-bench-control"));
    let control = if control.is_file() {
        Some(control)
    } else {
        eprintln!(
            "meshcap-bench: no burst control at {} (scripts/build-static.sh -p meshcap-bench-control, or --control): the parallel section runs without it",
            control.display()
        );
        None
    };
    let stale = netns::remove_stale();
    if stale > 0 {
        eprintln!("meshcap-bench: removed {stale} namespaces left by an earlier run");
    }
    // Scratch: the plugin's MESHCAP_STATE_DIR, and a copy of this executable for the sidecar,
    // which runs as uid 1337 and may not be allowed into the build directory.
    let scratch = std::env::temp_dir().join(format!("meshcap-bench-{}", std::process::id()));
    let state_dir = scratch.join("state");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // The plugin writes one attachment record per ADD. On a node that is /run (tmpfs); the
    // scratch directory may be on a disk file system, whose inode creation would then be
    // measured instead of the plugin.
    let state_tmpfs = !cli.state_dir_on_disk;
    if state_tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            &state_dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=64m,mode=0755"),
        )
        .with_context(|| format!("mounting a tmpfs on {}", state_dir.display()))?;
    }
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755))?;
    let sidecar_exe = scratch.join("meshcap-bench");
    std::fs::copy(&exe, &sidecar_exe)
        .with_context(|| format!("copying {} to {}", exe.display(), sidecar_exe.display()))?;

    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = Instant::now();
    let load_start = machine::loadavg();
    let mut bench = Bench {
        driver: Driver::new(&plugin, &state_dir),
        settings: settings.clone(),
        exe: sidecar_exe,
        control,
        broken: BTreeMap::new(),
    };
    let want = |s: &str| settings.sections.iter().any(|x| x == s);
    let outcome = (|| -> Result<Report> {
        let add = want("add").then(|| bench.add_section()).transpose()?;
        // Single-ADD medians (dual-stack pods, as in the bursts) for the parallel ratio.
        let single: BTreeMap<String, f64> = add
            .iter()
            .flat_map(|a| a.shapes.iter().filter(|s| s.shape == "dual-stack"))
            .flat_map(|s| &s.modes)
            .filter_map(|l| Some((l.mode.clone(), l.ms.as_ref()?.median)))
            .collect();
        let parallel = want("parallel")
            .then(|| bench.parallel_section(&single))
            .transpose()?;
        let datapath = want("datapath")
            .then(|| bench.datapath_section())
            .transpose()?;
        let scale = want("scale").then(|| bench.scale_section()).transpose()?;
        let mut report = Report {
            benchmark: "meshcap-bench",
            version: env!("CARGO_PKG_VERSION"),
            command: command_line(),
            started_unix,
            duration_s: clock.elapsed().as_secs_f64(),
            machine: machine::probe(&plugin, &state_dir, load_start.clone()),
            settings: settings.clone(),
            add,
            parallel,
            datapath,
            scale,
            fastpath: fastpath.clone(),
            errors: Vec::new(),
        };
        report.errors = collect_errors(&report);
        Ok(report)
    })();
    if state_tmpfs {
        let _ = nix::mount::umount2(&state_dir, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let report = outcome?;

    print!("{}", report.tables());
    if let Some(dir) = cli.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&cli.json, json + "\n")
        .with_context(|| format!("writing {}", cli.json.display()))?;
    println!("json:     {}", cli.json.display());
    let value = serde_json::to_value(&report)?;
    write_chart(&cli.svg, &chart::render(&value, fastpath.as_ref())?)?;
    println!("chart:    {}", cli.svg.display());
    Ok(report.errors.is_empty())
}

/// The chart of an earlier run's JSON report.
fn redraw(
    results: &std::path::Path,
    fastpath: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", results.display()))?;
    let fast = match fastpath {
        Some(p) => Some(chart::read_fast_path(p)?),
        None => report
            .get("fastpath")
            .filter(|v| !v.is_null())
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()?,
    };
    write_chart(out, &chart::render(&report, fast.as_ref())?)
}

fn write_chart(path: &std::path::Path, svg: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Every error in the report once, without the "skipped because X failed" echoes.
fn collect_errors(r: &Report) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    let mut push = |section: &str, what: &str, e: &Option<String>| {
        if let Some(e) = e {
            if !e.starts_with("skipped:") && seen.insert((what.to_owned(), e.clone())) {
                errors.push(format!("{section} {what}: {e}"));
            }
        }
    };
    if let Some(a) = &r.add {
        for l in a.shapes.iter().flat_map(|s| &s.modes).chain(&a.floors) {
            push("add", &l.mode, &l.error);
        }
        for l in a.shapes.iter().flat_map(|s| &s.del) {
            push("del", &l.mode, &l.error);
        }
    }
    if let Some(p) = &r.parallel {
        for m in &p.modes {
            push("parallel", &m.mode, &m.error);
        }
    }
    if let Some(d) = &r.datapath {
        for s in &d.shapes {
            for t in &s.targets {
                push("datapath", &t.target, &t.error);
            }
        }
    }
    if let Some(s) = &r.scale {
        push("scale", &s.mode, &s.error);
    }
    errors
}

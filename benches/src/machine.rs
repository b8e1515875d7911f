//! What the figures were measured on: kernel, CPU, memory, the xtables flavour the baseline
//! runs, the plugin binary and the source revision.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub os: String,
    /// `iptables-restore --version` (says whether it is the nf_tables or legacy flavour).
    pub iptables: String,
    pub plugin: String,
    pub plugin_bytes: Option<u64>,
    /// `git describe --always --dirty` of the checkout, when there is one.
    pub revision: Option<String>,
    /// 1, 5 and 15 minute load averages when the run started and ended: other work on the
    /// machine shows here, and it inflates tails.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// The three load averages of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| first_line(&String::from_utf8_lossy(&out.stdout)))
}

/// Probe at the end of a run; `loadavg_start` is [`loadavg`] from its start.
pub fn probe(plugin: &Path, loadavg_start: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Machine {
        kernel: first_line(
            &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_mib,
        os,
        iptables: output("iptables-restore", &["--version"]).unwrap_or_default(),
        plugin: plugin.display().to_string(),
        plugin_bytes: std::fs::metadata(plugin).ok().map(|m| m.len()),
        revision: output(
            "git",
            &[
                "-C",
                &repo.display().to_string(),
                "describe",
                "--always",
                "--dirty",
            ],
        ),
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

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
    /// `static` or `dynamic` (whether the ELF asks for a program interpreter).
    pub plugin_linkage: String,
    /// File system of the plugin's MESHCAP_STATE_DIR (`tmpfs` unless `--state-dir-on-disk`).
    pub state_dir_fs: String,
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

/// `static` when the ELF file has no PT_INTERP program header (nothing for a dynamic loader
/// to do at exec), `dynamic` when it has one.
pub fn linkage(path: &Path) -> String {
    match std::fs::read(path)
        .ok()
        .and_then(|elf| has_interpreter(&elf))
    {
        Some(true) => "dynamic".into(),
        Some(false) => "static".into(),
        None => "unknown".into(),
    }
}

/// Reads the program headers of a 64-bit little-endian ELF file.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..5)? != b"\x7fELF\x02" || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (entsize, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    let mut found = false;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entsize)?)?;
        found |= u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?) == PT_INTERP;
    }
    Some(found)
}

fn fs_type(path: &Path) -> String {
    use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    match statfs(path) {
        Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => "tmpfs".into(),
        Ok(fs) if fs.filesystem_type() == EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(fs) if fs.filesystem_type() == XFS_SUPER_MAGIC => "xfs".into(),
        Ok(fs) => format!("{:#x}", fs.filesystem_type().0),
        Err(e) => format!("unknown ({e})"),
    }
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
pub fn probe(plugin: &Path, state_dir: &Path, loadavg_start: String) -> Machine {
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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
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
        plugin_linkage: linkage(plugin),
        state_dir_fs: fs_type(state_dir),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linkage_of_this_test_binary_and_of_garbage() {
        // Test binaries are dynamically linked PIEs unless built with crt-static.
        let me = std::env::current_exe().unwrap();
        assert!(["static", "dynamic"].contains(&linkage(&me).as_str()));
        assert_eq!(has_interpreter(b"not an elf file"), None);
        assert_eq!(
            has_interpreter(b"\x7fELF\x02\x01"),
            None,
            "truncated header"
        );
    }
}

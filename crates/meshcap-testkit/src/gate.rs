//! Skip or fail: whether a privileged test can run here, and what it says when it cannot.

use std::io::Write as _;
use std::path::PathBuf;

/// Whether the tests run under CI (`CI=true`), where a test that cannot run fails.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says that `name` is skipped and why; under `CI=true` panics instead.
pub fn skip_or_fail(name: &str, why: &str) {
    if ci() {
        panic!("{name}: cannot run under CI=true: {why}");
    }
    // Straight to fd 2: the test harness captures `eprintln!`, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
}

/// Why a test that needs root cannot run here, if it cannot.
pub fn missing_root() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| "not running as root".to_string())
}

/// Why a test that needs root and `tools` (found in `$PATH`, `/usr/sbin`, `/sbin` or
/// `/usr/bin`) cannot run here, if it cannot.
pub fn missing_root_or_tools(tools: &[&str]) -> Option<String> {
    missing_root().or_else(|| missing_tools(tools))
}

/// Why a test that needs `tools` (found in `$PATH`, `/usr/sbin`, `/sbin` or `/usr/bin`) cannot
/// run here, if it cannot.
pub fn missing_tools(tools: &[&str]) -> Option<String> {
    let dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .collect();
    tools
        .iter()
        .find(|tool| !dirs.iter().any(|d| d.join(tool).exists()))
        .map(|tool| format!("`{tool}` is not installed"))
}

/// `true` when a test that needs root and `tools` can run; otherwise says why (or fails under
/// `CI=true`) and returns `false`.
pub fn require_root_and_tools(name: &str, tools: &[&str]) -> bool {
    match missing_root_or_tools(tools) {
        None => true,
        Some(why) => {
            skip_or_fail(name, &why);
            false
        }
    }
}

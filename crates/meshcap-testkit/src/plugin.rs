//! Running a CNI plugin binary the way a runtime starts it, for tests that drive the plugin
//! directly: an environment of only `PATH`, the `CNI_*` parameters and what the test adds, the
//! configuration on stdin, and everything it printed.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// One run of a plugin: exit code (-1 when killed by a signal), stdout, stderr.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout then stderr, for a failure message.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The `CNI_*` parameters of one call on interface `eth0`, with `CNI_PATH` `/opt/cni/bin`.
pub fn cni_env<'a>(
    command: &'a str,
    container_id: &'a str,
    netns: &'a str,
    args: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", args),
    ]
}

/// Runs `bin` with only `PATH` and `env` in its environment and `stdin` on stdin.
///
/// # Panics
/// When the plugin cannot be started: the test cannot go on.
pub fn run_plugin(bin: &Path, env: &[(&str, &str)], stdin: &str) -> PluginRun {
    let mut child = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading stdin (VERSION): a broken pipe is not an error.
        let _ = pipe.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {}: {e}", bin.display()));
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

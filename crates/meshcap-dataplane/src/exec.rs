//! Running the xtables programs. Arguments go as argv (never through a shell), and stdout and
//! stderr are always captured: the CNI plugin's own stdout carries its result and must not
//! receive a child's output.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::excerpt;
use crate::DataplaneError;

/// Directories searched after `$PATH`: xtables lives in sbin, which a CNI plugin's
/// environment (set by the container runtime) often lacks.
pub(crate) const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// `$PATH` followed by [`SBIN_DIRS`], without duplicates.
pub(crate) fn default_search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        if d.as_os_str().is_empty() || seen.contains(d) {
            false
        } else {
            seen.push(d.clone());
            true
        }
    });
    dirs
}

/// The first executable file called `program` in `search`.
pub(crate) fn find_program(search: &[PathBuf], program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    search.iter().map(|d| d.join(program)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

pub(crate) fn describe_search(search: &[PathBuf]) -> String {
    let dirs: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
    dirs.join(":")
}

/// A child started by [`start`], whose stdin has been written and closed.
pub(crate) struct Running {
    child: Child,
    binary: PathBuf,
    args: Vec<String>,
    netns: PathBuf,
}

/// Starts `binary args…` and feeds it `stdin`; [`Running::finish`] collects it. Several
/// children may run at once: each reads all of its stdin before writing, and its output is
/// collected after it was started, so waiting for one never blocks another for good.
pub(crate) fn start(
    binary: &Path,
    args: &[&str],
    env: &[(&str, OsString)],
    stdin: Option<&str>,
    netns: &Path,
) -> Result<Running, DataplaneError> {
    let spawn_err = |source: io::Error| DataplaneError::Spawn {
        binary: binary.to_owned(),
        netns: netns.to_owned(),
        source,
    };
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // xtables-restore reads all of its input before it writes anything, so writing first
        // and collecting output afterwards cannot deadlock. A child that exits early closes
        // the pipe; its exit status and stderr then explain why, not EPIPE.
        match pipe.write_all(text.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_err(e));
            }
        }
    }
    Ok(Running {
        child,
        binary: binary.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        netns: netns.to_owned(),
    })
}

impl Running {
    /// Waits for the child; its stdout, or why it failed.
    pub(crate) fn finish(self) -> Result<String, DataplaneError> {
        let Running {
            child,
            binary,
            args,
            netns,
        } = self;
        let out = match child.wait_with_output() {
            Ok(out) => out,
            Err(source) => {
                return Err(DataplaneError::Spawn {
                    binary,
                    netns,
                    source,
                })
            }
        };
        if !out.status.success() {
            return Err(DataplaneError::Command {
                binary,
                args,
                netns,
                status: out.status.to_string(),
                stderr: excerpt(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

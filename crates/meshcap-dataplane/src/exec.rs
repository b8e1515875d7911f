//! Running the xtables programs. Arguments go as argv (never through a shell), and stdout and
//! stderr are always captured: the CNI plugin's own stdout carries its result and must not
//! receive a child's output.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

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
    let mut seen: Vec<std::ffi::OsString> = Vec::new();
    dirs.retain(|d| {
        // By spelling: comparing `Path`s parses both into components every time.
        if d.as_os_str().is_empty() || seen.iter().any(|s| s == d.as_os_str()) {
            false
        } else {
            seen.push(d.as_os_str().to_owned());
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

/// A child started by [`start`] (its stdin written and closed) or by [`spawn`] (its stdin
/// still open, for [`Running::feed`]).
pub(crate) struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
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
    let mut running = spawn(binary, args, env, stdin.is_some(), netns)?;
    if let Some(text) = stdin {
        running.feed(text)?;
    }
    Ok(running)
}

/// Starts `binary args…` with its stdin open (`piped_stdin`) or empty; [`Running::feed`]
/// writes and closes it later.
pub(crate) fn spawn(
    binary: &Path,
    args: &[&str],
    env: &[(&str, OsString)],
    piped_stdin: bool,
    netns: &Path,
) -> Result<Running, DataplaneError> {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DataplaneError::Spawn {
            binary: binary.to_owned(),
            netns: netns.to_owned(),
            source,
        })?;
    Ok(Running {
        stdin: child.stdin.take(),
        child,
        binary: binary.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        netns: netns.to_owned(),
    })
}

impl Running {
    /// Writes `text` to the child's stdin and closes it (nothing when it has none).
    pub(crate) fn feed(&mut self, text: &str) -> Result<(), DataplaneError> {
        let Some(mut pipe) = self.stdin.take() else {
            return Ok(());
        };
        // xtables-restore reads all of its input before it writes anything, so writing first
        // and collecting output afterwards cannot deadlock. A child that exits early closes
        // the pipe; its exit status and stderr then explain why, not EPIPE.
        match pipe.write_all(text.as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(source) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(DataplaneError::Spawn {
                    binary: self.binary.clone(),
                    netns: self.netns.clone(),
                    source,
                })
            }
        }
    }

    /// Waits for the child (closing its stdin first, if still open); its stdout, or why it
    /// failed.
    pub(crate) fn finish(self) -> Result<String, DataplaneError> {
        let Running {
            child,
            stdin,
            binary,
            args,
            netns,
        } = self;
        drop(stdin);
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

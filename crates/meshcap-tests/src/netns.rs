//! The end-to-end suite's network namespaces: the test kit's [`ScratchNetns`] (named
//! `<prefix>-<pid>-<n>`, deleted on drop), plus child processes that enter it between fork and
//! exec ([`Netns::command`]), optionally as another uid/gid, and a stop switch for the demo's
//! Ctrl-C handler.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use meshcap_testkit::ScratchNetns;

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Refuse to create namespaces or start processes in them from now on, so a cleanup pass (the
/// demo's Ctrl-C handler) is not raced by worker threads still building pods.
pub fn stop_creating() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Whether [`stop_creating`] was called.
pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn check_not_stopping() -> Result<()> {
    if STOPPING.load(Ordering::SeqCst) {
        bail!("shutting down: no new namespaces or processes");
    }
    Ok(())
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns(ScratchNetns);

impl Netns {
    /// Create `<prefix>-<pid>-<n>` with `lo` up.
    pub fn new(prefix: &str) -> Result<Netns> {
        check_not_stopping()?;
        Ok(Netns(ScratchNetns::new(prefix)?))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `/run/netns/<name>`, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// An fd on the namespace.
    pub fn open(&self) -> Result<File> {
        Ok(self.0.open()?)
    }

    /// A command that runs inside this namespace (it enters by fd before exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        check_not_stopping()?;
        let mut cmd = Command::new(program);
        crate::sys::setns_before_exec(&mut cmd, self.open()?, None);
        Ok(cmd)
    }

    /// A command that runs inside this namespace as `uid`/`gid` (no supplementary groups).
    pub fn command_as(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        uid: u32,
        gid: u32,
    ) -> Result<Command> {
        check_not_stopping()?;
        let mut cmd = Command::new(program);
        crate::sys::setns_before_exec(&mut cmd, self.open()?, Some((uid, gid)));
        Ok(cmd)
    }

    /// Run `program args..` inside the namespace; fails unless it exits 0; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        run_checked(&mut cmd).with_context(|| format!("in netns {}", self.name()))
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.exec("ip", args)
    }

    /// Set a sysctl (`net.ipv4.ip_forward=1` form) inside the namespace.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", setting]).map(|_| ())
    }

    /// Run `f` on a thread that entered this namespace; the caller's thread is untouched. The
    /// closure must not start async work that outlives it (the thread ends with it).
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        Ok(self.0.run(f)?)
    }

    /// Delete now (drop does the same, ignoring errors).
    pub fn delete(self) -> Result<()> {
        Ok(self.0.delete()?)
    }
}

/// Delete every namespace this process created (names carry `-<pid>-`); the demo's Ctrl-C
/// handler calls it, since guards do not run when a signal ends the process.
pub fn delete_all_of_this_process() {
    let tag = format!("-{}-", std::process::id());
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(&tag) {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Run a command to completion; an error (with stderr) unless it exits 0; returns stdout.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    Ok(meshcap_testkit::run_checked(cmd, None)?)
}

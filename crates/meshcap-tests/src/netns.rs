//! Named network namespaces for tests.
//!
//! Each namespace is created with `ip netns add <prefix>-<pid>-<n>`, so parallel tests and
//! parallel test processes never collide, and it is deleted when its [`Netns`] guard drops,
//! also when the test panics. Work runs inside a namespace either as a closure on a thread that
//! entered it by fd ([`Netns::run`]), or as a child process that enters it between fork and exec
//! ([`Netns::command`]), optionally as another uid/gid.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
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
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Create `<prefix>-<pid>-<n>` with `lo` up.
    pub fn new(prefix: &str) -> Result<Netns> {
        check_not_stopping()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("{clean}-{}-{n}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An fd on the namespace.
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("open {}", self.path.display()))
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
        run_checked(&mut cmd).with_context(|| format!("in netns {}", self.name))
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
        let fd = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into test netns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("closure in netns panicked"))?
        })
    }

    /// Delete now (drop does the same, ignoring errors).
    pub fn delete(self) -> Result<()> {
        let name = self.name.clone();
        std::mem::forget(self);
        run_checked(Command::new("ip").args(["netns", "delete", &name])).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

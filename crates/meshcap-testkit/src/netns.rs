//! Scratch network namespaces: one type for every privileged test.
//!
//! Each is created with `ip netns add <tag>-<pid>-<n>` (so parallel tests and parallel test
//! processes never collide; a leftover of a crashed run with a recycled pid is deleted first),
//! gets `lo` up, and is deleted when the guard drops, also when the test panics. Work runs
//! inside it as a program (`ip netns exec`, [`ScratchNetns::exec`]) or as a closure on a
//! thread that entered it ([`ScratchNetns::run`], through `meshcap-netns`).

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
    path: PathBuf,
}

impl ScratchNetns {
    /// Creates `<tag>-<pid>-<n>` (the tag cut to 40 characters, anything but letters, digits
    /// and `-` made `-`) with `lo` up.
    pub fn new(tag: &str) -> io::Result<ScratchNetns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let clean: String = tag
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
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_checked(Command::new("ip").args(["netns", "add", &name]), None)?;
        let ns = ScratchNetns {
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
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", self.path.display())))
    }

    /// `ip netns exec <name> argv…`, whatever its exit status.
    pub fn output(&self, argv: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs `argv` inside the namespace, feeding `stdin`; an error (with stderr) unless it
    /// exits 0; its stdout.
    pub fn exec(&self, argv: &[&str], stdin: Option<&str>) -> io::Result<String> {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
            stdin,
        )
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args), None)
    }

    /// Runs `f` on a thread that entered this namespace; the caller's thread is untouched.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = self.open()?;
        meshcap_netns::run_on_thread(file.as_fd(), f).map_err(io::Error::other)
    }

    /// Deletes the namespace now (drop does the same, ignoring errors).
    pub fn delete(self) -> io::Result<()> {
        let name = self.name.clone();
        std::mem::forget(self);
        run_checked(Command::new("ip").args(["netns", "delete", &name]), None).map(drop)
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` to completion, feeding `stdin`; an error (with stderr) unless it exits 0;
/// returns stdout.
pub fn run_checked(cmd: &mut Command, stdin: Option<&str>) -> io::Result<String> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn {cmd:?}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early closes the pipe; its status and stderr say why.
        match pipe.write_all(input.as_bytes()) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
            _ => {}
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

//! Helpers shared by this crate's integration tests: running the plugin as a runtime does,
//! scratch directories, privileged-test skipping and scratch network namespaces. Each test
//! target adds the assertions it needs on [`Run`] and [`Scratch`] in `impl` blocks of its own.
#![allow(dead_code)] // each test target uses a different subset

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshcap-cni");

/// One invocation of the plugin: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshcap-cni` with only `PATH` and `env` in its environment and `stdin` on stdin.
pub fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn meshcap-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A per-test directory (`<tmp>/<prefix>-<test>-<pid>`), removed on drop even when the test
/// fails; the plugin's state dir is `state` under it.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str, test: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("{prefix}-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn state(&self) -> String {
        self.0.join("state").to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use meshcap_tests::{missing_root_or_tools, skip_or_fail};

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(test: &str) -> Netns {
        let name = format!("{test}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let up = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(up.status.success());
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// What the stock tools show, with counters and generated-by comments removed.
    pub fn rules(&self, mode: &str) -> String {
        let cmds: &[&[&str]] = match mode {
            "iptables" => &[&["iptables-save"], &["ip6tables-save"]],
            _ => &[&["nft", "list", "ruleset"]],
        };
        let mut out = String::new();
        for cmd in cmds {
            let o = Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(*cmd)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                // ":CHAIN POLICY [packets:bytes]" -> without the counters.
                let line = match line.rfind(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

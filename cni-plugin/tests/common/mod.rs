//! Helpers shared by this crate's integration tests: privileged-test skipping and scratch
//! network namespaces.
#![allow(dead_code)] // each test target uses a different subset

use std::process::Command;

/// Says that `test` is skipped and why; under `CI=true` panics instead.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

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

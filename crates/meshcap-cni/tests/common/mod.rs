//! Helpers shared by this crate's integration tests: running the plugin as a runtime does,
//! scratch directories, privileged-test skipping and scratch network namespaces. Each test
//! target adds the assertions it needs on [`Run`] and [`Scratch`] in `impl` blocks of its own.
#![allow(dead_code)] // each test target uses a different subset

use std::path::PathBuf;

use meshcap_testkit::ScratchNetns;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshcap-cni");

/// One invocation of the plugin: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshcap-cni` with only `PATH` and `env` in its environment and `stdin` on stdin.
pub fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let run = meshcap_testkit::run_plugin(std::path::Path::new(BIN), env, stdin);
    Run {
        code: run.code,
        stdout: run.stdout,
        stderr: run.stderr,
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

/// A scratch network namespace ([`ScratchNetns`]), deleted on drop.
pub struct Netns {
    pub ns: ScratchNetns,
    pub name: String,
}

impl Netns {
    pub fn create(test: &str) -> Netns {
        let ns = ScratchNetns::new(test).expect("create a scratch network namespace");
        Netns {
            name: ns.name().to_owned(),
            ns,
        }
    }

    pub fn path(&self) -> String {
        self.ns.path().display().to_string()
    }

    /// What the stock tools show, with counters and generated-by comments removed.
    pub fn rules(&self, mode: &str) -> String {
        let cmds: &[&[&str]] = match mode {
            "iptables" => &[&["iptables-save"], &["ip6tables-save"]],
            _ => &[&["nft", "list", "ruleset"]],
        };
        cmds.iter()
            .map(|cmd| {
                self.ns
                    .listing(cmd)
                    .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
            })
            .collect()
    }
}

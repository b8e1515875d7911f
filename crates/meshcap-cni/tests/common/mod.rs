//! Helpers shared by this crate's integration tests: running the plugin as a runtime does,
//! scratch directories, privileged-test skipping and scratch network namespaces. Each test
//! target adds the assertions it needs on [`Run`] and [`Scratch`] in `impl` blocks of its own.
#![allow(dead_code)] // each test target uses a different subset

use std::path::Path;

use meshcap_testkit::{ScratchDir, ScratchNetns};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshcap-cni");

/// One invocation of the plugin: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshcap-cni` with only `PATH` and `env` in its environment and `stdin` on stdin.
pub fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let run = meshcap_testkit::run_plugin(Path::new(BIN), env, stdin);
    Run {
        code: run.code,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

/// A per-test [`ScratchDir`] whose `state` subdirectory is the plugin's state dir; a type of
/// this crate so that each test target can give it helpers of its own.
pub struct Scratch(ScratchDir);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        Scratch(ScratchDir::new(test))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn state(&self) -> String {
        self.path().join("state").to_str().unwrap().to_string()
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

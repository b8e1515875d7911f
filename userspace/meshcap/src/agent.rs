//! `meshcap agent`: the long-running node agent. Today it owns the eBPF fast path: it loads,
//! attaches and pins the programs and maps the CNI plugin registers pods in, and serves until
//! SIGTERM (the data path stays in place for the next agent unless `--detach-on-exit`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use meshcap_fastpath::{agent, AgentOptions};

#[derive(Args)]
pub struct AgentArgs {
    /// bpffs directory where the agent pins its maps and links.
    #[arg(long, default_value = meshcap_fastpath::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// cgroup v2 directory to attach to (default: the root of the unified hierarchy).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Detach and unpin everything meshcap's agent installed, then exit.
    #[arg(long)]
    uninstall: bool,
    /// On SIGTERM/SIGINT also detach and unpin (default: leave the fast path in place so
    /// established connections and registered pods survive an agent restart).
    #[arg(long)]
    detach_on_exit: bool,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let opts = AgentOptions {
        pin_dir: args.pin_dir.clone(),
        cgroup: args.cgroup.clone(),
        uninstall: args.uninstall,
        detach_on_exit: args.detach_on_exit,
    };
    agent::run(&opts).with_context(|| {
        if args.uninstall {
            "uninstalling the eBPF fast path".to_owned()
        } else {
            format!("running the eBPF fast path agent (pins in {})", args.pin_dir.display())
        }
    })
}

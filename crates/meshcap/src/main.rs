//! `meshcap`: the node tool. Renders the rules a pod would get, shows what is installed in a
//! namespace, puts the plugin into the node's CNI configuration and runs the node agent.

#![deny(unsafe_code)]

mod agent;
mod install;
mod node;
mod render;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meshcap",
    version,
    about = "Sidecar traffic capture without NET_ADMIN in the pod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the rules a pod would get (iptables-restore text or nftables), no root needed.
    Render(render::RenderArgs),
    /// Show what meshcap installed in a network namespace.
    Inspect {
        /// Path of the network namespace, e.g. /run/netns/NAME or /proc/PID/ns/net.
        #[arg(long)]
        netns: PathBuf,
    },
    /// Install meshcap-cni into the node's CNI configuration (appended to the primary chain).
    Install(install::InstallArgs),
    /// Remove meshcap-cni from the node's CNI configuration and plugin directory, with its
    /// records, run state and the eBPF fast path's pins.
    Uninstall(install::UninstallArgs),
    /// Run the node agent: eBPF fast path, repair of drifted pod rules, adoption of pods set up
    /// before meshcap was installed, CNI config watch and Prometheus metrics; `--uninstall`
    /// takes the fast path down.
    Agent(agent::AgentArgs),
    /// What the DaemonSet's containers run (the image has no shell): `install` writes the
    /// plugin's kubeconfig and chains the plugin into the host's CNI config, `agent` runs the
    /// node agent and keeps both fresh, `kubeconfig` only writes the kubeconfig.
    Node(node::NodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let long_running = match &cli.command {
        Command::Agent(_) => true,
        Command::Node(args) => args.step == node::Step::Agent,
        _ => false,
    };
    if !long_running {
        quiet_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Render(args) => render::run(&args),
        Command::Inspect { netns } => inspect(&netns),
        Command::Install(args) => install::install(&args).map(|file| {
            println!(
                "meshcap-cni installed in {} and chained in {}",
                args.cni_bin_dir.display(),
                file.display()
            );
        }),
        Command::Agent(args) => agent::run(&args),
        Command::Node(args) => run_node(&args),
        Command::Uninstall(args) => install::uninstall(&args).map(|file| match file {
            Some(file) => println!("meshcap-cni removed from {}", file.display()),
            None => {
                println!("meshcap-cni was not in the CNI configuration; binary removed if present")
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn the error into a panic.
            let _ = writeln!(std::io::stderr(), "meshcap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: &node::NodeArgs) -> anyhow::Result<()> {
    node::prepare(args)?;
    if args.step != node::Step::Agent {
        return Ok(());
    }
    let cli = Cli::try_parse_from(args.agent_argv())?;
    let Command::Agent(agent_args) = cli.command else {
        unreachable!("agent_argv names the agent subcommand")
    };
    agent::run_with(&agent_args, || node::spawn_refresher(args))
}

/// `meshcap inspect ... | head`: once the reader is gone, end quietly as other command-line
/// tools do (killed by SIGPIPE) instead of panicking in `println!`. Not for the agent (`agent`,
/// `node agent`): a log reader that goes away must never kill it; its log writes ignore errors.
#[allow(unsafe_code)]
fn quiet_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default disposition before any thread exists; no handler runs.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn inspect(netns: &std::path::Path) -> anyhow::Result<()> {
    let ns = meshcap_dataplane::PodNetns::open(netns)?;
    let inspection = meshcap_dataplane::inspect(&ns)?;
    print!("{inspection}");
    print_fast_path(netns);
    Ok(())
}

/// Whether the pod is on the eBPF fast path, and the node's counters.
fn print_fast_path(netns: &std::path::Path) {
    println!("eBPF fast path:");
    let cookie = match meshcap_fastpath::netns_cookie_at(netns) {
        Ok(c) => c,
        Err(e) => {
            println!("  unknown: {e}");
            return;
        }
    };
    match meshcap_fastpath::status(Some(cookie)) {
        Err(e) => println!("  not available: {e}"),
        Ok(status) => {
            if let Err(reason) = &status.available {
                println!("  not installed on this node: {reason}");
                return;
            }
            match status.pod {
                Some(pod) => println!(
                    "  pod registered (netns cookie {cookie}, proxy uid {} gid {}, ports {}/{}), {} sockets paired now",
                    pod.proxy_uid, pod.proxy_gid, pod.outbound_port, pod.inbound_port, status.pod_sockets
                ),
                None => println!("  pod not registered (netns cookie {cookie}): rules only"),
            }
            let c = status.counters;
            println!(
                "  node: {} pods registered; redirected {} msgs / {} bytes, passed {} msgs / {} bytes, \
                 paired {} app + {} sidecar sockets, proxy connections skipped {}, map update errors {}",
                status.registered_pods,
                c.redirected_msgs,
                c.redirected_bytes,
                c.passed_msgs,
                c.passed_bytes,
                c.app_sockets,
                c.sidecar_sockets,
                c.proxy_skipped,
                c.update_errors
            );
        }
    }
}

//! `meshcap agent`: the long-running node agent (one per node, e.g. a DaemonSet). It runs five
//! independent duties, so that one failing never stops the others:
//!
//! - **eBPF fast path**: loads, attaches and pins the programs and maps the CNI plugin
//!   registers pods in (`meshcap_fastpath::agent`). Optional: when it cannot be installed
//!   (kernel, cgroup layout, a build without the eBPF object) the agent logs why and runs the
//!   rest; `--no-fast-path` skips it. The data path stays pinned for the next agent unless
//!   `--detach-on-exit`; `--uninstall` takes it down and exits.
//! - **Repair** ([`repair`]): every `--repair-interval-ms` (default 5 s) it reads the
//!   plugin's attachment records, recomputes each pod's rules from the model inputs ADD stored
//!   in the record and re-applies them where they drifted (e.g. flushed), in place.
//! - **Adoption** ([`adopt`]): right before each repair scan, it finds pods whose sandbox was
//!   set up before meshcap was chained into their network (no record, so repair cannot see
//!   them) in the runtimes' libcni cache (`--cni-cache-dir`, default `/var/lib/cni`) and
//!   installs their capture in place by running the installed plugin's ADD as the runtime
//!   would have; `--no-adopt` turns it off.
//! - **Config watch** ([`watch`]): every `--watch-interval-ms` (default 1 s) it checks that
//!   meshcap's entry is still last in the node's primary CNI config and puts it back when
//!   another component rewrote the file.
//! - **Metrics and probes** ([`metrics`]): Prometheus text on `GET /metrics`, `GET /healthz`
//!   and `GET /readyz` (ready once meshcap-cni is installed and last in the chain) at
//!   `--metrics-addr` (default `127.0.0.1:15099`, node-local; bind a routable address to
//!   scrape it from outside).
//!
//! SIGTERM and SIGINT stop the agent cleanly: they are blocked in every thread and taken by
//! the main thread with `sigwait`, which then stops and joins the workers.

mod adopt;
mod metrics;
mod repair;
mod watch;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshcap_fastpath::{agent, AgentOptions};
use nix::sys::signal::{SigSet, Signal};

use metrics::Metrics;

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
    /// Do not install the eBPF fast path (repair, config watch and metrics still run).
    #[arg(long)]
    no_fast_path: bool,
    /// The plugin's attachment records (the plugin's MESHCAP_STATE_DIR).
    #[arg(long, env = "MESHCAP_STATE_DIR", default_value = meshcap_records::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// How often to check every recorded pod's rules and repair drift, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(50..))]
    repair_interval_ms: u64,
    /// Directory of the node's CNI network configs, watched for rewrites; adoption reads the
    /// networks' current meshcap entries from it.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Directory of the node's CNI plugin binaries: without meshcap-cni there (`meshcap
    /// uninstall` removed it) the agent never puts the entry back. Adoption runs the
    /// meshcap-cni found here.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// libcni's cache dir of the node's container runtime (containerd, CRI-O and podman use
    /// the default): its `results/` tell which pods were set up before meshcap was chained.
    #[arg(long, env = "CNI_CACHE_DIR", default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// Do not adopt pods that were set up before meshcap was installed.
    #[arg(long)]
    no_adopt: bool,
    /// How often to check the CNI config, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    watch_interval_ms: u64,
    /// Do not watch the CNI config.
    #[arg(long)]
    no_config_watch: bool,
    /// Address of the Prometheus endpoint (GET /metrics) and the probes (/healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:15099")]
    metrics_addr: SocketAddr,
    /// Log lines as `text` or `json` (one object a line, for log collectors).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// The socket the plugin sends its log lines to ([`meshcap_records::agent_log_socket`]).
fn bind_cni_log(state_dir: &std::path::Path) -> anyhow::Result<UnixDatagram> {
    let path = meshcap_records::agent_log_socket(state_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A previous agent's socket file; nobody else binds this path.
    let _ = std::fs::remove_file(&path);
    let socket =
        UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    tracing::info!(socket = %path.display(), "relaying meshcap-cni's log lines");
    Ok(socket)
}

/// Logs every line the plugin sends, so the agent's log (`kubectl logs` of the DaemonSet)
/// shows pod ADDs and DELs; removes the socket when stopped.
fn relay_cni_log(socket: &UnixDatagram, stop: &Stop) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.is_set() {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                tracing::info!(source = "meshcap-cni", "{}", line.trim_end());
            }
            // A signal (a plugin run by adoption exiting) interrupts the wait: read again at
            // once rather than warn and pause while the plugin's lines queue up.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the plugin's log socket failed");
                stop.sleep(Duration::from_millis(500));
            }
        }
    }
    if let Ok(addr) = socket.local_addr() {
        if let Some(path) = addr.as_pathname() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A stop flag the workers sleep on, so a signal ends their sleeps at once.
#[derive(Default)]
pub(crate) struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    pub(crate) fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` or until stopped; returns whether stopped.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A log reader that went away (`meshcap agent 2>&1 | head`, a closed container log)
        // drops lines; reporting the failed write would go to stderr again and panic there.
        .log_internal_errors(false)
        .with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

pub fn run(args: &AgentArgs) -> anyhow::Result<()> {
    run_with(args, || Ok(()))
}

/// [`run`], calling `also` once the stop signals are blocked, to start more threads that must
/// not receive them (`meshcap node agent`'s refresher).
pub fn run_with(args: &AgentArgs, also: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let opts = AgentOptions {
        pin_dir: args.pin_dir.clone(),
        cgroup: args.cgroup.clone(),
        uninstall: args.uninstall,
        detach_on_exit: args.detach_on_exit,
    };
    if args.uninstall {
        return agent::run(&opts).context("uninstalling the eBPF fast path");
    }

    // Block the stop signals before any thread exists: threads inherit the mask, so the
    // signals stay pending for the main thread's sigwait instead of killing the process.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    also()?;

    let fast_path = if args.no_fast_path {
        tracing::info!("eBPF fast path disabled (--no-fast-path)");
        None
    } else {
        match agent::install(&opts) {
            Ok(installed) => {
                tracing::info!(
                    pin_dir = %installed.pin_dir().display(),
                    cgroup = %installed.cgroup().display(),
                    "eBPF fast path installed"
                );
                Some(installed)
            }
            // docs/DESIGN.md: the fast path is optional; the rules alone capture traffic.
            Err(e) => {
                tracing::warn!(error = %e, "eBPF fast path not installed; running repair, config watch and metrics without it");
                None
            }
        }
    };

    let metrics = Arc::new(Metrics::new(&args.state_dir, &args.pin_dir));
    let listener = TcpListener::bind(args.metrics_addr)
        .with_context(|| format!("binding the metrics endpoint {}", args.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    tracing::info!(addr = %metrics_addr, "serving Prometheus metrics on /metrics");

    let stop = Arc::new(Stop::default());
    let mut workers = Vec::new();
    {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        let (conf_dir, bin_dir) = (args.cni_conf_dir.clone(), args.cni_bin_dir.clone());
        let ready: Arc<metrics::Readiness> =
            Arc::new(move || watch::readiness(&conf_dir, &bin_dir));
        workers.push(
            thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    if let Err(e) = metrics::serve(listener, metrics, ready, &stop) {
                        tracing::error!(error = %e, "the metrics endpoint stopped");
                    }
                })?,
        );
    }
    {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        let mut repairer = repair::Repairer::new(&args.state_dir, &args.pin_dir);
        let interval = Duration::from_millis(args.repair_interval_ms);
        tracing::info!(state_dir = %args.state_dir.display(), interval_ms = args.repair_interval_ms, "repairing drifted pod rules");
        let mut adopter = if args.no_adopt {
            tracing::info!(
                "adoption of pods set up before meshcap was installed disabled (--no-adopt)"
            );
            None
        } else {
            tracing::info!(cni_cache_dir = %args.cni_cache_dir.display(), "adopting pods set up before meshcap was installed");
            Some(adopt::Adopter::new(
                &args.cni_cache_dir,
                &args.cni_conf_dir,
                &args.cni_bin_dir,
                &args.state_dir,
            ))
        };
        workers.push(
            thread::Builder::new()
                .name("repair".into())
                .spawn(move || loop {
                    // Adoption first: what it adopts has a record this very repair scan counts.
                    if let Some(adopter) = adopter.as_mut() {
                        adopter.scan(&metrics);
                    }
                    repairer.scan(&metrics);
                    if stop.sleep(interval) {
                        break;
                    }
                })?,
        );
    }
    match bind_cni_log(&args.state_dir) {
        Ok(socket) => {
            let stop = stop.clone();
            workers.push(
                thread::Builder::new()
                    .name("cni-log".into())
                    .spawn(move || relay_cni_log(&socket, &stop))?,
            );
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the plugin's log lines will only be in its log file"
            )
        }
    }
    if args.no_config_watch {
        tracing::info!("CNI config watch disabled (--no-config-watch)");
    } else {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        let mut watcher = watch::Watcher::new(&args.cni_conf_dir, &args.cni_bin_dir);
        let interval = Duration::from_millis(args.watch_interval_ms);
        tracing::info!(cni_conf_dir = %args.cni_conf_dir.display(), interval_ms = args.watch_interval_ms, "watching the CNI config");
        workers.push(
            thread::Builder::new()
                .name("watch".into())
                .spawn(move || loop {
                    watcher.tick(&metrics);
                    if stop.sleep(interval) {
                        break;
                    }
                })?,
        );
    }

    let signal = signals.wait().context("waiting for SIGTERM or SIGINT")?;
    tracing::info!(?signal, "agent stopping");
    stop.set();
    // Wake the metrics thread out of accept(); it sees the stop flag and returns.
    let _ = TcpStream::connect_timeout(&metrics_addr, Duration::from_secs(1));
    for worker in workers {
        let _ = worker.join();
    }
    if let Some(installed) = fast_path {
        if args.detach_on_exit {
            installed
                .uninstall()
                .context("detaching the eBPF fast path")?;
            tracing::info!("eBPF fast path detached and unpinned");
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

//! `meshcap node install|agent|kubeconfig`: what the DaemonSet's containers run
//! (deploy/daemonset.yaml). The image has no shell, so the node's setup is this subcommand:
//!
//! - `install` (init container): writes the plugin's kubeconfig, then `meshcap install` into
//!   the host's CNI directories (mounted under `--host-root`);
//! - `agent`: `meshcap agent` over the host's directories, plus a thread that rewrites the
//!   kubeconfig when the kubelet rotates the service-account token and re-runs the idempotent
//!   install (the primary CNI may have rewritten its config, or a node upgrade removed the
//!   binary);
//! - `kubeconfig`: only the kubeconfig.
//!
//! Every setting is an environment variable as well as a flag, so the DaemonSet sets them
//! once for both containers. Paths named `CNI_*` are as the node sees them; the container
//! reaches them under `--host-root`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::install::{self, InstallArgs, KUBECONFIG_NAME};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Write the kubeconfig, then chain meshcap-cni into the host's CNI config.
    Install,
    /// Run the node agent, refreshing the kubeconfig and the install.
    Agent,
    /// Only write the kubeconfig.
    Kubeconfig,
}

#[derive(Args, Clone)]
pub struct NodeArgs {
    pub step: Step,
    /// Where the node's filesystem is mounted in this container.
    #[arg(long, env = "HOST_ROOT", default_value = "/host")]
    pub host_root: PathBuf,
    /// The pod's service-account mount (token, ca.crt).
    #[arg(
        long,
        env = "SA_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub sa_dir: PathBuf,
    /// The node's CNI config dir, as the node sees it.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The node's CNI binary dir, as the node sees it.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The runtime's libcni cache dir, as the node sees it.
    #[arg(long, env = "CNI_CACHE_DIR", default_value = "/var/lib/cni")]
    pub cni_cache_dir: PathBuf,
    #[arg(long, env = "MESHCAP_MODE", default_value = "iptables", value_parser = ["iptables", "nftables"])]
    pub mode: String,
    #[arg(long, env = "MESHCAP_SELECTION", default_value = "injected", value_parser = ["injected", "all"])]
    pub selection: String,
    /// Space-separated; meshcap's own namespace must stay in it.
    #[arg(
        long,
        env = "MESHCAP_EXCLUDE_NAMESPACES",
        default_value = "kube-system meshcap-system"
    )]
    pub exclude_namespaces: String,
    /// `kubernetes.read_pod` (`meshed` or `when-needed`); unset leaves the plugin's default.
    #[arg(long, env = "MESHCAP_READ_POD", value_parser = ["meshed", "when-needed"])]
    pub read_pod: Option<String>,
    /// Space-separated `KEY=VALUE` node defaults of Istio's pod-spec settings (`meshcap install
    /// --istio-default`; keys in docs/CONFIGURATION.md).
    #[arg(long, env = "MESHCAP_ISTIO_DEFAULTS", default_value = "")]
    pub istio_defaults: String,
    /// Space-separated meshes this node captures (`meshcap install --mesh`); empty: every
    /// mesh (the plugin's default).
    #[arg(long, env = "MESHCAP_MESHES", default_value = "")]
    pub meshes: String,
    /// Space-separated `KEY=VALUE` linkerd-cni node settings (`meshcap install --linkerd`).
    #[arg(long = "linkerd", env = "MESHCAP_LINKERD", default_value = "")]
    pub linkerd: String,
    /// Space-separated `KEY=VALUE` kuma-cni node settings (`meshcap install --kuma`).
    #[arg(long = "kuma", env = "MESHCAP_KUMA", default_value = "")]
    pub kuma: String,
    #[arg(long, env = "MESHCAP_EBPF", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub ebpf: bool,
    #[arg(long, env = "MESHCAP_METRICS_ADDR", default_value = "0.0.0.0:15099")]
    pub metrics_addr: String,
    /// The plugin's `log_file`, as the node sees it (`meshcap install --log-file`).
    #[arg(
        long,
        env = "MESHCAP_LOG_FILE",
        default_value = "/var/log/meshcap-cni.log"
    )]
    pub log_file: PathBuf,
    /// The plugin's `log_file_max_bytes` (`meshcap install --log-file-max-bytes`); unset
    /// leaves the plugin's default.
    #[arg(long, env = "MESHCAP_LOG_FILE_MAX_BYTES")]
    pub log_file_max_bytes: Option<u64>,
    /// `text` or `json` (the agent's log).
    #[arg(long, env = "MESHCAP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Seconds between kubeconfig refresh and re-install in `agent`.
    #[arg(long, env = "REFRESH_INTERVAL", default_value_t = 30)]
    pub refresh_interval: u64,
    /// The meshcap-cni binary to install (default: next to this meshcap binary).
    #[arg(long)]
    pub plugin_binary: Option<PathBuf>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

impl NodeArgs {
    fn on_host(&self, node_path: &Path) -> PathBuf {
        self.host_root
            .join(node_path.strip_prefix("/").unwrap_or(node_path))
    }

    /// The kubeconfig as the node (and so the plugin) sees it.
    fn kubeconfig_on_node(&self) -> PathBuf {
        self.cni_conf_dir.join(KUBECONFIG_NAME)
    }

    fn install_args(&self) -> InstallArgs {
        InstallArgs {
            cni_conf_dir: self.on_host(&self.cni_conf_dir),
            cni_bin_dir: self.on_host(&self.cni_bin_dir),
            plugin_binary: self.plugin_binary.clone(),
            mode: self.mode.clone(),
            selection: self.selection.clone(),
            exclude_namespaces: self
                .exclude_namespaces
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            kubeconfig: Some(self.kubeconfig_on_node()),
            read_pod: self.read_pod.clone(),
            istio_defaults: self
                .istio_defaults
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            meshes: words(&self.meshes),
            linkerd: words(&self.linkerd),
            kuma: words(&self.kuma),
            ebpf: self.ebpf,
            ebpf_pin_dir: None,
            log_file: self.log_file.clone(),
            log_file_max_bytes: self.log_file_max_bytes,
        }
    }

    /// The argv of the `meshcap agent` this node runs.
    pub fn agent_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["meshcap".into(), "agent".into()];
        for (flag, value) in [
            ("--cni-conf-dir", self.on_host(&self.cni_conf_dir)),
            ("--cni-bin-dir", self.on_host(&self.cni_bin_dir)),
            ("--cni-cache-dir", self.on_host(&self.cni_cache_dir)),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        argv.extend(
            [
                "--metrics-addr",
                &self.metrics_addr,
                "--log-format",
                &self.log_format,
            ]
            .map(OsString::from),
        );
        if !self.ebpf {
            argv.push("--no-fast-path".into());
        }
        argv
    }
}

/// `install` and `kubeconfig`; `agent` only writes and installs once here, the caller then
/// runs the agent with [`NodeArgs::agent_argv`] and [`spawn_refresher`].
pub fn prepare(args: &NodeArgs) -> anyhow::Result<()> {
    write_kubeconfig_if_in_cluster(args)?;
    if args.step != Step::Kubeconfig {
        let file = install::install(&args.install_args())?;
        tracing_free_log(&format!(
            "meshcap-cni installed in {} and chained in {}",
            args.cni_bin_dir.display(),
            file.display()
        ));
    }
    Ok(())
}

/// Logs go to stderr (the container's log) before the agent's subscriber exists.
fn tracing_free_log(line: &str) {
    use std::io::Write as _;
    // Not eprintln!: `node agent` keeps running when its log reader is gone.
    let _ = writeln!(std::io::stderr(), "meshcap node: {line}");
}

/// Keeps the kubeconfig fresh across token rotation and the install in place, every
/// `refresh_interval` seconds, for the life of the process.
pub fn spawn_refresher(args: &NodeArgs) -> anyhow::Result<()> {
    let args = args.clone();
    std::thread::Builder::new()
        .name("node-refresh".into())
        .spawn(move || {
            let mut last_token = fs::read(args.sa_dir.join("token")).ok();
            let conf_dir = args.on_host(&args.cni_conf_dir);
            let mut said_uninstalled = false;
            loop {
                std::thread::sleep(Duration::from_secs(args.refresh_interval.max(1)));
                // `meshcap uninstall` ran on this node (or is running): put nothing back. The
                // next `node install` (a new pod of the DaemonSet) installs again.
                let _locked = match install::lock_if_installed(&conf_dir) {
                    Ok(Some(locked)) => locked,
                    Ok(None) => {
                        if !said_uninstalled {
                            tracing::info!(
                                conf_dir = %conf_dir.display(),
                                "meshcap is not installed here (uninstalled): not re-installing"
                            );
                            said_uninstalled = true;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "re-install skipped; retrying");
                        continue;
                    }
                };
                said_uninstalled = false;
                let token = fs::read(args.sa_dir.join("token")).ok();
                if token.is_some() && token != last_token {
                    match write_kubeconfig_if_in_cluster(&args) {
                        Ok(()) => {
                            tracing::info!("kubeconfig refreshed after token rotation");
                            last_token = token;
                        }
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "kubeconfig refresh failed; retrying"
                        ),
                    }
                }
                if let Err(e) = install::install(&args.install_args()) {
                    tracing::warn!(error = format!("{e:#}"), "re-install failed; retrying");
                }
            }
        })?;
    Ok(())
}

/// Outside a cluster (no service-account token and no API server in the environment) there
/// is no kubeconfig to write: the plugin then relies on the runtime's annotations.
fn write_kubeconfig_if_in_cluster(args: &NodeArgs) -> anyhow::Result<()> {
    let token_file = args.sa_dir.join("token");
    if !token_file.exists() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        tracing_free_log(&format!(
            "no service-account token at {} and no KUBERNETES_SERVICE_HOST: not writing a kubeconfig",
            token_file.display()
        ));
        return Ok(());
    }
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .context("KUBERNETES_SERVICE_HOST must be set (the kubelet sets it in every pod)")?;
    let port =
        std::env::var("KUBERNETES_SERVICE_PORT").context("KUBERNETES_SERVICE_PORT must be set")?;
    let token = fs::read_to_string(&token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let ca_file = args.sa_dir.join("ca.crt");
    let ca = fs::read(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let dir = args.on_host(&args.cni_conf_dir);
    let path = dir.join(KUBECONFIG_NAME);
    meshcap_records::node_kubeconfig::write(&path, &host, &port, token.trim(), &ca)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn mesh_settings_reach_the_install() {
        let cli = Cli::try_parse_from([
            "meshcap",
            "install",
            "--meshes",
            "linkerd kuma",
            "--linkerd",
            "proxy_uid=3000 ipv6=true",
            "--kuma",
            r#"exclude_namespaces=["kube-system"]"#,
        ])
        .unwrap();
        let args = cli.node.install_args();
        assert_eq!(args.meshes, ["linkerd", "kuma"]);
        assert_eq!(args.linkerd, ["proxy_uid=3000", "ipv6=true"]);
        assert_eq!(args.kuma, [r#"exclude_namespaces=["kube-system"]"#]);
        let entry = install::plugin_entry(&args).unwrap();
        assert_eq!(entry["meshes"], serde_json::json!(["linkerd", "kuma"]));
        assert_eq!(entry["linkerd"]["proxy_uid"], 3000);
        // Unset: the plugin's defaults, no keys written.
        let cli = Cli::try_parse_from(["meshcap", "install"]).unwrap();
        let entry = install::plugin_entry(&cli.node.install_args()).unwrap();
        assert!(entry.get("meshes").is_none() && entry.get("linkerd").is_none());
    }
}

//! Driving the plugin exactly as a container runtime does (libcni's exec invoker): spawn the
//! binary with the `CNI_*` environment, stream the network configuration on stdin, read the
//! result from stdout. And the exec-based baseline istio-init/istio-cni and linkerd's
//! proxy-init stand for: `nsenter --net=NETNS iptables-restore --noflush` and the same with
//! `ip6tables-restore`, of the same pod's rules as meshcap's model renders them.
//!
//! Only the work the runtime would wait for is timed: from spawn to exit. Building the
//! configuration, checking the result and verifying the rules happen outside the clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshcap_cni_runtime::invoke::{self, Invocation};

use anyhow::{bail, Context, Result};
use meshcap_model::render::iptables;
use meshcap_model::{Family, RedirectModel};
use serde_json::{json, Value};

use crate::netns::{PodNetns, GATEWAY, GATEWAY6, PREFIX_LEN, PREFIX_LEN6};

/// Network name in the configuration (and in the plugin's attachment records).
pub const NETWORK_NAME: &str = "meshcap-bench";

/// What installs the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// `nsenter … iptables-restore --noflush`, and for a dual-stack pod
    /// `nsenter … ip6tables-restore --noflush` too.
    Baseline,
    /// `meshcap-cni` with `"mode": "iptables"`.
    Iptables,
    /// `meshcap-cni` with `"mode": "nftables"`.
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Baseline, Mode::Iptables, Mode::Nftables];
    pub const PLUGIN: [Mode; 2] = [Mode::Iptables, Mode::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }

    /// A short description for the tables.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Baseline => "nsenter + ip(6)tables-restore",
            Mode::Iptables => "meshcap-cni mode=iptables",
            Mode::Nftables => "meshcap-cni mode=nftables",
        }
    }
}

/// Runs ADD/DEL for every mode.
#[derive(Debug)]
pub struct Driver {
    plugin: PathBuf,
    state_dir: PathBuf,
    cni_path: String,
    rules_v4: String,
    rules_v6: String,
}

impl Driver {
    /// `plugin` is the `meshcap-cni` binary; `state_dir` becomes `MESHCAP_STATE_DIR`.
    pub fn new(plugin: &Path, state_dir: &Path) -> Driver {
        let model = RedirectModel::default();
        let cni_path = match plugin.parent() {
            Some(dir) => format!("{}:/usr/lib/cni:/opt/cni/bin", dir.display()),
            None => "/usr/lib/cni:/opt/cni/bin".to_owned(),
        };
        Driver {
            plugin: plugin.to_owned(),
            state_dir: state_dir.to_owned(),
            cni_path,
            rules_v4: iptables::render(&model.ruleset(Family::V4)),
            rules_v6: iptables::render(&model.ruleset(Family::V6)),
        }
    }

    /// One ADD; returns the wall time the runtime would wait. The baseline restores the
    /// rules of each family the pod has, as istio-cni does (IPv6 only for a dual-stack pod).
    pub fn add(&self, mode: Mode, ns: &PodNetns) -> Result<Duration> {
        match mode {
            Mode::Baseline => {
                let start = Instant::now();
                let v4 = restore("iptables-restore", ns, &self.rules_v4);
                let v6 = ns
                    .shape()
                    .dual_stack()
                    .then(|| restore("ip6tables-restore", ns, &self.rules_v6));
                let elapsed = start.elapsed();
                check_exit(v4?)?;
                if let Some(v6) = v6 {
                    check_exit(v6?)?;
                }
                Ok(elapsed)
            }
            Mode::Iptables | Mode::Nftables => {
                let (elapsed, out) = self.invoke(&self.plugin, &[], "ADD", mode, ns)?;
                check_result(&out)?;
                Ok(elapsed)
            }
        }
    }

    /// The burst control (`meshcap-bench-control`) in place of an nftables ADD on `ns`:
    /// started, fed and checked exactly as that ADD is, burning `cpu` and nothing else.
    pub fn control(&self, exe: &Path, cpu: Duration, ns: &PodNetns) -> Result<Duration> {
        let cpu_us = cpu.as_micros().to_string();
        let (elapsed, out) = self.invoke(exe, &["--cpu-us", &cpu_us], "ADD", Mode::Nftables, ns)?;
        check_result(&out)?;
        Ok(elapsed)
    }

    /// One DEL of an attachment that had an ADD. The baseline has none: istio-cni's and
    /// linkerd-cni's DEL leave the rules to die with the namespace.
    pub fn del(&self, mode: Mode, ns: &PodNetns) -> Result<Duration> {
        match mode {
            Mode::Baseline => bail!("the exec baseline has no DEL"),
            Mode::Iptables | Mode::Nftables => {
                let (elapsed, out) = self.invoke(&self.plugin, &[], "DEL", mode, ns)?;
                if !out.stdout.is_empty() {
                    bail!(
                        "DEL printed {:?} (a successful DEL prints nothing)",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
                Ok(elapsed)
            }
        }
    }

    /// `CNI_COMMAND=VERSION`: process start, config parse and exit, nothing else. The floor
    /// under every plugin ADD.
    pub fn version(&self) -> Result<Duration> {
        let conf = json!({"cniVersion": "1.0.0"}).to_string();
        let mut cmd = Command::new(&self.plugin);
        cmd.env("CNI_COMMAND", "VERSION");
        let (elapsed, out) = timed(cmd, &conf)?;
        check_exit(out)?;
        Ok(elapsed)
    }

    /// Spawn `program` (the plugin) for `command` on `ns` and wait for it; fails unless it
    /// exits 0.
    fn invoke(
        &self,
        program: &Path,
        args: &[&str],
        command: &str,
        mode: Mode,
        ns: &PodNetns,
    ) -> Result<(Duration, Output)> {
        let conf = self.config(mode, ns).to_string();
        let container_id = format!("{}-{}", NETWORK_NAME, ns.name());
        // What containerd puts into CNI_ARGS for a pod sandbox.
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={};\
             K8S_POD_INFRA_CONTAINER_ID={container_id}",
            ns.name()
        );
        let mut cmd = Command::new(program);
        cmd.args(args);
        Invocation {
            command,
            container_id: &container_id,
            netns: Some(ns.path()),
            ifname: "eth0",
            args: &cni_args,
            path: Path::new(&self.cni_path),
        }
        .apply(&mut cmd);
        cmd.env("MESHCAP_STATE_DIR", &self.state_dir);
        let (elapsed, out) = timed(cmd, &conf)?;
        let out = check_exit(out).with_context(|| format!("{command} in {} mode", mode.name()))?;
        Ok((elapsed, out))
    }

    /// The configuration a runtime streams for a default sidecar pod chained after `bridge`;
    /// the prevResult carries the pod's addresses (one per family it has).
    pub fn config(&self, mode: Mode, ns: &PodNetns) -> Value {
        let mut ips = vec![json!({
            "address": format!("{}/{PREFIX_LEN}", ns.ip()),
            "gateway": GATEWAY.to_string(),
            "interface": 2
        })];
        let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
        if let Some(ip6) = ns.ip6() {
            ips.push(json!({
                "address": format!("{ip6}/{PREFIX_LEN6}"),
                "gateway": GATEWAY6.to_string(),
                "interface": 2
            }));
            routes.push(json!({"dst": "::/0"}));
        }
        let plugin_mode = match mode {
            Mode::Nftables => "nftables",
            Mode::Iptables | Mode::Baseline => "iptables",
        };
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "type": "meshcap-cni",
            "mode": plugin_mode,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "runtimeConfig": {
                "io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}
            },
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
                    {"name": "veth0bench", "mac": "5e:2b:6c:11:22:33"},
                    {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": ns.path()}
                ],
                "ips": ips,
                "routes": routes,
                "dns": {}
            }
        })
    }
}

/// `nsenter --net=NETNS <program> --noflush` with `rules` on stdin.
fn restore(program: &str, ns: &PodNetns, rules: &str) -> Result<Output> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg(program)
        .arg("--noflush");
    Ok(timed(cmd, rules)?.1)
}

/// Spawn, write `stdin`, wait; the duration covers all three.
fn timed(cmd: Command, stdin: &str) -> Result<(Duration, Output)> {
    let out = invoke::run(cmd, stdin.as_bytes(), None)?;
    Ok((
        out.elapsed,
        Output {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        },
    ))
}

/// A successful ADD's stdout: a CNI result, not an error.
fn check_result(out: &Output) -> Result<()> {
    let result: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "ADD printed no JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if result.get("cniVersion").is_none() || result.get("code").is_some() {
        bail!("ADD printed no CNI result: {result}");
    }
    Ok(())
}

fn check_exit(out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "exit {}: stdout {:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Untimed: prove the capture is really installed in `ns` (the redirect to 15001 is in the
/// namespace's netfilter state, seen through `iptables-save` or `nft list ruleset`).
pub fn verify_installed(ns: &PodNetns) -> Result<()> {
    let net = format!("--net={}", ns.path().display());
    let mut seen = String::new();
    for program in [&["iptables-save"][..], &["nft", "list", "ruleset"][..]] {
        if let Ok(out) = Command::new("nsenter").arg(&net).args(program).output() {
            seen.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    if !seen.contains("15001") {
        bail!(
            "no redirect to 15001 in {} after ADD:\n{seen}",
            ns.path().display()
        );
    }
    Ok(())
}

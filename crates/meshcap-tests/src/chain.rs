//! A CNI runtime driver: runs a conflist the way containerd and CRI-O do.
//!
//! - ADD runs the plugins first to last, each getting the previous plugin's result as
//!   `prevResult`; the last result is cached per attachment (CNI spec, "Section 4: Plugin
//!   Delegation" and libcni's result cache).
//! - DEL runs them last to first with the cached result as `prevResult`; CHECK first to last
//!   with it.
//! - `runtimeConfig` carries a capability argument (`io.kubernetes.cri.pod-annotations`) only
//!   to plugins that declare it in `capabilities`, as libcni does.
//! - `CNI_ARGS` carries `K8S_POD_NAMESPACE`/`K8S_POD_NAME` (with `IgnoreUnknown=1`, which the
//!   reference plugins need to accept them).
//! - Plugins run with the "node" namespace as their own, the way a runtime on the host runs
//!   them, with `CNI_PATH` at a scratch dir of symlinks to the reference plugins and the built
//!   `meshcap-cni`, and `MESHCAP_STATE_DIR` in scratch space.
//!
//! A plugin's failure comes back as [`PluginError::Cni`] with the parsed error JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use meshcap_cni_runtime::invoke::{self, Failure};

use crate::netns::Netns;

pub use meshcap_cni_runtime::invoke::{CniError, POD_ANNOTATIONS_CAP};
/// How long a single plugin invocation may take before the driver kills it.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// `/tmp/meshcap-e2e/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<Scratch> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from("/tmp/meshcap-e2e").join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        // The stand-in sidecar drops to uid 1337 and the records dir lives in here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        for p in path.ancestors().skip(1).take(1) {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1777));
        }
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("MESHCAP_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The runtime's environment shared by every chain of one node: the plugins' own namespace,
/// `CNI_PATH`, the IPAM data dir, meshcap's state dir and log file.
#[derive(Debug)]
pub struct RuntimeEnv {
    pub scratch: Scratch,
    pub exec_netns: Arc<Netns>,
    pub cni_path: PathBuf,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub log_file: PathBuf,
}

impl RuntimeEnv {
    /// A fresh environment whose plugins run inside `exec_netns`.
    pub fn new(prefix: &str, exec_netns: Arc<Netns>) -> Result<Arc<RuntimeEnv>> {
        let scratch = Scratch::new(prefix)?;
        let cni_path = scratch.path().join("cni-bin");
        let state_dir = scratch.path().join("meshcap-state");
        let ipam_dir = scratch.path().join("ipam");
        for d in [&cni_path, &state_dir, &ipam_dir] {
            std::fs::create_dir_all(d)?;
        }
        let refdir = crate::bins::reference_plugin_dir();
        for p in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(refdir.join(p), cni_path.join(p))?;
        }
        std::os::unix::fs::symlink(crate::bins::meshcap_cni()?, cni_path.join("meshcap-cni"))?;
        let log_file = scratch.path().join("meshcap-cni.log");
        Ok(Arc::new(RuntimeEnv {
            exec_netns,
            cni_path,
            state_dir,
            ipam_dir,
            log_file,
            scratch,
        }))
    }
}

/// One pod attachment as the runtime describes it to plugins.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`; empty means "sandbox already gone" (containerd does that on late DELs).
    pub netns: PathBuf,
    pub ifname: String,
    pub k8s_namespace: String,
    pub k8s_pod: String,
    /// Pod annotations, handed out through the `io.kubernetes.cri.pod-annotations` capability.
    pub annotations: BTreeMap<String, String>,
}

impl Attachment {
    pub fn new(container_id: &str, netns: &Path, annotations: BTreeMap<String, String>) -> Self {
        Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_owned(),
            ifname: "eth0".into(),
            k8s_namespace: "default".into(),
            k8s_pod: container_id.to_string(),
            annotations,
        }
    }
}

/// Why one plugin invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{plugin} {command}: CNI error {} ({}): {} [stderr: {stderr}]", .error.code, .error.msg, .error.details)]
    Cni {
        plugin: String,
        command: String,
        error: Box<CniError>,
        stderr: String,
    },
    #[error("{plugin} {command}: exit {} without CNI error JSON; stdout {:?} stderr {:?}", .output.status, .output.stdout, .output.stderr)]
    BadOutput {
        plugin: String,
        command: String,
        output: Box<RawOutput>,
    },
    #[error("{plugin} {command}: {message}")]
    Run {
        plugin: String,
        command: String,
        message: String,
    },
}

impl PluginError {
    /// The CNI error code, when the plugin reported one.
    pub fn code(&self) -> Option<u64> {
        match self {
            PluginError::Cni { error, .. } => Some(error.code),
            _ => None,
        }
    }
    pub fn cni(&self) -> Option<&CniError> {
        match self {
            PluginError::Cni { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What one plugin invocation returned.
#[derive(Debug, Clone)]
pub struct RawOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A conflist plus the runtime around it.
#[derive(Debug)]
pub struct Chain {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub env: Arc<RuntimeEnv>,
    cache: Mutex<HashMap<String, Value>>,
}

impl Chain {
    pub fn new(env: Arc<RuntimeEnv>, name: &str, cni_version: &str, plugins: Vec<Value>) -> Chain {
        Chain {
            name: name.into(),
            cni_version: cni_version.into(),
            plugins,
            env,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The `bridge` + `host-local` entry every chain starts with: bridge `mc0` in the node
    /// namespace as the pods' default gateway, one v4 and one v6 range.
    pub fn bridge_plugin(env: &RuntimeEnv) -> Value {
        json!({
            "type": "bridge",
            "bridge": "mc0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": crate::node::POD_SUBNET4}], [{"subnet": crate::node::POD_SUBNET6}]],
                "dataDir": env.ipam_dir,
            }
        })
    }

    /// A `meshcap-cni` entry with `mode` and extra keys merged in (`extra` is an object).
    pub fn meshcap_plugin(env: &RuntimeEnv, extra: &Value) -> Value {
        let mut conf = json!({
            "type": "meshcap-cni",
            "mode": "iptables",
            "selection": "injected",
            "capabilities": {POD_ANNOTATIONS_CAP: true},
            "log_file": env.log_file,
            "log_level": "debug",
        });
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// `bridge` -> `meshcap-cni` with `extra` merged into meshcap's entry.
    pub fn with_meshcap(env: Arc<RuntimeEnv>, extra: &Value) -> Chain {
        let plugins = vec![Self::bridge_plugin(&env), Self::meshcap_plugin(&env, extra)];
        Chain::new(env, crate::node::NETWORK_NAME, "1.0.0", plugins)
    }

    /// `bridge` alone (remote hosts, which must stay unmeshed).
    pub fn bridge_only(env: Arc<RuntimeEnv>) -> Chain {
        let plugins = vec![Self::bridge_plugin(&env)];
        Chain::new(env, crate::node::NETWORK_NAME, "1.0.0", plugins)
    }

    /// Index of the first plugin of type `ty`.
    pub fn index_of(&self, ty: &str) -> Option<usize> {
        self.plugins.iter().position(|p| p["type"] == ty)
    }

    /// The result ADD cached for this attachment.
    pub fn cached_result(&self, att: &Attachment) -> Option<Value> {
        self.cache.lock().unwrap().get(&att.container_id).cloned()
    }

    /// ADD through every plugin; caches and returns the final result.
    pub fn add(&self, att: &Attachment) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins.len() {
            let out = self.invoke(i, "ADD", att, prev.as_ref())?;
            prev = Some(out.unwrap_or_else(|| prev.clone().unwrap_or(Value::Null)));
        }
        let result = prev.unwrap_or(Value::Null);
        self.cache
            .lock()
            .unwrap()
            .insert(att.container_id.clone(), result.clone());
        Ok(result)
    }

    /// DEL through every plugin, last to first, stopping at the first error (libcni does).
    /// The cached result is dropped on success.
    pub fn del(&self, att: &Attachment) -> Result<(), PluginError> {
        let prev = self.cached_result(att);
        for i in (0..self.plugins.len()).rev() {
            self.invoke(i, "DEL", att, prev.as_ref())?;
        }
        self.cache.lock().unwrap().remove(&att.container_id);
        Ok(())
    }

    /// CHECK through every plugin with the cached result.
    pub fn check(&self, att: &Attachment) -> Result<(), PluginError> {
        let prev = self.cached_result(att);
        for i in 0..self.plugins.len() {
            self.invoke(i, "CHECK", att, prev.as_ref())?;
        }
        Ok(())
    }

    /// The network configuration one plugin receives on stdin.
    pub fn plugin_config(&self, index: usize, att: &Attachment, prev: Option<&Value>) -> Value {
        let entry = self.plugins[index]
            .as_object()
            .expect("plugin config is an object");
        let capability_args = json!({ POD_ANNOTATIONS_CAP: att.annotations });
        invoke::plugin_stdin(
            entry,
            &self.name,
            Some(&json!(self.cni_version)),
            capability_args.as_object().expect("an object"),
            prev,
        )
    }

    /// Run plugin `index` for `command`; `Ok(Some(result))` when it printed one.
    pub fn invoke(
        &self,
        index: usize,
        command: &str,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, PluginError> {
        let conf = self.plugin_config(index, att, prev);
        let ty = self.plugins[index]["type"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let env = self.attachment_env(command, att);
        let out = self.run_plugin(&ty, command, &env, conf.to_string().as_bytes())?;
        parse_output(&ty, command, out)
    }

    /// CNI_* variables for `command` on `att`.
    pub fn attachment_env(&self, command: &str, att: &Attachment) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), att.container_id.clone()),
            ("CNI_NETNS".into(), att.netns.to_string_lossy().into_owned()),
            ("CNI_IFNAME".into(), att.ifname.clone()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    att.k8s_namespace, att.k8s_pod, att.container_id
                ),
            ),
        ]
    }

    /// STATUS (CNI 1.1) on plugin `index`; the config carries cniVersion 1.1.0.
    pub fn status(&self, index: usize) -> Result<(), PluginError> {
        let mut conf = self.plugins[index].clone();
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = json!(self.name);
        let ty = conf["type"].as_str().unwrap_or("?").to_string();
        let out = self.run_plugin(
            &ty,
            "STATUS",
            &[("CNI_COMMAND".into(), "STATUS".into())],
            conf.to_string().as_bytes(),
        )?;
        parse_output(&ty, "STATUS", out).map(|_| ())
    }

    /// GC (CNI 1.1) on plugin `index` with these attachments still valid.
    pub fn gc(&self, index: usize, valid: &[Attachment]) -> Result<(), PluginError> {
        let mut conf = self.plugins[index].clone();
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = json!(self.name);
        conf["cni.dev/valid-attachments"] = json!(valid
            .iter()
            .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect::<Vec<_>>());
        let ty = conf["type"].as_str().unwrap_or("?").to_string();
        let out = self.run_plugin(
            &ty,
            "GC",
            &[("CNI_COMMAND".into(), "GC".into())],
            conf.to_string().as_bytes(),
        )?;
        parse_output(&ty, "GC", out).map(|_| ())
    }

    /// Run plugin binary `ty` with exactly `vars` (plus PATH, CNI_PATH, MESHCAP_STATE_DIR) and
    /// `stdin`, inside the runtime's namespace; killed after [`PLUGIN_TIMEOUT`].
    pub fn run_plugin(
        &self,
        ty: &str,
        command: &str,
        vars: &[(String, String)],
        stdin: &[u8],
    ) -> Result<RawOutput, PluginError> {
        let err = |message: String| PluginError::Run {
            plugin: ty.into(),
            command: command.into(),
            message,
        };
        let bin = self.env.cni_path.join(ty);
        let mut cmd: Command = self
            .env
            .exec_netns
            .command(&bin)
            .map_err(|e| err(format!("{e:#}")))?;
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_PATH", &self.env.cni_path)
            .env("MESHCAP_STATE_DIR", &self.env.state_dir)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_timeout(cmd, stdin, PLUGIN_TIMEOUT).map_err(|e| err(format!("{e:#}")))
    }
}

/// Spawn, feed stdin, collect output; kill the child after `timeout`.
pub fn run_with_timeout(cmd: Command, stdin: &[u8], timeout: Duration) -> Result<RawOutput> {
    let out = invoke::run(cmd, stdin, Some(timeout))?;
    Ok(RawOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Turn a plugin's output into its result (success) or its CNI error (failure). Anything but
/// JSON on stdout is a protocol violation.
pub fn parse_output(ty: &str, command: &str, out: RawOutput) -> Result<Option<Value>, PluginError> {
    match invoke::outcome(out.status.success(), out.stdout.as_bytes()) {
        Ok(result) => Ok(result),
        Err(Failure::Cni(error)) => Err(PluginError::Cni {
            plugin: ty.into(),
            command: command.into(),
            error: Box::new(error),
            stderr: out.stderr,
        }),
        Err(Failure::BadOutput) => Err(PluginError::BadOutput {
            plugin: ty.into(),
            command: command.into(),
            output: Box::new(out),
        }),
    }
}

/// The pod's addresses from a CNI result (`ips[].address`, CIDR form), v4 and v6.
pub fn result_ips(result: &Value) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in result["ips"].as_array().into_iter().flatten() {
        let Some(addr) = ip["address"].as_str() else {
            continue;
        };
        let host = addr.split('/').next().unwrap_or("");
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) if v4.is_none() => v4 = Some(a),
            Ok(std::net::IpAddr::V6(a)) if v6.is_none() => v6 = Some(a),
            _ => {}
        }
    }
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn out(code: i32, stdout: &str) -> RawOutput {
        RawOutput {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn cni_errors_are_parsed() {
        let e = parse_output(
            "meshcap-cni",
            "ADD",
            out(
                1,
                r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid annotation","details":"x"}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(7));
        assert_eq!(e.cni().unwrap().msg, "invalid annotation");
    }

    #[test]
    fn anything_but_json_on_stdout_is_a_violation() {
        assert!(matches!(
            parse_output("p", "ADD", out(0, "log line\n{}")),
            Err(PluginError::BadOutput { .. })
        ));
        assert!(matches!(
            parse_output("p", "ADD", out(1, "panic")),
            Err(PluginError::BadOutput { .. })
        ));
        assert_eq!(parse_output("p", "DEL", out(0, "")).unwrap(), None);
    }

    #[test]
    fn result_addresses_of_both_families() {
        let r = json!({"ips": [{"address": "10.248.0.5/24"}, {"address": "fd00:248::5/64"}]});
        let (v4, v6) = result_ips(&r);
        assert_eq!(v4.unwrap().to_string(), "10.248.0.5");
        assert_eq!(v6.unwrap().to_string(), "fd00:248::5");
    }
}

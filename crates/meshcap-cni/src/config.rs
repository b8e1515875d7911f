//! The plugin configuration the runtime streams on stdin (one entry of a conflist, with the
//! runtime's additions: `runtimeConfig`, `prevResult`, `cni.dev/valid-attachments`).
//!
//! Decoding is two-step on purpose: the bytes become a JSON object first (failure: code 6,
//! "failed to decode content"), then `cniVersion` is checked (code 1), then each known key is
//! deserialized on its own so an error names exactly the key that is wrong (code 7). Unknown
//! top-level keys are accepted: runtimes add their own (`args`, `dns`, ...). A JSON `null`
//! counts as absent, as it does for the Go structs of libcni.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use meshcap_model::mesh::istio::NodeDefaults;
use meshcap_model::mesh::kuma::KumaNode;
use meshcap_model::mesh::linkerd::LinkerdNode;
use meshcap_model::mesh::Mesh;
use meshcap_model::{Annotations, Selection};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::version::CniVersion;

/// Key of the pod-annotations capability in `runtimeConfig` (containerd, CRI-O).
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Key of the GC input (CNI 1.1 spec, GC).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// Why the configuration was refused. [`ConfigError::Decode`] is code 6,
/// [`ConfigError::MissingVersion`] and [`ConfigError::UnsupportedVersion`] code 1, the rest
/// code 7; every message names the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot decode the network configuration as a JSON object: {reason}")]
    Decode { reason: String },
    #[error("the network configuration has no cniVersion (CNI reads that as 0.1.0, which meshcap does not support; supported: {})", CniVersion::supported_strings().join(", "))]
    MissingVersion,
    #[error("cniVersion {version:?} is not supported (supported: {})", CniVersion::supported_strings().join(", "))]
    UnsupportedVersion { version: String },
    #[error("invalid configuration: {key} is required")]
    Missing { key: &'static str },
    #[error("invalid configuration: {key}: {reason}")]
    InvalidValue { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl ToString) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

pub use meshcap_records::Mode;

/// `kubernetes.read_pod`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPod {
    /// Only when the runtime passed no pod annotations.
    #[default]
    WhenNeeded,
    /// Also for every pod whose runtime annotations say it is meshed.
    Meshed,
}

/// `log_level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The decoded configuration. Defaults are docs/CONFIGURATION.md's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Network name; with the container id and interface it keys the attachment record.
    pub name: String,
    pub cni_version: CniVersion,
    pub plugin_type: Option<String>,
    pub mode: Mode,
    pub selection: Selection,
    pub capabilities: BTreeMap<String, bool>,
    pub exclude_namespaces: Vec<String>,
    /// `kubernetes.kubeconfig`: for the Kubernetes API path ([`crate::kube`]).
    pub kubeconfig: Option<PathBuf>,
    /// `kubernetes.skip_pods`: `NAMESPACE/NAME` or `NAMESPACE/PREFIX*` patterns of pods never
    /// captured, checked before any API call (meshcap's own pods; see deploy/README.md).
    pub skip_pods: Vec<String>,
    /// `kubernetes.timeout_ms`: the overall deadline for reading a pod from the API,
    /// retries included (default 5000, at most 60000).
    pub kube_timeout: Duration,
    /// `kubernetes.read_pod`: `meshed` reads the pod from the API even when the runtime passed
    /// its annotations, whenever those say the pod is meshed, so the settings Istio takes from
    /// the pod spec (proxy ids and env, init-container args) come from the pod rather than from
    /// the node defaults. Default `when-needed`: only without runtime annotations.
    pub read_pod: ReadPod,
    /// `istio`: node-wide values of the settings Istio takes from the pod spec or the mesh
    /// config (docs/CONFIGURATION.md), for pods whose spec meshcap does not see or that do not
    /// state them.
    pub istio_defaults: NodeDefaults,
    /// `ebpf.enabled`.
    pub ebpf_enabled: bool,
    /// `ebpf.pin_dir`: where the node agent pinned the fast path's maps (default
    /// `/sys/fs/bpf/meshcap`, the agent's default). Must match the agent's `--pin-dir`.
    pub ebpf_pin_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// `log_file_max_bytes`: once `log_file` holds this much, the next invocation moves it to
    /// `<log_file>.1` and starts a new one (0: never), so the log stays bounded over a node's
    /// life. Default [`DEFAULT_LOG_FILE_MAX_BYTES`].
    pub log_file_max_bytes: u64,
    pub log_level: LogLevel,
    /// `iptables_templates` (default on): iptables mode writes a fresh pod whose restore this
    /// node has run before from the verified template of that restore; off, it always runs
    /// `iptables-restore`.
    pub iptables_templates: bool,
    /// `runtimeConfig["io.kubernetes.cri.pod-annotations"]`; `None` when the runtime did not
    /// pass the capability (an empty map means "passed, and the pod has none").
    pub pod_annotations: Option<Annotations>,
    /// The previous plugin's result, kept as JSON so nothing a later spec adds is lost.
    pub prev_result: Option<Map<String, Value>>,
    /// `cni.dev/valid-attachments` (GC only); `None` when absent.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Keys this plugin does not know (`section.key` inside `kubernetes` and `ebpf`): logged
    /// as a warning, never an error, so a typo is visible without failing pod starts.
    pub unknown_keys: Vec<String>,
    /// The meshes whose pods this node captures (`meshes`, default all three); a pod of
    /// another mesh is left alone and logged.
    pub meshes: Vec<Mesh>,
    /// linkerd-cni's node-wide settings (`linkerd`), with its chart's defaults.
    pub linkerd: LinkerdNode,
    /// kuma-cni's node-wide settings (`kuma`), with its chart's defaults.
    pub kuma: KumaNode,
}

/// `log_file_max_bytes` when the config does not set it: 10 MiB, as the kubelet's container
/// logs (`containerLogMaxSize`).
pub const DEFAULT_LOG_FILE_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Top-level keys the plugin reads, plus those the CNI spec lets a runtime insert.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    VALID_ATTACHMENTS_KEY,
    "mode",
    "selection",
    "exclude_namespaces",
    "kubernetes",
    "ebpf",
    "istio",
    "log_file",
    "log_file_max_bytes",
    "log_level",
    "iptables_templates",
    "meshes",
    "linkerd",
    "kuma",
];
const KNOWN_KUBERNETES_KEYS: &[&str] = &[
    "kubeconfig",
    "skip_pods",
    "timeout_ms",
    "exclude_namespaces",
    "read_pod",
];
const KNOWN_EBPF_KEYS: &[&str] = &["enabled", "pin_dir"];

impl Config {
    /// Decodes stdin. See the module docs for the order of checks and the codes.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError::Decode {
            reason: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::Decode {
                reason: format!("expected a JSON object, found {}", json_kind(&value)),
            });
        };

        let cni_version = match obj.get("cniVersion") {
            None | Some(Value::Null) => return Err(ConfigError::MissingVersion),
            Some(Value::String(s)) if s.is_empty() => return Err(ConfigError::MissingVersion),
            Some(Value::String(s)) => CniVersion::parse(s)
                .ok_or_else(|| ConfigError::UnsupportedVersion { version: s.clone() })?,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "cniVersion",
                    format!("expected a string, found {}", json_kind(other)),
                ))
            }
        };

        let name: String = field(&obj, "name")?.ok_or(ConfigError::Missing { key: "name" })?;
        validate_network_name(&name)?;

        let ebpf: Option<Map<String, Value>> = field(&obj, "ebpf")?;
        let ebpf_enabled = match &ebpf {
            Some(e) => field(e, "enabled").map_err(|e| prefix("ebpf", e))?,
            None => None,
        }
        .unwrap_or(false);
        let ebpf_pin_dir: PathBuf = match &ebpf {
            Some(e) => field::<String>(e, "pin_dir").map_err(|e| prefix("ebpf", e))?,
            None => None,
        }
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(meshcap_fastpath::DEFAULT_PIN_DIR));

        let kubernetes: Option<Map<String, Value>> = field(&obj, "kubernetes")?;
        let kube_field = |key: &str| -> Result<Option<Value>, ConfigError> {
            match &kubernetes {
                Some(k) => field(k, key).map_err(|e| prefix("kubernetes", e)),
                None => Ok(None),
            }
        };
        let kubeconfig: Option<PathBuf> = match kube_field("kubeconfig")? {
            Some(v) => Some(
                PathBuf::deserialize(&v)
                    .map_err(|e| ConfigError::invalid("kubernetes.kubeconfig", e))?,
            ),
            None => None,
        };
        let skip_pods: Vec<String> = match kube_field("skip_pods")? {
            Some(v) => Vec::<String>::deserialize(&v)
                .map_err(|e| ConfigError::invalid("kubernetes.skip_pods", e))?,
            None => Vec::new(),
        };
        for pattern in &skip_pods {
            validate_skip_pattern(pattern)?;
        }
        let kube_timeout = match kube_field("timeout_ms")? {
            Some(v) => {
                let ms = u64::deserialize(&v)
                    .map_err(|e| ConfigError::invalid("kubernetes.timeout_ms", e))?;
                let d = Duration::from_millis(ms);
                if ms == 0 || d > crate::kube::MAX_TIMEOUT {
                    return Err(ConfigError::invalid(
                        "kubernetes.timeout_ms",
                        format!(
                            "{ms} is not between 1 and {}",
                            crate::kube::MAX_TIMEOUT.as_millis()
                        ),
                    ));
                }
                d
            }
            None => crate::kube::DEFAULT_TIMEOUT,
        };

        let read_pod: ReadPod = match kube_field("read_pod")? {
            Some(v) => ReadPod::deserialize(&v).map_err(|e| {
                ConfigError::invalid(
                    "kubernetes.read_pod",
                    format!("{e} (when-needed or meshed)"),
                )
            })?,
            None => ReadPod::default(),
        };
        if read_pod == ReadPod::Meshed && kubeconfig.is_none() {
            return Err(ConfigError::invalid(
                "kubernetes.read_pod",
                "\"meshed\" needs kubernetes.kubeconfig",
            ));
        }
        let istio_defaults = match field::<Map<String, Value>>(&obj, "istio")? {
            Some(m) => NodeDefaults::from_json(&m).map_err(|e| ConfigError::InvalidValue {
                key: e.origin.trim_start_matches("plugin config ").to_owned(),
                reason: format!("{:?}: {}", e.value, e.reason),
            })?,
            None => NodeDefaults::default(),
        };

        let runtime_config: Option<Map<String, Value>> = field(&obj, "runtimeConfig")?;
        let pod_annotations = match &runtime_config {
            // containerd passes a pod without annotations as `null` (Go's nil map): passed,
            // and the pod has none.
            Some(rc) if rc.get(POD_ANNOTATIONS_CAPABILITY) == Some(&Value::Null) => {
                Some(Annotations::default())
            }
            Some(rc) => {
                field(rc, POD_ANNOTATIONS_CAPABILITY).map_err(|e| prefix("runtimeConfig", e))?
            }
            None => None,
        };

        // Both spellings: meshcap's top-level key and `kubernetes.exclude_namespaces`, the key
        // istio-cni, linkerd-cni and kuma-cni use.
        let mut exclude_namespaces: Vec<String> =
            field(&obj, "exclude_namespaces")?.unwrap_or_default();
        if let Some(v) = kube_field("exclude_namespaces")? {
            let more = Vec::<String>::deserialize(&v)
                .map_err(|e| ConfigError::invalid("kubernetes.exclude_namespaces", e))?;
            for ns in more {
                if !exclude_namespaces.contains(&ns) {
                    exclude_namespaces.push(ns);
                }
            }
        }
        let mut unknown_keys: Vec<String> = obj
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for (section, map, known) in [
            ("kubernetes", &kubernetes, KNOWN_KUBERNETES_KEYS),
            ("ebpf", &ebpf, KNOWN_EBPF_KEYS),
        ] {
            if let Some(map) = map {
                unknown_keys.extend(
                    map.keys()
                        .filter(|k| !known.contains(&k.as_str()))
                        .map(|k| format!("{section}.{k}")),
                );
            }
        }

        Ok(Config {
            name,
            cni_version,
            plugin_type: field(&obj, "type")?,
            mode: field(&obj, "mode")?.unwrap_or_default(),
            selection: field(&obj, "selection")?.unwrap_or_default(),
            capabilities: field(&obj, "capabilities")?.unwrap_or_default(),
            exclude_namespaces,
            kubeconfig,
            skip_pods,
            kube_timeout,
            read_pod,
            istio_defaults,
            ebpf_enabled,
            ebpf_pin_dir,
            log_file: field::<String>(&obj, "log_file")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            log_file_max_bytes: field(&obj, "log_file_max_bytes")?
                .unwrap_or(DEFAULT_LOG_FILE_MAX_BYTES),
            log_level: field(&obj, "log_level")?.unwrap_or_default(),
            iptables_templates: field(&obj, "iptables_templates")?.unwrap_or(true),
            pod_annotations,
            prev_result: field(&obj, "prevResult")?,
            valid_attachments: field(&obj, VALID_ATTACHMENTS_KEY)?,
            unknown_keys,
            meshes: field(&obj, "meshes")?.unwrap_or_else(|| Mesh::ALL.to_vec()),
            linkerd: field(&obj, "linkerd")?.unwrap_or_default(),
            kuma: field(&obj, "kuma")?.unwrap_or_default(),
        })
    }

    /// Whether `namespace` is listed in `exclude_namespaces`.
    pub fn excludes_namespace(&self, namespace: &str) -> bool {
        self.exclude_namespaces.iter().any(|n| n == namespace)
    }

    /// The `kubernetes.skip_pods` pattern that matches pod `namespace`/`name`, if any.
    pub fn skip_pod_pattern(&self, namespace: &str, name: &str) -> Option<&str> {
        self.skip_pods
            .iter()
            .find(|p| {
                let Some((ns, pod)) = p.split_once('/') else {
                    return false;
                };
                ns == namespace
                    && match pod.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => pod == name,
                    }
            })
            .map(String::as_str)
    }
}

/// The `cniVersion` of a VERSION request or of an input whose decoding failed, for echoing
/// back: the input's when it is one meshcap supports, else [`CniVersion::LATEST`].
pub fn peek_version(bytes: &[u8]) -> CniVersion {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Peek>(bytes)
        .ok()
        .and_then(|p| p.cni_version)
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST)
}

/// `NAMESPACE/NAME` or `NAMESPACE/PREFIX*`: one `/`, a `*` only at the very end.
fn validate_skip_pattern(p: &str) -> Result<(), ConfigError> {
    let ok = match p.split_once('/') {
        Some((ns, pod)) => {
            !ns.is_empty()
                && !pod.is_empty()
                && !pod.contains('/')
                && !ns.contains('*')
                && !pod.trim_end_matches('*').contains('*')
                && pod.matches('*').count() <= 1
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "kubernetes.skip_pods",
            format!("{p:?} is not NAMESPACE/NAME or NAMESPACE/PREFIX*"),
        ))
    }
}

/// [`meshcap_records::names::is_valid_network_name`] as a config error naming `name`.
pub fn validate_network_name(name: &str) -> Result<(), ConfigError> {
    if meshcap_records::names::is_valid_network_name(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "name",
            format!("{name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
        ))
    }
}

/// Deserializes `obj[key]` on its own so the error names the key; `null` is absent.
fn field<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| ConfigError::invalid(key, e)),
    }
}

fn prefix(parent: &str, err: ConfigError) -> ConfigError {
    match err {
        ConfigError::InvalidValue { key, reason } => ConfigError::InvalidValue {
            key: format!("{parent}.{key}"),
            reason,
        },
        other => other,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "meshnet", "type": "meshcap-cni"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn invalid_key(err: ConfigError) -> String {
        match err {
            ConfigError::InvalidValue { key, .. } => key,
            other => panic!("expected InvalidValue, got {other:?}"),
        }
    }

    #[test]
    fn istio_node_defaults_and_read_pod() {
        let mut v = with(
            "istio",
            json!({"dns_capture": true, "proxy_uids": [1337, 1338]}),
        );
        v["kubernetes"] = json!({"kubeconfig": "/k", "read_pod": "meshed"});
        let c = parse(v).unwrap();
        assert_eq!(c.istio_defaults.dns_capture, Some(true));
        assert_eq!(c.istio_defaults.proxy_uids, Some(vec![1337, 1338]));
        assert_eq!(c.read_pod, ReadPod::Meshed);
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert_eq!(parse(base()).unwrap().read_pod, ReadPod::WhenNeeded);
        assert_eq!(
            invalid_key(parse(with("istio", json!({"invalid_drop": 1}))).unwrap_err()),
            "istio.invalid_drop"
        );
        assert_eq!(
            invalid_key(parse(with("istio", json!([]))).unwrap_err()),
            "istio"
        );
        let mut v = base();
        v["kubernetes"] = json!({"read_pod": "meshed"});
        assert_eq!(invalid_key(parse(v).unwrap_err()), "kubernetes.read_pod");
    }

    #[test]
    fn defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.name, "meshnet");
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.plugin_type.as_deref(), Some("meshcap-cni"));
        assert_eq!(c.mode, Mode::Iptables);
        assert_eq!(c.selection, Selection::Injected);
        assert!(!c.ebpf_enabled);
        assert!(c.iptables_templates);
        assert_eq!(
            c.ebpf_pin_dir,
            PathBuf::from(meshcap_fastpath::DEFAULT_PIN_DIR)
        );
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_file_max_bytes, DEFAULT_LOG_FILE_MAX_BYTES);
        assert_eq!(c.pod_annotations, None);
        assert_eq!(c.prev_result, None);
        assert_eq!(c.valid_attachments, None);
        assert!(c.exclude_namespaces.is_empty());
        assert!(c.skip_pods.is_empty());
        assert_eq!(c.kube_timeout, crate::kube::DEFAULT_TIMEOUT);
    }

    #[test]
    fn kubernetes_section() {
        let c = parse(with(
            "kubernetes",
            json!({"kubeconfig": "/k", "skip_pods": ["meshcap-system/meshcap-node-*", "infra/dns"], "timeout_ms": 1500}),
        ))
        .unwrap();
        assert_eq!(c.kube_timeout, Duration::from_millis(1500));
        assert_eq!(
            c.skip_pod_pattern("meshcap-system", "meshcap-node-x7k2p"),
            Some("meshcap-system/meshcap-node-*")
        );
        assert_eq!(c.skip_pod_pattern("infra", "dns"), Some("infra/dns"));
        assert_eq!(c.skip_pod_pattern("infra", "dns-1"), None);
        assert_eq!(c.skip_pod_pattern("default", "meshcap-node-x"), None);
        for (bad, key) in [
            (json!({"skip_pods": ["nslash"]}), "kubernetes.skip_pods"),
            (json!({"skip_pods": ["a/b/c"]}), "kubernetes.skip_pods"),
            (json!({"skip_pods": ["a/*b"]}), "kubernetes.skip_pods"),
            (json!({"skip_pods": "a/b"}), "kubernetes.skip_pods"),
            (json!({"timeout_ms": 0}), "kubernetes.timeout_ms"),
            (json!({"timeout_ms": 60001}), "kubernetes.timeout_ms"),
            (json!({"timeout_ms": "5s"}), "kubernetes.timeout_ms"),
            (
                json!({"exclude_namespaces": "kube-system"}),
                "kubernetes.exclude_namespaces",
            ),
        ] {
            assert_eq!(
                invalid_key(parse(with("kubernetes", bad.clone())).unwrap_err()),
                key,
                "{bad}"
            );
        }
    }

    #[test]
    fn null_pod_annotations_mean_passed_and_empty() {
        let c = parse(with(
            "runtimeConfig",
            json!({"io.kubernetes.cri.pod-annotations": null}),
        ))
        .unwrap();
        assert_eq!(c.pod_annotations, Some(Annotations::default()));
        let c = parse(with("runtimeConfig", json!({}))).unwrap();
        assert_eq!(c.pod_annotations, None);
    }

    #[test]
    fn exclude_namespaces_in_either_place_and_unknown_keys_are_listed() {
        let mut v = with(
            "kubernetes",
            json!({"exclude_namespaces": ["istio-system", "kube-system"], "kubeconfg": "/k"}),
        );
        v["exclude_namespaces"] = json!(["kube-system"]);
        v["selecton"] = json!("all");
        v["ebpf"] = json!({"enabled": false, "pin": "/x"});
        let c = parse(v).unwrap();
        assert_eq!(c.exclude_namespaces, ["kube-system", "istio-system"]);
        assert!(c.excludes_namespace("istio-system"));
        assert_eq!(
            c.unknown_keys,
            ["selecton", "kubernetes.kubeconfg", "ebpf.pin"]
        );
    }

    #[test]
    fn spec_example_and_runtime_additions() {
        let c = parse(json!({
            "cniVersion": "1.1.0",
            "name": "k8s-pod-network",
            "type": "meshcap-cni",
            "mode": "nftables",
            "selection": "all",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "exclude_namespaces": ["kube-system"],
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/meshcap-kubeconfig"},
            "ebpf": {"enabled": true},
            "log_file": "/var/log/meshcap-cni.log",
            "log_level": "debug",
            "runtimeConfig": {
                "io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"},
                "portMappings": []
            },
            "prevResult": {"cniVersion": "1.1.0", "ips": []},
            "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
            "args": {"cni": {}},
            "someRuntimeKey": 3
        }))
        .unwrap();
        assert_eq!(c.mode, Mode::Nftables);
        assert_eq!(c.mode.backend(), meshcap_dataplane::Backend::Nftables);
        assert_eq!(c.selection, Selection::All);
        assert_eq!(c.capabilities.get(POD_ANNOTATIONS_CAPABILITY), Some(&true));
        assert!(c.excludes_namespace("kube-system"));
        assert!(!c.excludes_namespace("default"));
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/cni/net.d/meshcap-kubeconfig"))
        );
        assert!(c.ebpf_enabled);
        assert_eq!(
            c.ebpf_pin_dir,
            PathBuf::from(meshcap_fastpath::DEFAULT_PIN_DIR)
        );
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.pod_annotations
                .unwrap()
                .get("sidecar.istio.io/status")
                .map(String::as_str),
            Some("{}")
        );
        assert!(c.prev_result.is_some());
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn undecodable_is_decode() {
        for bad in [&b"{"[..], b"", b"not json", b"[1,2]", b"\"x\"", b"null"] {
            assert!(
                matches!(Config::parse(bad), Err(ConfigError::Decode { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn version_errors() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(parse(v).unwrap_err(), ConfigError::MissingVersion);
        assert_eq!(
            parse(with("cniVersion", json!("0.2.0"))).unwrap_err(),
            ConfigError::UnsupportedVersion {
                version: "0.2.0".into()
            }
        );
        assert_eq!(
            parse(with("cniVersion", json!("2.0.0"))).unwrap_err(),
            ConfigError::UnsupportedVersion {
                version: "2.0.0".into()
            }
        );
        assert_eq!(
            invalid_key(parse(with("cniVersion", json!(1))).unwrap_err()),
            "cniVersion"
        );
        // The version is checked before other keys: a bad mode in an old config is code 1.
        let mut v = with("cniVersion", json!("0.1.0"));
        v["mode"] = json!("bogus");
        assert!(matches!(
            parse(v).unwrap_err(),
            ConfigError::UnsupportedVersion { .. }
        ));
        for ok in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            parse(with("cniVersion", json!(ok))).unwrap();
        }
    }

    #[test]
    fn iptables_templates_can_be_turned_off() {
        let mut v = base();
        v["iptables_templates"] = json!(false);
        assert!(!parse(v).unwrap().iptables_templates);
    }

    #[test]
    fn ebpf_pin_dir_names_the_agents_pin_directory() {
        let mut v = base();
        v["ebpf"] = json!({"enabled": true, "pin_dir": "/sys/fs/bpf/meshcap-test"});
        let c = parse(v).unwrap();
        assert!(c.ebpf_enabled);
        assert_eq!(c.ebpf_pin_dir, PathBuf::from("/sys/fs/bpf/meshcap-test"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("mode", json!("ebpf"), "mode"),
            ("mode", json!(1), "mode"),
            ("selection", json!("some"), "selection"),
            ("log_level", json!("verbose"), "log_level"),
            ("log_file", json!(false), "log_file"),
            ("log_file_max_bytes", json!(-1), "log_file_max_bytes"),
            ("log_file_max_bytes", json!("10M"), "log_file_max_bytes"),
            ("iptables_templates", json!("no"), "iptables_templates"),
            (
                "exclude_namespaces",
                json!("kube-system"),
                "exclude_namespaces",
            ),
            ("exclude_namespaces", json!([1]), "exclude_namespaces"),
            ("capabilities", json!({"x": "yes"}), "capabilities"),
            ("ebpf", json!(true), "ebpf"),
            ("ebpf", json!({"enabled": "yes"}), "ebpf.enabled"),
            ("ebpf", json!({"pin_dir": 5}), "ebpf.pin_dir"),
            (
                "kubernetes",
                json!({"kubeconfig": 5}),
                "kubernetes.kubeconfig",
            ),
            ("runtimeConfig", json!([]), "runtimeConfig"),
            (
                "runtimeConfig",
                json!({"io.kubernetes.cri.pod-annotations": {"a": 1}}),
                "runtimeConfig.io.kubernetes.cri.pod-annotations",
            ),
            ("prevResult", json!("x"), "prevResult"),
            (
                "cni.dev/valid-attachments",
                json!([{"containerID": "a"}]),
                "cni.dev/valid-attachments",
            ),
            ("name", json!(7), "name"),
            ("name", json!("bad/name"), "name"),
            ("type", json!([]), "type"),
        ];
        for (key, value, named) in cases {
            let err = parse(with(key, value.clone())).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
            assert_eq!(invalid_key(err), named, "{key}={value}");
        }
        let mut v = base();
        v.as_object_mut().unwrap().remove("name");
        assert_eq!(parse(v).unwrap_err(), ConfigError::Missing { key: "name" });
    }

    #[test]
    fn nulls_are_absent() {
        let c = parse(with("mode", Value::Null)).unwrap();
        assert_eq!(c.mode, Mode::Iptables);
        let c = parse(with("prevResult", Value::Null)).unwrap();
        assert_eq!(c.prev_result, None);
        let c = parse(with("log_file", json!(""))).unwrap();
        assert_eq!(c.log_file, None);
    }

    #[test]
    fn peek_version_falls_back_to_latest() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.3.1"}"#),
            CniVersion::V0_3_1
        );
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.2.0"}"#),
            CniVersion::LATEST
        );
        assert_eq!(peek_version(b""), CniVersion::LATEST);
        assert_eq!(peek_version(b"garbage"), CniVersion::LATEST);
    }
}

//! A Kubernetes Pod, or a workload's pod template, as meshcap sees it: the annotations, the
//! sidecar container and the proxy's uid/gid, and the selection decision built on them.
//!
//! One function turns a Pod's JSON (from the API server, in the CNI plugin) or a pod
//! template (from a manifest, in `meshcap render -f`) into a [`PodView`], so both paths
//! decide and render identically. Pure: a `serde_json::Value` in, data out.
//!
//! Selection follows istio-cni's sidecar checks (`cni/pkg/plugin/plugin.go`): with
//! `selection: injected` a pod is captured when it has an `istio-proxy` container (regular, or
//! a native sidecar: an init container with `restartPolicy: Always`, Kubernetes 1.28+) that
//! is a sidecar proxy (`proxy sidecar` args, `DISABLE_ENVOY` not true), the
//! `sidecar.istio.io/inject` label (preferred, as Istio does) or annotation is not false, and
//! `sidecar.istio.io/status` is present. The proxy uid/gid come from the `istio-proxy`
//! container's `securityContext.runAsUser`/`runAsGroup`, as istio-cni reads them; absent, they
//! stay 1337.
//!
//! One deliberate difference from istio-cni: a pod that still carries `istio-init` is
//! captured (and flagged in [`PodView::has_istio_init`]). The runtime-annotation path cannot
//! see containers, and the two paths must agree on the same pod.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::annotations::{self, Annotations};
use crate::selection::Selection;

/// Istio's sidecar container name.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// Istio's privileged init container, the one meshcap replaces.
pub const ISTIO_INIT: &str = "istio-init";
/// The init container Istio's CNI mode injects instead of `istio-init`; it carries the same
/// istio-iptables arguments (only to validate the rules).
pub const ISTIO_VALIDATION: &str = "istio-validation";
/// The injection label; Istio prefers it to the annotation of the same name.
pub const SIDECAR_INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// A pod (or template) whose shape is not what Kubernetes defines. Names the JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("{path}: expected {expected}")]
    Shape {
        path: String,
        expected: &'static str,
    },
    #[error("{path}: {value} is not a valid {what} (0 to 4294967294)")]
    Id {
        path: String,
        what: &'static str,
        value: String,
    },
}

/// What meshcap reads from a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub annotations: Annotations,
    pub labels: BTreeMap<String, String>,
    /// `spec.hostNetwork`: such pods never reach a CNI plugin.
    pub host_network: bool,
    /// An `istio-proxy` container or native sidecar init container exists.
    pub has_istio_proxy: bool,
    /// `istio-proxy` is an init container with `restartPolicy: Always`.
    pub native_sidecar: bool,
    /// An `istio-init` init container exists (the pod was injected without Istio's CNI mode).
    pub has_istio_init: bool,
    /// `args[1]` of `istio-proxy` when `args[0]` is `proxy` (`sidecar`, `router`, ...).
    pub proxy_type: Option<String>,
    /// `DISABLE_ENVOY` is set to a true value on `istio-proxy`.
    pub disable_envoy: bool,
    /// `istio-proxy`'s `securityContext.runAsUser`.
    pub proxy_uid: Option<u32>,
    /// `istio-proxy`'s `securityContext.runAsGroup`.
    pub proxy_gid: Option<u32>,
    /// `istio-proxy`'s environment: the literal `value` of each variable (`""` for a
    /// `valueFrom` variable, as istio-cni reads it; the last entry of a name wins). istio-cni reads
    /// `ISTIO_META_DNS_CAPTURE`, `INVALID_DROP` and `ISTIO_DUAL_STACK` from here.
    pub proxy_env: BTreeMap<String, String>,
    /// The `istio-init` (or, in Istio's CNI mode, `istio-validation`) init container's args:
    /// the injector writes the mesh config's `proxyListenPort`/`proxyInboundListenPort` there
    /// as `-p`/`-z`.
    pub init_args: Vec<String>,
    /// `istio-init`'s literal environment (empty for `istio-validation`): istio-iptables reads
    /// `ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE)` and `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` from its
    /// own environment, which is istio-init's in the init-container mode and istio-cni's node
    /// agent's in the CNI mode.
    pub init_env: BTreeMap<String, String>,
    /// JSON path of that container, for error messages (`spec.initContainers[0]`).
    pub init_path: Option<String>,
}

/// Why a pod is not captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    HostNetwork,
    NoIstioProxy,
    DisableEnvoy,
    NotASidecar(String),
    InjectDisabled,
    NoSidecarStatus,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HostNetwork => f.write_str("hostNetwork pod: no CNI ADD runs for it"),
            SkipReason::NoIstioProxy => write!(f, "no {ISTIO_PROXY} container"),
            SkipReason::DisableEnvoy => write!(f, "DISABLE_ENVOY is true on {ISTIO_PROXY}"),
            SkipReason::NotASidecar(t) => {
                write!(f, "{ISTIO_PROXY} is a {t:?} proxy, not a sidecar")
            }
            SkipReason::InjectDisabled => {
                write!(f, "{} is false", annotations::SIDECAR_INJECT)
            }
            SkipReason::NoSidecarStatus => {
                write!(f, "no {} annotation", annotations::SIDECAR_STATUS)
            }
        }
    }
}

/// The selection decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelection {
    Capture,
    Skip(SkipReason),
}

impl PodView {
    /// Reads a Pod object (`metadata`, `spec`).
    pub fn from_pod(pod: &Value) -> Result<PodView, PodError> {
        let obj = object(pod, "")?;
        PodView::from_parts(obj.get("metadata"), obj.get("spec"), "")
    }

    /// Reads a pod from its `metadata` and `spec` (a Pod, or a template's); `path` prefixes
    /// error locations (e.g. `spec.template.`).
    pub fn from_parts(
        metadata: Option<&Value>,
        spec: Option<&Value>,
        path: &str,
    ) -> Result<PodView, PodError> {
        let mut view = PodView::default();
        if let Some(meta) = present(metadata) {
            let meta_path = format!("{path}metadata");
            let meta = object(meta, &meta_path)?;
            view.namespace = string(meta.get("namespace"), &format!("{meta_path}.namespace"))?;
            view.name = string(meta.get("name"), &format!("{meta_path}.name"))?;
            view.annotations =
                string_map(meta.get("annotations"), &format!("{meta_path}.annotations"))?;
            view.labels = string_map(meta.get("labels"), &format!("{meta_path}.labels"))?;
        }
        let Some(spec) = present(spec) else {
            return Ok(view);
        };
        let spec_path = format!("{path}spec");
        let spec = object(spec, &spec_path)?;
        view.host_network = matches!(spec.get("hostNetwork"), Some(Value::Bool(true)));

        for (key, native_only) in [("initContainers", true), ("containers", false)] {
            let list_path = format!("{spec_path}.{key}");
            let Some(list) = present(spec.get(key)) else {
                continue;
            };
            let Value::Array(items) = list else {
                return Err(shape(&list_path, "a list of containers"));
            };
            for (i, c) in items.iter().enumerate() {
                let c_path = format!("{list_path}[{i}]");
                let c = object(c, &c_path)?;
                let name = string(c.get("name"), &format!("{c_path}.name"))?.unwrap_or_default();
                if native_only && name == ISTIO_INIT {
                    view.has_istio_init = true;
                }
                // istio-init wins over istio-validation should a pod carry both.
                if native_only
                    && (name == ISTIO_INIT
                        || (name == ISTIO_VALIDATION && view.init_path.is_none()))
                {
                    view.read_init(c, &c_path, name == ISTIO_INIT)?;
                }
                if name != ISTIO_PROXY {
                    continue;
                }
                let always = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
                if native_only && !always {
                    // An ordinary init container named istio-proxy runs to completion before
                    // the app: it is no sidecar.
                    continue;
                }
                view.has_istio_proxy = true;
                view.native_sidecar = native_only;
                view.read_proxy(c, &c_path)?;
            }
        }
        Ok(view)
    }

    fn read_proxy(&mut self, c: &Map<String, Value>, path: &str) -> Result<(), PodError> {
        if let Some(Value::Array(args)) = c.get("args") {
            if args.first().and_then(Value::as_str) == Some("proxy") {
                self.proxy_type = args.get(1).and_then(Value::as_str).map(str::to_owned);
            }
        }
        // istio-cni reads the sidecar's `env[].value` as written: `""` for a `valueFrom`.
        self.proxy_env = env_values(c.get("env"), &format!("{path}.env"), Some(""))?;
        if let Some(v) = self.proxy_env.get("DISABLE_ENVOY") {
            self.disable_envoy = parse_go_bool(v) == Some(true);
        }
        let sc_path = format!("{path}.securityContext");
        if let Some(sc) = present(c.get("securityContext")) {
            let sc = object(sc, &sc_path)?;
            self.proxy_uid = id(sc.get("runAsUser"), &format!("{sc_path}.runAsUser"), "uid")?;
            self.proxy_gid = id(
                sc.get("runAsGroup"),
                &format!("{sc_path}.runAsGroup"),
                "gid",
            )?;
        }
        Ok(())
    }

    fn read_init(
        &mut self,
        c: &Map<String, Value>,
        path: &str,
        path_is_istio_init: bool,
    ) -> Result<(), PodError> {
        let args_path = format!("{path}.args");
        self.init_args = match present(c.get("args")) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    a.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| shape(&format!("{args_path}[{i}]"), "a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(shape(&args_path, "a list of strings")),
        };
        // istio-iptables reads its own environment only where it runs in the pod: under
        // istio-init. istio-validation carries the proxy's metadata too, but in that mode
        // istio-cni reads these variables in its plugin process (sidecar_iptables_linux.go),
        // whose environment is the container runtime's, not the pod's.
        self.init_env = if path_is_istio_init {
            env_values(c.get("env"), &format!("{path}.env"), None)?
        } else {
            BTreeMap::new()
        };
        self.init_path = Some(path.to_owned());
        Ok(())
    }

    /// `namespace/name`, with placeholders for what the object does not say.
    pub fn display_name(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("(namespace unset)"),
            self.name.as_deref().unwrap_or("(name unset)")
        )
    }

    /// Whether meshcap captures this pod under `selection`. See the module docs.
    pub fn selection(&self, selection: Selection) -> PodSelection {
        if self.host_network {
            return PodSelection::Skip(SkipReason::HostNetwork);
        }
        if selection == Selection::All {
            return PodSelection::Capture;
        }
        if !self.has_istio_proxy {
            return PodSelection::Skip(SkipReason::NoIstioProxy);
        }
        if self.disable_envoy {
            return PodSelection::Skip(SkipReason::DisableEnvoy);
        }
        // istio-cni takes an empty type for a sidecar too.
        if let Some(t) = self
            .proxy_type
            .as_deref()
            .filter(|t| !t.is_empty() && *t != "sidecar")
        {
            return PodSelection::Skip(SkipReason::NotASidecar(t.to_owned()));
        }
        let inject = self
            .labels
            .get(SIDECAR_INJECT_LABEL)
            .or_else(|| self.annotations.get(annotations::SIDECAR_INJECT));
        if inject.and_then(|v| parse_go_bool(v)) == Some(false) {
            return PodSelection::Skip(SkipReason::InjectDisabled);
        }
        if !self.annotations.contains_key(annotations::SIDECAR_STATUS) {
            return PodSelection::Skip(SkipReason::NoSidecarStatus);
        }
        PodSelection::Capture
    }
}

/// A container's `env` as name -> literal value, the last entry of a name winning. A variable
/// with `valueFrom` (or no value) reads as `unset`, or is left out when that is `None` (its
/// value is then only known to the kubelet).
fn env_values(
    v: Option<&Value>,
    path: &str,
    unset: Option<&str>,
) -> Result<BTreeMap<String, String>, PodError> {
    let mut out = BTreeMap::new();
    let Some(v) = present(v) else {
        return Ok(out);
    };
    let Value::Array(items) = v else {
        return Err(shape(path, "a list of environment variables"));
    };
    for (i, e) in items.iter().enumerate() {
        let e_path = format!("{path}[{i}]");
        let e = object(e, &e_path)?;
        let Some(name) = string(e.get("name"), &format!("{e_path}.name"))? else {
            continue;
        };
        match string(e.get("value"), &format!("{e_path}.value"))? {
            Some(value) => {
                out.insert(name, value);
            }
            None => {
                if let Some(unset) = unset {
                    out.insert(name, unset.to_owned());
                } else {
                    out.remove(&name);
                }
            }
        }
    }
    Ok(out)
}

/// Go's `strconv.ParseBool`, which Istio applies to the inject label/annotation and to the
/// proxy's boolean environment variables.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn shape(path: &str, expected: &'static str) -> PodError {
    PodError::Shape {
        path: if path.is_empty() {
            "(root)".into()
        } else {
            path.into()
        },
        expected,
    }
}

/// `null` counts as absent, as in the Go API types.
fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, PodError> {
    v.as_object().ok_or_else(|| shape(path, "an object"))
}

fn string(v: Option<&Value>, path: &str) -> Result<Option<String>, PodError> {
    match present(v) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(shape(path, "a string")),
    }
}

/// The `metadata.annotations` of any Kubernetes object (a Namespace, say), string values only:
/// the API server stores nothing else, so anything else is not an annotation to read.
pub fn object_annotations(object: &Value) -> Annotations {
    object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn string_map(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>, PodError> {
    let Some(v) = present(v) else {
        return Ok(BTreeMap::new());
    };
    let obj = object(v, path)?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(shape(&format!("{path}.{k}"), "a string")),
        })
        .collect()
}

/// A uid or gid: 0 to 2^32-2 (`(uid_t)-1` means "unchanged" to the kernel).
fn id(v: Option<&Value>, path: &str, what: &'static str) -> Result<Option<u32>, PodError> {
    let Some(v) = present(v) else {
        return Ok(None);
    };
    v.as_u64()
        .filter(|n| *n < u64::from(u32::MAX))
        .map(|n| Some(n as u32))
        .ok_or_else(|| PodError::Id {
            path: path.to_owned(),
            what,
            value: v.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn injected() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "default", "name": "web-0",
                "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": [
                {"name": "app", "image": "nginx"},
                {"name": "istio-proxy", "args": ["proxy", "sidecar"],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}
            ]}
        })
    }

    fn view(v: &Value) -> PodView {
        PodView::from_pod(v).unwrap()
    }

    #[test]
    fn injected_pod_is_captured_with_its_proxy_ids() {
        let p = view(&injected());
        assert!(p.has_istio_proxy && !p.native_sidecar && !p.has_istio_init);
        assert_eq!((p.proxy_uid, p.proxy_gid), (Some(1337), Some(1337)));
        assert_eq!(p.display_name(), "default/web-0");
        assert_eq!(p.selection(Selection::Injected), PodSelection::Capture);
    }

    #[test]
    fn native_sidecar_counts_only_with_restart_policy_always() {
        let mut v = injected();
        let proxy = v["spec"]["containers"][1].take();
        v["spec"]["containers"] = json!([{"name": "app"}]);
        let mut native = proxy.clone();
        native["restartPolicy"] = json!("Always");
        v["spec"]["initContainers"] = json!([native]);
        let p = view(&v);
        assert!(p.has_istio_proxy && p.native_sidecar);
        assert_eq!(p.selection(Selection::Injected), PodSelection::Capture);
        v["spec"]["initContainers"] = json!([proxy]);
        let p = view(&v);
        assert!(!p.has_istio_proxy);
        assert_eq!(
            p.selection(Selection::Injected),
            PodSelection::Skip(SkipReason::NoIstioProxy)
        );
    }

    #[test]
    fn skips() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, SkipReason)> = vec![
            (
                Box::new(|v| {
                    v["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false")
                }),
                SkipReason::InjectDisabled,
            ),
            (
                Box::new(|v| v["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "False"})),
                SkipReason::InjectDisabled,
            ),
            (
                Box::new(|v| v["metadata"]["annotations"] = json!({})),
                SkipReason::NoSidecarStatus,
            ),
            (
                Box::new(|v| v["spec"]["containers"] = json!([{"name": "app"}])),
                SkipReason::NoIstioProxy,
            ),
            (
                Box::new(|v| v["spec"]["containers"][1]["args"] = json!(["proxy", "router"])),
                SkipReason::NotASidecar("router".into()),
            ),
            (
                Box::new(|v| {
                    v["spec"]["containers"][1]["env"] =
                        json!([{"name": "DISABLE_ENVOY", "value": "true"}])
                }),
                SkipReason::DisableEnvoy,
            ),
            (
                Box::new(|v| v["spec"]["hostNetwork"] = json!(true)),
                SkipReason::HostNetwork,
            ),
        ];
        for (edit, reason) in cases {
            let mut v = injected();
            edit(&mut v);
            assert_eq!(
                view(&v).selection(Selection::Injected),
                PodSelection::Skip(reason.clone()),
                "{v}"
            );
        }
        // The label wins over the annotation, as in Istio.
        let mut v = injected();
        v["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
        v["metadata"]["labels"] = json!({"sidecar.istio.io/inject": "true"});
        assert_eq!(
            view(&v).selection(Selection::Injected),
            PodSelection::Capture
        );
    }

    #[test]
    fn selection_all_captures_any_pod_network_pod() {
        let p = view(&json!({"spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(p.selection(Selection::All), PodSelection::Capture);
        let p = view(&json!({"spec": {"hostNetwork": true}}));
        assert_eq!(
            p.selection(Selection::All),
            PodSelection::Skip(SkipReason::HostNetwork)
        );
    }

    #[test]
    fn a_valuefrom_proxy_variable_is_empty_and_the_last_entry_wins() {
        let mut v = injected();
        v["spec"]["containers"][1]["env"] = json!([
            {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
            {"name": "ISTIO_META_DNS_CAPTURE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            {"name": "INVALID_DROP", "value": "false"},
            {"name": "INVALID_DROP", "value": "true"}
        ]);
        v["spec"]["containers"][1]["args"] = json!(["proxy", ""]);
        let p = view(&v);
        assert_eq!(p.proxy_env["ISTIO_META_DNS_CAPTURE"], "");
        assert_eq!(p.proxy_env["INVALID_DROP"], "true");
        // An empty proxy type is a sidecar to istio-cni.
        assert_eq!(p.selection(Selection::Injected), PodSelection::Capture);
    }

    #[test]
    fn istio_validations_environment_is_not_istio_iptables_environment() {
        let mut v = injected();
        v["spec"]["initContainers"] = json!([
            {"name": "istio-validation", "args": ["istio-iptables", "-p", "15002"],
             "env": [{"name": "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "value": "1000"}]}
        ]);
        let p = view(&v);
        assert_eq!(p.init_args, ["istio-iptables", "-p", "15002"]);
        assert!(p.init_env.is_empty(), "{:?}", p.init_env);
    }

    #[test]
    fn proxy_env_and_init_container_are_read() {
        let mut v = injected();
        v["spec"]["containers"][1]["env"] = json!([
            {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        ]);
        v["spec"]["initContainers"] = json!([
            {"name": "istio-validation", "args": ["istio-iptables", "-p", "15002"]},
            {"name": "istio-init", "args": ["istio-iptables", "-p", "15001"],
             "env": [{"name": "ISTIO_OUTBOUND_OWNER_GROUPS", "value": "5"}]}
        ]);
        let p = view(&v);
        assert_eq!(
            p.proxy_env
                .get("ISTIO_META_DNS_CAPTURE")
                .map(String::as_str),
            Some("true")
        );
        // A valueFrom variable reads as empty, as istio-cni reads `env[].value`.
        assert_eq!(p.proxy_env.get("POD_NAME").map(String::as_str), Some(""));
        // istio-init wins over istio-validation.
        assert_eq!(p.init_args, ["istio-iptables", "-p", "15001"]);
        assert_eq!(p.init_path.as_deref(), Some("spec.initContainers[1]"));
        assert_eq!(
            p.init_env
                .get("ISTIO_OUTBOUND_OWNER_GROUPS")
                .map(String::as_str),
            Some("5")
        );
        v["spec"]["initContainers"][0]["args"] = json!([1]);
        let err = PodView::from_pod(&v).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.initContainers[0].args[0]"),
            "{err}"
        );
    }

    #[test]
    fn istio_init_is_flagged_not_skipped() {
        let mut v = injected();
        v["spec"]["initContainers"] = json!([{"name": "istio-init", "args": ["istio-iptables"]}]);
        let p = view(&v);
        assert!(p.has_istio_init);
        assert_eq!(p.selection(Selection::Injected), PodSelection::Capture);
    }

    #[test]
    fn bad_shapes_name_their_path() {
        let cases = [
            (json!([]), "(root)"),
            (
                json!({"metadata": {"annotations": {"a": 1}}}),
                "metadata.annotations.a",
            ),
            (json!({"spec": {"containers": {}}}), "spec.containers"),
            (
                json!({"spec": {"containers": [{"name": 3}]}}),
                "spec.containers[0].name",
            ),
            (
                json!({"spec": {"containers": [{"name": "istio-proxy", "securityContext": {"runAsUser": -1}}]}}),
                "spec.containers[0].securityContext.runAsUser",
            ),
            (
                json!({"spec": {"containers": [{"name": "istio-proxy", "securityContext": {"runAsGroup": 4294967295u64}}]}}),
                "spec.containers[0].securityContext.runAsGroup",
            ),
        ];
        for (v, path) in cases {
            let err = PodView::from_pod(&v).unwrap_err();
            assert!(err.to_string().starts_with(path), "{path}: {err}");
        }
    }
}

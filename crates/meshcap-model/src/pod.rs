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

use crate::annotations::{self, AnnotationError, Annotations};
use crate::model::RedirectModel;
use crate::selection::Selection;

/// Istio's sidecar container name.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// Istio's privileged init container, the one meshcap replaces.
pub const ISTIO_INIT: &str = "istio-init";
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
        if let Some(Value::Array(env)) = c.get("env") {
            for e in env {
                if e.get("name").and_then(Value::as_str) == Some("DISABLE_ENVOY") {
                    let v = e.get("value").and_then(Value::as_str).unwrap_or("");
                    self.disable_envoy = parse_go_bool(v) == Some(true);
                }
            }
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
        if let Some(t) = self.proxy_type.as_deref().filter(|t| *t != "sidecar") {
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

    /// The redirect model: the annotations over Istio's defaults, then the proxy's uid/gid
    /// from its container when it states them.
    pub fn model(&self) -> Result<RedirectModel, AnnotationError> {
        let mut model = RedirectModel::from_annotations(&self.annotations)?;
        self.apply_proxy_ids(&mut model);
        Ok(model)
    }

    /// Sets the model's proxy uid/gid from the pod where it states them.
    ///
    /// 0 counts as unset, as istio-cni reads it (`cni/pkg/plugin/sidecar_redirect.go`,
    /// NewRedirect): Istio's injector writes `runAsUser: 0` with `runAsGroup: 1337` for TPROXY
    /// pods, and exempting uid 0 would let every root process of the app bypass capture.
    pub fn apply_proxy_ids(&self, model: &mut RedirectModel) {
        if let Some(uid) = self.proxy_uid.filter(|uid| *uid != 0) {
            model.proxy_uids = vec![uid];
        }
        if let Some(gid) = self.proxy_gid.filter(|gid| *gid != 0) {
            model.proxy_gids = vec![gid];
        }
    }
}

/// Go's `strconv.ParseBool`, which Istio applies to the inject label/annotation.
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
        assert_eq!(p.model().unwrap(), RedirectModel::default());
    }

    #[test]
    fn custom_proxy_uid_and_gid_reach_the_model() {
        let mut v = injected();
        v["spec"]["containers"][1]["securityContext"] =
            json!({"runAsUser": 2000, "runAsGroup": 3000});
        let m = view(&v).model().unwrap();
        assert_eq!((m.proxy_uids[0], m.proxy_gids[0]), (2000, 3000));
        // Only the uid stated: the gid stays Istio's default.
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 2000});
        let m = view(&v).model().unwrap();
        assert_eq!((m.proxy_uids[0], m.proxy_gids[0]), (2000, 1337));
        // The pod-level securityContext is not the proxy's (istio-cni reads the container's).
        v["spec"]["containers"][1]["securityContext"] = Value::Null;
        v["spec"]["securityContext"] = json!({"runAsUser": 5});
        assert_eq!(view(&v).model().unwrap().proxy_uids[0], 1337);
    }

    #[test]
    fn uid_and_gid_zero_count_as_unset() {
        // Istio's injector writes this for TPROXY pods; istio-cni then exempts 1337, not root.
        let mut v = injected();
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 1337});
        let m = view(&v).model().unwrap();
        assert_eq!((m.proxy_uids[0], m.proxy_gids[0]), (1337, 1337));
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 0});
        let m = view(&v).model().unwrap();
        assert_eq!((m.proxy_uids[0], m.proxy_gids[0]), (1337, 1337));
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

    #[test]
    fn invalid_annotation_is_the_models_error() {
        let mut v = injected();
        v["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] = json!("BOGUS");
        let err = view(&v).model().unwrap_err();
        assert_eq!(err.annotation, "sidecar.istio.io/interceptionMode");
    }
}

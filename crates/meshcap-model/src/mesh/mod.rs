//! Mesh front ends: what a mesh's pod (or, on the runtime path, its annotations and the node's
//! defaults) means for the redirect model. Each mesh's knowledge of where its settings live
//! stays here; the model and the renderers have no mesh branches.
//!
//! [`claims`] tells which meshes a pod belongs to, from its spec (containers) or, on the
//! runtime path, from the annotations each mesh's injector writes. A pod claimed by two meshes
//! is refused ([`MeshError::Conflict`], CNI code 7): capturing it for either would silently
//! break the other's proxy.

pub mod istio;
pub mod kuma;
pub mod linkerd;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::annotations::{AnnotationError, Annotations};
use crate::model::RedirectModel;
use crate::pod::PodView;

/// A service mesh meshcap serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mesh {
    Istio,
    Linkerd,
    Kuma,
}

impl Mesh {
    pub const ALL: [Mesh; 3] = [Mesh::Istio, Mesh::Linkerd, Mesh::Kuma];

    pub fn name(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::Linkerd => "linkerd",
            Mesh::Kuma => "kuma",
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Istio's sidecar container and the annotation its injector always writes.
const ISTIO_PROXY: &str = "istio-proxy";
const ISTIO_STATUS: &str = "sidecar.istio.io/status";

/// Which meshes claim a pod, from its spec: each mesh's sidecar container (regular, or a native
/// sidecar in `initContainers`), or for Kuma also its injection annotation.
pub fn claims(pod: &Value) -> Vec<Mesh> {
    let spec = pod.get("spec");
    let annotations = annotations_of(pod);
    let mut found = Vec::new();
    if has_container(spec, ISTIO_PROXY) {
        found.push(Mesh::Istio);
    }
    if has_container(spec, linkerd::PROXY_CONTAINER) {
        found.push(Mesh::Linkerd);
    }
    if has_container(spec, kuma::SIDECAR_CONTAINER)
        || annotations.get(kuma::SIDECAR_INJECTED).map(String::as_str) == Some("true")
    {
        found.push(Mesh::Kuma);
    }
    found
}

/// Which meshes claim a pod from its annotations alone (the runtime path): the annotation each
/// injector always writes.
pub fn claims_by_annotations(annotations: &Annotations) -> Vec<Mesh> {
    let mut found = Vec::new();
    if annotations.contains_key(ISTIO_STATUS) {
        found.push(Mesh::Istio);
    }
    if annotations.contains_key(linkerd::PROXY_VERSION) {
        found.push(Mesh::Linkerd);
    }
    if annotations.get(kuma::SIDECAR_INJECTED).map(String::as_str) == Some("true") {
        found.push(Mesh::Kuma);
    }
    found
}

/// The one mesh of a pod, or the conflict.
pub fn single(claims: &[Mesh]) -> Result<Option<Mesh>, MeshError> {
    match claims {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(MeshError::Conflict(many.to_vec())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("pod is injected by more than one mesh ({}); meshcap captures a pod for one mesh only", names(.0))]
    Conflict(Vec<Mesh>),
}

fn names(meshes: &[Mesh]) -> String {
    meshes
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Why a pod that `mesh`'s own plugin sets up still gets nothing installed, asked once its
/// inputs built a model (so that bad inputs fail first, as under that plugin): a Kuma dry run.
/// ADD, CHECK, DEL and `meshcap render` all ask here.
pub fn installs_nothing(mesh: Mesh, annotations: &Annotations) -> Option<String> {
    match mesh {
        Mesh::Kuma => kuma::dry_run(annotations),
        Mesh::Istio | Mesh::Linkerd => None,
    }
}

/// What a pod's front end resolved besides its annotations: the settings its mesh takes from
/// the pod spec, the node's plugin configuration or the pod's addresses. The plugin keeps it in
/// the attachment record, so the node agent recomputes a pod's rules with [`FrontEnd::model`],
/// the same step ADD took, whichever mesh the pod belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontEnd {
    Istio(istio::SpecSettings),
    Linkerd(linkerd::PodSettings),
    Kuma(kuma::PodSettings),
}

/// A front end's refusal of an input: an annotation (or a value inside one), or a setting named
/// by where it came from (a container's env or argument, a plugin configuration key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontEndError {
    #[error(transparent)]
    Annotation(AnnotationError),
    #[error(transparent)]
    Input(istio::InputError),
}

impl FrontEnd {
    pub fn mesh(&self) -> Mesh {
        match self {
            FrontEnd::Istio(_) => Mesh::Istio,
            FrontEnd::Linkerd(_) => Mesh::Linkerd,
            FrontEnd::Kuma(_) => Mesh::Kuma,
        }
    }

    /// The pod's model from its annotations and these settings: the one step from a pod to its
    /// model that ADD, CHECK, `meshcap render` and the agent's repair share. `read_file` reads
    /// a node file a front end names (Kuma's resolv.conf); `warnings` gets what a front end
    /// ignored or reads otherwise than it is written, one line each.
    pub fn model(
        &self,
        annotations: &Annotations,
        read_file: &dyn Fn(&str) -> std::io::Result<String>,
        warnings: &mut Vec<String>,
    ) -> Result<RedirectModel, FrontEndError> {
        match self {
            FrontEnd::Istio(s) => {
                let model = istio::model(annotations, s).map_err(FrontEndError::Input)?;
                warnings.extend(crate::annotations::reading_notes(annotations));
                Ok(model)
            }
            FrontEnd::Linkerd(s) => {
                linkerd::model(annotations, s, warnings).map_err(FrontEndError::Annotation)
            }
            FrontEnd::Kuma(s) => {
                let read =
                    |path: &str| kuma::stored_or_read(s.nameservers.as_deref(), path, read_file);
                kuma::model(annotations, s.pod_has_ipv6, &read, warnings)
                    .map_err(FrontEndError::Annotation)
            }
        }
    }
}

/// What a path sees of a pod: its annotations always; on the Kubernetes API path and with
/// `render -f` also its spec and labels (`spec_seen`).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub pod: &'a PodView,
    /// Whether `pod` holds the spec and labels (API path, `render -f`), not only annotations.
    pub spec_seen: bool,
    /// The pod's namespace (`K8S_POD_NAMESPACE`, or the manifest's).
    pub namespace: Option<&'a str>,
    /// Whether the pod has an IPv6 address (the plugin: the prevResult; `render -f`:
    /// `status.podIPs`).
    pub has_ipv6: bool,
    /// The API server's ports from the `default/kubernetes` Service, where the path read it
    /// (the plugin's API path, for a Linkerd control-plane pod).
    pub api_server_ports: Option<&'a [u16]>,
}

/// The node's settings for each mesh (the plugin configuration's `istio` and `linkerd`).
#[derive(Debug, Clone, Copy)]
pub struct NodeSettings<'a> {
    pub istio: &'a istio::NodeDefaults,
    pub linkerd: &'a linkerd::LinkerdNode,
}

/// A pod's front-end settings and model, with what the log should say about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub front_end: FrontEnd,
    pub model: RedirectModel,
    /// Settings that came from a node default or the mesh's default rather than the pod.
    pub defaulted: Vec<String>,
    /// Inputs the front end ignored, or reads otherwise than they are written (as the mesh's
    /// own plugin does), one line each; a line about an annotation's value starts with the
    /// annotation's name and a colon.
    pub warnings: Vec<String>,
}

/// The most of a node file a front end reads ([`read_node_file`]); a resolv.conf is a few
/// hundred bytes.
pub const MAX_NODE_FILE: u64 = 64 * 1024;

/// Reads a node file a front end names (Kuma's `resolvConfigPath`, which the pod's own
/// annotation may set): a regular file of at most [`MAX_NODE_FILE`] bytes, so a path such as
/// `/dev/zero` or a FIFO cannot hold up or exhaust the plugin.
pub fn read_node_file(path: &str) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read as _};
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_NODE_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_NODE_FILE {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {MAX_NODE_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// From a pod of `mesh` (Istio for a pod no mesh claims) to its front-end settings and model:
/// the plugin's runtime-annotation and Kubernetes API paths and `meshcap render -f` all call it.
/// Where the path cannot see the spec, the node's settings stand in for it.
pub fn resolve(
    mesh: Mesh,
    seen: &Seen<'_>,
    node: &NodeSettings<'_>,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Resolved, FrontEndError> {
    let annotations = &seen.pod.annotations;
    let mut warnings = Vec::new();
    let mut defaulted = Vec::new();
    let front_end = match mesh {
        Mesh::Istio => {
            let r = istio::resolve(seen.pod, node.istio).map_err(FrontEndError::Input)?;
            defaulted = r.defaulted();
            FrontEnd::Istio(r.settings)
        }
        Mesh::Linkerd => {
            let labels = seen.spec_seen.then_some(&seen.pod.labels);
            let s = linkerd::PodSettings::resolve(node.linkerd, labels, seen.namespace)
                .with_api_server_ports(seen.api_server_ports);
            if !seen.spec_seen {
                defaulted.push(format!(
                    "control-plane pod from linkerd.control_plane_namespaces ({})",
                    s.control_plane
                ));
            }
            FrontEnd::Linkerd(s)
        }
        Mesh::Kuma => {
            // Its settings come out of building its model (the nameservers it read).
            let (settings, model) =
                kuma::resolve(annotations, seen.has_ipv6, read_file, &mut warnings)
                    .map_err(FrontEndError::Annotation)?;
            return Ok(Resolved {
                front_end: FrontEnd::Kuma(settings),
                model,
                defaulted,
                warnings,
            });
        }
    };
    let model = front_end.model(annotations, read_file, &mut warnings)?;
    Ok(Resolved {
        front_end,
        model,
        defaulted,
        warnings,
    })
}

/// For a pod `seen` without an IPv6 address whose mesh writes IPv6 rules when the pod's
/// namespace holds any IPv6 address but `::1` (kuma-cni's `HasLocalIPv6`, a link-local one
/// included): its resolution with such an address, when that has IPv6 rules. `None` for a pod
/// with an IPv6 address, for other meshes (Istio follows the pod's addresses, linkerd-cni its
/// `ipv6` setting) and for a Kuma pod that gets no IPv6 rules either way (`ipv4` mode). The
/// caller looks at the namespace only when this is `Some`.
pub fn resolve_with_namespace_ipv6(
    mesh: Mesh,
    seen: &Seen<'_>,
    node: &NodeSettings<'_>,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Option<Resolved>, FrontEndError> {
    if mesh != Mesh::Kuma || seen.has_ipv6 {
        return Ok(None);
    }
    let with_ipv6 = Seen {
        has_ipv6: true,
        ..*seen
    };
    let resolved = resolve(mesh, &with_ipv6, node, read_file)?;
    Ok(resolved.model.families.v6.then_some(resolved))
}

/// The pod's annotations (empty when absent or not strings).
pub fn annotations_of(pod: &Value) -> Annotations {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The container named `name` in `containers` or `initContainers`.
pub(crate) fn container<'a>(spec: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    let spec = spec?;
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

pub(crate) fn has_container(spec: Option<&Value>, name: &str) -> bool {
    container(spec, name).is_some()
}

/// Whether an init container named `name` exists (a mesh's own privileged init container).
pub(crate) fn has_init_container(spec: Option<&Value>, name: &str) -> bool {
    spec.and_then(|s| s.get("initContainers"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The servers a Kuma pod's DNS capture took from the node's resolv.conf at ADD stay its
    /// servers in every later model, though the file the agent's container sees names others.
    #[test]
    fn a_kuma_pods_resolv_conf_is_the_one_read_when_it_was_set_up() {
        let annotations: Annotations = [
            (kuma::SIDECAR_INJECTED, "true"),
            (
                kuma::TPROXY_CONFIG,
                "redirect:\n  dns:\n    enabled: true\n    captureAll: false\n",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = PodView {
            annotations: annotations.clone(),
            ..PodView::default()
        };
        let seen = Seen {
            pod: &pod,
            spec_seen: false,
            namespace: Some("default"),
            has_ipv6: false,
            api_server_ports: None,
        };
        let node = NodeSettings {
            istio: &istio::NodeDefaults::default(),
            linkerd: &linkerd::LinkerdNode::default(),
        };
        let on_the_node =
            |_: &str| Ok("# node\nsearch svc.cluster.local\nnameserver 10.0.0.10\n".to_owned());
        let resolved = resolve(Mesh::Kuma, &seen, &node, &on_the_node).unwrap();
        // The record keeps the nameservers, nothing else of the file.
        let FrontEnd::Kuma(settings) = &resolved.front_end else {
            panic!("{:?}", resolved.front_end);
        };
        assert_eq!(settings.nameservers, Some(vec!["10.0.0.10".to_owned()]));
        let servers = |m: &RedirectModel| m.dns_servers_of(crate::rules::Family::V4);
        assert_eq!(
            servers(&resolved.model),
            Some(vec!["10.0.0.10/32".parse().unwrap()])
        );
        let in_the_agent = |_: &str| Ok("nameserver 10.96.0.10\n".to_owned());
        let mut w = Vec::new();
        let later = resolved
            .front_end
            .model(&annotations, &in_the_agent, &mut w)
            .unwrap();
        assert_eq!(later, resolved.model);
        // A record written before the text was kept reads the file, as before.
        let old = FrontEnd::Kuma(kuma::PodSettings {
            pod_has_ipv6: false,
            nameservers: None,
        });
        let reread = old.model(&annotations, &in_the_agent, &mut w).unwrap();
        assert_eq!(
            servers(&reread),
            Some(vec!["10.96.0.10/32".parse().unwrap()])
        );
    }

    /// A path the pod names reads only a small regular file.
    #[test]
    fn node_files_are_small_regular_files() {
        assert!(read_node_file("/dev/zero").is_err(), "a device");
        assert!(read_node_file("/").is_err(), "a directory");
        let dir = std::env::temp_dir().join(format!("meshcap-node-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("resolv.conf");
        std::fs::write(&small, "nameserver 10.0.0.10\n").unwrap();
        assert_eq!(
            read_node_file(small.to_str().unwrap()).unwrap(),
            "nameserver 10.0.0.10\n"
        );
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; MAX_NODE_FILE as usize + 1]).unwrap();
        let err = read_node_file(big.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn claims_come_from_sidecar_containers() {
        let pod = json!({"spec": {"containers": [{"name": "app"}, {"name": "linkerd-proxy"}]}});
        assert_eq!(claims(&pod), vec![Mesh::Linkerd]);
        let pod = json!({"spec": {"initContainers": [{"name": "kuma-sidecar", "restartPolicy": "Always"}],
                                   "containers": [{"name": "app"}]}});
        assert_eq!(claims(&pod), vec![Mesh::Kuma]);
        let pod =
            json!({"spec": {"containers": [{"name": "istio-proxy"}, {"name": "linkerd-proxy"}]}});
        let err = single(&claims(&pod)).unwrap_err();
        assert!(err.to_string().contains("istio and linkerd"), "{err}");
        assert_eq!(single(&claims(&json!({"spec": {}}))), Ok(None));
    }

    #[test]
    fn claims_by_annotations_use_what_injectors_write() {
        let ann: Annotations = [("linkerd.io/proxy-version".to_string(), "edge".to_string())]
            .into_iter()
            .collect();
        assert_eq!(claims_by_annotations(&ann), vec![Mesh::Linkerd]);
        let ann: Annotations = [
            ("kuma.io/sidecar-injected".to_string(), "true".to_string()),
            ("sidecar.istio.io/status".to_string(), "{}".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(claims_by_annotations(&ann), vec![Mesh::Istio, Mesh::Kuma]);
    }
}

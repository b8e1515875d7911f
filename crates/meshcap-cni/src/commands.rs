//! The CNI commands: ADD, DEL, CHECK, STATUS and GC (VERSION needs no configuration and is
//! answered by [`crate::boundary`]).
//!
//! Every command takes one [`Invocation`] (validated environment, parsed `CNI_ARGS`, decoded
//! configuration, state directory) and returns a typed [`CommandError`]; the CNI error codes
//! are assigned in one place, [`crate::boundary`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshcap_dataplane::{self as dataplane, Dataplane, DataplaneError, PodNetns};
use meshcap_model::mesh::istio::InputError;
use meshcap_model::mesh::{self, FrontEnd, FrontEndError, Mesh, MeshError};
use meshcap_model::pod::{object_annotations, PodError, PodSelection, PodView};
use meshcap_model::{AnnotationError, Annotations, Families, RedirectModel};
use serde_json::Value;

use crate::args::CniArgs;
use crate::config::{Config, Mode, ReadPod, POD_ANNOTATIONS_CAPABILITY};
use crate::env::{Command, Env};
use crate::fastpath;
use crate::kube;
use crate::result::{self, ResultError};
use crate::timing::Phases;
use crate::version::CniVersion;
use meshcap_records::{self as state, AttachmentKey, AttachmentRecord, StateDir, StateError};

/// Everything one command needs.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub env: &'a Env,
    pub args: &'a CniArgs,
    pub config: &'a Config,
    pub state: &'a StateDir,
}

/// Why a command failed. Variants carry the operation and its inputs.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{command} needs cniVersion {needs} or later; the configuration has {version}")]
    VersionTooOld {
        command: Command,
        version: CniVersion,
        needs: CniVersion,
    },
    #[error(
        "pod annotations for {namespace}/{name} were not passed by the runtime (runtimeConfig \
         capability \"{POD_ANNOTATIONS_CAPABILITY}\") and {why}; refusing to start a possibly \
         meshed pod without capture"
    )]
    AnnotationsUnavailable {
        namespace: String,
        name: String,
        why: &'static str,
    },
    /// Boxed: the variant is large and every command returns this error type.
    #[error(transparent)]
    Kube(Box<kube::KubeError>),
    #[error("pod {namespace}/{name} as read from the API: {source}")]
    PodShape {
        namespace: String,
        name: String,
        #[source]
        source: PodError,
    },
    #[error("invalid pod annotation: {0}")]
    Annotation(#[source] AnnotationError),
    /// An annotation, a container's env or argument: the message names which.
    #[error("the pod's capture settings: {0}")]
    Input(#[source] InputError),
    #[error(transparent)]
    MeshConflict(#[from] MeshError),
    #[error(transparent)]
    PrevResult(#[from] ResultError),
    #[error(
        "{command} needs prevResult in the network configuration (CNI spec) and none was given"
    )]
    PrevResultRequired { command: Command },
    #[error("CNI_NETNS={path}: the network namespace does not exist (any more)")]
    NetnsVanished { path: PathBuf },
    /// The dataplane's error names the namespace and what it ran there; this adds only what
    /// the command was doing.
    #[error("{op} of meshcap rules ({mode}) failed: {source}")]
    Dataplane {
        op: &'static str,
        mode: &'static str,
        netns: PathBuf,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error("meshcap rules in {netns} differ from what ADD installed: {}", details.join("; "))]
    Drift {
        netns: PathBuf,
        details: Vec<String>,
    },
    #[error("recording the attachment: {0}")]
    State(#[from] StateError),
    #[error("the {mode} backend is not ready: {source}")]
    BackendNotReady {
        mode: &'static str,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error("GC input has no \"cni.dev/valid-attachments\" (CNI 1.1); refusing to guess which attachments are stale")]
    MissingValidAttachments,
    #[error("GC could not remove every stale record: {}", failures.join("; "))]
    Gc { failures: Vec<String> },
}

impl From<kube::KubeError> for CommandError {
    fn from(e: kube::KubeError) -> Self {
        CommandError::Kube(Box::new(e))
    }
}

/// Whether an attachment is captured, from the same inputs on ADD, CHECK and DEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the attachment alone; the reason is logged.
    Skip(String),
    /// Capture with this model input (boxed: a pod view is large).
    Capture(Box<Capture>),
}

/// What a captured attachment's model is built from: the pod as meshcap sees it. For the
/// runtime path only its annotations are known (the node's `istio` and `linkerd` settings
/// stand in for its spec); the API path also knows its containers and labels.
/// [`mesh::resolve`] builds the model either way, the same call `meshcap render -f` makes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capture {
    pub pod: PodView,
    /// Where the pod came from, for the log.
    pub source: &'static str,
    /// The mesh that injected the pod, when not Istio (whose front end also takes pods no
    /// mesh claims).
    pub mesh: Option<Mesh>,
    /// Whether `pod` holds the pod's spec and labels (read from the API), not only its
    /// annotations.
    pub spec_seen: bool,
    /// A Linkerd control-plane pod's API server ports, from the `default/kubernetes` Service
    /// (API path; `None`: not read, or unreadable).
    pub api_server_ports: Option<Vec<u16>>,
    /// The annotations in `pod` that came from its Namespace (a Linkerd pod on the API path),
    /// so that an error names where a bad value was written.
    pub from_namespace: Vec<&'static str>,
}

impl Capture {
    fn annotations_only(annotations: Annotations, source: &'static str) -> Capture {
        Capture {
            pod: PodView {
                annotations,
                ..PodView::default()
            },
            source,
            mesh: None,
            spec_seen: false,
            api_server_ports: None,
            from_namespace: Vec::new(),
        }
    }
}

/// Where a pod goes, by the mesh that injected it.
enum MeshRoute {
    /// An Istio pod, or one no mesh claims: Istio's front end and `selection` decide.
    Istio,
    /// A Linkerd or Kuma pod its own CNI plugin would set up.
    Other(Mesh),
    Skip(String),
}

fn route_mesh(
    config: &Config,
    claims: &[Mesh],
    namespace: Option<&str>,
    raw_pod: Option<&Value>,
    annotations: &Annotations,
) -> Result<MeshRoute, CommandError> {
    let Some(found) = mesh::single(claims)? else {
        // A pod no mesh claims is captured with Istio's rules under `selection: all`: not on
        // a node that does not serve Istio.
        if !config.meshes.contains(&Mesh::Istio) {
            return Ok(MeshRoute::Skip(
                "no mesh claims the pod, and the plugin config's meshes does not list istio".into(),
            ));
        }
        return Ok(MeshRoute::Istio);
    };
    if !config.meshes.contains(&found) {
        return Ok(MeshRoute::Skip(format!(
            "a {found} pod, and the plugin config's meshes does not list {found}"
        )));
    }
    let wanted = match found {
        Mesh::Istio => return Ok(MeshRoute::Istio),
        Mesh::Linkerd => raw_pod.map_or(Ok(()), mesh::linkerd::wants_pod),
        Mesh::Kuma => match namespace {
            Some(ns) if config.kuma.exclude_namespaces.iter().any(|n| n == ns) => {
                Err(format!("namespace {ns} is in kuma.exclude_namespaces"))
            }
            _ => match raw_pod {
                Some(pod) => mesh::kuma::wants_pod(pod, &config.kuma),
                None => mesh::kuma::wants_annotations(annotations),
            },
        },
    };
    Ok(match wanted {
        Ok(()) => MeshRoute::Other(found),
        Err(reason) => MeshRoute::Skip(format!("{found} pod left alone: {reason}")),
    })
}

/// Whether [`decide_with`] may ask the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiLookup {
    /// ADD and CHECK: fetch the pod when the runtime passed no annotations.
    Allowed,
    /// DEL: never wait on the API to tear a pod down; an unknown pod counts as maybe captured.
    Never,
}

/// Whether the runtime's annotations leave a pod this node may capture: claimed by a mesh in
/// `meshes`, or, when `meshes` lists Istio, wanted by `selection`. Only such a pod is worth an
/// API read under `read_pod: meshed`; any other is skipped from its annotations alone.
fn may_capture_by_annotations(config: &Config, annotations: &Annotations) -> bool {
    let claims = mesh::claims_by_annotations(annotations);
    claims.iter().any(|m| config.meshes.contains(m))
        || (claims.is_empty()
            && config.meshes.contains(&Mesh::Istio)
            && config.selection.wants_capture(annotations))
}

/// [`decide_with`] for ADD and CHECK.
pub fn decide(config: &Config, args: &CniArgs) -> Result<Decision, CommandError> {
    decide_with(config, args, ApiLookup::Allowed)
}

/// Decides selection, cheapest input first: `exclude_namespaces` and `kubernetes.skip_pods`
/// (before any API call, so meshcap's own pods and the control plane never wait on the API);
/// then the runtime's pod annotations (capability); then, for a Kubernetes pod without them,
/// the pod read from the API ([`crate::kube`]; unreadable: fail closed); then `selection`.
pub fn decide_with(
    config: &Config,
    args: &CniArgs,
    api: ApiLookup,
) -> Result<Decision, CommandError> {
    if let Some(ns) = args.k8s_pod_namespace.as_deref() {
        if config.excludes_namespace(ns) {
            return Ok(Decision::Skip(
                "the pod's namespace is in exclude_namespaces".into(),
            ));
        }
    }
    if let Some((namespace, name)) = args.kubernetes_pod() {
        if let Some(pattern) = config.skip_pod_pattern(namespace, name) {
            return Ok(Decision::Skip(format!(
                "the pod matches kubernetes.skip_pods entry {pattern:?}"
            )));
        }
    }
    let capture = match (&config.pod_annotations, args.kubernetes_pod()) {
        // `kubernetes.read_pod: meshed`: a pod the annotations call meshed is read from the API
        // so its spec, not the node defaults, gives the spec-derived settings.
        (Some(a), Some((namespace, name)))
            if config.read_pod == ReadPod::Meshed
                && api == ApiLookup::Allowed
                && may_capture_by_annotations(config, a) =>
        {
            let kubeconfig = config.kubeconfig.as_deref().unwrap_or(Path::new(""));
            return decide_from_api(config, kubeconfig, namespace, name);
        }
        // An injected pod whose annotation opts out: istio-cni lets the pod's label override
        // the annotation, and only the API shows labels.
        (Some(a), Some((namespace, name)))
            if api == ApiLookup::Allowed
                && config.selection.opt_out_needs_labels(a)
                && mesh::claims_by_annotations(a) == [Mesh::Istio] =>
        {
            match config.kubeconfig.as_deref() {
                Some(kubeconfig) => {
                    tracing::info!(
                        "the annotations opt an injected pod out; reading its labels, which istio-cni lets override them"
                    );
                    return decide_from_api(config, kubeconfig, namespace, name);
                }
                None => {
                    return Ok(Decision::Skip(format!(
                        "the pod's annotation {} opts out; its label of that name, which istio-cni would prefer, needs kubernetes.kubeconfig to be read",
                        meshcap_model::annotations::SIDECAR_INJECT
                    )))
                }
            }
        }
        (Some(a), _) => Capture::annotations_only(a.clone(), "runtime"),
        (None, Some((namespace, name))) => match (&config.kubeconfig, api) {
            (Some(kubeconfig), ApiLookup::Allowed) => {
                return decide_from_api(config, kubeconfig, namespace, name)
            }
            (kubeconfig, _) => {
                return Err(CommandError::AnnotationsUnavailable {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    why: if kubeconfig.is_none() {
                        "no kubernetes.kubeconfig is configured for the API path"
                    } else {
                        "DEL does not read the API"
                    },
                })
            }
        },
        (None, None) => Capture::annotations_only(Annotations::new(), "none"),
    };
    let claims = mesh::claims_by_annotations(&capture.pod.annotations);
    match route_mesh(
        config,
        &claims,
        args.k8s_pod_namespace.as_deref(),
        None,
        &capture.pod.annotations,
    )? {
        MeshRoute::Istio => {}
        MeshRoute::Skip(reason) => return Ok(Decision::Skip(reason)),
        MeshRoute::Other(m) => {
            return Ok(Decision::Capture(Box::new(Capture {
                mesh: Some(m),
                ..capture
            })))
        }
    }
    if config.selection.wants_capture(&capture.pod.annotations) {
        Ok(Decision::Capture(Box::new(capture)))
    } else {
        Ok(Decision::Skip(
            "selection is \"injected\" and the pod carries no injected sidecar".into(),
        ))
    }
}

/// The API path: read the pod and decide from its annotations and its `istio-proxy`
/// container ([`meshcap_model::pod`]), the same code `meshcap render -f` uses.
fn decide_from_api(
    config: &Config,
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
) -> Result<Decision, CommandError> {
    let client = kube::Client::from_kubeconfig(kubeconfig)?;
    let started = std::time::Instant::now();
    let pod = client.get_pod(namespace, name, config.kube_timeout)?;
    let view = PodView::from_pod(&pod).map_err(|source| CommandError::PodShape {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })?;
    tracing::info!(
        server = %client.server_url(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        has_istio_proxy = view.has_istio_proxy,
        native_sidecar = view.native_sidecar,
        proxy_uid = ?view.proxy_uid,
        proxy_gid = ?view.proxy_gid,
        "read the pod from the Kubernetes API"
    );
    if view.has_istio_init {
        tracing::warn!(
            "the pod also has an istio-init init container; inject with Istio's CNI mode so it is not added"
        );
    }
    match route_mesh(
        config,
        &mesh::claims(&pod),
        Some(namespace),
        Some(&pod),
        &view.annotations,
    )? {
        MeshRoute::Istio => {}
        MeshRoute::Skip(reason) => return Ok(Decision::Skip(reason)),
        MeshRoute::Other(m) => {
            let mut view = view;
            let mut api_server_ports = None;
            let mut from_namespace = Vec::new();
            if m == Mesh::Linkerd {
                let left = || config.kube_timeout.saturating_sub(started.elapsed());
                if mesh::linkerd::reads_namespace(&view.annotations) {
                    from_namespace = linkerd_namespace_defaults(
                        &client,
                        namespace,
                        left(),
                        &mut view.annotations,
                    )?;
                }
                if mesh::linkerd::is_control_plane(&view.labels) {
                    api_server_ports = linkerd_api_server_ports(&client, left());
                }
            }
            return Ok(Decision::Capture(Box::new(Capture {
                pod: view,
                source: "kubernetes-api",
                mesh: Some(m),
                spec_seen: true,
                api_server_ports,
                from_namespace,
            })));
        }
    }
    match view.selection(config.selection) {
        PodSelection::Skip(reason) => Ok(Decision::Skip(reason.to_string())),
        PodSelection::Capture => Ok(Decision::Capture(Box::new(Capture {
            pod: view,
            source: "kubernetes-api",
            mesh: None,
            spec_seen: true,
            api_server_ports: None,
            from_namespace: Vec::new(),
        }))),
    }
}

/// linkerd-cni's namespace defaults: each `config.linkerd.io/*` key it reads that the pod
/// leaves unset or empty comes from the pod's Namespace (`getAnnotationOverride`), read within
/// what is `left` of the API deadline. As with linkerd-cni, a Namespace that cannot be read
/// fails the ADD. The filled annotations are the pod's effective ones from here on: the record
/// keeps them, so the agent's repair reinstalls the same rules. Returns the keys filled.
fn linkerd_namespace_defaults(
    client: &kube::Client,
    namespace: &str,
    left: Duration,
    annotations: &mut Annotations,
) -> Result<Vec<&'static str>, CommandError> {
    let ns = client.get_namespace(namespace, left)?;
    let taken = mesh::linkerd::fill_from_namespace(annotations, &object_annotations(&ns));
    if taken.is_empty() {
        tracing::debug!(
            namespace,
            "the namespace states none of linkerd-cni's settings"
        );
    } else {
        tracing::info!(
            namespace,
            keys = %taken.join(", "),
            "settings the pod leaves unset taken from its namespace, as linkerd-cni"
        );
    }
    Ok(taken)
}

/// The ports a Linkerd control-plane pod skips outbound, as linkerd-cni reads them
/// (`getAPIServerPorts`): those of the `default/kubernetes` Service, read within what is `left`
/// of the API deadline. Any failure falls back to 443 and 6443, as linkerd-cni does, with a
/// warning.
fn linkerd_api_server_ports(client: &kube::Client, left: Duration) -> Option<Vec<u16>> {
    let read = client
        .get_service("default", "kubernetes", left)
        .map_err(|e| e.to_string())
        .and_then(|service| {
            mesh::linkerd::api_server_ports(&service)
                .ok_or_else(|| "it has no readable spec.ports".to_owned())
        });
    match read {
        Ok(ports) => {
            tracing::debug!(
                ?ports,
                "the API server's ports, from Service default/kubernetes"
            );
            Some(ports)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot read Service default/kubernetes: skipping ports 443 and 6443, as linkerd-cni"
            );
            None
        }
    }
}

/// The model of a captured pod and the front-end settings it was made from (kept in the
/// record for CHECK's families and the agent's repair), by [`mesh::resolve`], the step
/// `meshcap render -f` and the agent share. The log says which settings came from a node
/// default or the mesh's default rather than the pod (on the runtime path: every spec-derived
/// one). The pod's addresses come from the prevResult, read once; an Istio pod's address
/// families follow from them ([`mesh::istio::families_of`]); CHECK then takes the ones the record
/// says ADD installed. A Kuma `dualstack` pod without an IPv6 address there still gets IPv6
/// rules when `netns` holds one (kuma-cni's test, [`Dataplane::has_ipv6_address`]); the
/// namespace is opened only then.
fn model_for(
    config: &Config,
    args: &CniArgs,
    capture: &Capture,
    netns: Option<&mut PodNetnsOnDemand<'_>>,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<(RedirectModel, FrontEnd), CommandError> {
    let mesh_of_pod = capture.mesh.unwrap_or(Mesh::Istio);
    let addresses = result::pod_addresses(config.prev_result.as_ref())?;
    let seen = mesh::Seen {
        pod: &capture.pod,
        spec_seen: capture.spec_seen,
        namespace: args.k8s_pod_namespace.as_deref(),
        has_ipv6: addresses.iter().any(IpAddr::is_ipv6),
        api_server_ports: capture.api_server_ports.as_deref(),
    };
    let node = mesh::NodeSettings {
        istio: &config.istio_defaults,
        linkerd: &config.linkerd,
    };
    let front_end_error = |e| match e {
        FrontEndError::Annotation(e) if capture.from_namespace.contains(&e.annotation.as_str()) => {
            CommandError::Input(InputError {
                origin: format!(
                    "annotation {} of Namespace {}",
                    e.annotation,
                    seen.namespace.unwrap_or("-")
                ),
                value: e.value,
                reason: e.reason,
            })
        }
        FrontEndError::Annotation(e) => CommandError::Annotation(e),
        FrontEndError::Input(e) => CommandError::Input(e),
    };
    let mut resolved = mesh::resolve(mesh_of_pod, &seen, &node, read).map_err(front_end_error)?;
    if let Some(netns) = netns {
        let with_ipv6 = mesh::resolve_with_namespace_ipv6(mesh_of_pod, &seen, &node, read)
            .map_err(front_end_error)?;
        if let Some(with_ipv6) = with_ipv6 {
            if netns.has_ipv6_address()? {
                tracing::debug!(
                    "no IPv6 address in the prevResult, one in the namespace: IPv6 rules too, as kuma-cni"
                );
                resolved = with_ipv6;
            }
        }
    }
    if !resolved.defaulted.is_empty() {
        tracing::info!(
            source = capture.source,
            mesh = %mesh_of_pod,
            defaults = %resolved.defaulted.join("; "),
            "settings the pod did not state (or this path cannot see)"
        );
    }
    for w in &resolved.warnings {
        match capture.from_namespace.iter().find(|key| about(w, key)) {
            Some(_) => tracing::warn!(
                namespace = seen.namespace.unwrap_or("-"),
                "{w} (the value of the pod's Namespace)"
            ),
            None => tracing::warn!("{w}"),
        }
    }
    let mut model = resolved.model;
    if mesh_of_pod == Mesh::Istio {
        // Istio writes IPv6 rules only for a pod with an IPv6 address.
        model.families = mesh::istio::families_of(&addresses);
    }
    Ok((model, resolved.front_end))
}

/// [`mesh::installs_nothing`] for a captured pod (Istio when no other mesh claims it).
fn installs_nothing(capture: &Capture) -> Option<String> {
    mesh::installs_nothing(
        capture.mesh.unwrap_or(Mesh::Istio),
        &capture.pod.annotations,
    )
}

/// Whether a front end's warning is about annotation `key` (see [`mesh::Resolved::warnings`]).
fn about(warning: &str, key: &str) -> bool {
    warning
        .strip_prefix(key)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// The pod's namespace, opened the first time it is needed and kept for the rest of the
/// command.
struct PodNetnsOnDemand<'a> {
    path: &'a Path,
    mode: Mode,
    ns: Option<PodNetns>,
}

impl<'a> PodNetnsOnDemand<'a> {
    fn new(path: &'a Path, mode: Mode) -> Self {
        PodNetnsOnDemand {
            path,
            mode,
            ns: None,
        }
    }

    fn get(&mut self) -> Result<&PodNetns, CommandError> {
        if self.ns.is_none() {
            self.ns = Some(open_netns(self.path, self.mode)?);
        }
        Ok(self.ns.as_ref().expect("opened above"))
    }

    fn into_netns(mut self) -> Result<PodNetns, CommandError> {
        self.get()?;
        Ok(self.ns.take().expect("opened above"))
    }

    fn has_ipv6_address(&mut self) -> Result<bool, CommandError> {
        let error = dataplane_error(
            "reading the namespace's IPv6 addresses",
            self.mode,
            self.path,
        );
        dataplane::has_ipv6_address(self.get()?).map_err(error)
    }
}

/// How a command reports a dataplane failure of `op` on `netns`: a vanished namespace is an
/// error of its own.
fn dataplane_error<'a>(
    op: &'static str,
    mode: Mode,
    netns: &'a Path,
) -> impl Fn(DataplaneError) -> CommandError + 'a {
    move |source| match source {
        DataplaneError::NetnsVanished { path } => CommandError::NetnsVanished { path },
        source => CommandError::Dataplane {
            op,
            mode: mode.as_str(),
            netns: netns.to_owned(),
            source: Box::new(source),
        },
    }
}

fn open_netns(path: &Path, mode: Mode) -> Result<PodNetns, CommandError> {
    PodNetns::open(path).map_err(dataplane_error("opening the namespace", mode, path))
}

/// ADD and CHECK have a validated, non-empty `CNI_NETNS` ([`crate::env`]).
fn required_netns(env: &Env) -> &Path {
    env.netns.as_deref().unwrap_or(Path::new(""))
}

/// ADD: install the capture for a selected attachment and print the (converted) prevResult.
/// Nothing is applied when the prevResult or an annotation is invalid; a failure after the
/// rules went in removes them again.
pub fn add(inv: Invocation<'_>) -> Result<Value, CommandError> {
    let Invocation {
        env,
        args,
        config,
        state,
    } = inv;
    let mut phases = Phases::since_start();
    phases.mark("parse");
    let output = result::add_output(config.prev_result.as_ref(), config.cni_version)?;

    let capture = match decide(config, args)? {
        Decision::Skip(reason) => {
            tracing::info!(%reason, "not capturing; passing prevResult through");
            return Ok(output);
        }
        Decision::Capture(c) => c,
    };
    tracing::debug!(source = capture.source, "capturing");
    let netns = required_netns(env);
    let mode = config.mode;
    let mut pod_netns = PodNetnsOnDemand::new(netns, mode);
    let (model, front_end) = model_for(
        config,
        args,
        &capture,
        Some(&mut pod_netns),
        &mesh::read_node_file,
    )?;
    if let Some(reason) = installs_nothing(&capture) {
        tracing::info!(%reason, "not capturing; passing prevResult through");
        return Ok(output);
    }
    let rulesets = model.rulesets();
    phases.mark("selection");

    let ns = pod_netns.into_netns()?;
    phases.mark("netns");
    let dp = Dataplane::default().with_xtables_templates(config.iptables_templates);
    let dataplane_err = |op| dataplane_error(op, mode, netns);
    // The rules and the record change under the namespace's lock, so the agent's repair sees
    // both or neither.
    let locked = dp.lock(&ns).map_err(dataplane_err("apply"))?;
    // A retried ADD: what the first one created is still to be removed by DEL.
    let earlier = match state.read(&config.name, &env.container_id, &env.ifname) {
        Ok(Some(r)) if r.netns_dev == Some(ns.dev()) && r.netns_ino == Some(ns.ino()) => r.created,
        _ => Vec::new(),
    };
    let created = locked
        .apply(mode.backend(), &rulesets)
        .map_err(dataplane_err("apply"))?;
    phases.mark("apply");

    let mut record = AttachmentRecord {
        format: state::RECORD_FORMAT,
        network: config.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.to_owned(),
        mode,
        families: rulesets.iter().map(|r| r.family.to_string()).collect(),
        pod_namespace: args.k8s_pod_namespace.clone(),
        pod_name: args.k8s_pod_name.clone(),
        pod_uid: args.k8s_pod_uid.clone(),
        ebpf_registered: false,
        added_at_unix: state::now_unix(),
        // What `meshcap agent` needs to recompute these rules when it repairs drift.
        annotations: Some(capture.pod.annotations.clone()),
        proxy_uid: capture.pod.proxy_uid,
        proxy_gid: capture.pod.proxy_gid,
        istio_settings: None,
        linkerd_settings: None,
        kuma_settings: None,
        netns_dev: Some(ns.dev()),
        netns_ino: Some(ns.ino()),
        created: earlier,
    };
    record.set_front_end(front_end);
    record.add_created(created);
    if config.ebpf_enabled {
        // The fast path exempts the pod's one proxy uid (and gid, when its mesh exempts one)
        // and pairs sockets on its own capture ports; a pod with id lists keeps to the rules.
        match model.single_proxy_ids() {
            Some((uid, gid)) => {
                let proxy = fastpath::ProxyIdentity {
                    uid,
                    gid,
                    outbound_port: model.ports.outbound,
                    inbound_port: model.ports.inbound,
                };
                match fastpath::register_pod(&config.ebpf_pin_dir, &record, proxy) {
                    Ok(()) => record.ebpf_registered = true,
                    // docs/DESIGN.md: the fast path is optional; rules alone do the job.
                    Err(e) => tracing::warn!(error = %e, "continuing with rules only"),
                }
            }
            None => tracing::info!(
                uids = ?model.proxy_uids,
                gids = ?model.proxy_gids,
                "several proxy ids; the fast path takes one, continuing with rules only"
            ),
        }
    }
    if let Err(e) = state.write(&record) {
        // An ADD that fails must leave the namespace as it found it.
        if let Err(undo) = locked.remove(mode.backend(), &record.created_tables()) {
            tracing::error!(error = %undo, "removing the rules after a failed ADD also failed");
        }
        if record.ebpf_registered {
            if let Err(undo) = fastpath::unregister_pod(&config.ebpf_pin_dir, &record) {
                tracing::error!(error = %undo, "unregistering from the eBPF fast path after a failed ADD failed");
            }
        }
        return Err(e.into());
    }
    locked.settle();
    drop(locked);
    phases.mark("record");
    phases.log("ADD", mode.as_str());
    tracing::info!(
        mode = mode.as_str(),
        families = ?record.families,
        ebpf = record.ebpf_registered,
        "capture installed"
    );
    Ok(output)
}

/// DEL: remove everything ADD installed. Succeeds when ADD never ran, when run twice, when
/// the namespace is gone and when `CNI_NETNS` is empty (the rules died with the namespace).
pub fn del(inv: Invocation<'_>) -> Result<(), CommandError> {
    let Invocation {
        env,
        args,
        config,
        state,
    } = inv;
    let mut phases = Phases::since_start();
    phases.mark("parse");
    // The namespace, when there still is one, locked before the record is read: the rules and
    // the record go under the lock, so a repair running at the same time either finishes
    // first (and DEL removes what it put back) or finds no record (and leaves the pod alone).
    let dp = Dataplane::default();
    let mut namespace_gone = false;
    let ns = match &env.netns {
        None => {
            namespace_gone = true;
            None
        }
        Some(path) => match PodNetns::open(path) {
            Ok(ns) => Some(ns),
            Err(DataplaneError::NetnsVanished { .. }) => {
                namespace_gone = true;
                None
            }
            // A path that cannot be entered as a namespace holds no rules; failing here would
            // wedge the pod's teardown for good.
            Err(e) => {
                namespace_gone = true;
                tracing::warn!(error = %e, "cannot open the namespace; nothing to remove inside it");
                None
            }
        },
    };
    let locked = match &ns {
        Some(ns) => Some(dp.lock(ns).map_err(|source| CommandError::Dataplane {
            op: "remove",
            mode: config.mode.as_str(),
            netns: ns.path().to_owned(),
            source: Box::new(source),
        })?),
        None => None,
    };
    let record = match state.read(&config.name, &env.container_id, &env.ifname) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable attachment record");
            None
        }
    };
    // Without a record, remove whenever the pod may have been captured: a crash between the
    // rules and the record must not leave rules behind. Skipped pods are left alone so that
    // unmeshed pods never depend on the rule backend to terminate.
    let may_be_captured = record.is_some()
        || config
            .pod_annotations
            .as_ref()
            .is_some_and(|a| config.selection.opt_out_needs_labels(a))
        || match decide_with(config, args, ApiLookup::Never) {
            Ok(Decision::Skip(_)) => false,
            Ok(Decision::Capture(capture)) => installs_nothing(&capture).is_none(),
            Err(_) => true,
        };
    let mode = record.as_ref().map_or(config.mode, |r| r.mode);
    phases.mark("selection");
    // The path may name another namespace than ADD captured (a recycled /proc/PID/ns/net):
    // that one holds none of this pod's rules.
    let recycled = match (&ns, &record) {
        (Some(ns), Some(r)) => r
            .netns_dev
            .zip(r.netns_ino)
            .is_some_and(|id| id != (ns.dev(), ns.ino())),
        _ => false,
    };

    match (&locked, may_be_captured) {
        (_, false) => tracing::debug!("attachment was never captured; nothing to remove"),
        (None, true) => {
            tracing::info!("the namespace, and the rules in it, are gone")
        }
        (Some(_), true) if recycled => {
            namespace_gone = true;
            tracing::info!(
                "CNI_NETNS names another namespace than ADD captured; nothing to remove inside it"
            )
        }
        (Some(locked), true) => {
            let created = record
                .as_ref()
                .map(AttachmentRecord::created_tables)
                .unwrap_or_default();
            match locked.remove(mode.backend(), &created) {
                Ok(()) => tracing::info!(mode = mode.as_str(), "capture removed"),
                Err(DataplaneError::NetnsVanished { .. }) => {
                    tracing::info!("network namespace vanished during DEL")
                }
                Err(source) => {
                    return Err(CommandError::Dataplane {
                        op: "remove",
                        mode: mode.as_str(),
                        netns: env.netns.clone().unwrap_or_default(),
                        source: Box::new(source),
                    })
                }
            }
        }
    }

    // A legacy xtables lock file outlives the namespace unless DEL drops it (by the identity
    // ADD saw).
    if let Some((dev, ino)) = record
        .as_ref()
        .filter(|_| namespace_gone)
        .and_then(|r| r.netns_dev.zip(r.netns_ino))
    {
        if let Err(e) = dataplane::forget(meshcap_dataplane::NetnsId { dev, ino }) {
            tracing::warn!(error = %e, "could not remove the namespace's xtables lock file");
        }
    }
    let registered = match &record {
        Some(rec) => rec.ebpf_registered,
        // An ADD cut short between registering the pod and writing its record.
        None => may_be_captured && config.ebpf_enabled,
    };
    if registered {
        let unregistered =
            fastpath::unregister_attachment(&config.ebpf_pin_dir, &env.container_id, &env.ifname);
        // The record stays, so that something finishes the job: the agent's reclaim (once the
        // namespace's pin is gone) and CNI GC take it from there, where not every runtime runs
        // GC. Until then a repair may put rules back into this namespace, which is on its way
        // out and carries no traffic of the pod's any more.
        if let Err(e) = unregistered {
            tracing::warn!(
                error = %e,
                "could not unregister from the eBPF fast path; the record stays for the agent's reclaim and GC"
            );
            return Ok(());
        }
    }
    phases.mark("remove");
    state.remove(&config.name, &env.container_id, &env.ifname)?;
    phases.mark("record");
    phases.log("DEL", mode.as_str());
    Ok(())
}

/// CHECK: recompute the model from the same inputs as ADD and verify the namespace holds
/// exactly those rules.
pub fn check(inv: Invocation<'_>) -> Result<(), CommandError> {
    let Invocation {
        env,
        args,
        config,
        state,
    } = inv;
    require_version(Command::Check, config.cni_version, CniVersion::V0_4_0)?;
    let prev = config
        .prev_result
        .as_ref()
        .ok_or(CommandError::PrevResultRequired {
            command: Command::Check,
        })?;
    result::convert(prev, config.cni_version)?;

    let capture = match decide(config, args)? {
        Decision::Skip(reason) => {
            tracing::debug!(%reason, "not captured; nothing to check");
            return Ok(());
        }
        Decision::Capture(c) => c,
    };
    let record = state.read(&config.name, &env.container_id, &env.ifname);
    let netns = required_netns(env);
    let mode = config.mode;
    let mut pod_netns = PodNetnsOnDemand::new(netns, mode);
    let recorded = match &record {
        Ok(Some(rec)) => Some(Families::from_names(&rec.families)),
        _ => None,
    };
    // A Kuma pod's nameservers as ADD read them, kept in its record: the node's resolv.conf
    // may have changed since, and CHECK compares with what ADD installed (repair does too).
    let stored_nameservers = match &record {
        Ok(Some(rec)) => match rec.front_end() {
            Some(FrontEnd::Kuma(kuma)) => kuma.nameservers,
            _ => None,
        },
        _ => None,
    };
    let read = |path: &str| {
        mesh::kuma::stored_or_read(stored_nameservers.as_deref(), path, &mesh::read_node_file)
    };
    // With a record its families stand, so the namespace's addresses are not needed.
    let (mut model, _) = model_for(
        config,
        args,
        &capture,
        recorded.is_none().then_some(&mut pod_netns),
        &read,
    )?;
    if let Some(reason) = installs_nothing(&capture) {
        tracing::debug!(%reason, "not captured; nothing to check");
        return Ok(());
    }
    if let Some(families) = recorded {
        // The families ADD installed (a record of an earlier release lists both, whatever
        // addresses the pod has).
        model.families = families;
    }
    let rulesets = model.rulesets();
    let ns = pod_netns.into_netns()?;
    let other_error = dataplane_error("check", mode, netns);
    dataplane::check(&ns, mode.backend(), &rulesets).map_err(|source| match source {
        DataplaneError::Drift { details } => CommandError::Drift {
            netns: netns.to_owned(),
            details,
        },
        source => other_error(source),
    })?;
    match record {
        Ok(Some(_)) => {}
        // The rules are what the pod needs; a lost record only costs GC its bookkeeping.
        Ok(None) => tracing::warn!("rules are in place but the attachment record is missing"),
        Err(e) => {
            tracing::warn!(error = %e, "rules are in place but the attachment record is unreadable")
        }
    }
    tracing::debug!("capture verified");
    Ok(())
}

/// STATUS (CNI 1.1): ready when the configured backend can do its job. The optional eBPF
/// agent is never a reason to fail: an error here marks the whole node's network NotReady.
pub fn status(inv: Invocation<'_>) -> Result<(), CommandError> {
    let config = inv.config;
    require_version(Command::Status, config.cni_version, CniVersion::V1_1_0)?;
    dataplane::backend_ready(config.mode.backend()).map_err(|source| {
        CommandError::BackendNotReady {
            mode: config.mode.as_str(),
            source: Box::new(source),
        }
    })?;
    if config.ebpf_enabled {
        tracing::debug!("eBPF fast path availability is not part of STATUS");
    }
    Ok(())
}

/// GC (CNI 1.1): remove the records (and fast-path entries) of this network's attachments
/// that are not in `cni.dev/valid-attachments`. Keeps going past failures and reports them
/// all at the end.
pub fn gc(inv: Invocation<'_>) -> Result<(), CommandError> {
    let Invocation { config, state, .. } = inv;
    require_version(Command::Gc, config.cni_version, CniVersion::V1_1_0)?;
    let valid: BTreeSet<AttachmentKey> = config
        .valid_attachments
        .as_ref()
        .ok_or(CommandError::MissingValidAttachments)?
        .iter()
        .map(|a| AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();

    let mut failures = Vec::new();
    if let Err(e) = state.remove_stale_temps(&config.name) {
        failures.push(e.to_string());
    }
    let mut removed = 0usize;
    for entry in state.list(&config.name)? {
        let Some(key) = entry.key else { continue };
        if valid.contains(&key) {
            continue;
        }
        match state::read_record(&entry.path) {
            Ok(Some(rec)) if rec.ebpf_registered => {
                if let Err(e) = fastpath::unregister_pod(&config.ebpf_pin_dir, &rec) {
                    failures.push(format!("{}@{}: {e}", key.container_id, key.ifname));
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "removing an unreadable stale record"),
        }
        match state::remove_file(&entry.path) {
            Ok(_) => {
                removed += 1;
                tracing::info!(
                    container_id = %key.container_id,
                    ifname = %key.ifname,
                    "removed stale attachment record"
                );
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if config.ebpf_enabled {
        let pairs = valid
            .iter()
            .map(|k| (k.container_id.as_str(), k.ifname.as_str()));
        match fastpath::sweep(&config.ebpf_pin_dir, pairs) {
            Ok(n) if n > 0 => tracing::info!(entries = n, "removed stale eBPF fast path entries"),
            Ok(_) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    tracing::info!(removed, kept = valid.len(), "GC done");
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Gc { failures })
    }
}

fn require_version(
    command: Command,
    version: CniVersion,
    needs: CniVersion,
) -> Result<(), CommandError> {
    if version >= needs {
        Ok(())
    } else {
        Err(CommandError::VersionTooOld {
            command,
            version,
            needs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        let mut v = json!({"cniVersion": "1.1.0", "name": "net", "type": "meshcap-cni"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Config::parse(v.to_string().as_bytes()).unwrap()
    }

    fn k8s_args(ns: &str) -> CniArgs {
        CniArgs::parse(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p"
        ))
        .unwrap()
    }

    fn annotated(pairs: Value) -> Value {
        json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": pairs}})
    }

    #[test]
    fn excluded_namespace_wins_over_everything() {
        let c = config(json!({"exclude_namespaces": ["kube-system"], "selection": "all"}));
        // Even without annotations (which would otherwise fail closed).
        assert!(matches!(
            decide(&c, &k8s_args("kube-system")).unwrap(),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn kubernetes_pod_without_annotations_fails_closed() {
        for sel in ["injected", "all"] {
            let c = config(json!({"selection": sel}));
            let err = decide(&c, &k8s_args("default")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, CommandError::AnnotationsUnavailable { .. }));
            assert!(msg.contains("not passed by the runtime"), "{msg}");
            assert!(
                msg.contains("no kubernetes.kubeconfig is configured"),
                "{msg}"
            );
            assert!(msg.contains("default/p"), "{msg}");
        }
    }

    #[test]
    fn mesh_per_pod_conflict_disabled_and_excluded() {
        let l5d = json!({"linkerd.io/proxy-version": "stable"});
        let c = config(annotated(l5d.clone()));
        match decide(&c, &k8s_args("default")).unwrap() {
            Decision::Capture(cap) => {
                assert_eq!(cap.mesh, Some(Mesh::Linkerd));
                let (m, _) =
                    model_for(&c, &k8s_args("default"), &cap, None, &mesh::read_node_file).unwrap();
                assert_eq!((m.ports.inbound, m.ports.outbound), (4143, 4140));
                assert_eq!(m.chain_prefix, "MESHCAP_LINKERD");
            }
            other => panic!("{other:?}"),
        }
        // Two meshes: code 7, nothing applied.
        let both = json!({"linkerd.io/proxy-version": "stable", "sidecar.istio.io/status": "{}"});
        let err = decide(&config(annotated(both)), &k8s_args("default")).unwrap_err();
        assert!(matches!(err, CommandError::MeshConflict(_)), "{err}");
        assert_eq!(
            crate::boundary::code(&crate::boundary::PluginError::from(err)),
            7
        );
        // A mesh the node does not serve: left alone.
        let mut v = annotated(l5d);
        v["meshes"] = json!(["istio"]);
        assert!(matches!(
            decide(&config(v), &k8s_args("default")).unwrap(),
            Decision::Skip(r) if r.contains("linkerd")
        ));
        // Under `read_pod: meshed`, a pod the node does not capture is skipped without an API
        // read (the kubeconfig here names no file: a read would fail the ADD): one no mesh
        // claims on a node without Istio, and a Linkerd pod on a node that serves only Istio,
        // also under `selection: all`.
        for (annotations, meshes, why) in [
            (json!({}), json!(["linkerd"]), "istio"),
            (
                json!({"linkerd.io/proxy-version": "stable"}),
                json!(["istio"]),
                "linkerd",
            ),
        ] {
            let mut v = annotated(annotations);
            v["selection"] = json!("all");
            v["meshes"] = meshes;
            v["kubernetes"] =
                json!({"read_pod": "meshed", "kubeconfig": "/nonexistent/kubeconfig"});
            assert!(matches!(
                decide(&config(v), &k8s_args("default")).unwrap(),
                Decision::Skip(r) if r.contains(why)
            ));
        }
        // A pod no mesh claims is Istio's under `selection: all`, unless the node does not
        // serve Istio.
        for (meshes, captured) in [
            (json!(["linkerd", "kuma"]), false),
            (json!(["istio"]), true),
        ] {
            let mut v = annotated(json!({}));
            v["selection"] = json!("all");
            v["meshes"] = meshes.clone();
            match decide(&config(v), &k8s_args("default")).unwrap() {
                Decision::Capture(cap) => assert!(captured && cap.mesh.is_none(), "{meshes}"),
                Decision::Skip(r) => assert!(!captured && r.contains("istio"), "{meshes}: {r}"),
            }
        }
        // Kuma: its excluded namespaces, and its required config annotation.
        let kuma = json!({"kuma.io/sidecar-injected": "true"});
        let c = config(annotated(kuma));
        assert!(matches!(
            decide(&c, &k8s_args("kube-system")).unwrap(),
            Decision::Skip(_)
        ));
        let Decision::Capture(cap) = decide(&c, &k8s_args("default")).unwrap() else {
            panic!("kuma pod not captured");
        };
        assert!(matches!(
            model_for(&c, &k8s_args("default"), &cap, None, &mesh::read_node_file),
            Err(CommandError::Annotation(e)) if e.annotation == "traffic.kuma.io/transparent-proxy-config"
        ));
    }

    #[test]
    fn runtime_path_linkerd_control_plane_by_namespace_and_front_end_settings() {
        let l5d = json!({"linkerd.io/proxy-version": "stable"});
        let mut v = annotated(l5d);
        v["linkerd"] = json!({"proxy_uid": 3000, "control_plane_namespaces": ["l5d-system"]});
        let c = config(v);
        for (ns, control_plane) in [("l5d-system", true), ("default", false)] {
            let Decision::Capture(cap) = decide(&c, &k8s_args(ns)).unwrap() else {
                panic!("{ns}: not captured");
            };
            let (m, fe) = model_for(&c, &k8s_args(ns), &cap, None, &mesh::read_node_file).unwrap();
            let FrontEnd::Linkerd(s) = &fe else {
                panic!("{fe:?}");
            };
            assert_eq!(s.control_plane, control_plane, "{ns}");
            assert_eq!(s.node.proxy_uid, 3000);
            assert_eq!(m.proxy_uids, [3000]);
            let skips_api_server = m
                .exclude_outbound_port_ranges
                .iter()
                .any(|r| r.first == 6443);
            assert_eq!(skips_api_server, control_plane, "{ns}");
            // The recorded settings give the same model (the agent's repair).
            let mut w = Vec::new();
            let again = fe
                .model(&cap.pod.annotations, &|_| unreachable!(), &mut w)
                .unwrap();
            assert_eq!(again, m);
        }
    }

    #[test]
    fn selection_injected_and_all() {
        let none = CniArgs::default();
        let c = config(json!({}));
        assert!(matches!(decide(&c, &none).unwrap(), Decision::Skip(_)));
        let c = config(annotated(json!({"sidecar.istio.io/status": "{}"})));
        assert!(matches!(
            decide(&c, &k8s_args("default")).unwrap(),
            Decision::Capture(_)
        ));
        let c = config(annotated(
            json!({"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"}),
        ));
        assert!(matches!(
            decide(&c, &k8s_args("default")).unwrap(),
            Decision::Skip(_)
        ));
        // `all` captures a non-Kubernetes attachment with default (empty) annotations.
        let c = config(json!({"selection": "all"}));
        assert_eq!(
            decide(&c, &none).unwrap(),
            Decision::Capture(Box::new(Capture::annotations_only(
                Annotations::new(),
                "none"
            )))
        );
    }

    #[test]
    fn version_gates() {
        assert!(require_version(Command::Check, CniVersion::V0_4_0, CniVersion::V0_4_0).is_ok());
        let err = require_version(Command::Gc, CniVersion::V1_0_0, CniVersion::V1_1_0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GC needs cniVersion 1.1.0 or later; the configuration has 1.0.0"
        );
    }
}

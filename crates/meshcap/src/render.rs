//! `meshcap render`: the rules a pod would get, from annotations given as flags or a file,
//! or, with `-f FILE`, for every pod and pod template of a Kubernetes manifest
//! ([`manifests`]), decided and modelled by the same [`PodView`] code as the CNI plugin's
//! Kubernetes API path.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use meshcap_model::mesh::istio::{self, NodeDefaults};
use meshcap_model::mesh::{self, Mesh};
use meshcap_model::pod::{PodSelection, PodView};
use meshcap_model::render::{iptables, nftables};
use meshcap_model::{annotations, Annotations, Family, RedirectModel, Selection};
use serde_json::Value;

// The module sits next to main.rs; it is declared here so `-f` stays within render's files.
#[path = "manifests.rs"]
mod manifests;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// iptables-restore input (one block per family).
    Iptables,
    /// An nftables ruleset (`nft -f` input), as meshcap installs it over netlink.
    Nftables,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FamilyArg {
    V4,
    V6,
    Both,
}

#[derive(Args)]
pub struct RenderArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "iptables")]
    format: Format,
    /// Address families to render.
    #[arg(long, value_enum, default_value = "both")]
    family: FamilyArg,
    /// A pod annotation, KEY=VALUE (repeatable).
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// A file of annotations: a JSON or YAML map of strings (e.g. a pod's
    /// `.metadata.annotations`).
    #[arg(long, value_name = "FILE")]
    annotations_file: Option<PathBuf>,
    /// Pod selection as the plugin would apply it: with `injected` a pod without
    /// `sidecar.istio.io/status` (and, with `-f`, without an `istio-proxy` container) is
    /// reported as not captured. Default: `all` for annotations, `injected` (the plugin's
    /// default) with `-f`.
    #[arg(long, value_enum)]
    selection: Option<SelectionArg>,
    /// A Kubernetes manifest (YAML or JSON, several documents allowed; `-` for stdin): print,
    /// per Pod or pod template (Deployment, DaemonSet, StatefulSet, ReplicaSet, Job, CronJob,
    /// ...), whether meshcap would capture it and the rules it would get. A Namespace in the
    /// manifest gives its Linkerd pods the settings linkerd-cni reads from it.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with_all = ["annotations", "annotations_file"]
    )]
    filename: Option<PathBuf>,
    /// The node's `istio` defaults, as the plugin configuration's `istio` object (JSON, e.g.
    /// `{"dns_capture": true, "proxy_uids": [1337]}`): they apply where the pod (or, without
    /// `-f`, the annotations) does not state a setting, exactly as in the plugin.
    #[arg(long, value_name = "JSON")]
    node_defaults: Option<String>,
    /// The node's linkerd-cni settings, as the plugin configuration's `linkerd` object (JSON,
    /// e.g. `{"proxy_uid": 2102, "ipv6": true}`), for Linkerd pods.
    #[arg(long = "linkerd", value_name = "JSON")]
    linkerd: Option<String>,
    /// The node's kuma-cni settings, as the plugin configuration's `kuma` object (JSON, e.g.
    /// `{"exclude_namespaces": ["kube-system"]}`), for Kuma pods.
    #[arg(long = "kuma", value_name = "JSON")]
    kuma: Option<String>,
    /// The pod's namespace, for annotations without `-f` (a Linkerd pod in one of
    /// `linkerd.control_plane_namespaces` counts as a control-plane pod, as on the plugin's
    /// runtime path).
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "filename")]
    namespace: Option<String>,
}

impl RenderArgs {
    /// `--linkerd`, read as the plugin reads its `linkerd` object.
    fn linkerd_node(&self) -> anyhow::Result<mesh::linkerd::LinkerdNode> {
        match &self.linkerd {
            None => Ok(Default::default()),
            Some(text) => {
                serde_json::from_str(text).context("--linkerd (the plugin's `linkerd` object)")
            }
        }
    }

    /// `--kuma`, read as the plugin reads its `kuma` object.
    fn kuma_node(&self) -> anyhow::Result<mesh::kuma::KumaNode> {
        match &self.kuma {
            None => Ok(Default::default()),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("--kuma (the plugin's `kuma` object): {e}")),
        }
    }

    fn node_defaults(&self) -> anyhow::Result<NodeDefaults> {
        let Some(text) = &self.node_defaults else {
            return Ok(NodeDefaults::default());
        };
        let v: Value = serde_json::from_str(text).context("--node-defaults is not JSON")?;
        let Value::Object(obj) = v else {
            bail!("--node-defaults must be a JSON object (the plugin configuration's `istio`)");
        };
        Ok(NodeDefaults::from_json(&obj)?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SelectionArg {
    Injected,
    All,
}

impl SelectionArg {
    fn selection(self) -> Selection {
        match self {
            SelectionArg::Injected => Selection::Injected,
            SelectionArg::All => Selection::All,
        }
    }
}

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    // The node's settings are checked before anything is printed.
    args.linkerd_node()?;
    args.kuma_node()?;
    if let Some(path) = &args.filename {
        return run_manifest(args, path);
    }
    let mut annotations = Annotations::new();
    if let Some(path) = &args.annotations_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // JSON is YAML, so one parser reads both.
        let map: Annotations = serde_yaml::from_str(&text).with_context(|| {
            format!(
                "{} is not a map of annotation names to strings",
                path.display()
            )
        })?;
        annotations.extend(map);
    }
    for pair in &args.annotations {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--annotation {pair:?} is not KEY=VALUE");
        };
        annotations.insert(key.to_owned(), value.to_owned());
    }
    if let Some(m) =
        mesh::single(&mesh::claims_by_annotations(&annotations))?.filter(|m| *m != Mesh::Istio)
    {
        // A Linkerd or Kuma pod as the plugin's runtime path sees it: its annotations, with
        // the node's settings standing in for its spec.
        if m == Mesh::Kuma {
            if let Err(reason) = mesh::kuma::wants_annotations(&annotations) {
                println!("# not captured (kuma-cni would skip it): {reason}");
                return Ok(());
            }
        }
        let pod = PodView {
            annotations,
            ..PodView::default()
        };
        let seen = mesh::Seen {
            pod: &pod,
            spec_seen: false,
            namespace: args.namespace.as_deref(),
            has_ipv6: !matches!(args.family, FamilyArg::V4),
            api_server_ports: None,
        };
        let linkerd = args.linkerd_node()?;
        let istio = args.node_defaults()?;
        let node = mesh::NodeSettings {
            istio: &istio,
            linkerd: &linkerd,
        };
        let resolved = mesh::resolve(m, &seen, &node, &mesh::read_node_file)?;
        for w in &resolved.warnings {
            println!("# warning: {w}");
        }
        if let Some(reason) = mesh::installs_nothing(m, &pod.annotations) {
            println!("# not captured: {reason}");
            return Ok(());
        }
        println!("# captured ({m} pod, from its annotations)");
        print_control_plane(&resolved.front_end);
        print_rules(args, &resolved.model);
        return Ok(());
    }
    let selection = args.selection.unwrap_or(SelectionArg::All).selection();
    if selection.opt_out_needs_labels(&annotations) {
        println!(
            "# not captured, unless the pod's label sidecar.istio.io/inject opts in: istio-cni \
             prefers that label to the annotation (the plugin reads the pod's labels from the API \
             for such a pod; render -f a manifest to see them)"
        );
        return Ok(());
    }
    if !selection.wants_capture(&annotations) {
        println!(
            "# not captured: selection \"injected\" needs sidecar.istio.io/status and no \
             sidecar.istio.io/inject set to false"
        );
        return Ok(());
    }
    let pod = PodView {
        annotations,
        ..PodView::default()
    };
    let resolved = istio::resolve(&pod, &args.node_defaults()?)?;
    print_reading_notes(&pod.annotations);
    print_defaulted(&resolved.defaulted());
    print_rules(args, &resolved.model);
    Ok(())
}

/// Annotation values the rules read otherwise than they are written (as the plugin logs them).
fn print_reading_notes(pod_annotations: &Annotations) {
    for note in annotations::reading_notes(pod_annotations) {
        println!("# warning: {note}");
    }
}

/// What a Linkerd control-plane pod skips besides its settings, and where an ADD reads it.
fn print_control_plane(front_end: &mesh::FrontEnd) {
    if matches!(front_end, mesh::FrontEnd::Linkerd(s) if s.control_plane) {
        println!(
            "# control-plane pod: also skips outbound 443 and 6443 (linkerd-cni's fallback; an ADD \
             on the API path skips the ports of Service default/kubernetes, as linkerd-cni)"
        );
    }
}

/// The settings the pod did not state, and the default each took (as the plugin logs them).
fn print_defaulted(defaulted: &[String]) {
    if !defaulted.is_empty() {
        println!("# defaults: {}", defaulted.join("; "));
    }
}

/// `render -f`: one section per object, in file order. Objects without a pod are reported;
/// a pod template whose annotations are invalid (an ADD of its pods would fail with code 7)
/// is reported and makes the command fail after every object was printed.
fn run_manifest(args: &RenderArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let objects = manifests::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
    if objects.is_empty() {
        bail!("{} holds no Kubernetes object", path.display());
    }
    let defaults = args.node_defaults()?;
    let selection = args.selection.unwrap_or(SelectionArg::Injected).selection();
    let selection_name = match selection {
        Selection::Injected => "injected",
        Selection::All => "all",
    };
    // Namespaces by name, for the settings linkerd-cni reads from a Linkerd pod's namespace.
    let namespaces: BTreeMap<&str, &Annotations> = objects
        .iter()
        .filter_map(|o| match &o.content {
            manifests::Content::Namespace(a) => Some((o.name.as_deref()?, a)),
            _ => None,
        })
        .collect();
    let mut failed = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let title = obj.title();
        match &obj.content {
            manifests::Content::NoPod => {
                println!("# {title}: carries no pod; nothing to capture");
            }
            manifests::Content::Namespace(_) => {
                println!(
                    "# {title}: carries no pod; a Linkerd pod in it takes the config.linkerd.io/* \
                     settings it leaves unset from here, as linkerd-cni"
                );
            }
            manifests::Content::Invalid(reason) => {
                println!("# {title}: cannot read its pod: {reason}");
                failed.push(format!("{title}: {reason}"));
            }
            manifests::Content::Pod { from, pod, raw } => {
                println!("# {title} ({from})");
                let namespace = pod
                    .namespace
                    .as_deref()
                    .and_then(|ns| Some((ns, *namespaces.get(ns)?)));
                if let Err(e) = render_any_pod(
                    args,
                    pod,
                    raw,
                    namespace,
                    &defaults,
                    selection,
                    selection_name,
                ) {
                    println!("# error: {e}; an ADD of this pod fails (CNI code 7)");
                    failed.push(format!("{title}: {e}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} object(s) cannot be rendered: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// A pod of whichever mesh injected it: Linkerd and Kuma pods through their front ends with
/// the node defaults of the plugin config, everything else as an Istio pod. `namespace` is the
/// pod's Namespace and its annotations when the manifest holds it.
fn render_any_pod(
    args: &RenderArgs,
    pod: &PodView,
    raw: &serde_json::Value,
    namespace: Option<(&str, &Annotations)>,
    defaults: &NodeDefaults,
    selection: Selection,
    selection_name: &str,
) -> anyhow::Result<()> {
    let mesh = match mesh::single(&mesh::claims(raw))? {
        Some(Mesh::Linkerd) => {
            if let Err(reason) = mesh::linkerd::wants_pod(raw) {
                println!("# not captured (linkerd-cni would skip it): {reason}");
                return Ok(());
            }
            Mesh::Linkerd
        }
        Some(Mesh::Kuma) => {
            if let Err(reason) = mesh::kuma::wants_pod(raw, &args.kuma_node()?) {
                println!("# not captured (kuma-cni would skip it): {reason}");
                return Ok(());
            }
            Mesh::Kuma
        }
        Some(Mesh::Istio) | None => {
            return render_pod(
                args,
                pod,
                &pod_ips(raw),
                defaults,
                selection,
                selection_name,
            )
        }
    };
    let has_ipv6 = pod_ips(raw).iter().any(IpAddr::is_ipv6);
    let filled;
    let mut pod = pod;
    if mesh == Mesh::Linkerd && mesh::linkerd::reads_namespace(&pod.annotations) {
        match namespace {
            Some((name, ns_annotations)) => {
                let mut with_namespace = pod.clone();
                let taken = mesh::linkerd::fill_from_namespace(
                    &mut with_namespace.annotations,
                    ns_annotations,
                );
                if !taken.is_empty() {
                    println!(
                        "# from Namespace {name} (the pod leaves them unset, as linkerd-cni reads them): {}",
                        taken.join(", ")
                    );
                }
                filled = with_namespace;
                pod = &filled;
            }
            None => println!(
                "# note: linkerd-cni takes the config.linkerd.io/* settings the pod leaves unset \
                 from its Namespace; add the Namespace to the manifest to render them"
            ),
        }
    }
    let seen = mesh::Seen {
        pod,
        spec_seen: true,
        namespace: pod.namespace.as_deref(),
        has_ipv6,
        api_server_ports: None,
    };
    let linkerd = args.linkerd_node()?;
    let node = mesh::NodeSettings {
        istio: defaults,
        linkerd: &linkerd,
    };
    let read = mesh::read_node_file;
    let resolved = mesh::resolve(mesh, &seen, &node, &read)?;
    print_control_plane(&resolved.front_end);
    let (model, warnings) = (resolved.model, resolved.warnings);
    for w in &warnings {
        println!("# warning: {w}");
    }
    if let Some(reason) = mesh::installs_nothing(mesh, &pod.annotations) {
        println!("# not captured: {reason}");
        return Ok(());
    }
    println!(
        "# captured ({mesh} pod): proxy uid {} gid {}; inbound port {}, outbound port {}",
        or_none(join_ids(&model.proxy_uids)),
        or_none(join_ids(&model.proxy_gids)),
        model.ports.inbound,
        model.ports.outbound
    );
    // A manifest rarely has a status, and never the namespace's link-local addresses: say
    // when the pod's IPv6 rules hang on an address it does not show (Kuma's `dualstack`).
    if mesh::resolve_with_namespace_ipv6(mesh, &seen, &node, &read).is_ok_and(|r| r.is_some()) {
        println!(
            "# IPv6: no rules, as the manifest gives the pod no IPv6 address (status.podIPs); \
             at ADD it gets them too if its namespace has any IPv6 address but ::1, a \
             link-local one included (kuma-cni's test)"
        );
    }
    print_rules(args, &model);
    Ok(())
}

fn or_none(ids: String) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids
    }
}

/// The pod's addresses in a manifest read back from the API (`status.podIPs`, else
/// `status.podIP`); none for a template or a pod not yet started.
fn pod_ips(raw: &serde_json::Value) -> Vec<IpAddr> {
    let listed = raw
        .pointer("/status/podIPs")
        .and_then(|v| v.as_array())
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("ip").and_then(|v| v.as_str()))
                .collect::<Vec<_>>()
        })
        .filter(|ips| !ips.is_empty());
    let single = || {
        raw.pointer("/status/podIP")
            .and_then(|v| v.as_str())
            .into_iter()
            .collect()
    };
    listed
        .unwrap_or_else(single)
        .into_iter()
        .filter_map(|ip| ip.trim().parse().ok())
        .collect()
}

/// An Istio pod. `addresses` are the pod's own when the manifest has them: its families then
/// follow from them as in the plugin (a v4-only pod gets no ip6 rules); without them the
/// families are `--family`'s.
fn render_pod(
    args: &RenderArgs,
    pod: &PodView,
    addresses: &[IpAddr],
    defaults: &NodeDefaults,
    selection: Selection,
    selection_name: &str,
) -> anyhow::Result<()> {
    if let PodSelection::Skip(reason) = pod.selection(selection) {
        println!("# not captured (selection \"{selection_name}\"): {reason}");
        return Ok(());
    }
    let mut resolved = istio::resolve(pod, defaults)?;
    let families_note = (!addresses.is_empty()).then(|| {
        resolved.model.families = istio::families_of(addresses);
        let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
        format!(
            "# address families from status.podIPs ({}): {}",
            listed.join(", "),
            if resolved.model.families.v6 {
                "IPv4 and IPv6"
            } else {
                "IPv4 only"
            }
        )
    });
    let model = &resolved.model;
    let sidecar = if pod.native_sidecar {
        "istio-proxy native sidecar (init container, restartPolicy Always)"
    } else if pod.has_istio_proxy {
        "istio-proxy container"
    } else {
        "no istio-proxy container"
    };
    println!(
        "# captured (selection \"{selection_name}\"): {sidecar}; proxy uid {} gid {}",
        join_ids(&model.proxy_uids),
        join_ids(&model.proxy_gids)
    );
    print_reading_notes(&pod.annotations);
    print_defaulted(&resolved.defaulted());
    if let Some(note) = families_note {
        println!("{note}");
    }
    if pod.has_istio_init {
        println!(
            "# note: the template still has the privileged istio-init container; with meshcap, \
             inject in Istio's CNI mode (values.istio_cni.enabled=true) so it is not added"
        );
    }
    print_rules(args, model);
    Ok(())
}

/// The rules of `model` in the requested format and families, as `render` always printed them.
fn print_rules(args: &RenderArgs, model: &RedirectModel) {
    let families: &[Family] = match args.family {
        FamilyArg::V4 => &[Family::V4],
        FamilyArg::V6 => &[Family::V6],
        FamilyArg::Both => &Family::ALL,
    };
    // With both asked for, a family the pod gets no rules in is left out.
    let rulesets: Vec<_> = families
        .iter()
        .filter(|f| !matches!(args.family, FamilyArg::Both) || model.families.has(**f))
        .map(|f| model.ruleset(*f))
        .collect();
    match args.format {
        Format::Iptables => {
            for rs in &rulesets {
                let tool = match rs.family {
                    Family::V4 => "iptables-restore",
                    Family::V6 => "ip6tables-restore",
                };
                println!("# {} --noflush", tool);
                print!("{}", iptables::render(rs));
                print_policy_route(rs);
            }
        }
        Format::Nftables => {
            print!("{}", nftables::render(&rulesets));
            rulesets.iter().for_each(print_policy_route);
        }
    }
}

/// TPROXY's routing is not a netfilter rule; show it as the equivalent `ip` commands.
fn print_policy_route(rs: &meshcap_model::Ruleset) {
    if let Some(route) = rs.policy_route {
        let flag = match route.family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        println!(
            "# policy routing: ip {flag} rule add fwmark {} lookup {}; \
             ip {flag} route add local default dev lo table {}",
            route.mark, route.table, route.table
        );
    }
}

/// `1337` or `1337,1338`, as istio-iptables takes its id lists.
fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

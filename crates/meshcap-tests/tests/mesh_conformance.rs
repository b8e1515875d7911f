//! Peer conformance with Linkerd and Kuma: each fixture under `tests/peer/linkerd/` and
//! `tests/peer/kuma/` is a pod as `linkerd inject` or Kuma's injector prints it (`NAME.pod.yaml`)
//! and the rules that mesh's own CNI plugin installs for it (`NAME.rules`, iptables-save text
//! citing the peer's files). meshcap must give the same verdicts ([`meshcap_tests::peer`]: chain
//! names and cosmetic differences do not matter, any order that could change a verdict does)
//! through both renderers of the pod's model, through `meshcap render -f` of the pod in both
//! formats, and through a real ADD of the pod (its annotations passed by the runtime) in both
//! modes, read back from the namespace. Every fixture runs as a v4-only pod and as a
//! dual-stack pod, and through ADD also as a v4-only pod with a link-local IPv6 address: a
//! `NAME.rules` with a second block holds the IPv6 rules the peer adds for such pods (see
//! [`Fixture::expected`]); without one (or for a v4-only pod) the peer writes no IPv6 rules and
//! meshcap must write none either.
//!
//! Shared with the Istio suite: [`meshcap_tests::conformance`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshcap_model::mesh::{self, istio::NodeDefaults, linkerd::LinkerdNode, Mesh};
use meshcap_model::pod::PodView;
use meshcap_testkit::ScratchDir;
use meshcap_tests::conformance::{self, repo_root};
use meshcap_tests::peer::{Fam, Flat};
use serde_json::{json, Value};

/// Fixtures meshcap does not match yet, with why. Empty when every fixture matches.
const PENDING: &[(&str, &str)] = &[];

/// Both families are always compared: where the peer writes no IPv6 rules, meshcap's must be
/// empty too.
const FAMILIES: [Fam; 2] = [Fam::V4, Fam::V6];

/// The pod each fixture runs as, in every path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PodShape {
    V4Only,
    DualStack,
    /// A v4-only pod (no IPv6 address in the prevResult) whose namespace has an interface with
    /// the kernel's link-local IPv6 address, as a pod in an IPv4 cluster has where IPv6 is
    /// not switched off. Only a real ADD can show this pod.
    V4OnlyWithLinkLocal,
}

impl PodShape {
    /// The shapes the renderers and `render -f` can express.
    const ALL: [PodShape; 2] = [PodShape::V4Only, PodShape::DualStack];
    /// The shapes a real ADD runs as.
    const ADD: [PodShape; 3] = [
        PodShape::V4Only,
        PodShape::DualStack,
        PodShape::V4OnlyWithLinkLocal,
    ];

    fn has_ipv6(self) -> bool {
        self == PodShape::DualStack
    }

    fn name(self) -> &'static str {
        match self {
            PodShape::V4Only => "v4-only pod",
            PodShape::DualStack => "dual-stack pod",
            PodShape::V4OnlyWithLinkLocal => "v4-only pod with a link-local IPv6 address",
        }
    }

    /// The pod's addresses (what the primary plugin's prevResult and the pod's `status.podIPs`
    /// carry).
    fn addresses(self) -> &'static [&'static str] {
        match self {
            PodShape::V4Only | PodShape::V4OnlyWithLinkLocal => &["10.244.0.5"],
            PodShape::DualStack => &["10.244.0.5", "fd00:10:244::5"],
        }
    }

    /// The prevResult's `ips`.
    fn prev_result_ips(self) -> Vec<Value> {
        self.addresses()
            .iter()
            .map(|a| {
                let prefix = if a.contains(':') { 64 } else { 24 };
                json!({"address": format!("{a}/{prefix}"), "interface": 0})
            })
            .collect()
    }
}

struct Fixture {
    /// `linkerd/NAME` or `kuma/NAME`.
    name: String,
    mesh: Mesh,
    pod_file: PathBuf,
    /// The object of the manifest (a Pod, or a workload with a pod template).
    object: Value,
    /// The peer's IPv4 rules (the first block of `NAME.rules`).
    v4: Flat,
    /// The peer's IPv6 rules (the second block), if it writes any for this pod.
    v6: Option<Flat>,
    /// The plugin configuration's `linkerd` object (`NAME.linkerd.json`): the node's
    /// linkerd-cni settings, the chart's defaults when absent.
    linkerd: Option<Value>,
}

impl Fixture {
    /// The pod: the object itself, or its template with the object's namespace.
    fn pod(&self) -> Value {
        match self.object["kind"].as_str() {
            Some("Pod") => self.object.clone(),
            _ => {
                let mut pod = self.object["spec"]["template"].clone();
                if let Some(ns) = self.object.pointer("/metadata/namespace") {
                    pod["metadata"]["namespace"] = ns.clone();
                }
                pod
            }
        }
    }

    fn namespace(&self) -> String {
        self.pod()
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned()
    }

    /// The peer's rules for a pod of `shape`. kuma-cni writes its IPv6 rules only when the
    /// pod's namespace has an IPv6 address other than `::1` (a link-local one counts:
    /// `HasLocalIPv6` in kumahq/kuma@348b6528 pkg/transparentproxy/config/utils.go, called by
    /// `Config.Initialize` inside the namespace, app/cni/pkg/cni/injector_linux.go);
    /// linkerd-cni writes them whenever its `ipv6` setting is on.
    fn expected(&self, shape: PodShape) -> BTreeMap<Fam, Flat> {
        let namespace_has_ipv6 = shape != PodShape::V4Only;
        let v6 = match &self.v6 {
            Some(v6) if namespace_has_ipv6 || self.mesh == Mesh::Linkerd => v6.clone(),
            _ => Flat::new(),
        };
        [(Fam::V4, self.v4.clone()), (Fam::V6, v6)].into()
    }

    /// The node's linkerd-cni settings, as the plugin reads its `linkerd` object.
    fn linkerd_node(&self) -> LinkerdNode {
        self.linkerd
            .as_ref()
            .map_or_else(LinkerdNode::default, |v| {
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
            })
    }

    /// `name (shape)`: one case per fixture and pod shape.
    fn case(&self, shape: PodShape) -> String {
        format!("{} ({})", self.name, shape.name())
    }

    fn annotations(&self) -> Value {
        self.pod()
            .pointer("/metadata/annotations")
            .cloned()
            .unwrap_or_else(|| json!({}))
    }
}

/// Every fixture; a pod without rules or rules without a pod fails the test.
fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for (dir, mesh) in [("linkerd", Mesh::Linkerd), ("kuma", Mesh::Kuma)] {
        let path = repo_root().join("tests/peer").join(dir);
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for file in &names {
            if let Some(stem) = file.strip_suffix(".linkerd.json") {
                assert!(
                    mesh == Mesh::Linkerd && names.contains(&format!("{stem}.pod.yaml")),
                    "{dir}/{file}: linkerd settings for no Linkerd pod"
                );
                continue;
            }
            if let Some(stem) = file.strip_suffix(".rules") {
                assert!(
                    names.contains(&format!("{stem}.pod.yaml")),
                    "{dir}/{file} has no {stem}.pod.yaml"
                );
                continue;
            }
            let Some(stem) = file.strip_suffix(".pod.yaml") else {
                panic!("{dir}/{file}: not NAME.pod.yaml, NAME.rules or NAME.linkerd.json");
            };
            let rules = conformance::read_repo_file(&format!("tests/peer/{dir}/{stem}.rules"));
            let blocks = meshcap_tests::peer::parse_iptables_blocks(&rules)
                .unwrap_or_else(|e| panic!("{dir}/{stem}.rules: {e}"));
            assert!(
                matches!(blocks.len(), 1 | 2),
                "{dir}/{stem}.rules: an IPv4 block, then at most an IPv6 one"
            );
            let mut flat = blocks.iter().map(|b| {
                meshcap_tests::peer::flatten(b).unwrap_or_else(|e| panic!("{dir}/{stem}: {e}"))
            });
            let (v4, v6) = (flat.next().unwrap(), flat.next());
            let linkerd = path.join(format!("{stem}.linkerd.json")).exists().then(|| {
                let text =
                    conformance::read_repo_file(&format!("tests/peer/{dir}/{stem}.linkerd.json"));
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{dir}/{stem}: {e}"))
            });
            let pod_file = path.join(file);
            // One object (`linkerd inject` ends its output with a document separator).
            let text = std::fs::read_to_string(&pod_file).unwrap();
            let mut objects: Vec<Value> = Vec::new();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if !v.is_null() {
                    objects.push(v);
                }
            }
            assert_eq!(objects.len(), 1, "{dir}/{file}: one object");
            let object = objects.remove(0);
            out.push(Fixture {
                name: format!("{dir}/{stem}"),
                mesh,
                pod_file,
                object,
                v4,
                v6,
                linkerd,
            });
        }
    }
    // Every fixture the docs count (docs/CONFIGURATION.md): one that went missing fails here.
    let mut names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "kuma/dns-no-conntrack",
            "kuma/excludedports-allprotos",
            "kuma/excludedports-for-uids",
            "kuma/excludedports-onlyuid",
            "kuma/excludedports-wildcards",
            "kuma/exclusions-dns",
            "kuma/gateway-dualstack",
            "kuma/inject-34",
            "kuma/multiple-flags",
            "kuma/overrides",
            "kuma/vnet",
            "linkerd/cni-default",
            "linkerd/control-plane-identity",
            "linkerd/invalid-port-dropped",
            "linkerd/ipv6",
            "linkerd/multiport-split",
            "linkerd/redirect-listed",
            "linkerd/skip-annotations",
            "linkerd/skip-subnets-as-iptables-reads",
        ]
    );
    assert!(
        out.iter().any(|f| f.v6.is_some()),
        "no fixture has IPv6 rules: the dual-stack pods would compare nothing but empty sets"
    );
    out
}

fn compare(f: &Fixture, shape: PodShape, what: &str, actual: &BTreeMap<Fam, Flat>) -> Vec<String> {
    let peer = match f.mesh {
        Mesh::Linkerd => "linkerd-cni",
        _ => "kuma-cni",
    };
    let expected = f.expected(shape);
    conformance::compare(&f.case(shape), peer, &FAMILIES, what, &expected, actual)
}

/// Each pod's model (the front end every path shares) through both renderers.
#[test]
fn linkerd_and_kuma_fixtures_both_renderers() {
    let mut results = BTreeMap::new();
    for f in fixtures() {
        let pod = f.pod();
        let claims = mesh::claims(&pod);
        assert_eq!(claims, [f.mesh], "{}: claimed by {claims:?}", f.name);
        let view = PodView::from_pod(&pod).unwrap();
        for shape in PodShape::ALL {
            let seen = mesh::Seen {
                pod: &view,
                spec_seen: true,
                namespace: view.namespace.as_deref(),
                has_ipv6: shape.has_ipv6(),
                api_server_ports: None,
            };
            let linkerd = f.linkerd_node();
            let node = mesh::NodeSettings {
                istio: &NodeDefaults::default(),
                linkerd: &linkerd,
            };
            let resolved = mesh::resolve(f.mesh, &seen, &node, &|p| std::fs::read_to_string(p))
                .unwrap_or_else(|e| panic!("{}: {e}", f.case(shape)));
            let (ipt, nft) = conformance::renderings(&resolved.model, &FAMILIES);
            let mut diffs = compare(&f, shape, "iptables renderer", &ipt);
            diffs.extend(compare(&f, shape, "nftables renderer", &nft));
            results.insert(f.case(shape), diffs);
        }
    }
    conformance::judge("linkerd and kuma", PENDING, results);
}

/// `meshcap render -f` of each fixture's manifest, both formats: the manifest itself for the
/// v4-only pod (it has no status, so no IPv6 address), and for the dual-stack pod the pod with
/// a `status.podIPs` of both families, which is where `render -f` learns them.
#[test]
fn linkerd_and_kuma_fixtures_through_render_f() {
    let meshcap = match meshcap_tests::bins::meshcap() {
        Ok(p) => p,
        Err(e) => {
            return meshcap_tests::skip_or_fail(
                "linkerd_and_kuma_fixtures_through_render_f",
                &format!("no meshcap binary: {e}"),
            )
        }
    };
    let scratch = meshcap_testkit::ScratchDir::new("mesh-peer-render");
    let mut results = BTreeMap::new();
    for f in fixtures() {
        for shape in PodShape::ALL {
            let file = if shape.has_ipv6() {
                // A workload's pod template becomes the Pod it makes.
                let mut pod = f.pod();
                pod["apiVersion"] = json!("v1");
                pod["kind"] = json!("Pod");
                pod["status"]["podIPs"] = shape
                    .addresses()
                    .iter()
                    .map(|ip| json!({ "ip": ip }))
                    .collect();
                let file = scratch.0.join(format!("{}.json", f.name.replace('/', "-")));
                std::fs::write(&file, pod.to_string()).unwrap();
                file
            } else {
                f.pod_file.clone()
            };
            let linkerd = f.linkerd.as_ref().map(Value::to_string);
            let extra: Vec<&str> = match &linkerd {
                Some(json) => vec!["--linkerd", json],
                None => Vec::new(),
            };
            let text = conformance::render_f(&meshcap, &file, "iptables", "both", &extra);
            assert!(
                text.contains(&format!("# captured ({} pod)", f.mesh)),
                "{}: {text}",
                f.case(shape)
            );
            let ipt = conformance::flat_iptables_blocks(&text).unwrap();
            let nft_text = conformance::render_f(&meshcap, &file, "nftables", "both", &extra);
            let nft = conformance::flat_nft(&nft_text).unwrap();
            let mut diffs = compare(&f, shape, "render -f iptables", &ipt);
            diffs.extend(compare(&f, shape, "render -f nftables", &nft));
            results.insert(f.case(shape), diffs);
        }
    }
    conformance::judge("linkerd and kuma (render -f)", PENDING, results);
}

/// A real ADD per fixture, pod shape and mode: the runtime passes the pod's annotations (the
/// runtime-annotation path, with the node's default `linkerd` settings, the linkerd2-cni
/// chart's, which the fixtures assume) and the primary plugin's prevResult the pod's addresses;
/// the rules read back from the namespace give the peer's verdicts, and DEL leaves nothing.
#[test]
fn linkerd_and_kuma_fixtures_through_add() {
    const TEST: &str = "linkerd_and_kuma_fixtures_through_add";
    let Some(plugin) = privileged_plugin(TEST, &["ip", "iptables-save", "ip6tables-save", "nft"])
    else {
        return;
    };
    let state = ScratchDir::new("mesh-peer-add");
    let mut results = BTreeMap::new();
    for f in fixtures() {
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME=peer",
            f.namespace()
        );
        for shape in PodShape::ADD {
            let case = f.case(shape);
            let mut diffs = Vec::new();
            for mode in ["iptables", "nftables"] {
                let ns = meshcap_tests::netns::Netns::new("mpeer").unwrap();
                let path = ns.path().to_str().unwrap().to_owned();
                if shape == PodShape::V4OnlyWithLinkLocal {
                    // Both ends up: the kernel gives each a link-local address.
                    for args in [
                        &[
                            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
                        ][..],
                        &["link", "set", "eth0", "up"],
                        &["link", "set", "peer0", "up"],
                    ] {
                        ns.exec("ip", args).unwrap();
                    }
                    let addrs = ns
                        .exec("ip", &["-6", "addr", "show", "dev", "eth0"])
                        .unwrap();
                    assert!(addrs.contains("inet6 fe80::"), "{case}: {addrs}");
                }
                let mut config = peer_config(
                    mode,
                    &path,
                    &f.annotations(),
                    json!(shape.prev_result_ips()),
                );
                if let Some(linkerd) = &f.linkerd {
                    config["linkerd"] = linkerd.clone();
                }
                let add = conformance::invoke(
                    &plugin,
                    "ADD",
                    &path,
                    state.path(),
                    Some(&cni_args),
                    &config,
                );
                assert!(add.0, "{case} {mode}: ADD failed: {}", add.1);
                let actual = conformance::read_back(&ns, mode);
                diffs.extend(compare(&f, shape, &format!("ADD, {mode}"), &actual));
                // kuma-cni puts the inbound passthrough source ::6 on lo with its IPv6 rules;
                // linkerd-cni adds no address.
                let has_v6_rules = actual.get(&Fam::V6).is_some_and(|flat| !flat.is_empty());
                assert_eq!(
                    lo_has_passthrough_v6(&ns),
                    has_v6_rules && f.mesh == Mesh::Kuma,
                    "{case} {mode}: ::6/128 on lo"
                );
                let del = conformance::invoke(
                    &plugin,
                    "DEL",
                    &path,
                    state.path(),
                    Some(&cni_args),
                    &config,
                );
                assert!(del.0, "{case} {mode}: DEL failed: {}", del.1);
                let after = conformance::read_back(&ns, mode);
                assert!(
                    after.values().all(|flat| flat.is_empty()),
                    "{case} {mode}: rules left after DEL: {after:?}"
                );
                assert!(
                    !lo_has_passthrough_v6(&ns),
                    "{case} {mode}: ::6/128 left on lo after DEL"
                );
            }
            results.insert(case, diffs);
        }
    }
    conformance::judge("linkerd and kuma (ADD)", PENDING, results);
}

/// A Kuma pod whose config sets `dryRun: true` starts with nothing installed (kuma-cni prints
/// the rules instead), in both modes: ADD passes the prevResult through, CHECK has nothing to
/// check, the namespace holds no rule and no `::6` on lo, and DEL does not touch it.
#[test]
fn a_kuma_dry_run_starts_the_pod_with_nothing_installed() {
    const TEST: &str = "a_kuma_dry_run_starts_the_pod_with_nothing_installed";
    let Some(plugin) = privileged_plugin(TEST, &["ip", "iptables-save", "ip6tables-save", "nft"])
    else {
        return;
    };
    let state = ScratchDir::new("kuma-dry-run");
    let cni_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=dry";
    let annotations = json!({
        "kuma.io/sidecar-injected": "true",
        "traffic.kuma.io/transparent-proxy-config": "kumaDPUser: \"5678\"\ndryRun: true\n",
    });
    for mode in ["iptables", "nftables"] {
        let ns = meshcap_tests::netns::Netns::new("kdry").unwrap();
        let path = ns.path().to_str().unwrap().to_owned();
        let mut config = peer_config(
            mode,
            &path,
            &annotations,
            json!(PodShape::DualStack.prev_result_ips()),
        );
        config["log_level"] = json!("debug");
        let add = conformance::invoke(&plugin, "ADD", &path, state.path(), Some(cni_args), &config);
        assert!(add.0, "{mode}: ADD failed: {}", add.1);
        assert!(
            add.1.contains("dryRun"),
            "{mode}: the log says why: {}",
            add.1
        );
        let rules = conformance::read_back(&ns, mode);
        assert!(
            rules.values().all(|flat| flat.is_empty()),
            "{mode}: a dry run installed {rules:?}"
        );
        assert!(!lo_has_passthrough_v6(&ns), "{mode}: ::6/128 on lo");
        let check = conformance::invoke(
            &plugin,
            "CHECK",
            &path,
            state.path(),
            Some(cni_args),
            &config,
        );
        assert!(check.0, "{mode}: CHECK failed: {}", check.1);
        // DEL leaves the namespace alone, as for any pod that was never captured.
        let del = conformance::invoke(&plugin, "DEL", &path, state.path(), Some(cni_args), &config);
        assert!(del.0, "{mode}: DEL failed: {}", del.1);
        assert!(del.1.contains("never captured"), "{mode}: {}", del.1);
    }
}

/// A Kuma pod whose DNS capture is limited to the servers of a resolv.conf keeps the servers
/// ADD read: CHECK passes after the file changed (the rules are what ADD installed), and only
/// the nameservers of the file reach the attachment record, never the rest of it.
#[test]
fn a_kuma_pods_nameservers_are_the_ones_add_read() {
    const TEST: &str = "a_kuma_pods_nameservers_are_the_ones_add_read";
    let Some(plugin) = privileged_plugin(TEST, &["ip", "iptables-save", "ip6tables-save", "nft"])
    else {
        return;
    };
    let dir = ScratchDir::new("kuma-resolv");
    let state = dir.path().join("state");
    let resolv = dir.path().join("resolv.conf");
    let cni_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=dns";
    let annotations = json!({
        "kuma.io/sidecar-injected": "true",
        "traffic.kuma.io/transparent-proxy-config": format!(
            "kumaDPUser: \"5678\"\nredirect:\n  dns:\n    enabled: true\n    captureAll: false\n    resolvConfigPath: {}\n",
            resolv.display()
        ),
    });
    for mode in ["iptables", "nftables"] {
        std::fs::write(
            &resolv,
            "# a secret line\nsearch svc\nnameserver 10.96.0.10\n",
        )
        .unwrap();
        let ns = meshcap_tests::netns::Netns::new("kres").unwrap();
        let path = ns.path().to_str().unwrap().to_owned();
        let config = peer_config(
            mode,
            &path,
            &annotations,
            json!(PodShape::V4Only.prev_result_ips()),
        );
        let add = conformance::invoke(&plugin, "ADD", &path, &state, Some(cni_args), &config);
        assert!(add.0, "{mode}: ADD failed: {}", add.1);
        let records: Vec<String> = meshcap_tests::files_below(&state)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(records.len(), 1, "{mode}: {records:?}");
        assert!(records[0].contains("10.96.0.10"), "{mode}: {}", records[0]);
        assert!(!records[0].contains("secret"), "{mode}: {}", records[0]);
        // The node's file changes; the pod keeps the rules ADD installed.
        std::fs::write(&resolv, "nameserver 10.0.0.53\n").unwrap();
        let check = conformance::invoke(&plugin, "CHECK", &path, &state, Some(cni_args), &config);
        assert!(check.0, "{mode}: CHECK failed: {}", check.1);
        let del = conformance::invoke(&plugin, "DEL", &path, &state, Some(cni_args), &config);
        assert!(del.0, "{mode}: DEL failed: {}", del.1);
    }
}

/// The network configuration a runtime streams for a pod in `netns` whose annotations the
/// runtime passes and whose primary plugin gave it `ips`.
fn peer_config(mode: &str, netns: &str, annotations: &Value, ips: Value) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "peer", "type": "meshcap-cni", "mode": mode,
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": ips},
    })
}

/// The plugin binary for a privileged test that needs `tools`; `None` once the test was
/// skipped (or, under `CI=true`, failed) for want of root, a tool or the binary.
fn privileged_plugin(test: &str, tools: &[&str]) -> Option<PathBuf> {
    if let Some(why) = meshcap_tests::missing_root_or_tools(tools) {
        meshcap_tests::skip_or_fail(test, &why);
        return None;
    }
    match meshcap_tests::bins::meshcap_cni() {
        Ok(p) => Some(p),
        Err(e) => {
            meshcap_tests::skip_or_fail(test, &format!("no meshcap-cni: {e}"));
            None
        }
    }
}

/// Whether `lo` in `ns` holds `::6/128`, the IPv6 inbound passthrough source.
fn lo_has_passthrough_v6(ns: &meshcap_tests::netns::Netns) -> bool {
    ns.exec("ip", &["-6", "addr", "show", "dev", "lo"])
        .unwrap()
        .contains("inet6 ::6/128")
}

/// Traffic of a Kuma virtual network through the rules a real ADD installs, in both modes: a
/// container behind `docker0` in the pod (Docker in the pod, matched by the wildcard
/// `docker+`) reaches the proxy's outbound port when it dials out of its network, the
/// inbound port when it dials the pod within the network, and the DNS port with its DNS.
#[test]
fn kuma_virtual_network_traffic_goes_to_the_proxy() {
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    const TEST: &str = "kuma_virtual_network_traffic_goes_to_the_proxy";
    let Some(plugin) = privileged_plugin(TEST, &["ip", "iptables-save", "nft"]) else {
        return;
    };
    let state = ScratchDir::new("mesh-vnet");
    let config_yaml = "cniMode: true\nipFamilyMode: ipv4\nredirect:\n  vnet:\n    networks:\n    - docker+:172.17.0.0/16\n";
    let annotations = json!({
        "kuma.io/sidecar-injected": "true",
        "traffic.kuma.io/transparent-proxy-config": config_yaml,
    });
    // Accepts one connection within a second, if one came.
    let accepted = |listener: &TcpListener| {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match listener.accept() {
                Ok(_) => return true,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return false,
            }
        }
    };
    for mode in ["iptables", "nftables"] {
        let pod = meshcap_tests::netns::Netns::new("mvnet").unwrap();
        let container = meshcap_tests::netns::Netns::new("mvnetc").unwrap();
        pod.ip(&[
            "link", "add", "docker0", "type", "veth", "peer", "name", "c0",
        ])
        .unwrap();
        pod.ip(&["link", "set", "c0", "netns", container.name()])
            .unwrap();
        pod.ip(&["addr", "add", "172.17.0.1/16", "dev", "docker0"])
            .unwrap();
        pod.ip(&["link", "set", "docker0", "up"]).unwrap();
        container
            .ip(&["addr", "add", "172.17.0.2/16", "dev", "c0"])
            .unwrap();
        container.ip(&["link", "set", "c0", "up"]).unwrap();
        container
            .ip(&["route", "add", "default", "via", "172.17.0.1"])
            .unwrap();
        let listen = |port: u16| {
            pod.run(move || {
                let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .unwrap()
        };
        let (outbound, inbound) = (listen(15001), listen(15006));
        let dns = pod
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:15053").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s
            })
            .unwrap();
        let dial = |to: &str| {
            let to: SocketAddr = to.parse().unwrap();
            container
                .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
                .unwrap()
        };
        // Without the rules nothing is out there.
        assert!(
            !dial("10.99.0.1:80"),
            "{mode}: reached 10.99.0.1 before ADD"
        );

        let path = pod.path().to_str().unwrap().to_owned();
        let config = peer_config(
            mode,
            &path,
            &annotations,
            json!([{"address": "10.244.0.5/24", "interface": 0}]),
        );
        let cni_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vnet";
        let add = conformance::invoke(&plugin, "ADD", &path, state.path(), Some(cni_args), &config);
        assert!(add.0, "{mode}: ADD failed: {}", add.1);

        assert!(dial("10.99.0.1:80"), "{mode}: out of the network");
        assert!(accepted(&outbound), "{mode}: out of the network, at 15001");
        assert!(dial("172.17.0.1:8080"), "{mode}: within the network");
        assert!(accepted(&inbound), "{mode}: within the network, at 15006");
        assert!(
            !accepted(&outbound),
            "{mode}: within the network, not at 15001"
        );
        container
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(b"query", "10.99.0.1:53").unwrap();
            })
            .unwrap();
        let mut buf = [0u8; 16];
        let got = dns.recv_from(&mut buf);
        assert!(
            matches!(got, Ok((5, _))),
            "{mode}: DNS from the network at 15053: {got:?}"
        );

        let del = conformance::invoke(&plugin, "DEL", &path, state.path(), Some(cni_args), &config);
        assert!(del.0, "{mode}: DEL failed: {}", del.1);
    }
}

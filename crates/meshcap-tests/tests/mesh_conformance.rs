//! Peer conformance with Linkerd and Kuma: each fixture under `tests/peer/linkerd/` and
//! `tests/peer/kuma/` is a pod as `linkerd inject` or Kuma's injector prints it (`NAME.pod.yaml`)
//! and the rules that mesh's own CNI plugin installs for it (`NAME.rules`, iptables-save text
//! citing the peer's files). meshcap must give the same verdicts ([`meshcap_tests::peer`]: chain
//! names and cosmetic differences do not matter, any order that could change a verdict does)
//! through both renderers of the pod's model, through `meshcap render -f` of the pod in both
//! formats, and through a real ADD of the pod (its annotations passed by the runtime) in both
//! modes, read back from the namespace. The pods have no IPv6 address and the peers write no
//! IPv6 rules for them: meshcap must write none either.
//!
//! Shared with the Istio suite: [`meshcap_tests::conformance`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshcap_model::mesh::{self, istio::NodeDefaults, linkerd::LinkerdNode, Mesh};
use meshcap_model::pod::PodView;
use meshcap_tests::conformance::{self, repo_root};
use meshcap_tests::peer::{Fam, Flat};
use serde_json::{json, Value};

/// Fixtures meshcap does not match yet, with why. Empty when every fixture matches.
const PENDING: &[(&str, &str)] = &[];

/// Both families: the peers write IPv4 rules only for these pods, so meshcap's IPv6 rules must
/// be empty too.
const FAMILIES: [Fam; 2] = [Fam::V4, Fam::V6];

struct Fixture {
    /// `linkerd/NAME` or `kuma/NAME`.
    name: String,
    mesh: Mesh,
    pod_file: PathBuf,
    /// The object of the manifest (a Pod, or a workload with a pod template).
    object: Value,
    expected: BTreeMap<Fam, Flat>,
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
            if let Some(stem) = file.strip_suffix(".rules") {
                assert!(
                    names.contains(&format!("{stem}.pod.yaml")),
                    "{dir}/{file} has no {stem}.pod.yaml"
                );
                continue;
            }
            let Some(stem) = file.strip_suffix(".pod.yaml") else {
                panic!("{dir}/{file}: neither NAME.pod.yaml nor NAME.rules");
            };
            let rules = conformance::read_repo_file(&format!("tests/peer/{dir}/{stem}.rules"));
            let blocks = meshcap_tests::peer::parse_iptables_blocks(&rules)
                .unwrap_or_else(|e| panic!("{dir}/{stem}.rules: {e}"));
            assert_eq!(blocks.len(), 1, "{dir}/{stem}.rules: one (IPv4) block");
            let expected = [(Fam::V4, meshcap_tests::peer::flatten(&blocks[0]).unwrap())].into();
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
                expected,
            });
        }
    }
    assert!(out.len() >= 6, "fixtures found: {}", out.len());
    out
}

fn compare(f: &Fixture, what: &str, actual: &BTreeMap<Fam, Flat>) -> Vec<String> {
    let peer = match f.mesh {
        Mesh::Linkerd => "linkerd-cni",
        _ => "kuma-cni",
    };
    conformance::compare(&f.name, peer, &FAMILIES, what, &f.expected, actual)
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
        let seen = mesh::Seen {
            pod: &view,
            spec_seen: true,
            namespace: view.namespace.as_deref(),
            has_ipv6: false,
        };
        let node = mesh::NodeSettings {
            istio: &NodeDefaults::default(),
            linkerd: &LinkerdNode::default(),
        };
        let resolved = mesh::resolve(f.mesh, &seen, &node, &|p| std::fs::read_to_string(p))
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let (ipt, nft) = conformance::renderings(&resolved.model, &FAMILIES);
        let mut diffs = compare(&f, "iptables renderer", &ipt);
        diffs.extend(compare(&f, "nftables renderer", &nft));
        results.insert(f.name, diffs);
    }
    conformance::judge("linkerd and kuma", PENDING, results);
}

/// `meshcap render -f` of each fixture's manifest, both formats.
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
    let mut results = BTreeMap::new();
    for f in fixtures() {
        let text = conformance::render_f(&meshcap, &f.pod_file, "iptables", "both", &[]);
        assert!(
            text.contains(&format!("# captured ({} pod)", f.mesh)),
            "{}: {text}",
            f.name
        );
        let ipt = conformance::flat_iptables_blocks(&text).unwrap();
        let nft_text = conformance::render_f(&meshcap, &f.pod_file, "nftables", "both", &[]);
        let nft = conformance::flat_nft(&nft_text).unwrap();
        let mut diffs = compare(&f, "render -f iptables", &ipt);
        diffs.extend(compare(&f, "render -f nftables", &nft));
        results.insert(f.name, diffs);
    }
    conformance::judge("linkerd and kuma (render -f)", PENDING, results);
}

/// A real ADD per fixture and mode: the runtime passes the pod's annotations (the
/// runtime-annotation path, with the node's default `linkerd` settings, the linkerd2-cni
/// chart's, which the fixtures assume); the rules read back from the namespace give the peer's
/// verdicts, and DEL leaves nothing.
#[test]
fn linkerd_and_kuma_fixtures_through_add() {
    const TEST: &str = "linkerd_and_kuma_fixtures_through_add";
    if let Some(why) =
        meshcap_tests::missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"])
    {
        return meshcap_tests::skip_or_fail(TEST, &why);
    }
    let plugin = match meshcap_tests::bins::meshcap_cni() {
        Ok(p) => p,
        Err(e) => return meshcap_tests::skip_or_fail(TEST, &format!("no meshcap-cni: {e}")),
    };
    let state = std::env::temp_dir().join(format!("meshcap-mesh-peer-add-{}", std::process::id()));
    let mut results = BTreeMap::new();
    for f in fixtures() {
        let mut diffs = Vec::new();
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME=peer",
            f.namespace()
        );
        for mode in ["iptables", "nftables"] {
            let ns = meshcap_tests::netns::Netns::new("mpeer").unwrap();
            let path = ns.path().to_str().unwrap().to_owned();
            let config = json!({
                "cniVersion": "1.0.0", "name": "peer", "type": "meshcap-cni", "mode": mode,
                "runtimeConfig": {"io.kubernetes.cri.pod-annotations": f.annotations()},
                "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "sandbox": path}],
                    "ips": [{"address": "10.244.0.5/24", "interface": 0}]},
            });
            let add = conformance::invoke(&plugin, "ADD", &path, &state, Some(&cni_args), &config);
            assert!(add.0, "{} {mode}: ADD failed: {}", f.name, add.1);
            let actual = conformance::read_back(&ns, mode);
            diffs.extend(compare(&f, &format!("ADD, {mode}"), &actual));
            let del = conformance::invoke(&plugin, "DEL", &path, &state, Some(&cni_args), &config);
            assert!(del.0, "{} {mode}: DEL failed: {}", f.name, del.1);
            let after = conformance::read_back(&ns, mode);
            assert!(
                after.values().all(|flat| flat.is_empty()),
                "{} {mode}: rules left after DEL: {after:?}",
                f.name
            );
        }
        results.insert(f.name, diffs);
    }
    let _ = std::fs::remove_dir_all(&state);
    conformance::judge("linkerd and kuma (ADD)", PENDING, results);
}

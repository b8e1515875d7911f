//! Peer conformance with Istio: every case of istio-iptables' capture goldens and istio-cni's
//! plugin goldens ([`meshcap_tests::istio_cases`]) gives the same verdicts from meshcap, in
//! both renderers (iptables and nftables, both held to Istio's iptables behaviour), through
//! `meshcap render -f` of the case's pod, and through a real ADD with the pod's annotations
//! and the documented node defaults. Compared semantically ([`meshcap_tests::peer`]).
//!
//! Cases are listed, never silently dropped: [`Case::not_applicable`] says why a case cannot
//! apply to a CNI plugin; [`PENDING`] holds cases meshcap does not match yet, and the test
//! fails when one of them starts to match (move it out) or when any other case differs.

use std::collections::{BTreeMap, BTreeSet};

use meshcap_model::mesh::istio::{resolve, NodeDefaults};
use meshcap_model::pod::PodView;
use meshcap_model::Families;
use meshcap_testkit::ScratchDir;
use meshcap_tests::conformance::{self, read_repo_file, repo_root};
use meshcap_tests::istio_cases::{cases, Case, NFT_ONLY, ORPHAN_GOLDENS};
use meshcap_tests::peer::{self, Fam, Flat};
use serde_json::json;

/// Cases meshcap does not match yet ([`Case::id`]), with why. Empty when every applicable
/// case matches.
const PENDING: &[(&str, &str)] = &[];

/// Cases where Istio's two backends disagree (flattened), and why. meshcap follows Istio's
/// iptables backend there; docs/CONFIGURATION.md lists each with the flow behind the choice.
const ISTIO_BACKENDS_DIFFER: &[(&str, &str)] = &[
    ("drop-invalid", INVALID_TCP_ONLY),
    ("inbound-ports-include", INET_IPV6),
    ("inbound-ports-tproxy", TPROXY_NO_SOCKET),
    ("inbound-ports-wildcard", INET_IPV6),
    ("inbound-ports-wildcard-tproxy", TPROXY_NO_SOCKET),
    ("ip-range", INET_IPV6),
    ("kube-virt-interfaces", INET_IPV6),
    ("loopback-outbound-iprange", INET_IPV6),
    ("outbound-ports-include", INET_IPV6),
    ("tproxy", TPROXY_NO_SOCKET),
];

const TPROXY_NO_SOCKET: &str = "Istio's nftables `tproxy ... accept` accepts a packet for \
    which no transparent socket exists; iptables' TPROXY drops it (meshcap drops, in both backends)";
const INET_IPV6: &str = "Istio's nftables rules live in `inet` tables and capture IPv6 where \
    IPv6 is off; its iptables backend writes no ip6tables rules then (meshcap follows iptables)";
const INVALID_TCP_ONLY: &str = "Istio's nftables invalid drop matches TCP only (and lands in \
    the `inet` table); iptables' drops every invalid packet (meshcap follows iptables)";

/// Istio's expected rules per family, flattened.
fn expected(case: &Case) -> BTreeMap<Fam, Flat> {
    let text = case.adapt(&read_repo_file(&case.golden_path()));
    let blocks =
        peer::parse_iptables_blocks(&text).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut out = BTreeMap::new();
    for (fam, block) in [Fam::V4, Fam::V6].into_iter().zip(&blocks) {
        out.insert(fam, peer::flatten(block).unwrap());
    }
    assert_eq!(
        blocks.len(),
        if case.ipv6 { 2 } else { 1 },
        "{}: Istio's golden has {} family blocks",
        case.name,
        blocks.len()
    );
    out
}

fn families(case: &Case) -> Vec<Fam> {
    if case.ipv6 {
        vec![Fam::V4, Fam::V6]
    } else {
        vec![Fam::V4]
    }
}

/// Compares `actual` with Istio's in both families (a family Istio writes no rules for must
/// have none); the differences, labelled.
fn compare(
    case: &Case,
    what: &str,
    expected: &BTreeMap<Fam, Flat>,
    actual: &BTreeMap<Fam, Flat>,
) -> Vec<String> {
    conformance::compare(
        case.name,
        "Istio",
        &[Fam::V4, Fam::V6],
        what,
        expected,
        actual,
    )
}

fn applicable() -> Vec<Case> {
    cases()
        .into_iter()
        .filter(|c| c.not_applicable.is_none())
        .collect()
}

/// Checks the outcome per case against [`PENDING`]: a pending case must still differ, every
/// other case must match.
fn judge(results: BTreeMap<String, Vec<String>>) {
    conformance::judge("istio", PENDING, results);
}

fn model_of(case: &Case) -> meshcap_model::RedirectModel {
    let view = PodView::from_pod(&case.pod()).unwrap();
    let defaults = NodeDefaults::from_json(case.node_defaults().as_object().unwrap()).unwrap();
    let mut model = resolve(&view, &defaults)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
        .model;
    // The plugin learns the pod's families from the prevResult; here, from Istio's case.
    model.families = Families {
        v4: true,
        v6: case.ipv6,
    };
    model
}

/// Both renderers of the model of each case's pod, against Istio's iptables goldens.
#[test]
fn istio_goldens_both_renderers() {
    let mut results = BTreeMap::new();
    for case in applicable() {
        let exp = expected(&case);
        let model = model_of(&case);
        // The rulesets of the pod's families (an IPv4-only pod gets no IPv6 ones).
        let fams: Vec<Fam> = model
            .rulesets()
            .iter()
            .map(|rs| match rs.family {
                meshcap_model::Family::V4 => Fam::V4,
                meshcap_model::Family::V6 => Fam::V6,
            })
            .collect();
        let (ipt, nft) = conformance::renderings(&model, &fams);
        let mut diffs = compare(&case, "iptables renderer", &exp, &ipt);
        diffs.extend(compare(&case, "nftables renderer", &exp, &nft));
        results.insert(case.id(), diffs);
    }
    judge(results);
}

/// Istio's nftables backend against its iptables backend: where they agree, meshcap's
/// nftables rendering is also compared with Istio's nftables golden; where they differ, the
/// case must be listed in [`ISTIO_BACKENDS_DIFFER`] (and docs/CONFIGURATION.md).
#[test]
fn istio_nftables_goldens_where_istios_backends_agree() {
    let known: BTreeMap<&str, &str> = ISTIO_BACKENDS_DIFFER.iter().copied().collect();
    let mut differ = BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases() {
        let Some(path) = case.nft_golden_path() else {
            continue;
        };
        // Istio's two goldens as Istio wrote them.
        let ipt = expected(&Case {
            injector_status_ports: false,
            ..case.clone()
        });
        let nft_text = case.adapt(&read_repo_file(&path));
        let nft = conformance::flat_nft(&nft_text).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Both families, whether or not Istio's case has IPv6 on: Istio's `inet` tables hold
        // IPv6 rules where its iptables backend writes none.
        let both = Case {
            ipv6: true,
            ..case.clone()
        };
        let d = compare(&both, "Istio nftables vs Istio iptables", &ipt, &nft);
        if !d.is_empty() {
            differ.insert(case.name);
            if !known.contains_key(case.name) {
                failures.push(d.join("\n"));
            }
            continue;
        }
        // A case compared with the injector's status ports has them only in its adapted
        // iptables golden, never in Istio's nftables one.
        if case.not_applicable.is_some()
            || case.injector_status_ports
            || PENDING.iter().any(|(n, _)| *n == case.id())
        {
            continue;
        }
        let model = model_of(&case);
        let (_, ours) = conformance::renderings(&model, &families(&case));
        failures.extend(compare(
            &case,
            "meshcap nftables vs Istio nftables",
            &nft,
            &ours,
        ));
    }
    for name in known.keys() {
        if !differ.contains(name) {
            failures.push(format!(
                "{name}: Istio's backends now agree; take it out of ISTIO_BACKENDS_DIFFER"
            ));
        }
    }
    println!("Istio's backends differ in: {differ:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every case is either compared or listed with its reason; every golden has a case.
#[test]
fn every_istio_golden_is_accounted_for() {
    let all = cases();
    let mut goldens: BTreeSet<String> = BTreeSet::new();
    for dir in ["capture", "cni", "capture-nft"] {
        for e in std::fs::read_dir(repo_root().join("tests/peer/istio").join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.split('.').next().unwrap().to_owned();
            goldens.insert(format!("{dir}/{stem}"));
        }
    }
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for c in &all {
        let dir = match c.origin {
            meshcap_tests::istio_cases::Origin::Capture => "capture",
            meshcap_tests::istio_cases::Origin::Cni => "cni",
        };
        covered.insert(format!("{dir}/{}", c.golden));
        if c.nft_golden_path().is_some() {
            covered.insert(format!("capture-nft/{}", c.golden));
        }
        if let Some(why) = c.not_applicable {
            println!("not applicable to a CNI plugin: {}: {why}", c.name);
        }
        if c.injector_status_ports {
            println!(
                "compared with the status ports excluded: {}: {}",
                c.name,
                meshcap_tests::istio_cases::INJECTOR_STATUS_PORTS
            );
        }
    }
    for (name, why) in ORPHAN_GOLDENS {
        covered.insert(name.to_string());
        println!("no Istio case: {name}: {why}");
    }
    for (name, why) in NFT_ONLY {
        covered.insert(format!("capture-nft/{name}"));
        println!("istio-nftables only: {name}: {why}");
    }
    let missing: Vec<_> = goldens.difference(&covered).collect();
    assert!(missing.is_empty(), "goldens without a case: {missing:?}");
    let unknown: Vec<_> = covered.difference(&goldens).collect();
    assert!(unknown.is_empty(), "cases without a golden: {unknown:?}");

    // Istio's side: every golden of its redirect code at the cited commit (tests/peer/istio/
    // UPSTREAM) is a fixture here, citing that file, or is listed with why it is no sidecar
    // pod's capture; and every fixture is one of them.
    let upstream = std::fs::read_to_string(repo_root().join("tests/peer/istio/UPSTREAM")).unwrap();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut not_applicable = 0;
    for line in upstream.lines().filter(|l| !l.starts_with('#')) {
        let (path, what) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("UPSTREAM: no tab in {line:?}"));
        if let Some(why) = what.strip_prefix("n/a: ") {
            assert!(!why.trim().is_empty(), "UPSTREAM: {path} has no reason");
            not_applicable += 1;
            continue;
        }
        assert!(
            goldens.contains(what),
            "UPSTREAM: {path}: no fixture {what}"
        );
        let dir = repo_root()
            .join("tests/peer/istio")
            .join(what.split('/').next().unwrap());
        let stem = what.split('/').nth(1).unwrap();
        let fixture = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().split('.').next() == Some(stem))
            .unwrap();
        let head: String = std::fs::read_to_string(&fixture)
            .unwrap()
            .lines()
            .take(4)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            head.contains(&format!("{ISTIO_COMMIT} {path}")),
            "{} does not cite {path} at {ISTIO_COMMIT}",
            fixture.display()
        );
        assert!(listed.insert(what.to_owned()), "UPSTREAM: {what} twice");
    }
    let unlisted: Vec<_> = goldens.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "fixtures not in UPSTREAM: {unlisted:?}"
    );
    println!(
        "Istio's goldens: {} with a fixture here, {not_applicable} no sidecar pod's capture",
        listed.len()
    );
}

/// The Istio commit every fixture of tests/peer/istio cites.
const ISTIO_COMMIT: &str = "istio/istio@86c9f01fd735fb01d8192f5bcaf0d424afb7f14c";

/// `meshcap render -f` of each case's pod (with the case's node defaults), both formats.
#[test]
fn istio_goldens_through_render_f() {
    let meshcap = match meshcap_tests::bins::meshcap() {
        Ok(p) => p,
        Err(e) => {
            return meshcap_tests::skip_or_fail(
                "istio_goldens_through_render_f",
                &format!("no meshcap binary: {e}"),
            )
        }
    };
    let dir = ScratchDir::new("peer-render");
    let mut results = BTreeMap::new();
    for case in applicable() {
        let file = dir.path().join(format!("{}.yaml", case.name));
        std::fs::write(&file, case.pod().to_string()).unwrap();
        let family = if case.ipv6 { "both" } else { "v4" };
        let run = |format: &str| -> String {
            conformance::render_f(
                &meshcap,
                &file,
                format,
                family,
                &["--node-defaults", case.node_defaults],
            )
        };
        let exp = expected(&case);
        let text = run("iptables");
        assert!(text.contains("# captured"), "{}: {text}", case.name);
        let ipt = conformance::flat_iptables_blocks(&text).unwrap();
        let nft = conformance::flat_nft(&run("nftables")).unwrap();
        let mut diffs = compare(&case, "render -f iptables", &exp, &ipt);
        diffs.extend(compare(&case, "render -f nftables", &exp, &nft));
        results.insert(case.id(), diffs);
    }
    judge(results);
}

/// A real ADD per case and mode: the runtime passes the pod's annotations, the plugin
/// configuration carries the documented node defaults ([`Case::runtime_defaults`]); the rules
/// read back from the namespace with the stock tools give Istio's verdicts.
#[test]
fn istio_goldens_through_add() {
    if let Some(results) = through_add("istio_goldens_through_add", &applicable()) {
        judge(results);
    }
}

/// Each case's differences from Istio after a real ADD in each mode; `None` when the test
/// cannot run here (and may skip).
fn through_add(test: &str, cases: &[Case]) -> Option<BTreeMap<String, Vec<String>>> {
    if let Some(why) =
        meshcap_tests::missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"])
    {
        meshcap_tests::skip_or_fail(test, &why);
        return None;
    }
    let plugin = match meshcap_tests::bins::meshcap_cni() {
        Ok(p) => p,
        Err(e) => {
            meshcap_tests::skip_or_fail(test, &format!("no meshcap-cni: {e}"));
            return None;
        }
    };
    let state = ScratchDir::new(test);
    let mut results = BTreeMap::new();
    for case in cases {
        let mut diffs = Vec::new();
        let exp = expected(case);
        for mode in ["iptables", "nftables"] {
            let ns = meshcap_tests::netns::Netns::new("peer").unwrap();
            let path = ns.path().to_str().unwrap().to_owned();
            let mut ips = vec![json!({"address": "10.244.0.5/24", "interface": 0})];
            if case.ipv6 {
                ips.push(json!({"address": "fd00::5/64", "interface": 0}));
            }
            let config = json!({
                "cniVersion": "1.0.0", "name": "peer", "type": "meshcap-cni", "mode": mode,
                "istio": case.runtime_defaults(),
                "runtimeConfig": {"io.kubernetes.cri.pod-annotations": case.annotations()},
                "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "sandbox": path}], "ips": ips},
            });
            let add = conformance::invoke(&plugin, "ADD", &path, state.path(), None, &config);
            assert!(add.0, "{} {mode}: ADD failed: {}", case.name, add.1);
            let actual = conformance::read_back(&ns, mode);
            diffs.extend(compare(case, &format!("ADD, {mode}"), &exp, &actual));
            let del = conformance::invoke(&plugin, "DEL", &path, state.path(), None, &config);
            assert!(del.0, "{} {mode}: DEL failed: {}", case.name, del.1);
        }
        results.insert(case.id(), diffs);
    }
    Some(results)
}

/// Another spelling of an annotation value of Istio's cases that istio-cni accepts and that
/// reaches iptables-restore as the same rules: host bits in a CIDR (iptables clears them),
/// whitespace around list entries (istio-cni trims it, iptables-restore splits words on it),
/// ports with a leading 0 (iptables reads them as octal; istio-cni first reads them as
/// decimal, which must be at most 65535), an entry iptables never sees
/// (excluded inbound ports when only listed ports are captured).
fn respelled(value: &str) -> Option<&'static str> {
    Some(match value {
        "1.1.0.0/16" => "1.1.77.9/16",
        "9.9.0.0/16" => "9.9.1.1/16",
        "10.0.0.0/8" => "10.20.30.40/8",
        "2001:db8::/32" => "2001:db8:ff::1/32",
        "4000,5000" => " 07640 , 011610",
        "32000,31000" => " 32000 ,31000",
        "6000,7000" => " 6000,08, 7000 ",
        "eth0,eth1" => " eth0 , eth1",
        "eth1,eth2" => "eth1 ,eth2 ",
        "not-istio-nic" => " not-istio-nic ",
        _ => return None,
    })
}

/// Istio's cases again, with their annotations spelled as [`respelled`] gives (and, where the
/// pod reroutes virtual interfaces, the old annotation name holding a value istio-cni would
/// refuse, as it reads the old name only without the new one): through both renderers and a
/// real ADD in each mode, Istio's goldens still hold.
#[test]
fn istio_goldens_from_other_spellings_istio_accepts() {
    let mut cases = Vec::new();
    for case in applicable() {
        let mut changed = false;
        let mut annotations: Vec<(&'static str, &'static str)> = Vec::new();
        for &(key, value) in case.annotations {
            match respelled(value) {
                Some(other) => {
                    changed = true;
                    annotations.push((key, other));
                }
                None => annotations.push((key, value)),
            }
            if key == "istio.io/reroute-virtual-interfaces" {
                annotations.push(("traffic.sidecar.istio.io/kubevirtInterfaces", "not/a name"));
            }
        }
        if changed {
            cases.push(Case {
                annotations: Box::leak(annotations.into_boxed_slice()),
                ..case
            });
        }
    }
    assert!(cases.len() >= 12, "only {} cases respelled", cases.len());
    let mut results: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in &cases {
        let exp = expected(case);
        let model = model_of(case);
        let (ipt, nft) = conformance::renderings(&model, &families(case));
        let mut diffs = compare(case, "iptables renderer", &exp, &ipt);
        diffs.extend(compare(case, "nftables renderer", &exp, &nft));
        results.insert(case.id(), diffs);
    }
    let added = through_add("istio_goldens_from_other_spellings_istio_accepts", &cases);
    for (id, diffs) in added.into_iter().flatten() {
        results.entry(id).or_default().extend(diffs);
    }
    conformance::judge("istio respelled", &[], results);
}

/// Istio's nftables-only case (no iptables twin), TPROXY with no inbound ports, against
/// meshcap's nftables rendering of the same pod, in IPv4 (Istio's `inet` tables also hold
/// IPv6 rules where its iptables backend writes none, see [`INET_IPV6`]).
#[test]
fn istio_nftables_only_case_in_ipv4() {
    let case = Case {
        annotations: &[
            ("sidecar.istio.io/status", "{}"),
            ("traffic.sidecar.istio.io/includeInboundPorts", ""),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges", ""),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", ""),
            ("sidecar.istio.io/interceptionMode", "TPROXY"),
        ],
        ..meshcap_tests::istio_cases::cases()
            .into_iter()
            .find(|c| c.name == "empty")
            .unwrap()
    };
    let text = read_repo_file("tests/peer/istio/capture-nft/inbound-ports-empty-tproxy.nft");
    let istio = conformance::flat_nft(&text).unwrap()[&Fam::V4].clone();
    let model = model_of(&case);
    let (_, ours) = conformance::renderings(&model, &[Fam::V4]);
    let ours = ours[&Fam::V4].clone();
    // Not vacuous: Istio's rules hairpin the proxy to 15006 and mark the TPROXY loopback path.
    let shown = peer::show(&istio);
    assert!(
        shown.contains("redirect:15006") && shown.contains("mark:1338"),
        "{shown}"
    );
    let d = peer::diff(&istio, &ours);
    assert!(
        d.is_empty(),
        "{}\nIstio:\n{}meshcap:\n{}",
        d.join("\n"),
        peer::show(&istio),
        peer::show(&ours)
    );
}

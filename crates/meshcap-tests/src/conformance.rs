//! What every peer-conformance suite shares (Istio's in `tests/istio_conformance.rs`, Linkerd's
//! and Kuma's in `tests/mesh_conformance.rs`): the peer's expected rules and meshcap's rules,
//! each flattened by [`crate::peer`], compared per family; the verdict over all cases against a
//! list of pending ones; and the three ways meshcap's rules are obtained besides the renderers:
//! `meshcap render -f` of the case's pod, and a real ADD in a namespace, read back with
//! `iptables-save`/`ip6tables-save` or `nft list ruleset`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshcap_model::render::{iptables, nftables};
use meshcap_model::{Family, RedirectModel};
use serde_json::Value;

use crate::peer::{self, Fam, Flat};

/// The repository root (peer fixtures live under `tests/peer/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the repository, by its path from the root.
pub fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn model_family(f: Fam) -> Family {
    match f {
        Fam::V4 => Family::V4,
        Fam::V6 => Family::V6,
    }
}

/// iptables-save text holding one block per family (IPv4 first), flattened.
pub fn flat_iptables_blocks(text: &str) -> Result<BTreeMap<Fam, Flat>, String> {
    let blocks = peer::parse_iptables_blocks(text)?;
    [Fam::V4, Fam::V6]
        .into_iter()
        .zip(&blocks)
        .map(|(f, b)| Ok((f, peer::flatten(b)?)))
        .collect()
}

/// nftables text (meshcap's rendering, `nft list ruleset`, Istio's commands), flattened.
pub fn flat_nft(text: &str) -> Result<BTreeMap<Fam, Flat>, String> {
    peer::parse_nft(text)?
        .iter()
        .map(|(f, r)| Ok((*f, peer::flatten(r)?)))
        .collect()
}

/// `model` through meshcap's iptables renderer and its nftables renderer, for `families`.
pub fn renderings(
    model: &RedirectModel,
    families: &[Fam],
) -> (BTreeMap<Fam, Flat>, BTreeMap<Fam, Flat>) {
    let mut ipt = BTreeMap::new();
    for fam in families {
        let text = iptables::render(&model.ruleset(model_family(*fam)));
        let rules = peer::parse_iptables(&text).unwrap();
        ipt.insert(*fam, peer::flatten(&rules).unwrap());
    }
    let rulesets: Vec<_> = families
        .iter()
        .map(|f| model.ruleset(model_family(*f)))
        .collect();
    let nft = flat_nft(&nftables::render(&rulesets)).unwrap();
    (ipt, nft)
}

/// Compares `actual` with the peer's rules for `families`; the differences, labelled with the
/// case and `what` produced `actual`. `peer_name` names the expected side in messages.
pub fn compare(
    case: &str,
    peer_name: &str,
    families: &[Fam],
    what: &str,
    expected: &BTreeMap<Fam, Flat>,
    actual: &BTreeMap<Fam, Flat>,
) -> Vec<String> {
    let mut out = Vec::new();
    for fam in families {
        let empty = Flat::new();
        let e = expected.get(fam).unwrap_or(&empty);
        let a = actual.get(fam).unwrap_or(&empty);
        let d = peer::diff(e, a);
        if !d.is_empty() {
            out.push(format!(
                "{case} ({what}, {fam:?}):\n{}\n{peer_name}:\n{}meshcap:\n{}",
                d.join("\n"),
                peer::show(e),
                peer::show(a)
            ));
        }
    }
    out
}

/// Checks each case's differences against `pending` (cases meshcap does not match yet, with
/// why): a pending case must still differ, every other case must match. `suite` names the
/// suite in the summary line.
pub fn judge(suite: &str, pending: &[(&str, &str)], results: BTreeMap<String, Vec<String>>) {
    let pending: BTreeMap<&str, &str> = pending.iter().copied().collect();
    let mut failures = Vec::new();
    for (name, diffs) in &results {
        match (pending.contains_key(name.as_str()), diffs.is_empty()) {
            (false, false) => failures.push(diffs.join("\n")),
            (true, true) => failures.push(format!(
                "{name} now matches the peer: take it out of PENDING"
            )),
            _ => {}
        }
    }
    let matched = results.values().filter(|d| d.is_empty()).count();
    println!(
        "{suite} conformance: {matched} of {} cases match, {} pending",
        results.len(),
        pending.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `meshcap render -f FILE --format FORMAT --family FAMILY` plus `extra` arguments; panics with
/// the output when it fails.
pub fn render_f(meshcap: &Path, file: &Path, format: &str, family: &str, extra: &[&str]) -> String {
    let out = Command::new(meshcap)
        .args(["render", "-f"])
        .arg(file)
        .args(["--format", format, "--family", family])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: render -f: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the plugin as a runtime does (container id `peer-conformance`, ifname eth0), with
/// `cni_args` as `CNI_ARGS`; whether it succeeded, and its output.
pub fn invoke(
    plugin: &Path,
    command: &str,
    netns: &str,
    state: &Path,
    cni_args: Option<&str>,
    config: &Value,
) -> (bool, String) {
    let state = state.display().to_string();
    let mut env =
        meshcap_testkit::cni_env(command, "peer-conformance", netns, cni_args.unwrap_or(""));
    env.push(("MESHCAP_STATE_DIR", &state));
    let run = meshcap_testkit::run_plugin(plugin, &env, &config.to_string());
    (run.success(), run.output())
}

/// The rules a namespace holds, read back with the stock tools: `iptables-save` and
/// `ip6tables-save` in iptables mode, `nft list ruleset` in nftables mode; flattened.
pub fn read_back(ns: &crate::netns::Netns, mode: &str) -> BTreeMap<Fam, Flat> {
    if mode == "iptables" {
        let mut m = BTreeMap::new();
        for (fam, tool) in [(Fam::V4, "iptables-save"), (Fam::V6, "ip6tables-save")] {
            let text = ns.exec(tool, &[]).unwrap();
            m.insert(
                fam,
                peer::flatten(&peer::parse_iptables(&text).unwrap()).unwrap(),
            );
        }
        m
    } else {
        let text = ns.exec("nft", &["list", "ruleset"]).unwrap();
        flat_nft(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

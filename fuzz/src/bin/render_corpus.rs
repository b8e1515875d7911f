//! Renders a sample of the `render` fuzz target's corpus for the privileged check in
//! `scripts/fuzz.sh --validate`: for corpus file N, `N.v4.rules` and `N.v6.rules`
//! (`iptables-restore --noflush` input) and `N.nft` (`nft -f` input), plus a few fixed models
//! whose interface names carry every shell and nft metacharacter the parser admits.
//!
//! Usage: render_corpus CORPUS_DIR OUT_DIR [MAX]
use std::path::PathBuf;

use anyhow::{Context, Result};
use arbitrary::{Arbitrary, Unstructured};
use meshcap_fuzz::ModelInput;
use meshcap_model::render::{iptables, nftables};
use meshcap_model::{annotations as ann, Annotations, RedirectModel};

fn write(out: &std::path::Path, stem: &str, model: &RedirectModel) -> Result<()> {
    meshcap_fuzz::check_model(model);
    let rulesets = model.rulesets();
    for rs in &rulesets {
        let fam = match rs.family {
            meshcap_model::Family::V4 => "v4",
            meshcap_model::Family::V6 => "v6",
        };
        std::fs::write(
            out.join(format!("{stem}.{fam}.rules")),
            iptables::render(rs),
        )?;
    }
    std::fs::write(out.join(format!("{stem}.nft")), nftables::render(&rulesets))?;
    Ok(())
}

/// Annotations, then interface names to exclude and to reroute, set on the model directly.
type HostileModel = (
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    &'static [&'static str],
);

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let corpus = PathBuf::from(args.next().context("CORPUS_DIR")?);
    let out = PathBuf::from(args.next().context("OUT_DIR")?);
    let max: usize = args.next().map(|m| m.parse()).transpose()?.unwrap_or(200);
    std::fs::create_dir_all(&out)?;

    // Fixed hostile-but-valid models first. Istio's annotations admit only plain interface
    // names, so the hostile ones (valid for the kernel) go into the model directly.
    let hostile: [HostileModel; 2] = [
        (&[], &["a$(id)b", "`x`;y", "{}#!", "@x&|<>"], &[]),
        (
            &[
                (ann::INTERCEPTION_MODE, "TPROXY"),
                (
                    ann::INCLUDE_OUTBOUND_IP_RANGES,
                    "10.0.0.0/8,fd00::/8,127.0.0.1/32",
                ),
                (
                    ann::PROXY_CONFIG,
                    "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}",
                ),
            ],
            &[],
            &["net1;rm", "%s%n", "~^=?[]"],
        ),
    ];
    for (i, (pairs, excluded, rerouted)) in hostile.iter().enumerate() {
        let a: Annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut model =
            RedirectModel::from_annotations(&a).with_context(|| format!("fixed {i}"))?;
        model.exclude_interfaces = excluded.iter().map(|s| s.to_string()).collect();
        model.reroute_virtual_interfaces = rerouted.iter().map(|s| s.to_string()).collect();
        model.validate().with_context(|| format!("fixed {i}"))?;
        write(&out, &format!("fixed-{i}"), &model)?;
    }

    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    // An even sample over the sorted (hash-named) corpus.
    let step = files.len().div_ceil(max).max(1);
    let mut n = 0;
    for (i, file) in files.iter().enumerate().step_by(step) {
        let bytes = std::fs::read(file)?;
        // libfuzzer-sys decodes a typed input exactly like this.
        let Ok(input) = ModelInput::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        write(&out, &format!("c{i:05}"), &input.model())?;
        n += 1;
    }
    println!(
        "{} fixed + {n} corpus models rendered into {}",
        hostile.len(),
        out.display()
    );
    Ok(())
}

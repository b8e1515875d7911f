//! `meshcap render`: the rules a pod would get, from annotations given as flags or a file.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use meshcap_model::render::{iptables, nftables};
use meshcap_model::{Annotations, Family, RedirectModel, Selection};

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
    /// `sidecar.istio.io/status` is reported as not captured.
    #[arg(long, value_enum, default_value = "all")]
    selection: SelectionArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SelectionArg {
    Injected,
    All,
}

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let mut annotations = Annotations::new();
    if let Some(path) = &args.annotations_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?;
        // JSON is YAML, so one parser reads both.
        let map: Annotations = serde_yaml::from_str(&text).with_context(|| {
            format!("{} is not a map of annotation names to strings", path.display())
        })?;
        annotations.extend(map);
    }
    for pair in &args.annotations {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--annotation {pair:?} is not KEY=VALUE");
        };
        annotations.insert(key.to_owned(), value.to_owned());
    }
    let selection = match args.selection {
        SelectionArg::Injected => Selection::Injected,
        SelectionArg::All => Selection::All,
    };
    if !selection.wants_capture(&annotations) {
        println!(
            "# not captured: selection \"injected\" needs sidecar.istio.io/status and no \
             sidecar.istio.io/inject=\"false\""
        );
        return Ok(());
    }
    let model = RedirectModel::from_annotations(&annotations)?;
    let families: &[Family] = match args.family {
        FamilyArg::V4 => &[Family::V4],
        FamilyArg::V6 => &[Family::V6],
        FamilyArg::Both => &Family::ALL,
    };
    let rulesets: Vec<_> = families.iter().map(|f| model.ruleset(*f)).collect();
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
    Ok(())
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

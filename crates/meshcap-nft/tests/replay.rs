//! Privileged tests of xtables templates against the real kernel and the real
//! `iptables-nft-restore`: for every case of the model, in both families, what a restore writes
//! into one fresh namespace, read back and replayed into another, must leave the second one
//! exactly like the first (`iptables-save`, `nft list ruleset`, and the read-back itself).
//! Without root, `nft` or the iptables-nft programs the tests skip, saying so by name; under
//! `CI=true` they fail instead.

use anyhow::{Context, Result};
use meshcap_model::render::iptables::{restore_input, Installed};
use meshcap_model::rules::Family;
use meshcap_nft::replay::{capture, replay, Template};
use meshcap_testkit::ScratchNetns;

#[path = "../../meshcap-model/tests/cases/mod.rs"]
mod cases;

fn programs(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables-nft-restore", "iptables-nft-save"),
        Family::V6 => ("ip6tables-nft-restore", "ip6tables-nft-save"),
    }
}

/// `*-save` without its timestamped comment lines.
fn save(ns: &ScratchNetns, family: Family) -> Result<String> {
    let out = ns.exec(&[programs(family).1], None)?;
    Ok(out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn templates_of_every_case_replay_as_the_restore_wrote_them() -> Result<()> {
    let test = "templates_of_every_case_replay_as_the_restore_wrote_them";
    if !meshcap_testkit::gate::require_root_and_tools(
        test,
        &[
            "nft",
            "ip",
            "iptables-nft-restore",
            "iptables-nft-save",
            "ip6tables-nft-restore",
            "ip6tables-nft-save",
        ],
    ) {
        return Ok(());
    }
    let mut checked = 0;
    for case in cases::all() {
        for family in Family::ALL {
            let name = format!("{} {family}", case.name);
            let want = Installed::from_ruleset(&case.model.ruleset(family));
            let Some(input) = restore_input(&Installed::default(), &want) else {
                continue;
            };
            let tables: Vec<&str> = want.tables.keys().map(|t| t.name()).collect();
            let restored = ScratchNetns::new("repl-a")?;
            let replayed = ScratchNetns::new("repl-b")?;
            restored
                .exec(&[programs(family).0, "--noflush"], Some(&input))
                .with_context(|| format!("restore of {name}"))?;
            let template: Template = restored
                .run(|| capture(family, &tables))??
                .with_context(|| format!("{name}: nothing a template can carry"))?;
            assert!(template.rule_count() > 0, "{name}: no rules read back");
            replayed
                .run(|| replay(&[&template]))?
                .with_context(|| format!("replay of {name}"))?;
            assert_eq!(
                save(&replayed, family)?,
                save(&restored, family)?,
                "{name}: iptables-save"
            );
            assert_eq!(
                replayed.exec(&["nft", "list", "ruleset"], None)?,
                restored.exec(&["nft", "list", "ruleset"], None)?,
                "{name}: nft list ruleset"
            );
            assert_eq!(
                replayed.run(|| capture(family, &tables))??.as_ref(),
                Some(&template),
                "{name}: the replay reads back as the template"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2 * cases::CASES.len(),
        "only {checked} cases ran"
    );
    Ok(())
}

#[test]
fn a_template_is_refused_where_its_table_already_exists() -> Result<()> {
    let test = "a_template_is_refused_where_its_table_already_exists";
    if !meshcap_testkit::gate::require_root_and_tools(test, &["nft", "ip", "iptables-nft-restore"])
    {
        return Ok(());
    }
    let model = &cases::all()[0].model;
    let want = Installed::from_ruleset(&model.ruleset(Family::V4));
    let input = restore_input(&Installed::default(), &want).expect("rules");
    let restored = ScratchNetns::new("repl-c")?;
    restored.exec(&["iptables-nft-restore", "--noflush"], Some(&input))?;
    let template = restored
        .run(|| capture(Family::V4, &["nat"]))??
        .expect("template");
    // Another component's nat table, with a rule of its own.
    let taken = ScratchNetns::new("repl-d")?;
    taken.exec(
        &["iptables-nft-restore", "--noflush"],
        Some("*nat\n-A OUTPUT -d 192.0.2.1/32 -j RETURN\nCOMMIT\n"),
    )?;
    let before = taken.exec(&["nft", "list", "ruleset"], None)?;
    assert!(taken.run(|| replay(&[&template]))?.is_err());
    assert_eq!(taken.exec(&["nft", "list", "ruleset"], None)?, before);
    Ok(())
}

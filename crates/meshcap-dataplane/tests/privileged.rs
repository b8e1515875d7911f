//! Privileged tests of the dataplane against real network namespaces, real xtables programs
//! and real rtnetlink. Each test creates `dp-<test>-<pid>` with `ip netns add` and deletes it
//! on drop, also when the test fails. Without root the tests say so by name and pass, except
//! under `CI=true`, where they fail.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use ipnet::IpNet;
use meshcap_dataplane::{
    merge_created, Backend, CreatedTable, Dataplane, DataplaneError, Flavour, PodNetns,
};
use meshcap_model::rules::{
    Chain, Family, Hook, Match, PolicyRoute, Proto, Rule, Ruleset, Table, TableRules, Target,
};
use meshcap_testkit::{ScratchDir, ScratchNetns};

// ---------------------------------------------------------------------------------------
// Harness

/// Whether the test can run; prints the skip reason with the test name, or panics under CI.
fn privileged(test: &str) -> bool {
    meshcap_testkit::gate::require_root_and_tools(test, &["ip"])
}

/// What most tests start from: the gate, then a fresh namespace `tag`, an fd on it and a
/// dataplane; `None` when the test cannot run here.
fn pod(test: &str, tag: &str) -> Result<Option<(TestNs, PodNetns, Dataplane)>> {
    if !privileged(test) {
        return Ok(None);
    }
    let t = TestNs::new(tag)?;
    let ns = t.open()?;
    Ok(Some((t, ns, Dataplane::default())))
}

/// A scratch network namespace ([`ScratchNetns`]: `dp-<test>-<pid>-<n>`), deleted on drop.
struct TestNs {
    ns: ScratchNetns,
    name: String,
    path: PathBuf,
}

impl TestNs {
    fn new(test: &str) -> Result<TestNs> {
        // lo is up: the CNI loopback plugin brings it up in real pods; IPv6 local routes need it.
        let ns = ScratchNetns::new(&format!("dp-{test}"))?;
        Ok(TestNs {
            name: ns.name().to_owned(),
            path: ns.path().to_owned(),
            ns,
        })
    }

    fn open(&self) -> Result<PodNetns> {
        Ok(PodNetns::open(&self.path)?)
    }

    /// Runs `program args` inside the namespace (`ip netns exec`), returning stdout.
    fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec![program];
        argv.extend_from_slice(args);
        Ok(self.ns.exec(&argv, None)?)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        // Legacy operations that did not end in a remove leave the xtables lock file behind.
        if let Ok(ns) = PodNetns::open(&self.path) {
            let locks = Dataplane::default().run_dir().join("locks");
            let _ = fs::remove_file(locks.join(format!("xtables-{}", ns.id())));
        }
    }
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The inode of the calling thread's network namespace.
fn thread_netns_ino() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// The namespace's netfilter state as text to compare: both xtables flavours' save output of
/// both families and `nft list ruleset`, without comments (timestamps) and packet counters.
fn netfilter(t: &TestNs) -> Result<String> {
    let mut out = String::new();
    for prog in [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        out.push_str(&format!("## {prog}\n"));
        out.push_str(&t.ns.listing(&[prog])?);
    }
    out.push_str("## nft list ruleset\n");
    out.push_str(&t.exec("nft", &["list", "ruleset"])?);
    Ok(out)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

// ---------------------------------------------------------------------------------------
// Rulesets, built by hand from the IR

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A small REDIRECT capture: outbound TCP except to loopback goes to 15001; with `tproxy`,
/// inbound TCP to 8080 is TPROXYed to 15006 and policy routing is needed.
fn ruleset(family: Family, outbound_port: u16, tproxy: bool) -> Ruleset {
    let loopback = match family {
        Family::V4 => net("127.0.0.1/32"),
        Family::V6 => net("::1/128"),
    };
    let mut tables = Vec::new();
    if tproxy {
        tables.push(TableRules {
            table: Table::Mangle,
            chains: vec![Chain {
                name: "MESHCAP_PREROUTING".into(),
                hook: Some(Hook::Prerouting),
                rules: vec![Rule::new(
                    vec![
                        Match::Protocol(Proto::Tcp),
                        Match::DestPort {
                            ports: vec![8080],
                            negate: false,
                        },
                    ],
                    Target::Tproxy {
                        port: 15006,
                        mark: 1337,
                    },
                )],
            }],
        });
    }
    tables.push(TableRules {
        table: Table::Nat,
        chains: vec![
            Chain {
                name: "MESHCAP_OUTPUT".into(),
                hook: Some(Hook::Output),
                rules: vec![
                    Rule::new(
                        vec![Match::Destination {
                            net: loopback,
                            negate: false,
                        }],
                        Target::Return,
                    ),
                    Rule::new(
                        vec![Match::UidOwner {
                            uid: 1337,
                            negate: false,
                        }],
                        Target::Return,
                    ),
                    Rule::new(
                        vec![Match::Protocol(Proto::Tcp)],
                        Target::Jump("MESHCAP_REDIRECT".into()),
                    ),
                ],
            },
            Chain {
                name: "MESHCAP_REDIRECT".into(),
                hook: None,
                rules: vec![Rule::new(
                    vec![Match::Protocol(Proto::Tcp)],
                    Target::Redirect {
                        port: outbound_port,
                    },
                )],
            },
        ],
    });
    Ruleset {
        family,
        tables,
        policy_route: tproxy.then_some(PolicyRoute {
            family,
            mark: 1337,
            table: 133,
        }),
        passthrough_source: true,
    }
}

fn both(outbound_port: u16, tproxy: bool) -> Vec<Ruleset> {
    Family::ALL
        .into_iter()
        .map(|f| ruleset(f, outbound_port, tproxy))
        .collect()
}

// ---------------------------------------------------------------------------------------
// netns

#[test]
fn netns_run_enters_and_returns() -> Result<()> {
    if !privileged("netns_run_enters_and_returns") {
        return Ok(());
    }
    let t = TestNs::new("run")?;
    let ns = t.open()?;
    let home = thread_netns_ino();
    ensure!(ns.ino() != home, "test namespace is the host's");
    let inside = ns.run(thread_netns_ino)?;
    ensure!(
        inside == ns.ino(),
        "closure did not run in the pod namespace"
    );
    ensure!(thread_netns_ino() == home, "thread did not return");

    // A child spawned inside sees the pod namespace (it has only lo).
    let links = ns.run(|| sh("ip", &["-o", "link"]))??;
    ensure!(
        links.lines().count() == 1 && links.contains("lo:"),
        "{links}"
    );

    // A panic inside still switches back.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("boom")).unwrap();
    }));
    ensure!(caught.is_err());
    ensure!(
        thread_netns_ino() == home,
        "thread did not return after a panic"
    );

    // The identity is the same through another path of the same namespace.
    let again = ns.run(PodNetns::current_thread)??;
    ensure!(again.id() == ns.id());
    Ok(())
}

#[test]
fn netns_open_errors() -> Result<()> {
    if !privileged("netns_open_errors") {
        return Ok(());
    }
    let missing = format!("/run/netns/dp-missing-{}", std::process::id());
    match PodNetns::open(Path::new(&missing)) {
        Err(DataplaneError::NetnsVanished { path }) => ensure!(path == Path::new(&missing)),
        other => bail!("expected NetnsVanished, got {other:?}"),
    }
    match PodNetns::open(Path::new("/etc/hostname")) {
        Err(DataplaneError::NotNetns { .. }) => {}
        other => bail!("expected NotNetns, got {other:?}"),
    }
    // A mount namespace is nsfs but not a network namespace.
    match PodNetns::open(Path::new("/proc/self/ns/mnt")) {
        Err(DataplaneError::NotNetns { reason, .. }) => ensure!(reason.contains("CLONE_NEWNET")),
        other => bail!("expected NotNetns, got {other:?}"),
    }
    // Once `ip netns del` ran, the path is gone.
    let t = TestNs::new("vanish")?;
    let path = t.path.clone();
    drop(t);
    ensure!(matches!(
        PodNetns::open(&path),
        Err(DataplaneError::NetnsVanished { .. })
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// iptables mode

/// Apply, re-apply, check, drift, repair, remove, with whichever flavour `t` makes detection
/// pick; `save` lists what that flavour holds.
fn iptables_lifecycle(t: &TestNs, flavour: Flavour) -> Result<()> {
    let dp = Dataplane::default();
    let ns = t.open()?;
    let (save4, save6) = match flavour {
        Flavour::Legacy => ("iptables-legacy-save", "ip6tables-legacy-save"),
        _ => ("iptables-nft-save", "ip6tables-nft-save"),
    };
    let rules = both(15001, false);
    let before = netfilter(t)?;
    // What the applies created, as the plugin keeps it in the pod's record.
    let mut created: Vec<CreatedTable> = Vec::new();
    let mut apply = |rulesets: &[Ruleset]| -> Result<()> {
        merge_created(&mut created, dp.apply(&ns, Backend::Iptables, rulesets)?);
        Ok(())
    };

    apply(&rules)?;
    dp.check(&ns, Backend::Iptables, &rules)?;
    let v4 = t.exec(save4, &[])?;
    ensure!(
        count(
            &v4,
            "-A OUTPUT -m comment --comment \"meshcap rules format 2\" -j MESHCAP_OUTPUT"
        ) == 1,
        "{v4}"
    );
    ensure!(count(&v4, "--to-ports 15001") == 1, "{v4}");
    let v6 = t.exec(save6, &[])?;
    ensure!(
        count(&v6, "-A MESHCAP_OUTPUT -d ::1/128 -j RETURN") == 1,
        "{v6}"
    );

    // A retried ADD leaves one copy of everything.
    apply(&rules)?;
    apply(&rules)?;
    let v4 = t.exec(save4, &[])?;
    ensure!(
        count(
            &v4,
            "-A OUTPUT -m comment --comment \"meshcap rules format 2\" -j MESHCAP_OUTPUT"
        ) == 1,
        "{v4}"
    );
    ensure!(count(&v4, "-A MESHCAP_") == 4, "{v4}");
    dp.check(&ns, Backend::Iptables, &rules)?;

    // A different ruleset replaces the old one.
    let other = both(15111, false);
    apply(&other)?;
    let v4 = t.exec(save4, &[])?;
    ensure!(
        !v4.contains("15001") && count(&v4, "--to-ports 15111") == 1,
        "{v4}"
    );
    match dp.check(&ns, Backend::Iptables, &rules) {
        Err(DataplaneError::Drift { details }) => ensure!(!details.is_empty()),
        other => bail!("expected drift against the old ruleset, got {other:?}"),
    }
    apply(&rules)?;

    // Someone deletes a rule: CHECK reports it, ADD repairs it.
    let del = match flavour {
        Flavour::Legacy => "ip6tables-legacy",
        _ => "ip6tables-nft",
    };
    t.exec(del, &["-t", "nat", "-D", "MESHCAP_OUTPUT", "1"])?;
    match dp.check(&ns, Backend::Iptables, &rules) {
        Err(DataplaneError::Drift { details }) => {
            ensure!(details.iter().any(|d| d.contains("ipv6")), "{details:?}")
        }
        other => bail!("expected drift, got {other:?}"),
    }
    apply(&rules)?;
    dp.check(&ns, Backend::Iptables, &rules)?;

    // Only one family: the other one's chains go.
    apply(&rules[..1])?;
    ensure!(!t.exec(save6, &[])?.contains("MESHCAP"));
    dp.check(&ns, Backend::Iptables, &rules[..1])?;

    // Remove, twice; CHECK then expects nothing.
    dp.remove(&ns, Backend::Iptables, &created)?;
    // The legacy programs' lock file (XTABLES_LOCKFILE) goes with the rules.
    let lock = dp
        .run_dir()
        .join("locks")
        .join(format!("xtables-{}", ns.id()));
    ensure!(!lock.exists(), "{} left behind", lock.display());
    dp.remove(&ns, Backend::Iptables, &created)?;
    ensure!(!t.exec(save4, &[])?.contains("MESHCAP"));
    ensure!(!t.exec(save6, &[])?.contains("MESHCAP"));
    dp.check(&ns, Backend::Iptables, &[])?;
    ensure!(matches!(
        dp.check(&ns, Backend::Iptables, &rules),
        Err(DataplaneError::Drift { .. })
    ));
    // And the namespace is exactly as the first apply found it.
    let after = netfilter(t)?;
    ensure!(before == after, "before:\n{before}\nafter:\n{after}");
    Ok(())
}

#[test]
fn iptables_nft_flavour_lifecycle() -> Result<()> {
    if !privileged("iptables_nft_flavour_lifecycle") {
        return Ok(());
    }
    let t = TestNs::new("iptnft")?;
    iptables_lifecycle(&t, Flavour::Nft)?;
    // Nothing went to legacy.
    ensure!(!t.exec("iptables-legacy-save", &[])?.contains("MESHCAP"));
    Ok(())
}

#[test]
fn iptables_legacy_flavour_lifecycle() -> Result<()> {
    if !privileged("iptables_legacy_flavour_lifecycle") {
        return Ok(());
    }
    let t = TestNs::new("iptleg")?;
    // Someone else's legacy rules make the namespace a legacy one, per family; they use nat
    // too, so every table meshcap writes exists before (the kernel cannot remove a legacy
    // table: see `iptables_legacy_table_meshcap_instantiated_stays_inert`).
    t.exec(
        "iptables-legacy",
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT",
        ],
    )?;
    t.exec(
        "iptables-legacy",
        &["-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"],
    )?;
    t.exec("ip6tables-legacy", &["-t", "filter", "-N", "SOMEONE_ELSE"])?;
    t.exec("ip6tables-legacy", &["-t", "nat", "-N", "SOMEONE_ELSE_NAT"])?;
    iptables_lifecycle(&t, Flavour::Legacy)?;
    ensure!(!t.exec("iptables-nft-save", &[])?.contains("MESHCAP"));
    ensure!(!t.exec("ip6tables-nft-save", &[])?.contains("MESHCAP"));
    // The other component's rules are untouched.
    ensure!(t
        .exec("iptables-legacy-save", &[])?
        .contains("--dport 9 -j ACCEPT"));
    ensure!(t
        .exec("ip6tables-legacy-save", &[])?
        .contains(":SOMEONE_ELSE"));
    Ok(())
}

/// A fresh namespace (nft flavour): ADD's restore creates `ip nat`, `ip6 nat`, `ip mangle`
/// and `ip6 mangle` with their built-in chains; DEL given what ADD created leaves the
/// namespace exactly as it was, to the last table.
#[test]
fn iptables_del_removes_the_tables_add_created() -> Result<()> {
    let Some((t, ns, dp)) = pod("iptables_del_removes_the_tables_add_created", "created")? else {
        return Ok(());
    };
    let before = netfilter(&t)?;
    let rules = both(15001, true);
    // An apply whose caller never recorded what it created (killed before it settled): the
    // next apply reports those tables as created too (they are in the journal).
    let cut_short = dp.lock(&ns)?.apply(Backend::Iptables, &rules)?;
    ensure!(!cut_short.is_empty());
    let created = dp.apply(&ns, Backend::Iptables, &rules)?;
    ensure!(created == cut_short, "{created:?} {cut_short:?}");
    let tables: Vec<(Family, &str, bool)> = created
        .iter()
        .map(|c| (c.family, c.table.as_str(), c.whole_table))
        .collect();
    ensure!(
        tables.contains(&(Family::V4, "nat", true))
            && tables.contains(&(Family::V6, "mangle", true)),
        "{created:?}"
    );
    ensure!(t.exec("nft", &["list", "tables"])?.contains("table ip nat"));
    // A retried ADD, once the first one settled, creates nothing more.
    ensure!(dp.apply(&ns, Backend::Iptables, &rules)?.is_empty());
    dp.remove(&ns, Backend::Iptables, &created)?;
    let after = netfilter(&t)?;
    ensure!(before == after, "before:\n{before}\nafter:\n{after}");
    ensure!(t.exec("nft", &["list", "tables"])?.trim().is_empty());
    // A retried DEL is fine with nothing there.
    dp.remove(&ns, Backend::Iptables, &created)?;
    Ok(())
}

/// Another component's tables and chains stay, in the nft flavour: a table that existed before
/// ADD keeps its own chains (meshcap removes only the built-in chains it created), a built-in
/// chain meshcap created but another component put a rule into after ADD stays with that
/// rule, and a table meshcap created but another component added a chain to stays.
#[test]
fn iptables_del_keeps_what_another_component_uses() -> Result<()> {
    let Some((t, ns, dp)) = pod("iptables_del_keeps_what_another_component_uses", "shared")? else {
        return Ok(());
    };
    // Before ADD: another component's NAT rule (ip nat exists with POSTROUTING only).
    t.exec(
        "iptables-nft",
        &["-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"],
    )?;
    let rules = both(15001, true);
    let created = dp.apply(&ns, Backend::Iptables, &rules)?;
    let nat4 = created
        .iter()
        .find(|c| c.family == Family::V4 && c.table == "nat")
        .context("ip nat chains created")?;
    ensure!(!nat4.whole_table, "{created:?}");
    ensure!(nat4.chains == ["OUTPUT"], "{created:?}");
    // After ADD, the component uses a chain and a table meshcap created.
    t.exec(
        "iptables-nft",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.1",
            "-j",
            "RETURN",
        ],
    )?;
    t.exec("ip6tables-nft", &["-t", "mangle", "-N", "THEIRS"])?;
    dp.remove(&ns, Backend::Iptables, &created)?;

    let nat = t.exec("iptables-nft-save", &["-t", "nat"])?;
    ensure!(nat.contains("-A POSTROUTING -o lo -j RETURN"), "{nat}");
    ensure!(nat.contains("-A OUTPUT -d 192.0.2.1/32 -j RETURN"), "{nat}");
    ensure!(!nat.contains("MESHCAP"), "{nat}");
    // (iptables-nft-save shows built-in chains even where they do not exist: ask nft.)
    let mangle6 = t.exec("nft", &["list", "table", "ip6", "mangle"])?;
    ensure!(mangle6.contains("chain THEIRS"), "{mangle6}");
    ensure!(
        !mangle6.contains("chain PREROUTING"),
        "meshcap's empty PREROUTING stays:\n{mangle6}"
    );
    // ip mangle and ip6 nat were meshcap's alone: gone.
    let tables = t.exec("nft", &["list", "tables"])?;
    ensure!(
        !tables.contains("table ip mangle") && !tables.contains("table ip6 nat"),
        "{tables}"
    );
    ensure!(
        tables.contains("table ip nat") && tables.contains("table ip6 mangle"),
        "{tables}"
    );
    Ok(())
}

/// The legacy flavour: DEL leaves every legacy table another component uses as it was (see
/// `iptables_legacy_flavour_lifecycle`, which compares the whole namespace). A legacy table
/// meshcap's restore instantiated cannot be removed (the kernel keeps an ip_tables table until
/// the namespace goes; there is no call to drop it), so what stays is the table with its
/// built-in chains empty and accepting: nothing of meshcap's, nothing that matches a packet.
#[test]
fn iptables_legacy_table_meshcap_instantiated_stays_inert() -> Result<()> {
    let Some((t, ns, dp)) = pod(
        "iptables_legacy_table_meshcap_instantiated_stays_inert",
        "legnat",
    )?
    else {
        return Ok(());
    };
    t.exec(
        "iptables-legacy",
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT",
        ],
    )?;
    let filter_before = t.exec("iptables-legacy-save", &["-t", "filter"])?;
    let created = dp.apply(&ns, Backend::Iptables, &both(15001, false)[..1])?;
    ensure!(
        created.is_empty(),
        "legacy creates nothing in nf_tables: {created:?}"
    );
    ensure!(t.exec("iptables-legacy-save", &[])?.contains("MESHCAP"));
    dp.remove(&ns, Backend::Iptables, &created)?;
    let after = t.exec("iptables-legacy-save", &[])?;
    let nat: Vec<&str> = after
        .lines()
        .skip_while(|l| *l != "*nat")
        .take_while(|l| *l != "COMMIT")
        .skip(1)
        .collect();
    ensure!(
        !nat.is_empty(),
        "the kernel dropped a legacy table?\n{after}"
    );
    ensure!(
        nat.iter()
            .all(|l| l.starts_with(':') && l.contains(" ACCEPT ")),
        "legacy nat after DEL holds more than empty accepting built-in chains:\n{after}"
    );
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure!(strip(&t.exec("iptables-legacy-save", &["-t", "filter"])?) == strip(&filter_before));
    ensure!(!t.exec("nft", &["list", "ruleset"])?.contains("table"));
    Ok(())
}

/// A search directory with the real xtables programs except `ip6tables-nft-restore`, which
/// fails like a rejected ruleset; removed on drop.
fn broken_v6_tools(test: &str) -> Result<ScratchDir> {
    let scratch = ScratchDir::new(&format!("dp-{test}"));
    let dir = scratch.path();
    for prog in [
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft-save",
    ] {
        std::os::unix::fs::symlink(format!("/usr/sbin/{prog}"), dir.join(prog))?;
    }
    let wrapper = dir.join("ip6tables-nft-restore");
    fs::write(
        &wrapper,
        "#!/bin/sh\necho 'ip6tables-restore: line 2 failed (injected)' >&2\nexit 1\n",
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    Ok(scratch)
}

#[test]
fn iptables_v6_failure_rolls_back_v4() -> Result<()> {
    if !privileged("iptables_v6_failure_rolls_back_v4") {
        return Ok(());
    }
    let t = TestNs::new("rollback")?;
    let ns = t.open()?;
    let good = Dataplane::default();
    let tools = broken_v6_tools("rollback")?;
    let broken = Dataplane::default().with_search_path(vec![tools.path().to_owned()]);

    // From nothing: a failed ADD leaves nothing, policy routing included.
    let err = broken
        .apply(&ns, Backend::Iptables, &both(15001, true))
        .expect_err("v6 restore must fail");
    match &err {
        DataplaneError::Command { stderr, binary, .. } => {
            ensure!(stderr.contains("injected"), "{err}");
            ensure!(binary.ends_with("ip6tables-nft-restore"), "{err}");
        }
        other => bail!("expected the restore's error, got {other:?}"),
    }
    ensure!(!t.exec("iptables-nft-save", &[])?.contains("MESHCAP"));
    ensure!(!t.exec("ip", &["rule"])?.contains("lookup 133"));
    ensure!(t.exec("ip", &["route", "show", "table", "133"])?.is_empty());
    ensure!(!t.exec("ip", &["-6", "addr"])?.contains("::6/128"));
    // Nor the tables its restore created.
    let ruleset = t.exec("nft", &["list", "ruleset"])?;
    ensure!(ruleset.trim().is_empty(), "{ruleset}");

    // From an earlier ruleset: v4 goes back to it.
    let before = both(15001, false);
    good.apply(&ns, Backend::Iptables, &before[..1])?;
    ensure!(broken
        .apply(&ns, Backend::Iptables, &both(15222, false))
        .is_err());
    good.check(&ns, Backend::Iptables, &before[..1])?;
    let v4 = t.exec("iptables-nft-save", &[])?;
    ensure!(
        !v4.contains("15222") && count(&v4, "--to-ports 15001") == 1,
        "{v4}"
    );

    // Removing v4 only (v6 has nothing) needs no v6 restore, so it works.
    broken.remove(&ns, Backend::Iptables, &[])?;
    ensure!(!t.exec("iptables-nft-save", &[])?.contains("MESHCAP"));
    Ok(())
}

#[test]
fn iptables_invalid_rule_is_reported_and_rolled_back() -> Result<()> {
    let Some((t, ns, dp)) = pod(
        "iptables_invalid_rule_is_reported_and_rolled_back",
        "invalid",
    )?
    else {
        return Ok(());
    };
    let mut rules = both(15001, false);
    // REDIRECT is only valid in nat: the kernel (xt_REDIRECT) rejects it in mangle, in v6.
    rules[1].tables.push(TableRules {
        table: Table::Mangle,
        chains: vec![Chain {
            name: "MESHCAP_BAD".into(),
            hook: None,
            rules: vec![Rule::new(
                vec![Match::Protocol(Proto::Tcp)],
                Target::Redirect { port: 1 },
            )],
        }],
    });
    let err = dp
        .apply(&ns, Backend::Iptables, &rules)
        .expect_err("invalid v6 rule must fail");
    ensure!(
        matches!(err, DataplaneError::Command { .. }),
        "expected a restore error, got {err:?}"
    );
    ensure!(!t.exec("iptables-nft-save", &[])?.contains("MESHCAP"));
    ensure!(!t.exec("ip6tables-nft-save", &[])?.contains("MESHCAP"));
    let ruleset = t.exec("nft", &["list", "ruleset"])?;
    ensure!(ruleset.trim().is_empty(), "{ruleset}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// policy routing

#[test]
fn policy_routes_follow_the_rulesets() -> Result<()> {
    let Some((t, ns, dp)) = pod("policy_routes_follow_the_rulesets", "routes")? else {
        return Ok(());
    };
    let tproxy = both(15001, true);

    dp.apply(&ns, Backend::Iptables, &tproxy)?;
    dp.apply(&ns, Backend::Iptables, &tproxy)?;
    for v in ["-4", "-6"] {
        let rules = t.exec("ip", &[v, "rule"])?;
        ensure!(count(&rules, "fwmark 0x539 lookup 133") == 1, "{rules}");
        let routes = t.exec("ip", &[v, "route", "show", "table", "133"])?;
        ensure!(count(&routes, "local default dev lo") == 1, "{routes}");
    }
    ensure!(
        count(
            &t.exec("ip", &["-6", "addr", "show", "dev", "lo"])?,
            "inet6 ::6/128"
        ) == 1
    );
    dp.check(&ns, Backend::Iptables, &tproxy)?;

    // A vanished route is drift, and ADD puts it back.
    t.exec(
        "ip",
        &[
            "-6", "route", "del", "local", "default", "dev", "lo", "table", "133",
        ],
    )?;
    match dp.check(&ns, Backend::Iptables, &tproxy) {
        Err(DataplaneError::Drift { details }) => {
            ensure!(details.iter().any(|d| d.contains("route")), "{details:?}")
        }
        other => bail!("expected drift, got {other:?}"),
    }
    dp.apply(&ns, Backend::Iptables, &tproxy)?;
    dp.check(&ns, Backend::Iptables, &tproxy)?;

    // Without TPROXY there is no policy routing; ::6 stays while there is a v6 ruleset.
    let redirect = both(15001, false);
    dp.apply(&ns, Backend::Iptables, &redirect)?;
    ensure!(!t.exec("ip", &["rule"])?.contains("lookup 133"));
    ensure!(!t.exec("ip", &["-6", "rule"])?.contains("lookup 133"));
    ensure!(t.exec("ip", &["route", "show", "table", "133"])?.is_empty());
    ensure!(t.exec("ip", &["-6", "addr"])?.contains("::6/128"));
    dp.check(&ns, Backend::Iptables, &redirect)?;
    ensure!(matches!(
        dp.check(&ns, Backend::Iptables, &tproxy),
        Err(DataplaneError::Drift { .. })
    ));

    // Remove takes everything.
    dp.apply(&ns, Backend::Iptables, &tproxy)?;
    dp.remove(&ns, Backend::Iptables, &[])?;
    ensure!(!t.exec("ip", &["rule"])?.contains("lookup 133"));
    ensure!(!t.exec("ip", &["-6", "rule"])?.contains("lookup 133"));
    ensure!(t
        .exec("ip", &["-6", "route", "show", "table", "133"])?
        .is_empty());
    ensure!(!t.exec("ip", &["-6", "addr"])?.contains("::6/128"));
    // The main table's rules are untouched.
    ensure!(t.exec("ip", &["rule"])?.contains("lookup main"));
    Ok(())
}

/// kuma-cni's "has a local IPv6 address": anything but `::1`, the kernel's link-local
/// address of an interface that came up included.
#[test]
fn ipv6_address_test_counts_link_local_but_not_loopback() -> Result<()> {
    let Some((t, ns, dp)) = pod(
        "ipv6_address_test_counts_link_local_but_not_loopback",
        "v6addr",
    )?
    else {
        return Ok(());
    };
    ensure!(t.exec("ip", &["-6", "addr"])?.contains("::1/128"));
    ensure!(!dp.has_ipv6_address(&ns)?, "only ::1 on lo");

    // A veth pair inside the namespace: both ends up, so the kernel gives each a link-local
    // address (tentative until DAD ends, which counts too).
    t.exec(
        "ip",
        &["link", "add", "v6a", "type", "veth", "peer", "name", "v6b"],
    )?;
    t.exec("ip", &["link", "set", "v6a", "up"])?;
    t.exec("ip", &["link", "set", "v6b", "up"])?;
    ensure!(t
        .exec("ip", &["-6", "addr", "show", "dev", "v6a"])?
        .contains("inet6 fe80::"));
    ensure!(dp.has_ipv6_address(&ns)?, "a link-local address counts");

    // An interface whose IPv6 is off has none.
    t.exec("sysctl", &["-qw", "net.ipv6.conf.v6a.disable_ipv6=1"])?;
    t.exec("sysctl", &["-qw", "net.ipv6.conf.v6b.disable_ipv6=1"])?;
    ensure!(!dp.has_ipv6_address(&ns)?, "IPv6 off on both ends");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// inspect, readiness, concurrency

#[test]
fn inspect_shows_what_is_installed() -> Result<()> {
    let Some((_t, ns, dp)) = pod("inspect_shows_what_is_installed", "inspect")? else {
        return Ok(());
    };
    let empty = dp.inspect(&ns)?;
    ensure!(!empty.has_meshcap_state(), "{empty}");
    ensure!(
        empty.to_string().contains("no meshcap state found"),
        "{empty}"
    );

    dp.apply(&ns, Backend::Iptables, &both(15001, true))?;
    let full = dp.inspect(&ns)?;
    let text = full.to_string();
    eprintln!("{text}");
    ensure!(full.has_meshcap_state(), "{text}");
    ensure!(
        text.contains("ipv4 (nft, used by iptables mode, rules format 2):"),
        "{text}"
    );
    ensure!(
        text.contains(
            "-A OUTPUT -m comment --comment \"meshcap rules format 2\" -j MESHCAP_OUTPUT"
        ),
        "{text}"
    );
    ensure!(text.contains("*mangle"), "{text}");
    ensure!(
        text.contains("ip -6 rule fwmark 0x539 lookup 133"),
        "{text}"
    );
    ensure!(text.contains("::6/128"), "{text}");
    dp.remove(&ns, Backend::Iptables, &[])?;
    Ok(())
}

#[test]
fn backend_ready_finds_xtables() -> Result<()> {
    if !privileged("backend_ready_finds_xtables") {
        return Ok(());
    }
    Dataplane::default().backend_ready(Backend::Iptables)?;
    let nowhere = Dataplane::default().with_search_path(vec![PathBuf::from("/nonexistent")]);
    match nowhere.backend_ready(Backend::Iptables) {
        Err(DataplaneError::BinaryMissing { program, searched }) => {
            ensure!(program.contains("iptables-nft-save") && searched == "/nonexistent")
        }
        other => bail!("expected BinaryMissing, got {other:?}"),
    }
    Ok(())
}

#[test]
fn parallel_pods_and_racing_add_del() -> Result<()> {
    if !privileged("parallel_pods_and_racing_add_del") {
        return Ok(());
    }
    let pods: Vec<TestNs> = (0..3)
        .map(|i| TestNs::new(&format!("par{i}")))
        .collect::<Result<_>>()?;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|t| {
                // Per pod: an ADD, a retried ADD and a DEL racing each other.
                (0..3).map(move |op| {
                    s.spawn(move || -> Result<()> {
                        let ns = t.open()?;
                        let dp = Dataplane::default();
                        match op {
                            2 => dp.remove(&ns, Backend::Iptables, &[])?,
                            _ => drop(dp.apply(&ns, Backend::Iptables, &both(15001, true))?),
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread panicked")?;
        }
        Ok(())
    })?;
    // Whatever the order, each namespace holds either all of it or nothing.
    for t in &pods {
        let ns = t.open()?;
        let dp = Dataplane::default();
        let full = dp.check(&ns, Backend::Iptables, &both(15001, true));
        let none = dp.check(&ns, Backend::Iptables, &[]);
        ensure!(
            full.is_ok() || none.is_ok(),
            "{}: {full:?} / {none:?}",
            t.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// nftables mode

#[test]
fn nftables_lifecycle() -> Result<()> {
    let Some((t, ns, dp)) = pod("nftables_lifecycle", "nft")? else {
        return Ok(());
    };
    let rules = both(15001, true);
    ns.run(|| dp.backend_ready(Backend::Nftables))??;
    dp.apply(&ns, Backend::Nftables, &rules)?;
    dp.apply(&ns, Backend::Nftables, &rules)?;
    dp.check(&ns, Backend::Nftables, &rules)?;
    let listed = t.exec("nft", &["list", "tables"])?;
    ensure!(
        listed.contains("ip meshcap") && listed.contains("ip6 meshcap"),
        "{listed}"
    );
    ensure!(t.exec("ip", &["rule"])?.contains("lookup 133"));
    let text = dp.inspect(&ns)?.to_string();
    eprintln!("{text}");
    ensure!(text.contains("nftables:\n  ipv4:"), "{text}");
    // Rules are shown as the kernel holds them, decoded from their expressions.
    ensure!(
        text.contains("meta l4proto tcp redirect to :15001 comment "),
        "{text}"
    );
    dp.remove(&ns, Backend::Nftables, &[])?;
    dp.remove(&ns, Backend::Nftables, &[])?;
    ensure!(!t.exec("nft", &["list", "tables"])?.contains("meshcap"));
    ensure!(!t.exec("ip", &["rule"])?.contains("lookup 133"));
    dp.check(&ns, Backend::Nftables, &[])?;
    Ok(())
}

//! apply, rollback, remove and check against the recording fake ([`crate::fake`]): the order
//! of the steps per backend and family, what is undone when a later step fails, and that a
//! remove takes away exactly what the apply brought. No root: only the namespace lock is real
//! (taken on the test thread's own namespace).

use std::sync::Arc;

use meshcap_model::annotations::INTERCEPTION_MODE;
use meshcap_model::render::iptables::Installed;
use meshcap_model::rules::{Family, Ruleset};
use meshcap_model::{Annotations, RedirectModel};
use meshcap_testkit::ScratchDir;

use crate::fake::Fake;
use crate::sys::Sys;
use crate::{Backend, CreatedTable, Dataplane, DataplaneError, PodNetns};

struct Setup {
    fake: Arc<Fake>,
    dataplane: Dataplane,
    ns: PodNetns,
    _run: ScratchDir,
}

fn setup(test: &str) -> Setup {
    let fake = Arc::new(Fake::default());
    let run = ScratchDir::new(test);
    let dataplane = Dataplane::new()
        .with_search_path(vec!["/fake/sbin".into()])
        .with_run_dir(run.path())
        .with_sys(fake.clone());
    let ns = PodNetns::current_thread().expect("open the thread's own namespace");
    Setup {
        fake,
        dataplane,
        ns,
        _run: run,
    }
}

fn redirect() -> Vec<Ruleset> {
    RedirectModel::default().rulesets()
}

fn tproxy() -> Vec<Ruleset> {
    let annotations: Annotations = [(INTERCEPTION_MODE.to_owned(), "TPROXY".to_owned())]
        .into_iter()
        .collect();
    RedirectModel::from_annotations(&annotations)
        .unwrap()
        .rulesets()
}

const ENTER: &str = "enter /proc/thread-self/ns/net";

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Applies the TPROXY rules with `backend` while the next calls starting with each of `fail`
/// fail; the apply's error, after checking that the namespace is as it was before.
fn apply_failing(s: &Setup, backend: Backend, fail: &[&str]) -> DataplaneError {
    let before = s.fake.kernel();
    for prefix in fail {
        s.fake.fail_next(prefix);
    }
    let err = s.dataplane.apply(&s.ns, backend, &tproxy()).unwrap_err();
    assert_eq!(s.fake.kernel(), before, "the namespace is as it was");
    err
}

/// The TPROXY routing of each family, in the order an apply adds it: the route before the rule
/// that leads to its table (a marked packet never meets an empty table), then IPv6's `::6`.
const ROUTES_V4: [&str; 2] = [
    "ip route local default dev lo table 133",
    "ip rule fwmark 0x539 lookup 133",
];
const ROUTES_V6: [&str; 3] = [
    "ip -6 route local default dev lo table 133",
    "ip -6 rule fwmark 0x539 lookup 133",
    "ip -6 addr ::6/128 dev lo",
];

/// `route add` of the routing items of IPv4 (and IPv6), in the order an apply adds them.
fn routes_added(v6: bool) -> Vec<String> {
    let v6: &[&str] = if v6 { &ROUTES_V6 } else { &[] };
    ROUTES_V4
        .iter()
        .chain(v6)
        .map(|r| format!("route add {r}"))
        .collect()
}

/// `calls` joined into one list.
fn seq(calls: &[&[String]]) -> Vec<String> {
    calls.concat()
}

fn installed(fake: &Fake, family: Family) -> Installed {
    Installed::parse_save(&fake.save_text(family))
}

#[test]
fn iptables_apply_writes_routes_then_v4_then_v6() {
    let s = setup("dp-apply-order");
    let rulesets = tproxy();
    let created = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &rulesets)
        .unwrap();
    assert_eq!(
        s.fake.calls(),
        seq(&[
            &strs(&[ENTER]),
            &routes_added(true),
            // A fresh pod: no save, one restore per family, in family order.
            &strs(&[
                "run iptables-nft-restore --noflush --wait",
                "run ip6tables-nft-restore --noflush --wait",
            ]),
        ])
    );
    for rs in &rulesets {
        assert_eq!(installed(&s.fake, rs.family), Installed::from_ruleset(rs));
    }
    // Every table the restores brought into being is reported, whole.
    assert!(!created.is_empty());
    assert!(created.iter().all(|c| c.whole_table));
    for family in Family::ALL {
        assert!(created
            .iter()
            .any(|c| c.family == family && c.table == "mangle"));
    }
}

#[test]
fn a_proxy_without_the_passthrough_source_gets_no_v6_address() {
    let s = setup("dp-no-passthrough");
    let mut rulesets = redirect();
    for rs in &mut rulesets {
        rs.passthrough_source = false;
    }
    s.dataplane
        .apply(&s.ns, Backend::Nftables, &rulesets)
        .unwrap();
    assert_eq!(
        s.fake.calls(),
        strs(&[ENTER, "nft replace ip,ip6"]),
        "IPv6 rules, and no ::6 on lo"
    );
    // With the source (Istio's and Kuma's proxies), the same rules bring ::6.
    let s = setup("dp-passthrough");
    s.dataplane
        .apply(&s.ns, Backend::Nftables, &redirect())
        .unwrap();
    assert_eq!(
        s.fake.calls(),
        strs(&[
            ENTER,
            "route add ip -6 addr ::6/128 dev lo",
            "nft replace ip,ip6"
        ])
    );
}

#[test]
fn iptables_reapply_of_the_same_rules_changes_nothing() {
    let s = setup("dp-reapply");
    let rulesets = redirect();
    s.dataplane
        .apply(&s.ns, Backend::Iptables, &rulesets)
        .unwrap();
    s.fake.clear_calls();
    let created = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &rulesets)
        .unwrap();
    assert_eq!(created, Vec::<CreatedTable>::new());
    // The tables exist now: each family is saved to compare, nothing is written.
    assert_eq!(
        s.fake.calls(),
        strs(&[ENTER, "run iptables-nft-save", "run ip6tables-nft-save"])
    );
}

#[test]
fn nftables_apply_is_one_transaction_after_the_routes() {
    let s = setup("dp-nft-apply");
    s.dataplane
        .apply(&s.ns, Backend::Nftables, &tproxy()[..1])
        .unwrap();
    assert_eq!(
        s.fake.calls(),
        seq(&[
            &strs(&[ENTER]),
            &routes_added(false),
            // Both families in one transaction: IPv6 is told to have no table.
            &strs(&["nft replace ip,ip6"]),
        ])
    );
}

#[test]
fn a_failed_v6_restore_rolls_v4_and_the_routes_back() {
    let s = setup("dp-rollback-v6");
    let err = apply_failing(&s, Backend::Iptables, &["run ip6tables-nft-restore"]);
    assert!(
        matches!(err, DataplaneError::Command { .. }),
        "the restore's own error, not a rollback failure: {err}"
    );
    let calls = s.fake.calls();
    let tail: Vec<String> = calls
        .iter()
        .skip_while(|c| !c.starts_with("run ip6tables"))
        .cloned()
        .collect();
    // Then the routes, newest first.
    let routes_deleted: Vec<String> = routes_added(true)
        .iter()
        .rev()
        .map(|c| c.replace("route add", "route del"))
        .collect();
    assert_eq!(
        tail,
        seq(&[
            &strs(&[
                "run ip6tables-nft-restore --noflush --wait",
                // Newest first: IPv6 (nothing committed, nothing to undo), then IPv4.
                "run ip6tables-nft-save",
                "run iptables-nft-save",
                "run iptables-nft-restore --noflush --wait",
                // The tables the IPv4 restore created go again.
                "xtables remove ip mangle PREROUTING,OUTPUT table=true",
                "xtables remove ip nat OUTPUT table=true",
            ]),
            &routes_deleted,
        ])
    );
}

#[test]
fn a_failed_route_writes_no_rules_and_undoes_the_routes_before_it() {
    let s = setup("dp-rollback-route");
    let err = apply_failing(&s, Backend::Iptables, &["route add ip -6 route"]);
    assert!(matches!(err, DataplaneError::Netlink { .. }), "{err}");
    assert!(!s.fake.calls().iter().any(|c| c.starts_with("run ")));
}

#[test]
fn a_failed_nftables_transaction_undoes_the_routes() {
    let s = setup("dp-rollback-nft");
    let err = apply_failing(&s, Backend::Nftables, &["nft replace"]);
    assert!(matches!(err, DataplaneError::Nftables { .. }), "{err}");
}

#[test]
fn a_failed_rollback_reports_both_errors() {
    let s = setup("dp-rollback-fails");
    s.fake.fail_next("run ip6tables-nft-restore");
    s.fake.fail_next("xtables remove ip nat");
    let err = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &tproxy())
        .unwrap_err();
    assert!(
        matches!(err, DataplaneError::RollbackFailed { .. }),
        "{err}"
    );
}

/// Another component's rules in the pod: `nat` with its chain and a jump from PREROUTING.
const OTHERS: &str =
    "*nat\n:KUBE-X - [0:0]\n-A PREROUTING -j KUBE-X\n-A KUBE-X -j RETURN\nCOMMIT\n";

#[test]
fn del_removes_only_what_add_created() {
    let s = setup("dp-del-created");
    s.fake.restore_as_other(Family::V4, OTHERS);
    let before = s.fake.kernel();
    let created = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &tproxy())
        .unwrap();
    // nat existed with PREROUTING: only its OUTPUT is new; IPv4's mangle and all of IPv6's
    // tables are new.
    let nat_v4 = created
        .iter()
        .find(|c| c.family == Family::V4 && c.table == "nat")
        .expect("nat of IPv4 gained a chain");
    assert!(!nat_v4.whole_table);
    assert_eq!(nat_v4.chains, ["OUTPUT"]);
    s.dataplane
        .remove(&s.ns, Backend::Iptables, &created)
        .unwrap();
    assert_eq!(
        s.fake.kernel(),
        before,
        "the other component's rules stay, the rest goes"
    );
}

#[test]
fn del_without_the_created_list_leaves_the_empty_tables() {
    let s = setup("dp-del-unknown");
    s.dataplane
        .apply(&s.ns, Backend::Iptables, &redirect())
        .unwrap();
    s.dataplane.remove(&s.ns, Backend::Iptables, &[]).unwrap();
    for family in Family::ALL {
        assert!(installed(&s.fake, family).is_empty());
    }
    // The tables and built-in chains the restores created stay: nothing said they were new.
    for family in Family::ALL {
        let shapes = s.fake.xtables_shapes(family, &["nat"]).unwrap();
        assert!(
            shapes.iter().any(|t| t.chain("OUTPUT").is_some()),
            "{family}: {shapes:?}"
        );
    }
}

#[test]
fn del_of_nothing_succeeds_and_writes_nothing() {
    let s = setup("dp-del-nothing");
    s.dataplane.remove(&s.ns, Backend::Iptables, &[]).unwrap();
    s.dataplane.remove(&s.ns, Backend::Nftables, &[]).unwrap();
    assert_eq!(
        s.fake.calls(),
        strs(&[ENTER, ENTER, "nft delete ip,ip6"]),
        "no table: no save, no restore, no route change"
    );
}

#[test]
fn nftables_del_removes_tables_and_routes() {
    let s = setup("dp-nft-del");
    let before = s.fake.kernel();
    s.dataplane
        .apply(&s.ns, Backend::Nftables, &tproxy())
        .unwrap();
    s.dataplane.remove(&s.ns, Backend::Nftables, &[]).unwrap();
    assert_eq!(s.fake.kernel(), before);
}

#[test]
fn check_passes_after_apply_and_changes_nothing() {
    for backend in [Backend::Iptables, Backend::Nftables] {
        let s = setup("dp-check");
        let rulesets = tproxy();
        s.dataplane.apply(&s.ns, backend, &rulesets).unwrap();
        let after_apply = s.fake.kernel();
        s.fake.clear_calls();
        s.dataplane.check(&s.ns, backend, &rulesets).unwrap();
        assert_eq!(s.fake.kernel(), after_apply);
        assert!(
            s.fake
                .calls()
                .iter()
                .all(|c| c == ENTER || c.ends_with("-save")),
            "{backend}: {:?}",
            s.fake.calls()
        );
    }
}

#[test]
fn check_reports_drift_of_rules_and_routes() {
    let s = setup("dp-check-drift");
    let rulesets = tproxy();
    s.dataplane
        .apply(&s.ns, Backend::Iptables, &rulesets)
        .unwrap();
    // Someone deletes meshcap's jump from OUTPUT, and an unexpected route appears.
    let jump = Installed::from_ruleset(&rulesets[0]).tables[&meshcap_model::rules::Table::Nat]
        .jumps
        .iter()
        .find(|j| j.starts_with("-A OUTPUT"))
        .cloned()
        .unwrap();
    s.fake
        .restore_as_other(Family::V4, &format!("*nat\n-D{}\nCOMMIT\n", &jump[2..]));
    let Err(DataplaneError::Drift { details }) =
        s.dataplane.check(&s.ns, Backend::Iptables, &rulesets[..1])
    else {
        panic!("drift expected");
    };
    let text = details.join("\n");
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("ipv4 iptables (nft): ") && d.contains("MESHCAP_OUTPUT")),
        "{text}"
    );
    // Only IPv4 was asked for: IPv6's rules and routes are unexpected.
    assert!(text.contains("unexpected: ip -6 rule"), "{text}");
}

#[test]
fn nftables_check_reports_a_different_table() {
    let s = setup("dp-nft-drift");
    s.dataplane
        .apply(&s.ns, Backend::Nftables, &redirect())
        .unwrap();
    let err = s
        .dataplane
        .check(&s.ns, Backend::Nftables, &tproxy())
        .unwrap_err();
    let DataplaneError::Drift { details } = err else {
        panic!("drift expected: {err}");
    };
    assert!(
        details.iter().any(|d| d.starts_with("nftables: ")),
        "{details:?}"
    );
}

#[test]
fn iptables_del_is_one_transaction_without_a_program() {
    let s = setup("dp-del-one");
    let before = s.fake.kernel();
    let created = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &tproxy())
        .unwrap();
    s.fake.clear_calls();
    s.dataplane
        .remove(&s.ns, Backend::Iptables, &created)
        .unwrap();
    let calls = s.fake.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("xtables") || c.starts_with("run "))
            .collect::<Vec<_>>(),
        ["xtables remove-prefixed ip,ip6 MESHCAP_"],
        "{calls:?}"
    );
    assert_eq!(s.fake.kernel(), before);
}

#[test]
fn a_refused_iptables_del_removes_nothing() {
    let s = setup("dp-del-refused");
    let created = s
        .dataplane
        .apply(&s.ns, Backend::Iptables, &tproxy())
        .unwrap();
    let added = s.fake.kernel();
    s.fake.fail_next("xtables remove-prefixed");
    let err = s
        .dataplane
        .remove(&s.ns, Backend::Iptables, &created)
        .unwrap_err();
    assert!(matches!(err, DataplaneError::Nftables { .. }), "{err}");
    // The rules' transaction comes before the routes: a refusal leaves everything.
    assert_eq!(s.fake.kernel(), added, "nothing removed");
    s.dataplane
        .remove(&s.ns, Backend::Iptables, &created)
        .unwrap();
    assert_ne!(s.fake.kernel(), added, "the retried DEL removes");
}

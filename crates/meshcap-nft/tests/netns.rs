//! Privileged tests of the netlink backend against the real kernel, each in its own network
//! namespaces (`nfttest-<test>-<pid>`), removed on drop even when the test fails.
//!
//! The reference is `nft` itself: what [`meshcap_nft::replace`] installs must list (plain and
//! as bytecode) exactly like what `nft -f` of `render()` installs in another fresh namespace.
//! Without root or `nft` the tests skip, saying so by name; under `CI=true` they fail instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::IpNet;
use meshcap_model::render::nftables::{chain_name, chain_rules, render};
use meshcap_model::rules::{
    Chain, Family, Hook, Match, Proto, Rule, Ruleset, Table, TableRules, Target,
};
use meshcap_nft::{delete, list, probe, replace, verify, NftError};
use meshcap_testkit::ScratchNetns;

/// The model's case table, shared with its goldens.
#[path = "../../meshcap-model/tests/cases/mod.rs"]
mod cases;
use nix::errno::Errno;

fn can_run(test: &str) -> bool {
    meshcap_testkit::gate::require_root_and_tools(test, &["nft", "ip"])
}

/// A scratch network namespace ([`ScratchNetns`]), deleted on drop.
struct Netns(ScratchNetns);

impl Netns {
    fn new(test: &str, tag: &str) -> Result<Self> {
        Ok(Netns(ScratchNetns::new(&format!("nfttest-{test}{tag}"))?))
    }

    fn exec(&self, argv: &[&str], stdin: Option<&str>) -> Result<String> {
        Ok(self.0.exec(argv, stdin)?)
    }

    fn nft(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.exec(&argv, None)
    }

    /// Runs `f` on a fresh thread that has entered this namespace (the thread ends with it, so
    /// nothing else ever runs in the pod namespace by accident).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(self.0.run(f)?)
    }

    /// `nft list table` of both meshcap tables (an absent one lists as nothing).
    fn listing(&self, debug: bool) -> Result<String> {
        let mut out = String::new();
        for family in ["ip", "ip6"] {
            let tables = self.nft(&["list", "tables", family])?;
            if !tables.contains("table")
                || !tables
                    .lines()
                    .any(|l| l.trim() == format!("table {family} meshcap"))
            {
                continue;
            }
            let mut args = vec!["list", "table", family, "meshcap"];
            if debug {
                args.insert(0, "--debug=netlink");
            }
            out.push_str(&self.nft(&args)?);
        }
        Ok(if debug { strip_handles(&out) } else { out })
    }
}

/// Bytecode listings name each rule `ip meshcap CHAIN HANDLE [POSITION]`; handles depend on
/// history, so only the first three words are kept.
fn strip_handles(listing: &str) -> String {
    listing
        .lines()
        .map(|l| {
            if l.starts_with("ip meshcap ") || l.starts_with("ip6 meshcap ") {
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid net")
}

fn tcp() -> Match {
    Match::Protocol(Proto::Tcp)
}

fn rule(matches: Vec<Match>, target: Target) -> Rule {
    Rule::new(matches, target)
}

fn chain(name: &str, hook: Option<Hook>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.to_string(),
        hook,
        rules,
    }
}

// Matches as the fixture writes them, so that each rule reads as one line of its ruleset.

fn dport(ports: &[u16]) -> Match {
    Match::DestPort {
        ports: ports.to_vec(),
        negate: false,
    }
}

fn src(s: &str) -> Match {
    Match::Source {
        net: net(s),
        negate: false,
    }
}

fn dst(s: &str) -> Match {
    Match::Destination {
        net: net(s),
        negate: false,
    }
}

fn uid(uid: u32) -> Match {
    Match::UidOwner { uid, negate: false }
}

fn gid(gid: u32) -> Match {
    Match::GidOwner { gid, negate: false }
}

fn mark(value: u32) -> Match {
    Match::Mark {
        value,
        negate: false,
    }
}

/// `m` negated (`!`): for the matches that have a negated form.
fn not(mut m: Match) -> Match {
    match &mut m {
        Match::DestPort { negate, .. }
        | Match::Source { negate, .. }
        | Match::Destination { negate, .. }
        | Match::UidOwner { negate, .. }
        | Match::GidOwner { negate, .. }
        | Match::Mark { negate, .. } => *negate = true,
        other => panic!("{other:?} has no negated form"),
    }
    m
}

/// A capture-like ruleset that uses every Match and Target variant, in tables and hooks where
/// the kernel accepts them (tproxy in mangle prerouting, redirect in nat, ct zone in raw).
fn fixture(family: Family) -> Ruleset {
    let (passthrough, loopback, wide, odd, host) = match family {
        Family::V4 => (
            "127.0.0.6/32",
            "127.0.0.1/32",
            "10.0.0.0/8",
            "192.168.16.0/20",
            "0.0.0.0/0",
        ),
        Family::V6 => (
            "::6/128",
            "::1/128",
            "fd00::/8",
            "2001:db8:8000::/33",
            "::/0",
        ),
    };
    let raw = TableRules {
        table: Table::Raw,
        chains: vec![
            chain(
                "MESHCAP_OUTPUT",
                Some(Hook::Output),
                vec![rule(
                    vec![Match::Protocol(Proto::Udp), dport(&[53]), uid(1337)],
                    Target::CtZone(1),
                )],
            ),
            chain(
                "MESHCAP_PREROUTING",
                Some(Hook::Prerouting),
                vec![
                    rule(
                        vec![Match::Protocol(Proto::Udp), Match::SourcePort { port: 53 }],
                        Target::CtZone(2),
                    ),
                    rule(
                        vec![
                            Match::Protocol(Proto::Udp),
                            Match::DestPortRange {
                                first: 3000,
                                last: 5000,
                            },
                        ],
                        Target::CtZone(2),
                    ),
                ],
            ),
        ],
    };
    let mangle = TableRules {
        table: Table::Mangle,
        chains: vec![
            chain(
                "MESHCAP_PREROUTING",
                Some(Hook::Prerouting),
                vec![
                    rule(vec![Match::CtStateInvalid], Target::Drop),
                    rule(
                        vec![
                            tcp(),
                            Match::CtStateRelatedEstablished,
                            Match::ConnMark { value: 1337 },
                        ],
                        Target::RestoreMark,
                    ),
                    rule(vec![tcp()], Target::Jump("MESHCAP_INBOUND".into())),
                ],
            ),
            chain(
                "MESHCAP_INBOUND",
                None,
                vec![
                    rule(vec![tcp(), dport(&[15008])], Target::Return),
                    rule(vec![tcp(), mark(1337)], Target::Accept),
                    rule(
                        vec![tcp(), not(dport(&[15020, 15021, 15090]))],
                        Target::Jump("MESHCAP_TPROXY".into()),
                    ),
                ],
            ),
            chain(
                "MESHCAP_TPROXY",
                None,
                vec![rule(
                    vec![tcp(), not(dst(loopback))],
                    Target::Tproxy {
                        port: 15006,
                        mark: 1337,
                    },
                )],
            ),
            chain(
                "MESHCAP_OUTPUT",
                Some(Hook::Output),
                vec![
                    rule(
                        vec![tcp(), not(gid(1337)), not(mark(1337))],
                        Target::SetMark(0x10),
                    ),
                    rule(vec![], Target::SaveMark),
                ],
            ),
        ],
    };
    let nat = TableRules {
        table: Table::Nat,
        chains: vec![
            chain(
                "MESHCAP_PREROUTING",
                Some(Hook::Prerouting),
                vec![rule(vec![tcp()], Target::Jump("MESHCAP_INBOUND".into()))],
            ),
            chain(
                "MESHCAP_INBOUND",
                None,
                vec![
                    rule(vec![tcp(), dport(&[15008])], Target::Return),
                    rule(
                        vec![
                            tcp(),
                            Match::InInterface { name: "lo".into() },
                            not(dport(&[22, 15020])),
                        ],
                        Target::Redirect { port: 15006 },
                    ),
                ],
            ),
            chain(
                "MESHCAP_OUTPUT",
                Some(Hook::Output),
                vec![
                    rule(
                        vec![src(passthrough), Match::OutInterface { name: "lo".into() }],
                        Target::Return,
                    ),
                    rule(
                        vec![not(uid(1337))],
                        Target::Jump("MESHCAP_REDIRECT".into()),
                    ),
                    rule(vec![gid(1337)], Target::Return),
                    rule(
                        vec![Match::UidOwnerRange {
                            first: 1000,
                            last: 2000,
                        }],
                        Target::Return,
                    ),
                    rule(vec![not(dst(odd))], Target::Return),
                    rule(vec![not(src(wide))], Target::Return),
                    rule(vec![dst(host)], Target::Drop),
                ],
            ),
            chain(
                "MESHCAP_REDIRECT",
                None,
                vec![rule(vec![tcp()], Target::Redirect { port: 15001 })],
            ),
        ],
    };
    Ruleset {
        family,
        tables: vec![raw, mangle, nat],
        policy_route: None,
        passthrough_source: true,
    }
}

fn fixtures() -> Vec<Ruleset> {
    vec![fixture(Family::V4), fixture(Family::V6)]
}

// The fixture really covers every variant (a new variant fails to compile here until added).
#[test]
fn fixture_covers_every_variant() {
    let mut seen = std::collections::BTreeSet::new();
    for rs in fixtures() {
        for r in rs
            .tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| &c.rules)
        {
            for m in &r.matches {
                seen.insert(match m {
                    Match::Protocol(_) => "Protocol",
                    Match::DestPort { negate: false, .. } => "DestPort",
                    Match::DestPort { negate: true, .. } => "DestPort!",
                    Match::DestPortRange { .. } => "DestPortRange",
                    Match::SourcePort { .. } => "SourcePort",
                    Match::Source { negate: false, .. } => "Source",
                    Match::Source { negate: true, .. } => "Source!",
                    Match::Destination { negate: false, .. } => "Destination",
                    Match::Destination { negate: true, .. } => "Destination!",
                    Match::InInterface { .. } => "InInterface",
                    Match::OutInterface { .. } => "OutInterface",
                    Match::UidOwner { negate: false, .. } => "UidOwner",
                    Match::UidOwner { negate: true, .. } => "UidOwner!",
                    Match::UidOwnerRange { .. } => "UidOwnerRange",
                    Match::GidOwner { negate: false, .. } => "GidOwner",
                    Match::GidOwner { negate: true, .. } => "GidOwner!",
                    Match::Mark { negate: false, .. } => "Mark",
                    Match::Mark { negate: true, .. } => "Mark!",
                    Match::ConnMark { .. } => "ConnMark",
                    Match::CtStateRelatedEstablished => "CtState",
                    Match::CtStateInvalid => "CtStateInvalid",
                });
            }
            seen.insert(match r.target {
                Target::Jump(_) => "Jump",
                Target::Return => "Return",
                Target::Accept => "Accept",
                Target::Drop => "Drop",
                Target::Redirect { .. } => "Redirect",
                Target::Tproxy { .. } => "Tproxy",
                Target::SetMark(_) => "SetMark",
                Target::SaveMark => "SaveMark",
                Target::RestoreMark => "RestoreMark",
                Target::CtZone(_) => "CtZone",
            });
        }
    }
    assert_eq!(seen.len(), 21 + 10, "{seen:?}");
}

// The netlink batch installs what `nft -f` of the rendered script installs, rule for rule and
// expression for expression; both pass verify().
#[test]
fn replace_matches_nft_f_of_render() -> Result<()> {
    let test = "replace_matches_nft_f_of_render";
    if !can_run(test) {
        return Ok(());
    }
    let ours = Netns::new("render", "a")?;
    let reference = Netns::new("render", "b")?;
    let rulesets = fixtures();
    ours.run(|| replace(&rulesets))??;
    reference.exec(&["nft", "-f", "-"], Some(&render(&rulesets)))?;
    let (got, want) = (ours.listing(false)?, reference.listing(false)?);
    assert!(want.contains("table ip6 meshcap"), "{want}");
    assert_eq!(got, want, "nft list differs from the nft -f reference");
    let (got, want) = (ours.listing(true)?, reference.listing(true)?);
    assert!(want.contains("tproxy ip6 port reg 1"), "{want}");
    assert_eq!(got, want, "bytecode differs from the nft -f reference");
    ours.run(|| verify(&rulesets))??;
    reference.run(|| verify(&rulesets))??;
    Ok(())
}

// A second replace leaves exactly one copy; list() reports chains, hooks and comments.
#[test]
fn replace_is_idempotent_and_listable() -> Result<()> {
    let test = "replace_is_idempotent_and_listable";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("idem", "")?;
    let rulesets = fixtures();
    ns.run(|| replace(&rulesets))??;
    let once = ns.listing(false)?;
    ns.run(|| replace(&rulesets))??;
    assert_eq!(ns.listing(false)?, once);
    for rs in &rulesets {
        let table = ns.run(|| list(rs.family))??.context("table listed")?;
        let expected: Vec<_> = rs
            .tables
            .iter()
            .flat_map(|t| t.chains.iter().map(move |c| (t.table, c)))
            .collect();
        assert_eq!(table.chains.len(), expected.len());
        for ((tbl, c), got) in expected.iter().zip(&table.chains) {
            assert_eq!(got.name, chain_name(*tbl, &c.name));
            assert_eq!(got.hook.as_ref().and_then(|h| h.hook()), c.hook);
            let want = chain_rules(*tbl, c, rs.family)?;
            let exprs: Vec<_> = got.rules.iter().map(|r| r.exprs.clone()).collect();
            let comments: Vec<_> = got.rules.iter().map(|r| r.comment.clone()).collect();
            assert_eq!(
                exprs,
                want.iter().map(|r| r.exprs.clone()).collect::<Vec<_>>()
            );
            assert_eq!(
                comments,
                want.iter()
                    .map(|r| Some(r.comment.clone()))
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

// A batch with one invalid rule (a jump to a chain that does not exist) is rejected whole: the
// error names that rule and ENOENT, and the installed table is left as it was (or absent).
#[test]
fn rejected_batch_changes_nothing() -> Result<()> {
    let test = "rejected_batch_changes_nothing";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("reject", "")?;
    let mut bad = fixtures();
    bad[1].tables[2].chains[3]
        .rules
        .push(rule(vec![tcp()], Target::Jump("MESHCAP_NOPE".into())));

    // Nothing installed yet: still nothing afterwards.
    let err = ns.run(|| replace(&bad))?.expect_err("kernel must reject");
    assert_eq!(ns.listing(false)?, "");
    match &err {
        NftError::Rejected { op, message, errno } => {
            assert_eq!(*op, "replace");
            assert_eq!(*errno, Errno::ENOENT, "{err}");
            assert!(message.contains("jump nat_MESHCAP_NOPE"), "{message}");
            assert!(message.contains("table ip6 meshcap"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // Good rules installed: the failed replace leaves them untouched (both families, although
    // the bad rule was only in the v6 part).
    let good = fixtures();
    ns.run(|| replace(&good))??;
    let before = ns.listing(true)?;
    ns.run(|| replace(&bad))?.expect_err("kernel must reject");
    assert_eq!(ns.listing(true)?, before);
    Ok(())
}

// delete() succeeds on absent tables and removes present ones; an empty ruleset removes too.
#[test]
fn delete_when_absent_and_present() -> Result<()> {
    let test = "delete_when_absent_and_present";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("delete", "")?;
    ns.run(|| delete(&Family::ALL))??;
    assert!(ns.run(|| list(Family::V4))??.is_none());
    ns.run(|| replace(&fixtures()))??;
    assert!(ns.run(|| list(Family::V6))??.is_some());
    ns.run(|| delete(&Family::ALL))??;
    assert_eq!(ns.listing(false)?, "");
    ns.run(|| delete(&Family::ALL))??;
    // An empty ruleset for a family means "no meshcap table".
    ns.run(|| replace(&fixtures()))??;
    let empty_v6 = Ruleset {
        family: Family::V6,
        tables: vec![],
        policy_route: None,
        passthrough_source: true,
    };
    ns.run(|| replace(&[fixture(Family::V4), empty_v6.clone()]))??;
    assert!(ns.run(|| list(Family::V6))??.is_none());
    assert!(ns.run(|| list(Family::V4))??.is_some());
    ns.run(|| verify(&[fixture(Family::V4), empty_v6]))??;
    // Meshcap's tables are found by family and name in one listing: with only the IPv4 one
    // there, and another family's table of the same name beside it, the replace deletes the
    // IPv4 table and creates the IPv6 one (a table believed absent is created exclusively).
    ns.exec(&["nft", "add", "table", "inet", "meshcap"], None)?;
    ns.run(|| replace(&fixtures()))??;
    ns.run(|| verify(&fixtures()))??;
    ns.exec(&["nft", "delete", "table", "inet", "meshcap"], None)?;
    // Other tables are never touched.
    ns.exec(&["nft", "add", "table", "ip", "other"], None)?;
    ns.run(|| delete(&Family::ALL))??;
    assert!(ns.nft(&["list", "tables"])?.contains("table ip other"));
    Ok(())
}

fn drift(result: Result<(), NftError>) -> Vec<String> {
    match result {
        Err(NftError::Drift { differences }) => differences,
        other => panic!("expected drift, got {other:?}"),
    }
}

// verify() reports a flushed chain, a deleted rule, a missing table and a foreign chain.
#[test]
fn verify_detects_drift() -> Result<()> {
    let test = "verify_detects_drift";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("verify", "")?;
    let rulesets = fixtures();
    ns.run(|| replace(&rulesets))??;
    ns.run(|| verify(&rulesets))??;

    ns.nft(&["flush", "chain", "ip", "meshcap", "nat_MESHCAP_OUTPUT"])?;
    let d = drift(ns.run(|| verify(&rulesets))?);
    assert!(
        d.iter()
            .any(|s| s
                .contains("chain nat_MESHCAP_OUTPUT of table ip meshcap has 0 rules, expected 7")),
        "{d:?}"
    );
    assert!(d.iter().all(|s| s.contains("nat_MESHCAP_OUTPUT")), "{d:?}");

    ns.run(|| replace(&rulesets))??;
    // Delete the second rule of the v6 mangle inbound chain by handle.
    let table = ns.run(|| list(Family::V6))??.context("v6 table")?;
    let handle = table
        .chain("mangle_MESHCAP_INBOUND")
        .context("chain")?
        .rules[1]
        .handle;
    ns.nft(&[
        "delete",
        "rule",
        "ip6",
        "meshcap",
        "mangle_MESHCAP_INBOUND",
        "handle",
        &handle.to_string(),
    ])?;
    let d = drift(ns.run(|| verify(&rulesets))?);
    assert!(
        d.iter().any(|s| s.contains("has 2 rules, expected 3")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|s| s.contains("rule 1 is `meta l4proto tcp tcp dport != 15020")),
        "{d:?}"
    );

    ns.run(|| replace(&rulesets))??;
    ns.nft(&["add", "chain", "ip", "meshcap", "intruder"])?;
    let d = drift(ns.run(|| verify(&rulesets))?);
    assert_eq!(
        d,
        vec!["unexpected chain intruder in table ip meshcap".to_string()]
    );

    ns.nft(&["delete", "table", "ip", "meshcap"])?;
    let d = drift(ns.run(|| verify(&rulesets))?);
    assert_eq!(d, vec!["table ip meshcap is missing".to_string()]);
    Ok(())
}

#[test]
fn probe_answers() -> Result<()> {
    let test = "probe_answers";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("probe", "")?;
    ns.run(probe)??;
    Ok(())
}

/// Connects to 127.0.0.1:8080 and returns the banner (the first byte the server sent), or the
/// connect error.
fn dial() -> std::io::Result<u8> {
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(b[0])
}

/// Serves one connection on `listener`, sending `banner`.
fn serve_one(listener: TcpListener, banner: u8) {
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&[banner]);
        }
    });
}

// TPROXY behaves like iptables': with a transparent listener on 15006 the connection lands
// there; without one, nft's tproxy BREAKs and the fallback rule drops the SYN, so the service
// on 8080 is NOT reached (without the fallback it would be).
#[test]
fn tproxy_without_socket_drops() -> Result<()> {
    let test = "tproxy_without_socket_drops";
    if !can_run(test) {
        return Ok(());
    }
    let ns = Netns::new("tproxy", "")?;
    let rules = Ruleset {
        family: Family::V4,
        tables: vec![TableRules {
            table: Table::Mangle,
            chains: vec![chain(
                "MESHCAP_PREROUTING",
                Some(Hook::Prerouting),
                vec![rule(
                    vec![
                        tcp(),
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
            )],
        }],
        policy_route: None,
        passthrough_source: true,
    };
    ns.run(|| -> Result<()> {
        let app = TcpListener::bind("127.0.0.1:8080")?;
        // Control: reachable without rules.
        serve_one(app.try_clone()?, b'a');
        assert_eq!(dial()?, b'a');

        replace(std::slice::from_ref(&rules))?;
        let err = dial().expect_err("SYN must be dropped when no tproxy socket exists");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "{err:?}"
        );

        let proxy = TcpListener::bind("0.0.0.0:15006")?;
        nix::sys::socket::setsockopt(&proxy, nix::sys::socket::sockopt::IpTransparent, &true)?;
        serve_one(proxy, b'p');
        assert_eq!(dial()?, b'p', "connection must land on the tproxy listener");
        Ok(())
    })??;
    Ok(())
}

// What the model really produces installs through netlink exactly as `nft -f` of the rendered
// script does, for every case of the model's case table (the one its goldens use), case after
// case in the same namespaces (so each replace also replaces the previous case), and verifies
// clean.
#[test]
fn model_rulesets_match_nft_f_of_render() -> Result<()> {
    let test = "model_rulesets_match_nft_f_of_render";
    if !can_run(test) {
        return Ok(());
    }
    let ours = Netns::new("model", "a")?;
    let reference = Netns::new("model", "b")?;
    for case in cases::all() {
        let name = case.name;
        let rulesets = case.model.rulesets();
        ours.run(|| replace(&rulesets))?
            .with_context(|| format!("case {name}"))?;
        reference
            .exec(&["nft", "-f", "-"], Some(&render(&rulesets)))
            .with_context(|| format!("case {name}"))?;
        let listing = ours.listing(false)?;
        if name == "default" {
            assert!(listing.contains("redirect to :15001"), "{listing}");
        }
        assert_eq!(listing, reference.listing(false)?, "case {name}");
        assert_eq!(ours.listing(true)?, reference.listing(true)?, "case {name}");
        ours.run(|| verify(&rulesets))?
            .with_context(|| format!("case {name}"))?;
    }
    Ok(())
}

// Packets without a socket owner (the kernel's RST for a closed TCP port, its ICMP port
// unreachable for a closed UDP port) get the same verdict from a negated owner match in every
// backend: it does not match, as nftables' `meta skuid != 0` reads it. Without the owner range
// the iptables renderer puts before it (`--uid-owner 0-4294967294`), xt_owner matches them and
// this rule would drop the RST and the ICMP error, so the clients would time out instead of
// being refused.
#[test]
fn socketless_packets_never_match_a_negated_owner_in_any_backend() -> Result<()> {
    let test = "socketless_packets_never_match_a_negated_owner_in_any_backend";
    if !can_run(test) {
        return Ok(());
    }
    use meshcap_model::render::iptables;
    // The clients run as root: their SYN and datagram (uid 0) pass; only the socketless RST
    // and ICMP error could match.
    let ruleset = Ruleset {
        family: Family::V4,
        tables: vec![TableRules {
            table: Table::Mangle,
            chains: vec![chain(
                "MESHCAP_OUTPUT",
                Some(Hook::Output),
                vec![rule(
                    vec![
                        Match::OutInterface { name: "lo".into() },
                        Match::UidOwner {
                            uid: 0,
                            negate: true,
                        },
                    ],
                    Target::Drop,
                )],
            )],
        }],
        policy_route: None,
        passthrough_source: true,
    };
    let rendered = iptables::render(&ruleset);
    assert!(
        rendered.contains("--uid-owner 0-4294967294 -m owner ! --uid-owner 0"),
        "{rendered}"
    );
    let dial = |ns: &Netns| -> Result<std::io::ErrorKind> {
        ns.run(|| {
            let addr = "127.0.0.1:9".parse().unwrap();
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => std::io::ErrorKind::Other,
                Err(e) => e.kind(),
            }
        })
    };
    let datagram = |ns: &Netns| -> Result<std::io::ErrorKind> {
        ns.run(|| {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            sock.connect("127.0.0.1:9").unwrap();
            sock.send(b"ping").unwrap();
            match sock.recv(&mut [0u8; 16]) {
                Ok(_) => std::io::ErrorKind::Other,
                Err(e) => e.kind(),
            }
        })
    };
    let xt = Netns::new("sockless", "x")?;
    xt.exec(&["iptables-restore", "--noflush"], Some(&rendered))?;
    let text = Netns::new("sockless", "t")?;
    text.exec(
        &["nft", "-f", "-"],
        Some(&render(std::slice::from_ref(&ruleset))),
    )?;
    let netlink = Netns::new("sockless", "n")?;
    netlink.run(|| replace(std::slice::from_ref(&ruleset)))??;
    for (backend, ns) in [("iptables", &xt), ("nft -f", &text), ("netlink", &netlink)] {
        assert_eq!(
            dial(ns)?,
            std::io::ErrorKind::ConnectionRefused,
            "{backend}: the kernel's RST must pass the negated owner rule"
        );
        assert_eq!(
            datagram(ns)?,
            std::io::ErrorKind::ConnectionRefused,
            "{backend}: the kernel's ICMP port unreachable must pass the negated owner rule"
        );
    }
    // The control: a bare `! --uid-owner 0` (Istio's iptables form) drops both, so the
    // clients above were refused because the rule let the socketless packets pass.
    let bare = Netns::new("sockless", "b")?;
    let istio_form = rendered.replace("-m owner --uid-owner 0-4294967294 ", "");
    assert_ne!(istio_form, rendered);
    bare.exec(&["iptables-restore", "--noflush"], Some(&istio_form))?;
    assert_eq!(
        dial(&bare)?,
        std::io::ErrorKind::TimedOut,
        "bare: RST dropped"
    );
    assert!(
        matches!(
            datagram(&bare)?,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "bare: ICMP error dropped"
    );
    Ok(())
}

//! Fault injection: each fault meshcap can meet on a node ends in a clear CNI error (code and a
//! message naming the problem) or in its documented fallback, and a failed ADD leaves the pod
//! namespace exactly as it found it (docs/DESIGN.md, "Lifecycle guarantees").
//!
//! | fault | how it is injected | outcome |
//! |---|---|---|
//! | netns deleted before ADD | `ip netns delete`, then ADD on its path | code 4, names the path |
//! | netns of a process that exited | `/proc/PID/ns/net` of a reaped child | code 4, names the path |
//! | netns bind mount unmounted | the nsfs bind mount is unmounted, the empty file stays | code 4, "is not a network namespace"; DEL succeeds |
//! | iptables programs absent | a private mount namespace hides `/usr/sbin` | ADD 100, STATUS 50, names the program |
//! | `ip6tables-restore` fails after v4 went in | failing `ip6tables-nft-restore` first in `PATH` | code 100, v4 rolled back |
//! | `iptables-restore` dies after committing one table (ADD) | wrapper commits the first table, exits 1 | code 100, namespace as before |
//! | nf_tables refuses the iptables-mode DEL (one transaction, no restore) | a `MESHCAP_` chain in an `ip raw` table owned by another socket (`NFT_TABLE_F_OWNER`): EPERM | code 100, all rules still there; the retried DEL cleans up |
//! | nf_tables rejects the transaction | `ip meshcap` table owned by another socket (`NFT_TABLE_F_OWNER`): EPERM | ADD and DEL code 100 naming EPERM, routes undone |
//! | a stored xtables template the kernel refuses | its file rewritten: same key, a rule for no table | the ADD runs its restore, same rules as the first pod, the template is deleted |
//! | io_uring refused | a seccomp filter (EPERM for `io_uring_setup`) on the plugin, one ADD and DEL per mode | DEL closes its nf_tables socket itself and removes everything |
//! | `log_file` unwritable | a directory; a path below a regular file | ADD succeeds, stderr says why |
//! | Kubernetes API never answers | a server that accepts and stays silent, `timeout_ms` 500 | code 11, nothing applied |
//! | eBPF agent absent | `ebpf.enabled`, `ebpf.pin_dir` with nothing pinned | ADD succeeds with rules alone, warning names the pins |
//! | eBPF agent stopped, then uninstalled | SIGTERM, then `meshcap agent --uninstall` | stopped: still registers; uninstalled: DEL succeeds, ADD falls back to rules alone |
//!
//! A namespace cannot vanish *between* the plugin's open and its apply: the plugin enters it by
//! the file descriptor it opened, which keeps the namespace alive (namespaces(7): a namespace
//! lives while a process or an open fd refers to it), so the rules land in a namespace that dies
//! when the plugin exits. What a runtime can race is the path, which the first three rows cover.
//!
//! An eBPF agent that dies during an ADD cannot take the data path with it: its programs and
//! maps are pinned and outlive the process (`meshcap agent` leaves them on exit), so the ADD
//! registers the pod either way; only `meshcap agent --uninstall` (or `meshcap uninstall`)
//! removes the pins, after which registration fails and the ADD goes on with rules alone.
//! Both are tested with an agent of the test's own on private pins (`ebpf.pin_dir`), never the node's shared one.
//!
//! Faults are injected into the real `meshcap-cni` run as a runtime runs it: a chain's `bridge`
//! gives the pod its interface and addresses (the prevResult), then `meshcap-cni` alone runs with
//! the injected environment (a `PATH` whose first entry holds failing wrappers, a private mount
//! namespace, a kubeconfig for a silent server). The plugin searches `PATH` before
//! `/usr/sbin:/sbin:/usr/bin:/bin` (crates/meshcap-dataplane/src/exec.rs), so a wrapper in `PATH`
//! wins over the real program, and hiding a program needs the mount namespace.
//!
//! "As it was" compares `iptables-save`/`ip6tables-save` (nft and legacy), `nft list ruleset`,
//! ip rules, route table 133, lo's addresses and every route table, before and after, as text
//! (without packet counters and timestamps): a table or built-in chain that a failed ADD's
//! restore created and its rollback left behind is a difference. The one allowance: the kernel
//! lists nft chains in creation order, which a rollback that recreates chains changes, so nft
//! listings compare with each table's chains in name order ([`sorted_nft_blocks`]).
//!
//! Every test is privileged and skips by name when it cannot run (fails under `CI=true`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshcap_testkit::ScratchDir;
use meshcap_tests::chain::{parse_output, run_with_timeout, Chain, PluginError, RawOutput};
use meshcap_tests::flows::{INTERCEPTION_MODE, STATUS, STATUS_VALUE};
use meshcap_tests::netns::Netns;
use meshcap_tests::node::{Node, Pod};
use meshcap_tests::state::{sorted_nft_blocks, NetfilterState};
use serde_json::{json, Value};

/// crates/meshcap-records/src/lib.rs `OUTCOMES_FILE`.
const OUTCOMES_FILE: &str = ".outcomes";

/// Return early (skipping by name) when the test cannot run; panics under `CI=true`.
macro_rules! privileged {
    ($name:expr) => {
        if !meshcap_tests::privileged($name) {
            return;
        }
    };
}

/// The two rule backends.
fn modes() -> Vec<(&'static str, Value)> {
    vec![
        ("iptables", json!({"mode": "iptables"})),
        ("nftables", json!({"mode": "nftables"})),
    ]
}

/// A meshed pod's annotations; TPROXY also installs the ip rule and route table 133, so a
/// rollback must undo policy routing too.
fn meshed(tproxy: bool) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(STATUS.to_string(), STATUS_VALUE.to_string());
    if tproxy {
        a.insert(INTERCEPTION_MODE.to_string(), "TPROXY".to_string());
    }
    a
}

/// What "the namespace as it was" compares: netfilter and policy routing in every flavour
/// ([`NetfilterState`]), plus the addresses on `lo` and every route table.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    netfilter: NetfilterState,
    extra: Vec<(String, String)>,
}

const EXTRA: &[&[&str]] = &[
    &["ip", "-4", "addr", "show", "dev", "lo"],
    &["ip", "-6", "addr", "show", "dev", "lo"],
    &["ip", "-4", "route", "show", "table", "all"],
    &["ip", "-6", "route", "show", "table", "all"],
];

fn snapshot(ns: &Netns) -> Snapshot {
    let netfilter = NetfilterState::capture(ns).expect("netfilter snapshot");
    let extra = EXTRA
        .iter()
        .map(|cmd| {
            let out = ns.exec(cmd[0], &cmd[1..]).unwrap_or_default();
            // Address lifetimes count down; they say nothing about meshcap.
            let out: Vec<&str> = out
                .lines()
                .filter(|l| !l.trim_start().starts_with("valid_lft"))
                .collect();
            (cmd.join(" "), out.join("\n"))
        })
        .collect();
    Snapshot { netfilter, extra }
}

fn assert_unchanged(before: &Snapshot, after: &Snapshot, what: &str) {
    let mut diff = String::new();
    for ((cmd, a), (_, b)) in before
        .netfilter
        .sections
        .iter()
        .zip(&after.netfilter.sections)
    {
        let differs = if cmd.starts_with("nft") {
            sorted_nft_blocks(a) != sorted_nft_blocks(b)
        } else {
            a != b
        };
        if differs {
            diff.push_str(&format!(
                "--- {cmd} (before)\n{a}\n+++ {cmd} (after)\n{b}\n"
            ));
        }
    }
    for ((cmd, a), (_, b)) in before.extra.iter().zip(&after.extra) {
        if a != b {
            diff.push_str(&format!(
                "--- {cmd} (before)\n{a}\n+++ {cmd} (after)\n{b}\n"
            ));
        }
    }
    assert!(diff.is_empty(), "{what}: the namespace changed:\n{diff}");
}

/// A node, a chain with `meshcap` merged into meshcap's entry, and one pod whose `bridge` ADD
/// already ran (its result is the prevResult `meshcap-cni` gets).
struct Fixture {
    pod: Pod,
    chain: Arc<Chain>,
    prev: Value,
    node: Node,
}

impl Fixture {
    fn new(test: &str, meshcap: Value, annotations: BTreeMap<String, String>) -> Result<Fixture> {
        let node = Node::new(test)?;
        let chain = node.chain(&meshcap);
        let pod = node.unattached_pod("pod", &chain, annotations)?;
        let prev = chain
            .invoke(0, "ADD", &pod.att, None)?
            .context("bridge ADD printed no result")?;
        Ok(Fixture {
            pod,
            chain,
            prev,
            node,
        })
    }

    fn meshcap_index(&self) -> usize {
        self.chain
            .index_of("meshcap-cni")
            .expect("meshcap in chain")
    }

    /// The configuration `meshcap-cni` gets for this pod (with prevResult and annotations).
    fn config(&self) -> Value {
        self.chain
            .plugin_config(self.meshcap_index(), &self.pod.att, Some(&self.prev))
    }

    /// Run `meshcap-cni` for `command` on `netns` in the node namespace, as the chain does, but
    /// with `path` as `PATH` and, when `wrapper` is given, started through it (`wrapper[0]
    /// wrapper[1..] meshcap-cni`).
    fn run(
        &self,
        command: &str,
        netns: &Path,
        config: &Value,
        path: &OsString,
        wrapper: &[&str],
    ) -> RawOutput {
        let cmd = self.command(command, netns, path, wrapper);
        run_with_timeout(cmd, config.to_string().as_bytes(), Duration::from_secs(60))
            .expect("run meshcap-cni")
    }

    /// The process [`Fixture::run`] starts, not yet started.
    fn command(&self, command: &str, netns: &Path, path: &OsString, wrapper: &[&str]) -> Command {
        let bin = meshcap_tests::bins::meshcap_cni().expect("meshcap-cni");
        let mut cmd = match wrapper.split_first() {
            None => self.node.ns.command(&bin).expect("command in node netns"),
            Some((first, rest)) => {
                let mut c = self.node.ns.command(first).expect("command in node netns");
                c.args(rest).arg(&bin);
                c
            }
        };
        let mut att = self.pod.att.clone();
        att.netns = netns.to_owned();
        cmd.env_clear()
            .env("PATH", path)
            .env("CNI_PATH", &self.node.env.cni_path)
            .env("MESHCAP_STATE_DIR", &self.node.env.state_dir)
            .envs(self.chain.attachment_env(command, &att))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// [`Fixture::run`] with the test process's `PATH` on the pod's own namespace.
    fn run_plain(&self, command: &str, config: &Value) -> RawOutput {
        self.run(command, self.pod.ns.path(), config, &default_path(), &[])
    }

    /// Attachment records and temp files in the state dir. The outcome log (`.outcomes`, one
    /// line per invocation, rotated by the agent: crates/meshcap-records/src/lib.rs) is
    /// documented to stay.
    fn records(&self) -> Vec<PathBuf> {
        meshcap_tests::files_below(&self.node.env.state_dir)
            .into_iter()
            .filter(|p| p.file_name().is_none_or(|n| n != OUTCOMES_FILE))
            .collect()
    }

    /// No attachment record (or temp file) is left; `what` names the case in the failure.
    fn assert_no_records(&self, what: &str) {
        let left = self.records();
        assert!(left.is_empty(), "{what}records left: {left:?}");
    }
}

impl Drop for Fixture {
    /// DEL as a runtime does after any ADD, failed or not.
    fn drop(&mut self) {
        let config = self.config();
        let _ = self.run_plain("DEL", &config);
    }
}

fn default_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// `dir` in front of the test process's `PATH`.
fn path_with(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_owned()];
    dirs.extend(std::env::split_paths(&default_path()));
    std::env::join_paths(dirs).expect("PATH")
}

/// Expects a CNI error with `code` whose msg (or details) names every one of `needles`.
fn expect_error(out: RawOutput, code: u64, needles: &[&str], what: &str) -> String {
    let stderr = out.stderr.clone();
    match parse_output("meshcap-cni", what, out) {
        Err(PluginError::Cni { error, .. }) => {
            let text = format!("{} {}", error.msg, error.details);
            assert_eq!(
                error.code, code,
                "{what}: expected code {code}, got {}: {text}\nstderr: {stderr}",
                error.code
            );
            for n in needles {
                assert!(
                    text.contains(n),
                    "{what}: error does not name {n:?}: {text}"
                );
            }
            text
        }
        other => panic!("{what}: expected CNI error {code}, got {other:?}\nstderr: {stderr}"),
    }
}

/// Expects success with nothing but the result JSON on stdout; returns stderr.
fn expect_success(out: RawOutput, what: &str) -> String {
    let stderr = out.stderr.clone();
    if let Err(e) = parse_output("meshcap-cni", what, out) {
        panic!("{what}: {e}");
    }
    stderr
}

/// An executable shell script at `dir/name`.
fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\n# meshcap fault injection\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The real program `name` in the system's sbin.
fn real_program(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (apt-get install iptables)"))
}

// ---- the namespace goes away ----

#[test]
fn netns_gone_before_add_is_code_4_and_del_succeeds() {
    const TEST: &str = "netns_gone_before_add_is_code_4_and_del_succeeds";
    privileged!(TEST);
    for (mode, conf) in modes() {
        let f = Fixture::new(&format!("gone-{mode}"), conf, meshed(true)).expect("fixture");
        let config = f.config();

        // 1. A path that was deleted (`ip netns delete` after the runtime chose it).
        let gone = Netns::new(&format!("gone-{mode}-x")).unwrap();
        let gone_path = gone.path().to_owned();
        gone.delete().unwrap();
        let out = f.run("ADD", &gone_path, &config, &default_path(), &[]);
        expect_error(
            out,
            4,
            &[&gone_path.display().to_string(), "does not exist"],
            &format!("{mode}: ADD on a deleted netns path"),
        );
        let out = f.run("DEL", &gone_path, &config, &default_path(), &[]);
        expect_success(out, &format!("{mode}: DEL on a deleted netns path"));

        // 2. `/proc/PID/ns/net` of a process that exited (a sandbox process that died). The
        //    namespace it named is the pod's, which must stay untouched.
        let before = snapshot(&f.pod.ns);
        let mut child = f
            .pod
            .ns
            .command("sleep")
            .unwrap()
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let proc_path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        let out = f.run("ADD", &proc_path, &config, &default_path(), &[]);
        expect_error(
            out,
            4,
            &[&proc_path.display().to_string()],
            &format!("{mode}: ADD on /proc/PID/ns/net of an exited process"),
        );
        assert_unchanged(
            &before,
            &snapshot(&f.pod.ns),
            &format!("{mode}: /proc path"),
        );

        // 3. A bind mount that was unmounted while its file stays (containerd unmounts, then
        //    removes): the path now names an empty regular file, no namespace.
        let file = f.node.env.scratch.path().join("unmounted-netns");
        std::fs::write(&file, "").unwrap();
        mount_bind(f.pod.ns.path(), &file);
        umount(&file);
        // Code 4: CNI_NETNS names no network namespace (boundary.rs).
        let out = f.run("ADD", &file, &config, &default_path(), &[]);
        expect_error(
            out,
            4,
            &[
                &file.display().to_string(),
                "is not a network namespace",
                "not nsfs",
            ],
            &format!("{mode}: ADD on an unmounted netns bind mount"),
        );
        let out = f.run("DEL", &file, &config, &default_path(), &[]);
        expect_success(
            out,
            &format!("{mode}: DEL on an unmounted netns bind mount"),
        );

        assert_unchanged(&before, &snapshot(&f.pod.ns), &format!("{mode}: all"));
        f.assert_no_records(&format!("{mode}: "));
    }
}

#[test]
fn del_after_the_namespace_is_gone_drops_its_lock_files() {
    const TEST: &str = "del_after_the_namespace_is_gone_drops_its_lock_files";
    privileged!(TEST);
    use std::os::unix::fs::MetadataExt as _;
    for (mode, conf) in modes() {
        let f = Fixture::new(&format!("locks-{mode}"), conf, meshed(false)).expect("fixture");
        let config = f.config();
        let ns = Netns::new(&format!("locks-{mode}-x")).unwrap();
        let meta = std::fs::metadata(ns.path()).unwrap();
        let id = format!("{}-{}", meta.dev(), meta.ino());
        let lock = PathBuf::from(format!("/run/meshcap/locks/{id}"));
        let xtables_lock = PathBuf::from(format!("/run/meshcap/locks/xtables-{id}"));
        // Older plugins made `<dev>-<ino>` lock files; one may name a recycled inode.
        let _ = std::fs::remove_file(&lock);
        let out = f.run("ADD", ns.path(), &config, &default_path(), &[]);
        expect_success(out, &format!("{mode}: ADD"));
        // The per-namespace lock is a flock on the namespace itself: no file per pod.
        assert!(
            !lock.exists() && !xtables_lock.exists(),
            "{mode}: ADD left a lock file for the namespace"
        );
        // What a legacy iptables-restore leaves (XTABLES_LOCKFILE); DEL must drop it even when
        // the namespace is gone.
        std::fs::create_dir_all(xtables_lock.parent().unwrap()).unwrap();
        std::fs::write(&xtables_lock, b"").unwrap();
        // The sandbox goes away first; containerd then sends DEL with an empty CNI_NETNS.
        ns.delete().unwrap();
        let out = f.run("DEL", Path::new(""), &config, &default_path(), &[]);
        expect_success(out, &format!("{mode}: DEL with empty CNI_NETNS"));
        assert!(
            !xtables_lock.exists(),
            "{mode}: DEL left {}",
            xtables_lock.display()
        );
        f.assert_no_records(&format!("{mode}: "));
    }
}

fn mount_bind(from: &Path, to: &Path) {
    let st = Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "mount --bind {} {}",
        from.display(),
        to.display()
    );
}

fn umount(path: &Path) {
    let st = Command::new("umount").arg(path).status().unwrap();
    assert!(st.success(), "umount {}", path.display());
}

// ---- xtables programs missing or failing ----

#[test]
fn iptables_programs_absent_everywhere_is_code_100_and_status_50() {
    const TEST: &str = "iptables_programs_absent_everywhere_is_code_100_and_status_50";
    privileged!(TEST);
    let f = Fixture::new("noxt", json!({"mode": "iptables"}), meshed(true)).expect("fixture");
    let before = snapshot(&f.pod.ns);
    // A `PATH` entry cannot hide a program: the plugin always searches
    // /usr/sbin:/sbin:/usr/bin:/bin after it. A private mount namespace with an empty tmpfs on
    // /usr/sbin (/sbin links to it on Debian) removes them for the plugin alone.
    let hide = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs meshcap-fault /usr/sbin && exec \"$0\"",
    ];
    let path: OsString = "/usr/local/bin:/usr/bin:/bin".into();
    let out = f.run("ADD", f.pod.ns.path(), &f.config(), &path, &hide);
    expect_error(
        out,
        100,
        &[
            "iptables-nft-restore or iptables-restore",
            "not found in",
            "/usr/sbin",
        ],
        "ADD with no iptables programs",
    );
    assert_unchanged(
        &before,
        &snapshot(&f.pod.ns),
        "ADD with no iptables programs",
    );
    f.assert_no_records("");

    // STATUS reports the backend not ready (code 50) naming what is missing.
    let mut status = f.config();
    status["cniVersion"] = json!("1.1.0");
    status.as_object_mut().unwrap().remove("prevResult");
    let out = f.run("STATUS", f.pod.ns.path(), &status, &path, &hide);
    expect_error(
        out,
        50,
        &["iptables", "not found"],
        "STATUS with no iptables programs",
    );
    // And with the programs back, the same ADD works.
    expect_success(
        f.run_plain("ADD", &f.config()),
        "ADD with the programs back",
    );
    assert!(snapshot(&f.pod.ns).netfilter.has_meshcap());
    expect_success(f.run_plain("DEL", &f.config()), "DEL");
    assert_unchanged(&before, &snapshot(&f.pod.ns), "after ADD+DEL");
}

#[test]
fn ip6tables_restore_failure_rolls_back_v4() {
    const TEST: &str = "ip6tables_restore_failure_rolls_back_v4";
    privileged!(TEST);
    let f = Fixture::new("v6fail", json!({"mode": "iptables"}), meshed(true)).expect("fixture");
    let wrappers = f.node.env.scratch.path().join("wrappers-v6");
    std::fs::create_dir_all(&wrappers).unwrap();
    // Only the v6 restore fails; save and the v4 programs are the real ones.
    write_script(
        &wrappers,
        "ip6tables-nft-restore",
        "cat >/dev/null\necho 'injected failure: ip6tables-restore refused the batch' >&2\nexit 1",
    );
    // v4 goes in first (Family::ALL order) and must be gone again, with the TPROXY routing.
    add_fails_leaving_nothing(
        &f,
        &wrappers,
        &["ip6tables-nft-restore", "injected failure", "apply"],
        "ADD with a failing ip6tables-restore",
    );
}

#[test]
fn iptables_restore_dying_after_first_table_leaves_namespace_as_before() {
    const TEST: &str = "iptables_restore_dying_after_first_table_leaves_namespace_as_before";
    privileged!(TEST);
    let f = Fixture::new("midrestore", json!({"mode": "iptables"}), meshed(true)).expect("fixture");
    let (wrappers, marker) = dying_restore_wrapper(&f, "wrappers-mid");
    add_fails_leaving_nothing(
        &f,
        &wrappers,
        &["iptables-nft-restore", "injected failure"],
        "ADD with iptables-restore dying mid-restore",
    );
    assert!(marker.exists(), "the wrapper never ran");
}

/// ADD with the programs in `wrappers` first in `PATH` fails (code 100, `needles` in the
/// error) and leaves the pod's namespace as it was and no record behind.
fn add_fails_leaving_nothing(f: &Fixture, wrappers: &Path, needles: &[&str], what: &str) {
    let before = snapshot(&f.pod.ns);
    let out = f.run(
        "ADD",
        f.pod.ns.path(),
        &f.config(),
        &path_with(wrappers),
        &[],
    );
    expect_error(out, 100, needles, what);
    assert_unchanged(&before, &snapshot(&f.pod.ns), what);
    f.assert_no_records("");
}

/// `iptables-nft-restore` in a fresh wrapper dir that, the first time only, commits the first
/// table of its input and dies; later runs are the real program. Returns (dir, marker).
fn dying_restore_wrapper(f: &Fixture, name: &str) -> (PathBuf, PathBuf) {
    let wrappers = f.node.env.scratch.path().join(name);
    std::fs::create_dir_all(&wrappers).unwrap();
    let real = real_program("iptables-nft-restore");
    let marker = wrappers.join("failed-once");
    write_script(
        &wrappers,
        "iptables-nft-restore",
        &format!(
            "if [ -e {m} ]; then exec {real} \"$@\"; fi\n: > {m}\n\
             awk '{{print}} /^COMMIT/{{exit}}' | {real} \"$@\"\n\
             echo 'injected failure: iptables-restore died after its first table' >&2\nexit 1",
            m = marker.display(),
            real = real.display()
        ),
    );
    (wrappers, marker)
}

/// iptables mode removes meshcap's xtables chains of both families in one nf_tables
/// transaction (no restore): when the kernel refuses any part of it, nothing is removed. The
/// refusal: another socket owns an `ip raw` table holding a `MESHCAP_` chain, which DEL must
/// delete with the rest, so the kernel answers EPERM.
#[test]
fn iptables_del_refused_by_nf_tables_keeps_rules_and_retry_cleans() {
    const TEST: &str = "iptables_del_refused_by_nf_tables_keeps_rules_and_retry_cleans";
    privileged!(TEST);
    let f = Fixture::new("middel", json!({"mode": "iptables"}), meshed(false)).expect("fixture");
    let before = snapshot(&f.pod.ns);
    expect_success(f.run_plain("ADD", &f.config()), "ADD");
    let added = snapshot(&f.pod.ns);
    assert!(added.netfilter.has_meshcap());
    let owner = OwnedTable::start(
        &f.pod.ns,
        "add table ip raw { flags owner; }\nadd chain ip raw MESHCAP_SQUATTER\n",
        &["list", "table", "ip", "raw"],
        "MESHCAP_SQUATTER",
    )
    .expect("owned table");
    let squatted = snapshot(&f.pod.ns);
    let out = f.run_plain("DEL", &f.config());
    expect_error(
        out,
        100,
        &[
            "remove meshcap's xtables chains",
            "MESHCAP_SQUATTER of table ip raw",
            "EPERM",
        ],
        "DEL refused by nf_tables",
    );
    // DEL is all-or-nothing: a retried DEL finds the full rules, not half of them.
    assert_unchanged(&squatted, &snapshot(&f.pod.ns), "refused DEL");
    assert_eq!(f.records().len(), 1, "the record must stay for the retry");
    drop(owner);
    assert_unchanged(&added, &snapshot(&f.pod.ns), "after the owner left");
    expect_success(f.run_plain("DEL", &f.config()), "retried DEL");
    assert_unchanged(&before, &snapshot(&f.pod.ns), "after the retried DEL");
    f.assert_no_records("");
}

// ---- nf_tables rejects the transaction ----

/// An `nft -i` session that created a table with `flags owner` (by default `table ip meshcap`
/// with a chain `squatter`): while it runs, the kernel refuses every other socket's change to
/// that table with EPERM (`NFT_TABLE_F_OWNER`, Linux 5.12+, nf_tables_api.c
/// `nft_table_lookup`).
struct OwnedTable(Child);

impl OwnedTable {
    fn start_meshcap(ns: &Netns) -> Result<OwnedTable> {
        OwnedTable::start(
            ns,
            "add table ip meshcap { flags owner; }\nadd chain ip meshcap squatter\n",
            &["list", "table", "ip", "meshcap"],
            "squatter",
        )
    }

    /// Runs `script` in `nft -i` and waits until `nft list_args` shows `marker`.
    fn start(ns: &Netns, script: &str, list_args: &[&str], marker: &str) -> Result<OwnedTable> {
        let mut child = ns
            .command("nft")?
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn nft -i")?;
        let mut stdin = child.stdin.take().context("nft stdin")?;
        stdin.write_all(script.as_bytes())?;
        stdin.flush()?;
        // Keep stdin open (nft -i exits at EOF, and the table goes with its owner).
        std::mem::forget(stdin);
        let held = OwnedTable(child);
        let start = Instant::now();
        loop {
            if let Ok(out) = ns.exec("nft", list_args) {
                if out.contains(marker) {
                    return Ok(held);
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("nft -i did not create the owned table");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnedTable {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nftables_transaction_rejected_by_kernel_changes_nothing() {
    const TEST: &str = "nftables_transaction_rejected_by_kernel_changes_nothing";
    privileged!(TEST);
    let f = Fixture::new("nftrej", json!({"mode": "nftables"}), meshed(true)).expect("fixture");
    let owner = OwnedTable::start_meshcap(&f.pod.ns).expect("owned table");
    let before = snapshot(&f.pod.ns);
    let out = f.run_plain("ADD", &f.config());
    expect_error(
        out,
        100,
        &["nftables", "Operation not permitted"],
        "ADD against an owned ip meshcap table",
    );
    // The owned table is untouched, and the TPROXY ip rules/routes synced before the
    // transaction are undone.
    assert_unchanged(
        &before,
        &snapshot(&f.pod.ns),
        "rejected nftables transaction",
    );
    f.assert_no_records("");
    // DEL (the runtime's cleanup of the failed ADD) meets the same refusal while the owner
    // lives: a clear error the runtime retries, not a silent success over rules it cannot
    // see. docs/DESIGN.md wants DEL to succeed "when ADD never ran".
    expect_error(
        f.run_plain("DEL", &f.config()),
        100,
        &["nftables delete", "table ip meshcap", "EPERM"],
        "DEL against an owned ip meshcap table",
    );
    assert_unchanged(&before, &snapshot(&f.pod.ns), "DEL refused by nf_tables");
    drop(owner);
    // With the owner gone (its table with it), the same ADD goes through.
    expect_success(f.run_plain("ADD", &f.config()), "ADD after the owner left");
    assert!(snapshot(&f.pod.ns).netfilter.has_meshcap());
    expect_success(f.run_plain("DEL", &f.config()), "DEL");
    assert!(!snapshot(&f.pod.ns).netfilter.has_meshcap());
}

// ---- a stored xtables template the kernel refuses ----

/// Where meshcap-cni keeps its xtables templates (`meshcap-dataplane`'s run directory).
const TEMPLATES: &str = "/run/meshcap/templates";
/// crates/meshcap-nft/src/replay.rs `MAGIC`.
const TEMPLATE_MAGIC: &[u8] = b"meshcap xtables template 1\n";

/// The template files whose key holds `needle`.
fn templates_with(needle: &str) -> Vec<PathBuf> {
    std::fs::read_dir(TEMPLATES)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    std::fs::read(p)
                        .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A template that a later ADD reads but the kernel refuses (same key, one rule for a table
/// that does not exist) costs nothing but time: the ADD runs its restore instead, installs
/// exactly what the first pod got, and the refused template is gone.
#[test]
fn a_template_the_kernel_refuses_falls_back_to_the_restore() {
    const TEST: &str = "a_template_the_kernel_refuses_falls_back_to_the_restore";
    privileged!(TEST);
    // A ruleset of this test's own (port 31337), so no other test shares its templates.
    let mut ann = meshed(false);
    ann.insert(
        "traffic.sidecar.istio.io/excludeOutboundPorts".to_string(),
        "31337".to_string(),
    );
    let scratch = ScratchDir::new("refused-template");
    let log = scratch.path().join("meshcap.log");
    let conf = json!({"mode": "iptables", "log_level": "debug", "log_file": log});
    let first = Fixture::new("tmplok", conf.clone(), ann.clone()).expect("fixture");
    expect_success(first.run_plain("ADD", &first.config()), "first ADD");
    let kept = templates_with("31337");
    assert!(!kept.is_empty(), "the first ADD kept no template");
    for path in &kept {
        let bytes = std::fs::read(path).unwrap();
        let rest = bytes.strip_prefix(TEMPLATE_MAGIC).expect("a template file");
        let key_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let header = &rest[..4 + key_len + 1];
        let family = header[4 + key_len];
        let mut bogus = TEMPLATE_MAGIC.to_vec();
        bogus.extend_from_slice(header);
        bogus.extend_from_slice(&1u32.to_le_bytes());
        // NFT_MSG_NEWRULE with only a table name: no such table, no chain, no expressions.
        bogus.extend_from_slice(&6u16.to_le_bytes());
        let attr = [12u8, 0, 1, 0, b'n', b'o', b'n', b'e', b'x', b'i', b's', 0];
        bogus.extend_from_slice(&(attr.len() as u32).to_le_bytes());
        bogus.extend_from_slice(&attr);
        assert!(family == 2 || family == 10, "family byte {family}");
        std::fs::write(path, bogus).unwrap();
    }
    let second = Fixture::new("tmplno", conf, ann).expect("fixture");
    let seen = std::fs::read_to_string(&log).unwrap_or_default().len();
    expect_success(second.run_plain("ADD", &second.config()), "second ADD");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text[seen..].contains("xtables templates not taken"),
        "the refused template was not reported:\n{}",
        &text[seen..]
    );
    let (a, b) = (snapshot(&first.pod.ns), snapshot(&second.pod.ns));
    assert!(a.netfilter.has_meshcap(), "nothing installed");
    assert_eq!(
        a.netfilter, b.netfilter,
        "the restore installed something else"
    );
    for path in &kept {
        assert!(!path.exists(), "{} was kept", path.display());
    }
}

// ---- io_uring unavailable ----

/// DEL hands its nf_tables socket to an io_uring so that the kernel's grace-period wait after
/// a deletion runs on a kernel worker (crates/meshcap-nft/src/conn.rs). Where a seccomp profile
/// refuses io_uring (as container runtimes' defaults do), the socket closes in the plugin:
/// DEL is slower, and still removes everything.
#[test]
fn del_without_io_uring_removes_everything() {
    const TEST: &str = "del_without_io_uring_removes_everything";
    privileged!(TEST);
    for (name, conf) in modes() {
        let f =
            Fixture::new(&format!("nouring{}", &name[..3]), conf, meshed(true)).expect("fixture");
        let before = snapshot(&f.pod.ns);
        let run = |command: &str| {
            let mut cmd = f.command(command, f.pod.ns.path(), &default_path(), &[]);
            meshcap_tests::deny_io_uring_before_exec(&mut cmd);
            run_with_timeout(
                cmd,
                f.config().to_string().as_bytes(),
                Duration::from_secs(60),
            )
            .expect("run meshcap-cni")
        };
        expect_success(run("ADD"), &format!("{name} ADD"));
        assert!(
            snapshot(&f.pod.ns).netfilter.has_meshcap(),
            "{name}: ADD installed nothing"
        );
        expect_success(run("DEL"), &format!("{name} DEL"));
        assert_unchanged(
            &before,
            &snapshot(&f.pod.ns),
            &format!("{name} DEL without io_uring"),
        );
        f.assert_no_records("");
    }
}

// ---- log file ----

#[test]
fn unwritable_log_file_falls_back_to_stderr() {
    const TEST: &str = "unwritable_log_file_falls_back_to_stderr";
    privileged!(TEST);
    for (mode, conf) in modes() {
        let f = Fixture::new(&format!("log-{mode}"), conf, meshed(false)).expect("fixture");
        let scratch = f.node.env.scratch.path();
        let dir = scratch.join("log-is-a-dir");
        std::fs::create_dir_all(&dir).unwrap();
        let file = scratch.join("a-regular-file");
        std::fs::write(&file, "x").unwrap();
        // As root, permission bits do not stop a write; a directory, and a path below a
        // regular file (ENOTDIR), cannot be opened for append by anyone.
        for bad in [dir.clone(), file.join("meshcap-cni.log")] {
            let mut config = f.config();
            config["log_file"] = json!(bad);
            let what = format!("{mode}: log_file {}", bad.display());
            let stderr = expect_success(f.run_plain("ADD", &config), &format!("{what}: ADD"));
            assert!(
                stderr.contains("cannot open log_file") && stderr.contains(&*bad.to_string_lossy()),
                "{what}: stderr does not say why: {stderr}"
            );
            // Logging went on on stderr.
            assert!(stderr.contains("capture installed"), "{what}: {stderr}");
            let state = snapshot(&f.pod.ns).netfilter;
            assert!(state.has_meshcap(), "{what}: no rules after ADD");
            expect_success(f.run_plain("DEL", &config), &format!("{what}: DEL"));
            let left = snapshot(&f.pod.ns).netfilter.meshcap_leftovers();
            assert!(left.is_empty(), "{what}: DEL left {left:?}");
        }
        f.assert_no_records(&format!("{mode}: "));
    }
}

// ---- Kubernetes API ----

/// A server that accepts connections, reads nothing and never answers, in `ns`.
struct SilentApi {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentApi {
    fn start(ns: &Netns) -> SilentApi {
        // A socket stays in the namespace it was created in, so bind it from a thread there.
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, acc2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        acc2.fetch_add(1, Ordering::SeqCst);
                        held.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentApi {
            addr,
            stop,
            accepted,
        }
    }
}

impl Drop for SilentApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn kubernetes_api_timeout_is_code_11_and_applies_nothing() {
    const TEST: &str = "kubernetes_api_timeout_is_code_11_and_applies_nothing";
    privileged!(TEST);
    for (mode, conf) in modes() {
        let f = Fixture::new(&format!("kube-{mode}"), conf, meshed(true)).expect("fixture");
        let api = SilentApi::start(&f.node.ns);
        let scratch = f.node.env.scratch.path();
        std::fs::write(scratch.join("token"), "fault-token\n").unwrap();
        let kubeconfig = scratch.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: http://{}\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\nusers:\n- name: u\n  user:\n    tokenFile: token\n",
                api.addr
            ),
        )
        .unwrap();
        let mut config = f.config();
        // The API path: no annotations from the runtime, a kubeconfig, a short deadline.
        config.as_object_mut().unwrap().remove("runtimeConfig");
        config["kubernetes"] = json!({"kubeconfig": kubeconfig, "timeout_ms": 500});
        let before = snapshot(&f.pod.ns);
        let started = Instant::now();
        let out = f.run_plain("ADD", &config);
        let took = started.elapsed();
        let pod = format!("{}/{}", f.pod.att.k8s_namespace, f.pod.att.k8s_pod);
        expect_error(
            out,
            11,
            &[&pod, "could not be read within", "try again later"],
            &format!("{mode}: ADD with a silent API server"),
        );
        assert!(
            api.accepted.load(Ordering::SeqCst) >= 1,
            "{mode}: the plugin never reached the fake API"
        );
        // The deadline bounds the whole call (500 ms plus process start and setup).
        assert!(took < Duration::from_secs(5), "{mode}: ADD took {took:?}");
        assert_unchanged(
            &before,
            &snapshot(&f.pod.ns),
            &format!("{mode}: API timeout"),
        );
        f.assert_no_records(&format!("{mode}: "));
        // DEL never waits on the API (and finds nothing to remove).
        let started = Instant::now();
        expect_success(f.run_plain("DEL", &config), &format!("{mode}: DEL"));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_unchanged(
            &before,
            &snapshot(&f.pod.ns),
            &format!("{mode}: DEL after timeout"),
        );
    }
}

// ---- eBPF fast path ----

/// The pod's attachment record (there must be exactly one).
fn only_record(f: &Fixture, what: &str) -> Value {
    let records = f.records();
    assert_eq!(records.len(), 1, "{what}: records {records:?}");
    serde_json::from_str(&std::fs::read_to_string(&records[0]).unwrap()).unwrap()
}

#[test]
fn ebpf_enabled_without_agent_adds_rules_only() {
    const TEST: &str = "ebpf_enabled_without_agent_adds_rules_only";
    privileged!(TEST);
    for (mode, mut conf) in modes() {
        // A pin directory no agent uses: the shared one may have an agent of another suite.
        let pins = format!("/sys/fs/bpf/meshcap-fault-none-{}", std::process::id());
        conf["ebpf"] = json!({"enabled": true, "pin_dir": pins});
        let f = Fixture::new(&format!("noagent-{mode}"), conf, meshed(false)).expect("fixture");
        let stderr = expect_success(f.run_plain("ADD", &f.config()), &format!("{mode}: ADD"));
        assert!(
            snapshot(&f.pod.ns).netfilter.has_meshcap(),
            "{mode}: no rules after ADD with ebpf.enabled"
        );
        assert!(
            stderr.contains("continuing with rules only")
                && stderr.contains("eBPF fast path not available")
                && stderr.contains(&pins),
            "{mode}: no warning naming the pin dir on stderr: {stderr}"
        );
        let record = only_record(&f, mode);
        assert_eq!(record["ebpf_registered"], json!(false), "{mode}: {record}");
        expect_success(f.run_plain("CHECK", &f.config()), &format!("{mode}: CHECK"));
        expect_success(f.run_plain("DEL", &f.config()), &format!("{mode}: DEL"));
        let left = snapshot(&f.pod.ns).netfilter.meshcap_leftovers();
        assert!(left.is_empty(), "{mode}: DEL left {left:?}");
        f.assert_no_records(&format!("{mode}: "));
    }
}

/// The agent goes away around a pod's lifetime: stopped (its data path stays pinned and keeps
/// working, registration still succeeds), then uninstalled (pins gone: the next ADD falls back
/// to rules alone, and DEL of a pod registered earlier still succeeds).
#[test]
fn ebpf_agent_stopped_or_uninstalled_around_add_and_del() {
    const TEST: &str = "ebpf_agent_stopped_or_uninstalled_around_add_and_del";
    privileged!(TEST);
    if let Some(why) = meshcap_tests::fastpath::missing_prerequisite() {
        meshcap_testkit::skip_or_fail(TEST, &why);
        return;
    }
    use meshcap_tests::fastpath::{cookie, uninstall, Agent, PrivatePins};
    let pins = PrivatePins::new("faults");
    let agent = match Agent::start(&pins.dir) {
        Ok(a) => a,
        // E.g. `meshcap` built without MESHCAP_BUILD_EBPF=1 (an empty stub object).
        Err(e) => {
            meshcap_testkit::skip_or_fail(TEST, &format!("no agent: {e:#}"));
            return;
        }
    };
    let conf = json!({"mode": "iptables", "ebpf": {"enabled": true, "pin_dir": pins.dir}});
    let f = Fixture::new("agentgone", conf, meshed(false)).expect("fixture");
    let pod_cookie = cookie(&f.pod.ns).unwrap();

    // 1. Agent running: registered.
    expect_success(f.run_plain("ADD", &f.config()), "ADD with the agent");
    assert_eq!(
        only_record(&f, "ADD with the agent")["ebpf_registered"],
        json!(true)
    );
    assert!(pins.pins().registered().unwrap().contains(&pod_cookie));

    // 2. Agent stopped (SIGTERM): its programs and maps stay pinned, a retried ADD registers.
    let status = agent.stop().expect("stop the agent");
    assert!(status.success(), "agent exit {status}");
    expect_success(
        f.run_plain("ADD", &f.config()),
        "ADD after the agent stopped",
    );
    assert_eq!(
        only_record(&f, "ADD after the agent stopped")["ebpf_registered"],
        json!(true)
    );

    // 3. Uninstalled while the pod is registered (the pins and the entry vanish with it):
    //    DEL still succeeds and removes the rules and the record.
    uninstall(&pins.dir).expect("uninstall");
    expect_success(f.run_plain("DEL", &f.config()), "DEL after uninstall");
    assert!(
        !snapshot(&f.pod.ns).netfilter.has_meshcap(),
        "rules left after DEL"
    );
    f.assert_no_records("");

    // 4. ADD with no agent at all: rules alone, and the warning says why.
    let stderr = expect_success(f.run_plain("ADD", &f.config()), "ADD after uninstall");
    assert!(
        stderr.contains("continuing with rules only"),
        "no warning: {stderr}"
    );
    assert_eq!(
        only_record(&f, "ADD after uninstall")["ebpf_registered"],
        json!(false)
    );
    assert!(snapshot(&f.pod.ns).netfilter.has_meshcap());
    expect_success(f.run_plain("DEL", &f.config()), "final DEL");
    f.assert_no_records("");
}

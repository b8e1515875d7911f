//! meshcap under a real container runtime: podman 4.3 with runc and the CNI network backend.
//!
//! Each test builds its own world and tears it down even on failure:
//! - a scratch dir with a busybox rootfs (no image pulls), a plugin dir holding a copy of the
//!   built `meshcap-cni`, a network config dir with one conflist (`bridge` + host-local IPAM on
//!   a small v4+v6 subnet of its own, then `meshcap-cni` with `selection: all`), and a
//!   `containers.conf` pointing podman at those two dirs; podman reads it through
//!   `CONTAINERS_CONF`, which replaces the system file and which podman hands on to the
//!   `podman container cleanup` that conmon runs, so ADD and every DEL see the same network;
//! - a "remote" namespace plugged into the test's bridge, serving TCP 8080;
//! - a container started with `podman --runtime runc run -d --network NET --rootfs DIR`.
//!
//! Inside the container's network namespace (podman's `SandboxKey`, entered with `nsenter`)
//! the stand-in sidecar runs as uid/gid 1337. An app process (another uid) dials the remote and
//! must land on the sidecar's 15001 with `SO_ORIGINAL_DST` naming the remote; the same dial as
//! uid 1337 must reach the remote itself. A process started by `podman exec` (all the
//! container's namespaces, busybox `nc`) must be captured too. The namespace is pinned with
//! `ip netns attach` so that, after `podman rm -f`, the test can see that the DEL podman ran
//! removed every meshcap rule in it, removed the host-side attachment record and logged it.
//!
//! The plugin's attachment records stay in the default state dir: a `MESHCAP_STATE_DIR` set
//! for podman does not reach the `podman container cleanup` that conmon starts when a
//! container exits (conmon passes on only a few variables; observed with podman 4.3.1), and
//! that process may be the one that runs DEL.
//!
//! Privileged: skipped by name unless root with podman, runc, a static busybox, `nsenter`, the
//! reference CNI plugins and the built binaries (`cargo build -p meshcap-cni -p meshcap-tests
//! --bins` with the same `CARGO_TARGET_DIR`); under `CI=true` a missing prerequisite fails.
#![forbid(unsafe_code)]

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;

use meshcap_tests::chain::Scratch;
use meshcap_tests::netns::{run_checked, Netns};
use meshcap_tests::node::{start_server, Proc};
use meshcap_tests::standin::{read_records, ClientReport, Record, PROXY_ID, SIDECAR_TCP_PORTS};
use meshcap_tests::state::{NetfilterState, COMMANDS};

/// Where `meshcap-cni` keeps attachment records when `MESHCAP_STATE_DIR` is unset (SPEC:
/// host-side state; `cni-plugin/src/env.rs`).
const DEFAULT_STATE_DIR: &str = "/var/run/meshcap/attachments";
/// The port the remote serves and the apps dial.
const REMOTE_PORT: u16 = 8080;
/// A non-proxy uid/gid for the app process.
const APP_ID: u32 = 1000;
/// Upper bound for any podman command; a healthy one takes about a second.
const PODMAN_TIMEOUT_SECS: u32 = 60;
/// How long a server may take to bind its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn podman_iptables_captures_container_traffic_and_del_cleans_up() {
    let name = "podman_iptables_captures_container_traffic_and_del_cleans_up";
    if can_run(name) {
        run(name, "iptables", 0).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

#[test]
fn podman_nftables_captures_container_traffic_and_del_cleans_up() {
    let name = "podman_nftables_captures_container_traffic_and_del_cleans_up";
    if can_run(name) {
        run(name, "nftables", 1).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

/// The harness's own prerequisites, then podman's; skips (or fails under `CI=true`) by name.
fn can_run(name: &str) -> bool {
    if !meshcap_tests::privileged(name) {
        return false;
    }
    let Some(why) = podman_missing() else {
        return true;
    };
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{name}: cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED {name}: {why}");
    false
}

fn podman_missing() -> Option<String> {
    for (bin, pkg) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("timeout", "coreutils"),
    ] {
        let ok = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("`{bin} --version` fails (apt-get install {pkg})"));
        }
    }
    let busybox = busybox_path();
    match std::fs::read(&busybox) {
        // A dynamic busybox would need the host's libc inside the rootfs.
        Ok(bytes) if has_interpreter(&bytes) => Some(format!(
            "{} is not static (apt-get install busybox-static)",
            busybox.display()
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "{}: {e} (apt-get install busybox-static)",
            busybox.display()
        )),
    }
}

/// Whether a little-endian ELF64 file has a `PT_INTERP` program header, i.e. is dynamically
/// linked (elf(5)); anything else counts as having one, so it is not used.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return true;
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize).is_none_or(|t| t == PT_INTERP))
}

/// Env `MESHCAP_BUSYBOX`, else Debian busybox-static's `/bin/busybox`.
fn busybox_path() -> PathBuf {
    std::env::var_os("MESHCAP_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Addresses of one test's network: `10.251.<n>.0/24` and `fd00:251:<n>::/64`, `n` derived
/// from the pid and the mode so parallel tests and processes use different subnets.
struct Subnet {
    n: u16,
}

impl Subnet {
    fn new(mode_index: u16) -> Subnet {
        Subnet {
            n: (std::process::id() % 120) as u16 * 2 + mode_index,
        }
    }
    fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.n as u8, host)
    }
    fn v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x251, self.n, 0, 0, 0, 0, host)
    }
}

/// Everything one test created outside its scratch dir, undone on drop in dependency order:
/// the container first (its DEL needs the conflist and the plugin), then processes, the remote
/// namespace, the bridge and meshcap's state for the test's network.
struct World {
    name: String,
    network: String,
    bridge: String,
    conf: PathBuf,
    rootfs: PathBuf,
    records: PathBuf,
    log_file: PathBuf,
    container: Option<String>,
    /// `ip netns attach` name holding the container's namespace alive past `podman rm`.
    pinned: Option<String>,
    procs: Vec<Proc>,
    remote: Option<Netns>,
    scratch: Scratch,
}

impl World {
    fn new(name: &str, mode: &str, mode_index: u16, subnet: &Subnet) -> Result<World> {
        let pid = std::process::id();
        let scratch = Scratch::new(&format!("podman-{mode}"))?;
        let dir = scratch.path().to_path_buf();
        let network = format!("meshcap-podman-{mode}-{pid}");
        // IFNAMSIZ: at most 15 bytes.
        let bridge = format!("mcp{}{}", pid % 10_000_000, ["i", "n"][mode_index as usize]);
        let world = World {
            name: name.into(),
            network,
            bridge,
            conf: dir.join("containers.conf"),
            rootfs: dir.join("rootfs"),
            records: dir.join("records"),
            log_file: dir.join("meshcap-cni.log"),
            container: None,
            pinned: None,
            procs: Vec::new(),
            remote: None,
            scratch,
        };
        world.write_files(mode, subnet)?;
        Ok(world)
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The rootfs, the plugin dir, the conflist and containers.conf.
    fn write_files(&self, mode: &str, subnet: &Subnet) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&self.records)?;

        let bin = self.rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        for d in ["proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(self.rootfs.join(d))?;
        }
        std::fs::copy(busybox_path(), bin.join("busybox"))
            .context("copy busybox into the rootfs")?;
        for applet in ["sh", "sleep", "nc", "ip", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }

        // A copy, not a symlink: other builds may replace the target binary mid-test.
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        let cni = meshcap_tests::bins::meshcap_cni()?;
        std::fs::copy(&cni, plugins.join("meshcap-cni"))
            .with_context(|| format!("copy {}", cni.display()))?;

        let net = dir.join("net.d");
        std::fs::create_dir_all(&net)?;
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.join("ipam"),
                        "ranges": [
                            [{"subnet": format!("{}/24", subnet.v4(0)), "rangeStart": subnet.v4(10).to_string(), "rangeEnd": subnet.v4(99).to_string()}],
                            [{"subnet": format!("{}/64", subnet.v6(0)), "rangeStart": subnet.v6(0x10).to_string(), "rangeEnd": subnet.v6(0x99).to_string()}]
                        ]
                    }
                },
                {
                    "type": "meshcap-cni",
                    "mode": mode,
                    "selection": "all",
                    "log_file": self.log_file,
                    "log_level": "debug"
                }
            ]
        });
        std::fs::write(
            net.join(format!("{}.conflist", self.network)),
            serde_json::to_vec_pretty(&conflist)?,
        )?;

        let toml_list = |paths: &[&Path]| -> String {
            paths
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let conf = format!(
            "# Written by tests/tests/podman.rs for {name}; podman reads only this file.\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugin_dirs}]\n\
             network_config_dir = {net:?}\n\
             [containers]\n\
             # The machine's hard limits are lower than podman's defaults.\n\
             default_ulimits = [\"nofile=10000:10000\", \"nproc=1000:1000\"]\n",
            name = self.name,
            plugin_dirs = toml_list(&[&plugins, &meshcap_tests::bins::reference_plugin_dir()]),
            net = net.display().to_string(),
        );
        std::fs::write(&self.conf, conf)?;
        Ok(())
    }

    /// `podman --runtime runc ARGS` with this test's containers.conf, bounded in time.
    fn podman(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-k",
            "5",
            &PODMAN_TIMEOUT_SECS.to_string(),
            "podman",
            "--runtime",
            "runc",
        ])
        .args(args)
        .env("CONTAINERS_CONF", &self.conf);
        run_checked(&mut cmd)
    }

    /// The remote host: a namespace whose eth0 is plugged into the test's bridge, serving TCP
    /// [`REMOTE_PORT`] on `.250` / `::fa`.
    fn start_remote(&mut self, subnet: &Subnet) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let ns = Netns::new(&format!("{}-remote", self.name.replace('_', "-")))?;
        ns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad=0")?;
        let host_if = format!("{}r", self.bridge);
        run_checked(Command::new("ip").args([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]))?;
        // The host end dies with the namespace (its peer goes with it).
        self.remote = Some(ns);
        let ns = self.remote.as_ref().expect("just set");
        run_checked(Command::new("ip").args([
            "link",
            "set",
            &host_if,
            "master",
            &self.bridge,
            "up",
        ]))?;
        let (v4, v6) = (subnet.v4(250), subnet.v6(0xfa));
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let server = start_server(
            ns,
            &self.records,
            "remote",
            "remote",
            &["--tcp", &REMOTE_PORT.to_string()],
        )?;
        self.procs.push(server);
        Ok((v4, v6))
    }

    /// Start the stand-in sidecar inside `netns` (entered with nsenter; it binds as root, then
    /// drops to 1337 itself) and wait until it listens.
    fn start_sidecar(&mut self, netns: &Path) -> Result<()> {
        let ports = SIDECAR_TCP_PORTS
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let ready = self.records.join("sidecar.ready");
        let id = PROXY_ID.to_string();
        let mut cmd = nsenter(netns, None);
        cmd.arg(meshcap_tests::bins::standin()?)
            .arg("serve")
            .args([
                "--name", "sidecar", "--tcp", &ports, "--uid", &id, "--gid", &id,
            ])
            .arg("--records")
            .arg(self.records.join("sidecar.jsonl"))
            .arg("--ready")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Proc(cmd.spawn().context("spawn the stand-in sidecar")?);
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = child.0.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("stand-in sidecar exited ({status}): {err}");
            }
            ensure!(
                start.elapsed() < READY_TIMEOUT,
                "stand-in sidecar not ready after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.procs.push(child);
        Ok(())
    }

    /// `standin client` inside `netns` as `uid`/`gid`, dialling `addr` with `token`.
    fn client(&self, netns: &Path, id: u32, addr: SocketAddr, token: &str) -> Result<ClientReport> {
        let mut cmd = nsenter(netns, Some(id));
        cmd.arg(meshcap_tests::bins::standin()?).args([
            "client",
            "--proto",
            "tcp",
            "--addr",
            &addr.to_string(),
            "--token",
            token,
            "--timeout-ms",
            "2000",
        ]);
        let out = run_checked(&mut cmd)?;
        serde_json::from_str(out.trim()).with_context(|| format!("client report {out:?}"))
    }

    /// The record a server wrote for `token`.
    fn record(&self, token: &str) -> Result<Record> {
        read_records(&self.records)
            .into_iter()
            .find(|r| r.token == token)
            .ok_or_else(|| anyhow!("no server recorded token {token}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(id) = self.container.take() {
            if let Err(e) = self.podman(&["rm", "-f", "-t", "0", &id]) {
                eprintln!("{}: cleanup: podman rm -f {id}: {e:#}", self.name);
            }
        }
        self.procs.clear();
        if let Some(pin) = self.pinned.take() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &pin])
                .stderr(Stdio::null())
                .status();
        }
        self.remote.take();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(Path::new(DEFAULT_STATE_DIR).join(&self.network));
        if std::env::var_os("MESHCAP_E2E_KEEP").is_some() {
            eprintln!("{}: kept {}", self.name, self.dir().display());
        }
    }
}

/// The netfilter and policy-routing state of `netns`, as the harness's snapshots see it.
fn netfilter_state(netns: &Path) -> NetfilterState {
    let sections = COMMANDS
        .iter()
        .map(|cmd| {
            let out = run_checked(nsenter(netns, None).args(cmd.iter())).unwrap_or_default();
            (cmd.join(" "), out)
        })
        .collect();
    NetfilterState { sections }
}

/// Whether `state` holds meshcap's rules in `mode`'s backend and nowhere else: iptables mode
/// writes `MESHCAP_*` chains through an xtables flavour, nftables mode its own `meshcap` tables
/// and no xtables rules.
fn installed_in_backend(state: &NetfilterState, mode: &str) -> bool {
    let xtables = state.sections.iter().any(|(cmd, text)| {
        cmd.contains("tables") && cmd.ends_with("-save") && text.contains("MESHCAP")
    });
    let native = state.sections.iter().any(|(cmd, text)| {
        cmd == "nft list ruleset"
            && text
                .lines()
                .any(|l| l.starts_with("table ") && l.contains(" meshcap"))
    });
    match mode {
        "nftables" => native && !xtables,
        _ => xtables,
    }
}

/// `nsenter --net=NETNS [-S id -G id] --`: enters only the network namespace, so the host's
/// binaries and the records dir stay reachable; `-S`/`-G` drop to `id` with no supplementary
/// groups (nsenter(1)).
fn nsenter(netns: &Path, id: Option<u32>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()));
    if let Some(id) = id {
        cmd.args(["-S", &id.to_string(), "-G", &id.to_string()]);
    }
    cmd.arg("--");
    cmd
}

fn run(name: &str, mode: &str, mode_index: u16) -> Result<()> {
    let subnet = Subnet::new(mode_index);
    let mut world = World::new(name, mode, mode_index, &subnet)?;
    let token = |what: &str| format!("{name}-{what}-{}", std::process::id());

    // The container: ADD runs bridge, then meshcap-cni.
    let out = world
        .podman(&[
            "run",
            "-d",
            "--name",
            &format!("{}-{}", name.replace('_', "-"), std::process::id()),
            "--network",
            &world.network.clone(),
            "--rootfs",
            &world.rootfs.display().to_string(),
            "/bin/sleep",
            "300",
        ])
        .context("podman run")?;
    let id = out.trim().lines().last().unwrap_or_default().to_string();
    ensure!(
        id.len() == 64,
        "podman run printed no container id: {out:?}; plugin log:\n{}",
        world.log()
    );
    world.container = Some(id.clone());

    let inspect = world.podman(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}} {{.State.Pid}}",
        &id,
    ])?;
    let mut parts = inspect.split_whitespace();
    let sandbox = PathBuf::from(parts.next().unwrap_or_default());
    let pid: u32 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .context("container pid")?;
    ensure!(
        sandbox.is_absolute() && sandbox.exists(),
        "no sandbox netns in {inspect:?}"
    );
    // The same namespace the container's init lives in.
    let sandbox_ino = std::fs::metadata(&sandbox)?;
    let init_ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    use std::os::unix::fs::MetadataExt;
    ensure!(
        sandbox_ino.ino() == init_ino.ino(),
        "SandboxKey {} is not the container's netns",
        sandbox.display()
    );

    // ADD left its host-side record, for the netns podman passed.
    let record_path = Path::new(DEFAULT_STATE_DIR)
        .join(&world.network)
        .join(format!("{id}@eth0.json"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).with_context(|| {
            format!(
                "ADD left no attachment record {}; plugin log:\n{}",
                record_path.display(),
                world.log()
            )
        })?)?;
    ensure!(
        record["mode"] == mode,
        "record mode {} != {mode}: {record}",
        record["mode"]
    );
    ensure!(
        record["netns"] == sandbox.display().to_string(),
        "record netns {} != {}",
        record["netns"],
        sandbox.display()
    );

    // Keep the namespace alive past `podman rm`, to look inside it after DEL.
    let pin = format!("{}-{}", name.replace('_', "-"), std::process::id());
    run_checked(Command::new("ip").args(["netns", "attach", &pin, &pid.to_string()]))?;
    world.pinned = Some(pin.clone());
    let pinned = Path::new("/run/netns").join(&pin);

    // The rules are in the container's namespace, in the configured backend.
    let state = netfilter_state(&pinned);
    ensure!(
        installed_in_backend(&state, mode),
        "no meshcap {mode} rules in the container netns:\n{state:?}"
    );

    let (r4, r6) = world.start_remote(&subnet)?;
    world.start_sidecar(&sandbox)?;
    let v6 = world.podman(&[
        "exec", &id, "/bin/ip", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ])?;
    let has_v6 = v6.contains(&subnet.v6(0).to_string().trim_end_matches("::").to_string());

    let mut targets: Vec<SocketAddr> = vec![SocketAddr::new(IpAddr::V4(r4), REMOTE_PORT)];
    if has_v6 {
        targets.push(SocketAddr::new(IpAddr::V6(r6), REMOTE_PORT));
    } else {
        eprintln!("{name}: container has no global IPv6 address; checking IPv4 only:\n{v6}");
    }
    for target in &targets {
        let fam = if target.is_ipv4() { "v4" } else { "v6" };

        // An app process (not the proxy's uid) is captured: 15001 with the original destination.
        let t = token(&format!("app-{fam}"));
        let report = world.client(&sandbox, APP_ID, *target, &t)?;
        ensure!(
            report.result == "ok",
            "app dial of {target} as uid {APP_ID}: {report:?}"
        );
        let rec = world.record(&t)?;
        ensure!(
            rec.server == "sidecar"
                && rec.port == 15001
                && rec.orig.as_deref() == Some(&target.to_string()),
            "app dial of {target} was not captured to 15001 with its original destination: {rec:?}"
        );

        // The proxy's own connection leaves uncaptured and reaches the remote itself.
        let t = token(&format!("proxy-{fam}"));
        let report = world.client(&sandbox, PROXY_ID, *target, &t)?;
        ensure!(
            report.result == "ok",
            "proxy dial of {target} as uid {PROXY_ID}: {report:?}"
        );
        let rec = world.record(&t)?;
        ensure!(
            rec.server == "remote" && rec.port == REMOTE_PORT,
            "proxy dial of {target} did not reach the remote: {rec:?}"
        );
    }

    // A process podman itself starts in the container (every container namespace, its root
    // user, busybox) is captured too.
    let t = token("exec");
    let script = format!("echo {t} | nc -w 2 {r4} {REMOTE_PORT}");
    let answer = world.podman(&["exec", &id, "/bin/sh", "-c", &script])?;
    ensure!(answer.starts_with("ok"), "podman exec nc got {answer:?}");
    let rec = world.record(&t)?;
    ensure!(
        rec.server == "sidecar"
            && rec.port == 15001
            && rec.orig.as_deref() == Some(&format!("{r4}:{REMOTE_PORT}")),
        "podman exec dial was not captured: {rec:?}"
    );

    // `podman rm -f` tears the network down: meshcap's DEL must remove its record and say so.
    world.container = None;
    world
        .podman(&["rm", "-f", "-t", "0", &id])
        .context("podman rm -f")?;
    ensure!(
        !sandbox.exists(),
        "podman left the sandbox {}",
        sandbox.display()
    );
    ensure!(
        !record_path.exists(),
        "DEL left the attachment record {}; plugin log:\n{}",
        record_path.display(),
        world.log()
    );
    // An unreachable namespace would read as empty: make sure it is still there to look at.
    run_checked(nsenter(&pinned, None).arg("true"))
        .context("enter the pinned namespace after podman rm")?;
    let leftovers = netfilter_state(&pinned).meshcap_leftovers();
    ensure!(
        leftovers.is_empty(),
        "DEL left rules in the container's namespace:\n{}",
        leftovers.join("\n")
    );
    let log = world.log();
    let del_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&id) && l.contains("DEL"))
        .collect();
    ensure!(
        !del_lines.is_empty(),
        "the plugin log shows no DEL for {id}:\n{log}"
    );
    eprintln!(
        "{name}: ok ({} flows, DEL logged: {})",
        targets.len() * 2 + 1,
        del_lines[0]
    );
    Ok(())
}

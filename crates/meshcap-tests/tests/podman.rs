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
//! Adoption (`podman_container_started_before_install_is_adopted_by_the_agent`): a container
//! started while the conflist has no meshcap entry (a node where meshcap is installed after
//! pods are running) gets no rules and no record; `meshcap install` then chains the plugin and
//! `meshcap agent` finds the container in podman's libcni cache (`/var/lib/cni/results`;
//! podman 4.3 vendors a libcni without the cache's `netns` field, so the agent reads the netns
//! from the cached result's interface `sandbox`) and installs its rules in place by running
//! the plugin's ADD. The test then proves capture the same way as above, that the adoption was
//! counted and logged once, and that a container started after the install is not adopted a
//! second time. podman tears a container's network down with the conflist libcni cached at
//! ADD, so `podman rm -f` of the adopted container never calls meshcap; the agent sees the
//! cache entry go and runs meshcap's DEL itself: the test waits for the record to go and for
//! that DEL in the plugin's log. (The namespace's path is gone by then, so that DEL cannot
//! enter it; the rules die with the namespace, which only the test's pin keeps alive.) The
//! container started after the install is torn down through meshcap by podman as usual. The
//! agent reads the node's real cache and the default state dir, but adopts only networks of
//! the test's own config dir; its repair also sees the other podman tests' records, which do
//! not drift (a repair it made would be printed).
//!
//! The plugin's attachment records stay in the default state dir: a `MESHCAP_STATE_DIR` set
//! for podman does not reach the `podman container cleanup` that conmon starts when a
//! container exits (conmon passes on only a few variables; observed with podman 4.3.1), and
//! that process may be the one that runs DEL.
//!
//! Privileged: skipped by name unless root with podman, runc, a static busybox, `nsenter`, the
//! reference CNI plugins and the built binaries (`cargo build -p meshcap-cni -p meshcap
//! -p meshcap-tests --bins` with the same `CARGO_TARGET_DIR`); under `CI=true` a missing
//! prerequisite fails.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};

use meshcap_tests::agent_process::AgentProcess;
use meshcap_tests::chain::Scratch;
use meshcap_tests::netns::{run_checked, Netns};
use meshcap_tests::node::{start_server, Proc};
use meshcap_tests::standin::{read_records, ClientReport, Record, PROXY_ID, SIDECAR_TCP_PORTS};
use meshcap_tests::state::{NetfilterState, COMMANDS};

/// Where `meshcap-cni` keeps attachment records when `MESHCAP_STATE_DIR` is unset.
const DEFAULT_STATE_DIR: &str = meshcap_records::DEFAULT_STATE_DIR;
/// libcni's result cache as podman's CNI backend writes it (libcni's default cache dir).
const CNI_CACHE_DIR: &str = "/var/lib/cni";
/// The port the remote serves and the apps dial.
const REMOTE_PORT: u16 = 8080;
/// A non-proxy uid/gid for the app process.
const APP_ID: u32 = 1000;
/// Upper bound for any podman command; a healthy one takes about a second.
const PODMAN_TIMEOUT_SECS: u32 = 60;

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

#[test]
fn podman_container_started_before_install_is_adopted_by_the_agent() {
    let name = "podman_container_started_before_install_is_adopted_by_the_agent";
    if !can_run(name) {
        return;
    }
    if let Err(e) = meshcap_tests::bins::meshcap() {
        return meshcap_tests::skip_or_fail(name, &format!("{e:#}"));
    }
    adopt(name, "iptables", 2).unwrap_or_else(|e| panic!("{name}: {e:#}"));
}

/// The harness's own prerequisites, then podman's; skips (or fails under `CI=true`) by name.
fn can_run(name: &str) -> bool {
    if !meshcap_tests::privileged(name) {
        return false;
    }
    let Some(why) = podman_missing() else {
        return true;
    };
    meshcap_testkit::skip_or_fail(name, &why);
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
/// from the pid and the test's index (0 to 2) so parallel tests and processes use different
/// subnets.
struct Subnet {
    n: u16,
}

impl Subnet {
    fn new(index: u16) -> Subnet {
        Subnet {
            n: (std::process::id() % 80) as u16 * 3 + index,
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
/// the containers first (their DEL needs the conflist and the plugin), then processes, the
/// remote namespace, the bridge and meshcap's state for the test's network.
struct World {
    name: String,
    network: String,
    bridge: String,
    conf: PathBuf,
    /// The network config dir podman reads (`network_config_dir`).
    net_d: PathBuf,
    /// The plugin dir podman searches first; `meshcap install --cni-bin-dir` writes here.
    plugins: PathBuf,
    rootfs: PathBuf,
    records: PathBuf,
    log_file: PathBuf,
    containers: Vec<String>,
    /// `ip netns attach` names holding containers' namespaces alive past `podman rm`.
    pinned: Vec<String>,
    procs: Vec<Proc>,
    remote: Option<Netns>,
    scratch: Scratch,
}

/// A running container and its network namespace.
struct Container {
    id: String,
    /// podman's `SandboxKey`: the netns path it passed to CNI.
    sandbox: PathBuf,
    pid: u32,
}

impl World {
    /// `label` names the test's network and scratch dir; `index` (0 to 2) picks its subnet and
    /// bridge; `chained`: whether the conflist has meshcap's entry from the start (else the
    /// test runs `meshcap install` itself).
    fn new(
        name: &str,
        label: &str,
        mode: &str,
        index: u16,
        subnet: &Subnet,
        chained: bool,
    ) -> Result<World> {
        let pid = std::process::id();
        let scratch = Scratch::new(&format!("podman-{label}"))?;
        let dir = scratch.path().to_path_buf();
        let network = format!("meshcap-podman-{label}-{pid}");
        // IFNAMSIZ: at most 15 bytes.
        let bridge = format!("mcp{}{}", pid % 10_000_000, ["i", "n", "a"][index as usize]);
        let world = World {
            name: name.into(),
            network,
            bridge,
            conf: dir.join("containers.conf"),
            net_d: dir.join("net.d"),
            plugins: dir.join("plugins"),
            rootfs: dir.join("rootfs"),
            records: dir.join("records"),
            log_file: dir.join("meshcap-cni.log"),
            containers: Vec::new(),
            pinned: Vec::new(),
            procs: Vec::new(),
            remote: None,
            scratch,
        };
        world.write_files(mode, subnet, chained)?;
        Ok(world)
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The rootfs, the plugin dir, the conflist and containers.conf.
    fn write_files(&self, mode: &str, subnet: &Subnet, chained: bool) -> Result<()> {
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
        let plugins = &self.plugins;
        std::fs::create_dir_all(plugins)?;
        let cni = meshcap_tests::bins::meshcap_cni()?;
        if chained {
            std::fs::copy(&cni, plugins.join("meshcap-cni"))
                .with_context(|| format!("copy {}", cni.display()))?;
        }

        let net = &self.net_d;
        std::fs::create_dir_all(net)?;
        let mut conflist = json!({
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
        if !chained {
            // The node before `meshcap install`: the primary plugin alone.
            conflist["plugins"]
                .as_array_mut()
                .expect("plugins")
                .truncate(1);
        }
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
            "# Written by crates/meshcap-tests/tests/podman.rs for {name}; podman reads only this file.\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugin_dirs}]\n\
             network_config_dir = {net:?}\n\
             [containers]\n\
             # The machine's hard limits are lower than podman's defaults.\n\
             default_ulimits = [\"nofile=10000:10000\", \"nproc=1000:1000\"]\n",
            name = self.name,
            plugin_dirs = toml_list(&[plugins, &meshcap_tests::bins::reference_plugin_dir()]),
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
        let _ = std::fs::remove_file(&ready);
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
            .arg(&ready);
        let child = meshcap_tests::node::spawn_ready(&mut cmd, &ready, "stand-in sidecar")?;
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
        for id in std::mem::take(&mut self.containers) {
            if let Err(e) = self.podman(&["rm", "-f", "-t", "0", &id]) {
                eprintln!("{}: cleanup: podman rm -f {id}: {e:#}", self.name);
            }
        }
        self.procs.clear();
        for pin in std::mem::take(&mut self.pinned) {
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

impl World {
    /// `podman run -d` of `sleep 300` on the test's network; the container is removed on drop.
    fn run_container(&mut self, suffix: &str) -> Result<Container> {
        let out = self
            .podman(&[
                "run",
                "-d",
                "--name",
                &format!(
                    "{}-{suffix}-{}",
                    self.name.replace('_', "-"),
                    std::process::id()
                ),
                "--network",
                &self.network.clone(),
                "--rootfs",
                &self.rootfs.display().to_string(),
                "/bin/sleep",
                "300",
            ])
            .context("podman run")?;
        let id = out.trim().lines().last().unwrap_or_default().to_string();
        ensure!(
            id.len() == 64,
            "podman run printed no container id: {out:?}; plugin log:\n{}",
            self.log()
        );
        self.containers.push(id.clone());

        let inspect = self.podman(&[
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
        use std::os::unix::fs::MetadataExt;
        let sandbox_ino = std::fs::metadata(&sandbox)?;
        let init_ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
        ensure!(
            sandbox_ino.ino() == init_ino.ino(),
            "SandboxKey {} is not the container's netns",
            sandbox.display()
        );
        Ok(Container { id, sandbox, pid })
    }

    /// Keeps the container's namespace alive past `podman rm` (to look inside it after DEL);
    /// returns its `/run/netns` path.
    fn pin(&mut self, c: &Container, suffix: &str) -> Result<PathBuf> {
        let pin = format!(
            "{}-{suffix}-{}",
            self.name.replace('_', "-"),
            std::process::id()
        );
        run_checked(Command::new("ip").args(["netns", "attach", &pin, &c.pid.to_string()]))?;
        self.pinned.push(pin.clone());
        Ok(Path::new("/run/netns").join(pin))
    }

    /// Where the plugin keeps the container's attachment record.
    fn record_path(&self, id: &str) -> PathBuf {
        Path::new(DEFAULT_STATE_DIR)
            .join(&self.network)
            .join(format!("{id}@eth0.json"))
    }

    /// The attachment record, which must be there, for `mode` and the netns podman passed.
    fn check_record(&self, c: &Container, mode: &str) -> Result<Value> {
        let path = self.record_path(&c.id);
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no attachment record {}; plugin log:\n{}",
                    path.display(),
                    self.log()
                )
            })?)?;
        ensure!(
            record["mode"] == mode,
            "record mode {} != {mode}: {record}",
            record["mode"]
        );
        ensure!(
            record["netns"] == c.sandbox.display().to_string(),
            "record netns {} != {}",
            record["netns"],
            c.sandbox.display()
        );
        Ok(record)
    }

    /// A dial of `target` from the container as uid `id` that must succeed; what the server
    /// that took it recorded.
    fn dial(&self, netns: &Path, id: u32, target: SocketAddr, token: &str) -> Result<Record> {
        let report = self.client(netns, id, target, token)?;
        ensure!(
            report.result == "ok",
            "dial of {target} as uid {id}: {report:?}"
        );
        self.record(token)
    }

    /// Proves capture in the container as the sidecar sees it: an app dial of the remote (v4,
    /// and v6 when the container has an address) lands on 15001 with the original destination,
    /// the proxy's own dial reaches the remote, and a `podman exec` dial is captured. Starts
    /// the remote and the sidecar on first use. Returns the number of flows checked.
    fn check_capture(&mut self, c: &Container, subnet: &Subnet, tag: &str) -> Result<usize> {
        let name = self.name.clone();
        let token = |what: &str| format!("{name}-{tag}-{what}-{}", std::process::id());
        if self.remote.is_none() {
            self.start_remote(subnet)?;
        }
        let (r4, r6) = (subnet.v4(250), subnet.v6(0xfa));
        self.start_sidecar(&c.sandbox)?;
        let v6 = self.podman(&[
            "exec", &c.id, "/bin/ip", "-6", "addr", "show", "dev", "eth0", "scope", "global",
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

            // An app process (not the proxy's uid) is captured: 15001 with the original
            // destination.
            let rec = self.dial(&c.sandbox, APP_ID, *target, &token(&format!("app-{fam}")))?;
            ensure!(
                rec.server == "sidecar"
                    && rec.port == 15001
                    && rec.orig.as_deref() == Some(&target.to_string()),
                "app dial of {target} was not captured to 15001 with its original destination: {rec:?}"
            );

            // The proxy's own connection leaves uncaptured and reaches the remote itself.
            let rec = self.dial(
                &c.sandbox,
                PROXY_ID,
                *target,
                &token(&format!("proxy-{fam}")),
            )?;
            ensure!(
                rec.server == "remote" && rec.port == REMOTE_PORT,
                "proxy dial of {target} did not reach the remote: {rec:?}"
            );
        }

        // A process podman itself starts in the container (every container namespace, its
        // root user, busybox) is captured too.
        let t = token("exec");
        let script = format!("echo {t} | nc -w 2 {r4} {REMOTE_PORT}");
        let answer = self.podman(&["exec", &c.id, "/bin/sh", "-c", &script])?;
        ensure!(answer.starts_with("ok"), "podman exec nc got {answer:?}");
        let rec = self.record(&t)?;
        ensure!(
            rec.server == "sidecar"
                && rec.port == 15001
                && rec.orig.as_deref() == Some(&format!("{r4}:{REMOTE_PORT}")),
            "podman exec dial was not captured: {rec:?}"
        );
        // The sidecar served this container only; the next one gets its own.
        self.procs.pop();
        Ok(targets.len() * 2 + 1)
    }

    /// `podman rm -f` tears the network down: meshcap's DEL must remove the record and every
    /// rule in the (pinned) namespace, and log it. Returns the first DEL log line.
    fn remove_and_check_del(&mut self, c: &Container, pinned: &Path) -> Result<String> {
        self.containers.retain(|id| *id != c.id);
        self.podman(&["rm", "-f", "-t", "0", &c.id])
            .context("podman rm -f")?;
        ensure!(
            !c.sandbox.exists(),
            "podman left the sandbox {}",
            c.sandbox.display()
        );
        let record_path = self.record_path(&c.id);
        ensure!(
            !record_path.exists(),
            "DEL left the attachment record {}; plugin log:\n{}",
            record_path.display(),
            self.log()
        );
        // An unreachable namespace would read as empty: make sure it is still there to look at.
        run_checked(nsenter(pinned, None).arg("true"))
            .context("enter the pinned namespace after podman rm")?;
        let leftovers = netfilter_state(pinned).meshcap_leftovers();
        ensure!(
            leftovers.is_empty(),
            "DEL left rules in the container's namespace:\n{}",
            leftovers.join("\n")
        );
        let log = self.log();
        let del = log
            .lines()
            .find(|l| l.contains(&c.id) && l.contains("DEL"))
            .map(str::to_string);
        del.ok_or_else(|| anyhow!("the plugin log shows no DEL for {}:\n{log}", c.id))
    }
}

fn run(name: &str, mode: &str, index: u16) -> Result<()> {
    let subnet = Subnet::new(index);
    let mut world = World::new(name, mode, mode, index, &subnet, true)?;

    // The container: ADD runs bridge, then meshcap-cni, and leaves a host-side record for the
    // netns podman passed.
    let c = world.run_container("app")?;
    world.check_record(&c, mode)?;
    let pinned = world.pin(&c, "app")?;

    // The rules are in the container's namespace, in the configured backend.
    let state = netfilter_state(&pinned);
    ensure!(
        installed_in_backend(&state, mode),
        "no meshcap {mode} rules in the container netns:\n{state:?}"
    );

    let flows = world.check_capture(&c, &subnet, "app")?;
    let del = world.remove_and_check_del(&c, &pinned)?;
    eprintln!("{name}: ok ({flows} flows, DEL logged: {del})");
    Ok(())
}

/// Starts the agent with adoption on and the fast path and config watch off, scanning every
/// 200 ms, and waits for its metrics endpoint.
fn start_agent(world: &World) -> Result<AgentProcess> {
    let mut cmd = Command::new(meshcap_tests::bins::meshcap()?);
    cmd.arg("agent")
        .args(["--no-fast-path", "--no-config-watch"])
        .arg("--cni-conf-dir")
        .arg(&world.net_d)
        .arg("--cni-bin-dir")
        .arg(&world.plugins)
        .args(["--cni-cache-dir", CNI_CACHE_DIR])
        // The plugin's default, which every DEL podman runs uses too (module docs).
        .args(["--state-dir", DEFAULT_STATE_DIR])
        .args(["--repair-interval-ms", "200"])
        .env_remove("MESHCAP_STATE_DIR");
    AgentProcess::start(cmd, &world.dir().join("agent.log"))
}

/// Polls `ok` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, ok: impl FnMut() -> Result<bool>) -> Result<bool> {
    meshcap_testkit::poll(limit, Duration::from_millis(50), ok)
}

/// The adoption test (module docs).
fn adopt(name: &str, mode: &str, index: u16) -> Result<()> {
    let subnet = Subnet::new(index);
    let mut world = World::new(name, "adopt", mode, index, &subnet, false)?;

    // A container started while the chain has no meshcap: no record, no rules.
    let before = world.run_container("before")?;
    let pinned = world.pin(&before, "before")?;
    ensure!(
        !world.record_path(&before.id).exists(),
        "a record exists for a container meshcap never saw"
    );
    let state = netfilter_state(&pinned);
    ensure!(
        !state.has_meshcap(),
        "meshcap rules before meshcap was installed:\n{}",
        state.meshcap_leftovers().join("\n")
    );
    // What the agent works from: libcni's cache entry for it, written after podman's ADD.
    let cache_file = Path::new(CNI_CACHE_DIR)
        .join("results")
        .join(format!("{}-{}-eth0", world.network, before.id));
    let cached: Value = serde_json::from_slice(
        &std::fs::read(&cache_file)
            .with_context(|| format!("podman wrote no libcni cache {}", cache_file.display()))?,
    )?;
    ensure!(
        cached["kind"] == "cniCacheV1" && cached["containerId"] == before.id.as_str(),
        "unexpected cache entry: {cached}"
    );
    eprintln!(
        "{name}: podman's libcni cache entry {}",
        if cached.get("netns").is_some() {
            "has a netns field"
        } else {
            "has no netns field (older libcni)"
        }
    );

    // `meshcap install` chains the plugin into the network's conflist.
    let plugin = meshcap_tests::bins::meshcap_cni()?;
    let out = run_checked(
        Command::new(meshcap_tests::bins::meshcap()?)
            .arg("install")
            .arg("--cni-conf-dir")
            .arg(&world.net_d)
            .arg("--cni-bin-dir")
            .arg(&world.plugins)
            .arg("--plugin-binary")
            .arg(&plugin)
            .args(["--mode", mode, "--selection", "all"])
            .arg("--log-file")
            .arg(&world.log_file),
    )
    .context("meshcap install")?;
    eprintln!("{name}: {}", out.trim());
    let conflist: Value = serde_json::from_slice(&std::fs::read(
        world.net_d.join(format!("{}.conflist", world.network)),
    )?)?;
    ensure!(
        conflist["plugins"][1]["type"] == "meshcap-cni",
        "install did not chain meshcap-cni: {conflist}"
    );

    let mut agent = start_agent(&world)?;
    let started = Instant::now();
    let adopted = wait_until(Duration::from_secs(10), || {
        Ok(world.record_path(&before.id).exists()
            && installed_in_backend(&netfilter_state(&pinned), mode))
    })?;
    ensure!(
        adopted,
        "the agent did not install the rules within 10 s\nagent log:\n{}\nplugin log:\n{}",
        agent.log(),
        world.log()
    );
    eprintln!(
        "{name}: adopted {:?} after the agent started",
        started.elapsed()
    );
    // The record is the plugin's own, for the netns podman passed (the agent read it from the
    // cached result's interface sandbox or the cache's netns).
    world.check_record(&before, mode)?;
    let flows = world.check_capture(&before, &subnet, "before")?;

    ensure!(
        agent.metric("meshcap_adoptions_total")? == 1.0,
        "adoptions counted:\n{}",
        agent.log()
    );
    ensure!(agent.metric("meshcap_adoption_failures_total")? == 0.0);
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("adopted a pod") && l.contains(&before.id))
        .collect();
    ensure!(
        lines.len() == 1,
        "expected one adoption log line for {}:\n{log}",
        before.id
    );
    ensure!(
        lines[0].contains(&format!("netns={}", before.sandbox.display()))
            && (lines[0].contains(&format!("mode={mode}"))
                || lines[0].contains(&format!("mode=\"{mode}\""))),
        "the adoption line names the netns and the mode: {}",
        lines[0]
    );

    // A container started after the install is meshed by podman's own ADD and never adopted:
    // several scans later the counter has not moved and its rules went in exactly once.
    let after = world.run_container("after")?;
    world.check_record(&after, mode)?;
    let scans = agent.metric("meshcap_repair_scans_total")?;
    let scanned = wait_until(Duration::from_secs(10), || {
        Ok(agent.metric("meshcap_repair_scans_total")? >= scans + 5.0)
    })?;
    ensure!(scanned, "the agent stopped scanning:\n{}", agent.log());
    ensure!(
        agent.metric("meshcap_adoptions_total")? == 1.0,
        "a container ADDed with meshcap was adopted:\n{}",
        agent.log()
    );
    let installs = |id: &str| {
        world
            .log()
            .lines()
            .filter(|l| l.contains(id) && l.contains("capture installed"))
            .count()
    };
    ensure!(
        installs(&before.id) == 1 && installs(&after.id) == 1,
        "one ADD each (the agent's for the first, podman's for the second):\n{}",
        world.log()
    );

    // `podman rm -f` of the adopted container. podman tears a network down with the config
    // libcni cached at ADD (the chain without meshcap), so meshcap's DEL comes from the agent:
    // once the cache entry is gone and the record is still there, it runs the plugin's DEL.
    world.containers.retain(|id| *id != before.id);
    world
        .podman(&["rm", "-f", "-t", "0", &before.id])
        .context("podman rm -f")?;
    ensure!(
        !before.sandbox.exists() && !cache_file.exists(),
        "podman left the sandbox {} or the cache entry {}",
        before.sandbox.display(),
        cache_file.display()
    );
    // The plugin removes the record before the agent sees it exit and logs: wait for both.
    let released = wait_until(Duration::from_secs(5), || {
        Ok(!world.record_path(&before.id).exists()
            && agent
                .log()
                .lines()
                .any(|l| l.contains("ran meshcap-cni DEL") && l.contains(&before.id)))
    })?;
    ensure!(
        released,
        "the adopted container's record outlived its teardown, or the agent did not log the DEL \
         it ran\nagent log:\n{}\nplugin log:\n{}",
        agent.log(),
        world.log()
    );
    let log = world.log();
    let del = log
        .lines()
        .find(|l| l.contains(&before.id) && l.contains("command=DEL"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the plugin log shows no DEL for {}:\n{log}", before.id))?;
    let scans = agent.metric("meshcap_repair_scans_total")?;
    let scanned = wait_until(Duration::from_secs(10), || {
        Ok(agent.metric("meshcap_repair_scans_total")? >= scans + 3.0)
    })?;
    ensure!(scanned, "the agent stopped scanning:\n{}", agent.log());
    ensure!(
        agent.metric("meshcap_adoptions_total")? == 1.0
            && agent.metric("meshcap_adoption_failures_total")? == 0.0,
        "the teardown caused another adoption attempt:\n{}",
        agent.log()
    );
    let pinned_after = world.pin(&after, "after")?;
    world.remove_and_check_del(&after, &pinned_after)?;
    ensure!(
        agent.stop(),
        "SIGTERM stops the agent cleanly:\n{}",
        agent.log()
    );
    // Repairs the agent made meanwhile (the scan covers every record in the default state
    // dir, the other podman tests' too): none expected, shown if any.
    for line in agent.log().lines().filter(|l| l.contains("repaired")) {
        eprintln!("{name}: agent: {line}");
    }
    eprintln!("{name}: ok ({flows} flows after adoption, DEL logged: {del})");
    Ok(())
}

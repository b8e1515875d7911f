//! A small node built from network namespaces.
//!
//! ```text
//!            node netns (bridge mc0 10.248.0.1 / fd00:248::1, forwarding on;
//!            the CNI plugins run here, as a runtime on the host would run them)
//!             |                         |
//!   pod netns (eth0 from bridge+IPAM,   remote netns (eth0 from an ADD of `bridge` alone,
//!   meshcap rules, stand-in sidecar     plus 172.31.1.1, 172.31.2.1, fd00:31:1::1,
//!   as 1337, app server)                fd00:31:2::1 on lo, routed via it by the node)
//! ```
//!
//! Every address lives in the test's own namespaces, so nodes of parallel tests can reuse the
//! same subnets. The remote serves TCP [`REMOTE_TCP_PORTS`] and UDP [`REMOTE_UDP_PORTS`] on all
//! its addresses; a pod runs the stand-in sidecar on the sidecar ports and an app server on
//! [`APP_TCP_PORTS`]/[`APP_UDP_PORTS`]. All servers write [`crate::standin::Record`]s into the
//! node's records dir, where [`Node::find`] looks tokens up.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::chain::{result_ips, Attachment, Chain, PluginError, RuntimeEnv};
use crate::netns::Netns;
use crate::standin::{read_records, Record, PROXY_ID, SIDECAR_TCP_PORTS, SIDECAR_UDP_PORTS};

/// The conflist name (`name`), shared by pods and remotes so host-local allocates from one pool.
pub const NETWORK_NAME: &str = "meshcap-e2e";
pub const POD_SUBNET4: &str = "10.248.0.0/24";
pub const POD_SUBNET6: &str = "fd00:248::/64";
/// Remote addresses beyond the pod subnet, for include/exclude CIDR flows.
pub const INCLUDED4: Ipv4Addr = Ipv4Addr::new(172, 31, 1, 1);
pub const EXCLUDED4: Ipv4Addr = Ipv4Addr::new(172, 31, 2, 1);
pub const INCLUDED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 1, 0, 0, 0, 0, 1);
pub const EXCLUDED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 2, 0, 0, 0, 0, 1);
/// CIDRs of [`INCLUDED4`] etc., as annotations name them.
pub const INCLUDED4_NET: &str = "172.31.1.0/24";
pub const EXCLUDED4_NET: &str = "172.31.2.0/24";
pub const INCLUDED6_NET: &str = "fd00:31:1::/64";
pub const EXCLUDED6_NET: &str = "fd00:31:2::/64";
pub const REMOTE_TCP_PORTS: [u16; 5] = [80, 53, 8443, 9090, 15020];
pub const REMOTE_UDP_PORTS: [u16; 2] = [53, 5353];
pub const APP_TCP_PORTS: [u16; 3] = [8080, 8081, 8082];
pub const APP_UDP_PORTS: [u16; 1] = [5353];
/// How long a server may take to bind its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

static POD_N: AtomicUsize = AtomicUsize::new(0);

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `standin serve` in `ns` and wait until its sockets are bound.
pub fn start_server(
    ns: &Netns,
    records: &Path,
    name: &str,
    file_stem: &str,
    extra: &[&str],
) -> Result<Proc> {
    let ready = records.join(format!("{file_stem}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = ns.command(crate::bins::standin()?)?;
    cmd.arg("serve")
        .args(["--name", name])
        .arg("--records")
        .arg(records.join(format!("{file_stem}.jsonl")))
        .arg("--ready")
        .arg(&ready)
        .args(extra);
    spawn_ready(
        &mut cmd,
        &ready,
        &format!("standin {name} in {}", ns.name()),
    )
}

/// Spawns `cmd` (a `standin serve` given `--ready ready`) and waits until it creates `ready`;
/// fails with its stderr when it exits first, or after [`READY_TIMEOUT`]. `what` names it.
pub fn spawn_ready(cmd: &mut Command, ready: &Path, what: &str) -> Result<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Proc(cmd.spawn().with_context(|| format!("spawn {what}"))?);
    let start = Instant::now();
    while !ready.exists() {
        if let Some(status) = child.0.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let err: String = err
                .lines()
                .take_while(|l| !l.contains("backtrace"))
                .collect::<Vec<_>>()
                .join(" ");
            bail!("{what} exited ({status}): {err}");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("{what} not ready after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The remote host: unmeshed, serving on all its addresses.
#[derive(Debug)]
pub struct Remote {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    _server: Proc,
    pub ns: Netns,
}

/// The node namespace, its runtime environment and its remote host.
#[derive(Debug)]
pub struct Node {
    pub prefix: String,
    pub remote: Remote,
    pub records: PathBuf,
    pub env: Arc<RuntimeEnv>,
    pub ns: Arc<Netns>,
}

impl Node {
    /// Build a node whose namespaces are named after `prefix` (the test's name).
    pub fn new(prefix: &str) -> Result<Node> {
        let ns = Arc::new(Netns::new(&format!("{prefix}-node"))?);
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            ns.sysctl(s)?;
        }
        let env = RuntimeEnv::new(prefix, ns.clone())?;
        let records = env.scratch.path().join("records");
        std::fs::create_dir_all(&records)?;

        let rns = Netns::new(&format!("{prefix}-remote"))?;
        no_dad(&rns)?;
        let bridge = Chain::bridge_only(env.clone());
        let att = Attachment::new(
            &format!("remote-{}", std::process::id()),
            rns.path(),
            BTreeMap::new(),
        );
        let result = bridge.add(&att).context("ADD bridge for the remote host")?;
        let (Some(v4), Some(v6)) = result_ips(&result) else {
            bail!("remote got no v4+v6 addresses: {result}");
        };
        for (a, fam) in [(INCLUDED4.to_string(), "-4"), (EXCLUDED4.to_string(), "-4")] {
            rns.ip(&[fam, "addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        for a in [INCLUDED6, EXCLUDED6] {
            rns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ])?;
        }
        ns.ip(&["route", "add", "172.31.0.0/16", "via", &v4.to_string()])?;
        ns.ip(&["-6", "route", "add", "fd00:31::/32", "via", &v6.to_string()])?;
        let server = start_server(
            &rns,
            &records,
            "remote",
            "remote",
            &[
                "--tcp",
                &join_ports(&REMOTE_TCP_PORTS),
                "--udp",
                &join_ports(&REMOTE_UDP_PORTS),
            ],
        )?;
        Ok(Node {
            prefix: prefix.into(),
            remote: Remote {
                v4,
                v6,
                _server: server,
                ns: rns,
            },
            records,
            env,
            ns,
        })
    }

    /// A chain `bridge` -> `meshcap-cni` on this node with `extra` merged into meshcap's config
    /// (e.g. `{"mode": "nftables"}`).
    pub fn chain(&self, extra: &Value) -> Arc<Chain> {
        Arc::new(Chain::with_meshcap(self.env.clone(), extra))
    }

    /// A pod namespace with its attachment description, not yet ADDed.
    pub fn unattached_pod(
        &self,
        name: &str,
        chain: &Arc<Chain>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Pod> {
        let ns = Netns::new(&format!("{}-{name}", self.prefix))?;
        no_dad(&ns)?;
        let id = format!(
            "{name}-{}-{}",
            std::process::id(),
            POD_N.fetch_add(1, Ordering::Relaxed)
        );
        let att = Attachment::new(&id, ns.path(), annotations);
        Ok(Pod {
            name: name.into(),
            att,
            chain: chain.clone(),
            records: self.records.clone(),
            v4: None,
            v6: None,
            added: false,
            procs: Vec::new(),
            ns,
        })
    }

    /// A pod ADDed through `chain`, with the stand-in sidecar and the app server running.
    pub fn pod(
        &self,
        name: &str,
        chain: &Arc<Chain>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Pod> {
        self.pod_with_proxy(
            name,
            chain,
            annotations,
            PROXY_ID,
            &SIDECAR_TCP_PORTS,
            &SIDECAR_UDP_PORTS,
        )
    }

    /// [`Node::pod`] with the stand-in sidecar as `uid` (and gid) on a mesh's own ports.
    pub fn pod_with_proxy(
        &self,
        name: &str,
        chain: &Arc<Chain>,
        annotations: BTreeMap<String, String>,
        uid: u32,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<Pod> {
        let mut pod = self.unattached_pod(name, chain, annotations)?;
        pod.add().with_context(|| format!("ADD pod {name}"))?;
        pod.start_servers_as(uid, tcp_ports, udp_ports)?;
        Ok(pod)
    }

    /// The record a server wrote for `token`, if any.
    pub fn find(&self, token: &str) -> Option<Record> {
        read_records(&self.records)
            .into_iter()
            .find(|r| r.token == token)
    }

    /// Symbolic names of the addresses flows use, as seen from `pod`.
    pub fn names(&self, pod: &Pod) -> Vec<(IpAddr, &'static str)> {
        let mut v: Vec<(IpAddr, &'static str)> = vec![
            (self.remote.v4.into(), "R4"),
            (self.remote.v6.into(), "R6"),
            (INCLUDED4.into(), "IN4"),
            (EXCLUDED4.into(), "EX4"),
            (INCLUDED6.into(), "IN6"),
            (EXCLUDED6.into(), "EX6"),
            (Ipv4Addr::LOCALHOST.into(), "LO4"),
            (Ipv4Addr::new(127, 0, 0, 2).into(), "LO4B"),
            (Ipv6Addr::LOCALHOST.into(), "LO6"),
        ];
        if let Some(a) = pod.v4 {
            v.push((a.into(), "P4"));
        }
        if let Some(a) = pod.v6 {
            v.push((a.into(), "P6"));
        }
        v
    }
}

fn no_dad(ns: &Netns) -> Result<()> {
    // Fresh v6 addresses stay "tentative" for a second of DAD, failing early connects.
    ns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad=0")
}

/// A pod: its namespace, its attachment through a chain, and its processes. Dropping it kills
/// the processes, DELs the attachment (errors ignored) and deletes the namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub att: Attachment,
    pub chain: Arc<Chain>,
    pub records: PathBuf,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub added: bool,
    procs: Vec<Proc>,
    pub ns: Netns,
}

impl Pod {
    /// ADD through the whole chain; records the pod's addresses.
    pub fn add(&mut self) -> Result<Value, PluginError> {
        let result = self.chain.add(&self.att)?;
        self.added = true;
        let (v4, v6) = result_ips(&result);
        self.v4 = v4;
        self.v6 = v6;
        Ok(result)
    }

    /// DEL through the whole chain.
    pub fn del(&mut self) -> Result<(), PluginError> {
        self.chain.del(&self.att)?;
        self.added = false;
        Ok(())
    }

    /// CHECK through the whole chain.
    pub fn check(&self) -> Result<(), PluginError> {
        self.chain.check(&self.att)
    }

    /// Run `meshcap-cni` alone for `command` with the cached result as `prevResult` (a retried
    /// ADD, or the first step of a runtime's DEL).
    pub fn meshcap(&self, command: &str) -> Result<Option<Value>, PluginError> {
        let i = self
            .chain
            .index_of("meshcap-cni")
            .expect("chain has meshcap-cni");
        let prev = self.chain.cached_result(&self.att);
        self.chain.invoke(i, command, &self.att, prev.as_ref())
    }

    /// Start the stand-in sidecar (uid/gid 1337, transparent listeners) and the app server.
    pub fn start_servers(&mut self) -> Result<()> {
        self.start_servers_as(PROXY_ID, &SIDECAR_TCP_PORTS, &SIDECAR_UDP_PORTS)
    }

    /// Start the stand-in sidecar as `uid` (and gid) on the given ports, and the app server.
    pub fn start_servers_as(&mut self, uid: u32, tcp: &[u16], udp: &[u16]) -> Result<()> {
        self.start_servers_as_ids(uid, uid, tcp, udp)
    }

    /// Start the stand-in sidecar as `uid`:`gid` on the given ports, and the app server.
    pub fn start_servers_as_ids(
        &mut self,
        uid: u32,
        gid: u32,
        tcp: &[u16],
        udp: &[u16],
    ) -> Result<()> {
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let mut args = vec!["--tcp".to_string(), join_ports(tcp)];
        if !udp.is_empty() {
            args.extend(["--udp".to_string(), join_ports(udp)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sidecar = start_server(
            &self.ns,
            &self.records,
            "sidecar",
            &format!("{}-sidecar", self.att.container_id),
            &[&args[..], &["--transparent", "--uid", &uid, "--gid", &gid]].concat(),
        )?;
        self.procs.push(sidecar);
        let app = start_server(
            &self.ns,
            &self.records,
            "app",
            &format!("{}-app", self.att.container_id),
            &[
                "--tcp",
                &join_ports(&APP_TCP_PORTS),
                "--udp",
                &join_ports(&APP_UDP_PORTS),
            ],
        )?;
        self.procs.push(app);
        Ok(())
    }

    /// Kill the pod's processes (sidecar, app server).
    pub fn stop_servers(&mut self) {
        self.procs.clear();
    }

    /// The index of `meshcap-cni` in the pod's chain.
    pub fn meshcap_index(&self) -> usize {
        self.chain
            .index_of("meshcap-cni")
            .expect("chain has meshcap-cni")
    }

    /// Snapshot of the pod namespace's netfilter and policy-routing state.
    pub fn state(&self) -> Result<crate::state::NetfilterState> {
        crate::state::NetfilterState::capture(&self.ns)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.procs.clear();
        if self.added {
            let _ = self.chain.del(&self.att);
        }
    }
}

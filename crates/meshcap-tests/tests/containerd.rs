//! The kubelet's path: this test starts its own containerd (root, state, socket and config of
//! its own, the CRI plugin on, a CNI conf dir holding `bridge` + `host-local`) and acts as the
//! kubelet over the CRI gRPC API. Images are built locally (busybox-static from Debian, no
//! registry) and imported with `ctr`. In each mode (iptables, nftables, and iptables with the
//! eBPF fast path: the agent's programs pinned in a directory of the test's own, the plugin
//! registering each meshed pod) it checks:
//!
//! - `meshcap install` into the running containerd's conf dir meshes the next pods without a
//!   containerd restart: containerd's CNI syncer reloads the dir on the inotify event of
//!   install's rename, which the test sees in CRI `Status` (verbose `cniconfig`) before it
//!   starts a pod;
//! - RunPodSandbox with Istio annotations: containerd passes them through the pod-annotations
//!   capability with `K8S_POD_*` args, and a connection from a container to a remote address
//!   reaches the stand-in sidecar on 15001 with the original destination; an unmeshed pod is
//!   untouched;
//! - a pod started before the install is adopted by `meshcap agent` from containerd's libcni
//!   cache, and a flushed pod is repaired;
//! - Stop/RemovePodSandbox, repeated, succeed; so does Stop after a containerd restart with
//!   the netns pin gone (CNI DEL with an empty `CNI_NETNS`), leaving no record;
//! - `meshcap uninstall` while meshed pods run: they stop and are removed without error, and
//!   nothing of meshcap's is left in the conf dir, bin dir or state dir.
//!
//! With the fast path the meshed pod is registered, its app and sidecar sockets are paired,
//! DEL (also without a netns) unregisters the pod and `meshcap uninstall` leaves no pin.
//! The plugin's log lines reach the agent's log over its socket. It prints how many pods
//! it started and the median RunPodSandbox time with and without meshcap per mode, measured
//! in this run. Needs root, containerd and ctr (Debian's `containerd`), podman (to build the image),
//! busybox-static and nsenter; when one is missing it says so by name, and under `CI=true` it
//! fails instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StatusRequest, StopPodSandboxRequest,
};
use meshcap_fastpath::PinDir;
use meshcap_testkit::ScratchDir;
use meshcap_tests::agent_process::AgentProcess;
use meshcap_tests::{bins, missing_root_or_tools, skip_or_fail};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint, Uri};

const TEST: &str = "containerd_cri_pods_through_install_adoption_repair_restart_and_uninstall";
/// A remote address the app dials; nothing listens there, only capture answers.
const REMOTE: &str = "172.31.77.1:80";
/// RunPodSandbox calls timed per mode with and without meshcap (each figure is their median).
const TIMED: usize = 7;

fn istio_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "sidecar.istio.io/status".into(),
            r#"{"containers":["istio-proxy"]}"#.into(),
        ),
        (
            "sidecar.istio.io/interceptionMode".into(),
            "REDIRECT".into(),
        ),
    ])
}

/// Everything of the test's own containerd; stopped and removed on drop.
struct Node {
    /// Removed after `Drop` has stopped containerd and unmounted what it mounted below it.
    dir: ScratchDir,
    containerd: Option<Child>,
    image: String,
    network: String,
    bridge: String,
    rt: tokio::runtime::Runtime,
    cri: Option<RuntimeServiceClient<Channel>>,
    pods: Vec<String>,
}

impl Node {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("run/attachments")
    }

    fn new() -> Node {
        let pid = std::process::id();
        let dir = ScratchDir::new("cri");
        for sub in [
            "net.d",
            "bin",
            "root",
            "state",
            "logs",
            "image/ctx/bin",
            "records",
        ] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let node = Node {
            image: format!("localhost/meshcap-cri-test:{pid}"),
            network: format!("mc-cri-{pid}"),
            bridge: format!("mccri{}", pid % 100_000),
            dir,
            containerd: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            cri: None,
            pods: Vec::new(),
        };
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(
                bins::reference_plugin_dir().join(plugin),
                node.bin_dir().join(plugin),
            )
            .unwrap();
        }
        // bridge + host-local, as a node's primary network; meshcap is chained later.
        fs::write(
            node.conf_dir().join("10-podnet.conflist"),
            serde_json::to_vec_pretty(&json!({
                "cniVersion": "1.0.0",
                "name": node.network,
                "plugins": [{
                    "type": "bridge", "bridge": node.bridge, "isGateway": true, "isDefaultGateway": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.251.0.0/24"}]],
                             "dataDir": node.dir.path().join("ipam")}
                }]
            }))
            .unwrap(),
        )
        .unwrap();
        fs::write(
            node.dir.path().join("config.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  stream_server_port = "0"
  # The sandboxes' netns pins under this test's state dir, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true
  # Machines that run the suite inside a container cannot lower oom_score_adj (the sandbox's
  # default -998) nor use AppArmor.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
                root = node.dir.path().join("root").display(),
                state = node.dir.path().join("state").display(),
                sock = node.sock().display(),
                dir = node.dir.path().display(),
                image = node.image,
                bin = node.bin_dir().display(),
                conf = node.conf_dir().display(),
            ),
        )
        .unwrap();
        node
    }

    /// Starts containerd and connects the CRI client.
    fn start_containerd(&mut self) {
        // Appended: the log of every containerd this test started is checked at the end.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            // The plugin's records stay in this test's dir: containerd's environment is the
            // plugin's.
            .env("MESHCAP_STATE_DIR", self.state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        self.containerd = Some(child);
        let sock = self.sock();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if sock.exists() {
                let path = sock.clone();
                let channel = self.rt.block_on(async move {
                    Endpoint::try_from("http://[::]:50051")
                        .unwrap()
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let path = path.clone();
                            async move {
                                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                    tokio::net::UnixStream::connect(path).await?,
                                ))
                            }
                        }))
                        .await
                });
                if let Ok(channel) = channel {
                    let mut cri = RuntimeServiceClient::new(channel);
                    let ready = self
                        .rt
                        .block_on(cri.version(k8s_cri::v1::VersionRequest::default()));
                    if ready.is_ok() {
                        self.cri = Some(cri);
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve CRI:\n{}",
                self.containerd_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_containerd(&mut self) {
        self.cri = None;
        if let Some(mut child) = self.containerd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The CNI config containerd's CRI plugin has loaded now (CRI `Status`, verbose).
    fn loaded_cni_config(&mut self) -> String {
        let reply = self
            .rt
            .block_on(
                self.cri
                    .as_mut()
                    .expect("containerd is running")
                    .status(StatusRequest { verbose: true }),
            )
            .expect("CRI Status")
            .into_inner();
        reply.info.get("cniconfig").cloned().unwrap_or_default()
    }

    /// Waits until containerd has (or has not) reloaded a CNI config with meshcap-cni in it,
    /// with no restart: only its watch of the conf dir can make that happen.
    fn wait_cni_reload(&mut self, meshcap_chained: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self.loaded_cni_config();
            if loaded.contains("meshcap-cni") == meshcap_chained {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not reload its CNI config (meshcap chained: {meshcap_chained}):\n{loaded}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn containerd_log(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sandbox and app image: busybox-static only, built by podman with no network and
    /// imported into containerd with `ctr` (no registry anywhere).
    fn build_and_import_image(&self) {
        let ctx = self.dir.path().join("image/ctx");
        fs::copy("/bin/busybox", ctx.join("bin/busybox")).unwrap();
        fs::write(
            ctx.join("Containerfile"),
            "FROM scratch\nCOPY bin/busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sleep\", \"2147483647\"]\n",
        )
        .unwrap();
        let podman = |args: &[&str]| {
            let out = Command::new("podman").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "podman {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        podman(&[
            "build",
            "--network=none",
            "-q",
            "-t",
            &self.image,
            ctx.to_str().unwrap(),
        ]);
        let archive = self.dir.path().join("image/image.tar");
        podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            &self.image,
        ]);
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
        self.ctr(&["images", "import", archive.to_str().unwrap()]);
        let names = self.ctr(&["images", "ls", "-q"]);
        if !names.lines().any(|l| l == self.image) {
            let imported = names
                .lines()
                .find(|l| l.contains("meshcap-cri-test"))
                .unwrap_or_else(|| panic!("image not imported: {names}"))
                .to_owned();
            self.ctr(&["images", "tag", &imported, &self.image]);
        }
    }

    fn sandbox_config(
        &self,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "shop".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.path().join("logs").display().to_string(),
            annotations: annotations.into_iter().collect(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox as the kubelet calls it; returns the sandbox id and how long it took.
    fn run_pod(&mut self, name: &str, annotations: BTreeMap<String, String>) -> (String, Duration) {
        let config = self.sandbox_config(name, annotations);
        let started = Instant::now();
        let reply = self.rt.block_on(
            self.cri
                .as_mut()
                .expect("containerd is running")
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                }),
        );
        let elapsed = started.elapsed();
        let id = match reply {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!(
                "RunPodSandbox {name}: {e}\ncontainerd log:\n{}\nplugin log:\n{}",
                self.containerd_log(),
                fs::read_to_string(self.dir.path().join("cni.log")).unwrap_or_default()
            ),
        };
        self.pods.push(id.clone());
        (id, elapsed)
    }

    /// The sandbox's network namespace, as containerd pinned it.
    fn netns(&mut self, id: &str) -> PathBuf {
        let reply = self
            .rt
            .block_on(
                self.cri
                    .as_mut()
                    .unwrap()
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id.into(),
                        verbose: true,
                    }),
            )
            .unwrap()
            .into_inner();
        let info: Value = serde_json::from_str(&reply.info["info"]).unwrap();
        let path = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in {info}"));
        PathBuf::from(path)
    }

    fn stop_and_remove(&mut self, id: &str) -> Result<(), String> {
        let cri = self.cri.as_mut().unwrap();
        self.rt
            .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|e| format!("StopPodSandbox: {e}"))?;
        self.rt
            .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|e| format!("RemovePodSandbox: {e}"))?;
        self.pods.retain(|p| p != id);
        Ok(())
    }

    /// Runs the app container in the sandbox: it sends `token` to [`REMOTE`] with busybox nc,
    /// as uid 1000, and exits.
    fn app_dials(&mut self, sandbox: &str, name: &str, token: &str) {
        let sandbox_config = self.sandbox_config(name, istio_annotations());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: format!("app-{token}"),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            log_path: format!("app-{token}.log"),
            command: vec!["/bin/busybox".into()],
            args: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo {token} | /bin/busybox nc -w 3 {} {}",
                    REMOTE.split(':').next().unwrap(),
                    REMOTE.split(':').nth(1).unwrap()
                ),
            ],
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    run_as_user: Some(Int64Value { value: 1000 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cri = self.cri.as_mut().unwrap();
        let id = self
            .rt
            .block_on(cri.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        self.rt
            .block_on(cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .expect("StartContainer");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self
                .rt
                .block_on(cri.container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }))
                .expect("ContainerStatus")
                .into_inner()
                .status
                .unwrap();
            if status.state == ContainerState::ContainerExited as i32 {
                let log = fs::read_to_string(self.dir.path().join(format!("logs/app-{token}.log")))
                    .unwrap_or_default();
                eprintln!("app {token} exited {}: {log}", status.exit_code);
                return;
            }
            assert!(Instant::now() < deadline, "app container never exited");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for id in self.pods.clone() {
            if self.cri.is_some() {
                let _ = self.stop_and_remove(&id);
            }
        }
        self.stop_containerd();
        // The shims of anything left, then the mounts under the test's root.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// A stand-in sidecar (uid 1337, TCP 15001) in the pod's namespace, recording what it accepts.
struct Sidecar {
    child: Child,
    records: PathBuf,
}

impl Sidecar {
    fn start(netns: &Path, records: &Path, name: &str) -> Sidecar {
        let file = records.join(format!("{name}.jsonl"));
        let ready = records.join(format!("{name}.ready"));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(bins::standin().unwrap())
            .args([
                "serve", "--name", "sidecar", "--tcp", "15001", "--uid", "1337", "--gid", "1337",
            ])
            .arg("--records")
            .arg(&file)
            .arg("--ready")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "sidecar not ready in {}",
                netns.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sidecar {
            child,
            records: file,
        }
    }

    /// The original destination of the connection that carried `token`, if the sidecar got it.
    fn original_destination(&self, token: &str) -> Option<String> {
        fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["token"] == token && r["port"] == 15001)
            .and_then(|r| r["orig"].as_str().map(str::to_owned))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn meshcap(args: &[&str]) -> String {
    let out = Command::new(bins::meshcap().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshcap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether meshcap's capture is installed in `netns` (what `meshcap inspect` reports).
fn captured(netns: &Path) -> bool {
    let text = meshcap(&["inspect", "--netns", netns.to_str().unwrap()]);
    text.contains("15001")
}

fn records(node: &Node) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(networks) = fs::read_dir(node.state_dir()) {
        for net in networks.flatten() {
            if let Ok(files) = fs::read_dir(net.path()) {
                out.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "json")),
                );
            }
        }
    }
    out
}

fn wait_until(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    assert!(
        meshcap_testkit::poll_bool(limit, Duration::from_millis(100), ok),
        "{what}: not within {limit:?}"
    );
}

fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

/// One pass of the test: how the plugin is installed and which data path the agent runs.
struct Mode {
    label: &'static str,
    rules: &'static str,
    /// The eBPF fast path, pinned in this directory (the agent's `--pin-dir`, the plugin's
    /// `ebpf.pin_dir`).
    fast_path: Option<PathBuf>,
}

impl Mode {
    fn pins(&self) -> Option<PinDir> {
        self.fast_path.as_ref().map(PinDir::new)
    }

    /// Whether the pod in `netns` is registered with the fast path (`None` without it).
    fn registered(&self, netns: &Path) -> Option<bool> {
        let pins = self.pins()?;
        let cookie = meshcap_fastpath::netns_cookie_at(netns).expect("netns cookie");
        Some(self.registered_cookie(&pins, cookie))
    }

    fn registered_cookie(&self, pins: &PinDir, cookie: u64) -> bool {
        let status = pins.status(Some(cookie)).expect("fast path status");
        status.available.expect("the fast path is installed");
        status.pod.is_some()
    }
}

#[test]
fn containerd_cri_pods_through_install_adoption_repair_restart_and_uninstall() {
    if let Some(why) =
        missing_root_or_tools(&["containerd", "ctr", "podman", "nsenter", "runc", "busybox"])
    {
        return skip_or_fail(TEST, &why);
    }
    if let Some(why) =
        meshcap_tests::missing_prerequisite().or_else(meshcap_tests::fastpath::missing_prerequisite)
    {
        return skip_or_fail(TEST, &why);
    }
    if !Path::new("/bin/busybox").exists() {
        return skip_or_fail(TEST, "/bin/busybox (busybox-static) is missing");
    }
    let mut node = Node::new();
    node.start_containerd();
    node.build_and_import_image();
    let original_conflist = fs::read(node.conf_dir().join("10-podnet.conflist")).unwrap();
    let mut pods_started = 0;
    let mut figures = Vec::new();
    // Removed on drop, whatever the test's outcome.
    let pins = meshcap_tests::fastpath::PrivatePins::new("cri");
    let modes = [
        Mode {
            label: "iptables",
            rules: "iptables",
            fast_path: None,
        },
        Mode {
            label: "nftables",
            rules: "nftables",
            fast_path: None,
        },
        Mode {
            label: "iptables+ebpf",
            rules: "iptables",
            fast_path: Some(pins.dir.clone()),
        },
    ];

    for m in &modes {
        let mode = m.label;
        // Without meshcap: the baseline, and a meshed pod that starts before the install.
        let mut without = Vec::new();
        for i in 0..TIMED {
            let (id, t) = node.run_pod(&format!("plain-{mode}-{i}"), istio_annotations());
            without.push(t);
            node.stop_and_remove(&id).unwrap();
        }
        let (early, _) = node.run_pod(&format!("early-{mode}"), istio_annotations());
        pods_started += TIMED + 1;
        let early_ns = node.netns(&early);
        assert!(
            !captured(&early_ns),
            "{mode}: nothing captures before the install"
        );

        // Install into the running containerd's conf dir; no restart.
        let conf_dir = node.conf_dir();
        let bin_dir = node.bin_dir();
        let log_file = node.dir.path().join("cni.log");
        let mut install = vec![
            "install".to_owned(),
            "--cni-conf-dir".into(),
            conf_dir.display().to_string(),
            "--cni-bin-dir".into(),
            bin_dir.display().to_string(),
            "--plugin-binary".into(),
            bins::meshcap_cni().unwrap().display().to_string(),
            "--mode".into(),
            m.rules.into(),
            "--log-file".into(),
            log_file.display().to_string(),
        ];
        if let Some(pins) = &m.fast_path {
            install.extend(["--ebpf".into(), "--ebpf-pin-dir".into()]);
            install.push(pins.display().to_string());
        }
        meshcap(&install.iter().map(String::as_str).collect::<Vec<_>>());
        node.wait_cni_reload(true);

        let mut agent_cmd = Command::new(bins::meshcap().unwrap());
        agent_cmd
            .arg("agent")
            .arg("--cni-conf-dir")
            .arg(&conf_dir)
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .arg("--state-dir")
            .arg(node.state_dir())
            .args(["--repair-interval-ms", "300"]);
        match &m.fast_path {
            Some(pins) => agent_cmd.arg("--pin-dir").arg(pins),
            None => agent_cmd.arg("--no-fast-path"),
        };
        let agent = AgentProcess::start(
            agent_cmd,
            &node.dir.path().join(format!("agent-{mode}.log")),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        if let Some(pins) = m.pins() {
            wait_until(
                &format!("{mode}: the agent pinned the fast path"),
                Duration::from_secs(20),
                || pins.status(None).is_ok_and(|s| s.available.is_ok()),
            );
        }

        // New pods are meshed; the annotations came from containerd.
        let mut with = Vec::new();
        for i in 0..TIMED {
            let (id, t) = node.run_pod(&format!("timed-{mode}-{i}"), istio_annotations());
            with.push(t);
            node.stop_and_remove(&id).unwrap();
        }
        let (meshed, _) = node.run_pod(&format!("meshed-{mode}"), istio_annotations());
        let (plain, _) = node.run_pod(&format!("unmeshed-{mode}"), BTreeMap::new());
        pods_started += TIMED + 2;
        let meshed_ns = node.netns(&meshed);
        let plain_ns = node.netns(&plain);
        assert!(captured(&meshed_ns), "{mode}: the meshed pod has rules");
        assert!(
            !captured(&plain_ns),
            "{mode}: the unmeshed pod is untouched"
        );
        assert_ne!(
            m.registered(&meshed_ns),
            Some(false),
            "{mode}: the meshed pod is on the fast path"
        );
        assert_ne!(
            m.registered(&plain_ns),
            Some(true),
            "{mode}: the unmeshed pod is not on the fast path"
        );
        let plugin_log = fs::read_to_string(&log_file).unwrap_or_default();
        assert!(
            plugin_log.contains(&format!("shop/meshed-{mode}")),
            "{mode}: K8S_POD_* args reached the plugin:\n{plugin_log}"
        );

        // The plugin's log lines reach the agent's log (what `kubectl logs` shows).
        wait_until(
            &format!("{mode}: ADD relayed to the agent"),
            Duration::from_secs(5),
            || agent.log().contains(&format!("shop/meshed-{mode}")),
        );

        let records_dir = node.dir.path().join("records");
        let sidecar = Sidecar::start(&meshed_ns, &records_dir, &format!("meshed-{mode}"));
        let plain_sidecar = Sidecar::start(&plain_ns, &records_dir, &format!("plain-{mode}"));
        let counters_before = m.pins().map(|p| p.status(None).unwrap().counters);
        node.app_dials(&meshed, &format!("meshed-{mode}"), &format!("tok-m-{mode}"));
        node.app_dials(
            &plain,
            &format!("unmeshed-{mode}"),
            &format!("tok-p-{mode}"),
        );
        assert_eq!(
            sidecar
                .original_destination(&format!("tok-m-{mode}"))
                .as_deref(),
            Some(REMOTE),
            "{mode}: the app's connection reached the sidecar with its original destination"
        );
        assert_eq!(
            plain_sidecar.original_destination(&format!("tok-p-{mode}")),
            None,
            "{mode}: the unmeshed pod's connection was not captured"
        );
        if let (Some(pins), Some(before)) = (m.pins(), counters_before) {
            let after = pins.status(None).unwrap().counters;
            assert!(
                after.app_sockets > before.app_sockets
                    && after.sidecar_sockets > before.sidecar_sockets,
                "{mode}: the app's and the sidecar's sockets were paired: {before:?} -> {after:?}"
            );
        }

        // Adoption of the pod that started before the install.
        wait_until(
            &format!("{mode}: early pod adopted"),
            Duration::from_secs(10),
            || captured(&early_ns),
        );
        assert!(agent.metric("meshcap_adoptions_total").unwrap() >= 1.0);
        assert_ne!(
            m.registered(&early_ns),
            Some(false),
            "{mode}: the adopted pod is on the fast path"
        );

        // Repair of a flushed pod.
        let repairs_before = agent.metric("meshcap_repairs_total").unwrap();
        let flush: &[&str] = if m.rules == "nftables" {
            &["nft", "flush", "ruleset"]
        } else {
            &["iptables", "-t", "nat", "-F"]
        };
        let out = Command::new("nsenter")
            .arg(format!("--net={}", meshed_ns.display()))
            .args(flush)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The agent scans every 300 ms, so the flushed state may already be repaired here;
        // its counter says that it was.
        wait_until(
            &format!("{mode}: flushed pod repaired"),
            Duration::from_secs(10),
            || {
                agent.metric("meshcap_repairs_total").unwrap() > repairs_before
                    && captured(&meshed_ns)
            },
        );
        node.app_dials(&meshed, &format!("meshed-{mode}"), &format!("tok-r-{mode}"));
        assert_eq!(
            sidecar
                .original_destination(&format!("tok-r-{mode}"))
                .as_deref(),
            Some(REMOTE),
            "{mode}: capture works again after the repair"
        );
        drop(sidecar);
        drop(plain_sidecar);

        // Stop twice (the kubelet retries; each runs CNI DEL), then Remove twice.
        let meshed_cookie = meshcap_fastpath::netns_cookie_at(&meshed_ns).unwrap();
        let cri = node.cri.as_mut().unwrap();
        for _ in 0..2 {
            node.rt
                .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: meshed.clone(),
                }))
                .expect("StopPodSandbox, repeated");
        }
        for _ in 0..2 {
            node.rt
                .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: meshed.clone(),
                }))
                .expect("RemovePodSandbox, repeated");
        }
        node.pods.retain(|p| *p != meshed);
        assert!(
            !records(&node)
                .iter()
                .any(|r| r.to_string_lossy().contains(&meshed)),
            "{mode}: the stopped pod's record is gone"
        );
        if let Some(pins) = m.pins() {
            assert!(
                !m.registered_cookie(&pins, meshed_cookie),
                "{mode}: DEL unregistered the stopped pod"
            );
        }

        // containerd restarts and the netns pin is gone: DEL runs with an empty CNI_NETNS.
        let (restarted, _) = node.run_pod(&format!("restart-{mode}"), istio_annotations());
        pods_started += 1;
        let pin = node.netns(&restarted);
        let restarted_cookie = meshcap_fastpath::netns_cookie_at(&pin).unwrap();
        assert_ne!(m.registered(&pin), Some(false), "{mode}");
        // The agent stops first: its reclaim of a pod whose pin is gone would otherwise do
        // what this checks DEL does.
        drop(agent);
        node.stop_containerd();
        // As containerd drops a pin (a lazy unmount, then the file): the agent's scans open
        // every pod's pin for a moment, and a plain unmount then fails with EBUSY.
        let out = Command::new("umount").arg("-l").arg(&pin).output().unwrap();
        assert!(
            out.status.success(),
            "umount -l {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(&pin).unwrap();
        node.start_containerd();
        node.stop_and_remove(&restarted).unwrap_or_else(|e| {
            panic!(
                "{mode}: after a restart without the pin: {e}\n{}",
                node.containerd_log()
            )
        });
        let left: Vec<_> = records(&node)
            .into_iter()
            .filter(|r| r.to_string_lossy().contains(&restarted))
            .collect();
        assert!(left.is_empty(), "{mode}: records left: {left:?}");
        if let Some(pins) = m.pins() {
            assert!(
                !m.registered_cookie(&pins, restarted_cookie),
                "{mode}: DEL without a netns unregistered the pod"
            );
        }
        let plugin_log = fs::read_to_string(&log_file).unwrap_or_default();
        assert!(
            plugin_log.lines().any(|l| l.contains("command=DEL")
                && l.contains(&restarted)
                && l.contains("netns=-")
                && l.contains("the namespace, and the rules in it, are gone")),
            "{mode}: the plugin ran DEL with an empty CNI_NETNS:\n{plugin_log}"
        );

        // Uninstall while meshed pods run (the early one, adopted), then they go away cleanly.
        // It also unpins the fast path (this mode's own pins; elsewhere a directory that was
        // never pinned) and removes the plugin's run state (a scratch run dir here, so the
        // suite's shared /run/meshcap is left alone).
        let no_pins = node.dir.path().join("no-pins");
        let pins = m.fast_path.as_deref().unwrap_or(&no_pins);
        meshcap(&[
            "uninstall",
            "--cni-conf-dir",
            conf_dir.to_str().unwrap(),
            "--cni-bin-dir",
            bin_dir.to_str().unwrap(),
            "--state-dir",
            node.state_dir().to_str().unwrap(),
            "--run-dir",
            node.dir.path().join("run").to_str().unwrap(),
            "--pin-dir",
            pins.to_str().unwrap(),
        ]);
        if m.fast_path.is_some() {
            assert!(!pins.exists(), "{mode}: the fast path's pins are gone");
        }
        node.wait_cni_reload(false);
        for id in [early, plain] {
            node.stop_and_remove(&id).unwrap_or_else(|e| {
                panic!("{mode}: after uninstall: {e}\n{}", node.containerd_log())
            });
        }
        assert!(!bin_dir.join("meshcap-cni").exists());
        assert!(
            !node.state_dir().exists(),
            "{mode}: records left after uninstall"
        );
        let conf_files: Vec<_> = fs::read_dir(&conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(conf_files, ["10-podnet.conflist"], "{mode}");
        assert_eq!(
            fs::read(conf_dir.join("10-podnet.conflist")).unwrap(),
            original_conflist,
            "{mode}: uninstall restores the primary config exactly"
        );
        figures.push((mode, median(&without), median(&with)));
    }

    let whole_log = fs::read_to_string(node.dir.path().join("containerd.log")).unwrap_or_default();
    assert!(
        !whole_log.contains("failed to find plugin"),
        "{}",
        node.containerd_log()
    );
    eprintln!("containerd CRI: {pods_started} pods started through RunPodSandbox");
    for (mode, without, with) in figures {
        eprintln!(
            "containerd CRI {mode}: RunPodSandbox median of {TIMED}: {:.1} ms without meshcap, {:.1} ms with meshcap",
            without.as_secs_f64() * 1000.0,
            with.as_secs_f64() * 1000.0
        );
    }
}

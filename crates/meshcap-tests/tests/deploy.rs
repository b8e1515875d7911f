//! What a cluster operator deploys: the kustomize base and its components render with
//! `kubectl kustomize` into what they claim, and the node image (deploy/Containerfile, FROM
//! scratch, built offline with `podman build --network=none`) does the node's setup with
//! `meshcap node` against a mounted host root: the plugin lands in the bin dir, the conflist
//! is chained, the kubeconfig is 0600, and the agent answers its probes and metrics; the
//! image's own plugin installs and removes a pod's capture in iptables mode with the image's
//! xtables (what repair and adoption run inside the agent's container).
//!
//! The image test needs root, podman and the static binaries (`MESHCAP_STATIC_DIR`, which
//! scripts/test.sh sets from scripts/build-static.sh); the kustomize test needs `kubectl`. When
//! one cannot run it says so by name, and under `CI=true` it fails instead.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshcap_testkit::{missing_tools, ScratchDir};
use meshcap_tests::{missing_root_or_tools, skip_or_fail};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl kustomize` of the base with `components`, as YAML documents.
fn render(s: &ScratchDir, components: &[&str]) -> Vec<serde_yaml::Value> {
    let overlay = s.0.join(components.join("-"));
    fs::create_dir_all(&overlay).unwrap();
    // kustomize refuses absolute roots; the overlay names the base relative to itself.
    let base = pathdiff(&fs::canonicalize(repo().join("deploy")).unwrap(), &overlay);
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\ncomponents:\n"
    );
    for c in components {
        k.push_str(&format!("- {base}/components/{c}\n"));
    }
    if components.is_empty() {
        k = k.replace("components:\n", "");
    }
    fs::write(overlay.join("kustomization.yaml"), k).unwrap();
    let text = ok(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(&overlay)
            .output()
            .unwrap(),
        "kubectl kustomize",
    );
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// `to` relative to `from` (both absolute, `from` a directory).
fn pathdiff(to: &Path, from: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut out: Vec<String> = vec!["..".into(); from.len() - common];
    out.extend(
        to_c[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    out.join("/")
}

fn daemonset(docs: &[serde_yaml::Value]) -> Value {
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    serde_json::to_value(ds).unwrap()
}

fn env_of(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn mounts_of(container: &Value) -> Vec<(String, String)> {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn host_path(ds: &Value, volume: &str) -> String {
    ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["hostPath"]["path"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn kustomize_base_and_components_render() {
    const TEST: &str = "kustomize_base_and_components_render";
    if let Some(why) = missing_tools(&["kubectl"]) {
        return skip_or_fail(TEST, &why);
    }
    let s = ScratchDir::new("deploy-kustomize");
    let base = daemonset(&render(&s, &[]));
    let spec = &base["spec"]["template"]["spec"];
    let (init, agent) = (&spec["initContainers"][0], &spec["containers"][0]);
    assert_eq!(init["command"][0], "/usr/local/bin/meshcap", "no shell");
    assert_eq!(agent["command"][0], "/usr/local/bin/meshcap", "no shell");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    let annotations = &base["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15099");
    for c in [init, agent] {
        let env = env_of(c);
        assert_eq!(env["MESHCAP_MODE"], "iptables");
        assert_eq!(env["MESHCAP_EBPF"], "false");
        assert_eq!(env["CNI_CONF_DIR"], "/etc/cni/net.d");
    }

    for (component, var, want) in [
        ("nftables", "MESHCAP_MODE", "nftables"),
        ("fastpath", "MESHCAP_EBPF", "true"),
    ] {
        let ds = daemonset(&render(&s, &[component]));
        let spec = &ds["spec"]["template"]["spec"];
        for c in [&spec["initContainers"][0], &spec["containers"][0]] {
            assert_eq!(env_of(c)[var], want, "{component}");
        }
    }

    for (component, conf, bin) in [
        (
            "k3s",
            "/var/lib/rancher/k3s/agent/etc/cni/net.d",
            "/var/lib/rancher/k3s/data/cni",
        ),
        ("gke", "/etc/cni/net.d", "/home/kubernetes/bin"),
    ] {
        let ds = daemonset(&render(&s, &[component, "nftables"]));
        assert_eq!(host_path(&ds, "cni-conf"), conf, "{component}");
        assert_eq!(host_path(&ds, "cni-bin"), bin, "{component}");
        let spec = &ds["spec"]["template"]["spec"];
        for c in [&spec["initContainers"][0], &spec["containers"][0]] {
            let env = env_of(c);
            assert_eq!(env["CNI_CONF_DIR"], conf, "{component}");
            assert_eq!(env["CNI_BIN_DIR"], bin, "{component}");
            assert_eq!(env["MESHCAP_MODE"], "nftables", "{component}");
            let mounts = mounts_of(c);
            assert!(
                mounts.contains(&("cni-conf".into(), format!("/host{conf}"))),
                "{component}: {mounts:?}"
            );
            assert!(
                mounts.contains(&("cni-bin".into(), format!("/host{bin}"))),
                "{component}: {mounts:?}"
            );
        }
        // Adoption runs the plugin with the node's paths: the config dir at its node path too.
        assert!(mounts_of(&spec["containers"][0]).contains(&("cni-conf".into(), conf.into())));
    }
    // The plugin's records and run state as the plugin on the node has them (/var/run is /run
    // there, not in the image): repair and adoption share apply journals and templates.
    let agent_mounts = mounts_of(agent);
    for path in ["/var/run/meshcap", "/run/meshcap"] {
        assert!(
            agent_mounts.contains(&("run-meshcap".into(), path.into())),
            "{path}: {agent_mounts:?}"
        );
    }
}

/// The static binaries the image is built from.
fn static_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("MESHCAP_STATIC_DIR")
        .map(PathBuf::from)
        .ok_or(
            "MESHCAP_STATIC_DIR is not set (scripts/test.sh sets it from scripts/build-static.sh)",
        )?;
    for bin in ["meshcap", "meshcap-cni"] {
        if !dir.join(bin).is_file() {
            return Err(format!("{} is missing", dir.join(bin).display()));
        }
    }
    Ok(dir)
}

/// Removes the test's image and container on drop.
struct PodmanObjects {
    image: String,
    container: String,
}

impl Drop for PodmanObjects {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.container])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut c =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        text.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned(),
    ))
}

#[test]
fn image_builds_offline_and_sets_up_a_host_root() {
    const TEST: &str = "image_builds_offline_and_sets_up_a_host_root";
    if let Some(why) = missing_root_or_tools(&["podman"]) {
        return skip_or_fail(TEST, &why);
    }
    let bins = match static_dir() {
        Ok(d) => d,
        Err(why) => return skip_or_fail(TEST, &why),
    };
    let s = ScratchDir::new("deploy-image");
    let pid = std::process::id();
    let objects = PodmanObjects {
        image: format!("localhost/meshcap-deploy-test:{pid}"),
        container: format!("meshcap-deploy-test-agent-{pid}"),
    };

    // The build context as scripts/build-image.sh stages it.
    let ctx = s.0.join("context");
    ok(
        Command::new(repo().join("scripts/stage-image.sh"))
            .arg(&bins)
            .arg(&ctx)
            .output()
            .unwrap(),
        "scripts/stage-image.sh",
    );
    let started = Instant::now();
    ok(
        Command::new("podman")
            .args(["build", "--network=none", "-q", "-t", &objects.image, "-f"])
            .arg(repo().join("deploy/Containerfile"))
            .arg(&ctx)
            .output()
            .unwrap(),
        "podman build --network=none",
    );
    eprintln!("image built offline in {:?}", started.elapsed());
    // Nothing but the two binaries: no shell to run.
    let no_shell = Command::new("podman")
        .args([
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "/bin/sh",
            &objects.image,
            "-c",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!no_shell.status.success(), "the image has a shell");

    iptables_mode_runs_in_the_image(&objects.image, &s.0);

    // A host root as a k3s node has it (CNI paths other than the defaults, so that only the
    // DaemonSet's env can have told install and agent where they are): bridge's conflist, an
    // empty bin dir; a service account.
    const CONF: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d";
    const BIN: &str = "/var/lib/rancher/k3s/data/cni";
    let host = s.0.join("host");
    let conf_dir = host.join(CONF.trim_start_matches('/'));
    let bin_dir = host.join(BIN.trim_start_matches('/'));
    fs::create_dir_all(&conf_dir).unwrap();
    fs::create_dir_all(&bin_dir).unwrap();
    fs::create_dir_all(host.join("var/lib/cni")).unwrap();
    fs::write(
        conf_dir.join("10-bridge.conflist"),
        r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}}]}"#,
    )
    .unwrap();
    let sa = s.0.join("sa");
    fs::create_dir_all(&sa).unwrap();
    fs::write(sa.join("token"), "token-one\n").unwrap();
    fs::write(sa.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();

    let run = |extra: &[&str], step: &str| {
        let mut cmd = Command::new("podman");
        cmd.arg("run")
            .args(extra)
            .arg("-v")
            .arg(format!("{}:/host", host.display()))
            .arg("-v")
            .arg(format!(
                "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                sa.display()
            ))
            .args(["-e", "KUBERNETES_SERVICE_HOST=10.96.0.1"])
            .args(["-e", "KUBERNETES_SERVICE_PORT=443"])
            .args(["-e", "MESHCAP_MODE=nftables"])
            .args(["-e", &format!("CNI_CONF_DIR={CONF}")])
            .args(["-e", &format!("CNI_BIN_DIR={BIN}")])
            .arg(&objects.image)
            .args(["node", step]);
        cmd.output().unwrap()
    };
    ok(run(&["--rm", "--network=none"], "install"), "node install");

    assert_eq!(
        fs::read(bin_dir.join("meshcap-cni")).unwrap(),
        fs::read(bins.join("meshcap-cni")).unwrap(),
        "the image's plugin in the host's bin dir"
    );
    let conflist: Value =
        serde_json::from_slice(&fs::read(conf_dir.join("10-bridge.conflist")).unwrap()).unwrap();
    let last = &conflist["plugins"][1];
    assert_eq!(last["type"], "meshcap-cni", "{conflist}");
    assert_eq!(last["mode"], "nftables");
    assert_eq!(
        last["kubernetes"]["kubeconfig"],
        format!("{CONF}/meshcap-kubeconfig"),
        "the node's path, not the container's"
    );
    let kubeconfig = conf_dir.join("meshcap-kubeconfig");
    let mode = fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("server: https://10.96.0.1:443"), "{text}");
    assert!(text.contains("token: token-one"), "{text}");

    // The agent, on the host's network as in the DaemonSet, on a free port.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = run(
        &[
            "-d",
            "--name",
            &objects.container,
            "--network=host",
            "--privileged",
            "-e",
            &format!("MESHCAP_METRICS_ADDR=127.0.0.1:{port}"),
            "-e",
            "MESHCAP_LOG_FORMAT=json",
            "-e",
            "REFRESH_INTERVAL=1",
        ],
        "agent",
    );
    ok(agent, "node agent");
    let logs = || {
        let out = Command::new("podman")
            .args(["logs", &objects.container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match get(port, "/readyz") {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "agent not ready: {other:?}\n{}",
                logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("meshcap_repair_scans_total"), "{metrics}");

    // The agent guards the chain where the env says it is: the primary CNI rewrites its
    // conflist without meshcap, and the agent's config watch puts the entry back.
    let bridge_only = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}}]}"#;
    fs::write(conf_dir.join("10-bridge.conflist"), bridge_only).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !fs::read_to_string(conf_dir.join("10-bridge.conflist"))
        .unwrap_or_default()
        .contains("meshcap-cni")
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not restore the chain in {CONF}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Token rotation: the agent's refresher rewrites the kubeconfig, still 0600.
    fs::write(sa.join("token"), "token-two\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&kubeconfig)
        .unwrap_or_default()
        .contains("token: token-two")
    {
        assert!(
            Instant::now() < deadline,
            "kubeconfig not refreshed\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mode = fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // JSON log lines, one object each.
    let log = logs();
    let line = log
        .lines()
        .find(|l| l.contains("serving Prometheus metrics"))
        .unwrap_or_else(|| panic!("{log}"));
    let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(parsed["level"], "INFO", "{line}");
    drop(objects);
}

/// The image's own plugin in iptables mode, as the agent's adoption runs it (and repair runs
/// the same backend): ADD in a pod namespace installs the capture with the image's xtables,
/// which the node's `iptables-nft-save` reads back, and DEL removes it.
fn iptables_mode_runs_in_the_image(image: &str, scratch: &Path) {
    let ns = meshcap_tests::netns::Netns::new("image").unwrap();
    let netns = ns.path().display().to_string();
    let state = scratch.join("image-state");
    fs::create_dir_all(&state).unwrap();
    let config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "podnet", "type": "meshcap-cni", "mode": "iptables",
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": "10.88.0.9/16", "interface": 0}]},
    })
    .to_string();
    let plugin = |command: &str| {
        let mut podman = Command::new("podman");
        podman
            .args(["run", "--rm", "-i", "--network=none", "--privileged"])
            .args(["-v", "/run/netns:/run/netns"])
            .arg("-v")
            .arg(format!("{}:/state", state.display()))
            .args(["-e", "MESHCAP_STATE_DIR=/state"])
            .args(["-e", &format!("CNI_COMMAND={command}")])
            .args(["-e", "CNI_CONTAINERID=image-test"])
            .args(["-e", &format!("CNI_NETNS={netns}")])
            .args(["-e", "CNI_IFNAME=eth0"])
            .args(["-e", "CNI_PATH=/opt/cni/bin"])
            .args([
                "-e",
                "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=image-test",
            ])
            .args(["--entrypoint", "/usr/local/bin/meshcap-cni", image]);
        let out = meshcap_cni_runtime::invoke::run(podman, config.as_bytes(), None).unwrap();
        ok(
            Output {
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            },
            &format!("{command} by the image's meshcap-cni"),
        )
    };
    let save = || ns.exec("iptables-nft-save", &[]).unwrap();
    let result = plugin("ADD");
    assert!(result.contains("10.88.0.9/16"), "ADD's result: {result}");
    let rules = save();
    for want in [
        "-j MESHCAP_PREROUTING",
        "-j MESHCAP_OUTPUT",
        "-j REDIRECT --to-ports 15001",
        "-j REDIRECT --to-ports 15006",
        "--uid-owner 1337 -m comment --comment \"proxy uid bypasses outbound capture\" -j RETURN",
    ] {
        assert!(rules.contains(want), "{want:?} not installed:\n{rules}");
    }
    plugin("DEL");
    let after = save();
    assert!(!after.contains("MESHCAP"), "DEL left rules:\n{after}");
}

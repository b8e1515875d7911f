//! The command line as an operator meets it: bad values are refused before anything is
//! written, and output into a closed pipe (`meshcap ... | head`) ends quietly.

use std::fs;
use std::process::{Command, Stdio};

use meshcap_testkit::ScratchDir;

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");

const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}}]}"#;

#[test]
fn install_refuses_invalid_mode_or_selection_before_writing_anything() {
    let scratch = ScratchDir::new("cli-refuse");
    let dir = scratch.path().to_owned();
    fs::create_dir_all(dir.join("net.d")).unwrap();
    let conf = dir.join("net.d/10-bridge.conflist");
    fs::write(&conf, BRIDGE).unwrap();
    fs::write(dir.join("plugin"), b"#!plugin").unwrap();
    for bad in [
        ["--mode", "nftable"],
        ["--selection", "injectd"],
        ["--mode", ""],
    ] {
        let out = Command::new(MESHCAP)
            .arg("install")
            .arg("--cni-conf-dir")
            .arg(dir.join("net.d"))
            .arg("--cni-bin-dir")
            .arg(dir.join("bin"))
            .arg("--plugin-binary")
            .arg(dir.join("plugin"))
            .args(bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
        assert_eq!(fs::read_to_string(&conf).unwrap(), BRIDGE, "{bad:?}");
        assert!(!dir.join("bin").exists(), "{bad:?} installed the binary");
        assert_eq!(fs::read_dir(dir.join("net.d")).unwrap().count(), 1);
    }
}

/// stdout and stderr into a pipe whose reader is already gone, as after `meshcap ... | head`
/// once head exited: every write fails (EPIPE, or SIGPIPE), whenever it happens.
fn closed_pipe() -> Stdio {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    Stdio::from(write)
}

/// A quiet end: success, or the SIGPIPE death other command-line tools die in a closed pipe;
/// never a panic (101) or an error about the pipe.
fn assert_quiet_end(what: &str, status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.success() || status.signal() == Some(nix::libc::SIGPIPE),
        "{what}: {status:?}\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: {stderr}"
    );
}

/// Runs `meshcap args` with stdout into a closed pipe and stderr captured.
fn run_into_closed_stdout(args: &[String]) -> (std::process::ExitStatus, String) {
    let out = Command::new(MESHCAP)
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_ends_quietly_in_a_closed_pipe() {
    let scratch = ScratchDir::new("cli-pipe");
    let dir = scratch.path().to_owned();
    fs::create_dir_all(dir.join("net.d")).unwrap();
    fs::write(dir.join("net.d/10-bridge.conflist"), BRIDGE).unwrap();
    fs::write(dir.join("plugin"), b"#!plugin").unwrap();
    // A manifest with many pod templates: far more output than a pipe buffers.
    let mut manifest = String::new();
    for i in 0..400 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  annotations:\n    sidecar.istio.io/status: '{{}}'\nspec:\n  containers: [{{name: app, image: app}}]\n"
        ));
    }
    let file = dir.join("pods.yaml");
    fs::write(&file, manifest).unwrap();
    let d = |p: &str| dir.join(p).display().to_string();
    let mut cases: Vec<Vec<String>> = vec![
        vec!["--help".into()],
        vec!["--version".into()],
        vec!["render".into(), "-f".into(), file.display().to_string()],
        vec!["render".into(), "--help".into()],
        vec![
            "install".into(),
            "--cni-conf-dir".into(),
            d("net.d"),
            "--cni-bin-dir".into(),
            d("bin"),
            "--plugin-binary".into(),
            d("plugin"),
            "--log-file".into(),
            d("meshcap-cni.log"),
        ],
        vec![
            "uninstall".into(),
            "--cni-conf-dir".into(),
            d("net.d"),
            "--cni-bin-dir".into(),
            d("bin"),
            "--state-dir".into(),
            d("state"),
            "--grace-ms".into(),
            "0".into(),
            "--run-dir".into(),
            d("run"),
            "--pin-dir".into(),
            d("bpf"),
        ],
        // The node steps log to stderr: into the closed pipe too, below.
        vec![
            "node".into(),
            "kubeconfig".into(),
            "--sa-dir".into(),
            d("no-sa"),
        ],
        vec!["agent".into(), "--help".into()],
        vec!["node".into(), "--help".into()],
    ];
    match meshcap_testkit::missing_root() {
        None => cases.push(vec![
            "inspect".into(),
            "--netns".into(),
            "/proc/self/ns/net".into(),
        ]),
        Some(why) => meshcap_testkit::skip_or_fail(
            "every_subcommand_ends_quietly_in_a_closed_pipe (inspect)",
            &format!("{why}: reading a network namespace's rules needs it"),
        ),
    }
    for args in &cases {
        let (status, stderr) = run_into_closed_stdout(args);
        assert_quiet_end(&format!("{args:?}"), status, &stderr);
    }
    // Errors too: an error message into a closed stderr is no panic.
    let out = Command::new(MESHCAP)
        .args(["inspect", "--netns", "/nonexistent"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert!(!out.status.success());
    use std::os::unix::process::ExitStatusExt as _;
    assert_ne!(out.status.code(), Some(101), "{:?}", out.status);
    assert!(
        out.status.code() == Some(1) || out.status.signal() == Some(nix::libc::SIGPIPE),
        "{:?}",
        out.status
    );
}

/// The agent (`agent` and `node agent`) logs to stderr: when its log reader goes away it keeps
/// running and serving its probes instead of dying of SIGPIPE or panicking.
#[test]
fn the_agent_keeps_running_when_its_log_reader_is_gone() {
    use std::io::{Read as _, Write as _};
    let scratch = ScratchDir::new("cli-agent-pipe");
    let dir = scratch.path().to_owned();
    fs::create_dir_all(dir.join("net.d")).unwrap();
    fs::create_dir_all(dir.join("host/opt/cni/bin")).unwrap();
    fs::create_dir_all(dir.join("host/etc/cni/net.d")).unwrap();
    fs::write(dir.join("net.d/10-bridge.conflist"), BRIDGE).unwrap();
    fs::write(dir.join("host/etc/cni/net.d/10-bridge.conflist"), BRIDGE).unwrap();
    fs::write(dir.join("plugin"), b"#!plugin").unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let agent_args = |port: u16| -> Vec<String> {
        vec![
            "agent".into(),
            "--no-fast-path".into(),
            "--cni-conf-dir".into(),
            dir.join("net.d").display().to_string(),
            "--cni-bin-dir".into(),
            dir.join("bin").display().to_string(),
            "--cni-cache-dir".into(),
            dir.join("cache").display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
        ]
    };
    let node_args = |port: u16| -> Vec<String> {
        vec![
            "node".into(),
            "agent".into(),
            "--host-root".into(),
            dir.join("host").display().to_string(),
            "--sa-dir".into(),
            dir.join("no-sa").display().to_string(),
            "--plugin-binary".into(),
            dir.join("plugin").display().to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
        ]
    };
    for (what, args) in [
        ("agent", agent_args(free_port())),
        ("node agent", node_args(free_port())),
    ] {
        let port: u16 = args
            .last()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut child = Command::new(MESHCAP)
            .args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("MESHCAP_STATE_DIR", dir.join("state"))
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .spawn()
            .unwrap();
        // It logs from its first moment; it must still answer its probe.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let healthy = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what} died with its log reader gone: {status:?}");
            }
            let answer = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
                c.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")?;
                let mut text = String::new();
                c.read_to_string(&mut text)?;
                Ok(text)
            });
            if let Ok(text) = answer {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "{what} never served");
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert!(healthy.starts_with("HTTP/1.1 200"), "{what}: {healthy}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{what}: {status:?}");
    }
}

/// `meshcap uninstall` on a node whose DaemonSet still runs: the agent's periodic re-install
/// (and its config watch) leave the node uninstalled, with no binary, entry or kubeconfig put
/// back, and the plugin's log is gone.
#[test]
fn a_running_node_agent_leaves_an_uninstall_done() {
    use std::time::{Duration, Instant};
    let scratch = ScratchDir::new("cli-uninstall-under-agent");
    let dir = scratch.path().to_owned();
    let host = dir.join("host");
    let conf = host.join("etc/cni/net.d");
    let bin = host.join("opt/cni/bin");
    fs::create_dir_all(&conf).unwrap();
    fs::create_dir_all(&bin).unwrap();
    fs::write(conf.join("10-bridge.conflist"), BRIDGE).unwrap();
    fs::write(dir.join("plugin"), b"#!plugin").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Command::new(MESHCAP)
        .args(["node", "agent", "--host-root"])
        .arg(&host)
        .arg("--sa-dir")
        .arg(dir.join("no-sa"))
        .arg("--plugin-binary")
        .arg(dir.join("plugin"))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--refresh-interval", "1"])
        .arg("--log-file")
        .arg(dir.join("log/meshcap-cni.log"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("MESHCAP_STATE_DIR", dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let chained = || {
        fs::read_to_string(conf.join("10-bridge.conflist"))
            .unwrap_or_default()
            .contains("meshcap-cni")
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(chained() && bin.join("meshcap-cni").exists()) {
        assert!(Instant::now() < deadline, "node agent never installed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let one refresh run against the installed node first.
    std::thread::sleep(Duration::from_millis(1500));
    // The plugin's log, as pods' ADDs would have written it.
    fs::create_dir_all(dir.join("log")).unwrap();
    fs::write(dir.join("log/meshcap-cni.log"), "ADD\n").unwrap();

    let out = Command::new(MESHCAP)
        .arg("uninstall")
        .arg("--cni-conf-dir")
        .arg(&conf)
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--pin-dir")
        .arg(dir.join("pins"))
        .args(["--grace-ms", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!chained(), "uninstall took meshcap out of the chain");
    // Three refreshes and several config-watch polls later, nothing is back.
    std::thread::sleep(Duration::from_millis(3500));
    let exited = agent.try_wait().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let output = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(exited.is_none(), "the agent died: {log}");
    assert!(!chained(), "meshcap chained again under the agent:\n{log}");
    assert!(
        !bin.join("meshcap-cni").exists(),
        "the plugin binary came back:\n{log}"
    );
    assert!(!conf.join(".meshcap-entry").exists(), "{log}");
    assert!(
        !dir.join("log/meshcap-cni.log").exists(),
        "the plugin's log is still there after uninstall"
    );
    assert!(
        log.contains("not re-installing"),
        "the agent says why it leaves the node alone:\n{log}"
    );
}

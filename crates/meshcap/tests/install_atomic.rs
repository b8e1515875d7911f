//! `meshcap install` replaces the plugin binary while a runtime keeps starting pods: every ADD
//! that starts during the replacement runs either the old or the new binary, never a
//! half-written file (no ETXTBSY, no truncated ELF, no "exec format error").
//!
//! Two builds are told apart by size: the "new" one is the plugin with 4 MiB appended (an ELF
//! file runs with trailing bytes), which also makes each write slow enough for a non-atomic
//! install to be caught in the act. Installs alternate between the two in a loop while
//! threads run ADD in a loop; each ADD must succeed with the prevResult passed through.
//!
//! Needs the `meshcap-cni` binary (`MESHCAP_STATIC_PLUGIN` as scripts/test.sh sets it, or
//! `cargo build -p meshcap-cni`, or `MESHCAP_CNI_BIN`); no root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshcap_testkit::ScratchDir;
use serde_json::json;

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");
const INSTALLS: usize = 12;

/// The plugin as it ships when scripts/test.sh built it (`MESHCAP_STATIC_PLUGIN`: small, so
/// the installs are quick), else `MESHCAP_CNI_BIN`, else the one next to `meshcap`.
fn plugin_binary() -> Option<PathBuf> {
    for var in ["MESHCAP_STATIC_PLUGIN", "MESHCAP_CNI_BIN"] {
        if let Some(p) = std::env::var_os(var).filter(|p| Path::new(p).exists()) {
            return Some(PathBuf::from(p));
        }
    }
    let p = Path::new(MESHCAP).with_file_name("meshcap-cni");
    p.exists().then_some(p)
}

/// An ADD as a runtime runs it, for a pod selection skips (no sidecar): the plugin starts,
/// parses everything and prints the prevResult. Returns the failure, if any.
fn add(bin: &Path, conf: &str, state: &Path) -> Result<(), String> {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "atomic-install")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("MESHCAP_STATE_DIR", state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("exec {}: {e}", bin.display()))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .map_err(|e| format!("stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("wait: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("10.244.0.5/24") {
        return Err(format!(
            "{}: {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

#[test]
fn adds_during_repeated_installs_run_a_whole_binary() {
    const TEST: &str = "adds_during_repeated_installs_run_a_whole_binary";
    let Some(plugin) = plugin_binary() else {
        let why = "meshcap-cni binary not found next to meshcap (cargo build -p meshcap-cni, or MESHCAP_CNI_BIN)";
        meshcap_testkit::skip_or_fail(TEST, why);
        return;
    };
    let scratch = ScratchDir::new("install-atomic");
    let dir = scratch.path();
    let (conf_dir, bin_dir, builds) = (dir.join("net.d"), dir.join("bin"), dir.join("builds"));
    let state = dir.join("state");
    for d in [&conf_dir, &bin_dir, &builds] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(
        conf_dir.join("10-podnet.conflist"),
        json!({"cniVersion": "1.0.0", "name": "podnet",
               "plugins": [{"type": "bridge", "bridge": "cni0"}]})
        .to_string(),
    )
    .unwrap();
    let old = builds.join("old");
    let new = builds.join("new");
    fs::copy(&plugin, &old).unwrap();
    let mut bytes = fs::read(&plugin).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    fs::write(&new, &bytes).unwrap();
    let (old_len, new_len) = (fs::metadata(&old).unwrap().len(), bytes.len() as u64);

    let install = |build: &Path| {
        let out = Command::new(MESHCAP)
            .arg("install")
            .arg("--cni-conf-dir")
            .arg(&conf_dir)
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .arg("--plugin-binary")
            .arg(build)
            .arg("--log-file")
            .arg(dir.join("plugin.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install(&old);
    let installed = bin_dir.join("meshcap-cni");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "podnet", "type": "meshcap-cni",
        "selection": "injected", "log_file": dir.join("plugin.log"),
        "prevResult": {"cniVersion": "1.0.0",
                       "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1"}]}
    })
    .to_string();

    let done = AtomicBool::new(false);
    let adds = AtomicUsize::new(0);
    let failures: Vec<String> = std::thread::scope(|s| {
        let runners: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        if let Err(e) = add(&installed, &conf, &state) {
                            failed.push(e);
                        }
                        adds.fetch_add(1, Ordering::Relaxed);
                    }
                    failed
                })
            })
            .collect();
        let started = Instant::now();
        let mut sizes = Vec::new();
        for i in 0..INSTALLS {
            install(if i % 2 == 0 { &new } else { &old });
            sizes.push(fs::metadata(&installed).unwrap().len());
        }
        // Let the runners see the last install too.
        std::thread::sleep(Duration::from_millis(100));
        done.store(true, Ordering::Relaxed);
        eprintln!("{TEST}: {INSTALLS} installs in {:?}", started.elapsed());
        assert!(
            sizes.iter().all(|s| *s == old_len || *s == new_len),
            "an installed binary of neither size: {sizes:?}"
        );
        runners
            .into_iter()
            .flat_map(|h| h.join().expect("runner"))
            .collect()
    });
    let adds = adds.load(Ordering::Relaxed);
    eprintln!(
        "{TEST}: {adds} ADDs during the installs, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {adds} ADDs failed, e.g.: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        adds >= INSTALLS,
        "only {adds} ADDs ran during {INSTALLS} installs"
    );
    // No temp file of an install is left in the bin dir.
    let names: Vec<String> = fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["meshcap-cni"], "bin dir: {names:?}");
}

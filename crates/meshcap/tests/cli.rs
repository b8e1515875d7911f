//! The command line as an operator meets it: bad values are refused before anything is
//! written, and output into a closed pipe (`meshcap ... | head`) ends quietly.

use std::fs;
use std::process::{Command, Stdio};

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");

const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}}]}"#;

#[test]
fn install_refuses_invalid_mode_or_selection_before_writing_anything() {
    let dir = std::env::temp_dir().join(format!("meshcap-cli-refuse-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
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
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // A manifest with many pod templates: far more output than a pipe buffers.
    let dir = std::env::temp_dir().join(format!("meshcap-cli-pipe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut manifest = String::new();
    for i in 0..400 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  annotations:\n    sidecar.istio.io/status: '{{}}'\nspec:\n  containers: [{{name: app, image: app}}]\n"
        ));
    }
    let file = dir.join("pods.yaml");
    fs::write(&file, manifest).unwrap();
    for args in [
        vec![
            "render".to_owned(),
            "-f".to_owned(),
            file.display().to_string(),
        ],
        vec!["--help".to_owned()],
    ] {
        let mut child = Command::new(MESHCAP)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away at once, as `head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

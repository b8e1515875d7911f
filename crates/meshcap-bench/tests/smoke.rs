//! Smoke test: the whole benchmark in a tiny configuration, so CI proves every section runs
//! end to end (real namespaces, the real plugin, the exec baseline, the datapath) and that the
//! JSON report has its shape. No timing assertions: figures come from `scripts/bench.sh`.
//!
//! Privileged: without root the test says it is skipped, by name; with `CI=true` it fails
//! instead. It needs the `meshcap-cni` binary next to `meshcap-bench` (same profile), which
//! `cargo build --workspace` (scripts/test.sh) produces.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshcap_testkit::ScratchDir;
use serde_json::Value;

/// The plugin to benchmark when the test can run here (root, the plugin binary, which
/// `plugin` names or says how to get); else skips by name, or panics under `CI=true`.
fn runnable(test: &str, plugin: Result<PathBuf, String>) -> Option<PathBuf> {
    let why = if let Some(why) = meshcap_testkit::missing_root() {
        format!("{why} (network namespaces, netfilter)")
    } else {
        match plugin {
            Ok(p) if p.is_file() => return Some(p),
            Ok(p) => format!("{} is missing", p.display()),
            Err(why) => why,
        }
    };
    meshcap_testkit::skip_or_fail(test, &why);
    None
}

/// Runs `meshcap-bench` on `plugin` with `args` (words split on spaces) and asserts that it
/// succeeded; returns its stdout and the JSON report, written to a scratch directory.
fn run_bench(scratch: &str, plugin: &Path, args: &str) -> (String, Value) {
    let scratch = ScratchDir::new(scratch);
    let json = scratch.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_meshcap-bench"))
        .arg("--plugin")
        .arg(plugin)
        .arg("--json")
        .arg(&json)
        .args(args.split_whitespace())
        .output()
        .expect("running meshcap-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshcap-bench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json).expect("reading the JSON report");
    (stdout, serde_json::from_str(&report).unwrap())
}

#[test]
fn bench_smoke_tiny_configuration() {
    const TEST: &str = "bench_smoke_tiny_configuration";
    let bench = Path::new(env!("CARGO_BIN_EXE_meshcap-bench"));
    let same_profile = bench.with_file_name("meshcap-cni");
    let plugin = if same_profile.is_file() {
        Ok(same_profile)
    } else {
        Err(format!(
            "{} is missing: cargo build -p meshcap-cni first",
            same_profile.display()
        ))
    };
    let Some(plugin) = runnable(TEST, plugin) else {
        return;
    };

    let (stdout, r) = run_bench(
        "bench-smoke",
        &plugin,
        "--runs 2 --parallel 3 --parallel-rounds 1 --datapath-secs 0.1 --datapath-rounds 1 --scale 4",
    );
    for heading in [
        "ADD latency",
        "DEL latency",
        "Parallel pod starts",
        "Datapath",
        "Scale",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} table in:\n{stdout}"
        );
    }

    assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
    assert!(r["machine"]["kernel"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert!(r["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    assert!(r["command"].as_str().unwrap().contains("--runs 2"));

    // Both pod shapes, each with every mode against its own baseline.
    let shapes = r["add"]["shapes"].as_array().unwrap();
    let shape_names: Vec<&str> = shapes
        .iter()
        .map(|s| s["shape"].as_str().unwrap())
        .collect();
    assert_eq!(shape_names, ["dual-stack", "v4-only"]);
    for shape in shapes {
        let modes = shape["modes"].as_array().unwrap();
        let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
        assert_eq!(names, ["baseline", "iptables", "nftables"]);
        for m in modes {
            assert_eq!(m["ms"]["n"], 2, "{m}");
            assert_eq!(m["samples_ms"].as_array().unwrap().len(), 2, "{m}");
        }
        for k in [
            "nftables/baseline median",
            "iptables/baseline median",
            "iptables DEL/ADD median",
            "nftables DEL/ADD median",
        ] {
            assert!(shape["ratios"][k].as_f64().is_some(), "{k}: {shape:#}");
        }
        for m in shape["del"].as_array().unwrap() {
            assert_eq!(m["ms"]["n"], 2, "{m}");
        }
    }
    // `cargo build --workspace` puts meshcap-bench-control next to the plugin: the control
    // row follows the modes.
    let parallel = r["parallel"]["modes"].as_array().unwrap();
    let names: Vec<&str> = parallel
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "iptables", "nftables", "control"]);
    for m in parallel {
        assert_eq!(m["ms"]["n"], 3, "{m}");
        assert_eq!(m["wall_ms"].as_array().unwrap().len(), 1, "{m}");
        assert!(m["wall_over_cpu_bound_median"].as_f64().is_some(), "{m}");
        assert_eq!(
            m["p99_over_single_median"].as_f64().is_some(),
            m["mode"] != "control",
            "{m}"
        );
    }
    for shape in r["datapath"]["shapes"].as_array().unwrap() {
        let targets: Vec<&str> = shape["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["direct", "baseline", "iptables", "nftables"]);
        for t in shape["targets"].as_array().unwrap() {
            assert!(t["transactions"].as_u64().is_some_and(|n| n > 0), "{t}");
        }
    }
    assert_eq!(r["scale"]["pods"], 4);
    assert_eq!(r["scale"]["bucket"], 2);
    assert!(
        r["scale"]["p99_last_over_first"].as_f64().is_some(),
        "{r:#}"
    );
}

/// The plugin as it ships (`scripts/build-static.sh`: static musl, non-PIE, with its own
/// allocator) installs the capture in both modes and the report says it is static; a small
/// parallel section runs beside the static burst control. `scripts/test.sh` builds both and
/// names the plugin in `MESHCAP_STATIC_PLUGIN`.
#[test]
fn bench_add_with_the_shipped_static_plugin() {
    const TEST: &str = "bench_add_with_the_shipped_static_plugin";
    let plugin = std::env::var_os("MESHCAP_STATIC_PLUGIN")
        .map(PathBuf::from)
        .ok_or_else(|| {
            "MESHCAP_STATIC_PLUGIN is not set (scripts/test.sh sets it after scripts/build-static.sh)"
                .to_owned()
        });
    let Some(plugin) = runnable(TEST, plugin) else {
        return;
    };
    let (_, r) = run_bench(
        "bench-static",
        &plugin,
        "--sections add,parallel --runs 3 --parallel 8 --parallel-rounds 1",
    );
    assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["machine"]["plugin_linkage"], "static", "{r:#}");
    assert_eq!(r["machine"]["state_dir_fs"], "tmpfs", "{r:#}");
    for shape in r["add"]["shapes"].as_array().unwrap() {
        for m in shape["modes"].as_array().unwrap() {
            assert_eq!(m["ms"]["n"], 3, "{m}");
        }
    }
    // The static control (scripts/test.sh builds it beside the plugin) ran its bursts: the
    // harness's own ratio.
    let control = r["parallel"]["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == "control")
        .unwrap_or_else(|| panic!("no control row: {r:#}"));
    assert!(
        control["wall_over_cpu_bound_median"].as_f64().is_some(),
        "{control}"
    );
}

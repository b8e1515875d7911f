//! Runs the built `meshcap-cni` binary the way a runtime does: a cleared environment with the
//! `CNI_*` variables, the network configuration on stdin, the result or error JSON read from
//! stdout. The privileged round trip at the end needs root, `ip` and the rule backends; it
//! says so by name when it cannot run, and fails instead under `CI=true`.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::{missing_root_or_tools, run_plugin, skip_or_fail, Netns, Run, Scratch};

impl Run {
    /// stdout parsed as the single JSON value it must be (or `None` when empty).
    fn json(&self) -> Option<Value> {
        if self.stdout.is_empty() {
            return None;
        }
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON value ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        });
        Some(v)
    }

    fn ok(&self) -> Option<Value> {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.json()
    }

    /// Asserts a CNI error with `code` whose msg or details contain `needle`.
    fn error(&self, code: u64, needle: &str) -> Value {
        assert_ne!(self.code, 0, "expected failure; stdout: {}", self.stdout);
        let v = self.json().expect("error JSON on stdout");
        assert_eq!(v["code"], code, "{v}\nstderr: {}", self.stderr);
        for key in ["cniVersion", "msg", "details"] {
            assert!(v[key].is_string(), "{key} missing in {v}");
        }
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(needle), "{needle:?} not in {v}");
        v
    }
}

fn scratch(test: &str) -> Scratch {
    Scratch::new(&format!("cni-it-{test}"))
}

impl Scratch {
    /// The record files of `network`, sorted.
    fn records(&self, network: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.path().join("state").join(network)) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// A record of an attachment whose namespace is gone, as the plugin writes one.
    fn write_record(&self, network: &str, cid: &str, ifname: &str) {
        let dir = self.path().join("state").join(network);
        fs::create_dir_all(&dir).unwrap();
        let rec = json!({
            "network": network, "container_id": cid, "ifname": ifname,
            "netns": "/run/netns/gone", "mode": "iptables", "families": ["ipv4"],
            "pod_namespace": null, "pod_name": null, "pod_uid": null,
            "ebpf_registered": false, "added_at_unix": 0
        });
        fs::write(dir.join(format!("{cid}@{ifname}.json")), rec.to_string()).unwrap();
    }
}

fn attach_env<'a>(command: &'a str, netns: &'a str, state: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "4f3c2b1a"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1",
        ),
        ("MESHCAP_STATE_DIR", state),
    ]
}

fn prev_result_1x(netns: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": netns}],
        "ips": [
            {"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0},
            {"address": "fd00:10:244::5/64", "gateway": "fd00:10:244::1", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn conf(version: &str, extra: Value) -> String {
    let mut v = json!({"cniVersion": version, "name": "meshnet", "type": "meshcap-cni"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v.to_string()
}

#[test]
fn version_lists_supported_versions() {
    let r = run_plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(
        r.ok().unwrap(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let r = run_plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(r.ok().unwrap()["cniVersion"], "1.1.0");
}

#[test]
fn add_of_unselected_pod_passes_prev_result_through_converted() {
    let s = scratch("add-unselected");
    let state = s.state();
    let env = attach_env("ADD", "/run/netns/does-not-matter", &state);
    let annotations =
        json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"app": "web"}}});
    for to in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut extra = annotations.clone();
        extra["prevResult"] = prev_result_1x("/run/netns/x");
        let out = run_plugin(&env, &conf(to, extra)).ok().unwrap();
        let mut expected = prev_result_1x("/run/netns/x");
        expected["cniVersion"] = json!(to);
        if to.starts_with("0.") {
            expected["ips"][0]["version"] = json!("4");
            expected["ips"][1]["version"] = json!("6");
        }
        assert_eq!(out, expected, "to {to}");
    }
    assert!(
        s.records("meshnet").is_empty(),
        "nothing recorded for an unselected pod"
    );
}

#[test]
fn add_in_excluded_namespace_passes_through_without_annotations() {
    let s = scratch("add-excluded");
    let state = s.state();
    let mut env = attach_env("ADD", "/run/netns/x", &state);
    env[5] = (
        "CNI_ARGS",
        "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns",
    );
    let out = run_plugin(
        &env,
        &conf(
            "1.1.0",
            json!({"exclude_namespaces": ["kube-system"], "selection": "all"}),
        ),
    )
    .ok()
    .unwrap();
    assert_eq!(out, json!({"cniVersion": "1.1.0"}));
}

/// The key istio-cni, linkerd-cni and kuma-cni configs use, `kubernetes.exclude_namespaces`,
/// excludes as meshcap's own does; keys the plugin does not know are named in a warning (a
/// typo otherwise silently changes nothing) and the command still succeeds.
#[test]
fn kubernetes_exclude_namespaces_is_honoured_and_unknown_keys_are_warned() {
    let s = scratch("peer-keys");
    let state = s.state();
    let log = s.path().join("meshcap-cni.log");
    let mut env = attach_env("ADD", "/run/netns/x", &state);
    env[5] = (
        "CNI_ARGS",
        "K8S_POD_NAMESPACE=istio-system;K8S_POD_NAME=istiod-0",
    );
    let extra = json!({
        "selection": "all",
        "kubernetes": {"exclude_namespaces": ["istio-system"], "kubeconfg": "/typo"},
        "log_levle": "debug",
        "log_file": log.to_str().unwrap(),
    });
    let r = run_plugin(&env, &conf("1.1.0", extra));
    assert_eq!(r.ok().unwrap(), json!({"cniVersion": "1.1.0"}));
    let text = fs::read_to_string(&log).unwrap();
    let warning = text
        .lines()
        .find(|l| l.contains("unknown config keys"))
        .unwrap_or_else(|| panic!("no warning in the log file:\n{text}"));
    assert!(
        warning.contains("WARN") && warning.contains("log_levle") && warning.contains("kubeconfg"),
        "{warning}"
    );
    assert!(
        r.stderr.contains("unknown config keys"),
        "on stderr too: {}",
        r.stderr
    );
    assert!(
        s.records("meshnet").is_empty(),
        "the excluded pod is not captured"
    );
}

#[test]
fn add_of_kubernetes_pod_without_annotations_fails_closed() {
    let s = scratch("add-no-annotations");
    let state = s.state();
    let env = attach_env("ADD", "/run/netns/x", &state);
    run_plugin(&env, &conf("1.0.0", json!({}))).error(7, "not passed by the runtime");
}

#[test]
fn bad_inputs_map_to_their_codes() {
    let s = scratch("bad-inputs");
    let state = s.state();
    let env = attach_env("ADD", "/run/netns/x", &state);
    run_plugin(&env, "{\"cniVersion\": ").error(6, "decode");
    run_plugin(&env, &conf("1.0.0", json!({"mode": "ebpf"}))).error(7, "mode");
    run_plugin(&env, &conf("1.0.0", json!({"log_level": "loud"}))).error(7, "log_level");
    let v = run_plugin(&env, &conf("0.2.0", json!({}))).error(1, "0.2.0");
    assert_eq!(v["cniVersion"], "1.1.0");
    run_plugin(&env[1..], &conf("1.0.0", json!({}))).error(4, "CNI_COMMAND");
    run_plugin(&[("CNI_COMMAND", "CHECK")], &conf("1.0.0", json!({})))
        .error(4, "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME");
    let mut bad_args = env.clone();
    bad_args[5] = ("CNI_ARGS", "K8S_POD_NAME");
    run_plugin(&bad_args, &conf("1.0.0", json!({}))).error(4, "CNI_ARGS");
    // A bad prevResult is refused before anything is applied.
    run_plugin(
        &env,
        &conf("1.0.0", json!({"prevResult": {"cniVersion": "0.1.0"}})),
    )
    .error(1, "prevResult");
}

#[test]
fn bad_annotation_is_code_7_and_applies_nothing() {
    let s = scratch("bad-annotation");
    let state = s.state();
    let env = attach_env("ADD", "/run/netns/meshcap-cni-it-never-created", &state);
    let extra = json!({
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
            "sidecar.istio.io/status": "{}",
            "sidecar.istio.io/interceptionMode": "BOGUS"
        }},
        "prevResult": prev_result_1x("/run/netns/x")
    });
    run_plugin(&env, &conf("1.0.0", extra)).error(7, "sidecar.istio.io/interceptionMode");
    let extra = json!({
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
            "sidecar.istio.io/status": "{}",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"
        }}
    });
    run_plugin(&env, &conf("1.0.0", extra))
        .error(7, "traffic.sidecar.istio.io/excludeOutboundIPRanges");
    assert!(s.records("meshnet").is_empty());
}

/// Every input the Istio front end reads on the runtime path (node defaults in the plugin
/// configuration, the proxy's metadata in `proxy.istio.io/config`, the status port) fails the
/// ADD with code 7 naming its source, and leaves a real namespace exactly as it was.
#[test]
fn privileged_bad_istio_inputs_are_code_7_and_leave_the_namespace_untouched() {
    const TEST: &str = "privileged_bad_istio_inputs_are_code_7_and_leave_the_namespace_untouched";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let s = scratch("bad-istio-inputs");
    let state = s.state();
    let ns = Netns::create("mcni-bad-istio");
    let path = ns.path();
    let env = attach_env("ADD", &path, &state);
    let status = json!({"sidecar.istio.io/status": "{}"});
    let with = |extra: &[(&str, &str)]| {
        let mut a = status.clone();
        for (k, v) in extra {
            a[*k] = json!(v);
        }
        json!({"io.kubernetes.cri.pod-annotations": a})
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"istio": {"dns_capture": "yes"}, "runtimeConfig": with(&[])}),
            "istio.dns_capture",
        ),
        (
            json!({"istio": {"proxy_uids": [0]}, "runtimeConfig": with(&[])}),
            "istio.proxy_uids",
        ),
        (
            json!({"istio": {"outbound_owner_groups": "java"}, "runtimeConfig": with(&[])}),
            "istio.outbound_owner_groups",
        ),
        (
            json!({"istio": {"ipv4_loopback_cidr": "10.0.0.0/8"}, "runtimeConfig": with(&[])}),
            "istio.ipv4_loopback_cidr",
        ),
        (
            json!({"istio": {"proxy_listen_port": 0}, "runtimeConfig": with(&[])}),
            "istio.proxy_listen_port",
        ),
        (
            json!({"istio": {"dns_servers": ["x"]}, "runtimeConfig": with(&[])}),
            "istio.dns_servers",
        ),
        (
            json!({"istio": {"proxy_gids": [1337, 0]}, "runtimeConfig": with(&[])}),
            "istio.proxy_gids",
        ),
        (
            json!({"istio": {"invalid_drop": "true"}, "runtimeConfig": with(&[])}),
            "istio.invalid_drop",
        ),
        (
            json!({"istio": {"dual_stack": 1}, "runtimeConfig": with(&[])}),
            "istio.dual_stack",
        ),
        (
            json!({"istio": {"outbound_owner_groups_exclude": "*"}, "runtimeConfig": with(&[])}),
            "istio.outbound_owner_groups_exclude",
        ),
        (
            json!({"istio": {"proxy_inbound_listen_port": 65536}, "runtimeConfig": with(&[])}),
            "istio.proxy_inbound_listen_port",
        ),
        (
            json!({"istio": {"dns_captrue": true}, "runtimeConfig": with(&[])}),
            "istio.dns_captrue",
        ),
        (
            json!({"kubernetes": {"read_pod": "always"}, "runtimeConfig": with(&[])}),
            "kubernetes.read_pod",
        ),
        (
            json!({"runtimeConfig": with(&[(
                "proxy.istio.io/config",
                "proxyMetadata:\n  INVALID_DROP: \"sometimes\"",
            )])}),
            "proxyMetadata.INVALID_DROP",
        ),
        (
            json!({"runtimeConfig": with(&[(
                "proxy.istio.io/config",
                "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"maybe\"",
            )])}),
            "proxyMetadata.ISTIO_META_DNS_CAPTURE",
        ),
        (
            json!({"runtimeConfig": with(&[(
                "proxy.istio.io/config",
                "proxyMetadata:\n  ISTIO_DUAL_STACK: \"both\"",
            )])}),
            "proxyMetadata.ISTIO_DUAL_STACK",
        ),
        (
            json!({"runtimeConfig": with(&[("status.sidecar.istio.io/port", "health")])}),
            "status.sidecar.istio.io/port",
        ),
    ];
    for mode in ["iptables", "nftables"] {
        let before = ns.rules(mode);
        for (extra, needle) in &cases {
            let mut extra = extra.clone();
            extra["mode"] = json!(mode);
            extra["prevResult"] = prev_result_1x(&path);
            run_plugin(&env, &conf("1.0.0", extra)).error(7, needle);
            assert_eq!(
                ns.rules(mode),
                before,
                "{mode} {needle}: namespace untouched"
            );
        }
    }
    assert!(s.records("meshnet").is_empty());
}

#[test]
fn add_and_check_on_a_missing_netns_fail_clearly() {
    let s = scratch("add-missing-netns");
    let state = s.state();
    let gone = format!("/run/netns/meshcap-cni-it-missing-{}", std::process::id());
    let extra = json!({
        "selection": "all",
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {}},
        "prevResult": prev_result_1x(&gone)
    });
    run_plugin(
        &attach_env("ADD", &gone, &state),
        &conf("1.0.0", extra.clone()),
    )
    .error(4, "does not exist");
    run_plugin(&attach_env("CHECK", &gone, &state), &conf("1.0.0", extra))
        .error(4, "does not exist");
    assert!(s.records("meshnet").is_empty());
    // CHECK of an unselected pod passes without touching anything.
    let extra = json!({
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {}},
        "prevResult": prev_result_1x(&gone)
    });
    assert_eq!(
        run_plugin(&attach_env("CHECK", &gone, &state), &conf("0.4.0", extra)).ok(),
        None
    );
}

#[test]
fn status_is_a_1_1_command_and_succeeds_when_the_backend_is_installed() {
    let env = [("CNI_COMMAND", "STATUS")];
    // A missing eBPF agent never fails STATUS.
    let config = conf(
        "1.1.0",
        json!({"mode": "iptables", "ebpf": {"enabled": true}}),
    );
    let r = run_plugin(&env, &config);
    if r.code == 0 {
        assert_eq!(r.ok(), None);
    } else {
        // Only when the node really lacks the iptables programs.
        r.error(50, "not found");
    }
    run_plugin(&env, &conf("1.0.0", json!({}))).error(1, "STATUS needs cniVersion 1.1.0");
}

#[test]
fn del_with_empty_netns_succeeds() {
    let s = scratch("del-empty-netns");
    let state = s.state();
    s.write_record("meshnet", "4f3c2b1a", "eth0");
    let env = attach_env("DEL", "", &state);
    for _ in 0..2 {
        let r = run_plugin(&env, &conf("1.1.0", json!({"selection": "all"})));
        assert_eq!(r.ok(), None, "DEL prints nothing");
    }
    assert!(s.records("meshnet").is_empty());
    // Without CNI_NETNS at all, too.
    let env: Vec<_> = env.into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
    assert_eq!(run_plugin(&env, &conf("0.3.1", json!({}))).ok(), None);
}

#[test]
fn del_on_vanished_netns_succeeds() {
    let s = scratch("del-vanished");
    let state = s.state();
    s.write_record("meshnet", "4f3c2b1a", "eth0");
    let gone = format!("/run/netns/meshcap-cni-it-gone-{}", std::process::id());
    assert!(!Path::new(&gone).exists());
    let env = attach_env("DEL", &gone, &state);
    let extra = json!({"selection": "all", "prevResult": prev_result_1x(&gone)});
    assert_eq!(run_plugin(&env, &conf("1.0.0", extra.clone())).ok(), None);
    assert!(s.records("meshnet").is_empty());
    // And again, with nothing recorded any more (and for a Kubernetes pod without annotations).
    assert_eq!(run_plugin(&env, &conf("1.0.0", json!({}))).ok(), None);
}

#[test]
fn gc_removes_stale_records_and_keeps_valid_ones() {
    let s = scratch("gc");
    let state = s.state();
    s.write_record("meshnet", "keep1", "eth0");
    s.write_record("meshnet", "keep1", "net1");
    s.write_record("meshnet", "stale1", "eth0");
    s.write_record("meshnet", "stale2", "eth0");
    s.write_record("othernet", "stale1", "eth0");
    let env = [
        ("CNI_COMMAND", "GC"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("MESHCAP_STATE_DIR", state.as_str()),
    ];
    let valid = json!({"cni.dev/valid-attachments": [
        {"containerID": "keep1", "ifname": "eth0"},
        {"containerID": "keep1", "ifname": "net1"},
        {"containerID": "never-added", "ifname": "eth0"}
    ]});
    assert_eq!(run_plugin(&env, &conf("1.1.0", valid.clone())).ok(), None);
    assert_eq!(s.records("meshnet"), ["keep1@eth0.json", "keep1@net1.json"]);
    assert_eq!(
        s.records("othernet"),
        ["stale1@eth0.json"],
        "other networks untouched"
    );
    // Idempotent; an empty list removes everything of this network.
    assert_eq!(run_plugin(&env, &conf("1.1.0", valid)).ok(), None);
    assert_eq!(
        run_plugin(
            &env,
            &conf("1.1.0", json!({"cni.dev/valid-attachments": []}))
        )
        .ok(),
        None
    );
    assert!(s.records("meshnet").is_empty());
    // GC is a 1.1 command and needs its input.
    run_plugin(
        &env,
        &conf("1.0.0", json!({"cni.dev/valid-attachments": []})),
    )
    .error(1, "GC");
    run_plugin(&env, &conf("1.1.0", json!({}))).error(7, "cni.dev/valid-attachments");
}

#[test]
fn logs_go_to_stderr_and_the_log_file_never_stdout() {
    let s = scratch("logging");
    let state = s.state();
    let log = s.path().join("logs/sub/meshcap-cni.log");
    let env = attach_env("ADD", "/run/netns/x", &state);
    let extra = json!({
        "log_file": log.to_str().unwrap(),
        "log_level": "debug",
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {}}
    });
    let r = run_plugin(&env, &conf("1.0.0", extra));
    assert_eq!(r.ok().unwrap(), json!({"cniVersion": "1.0.0"}));
    let text = fs::read_to_string(&log).unwrap();
    for needle in ["4f3c2b1a", "default/web-0", "ADD", "not capturing"] {
        assert!(text.contains(needle), "{needle:?} not in log file:\n{text}");
        assert!(
            r.stderr.contains(needle),
            "{needle:?} not on stderr:\n{}",
            r.stderr
        );
    }
    // Failures are logged to the file too, with the invocation's fields.
    let extra = json!({
        "log_file": log.to_str().unwrap(),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
            "sidecar.istio.io/status": "{}",
            "traffic.sidecar.istio.io/includeInboundPorts": "http"
        }}
    });
    run_plugin(&env, &conf("1.0.0", extra)).error(7, "includeInboundPorts");
    let text = fs::read_to_string(&log).unwrap();
    let failure = text
        .lines()
        .find(|l| l.contains("failed") && l.contains("code=7"))
        .unwrap_or_else(|| panic!("no failure line in log file:\n{text}"));
    assert!(
        failure.contains("includeInboundPorts") && failure.contains("4f3c2b1a"),
        "{failure}"
    );

    // A failure before the configuration is decoded (here: not JSON) still reaches stderr.
    let r = run_plugin(&env, "{not json");
    r.error(6, "");
    assert!(
        r.stderr.contains("ERROR") && r.stderr.contains("failed") && r.stderr.contains("code=6"),
        "early failure not on stderr: {}",
        r.stderr
    );

    // Past log_file_max_bytes the log moves to .1 and the invocation starts a new one.
    let before = fs::read_to_string(&log).unwrap();
    let extra = json!({
        "log_file": log.to_str().unwrap(),
        "log_file_max_bytes": before.len(),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {}}
    });
    run_plugin(&env, &conf("1.0.0", extra)).ok().unwrap();
    let older = fs::read_to_string(s.path().join("logs/sub/meshcap-cni.log.1")).unwrap();
    let newer = fs::read_to_string(&log).unwrap();
    assert_eq!(older, before);
    assert!(
        newer.contains("not capturing") && !newer.contains("code=7"),
        "{newer}"
    );

    // An unopenable log file does not fail the command.
    let extra = json!({"log_file": "/proc/meshcap/nope.log", "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {}}});
    let r = run_plugin(&env, &conf("1.0.0", extra));
    assert_eq!(r.ok().unwrap(), json!({"cniVersion": "1.0.0"}));
    assert!(r.stderr.contains("cannot open log_file"), "{}", r.stderr);
}

// ---- privileged: a real namespace and the real rule backends ----

/// Whether meshcap's rules are in `ns`, as the stock tools see them (not through meshcap).
fn installed(ns: &Netns, mode: &str) -> bool {
    let (tool, args, needle): (&str, &[&str], &str) = match mode {
        "iptables" => ("iptables-save", &[], "MESHCAP_"),
        _ => ("nft", &["list", "tables"], "meshcap"),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, tool])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains(needle)
}

#[test]
fn privileged_add_check_del_round_trip() {
    const TEST: &str = "privileged_add_check_del_round_trip";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    for mode in ["iptables", "nftables"] {
        let s = scratch(&format!("roundtrip-{mode}"));
        let state = s.state();
        let ns = Netns::create(&format!("mcni-{mode}"));
        let path = ns.path();
        let prev = prev_result_1x(&path);
        let extra = json!({
            "mode": mode,
            // No agent behind this pin directory (one may well run at the default one): ADD
            // must still succeed with rules alone.
            "ebpf": {
                "enabled": mode == "nftables",
                "pin_dir": format!("/sys/fs/bpf/meshcap-cli-absent-{}", std::process::id()),
            },
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}},
            "prevResult": prev,
        });
        let config = conf("1.1.0", extra);

        let mut expected = prev_result_1x(&path);
        expected["cniVersion"] = json!("1.1.0");
        let add = attach_env("ADD", &path, &state);
        let r = run_plugin(&add, &config);
        assert_eq!(r.ok().unwrap(), expected, "{mode}: ADD");
        if mode == "nftables" {
            assert!(
                r.stderr.contains("eBPF fast path not available"),
                "{}",
                r.stderr
            );
        }
        assert_eq!(s.records("meshnet"), ["4f3c2b1a@eth0.json"], "{mode}");
        let record: Value = serde_json::from_str(
            &fs::read_to_string(s.path().join("state/meshnet/4f3c2b1a@eth0.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(record["mode"], mode);
        assert_eq!(record["pod_name"], "web-0");
        assert_eq!(record["netns"], path.as_str());

        assert!(installed(&ns, mode), "{mode}: rules visible after ADD");

        // A retried ADD is fine, and CHECK passes right after ADD.
        assert_eq!(
            run_plugin(&add, &config).ok().unwrap(),
            expected,
            "{mode}: 2nd ADD"
        );
        let check = attach_env("CHECK", &path, &state);
        assert_eq!(
            run_plugin(&check, &config).ok(),
            None,
            "{mode}: CHECK after ADD"
        );

        // STATUS answers for the configured backend.
        let status = [
            ("CNI_COMMAND", "STATUS"),
            ("MESHCAP_STATE_DIR", state.as_str()),
        ];
        assert_eq!(run_plugin(&status, &config).ok(), None, "{mode}: STATUS");

        // DEL removes; CHECK then reports the missing rules as drift.
        let del = attach_env("DEL", &path, &state);
        assert_eq!(run_plugin(&del, &config).ok(), None, "{mode}: DEL");
        assert!(s.records("meshnet").is_empty(), "{mode}");
        assert!(!installed(&ns, mode), "{mode}: rules gone after DEL");
        assert_eq!(run_plugin(&del, &config).ok(), None, "{mode}: 2nd DEL");
        run_plugin(&check, &config).error(101, "differ from what ADD installed");
    }
}

fn nft_in(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// CHECK reads the installed expressions back and compares them, not the comments: a rule whose
// expressions were replaced while its comment stayed the same is drift (code 101), and the
// error shows the rule as the kernel holds it.
#[test]
fn privileged_nftables_check_compares_expressions_not_comments() {
    const TEST: &str = "privileged_nftables_check_compares_expressions_not_comments";
    if let Some(reason) = missing_root_or_tools(&["ip", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let s = scratch("nft-exprs");
    let state = s.state();
    let ns = Netns::create("mcni-nftexprs");
    let path = ns.path();
    let extra = json!({
        "mode": "nftables",
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}},
        "prevResult": prev_result_1x(&path),
    });
    let mut refused = extra.clone();
    refused["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]
        ["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = json!("10.0.0.1");
    let refused = conf("1.1.0", refused);
    let config = conf("1.1.0", extra);
    run_plugin(&attach_env("ADD", &path, &state), &config).ok();
    let check = attach_env("CHECK", &path, &state);
    assert_eq!(run_plugin(&check, &config).ok(), None, "CHECK after ADD");
    // A value istio-cni refuses (a bare address, which an earlier release took for /32): CHECK
    // of such a pod names it, code 7.
    run_plugin(&check, &refused).error(7, "traffic.sidecar.istio.io/excludeOutboundIPRanges");

    // The outbound redirect, with its handle and comment.
    let chain = "nat_MESHCAP_REDIRECT";
    let listing = nft_in(&ns, &["-a", "list", "chain", "ip", "meshcap", chain]);
    let line = listing
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("meta l4proto tcp redirect to :15001 comment \""))
        .unwrap_or_else(|| panic!("no redirect rule in {listing}"));
    let (rest, handle) = line.rsplit_once(" # handle ").expect("handle shown by -a");
    let comment = rest
        .split_once(" comment ")
        .expect("meshcap rules carry a comment")
        .1;
    let replacement = format!("meta l4proto tcp redirect to :15002 comment {comment}");
    // `comment "..."` must reach nft as one word with its quotes: pass the script on stdin.
    let script = format!("replace rule ip meshcap {chain} handle {handle} {replacement}\n");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(out.success(), "nft -f: {script}");
    let after = nft_in(&ns, &["list", "chain", "ip", "meshcap", chain]);
    assert!(
        after.contains(&format!("redirect to :15002 comment {comment}")),
        "{after}"
    );

    let v = run_plugin(&check, &config).error(101, "differ from what ADD installed");
    let text = v.to_string();
    assert!(text.contains("redirect to :15002"), "{text}");
    assert!(text.contains("redirect to :15001"), "{text}");

    assert_eq!(
        run_plugin(&attach_env("DEL", &path, &state), &config).ok(),
        None
    );
}

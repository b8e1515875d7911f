//! The Kubernetes API path, end to end: the built `meshcap-cni` runs like a runtime runs it
//! (cleared environment, `CNI_ARGS` naming a pod, no pod annotations in `runtimeConfig`) and
//! reads the pod from the test kit's fake API server (`meshcap_testkit::kube_api`: `GET
//! /api/v1/namespaces/NS/pods/NAME`, `Status` bodies on errors, chunked 200s, TLS). No real
//! API server installs here.
//!
//! Covered: selected / skipped / fail-closed outcomes and their CNI codes; pods skipped before
//! any request; retry with backoff (500 then 200); the deadline (a server that never answers,
//! one that always answers 503, a closed port); and, as root, that an ADD through the API path
//! installs exactly the rules an ADD with the annotations passed installs, in both backends,
//! with the proxy uid from the pod honoured; Linkerd and Kuma pods selected and set up from
//! the spec as their own CNI plugins read it.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshcap_testkit::kube_api::{
    namespace_path, pod_path, status_body, write_kubeconfig, FakeApi, Reply, TokenFile,
};
use serde_json::{json, Value};

mod common;
use common::{missing_root_or_tools, run_plugin, skip_or_fail, Netns, Run, Scratch};

const TOKEN: &str = "test-token-5e1f";

/// Both rule backends; each privileged test runs in both.
const MODES: [&str; 2] = ["iptables", "nftables"];

/// Whether a privileged test can run here (root and the rule tools); says why when not.
fn privileged(test: &str) -> bool {
    match missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        None => true,
        Some(reason) => {
            skip_or_fail(test, &reason);
            false
        }
    }
}

// ---- what the fake API server answers ----

/// `path` answers 200 with `body`, every time.
fn serves(path: String, body: Value) -> (String, Vec<Reply>) {
    (path, vec![Reply::Json(200, body)])
}

/// An error with its `Status` body.
fn failure(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(code, status_body(code, reason, message))
}

/// What an API server answers while it shuts down: a retryable 503.
fn shutting_down() -> Reply {
    failure(503, "ServiceUnavailable", "apiserver is shutting down")
}

fn namespace(name: &str, annotations: Value) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": name, "annotations": annotations},
        "status": {"phase": "Active"}
    })
}

/// The request paths the server has read since it had read `before` of them.
fn paths_since(api: &FakeApi, before: usize) -> Vec<String> {
    api.seen()[before..]
        .iter()
        .map(|s| s.path.clone())
        .collect()
}

// ---- pods, as the API server returns them ----

/// The traffic annotations of an injected pod; the privileged test passes the same map via
/// runtimeConfig and compares the rules.
fn injected_annotations() -> Value {
    json!({
        "sidecar.istio.io/status": "{\"initContainers\":[\"istio-validation\"],\"containers\":[\"istio-proxy\"],\"revision\":\"default\"}",
        "traffic.sidecar.istio.io/includeInboundPorts": "8080,9090",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "9000",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.10.0.0/16",
        "kubectl.kubernetes.io/default-container": "app"
    })
}

fn proxy_container(uid: u32) -> Value {
    json!({
        "name": "istio-proxy",
        "image": "docker.io/istio/proxyv2:1.24.0",
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
        "securityContext": {"runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": true}
    })
}

fn pod(ns: &str, name: &str, annotations: Value, containers: Value, init: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": "0c7a0e3e-1", "annotations": annotations,
                     "labels": {"app": "web"}},
        "spec": {"containers": containers, "initContainers": init},
        "status": {"phase": "Pending"}
    })
}

fn injected_pod(ns: &str, name: &str) -> Value {
    pod(
        ns,
        name,
        injected_annotations(),
        json!([{"name": "app", "image": "nginx"}, proxy_container(1337)]),
        json!([{"name": "istio-validation", "image": "docker.io/istio/proxyv2:1.24.0"}]),
    )
}

/// An injected pod as `edit` changes it.
fn injected_pod_with(ns: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut p = injected_pod(ns, name);
    edit(&mut p);
    p
}

/// A pod with a `linkerd-proxy` container and the proxy-version annotation.
fn linkerd_pod(ns: &str, name: &str, first: &str, init: Value) -> Value {
    pod(
        ns,
        name,
        json!({"linkerd.io/proxy-version": "stable-2.14"}),
        json!([{"name": first}, {"name": "linkerd-proxy"}]),
        init,
    )
}

/// Linkerd's destination pod, a control-plane pod by its label.
fn linkerd_control_plane_pod() -> Value {
    let mut p = linkerd_pod("l5d-cp", "destination-0", "destination", json!([]));
    p["metadata"]["labels"] = json!({"linkerd.io/control-plane-component": "destination"});
    p
}

// ---- running the plugin ----

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.json()
    }

    fn error(&self, code: u64, needles: &[&str]) -> Value {
        assert_ne!(self.code, 0, "expected failure; stdout: {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}\nstderr: {}", self.stderr);
        let text = format!("{} {}", v["msg"], v["details"]);
        for n in needles {
            assert!(text.contains(n), "{n:?} not in {v}");
        }
        v
    }

    /// The log contains `needle`.
    fn logged(&self, needle: &str) {
        assert!(self.stderr.contains(needle), "{needle:?}: {}", self.stderr);
    }
}

/// Scratch directory (state, kubeconfig), removed on drop.
fn scratch(test: &str) -> Scratch {
    Scratch::new(&format!("kube-{test}"))
}

/// A fake API server answering `routes`, a scratch directory named after `test`, and the
/// kubeconfig in it that points at the server.
fn serve(test: &str, routes: Vec<(String, Vec<Reply>)>) -> (FakeApi, Scratch, String) {
    let api = FakeApi::start(routes).expect("start the fake API server");
    let s = scratch(test);
    let kc = s.kubeconfig(&api.url());
    (api, s, kc)
}

impl Scratch {
    /// A kubeconfig for `server` with a tokenFile (relative, as kubectl resolves it).
    fn kubeconfig(&self, server: &str) -> String {
        let path = write_kubeconfig(self.path(), server, TOKEN, TokenFile::Relative).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn records(&self) -> usize {
        fs::read_dir(self.path().join("state").join("meshnet"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// The attachment record of the pod in `netns` (one per namespace, see [`Scratch::invoke`]).
    fn record(&self, netns: &str) -> Value {
        let path = self
            .path()
            .join("state")
            .join("meshnet")
            .join(format!("{}@eth0.json", container_id(netns)));
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// Runs `command` for the pod `cni_args` names in `netns`, with this directory's state.
    fn invoke(&self, command: &str, netns: &str, cni_args: &str, config: &Value) -> Run {
        // One attachment per namespace: the record key is network + container id + ifname.
        let container_id = container_id(netns);
        let state = self.state();
        let mut env = meshcap_testkit::cni_env(command, &container_id, netns, cni_args);
        env.push(("MESHCAP_STATE_DIR", &state));
        run_plugin(&env, &config.to_string())
    }

    /// An ADD that succeeds and passes the prevResult through unchanged.
    fn add_passes(&self, netns: &str, cni_args: &str, config: &Value, what: &str) -> Run {
        let r = self.invoke("ADD", netns, cni_args, config);
        assert_eq!(r.ok(), passthrough(netns), "{what}");
        r
    }

    /// A CHECK or DEL that exits 0.
    fn succeeds(&self, command: &str, netns: &str, cni_args: &str, config: &Value, what: &str) {
        let r = self.invoke(command, netns, cni_args, config);
        assert_eq!(r.code, 0, "{what}: {command}: {}{}", r.stdout, r.stderr);
    }

    /// DELs that exit 0, of each pod (its `CNI_ARGS`) in its namespace with its config.
    fn del_each(&self, mode: &str, added: &[(&Netns, &str, &Value)]) {
        for (ns, cni_args, config) in added {
            self.succeeds("DEL", &ns.path(), cni_args, config, mode);
        }
    }
}

fn container_id(netns: &str) -> String {
    let h = netns.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

fn k8s_args(ns: &str, name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=0c7a0e3e-1")
}

fn prev_result(netns: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": netns}],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0}]
    })
}

/// The plugin configuration of the API path: a kubeconfig, no runtimeConfig annotations.
fn api_config(kubeconfig: &str, netns: &str, extra: Value) -> Value {
    let mut v = json!({
        "cniVersion": "1.0.0", "name": "meshnet", "type": "meshcap-cni",
        "exclude_namespaces": ["kube-system"],
        "kubernetes": {"kubeconfig": kubeconfig},
        "prevResult": prev_result(netns),
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// [`api_config`] in backend `mode`.
fn mode_config(kubeconfig: &str, netns: &str, mode: &str) -> Value {
    api_config(kubeconfig, netns, json!({"mode": mode}))
}

/// `config` with `annotations` passed by the runtime, as containerd and CRI-O pass them.
fn with_runtime_annotations(mut config: Value, annotations: &Value) -> Value {
    config["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
    config
}

fn passthrough(netns: &str) -> Value {
    prev_result(netns)
}

/// A namespace path that does not exist: reaching it proves the pod was selected.
fn missing_netns(test: &str) -> String {
    format!(
        "/run/netns/meshcap-kube-missing-{test}-{}",
        std::process::id()
    )
}

/// A scratch namespace `mk-<tag>-<first three letters of mode>`.
fn mode_netns(tag: &str, mode: &str) -> Netns {
    Netns::create(&format!("mk-{tag}-{}", &mode[..3]))
}

/// Whether `rules` hold anything of meshcap's.
fn has_meshcap_rules(rules: &str) -> bool {
    rules.contains("MESHCAP") || rules.contains("meshcap")
}

// ---- selection, skipping and failing closed (no root needed) ----

#[test]
fn opted_out_and_sidecarless_pods_are_skipped_after_one_get() {
    let opted_out = injected_pod_with("shop", "opted-out", |p| {
        p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false")
    });
    let no_sidecar = pod(
        "shop",
        "plain",
        json!({"app.kubernetes.io/name": "plain"}),
        json!([{"name": "app"}]),
        json!([]),
    );
    // Status annotation but no istio-proxy container: istio-cni skips these too.
    let status_only = pod(
        "shop",
        "status-only",
        injected_annotations(),
        json!([{"name": "app"}]),
        json!([]),
    );
    let (api, s, kc) = serve(
        "skipped",
        vec![
            serves(pod_path("shop", "opted-out"), opted_out),
            (
                pod_path("shop", "plain"),
                vec![Reply::Chunked(200, no_sidecar)],
            ),
            serves(pod_path("shop", "status-only"), status_only),
        ],
    );
    let netns = missing_netns("skipped");
    let config = api_config(&kc, &netns, json!({}));
    for name in ["opted-out", "plain", "status-only"] {
        let r = s.add_passes(&netns, &k8s_args("shop", name), &config, name);
        assert!(r.stderr.contains("not capturing"), "{name}: {}", r.stderr);
    }
    assert_eq!(s.records(), 0);
    let seen = api.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for req in &seen {
        assert_eq!(
            req.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
}

#[test]
fn injected_pods_are_selected() {
    let mut proxy = proxy_container(1337);
    proxy["restartPolicy"] = json!("Always");
    let native = injected_pod_with("shop", "native", |p| {
        p["spec"]["containers"] = json!([{"name": "app"}]);
        p["spec"]["initContainers"] = json!([{"name": "istio-validation"}, proxy]);
    });
    let (api, s, kc) = serve(
        "selected",
        vec![
            (
                pod_path("shop", "web-0"),
                vec![Reply::Chunked(200, injected_pod("shop", "web-0"))],
            ),
            serves(pod_path("shop", "native"), native),
        ],
    );
    let netns = missing_netns("selected");
    let config = api_config(&kc, &netns, json!({}));
    for name in ["web-0", "native"] {
        // Selected: the plugin goes on to enter the namespace, which does not exist (code 4).
        let r = s.invoke("ADD", &netns, &k8s_args("shop", name), &config);
        r.error(4, &["does not exist"]);
        r.logged("read the pod from the Kubernetes API");
    }
    assert_eq!(api.seen().len(), 2);
}

/// The runtime passes annotations but not labels, and istio-cni lets the label
/// `sidecar.istio.io/inject` override the annotation of that name: an injected pod whose
/// annotation opts out is read from the API (one GET) and captured when its label opts in,
/// skipped otherwise. Without a kubeconfig the skip says what could not be read.
#[test]
fn an_annotation_opt_out_is_decided_with_the_pods_labels() {
    let mut opted_out = injected_annotations();
    opted_out["sidecar.istio.io/inject"] = json!("false");
    let label_in = injected_pod_with("shop", "label-in", |p| {
        p["metadata"]["annotations"] = opted_out.clone();
        p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
    });
    let no_label = injected_pod_with("shop", "no-label", |p| {
        p["metadata"]["annotations"] = opted_out.clone()
    });
    let (api, s, kc) = serve(
        "opt-out-labels",
        vec![
            serves(pod_path("shop", "label-in"), label_in),
            serves(pod_path("shop", "no-label"), no_label),
        ],
    );
    let netns = missing_netns("opt-out-labels");
    let cfg = with_runtime_annotations(api_config(&kc, &netns, json!({})), &opted_out);

    // Selected: the plugin goes on to enter the namespace, which does not exist (code 4).
    let r = s.invoke("ADD", &netns, &k8s_args("shop", "label-in"), &cfg);
    r.error(4, &["does not exist"]);
    r.logged("reading its labels");
    assert_eq!(api.seen().len(), 1);

    let r = s.add_passes(&netns, &k8s_args("shop", "no-label"), &cfg, "no label");
    r.logged("not capturing");
    assert_eq!(api.seen().len(), 2);

    let mut no_kubeconfig = cfg.clone();
    no_kubeconfig["kubernetes"] = json!({});
    let r = s.add_passes(
        &netns,
        &k8s_args("shop", "label-in"),
        &no_kubeconfig,
        "no kubeconfig",
    );
    r.logged("needs kubernetes.kubeconfig");
    assert_eq!(api.seen().len(), 2);
    assert_eq!(s.records(), 0);
}

#[test]
fn own_pods_and_excluded_namespaces_are_skipped_before_any_api_call() {
    // The server would fail everything: a skip must not depend on it.
    let (api, s, kc) = serve("own-pods", vec![]);
    let netns = missing_netns("own-pods");
    let config = api_config(
        &kc,
        &netns,
        json!({
            "exclude_namespaces": ["kube-system", "meshcap-system"],
            "kubernetes": {"kubeconfig": kc, "skip_pods": ["infra/meshcap-node-*"]},
        }),
    );
    for (ns, name) in [
        ("meshcap-system", "meshcap-node-abcde"),
        ("kube-system", "coredns-5d78c9869d-x"),
        ("infra", "meshcap-node-x7k2p"),
    ] {
        s.add_passes(
            &netns,
            &k8s_args(ns, name),
            &config,
            &format!("{ns}/{name}"),
        );
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

#[test]
fn unreadable_pods_fail_closed() {
    let (api, s, kc) = serve(
        "fail-closed",
        vec![
            (
                pod_path("shop", "forbidden"),
                vec![failure(403, "Forbidden", "pods \"forbidden\" is forbidden: User \"system:serviceaccount:meshcap-system:meshcap\" cannot get resource \"pods\"")],
            ),
            serves(pod_path("shop", "garbage"), json!("not a pod")),
        ],
    );
    let netns = missing_netns("fail-closed");
    let config = api_config(&kc, &netns, json!({}));
    let add = |name: &str, config: &Value| s.invoke("ADD", &netns, &k8s_args("shop", name), config);

    // 404 (the default route): final at once, no retry, names the pod and the kubeconfig.
    add("gone", &config).error(
        7,
        &[
            "shop/gone",
            &kc,
            "HTTP 404",
            "does not exist",
            "refusing to start",
        ],
    );
    assert_eq!(api.seen().len(), 1, "404 is not retried");
    add("forbidden", &config).error(
        7,
        &["shop/forbidden", &kc, "HTTP 403", "cannot get resource"],
    );
    add("garbage", &config).error(7, &["shop/garbage", "expected an object"]);

    // An unreadable kubeconfig fails closed too, naming it.
    let mut missing = config.clone();
    missing["kubernetes"]["kubeconfig"] = json!("/nonexistent/meshcap-kubeconfig");
    add("web-0", &missing).error(7, &["/nonexistent/meshcap-kubeconfig", "cannot read"]);

    // No kubeconfig at all: the capability was not passed and there is no API path.
    let mut none = config.clone();
    none.as_object_mut().unwrap().remove("kubernetes");
    add("web-0", &none).error(7, &["no kubernetes.kubeconfig is configured"]);
    assert_eq!(s.records(), 0);
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let (api, s, kc) = serve(
        "retry",
        vec![(
            pod_path("shop", "flaky"),
            vec![
                failure(500, "InternalError", "etcdserver: leader changed"),
                failure(503, "ServiceUnavailable", "try later"),
                Reply::Chunked(
                    200,
                    injected_pod_with("shop", "flaky", |p| {
                        p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false")
                    }),
                ),
            ],
        )],
    );
    let netns = missing_netns("retry");
    let started = Instant::now();
    s.add_passes(
        &netns,
        &k8s_args("shop", "flaky"),
        &api_config(&kc, &netns, json!({})),
        "flaky",
    );
    assert_eq!(api.seen().len(), 3);
    // Backoff 100 ms then 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

/// The configuration of the API path with a deadline of `timeout_ms`.
fn deadline_config(kc: &str, netns: &str, timeout_ms: u64) -> Value {
    api_config(
        kc,
        netns,
        json!({"kubernetes": {"kubeconfig": kc, "timeout_ms": timeout_ms}}),
    )
}

#[test]
fn a_server_that_never_answers_is_try_again_later_within_the_deadline() {
    let (api, s, kc) = serve(
        "deadline",
        vec![
            (pod_path("shop", "hang"), vec![Reply::Hang]),
            (pod_path("shop", "down"), vec![shutting_down()]),
        ],
    );
    let netns = missing_netns("deadline");
    let config = deadline_config(&kc, &netns, 1200);
    let timed_add = |name: &str, config: &Value| {
        let started = Instant::now();
        let r = s.invoke("ADD", &netns, &k8s_args("shop", name), config);
        (r, started.elapsed())
    };

    let (r, took) = timed_add("hang", &config);
    r.error(11, &["shop/hang", &kc, "try again later"]);
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let (r, took) = timed_add("down", &config);
    r.error(11, &["shop/down", "HTTP 503", "apiserver is shutting down"]);
    assert!(took < Duration::from_secs(4), "{took:?}");
    let down = api
        .seen()
        .iter()
        .filter(|r| r.path.ends_with("/down"))
        .count();
    assert!(down >= 3, "retried until the deadline: {down} attempts");

    // Nothing listens: connection refused is transient too.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let kc2 = s.kubeconfig(&format!("http://{closed}"));
    let (r, _) = timed_add("web-0", &deadline_config(&kc2, &netns, 500));
    r.error(11, &["shop/web-0", "connecting to"]);
    assert_eq!(s.records(), 0);
}

#[test]
fn del_never_waits_on_the_api() {
    let (api, s, kc) = serve("del", vec![(pod_path("shop", "web-0"), vec![Reply::Hang])]);
    let netns = missing_netns("del");
    let started = Instant::now();
    s.succeeds(
        "DEL",
        &netns,
        &k8s_args("shop", "web-0"),
        &api_config(&kc, &netns, json!({})),
        "web-0",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(api.seen().is_empty());
}

// ---- privileged: the API path installs exactly what the annotation path installs ----

#[test]
fn privileged_api_path_installs_the_same_rules_as_passed_annotations() {
    if !privileged("privileged_api_path_installs_the_same_rules_as_passed_annotations") {
        return;
    }
    let custom = injected_pod_with("shop", "custom-uid", |p| {
        p["spec"]["containers"][1] = proxy_container(2345)
    });
    let (api, s, kc) = serve(
        "same-rules",
        vec![
            (
                pod_path("shop", "web-0"),
                vec![Reply::Chunked(200, injected_pod("shop", "web-0"))],
            ),
            serves(pod_path("shop", "custom-uid"), custom),
        ],
    );
    let args = k8s_args("shop", "web-0");
    let custom_args = k8s_args("shop", "custom-uid");
    for mode in MODES {
        let passed = mode_netns("passed", mode);
        let fetched = mode_netns("api", mode);
        let custom_ns = mode_netns("uid", mode);

        // ADD with the annotations passed by the runtime (the API must not be asked).
        let with_annotations = with_runtime_annotations(
            mode_config(&kc, &passed.path(), mode),
            &injected_annotations(),
        );
        let before = api.seen().len();
        s.add_passes(&passed.path(), &args, &with_annotations, mode);
        assert_eq!(
            api.seen().len(),
            before,
            "{mode}: annotations passed, no API call"
        );

        // ADD of the same pod without them: the API path.
        let cfg = mode_config(&kc, &fetched.path(), mode);
        s.add_passes(&fetched.path(), &args, &cfg, mode);
        assert_eq!(api.seen().len(), before + 1, "{mode}");

        let a = passed.rules(mode);
        let b = fetched.rules(mode);
        assert!(has_meshcap_rules(&a), "{mode}: no rules:\n{a}");
        assert!(
            a.contains("9000") && a.contains("8080"),
            "{mode}: annotations not applied:\n{a}"
        );
        assert_eq!(a, b, "{mode}: API path and annotation path differ");

        // CHECK through the API path passes right after ADD.
        s.succeeds("CHECK", &fetched.path(), &args, &cfg, mode);

        // The proxy uid from istio-proxy's securityContext reaches the rules.
        let cfg = mode_config(&kc, &custom_ns.path(), mode);
        s.add_passes(&custom_ns.path(), &custom_args, &cfg, mode);
        let c = custom_ns.rules(mode);
        assert!(c.contains("2345"), "{mode}: custom proxy uid missing:\n{c}");
        assert!(!a.contains("2345"), "{mode}");
        assert_ne!(a, c, "{mode}");

        s.del_each(
            mode,
            &[
                (&passed, &args, &mode_config(&kc, &passed.path(), mode)),
                (&fetched, &args, &mode_config(&kc, &fetched.path(), mode)),
                (
                    &custom_ns,
                    &custom_args,
                    &mode_config(&kc, &custom_ns.path(), mode),
                ),
            ],
        );
    }
}

/// Linkerd pods through the API path, which sees what the runtime path cannot: a control-plane
/// pod (by its label, in a namespace not in `linkerd.control_plane_namespaces`) also skips the
/// API server's ports outbound and its record says so for the agent; a pod with `linkerd-init`
/// sets up its own rules and is left alone. With `kubernetes.read_pod: meshed` the runtime path
/// reads the pod too (the annotations alone would not make it a control-plane pod) and installs
/// the same rules.
#[test]
fn privileged_linkerd_pods_through_the_api_path() {
    if !privileged("privileged_linkerd_pods_through_the_api_path") {
        return;
    }
    let annotations = json!({"linkerd.io/proxy-version": "stable-2.14"});
    let with_init = linkerd_pod("shop", "own-init", "app", json!([{"name": "linkerd-init"}]));
    let (api, s, kc) = serve(
        "linkerd-api",
        vec![
            serves(
                pod_path("l5d-cp", "destination-0"),
                linkerd_control_plane_pod(),
            ),
            serves(pod_path("shop", "own-init"), with_init),
            serves(namespace_path("l5d-cp"), namespace("l5d-cp", json!({}))),
        ],
    );
    let args = k8s_args("l5d-cp", "destination-0");
    let init_args = k8s_args("shop", "own-init");
    for mode in MODES {
        let fetched = mode_netns("l5d-api", mode);
        let meshed = mode_netns("l5d-rp", mode);
        let init = mode_netns("l5d-init", mode);

        let cfg = mode_config(&kc, &fetched.path(), mode);
        s.add_passes(&fetched.path(), &args, &cfg, mode);
        let a = fetched.rules(mode);
        assert!(a.contains("MESHCAP_LINKERD"), "{mode}: {a}");
        assert!(
            a.contains("dport 443 ") && a.contains("dport 6443 "),
            "{mode}: API server ports: {a}"
        );
        let rec = s.record(&fetched.path());
        assert_eq!(rec["linkerd_settings"]["control_plane"], true, "{rec}");
        s.succeeds("CHECK", &fetched.path(), &args, &cfg, mode);

        // The runtime passes the annotations; read_pod: meshed still reads the spec.
        let mut cfg_rt =
            with_runtime_annotations(mode_config(&kc, &meshed.path(), mode), &annotations);
        cfg_rt["kubernetes"]["read_pod"] = json!("meshed");
        let before = api.seen().len();
        s.add_passes(&meshed.path(), &args, &cfg_rt, mode);
        assert_eq!(
            api.seen().len(),
            before + 3,
            "{mode}: the pod, its namespace and the kubernetes Service were read"
        );
        assert_eq!(
            meshed.rules(mode),
            a,
            "{mode}: read_pod: meshed and the API path differ"
        );

        // Without read_pod the runtime path cannot see the label, and the namespace is not
        // in linkerd.control_plane_namespaces: no API server ports skipped.
        let plain = mode_netns("l5d-pl", mode);
        let mut cfg_plain = cfg_rt.clone();
        cfg_plain["kubernetes"]["read_pod"] = json!("when-needed");
        cfg_plain["prevResult"] = prev_result(&plain.path());
        s.add_passes(&plain.path(), &args, &cfg_plain, mode);
        let p = plain.rules(mode);
        assert!(
            p.contains("MESHCAP_LINKERD") && !p.contains("dport 6443 "),
            "{mode}: {p}"
        );
        s.succeeds("DEL", &plain.path(), &args, &cfg_plain, mode);

        // linkerd-init present: left alone, no rules, no record.
        let cfg_init = mode_config(&kc, &init.path(), mode);
        s.add_passes(&init.path(), &init_args, &cfg_init, mode);
        let rules = init.rules(mode);
        assert!(!has_meshcap_rules(&rules), "{mode}: {rules}");

        s.del_each(
            mode,
            &[
                (&fetched, &args, &cfg),
                (&meshed, &args, &cfg_rt),
                (&init, &init_args, &cfg_init),
            ],
        );
    }
}

/// A Linkerd control-plane pod read from the API skips outbound the API server's ports as
/// linkerd-cni reads them from the `default/kubernetes` Service (each port, and its target port
/// when a number), and its record keeps them for the agent's repair. When the Service cannot be
/// read (404 here, or an API that keeps failing until the deadline) it skips 443 and 6443, as
/// linkerd-cni does, and the log says so.
#[test]
fn privileged_linkerd_control_plane_skips_the_api_servers_ports() {
    if !privileged("privileged_linkerd_control_plane_skips_the_api_servers_ports") {
        return;
    }
    let service_path = "/api/v1/namespaces/default/services/kubernetes".to_string();
    let service = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]}
    });
    let start = |service_reply: Option<Reply>| {
        let mut r = vec![
            serves(
                pod_path("l5d-cp", "destination-0"),
                linkerd_control_plane_pod(),
            ),
            serves(namespace_path("l5d-cp"), namespace("l5d-cp", json!({}))),
        ];
        r.extend(service_reply.map(|reply| (service_path.clone(), vec![reply])));
        FakeApi::start(r).expect("start the fake API server")
    };
    let with_service = start(Some(Reply::Json(200, service)));
    let without_service = start(None);
    let failing = start(Some(shutting_down()));
    let s = scratch("linkerd-api-ports");
    let args = k8s_args("l5d-cp", "destination-0");
    for mode in MODES {
        let read = mode_netns("l5d-svc", mode);
        let kc = s.kubeconfig(&with_service.url());
        let cfg = mode_config(&kc, &read.path(), mode);
        s.add_passes(&read.path(), &args, &cfg, mode);
        let rules = read.rules(mode);
        assert!(
            rules.contains("dport 443 ") && rules.contains("dport 8443 "),
            "{mode}: the Service's port and target port: {rules}"
        );
        assert!(!rules.contains("dport 6443 "), "{mode}: {rules}");
        assert_eq!(
            s.record(&read.path())["linkerd_settings"]["api_server_ports"],
            json!([443, 8443]),
            "{mode}"
        );
        s.succeeds("CHECK", &read.path(), &args, &cfg, mode);
        s.succeeds("DEL", &read.path(), &args, &cfg, mode);

        for (api, what) in [(&without_service, "404"), (&failing, "503")] {
            let fallback = mode_netns(&format!("l5d-f{what}"), mode);
            let kc = s.kubeconfig(&api.url());
            let mut cfg = deadline_config(&kc, &fallback.path(), 1000);
            cfg["mode"] = json!(mode);
            let r = s.add_passes(&fallback.path(), &args, &cfg, &format!("{mode} {what}"));
            assert!(
                r.stderr.contains("cannot read Service default/kubernetes")
                    && r.stderr.contains(&format!("HTTP {what}")),
                "{mode} {what}: {}",
                r.stderr
            );
            let rules = fallback.rules(mode);
            assert!(
                rules.contains("dport 443 ") && rules.contains("dport 6443 "),
                "{mode} {what}: linkerd-cni's fallback: {rules}"
            );
            assert_eq!(
                s.record(&fallback.path())["linkerd_settings"].get("api_server_ports"),
                None,
                "{mode} {what}"
            );
            s.succeeds(
                "DEL",
                &fallback.path(),
                &args,
                &cfg,
                &format!("{mode} {what}"),
            );
        }
    }
}

/// A Linkerd pod read from the API that leaves `config.linkerd.io/*` settings unset gets them
/// from its Namespace, as linkerd-cni (`getAnnotationOverride`): the pod's own value wins, an
/// empty value on either counts as unset. The rules equal those of the same pod with the
/// filled annotations passed by the runtime; the record keeps the filled annotations (the
/// agent's repair reinstalls from them) and CHECK agrees. A pod stating all five settings is
/// read alone, without its Namespace.
#[test]
fn privileged_linkerd_settings_from_the_namespace() {
    if !privileged("privileged_linkerd_settings_from_the_namespace") {
        return;
    }
    let l5d = |annotations: Value| {
        let mut a = json!({"linkerd.io/proxy-version": "stable-2.14"});
        a.as_object_mut()
            .unwrap()
            .extend(annotations.as_object().unwrap().clone());
        a
    };
    let containers = json!([{"name": "app"}, {"name": "linkerd-proxy"}]);
    let partial = pod(
        "l5d-app",
        "web-0",
        l5d(json!({
            "config.linkerd.io/skip-inbound-ports": "9000",
            "config.linkerd.io/skip-subnets": ""
        })),
        containers.clone(),
        json!([]),
    );
    let stated = json!({
        "config.linkerd.io/skip-inbound-ports": "9100",
        "config.linkerd.io/skip-outbound-ports": "5432",
        "config.linkerd.io/skip-subnets": "10.20.0.0/16",
        "config.linkerd.io/proxy-uid": "2102",
        "config.linkerd.io/proxy-gid": "2102"
    });
    let full = pod("l5d-app", "full-0", l5d(stated), containers, json!([]));
    let namespace_settings = json!({
        "config.linkerd.io/skip-inbound-ports": "7777",
        "config.linkerd.io/skip-outbound-ports": "3306",
        "config.linkerd.io/skip-subnets": "10.9.0.1/16",
        "config.linkerd.io/proxy-gid": ""
    });
    let (api, s, kc) = serve(
        "linkerd-ns",
        vec![
            serves(pod_path("l5d-app", "web-0"), partial),
            serves(pod_path("l5d-app", "full-0"), full),
            serves(
                namespace_path("l5d-app"),
                namespace("l5d-app", namespace_settings),
            ),
        ],
    );
    // What linkerd-cni reads for web-0: its own skip-inbound-ports, the rest from the namespace.
    let effective = l5d(json!({
        "config.linkerd.io/skip-inbound-ports": "9000",
        "config.linkerd.io/skip-outbound-ports": "3306",
        "config.linkerd.io/skip-subnets": "10.9.0.1/16"
    }));
    let args = k8s_args("l5d-app", "web-0");
    let full_args = k8s_args("l5d-app", "full-0");
    for mode in MODES {
        let fetched = mode_netns("l5d-ns", mode);
        let passed = mode_netns("l5d-np", mode);
        let stating = mode_netns("l5d-nf", mode);

        let cfg = mode_config(&kc, &fetched.path(), mode);
        let before = api.seen().len();
        let r = s.add_passes(&fetched.path(), &args, &cfg, mode);
        assert_eq!(
            paths_since(&api, before),
            [pod_path("l5d-app", "web-0"), namespace_path("l5d-app")],
            "{mode}"
        );
        assert!(
            r.stderr.contains("taken from its namespace"),
            "{mode}: the log says so: {}",
            r.stderr
        );
        // The subnet's host bits are cleared, as iptables does; the warning says whose value
        // that was.
        let warning = r
            .stderr
            .lines()
            .find(|l| l.contains("config.linkerd.io/skip-subnets:"))
            .unwrap_or_else(|| panic!("{mode}: no skip-subnets warning: {}", r.stderr));
        assert!(
            warning.contains("of the pod's Namespace") && warning.contains("l5d-app"),
            "{mode}: the warning names the Namespace: {warning}"
        );
        let a = fetched.rules(mode);
        for wanted in ["3306", "10.9.0.0/16", "9000"] {
            assert!(a.contains(wanted), "{mode}: {wanted} not in {a}");
        }
        assert!(!a.contains("7777"), "{mode}: the pod's own value wins: {a}");

        let cfg_rt = with_runtime_annotations(mode_config(&kc, &passed.path(), mode), &effective);
        s.add_passes(&passed.path(), &args, &cfg_rt, mode);
        assert_eq!(
            passed.rules(mode),
            a,
            "{mode}: the namespace's settings differ from the same settings on the pod"
        );

        let rec = s.record(&fetched.path());
        assert_eq!(rec["annotations"], effective, "{mode}: {rec}");
        s.succeeds("CHECK", &fetched.path(), &args, &cfg, mode);

        let cfg_full = mode_config(&kc, &stating.path(), mode);
        let before = api.seen().len();
        s.add_passes(&stating.path(), &full_args, &cfg_full, mode);
        assert_eq!(
            paths_since(&api, before),
            [pod_path("l5d-app", "full-0")],
            "{mode}"
        );
        let f = stating.rules(mode);
        assert!(f.contains("5432") && !f.contains("3306"), "{mode}: {f}");

        s.del_each(
            mode,
            &[
                (&fetched, &args, &cfg),
                (&passed, &args, &cfg_rt),
                (&stating, &full_args, &cfg_full),
            ],
        );
    }
}

/// linkerd-cni fails the ADD when it cannot read the Namespace it needs; so does meshcap,
/// before touching the pod's network namespace: refused is code 7 naming the namespace and
/// the missing permission, unavailable until the deadline is code 11. A bad value the
/// Namespace gives is code 7 naming the Namespace, not the pod.
#[test]
fn an_unreadable_or_bad_namespace_fails_a_linkerd_pod_closed() {
    let l5d_pod = |ns: &str| {
        serves(
            pod_path(ns, "web-0"),
            linkerd_pod(ns, "web-0", "app", json!([])),
        )
    };
    let (_api, s, kc) = serve(
        "linkerd-ns-closed",
        vec![
            l5d_pod("locked"),
            (
                namespace_path("locked"),
                vec![failure(403, "Forbidden", "namespaces \"locked\" is forbidden: User \"system:serviceaccount:meshcap-system:meshcap\" cannot get resource \"namespaces\"")],
            ),
            l5d_pod("busy"),
            l5d_pod("typo"),
            serves(
                namespace_path("typo"),
                namespace("typo", json!({"config.linkerd.io/proxy-uid": "21O2"})),
            ),
            (
                namespace_path("busy"),
                vec![shutting_down()],
            ),
        ],
    );
    let netns = missing_netns("linkerd-ns-closed");
    let config = deadline_config(&kc, &netns, 800);
    let add = |ns: &str| s.invoke("ADD", &netns, &k8s_args(ns, "web-0"), &config);
    add("locked").error(
        7,
        &[
            "namespace locked",
            &kc,
            "HTTP 403",
            "may not get namespaces",
        ],
    );
    add("busy").error(11, &["namespace busy", "try again later", "HTTP 503"]);
    add("typo").error(
        7,
        &[
            "annotation config.linkerd.io/proxy-uid of Namespace typo",
            "21O2",
            "not an integer",
        ],
    );
    assert_eq!(s.records(), 0);
}

/// Kuma pods through the API path, where the plugin reads the spec kuma-cni reads: the
/// injector's pod (the peer conformance fixture) gets exactly the rules its passed annotations
/// give; the same pod with a `kuma-init` init container (it sets up its own rules), without a
/// `kuma-sidecar` container, or in an excluded namespace is left alone.
#[test]
fn privileged_kuma_pods_through_the_api_path() {
    if !privileged("privileged_kuma_pods_through_the_api_path") {
        return;
    }
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/peer/kuma/inject-34.pod.yaml"
    );
    let mut injected: Value = serde_yaml::from_str(&fs::read_to_string(fixture).unwrap()).unwrap();
    injected["metadata"]["namespace"] = json!("shop");
    let annotations = injected["metadata"]["annotations"].clone();
    assert!(
        injected["spec"]["containers"]
            .as_array()
            .into_iter()
            .chain(injected["spec"]["initContainers"].as_array())
            .flatten()
            .any(|c| c["name"] == "kuma-sidecar"),
        "the fixture has a kuma-sidecar container"
    );
    let variant = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut pod = injected.clone();
        pod["metadata"]["name"] = json!(name);
        edit(&mut pod);
        pod
    };
    let own_init = variant("own-init", &|p| {
        p["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "kuma-init", "image": "kuma/kuma-init"}));
    });
    let no_sidecar = variant("no-sidecar", &|p| {
        for list in ["containers", "initContainers"] {
            if let Some(cs) = p["spec"][list].as_array_mut() {
                cs.retain(|c| c["name"] != "kuma-sidecar");
            }
        }
    });
    let excluded = variant("excluded", &|p| {
        p["metadata"]["namespace"] = json!("kuma-system")
    });
    let name = injected["metadata"]["name"].as_str().unwrap().to_owned();
    let (_api, s, kc) = serve(
        "kuma-api",
        vec![
            serves(pod_path("shop", &name), injected),
            serves(pod_path("shop", "own-init"), own_init),
            serves(pod_path("shop", "no-sidecar"), no_sidecar),
            serves(pod_path("kuma-system", "excluded"), excluded),
        ],
    );
    let kuma = json!({"exclude_namespaces": ["kube-system", "kuma-system"]});
    let kuma_config = |netns: &Netns, mode: &str| {
        api_config(&kc, &netns.path(), json!({"mode": mode, "kuma": kuma}))
    };
    let args = k8s_args("shop", &name);
    for mode in MODES {
        // The API path, and the runtime path with the annotations passed.
        let fetched = mode_netns("kuma-api", mode);
        let cfg = kuma_config(&fetched, mode);
        s.add_passes(&fetched.path(), &args, &cfg, mode);
        let via_api = fetched.rules(mode);
        assert!(via_api.contains("MESHCAP_KUMA"), "{mode}: {via_api}");
        assert!(
            via_api.contains("15055"),
            "{mode}: the pod's inbound port: {via_api}"
        );

        let passed = mode_netns("kuma-rt", mode);
        let cfg_rt = with_runtime_annotations(kuma_config(&passed, mode), &annotations);
        s.add_passes(&passed.path(), &args, &cfg_rt, mode);
        assert_eq!(
            passed.rules(mode),
            via_api,
            "{mode}: API path and passed annotations differ"
        );

        // Left alone: no rules, the prevResult passed through.
        for (ns_name, pod_name) in [
            ("shop", "own-init"),
            ("shop", "no-sidecar"),
            ("kuma-system", "excluded"),
        ] {
            let ns = mode_netns(&format!("kuma-{}", &pod_name[..3]), mode);
            let a = k8s_args(ns_name, pod_name);
            let cfg = kuma_config(&ns, mode);
            let what = format!("{mode} {pod_name}");
            s.add_passes(&ns.path(), &a, &cfg, &what);
            let rules = ns.rules(mode);
            assert!(!has_meshcap_rules(&rules), "{what}: {rules}");
            s.succeeds("DEL", &ns.path(), &a, &cfg, &what);
        }
        for (ns, cfg) in [(&fetched, cfg), (&passed, cfg_rt)] {
            s.succeeds("DEL", &ns.path(), &args, &cfg, mode);
            assert!(
                !ns.rules(mode).contains("MESHCAP"),
                "{mode}: rules left after DEL"
            );
        }
    }
}

/// An ADD of the pod `cni_args` names in `ns` that fails with code 7 naming `needles`,
/// leaving the namespace's rules as they were and recording nothing.
fn refused_untouched(
    s: &Scratch,
    ns: &Netns,
    mode: &str,
    cni_args: &str,
    config: &Value,
    needles: &[&str],
    what: &str,
) {
    let untouched = ns.rules(mode);
    let records = s.records();
    s.invoke("ADD", &ns.path(), cni_args, config)
        .error(7, needles);
    assert_eq!(ns.rules(mode), untouched, "{what}: namespace untouched");
    assert_eq!(s.records(), records, "{what}: no record");
}

/// The settings Istio takes from the pod spec: a pod whose `istio-proxy` env turns on DNS
/// capture and invalid drop (as `meshConfig.defaultConfig.proxyMetadata` does), whose proxy
/// runs as uid 1500 and gid 1600, and whose `istio-validation` names other capture ports (the
/// mesh config's `proxyListenPort`/`proxyInboundListenPort`) gets them through the API path;
/// the runtime path reaches the same rules with the node defaults, or with
/// `kubernetes.read_pod: meshed`, and its log names the defaults it used. A bad env value
/// fails the ADD with code 7 naming the variable and leaves the namespace untouched.
#[test]
fn privileged_spec_settings_reach_every_path() {
    if !privileged("privileged_spec_settings_reach_every_path") {
        return;
    }
    let meshed = injected_pod_with("shop", "dns-0", |p| {
        p["spec"]["containers"][1]["env"] = json!([
            {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
            {"name": "INVALID_DROP", "value": "true"}
        ]);
        p["spec"]["containers"][1]["securityContext"] =
            json!({"runAsUser": 1500, "runAsGroup": 1600, "runAsNonRoot": true});
        p["spec"]["initContainers"][0]["args"] = json!([
            "istio-iptables",
            "-p",
            "15101",
            "-z",
            "15106",
            "-u",
            "1500",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--run-validation",
            "--skip-rule-apply"
        ]);
    });
    let bad = injected_pod_with("shop", "bad-env", |p| {
        p["spec"]["containers"][1]["env"] = json!([{"name": "INVALID_DROP", "value": "sometimes"}])
    });
    let (api, s, kc) = serve(
        "spec-settings",
        vec![
            serves(pod_path("shop", "dns-0"), meshed),
            serves(pod_path("shop", "bad-env"), bad),
        ],
    );
    let args = k8s_args("shop", "dns-0");
    let annotations = injected_annotations();
    for mode in MODES {
        let via_api = mode_netns("spec-api", mode);
        let via_defaults = mode_netns("spec-def", mode);
        let via_read = mode_netns("spec-read", mode);
        let bad_ns = mode_netns("spec-bad", mode);

        let cfg = mode_config(&kc, &via_api.path(), mode);
        s.add_passes(&via_api.path(), &args, &cfg, mode);
        let from_api = via_api.rules(mode);
        assert!(
            from_api.contains("15053"),
            "{mode}: no DNS capture:\n{from_api}"
        );
        assert!(
            from_api.contains("INVALID") || from_api.contains("invalid"),
            "{mode}: no invalid drop:\n{from_api}"
        );
        let (uid, gid) = match mode {
            "iptables" => ("--uid-owner 1500", "--gid-owner 1600"),
            _ => ("skuid 1500", "skgid 1600"),
        };
        for (what, needle) in [
            ("proxy uid", uid),
            ("proxy gid", gid),
            ("outbound port", "15101"),
            ("inbound port", "15106"),
        ] {
            assert!(from_api.contains(needle), "{mode}: no {what}:\n{from_api}");
        }
        assert!(
            !from_api.contains("1337"),
            "{mode}: the default ids:\n{from_api}"
        );

        // Runtime annotations plus the node defaults that match the mesh config.
        let cfg = with_runtime_annotations(
            api_config(
                &kc,
                &via_defaults.path(),
                json!({"mode": mode, "istio": {"dns_capture": true, "invalid_drop": true,
                       "proxy_uids": [1500], "proxy_gids": [1600],
                       "proxy_listen_port": 15101, "proxy_inbound_listen_port": 15106}}),
            ),
            &annotations,
        );
        let before = api.seen().len();
        let r = s.add_passes(&via_defaults.path(), &args, &cfg, mode);
        assert_eq!(api.seen().len(), before, "{mode}: no API call");
        assert!(
            r.stderr
                .contains("DNS capture from node default istio.dns_capture")
                && r.stderr
                    .contains("proxy uid from node default istio.proxy_uids")
                && r.stderr.contains("IPv4 loopback CIDR from Istio's default"),
            "{mode}: the log names the defaults used: {}",
            r.stderr
        );
        assert_eq!(via_defaults.rules(mode), from_api, "{mode}: node defaults");

        // Runtime annotations without defaults, but read_pod: meshed asks the API.
        let mut cfg =
            with_runtime_annotations(mode_config(&kc, &via_read.path(), mode), &annotations);
        cfg["kubernetes"]["read_pod"] = json!("meshed");
        s.add_passes(&via_read.path(), &args, &cfg, mode);
        assert_eq!(
            api.seen().len(),
            before + 1,
            "{mode}: read_pod meshed asks the API"
        );
        assert_eq!(via_read.rules(mode), from_api, "{mode}: read_pod meshed");

        // A bad env value: code 7 naming it, nothing installed, no record.
        refused_untouched(
            &s,
            &bad_ns,
            mode,
            &k8s_args("shop", "bad-env"),
            &mode_config(&kc, &bad_ns.path(), mode),
            &["env INVALID_DROP of container istio-proxy", "sometimes"],
            mode,
        );

        for ns in [&via_api, &via_defaults, &via_read] {
            let cfg = with_runtime_annotations(mode_config(&kc, &ns.path(), mode), &annotations);
            s.succeeds("DEL", &ns.path(), &args, &cfg, mode);
        }
    }
}

/// Every kind of spec input the API path reads, each with a bad value: `istio-proxy`'s env
/// (DNS capture, invalid drop, dual stack) and securityContext (uid, gid), `istio-init`'s env
/// (owner groups include and exclude, IPv4 loopback CIDR) and arguments (`-p`, `-z`). Each
/// fails the ADD with code 7 naming where it came from, in both modes, leaving the namespace
/// as it was and recording nothing.
#[test]
fn privileged_bad_spec_values_are_code_7_naming_the_source() {
    if !privileged("privileged_bad_spec_values_are_code_7_naming_the_source") {
        return;
    }
    let proxy_env = |var: &str, value: &str| {
        injected_pod_with("shop", "x", |p| {
            p["spec"]["containers"][1]["env"] = json!([{"name": var, "value": value}])
        })
    };
    let security_context = |sc: Value| {
        injected_pod_with("shop", "x", |p| {
            p["spec"]["containers"][1]["securityContext"] = sc
        })
    };
    let init = |args: Value, env: Value| {
        injected_pod_with("shop", "x", |p| {
            p["spec"]["initContainers"] = json!([{"name": "istio-init", "args": args, "env": env}])
        })
    };
    let init_env = |var: &str, value: &str| {
        init(
            json!(["istio-iptables"]),
            json!([{"name": var, "value": value}]),
        )
    };
    // (pod name, pod, what the error must name, the bad value)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "dns",
            proxy_env("ISTIO_META_DNS_CAPTURE", "maybe"),
            "env ISTIO_META_DNS_CAPTURE of container istio-proxy",
            "maybe",
        ),
        (
            "drop",
            proxy_env("INVALID_DROP", "sometimes"),
            "env INVALID_DROP of container istio-proxy",
            "sometimes",
        ),
        (
            "dual",
            proxy_env("ISTIO_DUAL_STACK", "both"),
            "env ISTIO_DUAL_STACK of container istio-proxy",
            "both",
        ),
        (
            "uid",
            security_context(json!({"runAsUser": -1, "runAsGroup": 1337})),
            "securityContext.runAsUser",
            "-1",
        ),
        (
            "gid",
            security_context(json!({"runAsUser": 1337, "runAsGroup": 4294967295u64})),
            "securityContext.runAsGroup",
            "4294967295",
        ),
        (
            "groups",
            init_env("ISTIO_OUTBOUND_OWNER_GROUPS", "java"),
            "env ISTIO_OUTBOUND_OWNER_GROUPS of spec.initContainers[0]",
            "java",
        ),
        (
            "groups-excl",
            init_env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "*"),
            "env ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE of spec.initContainers[0]",
            "*",
        ),
        (
            "loopback",
            init_env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8"),
            "env ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR of spec.initContainers[0]",
            "10.0.0.0/8",
        ),
        (
            "port-out",
            init(json!(["istio-iptables", "-p", "0"]), json!([])),
            "spec.initContainers[0] argument -p",
            "0",
        ),
        (
            "port-in",
            init(json!(["istio-iptables", "-z", "70000"]), json!([])),
            "spec.initContainers[0] argument -z",
            "70000",
        ),
    ];
    let (_api, s, kc) = serve(
        "bad-spec",
        cases
            .iter()
            .map(|(name, pod, _, _)| serves(pod_path("shop", name), pod.clone()))
            .collect(),
    );
    for mode in MODES {
        let ns = mode_netns("badspec", mode);
        for (name, _, origin, value) in &cases {
            refused_untouched(
                &s,
                &ns,
                mode,
                &k8s_args("shop", name),
                &mode_config(&kc, &ns.path(), mode),
                &[origin, value],
                &format!("{mode} {name}"),
            );
        }
    }
}

/// A Deployment as `istioctl kube-inject` prints it (the fixture `meshcap render -f` is
/// tested with, crates/meshcap/tests/fixtures/kube-inject-deployment.yaml): a pod of it, read
/// through the API path, gets exactly the rules `render -f` prints for its template (the same
/// renderers, loaded with the stock restore tools).
#[test]
fn privileged_kube_inject_pod_via_api_matches_render_f() {
    if !privileged("privileged_kube_inject_pod_via_api_matches_render_f") {
        return;
    }
    use meshcap_model::mesh::istio::{resolve, NodeDefaults};
    use meshcap_model::pod::PodView;
    use meshcap_model::render::{iptables, nftables};

    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../meshcap/tests/fixtures/kube-inject-deployment.yaml");
    let text = fs::read_to_string(&fixture).unwrap();
    let deployment: Value = serde_yaml::from_str(text.split("\n---\n").next().unwrap()).unwrap();
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["name"] = json!("inject-8565f4c47-srwzd");
    metadata["namespace"] = json!("default");
    let pod =
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": template["spec"]});
    let view =
        PodView::from_parts(Some(&template["metadata"]), Some(&template["spec"]), "").unwrap();
    let mut model = resolve(&view, &NodeDefaults::default()).unwrap().model;
    // The prevResult lists only an IPv4 address, so ADD installs no IPv6 rules; render -f,
    // which cannot know the pod's addresses, is told the same.
    model.families = meshcap_model::Families {
        v4: true,
        v6: false,
    };

    let (_api, s, kc) = serve(
        "kube-inject",
        vec![(
            pod_path("default", "inject-8565f4c47-srwzd"),
            vec![Reply::Chunked(200, pod)],
        )],
    );
    let args = k8s_args("default", "inject-8565f4c47-srwzd");
    for mode in MODES {
        let added = mode_netns("inj-add", mode);
        let printed = mode_netns("inj-prn", mode);
        let cfg = mode_config(&kc, &added.path(), mode);
        s.add_passes(&added.path(), &args, &cfg, mode);

        let rulesets = model.rulesets();
        assert_eq!(rulesets.len(), 1);
        let loads: Vec<(Vec<&str>, String)> = if mode == "iptables" {
            ["iptables-restore", "ip6tables-restore"]
                .into_iter()
                .zip(&rulesets)
                .map(|(tool, rs)| (vec![tool, "--noflush"], iptables::render(rs)))
                .collect()
        } else {
            vec![(vec!["nft", "-f", "-"], nftables::render(&rulesets))]
        };
        for (argv, text) in &loads {
            printed
                .ns
                .exec(argv, Some(text))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        let a = added.rules(mode);
        assert!(has_meshcap_rules(&a), "{mode}: {a}");
        assert_eq!(
            a,
            printed.rules(mode),
            "{mode}: ADD via the API and render -f differ"
        );
        s.succeeds("DEL", &added.path(), &args, &cfg, mode);
    }
}

// ---- TLS, with the kubeconfig the DaemonSet's script writes ----

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI; `None` without it.
fn make_certs(dir: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| -> bool {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (ca, key) in [("ca.crt", "ca.key"), ("other-ca.crt", "other-ca.key")] {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-keyout",
            key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=meshcap-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        if !run(&a) {
            return None;
        }
    }
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    let ok = run(&a)
        && run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
    ok.then_some(())
}

/// A server-side TLS connection that ends with close_notify, as a TLS server's does.
struct TlsConn(rustls::StreamOwned<rustls::ServerConnection, TcpStream>);

impl Read for TlsConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
    }
}

/// A fake API server over TLS with the certificate [`make_certs`] made in `dir`, answering
/// `routes`.
fn tls_server(dir: &std::path::Path, routes: Vec<(String, Vec<Reply>)>) -> FakeApi {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    FakeApi::builder()
        .routes(routes)
        .wrap(move |tcp| {
            let conn = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
            Ok(Box::new(TlsConn(rustls::StreamOwned::new(conn, tcp))))
        })
        .start()
        .expect("start the fake API server")
}

#[test]
fn tls_api_server_with_the_node_kubeconfig() {
    const TEST: &str = "tls_api_server_with_the_node_kubeconfig";
    let s = scratch("tls");
    if make_certs(s.path()).is_none() {
        return skip_or_fail(
            TEST,
            "the openssl CLI is not available to make test certificates",
        );
    }
    let opted_out = injected_pod_with("shop", "web-0", |p| {
        p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false")
    });
    let api = tls_server(s.path(), vec![serves(pod_path("shop", "web-0"), opted_out)]);

    // `meshcap node` writes the kubeconfig from a service-account mount with this function
    // (its end to end run in the image: crates/meshcap-tests/tests/deploy.rs).
    let host = s.path().join("host");
    let kc = host.join("etc/cni/net.d/meshcap-kubeconfig");
    meshcap_records::node_kubeconfig::write(
        &kc,
        "127.0.0.1",
        &api.addr().port().to_string(),
        TOKEN,
        &fs::read(s.path().join("ca.crt")).unwrap(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&kc).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kubeconfig holds a token");
    let leftovers: Vec<_> = fs::read_dir(kc.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    let kc = kc.to_str().unwrap().to_string();

    let netns = missing_netns("tls");
    let args = k8s_args("shop", "web-0");
    let r = s.invoke("ADD", &netns, &args, &api_config(&kc, &netns, json!({})));
    assert_eq!(r.ok(), passthrough(&netns), "opted-out pod read over TLS");
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, pod_path("shop", "web-0"));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );

    // A kubeconfig that trusts another CA fails closed at once: no retry can fix it.
    let other = s.path().join("other-kubeconfig");
    let text = fs::read_to_string(&kc).unwrap();
    let ca_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
        .unwrap();
    let other_ca = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(fs::read(s.path().join("other-ca.crt")).unwrap())
    };
    fs::write(
        &other,
        text.replace(
            ca_line,
            &format!("    certificate-authority-data: {other_ca}"),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let r = s.invoke(
        "ADD",
        &netns,
        &args,
        &api_config(other.to_str().unwrap(), &netns, json!({})),
    );
    r.error(7, &["shop/web-0", "TLS", "other-kubeconfig"]);
    assert!(started.elapsed() < Duration::from_secs(2));
}

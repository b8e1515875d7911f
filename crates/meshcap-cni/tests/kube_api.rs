//! The Kubernetes API path, end to end: the built `meshcap-cni` runs like a runtime runs it
//! (cleared environment, `CNI_ARGS` naming a pod, no pod annotations in `runtimeConfig`) and
//! reads the pod from a local HTTP server that answers like the API server
//! (`GET /api/v1/namespaces/NS/pods/NAME`, `Status` bodies on errors, chunked 200s). No
//! real API server installs here.
//!
//! Covered: selected / skipped / fail-closed outcomes and their CNI codes; pods skipped before
//! any request; retry with backoff (500 then 200); the deadline (a server that never answers,
//! one that always answers 503, a closed port); and, as root, that an ADD through the API path
//! installs exactly the rules an ADD with the annotations passed installs, in both backends,
//! with the proxy uid from the pod honoured; Linkerd and Kuma pods selected and set up from
//! the spec as their own CNI plugins read it.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{missing_root_or_tools, run_plugin, skip_or_fail, Netns, Run, Scratch};

const TOKEN: &str = "test-token-5e1f";

// ---- a local server that answers like the API server ----

#[derive(Clone)]
enum Reply {
    /// Status and JSON body with Content-Length.
    Json(u16, Value),
    /// Status and JSON body, chunked (what the API server sends for larger objects).
    Chunked(u16, Value),
    /// Accept, read the request, never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    /// `routes`: path -> replies in order; the last one repeats. Unknown paths get 404.
    fn start(routes: Vec<(String, Vec<Reply>)>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let routes: Arc<Mutex<HashMap<String, Vec<Reply>>>> =
            Arc::new(Mutex::new(routes.into_iter().collect()));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, routes, stop) = (seen2.clone(), routes.clone(), stop2.clone());
                std::thread::spawn(move || serve(conn, &seen, &routes, &stop));
            }
        });
        FakeApi { addr, seen, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    mut conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    routes: &Mutex<HashMap<String, Vec<Reply>>>,
    stop: &AtomicBool,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let authorization = lines
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string());
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization,
    });
    let reply = {
        let mut routes = routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(list) if list.len() > 1 => list.remove(0),
            Some(list) => list[0].clone(),
            None => Reply::Json(
                404,
                status_body(404, "NotFound", &format!("{path} not found")),
            ),
        }
    };
    let (code, body, chunked) = match reply {
        Reply::Json(c, b) => (c, b.to_string(), false),
        Reply::Chunked(c, b) => (c, b.to_string(), true),
        Reply::Hang => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let mut out = format!(
        "HTTP/1.1 {code} Whatever\r\nContent-Type: application/json\r\nConnection: close\r\n"
    );
    if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        // Uneven chunks, to exercise the decoder.
        for piece in body.as_bytes().chunks(97) {
            out.push_str(&format!("{:x}\r\n", piece.len()));
            out.push_str(std::str::from_utf8(piece).unwrap());
            out.push_str("\r\n");
        }
        out.push_str("0\r\n\r\n");
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    }
    let _ = conn.write_all(out.as_bytes());
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn pod_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{name}")
}

fn namespace_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}")
}

fn namespace(name: &str, annotations: Value) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": name, "annotations": annotations},
        "status": {"phase": "Active"}
    })
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
}

/// Scratch directory (state, kubeconfig), removed on drop.
fn scratch(test: &str) -> Scratch {
    Scratch::new("meshcap-kube", test)
}

impl Scratch {
    /// A kubeconfig for `server` with a tokenFile (relative, as kubectl resolves it).
    fn kubeconfig(&self, server: &str) -> String {
        fs::write(self.0.join("token"), format!("{TOKEN}\n")).unwrap();
        let path = self.0.join("kubeconfig");
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: meshcap\nclusters:\n- name: local\n  cluster:\n    server: {server}\ncontexts:\n- name: meshcap\n  context:\n    cluster: local\n    user: meshcap-cni\nusers:\n- name: meshcap-cni\n  user:\n    tokenFile: token\n"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    }

    fn records(&self) -> usize {
        fs::read_dir(self.0.join("state").join("meshnet"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// The attachment record of the pod in `netns` (one per namespace, see [`invoke`]).
    fn record(&self, netns: &str) -> Value {
        let path = self
            .0
            .join("state")
            .join("meshnet")
            .join(format!("{}@eth0.json", container_id(netns)));
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
    }
}

fn invoke(command: &str, netns: &str, state: &str, cni_args: &str, config: &Value) -> Run {
    // One attachment per namespace: the record key is network + container id + ifname.
    let container_id = container_id(netns);
    let mut env = meshcap_testkit::cni_env(command, &container_id, netns, cni_args);
    env.push(("MESHCAP_STATE_DIR", state));
    run_plugin(&env, &config.to_string())
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

// ---- selection, skipping and failing closed (no root needed) ----

#[test]
fn opted_out_and_sidecarless_pods_are_skipped_after_one_get() {
    let mut opted_out = injected_pod("shop", "opted-out");
    opted_out["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
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
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "opted-out"),
            vec![Reply::Json(200, opted_out)],
        ),
        (
            pod_path("shop", "plain"),
            vec![Reply::Chunked(200, no_sidecar)],
        ),
        (
            pod_path("shop", "status-only"),
            vec![Reply::Json(200, status_only)],
        ),
    ]);
    let s = scratch("skipped");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("skipped");
    for name in ["opted-out", "plain", "status-only"] {
        let r = invoke(
            "ADD",
            &netns,
            &s.state(),
            &k8s_args("shop", name),
            &api_config(&kc, &netns, json!({})),
        );
        assert_eq!(r.ok(), passthrough(&netns), "{name}");
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
    let mut native = injected_pod("shop", "native");
    let mut proxy = proxy_container(1337);
    proxy["restartPolicy"] = json!("Always");
    native["spec"]["containers"] = json!([{"name": "app"}]);
    native["spec"]["initContainers"] = json!([{"name": "istio-validation"}, proxy]);
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "web-0"),
            vec![Reply::Chunked(200, injected_pod("shop", "web-0"))],
        ),
        (pod_path("shop", "native"), vec![Reply::Json(200, native)]),
    ]);
    let s = scratch("selected");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("selected");
    for name in ["web-0", "native"] {
        // Selected: the plugin goes on to enter the namespace, which does not exist (code 4).
        let r = invoke(
            "ADD",
            &netns,
            &s.state(),
            &k8s_args("shop", name),
            &api_config(&kc, &netns, json!({})),
        );
        r.error(4, &["does not exist"]);
        assert!(
            r.stderr.contains("read the pod from the Kubernetes API"),
            "{}",
            r.stderr
        );
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
    let mut label_in = injected_pod("shop", "label-in");
    label_in["metadata"]["annotations"] = opted_out.clone();
    label_in["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
    let mut no_label = injected_pod("shop", "no-label");
    no_label["metadata"]["annotations"] = opted_out.clone();
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "label-in"),
            vec![Reply::Json(200, label_in)],
        ),
        (
            pod_path("shop", "no-label"),
            vec![Reply::Json(200, no_label)],
        ),
    ]);
    let s = scratch("opt-out-labels");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("opt-out-labels");
    let runtime = |cfg: Value| {
        let mut cfg = cfg;
        cfg["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": opted_out});
        cfg
    };
    let cfg = runtime(api_config(&kc, &netns, json!({})));

    // Selected: the plugin goes on to enter the namespace, which does not exist (code 4).
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "label-in"),
        &cfg,
    );
    r.error(4, &["does not exist"]);
    assert!(r.stderr.contains("reading its labels"), "{}", r.stderr);
    assert_eq!(api.seen().len(), 1);

    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "no-label"),
        &cfg,
    );
    assert_eq!(r.ok(), passthrough(&netns));
    assert!(r.stderr.contains("not capturing"), "{}", r.stderr);
    assert_eq!(api.seen().len(), 2);

    let mut no_kubeconfig = cfg.clone();
    no_kubeconfig["kubernetes"] = json!({});
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "label-in"),
        &no_kubeconfig,
    );
    assert_eq!(r.ok(), passthrough(&netns));
    assert!(
        r.stderr.contains("needs kubernetes.kubeconfig"),
        "{}",
        r.stderr
    );
    assert_eq!(api.seen().len(), 2);
    assert_eq!(s.records(), 0);
}

#[test]
fn own_pods_and_excluded_namespaces_are_skipped_before_any_api_call() {
    // The server would fail everything: a skip must not depend on it.
    let api = FakeApi::start(vec![]);
    let s = scratch("own-pods");
    let kc = s.kubeconfig(&api.url());
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
        let r = invoke("ADD", &netns, &s.state(), &k8s_args(ns, name), &config);
        assert_eq!(r.ok(), passthrough(&netns), "{ns}/{name}");
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

#[test]
fn unreadable_pods_fail_closed() {
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "forbidden"),
            vec![Reply::Json(
                403,
                status_body(403, "Forbidden", "pods \"forbidden\" is forbidden: User \"system:serviceaccount:meshcap-system:meshcap\" cannot get resource \"pods\""),
            )],
        ),
        (pod_path("shop", "garbage"), vec![Reply::Json(200, json!("not a pod"))]),
    ]);
    let s = scratch("fail-closed");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("fail-closed");
    let config = api_config(&kc, &netns, json!({}));

    // 404 (the default route): final at once, no retry, names the pod and the kubeconfig.
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "gone"),
        &config,
    );
    r.error(
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

    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "forbidden"),
        &config,
    );
    r.error(
        7,
        &["shop/forbidden", &kc, "HTTP 403", "cannot get resource"],
    );

    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "garbage"),
        &config,
    );
    r.error(7, &["shop/garbage", "expected an object"]);

    // An unreadable kubeconfig fails closed too, naming it.
    let mut missing = config.clone();
    missing["kubernetes"]["kubeconfig"] = json!("/nonexistent/meshcap-kubeconfig");
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "web-0"),
        &missing,
    );
    r.error(7, &["/nonexistent/meshcap-kubeconfig", "cannot read"]);

    // No kubeconfig at all: the capability was not passed and there is no API path.
    let mut none = config.clone();
    none.as_object_mut().unwrap().remove("kubernetes");
    let r = invoke("ADD", &netns, &s.state(), &k8s_args("shop", "web-0"), &none);
    r.error(7, &["no kubernetes.kubeconfig is configured"]);
    assert_eq!(s.records(), 0);
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let api = FakeApi::start(vec![(
        pod_path("shop", "flaky"),
        vec![
            Reply::Json(
                500,
                status_body(500, "InternalError", "etcdserver: leader changed"),
            ),
            Reply::Json(503, status_body(503, "ServiceUnavailable", "try later")),
            Reply::Chunked(200, {
                let mut p = injected_pod("shop", "flaky");
                p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
                p
            }),
        ],
    )]);
    let s = scratch("retry");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("retry");
    let started = Instant::now();
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "flaky"),
        &api_config(&kc, &netns, json!({})),
    );
    assert_eq!(r.ok(), passthrough(&netns));
    assert_eq!(api.seen().len(), 3);
    // Backoff 100 ms then 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_server_that_never_answers_is_try_again_later_within_the_deadline() {
    let api = FakeApi::start(vec![
        (pod_path("shop", "hang"), vec![Reply::Hang]),
        (
            pod_path("shop", "down"),
            vec![Reply::Json(
                503,
                status_body(503, "ServiceUnavailable", "apiserver is shutting down"),
            )],
        ),
    ]);
    let s = scratch("deadline");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("deadline");
    let config = api_config(
        &kc,
        &netns,
        json!({"kubernetes": {"kubeconfig": kc, "timeout_ms": 1200}}),
    );

    let started = Instant::now();
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "hang"),
        &config,
    );
    let took = started.elapsed();
    r.error(11, &["shop/hang", &kc, "try again later"]);
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let started = Instant::now();
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "down"),
        &config,
    );
    let took = started.elapsed();
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
    let config = api_config(
        &kc2,
        &netns,
        json!({"kubernetes": {"kubeconfig": kc2, "timeout_ms": 500}}),
    );
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "web-0"),
        &config,
    );
    r.error(11, &["shop/web-0", "connecting to"]);
    assert_eq!(s.records(), 0);
}

#[test]
fn del_never_waits_on_the_api() {
    let api = FakeApi::start(vec![(pod_path("shop", "web-0"), vec![Reply::Hang])]);
    let s = scratch("del");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("del");
    let started = Instant::now();
    let r = invoke(
        "DEL",
        &netns,
        &s.state(),
        &k8s_args("shop", "web-0"),
        &api_config(&kc, &netns, json!({})),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(api.seen().is_empty());
}

// ---- privileged: the API path installs exactly what the annotation path installs ----

#[test]
fn privileged_api_path_installs_the_same_rules_as_passed_annotations() {
    const TEST: &str = "privileged_api_path_installs_the_same_rules_as_passed_annotations";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let mut custom = injected_pod("shop", "custom-uid");
    custom["spec"]["containers"][1] = proxy_container(2345);
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "web-0"),
            vec![Reply::Chunked(200, injected_pod("shop", "web-0"))],
        ),
        (
            pod_path("shop", "custom-uid"),
            vec![Reply::Json(200, custom)],
        ),
    ]);
    let s = scratch("same-rules");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let passed = Netns::create(&format!("mk-passed-{}", &mode[..3]));
        let fetched = Netns::create(&format!("mk-api-{}", &mode[..3]));
        let custom_ns = Netns::create(&format!("mk-uid-{}", &mode[..3]));

        // ADD with the annotations passed by the runtime (the API must not be asked).
        let mut with_annotations = api_config(&kc, &passed.path(), json!({"mode": mode}));
        with_annotations["runtimeConfig"] =
            json!({"io.kubernetes.cri.pod-annotations": injected_annotations()});
        let before = api.seen().len();
        let r = invoke(
            "ADD",
            &passed.path(),
            &s.state(),
            &k8s_args("shop", "web-0"),
            &with_annotations,
        );
        assert_eq!(r.ok(), passthrough(&passed.path()), "{mode}");
        assert_eq!(
            api.seen().len(),
            before,
            "{mode}: annotations passed, no API call"
        );

        // ADD of the same pod without them: the API path.
        let cfg = api_config(&kc, &fetched.path(), json!({"mode": mode}));
        let r = invoke(
            "ADD",
            &fetched.path(),
            &s.state(),
            &k8s_args("shop", "web-0"),
            &cfg,
        );
        assert_eq!(r.ok(), passthrough(&fetched.path()), "{mode}");
        assert_eq!(api.seen().len(), before + 1, "{mode}");

        let a = passed.rules(mode);
        let b = fetched.rules(mode);
        assert!(
            a.contains("MESHCAP") || a.contains("meshcap"),
            "{mode}: no rules:\n{a}"
        );
        assert!(
            a.contains("9000") && a.contains("8080"),
            "{mode}: annotations not applied:\n{a}"
        );
        assert_eq!(a, b, "{mode}: API path and annotation path differ");

        // CHECK through the API path passes right after ADD.
        let r = invoke(
            "CHECK",
            &fetched.path(),
            &s.state(),
            &k8s_args("shop", "web-0"),
            &cfg,
        );
        assert_eq!(r.code, 0, "{mode}: CHECK: {}{}", r.stdout, r.stderr);

        // The proxy uid from istio-proxy's securityContext reaches the rules.
        let cfg = api_config(&kc, &custom_ns.path(), json!({"mode": mode}));
        let r = invoke(
            "ADD",
            &custom_ns.path(),
            &s.state(),
            &k8s_args("shop", "custom-uid"),
            &cfg,
        );
        assert_eq!(r.ok(), passthrough(&custom_ns.path()), "{mode}");
        let c = custom_ns.rules(mode);
        assert!(c.contains("2345"), "{mode}: custom proxy uid missing:\n{c}");
        assert!(!a.contains("2345"), "{mode}");
        assert_ne!(a, c, "{mode}");

        for (ns, name) in [
            (&passed, "web-0"),
            (&fetched, "web-0"),
            (&custom_ns, "custom-uid"),
        ] {
            let r = invoke(
                "DEL",
                &ns.path(),
                &s.state(),
                &k8s_args("shop", name),
                &api_config(&kc, &ns.path(), json!({"mode": mode})),
            );
            assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
        }
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
    const TEST: &str = "privileged_linkerd_pods_through_the_api_path";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let annotations = json!({"linkerd.io/proxy-version": "stable-2.14"});
    let mut control_plane = pod(
        "l5d-cp",
        "destination-0",
        annotations.clone(),
        json!([{"name": "destination"}, {"name": "linkerd-proxy"}]),
        json!([]),
    );
    control_plane["metadata"]["labels"] =
        json!({"linkerd.io/control-plane-component": "destination"});
    let with_init = pod(
        "shop",
        "own-init",
        annotations.clone(),
        json!([{"name": "app"}, {"name": "linkerd-proxy"}]),
        json!([{"name": "linkerd-init"}]),
    );
    let api = FakeApi::start(vec![
        (
            pod_path("l5d-cp", "destination-0"),
            vec![Reply::Json(200, control_plane)],
        ),
        (
            pod_path("shop", "own-init"),
            vec![Reply::Json(200, with_init)],
        ),
        (
            namespace_path("l5d-cp"),
            vec![Reply::Json(200, namespace("l5d-cp", json!({})))],
        ),
    ]);
    let s = scratch("linkerd-api");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let fetched = Netns::create(&format!("mk-l5d-api-{}", &mode[..3]));
        let meshed = Netns::create(&format!("mk-l5d-rp-{}", &mode[..3]));
        let init = Netns::create(&format!("mk-l5d-init-{}", &mode[..3]));
        let args = k8s_args("l5d-cp", "destination-0");

        let cfg = api_config(&kc, &fetched.path(), json!({"mode": mode}));
        let r = invoke("ADD", &fetched.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&fetched.path()), "{mode}");
        let a = fetched.rules(mode);
        assert!(a.contains("MESHCAP_LINKERD"), "{mode}: {a}");
        assert!(
            a.contains("dport 443 ") && a.contains("dport 6443 "),
            "{mode}: API server ports: {a}"
        );
        let rec = s.record(&fetched.path());
        assert_eq!(rec["linkerd_settings"]["control_plane"], true, "{rec}");
        let r = invoke("CHECK", &fetched.path(), &s.state(), &args, &cfg);
        assert_eq!(r.code, 0, "{mode}: CHECK: {}{}", r.stdout, r.stderr);

        // The runtime passes the annotations; read_pod: meshed still reads the spec.
        let mut cfg_rt = api_config(&kc, &meshed.path(), json!({"mode": mode}));
        cfg_rt["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
        cfg_rt["kubernetes"]["read_pod"] = json!("meshed");
        let before = api.seen().len();
        let r = invoke("ADD", &meshed.path(), &s.state(), &args, &cfg_rt);
        assert_eq!(r.ok(), passthrough(&meshed.path()), "{mode}");
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
        let plain = Netns::create(&format!("mk-l5d-pl-{}", &mode[..3]));
        let mut cfg_plain = cfg_rt.clone();
        cfg_plain["kubernetes"]["read_pod"] = json!("when-needed");
        cfg_plain["prevResult"] = prev_result(&plain.path());
        let r = invoke("ADD", &plain.path(), &s.state(), &args, &cfg_plain);
        assert_eq!(r.ok(), passthrough(&plain.path()), "{mode}");
        let p = plain.rules(mode);
        assert!(
            p.contains("MESHCAP_LINKERD") && !p.contains("dport 6443 "),
            "{mode}: {p}"
        );
        let r = invoke("DEL", &plain.path(), &s.state(), &args, &cfg_plain);
        assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);

        // linkerd-init present: left alone, no rules, no record.
        let init_args = k8s_args("shop", "own-init");
        let cfg = api_config(&kc, &init.path(), json!({"mode": mode}));
        let r = invoke("ADD", &init.path(), &s.state(), &init_args, &cfg);
        assert_eq!(r.ok(), passthrough(&init.path()), "{mode}");
        let rules = init.rules(mode);
        assert!(
            !rules.contains("MESHCAP") && !rules.contains("meshcap"),
            "{mode}: {rules}"
        );

        for (ns, a, cfg) in [
            (
                &fetched,
                &args,
                api_config(&kc, &fetched.path(), json!({"mode": mode})),
            ),
            (&meshed, &args, cfg_rt.clone()),
            (
                &init,
                &init_args,
                api_config(&kc, &init.path(), json!({"mode": mode})),
            ),
        ] {
            let r = invoke("DEL", &ns.path(), &s.state(), a, &cfg);
            assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
        }
    }
}

/// A Linkerd control-plane pod read from the API skips outbound the API server's ports as
/// linkerd-cni reads them from the `default/kubernetes` Service (each port, and its target port
/// when a number), and its record keeps them for the agent's repair. When the Service cannot be
/// read (404 here, or an API that keeps failing until the deadline) it skips 443 and 6443, as
/// linkerd-cni does, and the log says so.
#[test]
fn privileged_linkerd_control_plane_skips_the_api_servers_ports() {
    const TEST: &str = "privileged_linkerd_control_plane_skips_the_api_servers_ports";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let mut control_plane = pod(
        "l5d-cp",
        "destination-0",
        json!({"linkerd.io/proxy-version": "stable-2.14"}),
        json!([{"name": "destination"}, {"name": "linkerd-proxy"}]),
        json!([]),
    );
    control_plane["metadata"]["labels"] =
        json!({"linkerd.io/control-plane-component": "destination"});
    let service_path = "/api/v1/namespaces/default/services/kubernetes".to_string();
    let service = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]}
    });
    let routes = |service_reply: Option<Reply>| {
        let mut r = vec![
            (
                pod_path("l5d-cp", "destination-0"),
                vec![Reply::Json(200, control_plane.clone())],
            ),
            (
                namespace_path("l5d-cp"),
                vec![Reply::Json(200, namespace("l5d-cp", json!({})))],
            ),
        ];
        r.extend(service_reply.map(|reply| (service_path.clone(), vec![reply])));
        r
    };
    let with_service = FakeApi::start(routes(Some(Reply::Json(200, service))));
    let without_service = FakeApi::start(routes(None));
    let failing = FakeApi::start(routes(Some(Reply::Json(
        503,
        status_body(503, "ServiceUnavailable", "apiserver is shutting down"),
    ))));
    let s = scratch("linkerd-api-ports");
    let args = k8s_args("l5d-cp", "destination-0");
    for mode in ["iptables", "nftables"] {
        let read = Netns::create(&format!("mk-l5d-svc-{}", &mode[..3]));
        let kc = s.kubeconfig(&with_service.url());
        let cfg = api_config(&kc, &read.path(), json!({"mode": mode}));
        let r = invoke("ADD", &read.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&read.path()), "{mode}");
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
        let r = invoke("CHECK", &read.path(), &s.state(), &args, &cfg);
        assert_eq!(r.code, 0, "{mode}: CHECK: {}{}", r.stdout, r.stderr);
        let r = invoke("DEL", &read.path(), &s.state(), &args, &cfg);
        assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);

        for (api, what) in [(&without_service, "404"), (&failing, "503")] {
            let fallback = Netns::create(&format!("mk-l5d-f{what}-{}", &mode[..3]));
            let kc = s.kubeconfig(&api.url());
            let cfg = api_config(
                &kc,
                &fallback.path(),
                json!({"mode": mode, "kubernetes": {"kubeconfig": kc, "timeout_ms": 1000}}),
            );
            let r = invoke("ADD", &fallback.path(), &s.state(), &args, &cfg);
            assert_eq!(r.ok(), passthrough(&fallback.path()), "{mode} {what}");
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
            let r = invoke("DEL", &fallback.path(), &s.state(), &args, &cfg);
            assert_eq!(r.code, 0, "{mode} {what}: DEL: {}{}", r.stdout, r.stderr);
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
    const TEST: &str = "privileged_linkerd_settings_from_the_namespace";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
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
    let api = FakeApi::start(vec![
        (
            pod_path("l5d-app", "web-0"),
            vec![Reply::Json(200, partial)],
        ),
        (pod_path("l5d-app", "full-0"), vec![Reply::Json(200, full)]),
        (
            namespace_path("l5d-app"),
            vec![Reply::Json(
                200,
                namespace(
                    "l5d-app",
                    json!({
                        "config.linkerd.io/skip-inbound-ports": "7777",
                        "config.linkerd.io/skip-outbound-ports": "3306",
                        "config.linkerd.io/skip-subnets": "10.9.0.1/16",
                        "config.linkerd.io/proxy-gid": ""
                    }),
                ),
            )],
        ),
    ]);
    // What linkerd-cni reads for web-0: its own skip-inbound-ports, the rest from the namespace.
    let effective = l5d(json!({
        "config.linkerd.io/skip-inbound-ports": "9000",
        "config.linkerd.io/skip-outbound-ports": "3306",
        "config.linkerd.io/skip-subnets": "10.9.0.1/16"
    }));
    let s = scratch("linkerd-ns");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let fetched = Netns::create(&format!("mk-l5d-ns-{}", &mode[..3]));
        let passed = Netns::create(&format!("mk-l5d-np-{}", &mode[..3]));
        let stating = Netns::create(&format!("mk-l5d-nf-{}", &mode[..3]));
        let args = k8s_args("l5d-app", "web-0");

        let cfg = api_config(&kc, &fetched.path(), json!({"mode": mode}));
        let before = api.seen().len();
        let r = invoke("ADD", &fetched.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&fetched.path()), "{mode}");
        let paths: Vec<String> = api.seen()[before..]
            .iter()
            .map(|s| s.path.clone())
            .collect();
        assert_eq!(
            paths,
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

        let mut cfg_rt = api_config(&kc, &passed.path(), json!({"mode": mode}));
        cfg_rt["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": effective});
        let r = invoke("ADD", &passed.path(), &s.state(), &args, &cfg_rt);
        assert_eq!(r.ok(), passthrough(&passed.path()), "{mode}");
        assert_eq!(
            passed.rules(mode),
            a,
            "{mode}: the namespace's settings differ from the same settings on the pod"
        );

        let rec = s.record(&fetched.path());
        assert_eq!(rec["annotations"], effective, "{mode}: {rec}");
        let r = invoke("CHECK", &fetched.path(), &s.state(), &args, &cfg);
        assert_eq!(r.code, 0, "{mode}: CHECK: {}{}", r.stdout, r.stderr);

        let full_args = k8s_args("l5d-app", "full-0");
        let cfg_full = api_config(&kc, &stating.path(), json!({"mode": mode}));
        let before = api.seen().len();
        let r = invoke("ADD", &stating.path(), &s.state(), &full_args, &cfg_full);
        assert_eq!(r.ok(), passthrough(&stating.path()), "{mode}");
        let paths: Vec<String> = api.seen()[before..]
            .iter()
            .map(|s| s.path.clone())
            .collect();
        assert_eq!(paths, [pod_path("l5d-app", "full-0")], "{mode}");
        let f = stating.rules(mode);
        assert!(f.contains("5432") && !f.contains("3306"), "{mode}: {f}");

        for (ns, a, cfg) in [
            (&fetched, &args, cfg),
            (&passed, &args, cfg_rt),
            (&stating, &full_args, cfg_full),
        ] {
            let r = invoke("DEL", &ns.path(), &s.state(), a, &cfg);
            assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
        }
    }
}

/// linkerd-cni fails the ADD when it cannot read the Namespace it needs; so does meshcap,
/// before touching the pod's network namespace: refused is code 7 naming the namespace and
/// the missing permission, unavailable until the deadline is code 11. A bad value the
/// Namespace gives is code 7 naming the Namespace, not the pod.
#[test]
fn an_unreadable_or_bad_namespace_fails_a_linkerd_pod_closed() {
    let l5d_pod = |ns: &str| {
        pod(
            ns,
            "web-0",
            json!({"linkerd.io/proxy-version": "stable-2.14"}),
            json!([{"name": "app"}, {"name": "linkerd-proxy"}]),
            json!([]),
        )
    };
    let api = FakeApi::start(vec![
        (pod_path("locked", "web-0"), vec![Reply::Json(200, l5d_pod("locked"))]),
        (
            namespace_path("locked"),
            vec![Reply::Json(
                403,
                status_body(403, "Forbidden", "namespaces \"locked\" is forbidden: User \"system:serviceaccount:meshcap-system:meshcap\" cannot get resource \"namespaces\""),
            )],
        ),
        (pod_path("busy", "web-0"), vec![Reply::Json(200, l5d_pod("busy"))]),
        (pod_path("typo", "web-0"), vec![Reply::Json(200, l5d_pod("typo"))]),
        (
            namespace_path("typo"),
            vec![Reply::Json(
                200,
                namespace("typo", json!({"config.linkerd.io/proxy-uid": "21O2"})),
            )],
        ),
        (
            namespace_path("busy"),
            vec![Reply::Json(
                503,
                status_body(503, "ServiceUnavailable", "apiserver is shutting down"),
            )],
        ),
    ]);
    let s = scratch("linkerd-ns-closed");
    let kc = s.kubeconfig(&api.url());
    let netns = missing_netns("linkerd-ns-closed");
    let config = api_config(
        &kc,
        &netns,
        json!({"kubernetes": {"kubeconfig": kc, "timeout_ms": 800}}),
    );
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("locked", "web-0"),
        &config,
    );
    r.error(
        7,
        &[
            "namespace locked",
            &kc,
            "HTTP 403",
            "may not get namespaces",
        ],
    );
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("busy", "web-0"),
        &config,
    );
    r.error(11, &["namespace busy", "try again later", "HTTP 503"]);
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("typo", "web-0"),
        &config,
    );
    r.error(
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
    const TEST: &str = "privileged_kuma_pods_through_the_api_path";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
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
    let api = FakeApi::start(vec![
        (pod_path("shop", &name), vec![Reply::Json(200, injected)]),
        (
            pod_path("shop", "own-init"),
            vec![Reply::Json(200, own_init)],
        ),
        (
            pod_path("shop", "no-sidecar"),
            vec![Reply::Json(200, no_sidecar)],
        ),
        (
            pod_path("kuma-system", "excluded"),
            vec![Reply::Json(200, excluded)],
        ),
    ]);
    let s = scratch("kuma-api");
    let kc = s.kubeconfig(&api.url());
    let kuma = json!({"exclude_namespaces": ["kube-system", "kuma-system"]});
    for mode in ["iptables", "nftables"] {
        let m = &mode[..3];
        // The API path, and the runtime path with the annotations passed.
        let fetched = Netns::create(&format!("mk-kuma-api-{m}"));
        let args = k8s_args("shop", &name);
        let cfg = api_config(&kc, &fetched.path(), json!({"mode": mode, "kuma": kuma}));
        let r = invoke("ADD", &fetched.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&fetched.path()), "{mode}");
        let via_api = fetched.rules(mode);
        assert!(via_api.contains("MESHCAP_KUMA"), "{mode}: {via_api}");
        assert!(
            via_api.contains("15055"),
            "{mode}: the pod's inbound port: {via_api}"
        );

        let passed = Netns::create(&format!("mk-kuma-rt-{m}"));
        let mut cfg_rt = api_config(&kc, &passed.path(), json!({"mode": mode, "kuma": kuma}));
        cfg_rt["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
        let r = invoke("ADD", &passed.path(), &s.state(), &args, &cfg_rt);
        assert_eq!(r.ok(), passthrough(&passed.path()), "{mode}");
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
            let ns = Netns::create(&format!("mk-kuma-{}-{m}", &pod_name[..3]));
            let a = k8s_args(ns_name, pod_name);
            let cfg = api_config(&kc, &ns.path(), json!({"mode": mode, "kuma": kuma}));
            let r = invoke("ADD", &ns.path(), &s.state(), &a, &cfg);
            assert_eq!(r.ok(), passthrough(&ns.path()), "{mode} {pod_name}");
            let rules = ns.rules(mode);
            assert!(
                !rules.contains("MESHCAP") && !rules.contains("meshcap"),
                "{mode} {pod_name}: {rules}"
            );
            let r = invoke("DEL", &ns.path(), &s.state(), &a, &cfg);
            assert_eq!(
                r.code, 0,
                "{mode} {pod_name}: DEL: {}{}",
                r.stdout, r.stderr
            );
        }
        for (ns, cfg) in [(&fetched, cfg), (&passed, cfg_rt)] {
            let r = invoke("DEL", &ns.path(), &s.state(), &args, &cfg);
            assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
            assert!(
                !ns.rules(mode).contains("MESHCAP"),
                "{mode}: rules left after DEL"
            );
        }
    }
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
    const TEST: &str = "privileged_spec_settings_reach_every_path";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let mut meshed = injected_pod("shop", "dns-0");
    meshed["spec"]["containers"][1]["env"] = json!([
        {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
        {"name": "INVALID_DROP", "value": "true"}
    ]);
    meshed["spec"]["containers"][1]["securityContext"] =
        json!({"runAsUser": 1500, "runAsGroup": 1600, "runAsNonRoot": true});
    meshed["spec"]["initContainers"][0]["args"] = json!([
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
    let mut bad = injected_pod("shop", "bad-env");
    bad["spec"]["containers"][1]["env"] = json!([{"name": "INVALID_DROP", "value": "sometimes"}]);
    let api = FakeApi::start(vec![
        (
            pod_path("shop", "dns-0"),
            vec![Reply::Json(200, meshed.clone())],
        ),
        (pod_path("shop", "bad-env"), vec![Reply::Json(200, bad)]),
    ]);
    let s = scratch("spec-settings");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let via_api = Netns::create(&format!("mk-spec-api-{}", &mode[..3]));
        let via_defaults = Netns::create(&format!("mk-spec-def-{}", &mode[..3]));
        let via_read = Netns::create(&format!("mk-spec-read-{}", &mode[..3]));
        let bad_ns = Netns::create(&format!("mk-spec-bad-{}", &mode[..3]));
        let args = k8s_args("shop", "dns-0");
        let runtime = json!({"io.kubernetes.cri.pod-annotations": injected_annotations()});

        let cfg = api_config(&kc, &via_api.path(), json!({"mode": mode}));
        let r = invoke("ADD", &via_api.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&via_api.path()), "{mode}");
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
        let mut cfg = api_config(
            &kc,
            &via_defaults.path(),
            json!({"mode": mode, "istio": {"dns_capture": true, "invalid_drop": true,
                   "proxy_uids": [1500], "proxy_gids": [1600],
                   "proxy_listen_port": 15101, "proxy_inbound_listen_port": 15106}}),
        );
        cfg["runtimeConfig"] = runtime.clone();
        let before = api.seen().len();
        let r = invoke("ADD", &via_defaults.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&via_defaults.path()), "{mode}");
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
        let mut cfg = api_config(&kc, &via_read.path(), json!({"mode": mode}));
        cfg["kubernetes"]["read_pod"] = json!("meshed");
        cfg["runtimeConfig"] = runtime.clone();
        let r = invoke("ADD", &via_read.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&via_read.path()), "{mode}");
        assert_eq!(
            api.seen().len(),
            before + 1,
            "{mode}: read_pod meshed asks the API"
        );
        assert_eq!(via_read.rules(mode), from_api, "{mode}: read_pod meshed");

        // A bad env value: code 7 naming it, nothing installed, no record.
        let untouched = bad_ns.rules(mode);
        let records = s.records();
        let cfg = api_config(&kc, &bad_ns.path(), json!({"mode": mode}));
        let r = invoke(
            "ADD",
            &bad_ns.path(),
            &s.state(),
            &k8s_args("shop", "bad-env"),
            &cfg,
        );
        r.error(
            7,
            &["env INVALID_DROP of container istio-proxy", "sometimes"],
        );
        assert_eq!(bad_ns.rules(mode), untouched, "{mode}: namespace untouched");
        assert_eq!(s.records(), records, "{mode}: no record");

        for ns in [&via_api, &via_defaults, &via_read] {
            let cfg = api_config(&kc, &ns.path(), json!({"mode": mode}));
            let mut cfg = cfg;
            cfg["runtimeConfig"] = runtime.clone();
            let r = invoke("DEL", &ns.path(), &s.state(), &args, &cfg);
            assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
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
    const TEST: &str = "privileged_bad_spec_values_are_code_7_naming_the_source";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
    }
    let proxy_env = |var: &str, value: &str| {
        let mut p = injected_pod("shop", "x");
        p["spec"]["containers"][1]["env"] = json!([{"name": var, "value": value}]);
        p
    };
    let security_context = |sc: Value| {
        let mut p = injected_pod("shop", "x");
        p["spec"]["containers"][1]["securityContext"] = sc;
        p
    };
    let init = |args: Value, env: Value| {
        let mut p = injected_pod("shop", "x");
        p["spec"]["initContainers"] = json!([{"name": "istio-init", "args": args, "env": env}]);
        p
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
    let api = FakeApi::start(
        cases
            .iter()
            .map(|(name, pod, _, _)| (pod_path("shop", name), vec![Reply::Json(200, pod.clone())]))
            .collect(),
    );
    let s = scratch("bad-spec");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let ns = Netns::create(&format!("mk-badspec-{}", &mode[..3]));
        let untouched = ns.rules(mode);
        for (name, _, origin, value) in &cases {
            let r = invoke(
                "ADD",
                &ns.path(),
                &s.state(),
                &k8s_args("shop", name),
                &api_config(&kc, &ns.path(), json!({"mode": mode})),
            );
            r.error(7, &[origin, value]);
            assert_eq!(
                ns.rules(mode),
                untouched,
                "{mode} {name}: namespace untouched"
            );
            assert_eq!(s.records(), 0, "{mode} {name}: no record");
        }
    }
}

/// A Deployment as `istioctl kube-inject` prints it (the fixture `meshcap render -f` is
/// tested with, crates/meshcap/tests/fixtures/kube-inject-deployment.yaml): a pod of it, read
/// through the API path, gets exactly the rules `render -f` prints for its template (the same
/// renderers, loaded with the stock restore tools).
#[test]
fn privileged_kube_inject_pod_via_api_matches_render_f() {
    const TEST: &str = "privileged_kube_inject_pod_via_api_matches_render_f";
    if let Some(reason) = missing_root_or_tools(&["ip", "iptables-save", "ip6tables-save", "nft"]) {
        return skip_or_fail(TEST, &reason);
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

    let api = FakeApi::start(vec![(
        pod_path("default", "inject-8565f4c47-srwzd"),
        vec![Reply::Chunked(200, pod)],
    )]);
    let s = scratch("kube-inject");
    let kc = s.kubeconfig(&api.url());
    for mode in ["iptables", "nftables"] {
        let added = Netns::create(&format!("mk-inj-add-{}", &mode[..3]));
        let printed = Netns::create(&format!("mk-inj-prn-{}", &mode[..3]));
        let cfg = api_config(&kc, &added.path(), json!({"mode": mode}));
        let args = k8s_args("default", "inject-8565f4c47-srwzd");
        let r = invoke("ADD", &added.path(), &s.state(), &args, &cfg);
        assert_eq!(r.ok(), passthrough(&added.path()), "{mode}");

        let rulesets = model.rulesets();
        assert_eq!(rulesets.len(), 1);
        if mode == "iptables" {
            for (tool, rs) in ["iptables-restore", "ip6tables-restore"]
                .iter()
                .zip(&rulesets)
            {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &printed.name, tool, "--noflush"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(iptables::render(rs).as_bytes())
                    .unwrap();
                assert!(child.wait().unwrap().success(), "{tool}");
            }
        } else {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &printed.name, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(nftables::render(&rulesets).as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "nft -f");
        }
        let a = added.rules(mode);
        assert!(
            a.contains("MESHCAP") || a.contains("meshcap"),
            "{mode}: {a}"
        );
        assert_eq!(
            a,
            printed.rules(mode),
            "{mode}: ADD via the API and render -f differ"
        );
        let r = invoke("DEL", &added.path(), &s.state(), &args, &cfg);
        assert_eq!(r.code, 0, "{mode}: DEL: {}{}", r.stdout, r.stderr);
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

/// An HTTPS server answering every request with `pod` (200, Content-Length).
fn tls_server(dir: &std::path::Path, pod: Value) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if buf.is_empty() {
                continue; // handshake refused by the client
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            seen2.lock().unwrap().push(Seen {
                path: head.split(' ').nth(1).unwrap_or("").to_string(),
                authorization: head
                    .split("\r\n")
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l.split_once(':').unwrap().1.trim().to_string()),
            });
            let body = pod.to_string();
            let _ = tls.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, seen)
}

#[test]
fn tls_api_server_with_the_node_kubeconfig() {
    const TEST: &str = "tls_api_server_with_the_node_kubeconfig";
    let s = scratch("tls");
    if make_certs(&s.0).is_none() {
        return skip_or_fail(
            TEST,
            "the openssl CLI is not available to make test certificates",
        );
    }
    let mut opted_out = injected_pod("shop", "web-0");
    opted_out["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false");
    let (addr, seen) = tls_server(&s.0, opted_out);

    // `meshcap node` writes the kubeconfig from a service-account mount with this function
    // (its end to end run in the image: crates/meshcap-tests/tests/deploy.rs).
    let host = s.0.join("host");
    let kc = host.join("etc/cni/net.d/meshcap-kubeconfig");
    meshcap_records::node_kubeconfig::write(
        &kc,
        "127.0.0.1",
        &addr.port().to_string(),
        TOKEN,
        &fs::read(s.0.join("ca.crt")).unwrap(),
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
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "web-0"),
        &api_config(&kc, &netns, json!({})),
    );
    assert_eq!(r.ok(), passthrough(&netns), "opted-out pod read over TLS");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, pod_path("shop", "web-0"));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );

    // A kubeconfig that trusts another CA fails closed at once: no retry can fix it.
    let other = s.0.join("other-kubeconfig");
    let text = fs::read_to_string(&kc).unwrap();
    let ca_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
        .unwrap();
    let other_ca = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(fs::read(s.0.join("other-ca.crt")).unwrap())
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
    let r = invoke(
        "ADD",
        &netns,
        &s.state(),
        &k8s_args("shop", "web-0"),
        &api_config(other.to_str().unwrap(), &netns, json!({})),
    );
    r.error(7, &["shop/web-0", "TLS", "other-kubeconfig"]);
    assert!(started.elapsed() < Duration::from_secs(2));
}

//! A minimal stand-in for the Kubernetes API server, for pods whose capture settings live in
//! their spec (the `istio-proxy` container's env and securityContext, `istio-init`'s env and
//! arguments): it answers `GET /api/v1/namespaces/NS/pods/NAME` with the pod registered under
//! that name, `GET /api/v1/namespaces/NS` with that pod's Namespace (read for a Linkerd pod, as
//! linkerd-cni reads it), and 404 (a `Status` body) otherwise. It listens on the loopback address of the
//! namespace the plugins run in, over plain HTTP, and writes the kubeconfig that points there.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::netns::Netns;

/// The server; stops when dropped.
#[derive(Debug)]
pub struct FakeApi {
    addr: SocketAddr,
    pods: Arc<Mutex<HashMap<String, Value>>>,
    stop: Arc<AtomicBool>,
    kubeconfig: PathBuf,
    ns: Arc<Netns>,
}

impl FakeApi {
    /// Listens on 127.0.0.1 inside `ns`; the kubeconfig (and its token file) go to `dir`.
    pub fn start_in(ns: Arc<Netns>, dir: &Path) -> Result<FakeApi> {
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0"))??;
        let addr = listener.local_addr()?;
        let pods: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (pods2, stop2) = (pods.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let pods = pods2.clone();
                std::thread::spawn(move || serve(conn, &pods));
            }
        });
        std::fs::write(dir.join("kube-token"), "meshcap-e2e-token\n")?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: e2e\nclusters:\n- name: e2e\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: meshcap-cni\nusers:\n- name: meshcap-cni\n  user:\n    tokenFile: {}\n",
                dir.join("kube-token").display()
            ),
        )
        .context("write the kubeconfig")?;
        Ok(FakeApi {
            addr,
            pods,
            stop,
            kubeconfig,
            ns,
        })
    }

    /// The kubeconfig that points at this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Serve `pod` (its metadata's name and namespace are set here) as `namespace/name`, and
    /// its Namespace (without annotations) unless one is served already.
    pub fn insert(&self, namespace: &str, name: &str, mut pod: Value) {
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        let mut objects = self.pods.lock().unwrap();
        objects.insert(format!("/api/v1/namespaces/{namespace}/pods/{name}"), pod);
        objects
            .entry(format!("/api/v1/namespaces/{namespace}"))
            .or_insert_with(|| {
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            });
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept() from inside the namespace the server listens in.
        let addr = self.addr;
        let _ = self.ns.run(move || TcpStream::connect(addr));
    }
}

fn serve(mut conn: TcpStream, pods: &Mutex<HashMap<String, Value>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head
        .split("\r\n")
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_owned();
    let found = pods.lock().unwrap().get(&path).cloned();
    let (code, body) = match found {
        Some(pod) => (200, pod),
        None => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
        ),
    };
    let body = body.to_string();
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            if code == 200 { "OK" } else { "Not Found" },
            body.len()
        )
        .as_bytes(),
    );
}

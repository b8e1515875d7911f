//! A stand-in for the Kubernetes API server: each path answers with the replies scripted for
//! it (in order, the last one repeating), anything else with a 404 `Status` body, and every
//! request is recorded (path and `Authorization` header) for the test to check.
//!
//! It listens on 127.0.0.1 of the caller's network namespace, or of another one through a
//! closure that runs code there ([`Builder::inside`]); a [`Builder::wrap`] hook can put each
//! connection in TLS. [`write_kubeconfig`] writes the kubeconfig that points at it.
//!
//! Plain std on purpose: the tests script the wire down to the bytes (uneven chunks, a request
//! that is never answered) and record each request as it came; hyper, the agent's server,
//! would bring an async runtime into every test for none of that.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and JSON body with Content-Length.
    Json(u16, Value),
    /// Status and JSON body, chunked (what the API server sends for larger objects), in
    /// uneven chunks to exercise the client's decoder.
    Chunked(u16, Value),
    /// Read the request, never answer (until the server drops, or 30 s).
    Hang,
}

/// A request the server read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The request target, as sent.
    pub path: String,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
}

/// Runs a closure inside a network namespace, e.g. `move |f| ns.run(f)` for a
/// [`ScratchNetns`](crate::ScratchNetns).
pub type Enter = Arc<dyn Fn(&mut (dyn FnMut() + Send)) -> io::Result<()> + Send + Sync>;

/// A connection the server can read requests from and write replies to.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Wraps each accepted connection (e.g. in TLS); a connection whose first read fails is
/// dropped unrecorded.
pub type Wrap = Arc<dyn Fn(TcpStream) -> io::Result<Box<dyn Conn>> + Send + Sync>;

type Routes = Arc<Mutex<HashMap<String, Vec<Reply>>>>;

/// The server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    routes: Routes,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    enter: Option<Enter>,
}

/// How to start a [`FakeApi`].
#[derive(Default)]
pub struct Builder {
    routes: HashMap<String, Vec<Reply>>,
    enter: Option<Enter>,
    wrap: Option<Wrap>,
}

impl Builder {
    /// Adds `routes`: path -> replies in order, the last one repeating.
    pub fn routes(mut self, routes: impl IntoIterator<Item = (String, Vec<Reply>)>) -> Builder {
        self.routes.extend(routes);
        self
    }

    /// Listens inside the namespace `enter` runs closures in; the server keeps `enter` to
    /// unblock its accept from there when it drops.
    pub fn inside(
        mut self,
        enter: impl Fn(&mut (dyn FnMut() + Send)) -> io::Result<()> + Send + Sync + 'static,
    ) -> Builder {
        self.enter = Some(Arc::new(enter));
        self
    }

    /// Wraps each accepted connection with `wrap` before reading from it.
    pub fn wrap(
        mut self,
        wrap: impl Fn(TcpStream) -> io::Result<Box<dyn Conn>> + Send + Sync + 'static,
    ) -> Builder {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    /// Binds 127.0.0.1 on a free port and serves on a thread of its own.
    pub fn start(self) -> io::Result<FakeApi> {
        let listener = in_namespace(self.enter.as_ref(), || TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let api = FakeApi {
            addr,
            routes: Arc::new(Mutex::new(self.routes)),
            seen: Arc::default(),
            stop: Arc::default(),
            enter: self.enter,
        };
        let (routes, seen, stop, wrap) = (
            api.routes.clone(),
            api.seen.clone(),
            api.stop.clone(),
            self.wrap,
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (routes, seen, stop, wrap) =
                    (routes.clone(), seen.clone(), stop.clone(), wrap.clone());
                std::thread::spawn(move || {
                    let conn: Box<dyn Conn> = match &wrap {
                        Some(wrap) => match wrap(conn) {
                            Ok(conn) => conn,
                            Err(_) => return,
                        },
                        None => Box::new(conn),
                    };
                    serve(conn, &routes, &seen, &stop);
                });
            }
        });
        Ok(api)
    }
}

impl FakeApi {
    /// A server in the caller's namespace, over plain HTTP, answering `routes`.
    pub fn start(routes: impl IntoIterator<Item = (String, Vec<Reply>)>) -> io::Result<FakeApi> {
        FakeApi::builder().routes(routes).start()
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests read so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Answers `path` with `replies` from now on, in place of what it answered before.
    pub fn route(&self, path: String, replies: Vec<Reply>) {
        self.routes.lock().unwrap().insert(path, replies);
    }

    /// Serves `pod` (its metadata's name and namespace are set here) as `namespace/name`, and
    /// its Namespace (without annotations) unless one is served already.
    pub fn insert(&self, namespace: &str, name: &str, mut pod: Value) {
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        let mut routes = self.routes.lock().unwrap();
        routes.insert(pod_path(namespace, name), vec![Reply::Json(200, pod)]);
        routes.entry(namespace_path(namespace)).or_insert_with(|| {
            vec![Reply::Json(
                200,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            )]
        });
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept(), from the namespace the server listens in.
        let addr = self.addr;
        let _ = in_namespace(self.enter.as_ref(), || TcpStream::connect(addr));
    }
}

/// Runs `f` through `enter`, or here without one.
fn in_namespace<T: Send>(
    enter: Option<&Enter>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(enter) = enter else { return f() };
    let mut f = Some(f);
    let mut out = None;
    enter(&mut || out = f.take().map(|f| f()))?;
    out.unwrap_or_else(|| {
        Err(io::Error::other(
            "the namespace hook did not run the closure",
        ))
    })
}

/// `/api/v1/namespaces/NS/pods/NAME`.
pub fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// `/api/v1/namespaces/NS`.
pub fn namespace_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}")
}

/// A `Status` body, as the API server sends with an error.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// How a kubeconfig names its token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFile {
    /// `tokenFile: token`, resolved against the kubeconfig's directory, as kubectl does.
    Relative,
    /// The token file's absolute path.
    Absolute,
}

/// Writes `dir/token` holding `token` and `dir/kubeconfig` pointing at `server` with it;
/// returns the kubeconfig's path. Writing again replaces both.
pub fn write_kubeconfig(
    dir: &Path,
    server: &str,
    token: &str,
    token_file: TokenFile,
) -> io::Result<PathBuf> {
    let token_path = dir.join("token");
    std::fs::write(&token_path, format!("{token}\n"))?;
    let token_file = match token_file {
        TokenFile::Relative => "token".to_owned(),
        TokenFile::Absolute => token_path.display().to_string(),
    };
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: meshcap\nclusters:\n- name: local\n  cluster:\n    server: {server}\ncontexts:\n- name: meshcap\n  context:\n    cluster: local\n    user: meshcap-cni\nusers:\n- name: meshcap-cni\n  user:\n    tokenFile: {token_file}\n"
        ),
    )?;
    Ok(path)
}

fn serve(
    mut conn: Box<dyn Conn>,
    routes: &Mutex<HashMap<String, Vec<Reply>>>,
    seen: &Mutex<Vec<Seen>>,
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
        .to_owned();
    let authorization = lines
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization,
    });
    let route = path.split('?').next().unwrap_or("");
    let reply = match routes.lock().unwrap().get_mut(route) {
        Some(list) if list.len() > 1 => list.remove(0),
        Some(list) => list[0].clone(),
        None => Reply::Json(
            404,
            status_body(404, "NotFound", &format!("{route} not found")),
        ),
    };
    let (code, body, chunked) = match reply {
        Reply::Json(code, body) => (code, body.to_string(), false),
        Reply::Chunked(code, body) => (code, body.to_string(), true),
        Reply::Hang => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
        reason(code)
    );
    if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        for piece in body.as_bytes().chunks(97) {
            out.push_str(&format!("{:x}\r\n", piece.len()));
            out.push_str(&String::from_utf8_lossy(piece));
            out.push_str("\r\n");
        }
        out.push_str("0\r\n\r\n");
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    }
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.flush();
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw GET with a bearer token; the whole reply.
    fn get(api: &FakeApi, path: &str) -> String {
        let mut conn = TcpStream::connect(api.addr()).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn replies_in_order_the_last_repeating_and_404_elsewhere() {
        let api = FakeApi::start([(
            "/a".to_owned(),
            vec![
                Reply::Json(503, status_body(503, "ServiceUnavailable", "later")),
                Reply::Chunked(200, json!({"k": "v".repeat(300)})),
            ],
        )])
        .unwrap();
        assert!(get(&api, "/a").starts_with("HTTP/1.1 503 "));
        for _ in 0..2 {
            let r = get(&api, "/a");
            assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
            assert!(
                r.contains("Transfer-Encoding: chunked\r\n\r\n61\r\n"),
                "{r}"
            );
            assert!(r.ends_with("\r\n0\r\n\r\n"), "{r}");
        }
        let r = get(&api, "/b?x=1");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        assert!(r.contains(r#""reason":"NotFound""#), "{r}");
        let seen = api.seen();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3].path, "/b?x=1");
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer t0k"));
    }

    #[test]
    fn inserted_pods_come_with_their_namespace() {
        let api = FakeApi::start([]).unwrap();
        api.insert("shop", "web-0", json!({"kind": "Pod", "metadata": {}}));
        let r = get(&api, &pod_path("shop", "web-0"));
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.contains(r#""name":"web-0","namespace":"shop""#), "{r}");
        let r = get(&api, &namespace_path("shop"));
        assert!(r.contains(r#""kind":"Namespace""#), "{r}");
    }

    #[test]
    fn kubeconfig_names_the_token_file_either_way() {
        let dir = crate::ScratchDir::new("kit-kubeconfig");
        for (form, wanted) in [
            (TokenFile::Relative, "tokenFile: token\n".to_owned()),
            (
                TokenFile::Absolute,
                format!("tokenFile: {}\n", dir.path().join("token").display()),
            ),
        ] {
            let path = write_kubeconfig(dir.path(), "http://127.0.0.1:1", "t0k", form).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("server: http://127.0.0.1:1\n"), "{text}");
            assert!(text.ends_with(&wanted), "{text}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("token")).unwrap(),
                "t0k\n"
            );
        }
    }

    #[test]
    fn listens_inside_the_namespace_it_is_given() {
        const TEST: &str = "listens_inside_the_namespace_it_is_given";
        if !crate::gate::require_root_and_tools(TEST, &["ip"]) {
            return;
        }
        let ns = Arc::new(crate::ScratchNetns::new("meshcap-kit-api").unwrap());
        let inner = ns.clone();
        let api = FakeApi::builder()
            .inside(move |f| inner.run(f))
            .start()
            .unwrap();
        api.insert("shop", "web-0", json!({}));
        let r = ns.run(|| get(&api, &pod_path("shop", "web-0"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let addr = api.addr();
        drop(api);
        // Dropped: accept was unblocked from inside, and the listener is gone.
        let closed = crate::poll_bool(Duration::from_secs(5), Duration::from_millis(20), || {
            ns.run(move || TcpStream::connect(addr).is_err()).unwrap()
        });
        assert!(closed, "still listening in the namespace after drop");
    }
}

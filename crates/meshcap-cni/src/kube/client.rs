//! The Kubernetes API path: read one pod (`GET /api/v1/namespaces/NS/pods/NAME`) with the
//! configured kubeconfig when the runtime passed no pod annotations.
//!
//! Why a lean synchronous client and not `kube` + `hyper` + tokio: the plugin is a
//! short-lived process that makes exactly one GET per ADD/CHECK, on the pod-startup hot path,
//! with many copies running in parallel on a node (STYLE.md: no async runtime on the hot
//! path). A blocking `TcpStream` with per-attempt timeouts derived from one deadline is
//! simple to bound, and `rustls` (ring provider) is the only TLS dependency. No public root
//! store is compiled in: the API server is trusted only through the kubeconfig's CA, exactly
//! as `kubectl` does. `ureq` was considered; its TLS feature drags in the public webpki root
//! set, which the API path must never trust.
//!
//! Supported kubeconfig subset (what istio-cni's and our DaemonSet's kubeconfigs use):
//! `current-context` (or the only context), cluster `server` (`https://` or `http://`),
//! `certificate-authority` / `certificate-authority-data`, `tls-server-name`; user `token`,
//! `tokenFile`, `client-certificate(-data)` + `client-key(-data)`. Relative paths are
//! resolved against the kubeconfig's directory, as kubectl does. `insecure-skip-tls-verify`,
//! `exec` and `auth-provider` are refused: an unverifiable or unsupported credential fails
//! closed with an error naming the kubeconfig.
//!
//! Retries: connection errors, timeouts, 429 and 5xx are transient and retried with
//! exponential backoff (100 ms doubling to 1 s) until the deadline; running out of time is
//! [`KubeError::Unavailable`] (CNI code 11, "try again later"). 401, 403, 404, other 4xx, TLS
//! verification failures and undecodable bodies are final ([`KubeError::Refused`]): the ADD
//! fails closed.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde_json::Value;

/// The default overall deadline for reading one pod.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a configuration may ask for; runtimes time a whole ADD out at a few minutes.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response accepted; a Pod is a few KiB to a few hundred KiB.
const MAX_RESPONSE: usize = 8 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Less time than this left is not worth another request.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// Why the pod could not be read. Every message names the pod and the kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("pod {namespace}/{name}: {reason}")]
    InvalidName {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "reading {target} was refused: {reason}; refusing to start a possibly meshed pod \
         without capture"
    )]
    Refused {
        target: Box<Target>,
        status: Option<u16>,
        reason: String,
    },
    #[error(
        "{target} could not be read within {timeout:?} ({attempts} attempts, last: {last}); \
         try again later"
    )]
    Unavailable {
        target: Box<Target>,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
}

/// The pod being read and where from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub server: String,
    pub kubeconfig: PathBuf,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod {}/{} from {} (kubeconfig {})",
            self.namespace,
            self.name,
            self.server,
            self.kubeconfig.display()
        )
    }
}

impl KubeError {
    /// Whether the runtime should retry the ADD later (CNI code 11).
    pub fn is_transient(&self) -> bool {
        matches!(self, KubeError::Unavailable { .. })
    }

    /// The HTTP status of a refusal, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Refused { status, .. } => *status,
            _ => None,
        }
    }
}

/// A parsed `server` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    https: bool,
    /// Host as written (brackets stripped from IPv6 literals).
    host: String,
    port: u16,
    /// Path prefix without a trailing slash (API servers behind a proxy path).
    base: String,
}

impl Server {
    fn parse(url: &str) -> Result<Server, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("server {url:?} is not an http:// or https:// URL"));
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("server {url:?}: unterminated IPv6 literal"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("server {url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("server {url:?}: junk after the IPv6 literal")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("server {url:?}: bad port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(format!(
                "server {url:?}: no host (or userinfo, which is not supported)"
            ));
        }
        Ok(Server {
            https,
            host,
            port,
            base: base.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host_header(),
            self.base
        )
    }
}

/// A client for one API server, built from a kubeconfig.
pub struct Client {
    kubeconfig: PathBuf,
    server: Server,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("kubeconfig", &self.kubeconfig)
            .field("server", &self.server.url())
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

// ---- kubeconfig ----

#[derive(Deserialize)]
struct KubeconfigFile {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority")]
    certificate_authority: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure_skip_tls_verify: bool,
    #[serde(rename = "tls-server-name")]
    tls_server_name: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize, Default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    client_certificate: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key")]
    client_key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
    exec: Option<serde_yaml::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_yaml::Value>,
}

impl Client {
    /// Reads the kubeconfig at `path` and everything it references (CA, client cert, token).
    pub fn from_kubeconfig(path: &Path) -> Result<Client, KubeError> {
        let err = |reason: String| KubeError::Kubeconfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let file: KubeconfigFile =
            serde_yaml::from_str(&text).map_err(|e| err(format!("not a kubeconfig: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                dir.join(p)
            }
        };

        let context = match &file.current_context {
            Some(name) if !name.is_empty() => file
                .contexts
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| err(format!("current-context {name:?} is not in contexts")))?,
            _ => match file.contexts.as_slice() {
                [only] => only,
                _ => return Err(err("no current-context and not exactly one context".into())),
            },
        };
        let cluster = &file
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .ok_or_else(|| {
                err(format!(
                    "cluster {:?} is not in clusters",
                    context.context.cluster
                ))
            })?
            .cluster;
        let user = match &context.context.user {
            Some(name) if !name.is_empty() => Some(
                &file
                    .users
                    .iter()
                    .find(|u| &u.name == name)
                    .ok_or_else(|| err(format!("user {name:?} is not in users")))?
                    .user,
            ),
            _ => None,
        };

        let server = Server::parse(&cluster.server).map_err(err)?;
        if cluster.insecure_skip_tls_verify {
            return Err(err(
                "insecure-skip-tls-verify is not supported: meshcap verifies the API server".into(),
            ));
        }

        let mut token = None;
        let mut client_auth = None;
        if let Some(u) = user {
            if u.exec.is_some() || u.auth_provider.is_some() {
                return Err(err(
                    "exec and auth-provider credentials are not supported; use token, tokenFile or a client certificate"
                        .into(),
                ));
            }
            token = match (&u.token, &u.token_file) {
                (Some(t), _) if !t.is_empty() => Some(t.trim().to_owned()),
                (_, Some(f)) => {
                    let f = resolve(f);
                    let t = std::fs::read_to_string(&f)
                        .map_err(|e| err(format!("tokenFile {}: {e}", f.display())))?;
                    Some(t.trim().to_owned())
                }
                _ => None,
            };
            if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
                return Err(err("the token contains a line break".into()));
            }
            let cert = pem_source(
                &u.client_certificate_data,
                &u.client_certificate,
                "client-certificate",
                &resolve,
            )
            .map_err(&err)?;
            let key = pem_source(&u.client_key_data, &u.client_key, "client-key", &resolve)
                .map_err(&err)?;
            client_auth = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(err(
                        "a client certificate needs both the certificate and the key".into(),
                    ))
                }
            };
        }

        let tls = if server.https {
            let ca = pem_source(
                &cluster.certificate_authority_data,
                &cluster.certificate_authority,
                "certificate-authority",
                &resolve,
            )
            .map_err(&err)?
            .ok_or_else(|| {
                err(
                    "an https server needs certificate-authority or certificate-authority-data"
                        .into(),
                )
            })?;
            let name = cluster.tls_server_name.as_deref().unwrap_or(&server.host);
            Some(tls_config(&ca, client_auth.as_ref(), name).map_err(err)?)
        } else {
            if client_auth.is_some() {
                return Err(err("a client certificate needs an https server".into()));
            }
            None
        };
        Ok(Client {
            kubeconfig: path.to_owned(),
            server,
            tls,
            token,
        })
    }

    /// The API server's URL, for messages.
    pub fn server_url(&self) -> String {
        self.server.url()
    }

    /// `GET /api/v1/namespaces/{namespace}/pods/{name}` within `timeout`, retrying transient
    /// failures with backoff. Returns the Pod as JSON.
    pub fn get_pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        for (what, value) in [("namespace", namespace), ("name", name)] {
            if let Err(reason) = validate_name(value) {
                return Err(KubeError::InvalidName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: format!("{what} {value:?} {reason}"),
                });
            }
        }
        let path = format!(
            "{}/api/v1/namespaces/{namespace}/pods/{name}",
            self.server.base
        );
        let deadline = Instant::now() + timeout;
        let target = || {
            Box::new(Target {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                server: self.server.url(),
                kubeconfig: self.kubeconfig.clone(),
            })
        };
        let refused = |status: Option<u16>, reason: String| KubeError::Refused {
            target: target(),
            status,
            reason,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        // The last thing the server said, kept when a later attempt only times out.
        let mut last_answer: Option<String> = None;
        let unavailable = |attempts: u32, last: String, answer: &Option<String>| {
            let last = match answer {
                Some(a) if *a != last => format!("{last}; the server last answered {a}"),
                _ => last,
            };
            KubeError::Unavailable {
                target: target(),
                timeout,
                attempts,
                last,
            }
        };
        loop {
            attempts += 1;
            let last = match self.attempt(&path, deadline) {
                Ok((200, body)) => {
                    return serde_json::from_slice(&body)
                        .map_err(|e| refused(Some(200), format!("the response is not JSON: {e}")))
                }
                Ok((status, body)) if status == 429 || status >= 500 => {
                    let answer = format!("HTTP {status}: {}", status_message(&body));
                    last_answer = Some(answer.clone());
                    answer
                }
                Ok((status, body)) => {
                    let what = match status {
                        401 => "unauthorized (bad or expired token or certificate)",
                        403 => "forbidden (the service account may not get pods)",
                        404 => "the pod does not exist",
                        _ => "unexpected status",
                    };
                    return Err(refused(
                        Some(status),
                        format!("HTTP {status}, {what}: {}", status_message(&body)),
                    ));
                }
                Err(Attempt::Final(reason)) => return Err(refused(None, reason)),
                Err(Attempt::Transient(reason)) => reason,
            };
            tracing::debug!(attempts, error = %last, "API request failed; retrying");
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                return Err(unavailable(attempts, last, &last_answer));
            }
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Not worth another attempt in what is left.
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                return Err(unavailable(attempts, last, &last_answer));
            }
        }
    }

    /// One request; `Ok` whenever the server answered with a complete response.
    fn attempt(&self, path: &str, deadline: Instant) -> Result<(u16, Vec<u8>), Attempt> {
        let tcp = connect(&self.server, deadline)?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             User-Agent: meshcap-cni/{}\r\nConnection: close\r\n",
            self.server.host_header(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.token {
            let _ = write!(request, "Authorization: Bearer {t}\r\n");
        }
        request.push_str("\r\n");
        match &self.tls {
            None => exchange(ReTimed { tcp, deadline }, request.as_bytes(), deadline),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| Attempt::Final(format!("TLS setup: {e}")))?;
                exchange(
                    rustls::StreamOwned::new(conn, ReTimed { tcp, deadline }),
                    request.as_bytes(),
                    deadline,
                )
            }
        }
    }
}

/// One attempt's failure.
#[derive(Debug)]
enum Attempt {
    Transient(String),
    Final(String),
}

fn left(deadline: Instant) -> Result<Duration, Attempt> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(Attempt::Transient("timed out".into()))
    } else {
        Ok(d)
    }
}

fn connect(server: &Server, deadline: Instant) -> Result<TcpStream, Attempt> {
    // An IP literal needs no resolver; a name goes through the system resolver (which has
    // its own timeouts; kubeconfigs written by meshcap's DaemonSet use the service IP).
    let addrs: Vec<SocketAddr> = match server.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, server.port)],
        Err(_) => (server.host.as_str(), server.port)
            .to_socket_addrs()
            .map_err(|e| Attempt::Transient(format!("resolving {}: {e}", server.host)))?
            .collect(),
    };
    let mut last = format!("{} resolved to no address", server.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(Attempt::Transient(last))
}

/// A TCP stream whose every read and write is bounded by what is left of the deadline.
struct ReTimed {
    tcp: TcpStream,
    deadline: Instant,
}

impl ReTimed {
    fn arm(&self) -> io::Result<()> {
        let d = self.deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.tcp.set_read_timeout(Some(d))?;
        self.tcp.set_write_timeout(Some(d))
    }
}

impl Read for ReTimed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for ReTimed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

fn io_failure(op: &str, e: io::Error) -> Attempt {
    // rustls reports certificate and protocol failures as InvalidData: retrying cannot fix
    // a CA that does not match.
    if e.kind() == io::ErrorKind::InvalidData {
        Attempt::Final(format!("{op}: TLS: {e}"))
    } else {
        Attempt::Transient(format!("{op}: {e}"))
    }
}

/// Writes the request and reads the response until it is complete or the peer closes.
fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    deadline: Instant,
) -> Result<(u16, Vec<u8>), Attempt> {
    left(deadline)?;
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| io_failure("sending the request", e))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        left(deadline)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(Attempt::Final(format!(
                        "the response is larger than {MAX_RESPONSE} bytes"
                    )));
                }
                if let Some(done) = parse_response(&buf, false).map_err(Attempt::Transient)? {
                    return Ok(done);
                }
            }
            // A peer that closes without TLS close_notify: fine if the response is complete.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure("reading the response", e)),
        }
    }
    parse_response(&buf, true)
        .map_err(Attempt::Transient)?
        .ok_or_else(|| {
            Attempt::Transient("the connection closed before a complete response".into())
        })
}

/// Parses an HTTP/1.1 response: `Ok(None)` while incomplete (`eof` false), the status and
/// decoded body once complete.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("the connection closed inside the response head".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                v.parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if chunked {
        return match dechunk(body)? {
            Some(b) => Ok(Some((status, b))),
            None if eof => Err("the connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    match content_length {
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(_) if eof => Err("the connection closed before Content-Length bytes".into()),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// Decodes a chunked body (RFC 9112, 7.1); `None` until the last chunk has arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers are ignored; the body is complete.
            return Ok(Some(out));
        }
        // A hostile size such as ffffffffffffffff must not overflow (found by fuzz/kube_response).
        let Some(need) = size.checked_add(2) else {
            return Err(format!("bad chunk size {size_hex:?}"));
        };
        if rest.len() < need {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `message` of a Kubernetes `Status` body, else a short excerpt of the body.
fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.chars().take(200).collect()
    }
}

/// Namespaces and pod names are DNS-1123 subdomains; anything else would change the URL.
fn validate_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("is not a DNS-1123 name (a-z, 0-9, '-', '.')");
    }
    Ok(())
}

/// PEM bytes from `*-data` (base64) or a file.
fn pem_source(
    data: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
        let clean: String = d.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| format!("{what}-data is not base64: {e}"));
    }
    if let Some(f) = file {
        let f = resolve(f);
        return std::fs::read(&f)
            .map(Some)
            .map_err(|e| format!("{what} {}: {e}", f.display()));
    }
    Ok(None)
}

fn tls_config(
    ca_pem: &[u8],
    client_auth: Option<&(Vec<u8>, Vec<u8>)>,
    server_name: &str,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("certificate-authority: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate-authority: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("certificate-authority holds no PEM certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client-certificate: {e}"))?;
            if chain.is_empty() {
                return Err("client-certificate holds no PEM certificate".into());
            }
            let key =
                PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("client-key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
    };
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    Ok((Arc::new(config), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let s = Server::parse("https://10.96.0.1:443").unwrap();
        assert_eq!(
            (s.https, s.host.as_str(), s.port, s.base.as_str()),
            (true, "10.96.0.1", 443, "")
        );
        assert_eq!(s.host_header(), "10.96.0.1");
        let s = Server::parse("http://[::1]:8080/proxy/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("::1", 8080, "/proxy")
        );
        assert_eq!(s.url(), "http://[::1]:8080/proxy");
        let s = Server::parse("https://api.example").unwrap();
        assert_eq!(s.port, 443);
        for bad in [
            "ftp://x",
            "https://",
            "https://a:b",
            "http://u@h",
            "https://[::1",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"{}".to_vec()))
        );
        assert_eq!(parse_response(&r[..r.len() - 1], false).unwrap(), None);
        assert!(parse_response(&r[..r.len() - 1], true).is_err());
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(c, false).unwrap(),
            Some((404, b"abcde".to_vec()))
        );
        assert_eq!(parse_response(&c[..c.len() - 7], false).unwrap(), None);
        let eof = b"HTTP/1.0 500 x\r\n\r\nboom";
        assert_eq!(parse_response(eof, false).unwrap(), None);
        assert_eq!(
            parse_response(eof, true).unwrap(),
            Some((500, b"boom".to_vec()))
        );
        assert!(parse_response(b"SMTP hi\r\n\r\n", true).is_err());
    }

    #[test]
    fn chunk_sizes_near_usize_max_are_errors_not_panics() {
        // Regression for a fuzz/kube_response crash: `size + 2` overflowed.
        for size in ["ffffffffffffffff", "fffffffffffffffe"] {
            let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc");
            assert!(parse_response(r.as_bytes(), false).is_err(), "{size}");
            assert!(parse_response(r.as_bytes(), true).is_err(), "{size}");
        }
    }

    #[test]
    fn status_messages() {
        assert_eq!(
            status_message(br#"{"kind":"Status","message":"pods \"x\" not found"}"#),
            "pods \"x\" not found"
        );
        assert_eq!(status_message(b""), "(empty body)");
    }

    #[test]
    fn names_are_checked_before_any_request() {
        assert!(validate_name("web-0.a").is_ok());
        for bad in ["", "A", "a/b", "a?b", "..%2f", &"a".repeat(254)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}

//! Reading one object (a pod; for a Linkerd pod its namespace and the `kubernetes` Service):
//! the request path, retries with backoff until the deadline, and the errors that say which
//! object, which server and which kubeconfig.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::Value;

use super::transport::{self, Attempt, Server};

/// The default overall deadline for reading a pod (and, for a Linkerd pod, its namespace).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a configuration may ask for; runtimes time a whole ADD out at a few minutes.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Less time than this left is not worth another request.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// Why an object could not be read. Every message names the object and the kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("{object}: {reason}")]
    InvalidName { object: String, reason: String },
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

/// The object being read (`pod NS/NAME`, `namespace NS`) and where from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub object: String,
    pub server: String,
    pub kubeconfig: PathBuf,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from {} (kubeconfig {})",
            self.object,
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

/// A client for one API server, built from a kubeconfig.
pub struct Client {
    pub(super) kubeconfig: PathBuf,
    pub(super) server: Server,
    pub(super) tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pub(super) token: Option<String>,
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

impl Client {
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
        self.get_namespaced("pod", "pods", namespace, name, timeout)
    }

    /// `GET /api/v1/namespaces/{namespace}/services/{name}`, as [`Client::get_pod`]. Returns
    /// the Service as JSON.
    pub fn get_service(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        self.get_namespaced("service", "services", namespace, name, timeout)
    }

    /// `GET /api/v1/namespaces/{namespace}`, as [`Client::get_pod`]. Returns the Namespace as
    /// JSON.
    pub fn get_namespace(&self, namespace: &str, timeout: Duration) -> Result<Value, KubeError> {
        let object = format!("namespace {namespace}");
        check_name(&object, "name", namespace)?;
        let path = format!("/api/v1/namespaces/{namespace}");
        self.get(object, "namespaces", &path, timeout)
    }

    /// One namespaced object (`kind` for messages, `resource` for the URL and RBAC), its
    /// names checked before any request.
    fn get_namespaced(
        &self,
        kind: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        let object = format!("{kind} {namespace}/{name}");
        for (what, value) in [("namespace", namespace), ("name", name)] {
            check_name(&object, what, value)?;
        }
        let path = format!("/api/v1/namespaces/{namespace}/{resource}/{name}");
        self.get(object, resource, &path, timeout)
    }

    /// One GET of `path` with retries; `object` and `resource` (the RBAC resource) are for
    /// the messages.
    fn get(
        &self,
        object: String,
        resource: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        let path = format!("{}{path}", self.server.base);
        let deadline = Instant::now() + timeout;
        let target = || {
            Box::new(Target {
                object: object.clone(),
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
            let last = match transport::get(
                &self.server,
                self.tls.as_ref(),
                self.token.as_deref(),
                &path,
                deadline,
            ) {
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
                        401 => "unauthorized (bad or expired token or certificate)".to_owned(),
                        403 => format!("forbidden (the service account may not get {resource})"),
                        404 => format!("the {} does not exist", object_kind(&object)),
                        _ => "unexpected status".to_owned(),
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
}

/// `pod` of `pod NS/NAME`.
fn object_kind(object: &str) -> &str {
    object.split(' ').next().unwrap_or(object)
}

/// Refuses a `value` that would change the request's URL, before any request.
fn check_name(object: &str, what: &str, value: &str) -> Result<(), KubeError> {
    validate_name(value).map_err(|reason| KubeError::InvalidName {
        object: object.to_owned(),
        reason: format!("{what} {value:?} {reason}"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
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

//! The Kubernetes API path: read one pod (`GET /api/v1/namespaces/NS/pods/NAME`) with the
//! configured kubeconfig when the runtime passed no pod annotations; for a Linkerd pod, as
//! linkerd-cni does, also its Namespace when it leaves settings unset
//! (`GET /api/v1/namespaces/NS`) and the Service `default/kubernetes` when it is a
//! control-plane pod.
//!
//! Why a lean synchronous client and not `kube` + `hyper` + tokio: the plugin is a
//! short-lived process that makes one GET per ADD/CHECK (up to three for a Linkerd pod), on the
//! pod-startup hot path, with many copies running in parallel on a node (docs/DESIGN.md, "The
//! plugin's hot path": no async runtime). A blocking `TcpStream` with per-attempt timeouts derived from one deadline is
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
//!
//! Three modules: `kubeconfig` reads the kubeconfig and what it references into a
//! [`Client`]; `transport` does one HTTP/1.1 exchange over TCP or TLS within a deadline;
//! `client` reads a pod, a namespace or a service with retries and turns failures into [`KubeError`].

mod client;
mod kubeconfig;
mod transport;

pub use client::*;

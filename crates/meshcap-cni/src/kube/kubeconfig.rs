//! The kubeconfig subset meshcap reads (see the module above) and the TLS configuration built
//! from it: the kubeconfig's CA is the only trust anchor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use super::transport::Server;
use super::{Client, KubeError};

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

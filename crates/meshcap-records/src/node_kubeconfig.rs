//! The kubeconfig meshcap-cni reads on the Kubernetes API path, as `meshcap node` writes it
//! from the DaemonSet's service account: a file both sides share, like the records (the
//! plugin's integration tests read it back over TLS).

use std::fs;
use std::io::{Error, ErrorKind, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;

/// The plugin's kubeconfig. It embeds the token and CA, like istio-cni's, because the plugin
/// runs on the host where the pod's projected token path does not exist. Mode 0600 from the
/// start (no other user ever reads the token), written to a temporary file and renamed, so
/// the plugin never reads a partial file.
pub fn write(path: &Path, host: &str, port: &str, token: &str, ca: &[u8]) -> std::io::Result<()> {
    if token.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the service-account token is empty",
        ));
    }
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("invalid API server address {host:?} port {port:?}"),
        ));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let text = format!(
        "# Written by `meshcap node`; read by meshcap-cni. Do not edit.\n\
         apiVersion: v1\n\
         kind: Config\n\
         current-context: meshcap\n\
         clusters:\n\
         - name: local\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority-data: {ca}\n\
         contexts:\n\
         - name: meshcap\n  context:\n    cluster: local\n    user: meshcap-cni\n\
         users:\n\
         - name: meshcap-cni\n  user:\n    token: {token}\n"
    );
    let dir = path
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "kubeconfig path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("kubeconfig");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn kubeconfig_is_0600_and_brackets_ipv6() {
        let dir = meshcap_testkit::ScratchDir::new("node-kc");
        let path = dir.path().join("net.d").join("meshcap-kubeconfig");
        write(&path, "fd00::1", "443", "tok", b"CA").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("server: https://[fd00::1]:443"), "{text}");
        assert!(text.contains("token: tok"), "{text}");
        assert!(text.contains("certificate-authority-data: Q0E="), "{text}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write(&path, "h", "443", "", b"CA").is_err());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}

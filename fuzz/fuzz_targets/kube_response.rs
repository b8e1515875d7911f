//! API server responses (`kube::Client::get_pod`): HTTP/1.1 head, Content-Length or chunked
//! body, JSON, Status messages. The input is served by an in-process plain-HTTP server on
//! 127.0.0.1, one connection per call, so the real client code parses it.
#![no_main]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshcap_cni::kube::Client;

struct Fixture {
    client: Client,
    response: Arc<Mutex<Vec<u8>>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let response = Arc::new(Mutex::new(Vec::new()));
        let served = response.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = served.lock().expect("lock").clone();
                let _ = conn.write_all(&body);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        let dir: PathBuf =
            std::env::temp_dir().join(format!("meshcap-fuzz-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k}}}}]\n"
        );
        std::fs::write(&path, config).expect("write kubeconfig");
        let client = Client::from_kubeconfig(&path).expect("client");
        Fixture { client, response }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    *f.response.lock().expect("lock") = data.to_vec();
    // Below the client's minimum attempt time, so a transient answer is not retried (no
    // backoff sleeps): one request per input.
    let _ = f
        .client
        .get_pod("default", "pod", Duration::from_millis(19));
});

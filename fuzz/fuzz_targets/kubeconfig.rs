//! The plugin's kubeconfig (`kube::Client::from_kubeconfig`): written by meshcap's node agent
//! (`meshcap node`) or the admin, so trusted, but it must still fail cleanly.
//! The entry point reads a file, so each input is written to a per-process scratch file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshcap_cni::kube::Client;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("meshcap-fuzz-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("kubeconfig")
    })
}

fuzz_target!(|data: &[u8]| {
    // File references are followed (that is the feature); keep the fuzzer off endless or
    // special files, which only the trusted writer of the kubeconfig could name.
    let text = String::from_utf8_lossy(data);
    if ["dev", "proc", "sys", "run", ".."]
        .iter()
        .any(|d| text.contains(d))
    {
        return;
    }
    std::fs::write(path(), data).expect("write scratch kubeconfig");
    if let Ok(client) = Client::from_kubeconfig(path()) {
        let _ = client.server_url();
        // Debug never shows the token: at most that there is one.
        let shown = format!("{client:?}");
        let token_shown = shown
            .split("token: Some(\"")
            .skip(1)
            .any(|rest| !rest.starts_with("<redacted>\")"));
        assert!(!token_shown, "{shown}");
    }
});

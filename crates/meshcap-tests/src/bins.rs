//! Where the binaries under test are: `meshcap-cni` and `meshcap` (built by `cargo build -p
//! meshcap-cni -p meshcap` into the same target dir), the harness's own `standin`, and the
//! reference CNI plugins.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Directory of the reference CNI plugins (`bridge`, `host-local`, `loopback`); env
/// `MESHCAP_CNI_PLUGIN_DIR` overrides Debian's `/usr/lib/cni`.
pub fn reference_plugin_dir() -> PathBuf {
    std::env::var_os("MESHCAP_CNI_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/cni"))
}

/// The `meshcap-cni` binary: env `MESHCAP_CNI_BIN`, else next to the running executable (or one
/// level up, for test binaries in `target/<profile>/deps`).
pub fn meshcap_cni() -> Result<PathBuf> {
    locate(
        "meshcap-cni",
        "MESHCAP_CNI_BIN",
        "cargo build -p meshcap-cni",
    )
}

/// The `meshcap` node tool (its `agent` runs the eBPF fast path): env `MESHCAP_BIN`, else next
/// to the running executable (or one level up). Build it with `MESHCAP_BUILD_EBPF=1`.
pub fn meshcap() -> Result<PathBuf> {
    locate(
        "meshcap",
        "MESHCAP_BIN",
        "MESHCAP_BUILD_EBPF=1 cargo build -p meshcap",
    )
}

/// The harness's `standin` binary: env `MESHCAP_STANDIN_BIN`, else next to the running
/// executable (or one level up).
pub fn standin() -> Result<PathBuf> {
    locate(
        "standin",
        "MESHCAP_STANDIN_BIN",
        "cargo build -p meshcap-tests --bins",
    )
}

fn locate(name: &str, env: &str, hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env}={} is not a file", p.display());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "{name} not found next to {} (run `{hint}` with the same CARGO_TARGET_DIR, or set {env})",
        exe.display()
    )
}

//! Builds the eBPF object the loader embeds.
//!
//! With `MESHCAP_BUILD_EBPF=1` (set by scripts/test.sh and scripts/setup.sh users) this runs
//! cargo on `ebpf/meshcap-ebpf` with the nightly pinned in its rust-toolchain.toml,
//! `--target bpfel-unknown-none -Z build-std=core` and bpf-linker, and copies the object to
//! `$OUT_DIR/meshcap-ebpf.o`. Otherwise it writes an empty stub there, so `cargo check`,
//! `clippy` and plain builds of the workspace never need the nightly or bpf-linker; the loader
//! reports a stub at run time (aya-template does the same).
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const OBJECT: &str = "meshcap-ebpf.o";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let ebpf_root = manifest_dir.join("../../ebpf");
    let program_dir = ebpf_root.join("meshcap-ebpf");
    let object = out_dir.join(OBJECT);

    println!("cargo:rerun-if-env-changed=MESHCAP_BUILD_EBPF");
    for p in [
        "meshcap-ebpf/src",
        "meshcap-ebpf/Cargo.toml",
        "meshcap-ebpf/rust-toolchain.toml",
        "meshcap-ebpf/.cargo/config.toml",
        "meshcap-ebpf-common/src",
        "meshcap-ebpf-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_root.join(p).display());
    }

    let wanted = env::var("MESHCAP_BUILD_EBPF").is_ok_and(|v| v == "1" || v == "true");
    if !wanted {
        fs::write(&object, b"").with_context(|| format!("writing stub {}", object.display()))?;
        println!("cargo:rustc-cfg=meshcap_ebpf_stub");
        println!("cargo:rustc-check-cfg=cfg(meshcap_ebpf_stub)");
        return Ok(());
    }
    println!("cargo:rustc-check-cfg=cfg(meshcap_ebpf_stub)");
    build_object(&program_dir, &out_dir, &object)
}

fn pinned_toolchain(program_dir: &Path) -> Result<String> {
    let path = program_dir.join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}

fn build_object(program_dir: &Path, out_dir: &Path, object: &Path) -> Result<()> {
    let toolchain = pinned_toolchain(program_dir)?;
    // Its own target dir: the outer cargo holds the lock on the workspace's.
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(program_dir)
        .args(["run", &toolchain, "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host toolchain; none of them fit this one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().with_context(|| {
        format!(
            "running rustup run {toolchain} cargo build in {}",
            program_dir.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "building the eBPF object failed ({}); scripts/setup.sh installs the pinned nightly \
             ({toolchain}, with rust-src) and bpf-linker.\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/meshcap-ebpf");
    fs::copy(&built, object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}

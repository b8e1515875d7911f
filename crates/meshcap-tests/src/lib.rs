//! meshcap's end-to-end harness: real network namespaces, a CNI runtime driver, a stand-in
//! sidecar and the flow matrix that proves docs/DESIGN.md's "Observable behaviour" in every mode.
//!
//! The pieces, each in its own module:
//! - [`netns`]: named network namespaces that delete themselves, and running closures or
//!   processes inside them.
//! - [`chain`]: a CNI runtime driver for a conflist (`bridge` + `host-local` -> `meshcap-cni`),
//!   doing what containerd/CRI-O do: ADD first-to-last with `prevResult`, DEL last-to-first,
//!   CHECK with the cached result, capability args only to plugins that declare them.
//! - [`node`]: a small node built from namespaces: the node netns holding the bridge, a remote
//!   host serving TCP/UDP on several addresses, and pods with a stand-in sidecar.
//! - [`standin`]: the stand-in sidecar / client / app server run by the `standin` binary, and the
//!   records it writes.
//! - [`flows`]: the flow matrix: named flows, grouped by pod annotation set, with expectations.
//! - [`compare`]: runs the matrix per mode and compares every mode against `iptables`.
//! - [`state`]: snapshots of a namespace's netfilter and policy-routing state.
//! - [`fastpath`]: the eBPF fast path's node agent for the `+ebpf` modes (one shared agent per
//!   test process on the default pin directory, or a test's own), and a live app-to-sidecar
//!   connection to observe it with.
//! - [`bins`]: where the binaries under test are.
//! - [`peer`] and [`conformance`]: semantic comparison of rule sets, and what the peer
//!   conformance suites (Istio, Linkerd, Kuma) share.
//!
//! Every privileged test starts with [`privileged`], which skips (by name) when the test cannot
//! run and fails instead under `CI=true`.
//!
//! Environment:
//! - `MESHCAP_E2E_MODES`: modes to run, comma-separated (default `iptables,nftables`, and for
//!   the flow matrix and the demo `iptables,nftables,iptables+ebpf`; also `nftables+ebpf`), see
//!   [`compare::all_modes`].
//! - `MESHCAP_CNI_BIN`, `MESHCAP_STANDIN_BIN`, `MESHCAP_BIN`: binaries under test (default: next
//!   to the running executable in the cargo target dir). `meshcap` (the agent) must be built
//!   with `MESHCAP_BUILD_EBPF=1` for the `+ebpf` modes.
//! - `MESHCAP_CNI_PLUGIN_DIR`: the reference CNI plugins (default `/usr/lib/cni`).
//! - `MESHCAP_E2E_KEEP`: keep scratch dirs (`/tmp/meshcap-e2e/...`: plugin log, IPAM data,
//!   records) for debugging.
#![deny(unsafe_code)]

pub mod agent_process;
pub mod bins;
pub mod chain;
pub mod compare;
pub mod conformance;
pub mod fastpath;
pub mod flows;
pub mod istio_cases;
pub mod kernel_features;
pub mod netns;
pub mod node;
pub mod peer;
pub mod standin;
pub mod state;
mod sys;
pub use sys::deny_io_uring_before_exec;

/// Every file below `dir`, recursively (nothing when `dir` cannot be read).
pub fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether a privileged test named `name` can run here: root, the reference CNI plugins, and
/// the built `meshcap-cni` and `standin` binaries. When it cannot, prints why with the test's
/// name and returns `false`; under `CI=true` it panics instead, so CI never passes by skipping.
pub fn privileged(name: &str) -> bool {
    match missing_prerequisite() {
        None => {
            // Once per test process: which kernel features the suite found, so a run on another
            // kernel says what it could and could not exercise.
            static REPORT: std::sync::Once = std::sync::Once::new();
            REPORT.call_once(kernel_features::print_report);
            true
        }
        Some(why) => {
            skip_or_fail(name, &why);
            false
        }
    }
}

pub use meshcap_testkit::{missing_root_or_tools, skip_or_fail};

/// The first reason the privileged tests cannot run here, if any.
pub fn missing_prerequisite() -> Option<String> {
    if let Some(why) = meshcap_testkit::missing_root() {
        return Some(format!("{why} (network namespaces, netfilter)"));
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let p = bins::reference_plugin_dir().join(plugin);
        if !p.exists() {
            return Some(format!(
                "reference CNI plugin {} missing (apt-get install containernetworking-plugins)",
                p.display()
            ));
        }
    }
    if let Err(e) = bins::meshcap_cni() {
        return Some(e.to_string());
    }
    if let Err(e) = bins::standin() {
        return Some(e.to_string());
    }
    None
}

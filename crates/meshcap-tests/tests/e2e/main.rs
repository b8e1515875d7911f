//! meshcap's end-to-end tests, one module per concern. Every test here is privileged: it runs
//! as root in real network namespaces named after the test and pid, against the built
//! `meshcap-cni` (build it first: `cargo build -p meshcap-cni`), and skips by name when it
//! cannot run (fails instead under `CI=true`).
//!
//! Modes: env `MESHCAP_E2E_MODES` (default `iptables,nftables`; the flow matrix adds
//! `iptables+ebpf`). `+ebpf` modes and the `fastpath` tests run the node agent (`meshcap
//! agent`, build it with `MESHCAP_BUILD_EBPF=1 cargo build -p meshcap`).

/// Return early (skipping by name) when the test cannot run; panics under `CI=true`.
macro_rules! privileged {
    ($name:expr) => {
        if !meshcap_tests::privileged($name) {
            return;
        }
    };
}

mod config;
mod cycles;
mod errors;
mod fastpath;
mod lifecycle;
mod matrix;
mod parallel;

use std::collections::BTreeMap;

use meshcap_tests::compare::Mode;
use meshcap_tests::flows::{self, Expect, Flow};

/// The modes under test.
pub fn modes() -> Vec<Mode> {
    runnable(meshcap_tests::compare::selected_modes())
}

/// The modes of the flow matrix (`iptables+ebpf` too unless `MESHCAP_E2E_MODES` says
/// otherwise).
pub fn matrix_modes() -> Vec<Mode> {
    runnable(meshcap_tests::compare::matrix_modes())
}

/// `modes` without the `+ebpf` ones when the fast path cannot run here (said by name; under
/// `CI=true` that fails instead).
fn runnable(modes: Vec<Mode>) -> Vec<Mode> {
    assert!(!modes.is_empty(), "MESHCAP_E2E_MODES selects no known mode");
    meshcap_tests::compare::runnable(modes, |m, why| {
        meshcap_tests::skip_or_fail(&format!("mode {}", m.name), why)
    })
}

/// Namespace-safe form of a mode name.
pub fn tag(mode: &Mode) -> String {
    mode.name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Annotations of a meshed pod with `extra` on top.
pub fn meshed(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(flows::STATUS.to_string(), flows::STATUS_VALUE.to_string());
    for (k, v) in extra {
        a.insert(k.to_string(), v.to_string());
    }
    a
}

/// The matrix flow called `name`.
pub fn flow(name: &str) -> Flow {
    flows::flows()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no flow {name}"))
}

/// `name`, expected to be left alone (as after DEL).
pub fn uncaptured(name: &str) -> Flow {
    let mut f = flow(name);
    f.expect = Expect::Direct;
    f
}

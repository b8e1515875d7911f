//! What meshcap's tests share, as a dev-dependency of every crate that has privileged or
//! filesystem tests:
//! - [`gate`]: the one rule for privileged tests: a test that cannot run here says
//!   `SKIPPED <name>: why` and returns; under `CI=true` it fails instead, so CI never passes by
//!   skipping. `scripts/test.sh` counts the `SKIPPED` lines.
//! - [`scratch`]: a scratch directory that removes itself.
//! - [`plugin`]: running a CNI plugin binary as a runtime starts it.
//! - [`wait`]: polling for a condition the system reaches on its own time.
//! - [`netns`]: a scratch network namespace that deletes itself, and running programs to
//!   completion.
//! - [`kube_api`]: a stand-in Kubernetes API server with scripted replies and a record of the
//!   requests, in any network namespace, and the kubeconfig that points at it.
#![forbid(unsafe_code)]

pub mod gate;
pub mod kube_api;
pub mod netns;
pub mod plugin;
pub mod scratch;
pub mod wait;

pub use gate::{ci, missing_root, missing_root_or_tools, missing_tools, skip_or_fail};
pub use netns::{run_checked, ScratchNetns};
pub use plugin::{cni_env, run_plugin, PluginRun};
pub use scratch::ScratchDir;
pub use wait::{poll, poll_bool};

//! What meshcap's tests share, as a dev-dependency of every crate that has privileged or
//! filesystem tests:
//! - [`gate`]: the one rule for privileged tests: a test that cannot run here says
//!   `SKIPPED <name>: why` and returns; under `CI=true` it fails instead, so CI never passes by
//!   skipping. `scripts/test.sh` counts the `SKIPPED` lines.
//! - [`scratch`]: a scratch directory that removes itself.
#![forbid(unsafe_code)]

pub mod gate;
pub mod scratch;

pub use gate::{ci, missing_root, missing_root_or_tools, skip_or_fail};
pub use scratch::ScratchDir;

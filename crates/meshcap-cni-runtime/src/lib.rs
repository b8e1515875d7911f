//! The container runtime's side of CNI, written once for everything in meshcap that plays the
//! runtime: the agent's adoption of pods set up before meshcap (it reads libcni's cache and
//! runs the installed plugin as the runtime would have), the end-to-end harness (a conflist
//! driver) and the benchmarks (timed ADDs).
//!
//! - [`cache`]: libcni's result cache (`cniCacheV1`), read defensively.
//! - [`invoke`]: one plugin's stdin (libcni's `buildOneConfig`), its `CNI_*` environment,
//!   running it with a deadline, and what its exit status and stdout say.
#![forbid(unsafe_code)]

pub mod cache;
pub mod invoke;

//! meshcap-cni: the chained CNI plugin that installs sidecar traffic capture inside a pod's
//! network namespace from the node, so no pod needs NET_ADMIN.
//!
//! The runtime calls the plugin after the primary CNI plugin. Flow of one invocation:
//! [`env`] (the `CNI_*` variables) and [`config`] (stdin) are validated, [`args`] parses
//! `CNI_ARGS`, [`commands`] runs ADD/DEL/CHECK/STATUS/GC on top of `meshcap-model` and
//! `meshcap-dataplane` (for a Kubernetes pod whose annotations the runtime did not pass,
//! [`kube`] reads the pod from the API server), `meshcap-records` keeps one host-side record per captured attachment, and
//! [`boundary`] turns the outcome into the CNI result or error JSON on stdout. Logs go to
//! stderr and the configured file ([`logging`]), never to stdout.
#![forbid(unsafe_code)]

pub mod args;
pub mod boundary;
pub mod commands;
pub mod config;
pub mod env;
pub mod fastpath;
pub mod kube;
pub mod logging;
pub mod result;
pub mod timing;
pub mod version;

pub use boundary::{run, Outcome};
pub use version::CniVersion;

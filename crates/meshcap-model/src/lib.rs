//! The redirect model of meshcap: pure data, no I/O.
//!
//! Configuration and Istio-compatible pod annotations go in ([`annotations`]), a validated
//! [`RedirectModel`] comes out ([`model`]), and the model produces backend-neutral
//! [`rules::Ruleset`]s, one per address family, that the renderers in [`render`] turn into
//! `iptables-restore` text or nftables rules. Applying them is the job of `meshcap-dataplane`.
#![forbid(unsafe_code)]

pub mod annotations;
mod layout;
pub mod mesh;
pub mod model;
pub mod pod;
pub mod render;
pub mod rules;
pub mod selection;

pub use annotations::{AnnotationError, Annotations};
pub use model::{Families, InterceptionMode, OwnerGroups, ProxyPorts, RedirectModel};
pub use rules::{Family, Ruleset};
pub use selection::Selection;

//! Renderers: pure functions from [`crate::rules::Ruleset`] to what a backend consumes.

pub mod iptables;
pub mod nftables;

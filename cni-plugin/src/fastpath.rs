//! Hooks for the optional eBPF sockops/sk_msg fast path (`ebpf.enabled`).
//!
//! ADD calls [`register_pod`] after the rules are in place, DEL and GC call
//! [`unregister_pod`] for records that say the pod was registered. The fast path is an
//! optimisation on top of the rules, so SPEC.md requires that its absence never fails an ADD:
//! callers log [`FastPathError`] and carry on.
//!
//! LEAD: wire the node agent here (it owns the eBPF maps); today both hooks report that the
//! fast path is not available.

use crate::state::AttachmentRecord;

/// Why the fast path could not take (or release) a pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FastPathError {
    #[error("eBPF fast path not available: {reason}")]
    Unavailable { reason: String },
}

const NOT_WIRED: &str = "this build of meshcap-cni has no connection to the node agent yet";

/// Registers the attachment's pod with the node's eBPF fast path.
pub fn register_pod(record: &AttachmentRecord) -> Result<(), FastPathError> {
    tracing::debug!(
        container_id = %record.container_id,
        netns = %record.netns.display(),
        "eBPF fast path registration requested"
    );
    Err(FastPathError::Unavailable {
        reason: NOT_WIRED.to_string(),
    })
}

/// Removes the attachment's entries from the eBPF fast path's maps. Must succeed when there
/// is nothing to remove (DEL and GC are idempotent).
pub fn unregister_pod(record: &AttachmentRecord) -> Result<(), FastPathError> {
    tracing::debug!(
        container_id = %record.container_id,
        "eBPF fast path unregistration requested"
    );
    Ok(())
}

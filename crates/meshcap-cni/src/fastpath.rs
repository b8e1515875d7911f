//! The plugin's side of the optional eBPF sockops/sk_msg fast path (`ebpf.enabled`).
//!
//! The node agent (`meshcap agent`) owns the programs and pins their maps; the plugin only
//! adds and removes its pod's entry in the pinned pod map (`meshcap_fastpath`). ADD calls
//! [`register_pod`] after the rules are in place; DEL and GC call [`unregister_pod`] and
//! [`sweep`], all against the configuration's `ebpf.pin_dir` (default: the agent's default,
//! `/sys/fs/bpf/meshcap`). The fast path is an optimisation on top of the rules, so docs/DESIGN.md
//! requires that its absence never fails an ADD: callers log [`FastPathError`] and carry on.

use std::path::Path;

use meshcap_fastpath::{PinDir, PodFastPath};

use meshcap_records::AttachmentRecord;

/// Why the fast path could not take (or release) a pod.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("eBPF fast path not available: {0}")]
    Unavailable(#[source] meshcap_fastpath::FastPathError),
    #[error("eBPF fast path: {0}")]
    Failed(#[source] meshcap_fastpath::FastPathError),
}

impl From<meshcap_fastpath::FastPathError> for FastPathError {
    fn from(e: meshcap_fastpath::FastPathError) -> Self {
        if e.is_not_available() {
            FastPathError::Unavailable(e)
        } else {
            FastPathError::Failed(e)
        }
    }
}

/// The pod's proxy as the fast path needs it, from the pod's model (its mesh's front end): the
/// one proxy uid, the gid if the mesh exempts one, and the capture ports its rules redirect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub uid: u32,
    pub gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
}

/// Registers the attachment's pod (by its netns cookie) with the node's fast path, whose agent
/// pinned its maps under `pin_dir`.
pub fn register_pod(
    pin_dir: &Path,
    record: &AttachmentRecord,
    proxy: ProxyIdentity,
) -> Result<(), FastPathError> {
    // The cookie names the pod to the fast path; registering fails when no agent has pinned
    // its maps.
    let cookie = meshcap_fastpath::netns_cookie_at(&record.netns)?;
    let mut pod = PodFastPath::new(cookie).for_attachment(&record.container_id, &record.ifname);
    pod.proxy_uid = proxy.uid;
    pod.proxy_gid = proxy.gid.unwrap_or(meshcap_fastpath::NO_GID);
    pod.outbound_port = proxy.outbound_port;
    pod.inbound_port = proxy.inbound_port;
    PinDir::new(pin_dir).register(&pod)?;
    tracing::info!(
        netns_cookie = cookie,
        proxy_uid = proxy.uid,
        proxy_gid = ?proxy.gid,
        outbound_port = proxy.outbound_port,
        inbound_port = proxy.inbound_port,
        "registered with the eBPF fast path"
    );
    Ok(())
}

/// Removes the attachment's entries from the fast path's maps. Works without the namespace
/// (DEL after the sandbox is gone) and succeeds when there is nothing to remove, including when
/// the agent was uninstalled (its maps, and every entry in them, are gone with it).
pub fn unregister_pod(pin_dir: &Path, record: &AttachmentRecord) -> Result<(), FastPathError> {
    unregister_attachment(pin_dir, &record.container_id, &record.ifname)
}

/// [`unregister_pod`] by the attachment's key, for a pod without a record.
pub fn unregister_attachment(
    pin_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<(), FastPathError> {
    match PinDir::new(pin_dir).unregister_attachment(container_id, ifname) {
        Ok(n) => {
            tracing::debug!(entries = n, "unregistered from the eBPF fast path");
            Ok(())
        }
        Err(e) if e.is_not_available() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// GC: drop fast-path entries of attachments the runtime no longer knows, including any whose
/// record was lost. Returns how many were removed.
pub fn sweep<'a>(
    pin_dir: &Path,
    valid: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<usize, FastPathError> {
    match PinDir::new(pin_dir).gc(valid) {
        Ok(n) => Ok(n),
        Err(e) if e.is_not_available() => Ok(0),
        Err(e) => Err(e.into()),
    }
}

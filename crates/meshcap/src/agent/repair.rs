//! Repair: put a meshed pod's rules back when they drifted (flushed by someone, a tool that
//! rewrote the tables, rules lost some other way).
//!
//! The source of truth is the plugin's attachment records (`meshcap_records`): ADD stores
//! the model inputs it used (effective annotations and the front-end settings of the pod's
//! mesh: Istio's, Linkerd's or Kuma's) and the namespace's identity. Each scan recomputes the
//! rulesets exactly as ADD did (`FrontEnd::model`, the step the plugin takes), runs the
//! dataplane's `check` and, on drift, its `apply` (atomic and idempotent). Every repair is
//! logged with the pod and what had drifted, and counted.
//!
//! Safety:
//! - a record whose namespace is gone, or whose path now names another namespace (a recycled
//!   `/proc/PID/ns/net`; dev/ino differ from what ADD recorded), is never repaired. The rules
//!   went with the namespace; what outlives it (the record, the pod's fast-path entries) is
//!   the runtime's DEL's to remove, or CNI GC's. Both may never
//!   come (a runtime that lost the pod, a network config older than CNI 1.1, which gets no
//!   GC), so a record whose namespace pin two scans in a row found removed is reclaimed: the
//!   agent takes the steps DEL takes for a namespace that is gone (see
//!   [`Repairer::reclaim`]). A DEL that comes later, or runs at the same time, finds nothing
//!   left and succeeds. Only a pin the agent can tell was removed counts ([`pin_removed`]): a
//!   `/proc` path or a directory the agent does not see leaves the record to DEL and GC;
//! - the record is read again, and the rules checked and re-applied, under the namespace's
//!   lock (a flock on the namespace), which the plugin's ADD and DEL hold while they change a
//!   pod's rules and its record: a repair never puts back rules of a pod DEL tore down.
//!
//! Upgrades: a pod an earlier release set up keeps its record (every older record format
//! still reads, missing fields default) and its rules. The installed rules carry their format
//! (`meshcap_model::rules::RULES_FORMAT`, on iptables jumps and the nftables table), which the
//! dataplane's check reads back: the first scan after the upgrade finds rules of another
//! format (or rules that differ from what this release computes) and replaces them in place,
//! atomically per table: the transition removes every `MESHCAP_` chain and jump it finds,
//! whatever release wrote them, so nothing is duplicated or lost; the record is then rewritten
//! in the current format. Rules of a newer format (a rollback) are replaced the same way: the
//! running release's format is the one kept.
//!
//! Limits (documented, not hidden): records written before the model inputs were stored
//! cannot be recomputed and are skipped (logged once), as are Linkerd and Kuma pods whose
//! records predate format 3 (no front-end settings). Pods started before the plugin was
//! installed have no record at all; [`super::adopt`] finds them in the runtime's libcni cache
//! and runs the plugin's ADD for them, after which they have a record and are repaired here
//! like any other. The eBPF fast path registration is not repaired here.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use meshcap_dataplane::{Dataplane, DataplaneError, PodNetns};
use meshcap_fastpath::PinDir;
use meshcap_model::mesh::istio::SpecSettings;
use meshcap_model::mesh::{self, FrontEnd, Mesh};
use meshcap_model::{Annotations, Families, RedirectModel};
use meshcap_records::{self as state, AttachmentRecord, StateDir};

use super::metrics::Metrics;

/// What one record's check came to.
#[derive(Debug)]
enum Verdict {
    InSync,
    Repaired(Vec<String>),
    /// The runtime removed the namespace's pin: nothing to repair, and the record is stale
    /// unless a DEL is about to remove it.
    NamespaceGone(&'static str),
    /// The namespace is gone, or is another one now, or cannot be seen from here; or the
    /// record changed or went away while it was checked: nothing to do.
    Gone(&'static str),
    Unrepairable(String),
    Failed(String),
}

pub struct Repairer {
    state: StateDir,
    dataplane: Dataplane,
    /// The fast path's pins (`--pin-dir`), where a reclaimed pod's entries are removed.
    pin_dir: PathBuf,
    /// Records already reported as unrepairable (logged once, not every scan).
    reported: HashSet<PathBuf>,
    /// Records whose namespace the last scan found gone: reclaimed if this one does too.
    namespace_gone: HashSet<PathBuf>,
}

impl Repairer {
    pub fn new(state_root: &Path, pin_dir: &Path) -> Repairer {
        Repairer {
            pin_dir: pin_dir.to_owned(),
            namespace_gone: HashSet::new(),
            state: StateDir::new(state_root),
            // The plugin's defaults; the per-namespace lock (a flock on the namespace) keeps each
            // check and apply from interleaving with the plugin's. Repairs run restores, never
            // xtables templates: they are rare and off the pod-start path, and a node whose
            // plugin has `iptables_templates: false` gets no template from its agent either.
            dataplane: Dataplane::default().with_xtables_templates(false),
            reported: HashSet::new(),
        }
    }

    /// One pass over every network's records.
    pub fn scan(&mut self, metrics: &Metrics) {
        let mut attachments = 0u64;
        let mut seen = HashSet::new();
        let mut gone_now = HashSet::new();
        for network in self.networks() {
            // What a writer killed between its temp file and the rename left behind.
            match self.state.remove_stale_temps(&network) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%network, files = n, "removed stale temporary record files")
                }
                Err(e) => {
                    tracing::warn!(error = %e, %network, "cannot remove stale temporary record files")
                }
            }
            let entries = match self.state.list(&network) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, %network, "cannot list attachment records");
                    continue;
                }
            };
            for entry in entries.into_iter().filter(|e| e.key.is_some()) {
                let record = match state::read_record(&entry.path) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        if self.reported.insert(entry.path.clone()) {
                            tracing::warn!(error = %e, "skipping an unreadable attachment record");
                        }
                        seen.insert(entry.path);
                        continue;
                    }
                };
                let verdict = self.check_one(&entry.path, &record);
                if let Verdict::NamespaceGone(why) = verdict {
                    if self.namespace_gone.contains(&entry.path)
                        && self.reclaim(&entry.path, &record, why, metrics)
                    {
                        continue;
                    }
                    gone_now.insert(entry.path.clone());
                }
                attachments += 1;
                self.report(&entry.path, &record, verdict, metrics);
                seen.insert(entry.path);
            }
        }
        self.reported.retain(|p| seen.contains(p));
        self.namespace_gone = gone_now;
        metrics.scanned(attachments);
    }

    /// Network directories under the state root (the outcome log and temp files are not).
    fn networks(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.state.root()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    fn check_one(&self, path: &Path, rec: &AttachmentRecord) -> Verdict {
        let ns = match PodNetns::open(&rec.netns) {
            Ok(ns) => ns,
            Err(DataplaneError::NetnsVanished { .. }) if pin_removed(&rec.netns) => {
                return Verdict::NamespaceGone("namespace is gone")
            }
            Err(DataplaneError::NetnsVanished { .. }) => {
                return Verdict::Gone("namespace is gone, or not visible to the agent")
            }
            Err(e) => return Verdict::Failed(format!("opening the namespace: {e}")),
        };
        if let (Some(dev), Some(ino)) = (rec.netns_dev, rec.netns_ino) {
            if (ns.dev(), ns.ino()) != (dev, ino) {
                return Verdict::Gone("the path names another namespace than ADD captured");
            }
        }
        // The record is read again, and the rules checked, repaired and recorded, under the
        // namespace's lock, which ADD and DEL hold while they change rules and record: a DEL
        // either ran before (no record: nothing to repair) or waits until the repair is done
        // (and removes what it put back).
        let locked = match self.dataplane.lock(&ns) {
            Ok(l) => l,
            Err(e) => return Verdict::Failed(format!("locking the namespace: {e}")),
        };
        let mut rec = match state::read_record(path) {
            Ok(Some(now)) if same_attachment(&now, rec) => now,
            Ok(Some(_)) => return Verdict::Gone("the attachment was set up again meanwhile"),
            Ok(None) => return Verdict::Gone("DEL removed the attachment"),
            Err(e) => return Verdict::Failed(format!("reading the record again: {e}")),
        };
        let Some(annotations) = rec.annotations.clone() else {
            return Verdict::Unrepairable(
                "the record predates stored model inputs (written by an older plugin)".into(),
            );
        };
        let model = recompute(&rec, &annotations).map(|mut m| {
            // The families ADD installed (an Istio pod's from its prevResult).
            m.families = Families::from_names(&rec.families);
            m
        });
        let rulesets = match model {
            Ok(m) => m.rulesets(),
            Err(why) => return Verdict::Unrepairable(why),
        };
        let backend = rec.mode.backend();
        let details = match locked.check(backend, &rulesets) {
            Ok(()) if rec.format < state::RECORD_FORMAT => {
                // A record of an older release whose rules are already this release's.
                rec.format = state::RECORD_FORMAT;
                return match self.state.write(&rec) {
                    Ok(_) => Verdict::InSync,
                    Err(e) => Verdict::Failed(format!("upgrading the record: {e}")),
                };
            }
            Ok(()) => return Verdict::InSync,
            Err(DataplaneError::Drift { details }) => details,
            Err(DataplaneError::NetnsVanished { .. }) => return Verdict::Gone("namespace is gone"),
            Err(e) => return Verdict::Failed(format!("check: {e}")),
        };
        let created = match locked.apply(backend, &rulesets) {
            Ok(c) => c,
            Err(DataplaneError::NetnsVanished { .. }) => return Verdict::Gone("namespace is gone"),
            Err(e) => return Verdict::Failed(format!("apply: {e}")),
        };
        // What the repair created (a table someone deleted with meshcap's rules in it) is
        // DEL's to remove as well.
        let before = rec.created.clone();
        rec.add_created(created);
        // A pod an older release set up (its record's format is older) now has this release's
        // rules: its record says so from now on.
        if rec.created != before || rec.format < state::RECORD_FORMAT {
            rec.format = state::RECORD_FORMAT;
            if let Err(e) = self.state.write(&rec) {
                return Verdict::Failed(format!("recording what the repair created: {e}"));
            }
        }
        locked.settle();
        Verdict::Repaired(details)
    }

    fn report(&mut self, path: &Path, rec: &AttachmentRecord, verdict: Verdict, metrics: &Metrics) {
        let pod = pod_label(rec);
        match verdict {
            Verdict::InSync => {
                tracing::debug!(%pod, netns = %rec.netns.display(), "rules in place");
            }
            Verdict::Repaired(details) => {
                metrics.repaired();
                tracing::warn!(
                    %pod,
                    container_id = %rec.container_id,
                    ifname = %rec.ifname,
                    netns = %rec.netns.display(),
                    mode = rec.mode.as_str(),
                    drift = %details.join("; "),
                    "repaired the pod's capture rules in place"
                );
            }
            Verdict::NamespaceGone(why) | Verdict::Gone(why) => {
                tracing::debug!(%pod, netns = %rec.netns.display(), why, "not repairing");
            }
            Verdict::Unrepairable(why) => {
                if self.reported.insert(path.to_owned()) {
                    tracing::warn!(%pod, record = %path.display(), %why, "cannot repair this attachment");
                }
            }
            Verdict::Failed(error) => {
                metrics.repair_failed();
                tracing::warn!(%pod, netns = %rec.netns.display(), %error, "repair failed; retrying next scan");
            }
        }
    }
}

impl Repairer {
    /// Removes what outlives a pod's namespace when no DEL came for it, as DEL does for a
    /// namespace that is gone: the pod's fast-path entries, then the record. Only a record
    /// still as `seen` is reclaimed (one written again since belongs to a newer ADD), checked
    /// again right before each step. The namespace's journal and legacy lock files are left:
    /// they are named by its inode number, which the kernel soon gives to a new namespace
    /// whose files they would then be, and that namespace's ADD or DEL replaces or drops them.
    /// Returns whether the record is gone; what failed is logged and retried on the next scan.
    fn reclaim(&self, path: &Path, seen: &AttachmentRecord, why: &str, metrics: &Metrics) -> bool {
        let unchanged =
            || matches!(state::read_record(path), Ok(Some(now)) if same_attachment(&now, seen));
        if !unchanged() {
            return false;
        }
        let pod = pod_label(seen);
        if seen.ebpf_registered {
            match PinDir::new(&self.pin_dir).unregister_attachment(&seen.container_id, &seen.ifname)
            {
                Ok(_) => {}
                Err(e) if e.is_not_available() => {}
                Err(e) => {
                    tracing::warn!(%pod, error = %e, "cannot remove a stale pod's fast-path entries; retrying next scan");
                    return false;
                }
            }
            if !unchanged() {
                return false;
            }
        }
        match state::remove_file(path) {
            Ok(true) => {
                metrics.reclaimed();
                tracing::info!(
                    %pod,
                    container_id = %seen.container_id,
                    ifname = %seen.ifname,
                    netns = %seen.netns.display(),
                    why,
                    "no DEL came for a pod whose namespace is gone: removed its record"
                );
                true
            }
            // A DEL running at the same time removed it first.
            Ok(false) => true,
            Err(e) => {
                tracing::warn!(%pod, error = %e, "cannot remove a stale attachment record; retrying next scan");
                false
            }
        }
    }
}

/// The model ADD installed, recomputed from the record by the step ADD took
/// ([`FrontEnd::model`], whichever mesh the pod belongs to): its annotations and the front-end
/// settings it resolved. A record from before the settings were stored carries only the proxy
/// uid/gid: an Istio pod's settings are then those and Istio's defaults; a Linkerd or Kuma
/// pod's cannot be known, and it is never given Istio's rules.
fn recompute(rec: &AttachmentRecord, annotations: &Annotations) -> Result<RedirectModel, String> {
    let front_end = match rec.front_end() {
        Some(fe) => fe,
        None => {
            if let Some(other) = mesh::claims_by_annotations(annotations)
                .into_iter()
                .find(|m| *m != Mesh::Istio)
            {
                return Err(format!(
                    "the record of this {other} pod predates stored front-end settings (written by an older plugin)"
                ));
            }
            let mut s = SpecSettings::default();
            if let Some(uid) = rec.proxy_uid.filter(|id| *id != 0) {
                s.proxy_uids = vec![uid];
            }
            if let Some(gid) = rec.proxy_gid.filter(|id| *id != 0) {
                s.proxy_gids = vec![gid];
            }
            FrontEnd::Istio(s)
        }
    };
    let mut warnings = Vec::new();
    front_end
        .model(annotations, &mesh::read_node_file, &mut warnings)
        .map_err(|e| format!("recomputing the model: {e}"))
}

/// Whether a namespace path that no longer exists tells the agent the namespace is gone: a
/// runtime's pin (`/var/run/netns/cni-...`) whose directory the agent sees, and that the runtime
/// removed. A path under `/proc` names a process, which an agent in a container of its own
/// PID namespace may not see at all, and a pin directory the agent's container does not mount
/// shows nothing either: neither is taken as proof. (The shipped image has no directories of
/// its own where pins could be, only the host's mounts.)
fn pin_removed(netns: &Path) -> bool {
    !netns.starts_with("/proc") && netns.parent().is_some_and(Path::is_dir)
}

/// `namespace/name` of the record's pod for the log (`-` for what the runtime did not pass).
fn pod_label(rec: &AttachmentRecord) -> String {
    format!(
        "{}/{}",
        rec.pod_namespace.as_deref().unwrap_or("-"),
        rec.pod_name.as_deref().unwrap_or("-")
    )
}

/// Whether `now` (the record read under the lock) is still the attachment `seen` was.
fn same_attachment(now: &AttachmentRecord, seen: &AttachmentRecord) -> bool {
    now.netns == seen.netns && (now.netns_dev, now.netns_ino) == (seen.netns_dev, seen.netns_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_removed_pin_in_a_visible_directory_counts_as_a_gone_namespace() {
        let dir = std::env::temp_dir();
        assert!(pin_removed(&dir.join("cni-0a1b2c")));
        // A process's namespace, which the agent's own PID namespace may not show.
        assert!(!pin_removed(Path::new("/proc/4242/ns/net")));
        // A pin directory the agent does not see (not mounted into its container).
        assert!(!pin_removed(Path::new(
            "/meshcap-no-such-dir/netns/cni-0a1b2c"
        )));
    }

    /// A record as the previous release wrote it for an Istio pod, with `annotations`.
    fn istio_record(annotations: &str) -> AttachmentRecord {
        serde_json::from_str(&format!(
            r#"{{"format":3,"network":"net","container_id":"c1","ifname":"eth0",
            "netns":"/run/netns/a","mode":"nftables","families":["ipv4"],"pod_namespace":"ns",
            "pod_name":"p","pod_uid":null,"ebpf_registered":false,"added_at_unix":1,
            "annotations":{annotations},"proxy_uid":1337,"istio_settings":{{"proxy_uids":[1337],
            "proxy_gids":[1337],"dns_capture":false,"invalid_drop":false,"dual_stack":false,
            "owner_groups_include":"*","owner_groups_exclude":"","ipv4_loopback_cidr":"127.0.0.1/32",
            "proxy_listen_port":15001,"proxy_inbound_listen_port":15006}}}}"#
        ))
        .unwrap()
    }

    // Case: a pod an earlier release set up from a value istio-cni refuses (a bare address,
    // which that release took for /32) cannot be recomputed: the agent leaves its rules and
    // names the annotation; the same pod written as istio-cni reads it recomputes.
    #[test]
    fn a_value_istio_refuses_leaves_the_record_unrepairable() {
        for (value, ok) in [("10.0.0.1", false), ("10.0.0.1/32", true)] {
            let annotations = format!(
                r#"{{"sidecar.istio.io/status":"{{}}","traffic.sidecar.istio.io/excludeOutboundIPRanges":"{value}"}}"#
            );
            let rec = istio_record(&annotations);
            let got = recompute(&rec, rec.annotations.as_ref().unwrap());
            match (got, ok) {
                (Ok(_), true) => {}
                (Err(why), false) => assert!(
                    why.contains("traffic.sidecar.istio.io/excludeOutboundIPRanges"),
                    "{why}"
                ),
                (got, _) => panic!("{value}: {got:?}"),
            }
        }
    }
}

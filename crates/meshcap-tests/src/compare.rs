//! Runs the flow matrix per mode and compares the modes.
//!
//! Every mode gets its own node (so modes run in parallel and never see each other's rules),
//! one pod per [`PodSpec`] through a `bridge` -> `meshcap-cni` chain configured for the mode,
//! and every flow of the matrix. Each observed outcome is checked against the flow's
//! expectation, and every mode's outcomes against `iptables` mode's: docs/DESIGN.md promises they are
//! identical. [`Comparison::render_failures`] prints a table naming flow, mode and outcomes.
//!
//! Modes are data ([`Mode`]): adding `iptables+ebpf` is one more entry in [`all_modes`].
//!
//! A `+ebpf` mode runs with the process's shared node agent ([`crate::fastpath::shared`]) and
//! also checks the fast path itself ([`FastPathRun`]): every capturing pod was registered by
//! ADD, the node's redirected-bytes counter grew while the app-to-sidecar flows ran, and DEL
//! left no map entry naming a pod.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use meshcap_testkit::kube_api::{write_kubeconfig, FakeApi, TokenFile};
use serde_json::{json, Value};

use crate::fastpath::{Counters, PinDir};
use crate::flows::{run_flow, Expect, Flow, From, Outcome, PodSpec, Proto};
use crate::node::{Node, Pod};

/// A plugin configuration under test.
#[derive(Debug, Clone)]
pub struct Mode {
    /// Name in tables and namespace names (`iptables`, `nftables`, `iptables+ebpf`).
    pub name: String,
    /// Keys merged into meshcap's conflist entry.
    pub meshcap: Value,
}

impl Mode {
    /// Whether the mode turns the eBPF fast path on (`ebpf.enabled`).
    pub fn ebpf(&self) -> bool {
        self.meshcap["ebpf"]["enabled"] == Value::Bool(true)
    }

    /// The agent's pin directory the plugin uses in this mode (`ebpf.pin_dir`, else default).
    pub fn pin_dir(&self) -> PinDir {
        match self.meshcap["ebpf"]["pin_dir"].as_str() {
            Some(d) => PinDir::new(d),
            None => PinDir::default(),
        }
    }
}

/// The mode every other mode is compared with.
pub const REFERENCE_MODE: &str = "iptables";

/// Every known mode.
pub fn all_modes() -> Vec<Mode> {
    vec![
        Mode {
            name: "iptables".into(),
            meshcap: json!({"mode": "iptables"}),
        },
        Mode {
            name: "nftables".into(),
            meshcap: json!({"mode": "nftables"}),
        },
        Mode {
            name: "iptables+ebpf".into(),
            meshcap: json!({"mode": "iptables", "ebpf": {"enabled": true}}),
        },
        Mode {
            name: "nftables+ebpf".into(),
            meshcap: json!({"mode": "nftables", "ebpf": {"enabled": true}}),
        },
    ]
}

/// The modes to run: env `MESHCAP_E2E_MODES` (comma-separated names), default
/// `iptables,nftables`.
pub fn selected_modes() -> Vec<Mode> {
    modes_from_env("iptables,nftables")
}

/// `modes` without the `+ebpf` ones when the fast path cannot run here; `left_out` is told
/// each mode left out and why.
pub fn runnable(modes: Vec<Mode>, mut left_out: impl FnMut(&Mode, &str)) -> Vec<Mode> {
    modes
        .into_iter()
        .filter(|m| {
            if !m.ebpf() {
                return true;
            }
            let why =
                crate::fastpath::missing_prerequisite().or_else(|| crate::fastpath::shared().err());
            match why {
                None => true,
                Some(why) => {
                    left_out(m, &why);
                    false
                }
            }
        })
        .collect()
}

/// The modes of the flow matrix and the demo: env `MESHCAP_E2E_MODES`, default
/// `iptables,nftables,iptables+ebpf`.
pub fn matrix_modes() -> Vec<Mode> {
    modes_from_env("iptables,nftables,iptables+ebpf")
}

fn modes_from_env(default: &str) -> Vec<Mode> {
    let wanted = std::env::var("MESHCAP_E2E_MODES").unwrap_or_else(|_| default.into());
    let all = all_modes();
    wanted
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|n| all.iter().find(|m| m.name == n).cloned())
        .filter(|m| crate::kernel_features::require(&format!("mode {}", m.name), &m.features()))
        .collect()
}

impl Mode {
    /// The kernel features a mode relies on (the flow matrix includes TPROXY pods). A kernel
    /// without one drops the mode by name (and fails under CI=true).
    pub fn features(&self) -> Vec<crate::kernel_features::Feature> {
        use crate::kernel_features::Feature;
        // iptables mode uses the nft-backed flavour unless legacy rules exist.
        let mut needs = vec![Feature::Nftables];
        needs.push(if self.meshcap["mode"] == "nftables" {
            Feature::NftTproxy
        } else {
            Feature::XtTproxy
        });
        if self.ebpf() {
            needs.extend([Feature::Sockmap, Feature::CgroupV2]);
        }
        needs
    }
}

/// One flow's result in one mode.
#[derive(Debug, Clone)]
pub struct FlowResult {
    pub flow: Flow,
    pub expected: Outcome,
    pub observed: Outcome,
}

/// One mode's run of the matrix.
#[derive(Debug, Clone)]
pub struct ModeRun {
    pub mode: String,
    pub results: Vec<FlowResult>,
    /// What the fast path did, in a `+ebpf` mode.
    pub fastpath: Option<FastPathRun>,
}

/// The fast path's side of a `+ebpf` mode's run.
#[derive(Debug, Clone)]
pub struct FastPathRun {
    pub pods: Vec<PodFastPath>,
    /// Node-wide counters before the first and after the last flow (other tests' traffic may
    /// add to them; they only ever grow).
    pub before: Counters,
    pub after: Counters,
    /// Flows from an app process captured to the sidecar's 15001 (TCP), as expected.
    pub app_to_sidecar_flows: usize,
}

/// One pod's registration with the fast path.
#[derive(Debug, Clone)]
pub struct PodFastPath {
    pub pod: String,
    /// The netns cookie of the pod's namespace, when its ADD succeeded.
    pub cookie: Option<u64>,
    /// Whether some flow of the pod expects capture (then ADD must have registered it).
    pub capturing: bool,
    /// Registered after ADD (looked up by netns cookie in the pinned pod map).
    pub registered: bool,
    /// When registered with another proxy than the pod's mesh runs (uid, outbound and inbound
    /// capture ports): what the entry says and what the pod's proxy is.
    pub wrong_proxy: Option<String>,
    /// Map entries naming the pod (pods, sockets, pending apps, connects) after DEL.
    pub entries_after_del: [usize; 4],
}

impl FastPathRun {
    /// What is wrong with the fast path in this run.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.pods {
            if p.capturing != p.registered {
                out.push(format!(
                    "pod {}: {} after ADD",
                    p.pod,
                    if p.registered {
                        "registered with the fast path but captures nothing"
                    } else {
                        "captures but was not registered with the fast path"
                    }
                ));
            }
            if let Some(wrong) = &p.wrong_proxy {
                out.push(format!("pod {}: {wrong}", p.pod));
            }
            if p.entries_after_del != [0; 4] {
                out.push(format!(
                    "pod {}: DEL left map entries (pods, socks, apps, connects) {:?}",
                    p.pod, p.entries_after_del
                ));
            }
        }
        if self.app_to_sidecar_flows > 0 && self.redirected_bytes() == 0 {
            out.push(format!(
                "{} app->sidecar flows ran but sk_msg redirected no bytes ({:?} -> {:?})",
                self.app_to_sidecar_flows, self.before, self.after
            ));
        }
        out
    }

    /// Growth of the node's redirected-bytes counter during the run.
    pub fn redirected_bytes(&self) -> u64 {
        self.after
            .redirected_bytes
            .saturating_sub(self.before.redirected_bytes)
    }

    /// One line for the test log.
    pub fn summary(&self) -> String {
        let capturing = self.pods.iter().filter(|p| p.capturing).count();
        let registered = self.pods.iter().filter(|p| p.registered).count();
        let clean = self
            .pods
            .iter()
            .filter(|p| p.entries_after_del == [0; 4])
            .count();
        format!(
            "{registered}/{capturing} capturing pods registered; {} app->sidecar flows; node counters: +{} bytes in +{} msgs redirected, +{} app / +{} sidecar sockets paired, +{} proxy connections skipped, +{} bytes passed; DEL left no entries for {clean}/{} pods",
            self.app_to_sidecar_flows,
            self.redirected_bytes(),
            self.after.redirected_msgs.saturating_sub(self.before.redirected_msgs),
            self.after.app_sockets.saturating_sub(self.before.app_sockets),
            self.after.sidecar_sockets.saturating_sub(self.before.sidecar_sockets),
            self.after.proxy_skipped.saturating_sub(self.before.proxy_skipped),
            self.after.passed_bytes.saturating_sub(self.before.passed_bytes),
            self.pods.len(),
        )
    }
}

/// How many flows run at once within a mode.
const FLOW_PARALLELISM: usize = 6;

/// Build a node for `mode`, ADD every pod, run every flow, tear it all down. A pod whose ADD
/// fails makes its flows `Failed("ADD failed: ...")` rather than aborting the run.
pub fn run_mode(prefix: &str, mode: &Mode, pods: &[PodSpec], flows: &[Flow]) -> Result<ModeRun> {
    let tag: String = mode
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let pin_dir = mode.pin_dir();
    if mode.ebpf() && pin_dir.path() == std::path::Path::new(crate::fastpath::DEFAULT_PIN_DIR) {
        crate::fastpath::shared().map_err(|e| anyhow::anyhow!("mode {}: {e}", mode.name))?;
    }
    let node = Node::new(&format!("{prefix}-{tag}"))?;
    let chain = node.chain(&mode.meshcap);
    // Pods whose settings live in their spec are read from a stand-in API server, listening
    // in the namespace the plugins run in.
    let api = if pods.iter().any(|p| p.spec.is_some()) {
        let ns = node.ns.clone();
        let api = FakeApi::builder()
            .inside(move |f| ns.run(f).map_err(std::io::Error::other))
            .start()
            .context("start the stand-in API server")?;
        let kubeconfig = write_kubeconfig(
            node.env.scratch.path(),
            &api.url(),
            "meshcap-e2e-token",
            TokenFile::Absolute,
        )
        .context("write the kubeconfig")?;
        Some((api, kubeconfig))
    } else {
        None
    };
    let mut up: BTreeMap<&str, std::result::Result<Pod, String>> = BTreeMap::new();
    for spec in pods {
        // The pod's own node defaults or API server, on top of the mode's configuration.
        let extra = spec.plugin_extra(api.as_ref().map(|(_, kubeconfig)| kubeconfig.as_path()));
        let chain = match extra.as_object() {
            Some(e) if !e.is_empty() => {
                let mut config = mode.meshcap.clone();
                for (k, v) in e {
                    config[k] = v.clone();
                }
                node.chain(&config)
            }
            _ => chain.clone(),
        };
        let pod = (|| -> Result<Pod> {
            let mut pod = node.unattached_pod(spec.name, &chain, spec.annotations())?;
            if let (Some((api, _)), Some(p)) = (&api, spec.api_pod()) {
                api.insert(&pod.att.k8s_namespace, &pod.att.k8s_pod, p);
            }
            pod.add()
                .with_context(|| format!("ADD pod {}", spec.name))?;
            pod.start_servers_as_ids(
                spec.proxy.uid,
                spec.proxy.gid,
                spec.proxy.tcp_ports,
                spec.proxy.udp_ports,
            )?;
            Ok(pod)
        })()
        .map_err(|e| format!("ADD failed: {e:#}"));
        up.insert(spec.name, pod);
    }
    // The fast path: who got registered, and the counters around the flows.
    let mut fastpath = None;
    if mode.ebpf() {
        let mut checks = Vec::new();
        for spec in pods {
            // Every mesh's pod is registered, with its own proxy uid and capture ports.
            let capturing = spec.proxy.fast_path
                && flows.iter().any(|f| {
                    f.pod == spec.name && matches!(f.expect, Expect::Out | Expect::In | Expect::Dns)
                });
            let cookie = match up.get(spec.name) {
                Some(Ok(pod)) => Some(crate::fastpath::cookie(&pod.ns)?),
                _ => None,
            };
            let entry = match cookie {
                Some(c) => pin_dir.lookup(c)?,
                None => None,
            };
            let own = (
                spec.proxy.exempt_uid(),
                spec.proxy.outbound,
                spec.proxy.inbound,
            );
            let wrong_proxy = entry
                .as_ref()
                .map(|e| (e.proxy_uid, e.outbound_port, e.inbound_port))
                .filter(|got| *got != own)
                .map(|got| {
                    format!(
                        "registered with proxy (uid, outbound port, inbound port) {got:?}, the pod's {} proxy is {own:?}",
                        spec.proxy.mesh
                    )
                });
            checks.push(PodFastPath {
                pod: spec.name.to_string(),
                cookie,
                capturing,
                registered: entry.is_some(),
                wrong_proxy,
                entries_after_del: [0; 4],
            });
        }
        fastpath = Some(FastPathRun {
            pods: checks,
            before: pin_dir.counters()?,
            after: Counters::default(),
            app_to_sidecar_flows: 0,
        });
    }
    let results = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..FLOW_PARALLELISM {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(flow) = flows.get(i) else { break };
                let observed = match up.get(flow.pod) {
                    Some(Ok(pod)) => run_flow(&node, pod, flow, &tag)
                        .unwrap_or_else(|e| Outcome::Failed(format!("harness: {e:#}"))),
                    Some(Err(e)) => Outcome::Failed(e.clone()),
                    None => Outcome::Failed(format!("no pod spec {}", flow.pod)),
                };
                results.lock().unwrap().push((
                    i,
                    FlowResult {
                        flow: flow.clone(),
                        expected: flow.expected(),
                        observed,
                    },
                ));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    if let Some(fp) = fastpath.as_mut() {
        fp.after = pin_dir.counters()?;
        fp.app_to_sidecar_flows = results
            .iter()
            .filter(|(_, r)| {
                r.flow.expect == Expect::Out
                    && r.flow.proto == Proto::Tcp
                    && matches!(r.flow.from, From::App | From::User)
                    && r.observed == r.expected
            })
            .count();
    }
    // Dropping the pods DELs them.
    drop(up);
    if let Some(fp) = fastpath.as_mut() {
        for check in &mut fp.pods {
            if let Some(c) = check.cookie {
                check.entries_after_del = pin_dir.entries_for(c)?;
            }
        }
    }
    Ok(ModeRun {
        mode: mode.name.clone(),
        results: results.into_iter().map(|(_, r)| r).collect(),
        fastpath,
    })
}

/// Run every mode in parallel (each on its own node).
pub fn run_modes(
    prefix: &str,
    modes: &[Mode],
    pods: &[PodSpec],
    flows: &[Flow],
) -> Result<Comparison> {
    let runs: Vec<Result<ModeRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = modes
            .iter()
            .map(|m| s.spawn(move || run_mode(prefix, m, pods, flows)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("mode thread panicked")))
            })
            .collect()
    });
    Ok(Comparison {
        runs: runs.into_iter().collect::<Result<Vec<_>>>()?,
    })
}

/// The runs of several modes over the same flows.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub runs: Vec<ModeRun>,
}

/// A flow whose outcome is wrong somewhere.
#[derive(Debug, Clone)]
pub struct Failure {
    pub flow: String,
    pub mode: String,
    pub expected: String,
    pub observed: String,
    /// The reference mode's outcome, when the failure is a difference between modes.
    pub reference: Option<String>,
}

impl Comparison {
    fn reference(&self) -> Option<&ModeRun> {
        self.runs.iter().find(|r| r.mode == REFERENCE_MODE)
    }

    /// Flows whose outcome differs from the expectation, per mode.
    pub fn expectation_failures(&self) -> Vec<Failure> {
        let mut out = Vec::new();
        for run in &self.runs {
            for r in &run.results {
                if r.observed != r.expected {
                    out.push(Failure {
                        flow: r.flow.name.into(),
                        mode: run.mode.clone(),
                        expected: r.expected.to_string(),
                        observed: r.observed.to_string(),
                        reference: None,
                    });
                }
            }
        }
        out
    }

    /// Flows whose outcome in some mode differs from the reference (`iptables`) mode's.
    pub fn mode_differences(&self) -> Vec<Failure> {
        let Some(reference) = self.reference() else {
            return vec![];
        };
        let mut out = Vec::new();
        for run in self.runs.iter().filter(|r| r.mode != REFERENCE_MODE) {
            for (r, base) in run.results.iter().zip(&reference.results) {
                if r.observed != base.observed {
                    out.push(Failure {
                        flow: r.flow.name.into(),
                        mode: run.mode.clone(),
                        expected: r.expected.to_string(),
                        observed: r.observed.to_string(),
                        reference: Some(base.observed.to_string()),
                    });
                }
            }
        }
        out
    }

    /// What is wrong with the fast path, per `+ebpf` mode.
    pub fn fastpath_failures(&self) -> Vec<(String, String)> {
        self.runs
            .iter()
            .filter_map(|r| r.fastpath.as_ref().map(|f| (r, f)))
            .flat_map(|(r, f)| f.failures().into_iter().map(|e| (r.mode.clone(), e)))
            .collect()
    }

    /// Whether every flow met its expectation, every mode matched the reference and the fast
    /// path did its part in the `+ebpf` modes.
    pub fn ok(&self) -> bool {
        self.expectation_failures().is_empty()
            && self.mode_differences().is_empty()
            && self.fastpath_failures().is_empty()
    }

    /// One line per `+ebpf` mode: registrations, counters, entries after DEL.
    pub fn render_fastpath(&self) -> String {
        self.runs
            .iter()
            .filter_map(|r| {
                r.fastpath
                    .as_ref()
                    .map(|f| format!("fast path in {}: {}\n", r.mode, f.summary()))
            })
            .collect()
    }

    /// Per mode, a table: flow, from, to, outcome, and a mark where it misses the expectation.
    pub fn render_outcomes(&self) -> String {
        let mut out = String::new();
        for run in &self.runs {
            out.push_str(&format!("\n== mode {} ==\n", run.mode));
            let rows: Vec<Vec<String>> = run
                .results
                .iter()
                .map(|r| {
                    vec![
                        r.flow.name.to_string(),
                        format!(
                            "{}/{}",
                            r.flow.pod,
                            r.flow.from.label_for(&crate::flows::profile_of(r.flow.pod))
                        ),
                        r.flow.describe_to(),
                        r.observed.to_string(),
                        if r.observed == r.expected {
                            "ok".into()
                        } else {
                            format!("MISMATCH, expected {}", r.expected)
                        },
                    ]
                })
                .collect();
            out.push_str(&table(
                &["flow", "pod/from", "to", "outcome", "check"],
                &rows,
            ));
        }
        out
    }

    /// Every mode side by side, one row per flow.
    pub fn render_side_by_side(&self) -> String {
        let mut header = vec!["flow".to_string(), "expected".to_string()];
        header.extend(self.runs.iter().map(|r| r.mode.clone()));
        let n = self.runs.first().map(|r| r.results.len()).unwrap_or(0);
        let rows: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let first = &self.runs[0].results[i];
                let mut row = vec![first.flow.name.to_string(), first.expected.to_string()];
                for run in &self.runs {
                    let r = &run.results[i];
                    row.push(if r.observed == r.expected {
                        "ok".into()
                    } else {
                        r.observed.to_string()
                    });
                }
                row
            })
            .collect();
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&h, &rows)
    }

    /// The failure tables: expectations missed, and differences from the reference mode.
    pub fn render_failures(&self) -> String {
        let mut out = String::new();
        let e = self.expectation_failures();
        if !e.is_empty() {
            out.push_str(&format!(
                "\n{} flow(s) missed their expectation:\n",
                e.len()
            ));
            let rows: Vec<Vec<String>> = e
                .iter()
                .map(|f| {
                    vec![
                        f.flow.clone(),
                        f.mode.clone(),
                        f.expected.clone(),
                        f.observed.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["flow", "mode", "expected", "observed"], &rows));
        }
        let d = self.mode_differences();
        if !d.is_empty() {
            out.push_str(&format!(
                "\n{} flow(s) differ from {REFERENCE_MODE} mode:\n",
                d.len()
            ));
            let rows: Vec<Vec<String>> = d
                .iter()
                .map(|f| {
                    vec![
                        f.flow.clone(),
                        f.mode.clone(),
                        f.observed.clone(),
                        f.reference.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            let refcol = format!("in {REFERENCE_MODE}");
            out.push_str(&table(&["flow", "mode", "observed", &refcol], &rows));
        }
        let f = self.fastpath_failures();
        if !f.is_empty() {
            out.push_str(&format!("\n{} eBPF fast path failure(s):\n", f.len()));
            for (mode, why) in f {
                out.push_str(&format!("{mode}: {why}\n"));
            }
        }
        out
    }
}

/// A plain-text table with aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push_str(&format!("{c:<w$}  "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::flows;

    fn run(mode: &str, observe: impl Fn(&Flow) -> Outcome) -> ModeRun {
        ModeRun {
            mode: mode.into(),
            fastpath: None,
            results: flows()
                .into_iter()
                .take(3)
                .map(|f| FlowResult {
                    expected: f.expected(),
                    observed: observe(&f),
                    flow: f,
                })
                .collect(),
        }
    }

    #[test]
    fn identical_modes_meeting_expectations_pass() {
        let cmp = Comparison {
            runs: vec![
                run("iptables", Flow::expected),
                run("nftables", Flow::expected),
            ],
        };
        assert!(cmp.ok());
        assert!(cmp.render_failures().is_empty());
    }

    #[test]
    fn a_mode_differing_from_iptables_is_named_in_the_table() {
        let odd = |f: &Flow| {
            if f.name == "out-v6" {
                Outcome::Failed("timeout".into())
            } else {
                f.expected()
            }
        };
        let cmp = Comparison {
            runs: vec![run("iptables", Flow::expected), run("nftables", odd)],
        };
        assert!(!cmp.ok());
        let d = cmp.mode_differences();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].flow.as_str(), d[0].mode.as_str()),
            ("out-v6", "nftables")
        );
        let text = cmp.render_failures();
        assert!(text.contains("differ from iptables mode"), "{text}");
        assert!(
            text.contains("out-v6")
                && text.contains("failed: timeout")
                && text.contains("captured@15001 orig=R6:80"),
            "{text}"
        );
    }

    #[test]
    fn every_mode_missing_an_expectation_is_reported_even_when_modes_agree() {
        let wrong = |f: &Flow| Outcome::Direct {
            server: "remote".into(),
            at: format!("{}:{}", f.to.label(), f.port),
        };
        let cmp = Comparison {
            runs: vec![run("iptables", wrong), run("nftables", wrong)],
        };
        assert!(cmp.mode_differences().is_empty());
        assert_eq!(cmp.expectation_failures().len(), 6);
        assert!(!cmp.ok());
    }

    #[test]
    fn fast_path_failures_name_the_pod_and_the_counters() {
        let pod = |name: &str, capturing, registered, left| PodFastPath {
            pod: name.into(),
            cookie: Some(1),
            capturing,
            registered,
            wrong_proxy: None,
            entries_after_del: left,
        };
        let mut run = FastPathRun {
            pods: vec![
                pod("default", true, true, [0; 4]),
                pod("plain", false, false, [0; 4]),
            ],
            before: Counters::default(),
            after: Counters {
                redirected_bytes: 10,
                ..Counters::default()
            },
            app_to_sidecar_flows: 3,
        };
        assert!(run.failures().is_empty(), "{:?}", run.failures());
        run.pods.push(pod("dns", true, false, [0, 1, 0, 0]));
        run.after.redirected_bytes = 0;
        let f = run.failures().join("\n");
        assert!(
            f.contains("pod dns: captures but was not registered"),
            "{f}"
        );
        assert!(f.contains("pod dns: DEL left map entries"), "{f}");
        assert!(f.contains("redirected no bytes"), "{f}");
        let cmp = Comparison {
            runs: vec![ModeRun {
                mode: "iptables+ebpf".into(),
                results: vec![],
                fastpath: Some(run),
            }],
        };
        assert!(!cmp.ok());
        assert!(cmp.render_failures().contains("iptables+ebpf: pod dns"));
    }

    #[test]
    fn modes_are_selected_by_name() {
        let names: Vec<String> = all_modes().into_iter().map(|m| m.name).collect();
        assert!(
            names.contains(&"iptables".to_string()) && names.contains(&"iptables+ebpf".to_string())
        );
        assert_eq!(all_modes()[0].name, REFERENCE_MODE);
        let ebpf: Vec<bool> = all_modes().iter().map(Mode::ebpf).collect();
        assert_eq!(ebpf, [false, false, true, true]);
    }
}

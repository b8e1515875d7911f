//! The agent's Prometheus metrics, served as text format 0.0.4 on `GET /metrics`.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `meshcap_repairs_total` | counter | pods whose drifted rules the agent re-applied |
//! | `meshcap_repair_failures_total` | counter | repair attempts that failed (retried next scan) |
//! | `meshcap_repair_scans_total` | counter | passes over the attachment records |
//! | `meshcap_attachments` | gauge | attachment records seen by the last scan |
//! | `meshcap_adoptions_total` | counter | pods set up before meshcap was installed whose capture the agent installed in place |
//! | `meshcap_adoption_failures_total` | counter | adoption attempts that failed (retried next scan) |
//! | `meshcap_config_rewrites_total` | counter | times another component dropped or moved meshcap's CNI entry and the agent put it back |
//! | `meshcap_config_restore_failures_total` | counter | failed attempts to put the entry back |
//! | `meshcap_cni_invocations_total{command,code}` | counter | plugin invocations by command and CNI code (0: success) |
//! | `meshcap_cni_adds_total` | counter | plugin ADDs |
//! | `meshcap_cni_failures_total{command,code}` | counter | failed plugin invocations by CNI code |
//! | `meshcap_cni_add_duration_seconds{mode}` | histogram | time the plugin spent on each successful ADD, from its start to its result (the exec itself not included), by mode |
//! | `meshcap_fastpath_available` | gauge | 1 when the eBPF fast path is installed on the node |
//! | `meshcap_fastpath_pods` | gauge | pods registered with the fast path |
//! | `meshcap_fastpath_redirected_bytes_total` | counter | bytes sk_msg delivered socket to socket |
//!
//! The plugin is a short-lived process, so it cannot hold counters: each invocation appends
//! one line to the outcome log in its state directory (`meshcap_records::record_outcome`:
//! command, code, and the mode and the time it spent)
//! and the agent tails that file on every scan and scrape. The agent rotates it past
//! [`ROTATE_AT`] bytes; a plugin that opened the file just before a rotation and writes just
//! after the agent's final read of it loses its one line (a window of microseconds).
//! Counters start from the log's contents when the agent starts, as Prometheus expects of a
//! restarted target.
//!
//! The HTTP side is deliberately small: `GET /metrics`, `/healthz` (the agent runs) and
//! `/readyz` (the plugin is installed and chained last), a thread per connection (at most
//! [`MAX_CONNECTIONS`]), a bounded request head and a deadline for the whole request, so idle
//! or slow clients never hold up a scrape or a probe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meshcap_fastpath::PinDir;
use meshcap_records::{parse_outcome_line, OUTCOMES_FILE};

use super::Stop;

/// Rotate the outcome log past this size (about 100 000 invocations).
const ROTATE_AT: u64 = 1 << 20;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The whole request (head read and reply write) must be done within this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed without a reply. Far more than scrapers and
/// probes ever open, so that a crowd of idle clients (each cut off after [`REQUEST_DEADLINE`])
/// does not turn a scrape away; below the common soft limit of 1024 open files.
const MAX_CONNECTIONS: usize = 512;
/// Stack of a connection's thread: it parses a request head and writes a reply.
const CONNECTION_STACK: usize = 128 * 1024;

/// Upper bounds (seconds) of the ADD latency histogram's buckets: a fast ADD takes about a
/// millisecond, one in iptables mode several, one on a busy node tens.
const ADD_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// A Prometheus histogram: counts per bucket (not cumulative), the sum and the count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; ADD_BUCKETS.len()],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, micros: u64) {
        let seconds = micros as f64 / 1e6;
        if let Some(i) = ADD_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i] += 1;
        }
        self.sum_us += micros;
        self.count += 1;
    }
}

#[derive(Default)]
struct Counters {
    repairs: u64,
    repair_failures: u64,
    scans: u64,
    attachments: u64,
    adoptions: u64,
    adoption_failures: u64,
    config_rewrites: u64,
    config_restore_failures: u64,
    /// (command, code) -> count.
    cni: BTreeMap<(String, u32), u64>,
    /// mode -> latency of successful ADDs.
    add_latency: BTreeMap<String, Histogram>,
}

/// Where the agent is in the outcome log.
struct Tail {
    path: PathBuf,
    /// Inode of the file `offset` belongs to.
    ino: Option<u64>,
    offset: u64,
}

pub struct Metrics {
    counters: Mutex<Counters>,
    tail: Mutex<Tail>,
    pin_dir: PathBuf,
}

impl Metrics {
    pub fn new(state_root: &Path, pin_dir: &Path) -> Metrics {
        Metrics {
            counters: Mutex::default(),
            tail: Mutex::new(Tail {
                path: state_root.join(OUTCOMES_FILE),
                ino: None,
                offset: 0,
            }),
            pin_dir: pin_dir.to_owned(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn repaired(&self) {
        self.with(|c| c.repairs += 1);
    }

    pub fn repair_failed(&self) {
        self.with(|c| c.repair_failures += 1);
    }

    /// A scan finished having seen `attachments` records.
    pub fn scanned(&self, attachments: u64) {
        self.with(|c| {
            c.scans += 1;
            c.attachments = attachments;
        });
        self.read_outcomes();
    }

    pub fn adopted(&self) {
        self.with(|c| c.adoptions += 1);
    }

    pub fn adoption_failed(&self) {
        self.with(|c| c.adoption_failures += 1);
    }

    pub fn config_rewrite_seen(&self) {
        self.with(|c| c.config_rewrites += 1);
    }

    pub fn config_restore_failed(&self) {
        self.with(|c| c.config_restore_failures += 1);
    }

    /// Reads the outcome log's new lines (and rotates it when it grew large).
    fn read_outcomes(&self) {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mut file) = fs::File::open(&tail.path) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        if tail.ino != Some(meta.ino()) || meta.len() < tail.offset {
            // A new (or truncated) log: start at its beginning.
            tail.ino = Some(meta.ino());
            tail.offset = 0;
        }
        let consumed = self.consume(&mut file, tail.offset);
        if tail.offset + consumed >= ROTATE_AT {
            // Move it aside first so new lines go to a fresh file, then drain the old one.
            let aside = tail.path.with_extension("rotating");
            if fs::rename(&tail.path, &aside).is_ok() {
                self.consume(&mut file, tail.offset + consumed);
                let _ = fs::remove_file(&aside);
                tail.ino = None;
                tail.offset = 0;
                return;
            }
        }
        tail.offset += consumed;
    }

    /// Counts the complete lines from `offset`; returns the bytes consumed.
    fn consume(&self, file: &mut fs::File, offset: u64) -> u64 {
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut buf).is_err() {
            return 0;
        }
        // A line still being written (never in practice: each is one write) waits.
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&buf[..complete]);
        self.with(|c| {
            for line in text.lines().filter_map(parse_outcome_line) {
                *c.cni
                    .entry((line.command.to_owned(), line.code))
                    .or_default() += 1;
                if let (("ADD", 0), Some((mode, micros))) = ((line.command, line.code), line.timing)
                {
                    c.add_latency
                        .entry(mode.to_owned())
                        .or_default()
                        .observe(micros);
                }
            }
        });
        complete as u64
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.read_outcomes();
        let c = self.with(|c| {
            (
                c.repairs,
                c.repair_failures,
                c.scans,
                c.attachments,
                (c.adoptions, c.adoption_failures),
                c.config_rewrites,
                c.config_restore_failures,
                c.cni.clone(),
                c.add_latency.clone(),
            )
        });
        let (
            repairs,
            repair_failures,
            scans,
            attachments,
            (adoptions, adoption_failures),
            rewrites,
            restore_failures,
            cni,
            add_latency,
        ) = c;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        metric(
            "meshcap_repairs_total",
            "counter",
            "Pods whose drifted capture rules the agent re-applied.",
            &one(repairs),
        );
        metric(
            "meshcap_repair_failures_total",
            "counter",
            "Repair attempts that failed (retried on the next scan).",
            &one(repair_failures),
        );
        metric(
            "meshcap_repair_scans_total",
            "counter",
            "Passes over the attachment records.",
            &one(scans),
        );
        metric(
            "meshcap_attachments",
            "gauge",
            "Attachment records seen by the last scan.",
            &one(attachments),
        );
        metric(
            "meshcap_adoptions_total",
            "counter",
            "Pods set up before meshcap was installed whose capture rules the agent installed in place.",
            &one(adoptions),
        );
        metric(
            "meshcap_adoption_failures_total",
            "counter",
            "Adoption attempts that failed (retried on the next scan).",
            &one(adoption_failures),
        );
        metric("meshcap_config_rewrites_total", "counter", "Rewrites of the primary CNI config that dropped or moved meshcap's entry, undone by the agent.", &one(rewrites));
        metric(
            "meshcap_config_restore_failures_total",
            "counter",
            "Failed attempts to put meshcap's CNI entry back.",
            &one(restore_failures),
        );
        let label =
            |(command, code): &(String, u32)| format!("{{command=\"{command}\",code=\"{code}\"}}");
        let invocations: Vec<_> = cni.iter().map(|(k, v)| (label(k), *v)).collect();
        metric(
            "meshcap_cni_invocations_total",
            "counter",
            "meshcap-cni invocations by command and CNI result code (0: success).",
            &invocations,
        );
        let adds = cni
            .iter()
            .filter(|((cmd, _), _)| cmd == "ADD")
            .map(|(_, v)| v)
            .sum();
        metric(
            "meshcap_cni_adds_total",
            "counter",
            "meshcap-cni ADD invocations.",
            &one(adds),
        );
        let failures: Vec<_> = cni
            .iter()
            .filter(|((_, code), _)| *code != 0)
            .map(|(k, v)| (label(k), *v))
            .collect();
        metric(
            "meshcap_cni_failures_total",
            "counter",
            "Failed meshcap-cni invocations by command and CNI error code.",
            &failures,
        );

        let status = PinDir::new(&self.pin_dir).status(None).ok();
        let available = status.as_ref().is_some_and(|s| s.available.is_ok());
        let (pods, bytes) = status.filter(|_| available).map_or((0, 0), |s| {
            (s.registered_pods as u64, s.counters.redirected_bytes)
        });
        metric(
            "meshcap_fastpath_available",
            "gauge",
            "1 when the eBPF fast path is installed on this node.",
            &one(u64::from(available)),
        );
        metric(
            "meshcap_fastpath_pods",
            "gauge",
            "Pods registered with the eBPF fast path.",
            &one(pods),
        );
        metric(
            "meshcap_fastpath_redirected_bytes_total",
            "counter",
            "Bytes the fast path delivered socket to socket.",
            &one(bytes),
        );
        let name = "meshcap_cni_add_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time meshcap-cni spent on a successful ADD, from its start to its result (the exec not included), by mode.\n# TYPE {name} histogram"
        );
        for (mode, h) in &add_latency {
            let mut cumulative = 0;
            for (le, n) in ADD_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{mode=\"{mode}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{mode=\"{mode}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{{mode=\"{mode}\"}} {}",
                h.sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{mode=\"{mode}\"}} {}", h.count);
        }
        out
    }
}

/// Whether the node is ready for pods: the plugin is in the bin dir and chained last in the
/// primary CNI config. `Err` says what is missing (the body of a failing `/readyz`).
pub type Readiness = dyn Fn() -> Result<(), String> + Send + Sync;

/// Serves `GET /metrics`, `/healthz` and `/readyz` until `stop` is set (the caller then
/// connects once to wake accept). Each connection gets its own thread and a deadline for the
/// whole request, so an idle or slow client costs one thread for at most [`REQUEST_DEADLINE`]
/// and never delays another scrape; past [`MAX_CONNECTIONS`] in flight, new connections are
/// closed at once.
pub fn serve(listener: &TcpListener, metrics: &Arc<Metrics>, ready: &Arc<Readiness>, stop: &Stop) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.is_set() {
            return;
        }
        match conn {
            Ok(stream) => {
                if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    tracing::debug!("metrics endpoint busy; closing a connection");
                    continue;
                }
                let (metrics, ready, count) = (metrics.clone(), ready.clone(), in_flight.clone());
                let spawned = thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || {
                        if let Err(e) = respond(stream, &metrics, &*ready) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                        count.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread for a metrics connection");
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                stop.sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads the request head within the deadline: a client that sends a byte a second never
/// gets more than [`REQUEST_DEADLINE`] in total.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(head))
}

fn respond(mut stream: TcpStream, metrics: &Metrics, ready: &Readiness) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let Some(head) = read_head(&mut stream, deadline)? else {
        return reply(&mut stream, "431 Request Header Fields Too Large", "");
    };
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => reply(&mut stream, "200 OK", &metrics.render()),
        ("GET", "/healthz") => reply(&mut stream, "200 OK", "ok\n"),
        ("GET", "/readyz") => match ready() {
            Ok(()) => reply(&mut stream, "200 OK", "ready\n"),
            Err(why) => reply(&mut stream, "503 Service Unavailable", &format!("{why}\n")),
        },
        ("GET", _) => reply(
            &mut stream,
            "404 Not Found",
            "served: /metrics, /healthz, /readyz\n",
        ),
        _ => reply(&mut stream, "405 Method Not Allowed", ""),
    }
}

fn reply(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_tailed_and_rendered() {
        let dir =
            std::env::temp_dir().join(format!("meshcap-agent-metrics-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let m = Metrics::new(&dir, Path::new("/nonexistent/meshcap-pins"));
        meshcap_records::count_outcome(&dir, "ADD", 0);
        meshcap_records::count_outcome(&dir, "ADD", 100);
        let text = m.render();
        meshcap_records::count_outcome(&dir, "DEL", 0);
        let text2 = m.render();
        assert!(text.contains("meshcap_cni_adds_total 2\n"), "{text}");
        assert!(
            text.contains("meshcap_cni_failures_total{command=\"ADD\",code=\"100\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("meshcap_fastpath_available 0\n"), "{text}");
        assert!(
            text2.contains("meshcap_cni_invocations_total{command=\"DEL\",code=\"0\"} 1\n"),
            "{text2}"
        );
        assert!(text2.contains("meshcap_cni_adds_total 2\n"), "{text2}");
        assert!(text2.contains("meshcap_repairs_total 0\n"), "{text2}");
        // Timed lines feed the ADD latency histogram of their mode; failed ADDs do not.
        let ms = Duration::from_millis;
        meshcap_records::record_outcome(&dir, "ADD", 0, Some(("nftables", ms(1) / 2)));
        meshcap_records::record_outcome(&dir, "ADD", 0, Some(("nftables", ms(3))));
        meshcap_records::record_outcome(&dir, "ADD", 100, Some(("nftables", ms(9))));
        meshcap_records::record_outcome(&dir, "ADD", 0, Some(("iptables", ms(7))));
        meshcap_records::record_outcome(&dir, "DEL", 0, Some(("iptables", ms(20))));
        let hist = m.render();
        let _ = fs::remove_dir_all(&dir);
        for line in [
            "# TYPE meshcap_cni_add_duration_seconds histogram\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"nftables\",le=\"0.0005\"} 1\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"nftables\",le=\"0.002\"} 1\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"nftables\",le=\"0.004\"} 2\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"nftables\",le=\"+Inf\"} 2\n",
            "meshcap_cni_add_duration_seconds_sum{mode=\"nftables\"} 0.0035\n",
            "meshcap_cni_add_duration_seconds_count{mode=\"nftables\"} 2\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"iptables\",le=\"0.004\"} 0\n",
            "meshcap_cni_add_duration_seconds_bucket{mode=\"iptables\",le=\"0.008\"} 1\n",
            "meshcap_cni_add_duration_seconds_count{mode=\"iptables\"} 1\n",
        ] {
            assert!(hist.contains(line), "{line:?} missing from\n{hist}");
        }
        m.adopted();
        m.adoption_failed();
        m.adoption_failed();
        let text3 = m.render();
        assert!(text3.contains("meshcap_adoptions_total 1\n"), "{text3}");
        assert!(
            text3.contains("meshcap_adoption_failures_total 2\n"),
            "{text3}"
        );
    }

    #[test]
    fn a_large_outcome_log_is_rotated_without_losing_counts() {
        let dir = std::env::temp_dir().join(format!("meshcap-agent-rotate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let lines = (ROTATE_AT / 6 + 10) as usize;
        fs::write(dir.join(OUTCOMES_FILE), "ADD 0\n".repeat(lines)).unwrap();
        let m = Metrics::new(&dir, Path::new("/nonexistent/meshcap-pins"));
        let first = m.render();
        let rotated = !dir.join(OUTCOMES_FILE).exists();
        meshcap_records::count_outcome(&dir, "ADD", 0);
        let second = m.render();
        let _ = fs::remove_dir_all(&dir);
        assert!(first.contains(&format!("meshcap_cni_adds_total {lines}\n")));
        assert!(rotated, "the log was moved aside and drained");
        assert!(second.contains(&format!("meshcap_cni_adds_total {}\n", lines + 1)));
    }
}

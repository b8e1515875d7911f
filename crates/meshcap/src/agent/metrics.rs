//! The agent's Prometheus metrics, served in the Prometheus text format (0.0.4) on
//! `GET /metrics`.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `meshcap_repairs_total` | counter | pods whose drifted rules the agent re-applied |
//! | `meshcap_repair_failures_total` | counter | repair attempts that failed (retried next scan) |
//! | `meshcap_repair_scans_total` | counter | passes over the attachment records |
//! | `meshcap_reclaimed_attachments_total` | counter | records (and fast-path entries) of pods whose namespace went away without a DEL, removed by the agent |
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
//! The exposition is `prometheus-client`'s (the Prometheus project's Rust client): counters,
//! gauges and the histogram are its types, registered once; the fast path's figures are read
//! from its pinned maps at each scrape by a collector. The HTTP side is hyper's HTTP/1 server
//! on a single-threaded tokio runtime that the agent's metrics thread owns: the agent's other
//! duties are blocking loops that gain nothing from async, but this endpoint is where
//! clients from outside connect, and hyper bounds what they may send. Handlers, which read
//! files and pinned maps, run on the runtime's few blocking threads. Each connection serves
//! one request within [`REQUEST_DEADLINE`], at most [`MAX_CONNECTIONS`] at once, so idle or
//! slow clients never hold up a scrape or a probe.

use std::convert::Infallible;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshcap_fastpath::PinDir;
use meshcap_records::{parse_outcome_line, OUTCOMES_FILE};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use super::Stop;

/// Rotate the outcome log past this size (about 100 000 invocations).
const ROTATE_AT: u64 = 1 << 20;
/// Largest request head read (hyper's smallest read buffer); a larger one gets a 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The whole exchange (head read and reply written) must be done within this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed without a reply. Far more than scrapers and
/// probes ever open, so that a crowd of idle clients (each cut off after [`REQUEST_DEADLINE`])
/// does not turn a scrape away; below the common soft limit of 1024 open files.
const MAX_CONNECTIONS: usize = 512;

/// Upper bounds (seconds) of the ADD latency histogram's buckets: a fast ADD takes about a
/// millisecond, one in iptables mode several, one on a busy node tens.
const ADD_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// One line of the outcome log: the plugin's command and its CNI code (0: success).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Invocation {
    command: String,
    code: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

/// Where the agent is in the outcome log.
struct Tail {
    path: PathBuf,
    /// Inode of the file `offset` belongs to.
    ino: Option<u64>,
    offset: u64,
}

pub struct Metrics {
    registry: Registry,
    repairs: Counter,
    repair_failures: Counter,
    reclaimed: Counter,
    scans: Counter,
    attachments: Gauge,
    adoptions: Counter,
    adoption_failures: Counter,
    config_rewrites: Counter,
    config_restore_failures: Counter,
    cni_invocations: Family<Invocation, Counter>,
    cni_adds: Counter,
    cni_failures: Family<Invocation, Counter>,
    add_duration: Family<ModeLabel, Histogram, fn() -> Histogram>,
    tail: Mutex<Tail>,
}

impl Metrics {
    pub fn new(state_root: &Path, pin_dir: &Path) -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            repairs: Counter::default(),
            repair_failures: Counter::default(),
            reclaimed: Counter::default(),
            scans: Counter::default(),
            attachments: Gauge::default(),
            adoptions: Counter::default(),
            adoption_failures: Counter::default(),
            config_rewrites: Counter::default(),
            config_restore_failures: Counter::default(),
            cni_invocations: Family::default(),
            cni_adds: Counter::default(),
            cni_failures: Family::default(),
            add_duration: Family::new_with_constructor(|| Histogram::new(ADD_BUCKETS)),
            tail: Mutex::new(Tail {
                path: state_root.join(OUTCOMES_FILE),
                ino: None,
                offset: 0,
            }),
        };
        // The registry appends the final full stop to each help text.
        let r = &mut m.registry;
        r.register(
            "meshcap_repairs",
            "Pods whose drifted capture rules the agent re-applied",
            m.repairs.clone(),
        );
        r.register(
            "meshcap_repair_failures",
            "Repair attempts that failed (retried on the next scan)",
            m.repair_failures.clone(),
        );
        r.register(
            "meshcap_reclaimed_attachments",
            "Records (and fast-path entries) of pods whose namespace went away without a DEL, removed by the agent",
            m.reclaimed.clone(),
        );
        r.register(
            "meshcap_repair_scans",
            "Passes over the attachment records",
            m.scans.clone(),
        );
        r.register(
            "meshcap_attachments",
            "Attachment records seen by the last scan",
            m.attachments.clone(),
        );
        r.register(
            "meshcap_adoptions",
            "Pods set up before meshcap was installed whose capture rules the agent installed in place",
            m.adoptions.clone(),
        );
        r.register(
            "meshcap_adoption_failures",
            "Adoption attempts that failed (retried on the next scan)",
            m.adoption_failures.clone(),
        );
        r.register(
            "meshcap_config_rewrites",
            "Rewrites of the primary CNI config that dropped or moved meshcap's entry, undone by the agent",
            m.config_rewrites.clone(),
        );
        r.register(
            "meshcap_config_restore_failures",
            "Failed attempts to put meshcap's CNI entry back",
            m.config_restore_failures.clone(),
        );
        r.register(
            "meshcap_cni_invocations",
            "meshcap-cni invocations by command and CNI result code (0: success)",
            m.cni_invocations.clone(),
        );
        r.register(
            "meshcap_cni_adds",
            "meshcap-cni ADD invocations",
            m.cni_adds.clone(),
        );
        r.register(
            "meshcap_cni_failures",
            "Failed meshcap-cni invocations by command and CNI error code",
            m.cni_failures.clone(),
        );
        r.register_collector(Box::new(FastPathStatus {
            pin_dir: pin_dir.to_owned(),
        }));
        r.register(
            "meshcap_cni_add_duration_seconds",
            "Time meshcap-cni spent on a successful ADD, from its start to its result (the exec not included), by mode",
            m.add_duration.clone(),
        );
        m
    }

    pub fn repaired(&self) {
        self.repairs.inc();
    }

    pub fn repair_failed(&self) {
        self.repair_failures.inc();
    }

    pub fn reclaimed(&self) {
        self.reclaimed.inc();
    }

    /// A scan finished having seen `attachments` records.
    pub fn scanned(&self, attachments: u64) {
        self.scans.inc();
        self.attachments
            .set(i64::try_from(attachments).unwrap_or(i64::MAX));
        self.read_outcomes();
    }

    pub fn adopted(&self) {
        self.adoptions.inc();
    }

    pub fn adoption_failed(&self) {
        self.adoption_failures.inc();
    }

    pub fn config_rewrite_seen(&self) {
        self.config_rewrites.inc();
    }

    pub fn config_restore_failed(&self) {
        self.config_restore_failures.inc();
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
        for line in text.lines().filter_map(parse_outcome_line) {
            let invocation = Invocation {
                command: line.command.to_owned(),
                code: line.code,
            };
            self.cni_invocations.get_or_create(&invocation).inc();
            if line.code != 0 {
                self.cni_failures.get_or_create(&invocation).inc();
            }
            if line.command == "ADD" {
                self.cni_adds.inc();
                if let (0, Some((mode, micros))) = (line.code, line.timing) {
                    self.add_duration
                        .get_or_create(&ModeLabel {
                            mode: mode.to_owned(),
                        })
                        .observe(micros as f64 / 1e6);
                }
            }
        }
        complete as u64
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        self.read_outcomes();
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The fast path's figures, read from its pinned maps at each scrape (zero when it is not
/// installed).
#[derive(Debug)]
struct FastPathStatus {
    pin_dir: PathBuf,
}

impl Collector for FastPathStatus {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = PinDir::new(&self.pin_dir).status(None).ok();
        let available = status.as_ref().is_some_and(|s| s.available.is_ok());
        let (pods, bytes) = status.filter(|_| available).map_or((0, 0), |s| {
            (s.registered_pods as i64, s.counters.redirected_bytes)
        });
        for (name, help, value) in [
            (
                "meshcap_fastpath_available",
                "1 when the eBPF fast path is installed on this node.",
                i64::from(available),
            ),
            (
                "meshcap_fastpath_pods",
                "Pods registered with the eBPF fast path.",
                pods,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counter = ConstCounter::new(bytes);
        counter.encode(encoder.encode_descriptor(
            "meshcap_fastpath_redirected_bytes",
            "Bytes the fast path delivered socket to socket.",
            None,
            counter.metric_type(),
        )?)
    }
}

/// Whether the node is ready for pods: the plugin is in the bin dir and chained last in the
/// primary CNI config. `Err` says what is missing (the body of a failing `/readyz`).
pub type Readiness = dyn Fn() -> Result<(), String> + Send + Sync;

/// Serves `GET /metrics`, `/healthz` and `/readyz` until `stop` is set (the caller then
/// connects once to wake the accept). Returns early only if the runtime cannot be built.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    stop: &Stop,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Scrapes and probes are rare and short; more at once wait their turn.
        .max_blocking_threads(4)
        .thread_name("metrics-handler")
        .build()?;
    runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = listener.accept().await;
            if stop.is_set() {
                return Ok(());
            }
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("metrics endpoint busy; closing a connection");
                continue;
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (metrics, ready) = (metrics.clone(), ready.clone());
                    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                    async move {
                        // Scrapes and readiness read files and pinned maps: off the thread
                        // that accepts and times out the other connections.
                        let reply = tokio::task::spawn_blocking(move || {
                            respond(&method, &path, &metrics, &*ready)
                        })
                        .await
                        .unwrap_or_else(|_| {
                            reply(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "the request's handler failed\n".into(),
                            )
                        });
                        Ok::<_, Infallible>(reply)
                    }
                });
                let exchange = http1::Builder::new()
                    .keep_alive(false)
                    .max_buf_size(MAX_REQUEST_HEAD)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(REQUEST_DEADLINE, exchange).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics request failed"),
                    Err(_) => tracing::debug!("metrics client too slow; connection closed"),
                }
                drop(slot);
            });
        }
    })
}

fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
    }
    match path {
        "/metrics" => match metrics.render() {
            Ok(text) => reply(StatusCode::OK, text),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n".into(),
            ),
        },
        "/healthz" => reply(StatusCode::OK, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(()) => reply(StatusCode::OK, "ready\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "served: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_tailed_and_rendered() {
        // The state dir does not exist yet: the first outcome creates it.
        let scratch = meshcap_testkit::ScratchDir::new("agent-metrics");
        let dir = scratch.path().join("state");
        let m = Metrics::new(&dir, Path::new("/nonexistent/meshcap-pins"));
        meshcap_records::count_outcome(&dir, "ADD", 0);
        meshcap_records::count_outcome(&dir, "ADD", 100);
        let text = m.render().unwrap();
        meshcap_records::count_outcome(&dir, "DEL", 0);
        let text2 = m.render().unwrap();
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
        let hist = m.render().unwrap();
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
        let text3 = m.render().unwrap();
        assert!(text3.contains("meshcap_adoptions_total 1\n"), "{text3}");
        assert!(
            text3.contains("meshcap_adoption_failures_total 2\n"),
            "{text3}"
        );
    }

    /// Sends `request` raw and returns what came back before the server closed.
    fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use std::io::Write as _;
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may answer (431) and close before it has read all of a large request.
        let _ = conn.write_all(request);
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[test]
    fn the_endpoint_routes_and_bounds_requests() {
        let scratch = meshcap_testkit::ScratchDir::new("agent-serve");
        let dir = scratch.path().join("state");
        let metrics = Arc::new(Metrics::new(&dir, Path::new("/nonexistent/meshcap-pins")));
        let ready: Arc<Readiness> = Arc::new(|| Err("meshcap-cni is not installed".into()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(Stop::default());
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(listener, metrics, ready, &stop))
        };
        let get = |path: &str| {
            exchange(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            )
        };

        let scrape = get("/metrics?x=1");
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(
            scrape.contains("\r\ncontent-type: text/plain; version=0.0.4"),
            "{scrape}"
        );
        assert!(scrape.contains("\nmeshcap_cni_adds_total 0\n"), "{scrape}");
        assert!(get("/healthz").ends_with("\r\n\r\nok\n"));
        let not_ready = get("/readyz");
        assert!(not_ready.starts_with("HTTP/1.1 503 "), "{not_ready}");
        assert!(
            not_ready.ends_with("meshcap-cni is not installed\n"),
            "{not_ready}"
        );
        assert!(get("/nope").starts_with("HTTP/1.1 404 "));
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Padding: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 2 * MAX_REQUEST_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        let refused = exchange(addr, &huge);
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        // Half a request, then silence: closed at the deadline, without a reply.
        let started = std::time::Instant::now();
        let cut = exchange(addr, b"GET /metr");
        assert_eq!(cut, "");
        assert!(
            (REQUEST_DEADLINE..REQUEST_DEADLINE + Duration::from_secs(2))
                .contains(&started.elapsed()),
            "a silent client was cut off after {:?}",
            started.elapsed()
        );

        stop.set();
        let _ = std::net::TcpStream::connect(addr);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_large_outcome_log_is_rotated_without_losing_counts() {
        let scratch = meshcap_testkit::ScratchDir::new("agent-rotate");
        let dir = scratch.path();
        let lines = (ROTATE_AT / 6 + 10) as usize;
        fs::write(dir.join(OUTCOMES_FILE), "ADD 0\n".repeat(lines)).unwrap();
        let m = Metrics::new(dir, Path::new("/nonexistent/meshcap-pins"));
        let first = m.render().unwrap();
        let rotated = !dir.join(OUTCOMES_FILE).exists();
        meshcap_records::count_outcome(dir, "ADD", 0);
        let second = m.render().unwrap();
        assert!(first.contains(&format!("meshcap_cni_adds_total {lines}\n")));
        assert!(rotated, "the log was moved aside and drained");
        assert!(second.contains(&format!("meshcap_cni_adds_total {}\n", lines + 1)));
    }
}

//! Logging: `tracing` to stderr, appended to `log_file` when configured, and sent to the node
//! agent's log socket when the agent listens ([`meshcap_records::agent_log_socket`]), so the DaemonSet's log
//! (`kubectl logs`) shows each pod's ADD and DEL. The send is one non-blocking datagram per
//! line, never waited on: no agent, a full socket buffer or any error just drops it (the file
//! still has the line). Never stdout:
//! the runtime parses stdout as the CNI result (`tracing_subscriber::fmt()` defaults to
//! stdout, so every layer here gets an explicit writer).
//!
//! The subscriber is installed as the thread's default for the lifetime of the returned
//! guard rather than globally, so the library can be driven repeatedly in one process
//! (tests); a failure before the configuration is decoded gets a stderr-only one of its own.

use std::fs::{self, File, OpenOptions};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use crate::config::LogLevel;

/// Stderr only, at `info`: for a failure before the configuration is decoded.
pub fn init_early() -> DefaultGuard {
    install(LevelFilter::INFO, None, None)
}

/// Sends each formatted line as one datagram to the agent's socket.
struct AgentSink {
    socket: UnixDatagram,
    path: PathBuf,
}

impl AgentSink {
    /// `None` when no agent listens (the usual case off a node with the DaemonSet).
    fn connect(state_dir: &Path) -> Option<AgentSink> {
        let path = meshcap_records::agent_log_socket(state_dir);
        if !path.exists() {
            return None;
        }
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(AgentSink { socket, path })
    }
}

impl std::io::Write for AgentSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Best effort by design: a dropped line is in the log file.
        let _ = self.socket.send_to(buf, &self.path);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The configured `log_file` and the size at which it is rotated.
#[derive(Debug, Clone, Copy)]
pub struct LogFile<'a> {
    path: &'a Path,
    /// 0: never rotated.
    max_bytes: u64,
}

impl<'a> LogFile<'a> {
    pub fn new(path: &'a Path, max_bytes: u64) -> LogFile<'a> {
        LogFile { path, max_bytes }
    }

    /// Where the file goes when it is rotated: one older file is kept beside it.
    pub fn rotated_path(&self) -> PathBuf {
        let mut path = self.path.as_os_str().to_owned();
        path.push(".1");
        path.into()
    }
}

/// Stderr plus `log_file` (append; its parent directory is created), filtered by `level`.
/// When the file cannot be opened the reason goes to stderr and logging continues there.
pub fn init(log_file: Option<LogFile<'_>>, level: LogLevel, state_dir: &Path) -> DefaultGuard {
    let mut open_error = None;
    let file = log_file.and_then(|log| match open_log_file(log) {
        Ok(f) => Some(f),
        Err(e) => {
            open_error = Some((log.path.to_owned(), e));
            None
        }
    });
    let guard = install(level.filter(), file, AgentSink::connect(state_dir));
    if let Some((path, error)) = open_error {
        tracing::warn!(path = %path.display(), %error, "cannot open log_file; logging to stderr only");
    }
    guard
}

/// Opens the log for appending, rotated first once it holds `max_bytes`: the file becomes
/// `<path>.1` (replacing the older one) and a new one is started, so the log and its one
/// older file stay near twice that over a node's life. Checking costs one `fstat` per
/// invocation; a failed rotation is not an error (the lines go on to the file as it is).
fn open_log_file(log: LogFile<'_>) -> std::io::Result<File> {
    let file = open_append(log.path)?;
    if log.max_bytes == 0 || file.metadata()?.len() < log.max_bytes {
        return Ok(file);
    }
    rotate(log, file);
    open_append(log.path)
}

/// Moves a full log aside. Plugins start in parallel and may all find it full: the one that
/// moves it holds an exclusive `flock` on the file and moves it only while the path still
/// names that file, so a log is moved once and a new one is never moved over the older file.
/// Every caller then opens the path again; a line written through a handle opened before the
/// move lands in the older file: none is lost.
fn rotate(log: LogFile<'_>, file: File) {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::MetadataExt as _;
    let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    let same = |a: &fs::Metadata, b: &fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
    if let (Ok(ours), Ok(named)) = (locked.metadata(), fs::metadata(log.path)) {
        if same(&ours, &named) {
            let _ = fs::rename(log.path, log.rotated_path());
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    // 0640: logs name pods and namespaces; explicit so a permissive umask cannot widen it.
    let open = || {
        std::os::unix::fs::OpenOptionsExt::mode(&mut OpenOptions::new(), 0o640)
            .create(true)
            .append(true)
            .open(path)
    };
    meshcap_dataplane::create_in_dir(
        open,
        || match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => {
                use std::os::unix::fs::DirBuilderExt as _;
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
            }
            None => Ok(()),
        },
        |e| e,
    )
}

fn install(level: LevelFilter, file: Option<File>, agent: Option<AgentSink>) -> DefaultGuard {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        // A failed write (a closed stderr) is dropped; reporting it would print to stderr
        // again, and that panics on a closed one.
        .log_internal_errors(false)
        .with_filter(level);
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(f))
            .with_target(false)
            .log_internal_errors(false)
            .with_filter(level)
    });
    let agent = agent.map(|sink| {
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(sink))
            .with_target(false)
            .log_internal_errors(false)
            .with_filter(level)
    });
    let subscriber = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .with(agent);
    tracing::subscriber::set_default(subscriber)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcap_testkit::ScratchDir as TempDir;

    #[test]
    fn writes_to_the_file_and_creates_its_directory() {
        let tmp = TempDir::new("logging-file");
        let path = tmp.0.join("sub/dir/meshcap-cni.log");
        {
            let _g = init(Some(LogFile::new(&path, 0)), LogLevel::Info, &tmp.0);
            let span = tracing::info_span!("cni", command = "ADD", container_id = "c1");
            let _e = span.enter();
            tracing::info!(pod = "default/web", "hello from the test");
            tracing::debug!("filtered out");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("hello from the test"), "{text}");
        assert!(
            text.contains("container_id=\"c1\"") || text.contains("container_id=c1"),
            "{text}"
        );
        assert!(
            text.contains("pod=\"default/web\"") || text.contains("pod=default/web"),
            "{text}"
        );
        assert!(!text.contains("filtered out"), "{text}");
        // Append, not truncate.
        {
            let _g = init(Some(LogFile::new(&path, 0)), LogLevel::Debug, &tmp.0);
            tracing::debug!("second run");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("hello from the test") && text.contains("second run"),
            "{text}"
        );
    }

    /// Eight writers open the full log at once and write a line each; returns the older file
    /// after checking that it holds the whole full log, the new one none of it, and each line
    /// is in one of the two.
    fn rotate_concurrently(log: LogFile<'_>, round: usize) -> String {
        use std::io::Write as _;
        let old = fs::read_to_string(log.path).unwrap();
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let (path, max_bytes) = (log.path.to_owned(), log.max_bytes);
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let mut f = open_log_file(LogFile::new(&path, max_bytes)).unwrap();
                    // One write per line, as the fmt layer writes each event.
                    f.write_all(format!("writer {i}\n").as_bytes()).unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let older = fs::read_to_string(log.rotated_path()).unwrap();
        let newer = fs::read_to_string(log.path).unwrap();
        assert!(older.starts_with(&old), "round {round}: {older}");
        assert!(!newer.contains(&old), "round {round}: {newer}");
        for i in 0..8 {
            let line = format!("writer {i}\n");
            assert_eq!(
                older.matches(&line).count() + newer.matches(&line).count(),
                1,
                "round {round}: {line:?} in\n{older}---\n{newer}"
            );
        }
        older
    }

    #[test]
    fn a_full_log_is_moved_aside_once_and_no_line_is_lost() {
        let tmp = TempDir::new("logging-rotate");
        let path = tmp.0.join("meshcap-cni.log");
        let old = "an old line\n".repeat(8);
        // The writers' lines below fit in a new file of this size: it is not rotated again.
        let max_bytes = old.len() as u64;
        let log = LogFile::new(&path, max_bytes);
        fs::write(&path, &old).unwrap();
        // Below the limit nothing moves.
        {
            let _g = init(Some(LogFile::new(&path, 1 << 20)), LogLevel::Info, &tmp.0);
            tracing::info!("still the first file");
        }
        assert!(!log.rotated_path().exists());
        let older = rotate_concurrently(log, 1);
        assert!(older.contains("still the first file"), "{older}");
        // Plugins starting together all find the file full: it is moved once, and every line
        // is in one of the two files. Rounds, for the race to show where there is one.
        for round in 0..200 {
            fs::write(&path, &old).unwrap();
            fs::remove_file(log.rotated_path()).unwrap();
            rotate_concurrently(log, round);
        }
        // 0 never rotates.
        fs::write(&path, &old).unwrap();
        drop(open_log_file(LogFile::new(&path, 0)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), old);
    }

    #[test]
    fn lines_reach_a_listening_agent_as_datagrams() {
        let tmp = TempDir::new("logging-agent");
        let state = tmp.0.join("attachments");
        let agent = UnixDatagram::bind(meshcap_records::agent_log_socket(&state)).unwrap();
        agent.set_nonblocking(true).unwrap();
        {
            let _g = init(None, LogLevel::Info, &state);
            tracing::info!(pod = "shop/web", "ADD done");
        }
        let mut buf = [0u8; 4096];
        let n = agent.recv(&mut buf).expect("one datagram");
        let line = String::from_utf8_lossy(&buf[..n]);
        assert!(
            line.contains("ADD done") && line.contains("shop/web"),
            "{line}"
        );
        drop(agent);
        // The socket file of an agent that went away: sends fail, logging goes on.
        let _g = init(None, LogLevel::Info, &state);
        tracing::info!("no agent");
    }

    #[test]
    fn unopenable_file_falls_back_to_stderr() {
        let tmp = TempDir::new("logging-bad");
        // A directory where the file should be.
        let path = tmp.0.join("is-a-dir");
        fs::create_dir_all(&path).unwrap();
        let _g = init(Some(LogFile::new(&path, 0)), LogLevel::Info, &tmp.0);
        tracing::info!("still logging");
    }
}

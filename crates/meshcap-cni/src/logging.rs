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

/// Stderr plus `log_file` (append; its parent directory is created), filtered by `level`.
/// When the file cannot be opened the reason goes to stderr and logging continues there.
pub fn init(log_file: Option<&Path>, level: LogLevel, state_dir: &Path) -> DefaultGuard {
    let mut open_error = None;
    let file = log_file.and_then(|path| match open_log_file(path) {
        Ok(f) => Some(f),
        Err(e) => {
            open_error = Some((path.to_owned(), e));
            None
        }
    });
    let guard = install(level.filter(), file, AgentSink::connect(state_dir));
    if let Some((path, error)) = open_error {
        tracing::warn!(path = %path.display(), %error, "cannot open log_file; logging to stderr only");
    }
    guard
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
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
            let _g = init(Some(&path), LogLevel::Info, &tmp.0);
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
            let _g = init(Some(&path), LogLevel::Debug, &tmp.0);
            tracing::debug!("second run");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("hello from the test") && text.contains("second run"),
            "{text}"
        );
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
        let _g = init(Some(&path), LogLevel::Info, &tmp.0);
        tracing::info!("still logging");
    }
}

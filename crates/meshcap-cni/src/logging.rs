//! Logging: `tracing` to stderr and, when configured, appended to `log_file`. Never stdout:
//! the runtime parses stdout as the CNI result (`tracing_subscriber::fmt()` defaults to
//! stdout, so every layer here gets an explicit writer).
//!
//! The subscriber is installed as the thread's default for the lifetime of the returned
//! guard rather than globally, so the library can be driven repeatedly in one process
//! (tests) and the early, stderr-only subscriber can be replaced once the config is known.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use crate::config::LogLevel;

/// Stderr only, at `info`: for the time before the configuration is decoded.
pub fn init_early() -> DefaultGuard {
    install(LevelFilter::INFO, None)
}

/// Stderr plus `log_file` (append; its parent directory is created), filtered by `level`.
/// When the file cannot be opened the reason goes to stderr and logging continues there.
pub fn init(log_file: Option<&Path>, level: LogLevel) -> DefaultGuard {
    let mut open_error = None;
    let file = log_file.and_then(|path| match open_log_file(path) {
        Ok(f) => Some(f),
        Err(e) => {
            open_error = Some((path.to_owned(), e));
            None
        }
    });
    let guard = install(level.filter(), file);
    if let Some((path, error)) = open_error {
        tracing::warn!(path = %path.display(), %error, "cannot open log_file; logging to stderr only");
    }
    guard
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
    }
    // 0640: logs name pods and namespaces; explicit so a permissive umask cannot widen it.
    std::os::unix::fs::OpenOptionsExt::mode(&mut OpenOptions::new(), 0o640)
        .create(true)
        .append(true)
        .open(path)
}

fn install(level: LevelFilter, file: Option<File>) -> DefaultGuard {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(level);
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(f))
            .with_target(false)
            .with_filter(level)
    });
    let subscriber = tracing_subscriber::registry().with(stderr).with(file);
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
            let _g = init(Some(&path), LogLevel::Info);
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
            let _g = init(Some(&path), LogLevel::Debug);
            tracing::debug!("second run");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("hello from the test") && text.contains("second run"),
            "{text}"
        );
    }

    #[test]
    fn unopenable_file_falls_back_to_stderr() {
        let tmp = TempDir::new("logging-bad");
        // A directory where the file should be.
        let path = tmp.0.join("is-a-dir");
        fs::create_dir_all(&path).unwrap();
        let _g = init(Some(&path), LogLevel::Info);
        tracing::info!("still logging");
    }
}

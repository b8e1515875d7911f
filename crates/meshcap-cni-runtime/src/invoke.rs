//! Running one CNI plugin as a runtime does: its stdin, its `CNI_*` environment, a deadline,
//! and what its exit status and stdout say (CNI spec, sections 2 "Execution Protocol" and 5
//! "Result Types").

use std::io::{self, Write as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The capability through which runtimes pass a pod's annotations to plugins that declare it.
pub const POD_ANNOTATIONS_CAP: &str = "io.kubernetes.cri.pod-annotations";

/// The stdin of one plugin of a list, as libcni's `buildOneConfig` makes it: the plugin's
/// entry with the list's `name` and `cniVersion`, `runtimeConfig` holding those of
/// `capability_args` that the entry declares in `capabilities` (only when there are any), and
/// the previous result as `prevResult` (none for the first plugin of an ADD).
pub fn plugin_stdin(
    entry: &Map<String, Value>,
    network: &str,
    cni_version: Option<&Value>,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = entry.clone();
    conf.insert("name".into(), Value::String(network.to_owned()));
    if let Some(version) = cni_version {
        conf.insert("cniVersion".into(), version.clone());
    }
    let runtime_config: Map<String, Value> = entry
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, declared)| declared.as_bool() == Some(true))
        .filter_map(|(cap, _)| capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(result) = prev_result.filter(|r| !r.is_null()) {
        conf.insert("prevResult".into(), result.clone());
    }
    Value::Object(conf)
}

/// The `CNI_*` parameters of one invocation (CNI spec, section 2 "Parameters").
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// Empty when there is no namespace any more (a DEL after the sandbox is gone).
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    /// `CNI_ARGS`: `K=V` pairs joined by `;`.
    pub args: &'a str,
    /// `CNI_PATH`: where the plugin finds the plugins it delegates to.
    pub path: &'a Path,
}

impl Invocation<'_> {
    /// Sets the parameters on `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env(
                "CNI_NETNS",
                self.netns.map(Path::as_os_str).unwrap_or_default(),
            )
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_ARGS", self.args)
            .env("CNI_PATH", self.path);
    }
}

/// What one plugin run printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From spawn to exit, stdin written and output read.
    pub elapsed: Duration,
}

/// Stdin up to this size fits a fresh pipe's buffer whatever the system's pipe limits
/// (`PIPE_BUF`), so writing it before the plugin reads cannot block.
const INLINE_STDIN: usize = 4096;

/// Spawns `cmd`, writes `stdin`, collects its output; with a `limit`, kills it after that long
/// (an [`io::ErrorKind::TimedOut`] error naming the program). A configuration (a few KiB) is
/// written before waiting; a larger stdin is written on its own thread, so a plugin that writes
/// much before reading all of stdin never deadlocks. Without a limit nothing but the child runs
/// besides the caller, so [`Output::elapsed`] is what a runtime waits for (the benchmarks).
pub fn run(mut cmd: Command, stdin: &[u8], limit: Option<Duration>) -> io::Result<Output> {
    let program = Path::new(cmd.get_program()).display().to_string();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawning {program}: {e}")))?;
    let mut writer = None;
    if let Some(mut input) = child.stdin.take() {
        // A plugin may exit without reading stdin (VERSION): a broken pipe is not an error.
        if stdin.len() <= INLINE_STDIN {
            let _ = input.write_all(stdin);
        } else {
            let stdin = stdin.to_vec();
            writer = Some(std::thread::spawn(move || {
                let _ = input.write_all(&stdin);
            }));
        }
    }
    let out = match limit {
        None => child.wait_with_output(),
        Some(limit) => {
            let pid = child.id();
            let (done, finished) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(child.wait_with_output());
            });
            match finished.recv_timeout(limit) {
                Ok(out) => out,
                Err(_) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    // The waiter thread reaps it, so no zombie is left.
                    let _ = finished.recv();
                    if let Some(w) = writer {
                        let _ = w.join();
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{program} did not finish within {limit:?}; killed"),
                    ));
                }
            }
        }
    };
    let elapsed = started.elapsed();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = out.map_err(|e| io::Error::new(e.kind(), format!("waiting for {program}: {e}")))?;
    Ok(Output {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed,
    })
}

/// The CNI error JSON a plugin printed (CNI spec, "Error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// Why a run did not succeed by the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It failed and said why on stdout.
    Cni(CniError),
    /// Its stdout breaks the protocol: a failure without an error JSON, or a success whose
    /// stdout is not JSON.
    BadOutput,
}

/// What the exit status (`success`) and stdout say: on success the result, if the plugin printed one (DEL
/// and CHECK print nothing); on failure the CNI error. Anything but JSON on stdout is a
/// protocol violation.
pub fn outcome(success: bool, stdout: &[u8]) -> Result<Option<Value>, Failure> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    let parsed: Option<Value> = if trimmed.is_empty() {
        None
    } else {
        serde_json::from_str(trimmed).ok()
    };
    if success {
        if !trimmed.is_empty() && parsed.is_none() {
            return Err(Failure::BadOutput);
        }
        return Ok(parsed);
    }
    match parsed {
        Some(v) if v.get("code").is_some() => Err(Failure::Cni(CniError {
            code: v["code"].as_u64().unwrap_or(0),
            msg: v["msg"].as_str().unwrap_or("").into(),
            details: v["details"].as_str().unwrap_or("").into(),
        })),
        _ => Err(Failure::BadOutput),
    }
}

/// The last 512 bytes of a process's output, as text (for messages).
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(512);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes() {
        assert_eq!(outcome(true, b""), Ok(None));
        assert_eq!(outcome(true, b" {\"a\":1}\n"), Ok(Some(json!({"a": 1}))));
        assert_eq!(outcome(true, b"hello"), Err(Failure::BadOutput));
        assert_eq!(
            outcome(false, br#"{"code":7,"msg":"bad","details":"why"}"#),
            Err(Failure::Cni(CniError {
                code: 7,
                msg: "bad".into(),
                details: "why".into()
            }))
        );
        assert_eq!(outcome(false, b"panic"), Err(Failure::BadOutput));
        assert_eq!(outcome(false, b"{}"), Err(Failure::BadOutput));
    }

    #[test]
    fn stdin_declares_only_declared_capabilities() {
        let entry = json!({"type": "meshcap-cni", "capabilities": {POD_ANNOTATIONS_CAP: true, "portMappings": false}});
        let caps = json!({POD_ANNOTATIONS_CAP: {"a": "b"}, "portMappings": []});
        let conf = plugin_stdin(
            entry.as_object().unwrap(),
            "net",
            Some(&json!("1.0.0")),
            caps.as_object().unwrap(),
            Some(&json!({"cniVersion": "1.0.0"})),
        );
        assert_eq!(conf["name"], "net");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(
            conf["runtimeConfig"],
            json!({POD_ANNOTATIONS_CAP: {"a": "b"}})
        );
        assert_eq!(conf["prevResult"]["cniVersion"], "1.0.0");
        let bare = plugin_stdin(
            &Map::new(),
            "net",
            None,
            caps.as_object().unwrap(),
            Some(&Value::Null),
        );
        assert_eq!(bare, json!({"name": "net"}));
    }

    #[test]
    fn runs_with_stdin_and_kills_after_the_deadline() {
        let out = run(Command::new("cat"), b"hello", Some(Duration::from_secs(10))).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello");
        // Larger than a pipe's buffer, and echoed while still being written.
        let big = vec![b'x'; 1 << 20];
        let out = run(Command::new("cat"), &big, None).unwrap();
        assert_eq!(out.stdout.len(), big.len());
        let mut sleep = Command::new("sleep");
        sleep.arg("10");
        let started = Instant::now();
        let err = run(sleep, b"", Some(Duration::from_millis(100))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

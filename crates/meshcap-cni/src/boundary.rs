//! The process boundary: stdin and environment in, stdout text and exit code out. This is
//! the one place that turns errors into CNI error JSON (CNI spec, "Error"; codes from
//! docs/CONFIGURATION.md and the CNI spec's well-known codes).
//!
//! | code | when |
//! |---|---|
//! | 1 | unsupported `cniVersion` (config or prevResult); command newer than the config's version |
//! | 4 | invalid or missing `CNI_*` environment variables, malformed `CNI_ARGS`; ADD/CHECK: `CNI_NETNS` names no network namespace (any more) |
//! | 5 | reading stdin, or the attachment records, failed |
//! | 6 | the configuration is not a JSON object (or is larger than [`MAX_STDIN`]) |
//! | 7 | invalid configuration value, annotation, prevResult; annotations unavailable; the pod cannot be read from the API (bad kubeconfig, 401, 403, 404): fail closed |
//! | 50 | STATUS: the rule backend is not ready |
//! | 100 | a dataplane operation (apply, remove, check) failed |
//! | 101 | CHECK: the installed rules drifted from the model |
//! | 102 | the plugin panicked (a bug in meshcap): printed by [`report_panics_as_cni_errors`]'s hook before the process aborts |
//! | 11 | a dataplane operation met a transient kernel condition (EAGAIN, EBUSY, EINTR, ENOBUFS), or the API server did not answer within `kubernetes.timeout_ms` (connection errors, timeouts, 429, 5xx): retry later |
//!
//! Nothing else is ever written to stdout: logs go to stderr and the log file. Each invocation
//! with a valid environment appends its command, code, mode and duration to the state
//! directory's outcome log ([`meshcap_records::record_outcome`]), which `meshcap agent` serves
//! as metrics.

use std::ffi::OsString;
use std::io::{self, Read, Write};

use serde_json::{json, Value};

use crate::args::{ArgsError, CniArgs};
use crate::commands::{self, CommandError, Invocation};
use crate::config::{self, Config, ConfigError};
use crate::env::{Command, Env, EnvError};
use crate::logging;
use crate::result::{self, ResultError};
use crate::version::CniVersion;
use meshcap_records::StateDir;

/// The most stdin the plugin reads; real configurations (with prevResult) are a few KiB.
pub const MAX_STDIN: usize = 1 << 20;

/// Plugin-specific error codes (CNI reserves 0-99 for the spec).
pub const CODE_DATAPLANE: u32 = 100;
pub const CODE_DRIFT: u32 = 101;
pub const CODE_INTERNAL: u32 = 102;
const _: () = assert!(CODE_INTERNAL >= 100, "CNI reserves 0-99");

/// The `cniVersion` of this invocation's configuration, for an error printed by the panic hook.
static INVOCATION_VERSION: std::sync::OnceLock<CniVersion> = std::sync::OnceLock::new();

/// Makes a panic print a CNI error on stdout and end the process, on any thread and in any
/// build: the shipped plugin aborts on panic (no unwinding), so without this the runtime would
/// get an empty stdout and report an unparsable result instead of what went wrong; and a build
/// that unwinds must not go on to print a second document after this one. Called once, by the
/// executable.
pub fn report_panics_as_cni_errors() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The usual message (and backtrace when asked for) goes to stderr, as always.
        default_hook(info);
        let version = INVOCATION_VERSION
            .get()
            .copied()
            .unwrap_or(CniVersion::LATEST);
        let body = internal_error_json(version, &info.to_string());
        // The stdout lock is reentrant: a panic while main holds it still gets through.
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{body}");
        let _ = stdout.flush();
        std::process::abort();
    }));
}

/// The CNI error for a panic whose message is `panic`.
pub fn internal_error_json(version: CniVersion, panic: &str) -> Value {
    json!({
        "cniVersion": version.as_str(),
        "code": CODE_INTERNAL,
        "msg": "meshcap-cni failed on an internal error (a bug in meshcap; please report it with the details)",
        "details": panic,
    })
}

/// Any failure of one invocation.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("reading the network configuration from stdin: {0}")]
    Stdin(#[source] io::Error),
    #[error("the network configuration on stdin is larger than {max} bytes")]
    StdinTooLarge { max: usize },
}

/// The CNI error code of `err`: the single mapping from meshcap errors to CNI codes.
pub fn code(err: &PluginError) -> u32 {
    match err {
        PluginError::Env(_) | PluginError::Args(_) => 4,
        PluginError::Stdin(_) => 5,
        PluginError::StdinTooLarge { .. } => 6,
        PluginError::Config(e) => match e {
            ConfigError::Decode { .. } => 6,
            ConfigError::MissingVersion | ConfigError::UnsupportedVersion { .. } => 1,
            ConfigError::Missing { .. } | ConfigError::InvalidValue { .. } => 7,
        },
        PluginError::Command(e) => match e {
            CommandError::VersionTooOld { .. } => 1,
            CommandError::PrevResult(ResultError::UnsupportedVersion { .. }) => 1,
            CommandError::PrevResult(ResultError::Invalid { .. })
            | CommandError::PrevResultRequired { .. }
            | CommandError::Annotation(_)
            | CommandError::MeshConflict(_)
            | CommandError::Input(_)
            | CommandError::AnnotationsUnavailable { .. }
            | CommandError::PodShape { .. }
            | CommandError::MissingValidAttachments => 7,
            // The API server did not answer in time: the runtime retries the ADD.
            CommandError::Kube(e) if e.is_transient() => 11,
            // Unreadable kubeconfig, 401/403/404: fail closed, never start the pod unmeshed.
            CommandError::Kube(_) => 7,
            CommandError::State(_) | CommandError::Gc { .. } => 5,
            CommandError::BackendNotReady { .. } => 50,
            // CNI_NETNS names a file that is not a network namespace (e.g. an unmounted one).
            CommandError::Dataplane { source, .. }
                if matches!(**source, meshcap_dataplane::DataplaneError::NotNetns { .. }) =>
            {
                4
            }
            CommandError::Dataplane { source, .. } if is_transient(source) => 11,
            CommandError::Dataplane { .. } => CODE_DATAPLANE,
            CommandError::Drift { .. } => CODE_DRIFT,
            // CNI_NETNS is an environment variable, and docs/CONFIGURATION.md gives 4 to invalid ones.
            CommandError::NetnsVanished { .. } => 4,
        },
    }
}

/// Kernel conditions that go away by themselves; the runtime retries the ADD on code 11.
fn is_transient(err: &meshcap_dataplane::DataplaneError) -> bool {
    matches!(
        err.errno(),
        Some(libc_errno::EAGAIN | libc_errno::EBUSY | libc_errno::EINTR | libc_errno::ENOBUFS)
    )
}

/// errno values (Linux, all architectures meshcap supports).
mod libc_errno {
    pub const EINTR: i32 = 4;
    pub const EAGAIN: i32 = 11;
    pub const EBUSY: i32 = 16;
    pub const ENOBUFS: i32 = 105;
}

/// The CNI error object for `err`: `msg` is the error with its causes, each level saying only
/// what it adds (the variable, key, annotation, namespace or path at fault, and why).
pub fn error_json(version: CniVersion, err: &PluginError) -> Value {
    json!({
        "cniVersion": version.as_str(),
        "code": code(err),
        "msg": err.to_string(),
        "details": "",
    })
}

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exactly what goes to stdout (empty for DEL, CHECK, STATUS, GC on success).
    pub stdout: String,
    pub exit_code: u8,
}

/// Runs one invocation: `lookup` reads the environment, `stdin` the configuration.
pub fn run(lookup: impl Fn(&str) -> Option<OsString>, stdin: impl Read) -> Outcome {
    crate::timing::mark_start();
    let input = read_bounded(stdin);
    let bytes: &[u8] = match &input {
        Ok(b) => b,
        Err(_) => &[],
    };
    let fallback_version = config::peek_version(bytes);
    let _ = INVOCATION_VERSION.set(fallback_version);

    match execute(lookup, input.as_deref()) {
        Ok(Some(value)) => Outcome {
            stdout: format!("{value}\n"),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(Failure { version, error }) => {
            if version.is_none() {
                // Failed before the configured logging existed, so stderr only; later
                // failures are logged inside `dispatch`, with the invocation's span and to
                // the log file. Nothing logs before the configuration is decoded, so the
                // stderr subscriber is only built for this line.
                let _early = logging::init_early();
                tracing::error!(code = code(&error), %error, "failed");
            }
            let body = error_json(version.unwrap_or(fallback_version), &error);
            Outcome {
                stdout: format!("{body}\n"),
                exit_code: 1,
            }
        }
    }
}

/// An invocation's error, with the configuration's `cniVersion` once it is known.
struct Failure {
    version: Option<CniVersion>,
    error: PluginError,
}

impl Failure {
    fn early(error: impl Into<PluginError>) -> Failure {
        Failure {
            version: None,
            error: error.into(),
        }
    }
}

fn execute(
    lookup: impl Fn(&str) -> Option<OsString>,
    input: Result<&[u8], &PluginErrorSlot>,
) -> Result<Option<Value>, Failure> {
    let env = Env::from_lookup(lookup).map_err(Failure::early)?;
    let bytes = input.map_err(|slot| Failure::early(slot.to_error()))?;
    if env.command == Command::Version {
        return Ok(Some(result::version_output(config::peek_version(bytes))));
    }
    let mut mode = None;
    let outcome = Config::parse(bytes)
        .map_err(Failure::early)
        .and_then(|config| {
            mode = Some(config.mode.as_str());
            let log_file = config
                .log_file
                .as_deref()
                .map(|path| logging::LogFile::new(path, config.log_file_max_bytes));
            let _logging = logging::init(log_file, config.log_level, &env.state_dir);
            if !config.unknown_keys.is_empty() {
                tracing::warn!(keys = ?config.unknown_keys, "ignoring unknown config keys");
            }
            dispatch(&env, &config).map_err(|error| Failure {
                version: Some(config.cni_version),
                error,
            })
        });
    // For `meshcap agent`'s metrics (ADDs, failures by code, ADD latency by mode); best
    // effort, see the function.
    let code = outcome.as_ref().err().map_or(0, |f| code(&f.error));
    let timing = mode.map(|m| (m, crate::timing::started().elapsed()));
    meshcap_records::record_outcome(&env.state_dir, env.command.as_str(), code, timing);
    outcome
}

/// Runs the command inside a span carrying the invocation's identity; logs its failure.
fn dispatch(env: &Env, config: &Config) -> Result<Option<Value>, PluginError> {
    let args = CniArgs::parse(&env.args);
    let pod = args.as_ref().map_or("-".to_string(), CniArgs::pod_display);
    let span = tracing::info_span!(
        "cni",
        command = %env.command,
        network = %config.name,
        container_id = %env.container_id,
        ifname = %env.ifname,
        netns = %env.netns.as_deref().map_or("-".into(), |p| p.display().to_string()),
        pod = %pod,
    );
    let _entered = span.enter();
    tracing::debug!(mode = config.mode.as_str(), selection = ?config.selection, "invoked");

    let outcome = args.map_err(PluginError::from).and_then(|args| {
        let state = StateDir::new(&env.state_dir);
        let inv = Invocation {
            env,
            args: &args,
            config,
            state: &state,
        };
        let outcome = match env.command {
            Command::Add => commands::add(inv).map(Some),
            Command::Del => commands::del(inv).map(|()| None),
            Command::Check => commands::check(inv).map(|()| None),
            Command::Status => commands::status(inv).map(|()| None),
            Command::Gc => commands::gc(inv).map(|()| None),
            Command::Version => Ok(Some(result::version_output(config.cni_version))),
        };
        outcome.map_err(PluginError::from)
    });
    if let Err(error) = &outcome {
        tracing::error!(code = code(error), %error, "failed");
    }
    outcome
}

/// Stdin errors are kept aside until the environment is validated (a missing CNI_COMMAND
/// is reported first, as libcni does).
#[derive(Debug)]
enum PluginErrorSlot {
    Io(io::Error),
    TooLarge,
}

impl PluginErrorSlot {
    fn to_error(&self) -> PluginError {
        match self {
            PluginErrorSlot::Io(e) => PluginError::Stdin(io::Error::new(e.kind(), e.to_string())),
            PluginErrorSlot::TooLarge => PluginError::StdinTooLarge { max: MAX_STDIN },
        }
    }
}

fn read_bounded(stdin: impl Read) -> Result<Vec<u8>, PluginErrorSlot> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(PluginErrorSlot::Io)?;
    if buf.len() > MAX_STDIN {
        return Err(PluginErrorSlot::TooLarge);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcap_testkit::ScratchDir as TempDir;
    use std::collections::HashMap;

    #[test]
    fn the_panic_hooks_error_is_a_cni_error_with_the_panic_message() {
        let body = internal_error_json(CniVersion::V0_4_0, "panicked at src/x.rs:1:2:\nboom");
        assert_eq!(body["cniVersion"], "0.4.0");
        assert_eq!(body["code"], CODE_INTERNAL);
        assert!(body["msg"].as_str().unwrap().contains("internal error"));
        assert_eq!(body["details"], "panicked at src/x.rs:1:2:\nboom");
    }

    fn run_with(env: &[(&str, &str)], stdin: &str) -> (Outcome, Option<Value>) {
        let map: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let out = run(|n| map.get(n).cloned(), stdin.as_bytes());
        let parsed = (!out.stdout.is_empty()).then(|| serde_json::from_str(&out.stdout).unwrap());
        (out, parsed)
    }

    fn assert_error(out: &(Outcome, Option<Value>), code: u64, needle: &str) -> Value {
        let (o, v) = out;
        assert_eq!(o.exit_code, 1, "{}", o.stdout);
        let v = v.clone().expect("error JSON on stdout");
        let obj = v.as_object().unwrap();
        let keys: Vec<_> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{v}");
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(obj.contains_key(k), "{k} missing in {v}");
        }
        assert!(v["msg"].is_string() && v["details"].is_string() && v["cniVersion"].is_string());
        assert_eq!(v["code"], code, "{v}");
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(needle), "{needle:?} not in {v}");
        v
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn version_echoes_supported_input() {
        let (o, v) = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            v.unwrap(),
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
        );
        let (_, v) = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(v.unwrap()["cniVersion"], "1.1.0");
    }

    #[test]
    fn error_codes_and_shape() {
        let out = run_with(&[], "{}");
        assert_error(&out, 4, "CNI_COMMAND");
        let out = run_with(&[("CNI_COMMAND", "ADD")], "{}");
        assert_error(&out, 4, "CNI_CONTAINERID");
        let out = run_with(ADD, "{not json");
        assert_error(&out, 6, "decode");
        let out = run_with(ADD, r#"{"cniVersion":"0.2.0","name":"n"}"#);
        let v = assert_error(&out, 1, "0.2.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        let out = run_with(ADD, r#"{"cniVersion":"0.3.1","name":"n","mode":"bpf"}"#);
        let v = assert_error(&out, 7, "mode");
        assert_eq!(
            v["cniVersion"], "0.3.1",
            "errors speak the config's version"
        );
        let mut env = ADD.to_vec();
        env.push(("CNI_ARGS", "garbage"));
        let out = run_with(&env, r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_error(&out, 4, "CNI_ARGS");
        let out = run_with(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            r#"{"cniVersion":"1.0.0","name":"n","cni.dev/valid-attachments":[]}"#,
        );
        assert_error(&out, 1, "GC needs cniVersion 1.1.0");
        let mut check = ADD.to_vec();
        check[0] = ("CNI_COMMAND", "CHECK");
        let out = run_with(&check, r#"{"cniVersion":"0.4.0","name":"n"}"#);
        assert_error(&out, 7, "prevResult");
        let out = run_with(
            &check,
            r#"{"cniVersion":"0.3.1","name":"n","prevResult":{}}"#,
        );
        assert_error(&out, 1, "CHECK needs cniVersion 0.4.0");
    }

    #[test]
    fn every_command_error_has_its_code() {
        use meshcap_dataplane::DataplaneError;
        use std::path::PathBuf;
        let bad: meshcap_model::Annotations = [(
            "sidecar.istio.io/interceptionMode".to_string(),
            "BOGUS".to_string(),
        )]
        .into();
        let annotation = meshcap_model::RedirectModel::from_annotations(&bad).unwrap_err();
        let io = || std::io::Error::other("boom");
        let cases: Vec<(CommandError, u32)> = vec![
            (
                CommandError::VersionTooOld {
                    command: Command::Gc,
                    version: CniVersion::V1_0_0,
                    needs: CniVersion::V1_1_0,
                },
                1,
            ),
            (
                CommandError::PrevResult(ResultError::UnsupportedVersion {
                    version: "0.2.0".into(),
                }),
                1,
            ),
            (
                CommandError::PrevResult(ResultError::Invalid {
                    field: "ips".into(),
                    reason: "x".into(),
                }),
                7,
            ),
            (
                CommandError::PrevResultRequired {
                    command: Command::Check,
                },
                7,
            ),
            (CommandError::Annotation(annotation), 7),
            (
                CommandError::AnnotationsUnavailable {
                    namespace: "ns".into(),
                    name: "p".into(),
                    why: "no kubernetes.kubeconfig is configured for the API path",
                },
                7,
            ),
            (
                CommandError::from(crate::kube::KubeError::Unavailable {
                    target: Box::new(crate::kube::Target {
                        object: "pod ns/p".into(),
                        server: "https://10.96.0.1".into(),
                        kubeconfig: "/k".into(),
                    }),
                    timeout: std::time::Duration::from_secs(5),
                    attempts: 4,
                    last: "HTTP 503".into(),
                }),
                11,
            ),
            (
                CommandError::from(crate::kube::KubeError::Refused {
                    target: Box::new(crate::kube::Target {
                        object: "pod ns/p".into(),
                        server: "https://10.96.0.1".into(),
                        kubeconfig: "/k".into(),
                    }),
                    status: Some(404),
                    reason: "HTTP 404".into(),
                }),
                7,
            ),
            (CommandError::MissingValidAttachments, 7),
            (
                CommandError::State(meshcap_records::StateError::Io {
                    op: "write",
                    path: "/x".into(),
                    source: io(),
                }),
                5,
            ),
            (
                CommandError::Gc {
                    failures: vec!["x".into()],
                },
                5,
            ),
            (
                CommandError::BackendNotReady {
                    mode: "iptables",
                    source: Box::new(DataplaneError::BinaryMissing {
                        program: "iptables-restore".into(),
                        searched: "/usr/sbin".into(),
                    }),
                },
                50,
            ),
            (
                CommandError::Dataplane {
                    op: "apply",
                    mode: "nftables",
                    netns: PathBuf::from("/run/netns/p"),
                    source: Box::new(DataplaneError::NotNetns {
                        path: "/run/netns/p".into(),
                        reason: "not nsfs".into(),
                    }),
                },
                4,
            ),
            (
                CommandError::Drift {
                    netns: PathBuf::from("/run/netns/p"),
                    details: vec!["chain MESHCAP_OUTPUT missing".into()],
                },
                CODE_DRIFT,
            ),
            (
                CommandError::NetnsVanished {
                    path: PathBuf::from("/run/netns/p"),
                },
                4,
            ),
        ];
        for (err, want) in cases {
            let err = PluginError::from(err);
            let v = error_json(CniVersion::V0_4_0, &err);
            assert_eq!(v["code"], want, "{v}");
            assert_eq!(v["cniVersion"], "0.4.0");
            assert_eq!(v["msg"], err.to_string());
        }
        // The annotation error names the annotation and its value.
        let err = PluginError::from(CommandError::Annotation(
            meshcap_model::RedirectModel::from_annotations(&bad).unwrap_err(),
        ));
        let v = error_json(CniVersion::V1_1_0, &err);
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .contains("sidecar.istio.io/interceptionMode"),
            "{v}"
        );
        assert!(v["msg"].as_str().unwrap().contains("BOGUS"), "{v}");
        // Every cause is in msg, once.
        let err = PluginError::from(CommandError::State(meshcap_records::StateError::Io {
            op: "write",
            path: "/x".into(),
            source: io(),
        }));
        let v = error_json(CniVersion::V1_1_0, &err);
        assert_eq!(v["msg"], "recording the attachment: write /x: boom");
        assert_eq!(v["details"], "");
    }

    #[test]
    fn oversized_stdin_is_refused() {
        let big = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","pad":"{}"}}"#,
            "x".repeat(MAX_STDIN)
        );
        let out = run_with(ADD, &big);
        assert_error(&out, 6, "larger than");
    }

    #[test]
    fn add_unselected_passes_prev_result_through_converted() {
        let tmp = TempDir::new("boundary-add-skip");
        let mut env = ADD.to_vec();
        let dir = tmp.0.to_str().unwrap().to_string();
        env.push(("MESHCAP_STATE_DIR", &dir));
        let conf = json!({
            "cniVersion": "0.4.0", "name": "n", "type": "meshcap-cni",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 0}],
                           "interfaces": [{"name": "eth0", "sandbox": "/run/netns/none"}]}
        });
        let (o, v) = run_with(&env, &conf.to_string());
        assert_eq!(o.exit_code, 0, "{}", o.stdout);
        assert_eq!(
            v.unwrap(),
            json!({"cniVersion": "0.4.0",
                   "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}],
                   "interfaces": [{"name": "eth0", "sandbox": "/run/netns/none"}]})
        );
        // Nothing recorded for an unselected pod.
        assert!(!tmp.0.join("n").exists());
    }

    #[test]
    fn del_with_empty_netns_succeeds_and_prints_nothing() {
        let tmp = TempDir::new("boundary-del");
        let dir = tmp.0.to_str().unwrap().to_string();
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            ("MESHCAP_STATE_DIR", dir.as_str()),
        ];
        let (o, v) = run_with(
            &env,
            r#"{"cniVersion":"1.1.0","name":"n","selection":"all"}"#,
        );
        assert_eq!(
            o,
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
        assert_eq!(v, None);
    }
}

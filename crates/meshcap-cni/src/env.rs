//! The CNI protocol parameters, passed as environment variables (CNI spec, section 2,
//! "Parameters"), validated per command the way libcni's `skel` does.
//!
//! Which variables a command needs follows the CNI 1.1 spec: ADD and CHECK need
//! `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL needs the container id and interface
//! but not `CNI_NETNS` (containerd sends it empty once the sandbox is gone); GC needs
//! `CNI_PATH`; STATUS and VERSION need nothing but `CNI_COMMAND`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub use meshcap_records::{DEFAULT_STATE_DIR, STATE_DIR_VAR};

/// Upper bound for any one variable; real values are paths and ids far below this.
const MAX_VALUE_LEN: usize = 4096;

/// The CNI operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Invalid or missing CNI environment variables (CNI error code 4). Every variant names the
/// variable(s), as the spec requires.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("required environment variables [{}] missing for {command}", names.join(","))]
    Missing {
        command: String,
        names: Vec<&'static str>,
    },
    #[error("CNI_COMMAND={value:?} is not a CNI command (ADD, DEL, CHECK, STATUS, GC, VERSION)")]
    UnknownCommand { value: String },
    #[error("{name} is not valid UTF-8")]
    NotUtf8 { name: &'static str },
    #[error("{name} is {len} bytes long, more than the {max} allowed")]
    TooLong {
        name: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl From<meshcap_records::names::InvalidName> for EnvError {
    fn from(e: meshcap_records::names::InvalidName) -> EnvError {
        EnvError::Invalid {
            name: e.name,
            value: e.value,
            reason: e.reason,
        }
    }
}

/// The validated protocol parameters of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// Empty only for commands that do not need it (STATUS, GC, VERSION).
    pub container_id: String,
    /// `None` when unset or empty (allowed for DEL, STATUS, GC, VERSION).
    pub netns: Option<PathBuf>,
    /// Empty only for commands that do not need it.
    pub ifname: String,
    /// Raw `CNI_ARGS`, parsed by [`crate::args`].
    pub args: String,
    pub path: String,
    /// Root of the attachment records ([`STATE_DIR_VAR`] or [`DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Result<Env, EnvError> {
        Env::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the parameters through `lookup` (the process environment or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Env, EnvError> {
        let get = |name: &'static str| -> Result<String, EnvError> {
            let Some(raw) = lookup(name) else {
                return Ok(String::new());
            };
            let value = raw.into_string().map_err(|_| EnvError::NotUtf8 { name })?;
            if value.len() > MAX_VALUE_LEN {
                return Err(EnvError::TooLong {
                    name,
                    len: value.len(),
                    max: MAX_VALUE_LEN,
                });
            }
            Ok(value)
        };

        let command_raw = get("CNI_COMMAND")?;
        if command_raw.is_empty() {
            return Err(EnvError::Missing {
                command: "the plugin".to_string(),
                names: vec!["CNI_COMMAND"],
            });
        }
        let command = Command::parse(&command_raw).ok_or(EnvError::UnknownCommand {
            value: command_raw.clone(),
        })?;

        let container_id = get("CNI_CONTAINERID")?;
        let netns = get("CNI_NETNS")?;
        let ifname = get("CNI_IFNAME")?;
        let args = get("CNI_ARGS")?;
        let path = get("CNI_PATH")?;

        let (need_attachment, need_netns, need_path) = match command {
            Command::Add | Command::Check => (true, true, false),
            Command::Del => (true, false, false),
            Command::Gc => (false, false, true),
            Command::Status | Command::Version => (false, false, false),
        };
        let mut missing = Vec::new();
        if need_attachment && container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if need_netns && netns.is_empty() {
            missing.push("CNI_NETNS");
        }
        if need_attachment && ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if need_path && path.is_empty() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(EnvError::Missing {
                command: command.to_string(),
                names: missing,
            });
        }
        if need_attachment {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }

        let state_dir = match lookup(STATE_DIR_VAR) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(DEFAULT_STATE_DIR),
        };

        Ok(Env {
            command,
            container_id,
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname,
            args,
            path,
            state_dir,
        })
    }
}

/// [`meshcap_records::names::validate_container_id`] as a `CNI_CONTAINERID` error.
pub fn validate_container_id(id: &str) -> Result<(), EnvError> {
    Ok(meshcap_records::names::validate_container_id(id)?)
}

/// [`meshcap_records::names::validate_ifname`] as a `CNI_IFNAME` error.
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    Ok(meshcap_records::names::validate_ifname(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, EnvError> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Env::from_lookup(|name| map.get(name).cloned())
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAME=a"),
    ];

    fn with(cmd: &str, base: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&str, String)> = base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        v.push(("CNI_COMMAND", cmd.to_string()));
        v
    }

    fn env_owned(pairs: &[(&str, String)]) -> Result<Env, EnvError> {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env(&refs)
    }

    #[test]
    fn missing_command_names_cni_command() {
        let err = env(&[]).unwrap_err();
        assert!(err.to_string().contains("CNI_COMMAND"), "{err}");
    }

    #[test]
    fn unknown_command() {
        let err = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert!(matches!(err, EnvError::UnknownCommand { .. }));
        assert!(err.to_string().contains("CNI_COMMAND"));
    }

    #[test]
    fn add_and_check_need_everything_but_path() {
        for cmd in ["ADD", "CHECK"] {
            let e = env_owned(&with(cmd, FULL)).unwrap();
            assert_eq!(e.container_id, "abc123");
            assert_eq!(
                e.netns.as_deref(),
                Some(std::path::Path::new("/run/netns/x"))
            );
            assert_eq!(e.state_dir, PathBuf::from(DEFAULT_STATE_DIR));

            let err = env(&[("CNI_COMMAND", cmd)]).unwrap_err();
            assert_eq!(
                err,
                EnvError::Missing {
                    command: cmd.to_string(),
                    names: vec!["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
                }
            );
            assert!(err
                .to_string()
                .contains("[CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME]"));
            // CNI_PATH is optional for ADD and CHECK in the 1.1 spec.
            let no_path: Vec<_> = FULL
                .iter()
                .copied()
                .filter(|(k, _)| *k != "CNI_PATH")
                .collect();
            assert!(env_owned(&with(cmd, &no_path)).is_ok());
        }
    }

    #[test]
    fn del_accepts_empty_netns() {
        let no_netns: Vec<_> = FULL
            .iter()
            .copied()
            .map(|(k, v)| if k == "CNI_NETNS" { (k, "") } else { (k, v) })
            .collect();
        let e = env_owned(&with("DEL", &no_netns)).unwrap();
        assert_eq!(e.netns, None);
        let err = env(&[("CNI_COMMAND", "DEL")]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Missing {
                command: "DEL".into(),
                names: vec!["CNI_CONTAINERID", "CNI_IFNAME"]
            }
        );
    }

    #[test]
    fn gc_needs_path_status_and_version_need_nothing() {
        let err = env(&[("CNI_COMMAND", "GC")]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Missing {
                command: "GC".into(),
                names: vec!["CNI_PATH"]
            }
        );
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap().command,
            Command::Status
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
    }

    #[test]
    fn container_id_rules() {
        for ok in ["a", "0abc", "a_b.c-d", "4f3c2b1a"] {
            validate_container_id(ok).unwrap();
        }
        for bad in ["", "-a", "_a", "a/b", "a b", "a@b", "ä"] {
            let err = validate_container_id(bad).unwrap_err();
            assert!(err.to_string().contains("CNI_CONTAINERID"), "{err}");
        }
        let mut v = with("ADD", FULL);
        v.retain(|(k, _)| *k != "CNI_CONTAINERID");
        v.push(("CNI_CONTAINERID", "../etc".into()));
        assert!(matches!(
            env_owned(&v),
            Err(EnvError::Invalid {
                name: "CNI_CONTAINERID",
                ..
            })
        ));
    }

    #[test]
    fn ifname_rules() {
        for ok in ["eth0", "net1", "a.b", "x-y_z", "123456789012345"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [".", "..", "a/b", "a:b", "a b", "1234567890123456", "a\tb"] {
            let err = validate_ifname(bad).unwrap_err();
            assert!(err.to_string().contains("CNI_IFNAME"), "{bad}: {err}");
        }
    }

    #[test]
    fn state_dir_override_and_length_bound() {
        let mut v = with("STATUS", &[]);
        v.push((STATE_DIR_VAR, "/tmp/x".into()));
        assert_eq!(env_owned(&v).unwrap().state_dir, PathBuf::from("/tmp/x"));

        let mut v = with("ADD", FULL);
        v.push(("CNI_ARGS", "A=".to_string() + &"b".repeat(MAX_VALUE_LEN)));
        // The later CNI_ARGS wins in the map.
        assert!(matches!(
            env_owned(&v),
            Err(EnvError::TooLong {
                name: "CNI_ARGS",
                ..
            })
        ));
    }

    #[test]
    fn non_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let err = Env::from_lookup(|n| match n {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_NETNS" => Some(bad.clone()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err, EnvError::NotUtf8 { name: "CNI_NETNS" });
    }
}

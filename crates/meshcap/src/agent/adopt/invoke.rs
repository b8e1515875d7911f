//! Running the installed plugin for a cached attachment as the runtime would have: the
//! network's current config (meshcap's entry in its chain), the stdin libcni builds for the
//! last plugin of a list, the `CNI_*` environment, a deadline, and what the plugin answered.
//! The runtime-side mechanics are `meshcap-cni-runtime`'s.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshcap_cni_runtime::cache::CacheEntry;
use meshcap_cni_runtime::invoke::{self, Failure, Invocation};
use serde_json::{Map, Value};

use crate::install;

/// Longer than the plugin's own longest deadline (the Kubernetes API path, at most 60 s).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(90);

/// A network as its current config in `--cni-conf-dir` defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: Option<Value>,
    /// meshcap's entry in its chain (the last one, if several).
    pub entry: Option<Map<String, Value>>,
}

/// Every network of `dir` by name. Like libcni's `LoadConfList`, the first file in lexical
/// order (`.conf`, `.conflist`, `.json`) that defines a name wins; a single-plugin `.conf`
/// defines a network without meshcap (`meshcap install` turns it into a `.conflist`).
pub fn load_networks(dir: &Path) -> io::Result<BTreeMap<String, Network>> {
    let mut networks = BTreeMap::new();
    for (_, conf) in install::config_files(dir)? {
        let Some(name) = conf.get("name").and_then(Value::as_str) else {
            continue;
        };
        if networks.contains_key(name) {
            continue;
        }
        let entry = conf
            .get("plugins")
            .and_then(Value::as_array)
            .and_then(|p| p.iter().rev().find(|p| install::is_meshcap(p)))
            .and_then(Value::as_object)
            .cloned();
        networks.insert(
            name.to_owned(),
            Network {
                name: name.to_owned(),
                cni_version: conf.get("cniVersion").cloned(),
                entry,
            },
        );
    }
    Ok(networks)
}

/// The network named `name` and meshcap's entry in its chain, when it chains meshcap.
pub(super) fn chained<'a>(
    networks: &'a BTreeMap<String, Network>,
    name: &str,
) -> Option<(&'a Network, &'a Map<String, Value>)> {
    let network = networks.get(name)?;
    Some((network, network.entry.as_ref()?))
}

/// The plugin's stdin, as libcni's `buildOneConfig` makes it for the last plugin of the list:
/// the entry with the list's `name` and `cniVersion`, `runtimeConfig` holding the capability
/// args the entry declares in `capabilities` (only when there are any, as libcni does), and the
/// chain's result as `prevResult`.
pub fn plugin_stdin(network: &Network, entry: &Map<String, Value>, cache: &CacheEntry) -> Value {
    invoke::plugin_stdin(
        entry,
        &network.name,
        network.cni_version.as_ref(),
        &cache.capability_args,
        cache.result.clone().map(Value::Object).as_ref(),
    )
}

/// What the plugin's exit status and stdout say for `command`: `Ok` on success (a result
/// object for ADD; DEL prints nothing), else the CNI error (`code`, `msg`, `details`) or, when
/// stdout is not one, the status and stderr.
pub fn plugin_outcome(
    command: &str,
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<(), String> {
    match invoke::outcome(success, stdout) {
        Ok(Some(Value::Object(_))) => Ok(()),
        Ok(None) if command != "ADD" => Ok(()),
        Ok(_) | Err(Failure::BadOutput) if success => Err(format!(
            "exit status 0 but stdout is not a CNI result: {:?}",
            invoke::tail(stdout)
        )),
        Err(Failure::Cni(error)) => Err(error.to_string()),
        _ => Err(format!(
            "failed without a CNI error on stdout ({:?}); stderr: {:?}",
            invoke::tail(stdout),
            invoke::tail(stderr)
        )),
    }
}

/// The installed plugin, run as the runtime would have run it.
#[derive(Debug, Clone)]
pub(super) struct Plugin {
    /// `<cni-bin-dir>/meshcap-cni`.
    pub path: PathBuf,
    /// `CNI_PATH`.
    pub bin_dir: PathBuf,
    /// `MESHCAP_STATE_DIR`: where its record lands (the agent's `--state-dir`).
    pub state_root: PathBuf,
}

impl Plugin {
    pub fn is_installed(&self) -> bool {
        self.path.is_file()
    }

    /// Runs the installed plugin as a runtime does.
    pub fn exec(
        &self,
        command: &str,
        entry: &CacheEntry,
        netns: Option<&Path>,
        stdin: &Value,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.path);
        Invocation {
            command,
            container_id: &entry.container_id,
            netns,
            ifname: &entry.if_name,
            args: &entry.cni_args_env(),
            path: &self.bin_dir,
        }
        .apply(&mut cmd);
        cmd.env(meshcap_records::STATE_DIR_VAR, &self.state_root);
        let stdin = serde_json::to_vec(stdin).expect("a JSON value serializes");
        let out = invoke::run(cmd, &stdin, Some(PLUGIN_TIMEOUT)).map_err(|e| e.to_string())?;
        plugin_outcome(command, out.status.success(), &out.stdout, &out.stderr)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde_json::json;

    use super::super::testdata::{cache_file, conflist};
    use super::*;
    use crate::install::PLUGIN_TYPE;

    #[test]
    fn stdin_is_what_libcni_gives_the_last_plugin() {
        let cache = CacheEntry::parse(&cache_file(&conflist(false), None))
            .unwrap()
            .unwrap();
        let network = Network {
            name: "podnet".into(),
            cni_version: Some(json!("1.1.0")),
            entry: None,
        };
        let entry = json!({
            "type": PLUGIN_TYPE,
            "mode": "nftables",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": false, "bandwidth": true}
        });
        let stdin = plugin_stdin(&network, entry.as_object().unwrap(), &cache);
        assert_eq!(stdin["name"], "podnet");
        assert_eq!(stdin["cniVersion"], "1.1.0");
        assert_eq!(stdin["type"], PLUGIN_TYPE);
        assert_eq!(stdin["mode"], "nftables");
        // Declared and passed: in; declared false: out; declared but not passed: absent.
        assert_eq!(
            stdin["runtimeConfig"],
            json!({"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"}})
        );
        assert_eq!(
            stdin["prevResult"],
            Value::Object(cache.result.clone().unwrap())
        );

        // Nothing declared that the runtime passed: no runtimeConfig at all.
        let bare = json!({"type": PLUGIN_TYPE, "capabilities": {"portMappings": false}});
        let stdin = plugin_stdin(&network, bare.as_object().unwrap(), &cache);
        assert!(stdin.get("runtimeConfig").is_none(), "{stdin}");
        let no_caps = json!({"type": PLUGIN_TYPE});
        let stdin = plugin_stdin(&network, no_caps.as_object().unwrap(), &cache);
        assert!(stdin.get("runtimeConfig").is_none(), "{stdin}");

        // The plugin accepts it.
        let entry = json!({"type": PLUGIN_TYPE, "capabilities": {"io.kubernetes.cri.pod-annotations": true}});
        let stdin = plugin_stdin(&network, entry.as_object().unwrap(), &cache);
        let config = meshcap_cni::config::Config::parse(&serde_json::to_vec(&stdin).unwrap())
            .expect("the plugin decodes it");
        assert_eq!(config.name, "podnet");
        assert!(config.prev_result.is_some());
        assert_eq!(
            config
                .pod_annotations
                .unwrap()
                .get("sidecar.istio.io/status")
                .map(String::as_str),
            Some("{}")
        );
    }

    #[test]
    fn plugin_outcomes() {
        assert_eq!(
            plugin_outcome("ADD", true, br#"{"cniVersion":"1.0.0"}"#, b""),
            Ok(())
        );
        // ADD prints a result; DEL prints nothing (CNI spec).
        let err = plugin_outcome("ADD", true, b"", b"").unwrap_err();
        assert!(err.contains("not a CNI result"), "{err}");
        assert_eq!(plugin_outcome("DEL", true, b"", b""), Ok(()));
        assert!(plugin_outcome("DEL", true, b"garbage", b"").is_err());
        let err = plugin_outcome(
            "ADD",
            false,
            br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid pod annotation","details":"x"}"#,
            b"",
        )
        .unwrap_err();
        assert_eq!(err, "CNI error 7: invalid pod annotation (x)");
        let err = plugin_outcome("DEL", false, b"", b"thread main panicked").unwrap_err();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn networks_by_name_first_file_wins() {
        let scratch = meshcap_testkit::ScratchDir::new("adopt-nets");
        let dir = scratch.path();
        let write = |name: &str, v: &Value| fs::write(dir.join(name), v.to_string()).unwrap();
        write("10-podnet.conflist", &conflist(true));
        // Same name later in lexical order: shadowed, as libcni's LoadConfList does.
        write("20-podnet.conflist", &conflist(false));
        write(
            "30-other.conf",
            &json!({"cniVersion": "0.4.0", "name": "other", "type": "bridge"}),
        );
        fs::write(dir.join("40-broken.conflist"), "{").unwrap();
        write("50-ignored.txt", &json!({"name": "txt", "plugins": []}));
        let nets = load_networks(dir).unwrap();
        assert_eq!(nets.keys().collect::<Vec<_>>(), ["other", "podnet"]);
        assert_eq!(nets["podnet"].cni_version, Some(json!("1.0.0")));
        assert_eq!(nets["podnet"].entry.as_ref().unwrap()["type"], PLUGIN_TYPE);
        assert_eq!(nets["other"].entry, None);
    }
}

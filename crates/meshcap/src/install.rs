//! `meshcap install` / `meshcap uninstall`: put `meshcap-cni` into the node's CNI chain.
//!
//! The primary network config is chosen as libcni (and so the kubelet's runtime) does: the
//! first file in lexical order with a `.conf`, `.conflist` or `.json` extension that parses as a
//! network config. meshcap appends its entry last in that file's `plugins` (a single-plugin
//! `.conf` becomes a `.conflist`), writes atomically with the original permissions, and keeps
//! the original bytes so `uninstall` can restore the file exactly.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Map, Value};

pub const PLUGIN_TYPE: &str = "meshcap-cni";
/// Where the original of an edited config is kept (a hidden directory libcni never reads).
const BACKUP_DIR: &str = ".meshcap-backup";

#[derive(Args, Clone)]
pub struct InstallArgs {
    /// Directory of the node's CNI network configs.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Directory of the node's CNI plugin binaries.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The meshcap-cni binary to install (default: next to this meshcap binary).
    #[arg(long)]
    pub plugin_binary: Option<PathBuf>,
    /// Backend: iptables or nftables (checked before anything is written).
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "nftables"])]
    pub mode: String,
    /// Pod selection: injected or all (checked before anything is written).
    #[arg(long, default_value = "injected", value_parser = ["injected", "all"])]
    pub selection: String,
    /// Kubernetes namespaces never captured (repeatable).
    #[arg(long = "exclude-namespace", default_values = ["kube-system"])]
    pub exclude_namespaces: Vec<String>,
    /// Kubeconfig the plugin uses to read pod annotations when the runtime passes none.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// `kubernetes.read_pod`: `meshed` reads every meshed pod from the API (needs
    /// `--kubeconfig`), so the settings Istio takes from the pod spec come from the pod
    /// instead of the node defaults; `when-needed` only when the runtime passes no annotations.
    #[arg(long, value_name = "WHEN")]
    pub read_pod: Option<String>,
    /// A node-wide default of a setting Istio takes from the pod spec or the mesh config, as
    /// KEY=VALUE with VALUE in JSON (a bare word is a string), written to the plugin's `istio`
    /// object (repeatable): e.g. `dns_capture=true`, `proxy_uids=[1337]`,
    /// `outbound_owner_groups_exclude=888`, `dns_servers=["10.96.0.10"]`. Keys and meaning:
    /// docs/CONFIGURATION.md.
    #[arg(long = "istio-default", value_name = "KEY=VALUE")]
    pub istio_defaults: Vec<String>,
    /// A mesh whose pods this node captures (`istio`, `linkerd`, `kuma`; repeatable), written
    /// as the plugin's `meshes`. Default: the plugin's default, every mesh.
    #[arg(long = "mesh", value_name = "MESH")]
    pub meshes: Vec<String>,
    /// A linkerd-cni node setting as KEY=VALUE (VALUE in JSON, a bare word a string), written
    /// to the plugin's `linkerd` object (repeatable): e.g. `proxy_uid=2102`, `ipv6=true`,
    /// `inbound_ports_to_ignore=["4191","4190"]`, `control_plane_namespaces=["linkerd"]`.
    #[arg(long = "linkerd", value_name = "KEY=VALUE")]
    pub linkerd: Vec<String>,
    /// A kuma-cni node setting as KEY=VALUE, written to the plugin's `kuma` object
    /// (repeatable): `exclude_namespaces=["kube-system"]`.
    #[arg(long = "kuma", value_name = "KEY=VALUE")]
    pub kuma: Vec<String>,
    /// Register pods with the eBPF fast path.
    #[arg(long)]
    pub ebpf: bool,
    /// `ebpf.pin_dir`: where the node agent pins the fast path (its `--pin-dir`), when not
    /// the default.
    #[arg(long, value_name = "DIR")]
    pub ebpf_pin_dir: Option<PathBuf>,
    #[arg(long, default_value = "/var/log/meshcap-cni.log")]
    pub log_file: PathBuf,
    /// `log_file_max_bytes`: the size at which the plugin moves its log to `<log-file>.1` and
    /// starts a new one (0: never); the plugin's default (10 MiB) when not given.
    #[arg(long, value_name = "BYTES")]
    pub log_file_max_bytes: Option<u64>,
}

/// Present in the CNI config dir while `uninstall` runs: the agent's config watch must not put
/// the entry back in the grace period while the binary is still there.
pub const UNINSTALLING_MARKER: &str = ".meshcap-uninstalling";

/// The chain entry the last `install` wrote, in the CNI config dir (no `.conf`/`.conflist`/
/// `.json` extension, so libcni never reads it). The agent's config watch restores this entry:
/// it cannot rely on seeing the entry in the conflist itself, because another component
/// rewriting the file in a loop may overwrite it before the agent's first look.
pub const ENTRY_FILE: &str = ".meshcap-entry";

/// The plugin's kubeconfig, in the CNI config dir (written by `meshcap node install`, `meshcap
/// node agent` and `meshcap node kubeconfig`).
pub const KUBECONFIG_NAME: &str = "meshcap-kubeconfig";

#[derive(Args, Clone)]
pub struct UninstallArgs {
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin's attachment records (its MESHCAP_STATE_DIR), removed: pods the runtime
    /// tears down after the uninstall no longer run meshcap's DEL.
    #[arg(long, default_value = meshcap_records::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// How long to leave the plugin binary in place after taking meshcap out of the chain, in
    /// milliseconds: the runtime reloads the config on the change, and a pod start or stop
    /// already under way with the old chain still finds the plugin.
    #[arg(long, default_value_t = 1000)]
    pub grace_ms: u64,
    /// The plugin's run directory: its xtables templates, apply journals and legacy lock
    /// files are removed.
    #[arg(long, default_value = meshcap_dataplane::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// The eBPF fast path's pin directory (`meshcap agent --pin-dir`): its pinned programs
    /// and maps are removed, so the programs detach once no running agent holds them.
    #[arg(long, default_value = meshcap_fastpath::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Leave the eBPF fast path pinned.
    #[arg(long)]
    pub keep_fast_path: bool,
}

/// An object of `--FLAG KEY=VALUE` flags (VALUE in JSON, else a string).
fn key_values(flag_name: &str, flags: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut obj = Map::new();
    for flag in flags {
        let Some((key, value)) = flag.split_once('=') else {
            bail!("--{flag_name} {flag:?} is not KEY=VALUE");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        obj.insert(key.to_owned(), value);
    }
    Ok(obj)
}

/// The `linkerd` or `kuma` object of `--linkerd`/`--kuma` flags, validated as the plugin reads
/// it (unknown keys and ill-typed values are refused).
fn mesh_settings<T: serde::de::DeserializeOwned>(
    flag_name: &str,
    flags: &[String],
) -> anyhow::Result<Map<String, Value>> {
    let obj = key_values(flag_name, flags)?;
    serde_json::from_value::<T>(Value::Object(obj.clone()))
        .map_err(|e| anyhow::anyhow!("--{flag_name}: {flag_name}.{e}"))?;
    Ok(obj)
}

/// The `istio` object of `--istio-default` flags, validated as the plugin will read it.
fn istio_defaults(flags: &[String]) -> anyhow::Result<Map<String, Value>> {
    let obj = key_values("istio-default", flags)?;
    meshcap_model::mesh::istio::NodeDefaults::from_json(&obj)
        .map_err(|e| anyhow::anyhow!("--istio-default: {e}"))?;
    Ok(obj)
}

/// The meshcap entry appended to the chain.
pub fn plugin_entry(args: &InstallArgs) -> anyhow::Result<Value> {
    let mut entry = json!({
        "type": PLUGIN_TYPE,
        "mode": args.mode,
        "selection": args.selection,
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "exclude_namespaces": args.exclude_namespaces,
        "ebpf": {"enabled": args.ebpf},
        "log_file": args.log_file,
        "log_level": "info",
    });
    if let Some(dir) = &args.ebpf_pin_dir {
        entry["ebpf"]["pin_dir"] = json!(dir);
    }
    if let Some(bytes) = args.log_file_max_bytes {
        entry["log_file_max_bytes"] = json!(bytes);
    }
    if let Some(kc) = &args.kubeconfig {
        entry["kubernetes"] = json!({"kubeconfig": kc});
    }
    if let Some(when) = &args.read_pod {
        if !matches!(when.as_str(), "meshed" | "when-needed") {
            bail!("--read-pod {when:?}: expected meshed or when-needed");
        }
        if args.kubeconfig.is_none() && when == "meshed" {
            bail!("--read-pod meshed needs --kubeconfig");
        }
        entry["kubernetes"]["read_pod"] = json!(when);
    }
    let istio = istio_defaults(&args.istio_defaults)?;
    if !istio.is_empty() {
        entry["istio"] = Value::Object(istio);
    }
    if !args.meshes.is_empty() {
        let mut meshes = Vec::new();
        for m in &args.meshes {
            let mesh: meshcap_model::mesh::Mesh = serde_json::from_value(json!(m))
                .map_err(|_| anyhow::anyhow!("--mesh {m:?}: expected istio, linkerd or kuma"))?;
            if meshes.contains(&mesh) {
                bail!("--mesh {m:?} is given twice");
            }
            meshes.push(mesh);
        }
        entry["meshes"] = json!(meshes);
    }
    let linkerd =
        mesh_settings::<meshcap_model::mesh::linkerd::LinkerdNode>("linkerd", &args.linkerd)?;
    if !linkerd.is_empty() {
        // Settings that would fail every Linkerd pod's ADD (a uid of 0 with no gid, a subnet
        // that is no CIDR) are refused here, on a pod that states nothing of its own.
        use meshcap_model::mesh::linkerd;
        let node: linkerd::LinkerdNode = serde_json::from_value(Value::Object(linkerd.clone()))?;
        linkerd::model(
            &meshcap_model::Annotations::new(),
            &linkerd::PodSettings::resolve(&node, None, None),
            &mut Vec::new(),
        )
        .map_err(|e| anyhow::anyhow!("--linkerd: {e}"))?;
        entry["linkerd"] = Value::Object(linkerd);
    }
    let kuma = mesh_settings::<meshcap_model::mesh::kuma::KumaNode>("kuma", &args.kuma)?;
    if !kuma.is_empty() {
        entry["kuma"] = Value::Object(kuma);
    }
    Ok(entry)
}

/// The network config files of `dir` that parse as JSON objects, in lexical order (`.conf`,
/// `.conflist`, `.json`), as libcni reads them.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Map<String, Value>)>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .filter_map(
            |file| match serde_json::from_slice(&fs::read(&file).ok()?) {
                Ok(Value::Object(conf)) => Some((file, conf)),
                _ => None,
            },
        )
        .collect())
}

/// The primary config file: the first valid one in lexical order, as libcni picks it.
pub fn primary_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let files =
        config_files(dir).with_context(|| format!("reading CNI config dir {}", dir.display()))?;
    for (file, conf) in files {
        let valid = if is_list(&file) {
            conf.get("plugins")
                .is_some_and(|p| p.as_array().is_some_and(|a| !a.is_empty()))
        } else {
            conf.get("type").is_some_and(Value::is_string)
        };
        if valid {
            return Ok(file);
        }
    }
    bail!("no valid CNI network config in {}", dir.display())
}

pub fn is_list(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("conflist")
}

pub fn is_meshcap(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The config with meshcap's entry last, as a conflist; `None` when it already is.
pub fn with_entry(conf: &Map<String, Value>, list: bool, entry: &Value) -> Option<Value> {
    let mut out;
    if list {
        out = conf.clone();
        let plugins = out
            .get_mut("plugins")
            .and_then(Value::as_array_mut)
            .expect("validated conflist");
        if plugins.last().is_some_and(|p| p == entry)
            && plugins.iter().filter(|p| is_meshcap(p)).count() == 1
        {
            return None;
        }
        plugins.retain(|p| !is_meshcap(p));
        plugins.push(entry.clone());
    } else {
        // A single plugin config becomes a one-element conflist plus meshcap; the network's
        // name and version move up, as libcni's ConfListFromConf does.
        let mut plugin = conf.clone();
        out = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = conf.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        plugin.remove("name");
        out.insert("plugins".into(), json!([plugin, entry]));
    }
    Some(Value::Object(out))
}

/// Write `bytes` to `path` atomically with `mode` permissions: a new temp file in the same
/// directory (so the rename never crosses a filesystem), written and fsynced, then renamed over
/// `path`, then the directory fsynced. A runtime that executes `path` at any moment (the plugin
/// binary during an upgrade) runs either the old file or the new one, never a partly written
/// one, and a crash leaves one of the two, not a truncated file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.meshcap-tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // create_new: never write through a file someone else has open (or a symlink).
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn default_plugin_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the meshcap binary")?;
    Ok(exe.with_file_name(PLUGIN_TYPE))
}

/// Install the binary and the chain entry. Returns the config file it edited.
pub fn install(args: &InstallArgs) -> anyhow::Result<PathBuf> {
    // Validate the flags before anything on the node changes.
    let entry = plugin_entry(args)?;
    let source = match &args.plugin_binary {
        Some(p) => p.clone(),
        None => default_plugin_binary()?,
    };
    let bytes =
        fs::read(&source).with_context(|| format!("reading plugin binary {}", source.display()))?;
    fs::create_dir_all(&args.cni_bin_dir)?;
    let dest = args.cni_bin_dir.join(PLUGIN_TYPE);
    if fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        write_atomic(&dest, &bytes, 0o755)?;
    }

    // Recorded before the conflist is edited: the agent learns the entry from here even when
    // another writer replaces the conflist right after this install.
    if fs::metadata(&args.cni_conf_dir).is_ok() {
        let mut text = serde_json::to_vec_pretty(&entry)?;
        text.push(b'\n');
        let path = args.cni_conf_dir.join(ENTRY_FILE);
        // Unchanged, it is left alone: the runtime reloads its CNI config on any write in
        // the directory, and the node agent re-installs every few seconds.
        if fs::read(&path).ok().as_deref() != Some(&text[..]) {
            write_atomic(&path, &text, 0o644)?;
        }
    }
    ensure_entry(&args.cni_conf_dir, &entry).map(|(file, _)| file)
}

/// An exclusive `flock` on the CNI config dir itself (no file of its own there: the runtime
/// reloads its config on any new file in it). `uninstall` holds it for its whole run; what keeps
/// an install in place holds it through [`lock_if_installed`].
fn lock_conf_dir(conf_dir: &Path) -> anyhow::Result<Flock<fs::File>> {
    let dir =
        fs::File::open(conf_dir).with_context(|| format!("opening {}", conf_dir.display()))?;
    Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", conf_dir.display()))
}

/// For what keeps an install in place (the node agent's periodic re-install, the config
/// watch): the config dir's lock, held from this look to the caller's last write so that an
/// uninstall never lands between the two, when meshcap is installed in `conf_dir` and no
/// `uninstall` is running there (the last `install` left its [`ENTRY_FILE`], which
/// `uninstall` removes); `None` otherwise, so an uninstall stays done while they run.
pub fn lock_if_installed(conf_dir: &Path) -> anyhow::Result<Option<Flock<fs::File>>> {
    let locked = lock_conf_dir(conf_dir)?;
    let installed =
        conf_dir.join(ENTRY_FILE).exists() && !conf_dir.join(UNINSTALLING_MARKER).exists();
    Ok(installed.then_some(locked))
}

/// The entry recorded by the last `install` ([`ENTRY_FILE`]); `None` when there is none or it
/// is not a meshcap entry.
pub fn recorded_entry(conf_dir: &Path) -> Option<Value> {
    let entry: Value = serde_json::from_slice(&fs::read(conf_dir.join(ENTRY_FILE)).ok()?).ok()?;
    is_meshcap(&entry).then_some(entry)
}

/// Puts `entry` last in the primary config's chain (the chain step of `install`, also what
/// `meshcap agent` does when another component rewrote the file). Returns the file and
/// whether it had to be written.
pub fn ensure_entry(conf_dir: &Path, entry: &Value) -> anyhow::Result<(PathBuf, bool)> {
    let primary = primary_config(conf_dir)?;
    let original = fs::read(&primary)?;
    let conf: Map<String, Value> = serde_json::from_slice(&original)?;
    let list = is_list(&primary);
    let Some(updated) = with_entry(&conf, list, entry) else {
        return Ok((primary, false));
    };
    let target = if list {
        primary.clone()
    } else {
        primary.with_extension("conflist")
    };
    // Keep the original (only the first time: a re-install must not overwrite it with an
    // already edited file).
    let backup_dir = conf_dir.join(BACKUP_DIR);
    let backup = backup_dir.join(primary.file_name().context("config has no file name")?);
    if !backup.exists() && !conf_has_meshcap(&conf) {
        fs::create_dir_all(&backup_dir)?;
        write_atomic(&backup, &original, mode_of(&primary)?)?;
    }
    let mut text = serde_json::to_vec_pretty(&updated)?;
    text.push(b'\n');
    write_atomic(&target, &text, mode_of(&primary)?)?;
    if target != primary {
        fs::remove_file(&primary)?;
    }
    Ok((target, true))
}

/// Whether a network config (a conflist, or a single plugin) chains meshcap-cni.
pub fn conf_has_meshcap(conf: &Map<String, Value>) -> bool {
    is_meshcap(&Value::Object(conf.clone()))
        || conf
            .get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(is_meshcap))
}

/// Remove meshcap's entry (restoring the original bytes when nothing else changed) and binary.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<Option<PathBuf>> {
    let marker = args.cni_conf_dir.join(UNINSTALLING_MARKER);
    let _locked = if args.cni_conf_dir.is_dir() {
        let locked = lock_conf_dir(&args.cni_conf_dir)?;
        write_atomic(&marker, b"", 0o644)?;
        Some(locked)
    } else {
        None
    };
    let result = uninstall_marked(args);
    let _ = fs::remove_file(&marker);
    result
}

fn uninstall_marked(args: &UninstallArgs) -> anyhow::Result<Option<PathBuf>> {
    let mut restored = None;
    let backup_dir = args.cni_conf_dir.join(BACKUP_DIR);
    if let Ok(primary) = primary_config(&args.cni_conf_dir) {
        let current: Map<String, Value> = serde_json::from_slice(&fs::read(&primary)?)?;
        if conf_has_meshcap(&current) {
            let mut without = current.clone();
            if let Some(plugins) = without.get_mut("plugins").and_then(Value::as_array_mut) {
                plugins.retain(|p| !is_meshcap(p));
            }
            // Which backup belongs to this file: same name, or the single-plugin .conf or
            // .json it came from.
            let candidates = [
                primary.file_name().map(|n| backup_dir.join(n)),
                primary
                    .with_extension("conf")
                    .file_name()
                    .map(|n| backup_dir.join(n)),
                primary
                    .with_extension("json")
                    .file_name()
                    .map(|n| backup_dir.join(n)),
            ];
            let backup = candidates.into_iter().flatten().find(|b| b.exists());
            let mode = mode_of(&primary)?;
            match backup {
                Some(b) => {
                    let original = fs::read(&b)?;
                    let orig_conf: Map<String, Value> = serde_json::from_slice(&original)?;
                    let orig_as_list =
                        with_entry(&orig_conf, is_list(&b), &json!(null)).map(|mut v| {
                            if let Some(p) = v.get_mut("plugins").and_then(Value::as_array_mut) {
                                p.retain(|x| !x.is_null());
                            }
                            v
                        });
                    let same = Value::Object(without.clone()) == Value::Object(orig_conf.clone())
                        || orig_as_list.as_ref() == Some(&Value::Object(without.clone()));
                    let target = primary.with_file_name(b.file_name().context("backup name")?);
                    if same {
                        write_atomic(&target, &original, mode)?;
                    } else {
                        // Someone else changed the file since: keep their changes, drop ours.
                        let mut text = serde_json::to_vec_pretty(&without)?;
                        text.push(b'\n');
                        write_atomic(&primary, &text, mode)?;
                    }
                    if target != primary && same {
                        fs::remove_file(&primary)?;
                    }
                    fs::remove_file(&b)?;
                    restored = Some(target);
                }
                None => {
                    let mut text = serde_json::to_vec_pretty(&without)?;
                    text.push(b'\n');
                    write_atomic(&primary, &text, mode)?;
                    restored = Some(primary);
                }
            }
        }
    }
    let _ = fs::remove_dir(&backup_dir);
    // The plugin's log, as the last install configured it (read before the entry goes).
    let log_file = recorded_entry(&args.cni_conf_dir)
        .and_then(|e| e.get("log_file").and_then(Value::as_str).map(PathBuf::from));
    remove_if_present(&args.cni_conf_dir.join(KUBECONFIG_NAME))?;
    remove_if_present(&args.cni_conf_dir.join(ENTRY_FILE))?;
    if restored.is_some() {
        std::thread::sleep(std::time::Duration::from_millis(args.grace_ms));
    }
    match fs::remove_dir_all(&args.state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", args.state_dir.display())),
    }
    // The records' parent (`/var/run/meshcap`) holds only meshcap's run state.
    if let Some(parent) = args.state_dir.parent() {
        let _ = fs::remove_dir(parent.join("locks"));
        let _ = fs::remove_dir(parent);
    }
    remove_if_present(&args.cni_bin_dir.join(PLUGIN_TYPE))?;
    meshcap_dataplane::remove_run_state(&args.run_dir)
        .with_context(|| format!("removing meshcap's state under {}", args.run_dir.display()))?;
    if !args.keep_fast_path {
        // Pods still running keep their capture by rules; only the shortcut goes.
        meshcap_fastpath::agent::uninstall(&args.pin_dir).with_context(|| {
            format!(
                "removing the eBPF fast path pinned under {}",
                args.pin_dir.display()
            )
        })?;
    }
    if let Some(log) = log_file {
        remove_plugin_log(&log);
    }
    Ok(restored)
}

/// Removes the plugin's log and the one it moved aside (`.1`), last and best effort (a log
/// left behind is no reason to fail an uninstall), and only a file meshcap names as its own:
/// a log path shared with other components (`/var/log/cni.log`) is left alone.
fn remove_plugin_log(log: &Path) {
    let ours = log.is_absolute()
        && log
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("meshcap"));
    if !ours {
        return;
    }
    let mut moved_aside = log.as_os_str().to_owned();
    moved_aside.push(".1");
    for file in [log, Path::new(&moved_aside)] {
        if let Err(e) = fs::remove_file(file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("meshcap uninstall: leaving {}: {e}", file.display());
            }
        }
    }
}

fn remove_if_present(file: &Path) -> anyhow::Result<()> {
    match fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's CNI config and binary directories and a plugin to install, in a scratch
    /// directory.
    struct NodeDirs(meshcap_testkit::ScratchDir);
    impl NodeDirs {
        fn new(name: &str) -> Self {
            let dirs = NodeDirs(meshcap_testkit::ScratchDir::new(&format!("install-{name}")));
            fs::create_dir_all(dirs.join("net.d")).unwrap();
            fs::create_dir_all(dirs.join("bin")).unwrap();
            fs::write(dirs.join("meshcap-cni"), b"#!plugin").unwrap();
            dirs
        }
        fn join(&self, path: impl AsRef<Path>) -> PathBuf {
            self.0.path().join(path)
        }
        fn args(&self) -> InstallArgs {
            InstallArgs {
                cni_conf_dir: self.join("net.d"),
                cni_bin_dir: self.join("bin"),
                plugin_binary: Some(self.join("meshcap-cni")),
                mode: "nftables".into(),
                selection: "injected".into(),
                exclude_namespaces: vec!["kube-system".into()],
                kubeconfig: None,
                read_pod: None,
                istio_defaults: Vec::new(),
                meshes: Vec::new(),
                linkerd: Vec::new(),
                kuma: Vec::new(),
                ebpf: false,
                ebpf_pin_dir: None,
                log_file: self.join("log/meshcap-cni.log"),
                log_file_max_bytes: None,
            }
        }
        fn uargs(&self) -> UninstallArgs {
            UninstallArgs {
                cni_conf_dir: self.join("net.d"),
                cni_bin_dir: self.join("bin"),
                state_dir: self.join("run/attachments"),
                grace_ms: 0,
                run_dir: self.join("run"),
                pin_dir: self.join("bpf/meshcap"),
                keep_fast_path: false,
            }
        }
    }

    const FLANNEL: &str = include_str!("../tests/fixtures/flannel.conflist");

    #[test]
    fn istio_defaults_and_read_pod_are_written_validated() {
        let t = NodeDirs::new("istio-defaults");
        let mut args = t.args();
        args.istio_defaults = vec![
            "dns_capture=true".into(),
            "proxy_uids=[1337, 1338]".into(),
            "outbound_owner_groups_exclude=888".into(),
        ];
        args.kubeconfig = Some("/etc/meshcap/kubeconfig".into());
        args.read_pod = Some("meshed".into());
        let entry = plugin_entry(&args).unwrap();
        assert_eq!(
            entry["istio"],
            json!({"dns_capture": true, "proxy_uids": [1337, 1338],
                   "outbound_owner_groups_exclude": 888})
        );
        assert_eq!(entry["kubernetes"]["read_pod"], "meshed");
        // A bad value names the key and nothing is written.
        args.istio_defaults = vec!["dns_capture=maybe".into()];
        let err = install(&args).unwrap_err().to_string();
        assert!(err.contains("istio.dns_capture"), "{err}");
        assert!(!args.cni_bin_dir.join(PLUGIN_TYPE).exists());
        args.istio_defaults.clear();
        args.kubeconfig = None;
        assert!(plugin_entry(&args).is_err(), "meshed needs a kubeconfig");
    }

    #[test]
    fn meshes_and_mesh_settings_are_written_validated() {
        let t = NodeDirs::new("mesh-settings");
        let mut args = t.args();
        args.meshes = vec!["linkerd".into(), "kuma".into()];
        args.linkerd = vec![
            "proxy_uid=3000".into(),
            "ipv6=true".into(),
            r#"outbound_ports_to_ignore=["3306","8000-8010"]"#.into(),
            r#"control_plane_namespaces=["l5d"]"#.into(),
        ];
        args.kuma = vec![r#"exclude_namespaces=["kube-system","kuma-system"]"#.into()];
        let entry = plugin_entry(&args).unwrap();
        assert_eq!(entry["meshes"], json!(["linkerd", "kuma"]));
        assert_eq!(
            entry["linkerd"],
            json!({"proxy_uid": 3000, "ipv6": true,
                   "outbound_ports_to_ignore": ["3306", "8000-8010"],
                   "control_plane_namespaces": ["l5d"]})
        );
        assert_eq!(
            entry["kuma"],
            json!({"exclude_namespaces": ["kube-system", "kuma-system"]})
        );
        // Every bad value is refused before anything is written, naming the flag and key.
        for (field, value, says) in [
            ("mesh", "consul", "--mesh"),
            ("mesh", "kuma", "twice"),
            ("linkerd", "proxy_uid=abc", "linkerd."),
            ("linkerd", "proxy_port=1", "proxy_port"),
            ("linkerd", "inbound_proxy_port=70000", "linkerd."),
            ("kuma", "exclude_namespace=[]", "exclude_namespace"),
            ("kuma", "exclude_namespaces=kube-system", "kuma."),
        ] {
            let mut bad = args.clone();
            match field {
                "mesh" => bad.meshes.push(value.into()),
                "linkerd" => bad.linkerd = vec![value.into()],
                _ => bad.kuma = vec![value.into()],
            }
            let err = install(&bad).unwrap_err().to_string();
            assert!(err.contains(says), "{field} {value}: {err}");
            assert!(!bad.cni_bin_dir.join(PLUGIN_TYPE).exists());
            assert!(fs::read_dir(bad.cni_conf_dir.clone())
                .unwrap()
                .next()
                .is_none());
        }
        // The plugin reads what install wrote.
        let mut conf = entry.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("net");
        let v: meshcap_model::mesh::linkerd::LinkerdNode =
            serde_json::from_value(conf["linkerd"].clone()).unwrap();
        assert_eq!(
            (v.proxy_uid, v.ipv6, v.inbound_proxy_port),
            (3000, true, 4143)
        );
    }

    #[test]
    fn ebpf_pin_dir_is_written_only_when_given() {
        let t = NodeDirs::new("pin-dir");
        let mut args = t.args();
        args.ebpf = true;
        assert_eq!(
            plugin_entry(&args).unwrap()["ebpf"],
            json!({"enabled": true})
        );
        args.ebpf_pin_dir = Some("/sys/fs/bpf/meshcap-alt".into());
        assert_eq!(
            plugin_entry(&args).unwrap()["ebpf"],
            json!({"enabled": true, "pin_dir": "/sys/fs/bpf/meshcap-alt"})
        );
    }

    #[test]
    fn log_file_max_bytes_is_written_only_when_given() {
        let t = NodeDirs::new("log-max");
        let mut args = t.args();
        assert!(plugin_entry(&args)
            .unwrap()
            .get("log_file_max_bytes")
            .is_none());
        args.log_file_max_bytes = Some(0);
        assert_eq!(plugin_entry(&args).unwrap()["log_file_max_bytes"], json!(0));
    }

    #[test]
    fn install_twice_gives_one_entry_last_and_uninstall_restores_bytes() {
        let t = NodeDirs::new("twice");
        let conf = t.join("net.d/10-flannel.conflist");
        fs::write(&conf, FLANNEL).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o640)).unwrap();
        // A later file in lexical order is not the primary.
        fs::write(t.join("net.d/99-other.conflist"), FLANNEL).unwrap();
        for _ in 0..2 {
            assert_eq!(install(&t.args()).unwrap(), conf);
        }
        let v: Value = serde_json::from_str(&fs::read_to_string(&conf).unwrap()).unwrap();
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2]["type"], PLUGIN_TYPE);
        assert_eq!(plugins[2]["mode"], "nftables");
        assert_eq!(mode_of(&conf).unwrap(), 0o640);
        assert_eq!(fs::read(t.join("bin/meshcap-cni")).unwrap(), b"#!plugin");
        assert_eq!(
            fs::read_to_string(t.join("net.d/99-other.conflist")).unwrap(),
            FLANNEL
        );

        let records = t.join("run/attachments/cbr0");
        fs::create_dir_all(&records).unwrap();
        fs::write(records.join("c1@eth0.json"), "{}").unwrap();
        fs::write(t.join("net.d").join(KUBECONFIG_NAME), "token").unwrap();
        // The plugin's run state beside the records, and a fast path's pin directory (plain
        // files stand in for the pins: removing them is the same unlink on bpffs).
        for dir in ["run/templates", "run/pending", "bpf/meshcap"] {
            fs::create_dir_all(t.join(dir)).unwrap();
        }
        fs::write(t.join("run/templates/ipv4-0123456789abcdef"), "template").unwrap();
        fs::write(t.join("run/pending/xtables-1-2"), "journal").unwrap();
        fs::write(t.join("bpf/meshcap/link_sockops"), "").unwrap();
        // The plugin's log and the one it moved aside; another file beside them stays.
        fs::create_dir_all(t.join("log")).unwrap();
        for file in ["meshcap-cni.log", "meshcap-cni.log.1", "other.log"] {
            fs::write(t.join("log").join(file), "line\n").unwrap();
        }
        uninstall(&t.uargs()).unwrap();
        assert!(!t.join("log/meshcap-cni.log").exists());
        assert!(!t.join("log/meshcap-cni.log.1").exists());
        assert!(t.join("log/other.log").exists());
        // A log shared with other components is not meshcap's to remove.
        remove_plugin_log(&t.join("log/other.log"));
        assert!(t.join("log/other.log").exists());
        assert_eq!(fs::read_to_string(&conf).unwrap(), FLANNEL);
        assert_eq!(mode_of(&conf).unwrap(), 0o640);
        assert!(
            !t.join("run").exists(),
            "records, templates, journals and their run dir removed"
        );
        assert!(!t.join("bpf/meshcap").exists(), "fast path unpinned");
        assert!(!t.join("net.d").join(KUBECONFIG_NAME).exists());
        assert!(!t.join("bin/meshcap-cni").exists());
        assert!(!t.join("net.d").join(BACKUP_DIR).exists());
    }

    #[test]
    fn linkerd_settings_that_fail_every_linkerd_pod_are_refused() {
        let t = NodeDirs::new("linkerd-bad");
        for (flags, why) in [
            (vec!["proxy_uid=0"], "loop back"),
            (vec!["subnets_to_ignore=[\"nope\"]"], "not a valid CIDR"),
        ] {
            let args = InstallArgs {
                linkerd: flags.iter().map(|f| f.to_string()).collect(),
                ..t.args()
            };
            let err = format!("{:#}", plugin_entry(&args).unwrap_err());
            assert!(
                err.contains("--linkerd") && err.contains(why),
                "{flags:?}: {err}"
            );
        }
        let args = InstallArgs {
            linkerd: vec!["proxy_uid=0".into(), "proxy_gid=2102".into()],
            ..t.args()
        };
        assert!(plugin_entry(&args).is_ok());
    }

    #[test]
    fn uninstall_can_keep_the_fast_path_and_keeps_a_shared_run_dir() {
        let t = NodeDirs::new("keep");
        fs::write(t.join("net.d/10-flannel.conflist"), FLANNEL).unwrap();
        install(&t.args()).unwrap();
        fs::create_dir_all(t.join("bpf/meshcap")).unwrap();
        fs::write(t.join("bpf/meshcap/link_sockops"), "").unwrap();
        fs::create_dir_all(t.join("run/templates")).unwrap();
        fs::write(t.join("run/someone-elses"), "").unwrap();
        let args = UninstallArgs {
            keep_fast_path: true,
            ..t.uargs()
        };
        uninstall(&args).unwrap();
        assert!(t.join("bpf/meshcap/link_sockops").exists());
        assert!(!t.join("run/templates").exists());
        assert!(t.join("run/someone-elses").exists());
    }

    /// A single plugin config, `.conf` or `.json` (libcni reads both), becomes a conflist and
    /// comes back byte for byte, its backup gone.
    #[test]
    fn single_conf_becomes_a_conflist_and_comes_back() {
        for ext in ["conf", "json"] {
            let t = NodeDirs::new(&format!("single-{ext}"));
            let original = r#"{"cniVersion":"1.0.0","name":"podnet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}}"#;
            let conf = t.join(format!("net.d/10-bridge.{ext}"));
            fs::write(&conf, original).unwrap();
            let written = install(&t.args()).unwrap();
            assert_eq!(written, t.join("net.d/10-bridge.conflist"), "{ext}");
            assert!(!conf.exists(), "{ext}");
            let v: Value = serde_json::from_str(&fs::read_to_string(&written).unwrap()).unwrap();
            assert_eq!(v["name"], "podnet");
            assert_eq!(v["plugins"][0]["type"], "bridge");
            assert!(v["plugins"][0].get("name").is_none());
            assert_eq!(v["plugins"][1]["type"], PLUGIN_TYPE);
            uninstall(&t.uargs()).unwrap();
            assert_eq!(fs::read_to_string(&conf).unwrap(), original, "{ext}");
            assert!(!written.exists(), "{ext}");
            assert!(!t.join("net.d").join(BACKUP_DIR).exists(), "{ext}");
        }
    }

    #[test]
    fn uninstall_keeps_changes_made_by_others() {
        let t = NodeDirs::new("others");
        let conf = t.join("net.d/10-flannel.conflist");
        fs::write(&conf, FLANNEL).unwrap();
        install(&t.args()).unwrap();
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&conf).unwrap()).unwrap();
        v["plugins"]
            .as_array_mut()
            .unwrap()
            .insert(1, json!({"type": "bandwidth"}));
        fs::write(&conf, serde_json::to_vec(&v).unwrap()).unwrap();
        uninstall(&t.uargs()).unwrap();
        let v: Value = serde_json::from_str(&fs::read_to_string(&conf).unwrap()).unwrap();
        let types: Vec<_> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].clone())
            .collect();
        assert_eq!(
            types,
            vec![json!("flannel"), json!("bandwidth"), json!("portmap")]
        );
    }

    #[test]
    fn invalid_files_are_skipped_when_picking_the_primary() {
        let t = NodeDirs::new("invalid");
        fs::write(t.join("net.d/00-broken.conflist"), "{not json").unwrap();
        fs::write(
            t.join("net.d/05-empty.conflist"),
            r#"{"name":"x","plugins":[]}"#,
        )
        .unwrap();
        fs::write(t.join("net.d/10-flannel.conflist"), FLANNEL).unwrap();
        assert_eq!(
            primary_config(&t.join("net.d")).unwrap(),
            t.join("net.d/10-flannel.conflist")
        );
        fs::remove_file(t.join("net.d/10-flannel.conflist")).unwrap();
        assert!(primary_config(&t.join("net.d")).is_err());
    }
}

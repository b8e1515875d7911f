//! The node agent: loads the eBPF object, attaches its programs, pins maps and links under
//! the pin directory (default `/sys/fs/bpf/meshcap`), and serves until SIGTERM.
//!
//! The attachments are pinned `bpf_link`s, so the data path outlives the agent process: an
//! agent restart or upgrade neither drops pods' registrations (maps are reused by name) nor
//! breaks connections paired before it. `uninstall` (or `AgentOptions::detach_on_exit`) removes
//! the pins, which detaches the programs and frees the maps; sockets in the freed sockhash fall
//! back to the normal TCP path.
#![forbid(unsafe_code)]

use std::{
    fs,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::SockHash,
    programs::{CgroupSockAddr, SkMsg, SockOps},
    Ebpf, EbpfLoader,
};
use meshcap_ebpf_common::{names, programs, SockKey};
use nix::sys::signal::{SigSet, Signal};

use crate::{
    support::{self, Support},
    sys::{self, AttachType},
    FastPathError, PinDir,
};

/// Pin names of the cgroup links (next to the maps in the pin directory).
pub(crate) const LINK_SOCK_OPS: &str = "link_sockops";
const LINK_CONNECT4: &str = "link_connect4";
const LINK_CONNECT6: &str = "link_connect6";
const LINKS: [&str; 3] = [LINK_SOCK_OPS, LINK_CONNECT4, LINK_CONNECT6];
const MAPS: [&str; 5] = [
    names::PODS,
    names::SOCKS,
    names::APPS,
    names::CONNECTS,
    names::COUNTERS,
];

/// The object built by build.rs: the real one with `MESHCAP_BUILD_EBPF=1`, else empty.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshcap-ebpf.o"));

/// True when this build embeds the real eBPF object (not the stub).
pub fn has_object() -> bool {
    !OBJECT.is_empty()
}

/// How `meshcap agent` runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Where maps and links are pinned; must be on a bpffs.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory to attach to; `None` finds the root of the unified hierarchy.
    pub cgroup: Option<PathBuf>,
    /// Detach and unpin everything, then return.
    pub uninstall: bool,
    /// On SIGTERM/SIGINT also detach and unpin (default: leave the data path in place for the
    /// next agent).
    pub detach_on_exit: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(crate::DEFAULT_PIN_DIR),
            cgroup: None,
            uninstall: false,
            detach_on_exit: false,
        }
    }
}

/// A loaded and attached fast path. Dropping it closes this process's descriptors only; the
/// pins keep the programs attached. Call [`Installed::uninstall`] to take it all down.
#[derive(Debug)]
pub struct Installed {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    // Held so the agent's own view stays valid while it serves.
    _ebpf: Ebpf,
    _links: Vec<OwnedFd>,
}

impl Installed {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The cgroup v2 directory the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Detaches the programs and unpins the maps.
    pub fn uninstall(self) -> Result<(), FastPathError> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        uninstall(&pin_dir)
    }
}

/// Runs the agent: `--uninstall` takes the fast path down; otherwise install and serve until
/// SIGTERM or SIGINT. Blocks those signals in the calling thread: call it from the main thread
/// before starting others, so the signals reach this wait rather than a default handler.
pub fn run(opts: &AgentOptions) -> Result<(), FastPathError> {
    if opts.uninstall {
        uninstall(&opts.pin_dir)?;
        tracing::info!(pin_dir = %opts.pin_dir.display(), "eBPF fast path uninstalled");
        return Ok(());
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| FastPathError::Syscall {
        call: "pthread_sigmask(SIG_BLOCK, SIGTERM|SIGINT)",
        source: e.into(),
    })?;

    let installed = install(opts)?;
    tracing::info!(
        pin_dir = %installed.pin_dir().display(),
        cgroup = %installed.cgroup().display(),
        "eBPF fast path installed; serving until SIGTERM"
    );
    let signal = signals.wait().map_err(|e| FastPathError::Syscall {
        call: "sigwait",
        source: e.into(),
    })?;
    let counters = PinDir::new(&opts.pin_dir).counters().unwrap_or_default();
    tracing::info!(?signal, ?counters, "agent stopping");
    if opts.detach_on_exit {
        installed.uninstall()?;
        tracing::info!("eBPF fast path detached and unpinned");
    }
    Ok(())
}

/// Loads the object, pins its maps (reusing ones a previous agent pinned), attaches the
/// programs and pins the links. Replaces the links of a previous agent.
pub fn install(opts: &AgentOptions) -> Result<Installed, FastPathError> {
    if !has_object() {
        return Err(FastPathError::NoObject);
    }
    let Support { cgroup } = support::check(&opts.pin_dir, opts.cgroup.as_deref())?;
    fs::create_dir_all(&opts.pin_dir)
        .map_err(|e| FastPathError::io("create pin directory", &opts.pin_dir, e))?;

    check_pinned_layouts(&opts.pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(&opts.pin_dir)
        .load(OBJECT)
        .map_err(|e| explain_load(&opts.pin_dir, e))?;

    // sk_msg hangs off the sockhash itself (BPF_SK_MSG_VERDICT): it stays attached as long as
    // the pinned map lives, so the attachment handle is deliberately leaked rather than
    // dropped (dropping would detach it). A new agent's attach replaces the program.
    {
        // A duplicate of the map's descriptor: the map itself must stay inside `ebpf`, whose
        // descriptors the programs' instructions were relocated against.
        let socks_fd = {
            let map = ebpf.map(names::SOCKS).ok_or(FastPathError::Missing {
                kind: "map",
                name: names::SOCKS,
            })?;
            let socks: SockHash<_, SockKey> =
                SockHash::try_from(map).map_err(|e| FastPathError::map(names::SOCKS, "open", e))?;
            socks
                .fd()
                .try_clone()
                .map_err(|source| FastPathError::Syscall {
                    call: "dup(sockhash fd)",
                    source,
                })?
        };
        let prog: &mut SkMsg = program(&mut ebpf, programs::SK_MSG)?;
        prog.load()
            .map_err(|e| FastPathError::program(programs::SK_MSG, "load", e))?;
        let id = prog
            .attach(&socks_fd)
            .map_err(|e| FastPathError::program(programs::SK_MSG, "attach to sockhash", e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| FastPathError::program(programs::SK_MSG, "take link", e))?;
        std::mem::forget(link);
    }

    // Load every cgroup program before touching a previous agent's links, so a program the
    // verifier rejects leaves the running data path alone.
    let mut loaded = Vec::new();
    for (name, link_pin, attach) in [
        (
            programs::CONNECT4,
            LINK_CONNECT4,
            AttachType::CgroupInet4Connect,
        ),
        (
            programs::CONNECT6,
            LINK_CONNECT6,
            AttachType::CgroupInet6Connect,
        ),
        (programs::SOCK_OPS, LINK_SOCK_OPS, AttachType::CgroupSockOps),
    ] {
        let fd = if attach == AttachType::CgroupSockOps {
            let prog: &mut SockOps = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| FastPathError::program(name, "load", e))?;
            prog.fd()
                .map_err(|e| FastPathError::program(name, "fd", e))?
                .as_fd()
                .try_clone_to_owned()
        } else {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| FastPathError::program(name, "load", e))?;
            prog.fd()
                .map_err(|e| FastPathError::program(name, "fd", e))?
                .as_fd()
                .try_clone_to_owned()
        }
        .map_err(|source| FastPathError::Syscall {
            call: "dup(prog fd)",
            source,
        })?;
        loaded.push((name, link_pin, attach, fd));
    }

    let cgroup_dir =
        fs::File::open(&cgroup).map_err(|e| FastPathError::io("open cgroup", &cgroup, e))?;
    let mut links = Vec::new();
    for (name, link_pin, attach, prog_fd) in loaded {
        // Replace a previous agent's link: unpinning drops its last reference, detaching it.
        let pin = opts.pin_dir.join(link_pin);
        let attached = remove_pin(&pin).and_then(|()| {
            let link = sys::link_create(prog_fd.as_fd(), cgroup_dir.as_fd(), attach)
                .map_err(|source| support::explain_attach(name, &cgroup, source))?;
            sys::obj_pin(link.as_fd(), &pin).map_err(|source| FastPathError::Syscall {
                call: "BPF_OBJ_PIN(link)",
                source,
            })?;
            Ok(link)
        });
        match attached {
            Ok(link) => links.push(link),
            Err(e) => {
                // No half-attached data path: without sock_ops, register() reports the agent
                // as absent and pods run on rules alone.
                for l in LINKS {
                    let _ = remove_pin(&opts.pin_dir.join(l));
                }
                return Err(e);
            }
        }
    }

    Ok(Installed {
        pin_dir: opts.pin_dir.clone(),
        cgroup,
        _ebpf: ebpf,
        _links: links,
    })
}

/// A sockhash the kernel cannot create means it was built without sockmap support; say so.
fn explain_load(pin_dir: &Path, e: aya::EbpfError) -> FastPathError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error, .. }) = &e {
        if name == names::SOCKS && io_error.raw_os_error() == Some(libc::EINVAL) {
            return FastPathError::Unsupported {
                reason: format!(
                    "the kernel cannot create a sockhash ({io_error}): it needs CONFIG_BPF_SYSCALL and CONFIG_NET_SOCK_MSG"
                ),
            };
        }
    }
    FastPathError::Load {
        pin_dir: pin_dir.to_path_buf(),
        source: Box::new(e),
    }
}

/// aya reuses maps pinned by name without comparing their layout; a previous agent of another
/// version could have pinned different key or value sizes, which would corrupt every lookup.
fn check_pinned_layouts(pin_dir: &Path) -> Result<(), FastPathError> {
    use std::mem::size_of;

    use meshcap_ebpf_common::{ConnectInfo, PodConfig};
    let expected: [(&'static str, usize, usize); 5] = [
        (names::PODS, size_of::<u64>(), size_of::<PodConfig>()),
        (names::SOCKS, size_of::<SockKey>(), size_of::<u32>()),
        (names::APPS, size_of::<SockKey>(), size_of::<u64>()),
        (names::CONNECTS, size_of::<u64>(), size_of::<ConnectInfo>()),
        (names::COUNTERS, size_of::<u32>(), size_of::<u64>()),
    ];
    for (name, key, value) in expected {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|e| FastPathError::map(name, "inspect pinned", e))?;
        let found = (info.key_size() as usize, info.value_size() as usize);
        if found != (key, value) {
            return Err(FastPathError::Unsupported {
                reason: format!(
                    "{} was pinned by an incompatible agent (key/value {}/{} bytes, expected {key}/{value}); run `meshcap agent --uninstall` first",
                    path.display(),
                    found.0,
                    found.1
                ),
            });
        }
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, FastPathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(FastPathError::Missing {
        kind: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|e| FastPathError::program(name, "type", e))
}

fn remove_pin(path: &Path) -> Result<(), FastPathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FastPathError::io("unpin", path, e)),
    }
}

/// Detaches the programs (by unpinning their links) and unpins the maps, then removes the pin
/// directory. Idempotent. Programs stay attached while some process (a running agent) still
/// holds their link descriptors.
pub fn uninstall(pin_dir: &Path) -> Result<(), FastPathError> {
    for name in LINKS.iter().chain(MAPS.iter()) {
        remove_pin(&pin_dir.join(name))?;
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FastPathError::io("remove pin directory", pin_dir, e)),
    }
}

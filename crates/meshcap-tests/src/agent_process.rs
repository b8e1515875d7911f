//! `meshcap agent` run as a node runs it, for the tests of its node duties (repair, adoption,
//! config watch, metrics): its log in a file, its Prometheus endpoint on a port of its own
//! choosing, SIGTERM when the test is done. (The eBPF fast path's tests start their agent with
//! [`crate::fastpath::Agent`], which waits for pinned links instead.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long the agent may take to serve metrics, and to stop after SIGTERM.
const READY: Duration = Duration::from_secs(10);
const STOP: Duration = Duration::from_secs(10);

/// A running `meshcap agent`; SIGTERMed (SIGKILLed if it does not stop) on drop.
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
    addr: SocketAddr,
}

impl AgentProcess {
    /// Spawns `cmd` (`meshcap agent` with the test's flags) with `--metrics-addr 127.0.0.1:0`
    /// and `RUST_LOG=info`, its stderr in `log`, and waits until it serves metrics.
    pub fn start(mut cmd: Command, log: &Path) -> Result<AgentProcess> {
        cmd.args(["--metrics-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).with_context(|| log.display().to_string())?);
        let child = cmd.spawn().context("spawn meshcap agent")?;
        let mut agent = AgentProcess {
            child: Some(child),
            log: log.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // Port 0: the agent logs the address it bound.
        let start = Instant::now();
        loop {
            let text = agent.log();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("serving Prometheus metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                agent.addr = addr;
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!("meshcap agent exited ({status}):\n{text}");
            }
            if start.elapsed() > READY {
                bail!("meshcap agent serves no metrics after {READY:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the agent serves metrics and probes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One `GET /metrics`, as `name{labels}` -> value.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let mut conn = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics: {head}");
        }
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .rsplit_once(' ')
                    .ok_or_else(|| anyhow!("not a sample: {l:?}"))?;
                Ok((k.to_owned(), v.parse().with_context(|| l.to_owned())?))
            })
            .collect()
    }

    /// One sample (`name` with its labels, if any, as the endpoint prints them).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let metrics = self.metrics()?;
        metrics
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("{name} not in the agent's metrics: {metrics:?}"))
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap: to the agent alone (a plugin it is running lives on, orphaned), or
    /// with `group` to its whole process group, as a container's processes are all killed at
    /// once (the agent must have been spawned as a group leader: `CommandExt::process_group(0)`).
    pub fn kill(&mut self, group: bool) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = if group {
                killpg(pid, Signal::SIGKILL)
            } else {
                kill(pid, Signal::SIGKILL)
            };
            let _ = child.wait();
        }
    }

    /// SIGTERM; whether it exited successfully in time.
    pub fn stop(&mut self) -> bool {
        self.child
            .take()
            .and_then(|mut child| crate::sys::terminate(&mut child, STOP))
            .is_some_and(|status| status.success())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

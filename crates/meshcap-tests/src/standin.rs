//! The stand-in sidecar, client and app server (run by the `standin` binary), and the records
//! they leave behind.
//!
//! - `standin serve` listens on TCP and UDP ports (v4 `0.0.0.0` and v6 `[::]`, v6-only), with
//!   `IP_TRANSPARENT`/`IPV6_TRANSPARENT` when asked (TPROXY needs it on the 15006 listener),
//!   then drops to the given uid/gid (the sidecar runs as 1337). For every accepted connection
//!   or datagram it appends a [`Record`] to a JSON-lines file, *then* answers `ok`, so once a
//!   client has its answer the record is on disk.
//! - `standin client` dials one address (optionally from a bound source such as 127.0.0.6),
//!   sends a token and prints a [`ClientReport`] as JSON on stdout.
//!
//! The original destination of a TCP connection is `SO_ORIGINAL_DST`/`IP6T_SO_ORIGINAL_DST`
//! when conntrack knows it (REDIRECT), else the accepted socket's local address (TPROXY and
//! direct connections). UDP has no such lookup after REDIRECT; its records carry no original
//! destination.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The fixed ports of the sidecar (docs/DESIGN.md "Fixed values", Istio's well-known ports).
pub const SIDECAR_TCP_PORTS: [u16; 7] = [15001, 15006, 15008, 15020, 15021, 15090, 15053];
/// The sidecar's UDP port (DNS capture).
pub const SIDECAR_UDP_PORTS: [u16; 1] = [15053];
/// The proxy's uid and gid.
pub const PROXY_ID: u32 = meshcap_model::model::PROXY_UID;

/// What a server saw for one connection or datagram.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The server's name (`sidecar`, `app`, `remote`).
    pub server: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The listener's port.
    pub port: u16,
    pub peer: String,
    /// The accepted socket's local address (`*:port` for UDP).
    pub local: String,
    /// The destination before NAT (TCP only); equals `local` when not NATed.
    pub orig: Option<String>,
    pub token: String,
}

/// What the client reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientReport {
    /// `ok` (answered), `noreply` (sent, no answer), `refused`, `timeout`, `unreachable`,
    /// `error`; `reset` (the kernel answered an invalid segment with a RST).
    pub result: String,
    pub detail: Option<String>,
}

/// Read every record in `dir` (`*.jsonl`).
pub fn read_records(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) != Some("jsonl") {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                out.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<Record>(l).ok()),
                );
            }
        }
    }
    out
}

/// Arguments as `--key value` pairs and bare `--flag`s.
pub fn parse_args(args: &[String]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(k) = args[i].strip_prefix("--") {
            if i + 1 < args.len() && !args[i + 1].starts_with("--") {
                map.insert(k.to_string(), args[i + 1].clone());
                i += 2;
                continue;
            }
            map.insert(k.to_string(), String::new());
        }
        i += 1;
    }
    map
}

fn ports(s: Option<&String>) -> Result<Vec<u16>> {
    match s {
        None => Ok(vec![]),
        Some(s) if s.is_empty() => Ok(vec![]),
        Some(s) => s
            .split(',')
            .map(|p| p.trim().parse::<u16>().with_context(|| format!("port {p}")))
            .collect(),
    }
}

/// `standin serve --name N --records FILE --ready FILE [--tcp P,..] [--udp P,..]
/// [--transparent] [--uid U] [--gid G]`.
pub fn serve(args: &HashMap<String, String>) -> Result<()> {
    let name = args.get("name").cloned().unwrap_or_else(|| "server".into());
    let records = PathBuf::from(args.get("records").context("--records")?);
    let ready = args.get("ready").map(PathBuf::from);
    let transparent = args.contains_key("transparent");
    let tcp = ports(args.get("tcp"))?;
    let udp = ports(args.get("udp"))?;

    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&records)
        .with_context(|| format!("open {}", records.display()))?;
    let sink = Arc::new(Mutex::new(file));

    let mut tcp_listeners = Vec::new();
    let mut udp_sockets = Vec::new();
    for v6 in [false, true] {
        for &p in &tcp {
            if let Some(l) = bind(Type::STREAM, v6, p, transparent)? {
                l.listen(256)?;
                tcp_listeners.push((p, TcpListener::from(l)));
            }
        }
        for &p in &udp {
            if let Some(s) = bind(Type::DGRAM, v6, p, transparent)? {
                udp_sockets.push((p, UdpSocket::from(s)));
            }
        }
    }
    // Announce readiness while still root (the records dir is root's); the sockets already
    // listen, so connections made from now on queue until the accept threads run.
    if let Some(ready) = ready {
        std::fs::write(&ready, b"ready\n").with_context(|| format!("write {}", ready.display()))?;
    }
    if let Some(gid) = args.get("gid") {
        let gid = nix::unistd::Gid::from_raw(gid.parse()?);
        nix::unistd::setgroups(&[gid]).context("setgroups")?;
        nix::unistd::setgid(gid).context("setgid")?;
    }
    if let Some(uid) = args.get("uid") {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid.parse()?)).context("setuid")?;
    }

    let mut handles = Vec::new();
    for (port, l) in tcp_listeners {
        let (name, sink) = (name.clone(), sink.clone());
        handles.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (name, sink) = (name.clone(), sink.clone());
                std::thread::spawn(move || handle_tcp(&name, port, conn, &sink));
            }
        }));
    }
    for (port, s) in udp_sockets {
        let (name, sink) = (name.clone(), sink.clone());
        handles.push(std::thread::spawn(move || {
            handle_udp(&name, port, s, &sink)
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A bound socket on the wildcard address of one family; `None` when the family is missing.
fn bind(ty: Type, v6: bool, port: u16, transparent: bool) -> Result<Option<Socket>> {
    let (domain, ip): (Domain, IpAddr) = if v6 {
        (Domain::IPV6, Ipv6Addr::UNSPECIFIED.into())
    } else {
        (Domain::IPV4, Ipv4Addr::UNSPECIFIED.into())
    };
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let s = match Socket::new(domain, ty, Some(proto)) {
        Ok(s) => s,
        Err(e) if v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    s.set_reuse_address(true)?;
    if v6 {
        s.set_only_v6(true)?;
    }
    if transparent {
        crate::sys::set_transparent(s.as_raw_fd(), v6)
            .context("IP_TRANSPARENT (needs CAP_NET_ADMIN)")?;
    }
    match s.bind(&SockAddr::from(SocketAddr::new(ip, port))) {
        Ok(()) => Ok(Some(s)),
        Err(e) if v6 && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("bind {ip}:{port}"))),
    }
}

fn write_record(sink: &Mutex<File>, rec: &Record) {
    let mut line = serde_json::to_string(rec).expect("record serializes");
    line.push('\n');
    let mut f = sink.lock().unwrap_or_else(|e| e.into_inner());
    let _ = f.write_all(line.as_bytes());
    let _ = f.flush();
}

fn handle_tcp(name: &str, port: u16, mut conn: TcpStream, sink: &Mutex<File>) {
    let local = conn.local_addr().ok();
    let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let v6 = local.map(|l| l.is_ipv6()).unwrap_or(false);
    let orig = crate::sys::original_dst(conn.as_raw_fd(), v6)
        .ok()
        .or(local);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while buf.len() < 1024 && !buf.contains(&b'\n') {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let token = first_line(&buf);
    write_record(
        sink,
        &Record {
            server: name.into(),
            proto: "tcp".into(),
            port,
            peer,
            local: local.map(|l| l.to_string()).unwrap_or_default(),
            orig: orig.map(|o| o.to_string()),
            token,
        },
    );
    let _ = conn.write_all(b"ok\n");
}

/// The token a client sent: the first line of what it sent, trimmed.
fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn handle_udp(name: &str, port: u16, sock: UdpSocket, sink: &Mutex<File>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let token = first_line(&buf[..n]);
        write_record(
            sink,
            &Record {
                server: name.into(),
                proto: "udp".into(),
                port,
                peer: peer.to_string(),
                local: format!("*:{port}"),
                orig: None,
                token,
            },
        );
        let _ = sock.send_to(b"ok\n", peer);
    }
}

/// `standin client --proto tcp|udp|tcp-invalid --addr IP:PORT --token T [--bind IP]
/// [--timeout-ms N]`.
pub fn client(args: &HashMap<String, String>) -> Result<ClientReport> {
    let addr: SocketAddr = args
        .get("addr")
        .context("--addr")?
        .parse()
        .context("--addr")?;
    let token = args.get("token").cloned().unwrap_or_default();
    let udp = args.get("proto").map(|p| p == "udp").unwrap_or(false);
    let timeout = Duration::from_millis(
        args.get("timeout-ms")
            .map(|t| t.parse())
            .transpose()?
            .unwrap_or(1000),
    );
    if args.get("proto").is_some_and(|p| p == "tcp-invalid") {
        return invalid_tcp(addr, &token, timeout);
    }
    let bind: Option<IpAddr> = args
        .get("bind")
        .map(|b| b.parse())
        .transpose()
        .context("--bind")?;
    let domain = Domain::for_address(addr);
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    if let Some(b) = bind {
        crate::sys::set_freebind(s.as_raw_fd(), b.is_ipv6())?;
        s.bind(&SockAddr::from(SocketAddr::new(b, 0)))
            .with_context(|| format!("bind {b}"))?;
    }
    let report = |result: &str, detail: Option<String>| ClientReport {
        result: result.into(),
        detail,
    };
    let classify = |e: &std::io::Error| -> ClientReport {
        let r = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                "unreachable"
            }
            _ => "error",
        };
        report(r, Some(e.to_string()))
    };
    if udp {
        if let Err(e) = s.connect(&SockAddr::from(addr)) {
            return Ok(classify(&e));
        }
        let sock = UdpSocket::from(s);
        sock.set_read_timeout(Some(timeout))?;
        if let Err(e) = sock.send(format!("{token}\n").as_bytes()) {
            return Ok(classify(&e));
        }
        let mut buf = [0u8; 64];
        return Ok(match sock.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"ok") => report("ok", None),
            Ok(_) => report("noreply", Some("unexpected answer".into())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => classify(&e),
            Err(e) => report("noreply", Some(e.to_string())),
        });
    }
    if let Err(e) = s.connect_timeout(&SockAddr::from(addr), timeout) {
        return Ok(classify(&e));
    }
    let mut stream = TcpStream::from(s);
    stream.set_read_timeout(Some(timeout))?;
    if let Err(e) = stream.write_all(format!("{token}\n").as_bytes()) {
        return Ok(classify(&e));
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Ok(if answer.starts_with("ok") {
        report("ok", None)
    } else {
        report("noreply", Some(format!("answer {answer:?}")))
    })
}

/// Sends one TCP segment conntrack finds invalid (SYN, FIN and ACK together: no connection
/// can have it) from a raw socket to `addr`, IPv4 only, and waits for the kernel's answer: a
/// RST back from `addr` (result `reset`; no socket ever sees the segment, so a host that lets
/// it through answers like this) or nothing (`timeout`: something dropped it).
fn invalid_tcp(addr: SocketAddr, token: &str, timeout: Duration) -> Result<ClientReport> {
    let SocketAddr::V4(dst) = addr else {
        bail!("tcp-invalid is IPv4 only");
    };
    // The source address the kernel picks for this destination.
    let probe = UdpSocket::bind("0.0.0.0:0")?;
    probe.connect(addr)?;
    let IpAddr::V4(src) = probe.local_addr()?.ip() else {
        bail!("no IPv4 source for {addr}");
    };
    // A source port no socket here uses, different per token.
    let sport = 40000
        + (token
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) + u32::from(b))
            % 20000) as u16;
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    seg[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x02 | 0x01 | 0x10; // SYN | FIN | ACK
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut sum = 0u32;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.ip().octets());
    add(&[0, 6, 0, 20]);
    add(&seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());

    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    raw.send_to(&seg, &SockAddr::from(addr))
        .context("send the invalid segment")?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(ClientReport {
                result: "timeout".into(),
                detail: Some("no RST for the invalid segment".into()),
            });
        }
        raw.set_read_timeout(Some(left))?;
        let n = match (&raw).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        let pkt = &buf[..n];
        let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
        if pkt.len() < ihl + 14 || pkt[12..16] != dst.ip().octets() {
            continue;
        }
        let tcp = &pkt[ihl..];
        let from = u16::from_be_bytes([tcp[0], tcp[1]]);
        let to = u16::from_be_bytes([tcp[2], tcp[3]]);
        if from == dst.port() && to == sport && tcp[13] & 0x04 != 0 {
            return Ok(ClientReport {
                result: "reset".into(),
                detail: None,
            });
        }
    }
}

/// Entry point of the `standin` binary.
pub fn main_with_args(argv: Vec<String>) -> Result<()> {
    let Some(mode) = argv.get(1) else {
        bail!("usage: standin serve|client --key value ...");
    };
    let args = parse_args(&argv[2..]);
    match mode.as_str() {
        "serve" => serve(&args),
        "client" => {
            let r = client(&args)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        other => bail!("unknown mode {other}"),
    }
}

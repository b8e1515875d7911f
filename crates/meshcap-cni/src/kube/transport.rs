//! One HTTP/1.1 exchange with the API server over TCP or TLS, every connect, read and write
//! bounded by what is left of one deadline; the response parser the fuzzer drives.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// Largest response accepted; a Pod is a few KiB to a few hundred KiB.
const MAX_RESPONSE: usize = 8 << 20;

/// A parsed `server` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub(super) https: bool,
    /// Host as written (brackets stripped from IPv6 literals).
    pub(super) host: String,
    pub(super) port: u16,
    /// Path prefix without a trailing slash (API servers behind a proxy path).
    pub(super) base: String,
}

impl Server {
    pub(super) fn parse(url: &str) -> Result<Server, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("server {url:?} is not an http:// or https:// URL"));
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("server {url:?}: unterminated IPv6 literal"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("server {url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("server {url:?}: junk after the IPv6 literal")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("server {url:?}: bad port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(format!(
                "server {url:?}: no host (or userinfo, which is not supported)"
            ));
        }
        Ok(Server {
            https,
            host,
            port,
            base: base.to_owned(),
        })
    }

    pub(super) fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub(super) fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host_header(),
            self.base
        )
    }
}

/// One `GET path` (with `token` as the bearer, over `tls` when set); `Ok` whenever the server
/// answered with a complete response.
pub(super) fn get(
    server: &Server,
    tls: Option<&(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    token: Option<&str>,
    path: &str,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), Attempt> {
    let tcp = connect(server, deadline)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
         User-Agent: meshcap-cni/{}\r\nConnection: close\r\n",
        server.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        let _ = write!(request, "Authorization: Bearer {t}\r\n");
    }
    request.push_str("\r\n");
    match tls {
        None => exchange(ReTimed { tcp, deadline }, request.as_bytes(), deadline),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| Attempt::Final(format!("TLS setup: {e}")))?;
            exchange(
                rustls::StreamOwned::new(conn, ReTimed { tcp, deadline }),
                request.as_bytes(),
                deadline,
            )
        }
    }
}

/// One attempt's failure.
#[derive(Debug)]
pub(super) enum Attempt {
    Transient(String),
    Final(String),
}

fn left(deadline: Instant) -> Result<Duration, Attempt> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(Attempt::Transient("timed out".into()))
    } else {
        Ok(d)
    }
}

fn connect(server: &Server, deadline: Instant) -> Result<TcpStream, Attempt> {
    // An IP literal needs no resolver; a name goes through the system resolver (which has
    // its own timeouts; kubeconfigs written by meshcap's DaemonSet use the service IP).
    let addrs: Vec<SocketAddr> = match server.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, server.port)],
        Err(_) => (server.host.as_str(), server.port)
            .to_socket_addrs()
            .map_err(|e| Attempt::Transient(format!("resolving {}: {e}", server.host)))?
            .collect(),
    };
    let mut last = format!("{} resolved to no address", server.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(Attempt::Transient(last))
}

/// A TCP stream whose every read and write is bounded by what is left of the deadline.
struct ReTimed {
    tcp: TcpStream,
    deadline: Instant,
}

impl ReTimed {
    fn arm(&self) -> io::Result<()> {
        let d = self.deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.tcp.set_read_timeout(Some(d))?;
        self.tcp.set_write_timeout(Some(d))
    }
}

impl Read for ReTimed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for ReTimed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

fn io_failure(op: &str, e: io::Error) -> Attempt {
    // rustls reports certificate and protocol failures as InvalidData: retrying cannot fix
    // a CA that does not match.
    if e.kind() == io::ErrorKind::InvalidData {
        Attempt::Final(format!("{op}: TLS: {e}"))
    } else {
        Attempt::Transient(format!("{op}: {e}"))
    }
}

/// Writes the request and reads the response until it is complete or the peer closes.
fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    deadline: Instant,
) -> Result<(u16, Vec<u8>), Attempt> {
    left(deadline)?;
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| io_failure("sending the request", e))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        left(deadline)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(Attempt::Final(format!(
                        "the response is larger than {MAX_RESPONSE} bytes"
                    )));
                }
                if let Some(done) = parse_response(&buf, false).map_err(Attempt::Transient)? {
                    return Ok(done);
                }
            }
            // A peer that closes without TLS close_notify: fine if the response is complete.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure("reading the response", e)),
        }
    }
    parse_response(&buf, true)
        .map_err(Attempt::Transient)?
        .ok_or_else(|| {
            Attempt::Transient("the connection closed before a complete response".into())
        })
}

/// Parses an HTTP/1.1 response: `Ok(None)` while incomplete (`eof` false), the status and
/// decoded body once complete.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("the connection closed inside the response head".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                v.parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if chunked {
        return match dechunk(body)? {
            Some(b) => Ok(Some((status, b))),
            None if eof => Err("the connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    match content_length {
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(_) if eof => Err("the connection closed before Content-Length bytes".into()),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// Decodes a chunked body (RFC 9112, 7.1); `None` until the last chunk has arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers are ignored; the body is complete.
            return Ok(Some(out));
        }
        // A hostile size such as ffffffffffffffff must not overflow (found by fuzz/kube_response).
        let Some(need) = size.checked_add(2) else {
            return Err(format!("bad chunk size {size_hex:?}"));
        };
        if rest.len() < need {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn server_urls() {
        let s = Server::parse("https://10.96.0.1:443").unwrap();
        assert_eq!(
            (s.https, s.host.as_str(), s.port, s.base.as_str()),
            (true, "10.96.0.1", 443, "")
        );
        assert_eq!(s.host_header(), "10.96.0.1");
        let s = Server::parse("http://[::1]:8080/proxy/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("::1", 8080, "/proxy")
        );
        assert_eq!(s.url(), "http://[::1]:8080/proxy");
        let s = Server::parse("https://api.example").unwrap();
        assert_eq!(s.port, 443);
        for bad in [
            "ftp://x",
            "https://",
            "https://a:b",
            "http://u@h",
            "https://[::1",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"{}".to_vec()))
        );
        assert_eq!(parse_response(&r[..r.len() - 1], false).unwrap(), None);
        assert!(parse_response(&r[..r.len() - 1], true).is_err());
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(c, false).unwrap(),
            Some((404, b"abcde".to_vec()))
        );
        assert_eq!(parse_response(&c[..c.len() - 7], false).unwrap(), None);
        let eof = b"HTTP/1.0 500 x\r\n\r\nboom";
        assert_eq!(parse_response(eof, false).unwrap(), None);
        assert_eq!(
            parse_response(eof, true).unwrap(),
            Some((500, b"boom".to_vec()))
        );
        assert!(parse_response(b"SMTP hi\r\n\r\n", true).is_err());
    }

    #[test]
    fn chunk_sizes_near_usize_max_are_errors_not_panics() {
        // Regression for a fuzz/kube_response crash: `size + 2` overflowed.
        for size in ["ffffffffffffffff", "fffffffffffffffe"] {
            let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc");
            assert!(parse_response(r.as_bytes(), false).is_err(), "{size}");
            assert!(parse_response(r.as_bytes(), true).is_err(), "{size}");
        }
    }
}

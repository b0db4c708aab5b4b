//! The blocking HTTP the starters use for readiness probes and admin calls, safe to call
//! from plain `#[test]`s and from inside a tokio runtime alike.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// Runs `f` on a fresh OS thread: reqwest's blocking client panics when created, used or
/// dropped on a thread driving a tokio runtime, and tests call us from `#[tokio::test]`s.
pub(crate) fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A blocking client trusting `ca` (PEM file) besides the usual roots.
pub(crate) fn client(ca: Option<PathBuf>, timeout: Duration) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder().timeout(timeout);
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        let cert = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("CA {}: {e}", ca.display()));
        b = b.add_root_certificate(cert);
    }
    b.build().expect("cannot build HTTP client")
}

/// `GET url` → status, or `None` when nothing answered within 2 s.
pub(crate) fn http_status(url: &str, ca: Option<PathBuf>) -> Option<u16> {
    http_get_text(url, ca).map(|(s, _)| s)
}

/// `GET url` → (status, body), or `None` when nothing answered within 2 s.
pub(crate) fn http_get_text(url: &str, ca: Option<PathBuf>) -> Option<(u16, String)> {
    let url = url.to_string();
    off_runtime(move || {
        // A TLS server's CA file appears only once the server has generated it.
        if ca.as_ref().is_some_and(|c| !c.is_file()) {
            return None;
        }
        let r = client(ca, Duration::from_secs(2)).get(&url).send().ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().unwrap_or_default()))
    })
}

/// A minimal HTTP/1.1 request with `Connection: close` over a plain `TcpStream` (no
/// runtime, no thread): enough for Envoy's admin API.
pub fn raw_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a `Transfer-Encoding: chunked` message, chunks joined.
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

//! The HTTP side: requests to the management API and the errors (with their exit codes).

use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a command failed; each kind has its own exit code (see the README).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad arguments or an unreadable input file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The entity does not exist (404, exit 3).
    #[error("{0}")]
    NotFound(String),
    /// Conflict or stale write (409/412, exit 4).
    #[error("{0}")]
    Conflict(String),
    /// The server refused the input (400/422, exit 5).
    #[error("{0}")]
    Invalid(String),
    /// No valid token or no role (401/403, exit 6).
    #[error("{0}")]
    Denied(String),
    /// The server cannot be reached, gave no answer in time, or is unavailable
    /// (502–504, exit 7).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl CtlError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Other(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::NotFound(_) => 3,
            CtlError::Conflict(_) => 4,
            CtlError::Invalid(_) => 5,
            CtlError::Denied(_) => 6,
            CtlError::Unavailable(_) => 7,
        }
    }
}

/// The longest a request may take, from connecting to the answer's last byte.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The longest connecting may take. Shorter than [`TIMEOUT`], so a connection that never
/// opens fails as a connect error (nothing sent), not as a request timeout (a write that
/// may have been applied).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read: far above any page or document the API sends, low enough
/// that something else behind `--server` cannot make ctl allocate without limit.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A client of one server with one token.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `Bearer <token>`, checked once and marked sensitive.
    auth: HeaderValue,
}

/// `--cacert`, `--cert`, `--key`: how an https server is trusted and who the client is.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    /// CA bundle (PEM) replacing the built-in roots.
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// Applies the files to `b`; refuses them with a plain-http server (they would be
    /// silently unused) and a certificate without its key or the other way round.
    fn apply(
        &self,
        https: bool,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, CtlError> {
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CtlError::Usage(format!("{flag} {}: {e}", p.display())))
        };
        if !https && (self.cacert.is_some() || self.cert.is_some() || self.key.is_some()) {
            return Err(CtlError::Usage(
                "--cacert, --cert and --key need an https:// --server".into(),
            ));
        }
        if let Some(p) = &self.cacert {
            let certs = reqwest::Certificate::from_pem_bundle(&read("--cacert", p)?)
                .map_err(|e| CtlError::Usage(format!("--cacert {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(CtlError::Usage(format!(
                    "--cacert {}: holds no certificate",
                    p.display()
                )));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let mut pem = read("--cert", c)?;
                pem.push(b'\n');
                pem.extend(read("--key", k)?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    CtlError::Usage(format!(
                        "--cert {} / --key {}: {e}",
                        c.display(),
                        k.display()
                    ))
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => return Err(CtlError::Usage("--cert and --key go together".into())),
        }
        Ok(b)
    }
}

/// A successful answer.
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// JSON body (Null when empty).
    pub body: Value,
    /// The `ETag` header, as sent (quoted).
    pub etag: Option<String>,
}

impl Client {
    /// A client of `server` (`http(s)://host:port`), with `tls` for an https one.
    pub fn new(server: &str, token: String, tls: &TlsFiles) -> Result<Client, CtlError> {
        let base =
            Url::parse(server).map_err(|e| CtlError::Usage(format!("--server {server:?}: {e}")))?;
        // Any other scheme would only fail once sent, as a request reqwest cannot build.
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CtlError::Usage(format!(
                "--server {server:?}: the scheme `{}` is not http or https",
                base.scheme()
            )));
        }
        // Checked here so that the message names the token (without printing it) and
        // nothing is sent.
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            CtlError::Usage(
                "the token is not one line of printable text (see --token-file or MESHPASS_TOKEN)"
                    .into(),
            )
        })?;
        auth.set_sensitive(true);
        let builder = tls.apply(base.scheme() == "https", reqwest::Client::builder())?;
        let http = builder
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("meshpassctl/", env!("CARGO_PKG_VERSION")))
            // The bearer token goes to --server and nowhere else: no proxy from the
            // environment (it would see every token), and no redirect (a write
            // replayed as a GET would read as done, and the token would follow).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CtlError::Other(e.to_string()))?;
        Ok(Client { http, base, auth })
    }

    /// The URL of `segments` under the server. Each segment is percent-encoded byte by
    /// byte (all but `A-Za-z0-9-._~`), so a name stays one segment whatever it holds: a
    /// resource like `https://x`, `?`, `#`, `%`, and tabs or newlines, which URL parsers
    /// would otherwise drop. `.`, `..` and the empty name cannot be addressed at all (a
    /// URL resolves them away, even percent-encoded): refused, never sent as another path.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, CtlError> {
        let mut u = self.base.clone();
        if u.cannot_be_a_base() {
            return Err(CtlError::Usage("--server cannot be a base URL".into()));
        }
        let mut path = u.path().trim_end_matches('/').to_string();
        for s in segments {
            if matches!(*s, "" | "." | "..") {
                return Err(CtlError::Usage(format!(
                    "{s:?} cannot be named in a URL path: no mapping, resource or scope is called that"
                )));
            }
            path.push('/');
            path.push_str(&encode_segment(s));
        }
        u.set_path(&path);
        if !query.is_empty() {
            u.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(u)
    }

    /// Sends a request and turns error answers into [`CtlError`]s. A 2xx whose body is
    /// not JSON is no answer of the API (an HTML page from another server behind
    /// `--server`): refused, never reported as done.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<(&'static str, Vec<u8>)>,
        if_match: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let origin = url.origin().ascii_serialization();
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(header::AUTHORIZATION, self.auth.clone());
        if let Some((ct, bytes)) = body {
            req = req.header(header::CONTENT_TYPE, ct).body(bytes);
        }
        if let Some(tag) = if_match {
            let v = HeaderValue::from_str(tag).map_err(|_| {
                CtlError::Usage(format!(
                    "--if-match {tag:?} is not one line of printable text"
                ))
            })?;
            req = req.header(header::IF_MATCH, v);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_error(&e, &method, &origin))?;
        let status = resp.status();
        let header_text = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header_text(header::ETAG);
        let content_type = header_text(header::CONTENT_TYPE);
        let bytes = read_bounded(&mut resp, MAX_ANSWER_BYTES, &method, &origin).await?;
        let body = match serde_json::from_slice::<Value>(&bytes) {
            _ if bytes.is_empty() => Value::Null,
            Ok(v) => v,
            Err(_) if status.is_success() => {
                let text = Value::String(String::from_utf8_lossy(&bytes).into_owned());
                return Err(CtlError::Other(format!(
                    "unexpected answer from {origin}: {status}, {}: {} (is --server the management API?)",
                    content_type.as_deref().unwrap_or("no content type"),
                    snippet(&text)
                )));
            }
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        if status.is_success() {
            return Ok(Answer { status, body, etag });
        }
        let msg = match (&body["error"], &body["message"], &body["field"]) {
            (Value::String(code), Value::String(m), Value::String(f)) => {
                format!("{code}: {f}: {m}")
            }
            (Value::String(code), Value::String(m), _) => format!("{code}: {m}"),
            // Not the API's error: a 404/409/412/400/422 from another server (the token
            // port next to the management port) must not read as "already gone" or
            // "refused input" to a script. Denials and gateway errors keep their codes.
            _ if matches!(status.as_u16(), 400 | 404 | 409 | 412 | 422) => {
                return Err(CtlError::Other(format!(
                    "unexpected answer from {origin}: {status}, {}: {} (is --server the management API?)",
                    content_type.as_deref().unwrap_or("no content type"),
                    snippet(&body)
                )));
            }
            _ => format!("{status}: {}", snippet(&body)),
        };
        Err(match status.as_u16() {
            404 => CtlError::NotFound(msg),
            409 | 412 => CtlError::Conflict(msg),
            400 | 422 => CtlError::Invalid(msg),
            401 | 403 => CtlError::Denied(msg),
            502..=504 => CtlError::Unavailable(msg),
            _ => CtlError::Other(msg),
        })
    }

    /// `GET` and the JSON body.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CtlError> {
        let url = self.url(segments, query)?;
        Ok(self.send(Method::GET, url, None, None).await?.body)
    }

    /// Every item of a paginated list (follows `next_cursor`).
    pub async fn list_all(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, CtlError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut q = query.to_vec();
            q.push(("limit", "1000".into()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.get(segments, &q).await?;
            items.extend(crate::shape::items(&page)?.iter().cloned());
            match page["next_cursor"].as_str() {
                // A cursor handed back again would page for ever.
                Some(c) if !seen.insert(c.to_string()) => {
                    return Err(CtlError::Other(format!(
                        "unexpected answer: the list's cursor did not advance ({}; is --server the management API?)",
                        snippet(&Value::String(c.to_string()))
                    )));
                }
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(items),
            }
        }
    }
}

/// The body of `resp`, refused once it passes `limit` bytes (announced or read).
async fn read_bounded(
    resp: &mut reqwest::Response,
    limit: usize,
    method: &Method,
    origin: &str,
) -> Result<Vec<u8>, CtlError> {
    let too_large = || {
        CtlError::Other(format!(
            "the answer from {origin} is over the {} MiB meshpassctl reads (is --server the management API?)",
            limit / (1024 * 1024)
        ))
    };
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(&e, method, origin))?
    {
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A request that got no usable answer (exit 7). Only a failed connect surely sent
/// nothing; past it a write may have been applied, and "cannot reach" would read as
/// "nothing happened, run it again".
fn transport_error(e: &reqwest::Error, method: &Method, origin: &str) -> CtlError {
    if e.is_builder() {
        // The URL and the headers were checked before: whatever is left is no outage.
        return CtlError::Other(format!("cannot build the request: {}", with_causes(e)));
    }
    if e.is_connect() {
        return CtlError::Unavailable(format!("cannot reach {origin}: {}", with_causes(e)));
    }
    let what = if e.is_timeout() {
        format!(
            "no answer came within the {} s timeout from {origin}",
            TIMEOUT.as_secs()
        )
    } else {
        format!("no usable answer from {origin}: {}", with_causes(e))
    };
    CtlError::Unavailable(if method.is_safe() {
        what
    } else {
        format!("{what}: the request was sent and may have been applied; check before retrying")
    })
}

/// At most 200 characters of `v` as JSON: a string quoted with its control characters
/// escaped, so what a server sent never drives the terminal.
pub fn snippet(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// An error and its causes, `a: b: c` (reqwest's own text leaves out why a connection
/// failed: refused, TLS, DNS).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        m.push_str(": ");
        m.push_str(&c.to_string());
        cause = c.source();
    }
    m
}

/// `s` with every byte but the unreserved ones (RFC 3986 §2.3) percent-encoded.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `If-Match` value for `tag`: as the server sent it (`"…"`), quoted when given
/// bare; `*` ("it exists", RFC 9110 §13.1.1) as it is.
pub fn if_match(tag: Option<&str>) -> Option<String> {
    let t = tag?.trim();
    Some(if t == "*" || t.starts_with('"') || t.starts_with("W/") {
        t.to_string()
    } else {
        format!("\"{t}\"")
    })
}

/// The `ETag` of an answer, or an error naming what lacked one.
pub fn etag_of(etag: Option<String>, what: &str) -> Result<String, CtlError> {
    etag.ok_or_else(|| CtlError::Other(format!("the server sent no ETag for {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_tag_is_quoted_and_a_quoted_one_kept() {
        assert_eq!(if_match(Some("abc")).as_deref(), Some("\"abc\""));
        assert_eq!(if_match(Some("\"abc\"")).as_deref(), Some("\"abc\""));
        assert_eq!(if_match(None), None);
    }

    fn path_of(base: &str, segments: &[&str]) -> Result<String, CtlError> {
        let c = Client::new(base, String::new(), &TlsFiles::default())?;
        Ok(c.url(segments, &[])?.path().to_string())
    }

    #[test]
    fn a_name_can_never_change_the_path() {
        for bad in ["", ".", ".."] {
            let r = path_of("http://h:1", &["api", "v1", "mappings", bad]);
            assert!(matches!(r, Err(CtlError::Usage(_))), "{bad:?}: {r:?}");
        }
        let p = |segs: &[&str]| path_of("http://h:1", segs).unwrap();
        // URL parsers drop tabs and newlines, and read `\` as `/` in http URLs.
        assert_eq!(
            p(&["api", "v1", "mappings", ".\t."]),
            "/api/v1/mappings/.%09."
        );
        assert_eq!(
            p(&["api", "v1", "mappings", "a\\..\n"]),
            "/api/v1/mappings/a%5C..%0A"
        );
        assert_eq!(
            p(&["api", "v1", "mappings", "a..b."]),
            "/api/v1/mappings/a..b."
        );
        assert_eq!(
            p(&["api", "v1", "scopes", "https://x/y?z#w", "r%2e"]),
            "/api/v1/scopes/https%3A%2F%2Fx%2Fy%3Fz%23w/r%252e"
        );
        assert_eq!(
            p(&["api", "v1", "mappings", "é"]),
            "/api/v1/mappings/%C3%A9"
        );
        // Under a server with a path prefix, with or without its trailing slash.
        for base in ["http://h:1/mgmt", "http://h:1/mgmt/"] {
            assert_eq!(path_of(base, &["api", "v1"]).unwrap(), "/mgmt/api/v1");
        }
    }
}

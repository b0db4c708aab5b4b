//! The HTTP side: requests to the management API and the errors (with their exit codes).

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
    /// The server cannot be reached or is unavailable (503, exit 7).
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

/// A client of one server with one token.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
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
    /// A client of `server` (`http(s)://host:port`).
    pub fn new(server: &str, token: String) -> Result<Client, CtlError> {
        let base =
            Url::parse(server).map_err(|e| CtlError::Usage(format!("--server {server:?}: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("meshpassctl/", env!("CARGO_PKG_VERSION")))
            // The bearer token goes to --server and nowhere else: no proxy from the
            // environment (it would see every token), and no redirect (a write
            // replayed as a GET would read as done, and the token would follow).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CtlError::Other(e.to_string()))?;
        Ok(Client { http, base, token })
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

    /// Sends a request and turns error answers into [`CtlError`]s.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<(&'static str, Vec<u8>)>,
        if_match: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                // Nothing was sent: the request itself cannot be written.
                CtlError::Usage(format!(
                    "cannot build the request (is the token or --if-match one line of printable text?): {}",
                    with_causes(&e)
                ))
            } else {
                CtlError::Unavailable(format!(
                    "cannot reach {}: {}",
                    url.origin().ascii_serialization(),
                    with_causes(&e)
                ))
            }
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .text()
            .await
            .map_err(|e| CtlError::Unavailable(e.to_string()))?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(Answer { status, body, etag });
        }
        let msg = match (&body["error"], &body["message"], &body["field"]) {
            (Value::String(code), Value::String(m), Value::String(f)) => {
                format!("{code}: {f}: {m}")
            }
            (Value::String(code), Value::String(m), _) => format!("{code}: {m}"),
            _ => format!("{status}: {body}"),
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
        loop {
            let mut q = query.to_vec();
            q.push(("limit", "1000".into()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.get(segments, &q).await?;
            items.extend(page_items(&page)?.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(items),
            }
        }
    }
}

/// The `items` of a list page; an answer without them is not a page (another server
/// behind --server, say), never an empty list.
pub fn page_items(page: &Value) -> Result<&Vec<Value>, CtlError> {
    page["items"].as_array().ok_or_else(|| {
        let mut shown = page.to_string();
        shown.truncate(200);
        CtlError::Other(format!("unexpected answer (no items list): {shown}"))
    })
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

/// The `If-Match` value for `tag`: as the server sent it (`"…"`), quoted when given bare.
pub fn if_match(tag: Option<&str>) -> Option<String> {
    let t = tag?.trim();
    Some(if t.starts_with('"') || t.starts_with("W/") {
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
        let c = Client::new(base, String::new())?;
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

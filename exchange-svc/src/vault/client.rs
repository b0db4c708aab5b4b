//! A thin client for the Vault/OpenBao HTTP API: address, namespace, CA, current token,
//! error mapping and request counters.

use super::config::VaultConfig;
use super::secret::Secret;
use serde_json::Value;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a Vault call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// Unreachable, timed out, sealed, or a 5xx/429 answer: retry later.
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// 403: the token is missing, expired or lacks a policy.
    #[error("vault permission denied on {0}")]
    PermissionDenied(String),
    /// 404 on a path that must exist (missing key or mount).
    #[error("vault path not found: {0}")]
    NotFound(String),
    /// Any other 4xx: Vault refused the request (its `errors` list is included).
    #[error("vault rejected {path} ({status}): {message}")]
    Rejected {
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Vault's error messages.
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected vault answer: {0}")]
    Protocol(String),
    /// Local setup failed (CA file, token file, credentials file).
    #[error("vault client setup: {0}")]
    Setup(String),
}

impl VaultError {
    /// Whether retrying later may help (as opposed to a configuration problem).
    pub fn is_transient(&self) -> bool {
        matches!(self, VaultError::Unavailable(_))
    }
}

/// Counters and gauges for metrics; all plain atomics, read with the accessors.
#[derive(Debug, Default)]
pub struct VaultStats {
    sign_requests: AtomicU64,
    signatures: AtomicU64,
    sign_errors: AtomicU64,
    key_loads: AtomicU64,
    logins: AtomicU64,
    renewals: AtomicU64,
    auth_failures: AtomicU64,
    /// Unix seconds when the current token expires; 0 = never or unknown.
    token_expires_at: AtomicI64,
    /// Signatures per `transit/sign` request, once a metrics collector attached it.
    batch_sizes: OnceLock<prometheus::Histogram>,
}

impl VaultStats {
    /// HTTP requests sent to `transit/sign` (one batch = one request).
    pub fn sign_requests(&self) -> u64 {
        self.sign_requests.load(Ordering::Relaxed)
    }
    /// Signatures returned to callers.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
    /// Signatures that failed (Vault down, item error, bad answer).
    pub fn sign_errors(&self) -> u64 {
        self.sign_errors.load(Ordering::Relaxed)
    }
    /// Successful reads of the transit key.
    pub fn key_loads(&self) -> u64 {
        self.key_loads.load(Ordering::Relaxed)
    }
    /// Successful logins (or token (re)loads for token/token_file).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }
    /// Successful token renewals.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }
    /// Failed login, lookup or renewal attempts.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }
    /// Seconds until the current token expires: `None` when it never expires or no
    /// token is loaded yet; negative once expired.
    pub fn token_ttl_seconds(&self) -> Option<i64> {
        match self.token_expires_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at - unix_now()),
        }
    }

    /// One `transit/sign` request carrying `signatures` inputs.
    pub(crate) fn add_sign_request(&self, signatures: usize) {
        self.sign_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.batch_sizes.get() {
            h.observe(signatures as f64);
        }
    }
    /// Records every later request's size in `h` (the first histogram given wins).
    pub fn observe_batch_sizes(&self, h: prometheus::Histogram) {
        let _ = self.batch_sizes.set(h);
    }
    pub(crate) fn add_signatures(&self, n: u64) {
        self.signatures.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_sign_errors(&self, n: u64) {
        self.sign_errors.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_key_load(&self) {
        self.key_loads.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_renewal(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_token_ttl(&self, ttl: Option<Duration>) {
        let at = match ttl {
            Some(t) => unix_now().saturating_add(t.as_secs() as i64),
            None => 0,
        };
        self.token_expires_at.store(at, Ordering::Relaxed);
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// HTTP client bound to one Vault server.
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
    namespace: Option<String>,
    /// The token and its generation (one more on every install).
    token: RwLock<(Secret, u64)>,
    /// The newest generation Vault answered 403 to: a refusal of an older token (a
    /// request sent before the last login) asks for no new login.
    refused_generation: AtomicU64,
    /// Vault's clock minus ours (ms), from its last answer's `Date` header; 0 within
    /// the header's one-second resolution (see [`VaultClient::clock_offset_ms`]).
    clock_offset_ms: AtomicI64,
    stats: Arc<VaultStats>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// Builds a client from a resolved config (see [`VaultConfig::resolved`]); no token
    /// yet.
    pub fn new(cfg: &VaultConfig) -> Result<VaultClient, VaultError> {
        let base = cfg
            .address
            .as_deref()
            .ok_or_else(|| VaultError::Setup("vault.address is not set".into()))?
            .trim_end_matches('/')
            .to_string();
        let mut b = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("meshpass-exchange/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry X-Vault-Token to wherever it points (reqwest strips
            // only its own list of sensitive headers): never follow one.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &cfg.ca_cert {
            // As the Vault CLI does: the CA file replaces the public roots.
            b = b.tls_built_in_root_certs(false);
            let pem = std::fs::read(ca)
                .map_err(|e| VaultError::Setup(format!("reading {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| VaultError::Setup(format!("CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(VaultError::Setup(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        } else {
            // Otherwise the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR, the
            // image's pinned bundle), as the Vault CLI uses; not a compiled-in list.
            b = b.tls_built_in_webpki_certs(false);
        }
        let http = b
            .build()
            .map_err(|e| VaultError::Setup(format!("HTTP client: {e}")))?;
        Ok(VaultClient {
            http,
            base,
            namespace: cfg.namespace.clone(),
            token: RwLock::new((Secret::default(), 0)),
            refused_generation: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            stats: Arc::new(VaultStats::default()),
        })
    }

    /// Counters shared with the signer.
    pub fn stats(&self) -> &Arc<VaultStats> {
        &self.stats
    }

    /// Replaces the token used for requests.
    pub fn set_token(&self, token: Secret) {
        if let Ok(mut t) = self.token.write() {
            *t = (token, t.1 + 1);
        }
    }

    /// Whether a token is loaded.
    pub fn has_token(&self) -> bool {
        self.token.read().map(|t| !t.0.is_empty()).unwrap_or(false)
    }

    fn current_token(&self) -> (Secret, u64) {
        self.token.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Whether Vault refused (403) the token installed now, not only an older one.
    pub(crate) fn current_token_refused(&self) -> bool {
        let current = self.token.read().map(|t| t.1).unwrap_or(0);
        self.refused_generation.load(Ordering::Relaxed) >= current
    }

    /// Remembers a 403 to the token of `generation`.
    fn note_refusal<T>(&self, r: &Result<T, VaultError>, generation: u64) {
        if matches!(r, Err(VaultError::PermissionDenied(_))) {
            self.refused_generation
                .fetch_max(generation, Ordering::Relaxed);
        }
    }

    /// How far Vault's clock is ahead of ours (ms; negative: behind), from the `Date` of
    /// its last answer: Vault's own times (a key version's `creation_time`) are moved by
    /// it onto this replica's clock. 0 when the two agree within the header's resolution.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    fn note_date(&self, date: Option<&reqwest::header::HeaderValue>) {
        let Some(vault_now) = date
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
        else {
            return;
        };
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        // `Date` is truncated to the second and sent a moment before we read it: an
        // offset under two seconds is that, not a clock apart.
        let offset = ms(vault_now).saturating_sub(ms(SystemTime::now()));
        let offset = if offset.abs() < 2_000 { 0 } else { offset };
        self.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// `method` on `/v1/{path}` with the current token (when `authenticated`). Returns
    /// the JSON body (`Null` for 204).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        authenticated: bool,
    ) -> Result<Value, VaultError> {
        if !authenticated {
            return self.call_with(method, path, body, None).await;
        }
        let (token, generation) = self.current_token();
        let r = self.call_with(method, path, body, Some(token)).await;
        self.note_refusal(&r, generation);
        r
    }

    /// Like [`VaultClient::call`] with an explicit token.
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<Secret>,
    ) -> Result<Value, VaultError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| VaultError::Protocol(format!("{path}: encoding the request: {e}")))?;
        let bytes = self.send(method, path, body, token).await?;
        Ok(if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        })
    }

    /// `method` on `/v1/{path}` with the current token and `json`, a JSON document the
    /// caller wrote itself; the answer's bytes, for the caller to parse (the sign path
    /// writes and reads its documents without building `Value` trees).
    pub(crate) async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError> {
        let (token, generation) = self.current_token();
        let r = self.send(method, path, Some(json), Some(token)).await;
        self.note_refusal(&r, generation);
        r
    }

    /// Sends one request; a 2xx answer's body, or the error its status means.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<Vec<u8>>,
        token: Option<Secret>,
    ) -> Result<Vec<u8>, VaultError> {
        let url = format!("{}/v1/{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            req = req.header("X-Vault-Token", t.expose());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = json {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's error text includes the URL but never headers (no token leak).
            VaultError::Unavailable(if e.is_timeout() {
                format!("timeout calling {path}")
            } else {
                format!("{path}: {}", error_chain(&e))
            })
        })?;
        let status = resp.status().as_u16();
        self.note_date(resp.headers().get(reqwest::header::DATE));
        let ok = (200..=299).contains(&status);
        let limit = if ok {
            MAX_ANSWER_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let read = read_at_most(resp, limit).await.map_err(|e| {
            VaultError::Unavailable(format!("{path}: reading body: {}", error_chain(&e)))
        })?;
        if ok {
            return read.ok_or_else(|| {
                VaultError::Unavailable(format!(
                    "{path}: answer larger than {MAX_ANSWER_BYTES} bytes"
                ))
            });
        }
        // An error answer too large to be Vault's own: its status alone says enough.
        let json: Value = read
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        match status {
            403 => Err(VaultError::PermissionDenied(path.to_string())),
            404 => Err(VaultError::NotFound(path.to_string())),
            429 | 500..=599 => Err(VaultError::Unavailable(format!(
                "{path} answered {status}{}",
                errors_of(&json)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ))),
            _ => Err(VaultError::Rejected {
                path: path.to_string(),
                status,
                message: errors_of(&json).unwrap_or_else(|| "no details".into()),
            }),
        }
    }
}

/// The most of a successful Vault answer read: a batch of 1024 RSA-4096 signatures is
/// under 1 MiB, a key of thousands of versions a few. More is no answer of Vault's (a
/// proxy gone wrong), and each sign request in flight would hold it.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most of an error answer read: only its `errors` message is used.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Vault's `errors` text is logged and put in errors: bounded.
const MAX_ERROR_MESSAGE_CHARS: usize = 512;

/// `resp`'s body, or `None` once it exceeds `limit` bytes (the rest is not read).
async fn read_at_most(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn errors_of(v: &Value) -> Option<String> {
    let list = v.get("errors")?.as_array()?;
    let msgs: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    if msgs.is_empty() {
        return None;
    }
    let joined = msgs.join("; ");
    Some(match joined.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

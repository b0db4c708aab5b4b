//! Subject-token issuer keys: inline, file, JWKS URL or OIDC discovery, refreshed in
//! the background with backoff. The last good key set is kept when a refresh fails; an
//! unknown `kid` triggers at most one refetch per `min_refetch_secs` per issuer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where OIDC discovery puts the document under an issuer's base URL.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

use async_trait::async_trait;
use meshpass_core::KeySet;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::config::{check_url, Config, IssuerConfig, KeySourceConfig};

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Timeout of one JWKS or discovery fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The HTTP request failed or answered a non-200 status.
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The document is not a usable JWKS or discovery document.
    #[error("bad document: {0}")]
    Document(String),
    /// A local file (JWKS, CA, bearer token) could not be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The issuer is not configured.
    #[error("issuer is not configured")]
    UnknownIssuer,
}

/// The state of one issuer's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerKeyStatus {
    /// The issuer.
    pub issuer: String,
    /// Number of usable keys currently held.
    pub keys: usize,
    /// Seconds since the keys were last loaded successfully (None: never).
    pub age_secs: Option<f64>,
}

/// Gives the current issuer keys to the token endpoint.
#[async_trait]
pub trait IssuerKeySource: Send + Sync {
    /// The current keys of every issuer.
    fn snapshot(&self) -> Arc<HashMap<String, KeySet>>;
    /// The current keys with their generation, read together: the generation changes
    /// whenever any issuer's key set changes (a key added, replaced or removed), so a
    /// result derived from one snapshot can be tagged with it and dropped later.
    fn generation_snapshot(&self) -> (u64, Arc<HashMap<String, KeySet>>);
    /// The current key-set generation alone (the warm path compares it with the one a
    /// cached token was minted under).
    fn generation(&self) -> u64 {
        self.generation_snapshot().0
    }
    /// A token named a `kid` the issuer's keys lack: refetch them unless that was done
    /// less than `min_refetch_secs` ago. Whether a refetch loaded keys.
    async fn refetch_unknown_kid(&self, issuer: &str) -> bool;
    /// Per-issuer state for `/readyz` and metrics.
    fn status(&self) -> Vec<IssuerKeyStatus>;
}

enum Source {
    Inline,
    File(PathBuf),
    Url { url: String, http: reqwest::Client },
    Discovery { base: String, http: reqwest::Client },
}

struct Issuer {
    name: String,
    source: Source,
    bearer_token_file: Option<PathBuf>,
    refresh: Duration,
    min_refetch: Duration,
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// One fetch-and-store at a time: a slow refresh answering the old set must not
    /// land after (and over) a refetch that loaded the new one.
    fetching: tokio::sync::Mutex<()>,
    last_success: Mutex<Option<Instant>>,
    /// SHA-256 of the last JWKS document stored: a refresh returning the same bytes
    /// keeps the key-set generation (and so the verified-subject cache) unchanged.
    digest: Mutex<Option<[u8; 32]>>,
}

/// The keys of every issuer and the generation they belong to.
struct Current {
    generation: u64,
    keys: Arc<HashMap<String, KeySet>>,
}

/// The service's [`IssuerKeySource`].
pub struct IssuerKeys {
    current: RwLock<Current>,
    /// `current.generation`, readable without the lock (written under it).
    generation: AtomicU64,
    issuers: Vec<Issuer>,
    /// Itself, for a refetch on a task of its own.
    me: std::sync::Weak<IssuerKeys>,
}

/// An HTTP client trusting `ca_file` only (when given), else the built-in roots.
pub fn http_client(
    ca_file: Option<&PathBuf>,
    timeout: Duration,
) -> Result<reqwest::Client, KeysError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("meshpass-exchange/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| KeysError::File {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| KeysError::File {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
        // Without any, the client would trust nothing (the built-in roots are off).
        if certs.is_empty() {
            return Err(KeysError::File {
                path: ca.display().to_string(),
                reason: "holds no certificate".into(),
            });
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| KeysError::Fetch(e.to_string()))
}

/// Reads a bearer token file (trimmed).
pub fn read_bearer(path: &PathBuf) -> Result<String, KeysError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| KeysError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// GETs `url` and returns the body (at most [`MAX_DOCUMENT_BYTES`]).
async fn get_document(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> Result<Vec<u8>, KeysError> {
    let mut req = http.get(url).header("accept", "application/json");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| KeysError::Fetch(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(KeysError::Fetch(format!(
            "{} answered {}",
            crate::redact::url(url),
            resp.status()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| KeysError::Fetch(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(KeysError::Document(format!(
                "{} is larger than {MAX_DOCUMENT_BYTES} bytes",
                crate::redact::url(url)
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A parsed JWKS and the SHA-256 of the document it came from.
struct Loaded {
    keys: KeySet,
    digest: [u8; 32],
}

fn parse_jwks(bytes: &[u8], issuer: &str) -> Result<KeySet, KeysError> {
    let (set, rejected) = KeySet::parse(bytes).map_err(|e| KeysError::Document(e.to_string()))?;
    for r in rejected {
        tracing::warn!(issuer, index = r.index, kid = ?r.kid, reason = %r.reason, "JWKS key ignored");
    }
    if set.is_empty() {
        return Err(KeysError::Document("JWKS has no usable key".into()));
    }
    Ok(set)
}

impl Issuer {
    fn from_config(
        c: &IssuerConfig,
        field: &str,
    ) -> Result<(Self, Option<KeySet>), crate::config::ConfigError> {
        let io = |e: KeysError| crate::config::ConfigError::Invalid {
            field: format!("{field}.ca_file"),
            reason: e.to_string(),
        };
        let mut initial = None;
        let source = match c.key_source(field)? {
            KeySourceConfig::Inline(j) => {
                initial = Some(parse_jwks(j.as_bytes(), &c.policy.issuer).map_err(|e| {
                    crate::config::ConfigError::Invalid {
                        field: format!("{field}.jwks"),
                        reason: e.to_string(),
                    }
                })?);
                Source::Inline
            }
            KeySourceConfig::File(p) => Source::File(p),
            KeySourceConfig::Url(u) => {
                check_url(&format!("{field}.jwks_url"), &u)?;
                Source::Url {
                    url: u,
                    http: http_client(c.ca_file.as_ref(), FETCH_TIMEOUT).map_err(io)?,
                }
            }
            KeySourceConfig::Discovery(u) => {
                check_url(&format!("{field}.discovery_url"), &u)?;
                Source::Discovery {
                    // The issuer's base URL, or the document's own URL as often pasted.
                    base: u
                        .trim_end_matches('/')
                        .trim_end_matches(DISCOVERY_PATH)
                        .trim_end_matches('/')
                        .to_string(),
                    http: http_client(c.ca_file.as_ref(), FETCH_TIMEOUT).map_err(io)?,
                }
            }
        };
        Ok((
            Issuer {
                name: c.policy.issuer.clone(),
                source,
                bearer_token_file: c.bearer_token_file.clone(),
                refresh: Duration::from_secs(c.refresh_secs.max(1)),
                min_refetch: Duration::from_secs(c.min_refetch_secs),
                last_refetch: tokio::sync::Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                last_success: Mutex::new(initial.as_ref().map(|_| Instant::now())),
                digest: Mutex::new(None),
            },
            initial,
        ))
    }

    async fn fetch(&self) -> Result<Option<Loaded>, KeysError> {
        // Sent to URLs only (the configuration refuses it beside a file or inline keys).
        let bearer = match (&self.bearer_token_file, &self.source) {
            (Some(p), Source::Url { .. } | Source::Discovery { .. }) => Some(read_bearer(p)?),
            _ => None,
        };
        let bytes = match &self.source {
            Source::Inline => return Ok(None),
            Source::File(p) => tokio::fs::read(p).await.map_err(|e| KeysError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?,
            Source::Url { url, http } => get_document(http, url, bearer.as_deref()).await?,
            Source::Discovery { base, http } => {
                let url = format!("{base}{DISCOVERY_PATH}");
                let doc = get_document(http, &url, bearer.as_deref()).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|e| KeysError::Document(e.to_string()))?;
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        KeysError::Document("discovery document has no jwks_uri".into())
                    })?;
                // OIDC Discovery §4.3: the document must be the configured issuer's.
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.name.as_str()) {
                    return Err(KeysError::Document(
                        "discovery document names another issuer than the configured one".into(),
                    ));
                }
                let jwks_url = check_url("jwks_uri", jwks_uri)
                    .map_err(|e| KeysError::Document(e.to_string()))?;
                // The token was given for the discovery origin: never to another one.
                let same_origin =
                    reqwest::Url::parse(base).is_ok_and(|b| b.origin() == jwks_url.origin());
                get_document(http, jwks_uri, bearer.as_deref().filter(|_| same_origin)).await?
            }
        };
        let keys = parse_jwks(&bytes, &self.name)?;
        Ok(Some(Loaded {
            keys,
            digest: Sha256::digest(&bytes).into(),
        }))
    }
}

impl IssuerKeys {
    /// Builds the key source; inline keys are loaded at once, the others by
    /// [`IssuerKeys::refresh_all`] / [`IssuerKeys::spawn_refresh`].
    pub fn from_config(cfg: &Config) -> Result<Arc<Self>, crate::config::ConfigError> {
        let mut issuers = Vec::new();
        let mut initial = HashMap::new();
        for (i, c) in cfg.issuers.iter().enumerate() {
            let (issuer, keys) = Issuer::from_config(c, &format!("issuers[{i}]"))?;
            if let Some(k) = keys {
                initial.insert(c.policy.issuer.clone(), k);
            }
            issuers.push(issuer);
        }
        Ok(Arc::new_cyclic(|me| IssuerKeys {
            current: RwLock::new(Current {
                generation: 0,
                keys: Arc::new(initial),
            }),
            generation: AtomicU64::new(0),
            issuers,
            me: me.clone(),
        }))
    }

    /// Stores freshly loaded keys; the generation moves only when the document changed.
    fn store(&self, issuer: &Issuer, loaded: Loaded) {
        // Held across the swap so two concurrent loads of one issuer cannot interleave.
        let mut digest = match issuer.digest.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        if *digest != Some(loaded.digest) {
            let mut g = match self.current.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut next = HashMap::clone(&g.keys);
            next.insert(issuer.name.clone(), loaded.keys);
            g.keys = Arc::new(next);
            g.generation = g.generation.wrapping_add(1);
            self.generation.store(g.generation, Ordering::Release);
            *digest = Some(loaded.digest);
        }
        drop(digest);
        if let Ok(mut t) = issuer.last_success.lock() {
            *t = Some(Instant::now());
        }
    }

    async fn fetch_and_store(&self, issuer: &Issuer) -> Result<bool, KeysError> {
        let _one = issuer.fetching.lock().await;
        match issuer.fetch().await? {
            Some(loaded) => {
                tracing::debug!(issuer = %issuer.name, keys = loaded.keys.len(), "issuer keys loaded");
                self.store(issuer, loaded);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Loads every non-inline issuer once (at startup); failures are logged.
    pub async fn refresh_all(&self) {
        for issuer in &self.issuers {
            if let Err(e) = self.fetch_and_store(issuer).await {
                tracing::warn!(issuer = %issuer.name, error = %e, "loading issuer keys failed");
            }
        }
    }

    /// Starts one background refresh loop per non-inline issuer: every `refresh_secs`
    /// after a success, with doubling backoff (1 s up to `refresh_secs`) after a failure.
    pub fn spawn_refresh(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for idx in 0..self.issuers.len() {
            if matches!(self.issuers[idx].source, Source::Inline) {
                continue;
            }
            let this = Arc::clone(self);
            handles.push(tokio::spawn(async move {
                let issuer = &this.issuers[idx];
                let mut backoff = Duration::from_secs(1);
                // Keys loaded at startup: the next fetch is due one interval later.
                let loaded = issuer.last_success.lock().map(|t| t.is_some()).unwrap_or(false);
                if loaded {
                    tokio::time::sleep(issuer.refresh).await;
                }
                loop {
                    let wait = match this.fetch_and_store(issuer).await {
                        Ok(_) => {
                            backoff = Duration::from_secs(1);
                            issuer.refresh
                        }
                        Err(e) => {
                            tracing::warn!(issuer = %issuer.name, error = %e, retry_in_secs = backoff.as_secs(),
                                "refreshing issuer keys failed; keeping the last good keys");
                            let w = backoff;
                            backoff = (backoff * 2).min(issuer.refresh);
                            w
                        }
                    };
                    tokio::time::sleep(wait).await;
                }
            }));
        }
        handles
    }
}

#[async_trait]
impl IssuerKeySource for IssuerKeys {
    fn snapshot(&self) -> Arc<HashMap<String, KeySet>> {
        self.generation_snapshot().1
    }

    fn generation_snapshot(&self) -> (u64, Arc<HashMap<String, KeySet>>) {
        let g = match self.current.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        (g.generation, Arc::clone(&g.keys))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    async fn refetch_unknown_kid(&self, issuer: &str) -> bool {
        let Some(idx) = self.issuers.iter().position(|i| i.name == issuer) else {
            return false;
        };
        let iss = &self.issuers[idx];
        if matches!(iss.source, Source::Inline) {
            return false;
        }
        // One refetch at a time per issuer; callers that waited reuse its result.
        let mut last = iss.last_refetch.lock().await;
        if let Some(t) = *last {
            if t.elapsed() < iss.min_refetch {
                drop(last);
                // Its caller may be gone (an exchange that timed out) while the fetch
                // goes on: wait for its answer rather than decide on the old keys.
                drop(iss.fetching.lock().await);
                return false;
            }
        }
        let Some(me) = self.me.upgrade() else {
            return false;
        };
        *last = Some(Instant::now());
        // On a task of its own: a caller that times out or hangs up must not cancel the
        // fetch whose window it took (every token of the new key would be refused until
        // the window ends).
        let name = issuer.to_string();
        let fetch = tokio::spawn(async move {
            match me.fetch_and_store(&me.issuers[idx]).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::warn!(issuer = %name, error = %e, "refetch for an unknown kid failed");
                    false
                }
            }
        });
        fetch.await.unwrap_or(false)
    }

    fn status(&self) -> Vec<IssuerKeyStatus> {
        let snap = self.snapshot();
        self.issuers
            .iter()
            .map(|i| IssuerKeyStatus {
                issuer: i.name.clone(),
                keys: snap.get(&i.name).map(KeySet::len).unwrap_or(0),
                // Inline keys are the configured keys: never stale (an age counted
                // from the start would fire the stale-JWKS alert after 15 minutes).
                age_secs: if matches!(i.source, Source::Inline) {
                    Some(0.0)
                } else {
                    i.last_success
                        .lock()
                        .ok()
                        .and_then(|t| t.map(|t| t.elapsed().as_secs_f64()))
                },
            })
            .collect()
    }
}

//! Kubernetes TokenReview (`authentication.k8s.io/v1`) through the `kube` client.
//!
//! The client comes from `kube::Config`: either the pod's in-cluster configuration
//! (`in_cluster = true`: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service-account CA and
//! token, which kube re-reads as the kubelet rotates it) or an explicit `url` with an
//! optional CA file and bearer-token file.
//!
//! Requests go through `Client::send`, not `Api::create`: kube logs a response body it
//! cannot parse at `warn`, and a TokenReview answer echoes `spec.token`. Here bodies are
//! parsed locally and never logged, so no token reaches the log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{self, HeaderValue};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::api::PostParams;
use kube::Resource;

use crate::config::TokenReviewConfig;

/// Why a review did not accept the token.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server could not be asked or answered an error (→ 503).
    #[error("TokenReview unavailable: {0}")]
    Unavailable(String),
    /// The API server says the token is not authenticated.
    #[error("the Kubernetes API server did not authenticate the token")]
    NotAuthenticated,
    /// The reviewed user differs from the token's subject.
    #[error("the reviewed user does not match the token subject")]
    UserMismatch,
    /// `status.audiences` contains none of the requested audiences.
    #[error("the token is not valid for any requested audience")]
    AudienceMismatch,
}

/// Why a reviewer could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReviewSetupError {
    /// `in_cluster = true` but the pod's service-account files or environment are missing.
    #[error("in-cluster configuration unavailable: {0}")]
    InCluster(String),
    /// `url` is not a valid URI.
    #[error("bad url: {0}")]
    Url(String),
    /// `url` is missing and `in_cluster` is off.
    #[error("url is required unless in_cluster = true")]
    NoUrl,
    /// A CA or bearer-token file could not be read or holds no usable content.
    #[error("cannot use {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The kube client could not be built (TLS roots, connector).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    /// Built outside a tokio runtime (the kube client spawns its request buffer task).
    #[error("the Kubernetes client must be built inside a tokio runtime")]
    NoRuntime,
}

/// A configured reviewer.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    /// Explicit bearer-token file, read at every review (in-cluster: kube handles it).
    bearer_token_file: Option<PathBuf>,
    audiences: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("bearer_token_file", &self.bearer_token_file)
            .field("audiences", &self.audiences)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ReviewSetupError {
    ReviewSetupError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The DER certificates of a PEM bundle (at least one).
fn read_ca_bundle(path: &Path) -> Result<Vec<Vec<u8>>, ReviewSetupError> {
    let pem = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<Vec<u8>> = pem::parse_many(&pem)
        .map_err(|e| file_err(path, e))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(file_err(path, "no PEM CERTIFICATE in it"));
    }
    Ok(certs)
}

/// The trimmed content of a bearer-token file.
fn read_bearer(path: &Path) -> Result<String, ReviewSetupError> {
    let t = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(file_err(path, "empty"));
    }
    Ok(t.to_string())
}

/// A kube client for `cfg` (in-cluster, or `url` with `ca_file` else `issuer_ca`), the
/// bearer-token file to send (None in-cluster: kube handles it) and the timeout. Must
/// run inside a tokio runtime.
pub fn kube_client(
    cfg: &TokenReviewConfig,
    issuer_ca: Option<&PathBuf>,
) -> Result<(kube::Client, Option<PathBuf>, Duration), ReviewSetupError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ReviewSetupError::NoRuntime);
    }
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let mut kc = if cfg.in_cluster {
        kube::Config::incluster().map_err(|e| ReviewSetupError::InCluster(e.to_string()))?
    } else {
        let url = cfg.url.as_deref().ok_or(ReviewSetupError::NoUrl)?;
        let uri: http::Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|e: http::uri::InvalidUri| ReviewSetupError::Url(e.to_string()))?;
        let mut kc = kube::Config::new(uri);
        // Without a CA file kube trusts the system's native roots.
        if let Some(ca) = cfg.ca_file.as_ref().or(issuer_ca) {
            kc.root_cert = Some(read_ca_bundle(ca)?);
        }
        kc
    };
    kc.connect_timeout = Some(timeout);
    kc.read_timeout = Some(timeout);
    kc.write_timeout = Some(timeout);
    let bearer_token_file = if cfg.in_cluster {
        None
    } else {
        cfg.bearer_token_file.clone()
    };
    if let Some(p) = &bearer_token_file {
        // Refuse to start with an unreadable token file; it is re-read at every review.
        read_bearer(p)?;
    }
    let client = kube::Client::try_from(kc).map_err(|e| ReviewSetupError::Client(e.to_string()))?;
    Ok((client, bearer_token_file, timeout))
}

/// `Authorization: Bearer` from a token file (sensitive: never logged).
/// The files [`kube_client`] reads (the CA bundle, the bearer token), read now, so that
/// `check-config` refuses what `serve` would.
pub fn check_files(
    cfg: &TokenReviewConfig,
    issuer_ca: Option<&PathBuf>,
) -> Result<(), ReviewSetupError> {
    if cfg.in_cluster {
        return Ok(());
    }
    if let Some(ca) = cfg.ca_file.as_ref().or(issuer_ca) {
        read_ca_bundle(ca)?;
    }
    if let Some(p) = &cfg.bearer_token_file {
        read_bearer(p)?;
    }
    Ok(())
}

/// The most of an API server's answer read: a TokenReview or SubjectAccessReview is a
/// few KiB, and an answer is read whole before it is parsed.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The body of `resp`, at most [`MAX_ANSWER_BYTES`].
pub async fn read_answer(resp: http::Response<kube::client::Body>) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
        }
        Err(e) => Err(e.to_string()),
    }
}

pub fn bearer_header(path: &Path) -> Result<HeaderValue, ReviewError> {
    let unavailable = |e: String| ReviewError::Unavailable(e);
    let t = read_bearer(path).map_err(|e| unavailable(e.to_string()))?;
    let mut v = HeaderValue::try_from(format!("Bearer {t}"))
        .map_err(|_| unavailable("the bearer token file holds an invalid token".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl TokenReviewer {
    /// Builds a reviewer; `issuer_ca` is the CA used when the config names none, and
    /// `issuer_audiences` are used when the config names no audiences. Must run inside a
    /// tokio runtime.
    pub fn new(
        cfg: &TokenReviewConfig,
        issuer_ca: Option<&PathBuf>,
        issuer_audiences: &[String],
    ) -> Result<Self, ReviewSetupError> {
        let (client, bearer_token_file, timeout) = kube_client(cfg, issuer_ca)?;
        Ok(TokenReviewer {
            client,
            bearer_token_file,
            audiences: if cfg.audiences.is_empty() {
                issuer_audiences.to_vec()
            } else {
                cfg.audiences.clone()
            },
            timeout,
        })
    }

    /// The same reviewer (same client, credentials and timeout) asking for `audiences`
    /// instead: management tokens carry `management.audiences`, not the issuer's.
    pub fn with_audiences(&self, audiences: &[String]) -> TokenReviewer {
        TokenReviewer {
            audiences: audiences.to_vec(),
            ..self.clone()
        }
    }

    /// The `POST .../tokenreviews` request for `token`.
    fn request(&self, token: &str) -> Result<http::Request<kube::client::Body>, ReviewError> {
        let unavailable = |e: String| ReviewError::Unavailable(e);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        // k8s-openapi writes `apiVersion` and `kind` itself.
        let body = serde_json::to_vec(&review).map_err(|e| unavailable(e.to_string()))?;
        let mut req = kube::core::Request::new(TokenReview::url_path(&(), None))
            .create(&PostParams::default(), body)
            .map_err(|e| unavailable(e.to_string()))?;
        if let Some(p) = &self.bearer_token_file {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, bearer_header(p)?);
        }
        req.headers_mut().insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Ok(req.map(kube::client::Body::from))
    }

    /// Sends the review and returns the API server's answer.
    async fn ask(&self, token: &str) -> Result<TokenReview, ReviewError> {
        let req = self.request(token)?;
        let resp = self
            .client
            .send(req)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            // The body (a `Status`) is not read: only the code is reported.
            return Err(ReviewError::Unavailable(format!(
                "API server answered {status}"
            )));
        }
        let bytes = read_answer(resp).await.map_err(ReviewError::Unavailable)?;
        // The answer echoes `spec.token`: report the parse error, never the body.
        serde_json::from_slice(&bytes).map_err(|e| {
            ReviewError::Unavailable(format!("bad TokenReview answer: {}", json_error_kind(&e)))
        })
    }

    /// Reviews `token`, whose `sub` claim is `subject`; the user the API server
    /// authenticated (its uid, groups and extra are what a SubjectAccessReview must
    /// carry: without groups it asks about a user in none).
    pub async fn review(&self, token: &str, subject: &str) -> Result<UserInfo, ReviewError> {
        let answer = tokio::time::timeout(self.timeout, self.ask(token))
            .await
            .map_err(|_| {
                ReviewError::Unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            if let Some(e) = &status.error {
                tracing::info!(error = %e, "TokenReview refused the subject token");
            }
            return Err(ReviewError::NotAuthenticated);
        }
        let user = status.user.unwrap_or_default();
        if user.username.as_deref() != Some(subject) {
            return Err(ReviewError::UserMismatch);
        }
        // Without audiences in the answer the API server did not check them: refuse.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(ReviewError::AudienceMismatch);
        }
        Ok(user)
    }
}

/// A JSON error without its text: serde's message can quote the input (the token).
fn json_error_kind(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} error at line {} column {}", e.line(), e.column())
}

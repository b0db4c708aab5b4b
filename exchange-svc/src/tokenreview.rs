//! Kubernetes TokenReview (`authentication.k8s.io/v1`) over plain HTTPS.
//!
//! Why not the `kube` crate: it pulls `k8s-openapi` (every API type of every group,
//! minutes of compile time on the 2-core CI machine) plus its own hyper/tower client
//! stack, for one POST of one small JSON document. The wire format is tiny and stable,
//! so it is spoken here directly with the reqwest client the service already has.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::TokenReviewConfig;
use crate::keys::{http_client, read_bearer, KeysError};

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

/// TokenReview request/response object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `authentication.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `TokenReview`.
    #[serde(default)]
    pub kind: String,
    /// The request.
    #[serde(default)]
    pub spec: TokenReviewSpec,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenReviewStatus>,
}

/// `spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TokenReviewSpec {
    /// The token under review.
    #[serde(default)]
    pub token: String,
    /// Audiences the token must be valid for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TokenReviewStatus {
    /// Whether the token is authenticated.
    #[serde(default)]
    pub authenticated: bool,
    /// The user the token belongs to.
    #[serde(default)]
    pub user: Option<UserInfo>,
    /// Audiences the token is valid for (intersection with the requested ones).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Error text from the API server.
    #[serde(default)]
    pub error: Option<String>,
}

/// `status.user`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserInfo {
    /// e.g. `system:serviceaccount:NS:SA`.
    #[serde(default)]
    pub username: String,
    /// The user's UID.
    #[serde(default)]
    pub uid: Option<String>,
}

/// A configured reviewer.
#[derive(Debug, Clone)]
pub struct TokenReviewer {
    endpoint: String,
    http: reqwest::Client,
    bearer_token_file: Option<PathBuf>,
    audiences: Vec<String>,
}

impl TokenReviewer {
    /// Builds a reviewer; `issuer_audiences` are used when the config names none.
    pub fn new(
        cfg: &TokenReviewConfig,
        issuer_ca: Option<&PathBuf>,
        issuer_audiences: &[String],
    ) -> Result<Self, KeysError> {
        let ca = cfg.ca_file.as_ref().or(issuer_ca);
        Ok(TokenReviewer {
            endpoint: format!(
                "{}/apis/authentication.k8s.io/v1/tokenreviews",
                cfg.url.trim_end_matches('/')
            ),
            http: http_client(ca, Duration::from_secs(cfg.timeout_secs))?,
            bearer_token_file: cfg.bearer_token_file.clone(),
            audiences: if cfg.audiences.is_empty() {
                issuer_audiences.to_vec()
            } else {
                cfg.audiences.clone()
            },
        })
    }

    /// Reviews `token`, whose `sub` claim is `subject`.
    pub async fn review(&self, token: &str, subject: &str) -> Result<(), ReviewError> {
        let body = TokenReview {
            api_version: "authentication.k8s.io/v1".into(),
            kind: "TokenReview".into(),
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: self.audiences.clone(),
            },
            status: None,
        };
        let mut req = self.http.post(&self.endpoint).json(&body);
        if let Some(p) = &self.bearer_token_file {
            let t = read_bearer(p).map_err(|e| ReviewError::Unavailable(e.to_string()))?;
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ReviewError::Unavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(ReviewError::Unavailable(format!(
                "API server answered {}",
                resp.status()
            )));
        }
        let answer: TokenReview = resp.json().await.map_err(|e| {
            ReviewError::Unavailable(format!("bad TokenReview answer: {}", e.without_url()))
        })?;
        let status = answer.status.unwrap_or_default();
        if !status.authenticated {
            if let Some(e) = &status.error {
                tracing::info!(error = %e, "TokenReview refused the subject token");
            }
            return Err(ReviewError::NotAuthenticated);
        }
        if status.user.map(|u| u.username) != Some(subject.to_string()) {
            return Err(ReviewError::UserMismatch);
        }
        // Without audiences in the answer the API server did not check them: refuse.
        if !status.audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(ReviewError::AudienceMismatch);
        }
        Ok(())
    }
}

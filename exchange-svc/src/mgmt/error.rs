//! The management API's error type and its JSON shape:
//! `{"error": CODE, "message": TEXT, "field": FIELD?}` (field only for `invalid`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// Everything a management request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// No valid bearer token (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller lacks the role (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed: body, query, header (400).
    #[error("{0}")]
    BadRequest(String),
    /// The named entity does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The path is served, but not for this method (405; the router adds `Allow`).
    #[error("{0}: the method is not allowed on this path (see Allow)")]
    MethodNotAllowed(String),
    /// The entity exists already, or another one holds the same subject and resource (409).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` does not match the stored entity (412).
    #[error("{0} changed since it was read (If-Match does not match)")]
    PreconditionFailed(String),
    /// The request body is larger than the API reads (413).
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    /// A field is invalid (422).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `subject` or `claims.iss`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A dependency (store, Vault) is down (503, Retry-After).
    #[error("{0} is temporarily unavailable")]
    Unavailable(Dependency),
    /// A bug or an impossible state (500; details logged only).
    #[error("internal error")]
    Internal(String),
}

/// What a 503 waits for. Its `Retry-After` is that dependency's setting
/// (`store.retry_after_secs` for the store, `server.retry_after_secs` otherwise), set by
/// the router's [`retry_after`] layer from the response extension this leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// The mapping, audit and key-maintenance store.
    Store,
    /// The revocation store (not configured, or down).
    RevocationStore,
    /// Vault (or OpenBao).
    Vault,
    /// The transit key's state has not been read from Vault yet.
    TransitKey,
    /// The Kubernetes API server (TokenReview of a management token, SubjectAccessReview).
    KubernetesApi,
    /// No keys of the management token's issuer are loaded yet.
    IssuerKeys,
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dependency::Store => "the mapping store",
            Dependency::RevocationStore => "the revocation store",
            Dependency::Vault => "Vault",
            Dependency::TransitKey => "the transit key",
            Dependency::KubernetesApi => "the Kubernetes API server",
            Dependency::IssuerKeys => "issuer keys",
        })
    }
}

/// The `Retry-After` seconds of each kind of outage.
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter {
    /// `store.retry_after_secs`: the mapping and revocation stores.
    pub store_secs: u64,
    /// `server.retry_after_secs`: Vault and every other dependency.
    pub other_secs: u64,
}

/// Sent when no [`retry_after`] layer set the configured value.
const FALLBACK_RETRY_AFTER_SECS: u64 = 2;

/// Sets the configured `Retry-After` on a 503 from [`MgmtError::Unavailable`].
pub async fn retry_after(
    axum::extract::State(retry): axum::extract::State<RetryAfter>,
    mut resp: Response,
) -> Response {
    if let Some(dep) = resp.extensions().get::<Dependency>().copied() {
        let secs = match dep {
            Dependency::Store | Dependency::RevocationStore => retry.store_secs,
            _ => retry.other_secs,
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub error: &'static str,
    /// Human-readable text (never internal details or tokens).
    pub message: String,
    /// The offending field (`invalid` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every error code with its HTTP status (the OpenAPI document lists them).
pub const ERROR_CODES: &[(&str, u16)] = &[
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("bad_request", 400),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("conflict", 409),
    ("precondition_failed", 412),
    ("too_large", 413),
    ("invalid", 422),
    ("unavailable", 503),
    ("internal", 500),
];

impl MgmtError {
    /// The code and status.
    pub fn code(&self) -> (&'static str, u16) {
        let code = match self {
            MgmtError::Unauthenticated(_) => "unauthenticated",
            MgmtError::Forbidden(_) => "forbidden",
            MgmtError::BadRequest(_) => "bad_request",
            MgmtError::NotFound(_) => "not_found",
            MgmtError::MethodNotAllowed(_) => "method_not_allowed",
            MgmtError::Conflict(_) => "conflict",
            MgmtError::PreconditionFailed(_) => "precondition_failed",
            MgmtError::TooLarge(_) => "too_large",
            MgmtError::Invalid { .. } => "invalid",
            MgmtError::Unavailable(_) => "unavailable",
            MgmtError::Internal(_) => "internal",
        };
        let status = ERROR_CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, s)| *s)
            .unwrap_or(500);
        (code, status)
    }

    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> MgmtError {
        MgmtError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for MgmtError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => {
                tracing::warn!(error = %d, "management: store unavailable");
                MgmtError::Unavailable(Dependency::Store)
            }
            StoreError::Invalid { field, reason } => MgmtError::Invalid { field, reason },
            StoreError::Conflict(m) => MgmtError::Conflict(m),
            StoreError::NotFound(t) => MgmtError::NotFound(t),
            StoreError::PreconditionFailed(t) => MgmtError::PreconditionFailed(t),
            e @ (StoreError::Corrupt(_) | StoreError::Config(_) | StoreError::Migration(_)) => {
                MgmtError::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for MgmtError {
    fn into_response(self) -> Response {
        let (error, status) = self.code();
        match &self {
            MgmtError::Internal(d) => tracing::error!(error = %d, "management: internal error"),
            other => tracing::info!(code = error, reason = %other, "management request refused"),
        }
        let body = ErrorBody {
            error,
            message: match &self {
                MgmtError::Invalid { reason, .. } => reason.clone(),
                other => other.to_string(),
            },
            field: match &self {
                MgmtError::Invalid { field, .. } => Some(field.clone()),
                _ => None,
            },
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            MgmtError::Unauthenticated(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            MgmtError::Unavailable(dep) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(FALLBACK_RETRY_AFTER_SECS),
                );
                resp.extensions_mut().insert(dep);
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn retry_after_of(dep: Dependency) -> String {
        let app = axum::Router::new()
            .route(
                "/",
                get(move || async move { MgmtError::Unavailable(dep).into_response() }),
            )
            .layer(axum::middleware::map_response_with_state(
                RetryAfter {
                    store_secs: 7,
                    other_secs: 3,
                },
                retry_after,
            ));
        let req = axum::http::Request::new(axum::body::Body::empty());
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn an_outage_asks_for_the_retry_after_configured_for_what_is_down() {
        for dep in [Dependency::Store, Dependency::RevocationStore] {
            assert_eq!(retry_after_of(dep).await, "7", "{dep}");
        }
        for dep in [
            Dependency::Vault,
            Dependency::TransitKey,
            Dependency::KubernetesApi,
            Dependency::IssuerKeys,
        ] {
            assert_eq!(retry_after_of(dep).await, "3", "{dep}");
        }
    }
}

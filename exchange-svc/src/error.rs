//! The one error type of the HTTP API and its RFC 6749 §5.2 rendering. The public
//! description is safe to show; internal details are logged here, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshpass_core::oauth::{ErrorCode, ErrorResponse};
use meshpass_core::ValidationError;

use crate::signer::SignError;
use crate::store::StoreError;
use crate::tokenreview::ReviewError;

/// Longest configured `Retry-After` (`server.retry_after_secs`, `store.retry_after_secs`):
/// an hour, as the filter caps what it passes on; 0 is refused too, since it tells every
/// client to retry at once, a hot loop against a dependency that is down.
pub const MAX_RETRY_AFTER_SECS: u64 = 3_600;

/// Everything a request to the service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The form was refused by the RFC 8693 parser (code and safe description from core).
    #[error("{}", .0.error_description.as_deref().unwrap_or("invalid request"))]
    Protocol(ErrorResponse),
    /// The request is malformed (content type, size, unsupported combination).
    #[error("{0}")]
    InvalidRequest(String),
    /// A method the token endpoint does not take (405 with `Allow: POST`).
    #[error("the token endpoint takes POST (RFC 6749 §3.2)")]
    MethodNotAllowed,
    /// The subject or actor token failed validation.
    #[error("{which} is invalid: {source}")]
    InvalidGrant {
        /// `subject_token` or `actor_token`.
        which: &'static str,
        /// What failed (core's messages never contain the token).
        source: ValidationError,
    },
    /// The subject or actor token is valid but TokenReview refused it, or could not ask.
    #[error("{which} was refused by the Kubernetes API server: {source}")]
    Review {
        /// `subject_token` or `actor_token`.
        which: &'static str,
        /// The review's verdict.
        source: ReviewError,
        /// `Retry-After` when the API server could not be asked.
        retry_after_secs: u64,
    },
    /// The subject or actor token expires before anything could be minted.
    #[error("{which} expires too soon")]
    ExpiresTooSoon {
        /// `subject_token` or `actor_token`: the one whose `exp` capped the token.
        which: &'static str,
    },
    /// The resource or audience is unknown or not allowed.
    #[error("{0}")]
    InvalidTarget(String),
    /// A requested scope is not allowed.
    #[error("{0}")]
    InvalidScope(String),
    /// Policy does not allow this subject the requested resource.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// The caller of `/token` could not be identified (no client certificate, no
    /// trusted `x-forwarded-client-cert`).
    #[error("the caller of /token could not be identified: connect with mTLS (a client certificate with a SPIFFE ID) or through the service's own proxy")]
    CallerUnknown,
    /// The connection's caller identity is unusable (e.g. XFCC from an untrusted peer).
    #[error("{0}")]
    Caller(crate::caller::CallerError),
    /// The caller is neither the subject nor one of the mapping's `allowed_callers`.
    #[error("{0}")]
    CallerRefused(String),
    /// The subject or the caller is revoked (the reason is the operator's, public).
    #[error("revoked: {0}")]
    Revoked(String),
    /// The subject's rate limit is exhausted.
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds until a request will be accepted.
        retry_after_secs: u64,
    },
    /// The mapping store failed.
    #[error("mapping store unavailable")]
    Store {
        /// The store error (logged only).
        source: StoreError,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// Signing failed.
    #[error("signing unavailable")]
    Sign {
        /// The signer error (logged only).
        source: SignError,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// Issuer keys or another dependency are not available yet.
    #[error("{what} unavailable")]
    Unavailable {
        /// What is missing (safe to show, e.g. "issuer keys").
        what: &'static str,
        /// Internal detail (logged only).
        detail: String,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// The exchange took longer than the configured request timeout.
    #[error("the exchange timed out")]
    Timeout {
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// Refused before the request body was (fully) read: the answer says
    /// `Connection: close`, so a keep-alive client does not send its next request on a
    /// connection the server is about to close.
    #[error("{0}")]
    BodyUnread(Box<ApiError>),
    /// An internal failure (bug or impossible state).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The RFC 6749 code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BodyUnread(inner) => inner.code(),
            ApiError::Protocol(e) => e.error,
            ApiError::InvalidRequest(_) | ApiError::MethodNotAllowed => ErrorCode::InvalidRequest,
            ApiError::InvalidGrant { .. }
            | ApiError::Review {
                source: ReviewError::NotAuthenticated,
                ..
            }
            | ApiError::Review {
                source: ReviewError::UserMismatch,
                ..
            }
            | ApiError::Review {
                source: ReviewError::AudienceMismatch,
                ..
            }
            | ApiError::ExpiresTooSoon { .. } => ErrorCode::InvalidGrant,
            ApiError::Review {
                source: ReviewError::Unavailable(_),
                ..
            } => ErrorCode::TemporarilyUnavailable,
            ApiError::InvalidTarget(_) => ErrorCode::InvalidTarget,
            ApiError::InvalidScope(_) => ErrorCode::InvalidScope,
            ApiError::UnauthorizedClient(_)
            | ApiError::CallerUnknown
            | ApiError::Caller(_)
            | ApiError::CallerRefused(_)
            | ApiError::Revoked(_) => ErrorCode::UnauthorizedClient,
            ApiError::RateLimited { .. } => ErrorCode::SlowDown,
            ApiError::Store { .. } | ApiError::Unavailable { .. } | ApiError::Timeout { .. } => {
                ErrorCode::TemporarilyUnavailable
            }
            ApiError::Sign { source, .. } => match source {
                SignError::Unavailable(_) | SignError::NotReady => {
                    ErrorCode::TemporarilyUnavailable
                }
                SignError::Failed(_) => ErrorCode::ServerError,
            },
            ApiError::Internal(_) => ErrorCode::ServerError,
        }
    }

    /// The description returned to the client (no internal detail).
    fn public_description(&self) -> String {
        match self {
            ApiError::BodyUnread(inner) => inner.public_description(),
            ApiError::Store { .. } => "the mapping store is temporarily unavailable".into(),
            ApiError::Sign { source, .. } => match source {
                SignError::Failed(_) => "signing failed".into(),
                _ => "signing is temporarily unavailable".into(),
            },
            ApiError::Review {
                source: ReviewError::Unavailable(_),
                ..
            } => "the Kubernetes API server is temporarily unavailable".into(),
            ApiError::Unavailable { what, .. } => format!("{what} temporarily unavailable"),
            ApiError::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::BodyUnread(inner) => inner.retry_after(),
            ApiError::RateLimited { retry_after_secs }
            | ApiError::Timeout { retry_after_secs }
            | ApiError::Store {
                retry_after_secs, ..
            }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Sign {
                retry_after_secs, ..
            } if self.code() == ErrorCode::TemporarilyUnavailable => Some(*retry_after_secs),
            ApiError::Review {
                source: ReviewError::Unavailable(_),
                retry_after_secs,
                ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    fn log(&self) {
        match self {
            ApiError::Store { source, .. } => {
                tracing::warn!(error = %source, "mapping store failed")
            }
            ApiError::Sign { source, .. } => tracing::warn!(error = %source, "signing failed"),
            ApiError::Review {
                source: ReviewError::Unavailable(d),
                ..
            } => {
                tracing::warn!(error = %d, "TokenReview failed")
            }
            ApiError::Unavailable { what, detail, .. } => {
                tracing::warn!(what, error = %detail, "dependency unavailable")
            }
            ApiError::Internal(d) => tracing::error!(error = %d, "internal error"),
            ApiError::Timeout { .. } => tracing::warn!("exchange timed out"),
            other => tracing::info!(error = ?other.code(), reason = %other, "exchange refused"),
        }
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1) on token answers.
pub fn no_store(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::BodyUnread(inner) = self {
            let mut resp = inner.into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        self.log();
        let code = self.code();
        let status = match self {
            // Refused because of who calls, not what was sent: 403, so the filter (and
            // an operator) can tell it from a malformed request.
            ApiError::CallerUnknown
            | ApiError::Caller(_)
            | ApiError::CallerRefused(_)
            | ApiError::Revoked(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let body = ErrorResponse::new(code, self.public_description());
        let allow = matches!(self, ApiError::MethodNotAllowed);
        let mut resp = (status, axum::Json(body)).into_response();
        no_store(&mut resp);
        if allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

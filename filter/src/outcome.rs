//! What an exchange ends with, and how the service's answer maps to it. Pure: no host.

use meshpass_core::oauth::{ErrorCode, ErrorResponse, TokenExchangeResponse};

use crate::api::CallResponse;

/// The outcome of an exchange, for every request waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A participant token.
    Token(String),
    /// 401: the service rejected the subject token.
    InvalidGrant(String),
    /// 403: policy refused (unauthorized_client / invalid_target / invalid_scope).
    Forbidden(String),
    /// 429 with Retry-After seconds.
    RateLimited(u64),
    /// An outage (timeout, dispatch or connection failure, 5xx): 503 with Retry-After
    /// seconds, or fail open under `failure_mode: allow`.
    Unavailable(u64),
    /// The service answered, but not usably (a 4xx that is no policy refusal, an
    /// unparsable 200): 503 with Retry-After seconds, never fail open.
    Faulty(u64),
}

impl Outcome {
    /// Whether `failure_mode: allow` may let the request through without a token.
    pub fn is_outage(&self) -> bool {
        matches!(self, Outcome::Unavailable(_))
    }
}

/// Maps an exchange answer to what the waiting requests get (`retry_default`: the
/// configured `Retry-After` when the service sent none).
pub fn classify(resp: &CallResponse, retry_default: u64) -> Outcome {
    let ra_default = retry_default;
    let retry_after = resp
        .retry_after
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v.clamp(1, 3600))
        .unwrap_or(ra_default);
    match resp.status {
        // Past the largest answer read: never parsed, never cached.
        Some(200) if resp.body.len() > crate::exchange::MAX_EXCHANGE_BODY => {
            Outcome::Faulty(ra_default)
        }
        Some(200) => match serde_json::from_slice::<TokenExchangeResponse>(&resp.body) {
            // Only a live JWT is a participant token: another type (a refresh token, an
            // assertion) or one already expired is an unusable answer.
            Ok(r)
                if r.token_type.eq_ignore_ascii_case("bearer")
                    && r.issued_token_type == meshpass_core::oauth::TOKEN_TYPE_JWT
                    && r.expires_in > 0
                    && !r.access_token.is_empty()
                    && r.access_token.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Outcome::Token(r.access_token)
            }
            _ => Outcome::Faulty(ra_default),
        },
        Some(429) => Outcome::RateLimited(retry_after),
        Some(s) if (400..500).contains(&s) => {
            match serde_json::from_slice::<ErrorResponse>(&resp.body) {
                Ok(e) => {
                    let d = e
                        .error_description
                        .filter(|d| d.len() < 512)
                        .unwrap_or_else(|| "token exchange refused".into());
                    match e.error {
                        ErrorCode::UnauthorizedClient
                        | ErrorCode::InvalidTarget
                        | ErrorCode::InvalidScope => Outcome::Forbidden(d),
                        ErrorCode::InvalidGrant => Outcome::InvalidGrant(d),
                        ErrorCode::SlowDown => Outcome::RateLimited(retry_after),
                        _ => Outcome::Faulty(ra_default),
                    }
                }
                Err(_) => Outcome::Faulty(ra_default),
            }
        }
        Some(503) => Outcome::Unavailable(retry_after),
        Some(s) if s >= 500 => Outcome::Unavailable(ra_default),
        None => Outcome::Unavailable(ra_default),
        // 1xx/2xx/3xx other than 200: not an answer this protocol has.
        Some(_) => Outcome::Faulty(ra_default),
    }
}

//! RFC 8693 token-exchange and RFC 6749 §5.2 error wire types, shared by the filter
//! (client side) and the exchange service (server side).

use serde::{Deserialize, Serialize};

/// `grant_type` for token exchange.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type: JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Token type: OpenID Connect ID token (accepted when it is a JWT).
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Token type: OAuth access token (accepted when it is a JWT).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Maximum size of a token-exchange form body the parser accepts.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// An RFC 8693 §2.1 token-exchange request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenExchangeRequest {
    /// `subject_token` (required).
    pub subject_token: String,
    /// `subject_token_type` (required; one of the JWT-valued token types).
    pub subject_token_type: String,
    /// `resource` values (may repeat).
    pub resource: Vec<String>,
    /// `audience` values (may repeat).
    pub audience: Vec<String>,
    /// `scope`, split on spaces (empty when absent).
    pub scope: Vec<String>,
    /// `requested_token_type`, when given.
    pub requested_token_type: Option<String>,
    /// `actor_token`, when given.
    pub actor_token: Option<String>,
    /// `actor_token_type` (required when `actor_token` is given).
    pub actor_token_type: Option<String>,
}

impl TokenExchangeRequest {
    /// Parses an `application/x-www-form-urlencoded` body. `grant_type` must be the
    /// token-exchange URN (else `unsupported_grant_type`); any field other than `resource`
    /// and `audience` given twice, a missing required field, an unknown token type or an
    /// oversize body are `invalid_request` with a precise description.
    pub fn parse_form(body: &[u8]) -> Result<Self, ErrorResponse> {
        todo!("{body:?}")
    }

    /// Encodes the request as a form body (with `grant_type`), as the filter sends it.
    pub fn to_form(&self) -> String {
        todo!()
    }
}

/// A successful token-exchange response (RFC 8693 §2.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExchangeResponse {
    /// The participant token.
    pub access_token: String,
    /// Always [`TOKEN_TYPE_JWT`] here.
    pub issued_token_type: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// RFC 6749 §5.2 / RFC 8693 §2.2.2 error codes, plus `temporarily_unavailable` (503)
/// and `slow_down` (429, rate limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request (400).
    InvalidRequest,
    /// Client authentication failed (401).
    InvalidClient,
    /// The subject or actor token is invalid (400).
    InvalidGrant,
    /// Policy does not allow this subject the requested context (400, filter → 403).
    UnauthorizedClient,
    /// `grant_type` is not token exchange (400).
    UnsupportedGrantType,
    /// A requested scope is not allowed (400, filter → 403).
    InvalidScope,
    /// Unknown or disallowed resource/audience (400, filter → 403).
    InvalidTarget,
    /// Rate limited (429 + Retry-After).
    SlowDown,
    /// Vault or storage unavailable (503 + Retry-After).
    TemporarilyUnavailable,
    /// Unexpected internal error (500); details are only logged.
    ServerError,
}

impl ErrorCode {
    /// The HTTP status the service answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient => 401,
            ErrorCode::SlowDown => 429,
            ErrorCode::TemporarilyUnavailable => 503,
            ErrorCode::ServerError => 500,
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidGrant
            | ErrorCode::UnauthorizedClient
            | ErrorCode::UnsupportedGrantType
            | ErrorCode::InvalidScope
            | ErrorCode::InvalidTarget => 400,
        }
    }
}

/// An RFC 6749 §5.2 error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The code.
    pub error: ErrorCode,
    /// Human-readable, safe to show: never contains a token or internal detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

impl ErrorResponse {
    /// Builds an error with a description.
    pub fn new(error: ErrorCode, description: impl Into<String>) -> Self {
        ErrorResponse {
            error,
            error_description: Some(description.into()),
        }
    }
}

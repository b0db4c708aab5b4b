//! RFC 8693 token-exchange and RFC 6749 §5.2 error wire types, shared by the filter
//! (client side) and the exchange service (server side).

use serde::{Deserialize, Serialize};
use std::fmt;

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

/// An RFC 8693 §2.1 token-exchange request (`Debug` shows the tokens' lengths only).
#[derive(Clone, Default, PartialEq, Eq)]
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

/// A token's length in place of the token.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

impl fmt::Debug for TokenExchangeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchangeRequest")
            .field("subject_token", &Redacted(self.subject_token.len()))
            .field("subject_token_type", &self.subject_token_type)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .field(
                "actor_token",
                &self.actor_token.as_ref().map(|t| Redacted(t.len())),
            )
            .field("actor_token_type", &self.actor_token_type)
            .finish()
    }
}

impl TokenExchangeRequest {
    /// Parses an `application/x-www-form-urlencoded` body. `grant_type` must be the
    /// token-exchange URN (else `unsupported_grant_type`); any field other than `resource`
    /// and `audience` given twice, a missing required field, an unknown token type or an
    /// oversize body are `invalid_request` with a precise description.
    pub fn parse_form(body: &[u8]) -> Result<Self, ErrorResponse> {
        if body.len() > MAX_FORM_BYTES {
            return Err(invalid_request(format!(
                "request body is larger than {MAX_FORM_BYTES} bytes"
            )));
        }
        let body =
            std::str::from_utf8(body).map_err(|_| invalid_request("request body is not UTF-8"))?;
        let mut grant_type = None;
        let mut subject_token = None;
        let mut subject_token_type = None;
        let mut scope = None;
        let mut requested_token_type = None;
        let mut actor_token = None;
        let mut actor_token_type = None;
        let mut resource = Vec::new();
        let mut audience = Vec::new();
        for pair in body.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_component(raw_name)?;
            if !KNOWN_PARAMETERS.contains(&name.as_str()) {
                // RFC 6749 §3.2: unrecognized parameters are ignored (not even decoded).
                continue;
            }
            // RFC 6749 §3.2: a parameter sent without a value is treated as omitted.
            let value = decode_component(raw_value)?;
            if value.is_empty() {
                continue;
            }
            let slot = match name.as_str() {
                "grant_type" => &mut grant_type,
                "subject_token" => &mut subject_token,
                "subject_token_type" => &mut subject_token_type,
                "scope" => &mut scope,
                "requested_token_type" => &mut requested_token_type,
                "actor_token" => &mut actor_token,
                "actor_token_type" => &mut actor_token_type,
                "resource" | "audience" => {
                    if name == "resource" {
                        resource.push(value);
                    } else {
                        audience.push(value);
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err(invalid_request(format!("{name} is given more than once")));
            }
            *slot = Some(value);
        }
        match grant_type.as_deref() {
            None => return Err(invalid_request("grant_type is missing")),
            Some(GRANT_TYPE_TOKEN_EXCHANGE) => {}
            Some(_) => {
                return Err(ErrorResponse::new(
                    ErrorCode::UnsupportedGrantType,
                    format!("grant_type must be {GRANT_TYPE_TOKEN_EXCHANGE}"),
                ))
            }
        }
        let subject_token =
            subject_token.ok_or_else(|| invalid_request("subject_token is missing"))?;
        let subject_token_type =
            subject_token_type.ok_or_else(|| invalid_request("subject_token_type is missing"))?;
        check_token_type("subject_token_type", &subject_token_type)?;
        match (&actor_token, &actor_token_type) {
            (Some(_), None) => {
                return Err(invalid_request(
                    "actor_token_type is required when actor_token is given",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid_request(
                    "actor_token_type must not be given without actor_token",
                ))
            }
            (Some(_), Some(t)) => check_token_type("actor_token_type", t)?,
            (None, None) => {}
        }
        if let Some(t) = &requested_token_type {
            check_token_type("requested_token_type", t)?;
        }
        let scope = match scope {
            None => Vec::new(),
            Some(s) => parse_scope(&s)?,
        };
        Ok(TokenExchangeRequest {
            subject_token,
            subject_token_type,
            resource,
            audience,
            scope,
            requested_token_type,
            actor_token,
            actor_token_type,
        })
    }

    /// Encodes the request as a form body (with `grant_type`), as the filter sends it.
    pub fn to_form(&self) -> String {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", GRANT_TYPE_TOKEN_EXCHANGE);
        f.append_pair("subject_token", &self.subject_token);
        f.append_pair("subject_token_type", &self.subject_token_type);
        for r in &self.resource {
            f.append_pair("resource", r);
        }
        for a in &self.audience {
            f.append_pair("audience", a);
        }
        if !self.scope.is_empty() {
            f.append_pair("scope", &self.scope.join(" "));
        }
        if let Some(t) = &self.requested_token_type {
            f.append_pair("requested_token_type", t);
        }
        if let Some(t) = &self.actor_token {
            f.append_pair("actor_token", t);
        }
        if let Some(t) = &self.actor_token_type {
            f.append_pair("actor_token_type", t);
        }
        f.finish()
    }

    /// The scopes as the space-separated `scope` string, `None` when there are none.
    pub fn scope_string(&self) -> Option<String> {
        (!self.scope.is_empty()).then(|| self.scope.join(" "))
    }
}

/// The parameters of RFC 8693 §2.1 this parser reads; any other is ignored.
const KNOWN_PARAMETERS: [&str; 9] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "resource",
    "audience",
    "scope",
    "requested_token_type",
    "actor_token",
    "actor_token_type",
];

/// The JWT-valued token types accepted for `subject_token_type`, `actor_token_type`
/// and `requested_token_type`.
const ACCEPTED_TOKEN_TYPES: [&str; 3] =
    [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN];

fn invalid_request(description: impl Into<String>) -> ErrorResponse {
    ErrorResponse::new(ErrorCode::InvalidRequest, description)
}

fn check_token_type(field: &str, value: &str) -> Result<(), ErrorResponse> {
    if ACCEPTED_TOKEN_TYPES.contains(&value) {
        Ok(())
    } else {
        // The value is not echoed: it is client-controlled and may be anything.
        Err(invalid_request(format!(
            "{field} is not a supported token type (jwt, id_token or access_token URN)"
        )))
    }
}

/// RFC 6749 §3.3 `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`: the one scope-token
/// rule (the filter's configured scopes use it too).
pub fn is_scope_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// RFC 6749 §3.3: `scope = scope-token *( SP scope-token )`, with
/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
/// A malformed scope is `invalid_scope` (RFC 6749 §5.2: "invalid, unknown, malformed").
fn parse_scope(s: &str) -> Result<Vec<String>, ErrorResponse> {
    let invalid_scope = |d: &str| ErrorResponse::new(ErrorCode::InvalidScope, d);
    let mut out = Vec::new();
    for token in s.split(' ') {
        if token.is_empty() {
            return Err(invalid_scope(
                "scope has an empty scope token (scopes are separated by single spaces)",
            ));
        }
        if !is_scope_token(token) {
            return Err(invalid_scope(
                "scope has a character RFC 6749 §3.3 does not allow",
            ));
        }
        out.push(token.to_owned());
    }
    Ok(out)
}

/// Strict `application/x-www-form-urlencoded` decoding of one name or value: `+` is a
/// space, `%XX` needs two hex digits, and the decoded bytes must be UTF-8.
/// (`form_urlencoded::parse` would silently replace bad bytes and keep bad escapes.)
fn decode_component(raw: &str) -> Result<String, ErrorResponse> {
    let bytes = raw.as_bytes();
    // Nothing to decode (a JWT never needs escaping): one scan and one copy instead of
    // a push per byte.
    if !bytes.iter().any(|&b| b == b'+' || b == b'%') {
        return Ok(raw.to_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(invalid_request(
                        "request body has a malformed percent escape",
                    ));
                };
                // Two hex digits always fit a byte.
                out.push(((hi << 4) | lo) as u8);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| invalid_request("request body has a percent-encoded value that is not UTF-8"))
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
    /// Builds an error with a description (made fit for the wire by
    /// [`error_description`]).
    pub fn new(error: ErrorCode, description: impl Into<String>) -> Self {
        ErrorResponse {
            error,
            error_description: Some(error_description(&description.into())),
        }
    }
}

/// `text` in the characters RFC 6749 §5.2 (and RFC 6750 §3) allow in an
/// `error_description`: %x20-21 / %x23-5B / %x5D-7E. Quotes become `'`, a backslash
/// `/`, `§` "section ", `…` "...", any other character `?`.
pub fn error_description(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => out.push(c),
            '"' => out.push('\''),
            '\\' => out.push('/'),
            '§' => out.push_str("section "),
            '…' => out.push_str("..."),
            _ => out.push('?'),
        }
    }
    out
}

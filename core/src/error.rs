//! The one error type of subject-token validation.

use crate::spiffe::SpiffeIdError;

/// Everything that can make a subject token unacceptable. Each variant says exactly
/// what failed; [`ValidationError::reason`] gives a stable short code for metrics and
/// logs. Messages never contain the token or any secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The token is longer than the configured maximum.
    #[error("token is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Actual length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The token is a JWE (five segments); only JWS is accepted.
    #[error("token is a JWE (five segments); only compact JWS is accepted")]
    JweNotSupported,
    /// The token uses the JWS JSON serialization; only the compact form is accepted.
    #[error("JWS JSON serialization is not accepted; use the compact form")]
    JsonSerializationNotSupported,
    /// The token is not three dot-separated segments, or a segment is empty.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A segment is not strict unpadded base64url.
    #[error("{segment} is not valid base64url")]
    Base64 {
        /// `header`, `payload` or `signature`.
        segment: &'static str,
    },
    /// The header or payload is not a valid JSON object (or repeats a member name).
    #[error("{segment} is not a valid JSON object: {reason}")]
    Json {
        /// `header` or `payload`.
        segment: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The header `alg` is missing, not allowed (`none`, `HS*`, `EdDSA`) or unknown.
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    /// The header carries a member that is never accepted (`jwk`, `jku`, `x5u`, `x5c`,
    /// `b64` other than `true`).
    #[error("header member {0:?} is not accepted")]
    ForbiddenHeader(&'static str),
    /// The header has a `crit` member; no extension is understood.
    #[error("header has a crit member; no critical extension is supported")]
    CriticalHeader,
    /// The header `typ` is present and neither `JWT` nor `JOSE`.
    #[error("header typ must be JWT or JOSE")]
    BadType,
    /// The header `kid` is not a string of sane length and characters.
    #[error("header kid is not a valid key id")]
    BadKeyId,
    /// No key set is known for the token's issuer.
    #[error("no keys are available for the issuer")]
    NoKeys {
        /// The issuer whose keys are missing (its configured name).
        issuer: String,
    },
    /// No key with the token's `kid` is known for its issuer (callers may refetch once).
    #[error("no key with the token's kid for issuer {issuer:?}")]
    UnknownKeyId {
        /// The token's (configured) issuer.
        issuer: String,
        /// The unknown key id (sanitised: it passed the kid checks).
        kid: String,
    },
    /// The token has no `kid` and not exactly one key fits its algorithm.
    #[error("token has no kid and no single key fits its algorithm")]
    AmbiguousKey,
    /// The selected key does not fit the header `alg` (kty/crv/alg/use/key_ops).
    #[error("the key does not fit algorithm {0}")]
    KeyAlgorithmMismatch(&'static str),
    /// The signature does not verify (including wrong length or r/s out of range).
    #[error("signature verification failed")]
    BadSignature,
    /// A required claim is missing.
    #[error("claim {0:?} is missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an unacceptable value.
    #[error("claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// The claim name.
        claim: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// `iss` names no configured issuer.
    #[error("issuer is not configured")]
    UnknownIssuer,
    /// `aud` contains none of the issuer's audiences.
    #[error("audience does not match")]
    AudienceMismatch,
    /// `exp` (plus leeway) is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` (minus leeway) is in the future.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `exp - iat` exceeds the issuer's `max_lifetime`.
    #[error("token lifetime exceeds the allowed maximum")]
    LifetimeTooLong,
    /// The subject is not a valid SPIFFE ID (or Kubernetes service-account name).
    #[error("subject is not a valid SPIFFE ID: {0}")]
    InvalidSubject(SpiffeIdError),
    /// The subject's trust domain is not allowed for this issuer.
    #[error("subject trust domain is not allowed")]
    TrustDomainNotAllowed,
    /// The subject matches none of the issuer's allowed SPIFFE ID patterns.
    #[error("subject is not allowed by the issuer's ID patterns")]
    SubjectNotAllowed,
    /// The subject differs from the identity the connection/proxy is bound to.
    #[error("token subject does not match the {0} identity")]
    BindingMismatch(&'static str),
    /// Binding is on but the identity to bind to is unknown (no mTLS peer, no own ID).
    #[error("binding is required but the {0} identity is unavailable")]
    BindingUnavailable(&'static str),
}

impl ValidationError {
    /// A stable snake_case code for metrics labels and logs, e.g. `"expired"`.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::TooLarge { .. } => "too_large",
            ValidationError::JweNotSupported => "jwe_not_supported",
            ValidationError::JsonSerializationNotSupported => "json_serialization_not_supported",
            ValidationError::Malformed(_) => "malformed",
            ValidationError::Base64 { .. } => "base64",
            ValidationError::Json { .. } => "json",
            ValidationError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            ValidationError::ForbiddenHeader(_) => "forbidden_header",
            ValidationError::CriticalHeader => "critical_header",
            ValidationError::BadType => "bad_type",
            ValidationError::BadKeyId => "bad_key_id",
            ValidationError::NoKeys { .. } => "no_keys",
            ValidationError::UnknownKeyId { .. } => "unknown_key_id",
            ValidationError::AmbiguousKey => "ambiguous_key",
            ValidationError::KeyAlgorithmMismatch(_) => "key_algorithm_mismatch",
            ValidationError::BadSignature => "bad_signature",
            ValidationError::MissingClaim(_) => "missing_claim",
            ValidationError::InvalidClaim { .. } => "invalid_claim",
            ValidationError::UnknownIssuer => "unknown_issuer",
            ValidationError::AudienceMismatch => "audience_mismatch",
            ValidationError::Expired => "expired",
            ValidationError::NotYetValid => "not_yet_valid",
            ValidationError::IssuedInFuture => "issued_in_future",
            ValidationError::LifetimeTooLong => "lifetime_too_long",
            ValidationError::InvalidSubject(_) => "invalid_subject",
            ValidationError::TrustDomainNotAllowed => "trust_domain_not_allowed",
            ValidationError::SubjectNotAllowed => "subject_not_allowed",
            ValidationError::BindingMismatch(_) => "binding_mismatch",
            ValidationError::BindingUnavailable(_) => "binding_unavailable",
        }
    }

    /// Whether refetching the issuer's JWKS (once, rate limited) might make the token
    /// acceptable: no keys yet, or an unknown `kid` (a key rotation the cache missed).
    pub fn suggests_key_refetch(&self) -> bool {
        matches!(
            self,
            ValidationError::NoKeys { .. } | ValidationError::UnknownKeyId { .. }
        )
    }
}

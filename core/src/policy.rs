//! The validation policy and its single entry point.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::alg::Algorithm;
use crate::audience::Audience;
use crate::error::ValidationError;
use crate::jwk::KeySet;
use crate::spiffe::{SpiffeId, SpiffeIdPattern, TrustDomain};

/// Where the subject SPIFFE ID comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubjectFormat {
    /// JWT-SVID: `sub` is the SPIFFE ID.
    #[default]
    JwtSvid,
    /// Kubernetes service-account token: `sub` is `system:serviceaccount:NS:SA`,
    /// mapped into the issuer's first trust domain.
    KubernetesServiceAccount,
}

/// What one configured issuer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// Exact `iss` value.
    pub issuer: String,
    /// `aud` must contain one of these (non-empty list).
    pub audiences: Vec<Audience>,
    /// Allowed trust domains (non-empty list).
    pub trust_domains: Vec<TrustDomain>,
    /// Allowed SPIFFE ID patterns; empty means any ID in the allowed trust domains.
    pub id_patterns: Vec<SpiffeIdPattern>,
    /// How to read the subject.
    pub subject_format: SubjectFormat,
    /// Clock-skew leeway in seconds (default 30).
    pub leeway_secs: u64,
    /// Maximum `exp - iat` in seconds, when set.
    pub max_lifetime_secs: Option<u64>,
}

/// The whole policy: the issuers and the size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationPolicy {
    /// Configured issuers (distinct `issuer` values).
    pub issuers: Vec<IssuerPolicy>,
    /// Maximum token size in bytes (default 8 KiB).
    pub max_token_bytes: usize,
}

/// Gives the current key set of an issuer (the filter reads shared data, the service
/// its refreshed cache).
pub trait KeyLookup {
    /// The keys of `issuer`, if any are known.
    fn keys_for(&self, issuer: &str) -> Option<&KeySet>;
}

impl KeyLookup for HashMap<String, KeySet> {
    fn keys_for(&self, issuer: &str) -> Option<&KeySet> {
        self.get(issuer)
    }
}

/// Binding mode from configuration (DESIGN.md "Binding").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingMode {
    /// Subject must equal the mTLS peer's URI SAN.
    Server,
    /// Subject must equal the proxy's own workload identity.
    Client,
    /// No binding (never the default).
    None,
}

/// The identity to bind to for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// SERVER mode with the peer certificate's URI SAN, if the connection has one.
    Server(Option<&'a SpiffeId>),
    /// CLIENT mode with the proxy's own identity, if known.
    Client(Option<&'a SpiffeId>),
    /// No binding.
    None,
}

impl Binding<'_> {
    /// Checks `subject` against the bound identity; fails closed when it is unknown.
    pub fn check(&self, subject: &SpiffeId) -> Result<(), ValidationError> {
        todo!("{subject}")
    }
}

/// A subject token that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSubject {
    /// The subject SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The issuer (`iss`).
    pub issuer: String,
    /// The token's `aud` values.
    pub audiences: Vec<String>,
    /// `exp`.
    pub expires_at: u64,
    /// `iat`, when present.
    pub issued_at: Option<u64>,
    /// The header algorithm.
    pub alg: Algorithm,
    /// The header `kid`, when present.
    pub kid: Option<String>,
    /// The whole payload (for `act` and other claims the service copies).
    pub claims: Map<String, Value>,
}

impl ValidationPolicy {
    /// Validates a subject token at time `now` (seconds since the epoch): parse, pick the
    /// issuer by `iss`, pick the key, verify, check claims and time, derive and check the
    /// SPIFFE ID, then the binding.
    pub fn validate(
        &self,
        token: &str,
        now: u64,
        keys: &dyn KeyLookup,
        binding: &Binding<'_>,
    ) -> Result<VerifiedSubject, ValidationError> {
        todo!("{token} {now} {:p} {binding:?}", keys)
    }
}

//! The validation policy and its single entry point.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alg::Algorithm;
use crate::audience::Audience;
use crate::claims::{RegisteredClaims, TimeRules};
use crate::error::ValidationError;
use crate::jwk::KeySet;
use crate::jws::CompactJws;
use crate::spiffe::{SpiffeId, SpiffeIdError, SpiffeIdPattern, TrustDomain};

/// Where the subject SPIFFE ID comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectFormat {
    /// JWT-SVID: `sub` is the SPIFFE ID.
    #[default]
    JwtSvid,
    /// Kubernetes service-account token: `sub` is `system:serviceaccount:NS:SA`,
    /// mapped into the issuer's first trust domain.
    KubernetesServiceAccount,
}

/// What one configured issuer accepts. Deserializes from configuration with the
/// documented defaults; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicy {
    /// Exact `iss` value.
    pub issuer: String,
    /// `aud` must contain one of these (non-empty list).
    pub audiences: Vec<Audience>,
    /// Allowed trust domains (non-empty list).
    pub trust_domains: Vec<TrustDomain>,
    /// Allowed SPIFFE ID patterns; empty means any ID in the allowed trust domains.
    #[serde(default)]
    pub id_patterns: Vec<SpiffeIdPattern>,
    /// How to read the subject.
    #[serde(default)]
    pub subject_format: SubjectFormat,
    /// Clock-skew leeway in seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Maximum `exp - iat` in seconds, when set.
    #[serde(default)]
    pub max_lifetime_secs: Option<u64>,
}

fn default_leeway() -> u64 {
    crate::DEFAULT_LEEWAY_SECS
}

fn default_max_token_bytes() -> usize {
    crate::DEFAULT_MAX_TOKEN_BYTES
}

/// The whole policy: the issuers and the size cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationPolicy {
    /// Configured issuers (distinct `issuer` values).
    pub issuers: Vec<IssuerPolicy>,
    /// Maximum token size in bytes (default 8 KiB).
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

/// A configuration mistake found by [`ValidationPolicy::check`]; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `issuers` is empty.
    #[error("issuers: at least one issuer must be configured")]
    NoIssuers,
    /// An `issuer` value is empty.
    #[error("issuers[{0}].issuer: must not be empty")]
    EmptyIssuer(usize),
    /// Two issuers have the same `issuer` value.
    #[error("issuers[{index}].issuer: {issuer:?} is configured twice")]
    DuplicateIssuer {
        /// Position of the second occurrence.
        index: usize,
        /// The repeated value.
        issuer: String,
    },
    /// An issuer has no audiences.
    #[error("issuers[{0}].audiences: must not be empty")]
    NoAudiences(usize),
    /// An issuer has no trust domains.
    #[error("issuers[{0}].trust_domains: must not be empty")]
    NoTrustDomains(usize),
    /// An ID pattern names a trust domain the issuer does not allow (it could never
    /// match).
    #[error("issuers[{index}].id_patterns: {pattern} is outside the issuer's trust_domains")]
    PatternOutsideTrustDomains {
        /// Position of the issuer.
        index: usize,
        /// The pattern.
        pattern: String,
    },
    /// `max_token_bytes` is zero.
    #[error("max_token_bytes: must be greater than zero")]
    ZeroMaxTokenBytes,
    /// The clock-skew leeway is longer than [`MAX_LEEWAY_SECS`] (it would accept tokens
    /// that long past their `exp`).
    #[error("issuers[{0}].leeway_secs: must be at most 300 (seconds of clock skew)")]
    LeewayTooLong(usize),
    /// The lifetime cap is 0 (no token could meet it) or above [`MAX_LIFETIME_CAP_SECS`].
    #[error("issuers[{0}].max_lifetime_secs: must be between 1 and 31536000 (a year)")]
    LifetimeCapOutOfRange(usize),
}

/// The most clock-skew leeway an issuer may be given.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// The largest lifetime cap an issuer may be given (a year).
pub const MAX_LIFETIME_CAP_SECS: u64 = 365 * 24 * 3600;

impl IssuerPolicy {
    /// An issuer policy with the defaults: no ID patterns (any ID in the trust
    /// domains), JWT-SVID subjects, 30 s leeway, no lifetime cap.
    pub fn new(
        issuer: impl Into<String>,
        audiences: Vec<Audience>,
        trust_domains: Vec<TrustDomain>,
    ) -> Self {
        IssuerPolicy {
            issuer: issuer.into(),
            audiences,
            trust_domains,
            id_patterns: Vec::new(),
            subject_format: SubjectFormat::default(),
            leeway_secs: crate::DEFAULT_LEEWAY_SECS,
            max_lifetime_secs: None,
        }
    }

    /// The time rules of this issuer.
    pub(crate) fn time_rules(&self) -> TimeRules {
        TimeRules {
            leeway_secs: self.leeway_secs,
            max_lifetime_secs: self.max_lifetime_secs,
        }
    }

    /// Claim checks of a payload whose signature was verified: registered claims
    /// strictly typed, `iss` is this issuer, `aud` holds one of its audiences, time
    /// rules at `now`.
    pub fn check_claims(
        &self,
        payload: &Map<String, Value>,
        now: u64,
    ) -> Result<RegisteredClaims, ValidationError> {
        let claims = RegisteredClaims::from_payload(payload)?;
        if claims.iss != self.issuer {
            return Err(ValidationError::UnknownIssuer);
        }
        let aud_ok = claims
            .aud
            .iter()
            .any(|a| self.audiences.iter().any(|want| want.as_str() == a));
        if !aud_ok {
            return Err(ValidationError::AudienceMismatch);
        }
        claims.check_time(now, &self.time_rules())?;
        Ok(claims)
    }

    /// Derives the subject SPIFFE ID (per `subject_format`) and checks it against the
    /// allowed trust domains and ID patterns.
    pub fn subject(&self, claims: &RegisteredClaims) -> Result<SpiffeId, ValidationError> {
        let sub = claims
            .sub
            .as_deref()
            .ok_or(ValidationError::MissingClaim("sub"))?;
        let id = match self.subject_format {
            SubjectFormat::JwtSvid => SpiffeId::parse(sub),
            SubjectFormat::KubernetesServiceAccount => {
                let td = self
                    .trust_domains
                    .first()
                    .ok_or(ValidationError::TrustDomainNotAllowed)?;
                SpiffeId::from_kubernetes_subject(sub, td)
            }
        }
        .map_err(ValidationError::InvalidSubject)?;
        // JWT-SVID: `sub` is a workload's ID; `spiffe://TD` is the trust domain's own.
        if id.path().is_empty() {
            return Err(ValidationError::InvalidSubject(SpiffeIdError::NotAWorkload));
        }
        self.admits(&id)?;
        Ok(id)
    }

    /// Whether `id` may be this issuer's subject: its trust domain is one of
    /// `trust_domains`, and it matches `id_patterns` when there are any.
    pub fn admits(&self, id: &SpiffeId) -> Result<(), ValidationError> {
        if !self
            .trust_domains
            .iter()
            .any(|td| td.as_str() == id.trust_domain_str())
        {
            return Err(ValidationError::TrustDomainNotAllowed);
        }
        if !self.id_patterns.is_empty() && !self.id_patterns.iter().any(|p| p.matches(id)) {
            return Err(ValidationError::SubjectNotAllowed);
        }
        Ok(())
    }
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

impl KeyLookup for HashMap<String, std::sync::Arc<KeySet>> {
    fn keys_for(&self, issuer: &str) -> Option<&KeySet> {
        self.get(issuer).map(|s| &**s)
    }
}

impl KeyLookup for std::collections::BTreeMap<String, KeySet> {
    fn keys_for(&self, issuer: &str) -> Option<&KeySet> {
        self.get(issuer)
    }
}

/// Binding mode from configuration (DESIGN.md "Binding"). Parses (and deserializes)
/// from `server`, `client` or `none`, in any letter case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingMode {
    /// Subject must equal the mTLS peer's URI SAN.
    Server,
    /// Subject must equal the proxy's own workload identity.
    Client,
    /// No binding (never the default).
    None,
}

impl BindingMode {
    /// The configuration name: `server`, `client` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingMode::Server => "server",
            BindingMode::Client => "client",
            BindingMode::None => "none",
        }
    }

    /// The [`Binding`] for one request in this mode: `peer` is the mTLS peer's URI SAN
    /// (SERVER), `own` the proxy's own workload identity (CLIENT).
    pub fn binding<'a>(self, peer: Option<&'a SpiffeId>, own: Option<&'a SpiffeId>) -> Binding<'a> {
        match self {
            BindingMode::Server => Binding::Server(peer),
            BindingMode::Client => Binding::Client(own),
            BindingMode::None => Binding::None,
        }
    }
}

/// Why a string is not a [`BindingMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binding mode must be server, client or none")]
pub struct BindingModeError;

impl FromStr for BindingMode {
    type Err = BindingModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("server") {
            Ok(BindingMode::Server)
        } else if s.eq_ignore_ascii_case("client") {
            Ok(BindingMode::Client)
        } else if s.eq_ignore_ascii_case("none") {
            Ok(BindingMode::None)
        } else {
            Err(BindingModeError)
        }
    }
}

impl fmt::Display for BindingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BindingMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BindingMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
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
        let (bound, what) = match self {
            Binding::None => return Ok(()),
            Binding::Server(peer) => (peer, "mTLS peer"),
            Binding::Client(own) => (own, "proxy's own workload"),
        };
        match bound {
            None => Err(ValidationError::BindingUnavailable(what)),
            Some(id) if *id == subject => Ok(()),
            Some(_) => Err(ValidationError::BindingMismatch(what)),
        }
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
        let jws = self.parse(token)?;
        let issuer = self.verify_signature(&jws, keys)?;
        let claims = issuer.check_claims(&jws.payload, now)?;
        let spiffe_id = issuer.subject(&claims)?;
        binding.check(&spiffe_id)?;
        let CompactJws {
            header, payload, ..
        } = jws;
        Ok(VerifiedSubject {
            spiffe_id,
            issuer: claims.iss,
            audiences: claims.aud,
            expires_at: claims.exp,
            issued_at: claims.iat,
            alg: header.alg,
            kid: header.kid,
            claims: payload,
        })
    }

    /// A policy with these issuers and the default 8 KiB size cap.
    pub fn new(issuers: Vec<IssuerPolicy>) -> Self {
        ValidationPolicy {
            issuers,
            max_token_bytes: crate::DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    /// Checks the configuration (call it at startup and refuse to start on error).
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.issuers.is_empty() {
            return Err(PolicyError::NoIssuers);
        }
        if self.max_token_bytes == 0 {
            return Err(PolicyError::ZeroMaxTokenBytes);
        }
        for (index, ip) in self.issuers.iter().enumerate() {
            if ip.issuer.is_empty() {
                return Err(PolicyError::EmptyIssuer(index));
            }
            if self.issuers[..index].iter().any(|o| o.issuer == ip.issuer) {
                return Err(PolicyError::DuplicateIssuer {
                    index,
                    issuer: ip.issuer.clone(),
                });
            }
            if ip.audiences.is_empty() {
                return Err(PolicyError::NoAudiences(index));
            }
            if ip.trust_domains.is_empty() {
                return Err(PolicyError::NoTrustDomains(index));
            }
            if ip.leeway_secs > MAX_LEEWAY_SECS {
                return Err(PolicyError::LeewayTooLong(index));
            }
            if ip
                .max_lifetime_secs
                .is_some_and(|m| !(1..=MAX_LIFETIME_CAP_SECS).contains(&m))
            {
                return Err(PolicyError::LifetimeCapOutOfRange(index));
            }
            for p in &ip.id_patterns {
                let td = match p {
                    SpiffeIdPattern::Exact(id) => id.trust_domain_str(),
                    SpiffeIdPattern::Prefix { trust_domain, .. } => trust_domain.as_str(),
                };
                if !ip.trust_domains.iter().any(|t| t.as_str() == td) {
                    return Err(PolicyError::PatternOutsideTrustDomains {
                        index,
                        pattern: p.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The configured issuer whose `issuer` is exactly `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&IssuerPolicy> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }

    /// Step 1: strict parsing under the size cap (no signature check yet).
    pub fn parse<'t>(&self, token: &'t str) -> Result<CompactJws<'t>, ValidationError> {
        CompactJws::parse(token, self.max_token_bytes)
    }

    /// Step 2: finds the issuer by the (still unverified) `iss`, picks its key by
    /// `kid`/`alg` and verifies the signature. Returns the issuer's policy.
    pub fn verify_signature<'p>(
        &'p self,
        jws: &CompactJws<'_>,
        keys: &dyn KeyLookup,
    ) -> Result<&'p IssuerPolicy, ValidationError> {
        let iss = match jws.payload.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(ValidationError::InvalidClaim {
                    claim: "iss",
                    reason: "must be a string",
                })
            }
            None => return Err(ValidationError::MissingClaim("iss")),
        };
        let issuer = self.issuer(iss).ok_or(ValidationError::UnknownIssuer)?;
        let set = keys
            .keys_for(&issuer.issuer)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ValidationError::NoKeys {
                issuer: issuer.issuer.clone(),
            })?;
        let key = set
            .select(jws.header.kid.as_deref(), jws.header.alg)
            .map_err(|e| match e {
                ValidationError::UnknownKeyId { kid, .. } => ValidationError::UnknownKeyId {
                    issuer: issuer.issuer.clone(),
                    kid,
                },
                other => other,
            })?;
        jws.verify(key)?;
        Ok(issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_mode_parses_any_case_and_round_trips() {
        for (s, m) in [
            ("SERVER", BindingMode::Server),
            ("client", BindingMode::Client),
            ("None", BindingMode::None),
        ] {
            assert_eq!(s.parse::<BindingMode>(), Ok(m));
            assert_eq!(m.to_string().parse::<BindingMode>(), Ok(m));
        }
        assert_eq!("off".parse::<BindingMode>(), Err(BindingModeError));
        assert_eq!(
            serde_json::from_str::<BindingMode>("\"server\"").ok(),
            Some(BindingMode::Server)
        );
        assert!(serde_json::from_str::<BindingMode>("\"\"").is_err());
    }

    #[test]
    fn binding_none_accepts_any_subject_and_server_mode_fails_closed() {
        let Ok(id) = SpiffeId::parse("spiffe://td/x") else {
            panic!("valid id")
        };
        assert_eq!(Binding::None.check(&id), Ok(()));
        assert_eq!(
            BindingMode::Server.binding(None, Some(&id)).check(&id),
            Err(ValidationError::BindingUnavailable("mTLS peer"))
        );
    }

    #[test]
    fn policy_check_names_the_bad_field() {
        let mut p = ValidationPolicy::new(Vec::new());
        assert_eq!(p.check(), Err(PolicyError::NoIssuers));
        p.issuers
            .push(IssuerPolicy::new("i", Vec::new(), Vec::new()));
        assert_eq!(p.check(), Err(PolicyError::NoAudiences(0)));
        assert_eq!(
            p.check().map_err(|e| e.to_string()),
            Err("issuers[0].audiences: must not be empty".into())
        );
    }
}

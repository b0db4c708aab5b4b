//! `[[issuers]]`: the acceptance rules (core's [`IssuerPolicy`], parsed by core) and
//! where an issuer's keys come from, split apart when the section is read.

use std::path::PathBuf;

use meshpass_core::IssuerPolicy;
use serde::{Deserialize, Serialize};

use super::{bad, ConfigError};

/// `[[issuers]]`: one accepted subject-token issuer and where its keys come from
/// (exactly one of `jwks`, `jwks_file`, `jwks_url`, `discovery_url`).
///
/// The acceptance rules (`issuer`, `audiences`, `trust_domains`, `id_patterns`,
/// `subject_format`, `leeway_secs`, `max_lifetime_secs`) are deserialised by core's
/// [`IssuerPolicy`] itself, so the service and the filter read them the same way; the
/// other keys say where the keys come from.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The acceptance rules of this issuer (core's type, parsed by core).
    pub policy: IssuerPolicy,
    /// Inline JWKS document (JSON text).
    pub jwks: Option<String>,
    /// JWKS file, re-read every `refresh_secs`.
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (https; http only on loopback).
    pub jwks_url: Option<String>,
    /// OIDC discovery base URL: `{discovery_url}/.well-known/openid-configuration` names
    /// the `jwks_uri` (the Kubernetes API server works this way); the document's own URL
    /// is read as its base.
    pub discovery_url: Option<String>,
    /// PEM CA bundle for `jwks_url` / `discovery_url` / TokenReview.
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token sent to `jwks_url` / `discovery_url` (re-read on
    /// every fetch: projected tokens rotate).
    pub bearer_token_file: Option<PathBuf>,
    /// How often remote or file keys are refreshed.
    pub refresh_secs: u64,
    /// Minimum time between two refetches triggered by an unknown `kid`.
    pub min_refetch_secs: u64,
    /// Optional Kubernetes TokenReview check in addition to signature validation.
    pub token_review: Option<TokenReviewConfig>,
}

/// The key-source half of `[[issuers]]` (see [`IssuerConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerSourceFields {
    #[serde(default)]
    jwks: Option<String>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    discovery_url: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    refresh_secs: u64,
    #[serde(default = "default_refetch")]
    min_refetch_secs: u64,
    #[serde(default)]
    token_review: Option<TokenReviewConfig>,
}

/// The keys of `[[issuers]]` that core's [`IssuerPolicy`] reads.
const POLICY_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "trust_domains",
    "id_patterns",
    "subject_format",
    "leeway_secs",
    "max_lifetime_secs",
];

/// The keys of `[[issuers]]` that are not core's [`IssuerPolicy`].
const SOURCE_FIELDS: &[&str] = &[
    "jwks",
    "jwks_file",
    "jwks_url",
    "discovery_url",
    "ca_file",
    "bearer_token_file",
    "refresh_secs",
    "min_refetch_secs",
    "token_review",
];

/// `"KEY: reason"` for a policy deserialisation error, naming the first key whose
/// value core refuses (the message alone otherwise, e.g. a missing or unknown key).
fn name_policy_field(
    map: &serde_json::Map<String, serde_json::Value>,
    e: serde_json::Error,
) -> String {
    use meshpass_core::{Audience, SpiffeIdPattern, SubjectFormat, TrustDomain};
    fn refuses<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> bool {
        serde_json::from_value::<T>(v.clone()).is_err()
    }
    let bad_key = map.iter().find(|(k, v)| match k.as_str() {
        "issuer" => refuses::<String>(v),
        "audiences" => refuses::<Vec<Audience>>(v),
        "trust_domains" => refuses::<Vec<TrustDomain>>(v),
        "id_patterns" => refuses::<Vec<SpiffeIdPattern>>(v),
        "subject_format" => refuses::<SubjectFormat>(v),
        "leeway_secs" => refuses::<u64>(v),
        "max_lifetime_secs" => refuses::<Option<u64>>(v),
        _ => false,
    });
    let reason = unquoted(&e.to_string());
    match bad_key {
        Some((k, _)) => format!("{k}: {reason}"),
        None => reason,
    }
}

impl<'de> Deserialize<'de> for IssuerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut policy = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        if let Some(k) = policy
            .keys()
            .find(|k| !POLICY_FIELDS.contains(&k.as_str()) && !SOURCE_FIELDS.contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!("{k}: is not a known key")));
        }
        let mut source = serde_json::Map::new();
        for k in SOURCE_FIELDS {
            if let Some(v) = policy.remove(*k) {
                source.insert((*k).to_string(), v);
            }
        }
        let policy = match IssuerPolicy::deserialize(serde_json::Value::Object(policy.clone())) {
            Ok(p) => p,
            // Name the key that failed (serde_json's Value errors do not).
            Err(e) => return Err(D::Error::custom(name_policy_field(&policy, e))),
        };
        // Named by the path of the key that failed (`refresh_secs`,
        // `token_review.timeout_secs`): serde_json's Value errors name none.
        let s: IssuerSourceFields =
            serde_path_to_error::deserialize(serde_json::Value::Object(source))
                .map_err(|e| D::Error::custom(path_error(&e)))?;
        Ok(IssuerConfig {
            policy,
            jwks: s.jwks,
            jwks_file: s.jwks_file,
            jwks_url: s.jwks_url,
            discovery_url: s.discovery_url,
            ca_file: s.ca_file,
            bearer_token_file: s.bearer_token_file,
            refresh_secs: s.refresh_secs,
            min_refetch_secs: s.min_refetch_secs,
            token_review: s.token_review,
        })
    }
}

/// `key.path: reason` in the words of the rest of the configuration errors: an unknown
/// key "is not a known key", and a string value is never quoted (it may be a secret put
/// in the wrong place).
fn path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    let reason = if inner.starts_with("unknown field") {
        "is not a known key".to_string()
    } else {
        unquoted(&inner)
    };
    format!("{}: {reason}", e.path())
}

/// serde's type, value and variant errors without the value they quote
/// (``invalid type: integer `5` ``, ``unknown variant `x` ``): it may be a secret put in
/// the wrong place. Other messages stay as they are.
fn unquoted(inner: &str) -> String {
    if let Some(rest) = inner.strip_prefix("unknown variant ") {
        // The last one: the value itself may hold the words.
        let expected = rest.rsplit_once(", expected ").map_or("", |(_, x)| x);
        return format!("unknown value, expected {expected}");
    }
    for (prefix, lead) in [
        ("invalid type: ", "invalid type: found "),
        ("invalid value: ", "invalid value: "),
    ] {
        if let Some(rest) = inner.strip_prefix(prefix) {
            let (unexpected, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
            // serde's `Unexpected` is a noun, then the value in `` ` `` or `"`.
            let noun = unexpected
                .split_once([' ', '`', '"'])
                .map_or(unexpected, |(n, _)| n);
            let kind = match noun {
                "string" => "a string",
                "integer" => "an integer",
                "boolean" => "a boolean",
                "floating" => "a float",
                "character" => "a character",
                "sequence" => "a sequence",
                "map" => "a table",
                _ => "a value of another type",
            };
            return format!("{lead}{kind}, expected {expected}");
        }
    }
    inner.to_string()
}

fn default_refresh() -> u64 {
    300
}
fn default_refetch() -> u64 {
    10
}

/// `[issuers.token_review]`: ask the Kubernetes API server whether the token is still
/// valid (catches deleted pods and service accounts before the token expires).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewConfig {
    /// API server base URL, e.g. `https://kubernetes.default.svc` (unless `in_cluster`).
    #[serde(default)]
    pub url: Option<String>,
    /// Use the pod's in-cluster configuration (`KUBERNETES_SERVICE_HOST`/`_PORT`, the
    /// service-account CA and token) instead of `url`, `ca_file`, `bearer_token_file`.
    #[serde(default)]
    pub in_cluster: bool,
    /// PEM CA bundle of the API server (else the issuer's `ca_file`, else system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File with the service's own bearer token (re-read on every call).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Audiences sent in `spec.audiences` (default: the issuer's audiences); the answer's
    /// `status.audiences` must contain one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Timeout of one review.
    #[serde(default = "default_review_timeout")]
    pub timeout_secs: u64,
}

fn default_review_timeout() -> u64 {
    5
}

impl TokenReviewConfig {
    /// Checks where the API server is and how long to wait; `prefix` names the section
    /// in errors (`issuers[0].token_review`, `management.kubernetes`).
    pub fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |k: &str| format!("{prefix}.{k}");
        match (&self.url, self.in_cluster) {
            (Some(u), false) => {
                super::check_url(&f("url"), u)?;
            }
            (None, true) if self.ca_file.is_some() || self.bearer_token_file.is_some() => {
                return Err(bad(
                    f("in_cluster"),
                    "uses the pod's service-account CA and token: remove ca_file and bearer_token_file",
                ));
            }
            (None, true) => {}
            (Some(_), true) => {
                return Err(bad(f("url"), "set url or in_cluster = true, not both"));
            }
            (None, false) => {
                return Err(bad(f("url"), "is required unless in_cluster = true"));
            }
        }
        if self.timeout_secs == 0 {
            return Err(bad(f("timeout_secs"), "must be at least 1"));
        }
        Ok(())
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceConfig {
    /// Inline JWKS text.
    Inline(String),
    /// A file.
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
    /// OIDC discovery base URL.
    Discovery(String),
}

impl IssuerConfig {
    /// The single configured key source.
    pub fn key_source(&self, field: &str) -> Result<KeySourceConfig, ConfigError> {
        let mut found = Vec::new();
        if let Some(j) = &self.jwks {
            found.push(KeySourceConfig::Inline(j.clone()));
        }
        if let Some(f) = &self.jwks_file {
            found.push(KeySourceConfig::File(f.clone()));
        }
        if let Some(u) = &self.jwks_url {
            found.push(KeySourceConfig::Url(u.clone()));
        }
        if let Some(u) = &self.discovery_url {
            found.push(KeySourceConfig::Discovery(u.clone()));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(bad(
                field,
                "set one of jwks, jwks_file, jwks_url, discovery_url",
            )),
            _ => Err(bad(
                field,
                "set only one of jwks, jwks_file, jwks_url, discovery_url",
            )),
        }
    }
}

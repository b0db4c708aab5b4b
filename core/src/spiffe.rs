//! SPIFFE IDs (SPIFFE ID spec §2), trust domains, allow-patterns and the Kubernetes
//! service-account mapping.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a SPIFFE ID, trust domain or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Empty input.
    #[error("empty")]
    Empty,
    /// The scheme is not `spiffe://` (lower case).
    #[error("scheme must be spiffe://")]
    WrongScheme,
    /// The trust domain is missing.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain has a character outside [a-z0-9.-_].
    #[error("trust domain has a character outside [a-z0-9._-]")]
    BadTrustDomainChar,
    /// A path segment has a character outside [A-Za-z0-9.-_].
    #[error("path has a character outside [A-Za-z0-9._-]")]
    BadPathChar,
    /// The path has an empty segment (`//` or a trailing `/`).
    #[error("path has an empty segment")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("path has a dot segment")]
    DotSegment,
    /// Port, user info, query or fragment present.
    #[error("port, user info, query or fragment are not allowed")]
    ForbiddenComponent,
    /// Longer than 2048 bytes (trust domain: 255).
    #[error("too long")]
    TooLong,
    /// A Kubernetes subject is not `system:serviceaccount:NS:SA` with valid names.
    #[error("not a Kubernetes service-account subject")]
    NotServiceAccount,
    /// A pattern is not `spiffe://TD/path`, `spiffe://TD/prefix/*` or `spiffe://TD/*`.
    #[error("invalid pattern")]
    BadPattern,
    /// The ID has no path: it names the trust domain, never a workload.
    #[error("names the trust domain, not a workload (no path)")]
    NotAWorkload,
}

/// The SPIFFE ID scheme, lower case only.
const SCHEME: &str = "spiffe://";
/// Longest trust-domain name (SPIFFE ID spec §2.1).
const MAX_TRUST_DOMAIN_BYTES: usize = 255;
/// Longest whole SPIFFE ID (SPIFFE ID spec §2.3).
const MAX_SPIFFE_ID_BYTES: usize = 2048;

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Checks a bare trust-domain name.
fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TooLong);
    }
    if td.bytes().any(|b| matches!(b, b':' | b'@' | b'?' | b'#')) {
        return Err(SpiffeIdError::ForbiddenComponent);
    }
    if !td.bytes().all(is_td_char) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

/// Checks a path: `""`, or `/seg(/seg)*` with non-empty, non-dot segments.
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::BadPathChar);
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if !seg.bytes().all(is_path_char) {
            return Err(SpiffeIdError::BadPathChar);
        }
    }
    Ok(())
}

/// A SPIFFE trust domain, e.g. `cluster.local`. Only [`TrustDomain::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust-domain name (no scheme).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        check_trust_domain(s)?;
        Ok(TrustDomain(s.to_owned()))
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The trust domain's own SPIFFE ID, `spiffe://TD`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: format!("{SCHEME}{}", self.0),
            td_len: self.0.len(),
        }
    }
}

/// A SPIFFE ID, e.g. `spiffe://cluster.local/ns/default/sa/web`. Only
/// [`SpiffeId::parse`] (and the Kubernetes mapping) build one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(SpiffeIdError::WrongScheme);
        };
        if rest.bytes().any(|b| matches!(b, b'?' | b'#')) {
            return Err(SpiffeIdError::ForbiddenComponent);
        }
        let (td, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(SpiffeId {
            id: s.to_owned(),
            td_len: td.len(),
        })
    }

    /// Maps `system:serviceaccount:NS:SA` to `spiffe://TD/ns/NS/sa/SA`.
    pub fn from_kubernetes_subject(sub: &str, td: &TrustDomain) -> Result<Self, SpiffeIdError> {
        let rest = sub
            .strip_prefix("system:serviceaccount:")
            .ok_or(SpiffeIdError::NotServiceAccount)?;
        let (ns, sa) = rest
            .split_once(':')
            .ok_or(SpiffeIdError::NotServiceAccount)?;
        if !is_dns1123_label(ns) || !is_dns1123_subdomain(sa) {
            return Err(SpiffeIdError::NotServiceAccount);
        }
        SpiffeId::parse(&format!("{SCHEME}{}/ns/{ns}/sa/{sa}", td.as_str()))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }
    /// The trust-domain name, without allocating.
    pub(crate) fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }
    /// The path, `""` or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }
    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// DNS-1123 label (Kubernetes namespace names): 1..=63 of [a-z0-9-], alphanumeric at
/// both ends.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// DNS-1123 subdomain (Kubernetes service-account names, `IsDNS1123Subdomain`): at most
/// 253 bytes of dot-separated parts of [a-z0-9-], alphanumeric at both ends; unlike a
/// label, a part has no 63-byte cap of its own.
fn is_dns1123_subdomain(s: &str) -> bool {
    let part = |p: &str| {
        let b = p.as_bytes();
        b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(part)
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allow-pattern: exact ID (`spiffe://td/ns/a/sa/b`), segment-aligned path prefix
/// (`spiffe://td/ns/a/*`), or a whole trust domain (`spiffe://td/*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpiffeIdPattern {
    /// Matches exactly this ID.
    Exact(SpiffeId),
    /// Matches IDs in `trust_domain` whose path is `prefix` or starts with `prefix/`
    /// (`prefix` empty: every ID in the trust domain).
    Prefix {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The path prefix, `""` or starting with `/`, no trailing `/`.
        prefix: String,
    },
}

impl SpiffeIdPattern {
    /// Parses a pattern.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if let Some(base) = s.strip_suffix("/*") {
            if base.contains('*') {
                return Err(SpiffeIdError::BadPattern);
            }
            let id = SpiffeId::parse(base)?;
            return Ok(SpiffeIdPattern::Prefix {
                trust_domain: id.trust_domain(),
                prefix: id.path().to_owned(),
            });
        }
        if s.contains('*') {
            return Err(SpiffeIdError::BadPattern);
        }
        SpiffeId::parse(s).map(SpiffeIdPattern::Exact)
    }
    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            SpiffeIdPattern::Exact(want) => want == id,
            SpiffeIdPattern::Prefix {
                trust_domain,
                prefix,
            } => {
                if id.trust_domain_str() != trust_domain.as_str() {
                    return false;
                }
                // Segment-aligned: `/ns/foo` matches `/ns/foo` and `/ns/foo/x`, never
                // `/ns/foobar`.
                match id.path().strip_prefix(prefix.as_str()) {
                    Some(rest) => prefix.is_empty() || rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
        }
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeIdPattern::Exact(id) => f.write_str(id.as_str()),
            SpiffeIdPattern::Prefix {
                trust_domain,
                prefix,
            } => write!(f, "{SCHEME}{}{prefix}/*", trust_domain.as_str()),
        }
    }
}

/// Longest input quoted back in a configuration error.
const MAX_QUOTED: usize = 128;

macro_rules! string_newtype_traits {
    ($t:ty, $what:literal) => {
        impl FromStr for $t {
            type Err = SpiffeIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                // Configuration values are not secrets: quote them, so the error says
                // which entry is wrong (serde adds the field name where it can).
                <$t>::parse(&s).map_err(|e| {
                    let shown: String = s.chars().take(MAX_QUOTED).collect();
                    serde::de::Error::custom(format_args!("invalid {} {shown:?}: {e}", $what))
                })
            }
        }
    };
}

string_newtype_traits!(SpiffeId, "SPIFFE ID");
string_newtype_traits!(TrustDomain, "trust domain");
string_newtype_traits!(SpiffeIdPattern, "SPIFFE ID pattern");

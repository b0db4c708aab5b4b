//! SPIFFE IDs (SPIFFE ID spec §2), trust domains, allow-patterns and the Kubernetes
//! service-account mapping.

use std::fmt;

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
}

/// A SPIFFE trust domain, e.g. `cluster.local`. Only [`TrustDomain::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust-domain name (no scheme).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        todo!("{s}")
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
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
        todo!("{s}")
    }
    /// Maps `system:serviceaccount:NS:SA` to `spiffe://TD/ns/NS/sa/SA`.
    pub fn from_kubernetes_subject(sub: &str, td: &TrustDomain) -> Result<Self, SpiffeIdError> {
        todo!("{sub} {td:?}")
    }
    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        todo!()
    }
    /// The path, `""` or starting with `/`.
    pub fn path(&self) -> &str {
        todo!()
    }
    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
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
        todo!("{s}")
    }
    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        todo!("{id}")
    }
}
// core helper: Display/FromStr/Serialize/Deserialize(through parse) for all three types.

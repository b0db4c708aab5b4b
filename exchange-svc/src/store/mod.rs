//! Mappings: who may exchange for what, and which claims each scope adds.
//!
//! Model (designed for a management API doing CRUD on both entities, and for several
//! replicas sharing one Postgres database):
//! - a [`Mapping`] grants subjects matching one SPIFFE ID pattern access to one
//!   resource (participant context), with the audiences, scopes, TTL and rate limit
//!   they may get; it is identified by a unique `name`;
//! - a [`ScopeClaims`] row says which extra claims a scope adds to tokens for one
//!   resource, identified by `(resource, scope)`.
//!
//! Every write goes through [`validate_mapping`] / [`validate_scope_claims`] and the
//! cross-row checks of the backend (duplicates, conflicting claims), whichever caller
//! (config seeding, CLI, management API) makes it.

mod audit;
mod cached;
mod changes;
mod config;
mod etag;
mod index;
mod maintenance;
mod managed;
mod revocations;
mod sql;
mod write;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use meshpass_core::{Audience, SpiffeIdPattern};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use audit::{AuditEvent, AuditQuery, AuditRecord};
pub use cached::PolicyCache;
pub use changes::CHANNEL as CHANGE_CHANNEL;
pub(crate) use config::{sqlite_in_memory, sqlite_path};
pub use etag::ETag;
pub use managed::{
    import_leaves_ungranted, mappings_after_import, Actor, ImportDiff, PolicyDocument,
    Precondition, Saved, ScopeKey,
};
pub use revocations::{
    validate_revocation, NewRevocation, Revocation, RevocationChanges, RevocationStore,
    RevocationTarget, LOG_RETENTION,
};
pub use sql::{SqlStore, StoreConfig};

/// From this many mappings on a resource is large: the store decodes and indexes it on
/// the blocking pool, and the policy cache frees a replaced snapshot there (work of
/// hundreds of ms at 100,000 mappings, kept off the async workers).
const LARGE_RESOURCE: usize = 1_000;

/// Claims a scope→claims mapping may never set: they are the service's own.
/// `may_act` and `client_id` are RFC 8693's (§4.4, §4.3): a scope must not say who may
/// act for every holder, nor which client the token was issued to.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "act",
    "cnf",
    "may_act",
    "client_id",
];

/// The slowest rate a mapping may set: one exchange a day. Below it a refusal's wait
/// would be measured in years (and a float that small is a mistake, not a policy).
pub const MIN_RATE_PER_SECOND: f64 = 1.0 / 86_400.0;

/// A per-subject token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second (sustained exchanges per second per subject).
    pub per_second: f64,
    /// Bucket size (burst).
    pub burst: u32,
}

/// Grants subjects matching `subject` tokens for `resource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Unique name (`[A-Za-z0-9._-]`, at most 128 bytes, not only dots).
    pub name: String,
    /// SPIFFE ID pattern: `spiffe://td/exact/id`, `spiffe://td/prefix/*`, `spiffe://td/*`.
    pub subject: String,
    /// The resource (the request's `resource`, or its `audience` when no resource is given).
    pub resource: String,
    /// Value of the participant-context claim in minted tokens.
    pub participant: String,
    /// Audiences the subject may request; empty means only `resource` itself. The first
    /// is the default when the request names none.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes the subject may request (all of them are granted when none is requested).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime of minted tokens, in seconds (also capped by the subject token's `exp`).
    pub ttl_secs: u64,
    /// Per-(caller, subject) rate limit, if any.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// SPIFFE ID patterns of callers (other than the subject itself) that may exchange
    /// the subject's token for this resource: SERVER-mode sidecars exchanging on behalf
    /// of their peer. Empty: only the subject itself (CLIENT mode).
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    /// SPIFFE ID patterns of actors that may act for the subject (an `actor_token`),
    /// when the subject token carries no `may_act`. Empty: no delegation.
    #[serde(default)]
    pub allowed_actors: Vec<String>,
}

impl Mapping {
    /// The audiences this mapping allows.
    pub fn allowed_audiences(&self) -> Vec<&str> {
        if self.audiences.is_empty() {
            vec![self.resource.as_str()]
        } else {
            self.audiences.iter().map(String::as_str).collect()
        }
    }
}

/// Extra claims `scope` adds to tokens for `resource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeClaims {
    /// The resource.
    pub resource: String,
    /// The scope.
    pub scope: String,
    /// Claim name → JSON value.
    pub claims: Map<String, Value>,
}

/// Everything the token endpoint needs about one resource, read in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourcePolicy {
    /// Mappings for the resource, sorted by name.
    pub mappings: Vec<Mapping>,
    /// Scope claims for the resource.
    pub scope_claims: Vec<ScopeClaims>,
    /// Lookup index over `mappings`, built on the first lookup (a policy is not changed
    /// once read).
    index: index::LazyIndex,
}

impl ResourcePolicy {
    /// A resource's policy; `mappings` sorted by name (ties between equal patterns go
    /// to the first).
    pub fn new(mappings: Vec<Mapping>, scope_claims: Vec<ScopeClaims>) -> Self {
        ResourcePolicy {
            mappings,
            scope_claims,
            index: index::LazyIndex::default(),
        }
    }

    /// Builds the lookup index now rather than on the first lookup (for a large
    /// resource, so that an exchange does not pay for it).
    pub fn build_index(&self) {
        self.index.get(&self.mappings);
    }

    /// The most specific mapping whose subject pattern matches `id`: an exact ID beats
    /// a prefix, a longer prefix beats a shorter one; ties go to the first by name.
    pub fn mapping_for(&self, id: &meshpass_core::SpiffeId) -> Option<&Mapping> {
        let i = self.index.get(&self.mappings).best(id)?;
        self.mappings.get(i)
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or failed; retry later (→ 503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write was refused: `field` is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, e.g. `subject` or `claims.iss`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A write conflicts with stored data (duplicate or conflicting claims).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored row cannot be decoded.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The configuration of the store is wrong (bad URL, bad pool settings).
    #[error("store configuration: {0}")]
    Config(String),
    /// Applying schema migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The entity a conditional write or delete names does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The entity changed since the caller read it (`If-Match` no longer matches).
    #[error("{0} changed since it was read")]
    PreconditionFailed(String),
}

/// How sqlx's `Error::Configuration` reads as text (sqlx-core's `Display`): the SQL
/// backend keeps sqlx's errors as text in `Migration` and `Unavailable`.
const SQLX_CONFIGURATION: &str = "error with configuration: ";

impl StoreError {
    /// When the driver refused the connection options (sqlx's `Error::Configuration`,
    /// e.g. an unknown `sslmode` met at connect time): no retry can connect, so this is
    /// the configuration's fault, not an outage. The reason, without the values sqlx
    /// quotes (they may come from the URL's query, e.g. a password).
    pub fn configuration_reason(&self) -> Option<String> {
        match self {
            StoreError::Migration(m) | StoreError::Unavailable(m)
                if m.starts_with(SQLX_CONFIGURATION) =>
            {
                Some(config::driver_reason_text(m))
            }
            _ => None,
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Storage of mappings and scope claims.
#[async_trait]
pub trait MappingStore: Send + Sync {
    /// The mappings and scope claims of `resource`.
    async fn resource_policy(&self, resource: &str) -> Result<ResourcePolicy, StoreError>;
    /// [`MappingStore::resource_policy`] behind an `Arc`, so a cache can hand out its
    /// snapshot without copying it (the token endpoint calls this one).
    async fn shared_resource_policy(
        &self,
        resource: &str,
    ) -> Result<Arc<ResourcePolicy>, StoreError> {
        self.resource_policy(resource).await.map(Arc::new)
    }
    /// Every mapping, by name.
    async fn list_mappings(&self) -> Result<Vec<Mapping>, StoreError>;
    /// One mapping.
    async fn get_mapping(&self, name: &str) -> Result<Option<Mapping>, StoreError>;
    /// Creates or replaces the mapping called `mapping.name` (validated).
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError>;
    /// Deletes a mapping; whether it existed.
    async fn delete_mapping(&self, name: &str) -> Result<bool, StoreError>;
    /// Every scope-claims row, by resource and scope.
    async fn list_scope_claims(&self) -> Result<Vec<ScopeClaims>, StoreError>;
    /// Creates or replaces the row for `(resource, scope)` (validated).
    async fn put_scope_claims(&self, row: &ScopeClaims) -> Result<(), StoreError>;
    /// Deletes a scope-claims row; whether it existed.
    async fn delete_scope_claims(&self, resource: &str, scope: &str) -> Result<bool, StoreError>;
    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// The store's change version, moved by every committed write to mappings and
    /// scope claims (`None`: this store keeps none). A cache that read it before a
    /// resource's rows can later tell, with this one small read, that nothing changed.
    async fn policy_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
    /// Drops any cached view of the store (called after writes made around this
    /// handle, e.g. by the management API on the underlying store).
    fn invalidate(&self) {}
    /// Records that seeding from the configuration file replaced the stored `before`
    /// with `after` (a store with an audit log says so there; others do nothing).
    async fn audit_seeded(&self, _before: &Mapping, _after: &Mapping) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Seeds mappings and scope claims (from the config file): idempotent upserts that
/// leave identical rows untouched, in one write transaction checked as a whole, so a
/// refused configuration changes nothing. Returns how many rows were written. Refused:
/// a scope row no mapping of its resource grants (in the file or already stored),
/// named as `scope_claims[i].scope`; a configured mapping that no longer grants the
/// scope of a stored row no other mapping grants, named as `mappings[i].scopes` (a
/// scope row is never dead configuration: the store's export must import again).
pub async fn seed(
    store: &SqlStore,
    mappings: &[Mapping],
    scope_claims: &[ScopeClaims],
) -> Result<usize, StoreError> {
    for m in mappings {
        validate_mapping(m)?;
    }
    for row in scope_claims {
        validate_scope_claims(row, &store.participant_claim)?;
    }
    let mut tx = store.begin_write().await?;
    match seed_in(&mut tx, mappings, scope_claims).await {
        Ok(0) => {
            // Nothing to write: no version bump (it would drop every replica's cache).
            tx.rollback().await?;
            Ok(0)
        }
        Ok(written) => {
            let bumped = changes::bump(&mut tx, store.backend).await;
            tx.finish(bumped).await?;
            Ok(written)
        }
        Err(e) => Err(tx.abort(e).await),
    }
}

/// [`seed`]'s checks and writes inside `c`'s write transaction (read past the
/// readiness gate: seeding is what opens it).
async fn seed_in(
    c: &mut write::WriteTx<'_>,
    mappings: &[Mapping],
    scope_claims: &[ScopeClaims],
) -> Result<usize, StoreError> {
    let stored = managed::read_all(c).await?;
    let after = mappings_after_import(&stored.mappings, mappings, false);
    let granted = grants(&after);
    for (i, row) in scope_claims.iter().enumerate() {
        // The same rule as the management API's: a row no mapping grants adds claims to
        // no token, so it is a mistake (usually a typo'd scope) to say, not to store.
        check_granted(row, &granted).map_err(|e| match e {
            StoreError::Invalid { reason, .. } => {
                invalid(format!("scope_claims[{i}].scope"), reason)
            }
            e => e,
        })?;
    }
    let left = rows_left_ungranted(&stored.scopes, &stored.mappings, &after);
    if let Some(row) = left.first() {
        // A row granted before and by nothing after: a configured mapping dropped it.
        let i = mappings
            .iter()
            .position(|m| {
                stored.mappings.iter().any(|s| {
                    s.name == m.name && s.resource == row.resource && s.scopes.contains(&row.scope)
                })
            })
            .unwrap_or(0);
        let verb = if left.len() == 1 { "is" } else { "are" };
        return Err(invalid(
            format!("mappings[{i}].scopes"),
            format!(
                "stored {} {verb} granted by no mapping once the file's mappings are written: grant the scope in the file, or delete the row first",
                scope_row_names(&left)
            ),
        ));
    }
    let mut written = 0;
    for m in mappings {
        let before = stored.mappings.iter().find(|s| s.name == m.name);
        if before == Some(m) {
            continue;
        }
        sql::upsert_mapping(c, m, false).await?;
        written += 1;
        // The file wins at every start: a change made through the management API to a
        // configured mapping is overwritten, which the audit log must show.
        if let Some(before) = before {
            tracing::warn!(mapping = %m.name, "the stored mapping differed from the configuration file; the file's is written");
            c.audit(&sql::seeded_audit(before, m)).await?;
        }
    }
    for row in scope_claims {
        if !stored.scopes.contains(row) {
            // Checked against its siblings as written so far (the file's rows too).
            sql::upsert_scope_claims(c, row, false).await?;
            written += 1;
        }
    }
    Ok(written)
}

/// Why a name made only of dots is refused: the management API addresses names as URL
/// path segments, and clients resolve `.` and `..` away (even percent-encoded), so such
/// a name could never be read, changed or deleted.
const ONLY_DOTS: &str = "cannot be made only of dots (a URL path could not address it)";

fn only_dots(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'.')
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 128 {
        return Err(invalid("name", "must be 1 to 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("name", "may only contain [A-Za-z0-9._-]"));
    }
    if only_dots(name) {
        return Err(invalid("name", ONLY_DOTS));
    }
    Ok(())
}

/// Whether `s` may be stored as a scope: an RFC 6749 §3.3 scope-token (core's one rule)
/// of at most 256 bytes, not made only of dots (a scope row is addressed by it).
pub fn is_scope_token(s: &str) -> bool {
    s.len() <= 256 && meshpass_core::oauth::is_scope_token(s) && !only_dots(s)
}

/// Why `s` is no scope token: dots get their own message.
fn not_a_scope_token(s: &str) -> String {
    if only_dots(s) {
        format!("{s:?} {ONLY_DOTS}")
    } else {
        format!("{s:?} is not a valid scope token")
    }
}

fn check_resource(resource: &str) -> Result<(), StoreError> {
    Audience::parse(resource).map_err(|e| invalid("resource", e.to_string()))?;
    if only_dots(resource) {
        return Err(invalid("resource", ONLY_DOTS));
    }
    Ok(())
}

fn check_unique<'a>(
    field: &str,
    items: impl Iterator<Item = &'a String>,
) -> Result<(), StoreError> {
    let mut seen = BTreeSet::new();
    for i in items {
        if !seen.insert(i) {
            return Err(invalid(field, format!("{i:?} is listed twice")));
        }
    }
    Ok(())
}

/// Largest mapping TTL accepted (a day); the service caps it further by configuration.
pub const MAX_TTL_SECS: u64 = 86_400;

/// Validates one mapping on its own (cross-row checks are the backend's).
pub fn validate_mapping(m: &Mapping) -> Result<(), StoreError> {
    check_name(&m.name)?;
    SpiffeIdPattern::parse(&m.subject).map_err(|e| invalid("subject", e.to_string()))?;
    check_resource(&m.resource)?;
    if m.participant.is_empty() || m.participant.len() > 1024 {
        return Err(invalid("participant", "must be 1 to 1024 bytes"));
    }
    if m.participant.chars().any(char::is_control) {
        return Err(invalid("participant", "contains a control character"));
    }
    for a in &m.audiences {
        Audience::parse(a).map_err(|e| invalid("audiences", e.to_string()))?;
    }
    check_unique("audiences", m.audiences.iter())?;
    for s in &m.scopes {
        if !is_scope_token(s) {
            return Err(invalid("scopes", not_a_scope_token(s)));
        }
    }
    check_unique("scopes", m.scopes.iter())?;
    for (field, list) in [
        ("allowed_callers", &m.allowed_callers),
        ("allowed_actors", &m.allowed_actors),
    ] {
        for p in list {
            SpiffeIdPattern::parse(p).map_err(|e| invalid(field, e.to_string()))?;
        }
        check_unique(field, list.iter())?;
    }
    if m.ttl_secs == 0 || m.ttl_secs > MAX_TTL_SECS {
        return Err(invalid("ttl_secs", format!("must be 1 to {MAX_TTL_SECS}")));
    }
    if let Some(rl) = m.rate_limit {
        if !(rl.per_second.is_finite() && rl.per_second >= MIN_RATE_PER_SECOND) {
            return Err(invalid(
                "rate_limit.per_second",
                format!(
                    "must be a number of at least {MIN_RATE_PER_SECOND:.8} (one exchange a day)"
                ),
            ));
        }
        if rl.burst == 0 {
            return Err(invalid("rate_limit.burst", "must be at least 1"));
        }
    }
    Ok(())
}

/// The service's own cap on a mapping's TTL (`token.max_ttl_secs`), on top of
/// [`validate_mapping`]'s absolute bound.
pub fn check_ttl_cap(m: &Mapping, max_ttl_secs: u64) -> Result<(), StoreError> {
    if m.ttl_secs > max_ttl_secs {
        return Err(invalid(
            "ttl_secs",
            format!("exceeds token.max_ttl_secs ({max_ttl_secs})"),
        ));
    }
    Ok(())
}

/// Checks that some mapping of the row's resource grants its scope (`mappings`: the
/// resource's mappings), so a scope row is never dead configuration.
pub fn check_scope_granted(row: &ScopeClaims, mappings: &[Mapping]) -> Result<(), StoreError> {
    check_granted(row, &grants(mappings))
}

/// [`check_scope_granted`] against the [`grants`] of a set of mappings (a whole
/// document's rows checked in one pass over its mappings).
pub fn check_granted(
    row: &ScopeClaims,
    granted: &BTreeSet<(&str, &str)>,
) -> Result<(), StoreError> {
    if granted.contains(&(row.resource.as_str(), row.scope.as_str())) {
        Ok(())
    } else {
        Err(invalid(
            "scope",
            format!(
                "unknown scope {:?}: no mapping of resource {:?} grants it",
                row.scope, row.resource
            ),
        ))
    }
}

/// The rows of `rows` that a mapping of `before` grants and none of `after` does: the
/// dead configuration a change from `before` to `after` would leave. A row no mapping
/// granted before (written around the service) is not the change's doing, and not listed.
pub fn rows_left_ungranted<'r>(
    rows: &'r [ScopeClaims],
    before: &[Mapping],
    after: &[Mapping],
) -> Vec<&'r ScopeClaims> {
    let (was, is) = (grants(before), grants(after));
    rows.iter()
        .filter(|r| {
            let key = (r.resource.as_str(), r.scope.as_str());
            was.contains(&key) && !is.contains(&key)
        })
        .collect()
}

/// Every `(resource, scope)` the mappings grant.
pub fn grants(mappings: &[Mapping]) -> BTreeSet<(&str, &str)> {
    mappings
        .iter()
        .flat_map(|m| m.scopes.iter().map(|s| (m.resource.as_str(), s.as_str())))
        .collect()
}

/// `scope row R/S` or `scope rows R/S, R/T`, for a message.
pub fn scope_row_names(rows: &[&ScopeClaims]) -> String {
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.resource, r.scope))
        .collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("scope row{plural} {}", names.join(", "))
}

/// Validates one scope-claims row on its own; `participant_claim` is reserved too.
pub fn validate_scope_claims(row: &ScopeClaims, participant_claim: &str) -> Result<(), StoreError> {
    check_resource(&row.resource)?;
    if !is_scope_token(&row.scope) {
        return Err(invalid("scope", not_a_scope_token(&row.scope)));
    }
    if row.claims.is_empty() {
        return Err(invalid("claims", "must set at least one claim"));
    }
    for (name, value) in &row.claims {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(invalid(
                "claims",
                format!("{name:?} is not a valid claim name"),
            ));
        }
        if is_reserved_claim(name, participant_claim) {
            return Err(invalid(
                format!("claims.{name}"),
                "is reserved (or one up to case) and cannot be set by a scope",
            ));
        }
        if nests_deeper_than(value, MAX_CLAIM_DEPTH) {
            return Err(invalid(
                format!("claims.{name}"),
                format!("nests arrays or objects more than {MAX_CLAIM_DEPTH} deep"),
            ));
        }
    }
    let size = serde_json::to_vec(&row.claims).map_or(usize::MAX, |v| v.len());
    if size > MAX_SCOPE_CLAIMS_BYTES {
        return Err(invalid(
            "claims",
            format!(
                "take {size} bytes as JSON, over {MAX_SCOPE_CLAIMS_BYTES}: every token granting the scope would carry them in a header"
            ),
        ));
    }
    Ok(())
}

/// Largest JSON size of one scope row's claims. A participant token travels as an
/// HTTP header (Envoy's default limit is 60 KiB for all headers, the filter reads an
/// exchange answer of at most 64 KiB): the rows a mapping grants together are bounded
/// again when a token is minted ([`MAX_TOKEN_CLAIMS_BYTES`]).
pub const MAX_SCOPE_CLAIMS_BYTES: usize = 8 * 1024;

/// Largest JSON size of a participant token's claims: a token over it is refused with
/// a server error naming the resource, not handed to a filter that could never use it.
pub const MAX_TOKEN_CLAIMS_BYTES: usize = 32 * 1024;

/// Whether a scope may not set the claim `name`: a reserved claim or the participant
/// claim, also up to Unicode case (Go's encoding/json matches object keys case-folded,
/// so a `ſub` written after `sub` is the `sub` such a verifier reads).
pub fn is_reserved_claim(name: &str, participant_claim: &str) -> bool {
    RESERVED_CLAIMS.iter().any(|r| same_claim_name(name, r))
        || same_claim_name(name, participant_claim)
}

/// Whether two claim names are one to a reader that folds case (`ſub` and `sub`, the
/// Kelvin sign and `k`).
pub fn same_claim_name(a: &str, b: &str) -> bool {
    let fold = |s: &str| s.to_lowercase().to_uppercase();
    a == b || fold(a) == fold(b)
}

/// Deepest nesting of arrays and objects a claim value may have. An export wraps the
/// value in four more levels and JSON readers stop at 128 (serde_json, serde_yaml): far
/// below that, every stored row reads back, in an import and in a minted token.
pub const MAX_CLAIM_DEPTH: usize = 32;

/// Whether `v` nests arrays or objects more than `limit` deep (stops looking there, so
/// the recursion is bounded by `limit` whatever the value).
fn nests_deeper_than(v: &Value, limit: usize) -> bool {
    let Some(rest) = limit.checked_sub(1) else {
        return matches!(v, Value::Array(_) | Value::Object(_));
    };
    match v {
        Value::Array(a) => a.iter().any(|c| nests_deeper_than(c, rest)),
        Value::Object(o) => o.values().any(|c| nests_deeper_than(c, rest)),
        _ => false,
    }
}

/// Checks that `row` sets no claim another scope of the same resource sets differently.
pub fn check_claim_conflicts(row: &ScopeClaims, others: &[ScopeClaims]) -> Result<(), StoreError> {
    let mut index = ClaimIndex::default();
    // Not the row's own stored version: noted first, it hid another scope's value (its
    // own scope is never a conflict), so a replaced row could contradict a sibling.
    for other in others
        .iter()
        .filter(|o| o.resource == row.resource && o.scope != row.scope)
    {
        index.note(other);
    }
    index.add(row)
}

/// The claims a resource's scope rows set, to check many rows against each other in
/// time linear in their claims (an import of thousands of rows of one resource runs
/// holding the write lock every replica waits on: no comparison of every pair).
#[derive(Default)]
pub struct ClaimIndex<'a> {
    /// (resource, claim name) -> (value, the scope that set it first).
    seen: std::collections::HashMap<(&'a str, &'a str), (&'a Value, &'a str)>,
}

impl<'a> ClaimIndex<'a> {
    /// Records `row`'s claims without checking them.
    pub fn note(&mut self, row: &'a ScopeClaims) {
        for (name, value) in &row.claims {
            self.seen
                .entry((row.resource.as_str(), name.as_str()))
                .or_insert((value, row.scope.as_str()));
        }
    }

    /// Records `row`'s claims; one another scope of its resource set to another value
    /// is a conflict.
    pub fn add(&mut self, row: &'a ScopeClaims) -> Result<(), StoreError> {
        for (name, value) in &row.claims {
            match self.seen.get(&(row.resource.as_str(), name.as_str())) {
                Some((v, scope)) if *v != value && *scope != row.scope => {
                    return Err(StoreError::Conflict(format!(
                        "claim {name:?} of scope {:?} conflicts with scope {scope:?} of resource {:?}",
                        row.scope, row.resource
                    )));
                }
                Some(_) => {}
                None => self.note_one(row, name, value),
            }
        }
        Ok(())
    }

    fn note_one(&mut self, row: &'a ScopeClaims, name: &'a str, value: &'a Value) {
        self.seen
            .insert((row.resource.as_str(), name), (value, row.scope.as_str()));
    }
}

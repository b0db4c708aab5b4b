//! Revocations (issue #16) and their change log, behind [`RevocationStore`] so a
//! notification layer (several replicas) can wrap the SQL store.
//!
//! Model: `revocations` holds the ACTIVE entries only; every create, lift and lapse
//! appends one row to `revocation_log` under the next value of a single counter
//! (`revocation_state.version`, moved to the clock in milliseconds when that is
//! larger), in the transaction of the change, so every replica reading the database
//! serves the same versions. The log keeps the last [`LOG_RETENTION`] changes; a
//! `since` can be answered with a delta when it is `pruned_through` or names an entry
//! of the log (else it is from a history a restore undid, or too old).
//!
//! Lapse is computed lazily with the time passed in: [`RevocationStore::sweep_lapsed`]
//! removes entries whose `until` has passed (one log row and version bump each). The
//! service calls it from its once-a-second refresh and before answering the feed when
//! an entry is due; the exchange path ignores due entries on its own, so a lapse never
//! waits for the sweep to stop being enforced.

use async_trait::async_trait;
use meshpass_core::SpiffeIdPattern;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::sql::{unavailable, write_error};
use super::{invalid, Actor, AuditRecord, SqlStore, StoreError};

/// Changes kept in the log; a `since` older than that is answered with a snapshot.
pub const LOG_RETENTION: u64 = 10_000;

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Longest `match`, in bytes.
pub const MAX_MATCH_BYTES: usize = 2048;

/// Migration 4 (same statements on SQLite and PostgreSQL). `until_at` 0 means "no end"
/// (the `Any` driver mis-types NULLs on PostgreSQL).
pub(super) const MIGRATION_4: &[&str] = &[
    "CREATE TABLE revocations (id TEXT PRIMARY KEY, target TEXT NOT NULL, match_value TEXT NOT NULL, \
     reason TEXT NOT NULL, until_at BIGINT NOT NULL, created_at BIGINT NOT NULL, created_by TEXT NOT NULL, \
     added_version BIGINT NOT NULL)",
    "CREATE TABLE revocation_log (version BIGINT PRIMARY KEY, revocation_id TEXT NOT NULL, \
     op TEXT NOT NULL, at BIGINT NOT NULL)",
    "CREATE TABLE revocation_state (one BIGINT PRIMARY KEY, version BIGINT NOT NULL, \
     pruned_through BIGINT NOT NULL)",
    "INSERT INTO revocation_state (one, version, pruned_through) VALUES (1, 0, 0)",
];

/// Migration 6: each entry's share of a feed answer, so a create checks the filters'
/// bound with one aggregate instead of reading every entry. Rows from before get an
/// upper bound (a character is at most 4 bytes of UTF-8, or 2 escaped; 128 for the rest).
pub(super) const MIGRATION_6: &[&str] = &[
    "ALTER TABLE revocations ADD COLUMN feed_bytes BIGINT NOT NULL DEFAULT 0",
    "UPDATE revocations SET feed_bytes = 128 + 4 * (LENGTH(match_value) + LENGTH(reason))",
];

/// What a revocation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationTarget {
    /// The subject of exchanges (SPIFFE ID or pattern).
    Subject,
    /// The caller of `/token` (SPIFFE ID or pattern).
    Caller,
    /// One participant token, by its `jti`.
    Jti,
}

impl RevocationTarget {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationTarget::Subject => "subject",
            RevocationTarget::Caller => "caller",
            RevocationTarget::Jti => "jti",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "subject" => Ok(RevocationTarget::Subject),
            "caller" => Ok(RevocationTarget::Caller),
            "jti" => Ok(RevocationTarget::Jti),
            other => Err(StoreError::Corrupt(format!(
                "unknown revocation target {other:?}"
            ))),
        }
    }
}

/// A stored revocation (the management API's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `rv-<uuid>`, assigned by the service.
    pub id: String,
    /// What it applies to.
    pub target: RevocationTarget,
    /// SPIFFE ID or pattern (subject, caller), or the exact `jti`.
    #[serde(rename = "match")]
    pub matches: String,
    /// Why (shown in refusals).
    pub reason: String,
    /// Unix time after which it lapses (None: until lifted).
    pub until: Option<u64>,
    /// Unix time of creation.
    pub created_at: u64,
    /// Who created it (SPIFFE ID).
    pub created_by: String,
}

impl Revocation {
    /// Whether it is in force at `now` (not lapsed).
    pub fn active_at(&self, now: u64) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

/// A revocation to create (the body of `POST /api/v1/revocations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    /// What it applies to.
    pub target: RevocationTarget,
    /// SPIFFE ID or pattern (subject, caller), or the exact `jti`.
    #[serde(rename = "match")]
    pub matches: String,
    /// Why: 1 to 256 characters.
    pub reason: String,
    /// Optional end (unix seconds, in the future).
    #[serde(default)]
    pub until: Option<u64>,
}

/// Validates a new revocation at `now`.
pub fn validate_revocation(r: &NewRevocation, now: u64) -> Result<(), StoreError> {
    match r.target {
        RevocationTarget::Subject | RevocationTarget::Caller => {
            SpiffeIdPattern::parse(&r.matches).map_err(|e| invalid("match", e.to_string()))?;
        }
        RevocationTarget::Jti => {
            // As minted (`uuid` v4, lowercase, hyphenated): a pasted `"…"` or a stray
            // space would be accepted and never match anything.
            let minted = uuid::Uuid::parse_str(&r.matches)
                .is_ok_and(|u| u.hyphenated().to_string() == r.matches);
            if !minted {
                return Err(invalid(
                    "match",
                    "a jti of this service is a lowercase hyphenated UUID, as in the token's jti claim",
                ));
            }
        }
    }
    if r.matches.len() > MAX_MATCH_BYTES || r.matches.chars().any(char::is_control) {
        return Err(invalid("match", "too long or contains a control character"));
    }
    let n = r.reason.chars().count();
    if r.reason.trim().is_empty() || n > MAX_REASON_CHARS {
        return Err(invalid(
            "reason",
            format!("required, 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    if r.reason.chars().any(char::is_control) {
        return Err(invalid("reason", "contains a control character"));
    }
    if let Some(u) = r.until {
        if u <= now {
            return Err(invalid("until", "is not in the future"));
        }
        if i64::try_from(u).is_err() {
            return Err(invalid("until", "too large"));
        }
    }
    Ok(())
}

/// The answer to "what changed since version `since`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationChanges {
    /// The store's version.
    pub version: u64,
    /// A snapshot: `added` is the whole set (and `removed` is empty).
    pub full: bool,
    /// Entries added since `since` (all active entries in a snapshot).
    pub added: Vec<Revocation>,
    /// Ids lifted or lapsed since `since`.
    pub removed: Vec<String>,
}

/// One entry as the filter sees it.
#[derive(Serialize)]
struct FeedEntry<'a> {
    id: &'a str,
    target: RevocationTarget,
    #[serde(rename = "match")]
    matches: &'a str,
    reason: &'a str,
    until: Option<u64>,
}

impl<'a> From<&'a Revocation> for FeedEntry<'a> {
    fn from(r: &'a Revocation) -> Self {
        FeedEntry {
            id: &r.id,
            target: r.target,
            matches: &r.matches,
            reason: &r.reason,
            until: r.until,
        }
    }
}

#[derive(Serialize)]
struct FeedBody<'a> {
    version: u64,
    full: bool,
    added: Vec<FeedEntry<'a>>,
    removed: &'a [String],
}

impl RevocationChanges {
    /// The feed answer's JSON body (`GET /revocations`), as the filters parse it.
    pub fn to_feed_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&FeedBody {
            version: self.version,
            full: self.full,
            added: self.added.iter().map(FeedEntry::from).collect(),
            removed: &self.removed,
        })
    }
}

/// Room a delta answer needs beyond the snapshot: every id the log still holds as
/// removed (`"rv-<uuid>",`, 42 bytes each).
const REMOVED_ROOM_BYTES: usize = LOG_RETENTION as usize * 42;

/// A snapshot's bytes besides its entries (`{"version":…,"full":true,"added":[`…).
const SNAPSHOT_OVERHEAD_BYTES: usize = 96;

/// An entry's share of a feed answer: its JSON and a comma.
fn feed_bytes(r: &Revocation) -> Result<usize, StoreError> {
    serde_json::to_vec(&FeedEntry::from(r))
        .map(|v| v.len() + 1)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Refuses a set of `entries` active revocations of `bytes` (their [`feed_bytes`]) whose
/// feed answers a filter would refuse whole (DESIGN.md "Revocation": more than 20 000
/// entries or 4 MiB): a snapshot, or a delta that also lists every id the log holds
/// as removed.
fn check_feed_bounds(entries: usize, bytes: usize) -> Result<(), StoreError> {
    use meshpass_core::revocation_feed::{MAX_BYTES, MAX_ENTRIES};
    if entries > MAX_ENTRIES {
        return Err(StoreError::Conflict(format!(
            "{entries} active revocations would exceed the filters' bound of {MAX_ENTRIES}; \
             lift some first (or revoke a pattern)"
        )));
    }
    let answer = SNAPSHOT_OVERHEAD_BYTES + bytes;
    let bound = MAX_BYTES - REMOVED_ROOM_BYTES;
    if answer > bound {
        return Err(StoreError::Conflict(format!(
            "the revocation feed would grow to {answer} bytes, past the {bound} the filters \
             can take; lift some first (or revoke a pattern)"
        )));
    }
    Ok(())
}

/// (entries, their [`feed_bytes`]) of the stored set.
async fn feed_size(c: &mut AnyConnection) -> Result<(usize, usize), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(feed_bytes), 0) AS BIGINT) AS bytes FROM revocations",
    )
    .fetch_one(&mut *c)
    .await
    .map_err(unavailable)?;
    let get = |col: &str| -> Result<usize, StoreError> {
        let v: i64 = row
            .try_get(col)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        usize::try_from(v).map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    Ok((get("n")?, get("bytes")?))
}

/// Storage of revocations and their change log.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Creates a revocation (validated at `now`), audited as `revocation.create` in
    /// the same transaction; bumps the version.
    async fn create_revocation(
        &self,
        new: &NewRevocation,
        actor: &Actor,
        now: u64,
    ) -> Result<Revocation, StoreError>;
    /// Lifts a revocation ([`StoreError::NotFound`] when it is not active), audited as
    /// `revocation.lift`; bumps the version.
    async fn lift_revocation(&self, id: &str, actor: &Actor) -> Result<Revocation, StoreError>;
    /// One stored (not yet swept) revocation.
    async fn get_revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError>;
    /// The current version (one small read; the cheap "did anything change" check).
    async fn revocation_version(&self) -> Result<u64, StoreError>;
    /// What changed since `since`: a delta when the log still holds every change after
    /// it, else a snapshot (`since` 0, older than the log, or newer than the version).
    /// `since == version` gives an empty delta.
    async fn revocation_changes(&self, since: u64) -> Result<RevocationChanges, StoreError>;
    /// Removes the entries whose `until` is at or before `now` (one version each);
    /// returns how many.
    async fn sweep_lapsed(&self, now: u64) -> Result<usize, StoreError>;
}

const COLUMNS: &str = "id, target, match_value, reason, until_at, created_at, created_by";

fn decode(row: &AnyRow) -> Result<Revocation, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let target: String = row.try_get("target").map_err(|e| corrupt(&e))?;
    let until: i64 = row.try_get("until_at").map_err(|e| corrupt(&e))?;
    let created_at: i64 = row.try_get("created_at").map_err(|e| corrupt(&e))?;
    Ok(Revocation {
        id: row.try_get("id").map_err(|e| corrupt(&e))?,
        target: RevocationTarget::parse(&target)?,
        matches: row.try_get("match_value").map_err(|e| corrupt(&e))?,
        reason: row.try_get("reason").map_err(|e| corrupt(&e))?,
        until: (until > 0).then(|| u64::try_from(until).unwrap_or(0)),
        created_at: u64::try_from(created_at).map_err(|e| corrupt(&e))?,
        created_by: row.try_get("created_by").map_err(|e| corrupt(&e))?,
    })
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// (version, pruned_through).
async fn state(c: &mut AnyConnection) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query("SELECT version, pruned_through FROM revocation_state WHERE one = 1")
        .fetch_one(&mut *c)
        .await
        .map_err(unavailable)?;
    let v: i64 = row
        .try_get("version")
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let p: i64 = row
        .try_get("pruned_through")
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((to_u64(v)?, to_u64(p)?))
}

/// Appends one change under the next version (the UPDATE takes the row lock on
/// PostgreSQL, so concurrent writers on several replicas get distinct versions) and
/// prunes the log beyond [`LOG_RETENTION`]. The next version is the wall clock in
/// milliseconds when that is larger ([`super::changes::next_version_sql`]): a store
/// restored from a backup, or a standby promoted without the last commits, never
/// hands out again a version a replica or filter already holds.
async fn log_change(
    c: &mut AnyConnection,
    id: &str,
    op: &str,
    now: u64,
) -> Result<u64, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE revocation_state SET version = {} WHERE one = 1 RETURNING version",
        super::changes::next_version_sql("version")
    ))
    .bind(super::changes::wall_ms())
    .fetch_one(&mut *c)
    .await
    .map_err(write_error)?;
    let v: i64 = row
        .try_get("version")
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO revocation_log (version, revocation_id, op, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(v)
    .bind(id)
    .bind(op)
    .bind(to_i64(now))
    .execute(&mut *c)
    .await
    .map_err(write_error)?;
    let version = to_u64(v)?;
    // Versions are not dense (they jump to the clock): prune by rows, 100 at a time.
    let over =
        sqlx::query("SELECT version FROM revocation_log ORDER BY version DESC LIMIT 1 OFFSET $1")
            .bind(to_i64(LOG_RETENTION + 99))
            .fetch_optional(&mut *c)
            .await
            .map_err(write_error)?;
    if over.is_some() {
        let row = sqlx::query(
            "SELECT version FROM revocation_log ORDER BY version DESC LIMIT 1 OFFSET $1",
        )
        .bind(to_i64(LOG_RETENTION))
        .fetch_one(&mut *c)
        .await
        .map_err(write_error)?;
        let floor: i64 = row
            .try_get("version")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("DELETE FROM revocation_log WHERE version <= $1")
            .bind(floor)
            .execute(&mut *c)
            .await
            .map_err(write_error)?;
        sqlx::query("UPDATE revocation_state SET pruned_through = $1 WHERE one = 1")
            .bind(floor)
            .execute(&mut *c)
            .await
            .map_err(write_error)?;
    }
    Ok(version)
}

async fn all_active(c: &mut AnyConnection) -> Result<Vec<Revocation>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM revocations ORDER BY added_version"
    ))
    .fetch_all(&mut *c)
    .await
    .map_err(unavailable)?
    .iter()
    .map(decode)
    .collect()
}

fn audit(actor: &Actor, action: &str, r: &Revocation, created: bool) -> AuditRecord {
    let v = serde_json::to_value(r).ok();
    AuditRecord {
        request_id: actor.request_id.clone(),
        actor: actor.who.clone(),
        action: action.to_string(),
        target: format!("revocations/{}", r.id),
        before: if created { None } else { v.clone() },
        after: if created { v } else { None },
        reason: if created {
            r.reason.clone()
        } else {
            String::new()
        },
    }
}

#[async_trait]
impl RevocationStore for SqlStore {
    async fn create_revocation(
        &self,
        new: &NewRevocation,
        actor: &Actor,
        now: u64,
    ) -> Result<Revocation, StoreError> {
        validate_revocation(new, now)?;
        let r = Revocation {
            id: format!("rv-{}", uuid::Uuid::new_v4()),
            target: new.target,
            matches: new.matches.clone(),
            reason: new.reason.clone(),
            until: new.until,
            created_at: now,
            created_by: actor.who.clone(),
        };
        let mut tx = self.begin_write().await?;
        let done = async {
            // After the version bump: its row lock makes concurrent creates on PostgreSQL
            // check one after the other, each seeing the others' entries.
            let version = log_change(&mut tx, &r.id, "add", now).await?;
            let size = feed_bytes(&r)?;
            let (entries, bytes) = feed_size(&mut tx).await?;
            check_feed_bounds(entries + 1, bytes + size)?;
            sqlx::query(&format!(
                "INSERT INTO revocations ({COLUMNS}, added_version, feed_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(&r.id)
            .bind(r.target.as_str())
            .bind(&r.matches)
            .bind(&r.reason)
            .bind(to_i64(r.until.unwrap_or(0)))
            .bind(to_i64(now))
            .bind(&r.created_by)
            .bind(to_i64(version))
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(write_error)?;
            tx.audit(&audit(actor, "revocation.create", &r, true)).await?;
            // Other replicas hear of it at once (NOTIFY), not at their next version check.
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(r)
        }
        .await;
        tx.finish(done).await
    }

    async fn lift_revocation(&self, id: &str, actor: &Actor) -> Result<Revocation, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = async {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM revocations WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            let now = u64::try_from(super::sql::now_secs()).unwrap_or(0);
            // Lapsed but not swept yet: gone, as `GET` says; the sweep removes it (nothing
            // to lift, nothing to audit).
            let Some(r) = row
                .as_ref()
                .map(decode)
                .transpose()?
                .filter(|r| r.active_at(now))
            else {
                return Err(StoreError::NotFound(format!("revocations/{id}")));
            };
            let gone = sqlx::query("DELETE FROM revocations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(write_error)?;
            if gone.rows_affected() == 0 {
                // Lifted or swept by another replica meanwhile.
                return Err(StoreError::NotFound(format!("revocations/{id}")));
            }
            log_change(&mut tx, id, "remove", now).await?;
            tx.audit(&audit(actor, "revocation.lift", &r, false))
                .await?;
            super::changes::bump(&mut tx, self.backend).await?;
            Ok(r)
        }
        .await;
        tx.finish(done).await
    }

    async fn get_revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM revocations WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(decode).transpose()
    }

    async fn revocation_version(&self) -> Result<u64, StoreError> {
        let mut c = self.pool.acquire().await.map_err(unavailable)?;
        Ok(state(&mut c).await?.0)
    }

    async fn revocation_changes(&self, since: u64) -> Result<RevocationChanges, StoreError> {
        // One snapshot (PostgreSQL REPEATABLE READ; SQLite one WAL read transaction):
        // the version, the log and the entries are one state. Under READ COMMITTED a
        // write that pruned the log between the reads (another replica's, every 100
        // versions) left a delta without the changes just after `since`: a revocation
        // never listed, a lift never removed.
        let mut tx = self.begin_snapshot().await?;
        let (version, pruned_through) = state(&mut tx).await?;
        // A delta only from a version this history passed through: after a restore
        // (or a failover that lost commits) a `since` from the lost stretch names no
        // entry of the log, and what it was told may have been undone.
        let passed = since == pruned_through
            || sqlx::query("SELECT 1 AS one FROM revocation_log WHERE version = $1")
                .bind(to_i64(since))
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?
                .is_some();
        if since == 0 || since > version || since < pruned_through || !passed {
            let active = all_active(&mut tx).await?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(RevocationChanges {
                version,
                full: true,
                added: active,
                removed: Vec::new(),
            });
        }
        // Only what was added since: a delta costs what changed, not the whole set.
        let active: Vec<Revocation> = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM revocations WHERE added_version > $1 AND added_version <= $2 \
             ORDER BY added_version"
        ))
        .bind(to_i64(since))
        .bind(to_i64(version))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?
        .iter()
        .map(decode)
        .collect::<Result<_, _>>()?;
        let rows = sqlx::query(
            "SELECT version, revocation_id, op FROM revocation_log WHERE version > $1 AND version <= $2 ORDER BY version",
        )
        .bind(to_i64(since))
        .bind(to_i64(version))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let mut last: Vec<(String, String)> = Vec::new();
        for row in &rows {
            let id: String = row
                .try_get("revocation_id")
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let op: String = row
                .try_get("op")
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            last.retain(|(i, _)| *i != id);
            last.push((id, op));
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (id, op) in last {
            if op == "add" {
                // Added then removed after `version`: the next delta removes it.
                if let Some(r) = active.iter().find(|r| r.id == id) {
                    added.push(r.clone());
                }
            } else {
                removed.push(id);
            }
        }
        Ok(RevocationChanges {
            version,
            full: false,
            added,
            removed,
        })
    }

    async fn sweep_lapsed(&self, now: u64) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = async {
            let ids: Vec<String> = sqlx::query(
                "SELECT id FROM revocations WHERE until_at > 0 AND until_at <= $1 ORDER BY until_at, id",
            )
            .bind(to_i64(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut n = 0;
            for id in ids {
                let gone = sqlx::query("DELETE FROM revocations WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error)?;
                // Another replica swept it first: its change is logged once, by that one.
                if gone.rows_affected() > 0 {
                    log_change(&mut tx, &id, "remove", now).await?;
                    n += 1;
                }
            }
            Ok(n)
        }
        .await;
        tx.finish(done).await
    }
}

#[cfg(test)]
mod tests;

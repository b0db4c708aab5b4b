//! The change version (migration 5): one counter (increasing; it jumps to the wall
//! clock in milliseconds, see [`next_version_sql`]) bumped in the same transaction as
//! every write to what the token endpoint enforces (mappings, scope claims, and
//! revocations), so replicas can tell that their in-memory views are stale.
//!
//! On PostgreSQL the bump also sends `NOTIFY meshpass_changes, '<version>'`, delivered
//! to every listening replica when (and only if) the transaction commits; replicas that
//! miss it (their listening connection dropped) see the new version with their periodic
//! check ([`crate::change_feed`]). SQLite has one process: it only bumps.

use sqlx::{AnyConnection, Row};

use super::sql::{unavailable, write_error, Backend};
use super::{SqlStore, StoreError};

/// The `LISTEN`/`NOTIFY` channel; the payload is the new version in decimal.
pub const CHANNEL: &str = "meshpass_changes";

/// Migration 5 (both backends): the single-row counter.
pub(super) const MIGRATION: &[&str] = &[
    "CREATE TABLE meshpass_changes (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
    "INSERT INTO meshpass_changes (id, version) VALUES (1, 0)",
];

/// The next value of a version column (`$1` bound to [`wall_ms`]): one more, or the
/// wall clock in milliseconds when that is larger. Versions stay increasing, and a
/// store moved back in time (restored from a backup, or a standby promoted without the
/// last commits) never hands out again a version some replica already applied: the
/// next write jumps past everything handed out before, so every replica sees a change
/// (a bare counter came back to the same number, and replicas holding it kept their
/// views, revocations included, for good).
pub(crate) fn next_version_sql(column: &str) -> String {
    format!("CASE WHEN {column} + 1 > $1 THEN {column} + 1 ELSE $1 END")
}

/// The wall clock in milliseconds since the Unix epoch (0 if before it).
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Bumps the change version inside the caller's transaction and (PostgreSQL) queues the
/// notification for its commit. Returns the new version. Every write path that changes
/// mappings, scope claims or revocations calls this before committing.
pub(crate) async fn bump(conn: &mut AnyConnection, backend: Backend) -> Result<i64, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE meshpass_changes SET version = {} WHERE id = 1 RETURNING version",
        next_version_sql("version")
    ))
    .bind(wall_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(write_error)?;
    let version: i64 = row
        .try_get("version")
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if backend == Backend::Postgres {
        // pg_notify (not NOTIFY) so the payload can be a bound parameter.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(version.to_string())
            .execute(&mut *conn)
            .await
            .map_err(write_error)?;
    }
    Ok(version)
}

impl SqlStore {
    /// The current change version (what [`bump`] last committed).
    pub async fn change_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM meshpass_changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        row.try_get("version")
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The PostgreSQL URL replicas listen on for change notifications (None: SQLite).
    pub fn listen_url(&self) -> Option<&str> {
        (self.backend == Backend::Postgres).then_some(self.url.as_str())
    }
}

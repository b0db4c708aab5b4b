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
use super::{AuditRecord, SqlStore, StoreError};

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

/// The advisory lock key of key maintenance (rotation, retirement): one replica at a
/// time. (Migrations use 7270014101.)
const MAINTENANCE_LOCK: i64 = 7_270_014_102;

impl SqlStore {
    /// Runs `op` while holding the key-maintenance lock (PostgreSQL: a transaction-level
    /// advisory lock, so other replicas' maintenance waits; SQLite: this process's
    /// writer lock), then writes the audit record `op` returns and bumps the change
    /// version in the same transaction, so every replica re-reads the keys at once and
    /// no change is done unaudited. When `op` fails, nothing is written; when the
    /// audit record cannot be, the error says so (Vault's part cannot be undone).
    pub async fn with_maintenance_lock<T, E>(
        &self,
        op: impl std::future::Future<Output = Result<(T, AuditRecord), E>> + Send,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut tx = self.begin_write().await?;
        let done: Result<T, E> = async {
            if self.backend == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MAINTENANCE_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let (out, record) = op.await?;
            tx.audit(&record).await?;
            bump(&mut tx, self.backend).await?;
            Ok(out)
        }
        .await;
        // Rolled back (when `op` or the audit failed) before the writer lock is free.
        tx.finish(done).await
    }
}

impl SqlStore {
    /// Scheduled maintenance: runs `op` only when the key-maintenance lock (and the
    /// write lock of [`SqlStore::begin_write`]) is free
    /// (PostgreSQL `pg_try_advisory_xact_lock`, so replicas never queue behind one
    /// another: whoever holds it does the work, the others skip this tick); `Ok(None)`
    /// when another replica holds it. `op` returns its result and the audit records of
    /// what it changed: none → rolled back, nothing bumped (an idle tick must not drop
    /// every replica's caches); some → recorded, change version bumped, committed in
    /// one transaction.
    pub async fn try_maintenance<T, E>(
        &self,
        op: impl std::future::Future<Output = Result<(T, Vec<AuditRecord>), E>> + Send,
    ) -> Result<Option<T>, E>
    where
        E: From<StoreError>,
    {
        // Not `begin_write`: a tick must not queue behind another replica's writes
        // either, so on PostgreSQL every lock is only tried, in `begin_write`'s order
        // (this process's writer lock first). SQLite has no other replica: it waits.
        let writer = match self.backend {
            Backend::Sqlite => self.write_lock.lock().await,
            Backend::Postgres => match self.write_lock.try_lock() {
                Ok(w) => w,
                Err(_) => return Ok(None),
            },
        };
        let mut tx = self
            .begin_holding(writer)
            .await
            .map_err(|e| E::from(unavailable(e)))?;
        let done: Result<Option<(T, bool)>, E> = async {
            if self.backend == Backend::Postgres {
                let row = sqlx::query(
                    "SELECT pg_try_advisory_xact_lock($1) AND pg_try_advisory_xact_lock($2) AS locked",
                )
                .bind(super::sql::WRITE_LOCK)
                .bind(MAINTENANCE_LOCK)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                let locked: bool = row
                    .try_get("locked")
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if !locked {
                    return Ok(None);
                }
            }
            let (out, audit) = op.await?;
            for r in &audit {
                tx.audit(r).await?;
            }
            if !audit.is_empty() {
                bump(&mut tx, self.backend).await?;
            }
            Ok(Some((out, !audit.is_empty())))
        }
        .await;
        // Ended (committed or rolled back) before the writer lock is free.
        match done {
            Ok(Some((out, true))) => {
                tx.commit().await?;
                Ok(Some(out))
            }
            Ok(Some((out, false))) => {
                tx.rollback().await?;
                Ok(Some(out))
            }
            Ok(None) => {
                tx.rollback().await?;
                Ok(None)
            }
            Err(e) => Err(tx.abort(e).await),
        }
    }
}

//! Key maintenance (rotation, retirement) by one replica at a time, recorded like any
//! write.
//!
//! Maintenance waits on Vault: a read of the key, the change, a read again, seconds
//! each when Vault is slow or unreachable. It holds its own lock meanwhile, which no
//! writer takes (PostgreSQL: a transaction-level advisory lock; SQLite, one process:
//! this process's maintenance lock), and takes the write lock of
//! [`SqlStore::begin_write`] only to record what it did. Holding the write lock across
//! the Vault calls, as it once did, made every revocation wait for a stalled Vault
//! (SQLite) or answer 503 (PostgreSQL), at the moment an operator most needs one.

use std::time::{Duration, Instant};

use sqlx::{Any, Row, Transaction};

use super::changes::bump;
use super::sql::{unavailable, Backend, WRITE_LOCK};
use super::write::{lock_bounded, lock_busy, WriteTx};
use super::{AuditRecord, SqlStore, StoreError};

/// The advisory lock key of key maintenance: one replica at a time. (Migrations use
/// 7270014101, writes 7270014103.)
const MAINTENANCE_LOCK: i64 = 7_270_014_102;

/// Longest the record of a change Vault already made waits for the write lock: the
/// change cannot be undone, so it is worth waiting out a long import for.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// How often the record retries the write lock while another replica holds it.
const RECORD_RETRY: Duration = Duration::from_millis(50);

/// A transaction holding the maintenance lock (PostgreSQL; `None` on SQLite, where
/// this process's maintenance lock is the whole of it).
struct Held<'a> {
    store: &'a SqlStore,
    tx: Option<Transaction<'static, Any>>,
}

impl SqlStore {
    /// Runs `op` while holding the key-maintenance lock (another replica's maintenance
    /// is waited for up to `store.acquire_timeout_secs`, then 503), then writes the
    /// audit record `op` returns and bumps the change version in one write, so every
    /// replica re-reads the keys at once and no change is done unaudited. When `op`
    /// fails, nothing is written; when the record cannot be, the error says so
    /// (Vault's part cannot be undone).
    pub async fn with_maintenance_lock<T, E>(
        &self,
        op: impl std::future::Future<Output = Result<(T, AuditRecord), E>> + Send,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _one = self.maintenance_lock.lock().await;
        let mut held = self.hold().await?;
        if let Some(tx) = held.tx.as_mut() {
            lock_bounded(tx, MAINTENANCE_LOCK, self.lock_wait).await?;
        }
        match op.await {
            Ok((out, record)) => {
                held.record(&[record]).await?;
                Ok(out)
            }
            Err(e) => {
                held.release().await;
                Err(e)
            }
        }
    }

    /// Scheduled maintenance: runs `op` only when the key-maintenance lock is free
    /// (PostgreSQL `pg_try_advisory_xact_lock`, so replicas never queue behind one
    /// another: whoever holds it does the work, the others skip this tick); `Ok(None)`
    /// when another replica holds it. `op` returns its result and the audit records of
    /// what it changed: none → nothing written (an idle tick must not drop every
    /// replica's caches); some → recorded and the change version bumped in one write.
    pub async fn try_maintenance<T, E>(
        &self,
        op: impl std::future::Future<Output = Result<(T, Vec<AuditRecord>), E>> + Send,
    ) -> Result<Option<T>, E>
    where
        E: From<StoreError>,
    {
        // SQLite has no other replica: a manual rotation running here is waited for.
        let _one = match self.backend {
            Backend::Sqlite => self.maintenance_lock.lock().await,
            Backend::Postgres => match self.maintenance_lock.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(None),
            },
        };
        let mut held = self.hold().await?;
        if let Some(tx) = held.tx.as_mut() {
            if !try_lock(tx, MAINTENANCE_LOCK).await? {
                held.release().await;
                return Ok(None);
            }
        }
        match op.await {
            Ok((out, audit)) if audit.is_empty() => {
                held.release().await;
                Ok(Some(out))
            }
            Ok((out, audit)) => {
                held.record(&audit).await?;
                Ok(Some(out))
            }
            Err(e) => {
                held.release().await;
                Err(e)
            }
        }
    }

    /// Begins the transaction that will hold the maintenance lock (PostgreSQL).
    async fn hold(&self) -> Result<Held<'_>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(self.pool.begin().await.map_err(unavailable)?),
        };
        Ok(Held { store: self, tx })
    }
}

impl<'a> Held<'a> {
    /// Records `audit` and bumps the change version, then ends the transaction (and
    /// with it the maintenance lock).
    async fn record(self, audit: &[AuditRecord]) -> Result<(), StoreError> {
        let backend = self.store.backend;
        let mut w = self.into_write().await?;
        let done = async {
            for r in audit {
                w.audit(r).await?;
            }
            bump(&mut w, backend).await.map(|_| ())
        }
        .await;
        w.finish(done).await
    }

    /// The write lock taken on top (PostgreSQL: in the same transaction, so one
    /// connection; SQLite: a write transaction of its own).
    async fn into_write(self) -> Result<WriteTx<'a>, StoreError> {
        let store = self.store;
        let Some(mut tx) = self.tx else {
            let writer = store.write_lock.lock().await;
            return store.begin_holding(writer).await.map_err(unavailable);
        };
        let writer = tokio::time::timeout(RECORD_PATIENCE, store.write_lock.lock())
            .await
            .map_err(|_| lock_busy(RECORD_PATIENCE))?;
        // Tried, not waited for: a lock_timeout would abort the transaction, and with it
        // the maintenance lock, while another replica's write still holds it.
        let deadline = Instant::now() + RECORD_PATIENCE;
        while !try_lock(&mut tx, WRITE_LOCK).await? {
            if Instant::now() >= deadline {
                return Err(lock_busy(RECORD_PATIENCE));
            }
            tokio::time::sleep(RECORD_RETRY).await;
        }
        Ok(WriteTx::new(tx, writer))
    }

    /// Ends the transaction without writing (a failed rollback is only logged: the
    /// lock ends with the session's transaction either way).
    async fn release(self) {
        if let Some(tx) = self.tx {
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "ending the key-maintenance transaction failed");
            }
        }
    }
}

/// `pg_try_advisory_xact_lock(key)` in `tx`.
async fn try_lock(tx: &mut Transaction<'static, Any>, key: i64) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind(key)
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)?;
    row.try_get("locked")
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

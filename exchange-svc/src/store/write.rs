//! Write transactions: one writer at a time, on both backends, and a transaction that
//! ends (committed or rolled back) before the next writer may start.
//!
//! SQLite: this process's writer lock, then `BEGIN IMMEDIATE`, which takes SQLite's
//! write lock at once and waits for it under `busy_timeout` (another process on the
//! file). A deferred `BEGIN` would read first and then *upgrade* to the write lock,
//! and SQLite never calls the busy handler for an upgrade: the write fails at once
//! with "database is locked".
//!
//! PostgreSQL: this process's writer lock too (queued writers wait here, not each on a
//! pooled connection the token endpoint's reads need), then a transaction-level
//! advisory lock every replica takes first. Both waits are bounded by
//! `store.acquire_timeout_secs`: a session holding the lock and gone silent (a replica
//! partitioned from the database) makes writes answer 503, not hang.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::MutexGuard;

use super::sql::{unavailable, write_error, Backend, WRITE_LOCK};
use super::{AuditRecord, SqlStore, StoreError};

/// PostgreSQL's `lock_not_available`: `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// A write transaction holding this process's writer lock until it has committed or
/// rolled back. End it with [`WriteTx::commit`], [`WriteTx::rollback`] or
/// [`WriteTx::finish`]: dropped instead, sqlx only queues the rollback while the writer
/// lock is released at once (SQLite's `BEGIN IMMEDIATE` then makes the next writer
/// wait for it under `busy_timeout`, but nothing should rely on that).
pub(crate) struct WriteTx<'a> {
    tx: Transaction<'static, Any>,
    writer: MutexGuard<'a, ()>,
    /// Audit events inserted in this transaction: logged once it commits (a dry run
    /// or a refused write rolls them back, and must not log them either).
    audited: Vec<AuditRecord>,
}

impl Deref for WriteTx<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl<'a> WriteTx<'a> {
    /// A write transaction of `tx`, which already holds the write lock, and `writer`.
    pub(super) fn new(tx: Transaction<'static, Any>, writer: MutexGuard<'a, ()>) -> Self {
        WriteTx {
            tx,
            writer,
            audited: Vec::new(),
        }
    }

    /// Records `r` in the audit log table; its `meshpass::audit` log line is written
    /// when (and only if) the transaction commits.
    pub(crate) async fn audit(&mut self, r: &AuditRecord) -> Result<(), StoreError> {
        super::audit::insert_audit(&mut self.tx, r).await?;
        self.audited.push(r.clone());
        Ok(())
    }

    /// Commits, then releases the writer lock and logs the events it recorded.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        let WriteTx {
            tx,
            writer,
            audited,
        } = self;
        let r = tx.commit().await.map_err(write_error);
        drop(writer);
        if r.is_ok() {
            audited.iter().for_each(super::audit::log_audit);
        }
        r
    }

    /// Rolls back, then releases the writer lock.
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        let WriteTx { tx, writer, .. } = self;
        let r = tx.rollback().await.map_err(unavailable);
        drop(writer);
        r
    }

    /// Commits when `outcome` is `Ok`, rolls back when it is an error (returned as it
    /// was: a failed rollback is only logged, and sqlx queues another as it drops the
    /// transaction).
    pub(crate) async fn finish<T, E: From<StoreError>>(
        self,
        outcome: Result<T, E>,
    ) -> Result<T, E> {
        match outcome {
            Ok(v) => {
                self.commit().await?;
                Ok(v)
            }
            Err(e) => Err(self.abort(e).await),
        }
    }

    /// Rolls back a write refused with `e`, then releases the writer lock; returns `e`.
    pub(crate) async fn abort<E>(self, e: E) -> E {
        if let Err(r) = self.rollback().await {
            tracing::warn!(error = %r, "rolling back a refused write failed");
        }
        e
    }
}

impl SqlStore {
    /// Begins a write transaction, one at a time on either backend (see the module
    /// doc). One writer at a time makes a check-then-write (scope claims against their
    /// siblings, the revocation bound) atomic, and audit ids commit in the order they
    /// are taken, so `GET /audit?after=ID` never skips an event still in flight.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        if self.backend == Backend::Sqlite {
            let writer = self.write_lock.lock().await;
            return self.begin_holding(writer).await.map_err(unavailable);
        }
        let wait = self.lock_wait;
        let writer = tokio::time::timeout(wait, self.write_lock.lock())
            .await
            .map_err(|_| lock_busy(wait))?;
        let mut w = self.begin_holding(writer).await.map_err(unavailable)?;
        match lock_bounded(&mut w, WRITE_LOCK, wait).await {
            Ok(()) => Ok(w),
            Err(e) => Err(w.abort(e).await),
        }
    }

    /// Begins a transaction holding `writer` (this process's writer lock): on SQLite
    /// `BEGIN IMMEDIATE`, so it holds SQLite's write lock from the start.
    pub(crate) async fn begin_holding<'a>(
        &self,
        writer: MutexGuard<'a, ()>,
    ) -> Result<WriteTx<'a>, sqlx::Error> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            writer,
            audited: Vec::new(),
        })
    }
}

/// Sets the transaction's `lock_timeout` to `wait` and takes the advisory lock `key`;
/// a wait past `wait` is [`StoreError::Unavailable`].
pub(super) async fn lock_bounded(
    c: &mut AnyConnection,
    key: i64,
    wait: Duration,
) -> Result<(), StoreError> {
    // For the whole transaction: no lock it waits for (the advisory lock, a row another
    // session holds) is waited for without bound.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", wait.as_millis().max(1)))
        .execute(&mut *c)
        .await
        .map_err(unavailable)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *c)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                lock_busy(wait)
            }
            _ => unavailable(e),
        })?;
    Ok(())
}

/// The write lock stayed held past `store.acquire_timeout_secs` (→ 503 + Retry-After).
pub(super) fn lock_busy(wait: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "the write lock stayed held by another writer for store.acquire_timeout_secs ({} s)",
        wait.as_secs()
    ))
}

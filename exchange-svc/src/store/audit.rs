//! The audit log: every change (written in the change's own transaction) and refused
//! exchanges, in the `audit_log` table and the log (target `meshpass::audit`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::Row;

use super::sql::{now_secs, unavailable, write_error};
use super::{SqlStore, StoreError};

/// One audit event to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The request id.
    pub request_id: String,
    /// Who: the caller's SPIFFE ID (for refused exchanges, the subject and caller).
    pub actor: String,
    /// What: `mapping.create`, `scope.delete`, `keys.rotate`, `exchange.refused`...
    pub action: String,
    /// On what: `mappings/NAME`, `scopes/RESOURCE/SCOPE`, `keys/KEY`...
    pub target: String,
    /// The state before (None: did not exist).
    pub before: Option<Value>,
    /// The state after (None: deleted).
    pub after: Option<Value>,
    /// Why (refusals), or empty.
    #[serde(default)]
    pub reason: String,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Monotonic id (the cursor of `/api/v1/audit?after=`).
    pub id: i64,
    /// Unix time of the event.
    pub at: u64,
    /// The event.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Which audit events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events after this id, oldest first; None: the newest `limit`, oldest first.
    pub after: Option<i64>,
    /// Most events returned.
    pub limit: u32,
    /// Only this action.
    pub action: Option<String>,
    /// Only targets starting with this.
    pub target_prefix: Option<String>,
}

pub(super) async fn insert_audit(c: &mut AnyConnection, r: &AuditRecord) -> Result<(), StoreError> {
    let text = |v: &Option<Value>| v.as_ref().map(Value::to_string).unwrap_or_default();
    sqlx::query(
        "INSERT INTO audit_log (at, request_id, actor, action, target, before_json, after_json, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(now_secs())
    .bind(&r.request_id)
    .bind(&r.actor)
    .bind(&r.action)
    .bind(&r.target)
    .bind(text(&r.before))
    .bind(text(&r.after))
    .bind(&r.reason)
    .execute(&mut *c)
    .await
    .map_err(write_error)?;
    Ok(())
}

/// The `meshpass::audit` log line of an event its transaction committed (never a
/// token: none is ever part of one). Called by [`super::write::WriteTx::commit`].
pub(super) fn log_audit(r: &AuditRecord) {
    let text = |v: &Option<Value>| v.as_ref().map(Value::to_string).unwrap_or_default();
    tracing::info!(
        target: "meshpass::audit",
        request_id = %r.request_id,
        actor = %r.actor,
        action = %r.action,
        target_ref = %r.target,
        before = %text(&r.before),
        after = %text(&r.after),
        reason = %r.reason,
        "audit"
    );
}

impl SqlStore {
    /// Records one audit event on its own (refused exchanges, key operations).
    pub async fn record_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        // Serialised with every other write: on SQLite a commit landing between another
        // transaction's read and its write fails that transaction (SQLITE_BUSY_SNAPSHOT);
        // on PostgreSQL ids must commit in order for followers of the log.
        let mut tx = self.begin_write().await?;
        let inserted = tx.audit(r).await;
        tx.finish(inserted).await
    }

    /// Reads audit events, oldest first.
    pub async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut sql = String::from(
            "SELECT id, at, request_id, actor, action, target, before_json, after_json, reason FROM audit_log WHERE id > $1",
        );
        let mut n = 1;
        if q.action.is_some() {
            n += 1;
            sql.push_str(&format!(" AND action = ${n}"));
        }
        if q.target_prefix.is_some() {
            n += 1;
            // substr, not LIKE: a prefix with % or _ means itself.
            sql.push_str(&format!(" AND substr(target, 1, length(${n})) = ${n}"));
        }
        let newest = q.after.is_none();
        sql.push_str(if newest {
            " ORDER BY id DESC"
        } else {
            " ORDER BY id"
        });
        sql.push_str(&format!(" LIMIT {}", q.limit.clamp(1, 1000)));
        let mut query = sqlx::query(&sql).bind(q.after.unwrap_or(0));
        if let Some(a) = &q.action {
            query = query.bind(a);
        }
        if let Some(t) = &q.target_prefix {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        let mut out = rows
            .iter()
            .map(decode_audit)
            .collect::<Result<Vec<_>, _>>()?;
        if newest {
            out.reverse();
        }
        Ok(out)
    }
}

fn decode_audit(r: &sqlx::any::AnyRow) -> Result<AuditEvent, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let json = |col: &str| -> Result<Option<Value>, StoreError> {
        let s: String = r.try_get(col).map_err(|e| corrupt(&e))?;
        if s.is_empty() {
            Ok(None)
        } else {
            serde_json::from_str(&s).map(Some).map_err(|e| corrupt(&e))
        }
    };
    let at: i64 = r.try_get("at").map_err(|e| corrupt(&e))?;
    Ok(AuditEvent {
        id: r.try_get("id").map_err(|e| corrupt(&e))?,
        at: u64::try_from(at).unwrap_or(0),
        record: AuditRecord {
            request_id: r.try_get("request_id").map_err(|e| corrupt(&e))?,
            actor: r.try_get("actor").map_err(|e| corrupt(&e))?,
            action: r.try_get("action").map_err(|e| corrupt(&e))?,
            target: r.try_get("target").map_err(|e| corrupt(&e))?,
            before: json("before_json")?,
            after: json("after_json")?,
            reason: r.try_get("reason").map_err(|e| corrupt(&e))?,
        },
    })
}

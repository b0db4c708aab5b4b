//! `/api/v1/audit`, and the rate-limited audit of refused exchanges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

use super::config::{ManagementConfig, Role};
use super::error::MgmtError;
use super::input::{parse_query, Limit};
use super::MgmtState;
use crate::store::{AuditEvent, AuditQuery, AuditRecord, SqlStore, StoreError};

/// `?after=&limit=&action=&target=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<i64>,
    limit: Option<Limit>,
    action: Option<String>,
    target: Option<String>,
}

/// A page of audit events.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditPage {
    /// Events, oldest first.
    pub items: Vec<AuditEvent>,
    /// The id to pass as `after` to follow the log.
    pub last_id: Option<i64>,
}

/// `GET /api/v1/audit`.
pub async fn list(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let q: ListQuery = parse_query(query.as_deref())?;
    // Actions and targets are printable (`printable` escapes what a refusal carries); a
    // control character matches nothing, and PostgreSQL refuses a NUL in text outright
    // (answered 404 "not found" before).
    for (field, v) in [("action", &q.action), ("target", &q.target)] {
        if v.as_deref()
            .is_some_and(|v| v.chars().any(char::is_control))
        {
            return Err(MgmtError::BadRequest(format!(
                "{field} must not hold control characters"
            )));
        }
    }
    let items = st
        .store
        .audit_events(&AuditQuery {
            after: q.after,
            limit: q.limit.unwrap_or(Limit::DEFAULT).get(),
            action: q.action,
            target_prefix: q.target,
        })
        .await?;
    let last_id = items.last().map(|e| e.id).or(q.after);
    Ok(Json(AuditPage { items, last_id }))
}

/// Refused-exchange events queued for the audit log.
const QUEUE: usize = 256;

/// Waits before writing a refusal again after the store was unavailable (about 15 s
/// in all, beside the store's own acquire timeout per try; the queue takes new
/// refusals meanwhile, and drops them only when full).
const RETRY_DELAYS: &[std::time::Duration] = &[
    std::time::Duration::from_millis(250),
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(8),
];

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Writes refused exchanges to the audit log, at most `refusal_audit_per_second`
/// (burst `refusal_audit_burst`) so an attack cannot flood the database; the rest are
/// counted in [`RefusalAudit::dropped`] (`meshpass_refusal_audit_dropped_total`). Never blocks the exchange: events go through a
/// bounded queue to a background writer.
pub struct RefusalAudit {
    tx: tokio::sync::mpsc::Sender<AuditRecord>,
    bucket: Mutex<Bucket>,
    rate: f64,
    burst: f64,
    /// Shared with the background writer, which counts the writes the store failed.
    dropped: Arc<AtomicU64>,
    /// Events queued and not yet written or given up (see [`RefusalAudit::flush`]).
    pending: Arc<Pending>,
}

/// Queued events, and a wake-up for [`RefusalAudit::flush`] when none are left.
#[derive(Default)]
struct Pending {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Pending {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for RefusalAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalAudit")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl RefusalAudit {
    /// Starts the background writer into `store` (inside a tokio runtime).
    pub fn start(store: Arc<SqlStore>, cfg: &ManagementConfig) -> Arc<RefusalAudit> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AuditRecord>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = Arc::clone(&dropped);
        let pending = Arc::new(Pending::default());
        let written = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let mut tries = RETRY_DELAYS.iter();
                loop {
                    match store.record_audit(&r).await {
                        Ok(()) => break,
                        // Waiting behind a long write (an import) past the store's
                        // acquire timeout, or a short outage: tried again, in order.
                        Err(StoreError::Unavailable(e)) if tries.len() > 0 => {
                            tracing::debug!(error = %e, "refused exchange's audit write retried");
                            if let Some(d) = tries.next() {
                                tokio::time::sleep(*d).await;
                            }
                        }
                        Err(e) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "refused exchange not written to the audit log");
                            break;
                        }
                    }
                }
                written.done();
            }
        });
        let burst = f64::from(cfg.refusal_audit_burst);
        Arc::new(RefusalAudit {
            tx,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
            rate: cfg.refusal_audit_per_second,
            burst,
            dropped,
            pending,
        })
    }

    fn admit(&self) -> bool {
        let mut b = match self.bucket.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Audits one refused exchange: `subject` (SPIFFE ID, or empty when the token was
    /// not valid or not read yet), `caller` (who called `/token`: its SPIFFE ID, the
    /// peer it could not be identified from, or empty), `resource` (asked for, or
    /// empty), `reason` (the public error description: never the token). The actor is
    /// `SUBJECT via CALLER`, or whichever of the two is known. Whether it was recorded.
    pub fn refused(&self, subject: &str, caller: &str, resource: &str, reason: &str) -> bool {
        // Counted before it is sent: the writer may be done with it before try_send
        // returns.
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        let queued = self.admit()
            && self
                .tx
                .try_send(AuditRecord {
                    request_id: String::new(),
                    actor: printable(&match (subject, caller) {
                        ("", "") => "unidentified caller".to_string(),
                        (who, "") | ("", who) => who.to_string(),
                        (subject, caller) => format!("{subject} via {caller}"),
                    }),
                    action: "exchange.refused".into(),
                    target: printable(&format!("resources/{resource}")),
                    before: None,
                    after: None,
                    reason: printable(reason),
                })
                .is_ok();
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.pending.done();
        }
        queued
    }

    /// Waits until every queued refusal is written (or given up), at most `within`;
    /// whether none is left. At shutdown, before the store closes: a refusal answered
    /// just before SIGTERM is audited like any other.
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.pending.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read: a last write in between still wakes.
            idle.as_mut().enable();
            if self.pending.count.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.pending.count.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Refusals not written (rate limit, full queue, or the store failed the write).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// `meshpass_refusal_audit_dropped_total`, for a Prometheus registry.
    pub fn collector(self: &Arc<Self>) -> Result<Box<dyn Collector>, prometheus::Error> {
        Ok(Box::new(DroppedCollector {
            audit: Arc::clone(self),
            counter: crate::metrics::Mirrored::new(prometheus::IntCounter::new(
                "meshpass_refusal_audit_dropped_total",
                "Refused exchanges not written to the audit log (over refusal_audit_per_second, the writer's queue full, or the store failed the write after retries).",
            )?),
        }))
    }
}

/// Exports [`RefusalAudit::dropped`] (read at scrape time).
struct DroppedCollector {
    audit: Arc<RefusalAudit>,
    counter: crate::metrics::Mirrored,
}

impl Collector for DroppedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.counter.collect_at(self.audit.dropped())
    }
}

/// `s` with control characters written as `\u{..}`: a refusal quotes what a client
/// sent, which must neither forge lines in a log reader nor be refused by the store
/// (PostgreSQL holds no NUL in text) and so lost.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::StoreConfig;

    async fn sqlite(dir: &std::path::Path) -> Arc<SqlStore> {
        let cfg = StoreConfig {
            url: format!("sqlite://{}", dir.join("audit.db").display()),
            ..StoreConfig::default()
        };
        let store = SqlStore::connect(&cfg, "participant").unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    }

    #[tokio::test]
    async fn a_refusal_quoting_control_characters_is_written_with_them_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path()).await;
        let audit = RefusalAudit::start(Arc::clone(&store), &ManagementConfig::default());
        assert!(audit.refused("", "", "pay\0ments", "invalid_target: pay\nments"));
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let all = AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        };
        let events = loop {
            let events = store.audit_events(&all).await.unwrap();
            if !events.is_empty() {
                break events;
            }
            assert!(Instant::now() < deadline, "never written");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let e = &events[0].record;
        assert_eq!(e.target, "resources/pay\\u{0}ments");
        assert_eq!(e.reason, "invalid_target: pay\\u{a}ments");
    }

    #[tokio::test]
    async fn a_refusal_the_store_could_not_write_is_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path()).await;
        let audit = RefusalAudit::start(Arc::clone(&store), &ManagementConfig::default());
        store.close().await;
        // Admitted and queued; the writer then fails to store it.
        assert!(audit.refused("", "", "r", "refused"));
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while audit.dropped() == 0 {
            assert!(
                Instant::now() < deadline,
                "a lost refusal was never counted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(audit.dropped(), 1);
    }
}

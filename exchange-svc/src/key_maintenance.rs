//! Key maintenance by one replica at a time: the management API's rotation and
//! retirement run under the store's maintenance lock (a PostgreSQL advisory lock), so
//! two replicas never rotate or retire concurrently on one decision, and the change
//! version bumped with them makes every replica re-read the transit key at once
//! (`server::start_change_feed`): all replicas publish the same JWKS within
//! milliseconds, not after their `vault.key_refresh_interval`, and count the new
//! version's publish lead from (nearly) the same moment.

use std::sync::Arc;

use crate::mgmt::{check_retire, KeyAdmin, KeyStatus, MgmtError};
use crate::store::{Actor, AuditRecord, SqlStore};

/// The key operations of the management API: each holds the maintenance lock, reads
/// the state it decides on under it, and is audited in the lock's transaction.
pub struct LockedKeyAdmin {
    inner: Arc<dyn KeyAdmin>,
    store: Arc<SqlStore>,
}

impl LockedKeyAdmin {
    /// Wraps `inner`; `store` is the shared database.
    pub fn new(inner: Arc<dyn KeyAdmin>, store: Arc<SqlStore>) -> Self {
        LockedKeyAdmin { inner, store }
    }

    /// The key's versions (no lock).
    pub async fn status(&self) -> Result<KeyStatus, MgmtError> {
        self.inner.status().await
    }

    /// Rotates the key, audited as `keys.rotate` by `actor`.
    pub async fn rotate(&self, actor: &Actor) -> Result<KeyStatus, MgmtError> {
        self.store
            .with_maintenance_lock(async {
                // Read from Vault under the lock: another replica may have changed the
                // key a moment ago, and its notification may not have landed here yet.
                let before = self.inner.fresh_status().await?;
                let call = self.inner.rotate().await;
                let settled = settle("keys.rotate", call, &before, rotated, || {
                    self.inner.fresh_status()
                })
                .await;
                outcome(actor, "keys.rotate", &before, settled)
            })
            .await?
    }

    /// Stops publishing versions below `below` when no token they signed can still be
    /// accepted ([`check_retire`] on the state read from Vault under the lock, tokens
    /// accepted for `max_lifetime_secs`, at `now`), audited as `keys.retire` by `actor`.
    pub async fn retire_below(
        &self,
        below: u64,
        max_lifetime_secs: u64,
        now: u64,
        actor: &Actor,
    ) -> Result<KeyStatus, MgmtError> {
        self.store
            .with_maintenance_lock(async {
                // A stale view could lower Vault's min_decryption_version again and
                // publish a retired version.
                let before = self.inner.fresh_status().await?;
                check_retire(&before, below, max_lifetime_secs, now)?;
                let call = self.inner.retire_below(below).await;
                let settled = settle("keys.retire", call, &before, retired(below), || {
                    self.inner.fresh_status()
                })
                .await;
                outcome(actor, "keys.retire", &before, settled)
            })
            .await?
    }
}

/// What a key change asked of Vault came to.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Vault made the change: the key read again after it (`None` when that read
    /// failed), and what the audit record should add about how it was learnt.
    Done {
        /// The key after the change.
        after: Option<KeyStatus>,
        /// Empty when Vault answered and the key was read again.
        note: String,
    },
    /// Vault did not make it, as far as the key read again shows.
    Failed(MgmtError),
}

/// Judges a change Vault was asked for (`call`) by the key read again (`reread`):
/// an answer lost on its way back (a reset, a proxy's timeout) may hide a change Vault
/// made, which must be audited and announced all the same, and not made twice by a
/// caller retrying a 503. `shows(before, after)` says whether `after` shows it. When
/// the call failed and the read after it fails too (the same network trouble), the key
/// is read again twice more (after 250 and 500 ms) before the change counts as not made.
pub(crate) async fn settle<F, Fut>(
    action: &str,
    call: Result<(), MgmtError>,
    before: &KeyStatus,
    shows: impl Fn(&KeyStatus, &KeyStatus) -> bool,
    reread: F,
) -> Settled
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<KeyStatus, MgmtError>>,
{
    let mut after = reread().await;
    if call.is_err() {
        for wait_ms in [250, 500] {
            if after.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            after = reread().await;
        }
    }
    match (call, after) {
        (Ok(()), Ok(after)) => Settled::Done {
            after: Some(after),
            note: String::new(),
        },
        (Ok(()), Err(e)) => Settled::Done {
            after: None,
            note: format!("{action} done in Vault, but reading the key again failed: {e}"),
        },
        (Err(e), Ok(after)) if shows(before, &after) => {
            tracing::warn!(action, error = %e, "vault's answer was lost, but the key shows the change made");
            Settled::Done {
                after: Some(after),
                note: format!("Vault's answer was lost ({e}); the key read again shows it done"),
            }
        }
        (Err(e), _) => Settled::Failed(e),
    }
}

/// Whether `after` holds a version newer than any of `before`.
pub(crate) fn rotated(before: &KeyStatus, after: &KeyStatus) -> bool {
    let newest = |s: &KeyStatus| s.versions.iter().map(|v| v.version).max();
    newest(after) > newest(before)
}

/// Whether versions below `below` were published before and are not after.
pub(crate) fn retired(below: u64) -> impl Fn(&KeyStatus, &KeyStatus) -> bool {
    move |before, after| {
        before.versions.iter().any(|v| v.version < below)
            && after.versions.iter().all(|v| v.version >= below)
    }
}

/// The API's answer and audit record for a settled change: a change Vault made is
/// audited even when the key could not be read after it (the call then fails, saying
/// so); one it did not make is not.
fn outcome(
    actor: &Actor,
    action: &str,
    before: &KeyStatus,
    settled: Settled,
) -> Result<(Result<KeyStatus, MgmtError>, AuditRecord), MgmtError> {
    match settled {
        Settled::Done {
            after: Some(after),
            note,
        } => {
            let r = record(actor, action, before, Some(&after), note);
            Ok((Ok(after), r))
        }
        Settled::Done { after: None, note } => {
            let r = record(actor, action, before, None, note.clone());
            Ok((Err(MgmtError::Internal(note)), r))
        }
        Settled::Failed(e) => Err(e),
    }
}

/// The audit record of a key change.
pub(crate) fn record(
    actor: &Actor,
    action: &str,
    before: &KeyStatus,
    after: Option<&KeyStatus>,
    reason: String,
) -> AuditRecord {
    AuditRecord {
        request_id: actor.request_id.clone(),
        actor: actor.who.clone(),
        action: action.into(),
        target: format!("keys/{}", before.key),
        before: serde_json::to_value(before).ok(),
        after: after.and_then(|a| serde_json::to_value(a).ok()),
        reason,
    }
}

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
                self.inner.rotate().await?;
                Ok::<_, MgmtError>(self.done(actor, "keys.rotate", &before).await)
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
                self.inner.retire_below(below).await?;
                Ok::<_, MgmtError>(self.done(actor, "keys.retire", &before).await)
            })
            .await?
    }

    /// After Vault accepted a change: the state read again, and the audit record, which
    /// is written even when that read fails (the change is done in Vault; the call then
    /// fails, saying so).
    async fn done(
        &self,
        actor: &Actor,
        action: &str,
        before: &KeyStatus,
    ) -> (Result<KeyStatus, MgmtError>, AuditRecord) {
        match self.inner.fresh_status().await {
            Ok(after) => {
                let r = record(actor, action, before, Some(&after), String::new());
                (Ok(after), r)
            }
            Err(e) => {
                let why = format!("{action} done in Vault, but reading the key again failed: {e}");
                let r = record(actor, action, before, None, why.clone());
                (Err(MgmtError::Internal(why)), r)
            }
        }
    }
}

fn record(
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

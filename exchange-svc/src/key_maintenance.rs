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
                let before = self.inner.status().await?;
                let after = self.inner.rotate().await?;
                let record = record(actor, "keys.rotate", &before, &after);
                Ok((after, record))
            })
            .await
    }

    /// Stops publishing versions below `below` when no token they signed can still be
    /// accepted ([`check_retire`] on the state read under the lock, tokens accepted for
    /// `max_lifetime_secs`, at `now`), audited as `keys.retire` by `actor`.
    pub async fn retire_below(
        &self,
        below: u64,
        max_lifetime_secs: u64,
        now: u64,
        actor: &Actor,
    ) -> Result<KeyStatus, MgmtError> {
        self.store
            .with_maintenance_lock(async {
                let before = self.inner.status().await?;
                check_retire(&before, below, max_lifetime_secs, now)?;
                let after = self.inner.retire_below(below).await?;
                let record = record(actor, "keys.retire", &before, &after);
                Ok((after, record))
            })
            .await
    }
}

fn record(actor: &Actor, action: &str, before: &KeyStatus, after: &KeyStatus) -> AuditRecord {
    AuditRecord {
        request_id: actor.request_id.clone(),
        actor: actor.who.clone(),
        action: action.into(),
        target: format!("keys/{}", after.key),
        before: serde_json::to_value(before).ok(),
        after: serde_json::to_value(after).ok(),
        reason: String::new(),
    }
}

//! Key maintenance by one replica at a time: the management API's rotation and
//! retirement run under the store's maintenance lock (a PostgreSQL advisory lock), so
//! two replicas never rotate or retire concurrently on one decision, and the change
//! version bumped with them makes every replica re-read the transit key at once
//! (`server::start_change_feed`): all replicas publish the same JWKS within
//! milliseconds, not after their `vault.key_refresh_interval`, and count the new
//! version's publish lead from (nearly) the same moment.

use std::sync::Arc;

use async_trait::async_trait;

use crate::mgmt::{KeyAdmin, KeyStatus, MgmtError};
use crate::store::SqlStore;

/// A [`KeyAdmin`] whose changes hold the maintenance lock.
pub struct LockedKeyAdmin {
    inner: Arc<dyn KeyAdmin>,
    store: Arc<SqlStore>,
}

impl LockedKeyAdmin {
    /// Wraps `inner`; `store` is the shared database.
    pub fn new(inner: Arc<dyn KeyAdmin>, store: Arc<SqlStore>) -> Self {
        LockedKeyAdmin { inner, store }
    }
}

#[async_trait]
impl KeyAdmin for LockedKeyAdmin {
    async fn status(&self) -> Result<KeyStatus, MgmtError> {
        self.inner.status().await
    }

    async fn rotate(&self) -> Result<KeyStatus, MgmtError> {
        self.store.with_maintenance_lock(self.inner.rotate()).await
    }

    async fn retire_below(&self, below: u64) -> Result<KeyStatus, MgmtError> {
        self.store
            .with_maintenance_lock(self.inner.retire_below(below))
            .await
    }
}

//! Key operations of the management API on the transit key: status, rotation (the new
//! version is published at once and signs after the publish lead), and retirement of
//! old versions (`min_decryption_version`; the API decides when that is safe).

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::transit::TransitSigner;
use crate::mgmt::{KeyAdmin, KeyStatus, KeyVersionStatus, MgmtError};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_ceil(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

fn vault_error(e: super::VaultError) -> MgmtError {
    if e.is_transient() {
        tracing::warn!(error = %e, "management: vault unavailable");
        MgmtError::Unavailable("Vault")
    } else {
        MgmtError::Internal(format!("vault refused the key operation: {e}"))
    }
}

#[async_trait]
impl KeyAdmin for TransitSigner {
    async fn status(&self) -> Result<KeyStatus, MgmtError> {
        let inner = &self.inner;
        let set = inner
            .keyset()
            .ok_or(MgmtError::Unavailable("the transit key"))?;
        let lead = inner.cfg.publish_lead;
        let signing = inner.current(SystemTime::now()).ok().map(|k| k.version);
        let versions = set
            .versions
            .iter()
            .map(|(v, ver)| KeyVersionStatus {
                version: *v,
                kid: format!("{}:v{v}", inner.cfg.key_name),
                published: true,
                signing: Some(*v) == signing,
                published_since: unix(ver.published_at),
                signs_from: unix(ver.published_at + lead),
            })
            .collect();
        Ok(KeyStatus {
            key: inner.cfg.key_name.clone(),
            alg: set.alg.as_str().to_string(),
            publish_lead_secs: lead.as_secs(),
            refresh_interval_secs: inner.cfg.key_refresh_interval.as_secs(),
            signing_version: signing,
            versions,
        })
    }

    async fn rotate(&self) -> Result<KeyStatus, MgmtError> {
        let inner = &self.inner;
        let path = format!(
            "{}/keys/{}/rotate",
            inner.cfg.transit_mount, inner.cfg.key_name
        );
        inner
            .client
            .call(Method::POST, &path, None, true)
            .await
            .map_err(vault_error)?;
        inner.load_keys().await.map_err(vault_error)?;
        self.status().await
    }

    async fn retire_below(&self, below: u64) -> Result<KeyStatus, MgmtError> {
        let inner = &self.inner;
        let path = format!(
            "{}/keys/{}/config",
            inner.cfg.transit_mount, inner.cfg.key_name
        );
        inner
            .client
            .call(
                Method::POST,
                &path,
                Some(&json!({ "min_decryption_version": below })),
                true,
            )
            .await
            .map_err(vault_error)?;
        inner.load_keys().await.map_err(vault_error)?;
        self.status().await
    }
}

impl TransitSigner {
    /// The Vault creation time of the newest loaded version.
    pub fn newest_created(&self) -> Option<SystemTime> {
        self.inner
            .keyset()
            .and_then(|s| s.versions.values().next_back().map(|v| v.created))
    }

    /// The key as Vault holds it now: re-reads the key (so this replica's own view is
    /// fresh too) and dates every version by its `creation_time` in Vault, the same on
    /// every replica, where [`KeyAdmin::status`] uses when this process first saw it.
    /// Scheduled maintenance decides on this view, so whichever replica holds the lock
    /// decides the same.
    pub async fn vault_status(&self, now: SystemTime) -> Result<KeyStatus, MgmtError> {
        let inner = &self.inner;
        inner.load_keys().await.map_err(vault_error)?;
        let set = inner
            .keyset()
            .ok_or(MgmtError::Unavailable("the transit key"))?;
        let lead = inner.cfg.publish_lead;
        let signing = set
            .versions
            .iter()
            .rev()
            .find(|(_, v)| v.created + lead <= now)
            .map(|(n, _)| *n);
        let versions = set
            .versions
            .iter()
            .map(|(v, ver)| KeyVersionStatus {
                version: *v,
                kid: format!("{}:v{v}", inner.cfg.key_name),
                published: true,
                signing: Some(*v) == signing,
                published_since: unix(ver.created),
                // Rounded up: the retirement rule must never count from too early.
                signs_from: unix_ceil(ver.created + lead),
            })
            .collect();
        Ok(KeyStatus {
            key: inner.cfg.key_name.clone(),
            alg: set.alg.as_str().to_string(),
            publish_lead_secs: lead.as_secs(),
            refresh_interval_secs: inner.cfg.key_refresh_interval.as_millis().div_ceil(1000) as u64,
            signing_version: signing,
            versions,
        })
    }
}

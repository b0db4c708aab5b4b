//! Key operations of the management API on the transit key: status, rotation (the new
//! version is published at once and signs after the publish lead), and retirement of
//! old versions (`min_decryption_version`; the API decides when that is safe).

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::transit::{Inner, KeySet, TransitSigner, Version};
use crate::mgmt::{Dependency, KeyAdmin, KeyStatus, KeyVersionStatus, MgmtError};

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
    match e {
        e if e.is_transient() => {
            tracing::warn!(error = %e, "management: vault unavailable");
            MgmtError::Unavailable(Dependency::Vault)
        }
        // An expired or revoked token until the new login lands (or a policy without
        // the key operation, which the log names): 503 + Retry-After, as for signing.
        super::VaultError::PermissionDenied(_) => {
            tracing::warn!(error = %e, "management: vault refused the service's token (a new login is under way; or the policy lacks this path)");
            MgmtError::Unavailable(Dependency::Vault)
        }
        e => MgmtError::Internal(format!("vault refused the key operation: {e}")),
    }
}

/// A key operation Vault refused or failed, noted for the signer: a 403 asks for a new
/// login (an expired or revoked token must not fail every following key operation
/// too), an outage counts as the signer's own; a refusal of the key operation itself
/// says nothing about signing and leaves readiness alone.
fn refused(inner: &Inner, e: super::VaultError) -> MgmtError {
    inner.observe_admin_err(&e);
    vault_error(e)
}

#[async_trait]
impl KeyAdmin for TransitSigner {
    async fn status(&self) -> Result<KeyStatus, MgmtError> {
        let inner = &self.inner;
        let set = inner
            .keyset()
            .ok_or(MgmtError::Unavailable(Dependency::TransitKey))?;
        let lead = inner.cfg.publish_lead;
        let signing = inner.current(SystemTime::now()).ok().map(|k| k.version);
        Ok(key_status(
            inner,
            &set,
            signing,
            // Signing counted from the publish time rounded up, and the refresh interval
            // in whole seconds rounded up, as `vault_status` does: the retirement rule
            // must never count from too early nor wait too little.
            |ver| (unix(ver.published_at), unix_ceil(ver.published_at + lead)),
            refresh_secs(inner),
        ))
    }

    async fn fresh_status(&self) -> Result<KeyStatus, MgmtError> {
        self.inner.load_keys().await.map_err(vault_error)?;
        self.status().await
    }

    async fn rotate(&self) -> Result<(), MgmtError> {
        let inner = &self.inner;
        let path = format!(
            "{}/keys/{}/rotate",
            inner.cfg.transit_mount, inner.cfg.key_name
        );
        inner
            .client
            .call(Method::POST, &path, None, true)
            .await
            .map_err(|e| refused(inner, e))?;
        Ok(())
    }

    async fn retire_below(&self, below: u64) -> Result<(), MgmtError> {
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
            .map_err(|e| refused(inner, e))?;
        Ok(())
    }
}

fn refresh_secs(inner: &Inner) -> u64 {
    u64::try_from(inner.cfg.key_refresh_interval.as_millis().div_ceil(1000)).unwrap_or(u64::MAX)
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
            .ok_or(MgmtError::Unavailable(Dependency::TransitKey))?;
        let lead = inner.cfg.publish_lead;
        let signing = set
            .versions
            .iter()
            .rev()
            .find(|(_, v)| v.created + lead <= now)
            .map(|(n, _)| *n);
        Ok(key_status(
            inner,
            &set,
            signing,
            // Signing counted from Vault's creation time, rounded up: the retirement
            // rule must never count from too early.
            |ver| (unix(ver.created), unix_ceil(ver.created + lead)),
            refresh_secs(inner),
        ))
    }
}

/// The status of `set`: every version published, `signing` the one that signs, and
/// `dated` giving each version's (published since, signs from) in unix seconds.
fn key_status(
    inner: &Inner,
    set: &KeySet,
    signing: Option<u64>,
    dated: impl Fn(&Version) -> (u64, u64),
    refresh_interval_secs: u64,
) -> KeyStatus {
    let versions = set
        .versions
        .iter()
        .map(|(v, ver)| {
            let (published_since, signs_from) = dated(ver);
            KeyVersionStatus {
                version: *v,
                kid: format!("{}:v{v}", inner.cfg.key_name),
                published: true,
                signing: Some(*v) == signing,
                published_since,
                signs_from,
            }
        })
        .collect();
    KeyStatus {
        key: inner.cfg.key_name.clone(),
        alg: set.alg.as_str().to_string(),
        publish_lead_secs: inner.cfg.publish_lead.as_secs(),
        refresh_interval_secs,
        signing_version: signing,
        versions,
    }
}

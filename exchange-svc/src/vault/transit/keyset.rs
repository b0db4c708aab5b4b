//! What a read of `transit/keys/NAME` means: the [`KeySet`] to publish and sign with,
//! or why Vault's key cannot be one (a type it cannot sign JWS with, another type than
//! before, no live version).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{Inner, KeySet, Version};
use crate::vault::client::VaultError;
use crate::vault::config::KeyType;
use crate::vault::keys::{alg_for, jwk_for, parse_rfc3339};

impl Inner {
    pub(super) fn build_keyset(
        &self,
        v: &Value,
        previous: Option<&KeySet>,
    ) -> Result<KeySet, VaultError> {
        let proto = |m: String| VaultError::Protocol(m);
        let data = v
            .get("data")
            .ok_or_else(|| proto("key answer without data".into()))?;
        let tname = data.get("type").and_then(Value::as_str).unwrap_or("");
        let key_type = KeyType::from_vault(tname).ok_or_else(|| {
            VaultError::Setup(format!(
                "transit key {} has type {tname:?}, which cannot sign JWS (use ecdsa-p256, ecdsa-p384, rsa-2048/3072/4096 or ed25519)",
                self.cfg.key_name
            ))
        })?;
        if let Some(want) = self.cfg.key_type {
            if want != key_type {
                return Err(VaultError::Setup(format!(
                    "transit key {} is {}, but vault.key_type is {}",
                    self.cfg.key_name,
                    key_type.as_str(),
                    want.as_str()
                )));
            }
        }
        if data.get("supports_signing").and_then(Value::as_bool) == Some(false) {
            return Err(VaultError::Setup(format!(
                "transit key {} does not support signing",
                self.cfg.key_name
            )));
        }
        if let Some(prev) = previous {
            if prev.key_type != key_type {
                // Refuse a key swapped under our feet; keep the old one.
                return Err(proto(format!(
                    "transit key type changed from {} to {}",
                    prev.key_type.as_str(),
                    key_type.as_str()
                )));
            }
        }
        let alg = alg_for(key_type, self.cfg.rsa_alg);
        let min_dec = data
            .get("min_decryption_version")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let min_live = min_dec.max(self.cfg.min_version.unwrap_or(1));
        let keys = data
            .get("keys")
            .and_then(Value::as_object)
            .ok_or_else(|| proto("key answer without keys".into()))?;
        let now = SystemTime::now();
        // Vault's `creation_time`s on this replica's clock: a Vault whose clock lags
        // would otherwise make a version minutes old here the moment it is created (it
        // would sign at once on a replica starting now, and the schedule would retire
        // the version this replica still signs with).
        let offset = self.client.clock_offset_ms();
        let on_our_clock = |t: SystemTime| {
            let d = Duration::from_millis(offset.unsigned_abs());
            if offset >= 0 {
                t.checked_sub(d).unwrap_or(t)
            } else {
                t.checked_add(d).unwrap_or(t)
            }
        };
        let mut versions = BTreeMap::new();
        for (ver, entry) in keys {
            let Ok(version) = ver.parse::<u64>() else {
                continue;
            };
            if version < min_live {
                continue;
            }
            let pem = entry
                .get("public_key")
                .and_then(Value::as_str)
                .ok_or_else(|| proto(format!("version {version} without public_key")))?;
            let kid = format!("{}:v{version}", self.cfg.key_name);
            let (jwk, sig_len) =
                jwk_for(key_type, alg, &kid, version, pem).map_err(|e| proto(e.to_string()))?;
            let created = entry
                .get("creation_time")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
                .map(on_our_clock)
                .unwrap_or(now)
                .min(now);
            let published_at = match previous {
                // Already published by us: keep the original time, unless Vault now holds
                // other material under that version (key deleted and re-created, dev
                // server restarted): then it is a new key and waits out the lead again.
                Some(p) => match p.versions.get(&version) {
                    Some(old) if old.jwk == jwk => old.published_at,
                    Some(_) => {
                        tracing::warn!(key = %self.cfg.key_name, version, "transit key version was replaced by other key material; publishing the new one");
                        now
                    }
                    None => now,
                },
                // At start-up, assume versions were published (by earlier instances or
                // replicas) since their creation.
                None => created,
            };
            let check = crate::vault::selfcheck::Published::of(&jwk, alg.as_str());
            versions.insert(
                version,
                Version {
                    jwk,
                    check,
                    sig_len,
                    published_at,
                    created,
                },
            );
        }
        if versions.is_empty() {
            return Err(proto(format!(
                "transit key {} has no live version",
                self.cfg.key_name
            )));
        }
        let jwks = json!({ "keys": versions.values().map(|v| v.jwk.clone()).collect::<Vec<_>>() });
        Ok(KeySet {
            key_type,
            alg,
            versions,
            jwks,
        })
    }
}

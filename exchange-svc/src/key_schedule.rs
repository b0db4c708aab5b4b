//! Scheduled key maintenance (`[keys]`): rotation every `rotate_every` and retirement
//! of versions no live token can need, done by one replica at a time.
//!
//! Every replica ticks (every `check_interval`, jittered ±25 % so replicas drift
//! apart) and tries the maintenance lock without waiting
//! ([`SqlStore::try_maintenance`]: `pg_try_advisory_xact_lock`): the replica that gets
//! it re-reads the transit key from Vault and decides on Vault's own creation times,
//! which every replica sees alike; the others skip the tick. Under the lock it
//! - rotates when the newest version is `rotate_every` old (so after one replica
//!   rotated, the next holder finds a fresh version and does nothing: one rotation per
//!   period, not one per replica);
//! - retires the versions below the newest one [`check_retire`] allows (the rule of
//!   `POST /api/v1/keys/retire`: the successor has signed, on every replica, for longer
//!   than a token lives, here `token.max_ttl_secs + keys.verifier_leeway`); never the
//!   signing version;
//! - audits each change as the system actor and bumps the change version in the same
//!   transaction, so every replica re-reads the key at once (`spawn_key_reload`). An
//!   idle tick commits nothing and bumps nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Deserialize;

use crate::key_maintenance::{self, retired, rotated, settle, Settled};
use crate::mgmt::{check_retire, Dependency, KeyAdmin, KeyStatus, MgmtError};
use crate::server::AbortOnDrop;
use crate::store::{Actor, AuditRecord, SqlStore};
use crate::vault::{TransitSigner, VaultConfig};

/// The audit actor of scheduled maintenance.
pub const SYSTEM_ACTOR: &str = "system:key-schedule";

/// `[keys]`: the rotation schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Rotate the transit key when its newest version is this old (`"30d"`); `0` (the
    /// default) turns scheduled maintenance off: rotation stays an operator action.
    #[serde(deserialize_with = "crate::vault::de_duration")]
    pub rotate_every: Duration,
    /// With a schedule, also retire versions once no token they signed can be live.
    pub retire_old_versions: bool,
    /// How often each replica looks (jittered ±25 %).
    #[serde(deserialize_with = "crate::vault::de_duration")]
    pub check_interval: Duration,
    /// Clock skew verifiers allow past `exp` (Envoy `jwt_authn`: 60 s), added to
    /// `token.max_ttl_secs` before a version is retired.
    #[serde(deserialize_with = "crate::vault::de_duration")]
    pub verifier_leeway: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotate_every: Duration::ZERO,
            retire_old_versions: true,
            check_interval: Duration::from_secs(60),
            verifier_leeway: Duration::from_secs(60),
        }
    }
}

impl KeysConfig {
    /// Whether scheduled maintenance runs.
    pub fn enabled(&self) -> bool {
        !self.rotate_every.is_zero()
    }

    /// Checks the schedule against the key's publish lead and refresh; (field, reason).
    pub fn validate(&self, vault: &VaultConfig) -> Result<(), (String, String)> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |f: &str, r: String| Err((format!("keys.{f}"), r));
        if self.check_interval < Duration::from_millis(100) {
            return bad("check_interval", "must be at least 100ms".into());
        }
        // A new version signs only after its lead, and replicas learn of it within a
        // refresh: a shorter period would replace versions before they ever sign.
        let floor = vault
            .publish_lead
            .saturating_add(vault.key_refresh_interval);
        if self.rotate_every <= floor {
            return bad(
                "rotate_every",
                format!(
                    "must be longer than vault.publish_lead + vault.key_refresh_interval ({} ms)",
                    floor.as_millis()
                ),
            );
        }
        if self.check_interval >= self.rotate_every {
            return bad(
                "check_interval",
                "must be shorter than keys.rotate_every".into(),
            );
        }
        Ok(())
    }
}

/// The schedule's metrics.
#[derive(Clone)]
struct ScheduleMetrics {
    newest_created: prometheus::Gauge,
    rotations: prometheus::IntCounter,
    retirements: prometheus::IntCounter,
    skipped: prometheus::IntCounter,
    errors: prometheus::IntCounter,
}

impl ScheduleMetrics {
    fn new(m: &crate::metrics::Metrics) -> Result<Self, prometheus::Error> {
        use prometheus::{Gauge, IntCounter};
        let s = ScheduleMetrics {
            newest_created: Gauge::new(
                "meshpass_key_last_rotation_timestamp_seconds",
                "Creation time in Vault of the transit key's newest version (the last rotation, by any replica or operator).",
            )?,
            rotations: IntCounter::new(
                "meshpass_key_rotations_total",
                "Scheduled rotations done by this replica.",
            )?,
            retirements: IntCounter::new(
                "meshpass_key_retirements_total",
                "Scheduled retirements (min_decryption_version raised) done by this replica.",
            )?,
            skipped: IntCounter::new(
                "meshpass_key_maintenance_skipped_total",
                "Maintenance ticks skipped because another replica held the lock.",
            )?,
            errors: IntCounter::new(
                "meshpass_key_maintenance_errors_total",
                "Maintenance ticks that failed (Vault or the store unavailable, a refusal).",
            )?,
        };
        for c in [
            Box::new(s.newest_created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(s.rotations.clone()),
            Box::new(s.retirements.clone()),
            Box::new(s.skipped.clone()),
            Box::new(s.errors.clone()),
        ] {
            if let Err(e) = m.register(c) {
                tracing::warn!(error = %e, "key schedule metric not registered");
            }
        }
        Ok(s)
    }
}

/// What one tick changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickOutcome {
    /// The key was rotated.
    pub rotated: bool,
    /// Versions below this one were retired.
    pub retired_below: Option<u64>,
}

/// One replica's scheduler.
pub struct KeySchedule {
    cfg: KeysConfig,
    store: Arc<SqlStore>,
    signer: Arc<TransitSigner>,
    max_lifetime_secs: u64,
    metrics: ScheduleMetrics,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The audit record of a scheduled change (`note`: how it was learnt, when not
/// simply).
fn record(
    action: &str,
    before: &KeyStatus,
    after: Option<&KeyStatus>,
    note: String,
) -> AuditRecord {
    let actor = Actor {
        who: SYSTEM_ACTOR.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let reason = if note.is_empty() {
        "scheduled ([keys])".to_string()
    } else {
        format!("scheduled ([keys]); {note}")
    };
    key_maintenance::record(&actor, action, before, after, reason)
}

impl KeySchedule {
    /// A scheduler for this replica; `max_lifetime_secs` is
    /// [`crate::config::Config::token_acceptance_secs`].
    pub fn new(
        cfg: &KeysConfig,
        max_lifetime_secs: u64,
        store: Arc<SqlStore>,
        signer: Arc<TransitSigner>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, prometheus::Error> {
        Ok(KeySchedule {
            cfg: cfg.clone(),
            store,
            signer,
            max_lifetime_secs,
            metrics: ScheduleMetrics::new(metrics)?,
        })
    }

    /// Starts ticking (None when `[keys]` has no schedule).
    pub fn spawn(self) -> Option<AbortOnDrop> {
        if !self.cfg.enabled() {
            return None;
        }
        tracing::info!(
            rotate_every_secs = self.cfg.rotate_every.as_secs(),
            retire = self.cfg.retire_old_versions,
            "scheduled key maintenance on"
        );
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                let jitter = rand::thread_rng().gen_range(0.75..1.25);
                tokio::time::sleep(self.cfg.check_interval.mul_f64(jitter)).await;
                let _ = self.tick().await;
            }
        })))
    }

    /// One tick: `Ok(None)` when another replica held the lock.
    pub async fn tick(&self) -> Result<Option<TickOutcome>, MgmtError> {
        let r = self.store.try_maintenance(self.maintain()).await;
        // After the tick, whoever held the lock: a rotation it made has been read back
        // (and a replica that skipped still reports what it last read).
        if let Some(newest) = self.signer.newest_created() {
            self.metrics.newest_created.set(
                newest
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        }
        match &r {
            Ok(None) => self.metrics.skipped.inc(),
            Ok(Some(o)) => {
                if o.rotated {
                    self.metrics.rotations.inc();
                }
                if let Some(below) = o.retired_below {
                    self.metrics.retirements.inc();
                    tracing::info!(below, "scheduled retirement of old key versions");
                }
            }
            Err(e) => {
                self.metrics.errors.inc();
                tracing::warn!(error = %e, "scheduled key maintenance failed; next tick retries");
            }
        }
        r
    }

    /// Under the lock: decide on Vault's view, act, return the audit records.
    async fn maintain(&self) -> Result<(TickOutcome, Vec<AuditRecord>), MgmtError> {
        let now = SystemTime::now();
        let mut status = self.signer.vault_status(now).await?;
        let mut out = TickOutcome::default();
        let mut audit = Vec::new();
        let newest = self
            .signer
            .newest_created()
            .ok_or(MgmtError::Unavailable(Dependency::TransitKey))?;
        if newest + self.cfg.rotate_every <= now {
            let before = status.clone();
            let call = self.signer.rotate().await;
            let settled = settle("keys.rotate", call, &before, rotated, || {
                self.signer.vault_status(now)
            })
            .await;
            match settled {
                Settled::Done { after, note } => {
                    audit.push(record("keys.rotate", &before, after.as_ref(), note.clone()));
                    out.rotated = true;
                    match after {
                        Some(after) => {
                            tracing::info!(key = %after.key, versions = after.versions.len(), "scheduled rotation");
                            status = after;
                        }
                        // Done, but nothing to decide a retirement on: the next tick.
                        None => return Ok(self.partly((out, audit), &note)),
                    }
                }
                Settled::Failed(e) => return Err(e),
            }
        }
        if self.cfg.retire_old_versions {
            let now_secs = unix(now);
            // The highest cut the rule allows retires the most.
            let below = status
                .versions
                .iter()
                .rev()
                .map(|v| v.version)
                .find(|b| check_retire(&status, *b, self.max_lifetime_secs, now_secs).is_ok());
            if let Some(below) = below {
                let call = self.signer.retire_below(below).await;
                let settled = settle("keys.retire", call, &status, retired(below), || {
                    self.signer.vault_status(now)
                })
                .await;
                match settled {
                    Settled::Done { after, note } => {
                        let unread = after.is_none();
                        audit.push(record("keys.retire", &status, after.as_ref(), note.clone()));
                        out.retired_below = Some(below);
                        if unread {
                            return Ok(self.partly((out, audit), &note));
                        }
                    }
                    // A rotation this tick made stays recorded and announced.
                    Settled::Failed(e) if out.rotated => {
                        return Ok(self.partly((out, audit), &e.to_string()))
                    }
                    Settled::Failed(e) => return Err(e),
                }
            }
        }
        Ok((out, audit))
    }

    /// A tick that made a change and then failed: the change is committed (audited,
    /// announced), the failure counted and logged.
    fn partly<T>(&self, done: T, why: &str) -> T {
        self.metrics.errors.inc();
        tracing::warn!(
            error = why,
            "scheduled key maintenance partly failed; next tick retries"
        );
        done
    }
}

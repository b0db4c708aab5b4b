//! The signing key's life against real OpenBao, at edges an audit found: the default
//! publish lead against the JWKS max-age and the key refresh; Vault's clock behind the
//! replicas' (its creation times moved onto the replica's clock by its `Date`), for the
//! schedule's retirement and for a replica starting after a rotation; a rotation whose
//! answer was lost and whose first re-read failed (read again, audited once, never
//! rotated twice by a retried 503); the last-rotation gauge after a tick's rotation.
//! Faults come from the relay of `vault_relay`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;
mod vault_common;
mod vault_relay;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use meshpass_exchange::key_maintenance::LockedKeyAdmin;
use meshpass_exchange::key_schedule::{KeySchedule, KeysConfig};
use meshpass_exchange::mgmt::{KeyAdmin, MgmtError};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::Actor;
use meshpass_exchange::vault::{parse_rfc3339, TransitSigner};
use meshpass_testkit::OpenBao;
use mgmt_common::KEYS_OP;
use vault_relay::*;

fn actor(id: &str) -> Actor {
    Actor {
        who: KEYS_OP.into(),
        request_id: id.into(),
    }
}

/// Unix seconds (fractional) of a version's `creation_time` as OpenBao itself has it.
fn created_in_bao(bao: &OpenBao, version: u64) -> f64 {
    let key = bao.api_ok("GET", &format!("transit/keys/{KEY}"), None);
    let t = key["data"]["keys"][version.to_string()]["creation_time"]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------------------------
// 1. The shipped defaults break the documented publish-lead rule.

/// DESIGN.md "Participant tokens": `publish_lead` ≥ the verifiers' JWKS refresh + the
/// JWKS `max-age` + the key refresh interval; README (`server.jwks_max_age_secs`):
/// "keep it below `vault.publish_lead`". With nothing but the required settings, the
/// service must not start with a lead that the rule breaks even for a verifier that
/// refreshes exactly at `max-age` (a verifier refresh of 0): a version one replica
/// signs with after 60 s may have been in another replica's JWKS for only 30 s, and a
/// verifier that fetched that JWKS just before holds it 60 s.
#[test]
fn the_default_publish_lead_covers_the_jwks_max_age_and_one_key_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = common::TestIssuer::new(common::ISSUER, "k1");
    let cfg = common::load_config(
        dir.path(),
        &common::config_toml(&issuer, &dir.path().join("x.db"), ""),
    );
    let max_age = Duration::from_secs(cfg.server.jwks_max_age_secs);
    let need = max_age + cfg.vault.key_refresh_interval;
    assert!(
        cfg.vault.publish_lead > max_age && cfg.vault.publish_lead >= need,
        "defaults: vault.publish_lead = {:?}, server.jwks_max_age_secs = {:?}, \
         vault.key_refresh_interval = {:?}: the lead is not longer than the max-age and \
         shorter than max-age + key refresh ({need:?}), and the configuration is accepted",
        cfg.vault.publish_lead,
        max_age,
        cfg.vault.key_refresh_interval
    );
}

// ---------------------------------------------------------------------------------
// 2. Vault's clock is trusted as the replicas' own.

/// README "Several replicas": the schedule retires only versions whose successor has
/// signed, on every replica, for longer than a token lives; "the signing version is
/// never retired". OpenBao's clock 10 minutes behind the replica's (its `creation_time`
/// and `Date` header say so): right after a rotation, the replica still signs with v1
/// (v2 waits out its lead, counted on the replica's own clock), yet the schedule, which
/// trusts Vault's creation time as if it were the replica's clock, believes v2 has been
/// signing for minutes and retires v1: the version this replica signs with leaves the
/// JWKS while tokens it signed a moment ago are live, and the replica cannot sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_retirement_never_retires_the_version_the_replica_signs_with_when_vaults_clock_lags(
) {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    relay
        .faults
        .vault_clock_behind_secs
        .store(600, Ordering::SeqCst);
    let mut vault = vault_common::config(&bao, KEY);
    vault.address = Some(relay.addr.clone());
    vault.publish_lead = Duration::from_secs(20);
    vault.key_refresh_interval = Duration::from_secs(1);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let admin = LockedKeyAdmin::new(signer.clone() as Arc<dyn KeyAdmin>, store.clone());
    // v1 signs (it is older than the lead on any clock: wait it out when it is not).
    assert!(
        vault_common::eventually(Duration::from_secs(40), || async {
            signer.current_key().is_ok()
        })
        .await,
        "v1 never signed"
    );
    let before = signer.current_key().unwrap();
    assert_eq!(before.version, 1);

    let status = admin.rotate(&actor("rotate-1")).await.unwrap();
    assert_eq!(status.versions.len(), 2, "{status:?}");
    // Tokens live 120 s (max TTL + leeway); a scheduled tick right after the rotation.
    let cfg = KeysConfig {
        rotate_every: Duration::from_secs(30 * 86_400),
        retire_old_versions: true,
        check_interval: Duration::from_secs(1),
        verifier_leeway: Duration::ZERO,
    };
    let metrics = meshpass_exchange::metrics::Metrics::new().unwrap();
    let sched = KeySchedule::new(&cfg, 120, store.clone(), signer.clone(), &metrics).unwrap();
    let tick = sched.tick().await;

    let min_dec = bao.api_ok("GET", &format!("transit/keys/{KEY}"), None)["data"]
        ["min_decryption_version"]
        .as_u64()
        .unwrap();
    let signing_now = signer.current_key().map(|k| k.kid);
    assert!(
        min_dec == 1
            && vault_common::kids(&signer).contains(&format!("{KEY}:v1"))
            && signing_now.is_ok(),
        "one second after v2 was created (it signs only in 20 s on this replica, whose \
         tokens signed by v1 live 120 s), the scheduled tick {tick:?} set \
         min_decryption_version = {min_dec}; published now: {:?}; this replica's signing \
         key: {signing_now:?}",
        vault_common::kids(&signer)
    );
}

/// DESIGN.md: "A key version signs only once its `publish_lead` has passed". A replica
/// started right after another one rotated (a rollout, a crash, the HPA adding one)
/// counts the new version's lead from its `creation_time` in Vault. With OpenBao's
/// clock 10 minutes behind, v2 (published by the first replica one second ago) looks
/// 10 minutes old, and the new replica signs with it at once: verifiers holding the
/// JWKS of a moment ago cannot verify its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_rotation_waits_out_the_lead_even_when_vaults_clock_lags() {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    relay
        .faults
        .vault_clock_behind_secs
        .store(600, Ordering::SeqCst);
    let mut vault = vault_common::config(&bao, KEY);
    vault.address = Some(relay.addr.clone());
    vault.publish_lead = Duration::from_secs(60);
    let first = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let admin = LockedKeyAdmin::new(first.clone() as Arc<dyn KeyAdmin>, store.clone());
    admin.rotate(&actor("rotate-1")).await.unwrap();
    assert!(vault_common::kids(&first).contains(&format!("{KEY}:v2")));

    // A second replica starts a moment later.
    let second = TransitSigner::start(&vault).await.unwrap();
    let key = second.current_key();
    assert!(
        !matches!(&key, Ok(k) if k.version == 2),
        "v2 entered the first JWKS a moment ago (publish lead 60 s), but the replica \
         started after it signs with it at once: {key:?}"
    );
}

// ---------------------------------------------------------------------------------
// 3. A rotation whose answer was lost, read again once too early.

/// README (`POST /keys/rotate`): "When Vault's answer is lost, the key is read again
/// under the lock: a change Vault made is audited and announced (and the call answers
/// it), so a retried 503 never rotates twice". Here the answer to the rotation is lost
/// and the one read right after it fails too (the same network trouble), then Vault
/// answers again: the call answers 503 without recording the rotation OpenBao made,
/// and the client's retry of that 503 rotates a second time; v2's rotation is never
/// audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rotation_answer_is_recorded_once_and_a_retried_503_does_not_rotate_again() {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    // Kept to the end: it owns the store's directory.
    let relayed = relayed(&bao, &relay).await;
    let (signer, store) = (relayed.signer.clone(), relayed.store.clone());
    let admin = LockedKeyAdmin::new(signer.clone() as Arc<dyn KeyAdmin>, store.clone());
    relay
        .faults
        .lose_rotate_answer
        .store(true, Ordering::SeqCst);
    relay
        .faults
        .failed_reads_after_rotate
        .store(1, Ordering::SeqCst);

    // The client asks for one rotation and retries a 503 (Retry-After), as documented.
    let mut answers = Vec::new();
    for attempt in 0..3 {
        let r = admin.rotate(&actor(&format!("rotate-{attempt}"))).await;
        let unavailable = matches!(r, Err(MgmtError::Unavailable(_)));
        answers.push(format!("{r:?}"));
        if !unavailable {
            break;
        }
        // Only the first rotation's answer is lost.
        relay
            .faults
            .lose_rotate_answer
            .store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let versions = bao.transit_key_version(KEY);
    let events = audit(&store, "keys.rotate").await;
    assert!(
        versions == 2 && events.len() == 1,
        "one rotation asked for (503s retried): OpenBao is at v{versions}, with {} \
         keys.rotate audit event(s); answers: {answers:#?}",
        events.len()
    );
}

// ---------------------------------------------------------------------------------
// 4. The last-rotation gauge after a scheduled rotation.

/// README (metrics): `meshpass_key_last_rotation_timestamp_seconds` is the "creation
/// time in Vault of the newest key version, as last read by this replica";
/// docs/operations.md alerts on it. After a tick that rotated (and read the key again),
/// it must show the new version, not the one the rotation replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_rotation_gauge_shows_the_rotation_the_tick_just_made() {
    let bao = bao().await;
    let mut vault = vault_common::config(&bao, KEY);
    vault.key_refresh_interval = Duration::from_secs(3600);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let cfg = KeysConfig {
        rotate_every: Duration::from_secs(1),
        retire_old_versions: false,
        check_interval: Duration::from_millis(100),
        verifier_leeway: Duration::ZERO,
    };
    let metrics = meshpass_exchange::metrics::Metrics::new().unwrap();
    let sched = KeySchedule::new(&cfg, 0, store.clone(), signer.clone(), &metrics).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let out = sched.tick().await.unwrap().unwrap();
    assert!(out.rotated, "{out:?}");
    assert_eq!(bao.transit_key_version(KEY), 2);

    let text = metrics.render().unwrap();
    let gauge: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("meshpass_key_last_rotation_timestamp_seconds ")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("gauge rendered");
    let (v1, v2) = (created_in_bao(&bao, 1), created_in_bao(&bao, 2));
    assert!(
        (gauge - v2).abs() < 1.0,
        "after the tick rotated to v2 (created {v2:.3}) and read the key again, the gauge \
         says {gauge:.3} (v1's creation: {v1:.3})"
    );
}

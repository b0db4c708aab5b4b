//! Key operations under Vault faults, against real OpenBao: scheduled and API key changes that
//! Vault accepted must be audited and announced (change version) even when something
//! fails after Vault's part; the key endpoints must answer 503 + `Retry-After` (DESIGN
//! "Errors": Vault down → 503 + Retry-After, recover by itself) when Vault is down or
//! refuses the service's token; a refused key operation must not take the replica
//! out of service.
//!
//! Faults Vault itself cannot be made to produce at the right moment (the key read
//! failing right after a rotation, the answer to a rotation lost on its way back) are
//! made by the relay of `vault_relay` in front of the real OpenBao: every request still
//! goes to OpenBao, which does the real rotation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;
mod vault_common;
mod vault_relay;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use meshpass_exchange::key_maintenance::LockedKeyAdmin;
use meshpass_exchange::key_schedule::{KeySchedule, KeysConfig, SYSTEM_ACTOR};
use meshpass_exchange::mgmt::KeyAdmin;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{Actor, SqlStore, StoreConfig};
use meshpass_exchange::vault::{AuthConfig, Secret, TransitSigner, VaultConfig};
use mgmt_common::*;
use reqwest::Method;
use serde_json::json;
use vault_relay::*;

fn schedule(
    rotate_every: Duration,
    retire: bool,
    store: Arc<SqlStore>,
    signer: Arc<TransitSigner>,
) -> KeySchedule {
    let cfg = KeysConfig {
        rotate_every,
        retire_old_versions: retire,
        check_interval: Duration::from_millis(100),
        verifier_leeway: Duration::ZERO,
    };
    let metrics = meshpass_exchange::metrics::Metrics::new().unwrap();
    KeySchedule::new(&cfg, 0, store, signer, &metrics).unwrap()
}

fn key_policy() -> String {
    format!(
        r#"{}
path "transit/keys/{KEY}/rotate" {{ capabilities = ["update"] }}
path "transit/keys/{KEY}/config" {{ capabilities = ["update"] }}"#,
        vault_common::signer_policy(KEY)
    )
}

fn with_token(mut cfg: VaultConfig, token: &str) -> VaultConfig {
    cfg.auth = AuthConfig::Token {
        token: Some(Secret::new(token.to_string())),
    };
    cfg
}

/// The management API on SQLite over `signer` (which is also its key admin).
async fn mgmt_service(signer: Arc<TransitSigner>) -> Service {
    Service::start_with(
        Db::sqlite(),
        signer.clone() as Arc<dyn Signer>,
        Some(signer as Arc<dyn KeyAdmin>),
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        "",
    )
    .await
}

/// (status, Retry-After, body) of a management request.
async fn send_ra(
    s: &Service,
    r: reqwest::RequestBuilder,
) -> (u16, Option<String>, serde_json::Value) {
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    let ra = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let _ = s;
    (st, ra, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// The three key endpoints while Vault cannot serve: each must answer 503 with
/// `Retry-After` (GET may also answer its cached view, 200), never 500.
async fn assert_key_endpoints_answer_unavailable(s: &Service, what: &str) {
    let mut bad = Vec::new();
    let rotate = s.req(Method::POST, "/api/v1/keys/rotate", Some(KEYS_OP));
    let retire = s
        .req(Method::POST, "/api/v1/keys/retire", Some(KEYS_OP))
        .json(&json!({"below": 1}));
    for (name, r) in [("POST /keys/rotate", rotate), ("POST /keys/retire", retire)] {
        let (st, ra, body) = send_ra(s, r).await;
        if st != 503 || ra.is_none() {
            bad.push(format!("{name}: {st} Retry-After={ra:?} {body}"));
        }
    }
    let (st, ra, body) = send_ra(s, s.req(Method::GET, "/api/v1/keys", Some(KEYS_OP))).await;
    if !(st == 200 || (st == 503 && ra.is_some())) {
        bad.push(format!("GET /keys: {st} Retry-After={ra:?} {body}"));
    } else {
        eprintln!("GET /keys while {what}: {st}");
    }
    assert!(
        bad.is_empty(),
        "with {what}, DESIGN promises 503 + Retry-After (recover by itself), got:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Suspicion 1: the schedule rolls back a rotation Vault accepted.

/// README "Several replicas": scheduled maintenance audits each change as
/// `system:key-schedule` and bumps the change version; DESIGN: "audited once Vault
/// accepted the change even if reading the key again fails" (what
/// `LockedKeyAdmin::done` does for the API). Here the scheduled rotation is done in
/// OpenBao and the key read after it fails (Vault went away at that moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_done_in_vault_is_audited_and_announced_even_when_the_reread_fails() {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    // Kept to the end: it owns the store's directory.
    let relayed = relayed(&bao, &relay).await;
    let (signer, store) = (relayed.signer.clone(), relayed.store.clone());
    let sched = schedule(Duration::from_secs(1), false, store.clone(), signer.clone());
    // v1 is older than rotate_every.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay
        .faults
        .fail_key_reads_after_rotate
        .store(true, Ordering::SeqCst);
    let version_before = store.change_version().await.unwrap();

    let r = sched.tick().await;

    assert_eq!(
        bao.transit_key_version(KEY),
        2,
        "the schedule did not rotate: {r:?}"
    );
    let events = audit(&store, "keys.rotate").await;
    let version_after = store.change_version().await.unwrap();
    assert!(
        events.len() == 1 && version_after > version_before,
        "OpenBao rotated the key (v2 exists) but the tick answered {r:?}, left {} \
         keys.rotate audit event(s) and the change version {version_before} → \
         {version_after}: the rotation is unrecorded and no replica is told",
        events.len()
    );
    assert_eq!(events[0].record.actor, SYSTEM_ACTOR);
}

// ---------------------------------------------------------------------------------
// Suspicion 3: a later step of the same tick failing loses the rotation's record.

/// The schedule rotates and, in the same tick, retires old versions. OpenBao refuses
/// the retirement (the token's policy lacks `transit/keys/KEY/config`; the same
/// happens with a 5xx or a timeout): the rotation OpenBao did must stay audited and
/// announced, whatever happens to the retirement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_stays_audited_when_vault_refuses_the_retirement_of_the_same_tick() {
    let bao = bao().await;
    bao.write_policy(
        "rotate-only",
        &format!(
            r#"{}
path "transit/keys/{KEY}/rotate" {{ capabilities = ["update"] }}"#,
            vault_common::signer_policy(KEY)
        ),
    );
    let token = bao.create_token(&["rotate-only"], "1h");
    bao.rotate_key(KEY); // v2: v1 can be retired once v2 signed long enough.
    let mut vault = with_token(vault_common::config(&bao, KEY), &token);
    vault.key_refresh_interval = Duration::from_millis(100);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let sched = schedule(Duration::from_secs(1), true, store.clone(), signer.clone());
    // v2 is older than rotate_every and has signed for longer than the rule asks
    // (tokens accepted 0 s, refresh 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let version_before = store.change_version().await.unwrap();

    let r = sched.tick().await;

    assert_eq!(bao.transit_key_version(KEY), 3, "no rotation: {r:?}");
    let events = audit(&store, "keys.rotate").await;
    let version_after = store.change_version().await.unwrap();
    assert!(
        events.len() == 1 && version_after > version_before,
        "OpenBao rotated the key (v3 exists); the retirement after it was refused and the \
         tick answered {r:?}, leaving {} keys.rotate audit event(s) and the change version \
         {version_before} → {version_after}",
        events.len()
    );
}

/// The answer to a rotation is lost after OpenBao did it (a reset on the way back).
/// The change was made in Vault: DESIGN says it is audited once Vault accepted it,
/// and the replicas are told (change version); the service can learn that it was
/// done by reading the key again under the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_rotation_whose_answer_was_lost_after_vault_did_it_is_still_audited() {
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
    let version_before = store.change_version().await.unwrap();

    let r = admin
        .rotate(&Actor {
            who: KEYS_OP.into(),
            request_id: "rotate-lost".into(),
        })
        .await;

    assert_eq!(bao.transit_key_version(KEY), 2, "{r:?}");
    let events = audit(&store, "keys.rotate").await;
    let version_after = store.change_version().await.unwrap();
    assert!(
        events.len() == 1 && version_after > version_before,
        "OpenBao rotated the key (v2 exists) but the call answered {r:?}, with {} \
         keys.rotate audit event(s) and the change version {version_before} → \
         {version_after}; a client retrying the 503 would rotate a second time",
        events.len()
    );
}

/// README: the minimal policy is signing only; the key operations need `update` on
/// `rotate`/`config`. A `POST /keys/rotate` that the token's policy does not allow is
/// refused, but it must not take the replica out of service: `/readyz` stays 200
/// (the signer can still sign: nothing about signing changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_the_vault_policy_does_not_allow_leaves_the_replica_ready() {
    let bao = bao().await;
    bao.write_policy("signer", &vault_common::signer_policy(KEY));
    let token = bao.create_token(&["signer"], "1h");
    let vault = with_token(vault_common::config(&bao, KEY), &token);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let s = mgmt_service(signer).await;
    let ready = |s: &Service| {
        let url = format!("{}/readyz", s.token_url);
        let http = s.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, body) = ready(&s).await;
    assert_eq!(st, 200, "{body}");
    let (st, ra, body) = send_ra(
        &s,
        s.req(Method::POST, "/api/v1/keys/rotate", Some(KEYS_OP)),
    )
    .await;
    eprintln!("rotate refused by the policy: {st} Retry-After={ra:?} {body}");
    assert_eq!(bao.transit_key_version(KEY), 1);
    let (st_after, body_after) = ready(&s).await;
    if st_after != 200 {
        // How long it stays out (no traffic: only the key refresh, 30 s, brings it back).
        let t = std::time::Instant::now();
        while ready(&s).await.0 != 200 && t.elapsed() < Duration::from_secs(45) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("/readyz answered 200 again after {:?}", t.elapsed());
    }
    assert_eq!(
        st_after, 200,
        "a key rotation the policy refuses took the replica out of readiness: {body_after}"
    );
}

// ---------------------------------------------------------------------------------
// Suspicion 2: the key endpoints answer 500 when Vault is down or refuses.

/// DESIGN "Errors": Vault down → 503 + Retry-After. The service token is revoked
/// (what an expired token looks like to the service before a new login replaces it):
/// Vault answers 403 to every key operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_endpoints_answer_503_with_retry_after_when_the_vault_token_is_revoked() {
    let bao = bao().await;
    bao.write_policy("keys", &key_policy());
    let token = bao.create_token(&["keys"], "1h");
    let vault = with_token(vault_common::config(&bao, KEY), &token);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let s = mgmt_service(signer).await;
    let (st, _, body) = s
        .send(s.req(Method::POST, "/api/v1/keys/rotate", Some(KEYS_OP)))
        .await;
    assert_eq!(st, 200, "the token may rotate before it is revoked: {body}");
    bao.api_ok("POST", "auth/token/revoke", Some(json!({ "token": token })));
    assert_key_endpoints_answer_unavailable(&s, "the Vault token revoked (403)").await;
}

/// DESIGN "Errors": Vault down → 503 + Retry-After. OpenBao stopped: connections are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_endpoints_answer_503_with_retry_after_while_openbao_is_stopped() {
    let mut bao = bao().await;
    let vault = vault_common::config(&bao, KEY);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let s = mgmt_service(signer).await;
    tokio::task::block_in_place(|| bao.stop());
    assert_key_endpoints_answer_unavailable(&s, "OpenBao stopped (connection refused)").await;
}

/// DESIGN "Errors": Vault down → 503 + Retry-After. OpenBao sealed: it answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_endpoints_answer_503_with_retry_after_while_openbao_is_sealed() {
    let bao = bao().await;
    let vault = vault_common::config(&bao, KEY);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let s = mgmt_service(signer).await;
    bao.api_ok("PUT", "sys/seal", None);
    assert_key_endpoints_answer_unavailable(&s, "OpenBao sealed (503)").await;
}

// ---------------------------------------------------------------------------------
// Suspicion 3: the maintenance lock is released when Vault fails under it.

async fn pg_store(url: &str) -> Arc<SqlStore> {
    let cfg = StoreConfig {
        url: url.into(),
        max_connections: 2,
        ..StoreConfig::default()
    };
    let s = Arc::new(SqlStore::connect(&cfg, "participant").unwrap());
    s.migrate().await.unwrap();
    s
}

/// README "Several replicas": rotate/retire run under a PostgreSQL advisory lock. A
/// key operation that fails in Vault under the lock (an API rotation, a scheduled
/// tick) must release it: once Vault is back, another replica's rotation goes
/// through at once and its tick is not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_operation_vault_fails_under_the_maintenance_lock_releases_the_lock() {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    let db = meshpass_testkit::Postgres::fresh_database();
    let vault = relayed_config(&bao, &relay);
    let s1 = pg_store(&db.url()).await;
    let s2 = pg_store(&db.url()).await;
    let r1 = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let r2 = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let a1 = LockedKeyAdmin::new(r1.clone() as Arc<dyn KeyAdmin>, s1.clone());
    let a2 = LockedKeyAdmin::new(r2.clone() as Arc<dyn KeyAdmin>, s2.clone());
    let sched1 = schedule(Duration::from_secs(1), true, s1.clone(), r1.clone());
    let sched2 = schedule(Duration::from_secs(1), true, s2.clone(), r2.clone());
    let actor = |id: &str| Actor {
        who: KEYS_OP.into(),
        request_id: id.into(),
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    relay.faults.down.store(true, Ordering::SeqCst);
    let r = a1.rotate(&actor("down-1")).await;
    assert!(r.is_err(), "{r:?}");
    let t = sched1.tick().await;
    assert!(t.is_err(), "{t:?}");
    relay.faults.down.store(false, Ordering::SeqCst);
    let r = tokio::time::timeout(Duration::from_secs(5), a2.rotate(&actor("up-1")))
        .await
        .expect("the maintenance lock is still held after a Vault failure");
    assert!(r.is_ok(), "{r:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = sched2.tick().await;
    assert!(
        matches!(t, Ok(Some(_))),
        "a tick after the failures was skipped or failed: {t:?}"
    );
}

/// OpenBao answers a batch in the order of its input, and the signer answered its
/// callers by position, checking one signature per batch against the published key:
/// an intermediary that reordered `batch_results` handed two callers each a signature
/// over the other's input, which no verifier accepts (and the warm path cached). Every
/// item now carries its index as `reference`, which OpenBao echoes back, and an item
/// whose reference is not its place is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answer_whose_items_come_back_reordered_hands_no_caller_another_callers_signature()
{
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    let signer = relayed(&bao, &relay).await.signer;
    let key = signer.current_key().unwrap();
    let jwk = vault_common::jwk_of(signer.as_ref(), &key.kid);
    relay.faults.swap_batch_items.store(true, Ordering::SeqCst);
    let mut bad = Vec::new();
    let mut signed = 0;
    // Rounds of concurrent signatures until a few batches were reordered.
    for round in 0..20 {
        if relay.faults.swapped.load(Ordering::SeqCst) >= 3 {
            break;
        }
        let inputs: Vec<String> = (0..24)
            .map(|i| vault_common::signing_input(&key, &format!("{{\"n\":\"{round}-{i}\"}}")))
            .collect();
        let results =
            futures_util::future::join_all(inputs.iter().map(|i| signer.sign(&key, i.as_bytes())))
                .await;
        for (input, r) in inputs.iter().zip(results) {
            if let Ok(sig) = r {
                signed += 1;
                if let Err(e) = vault_common::verify_with_jwk(&jwk, input.as_bytes(), &sig) {
                    bad.push(format!("round {round}: {e}"));
                }
            }
        }
    }
    assert!(
        relay.faults.swapped.load(Ordering::SeqCst) >= 1,
        "no batch of three or more was formed: the test proves nothing"
    );
    assert!(signed > 0, "nothing was signed at all");
    assert!(
        bad.is_empty(),
        "{} of {signed} signatures handed out do not verify over their own input: {bad:?}",
        bad.len()
    );
}

/// A login answer with an absurd `lease_duration` (2^64 - 1 s, from a broken Vault or
/// proxy) overflowed the instant of the next renewal: the authentication task
/// panicked and was gone, so no refused signature ever led to a login again and the
/// service stayed down until restarted, while `/readyz` said ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_answer_with_an_absurd_lease_does_not_stop_the_service_from_logging_in_again() {
    let bao = bao().await;
    let relay = relay_to(&bao).await;
    relay.faults.absurd_lease.store(true, Ordering::SeqCst);
    bao.write_policy("signer", &vault_common::signer_policy(KEY));
    let (role_id, sid) = bao.approle(
        "meshpass",
        json!({ "token_policies": ["signer"], "token_ttl": "1h" }),
    );
    let mut cfg = relayed_config(&bao, &relay);
    cfg.auth = AuthConfig::Approle {
        mount: "approle".into(),
        role_id,
        secret_id: Some(Secret::new(sid)),
        secret_id_file: None,
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    vault_common::sign_and_verify(&signer, "{}").await;
    // Every token the role gave out is revoked: signatures are refused until the
    // signer logs in again.
    bao.api_ok("POST", "sys/leases/revoke-prefix/auth/approle/login", None);
    let key = signer.current_key().unwrap();
    let input = vault_common::signing_input(&key, "{}");
    let back = vault_common::eventually(Duration::from_secs(30), || async {
        signer.sign(&key, input.as_bytes()).await.is_ok()
    })
    .await;
    assert!(
        back,
        "the signer never logged in again after its token was revoked"
    );
}

//! The verified-subject cache: a subject token verified once is not signature-checked
//! again, but its claims and time rules are re-checked on every use, its entry never
//! outlives the token's `exp` or the cache TTL, and any change of the issuer's key set
//! (a key removed or replaced) makes it verify in full again. Through the token
//! endpoint with the minted-token cache off, a real SQLite store, a manual clock, and
//! issuer keys from a JWKS URL on a real local socket where keys must change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use common::*;
use meshpass_core::{Algorithm, SpiffeId, VerifiedSubject};
use meshpass_exchange::clock::{Clock, ManualClock};
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::store::{seed, MappingStore, SqlStore};
use meshpass_exchange::subject_cache::{SubjectCache, TokenDigest};
use meshpass_exchange::AppState;
use serde_json::json;

const NO_TOKEN_CACHE: &str = "\n[cache]\nenabled = false\n";

struct Env {
    _dir: tempfile::TempDir,
    issuer: TestIssuer,
    clock: Arc<ManualClock>,
    state: AppState,
    app: Router,
}

impl Env {
    async fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(ISSUER, "spire-1");
        let cfg = load_config(
            dir.path(),
            &config_toml(&issuer, &dir.path().join("m.db"), extra),
        );
        let clock = Arc::new(ManualClock::new(now()));
        let state = state_with(&cfg, signer().await, clock.clone()).await;
        let app = meshpass_exchange::app(state.clone());
        Env {
            _dir: dir,
            issuer,
            clock,
            state,
            app,
        }
    }

    async fn exchange(&self, token: &str) -> Answer {
        post_token(&self.app, exchange_form(token, &[("resource", "payments")])).await
    }

    fn hits(&self) -> u64 {
        self.state.metrics.subject_cache_hits.get()
    }

    fn misses(&self) -> u64 {
        self.state.metrics.subject_cache_misses.get()
    }
}

fn assert_ok(a: &Answer) {
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

fn assert_invalid_grant(a: &Answer) {
    assert_eq!(a.status.as_u16(), 400, "{}", a.json);
    assert_eq!(a.json["error"], "invalid_grant", "{}", a.json);
}

#[tokio::test]
async fn a_repeated_subject_token_is_verified_once_then_served_from_the_subject_cache() {
    let e = Env::new(NO_TOKEN_CACHE).await;
    let token = e.issuer.svid(WEB, e.clock.now(), 3600);
    assert_ok(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (1, 0));
    for _ in 0..3 {
        assert_ok(&e.exchange(&token).await);
    }
    assert_eq!((e.misses(), e.hits()), (1, 3));
    assert_eq!(e.state.subjects.as_ref().unwrap().len(), 1);
}

#[tokio::test]
async fn a_tampered_copy_of_a_cached_token_is_verified_in_full_and_refused() {
    let e = Env::new(NO_TOKEN_CACHE).await;
    let token = e.issuer.svid(WEB, e.clock.now(), 3600);
    assert_ok(&e.exchange(&token).await);
    // One character in the middle of the signature changed.
    let mut bytes = token.clone().into_bytes();
    let i = bytes.len() - 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_invalid_grant(&e.exchange(&tampered).await);
    assert_eq!((e.misses(), e.hits()), (2, 0));
}

#[tokio::test]
async fn time_rules_are_checked_again_on_every_use_of_a_cached_subject() {
    let e = Env::new(NO_TOKEN_CACHE).await;
    let t = e.clock.now();
    // nbf 20 s ahead is within the 30 s leeway now...
    let token = e
        .issuer
        .sign(&json!({"iss": ISSUER, "sub": WEB, "aud": "meshpass",
        "iat": t, "nbf": t + 20, "exp": t + 3600}));
    assert_ok(&e.exchange(&token).await);
    assert_ok(&e.exchange(&token).await);
    assert_eq!(e.hits(), 1);
    // ...but not once the clock is set a minute back: the cached entry is found and
    // its claims are refused at the new time.
    e.clock.set(t - 60);
    let a = e.exchange(&token).await;
    assert_invalid_grant(&a);
    assert_eq!(
        e.hits(),
        2,
        "the refusal came from re-checking the cached entry"
    );
    e.clock.set(t);
    assert_ok(&e.exchange(&token).await);
}

#[tokio::test]
async fn a_cached_subject_is_not_kept_past_the_token_expiry() {
    let e = Env::new(NO_TOKEN_CACHE).await;
    let t = e.clock.now();
    let token = e.issuer.svid(WEB, t, 60);
    assert_ok(&e.exchange(&token).await);
    e.clock.set(t + 59);
    let a = e.exchange(&token).await;
    assert_ok(&a);
    assert_eq!(a.json["expires_in"], 1, "capped at the subject token's exp");
    assert_eq!((e.misses(), e.hits()), (1, 1));
    // At exp the entry is gone: the token is verified in full again (and the exchange
    // refused, since a token minted now would already be expired).
    e.clock.set(t + 60);
    assert_invalid_grant(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (2, 1));
    // Past exp + leeway the full validation refuses it too.
    e.clock.set(t + 90);
    assert_invalid_grant(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (3, 1));
}

#[tokio::test]
async fn a_cached_subject_is_verified_again_once_the_cache_ttl_has_passed() {
    let extra = format!("{NO_TOKEN_CACHE}\n[validation]\nsubject_cache_secs = 10\n");
    let e = Env::new(&extra).await;
    let t = e.clock.now();
    let token = e.issuer.svid(WEB, t, 3600);
    assert_ok(&e.exchange(&token).await);
    e.clock.set(t + 9);
    assert_ok(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (1, 1));
    e.clock.set(t + 10);
    assert_ok(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (2, 1));
}

#[tokio::test]
async fn a_token_that_fails_validation_is_never_cached() {
    let e = Env::new(NO_TOKEN_CACHE).await;
    let t = e.clock.now();
    let wrong_audience = e
        .issuer
        .sign(&json!({"iss": ISSUER, "sub": WEB, "aud": "other", "iat": t, "exp": t + 600}));
    for _ in 0..2 {
        assert_invalid_grant(&e.exchange(&wrong_audience).await);
    }
    assert_eq!((e.misses(), e.hits()), (2, 0));
    assert!(e.state.subjects.as_ref().unwrap().is_empty());
}

#[tokio::test]
async fn with_the_subject_cache_off_every_use_is_verified_in_full() {
    let extra = format!("{NO_TOKEN_CACHE}\n[validation]\nsubject_cache_secs = 0\n");
    let e = Env::new(&extra).await;
    assert!(e.state.subjects.is_none());
    let token = e.issuer.svid(WEB, e.clock.now(), 3600);
    assert_ok(&e.exchange(&token).await);
    assert_ok(&e.exchange(&token).await);
    assert_eq!((e.misses(), e.hits()), (0, 0));
}

#[test]
fn a_subject_cache_ttl_over_an_hour_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        config_toml(
            &issuer,
            &dir.path().join("m.db"),
            "\n[validation]\nsubject_cache_secs = 3601\n",
        ),
    )
    .unwrap();
    let e = meshpass_exchange::config::Config::load(Some(&path))
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation.subject_cache_secs"), "{e}");
}

fn subject(exp: u64) -> Arc<VerifiedSubject> {
    Arc::new(VerifiedSubject {
        spiffe_id: SpiffeId::parse(WEB).unwrap(),
        issuer: ISSUER.into(),
        audiences: vec!["meshpass".into()],
        expires_at: exp,
        issued_at: None,
        alg: Algorithm::ES256,
        kid: None,
        claims: serde_json::Map::new(),
    })
}

#[test]
fn the_subject_cache_is_bounded_and_evicts_the_entry_closest_to_expiry_first() {
    let cache = SubjectCache::new(600, 3);
    let now = 1_000;
    let keys: Vec<TokenDigest> = (0..4).map(|i| TokenDigest::of(&format!("t{i}"))).collect();
    // Expiries 1100, 1050, 1200: the second is closest to expiry.
    for (k, exp) in keys.iter().zip([1_100, 1_050, 1_200]) {
        cache.insert(*k, subject(exp), now, 7);
    }
    cache.insert(keys[3], subject(1_300), now, 7);
    assert_eq!(cache.len(), 3);
    assert!(cache.get(&keys[1], now, 7).is_none());
    for k in [keys[0], keys[2], keys[3]] {
        assert!(cache.get(&k, now, 7).is_some());
    }
    // Another key-set generation never matches.
    assert!(cache.get(&keys[0], now, 8).is_none());
    assert_eq!(cache.len(), 2, "the stale entry was dropped");
}

// --- key-set changes: issuer keys from a JWKS URL that the test rewrites ---

async fn jwks_route(State(doc): State<Arc<Mutex<String>>>) -> String {
    doc.lock().unwrap().clone()
}

struct UrlEnv {
    _dir: tempfile::TempDir,
    doc: Arc<Mutex<String>>,
    keys: Arc<IssuerKeys>,
    state: AppState,
    app: Router,
}

async fn url_env(first: &TestIssuer, extra: &str) -> UrlEnv {
    let doc = Arc::new(Mutex::new(first.jwks()));
    let router = Router::new()
        .route("/jwks", get(jwks_route))
        .with_state(doc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(first, &dir.path().join("m.db"), extra).replace(
        &format!("jwks = '{}'", first.jwks()),
        // No background refresh: the test refreshes when it wants to.
        &format!("jwks_url = \"{url}\"\nrefresh_secs = 86400\nmin_refetch_secs = 1"),
    );
    let cfg = load_config(dir.path(), &toml);
    let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
    store.migrate().await.unwrap();
    seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims)
        .await
        .unwrap();
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    keys.refresh_all().await;
    let state = AppState::new(
        &cfg,
        signer().await,
        store as Arc<dyn MappingStore>,
        keys.clone(),
        Arc::new(ManualClock::new(now())),
    )
    .unwrap();
    let app = meshpass_exchange::app(state.clone());
    UrlEnv {
        _dir: dir,
        doc,
        keys,
        state,
        app,
    }
}

impl UrlEnv {
    async fn exchange(&self, token: &str) -> Answer {
        post_token(&self.app, exchange_form(token, &[("resource", "payments")])).await
    }
    fn counts(&self) -> (u64, u64) {
        let m = &self.state.metrics;
        (m.subject_cache_misses.get(), m.subject_cache_hits.get())
    }
}

#[tokio::test]
async fn removing_the_signing_key_from_the_issuers_jwks_drops_its_cached_subjects() {
    let first = TestIssuer::new(ISSUER, "k1");
    let e = url_env(&first, NO_TOKEN_CACHE).await;
    let token = first.svid(WEB, now(), 3600);
    assert_ok(&e.exchange(&token).await);
    assert_ok(&e.exchange(&token).await);
    assert_eq!(e.counts(), (1, 1));

    let second = TestIssuer::new(ISSUER, "k2");
    *e.doc.lock().unwrap() = second.jwks();
    e.keys.refresh_all().await;
    assert_invalid_grant(&e.exchange(&token).await);
    assert_eq!(e.counts(), (2, 1), "verified in full against the new keys");
    assert_ok(&e.exchange(&second.svid(WEB, now(), 3600)).await);
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_makes_cached_subjects_fail_verification() {
    let first = TestIssuer::new(ISSUER, "k1");
    let e = url_env(&first, NO_TOKEN_CACHE).await;
    let token = first.svid(WEB, now(), 3600);
    assert_ok(&e.exchange(&token).await);

    let impostor_slot = TestIssuer::new(ISSUER, "k1");
    *e.doc.lock().unwrap() = impostor_slot.jwks();
    e.keys.refresh_all().await;
    let a = e.exchange(&token).await;
    assert_invalid_grant(&a);
    assert_eq!(e.counts(), (2, 0));
}

#[tokio::test]
async fn a_refresh_returning_the_same_keys_keeps_the_cached_subjects() {
    let first = TestIssuer::new(ISSUER, "k1");
    let e = url_env(&first, NO_TOKEN_CACHE).await;
    let token = first.svid(WEB, now(), 3600);
    assert_ok(&e.exchange(&token).await);
    e.keys.refresh_all().await;
    e.keys.refresh_all().await;
    assert_ok(&e.exchange(&token).await);
    assert_eq!(e.counts(), (1, 1));
    // Adding a second key is a change: entries made with the old set are dropped.
    let other = TestIssuer::new(ISSUER, "k2");
    *e.doc.lock().unwrap() = json!({"keys": [first.jwk(), other.jwk()]}).to_string();
    e.keys.refresh_all().await;
    assert_ok(&e.exchange(&token).await);
    assert_eq!(e.counts(), (2, 1));
}

// --- the same changes with the minted-token cache on: a cached participant token is
// served only while its subject token still verifies with the issuer's current keys ---

/// Mints and caches a token for a subject signed with k1, drops k1 from the issuer's
/// JWKS, then asks again: with the same form bytes (the warm path's alias) or with an
/// equivalent form (the request key).
async fn removed_key_scenario(same_bytes: bool) {
    let first = TestIssuer::new(ISSUER, "k1");
    let e = url_env(&first, "").await;
    let token = first.svid(WEB, now(), 3600);
    let minted = e.exchange(&token).await;
    assert_ok(&minted);
    let warm = e.exchange(&token).await;
    assert_ok(&warm);
    assert_eq!(warm.json["access_token"], minted.json["access_token"]);
    assert_eq!(
        e.state.metrics.cache_hits.get(),
        1,
        "served from the token cache"
    );

    // The issuer drops k1 (the usual answer to a leaked key).
    let second = TestIssuer::new(ISSUER, "k2");
    *e.doc.lock().unwrap() = second.jwks();
    e.keys.refresh_all().await;
    let a = if same_bytes {
        e.exchange(&token).await
    } else {
        // The same fields in another order: other bytes, the same request.
        let equivalent = form(&[
            ("resource", "payments"),
            ("subject_token_type", JWT_TYPE),
            ("subject_token", &token),
            ("grant_type", GRANT),
        ]);
        post_token(&e.app, equivalent).await
    };
    assert_invalid_grant(&a);
    assert_eq!(e.state.metrics.cache_hits.get(), 1, "no further hit");
    assert_ok(&e.exchange(&second.svid(WEB, now(), 3600)).await);
}

#[tokio::test]
async fn a_participant_token_cached_for_a_subject_signed_by_a_removed_key_is_not_served_again() {
    removed_key_scenario(true).await;
}

#[tokio::test]
async fn an_equivalent_request_gets_no_token_cached_for_a_subject_signed_by_a_removed_key() {
    removed_key_scenario(false).await;
}

#[tokio::test]
async fn a_key_added_beside_the_signing_key_keeps_cached_participant_tokens_after_one_verification()
{
    let first = TestIssuer::new(ISSUER, "k1");
    let e = url_env(&first, "").await;
    let token = first.svid(WEB, now(), 3600);
    let minted = e.exchange(&token).await;
    assert_ok(&minted);
    assert_eq!(e.counts(), (1, 0));

    let other = TestIssuer::new(ISSUER, "k2");
    *e.doc.lock().unwrap() = json!({"keys": [first.jwk(), other.jwk()]}).to_string();
    e.keys.refresh_all().await;
    for _ in 0..3 {
        let again = e.exchange(&token).await;
        assert_ok(&again);
        assert_eq!(
            again.json["access_token"], minted.json["access_token"],
            "still the cached token: nothing minted anew"
        );
    }
    // Verified once against the new key set (a subject-cache miss), then not again.
    assert_eq!(e.counts(), (2, 0));
    assert_eq!(e.state.metrics.cache_hits.get(), 3);
}

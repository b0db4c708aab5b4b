//! What scope rows may add to a minted participant token (reserved names up to case,
//! conflicts between the scopes of a resource, size bounds), and tokens minted across a
//! key rotation verified by an independent ES256 verifier against the version their
//! `kid` names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use axum::Router;
use common::*;
use meshpass_exchange::clock::ManualClock;
use meshpass_exchange::store::{Mapping, MappingStore, ScopeClaims, StoreError};
use serde_json::{json, Value};

/// The filter's bound on an exchange answer it reads (`filter/src/exchange.rs`
/// `MAX_EXCHANGE_BODY`): a `200` past it is an unusable answer (a deny, never cached).
const FILTER_MAX_EXCHANGE_BODY: usize = 64 * 1024;

struct Env {
    app: Router,
    store: Arc<dyn MappingStore>,
    issuer: TestIssuer,
    _dir: tempfile::TempDir,
}

/// The service of `config_toml` on a real transit signer, with the store the app
/// reads (behind its policy cache: writes through it take effect at once).
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(ManualClock::new(now()))).await;
    let store = Arc::clone(&state.store);
    Env {
        app: meshpass_exchange::app(state),
        store,
        issuer,
        _dir: dir,
    }
}

impl Env {
    /// Exchanges a fresh SVID of WEB (a distinct token each call, so never a cache hit)
    /// with `fields`; returns the answer.
    async fn exchange(&self, fields: &[(&str, &str)]) -> Answer {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let ttl = 600 + N.fetch_add(1, Ordering::Relaxed);
        let svid = self.issuer.svid(WEB, now(), ttl);
        post_token(&self.app, exchange_form(&svid, fields)).await
    }

    /// Stores mapping `web-to-RESOURCE`: WEB may get `scopes` of `resource`.
    async fn map_web(&self, resource: &str, scopes: &[String]) {
        self.store
            .put_mapping(&Mapping {
                name: format!("web-to-{resource}"),
                subject: WEB.into(),
                resource: resource.into(),
                participant: format!("acme-{resource}"),
                audiences: vec![],
                scopes: scopes.to_vec(),
                ttl_secs: 300,
                rate_limit: None,
                allowed_callers: vec![],
                allowed_actors: vec![],
            })
            .await
            .unwrap();
    }

    /// The claims of a token minted with `fields` (the exchange must succeed).
    async fn minted(&self, fields: &[(&str, &str)]) -> Value {
        let a = self.exchange(fields).await;
        assert_eq!(
            a.status.as_u16(),
            200,
            "exchange {fields:?} refused: {}",
            a.json
        );
        claims_of(a.json["access_token"].as_str().unwrap()).unwrap()
    }
}

fn row(resource: &str, scope: &str, claims: Value) -> ScopeClaims {
    let Value::Object(claims) = claims else {
        panic!("claims must be an object")
    };
    ScopeClaims {
        resource: resource.into(),
        scope: scope.into(),
        claims,
    }
}

/// DESIGN.md / store README: every write is validated, "claims that two scopes of one
/// resource set to different values (conflict)" are refused. The check notes the
/// resource's stored rows first-come and skips a clash with "the same scope" — but the
/// stored rows include the old version of the very row being replaced, so replacing a
/// row that is listed first slips a conflicting value past the check. Two granted
/// scopes then give one claim two values, and which one a token carries depends on the
/// order the rows are read in.
#[tokio::test]
async fn replacing_a_scope_row_with_a_value_another_scope_sets_differently_is_refused_as_a_conflict(
) {
    let e = env().await;
    e.map_web("ledger", &["a".to_string(), "b".to_string()])
        .await;
    e.store
        .put_scope_claims(&row("ledger", "a", json!({"level": "low"})))
        .await
        .unwrap();
    e.store
        .put_scope_claims(&row("ledger", "b", json!({"level": "low"})))
        .await
        .unwrap();
    // Scope `b` still sets level = "low": `a` may not set it to anything else.
    let r = e
        .store
        .put_scope_claims(&row("ledger", "a", json!({"level": "high"})))
        .await;
    if !matches!(r, Err(StoreError::Conflict(_))) {
        let both = e.minted(&[("resource", "ledger"), ("scope", "a b")]).await;
        let only_b = e.minted(&[("resource", "ledger"), ("scope", "b")]).await;
        panic!(
            "scope a was set to level = \"high\" while scope b of the same resource sets \
             level = \"low\" (write answered {r:?}, stored rows {:?}); a token granted both \
             scopes carries level = {}, one granted only b level = {}",
            e.store
                .list_scope_claims()
                .await
                .unwrap()
                .iter()
                .filter(|r| r.resource == "ledger")
                .map(|r| format!("{}={}", r.scope, Value::Object(r.claims.clone())))
                .collect::<Vec<_>>(),
            both["level"],
            only_b["level"],
        );
    }
}

/// DESIGN.md "Participant tokens": reserved claims "can never be overridden" by scope
/// claims. The rule is by exact name, but `ſ` (U+017F, LATIN SMALL LETTER LONG S) case-
/// folds to `s`: Go's encoding/json (golang-jwt `RegisteredClaims`, go-jose
/// `jwt.Claims`, every struct decoder of a Go verifier or application) matches the key
/// `ſub` to the field tagged `sub`, and since the claims are written in byte order
/// (`ſub` after `sub`) its value is the one such a verifier keeps. A scope writer can
/// so set the `sub`, `iss` or `scope` such consumers see.
#[tokio::test]
async fn scope_claims_can_never_set_a_name_that_case_folds_to_a_reserved_claim() {
    let e = env().await;
    let mut accepted = Vec::new();
    for name in ["iſs", "ſcope", "iſſ", "ſub"] {
        let mut claims = serde_json::Map::new();
        claims.insert("role_read".into(), json!(true));
        claims.insert(
            name.into(),
            json!("spiffe://cluster.local/ns/evil/sa/mallory"),
        );
        let r = e
            .store
            .put_scope_claims(&row("payments", "read", Value::Object(claims)))
            .await;
        if !matches!(r, Err(StoreError::Invalid { .. })) {
            accepted.push(format!("{name:?} ({r:?})"));
        }
    }
    if !accepted.is_empty() {
        let minted = e
            .minted(&[("resource", "payments"), ("scope", "read")])
            .await;
        let keys: Vec<&String> = minted.as_object().unwrap().keys().collect();
        panic!(
            "scope claims named like a reserved claim up to case folding were accepted: {}; \
             the minted token's claims, in order: {keys:?} (payload {minted})",
            accepted.join(", ")
        );
    }
}

/// A scope row's claims are unbounded in size (only their names, 256 bytes, and depth,
/// 32, are checked), so a row is accepted whose claims make every token of the resource
/// larger than what the filter reads as an answer (64 KiB; past it the answer is
/// "unusable" and the request denied with 503, on every exchange) or Envoy takes as a
/// request header (60 KiB by default). The service still mints and answers `200`; the
/// operator gets no error where the mistake is made — a write with a clear error is
/// what the store's "every write is validated" promises.
#[tokio::test]
async fn a_scope_row_whose_claims_make_tokens_too_large_for_the_filter_is_refused_at_write_time() {
    let e = env().await;
    let big = "x".repeat(70_000);
    let r = e
        .store
        .put_scope_claims(&row(
            "payments",
            "read",
            json!({"role_read": true, "blob": big}),
        ))
        .await;
    if !matches!(r, Err(StoreError::Invalid { .. })) {
        let a = e
            .exchange(&[("resource", "payments"), ("scope", "read")])
            .await;
        let token_len = a.json["access_token"].as_str().map_or(0, str::len);
        let body_len = a.json.to_string().len();
        panic!(
            "a scope row with 70,000 bytes of claims was accepted ({r:?}); the exchange then \
             answered {} with a {token_len}-byte token in a {body_len}-byte answer (the filter \
             reads at most {FILTER_MAX_EXCHANGE_BODY} bytes, Envoy forwards headers up to \
             60 KiB): every exchange of the resource fails at the filter instead",
            a.status
        );
    }
}

/// The rows a mapping grants together can each be within the per-row bound and still
/// add up past what a header carries: the exchange then answers a server error naming
/// the resource in the log, never a token no filter can use.
#[tokio::test]
async fn scope_claims_granted_together_past_the_token_bound_fail_the_exchange_with_a_server_error()
{
    let e = env().await;
    let scopes: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    e.map_web("wide", &scopes).await;
    for (i, s) in scopes.iter().enumerate() {
        // Each row 7,000 bytes: under the 8 KiB row bound, 42,000 together.
        e.store
            .put_scope_claims(&row(
                "wide",
                s,
                json!({ format!("c{i}"): "y".repeat(7_000) }),
            ))
            .await
            .unwrap();
    }
    let one = e.minted(&[("resource", "wide"), ("scope", "s0")]).await;
    assert_eq!(one["c0"].as_str().map(str::len), Some(7_000));
    let all = scopes.join(" ");
    let a = e.exchange(&[("resource", "wide"), ("scope", &all)]).await;
    assert_eq!(
        (a.status.as_u16(), a.json["error"].as_str()),
        (500, Some("server_error")),
        "six 7,000-byte scope rows granted together: {}",
        a.json.to_string().chars().take(300).collect::<String>()
    );
}

/// Verifies an ES256 compact JWS with p256 directly against the JWK of `jwks` its
/// header's `kid` names (no meshpass code); returns the header.
fn verify_es256_independently(token: &str, jwks: &Value) -> Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not published in {jwks}"));
    assert_eq!(
        jwk["alg"], header["alg"],
        "JWK alg differs from the header's"
    );
    let mut sec1 = vec![4u8];
    sec1.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    sec1.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
        .expect("a 64-byte r||s signature");
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .unwrap_or_else(|e| panic!("signature of {kid} does not verify: {e}"));
    header
}

/// Tokens minted while the transit key rotates verify, each with the version its
/// `kid` names (independent p256 verifier), and the header is exactly
/// `{alg: ES256, kid: KEY:vN, typ: JWT}`. (Expected to pass: evidence, not a defect.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_across_a_rotation_verify_independently_with_the_version_their_kid_names() {
    let bao = meshpass_testkit::OpenBao::shared();
    let key = new_transit_key(bao);
    meshpass_testkit::clear_vault_env_once();
    let signer: Arc<dyn meshpass_exchange::signer::Signer> = Arc::new(
        meshpass_exchange::vault::TransitSigner::start(&meshpass_exchange::vault::VaultConfig {
            key_refresh_interval: std::time::Duration::from_millis(100),
            ..signer_config(bao, &key)
        })
        .await
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(
        &cfg,
        signer,
        Arc::new(meshpass_exchange::clock::SystemClock),
    )
    .await;
    let app = meshpass_exchange::app(state);
    let rotator = {
        let key = key.clone();
        std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(700));
                meshpass_testkit::OpenBao::shared().rotate_key(&key);
            }
        })
    };
    let mut tokens = Vec::new();
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        i += 1;
        let svid = issuer.svid(WEB, now(), 600 + i);
        let a = post_token(&app, exchange_form(&svid, &[("resource", "payments")])).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.json);
        tokens.push(a.json["access_token"].as_str().unwrap().to_string());
    }
    rotator.join().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let jwks = get(&app, "/.well-known/jwks.json").await.json;
    let mut kids = std::collections::BTreeSet::new();
    for t in &tokens {
        let h = verify_es256_independently(t, &jwks);
        assert_eq!(h.as_object().unwrap().len(), 3, "header {h}");
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["typ"], "JWT");
        assert!(
            h["kid"].as_str().unwrap().starts_with(&format!("{key}:v")),
            "{h}"
        );
        kids.insert(h["kid"].as_str().unwrap().to_string());
    }
    assert!(
        kids.len() >= 2,
        "no rotation happened while minting: {kids:?}"
    );
}

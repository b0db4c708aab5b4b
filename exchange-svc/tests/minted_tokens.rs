//! The minted participant token as a verifier sees it: signatures of every
//! transit key type against the published JWKS, and claim values coming from
//! `[[scope_claims]]` in the configuration file; and how long a minted token is served
//! again from the cache after its mapping changed behind meshpass's back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::ManualClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::vault::{RsaAlg, TransitSigner};
use meshpass_testkit::OpenBao;
use serde_json::Value;

async fn signer_of(key_type: &str, rsa_alg: RsaAlg) -> Arc<dyn Signer> {
    let bao = OpenBao::shared();
    let name = format!("audit-{}", meshpass_testkit::random_hex(8));
    bao.create_transit_key(&name, key_type);
    meshpass_testkit::clear_vault_env_once();
    let cfg = meshpass_exchange::vault::VaultConfig {
        rsa_alg,
        ..signer_config(bao, &name)
    };
    Arc::new(TransitSigner::start(&cfg).await.unwrap())
}

/// The configuration of `config_toml` with `extra`, as `serve` would load it (`Err`:
/// refused at load, with the reason).
fn try_config(dir: &std::path::Path, issuer: &TestIssuer, extra: &str) -> Result<Config, String> {
    let path = dir.join("meshpass.toml");
    std::fs::write(&path, config_toml(issuer, &dir.join("m.db"), extra)).unwrap();
    Config::load(Some(&path)).map_err(|e| e.to_string())
}

/// Mints a token for `orders` (scope `orders.read`) with the scope-claims row `claims`
/// added for it; `Err` when the configuration is refused (at load or when seeded).
async fn mint_with_orders_claims(claims: &str) -> Result<Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let extra = format!(
        "\n[[scope_claims]]\nresource = \"orders\"\nscope = \"orders.read\"\nclaims = {claims}\n"
    );
    let cfg = try_config(dir.path(), &issuer, &extra)?;
    let store =
        meshpass_exchange::store::SqlStore::connect(&cfg.store, &cfg.token.participant_claim)
            .unwrap();
    store.migrate().await.unwrap();
    meshpass_exchange::store::seed(&store, &cfg.mappings, &cfg.scope_claims)
        .await
        .map_err(|e| e.to_string())?;
    let clock = Arc::new(ManualClock::new(now()));
    let state = state_with(&cfg, signer_of("ecdsa-p256", RsaAlg::PS256).await, clock).await;
    let app = meshpass_exchange::app(state);
    let svid = issuer.svid(WEB, now(), 600);
    let a = post_token(&app, exchange_form(&svid, &[("resource", "orders")])).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    Ok(claims_of(a.json["access_token"].as_str().unwrap()).unwrap())
}

#[tokio::test]
async fn every_transit_key_type_mints_tokens_that_verify_against_the_published_jwks() {
    for (kt, rsa, alg) in [
        ("ecdsa-p256", RsaAlg::PS256, "ES256"),
        ("ecdsa-p384", RsaAlg::PS256, "ES384"),
        ("rsa-2048", RsaAlg::PS256, "PS256"),
        ("rsa-2048", RsaAlg::RS256, "RS256"),
    ] {
        let signer = signer_of(kt, rsa).await;
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(ISSUER, "spire-1");
        let cfg = try_config(dir.path(), &issuer, "").unwrap();
        let state = state_with(&cfg, signer, Arc::new(ManualClock::new(now()))).await;
        let app = meshpass_exchange::app(state);
        let jwks = get(&app, "/.well-known/jwks.json").await.json;
        // Enough signatures that an unpadded ECDSA r or s (1 in 128 for P-256) shows.
        for i in 0..40 {
            let svid = issuer.svid(WEB, now(), 600 + i);
            let a = post_token(&app, exchange_form(&svid, &[("resource", "payments")])).await;
            assert_eq!(a.status.as_u16(), 200, "{kt}: {}", a.json);
            let token = a.json["access_token"].as_str().unwrap();
            let (kid, c) = verify(token, &jwks);
            assert!(kid.ends_with(":v1"), "{kid}");
            let header: Value = serde_json::from_slice(
                &base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    token.split('.').next().unwrap(),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(header["alg"], alg);
            assert_eq!(
                c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
                a.json["expires_in"].as_u64().unwrap()
            );
            assert_eq!(c["scope"], a.json["scope"]);
        }
    }
}

/// A TOML date-time has no JSON type: the configuration must refuse it (naming the
/// field) or mint it as its RFC 3339 string, never as the TOML parser's private
/// `{"$__toml_private_datetime": …}` marker object, which no resource server expects.
#[tokio::test]
async fn a_toml_datetime_scope_claim_is_refused_or_minted_as_a_string_never_as_a_toml_marker_object(
) {
    match mint_with_orders_claims("{ since = 1979-05-27T07:32:00Z }").await {
        Err(refused) => assert!(refused.contains("scope_claims"), "{refused}"),
        Ok(claims) => assert_eq!(
            claims["since"], "1979-05-27T07:32:00Z",
            "minted claims: {claims}"
        ),
    }
}

/// `inf`/`nan` are TOML floats with no JSON number: the configuration must refuse them
/// (naming the field), never mint a claim of another type (`null`) than was configured.
#[tokio::test]
async fn a_non_finite_toml_float_scope_claim_is_refused_not_minted_as_null() {
    for value in ["inf", "-inf", "nan"] {
        match mint_with_orders_claims(&format!("{{ limit = {value} }}")).await {
            Err(refused) => assert!(refused.contains("scope_claims"), "{value}: {refused}"),
            Ok(claims) => panic!("{value} was accepted and minted as {}", claims["limit"]),
        }
    }
}

/// README: writes that bypass meshpass (direct SQL) are seen "within
/// `store.policy_max_age_secs`". A minted token was answered again from the cache while
/// more than half its life was left, whatever the store said since: a mapping deleted by
/// hand during an incident kept its cached tokens flowing for half their TTL on every
/// replica. A cached token is now served no longer than `policy_max_age_secs` after it
/// was minted.
#[tokio::test]
async fn a_mapping_deleted_by_direct_sql_stops_its_cached_tokens_within_the_policy_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let mut cfg = try_config(dir.path(), &issuer, "").unwrap();
    cfg.store.policy_cache_secs = 2;
    cfg.store.policy_max_age_secs = 10;
    let clock = Arc::new(ManualClock::new(now()));
    let (state, _store) = state_and_store(
        &cfg,
        signer_of("ecdsa-p256", RsaAlg::PS256).await,
        clock.clone(),
    )
    .await;
    let app = meshpass_exchange::app(state);
    // web-to-payments: TTL 300 s, served from the cache while over 150 s are left.
    let svid = issuer.svid(WEB, now(), 600);
    let form = exchange_form(&svid, &[("resource", "payments")]);
    let first = post_token(&app, form.clone()).await;
    assert_eq!(first.status.as_u16(), 200, "{}", first.json);
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM mappings WHERE name = 'web-to-payments'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Within the bound, the cached answer may still be served...
    clock.advance(5);
    let a = post_token(&app, form.clone()).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    // ...past it, the exchange is decided again, on the store as it is.
    clock.advance(6);
    let a = post_token(&app, form).await;
    assert_eq!(
        a.status.as_u16(),
        400,
        "a token of a mapping deleted 11 s ago (max age 10 s) was served: {}",
        a.json
    );
    // The resource's only mapping is gone: it is not known any more.
    assert_eq!(a.json["error"], "invalid_target", "{}", a.json);
}

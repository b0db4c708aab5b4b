//! Delegation through `POST /token` (RFC 8693 §4.4): an actor token is accepted only
//! for the actor the subject token's `may_act` names, else for the mapping's
//! `allowed_actors`; none listed, no delegation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::store::RevocationTarget;
use serde_json::json;

const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

const LEDGER: &str = DELEGATED_LEDGER;

async fn app(issuer: &TestIssuer, dir: &std::path::Path) -> axum::Router {
    let cfg = load_config(dir, &config_toml(issuer, &dir.join("m.db"), LEDGER));
    meshpass_exchange::app(state_with(&cfg, signer().await, Arc::new(SystemClock)).await)
}

fn form(subject: &str, actor: &str, resource: &str) -> String {
    exchange_form(
        subject,
        &[
            ("resource", resource),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
        ],
    )
}

#[tokio::test]
async fn any_valid_actor_token_is_no_longer_enough_to_act_for_a_subject() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let app = app(&issuer, dir.path()).await;
    let subject = issuer.svid(WEB, now(), 600);
    let batch = issuer.svid(BATCH, now(), 600);
    let other = issuer.svid(OTHER, now(), 600);
    // payments lists no actors: no delegation.
    let a = post_token(&app, form(&subject, &batch, "payments")).await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client");
    // ledger lists batch only.
    let a = post_token(&app, form(&subject, &batch, "ledger")).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    let a = post_token(&app, form(&subject, &other, "ledger")).await;
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
}

#[tokio::test]
async fn may_act_in_the_subject_token_overrides_the_mappings_allowed_actors() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let app = app(&issuer, dir.path()).await;
    let t = now();
    let subject = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
        "may_act": {"sub": OTHER}
    }));
    let batch = issuer.svid(BATCH, t, 600);
    let other = issuer.svid(OTHER, t, 600);
    // batch is in allowed_actors, but the subject named only OTHER.
    let a = post_token(&app, form(&subject, &batch, "ledger")).await;
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
    let a = post_token(&app, form(&subject, &other, "payments")).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

#[tokio::test]
async fn a_revoked_actor_gets_no_new_token_and_its_cached_ones_are_not_served() {
    let (_dir, issuer, app, revoke) = revocable(LEDGER).await;
    let subject = issuer.svid(WEB, now(), 600);
    let batch = issuer.svid(BATCH, now(), 600);
    // batch acts for web (minted, then cached).
    for _ in 0..2 {
        let a = post_token(&app, form(&subject, &batch, "ledger")).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    }
    // batch is revoked (as a subject: the workload itself).
    revoke(RevocationTarget::Subject, BATCH).await;
    // Its cached token is not served, and nothing new is minted naming it as the actor.
    let a = post_token(&app, form(&subject, &batch, "ledger")).await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
    let fresh = issuer.svid(WEB, now(), 601);
    let a = post_token(&app, form(&fresh, &batch, "ledger")).await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    // web itself, acting alone, is not revoked.
    let a = post_token(&app, exchange_form(&fresh, &[("resource", "ledger")])).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

#[tokio::test]
async fn a_subject_token_whose_own_act_names_a_revoked_workload_gets_no_token_and_no_cached_one() {
    let (_dir, issuer, app, revoke) = revocable(LEDGER).await;
    let t = now();
    // web's token says batch acts for it (RFC 8693 §4.1); the minted token carries that.
    let acted = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": {"sub": BATCH}
    }));
    for _ in 0..2 {
        let a = post_token(&app, exchange_form(&acted, &[("resource", "ledger")])).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    }
    revoke(RevocationTarget::Subject, BATCH).await;
    // The cached token naming batch is not served, and none is minted anew.
    let a = post_token(&app, exchange_form(&acted, &[("resource", "ledger")])).await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
    let fresh = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 601,
        "act": {"sub": BATCH}
    }));
    let a = post_token(&app, exchange_form(&fresh, &[("resource", "ledger")])).await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    // web acting alone still gets its token.
    let alone = issuer.svid(WEB, now(), 600);
    let a = post_token(&app, exchange_form(&alone, &[("resource", "ledger")])).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

#[tokio::test]
async fn a_revoked_workload_in_the_subjects_own_act_refuses_the_cached_token_as_it_refuses_a_fresh_one(
) {
    let (_dir, issuer, app, revoke) = revocable(LEDGER).await;
    let t = now();
    // web's token says OTHER acted in it; batch now acts for web with its own token, so
    // the minted token names batch, yet OTHER took part in the subject token.
    let acted = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": {"sub": OTHER}
    }));
    let batch = issuer.svid(BATCH, t, 600);
    for _ in 0..2 {
        let a = post_token(&app, form(&acted, &batch, "ledger")).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    }
    revoke(RevocationTarget::Subject, OTHER).await;
    // The same bytes (a cached token before) and a fresh subject token get one answer.
    let cached = post_token(&app, form(&acted, &batch, "ledger")).await;
    let fresh_subject = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 601,
        "act": {"sub": OTHER}
    }));
    let fresh = post_token(&app, form(&fresh_subject, &batch, "ledger")).await;
    assert_eq!(fresh.status.as_u16(), 403, "{}", fresh.json);
    assert_eq!(cached.status.as_u16(), 403, "{}", cached.json);
    assert_eq!(
        cached.json["error"], "unauthorized_client",
        "{}",
        cached.json
    );
}

#[tokio::test]
async fn a_subject_tokens_own_act_chain_is_carried_only_when_it_is_an_actor_object() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let app = app(&issuer, dir.path()).await;
    let t = now();
    let with_act = |act: serde_json::Value| {
        issuer.sign(&json!({
            "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600, "act": act
        }))
    };
    // RFC 8693 §4.1: an actor is a JSON object naming its `sub`, nested for a chain.
    let chain = json!({"sub": BATCH, "act": {"sub": "spiffe://cluster.local/ns/ops/sa/cron"}});
    let a = post_token(
        &app,
        exchange_form(&with_act(chain.clone()), &[("resource", "ledger")]),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    let claims = claims_of(a.json["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["act"], chain);
    // Anything else is refused, never copied into a minted token.
    for bad in [
        json!("x"),
        json!({}),
        json!({"sub": 7}),
        json!({"sub": BATCH, "act": "y"}),
    ] {
        let a = post_token(
            &app,
            exchange_form(&with_act(bad.clone()), &[("resource", "ledger")]),
        )
        .await;
        assert_eq!(a.status.as_u16(), 400, "{bad}: {}", a.json);
        assert_eq!(a.json["error"], "invalid_request", "{bad}: {}", a.json);
        assert!(
            a.json["error_description"]
                .as_str()
                .unwrap()
                .contains("act"),
            "{}",
            a.json
        );
    }
}

// Revocation at any depth of a delegation chain, and of the feed's callers.

type Revoke = Box<
    dyn Fn(
        RevocationTarget,
        &'static str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
>;

/// A service on `mappings` (TOML), and a way to revoke a party in its store, applied at
/// once as a management write through this replica is.
async fn revocable(mappings: &str) -> (tempfile::TempDir, TestIssuer, axum::Router, Revoke) {
    use meshpass_exchange::store::{Actor, NewRevocation, RevocationStore};
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), mappings),
    );
    let (st, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(st.clone());
    let revoke: Revoke = Box::new(move |target, who: &'static str| {
        let (st, store) = (st.clone(), store.clone());
        Box::pin(async move {
            let rev = NewRevocation {
                target,
                matches: who.into(),
                reason: "compromised".into(),
                until: None,
            };
            let by = Actor {
                who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
                request_id: "audit".into(),
            };
            let rev = store.create_revocation(&rev, &by, now()).await.unwrap();
            st.revocations.created(rev);
        })
    });
    (dir, issuer, app, revoke)
}

/// An actor token for BATCH whose own `act` says OTHER acted for it (RFC 8693 §4.1: the
/// minted token nests this chain under `act`).
fn batch_acted_for_by_other(issuer: &TestIssuer, exp_in: u64) -> String {
    let t = now();
    issuer.sign(&json!({
        "iss": ISSUER, "sub": BATCH, "aud": "meshpass", "iat": t, "exp": t + exp_in,
        "act": {"sub": OTHER}
    }))
}

/// DESIGN.md "Revocation": "A revoked subject may not act for anyone either". An actor
/// token whose own `act` names a revoked workload carries that workload's part into the
/// minted token (`act.act.sub`), so the exchange must be refused like any other
/// delegation through a revoked workload.
#[tokio::test]
async fn an_actor_token_whose_own_act_names_a_revoked_workload_gets_no_token() {
    let (_dir, issuer, app, revoke) = revocable(DELEGATED_LEDGER).await;
    let subject = issuer.svid(WEB, now(), 600);
    revoke(RevocationTarget::Subject, OTHER).await;
    let actor = batch_acted_for_by_other(&issuer, 600);
    let a = post_token(&app, form(&subject, &actor, "ledger")).await;
    let minted_act = a.json["access_token"]
        .as_str()
        .and_then(claims_of)
        .map(|c| c["act"].clone());
    assert_eq!(
        a.status.as_u16(),
        403,
        "a token naming the revoked {OTHER} in its act chain was minted: act = {minted_act:?}; answer {}",
        a.json
    );
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
}

/// README "Revocation": a write through this replica drops "the party's minted-token
/// cache entries ... no cached token is served". A token minted while OTHER was in the
/// actor token's `act` chain must not be served once OTHER is revoked.
#[tokio::test]
async fn a_cached_token_whose_actor_chain_names_a_revoked_workload_is_not_served() {
    let (_dir, issuer, app, revoke) = revocable(DELEGATED_LEDGER).await;
    let subject = issuer.svid(WEB, now(), 600);
    let actor = batch_acted_for_by_other(&issuer, 600);
    let body = form(&subject, &actor, "ledger");
    let first = post_token(&app, body.clone()).await;
    assert_eq!(first.status.as_u16(), 200, "{}", first.json);
    let claims = claims_of(first.json["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["act"],
        json!({"sub": BATCH, "act": {"sub": OTHER}}),
        "the minted token names OTHER as a prior actor"
    );
    revoke(RevocationTarget::Subject, OTHER).await;
    let again = post_token(&app, body).await;
    let served_same = again.json["access_token"] == first.json["access_token"];
    assert_eq!(
        again.status.as_u16(),
        403,
        "after revoking {OTHER}: served the cached token again = {served_same}; answer {}",
        again.json
    );
}

/// DESIGN.md "Revocation": a revoked workload "may not act for anyone", and "an actor
/// token does not launder it". The subject token's own chain says OTHER acted before
/// BATCH; the minted token carries the whole chain (`act.act.sub` = OTHER), yet only the
/// top-level `act.sub` is checked against revocations.
#[tokio::test]
async fn a_subject_token_whose_nested_act_chain_names_a_revoked_workload_gets_no_token() {
    let (_dir, issuer, app, revoke) = revocable(DELEGATED_LEDGER).await;
    revoke(RevocationTarget::Subject, OTHER).await;
    let t = now();
    let chained = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": {"sub": BATCH, "act": {"sub": OTHER}}
    }));
    let a = post_token(&app, exchange_form(&chained, &[("resource", "ledger")])).await;
    let minted_act = a.json["access_token"]
        .as_str()
        .and_then(claims_of)
        .map(|c| c["act"].clone());
    assert_eq!(
        a.status.as_u16(),
        403,
        "minted with the revoked {OTHER} in its act chain: act = {minted_act:?}; answer {}",
        a.json
    );
}

/// README "Endpoints": `GET /revocations` has the "same caller rule as /token (a caller it
/// would refuse gets 403 unauthorized_client)"; DESIGN.md: the feed is "to callers that
/// may call /token (others get 403)". /token refuses a revoked caller with 403
/// unauthorized_client; the feed must too.
#[tokio::test]
async fn a_revoked_caller_is_refused_the_revocation_feed_as_it_is_refused_token() {
    use meshpass_exchange::store::RevocationStore;
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), DELEGATED_LEDGER),
    );
    let (st, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
    st.revocations
        .attach(
            store.clone() as Arc<dyn RevocationStore>,
            Arc::new(SystemClock),
        )
        .await;
    let app = meshpass_exchange::app(st.clone());
    revoke_in(&st, &store, RevocationTarget::Caller, WEB).await;
    // /token refuses the revoked caller.
    let subject = issuer.svid(WEB, now(), 600);
    let a = post_token(&app, exchange_form(&subject, &[("resource", "payments")])).await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
    // The feed, asked by the same caller.
    let mut req = axum::http::Request::get("/revocations?since=0")
        .body(axum::body::Body::empty())
        .unwrap();
    with_caller(&mut req, Some(WEB));
    let f = call(&app, req).await;
    assert_eq!(
        f.status.as_u16(),
        403,
        "the revoked caller {WEB} was served the feed: {}",
        f.json
    );
}

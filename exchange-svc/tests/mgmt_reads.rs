//! The management API's read side: introspection on a replica that has not read the
//! revocation list yet (it must never vouch from an empty set), and the OpenAPI
//! document's description of itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use std::sync::Arc;

use common::{now, WEB};
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::ExchangeStats;
use meshpass_exchange::store::{MappingStore, SqlStore};
use meshpass_exchange::AppState;
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// `POST /api/v1/introspect` to `api` as `who` (a management token of `s`'s issuer, on
/// a connection the trusted loopback proxy names as `who`).
async fn introspect_at(s: &Service, api: &str, who: &str, token: &str) -> (u16, Value) {
    let resp = s
        .http
        .request(Method::POST, format!("{api}/api/v1/introspect"))
        .bearer_auth(s.token(who))
        .header("x-forwarded-client-cert", format!("URI={who}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// README "Revocation": the store being down keeps *the last set*. A replica that
/// starts while its store is unreachable has no set at all, yet its management API
/// answers introspection from the empty one: a token whose `jti` is revoked (in the
/// store every replica shares) is vouched for as `active: true` to any resource server
/// that asks. Introspection must not say active before the revocation set was ever
/// read (inactive, or 503 + Retry-After).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_read_the_revocations_does_not_introspect_a_revoked_token_as_active() {
    // Replica A: mints a token and revokes its jti (stored in the shared PostgreSQL).
    let a = Service::start(Db::postgres_cut()).await;
    let subject = a.issuer.svid(WEB, now(), 3600);
    let (st, minted) = a.exchange_token(&subject, "payments").await;
    assert_eq!(st, 200, "{minted}");
    let access = minted["access_token"].as_str().unwrap().to_string();
    let (st, info) = introspect_at(&a, &a.api, VIEWER, &access).await;
    assert_eq!((st, &info["active"]), (200, &json!(true)), "{info}");
    let (st, _, rev) = a
        .post(
            "/api/v1/revocations",
            &json!({"target": "jti", "match": info["jti"], "reason": "leaked"}),
        )
        .await;
    assert_eq!(st, 201, "{rev}");
    assert_eq!(
        introspect_at(&a, &a.api, VIEWER, &access).await.1,
        json!({"active": false})
    );

    // Replica B: same configuration, same signing key, same database; it starts while
    // the database is unreachable (as `serve` does: the management API runs anyway).
    let store = Arc::new(SqlStore::connect(&a.cfg.store, &a.cfg.token.participant_claim).unwrap());
    let keys = IssuerKeys::from_config(&a.cfg).unwrap();
    keys.refresh_all().await;
    let state = AppState::new(
        &a.cfg,
        Arc::clone(&a.state.signer),
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    a.db.relay().cut();
    let running = meshpass_exchange::mgmt::start(
        &a.cfg,
        &state,
        store,
        None,
        Arc::new(ExchangeStats::new().unwrap()),
        std::future::pending::<()>(),
    )
    .await
    .unwrap()
    .expect("management API started");
    let b_api = format!("http://{}", running.addr);
    let (st, info) = introspect_at(&a, &b_api, VIEWER, &access).await;
    assert!(
        st == 503 || (st == 200 && info == json!({"active": false})),
        "replica B, whose revocation set was never read, introspects the revoked token as: {st} {info}"
    );
    // The database back: B reads the list (every second) and answers from it.
    a.db.relay().restore();
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = introspect_at(&a, &b_api, VIEWER, &access).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last, (200, json!({"active": false})));
}

/// `mgmt/routes.rs`: `ok` is "its body schema (a component name, or None for no body)".
/// `GET /openapi.json` is declared `(200, None)`, so the document says its own route
/// answers no body, while it answers the JSON document: a client generated from it
/// has no way to return it (nor does it learn the media type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_its_own_json_answer() {
    let s = Service::start(Db::sqlite()).await;
    let resp = s
        .http
        .get(format!("{}/openapi.json", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(ct, "application/json");
    let ok = &doc["paths"]["/openapi.json"]["get"]["responses"]["200"];
    assert!(
        ok["content"]["application/json"].is_object(),
        "GET /openapi.json answers {ct} with a body, documented as: {ok}"
    );
}

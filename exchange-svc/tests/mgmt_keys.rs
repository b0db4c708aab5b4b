//! Key operations through the management API on real OpenBao: status, rotation (with
//! the publish lead, and under traffic), retirement refused while tokens can be live;
//! introspection of tokens signed by an Ed25519 transit key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;
mod vault_common;

use std::sync::Arc;
use std::time::Duration;

use common::WEB;
use meshpass_exchange::mgmt::KeyAdmin;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::vault::TransitSigner;
use mgmt_common::*;
use reqwest::Method;
use serde_json::json;

const KEY: &str = "meshpass-participant";

async fn service(lead: Duration) -> (meshpass_testkit::OpenBao, Arc<Service>) {
    service_with(lead, "ecdsa-p256").await
}

async fn service_with(lead: Duration, key_type: &str) -> (meshpass_testkit::OpenBao, Arc<Service>) {
    let bao = vault_common::bao_with_key(KEY, key_type);
    let mut cfg = vault_common::config(&bao, KEY);
    cfg.publish_lead = lead;
    let signer = Arc::new(TransitSigner::start(&cfg).await.unwrap());
    let s = Service::start_with(
        Db::sqlite(),
        signer.clone() as Arc<dyn Signer>,
        Some(signer as Arc<dyn KeyAdmin>),
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        "",
    )
    .await;
    (bao, Arc::new(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_the_new_version_before_it_signs_and_retiring_the_signer_is_refused() {
    // A fresh key's v1 signs only once its own lead has passed: a lead long enough that
    // v2 cannot get through it during the test on a loaded machine, short enough to wait.
    const LEAD: u64 = 15;
    let (_bao, s) = service(Duration::from_secs(LEAD)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(LEAD + 30);
    let k = loop {
        let (st, _, k) = s.get("/api/v1/keys").await;
        assert_eq!(st, 200, "{k}");
        if k["signing_version"] == 1 || std::time::Instant::now() > deadline {
            break k;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(k["key"], KEY);
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["signing_version"], 1, "{k}");
    assert_eq!(k["publish_lead_secs"], LEAD);

    assert_eq!(
        s.send(s.req(Method::POST, "/api/v1/keys/rotate", Some(VIEWER)))
            .await
            .0,
        403
    );
    let (st, _, k) = s
        .send(s.req(Method::POST, "/api/v1/keys/rotate", Some(KEYS_OP)))
        .await;
    assert_eq!(st, 200, "{k}");
    let versions: Vec<u64> = k["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(k["signing_version"], 1, "v2 waits out the publish lead");
    assert_eq!(k["versions"][1]["signing"], false);
    assert!(
        k["versions"][1]["signs_from"].as_u64().unwrap()
            >= k["versions"][1]["published_since"].as_u64().unwrap() + LEAD
    );
    // Published at once on the token endpoint's JWKS.
    let jwks: serde_json::Value = s
        .http
        .get(format!("{}/.well-known/jwks.json", s.token_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [format!("{KEY}:v1"), format!("{KEY}:v2")]);

    let retire = |below: u64| {
        s.req(Method::POST, "/api/v1/keys/retire", Some(KEYS_OP))
            .json(&json!({"below": below}))
    };
    let (st, _, b) = s.send(retire(2)).await;
    assert_eq!((st, b["field"].as_str()), (422, Some("below")), "{b}");
    let (_, _, audit) = s.get("/api/v1/audit?action=keys.rotate").await;
    assert_eq!(audit["items"][0]["actor"], KEYS_OP);
    assert_eq!(audit["items"][0]["target"], format!("keys/{KEY}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_fails_no_exchange_and_retiring_waits_for_live_tokens() {
    let (_bao, s) = service(Duration::ZERO).await;
    let traffic = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..60 {
                // A new subject each time: every exchange is signed by OpenBao.
                let (st, body) = s
                    .exchange(
                        &format!("spiffe://cluster.local/ns/shop/sa/w{i}"),
                        "payments",
                    )
                    .await;
                statuses.push((st, body["access_token"].as_str().map(str::to_string)));
            }
            statuses
        })
    };
    for _ in 0..3 {
        let (st, _, k) = s
            .send(s.req(Method::POST, "/api/v1/keys/rotate", Some(ADMIN)))
            .await;
        assert_eq!(st, 200, "{k}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = traffic.await.unwrap();
    assert!(
        statuses.iter().all(|(st, _)| *st == 200),
        "{:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let (_, _, k) = s.get("/api/v1/keys").await;
    assert_eq!(k["signing_version"], 4);
    let (st, body) = s.exchange(WEB, "orders").await;
    assert_eq!(st, 200, "{body}");
    // Tokens signed by v1..v3 may live for token.max_ttl_secs: retiring is refused.
    let (st, _, b) = s
        .send(
            s.req(Method::POST, "/api/v1/keys/retire", Some(ADMIN))
                .json(&json!({"below": 4})),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (409, Some("conflict")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_finds_a_live_eddsa_participant_token_active_and_a_forged_one_inactive() {
    let (_bao, s) = service_with(Duration::ZERO, "ed25519").await;
    let (st, body) = s.exchange(WEB, "orders").await;
    assert_eq!(st, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let introspect = |t: String| {
        let s = Arc::clone(&s);
        async move {
            let r = s
                .req(Method::POST, "/api/v1/introspect", Some(VIEWER))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={t}"));
            let (st, _, body) = s.send(r).await;
            assert_eq!(st, 200, "{body}");
            body
        }
    };
    let live = introspect(token.clone()).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sub"], WEB);
    assert_eq!(live["participant"], "acme-orders");
    // The same header and claims under another signature.
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut forged_sig = sig.as_bytes().to_vec();
    forged_sig[10] = if forged_sig[10] == b'A' { b'B' } else { b'A' };
    let forged = format!("{input}.{}", String::from_utf8(forged_sig).unwrap());
    assert_eq!(introspect(forged).await, json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_whose_audit_record_cannot_be_written_is_not_reported_done() {
    let (_bao, s) = service(Duration::ZERO).await;
    // The audit log refuses every row (a full disk, a revoked grant): the change must
    // not answer 200 as if it had been recorded.
    let pool = sqlx::SqlitePool::connect(&s.cfg.store.url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rotate = || s.send(s.req(Method::POST, "/api/v1/keys/rotate", Some(KEYS_OP)));
    let (st, _, body) = rotate().await;
    assert_ne!(st, 200, "{body}");
    assert!(st >= 500, "{st} {body}");
    // Once the log takes rows again, the next change is done and recorded with it.
    sqlx::query("DROP TRIGGER no_audit")
        .execute(&pool)
        .await
        .unwrap();
    let (st, _, body) = rotate().await;
    assert_eq!(st, 200, "{body}");
    let (_, _, audit) = s.get("/api/v1/audit?action=keys.rotate").await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["after"]["versions"], body["versions"]);
}

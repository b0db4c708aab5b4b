//! `/api/v1/revocations` and `/api/v1/introspect` against SQLite and real PostgreSQL
//! over real sockets, and what a revocation does to the token endpoint at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use common::{jti_of, now, WEB};
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

const SHOP_API: &str = "spiffe://cluster.local/ns/shop/sa/api";

fn new_revocation(target: &str, matches: &str) -> Value {
    json!({"target": target, "match": matches, "reason": "compromised node"})
}

async fn revoke(s: &Service, target: &str, matches: &str) -> String {
    let (st, _, body) = s
        .post("/api/v1/revocations", &new_revocation(target, matches))
        .await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn introspect(s: &Service, who: Option<&str>, token: &str) -> (u16, Value) {
    let r = s
        .req(Method::POST, "/api/v1/introspect", who)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"));
    let (st, _, body) = s.send(r).await;
    (st, body)
}

/// A CI deployer that the table gives read and write (as `spiffe://.../ns/ci/*` in the
/// README's example).
const DEPLOYER: &str = "spiffe://cluster.local/ns/ci/sa/deployer";

fn deployer_callers() -> String {
    // Appended to `[management]` after `audiences`: one more `[[management.callers]]`.
    format!("\n[[management.callers]]\nid = \"{DEPLOYER}\"\nroles = [\"read\", \"write\"]\n")
}

async fn service_with_deployer(db: Db) -> Service {
    Service::start_with(
        db,
        common::signer().await,
        None,
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        &deployer_callers(),
    )
    .await
}

/// What the revoked deployer can still do: list mappings, write one, lift its own
/// revocation. Each must be refused (401/403) once its identity is revoked; every
/// one that is not is reported.
async fn assert_revoked_deployer_is_shut_out(s: &Service, id: &str) {
    let mut still = Vec::new();
    let (st, _, _) = s
        .send(s.req(Method::GET, "/api/v1/mappings", Some(DEPLOYER)))
        .await;
    if !(st == 401 || st == 403) {
        still.push(format!("GET /api/v1/mappings -> {st}"));
    }
    let (st, _, _) = s
        .send(
            s.req(Method::POST, "/api/v1/mappings", Some(DEPLOYER))
                .json(&mapping(
                    "planted-by-revoked",
                    "spiffe://cluster.local/ns/ci/*",
                    "payments",
                )),
        )
        .await;
    if !(st == 401 || st == 403) {
        still.push(format!("POST /api/v1/mappings -> {st}"));
    }
    let (st, _, _) = s
        .send(s.req(
            Method::DELETE,
            &format!("/api/v1/revocations/{id}"),
            Some(DEPLOYER),
        ))
        .await;
    if !(st == 401 || st == 403) {
        still.push(format!("DELETE /api/v1/revocations/{id} (its own) -> {st}"));
    }
    let (st, _, _) = s.get(&format!("/api/v1/revocations/{id}")).await;
    if st != 200 {
        still.push(format!(
            "the revocation is no longer in force (GET -> {st})"
        ));
    }
    assert!(
        still.is_empty(),
        "a revoked caller still uses the management API:\n{}",
        still.join("\n")
    );
}

/// DESIGN.md "Revocation": a revoked caller gets 403 even on the read-only
/// `GET /revocations`; a revoked subject may not act for anyone. The management API
/// did not consult the revocation set, so a workload revoked as compromised kept its
/// management roles, and could lift its own revocation.
async fn a_caller_revoked_as_a_caller_can_no_longer_use_the_management_api_nor_lift_its_revocation(
    db: Db,
) {
    let s = service_with_deployer(db).await;
    // Before: the deployer works.
    let (st, _, body) = s
        .send(s.req(Method::GET, "/api/v1/mappings", Some(DEPLOYER)))
        .await;
    assert_eq!(st, 200, "{body}");
    let id = revoke(&s, "caller", DEPLOYER).await;
    assert_revoked_deployer_is_shut_out(&s, &id).await;
}

async fn a_subject_revoked_by_a_pattern_can_no_longer_use_the_management_api_nor_lift_its_revocation(
    db: Db,
) {
    let s = service_with_deployer(db).await;
    let id = revoke(&s, "subject", "spiffe://cluster.local/ns/ci/*").await;
    assert_revoked_deployer_is_shut_out(&s, &id).await;
}

async fn creates_lists_gets_and_lifts_revocations(db: Db) {
    let s = Service::start(db).await;
    let before = now();
    let until = before + 3600;
    let (st, _, r) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": "spiffe://cluster.local/ns/shop/*",
                    "reason": "compromised node", "until": until}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("rv-"), "{id}");
    assert_eq!(r["target"], "subject");
    assert_eq!(r["match"], "spiffe://cluster.local/ns/shop/*");
    assert_eq!(r["until"], until);
    assert_eq!(r["created_by"], ADMIN);
    assert!(r["created_at"].as_u64().unwrap() >= before);

    let (st, _, got) = s.get(&format!("/api/v1/revocations/{id}")).await;
    assert_eq!((st, &got), (200, &r));
    let jti = revoke(&s, "jti", "2f1d6c3e-7a4b-4e5f-9c8d-0b1a2c3d4e5f").await;
    let (st, _, list) = s.get("/api/v1/revocations").await;
    assert_eq!(st, 200);
    let v2 = list["version"].as_u64().unwrap();
    assert!(v2 > 0, "{list}");
    assert_eq!(
        list["items"],
        json!([r, s.get(&format!("/api/v1/revocations/{jti}")).await.2])
    );
    let (_, _, only) = s.get("/api/v1/revocations?target=jti").await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("meshpass_revocations_active 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("meshpass_revocation_version {v2}")),
        "{metrics}"
    );

    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{id}"), None).await.0,
        204
    );
    let (st, _, body) = s.get(&format!("/api/v1/revocations/{id}")).await;
    assert_eq!((st, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{id}"), None).await.0,
        404
    );
    let (_, _, list) = s.get("/api/v1/revocations").await;
    assert!(list["version"].as_u64().unwrap() > v2, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn bad_revocations_are_refused_with_the_field(db: Db) {
    let s = Service::start(db).await;
    let long = "x".repeat(257);
    for (body, field) in [
        (
            json!({"target": "subject", "match": "spiffe://cluster.local/ns/a/sa/b", "reason": ""}),
            "reason",
        ),
        (
            json!({"target": "subject", "match": "spiffe://cluster.local/ns/a/sa/b", "reason": long}),
            "reason",
        ),
        (
            json!({"target": "subject", "match": "not-a-spiffe-id", "reason": "r"}),
            "match",
        ),
        (
            json!({"target": "caller", "match": "spiffe://cluster.local/ns/*/sa/b", "reason": "r"}),
            "match",
        ),
        (
            json!({"target": "jti", "match": "", "reason": "r"}),
            "match",
        ),
        (
            json!({"target": "subject", "match": WEB, "reason": "r", "until": 1}),
            "until",
        ),
        (
            json!({"target": "node", "match": WEB, "reason": "r"}),
            "target",
        ),
        (json!({"target": "subject", "match": WEB}), "reason"),
    ] {
        let (st, _, err) = s.post("/api/v1/revocations", &body).await;
        assert_eq!(st, 422, "{body} → {err}");
        assert_eq!(err["error"], "invalid");
        assert!(
            err["field"].as_str().unwrap().contains(field),
            "{body} → {err}"
        );
    }
    assert_eq!(s.get("/api/v1/revocations").await.2["items"], json!([]));
}

async fn reading_needs_read_and_changing_needs_write(db: Db) {
    let s = Service::start(db).await;
    let id = revoke(&s, "subject", WEB).await;
    let body = new_revocation("subject", SHOP_API);
    for (method, path, who, want) in [
        (
            Method::GET,
            "/api/v1/revocations".to_string(),
            Some(VIEWER),
            200,
        ),
        (
            Method::GET,
            format!("/api/v1/revocations/{id}"),
            Some(VIEWER),
            200,
        ),
        (
            Method::POST,
            "/api/v1/revocations".to_string(),
            Some(VIEWER),
            403,
        ),
        (
            Method::DELETE,
            format!("/api/v1/revocations/{id}"),
            Some(VIEWER),
            403,
        ),
        (Method::GET, "/api/v1/revocations".to_string(), None, 401),
        (Method::POST, "/api/v1/revocations".to_string(), None, 401),
    ] {
        let (st, _, resp) = s.send(s.req(method.clone(), &path, who).json(&body)).await;
        assert_eq!(st, want, "{method} {path} as {who:?}: {resp}");
    }
    // Nothing changed.
    assert_eq!(
        s.get("/api/v1/revocations").await.2["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(introspect(&s, None, "x").await.0, 401);
    assert_eq!(introspect(&s, Some(VIEWER), "x").await.0, 200);
}

async fn every_change_is_audited(db: Db) {
    let s = Service::start(db).await;
    let id = revoke(&s, "caller", "spiffe://cluster.local/ns/edge/*").await;
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{id}"), None).await.0,
        204
    );
    let (_, _, page) = s.get("/api/v1/audit?target=revocations/").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(items[0]["action"], "revocation.create");
    assert_eq!(items[0]["actor"], ADMIN);
    assert_eq!(items[0]["target"], format!("revocations/{id}"));
    assert_eq!(
        items[0]["after"]["match"],
        "spiffe://cluster.local/ns/edge/*"
    );
    assert_eq!(items[0]["before"], Value::Null);
    assert_eq!(items[1]["action"], "revocation.lift");
    assert_eq!(items[1]["before"]["id"], id.as_str());
    assert_eq!(items[1]["after"], Value::Null);
}

async fn a_token_served_for_the_same_form_bytes_is_not_served_after_a_revocation(db: Db) {
    let s = Service::start(db).await;
    let token = s.issuer.svid(WEB, now(), 3600);
    let (st, first) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{first}");
    // The identical request again and again: answered from the cache by its bytes.
    for _ in 0..3 {
        let (_, again) = s.exchange_token(&token, "payments").await;
        assert_eq!(again["access_token"], first["access_token"]);
    }
    let jti = jti_of(first["access_token"].as_str().unwrap());
    revoke(&s, "jti", &jti).await;
    let (st, fresh) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{fresh}");
    assert_ne!(
        fresh["access_token"], first["access_token"],
        "a revoked jti is minted anew, never served"
    );
    let (_, again) = s.exchange_token(&token, "payments").await;
    assert_eq!(again["access_token"], fresh["access_token"]);
    // The caller (the subject's own sidecar) revoked: not even the cached answer.
    revoke(&s, "caller", WEB).await;
    let (st, body) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error_description"], "revoked: compromised node");
}

async fn a_revoked_subject_is_refused_at_once_and_its_cached_token_not_served(db: Db) {
    let s = Service::start(db).await;
    let token = s.issuer.svid(WEB, now(), 3600);
    let (st, first) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{first}");
    let (_, again) = s.exchange_token(&token, "payments").await;
    assert_eq!(
        again["access_token"], first["access_token"],
        "served from the cache"
    );
    let cache = s.state.cache.as_ref().unwrap();
    assert_eq!(cache.len(), 1);

    let id = revoke(&s, "subject", WEB).await;
    assert_eq!(
        cache.len(),
        0,
        "the subject's cached token is dropped at once"
    );
    let (st, body) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(body["error_description"], "revoked: compromised node");
    // Other subjects are unaffected.
    assert_eq!(s.exchange(SHOP_API, "payments").await.0, 200);

    // Lifting restores service, with a freshly minted token.
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{id}"), None).await.0,
        204
    );
    let (st, body) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{body}");
    assert_ne!(body["access_token"], first["access_token"]);
}

async fn a_pattern_revokes_every_matching_subject_and_a_caller_revocation_its_exchanges(db: Db) {
    let s = Service::start(db).await;
    let id = revoke(&s, "subject", "spiffe://cluster.local/ns/shop/*").await;
    for who in [WEB, SHOP_API] {
        let (st, body) = s.exchange(who, "payments").await;
        assert_eq!(st, 403, "{who}: {body}");
        assert_eq!(body["error"], "unauthorized_client");
    }
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{id}"), None).await.0,
        204
    );
    assert_eq!(s.exchange(WEB, "payments").await.0, 200);

    // The caller here is the subject's own sidecar (CLIENT mode).
    revoke(&s, "caller", SHOP_API).await;
    let (st, body) = s.exchange(SHOP_API, "payments").await;
    assert_eq!(st, 403, "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("revoked: "));
    assert_eq!(s.exchange(WEB, "payments").await.0, 200);
}

async fn a_revoked_jti_is_inactive_in_introspection_and_listed_in_the_feed(db: Db) {
    let s = Service::start(db).await;
    let token = s.issuer.svid(WEB, now(), 3600);
    let (st, minted) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{minted}");
    let access = minted["access_token"].as_str().unwrap();
    let (st, info) = introspect(&s, Some(VIEWER), access).await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], WEB);
    assert_eq!(info["iss"], common::SERVICE_ISSUER);
    assert_eq!(info["participant"], "acme");
    let jti = info["jti"].as_str().unwrap().to_string();
    assert!(info["exp"].as_u64().unwrap() > now());

    // Not ours, or not a token at all: inactive.
    let foreign = s.issuer.svid(WEB, now(), 3600);
    assert_eq!(
        introspect(&s, Some(VIEWER), &foreign).await.1,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&s, Some(VIEWER), "a.b.c").await.1,
        json!({"active": false})
    );

    let id = revoke(&s, "jti", &jti).await;
    assert_eq!(
        introspect(&s, Some(VIEWER), access).await.1,
        json!({"active": false})
    );
    let feed: Value = s
        .http
        .get(format!("{}/revocations", s.token_url))
        .header("x-forwarded-client-cert", format!("URI={WEB}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(feed["added"][0]["id"], id.as_str());
    assert_eq!(feed["added"][0]["target"], "jti");
    assert_eq!(feed["added"][0]["match"], jti.as_str());
    // The revoked token is never served again; the subject itself is not revoked.
    let (st, fresh) = s.exchange_token(&token, "payments").await;
    assert_eq!(st, 200, "{fresh}");
    assert_ne!(fresh["access_token"], minted["access_token"]);

    // Revoking the subject makes its tokens inactive too.
    let fresh_token = fresh["access_token"].as_str().unwrap();
    assert_eq!(
        introspect(&s, Some(VIEWER), fresh_token).await.1["active"],
        true
    );
    revoke(&s, "subject", WEB).await;
    assert_eq!(
        introspect(&s, Some(VIEWER), fresh_token).await.1,
        json!({"active": false})
    );
}

async fn a_token_naming_a_revoked_workload_as_acting_is_inactive_in_introspection(db: Db) {
    const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";
    let s = Service::start(db).await;
    let t = now();
    // web's token says batch acts for it (RFC 8693 §4.1): the minted token carries it.
    let acted = s.issuer.sign(&json!({
        "iss": common::ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 3600,
        "act": {"sub": BATCH}
    }));
    let (st, minted) = s.exchange_token(&acted, "payments").await;
    assert_eq!(st, 200, "{minted}");
    let access = minted["access_token"].as_str().unwrap();
    let (_, info) = introspect(&s, Some(VIEWER), access).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["act"]["sub"], BATCH, "{info}");
    // The token endpoint and the filter refuse what a revoked workload acts in; so
    // does introspection, for any resource server that asks.
    revoke(&s, "subject", BATCH).await;
    assert_eq!(
        introspect(&s, Some(VIEWER), access).await.1,
        json!({"active": false})
    );
}

/// A revocation past its `until` that the sweep has not removed yet is gone for every
/// route alike: `GET` answers 404, so lifting it is 404 too, with no `revocation.lift`
/// audited for an entry that no longer revoked anything.
async fn a_lapsed_revocation_the_sweep_has_not_removed_is_not_found_to_lift_as_to_get(db: Db) {
    use sqlx::Connection;
    let s = Service::start(db).await;
    let (st, _, r) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": SHOP_API, "reason": "compromised node",
                    "until": now() + 3600}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    // Lapsed a second ago; the sweep has not come yet.
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&s.cfg.store.url)
        .await
        .unwrap();
    sqlx::query("UPDATE revocations SET until_at = $1 WHERE id = $2")
        .bind(i64::try_from(now() - 1).unwrap())
        .bind(&id)
        .execute(&mut c)
        .await
        .unwrap();
    let path = format!("/api/v1/revocations/{id}");
    let (st, _, body) = s.get(&path).await;
    assert_eq!(st, 404, "GET of the lapsed entry: {body}");
    let (st, _, body) = s.send(s.req(Method::DELETE, &path, Some(ADMIN))).await;
    assert_eq!(st, 404, "lifting the lapsed entry: {body}");
    let (_, _, page) = s
        .get(&format!(
            "/api/v1/audit?action=revocation.lift&target=revocations/{id}"
        ))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
}

on_both_backends!(
    a_lapsed_revocation_the_sweep_has_not_removed_is_not_found_to_lift_as_to_get,
    creates_lists_gets_and_lifts_revocations,
    bad_revocations_are_refused_with_the_field,
    reading_needs_read_and_changing_needs_write,
    every_change_is_audited,
    a_revoked_subject_is_refused_at_once_and_its_cached_token_not_served,
    a_token_served_for_the_same_form_bytes_is_not_served_after_a_revocation,
    a_pattern_revokes_every_matching_subject_and_a_caller_revocation_its_exchanges,
    a_revoked_jti_is_inactive_in_introspection_and_listed_in_the_feed,
    a_token_naming_a_revoked_workload_as_acting_is_inactive_in_introspection,
    a_caller_revoked_as_a_caller_can_no_longer_use_the_management_api_nor_lift_its_revocation,
    a_subject_revoked_by_a_pattern_can_no_longer_use_the_management_api_nor_lift_its_revocation,
);

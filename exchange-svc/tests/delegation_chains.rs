//! Delegation chains through the management service on SQLite and real PostgreSQL:
//! the service never mints an `act` chain deeper than it accepts as input, and a
//! revoked workload named in an `act` chain by its Kubernetes subject is refused (and
//! carried as its SPIFFE ID); a raw Kubernetes subject cannot be revoked as such.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use common::{exchange_form, now, TestIssuer, JWT_TYPE, TD, WEB};
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";

/// `{"sub": ids[0], "act": {"sub": ids[1], ...}}`.
fn chain_of(ids: &[String]) -> Value {
    let mut v = Value::Null;
    for id in ids.iter().rev() {
        let mut o = serde_json::Map::new();
        o.insert("sub".into(), json!(id));
        if !v.is_null() {
            o.insert("act".into(), v);
        }
        v = Value::Object(o);
    }
    v
}

fn depth(act: &Value) -> usize {
    let mut d = 0;
    let mut next = Some(act);
    while let Some(a) = next.filter(|a| a.is_object()) {
        d += 1;
        next = a.get("act");
    }
    d
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

/// `POST /token` from `caller`'s sidecar with extra form fields.
async fn exchange_as(
    s: &Service,
    caller: &str,
    subject: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let resp = s
        .http
        .post(format!("{}/token", s.token_url))
        .header("x-forwarded-client-cert", format!("URI={caller}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(exchange_form(subject, extra))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn ledger_with_batch_as_actor(s: &Service) {
    let mut m = mapping("shop-ledger", "spiffe://cluster.local/ns/shop/*", "ledger");
    m["scopes"] = json!([]);
    m["allowed_actors"] = json!([BATCH]);
    let (st, _, body) = s.post("/api/v1/mappings", &m).await;
    assert_eq!(st, 201, "{body}");
}

/// DESIGN.md "Participant tokens": an `act` "nested at most 16 deep" is what the
/// service accepts; anything deeper is refused (`invalid_request`). The service must
/// not mint a token whose chain it would itself refuse: with an actor token at the
/// accepted limit, the minted `act` (the actor on top of its own chain) is one deeper.
async fn the_service_never_mints_an_act_chain_deeper_than_it_accepts_from_a_token(db: Db) {
    let s = Service::start(db).await;
    ledger_with_batch_as_actor(&s).await;
    let t = now();
    let prior: Vec<String> = (1..=16)
        .map(|i| format!("spiffe://cluster.local/ns/shop/sa/hop{i}"))
        .collect();
    // The limit, as the service applies it to a subject token: 16 accepted, 17 refused.
    let subject_with = |ids: &[String]| {
        s.issuer.sign(&json!({
            "iss": common::ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
            "act": chain_of(ids)
        }))
    };
    let (st, body) = exchange_as(&s, WEB, &subject_with(&prior), &[("resource", "ledger")]).await;
    assert_eq!(st, 200, "16 deep is accepted: {body}");
    let mut seventeen = vec![BATCH.to_string()];
    seventeen.extend(prior.iter().cloned());
    let (st, body) = exchange_as(
        &s,
        WEB,
        &subject_with(&seventeen),
        &[("resource", "ledger")],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_request")),
        "17 deep is refused: {body}"
    );
    // An actor token at the limit: accepted, and the minted chain is one deeper.
    let actor = s.issuer.sign(&json!({
        "iss": common::ISSUER, "sub": BATCH, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": chain_of(&prior)
    }));
    let subject = s.issuer.svid(WEB, t, 600);
    let (st, body) = exchange_as(
        &s,
        WEB,
        &subject,
        &[
            ("resource", "ledger"),
            ("actor_token", &actor),
            ("actor_token_type", JWT_TYPE),
        ],
    )
    .await;
    if st == 200 {
        let minted = claims(body["access_token"].as_str().unwrap());
        let d = depth(&minted["act"]);
        assert!(
            d <= 16,
            "minted an act chain {d} deep, which the service refuses (invalid_request) as input"
        );
    } else {
        assert_eq!(body["error"], "invalid_request", "{st} {body}");
    }
}

// ---------------------------------------------------------------------------------
// A Kubernetes subject in an act chain.

const K8S_ISSUER: &str = "https://k8s.test";

/// A service that also accepts Kubernetes service-account tokens of `k8s`
/// (`system:serviceaccount:NS:SA` → `spiffe://cluster.local/ns/NS/sa/SA`).
async fn service_with_kubernetes_issuer(db: Db, k8s: &TestIssuer) -> Service {
    // Appended inside `[management]`: a new `[[issuers]]` table element is still valid
    // TOML there, and `[[management.callers]]` after it are full paths.
    let extra = format!(
        "[[issuers]]\nissuer = \"{K8S_ISSUER}\"\naudiences = [\"meshpass\"]\ntrust_domains = [\"{TD}\"]\nsubject_format = \"kubernetes_service_account\"\njwks = '{}'\n",
        k8s.jwks()
    );
    Service::start_with(
        db,
        common::signer().await,
        None,
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        &extra,
    )
    .await
}

/// DESIGN.md "Revocation": "A revoked subject may not act for anyone either: the
/// service refuses ... a subject or actor token whose `act` chain names it at any
/// depth". A Kubernetes issuer's tokens name workloads as `system:serviceaccount:NS:SA`
/// (DESIGN.md "Subject tokens" 3: that *is* `spiffe://TD/ns/NS/sa/SA`), so a token of
/// that issuer whose `act` names the revoked batch that way names the revoked workload.
async fn a_workload_revoked_by_spiffe_id_is_refused_when_an_act_chain_names_it_by_its_kubernetes_subject(
    db: Db,
) {
    let k8s = TestIssuer::new(K8S_ISSUER, "k8s-1");
    let s = service_with_kubernetes_issuer(db, &k8s).await;
    let t = now();
    let token = k8s.sign(&json!({
        "iss": K8S_ISSUER, "sub": "system:serviceaccount:shop:web", "aud": "meshpass",
        "iat": t, "exp": t + 600,
        "act": {"sub": "system:serviceaccount:shop:batch"}
    }));
    let (st, body) = exchange_as(&s, WEB, &token, &[("resource", "payments")]).await;
    assert_eq!(st, 200, "before the revocation: {body}");
    // Carried as the workload's SPIFFE ID, which revocations (and the filter) match.
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["act"]["sub"],
        BATCH
    );
    let minted = body["access_token"].as_str().unwrap().to_string();

    // The raw Kubernetes subject cannot be revoked as such (SPIFFE IDs / patterns only).
    let (raw_st, _, raw_body) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": "system:serviceaccount:shop:batch", "reason": "compromised"}),
        )
        .await;
    eprintln!("revoking the raw subject: {raw_st} {raw_body}");
    // The workload itself, by its SPIFFE ID.
    let (st, _, body) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": BATCH, "reason": "compromised"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    // Introspection of the token minted before (its act names batch).
    let (_, _, intro) = s
        .send(
            s.req(Method::POST, "/api/v1/introspect", Some(ADMIN))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={minted}")),
        )
        .await;
    assert_eq!(
        intro["active"], false,
        "introspection of a token whose act names the revoked workload: {intro}"
    );
    let fresh = k8s.sign(&json!({
        "iss": K8S_ISSUER, "sub": "system:serviceaccount:shop:web", "aud": "meshpass",
        "iat": t, "exp": t + 601,
        "act": {"sub": "system:serviceaccount:shop:batch"}
    }));
    let (st, body) = exchange_as(&s, WEB, &fresh, &[("resource", "payments")]).await;
    let act = body["access_token"]
        .as_str()
        .map(|t| claims(t)["act"].clone());
    assert_eq!(
        st, 403,
        "minted for an act chain naming the revoked {BATCH} as system:serviceaccount:shop:batch: act = {act:?}; raw revocation answered {raw_st}; introspection active = {}",
        intro["active"]
    );
}

/// DESIGN.md "Revocation": a subject `match` is "an exact SPIFFE ID or a
/// SpiffeIdPattern": a raw Kubernetes subject is refused (422), never stored unenforced.
async fn a_revocation_naming_a_raw_kubernetes_subject_is_refused_rather_than_stored_unenforced(
    db: Db,
) {
    let s = Service::start(db).await;
    let (st, _, body) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": "system:serviceaccount:shop:batch", "reason": "compromised"}),
        )
        .await;
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["field"], "match", "{body}");
}

on_both_backends!(
    the_service_never_mints_an_act_chain_deeper_than_it_accepts_from_a_token,
    a_workload_revoked_by_spiffe_id_is_refused_when_an_act_chain_names_it_by_its_kubernetes_subject,
    a_revocation_naming_a_raw_kubernetes_subject_is_refused_rather_than_stored_unenforced,
);

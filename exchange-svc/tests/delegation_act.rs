//! What a minted `act` may carry (RFC 8693 §4.1) and who may be named in it: identities
//! only (every other member of a token's `act` was once copied into the participant
//! token unverified), and only workloads a revocation can match (a level naming none
//! was once carried, unrevocable).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::store::RevocationTarget;
use serde_json::{json, Value};

const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";
const CRON: &str = "spiffe://cluster.local/ns/ops/sa/cron";

/// Members RFC 8693 §4.1 says MUST NOT be used inside `act` (non-identity claims), and
/// claims DESIGN.md lists as reserved (never set by anything but the service).
const NOT_IN_ACT: &[&str] = &[
    "exp",
    "nbf",
    "aud",
    "iat",
    "jti",
    "scope",
    "cnf",
    "may_act",
    "client_id",
];

async fn app(issuer: &TestIssuer, dir: &std::path::Path) -> axum::Router {
    let cfg = load_config(
        dir,
        &config_toml(issuer, &dir.join("m.db"), DELEGATED_LEDGER),
    );
    meshpass_exchange::app(state_with(&cfg, signer().await, Arc::new(SystemClock)).await)
}

fn delegated(subject: &str, actor: &str, resource: &str) -> String {
    exchange_form(
        subject,
        &[
            ("resource", resource),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
        ],
    )
}

/// Every (level, member) of an `act` chain that is one of [`NOT_IN_ACT`].
fn forbidden_members(act: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut level = Some(act);
    let mut depth = 1;
    while let Some(o) = level.and_then(Value::as_object) {
        for k in o.keys() {
            if NOT_IN_ACT.contains(&k.as_str()) {
                out.push(format!("level {depth}: {k}"));
            }
        }
        level = o.get("act");
        depth += 1;
    }
    out
}

/// RFC 8693 §4.1: "Non-identity claims (e.g., exp, nbf, and aud) are not meaningful when
/// used within an act claim and therefore MUST NOT be used." DESIGN.md: a subject
/// token's `act` that is not an RFC 8693 actor object "is refused (invalid_request),
/// never copied", and `cnf`/`scope`/`may_act` are reserved claims of a participant
/// token. A subject token's `act` carrying such members must be refused, or carried
/// without them, never copied verbatim into the participant token.
#[tokio::test]
async fn a_subject_tokens_act_is_never_minted_with_non_identity_or_reserved_claims_inside() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let app = app(&issuer, dir.path()).await;
    let t = now();
    let subject = issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": {
            "sub": BATCH, "exp": t + 999_999, "aud": "payments",
            "scope": "admin", "cnf": {"jkt": "attacker-key-thumbprint"}
        }
    }));
    let a = post_token(&app, exchange_form(&subject, &[("resource", "ledger")])).await;
    if a.status.as_u16() == 200 {
        let act = claims_of(a.json["access_token"].as_str().unwrap()).unwrap()["act"].clone();
        let bad = forbidden_members(&act);
        assert!(
            bad.is_empty(),
            "the participant token's act carries members copied unverified from the subject token ({bad:?}): act = {act}"
        );
    } else {
        assert_eq!(a.json["error"], "invalid_request", "{}", a.json);
    }
}

/// The same rule for the actor token's own `act` chain, which the minted token nests
/// under the actor (README step 9; RFC 8693 §4.1).
#[tokio::test]
async fn an_actor_tokens_own_act_is_never_nested_with_non_identity_or_reserved_claims_inside() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let app = app(&issuer, dir.path()).await;
    let t = now();
    let actor = issuer.sign(&json!({
        "iss": ISSUER, "sub": BATCH, "aud": "meshpass", "iat": t, "exp": t + 600,
        "act": {"sub": CRON, "aud": "ledger", "nbf": 1, "may_act": {"sub": OTHER}}
    }));
    let subject = issuer.svid(WEB, t, 600);
    let a = post_token(&app, delegated(&subject, &actor, "ledger")).await;
    if a.status.as_u16() == 200 {
        let act = claims_of(a.json["access_token"].as_str().unwrap()).unwrap()["act"].clone();
        assert_eq!(act["sub"], BATCH, "{act}");
        let bad = forbidden_members(&act);
        assert!(
            bad.is_empty(),
            "the participant token's act carries members copied unverified from the actor token ({bad:?}): act = {act}"
        );
    } else {
        assert_eq!(a.json["error"], "invalid_request", "{}", a.json);
    }
}

/// DESIGN.md "Revocation": "A revoked subject may not act for anyone either ... a subject
/// or actor token whose act chain names it at any depth" is refused, and the filter
/// checks the minted token's `act.sub` against the revoked subjects. Revocations name
/// workloads (SPIFFE IDs or patterns; a raw Kubernetes subject is refused), so an
/// `act.sub` that names no workload (not a SPIFFE ID, not a Kubernetes service account)
/// can never be revoked, here or by the filter: it is carried into the participant
/// token unchecked. E.g. the revoked batch spelled with an upper-case trust domain (an
/// invalid SPIFFE ID, the same host to any URI comparison): it must be refused, not
/// minted as the acting party.
#[tokio::test]
async fn an_act_chain_naming_an_actor_no_revocation_can_match_is_refused_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), DELEGATED_LEDGER),
    );
    let (st, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(st.clone());
    revoke_in(&st, &store, RevocationTarget::Subject, BATCH).await;
    let t = now();
    let mut minted = Vec::new();
    for sub in [
        "spiffe://CLUSTER.LOCAL/ns/shop/sa/batch",
        "SPIFFE://cluster.local/ns/shop/sa/batch",
        "batch",
    ] {
        let subject = issuer.sign(&json!({
            "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 600,
            "act": {"sub": sub}
        }));
        let a = post_token(&app, exchange_form(&subject, &[("resource", "ledger")])).await;
        if a.status.as_u16() == 200 {
            let act = claims_of(a.json["access_token"].as_str().unwrap()).unwrap()["act"].clone();
            minted.push(format!("{sub:?} → act = {act}"));
        }
    }
    assert!(
        minted.is_empty(),
        "participant tokens were minted naming an actor no revocation can match (batch is revoked): {minted:?}"
    );
}

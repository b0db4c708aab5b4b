//! Caller binding edges (exchange/caller.rs, caller.rs): a caller that may not ask for
//! the subject is refused before what it asks for is judged (a stolen subject token
//! tells a stranger nothing of the mapping), and a trust domain's own ID is no caller.
//! In-process app, real transit signer on the shared OpenBao, SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::SystemClock;

const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/thief";

/// A SERVER-mode mapping whose callers are "any workload of the trust domain".
const LEDGER: &str = r#"
[[mappings]]
name = "shop-to-ledger"
subject = "spiffe://cluster.local/ns/shop/*"
resource = "ledger"
participant = "acme-ledger"
ttl_secs = 300
allowed_callers = ["spiffe://cluster.local/*"]
"#;

struct Env {
    _dir: tempfile::TempDir,
    issuer: TestIssuer,
    app: axum::Router,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), LEDGER),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    Env {
        _dir: dir,
        issuer,
        app: meshpass_exchange::app(state),
    }
}

/// DESIGN.md "Subject tokens" item 5 / README error table: a caller that is neither the
/// subject nor in the mapping's `allowed_callers` gets 403 `unauthorized_client`. A thief
/// holding a stolen subject token must learn nothing about the subject's grant: today
/// the scopes and audiences are judged first (README step 5 before step 6), so the
/// thief gets `invalid_scope` / `invalid_target` answers that enumerate the mapping's
/// scopes and audiences, unlimited (the rate limit is charged only after the binding).
#[tokio::test]
async fn a_stranger_with_a_stolen_subject_token_is_refused_as_caller_before_scopes_or_audiences_are_judged(
) {
    let e = env().await;
    let stolen = e.issuer.svid(WEB, now(), 600);
    for (what, extra) in [
        ("scope", [("resource", "payments"), ("scope", "admin")]),
        (
            "audience",
            [
                ("resource", "payments"),
                ("audience", "https://evil.example"),
            ],
        ),
    ] {
        let a = post_token_as(&e.app, exchange_form(&stolen, &extra), Some(EVIL)).await;
        assert_eq!(
            (a.status.as_u16(), a.json["error"].as_str().unwrap_or("")),
            (403, "unauthorized_client"),
            "a stranger probing the subject's {what}s: {}",
            a.json
        );
    }
}

/// DESIGN.md item 3: `spiffe://TD` alone is the trust domain's own ID, never a workload
/// (refused as a subject). As the caller of `/token` it must not pass for a workload of
/// the trust domain either: `allowed_callers = ["spiffe://cluster.local/*"]` names the
/// trust domain's workloads, yet a connection whose identity is the trust-domain ID
/// (the URI SAN a SPIFFE CA certificate carries) exchanges another subject's token.
#[tokio::test]
async fn a_caller_naming_only_the_trust_domain_is_no_workload_and_matches_no_allowed_callers() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&subject, &[("resource", "ledger")]),
        Some("spiffe://cluster.local"),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json["error"].as_str().unwrap_or("")),
        (403, "unauthorized_client"),
        "the trust domain's own ID was accepted as a SERVER-mode caller: {}",
        a.json
    );
    // A real workload of the trust domain is still a listed caller.
    let a = post_token_as(
        &e.app,
        exchange_form(&subject, &[("resource", "ledger")]),
        Some("spiffe://cluster.local/ns/edge/sa/gateway"),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

//! `POST /api/v1/revocations` refuses what it could never undo or never enforce: a
//! subject or caller revocation covering the caller itself (no one it covers could
//! lift it), and a `jti` in a form no minted token has. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use common::{jti_of, now, WEB};
use mgmt_common::*;
use reqwest::Method;
use serde_json::json;

/// README "Management API": a revoked identity is 403 on every endpoint and "neither
/// changes policy nor lifts its own revocation (another management caller lifts it)".
/// A `subject` or `caller` revocation whose pattern covers every management caller with
/// the `write` role (here the whole trust domain, `spiffe://cluster.local/*`: one
/// missing path segment away from `spiffe://cluster.local/ns/x/*`) leaves no caller
/// that could lift it: the API answers 201 and from then on refuses every lift (403),
/// so the only way back is editing the database by hand while every exchange of the
/// trust domain is refused. Such a revocation must be refused up front (409/422), or
/// stay liftable through the API.
async fn a_revocation_covering_every_management_caller_is_refused_or_can_still_be_lifted(db: Db) {
    let s = Service::start(db).await;
    let mut stuck = Vec::new();
    for target in ["subject", "caller"] {
        let (st, _, r) = s
            .post(
                "/api/v1/revocations",
                &json!({"target": target, "match": "spiffe://cluster.local/*",
                        "reason": "meant ns/shop/*"}),
            )
            .await;
        if st == 409 || st == 422 {
            continue;
        }
        assert_eq!(st, 201, "{target}: {r}");
        let id = r["id"].as_str().unwrap().to_string();
        let path = format!("/api/v1/revocations/{id}");
        let mut answers = Vec::new();
        let mut lifted = false;
        for who in [ADMIN, WRITER] {
            let (st, _, body) = s.send(s.req(Method::DELETE, &path, Some(who))).await;
            answers.push(format!("DELETE as {who} -> {st} {body}"));
            if st == 204 {
                lifted = true;
                break;
            }
        }
        if !lifted {
            stuck.push(format!(
                "{target} revocation of spiffe://cluster.local/* answered 201, then:\n  {}",
                answers.join("\n  ")
            ));
            // Put the store back by hand for the next target (what an operator must do).
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let mut c = sqlx::AnyConnection::connect(&s.cfg.store.url)
                .await
                .unwrap();
            sqlx::query("DELETE FROM revocations")
                .execute(&mut c)
                .await
                .unwrap();
            s.state.revocations.lifted(&id);
        }
    }
    assert!(
        stuck.is_empty(),
        "a revocation no management caller can ever lift was accepted:\n{}",
        stuck.join("\n")
    );
}

/// A `jti` revocation names "the participant token's jti, exact" (DESIGN.md), and the
/// service mints every `jti` as a UUID (README "Mint"). A match copied with the
/// quotes of the decoded JSON, or a stray space, is accepted with 201 as if the token
/// were revoked, yet can never equal any `jti` this service mints: the token stays
/// served from the cache and the filters keep honouring it. Such a match must be
/// refused (422 naming `match`), or take effect.
async fn a_jti_revocation_that_no_minted_token_can_match_is_refused_or_takes_effect(db: Db) {
    let s = Service::start(db).await;
    let mut silently_void = Vec::new();
    for (ttl, before, after) in [(3600, "\"", "\""), (3601, " ", "")] {
        // A subject token of its own per round: a cache entry of its own.
        let token = s.issuer.svid(WEB, now(), ttl);
        let (st, first) = s.exchange_token(&token, "payments").await;
        assert_eq!(st, 200, "{first}");
        let jti = jti_of(first["access_token"].as_str().unwrap());
        let matches = format!("{before}{jti}{after}");
        let (st, _, r) = s
            .post(
                "/api/v1/revocations",
                &json!({"target": "jti", "match": matches, "reason": "leaked in a log"}),
            )
            .await;
        if st == 422 {
            assert_eq!(r["field"], "match", "{r}");
            continue;
        }
        assert_eq!(st, 201, "{r}");
        let (st, again) = s.exchange_token(&token, "payments").await;
        if st == 200 && again["access_token"] == first["access_token"] {
            silently_void.push(format!(
                "match {matches:?} answered 201, and the token with jti {jti:?} is still served"
            ));
        }
    }
    assert!(
        silently_void.is_empty(),
        "a jti revocation that can never match was accepted:\n{}",
        silently_void.join("\n")
    );
}

on_both_backends!(
    a_jti_revocation_that_no_minted_token_can_match_is_refused_or_takes_effect,
    a_revocation_covering_every_management_caller_is_refused_or_can_still_be_lifted
);

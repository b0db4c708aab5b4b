//! Concurrent management writes on SQLite and real PostgreSQL over real sockets:
//! conditional writes (`If-Match`) racing each other (exactly one wins, across two
//! replicas too), and an export taken while imports change the store is one state of
//! it (one read snapshot), so it imports again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use std::sync::Arc;

use meshpass_exchange::store::{
    Actor, Mapping, PolicyDocument, Precondition, SqlStore, StoreError,
};
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn actor() -> Actor {
    Actor {
        who: ADMIN.into(),
        request_id: "concurrency-test".into(),
    }
}

async fn patch_if_match(s: &Service, path: &str, tag: &str, body: &Value) -> u16 {
    s.send(
        s.req(Method::PATCH, path, Some(ADMIN))
            .header("if-match", tag)
            .json(body),
    )
    .await
    .0
}

// ---------------------------------------------------------------------------------
// If-Match races.

/// README "Writes": "of concurrent writers holding the same ETag, exactly one wins, the
/// others get 412". Two PATCHes with one `If-Match`, sent at once, many times.
async fn two_concurrent_patches_with_the_same_if_match_never_both_succeed(db: Db) {
    let s = Arc::new(Service::start(db).await);
    let m = mapping("race", "spiffe://cluster.local/ns/race/*", "race");
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    let (mut both, mut one, mut none) = (0, 0, 0);
    for i in 0..60u64 {
        // A fresh state each round (ttl differs from both patches' values).
        let (st, tag, _) = s
            .send(
                s.req(Method::PATCH, "/api/v1/mappings/race", Some(ADMIN))
                    .json(&json!({"ttl_secs": 1000 + i, "participant": "acme"})),
            )
            .await;
        assert_eq!(st, 200);
        let tag = tag.unwrap();
        // Both change the state (a no-op patch leaves the tag valid, rightly).
        let (pa, pb) = (
            json!({"ttl_secs": 120}),
            json!({"participant": format!("other-{i}")}),
        );
        let (a, b) = tokio::join!(
            patch_if_match(&s, "/api/v1/mappings/race", &tag, &pa),
            patch_if_match(&s, "/api/v1/mappings/race", &tag, &pb),
        );
        match (a, b) {
            (200, 200) => both += 1,
            (200, 412) | (412, 200) => one += 1,
            (412, 412) => none += 1,
            other => panic!("unexpected answers {other:?}"),
        }
    }
    eprintln!("If-Match race over HTTP: both={both} one={one} none={none}");
    assert_eq!(
        both, 0,
        "lost updates: both PATCHes succeeded {both} times of 60"
    );
    assert_eq!(none, 0, "neither won {none} times");
}

/// The same race on the store directly, from two store instances (two replicas on one
/// database) and eight writers at once: exactly one writer per tag wins.
async fn eight_writers_on_two_replicas_holding_one_etag_yield_exactly_one_winner(db: Db) {
    let s = Service::start(db).await;
    let second = Arc::new(SqlStore::connect(&s.cfg.store, &s.cfg.token.participant_claim).unwrap());
    let stores = [s.store.clone(), second];
    let base: Mapping =
        serde_json::from_value(mapping("race2", "spiffe://cluster.local/ns/race/*", "race"))
            .unwrap();
    s.store
        .save_mapping(&base, Precondition::None, &actor())
        .await
        .unwrap();
    let mut multi = 0;
    let mut errors = Vec::new();
    for round in 0..40u64 {
        let mut start = base.clone();
        start.ttl_secs = 2000 + round;
        let tag = s
            .store
            .save_mapping(&start, Precondition::None, &actor())
            .await
            .unwrap()
            .etag;
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let store = stores[(w % 2) as usize].clone();
            let mut m = start.clone();
            m.ttl_secs = 100 + w;
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .save_mapping(&m, Precondition::Matches(tag), &actor())
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::PreconditionFailed(_)) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if wins > 1 {
            multi += 1;
        }
    }
    eprintln!("store race: rounds with >1 winner = {multi}; other errors = {errors:?}");
    assert_eq!(multi, 0, "{multi} of 40 rounds had more than one winner");
}

// ---------------------------------------------------------------------------------
// Export during concurrent writes.

/// A document in export order (by name; by resource and scope).
fn doc_of(v: &Value) -> PolicyDocument {
    let mut d: PolicyDocument = serde_json::from_value(v.clone()).unwrap();
    d.mappings.sort_by(|a, b| a.name.cmp(&b.name));
    d.scopes
        .sort_by(|a, b| (&a.resource, &a.scope).cmp(&(&b.resource, &b.scope)));
    d
}

/// DESIGN.md "Mappings and management": "A scope row is never dead configuration ...
/// so every export imports again". An export taken while an import swaps the store
/// between two states must be one of them (a snapshot), and so import again with prune.
async fn an_export_taken_during_concurrent_imports_is_one_consistent_state_that_imports_again(
    db: Db,
) {
    let s = Arc::new(Service::start(db).await);
    let (st, _, base) = s.get("/api/v1/export").await;
    assert_eq!(st, 200);
    // State B: the seeded policy. State A: B plus a mapping granting `admin` on
    // payments and the scope row payments/admin that only it grants.
    let mut a = base.clone();
    a["mappings"].as_array_mut().unwrap().push(json!({
        "name": "zz-admins", "subject": "spiffe://cluster.local/ns/admin/*",
        "resource": "payments", "participant": "acme", "audiences": [],
        "scopes": ["admin"], "ttl_secs": 300, "rate_limit": null,
        "allowed_callers": [], "allowed_actors": []
    }));
    a["scopes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"resource": "payments", "scope": "admin", "claims": {"admin": true}}));
    let (doc_a, doc_b) = (doc_of(&a), doc_of(&base));
    let states = [doc_a.clone(), doc_b.clone()];
    let state_a = doc_a.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (s.store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let doc = if n % 2 == 0 { &doc_a } else { &doc_b };
                store.import(doc, true, false, &actor()).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let mut torn: Vec<Value> = Vec::new();
    let mut exports = 0;
    while exports < 600 && torn.len() < 3 {
        let (st, _, doc) = s.get("/api/v1/export").await;
        assert_eq!(st, 200);
        exports += 1;
        if !states.contains(&doc_of(&doc)) {
            torn.push(doc);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let imports = writer.await.unwrap();
    eprintln!(
        "exports: {exports}, imports meanwhile: {imports}, torn exports: {}",
        torn.len()
    );
    for doc in &torn {
        let has_m = doc["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "zz-admins");
        let has_row = doc["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["scope"] == "admin");
        // What re-importing it (prune, as a GitOps loop would) does now.
        let (st, _, answer) = s.post("/api/v1/import?prune=true&dry_run=true", doc).await;
        eprintln!(
            "torn export: mapping zz-admins {has_m}, row payments/admin {has_row}; re-import with prune (dry run) -> {st} {answer}"
        );
        if has_m && !has_row {
            // Restoring it with prune over state A (which it was taken during) deletes
            // the row that every state holding zz-admins had.
            s.store
                .import(&state_a, true, false, &actor())
                .await
                .unwrap();
            let (st, _, answer) = s.post("/api/v1/import?prune=true&dry_run=true", doc).await;
            eprintln!("  the same over state A -> {st} {answer}");
        }
    }
    assert!(
        torn.is_empty(),
        "{} of {exports} exports were neither state the store was ever in; first: {}",
        torn.len(),
        torn[0]
    );
}

on_both_backends!(
    two_concurrent_patches_with_the_same_if_match_never_both_succeed,
    eight_writers_on_two_replicas_holding_one_etag_yield_exactly_one_winner,
    an_export_taken_during_concurrent_imports_is_one_consistent_state_that_imports_again,
);

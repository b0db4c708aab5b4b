//! The revocation feed as the filters read it: every answer read whole by the filter's
//! own parser (`meshpass_filter::feed`) and tracking the store; a delta served while
//! another replica prunes the log still carries every change after `since`
//! (PostgreSQL); the store down is 503 + `Retry-After` on every route. Real SQLite and
//! PostgreSQL, real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

/// The filter's parser and set, exactly as the sidecars run them.
use meshpass_filter::feed as filter_feed;
use std::time::{Duration, Instant};

use common::{now, WEB};
use mgmt_common::*;
use serde_json::{json, Value};
use sqlx::Connection;

/// `GET /revocations{query}` as WEB's sidecar: (status, Retry-After, raw body).
async fn poll_raw(s: &Service, query: &str) -> (u16, Option<String>, Vec<u8>) {
    let resp = s
        .http
        .get(format!("{}/revocations{query}", s.token_url))
        .header("x-forwarded-client-cert", format!("URI={WEB}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.bytes().await.unwrap().to_vec())
}

async fn revoke(s: &Service, body: Value) -> String {
    let (st, _, b) = s.post("/api/v1/revocations", &body).await;
    assert_eq!(st, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

/// A filter's set after polling `since` and applying the answer (304: unchanged).
async fn filter_poll(s: &Service, set: &filter_feed::RevocationSet) -> filter_feed::RevocationSet {
    let (st, _, body) = poll_raw(s, &format!("?since={}", set.version())).await;
    if st == 304 {
        return set.clone();
    }
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let feed = filter_feed::parse_feed(&body)
        .unwrap_or_else(|e| panic!("the filter refuses the feed answer: {e}"));
    set.apply(feed)
        .unwrap_or_else(|e| panic!("the filter refuses to apply the answer: {e}"))
}

// ---------------------------------------------------------------------------------
// 1. The feed's answers, as the filter's parser reads them.

async fn every_answer_the_feed_gives_is_read_whole_by_the_filters_parser_and_tracks_the_store(
    db: Db,
) {
    let s = Service::start(db).await;
    let mut set = filter_poll(&s, &filter_feed::RevocationSet::default()).await;
    assert_eq!(set.version(), 0);
    // Fields at their bounds: 256 four-byte characters of reason, a long pattern,
    // quotes and backslashes, a jti (a UUID, as minted: the API takes no other), a
    // caller, an `until`.
    let reason = "\u{1F512}".repeat(256);
    let pattern = format!("spiffe://cluster.local/ns/{}/*", "n".repeat(1900));
    let long = revoke(
        &s,
        json!({"target": "subject", "match": pattern, "reason": reason}),
    )
    .await;
    let exact = "spiffe://cluster.local/ns/shop/sa/exact";
    let e = revoke(
        &s,
        json!({"target": "subject", "match": exact, "reason": "quote \" and \\ backslash"}),
    )
    .await;
    let jti = "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_string();
    revoke(
        &s,
        json!({"target": "jti", "match": jti, "reason": "leaked", "until": now() + 3600}),
    )
    .await;
    revoke(
        &s,
        json!({"target": "caller", "match": "spiffe://cluster.local/ns/edge/*", "reason": "c"}),
    )
    .await;
    set = filter_poll(&s, &set).await;
    assert_eq!(set.len(), 4);
    assert_eq!(set.subject(exact, now()), Some("quote \" and \\ backslash"));
    let under = format!("spiffe://cluster.local/ns/{}/sa/x", "n".repeat(1900));
    assert_eq!(set.subject(&under, now()), Some(reason.as_str()));
    assert_eq!(set.jti(&jti, now()), Some("leaked"));
    // A delta lifting one, then a snapshot from 0: the same set either way.
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{e}"), None).await.0,
        204
    );
    set = filter_poll(&s, &set).await;
    let fresh = filter_poll(&s, &filter_feed::RevocationSet::default()).await;
    assert_eq!(set.version(), fresh.version());
    assert_eq!(set.encode(), fresh.encode());
    assert_eq!(set.subject(exact, now()), None);
    // The shared-data round trip keeps every entry.
    let back = filter_feed::RevocationSet::decode(&set.encode()).unwrap();
    assert_eq!(back.encode(), set.encode());
    let _ = long;
}

// ---------------------------------------------------------------------------------
// 2. A delta read while another replica's write prunes the change log (PostgreSQL,
//    READ COMMITTED): the changes it must carry are gone from the log by its second
//    statement.

fn pg_url(s: &Service) -> String {
    match &s.db {
        Db::Postgres(p) => p.url(),
        _ => panic!("PostgreSQL only"),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_served_while_another_replica_prunes_the_log_still_carries_every_change_after_since(
) {
    let s = Service::start(Db::postgres()).await;
    let url = pg_url(&s);
    let a_sub = "spiffe://cluster.local/ns/shop/sa/a";
    let e_sub = "spiffe://cluster.local/ns/shop/sa/e";
    let a = revoke(
        &s,
        json!({"target": "subject", "match": a_sub, "reason": "a"}),
    )
    .await; // version v1
            // A sidecar syncs at v1.
    let set = filter_poll(&s, &filter_feed::RevocationSet::default()).await;
    let v1 = set.version();
    revoke(
        &s,
        json!({"target": "subject", "match": e_sub, "reason": "e"}),
    )
    .await; // v2
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{a}"), None).await.0,
        204
    ); // v3

    // The store's history grows to 10 099 changes (revocations created and lifted,
    // as the service logs them), one short of the first prune (the log is pruned by
    // rows, 100 at a time, once it holds 10 100).
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let v3: i64 = sqlx::query_scalar("SELECT version FROM revocation_state")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let top = v3 + 10_096;
    sqlx::query(
        "INSERT INTO revocation_log (version, revocation_id, op, at) \
         SELECT g, 'rv-filler-' || (g / 2), CASE WHEN g % 2 = 0 THEN 'add' ELSE 'remove' END, 0 \
         FROM generate_series($1::bigint, $2::bigint) AS g",
    )
    .bind(v3 + 1)
    .bind(top)
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("UPDATE revocation_state SET version = $1 WHERE one = 1")
        .bind(top)
        .execute(&mut admin)
        .await
        .unwrap();
    let revs = s.state.revocations.clone();
    wait_for("the service's set follows the store to the top", || {
        revs.current().version == top as u64
    })
    .await;

    // Another replica writes change 10 100 (a create: `log_change` then the row, as
    // store/revocations.rs does it), which prunes the log's oldest 100 rows (v1 among
    // them). Its
    // transaction holds `revocations` until it commits; the sidecar's poll comes in
    // meanwhile.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("LOCK TABLE revocations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let poll = {
        let http = s.http.clone();
        let u = format!("{}/revocations?since={v1}", s.token_url);
        tokio::spawn(async move {
            let r = http
                .get(u)
                .header("x-forwarded-client-cert", format!("URI={WEB}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        })
    };
    // The feed's read has taken its version and waits for `revocations`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%FROM revocations WHERE added_version%'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the feed never read the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v: i64 = sqlx::query_scalar(
        "UPDATE revocation_state SET version = version + 1 WHERE one = 1 RETURNING version",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let t = now() as i64;
    sqlx::query("INSERT INTO revocation_log (version, revocation_id, op, at) VALUES ($1, 'rv-other', 'add', $2)")
        .bind(v)
        .bind(t)
        .execute(&mut *tx)
        .await
        .unwrap();
    let floor: i64 = sqlx::query_scalar(
        "SELECT version FROM revocation_log ORDER BY version DESC LIMIT 1 OFFSET 10000",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(
        floor > v1 as i64,
        "the prune must pass the sidecar's version"
    );
    sqlx::query("DELETE FROM revocation_log WHERE version <= $1")
        .bind(floor)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE revocation_state SET pruned_through = $1 WHERE one = 1")
        .bind(floor)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO revocations (id, target, match_value, reason, until_at, created_at, created_by, \
         added_version, feed_bytes) VALUES ('rv-other', 'subject', 'spiffe://cluster.local/ns/x/sa/y', \
         'other', 0, $1, 'spiffe://cluster.local/ns/ops/sa/admin', $2, 200)",
    )
    .bind(t)
    .bind(v)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (st, body) = poll.await.unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let feed = filter_feed::parse_feed(&body).unwrap();
    let (version, full) = (feed.version, feed.full);
    let set = set.apply(feed).unwrap();
    // Whatever the answer (a delta from v1, or a snapshot), the sidecar now holds the
    // store's set at that version: E revoked (added at v2), A not (lifted at v3).
    let now = now();
    assert!(
        set.subject(e_sub, now).is_some() && set.subject(a_sub, now).is_none(),
        "answer to since={v1} (version {version}, full {full}) left the sidecar with E revoked: {}, \
         lifted A revoked: {}",
        set.subject(e_sub, now).is_some(),
        set.subject(a_sub, now).is_some(),
    );
}

// ---------------------------------------------------------------------------------
// 3. The store down: 503 with Retry-After, never 500, on every revocation route.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_every_revocation_route_answers_503_with_retry_after() {
    let s = Service::start(Db::postgres_cut()).await;
    let id = revoke(
        &s,
        json!({"target": "jti", "match": "0b4f0e4e-2f6a-4c1e-9d43-6a1c2b7e5f01", "reason": "leaked"}),
    )
    .await;
    s.db.relay().cut();
    let check = |what: &str, st: u16, retry: Option<String>| {
        assert_eq!(st, 503, "{what}");
        assert_eq!(retry.as_deref(), Some("7"), "{what}");
    };
    let r = s
        .req(reqwest::Method::POST, "/api/v1/revocations", Some(ADMIN))
        .json(&json!({"target": "jti", "match": "5d0c9a71-8e3b-4f2a-b6c4-1e7f3a9d2c08", "reason": "x"}))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    check("create", r.status().as_u16(), retry);
    let r = s
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/revocations/{id}"),
            Some(ADMIN),
        )
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    check("lift", r.status().as_u16(), retry);
    for path in [
        "/api/v1/revocations".to_string(),
        format!("/api/v1/revocations/{id}"),
    ] {
        let r = s
            .req(reqwest::Method::GET, &path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        check(&path, r.status().as_u16(), retry);
    }
    // A feed answer that needs the store (a `since` ahead of the set's version).
    let v = s.state.revocations.current().version;
    let (st, retry, body) = poll_raw(&s, &format!("?since={}", v + 5)).await;
    assert_eq!(st, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(retry.as_deref(), Some("7"));
    // The set in memory is still enforced for introspection and the feed's 304.
    let (st, _, _) = poll_raw(&s, &format!("?since={v}")).await;
    assert_eq!(st, 304);
}

on_both_backends!(
    every_answer_the_feed_gives_is_read_whole_by_the_filters_parser_and_tracks_the_store,
);

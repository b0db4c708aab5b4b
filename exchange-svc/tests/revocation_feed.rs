//! The revocation feed (`GET /revocations?since=V` on the token listener) as the
//! filters see it: snapshot, delta, 304 and ETag, the caller rule of `/token`, and
//! lapsed entries reported as removed. Real SQLite and PostgreSQL, real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use std::time::{Duration, Instant};

use common::{now, WEB};
use mgmt_common::*;
use serde_json::{json, Value};

/// `GET /revocations` as the sidecar of `caller` (None: no XFCC, an unbound caller):
/// (status, ETag, body).
async fn poll(
    s: &Service,
    caller: Option<&str>,
    query: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut r = s.http.get(format!("{}/revocations{query}", s.token_url));
    if let Some(c) = caller {
        r = r.header("x-forwarded-client-cert", format!("URI={c}"));
    }
    if let Some(t) = if_none_match {
        r = r.header("if-none-match", t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
    }
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    if status == 304 {
        assert!(text.is_empty(), "a 304 has no body: {text}");
    }
    (
        status,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn revoke(s: &Service, target: &str, matches: &str, until: Option<u64>) -> String {
    let (st, _, body) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": target, "match": matches, "reason": "compromised node", "until": until}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_str()
                .map_or_else(|| e["id"].as_str().unwrap().to_string(), str::to_string)
        })
        .collect()
}

async fn snapshot_delta_and_not_modified_follow_the_version(db: Db) {
    let s = Service::start(db).await;
    // Empty store: a snapshot at version 0.
    let (st, etag, body) = poll(&s, Some(WEB), "", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({"version": 0, "full": true, "added": [], "removed": []})
    );
    assert_eq!(etag.as_deref(), Some("\"0\""));

    let a = revoke(&s, "subject", "spiffe://cluster.local/ns/shop/sa/a", None).await;
    let b = revoke(&s, "jti", "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", None).await;
    let (st, etag, body) = poll(&s, Some(WEB), "?since=0", None).await;
    // Versions increase (jumping to the clock in ms), one or more per change.
    let v2 = body["version"].as_u64().unwrap();
    let tag = |v: u64| format!("\"{v}\"");
    assert_eq!((st, etag), (200, Some(tag(v2))), "{body}");
    assert!(v2 > 0, "{body}");
    assert_eq!(body["full"], true);
    assert_eq!(ids(&body["added"]), vec![a.clone(), b.clone()]);
    assert_eq!(
        body["added"][0],
        json!({"id": a, "target": "subject", "match": "spiffe://cluster.local/ns/shop/sa/a",
               "reason": "compromised node", "until": null})
    );

    // Up to date: 304 by `since` and by If-None-Match, with the ETag.
    let (st, etag, _) = poll(&s, Some(WEB), &format!("?since={v2}"), None).await;
    assert_eq!((st, etag), (304, Some(tag(v2))));
    let (st, _, _) = poll(&s, Some(WEB), "?since=0", Some(&tag(v2))).await;
    assert_eq!(st, 304);

    // A delta: only what changed after `since`.
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{a}"), None).await.0,
        204
    );
    let (_, _, body) = poll(&s, Some(WEB), &format!("?since={v2}"), None).await;
    let v3 = body["version"].as_u64().unwrap();
    assert!(v3 > v2, "{body}");
    let c = revoke(&s, "caller", "spiffe://cluster.local/ns/edge/*", None).await;
    let (st, etag, body) = poll(&s, Some(WEB), &format!("?since={v2}"), None).await;
    let v4 = body["version"].as_u64().unwrap();
    assert_eq!((st, etag), (200, Some(tag(v4))), "{body}");
    assert!(v4 > v3, "{body}");
    assert_eq!(body["full"], false);
    assert_eq!(ids(&body["added"]), vec![c.clone()]);
    assert_eq!(ids(&body["removed"]), vec![a.clone()]);
    let (_, _, body) = poll(&s, Some(WEB), &format!("?since={v3}"), None).await;
    assert_eq!(
        (ids(&body["added"]), ids(&body["removed"])),
        (vec![c.clone()], vec![])
    );

    // A `since` beyond the version (the store was reset): a snapshot.
    let (st, _, body) = poll(&s, Some(WEB), &format!("?since={}", v4 + 99), None).await;
    assert_eq!(st, 200);
    assert_eq!(body["full"], true);
    assert_eq!(body["version"], v4);
    assert_eq!(ids(&body["added"]), vec![b, c]);
    assert_eq!(ids(&body["removed"]), Vec::<String>::new());

    let (st, _, body) = poll(&s, Some(WEB), "?since=x", None).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_request")));
}

async fn the_feed_is_refused_to_a_caller_that_may_not_call_token(db: Db) {
    let s = Service::start(db).await;
    let (st, _, body) = poll(&s, None, "?since=0", None).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert!(body.get("version").is_none());
}

async fn a_lapsed_revocation_is_reported_removed_with_a_new_version(db: Db) {
    let s = Service::start(db).await;
    let until = now() + 2;
    let id = revoke(&s, "subject", WEB, Some(until)).await;
    let (_, _, body) = poll(&s, Some(WEB), "?since=0", None).await;
    assert_eq!(body["added"][0]["until"], until);
    let v1 = body["version"].as_u64().unwrap();
    // While it holds, the subject's exchange is refused.
    let (st, body) = s.exchange(WEB, "payments").await;
    assert_eq!(st, 403, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _, body) = poll(&s, Some(WEB), &format!("?since={v1}"), None).await;
        if st == 200 {
            assert_eq!(body["full"], false);
            assert!(body["version"].as_u64().unwrap() > v1, "{body}");
            assert_eq!(ids(&body["removed"]), vec![id.clone()]);
            break;
        }
        assert_eq!(st, 304);
        assert!(
            Instant::now() < deadline,
            "the lapse never reached the feed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, body) = s.exchange(WEB, "payments").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.get(&format!("/api/v1/revocations/{id}")).await.0, 404);
}

async fn a_revocation_that_would_take_the_feed_past_what_filters_read_is_refused(db: Db) {
    let s = Service::start(db).await;
    // Long patterns and reasons (within each field's bound: 2 048 bytes, 256 characters
    // of 4 bytes each): about 1 200 such entries fill the 4 MiB a filter reads; past it
    // every sidecar would refuse every answer.
    let pattern = |i: usize| format!("spiffe://cluster.local/ns/{}/sa/{i:05}/*", "n".repeat(2000));
    let reason = "\u{1F512}".repeat(256);
    let mut ids = Vec::new();
    let refusal = loop {
        let (st, _, body) = s
            .post(
                "/api/v1/revocations",
                &json!({"target": "subject", "match": pattern(ids.len()), "reason": reason}),
            )
            .await;
        if st != 201 {
            break (st, body);
        }
        ids.push(body["id"].as_str().unwrap().to_string());
        assert!(ids.len() < 2_500, "never refused");
    };
    assert_eq!(refusal.0, 409, "{}", refusal.1);
    let msg = refusal.1["message"].as_str().unwrap();
    assert!(msg.contains("bytes") && msg.contains("lift some"), "{msg}");
    assert!(ids.len() > 1_000, "refused too early: {}", ids.len());
    // What was accepted is served whole, within the filters' bound.
    let raw = |since: u64| {
        let url = format!("{}/revocations?since={since}", s.token_url);
        let http = s.http.clone();
        async move {
            let resp = http
                .get(url)
                .header("x-forwarded-client-cert", format!("URI={WEB}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        }
    };
    let snapshot = raw(0).await;
    assert!(snapshot.len() <= 4 << 20, "{} bytes", snapshot.len());
    let v: Value = serde_json::from_slice(&snapshot).unwrap();
    assert_eq!(v["added"].as_array().unwrap().len(), ids.len());
    // Lifting one makes room for one more of its size, not two.
    assert_eq!(
        s.delete(&format!("/api/v1/revocations/{}", ids[0]), None)
            .await
            .0,
        204
    );
    revoke(&s, "subject", &pattern(99_999), None).await;
    assert_eq!(
        s.post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": pattern(99_998), "reason": reason}),
        )
        .await
        .0,
        409
    );
    let delta = raw(v["version"].as_u64().unwrap()).await;
    assert!(delta.len() <= 4 << 20, "{} bytes", delta.len());
}

async fn polls_with_many_distinct_since_values_keep_one_copy_of_the_snapshot(db: Db) {
    let s = Service::start(db).await;
    for i in 0..40 {
        revoke(
            &s,
            "subject",
            &format!("spiffe://cluster.local/ns/n{i}/sa/svc"),
            None,
        )
        .await;
    }
    let (st, _, v) = poll(&s, Some(WEB), "?since=0", None).await;
    assert_eq!(st, 200);
    let version = v["version"].as_u64().unwrap();
    let snapshot = serde_json::to_vec(&v).unwrap().len();
    // Any workload that may call /token can poll: `since` values past the version (or
    // 0) all get the snapshot, and must not each keep a copy of it.
    for since in (version + 1)..(version + 201) {
        let (st, _, v) = poll(&s, Some(WEB), &format!("?since={since}"), None).await;
        assert_eq!(
            (st, v["full"].as_bool()),
            (200, Some(true)),
            "since={since}"
        );
    }
    let held = s.state.revocations.memo_bytes();
    assert!(
        held <= 2 * snapshot,
        "200 polls kept {held} bytes of feed answers for a {snapshot}-byte snapshot"
    );
}

on_both_backends!(
    snapshot_delta_and_not_modified_follow_the_version,
    the_feed_is_refused_to_a_caller_that_may_not_call_token,
    a_lapsed_revocation_is_reported_removed_with_a_new_version,
    a_revocation_that_would_take_the_feed_past_what_filters_read_is_refused,
    polls_with_many_distinct_since_values_keep_one_copy_of_the_snapshot,
);

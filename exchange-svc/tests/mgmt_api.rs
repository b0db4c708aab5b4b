//! The management API suite, one function per behaviour, run against SQLite and real
//! PostgreSQL over real sockets (the API and the token endpoint on their own loopback
//! listeners).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use common::WEB;
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn creates_reads_replaces_patches_and_deletes_with_entity_tags(db: Db) {
    let s = Service::start(db).await;
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    let (st, tag1, body) = s.post("/api/v1/mappings", &m).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body, m);
    let tag1 = tag1.expect("ETag on create");
    let (st, _, body) = s.post("/api/v1/mappings", &m).await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"], "conflict");

    let (st, tag, body) = s.get("/api/v1/mappings/inv").await;
    assert_eq!((st, tag.as_deref()), (200, Some(tag1.as_str())));
    assert_eq!(body, m);

    let mut m2 = m.clone();
    m2["ttl_secs"] = json!(120);
    let (st, tag2, _) = s.put("/api/v1/mappings/inv", &m2, Some(&tag1)).await;
    assert_eq!(st, 200);
    let tag2 = tag2.unwrap();
    assert_ne!(tag1, tag2);
    // A write based on the old state is refused and changes nothing.
    let (st, _, body) = s.put("/api/v1/mappings/inv", &m, Some(&tag1)).await;
    assert_eq!(st, 412, "{body}");
    assert_eq!(body["error"], "precondition_failed");
    assert_eq!(s.get("/api/v1/mappings/inv").await.2["ttl_secs"], 120);

    let r = s
        .req(Method::PATCH, "/api/v1/mappings/inv", Some(ADMIN))
        .header("if-match", &tag2)
        .json(&json!({"participant": "globex", "rate_limit": {"per_second": 1.0, "burst": 3}}));
    let (st, tag3, body) = s.send(r).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["participant"], "globex");
    assert_eq!(body["rate_limit"]["burst"], 3);
    assert_eq!(body["ttl_secs"], 120);

    assert_eq!(s.delete("/api/v1/mappings/inv", Some(&tag2)).await.0, 412);
    assert_eq!(
        s.delete("/api/v1/mappings/inv", tag3.as_deref()).await.0,
        204
    );
    let (st, _, body) = s.delete("/api/v1/mappings/inv", None).await;
    assert_eq!((st, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(s.get("/api/v1/mappings/inv").await.0, 404);
    // PUT without preconditions creates.
    let (st, _, _) = s.put("/api/v1/mappings/inv", &m, None).await;
    assert_eq!(st, 201);
}

async fn scopes_have_the_same_operations_with_percent_encoded_resources(db: Db) {
    let s = Service::start(db).await;
    let m = mapping(
        "int",
        "spiffe://cluster.local/ns/shop/*",
        "https://payments.internal",
    );
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    let row =
        json!({"resource": "https://payments.internal", "scope": "read", "claims": {"tier": 1}});
    let (st, tag, body) = s.post("/api/v1/scopes", &row).await;
    assert_eq!(st, 201, "{body}");
    let path = "/api/v1/scopes/https%3A%2F%2Fpayments.internal/read";
    let (st, tag2, body) = s.get(path).await;
    assert_eq!((st, &tag2), (200, &tag));
    assert_eq!(body, row);
    assert_eq!(s.post("/api/v1/scopes", &row).await.0, 409);
    let (st, _, body) = s
        .put(path, &json!({"resource": "https://payments.internal", "scope": "read", "claims": {"tier": 2}}), tag.as_deref())
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.put(path, &row, tag.as_deref()).await.0, 412);
    let (st, _, list) = s
        .get("/api/v1/scopes?resource=https%3A%2F%2Fpayments.internal")
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.delete(path, None).await.0, 204);
    assert_eq!(s.delete(path, None).await.0, 404);
}

async fn invalid_input_is_refused_with_422_naming_the_field(db: Db) {
    let s = Service::start(db).await;
    let check = |(st, _, body): (u16, Option<String>, Value), field: &str| {
        assert_eq!(st, 422, "{body}");
        assert_eq!(body["error"], "invalid");
        assert_eq!(body["field"], field, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    };
    let bad_pattern = mapping("x", "spiffe://cluster.local/ns/*/sa", "inventory");
    check(s.post("/api/v1/mappings", &bad_pattern).await, "subject");
    let mut long = mapping("x", "spiffe://cluster.local/ns/shop/*", "inventory");
    long["ttl_secs"] = json!(7200); // token.max_ttl_secs is 3600
    check(s.post("/api/v1/mappings", &long).await, "ttl_secs");
    // Slower than one exchange a day: a refusal's wait would overflow, not throttle.
    let mut crawl = mapping("x", "spiffe://cluster.local/ns/shop/*", "inventory");
    crawl["rate_limit"] = json!({"per_second": 1e-20, "burst": 1});
    check(
        s.post("/api/v1/mappings", &crawl).await,
        "rate_limit.per_second",
    );
    let mut unknown = mapping("x", "spiffe://cluster.local/ns/shop/*", "inventory");
    unknown["colour"] = json!("red");
    check(s.post("/api/v1/mappings", &unknown).await, "colour");
    let reserved = json!({"resource": "payments", "scope": "read", "claims": {"iss": "me"}});
    check(
        s.put("/api/v1/scopes/payments/read", &reserved, None).await,
        "claims.iss",
    );
    // RFC 8693's delegation and client claims are the service's as well.
    for claim in ["may_act", "client_id"] {
        let body =
            json!({"resource": "payments", "scope": "read", "claims": {claim: {"sub": "x"}}});
        check(
            s.put("/api/v1/scopes/payments/read", &body, None).await,
            &format!("claims.{claim}"),
        );
    }
    // The seeded scope `write` of payments sets role = "writer".
    let conflict = json!({"resource": "payments", "scope": "read", "claims": {"role": "admin"}});
    check(
        s.put("/api/v1/scopes/payments/read", &conflict, None).await,
        "claims",
    );
    let unknown_scope = json!({"resource": "payments", "scope": "delete", "claims": {"x": 1}});
    check(s.post("/api/v1/scopes", &unknown_scope).await, "scope");
    let (st, _, _) = s
        .send(
            s.req(Method::POST, "/api/v1/mappings", Some(ADMIN))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(st, 400);
    // Nothing was written.
    assert_eq!(s.get("/api/v1/mappings/x").await.0, 404);
}

async fn lists_filter_by_subject_resource_and_participant_with_a_cursor(db: Db) {
    let s = Service::start(db).await;
    for i in 0..5 {
        let mut m = mapping(
            &format!("m{i}"),
            &format!("spiffe://cluster.local/ns/team{i}/*"),
            "inventory",
        );
        if i % 2 == 0 {
            m["participant"] = json!("even");
        }
        assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/v1/mappings?resource=inventory&limit=2&cursor={c}"),
            None => "/api/v1/mappings?resource=inventory&limit=2".into(),
        };
        let (st, _, page) = s.get(&q).await;
        assert_eq!(st, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(
            items
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["m0", "m1", "m2", "m3", "m4"]);
    let (_, _, page) = s.get("/api/v1/mappings?participant=even").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    // A concrete SPIFFE ID finds the patterns that match it; a pattern finds itself.
    let (_, _, page) = s
        .get("/api/v1/mappings?subject=spiffe://cluster.local/ns/team3/sa/x")
        .await;
    let found: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["m3"]);
    let (_, _, page) = s
        .get("/api/v1/mappings?subject=spiffe://cluster.local/ns/shop/*")
        .await;
    assert_eq!(page["items"][0]["name"], "web-to-payments");
    assert_eq!(s.get("/api/v1/mappings?cursor=%%%").await.0, 400);
}

async fn of_concurrent_writers_with_the_same_if_match_exactly_one_wins(db: Db) {
    let s = std::sync::Arc::new(Service::start(db).await);
    let (_, tag, _) = s.get("/api/v1/mappings/web-to-orders").await;
    let tag = tag.unwrap();
    let (_, _, current) = s.get("/api/v1/mappings/web-to-orders").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let tag = tag.clone();
        let mut m = current.clone();
        m["ttl_secs"] = json!(100 + i);
        tasks.push(tokio::spawn(async move {
            s.put("/api/v1/mappings/web-to-orders", &m, Some(&tag))
                .await
                .0
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort_unstable();
    assert_eq!(codes, [200, 412, 412, 412, 412, 412, 412, 412]);
}

async fn concurrent_writes_to_two_scopes_of_a_resource_never_store_conflicting_claims(db: Db) {
    let s = Service::start(db).await;
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    let put = |scope: &'static str, claim: String, value: &'static str| {
        let s = &s;
        async move {
            let row = json!({"resource": "inventory", "scope": scope, "claims": {claim: value}});
            let (st, _, body) = s
                .put(&format!("/api/v1/scopes/inventory/{scope}"), &row, None)
                .await;
            // 422 from the check before the write, 409 from the store's (the race).
            assert!(st < 300 || st == 409 || st == 422, "{st} {body}");
            st
        }
    };
    // Each round, the two rows set the same new claim differently: whichever commits
    // second must see the first (each alone is fine against the rows as they were).
    for i in 0..25 {
        let claim = format!("c{i}");
        let (a, b) = tokio::join!(put("read", claim.clone(), "r"), put("write", claim, "w"));
        assert!(
            !(a < 300 && b < 300),
            "round {i}: both conflicting writes succeeded ({a}, {b})"
        );
    }
}

async fn import_dry_run_reports_the_diff_and_apply_changes_all_at_once(db: Db) {
    let s = Service::start(db).await;
    let (st, _, mut doc) = s.get("/api/v1/export").await;
    assert_eq!(st, 200);
    assert_eq!(
        doc["mappings"][0]["name"], "web-to-orders",
        "stable order: by name"
    );
    // Edit: change one, add one, drop one (kept unless prune).
    doc["mappings"][0]["ttl_secs"] = json!(60);
    doc["mappings"].as_array_mut().unwrap().remove(1);
    doc["mappings"].as_array_mut().unwrap().push(mapping(
        "new",
        "spiffe://cluster.local/ns/new/*",
        "inventory",
    ));
    let (st, _, diff) = s.post("/api/v1/import?dry_run=true", &doc).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(diff["added"], json!(["mappings/new"]));
    assert_eq!(diff["changed"], json!(["mappings/web-to-orders"]));
    assert_eq!(diff["removed"], json!(["mappings/web-to-payments"]));
    assert_eq!(diff["applied"], false);
    assert_eq!(
        s.get("/api/v1/mappings/new").await.0,
        404,
        "dry run wrote nothing"
    );
    let (st, _, diff) = s.post("/api/v1/import", &doc).await;
    assert_eq!((st, &diff["applied"]), (200, &json!(true)), "{diff}");
    assert_eq!(s.get("/api/v1/mappings/new").await.0, 200);
    assert_eq!(
        s.get("/api/v1/mappings/web-to-payments").await.0,
        200,
        "prune is off by default"
    );
    assert_eq!(
        s.get("/api/v1/mappings/web-to-orders").await.2["ttl_secs"],
        60
    );
    // prune: the mapping and its scope rows go (the scopes are not in the document).
    let (st, _, diff) = s
        .post(
            "/api/v1/import?prune=true",
            &json!({"mappings": doc["mappings"], "scopes": []}),
        )
        .await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(s.get("/api/v1/mappings/web-to-payments").await.0, 404);
    // YAML export round-trips through import with nothing to do.
    let yaml = s.get_text("/api/v1/export?format=yaml").await;
    let r = s
        .req(Method::POST, "/api/v1/import", Some(ADMIN))
        .header("content-type", "application/yaml")
        .body(yaml);
    let (st, _, diff) = s.send(r).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(
        (
            diff["added"].as_array().unwrap().len(),
            diff["changed"].as_array().unwrap().len()
        ),
        (0, 0)
    );
}

async fn an_import_document_up_to_8_mib_is_read_and_a_larger_one_refused_as_json(db: Db) {
    let s = Service::start(db).await;
    let (_, _, mut doc) = s.get("/api/v1/export").await;
    doc["mappings"].as_array_mut().unwrap().push(mapping(
        "big",
        "spiffe://cluster.local/ns/big/*",
        "inventory",
    ));
    // A valid document padded past axum's 2 MiB default for a body read into memory.
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push_str(&" ".repeat((3 << 20) - text.len()));
    let r = s
        .req(Method::POST, "/api/v1/import", Some(ADMIN))
        .header("content-type", "application/json")
        .body(text);
    let (st, _, diff) = s.send(r).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(diff["added"], json!(["mappings/big"]));
    // Past the API's own bound: 413 with the API's JSON error, before any of the body
    // is read (so the request is written by hand: a client still sending would see the
    // connection close under it).
    let (head, body) = raw_exchange(
        &s.api,
        &format!(
            "POST /api/v1/import HTTP/1.1\r\nhost: mgmt\r\ncontent-type: application/json\r\n\
             authorization: Bearer {}\r\nx-forwarded-client-cert: URI={ADMIN}\r\n\
             content-length: {}\r\n\r\n{{",
            s.token(ADMIN),
            (8 << 20) + 1
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("8388608"),
        "{body}"
    );
}

/// Writes `request` to the API and reads one answer: (status line and headers, body).
async fn raw_exchange(api: &str, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(api.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), c.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len || n == 0 {
                return (head.to_string(), body[..len.min(body.len())].to_string());
            }
        }
        assert!(n > 0, "connection closed before an answer: {text}");
    }
}

async fn an_empty_or_sectionless_import_is_refused_and_prunes_nothing(db: Db) {
    let s = Service::start(db).await;
    let (_, _, before) = s.get("/api/v1/export").await;
    assert!(!before["mappings"].as_array().unwrap().is_empty());
    // A body lost on the way (an empty file, a heredoc gone wrong) must not read as
    // "no mappings at all", which with prune would delete every one.
    for (ct, body) in [
        ("application/yaml", ""),
        ("application/yaml", "  \n"),
        ("application/yaml", "# nothing here\n"),
        ("application/json", ""),
        ("application/json", "{}"),
        ("application/yaml", "mapings: []\n"),
    ] {
        let r = s
            .req(Method::POST, "/api/v1/import?prune=true", Some(ADMIN))
            .header("content-type", ct)
            .body(body);
        let (st, _, err) = s.send(r).await;
        assert_eq!(st, 422, "{ct} {body:?}: {err}");
        assert_eq!(err["field"], "body", "{ct} {body:?}: {err}");
    }
    let (_, _, after) = s.get("/api/v1/export").await;
    assert_eq!(after, before);
    // Saying so is still possible: an explicit empty list prunes.
    let (st, _, diff) = s
        .post(
            "/api/v1/import?prune=true&dry_run=true",
            &json!({"mappings": [], "scopes": []}),
        )
        .await;
    assert_eq!(st, 200, "{diff}");
    assert!(!diff["removed"].as_array().unwrap().is_empty(), "{diff}");
}

async fn rates_read_back_exactly_as_written_down_to_the_documented_minimum(db: Db) {
    let s = Service::start(db).await;
    // The documented minimum, one exchange a day, and rates of every magnitude: the
    // stored number is the one sent, so an export imports unchanged (no drift, no 422).
    let mut rates = vec![1.0 / 86_400.0, 0.1, 2.5e-5, 123_456.789];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..40 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        rates.push(1.0 / 86_400.0 + unit * 1000.0);
    }
    let mappings: Vec<Value> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut m = mapping(
                &format!("rate-{i}"),
                &format!("spiffe://cluster.local/ns/rates-{i}/*"),
                "inventory",
            );
            m["rate_limit"] = json!({"per_second": r, "burst": 1});
            m
        })
        .collect();
    let (st, _, diff) = s
        .post("/api/v1/import", &json!({ "mappings": mappings }))
        .await;
    assert_eq!(st, 200, "{diff}");
    let exported = s.get_text("/api/v1/export").await;
    for r in &rates {
        // Compared as text: the shortest form that reads back as exactly this double.
        let written = format!("\"per_second\":{}", serde_json::to_string(r).unwrap());
        assert!(exported.contains(&written), "{written} not in the export");
    }
    let r = s
        .req(Method::POST, "/api/v1/import?dry_run=true", Some(ADMIN))
        .header("content-type", "application/json")
        .body(exported);
    let (st, _, diff) = s.send(r).await;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(diff["changed"], json!([]), "{diff}");
}

async fn a_nul_character_in_a_key_is_not_found_and_never_a_store_outage(db: Db) {
    let s = Service::start(db).await;
    // Nothing stored can hold one (writes refuse control characters), and PostgreSQL
    // refuses it in any text parameter: that is bad input, not a database outage.
    for path in [
        "/api/v1/mappings/a%00b",
        "/api/v1/revocations/rv-%00",
        "/api/v1/scopes/pay%00/read",
    ] {
        let (st, _, body) = s.get(path).await;
        assert_eq!(st, 404, "{path}: {body}");
    }
    // The token endpoint: a resource no mapping can name, refused as such (a 503
    // would send the client into retries and count as an outage), and audited.
    let (st, body) = s.exchange(WEB, "pay\u{0}ments").await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["error"], "invalid_target", "{body}");
    let items = s.audit_events("exchange.refused", 1).await;
    assert_eq!(items.len(), 1, "the refusal was not audited");
    let target = items[0]["target"].as_str().unwrap();
    assert!(
        !target.contains('\u{0}'),
        "a raw NUL in the audit log: {target:?}"
    );
}

async fn an_import_that_fails_halfway_changes_nothing(db: Db) {
    let s = Service::start(db).await;
    let (_, _, before) = s.get("/api/v1/export").await;
    let (_, _, audit_before) = s.get("/api/v1/audit").await;
    let mut doc = before.clone();
    // The first entry is fine and written first; the second takes the subject and
    // resource of web-to-payments (kept: no prune) and fails inside the transaction.
    doc["mappings"].as_array_mut().unwrap().insert(
        0,
        mapping("aaa-new", "spiffe://cluster.local/ns/a/*", "inventory"),
    );
    doc["mappings"].as_array_mut().unwrap().push(mapping(
        "zzz-dup",
        "spiffe://cluster.local/ns/shop/*",
        "payments",
    ));
    doc["mappings"][1]["ttl_secs"] = json!(42);
    let (st, _, body) = s.post("/api/v1/import", &doc).await;
    assert_eq!(st, 409, "{body}");
    let (_, _, after) = s.get("/api/v1/export").await;
    assert_eq!(after, before, "nothing changed");
    let (_, _, audit_after) = s.get("/api/v1/audit").await;
    assert_eq!(
        audit_after["items"], audit_before["items"],
        "nothing audited"
    );
}

async fn every_change_is_audited_with_who_what_before_after_and_request_id(db: Db) {
    let s = Service::start(db).await;
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    let r = s
        .req(Method::POST, "/api/v1/mappings", Some(ADMIN))
        .header("x-request-id", "req-42")
        .json(&m);
    let resp = r.send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(s.delete("/api/v1/mappings/inv", None).await.0, 204);
    let (st, _, page) = s.get("/api/v1/audit?target=mappings/inv").await;
    assert_eq!(st, 200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(items[0]["action"], "mapping.create");
    assert_eq!(items[0]["actor"], ADMIN);
    assert_eq!(items[0]["request_id"], "req-42");
    assert_eq!(items[0]["before"], Value::Null);
    assert_eq!(items[0]["after"], m);
    assert_eq!(items[1]["action"], "mapping.delete");
    assert_eq!(items[1]["before"], m);
    assert_eq!(items[1]["after"], Value::Null);
    // Following the log from an id.
    let first = items[0]["id"].as_i64().unwrap();
    let (_, _, next) = s.get(&format!("/api/v1/audit?after={first}")).await;
    assert_eq!(next["items"][0]["id"], items[1]["id"]);
    // Never a token in the audit log.
    let text = s.get("/api/v1/audit?limit=1000").await.2.to_string();
    assert!(!text.contains("eyJ"), "a token reached the audit log");
    // A filter holding a control character is a bad request on both backends
    // (PostgreSQL refuses a NUL in text: it was answered 404 "not found").
    for q in ["action=a%00b", "target=mappings%2F%00", "target=a%0Ab"] {
        let (st, _, body) = s.get(&format!("/api/v1/audit?{q}")).await;
        assert_eq!(
            (st, body["error"].as_str()),
            (400, Some("bad_request")),
            "{q}: {body}"
        );
    }
}

async fn an_exchange_right_after_a_write_sees_it(db: Db) {
    let s = Service::start(db).await;
    // Warm the policy cache for payments, then narrow the mapping: the next exchange
    // must see the change, though the snapshot would live for policy_cache_secs.
    assert_eq!(s.exchange(WEB, "payments").await.0, 200);
    let (st, _) = s.exchange(WEB, "inventory").await;
    assert_eq!(st, 400, "inventory is not known yet");
    let m = mapping("inv", "spiffe://cluster.local/ns/shop/*", "inventory");
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);
    let (st, body) = s.exchange(WEB, "inventory").await;
    assert_eq!(st, 200, "{body}");
    let (_, tag, mut pay) = s.get("/api/v1/mappings/web-to-payments").await;
    pay["subject"] = json!("spiffe://cluster.local/ns/other/*");
    assert_eq!(
        s.put("/api/v1/mappings/web-to-payments", &pay, tag.as_deref())
            .await
            .0,
        200
    );
    let (st, body) = s.exchange(WEB, "payments").await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(s.delete("/api/v1/mappings/inv", None).await.0, 204);
    assert_eq!(s.exchange(WEB, "inventory").await.0, 400);
}

on_both_backends!(
    creates_reads_replaces_patches_and_deletes_with_entity_tags,
    scopes_have_the_same_operations_with_percent_encoded_resources,
    invalid_input_is_refused_with_422_naming_the_field,
    lists_filter_by_subject_resource_and_participant_with_a_cursor,
    of_concurrent_writers_with_the_same_if_match_exactly_one_wins,
    concurrent_writes_to_two_scopes_of_a_resource_never_store_conflicting_claims,
    import_dry_run_reports_the_diff_and_apply_changes_all_at_once,
    an_import_document_up_to_8_mib_is_read_and_a_larger_one_refused_as_json,
    an_import_that_fails_halfway_changes_nothing,
    an_empty_or_sectionless_import_is_refused_and_prunes_nothing,
    rates_read_back_exactly_as_written_down_to_the_documented_minimum,
    a_nul_character_in_a_key_is_not_found_and_never_a_store_outage,
    every_change_is_audited_with_who_what_before_after_and_request_id,
    an_exchange_right_after_a_write_sees_it,
);

/// PostgreSQL only: a transaction that took an audit id and commits after a later one
/// (SQLite has one writer, so ids always commit in order there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_the_audit_log_never_skips_an_event_that_commits_after_a_later_one() {
    let s = Service::start(Db::postgres()).await;
    let (_, _, page) = s.get("/api/v1/audit?limit=1").await;
    let mut last = page["items"][0]["id"].as_i64().unwrap_or(0);
    // The mapping write takes its audit id, then stays open for 4 s before commit:
    // longer than writers queue (`store.acquire_timeout_secs`, 3 s here), so the
    // refusal's audit write times out once and must be written when it tries again
    // (it was dropped).
    let pg = sqlx::PgPool::connect(&s.cfg.store.url).await.unwrap();
    for stmt in [
        "CREATE FUNCTION slow_audit() RETURNS trigger AS $$ BEGIN \
         IF NEW.action = 'mapping.create' THEN PERFORM pg_sleep(4); END IF; RETURN NEW; END $$ \
         LANGUAGE plpgsql",
        "CREATE TRIGGER slow_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION slow_audit()",
    ] {
        sqlx::query(stmt).execute(&pg).await.unwrap();
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        let m = mapping("late", "spiffe://cluster.local/ns/late/*", "inventory");
        let st = s.post("/api/v1/mappings", &m).await.0;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        st
    };
    // Meanwhile a refused exchange is audited, and a follower keeps reading from the
    // last id it saw, after the write has returned until the refusal shows.
    let follow = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(s.exchange(WEB, "no-such-resource").await.0, 400);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let (_, _, page) = s.get(&format!("/api/v1/audit?after={last}")).await;
            for e in page["items"].as_array().unwrap() {
                last = e["id"].as_i64().unwrap();
                seen.push(e["action"].as_str().unwrap().to_string());
            }
            if finished && seen.iter().any(|a| a == "exchange.refused") {
                break seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "in 30 s: the write returned: {finished}; events seen: {seen:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let (status, seen) = tokio::join!(write, follow);
    assert_eq!(status, 201);
    assert!(
        seen.contains(&"mapping.create".to_string()),
        "the follower skipped the mapping's event: {seen:?}"
    );
    assert!(seen.contains(&"exchange.refused".to_string()), "{seen:?}");
}

/// PostgreSQL only (the store a network can take away): reads and writes answer 503
/// with the configured `store.retry_after_secs`, and work again by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_unreachable_answers_503_with_the_configured_retry_after_and_recovers() {
    let s = Service::start(Db::postgres_cut()).await;
    let m = mapping("before", "spiffe://cluster.local/ns/before/*", "inventory");
    assert_eq!(s.post("/api/v1/mappings", &m).await.0, 201);

    s.db.relay().cut();
    for r in [
        s.req(Method::GET, "/api/v1/mappings", Some(ADMIN)),
        s.req(Method::POST, "/api/v1/mappings", Some(ADMIN))
            .json(&mapping(
                "during",
                "spiffe://cluster.local/ns/during/*",
                "inventory",
            )),
    ] {
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers()["retry-after"], "7");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unavailable", "{body}");
        assert!(
            !body["message"].as_str().unwrap().contains("127.0.0.1"),
            "{body}"
        );
    }

    s.db.relay().restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (st, _, body) = s.get("/api/v1/mappings/before").await;
        if st == 200 {
            assert_eq!(body, m);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {st} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

//! The management API's request layer against SQLite and real PostgreSQL: a refused
//! body names the field by its JSON path, a malformed query or path is a JSON `400`
//! decided after authentication, unknown routes and methods answer the JSON error
//! shape, page sizes out of range and filters a list does not apply are refused, and a
//! scope row is checked on its own before against other rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[macro_use]
mod mgmt_common;

use common::WEB;
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Asserts a `422 invalid` naming `field`.
fn assert_invalid(what: &str, (st, _, body): (u16, Option<String>, Value), field: &str) {
    assert_eq!(st, 422, "{what}: {body}");
    assert_eq!(body["error"], "invalid", "{what}: {body}");
    assert_eq!(body["field"], field, "{what}: {body}");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: {body}"
    );
}

/// Asserts a JSON `400 bad_request` whose message starts with the parameter's name.
fn assert_bad_parameter(what: &str, (st, _, body): (u16, Option<String>, Value), param: &str) {
    assert_eq!(st, 400, "{what}: {body}");
    assert_eq!(body["error"], "bad_request", "{what}: {body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with(&format!("{param}: ")), "{what}: {body}");
}

async fn patch(s: &Service, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    s.send(s.req(Method::PATCH, path, Some(ADMIN)).json(body))
        .await
}

async fn a_refused_body_names_the_json_path_of_the_field_not_its_value(db: Db) {
    let s = Service::start(db).await;
    let m = || mapping("x", "spiffe://cluster.local/ns/shop/*", "inventory");
    let with = |key: &str, v: Value| {
        let mut body = m();
        body[key] = v;
        body
    };
    for (what, body, field) in [
        ("negative ttl", with("ttl_secs", json!(-1)), "ttl_secs"),
        (
            "ttl as a string",
            with("ttl_secs", json!("300")),
            "ttl_secs",
        ),
        ("null ttl", with("ttl_secs", Value::Null), "ttl_secs"),
        (
            "scopes as a string",
            with("scopes", json!("read")),
            "scopes",
        ),
        (
            "a scope that is a number",
            with("scopes", json!(["read", 7])),
            "scopes[1]",
        ),
        (
            "a burst over u32",
            with(
                "rate_limit",
                json!({"per_second": 1.0, "burst": 5_000_000_000_u64}),
            ),
            "rate_limit.burst",
        ),
        (
            "an unknown field of the rate limit",
            with(
                "rate_limit",
                json!({"per_second": 1.0, "burst": 1, "colour": "red"}),
            ),
            "rate_limit.colour",
        ),
        (
            "a rate limit without its burst",
            with("rate_limit", json!({"per_second": 1.0})),
            "rate_limit.burst",
        ),
    ] {
        assert_invalid(what, s.post("/api/v1/mappings", &body).await, field);
    }
    // Valid JSON (RFC 8259 sets no range), a number no float holds: serde_json calls it
    // a syntax error, and it was answered 400 "not valid JSON" with no field.
    let mut huge = m();
    huge["ttl_secs"] = json!(123_456_789);
    let text = huge.to_string().replace("123456789", "1e400");
    let r = s
        .req(reqwest::Method::POST, "/api/v1/mappings", Some(ADMIN))
        .header("content-type", "application/json")
        .body(text);
    assert_invalid("a ttl of 1e400", s.send(r).await, "ttl_secs");
    let mut missing = m();
    missing.as_object_mut().unwrap().remove("ttl_secs");
    assert_invalid(
        "missing ttl",
        s.post("/api/v1/mappings", &missing).await,
        "ttl_secs",
    );
    assert_invalid(
        "PUT with a negative ttl",
        s.put("/api/v1/mappings/x", &with("ttl_secs", json!(-1)), None)
            .await,
        "ttl_secs",
    );
    assert_invalid(
        "claims that are not an object",
        s.post(
            "/api/v1/scopes",
            &json!({"resource": "payments", "scope": "read", "claims": "x"}),
        )
        .await,
        "claims",
    );
    let revocation = json!({"target": "subject", "match": WEB, "reason": "r", "until": -5});
    assert_invalid(
        "a negative until",
        s.post("/api/v1/revocations", &revocation).await,
        "until",
    );
    let revocation = json!({"target": "subject", "match": WEB, "reason": "r", "until": "later"});
    assert_invalid(
        "an until that is a string",
        s.post("/api/v1/revocations", &revocation).await,
        "until",
    );
    assert_invalid(
        "a negative version",
        s.post("/api/v1/keys/retire", &json!({"below": -1})).await,
        "below",
    );
    let doc = json!({"mappings": [m(), with("ttl_secs", json!(-1))], "scopes": []});
    assert_invalid(
        "a document with a negative ttl",
        s.post("/api/v1/import?dry_run=true", &doc).await,
        "mappings[1].ttl_secs",
    );
    // Nothing was written.
    assert_eq!(s.get("/api/v1/mappings/x").await.0, 404);
    assert_eq!(s.get("/api/v1/revocations").await.2["items"], json!([]));
}

async fn a_merge_patch_that_breaks_the_shape_names_the_field(db: Db) {
    let s = Service::start(db).await;
    let path = "/api/v1/mappings/web-to-orders";
    let (_, _, before) = s.get(path).await;
    for (what, body, field) in [
        ("ttl as a string", json!({"ttl_secs": "300"}), "ttl_secs"),
        ("a negative ttl", json!({"ttl_secs": -1}), "ttl_secs"),
        ("scopes as a string", json!({"scopes": "read"}), "scopes"),
        ("the name removed", json!({"name": null}), "name"),
        ("the ttl removed", json!({"ttl_secs": null}), "ttl_secs"),
        (
            "a burst over u32",
            json!({"rate_limit": {"burst": 5_000_000_000_u64}}),
            "rate_limit.burst",
        ),
        ("an unknown field", json!({"colour": "red"}), "colour"),
    ] {
        assert_invalid(what, patch(&s, path, &body).await, field);
    }
    assert_invalid(
        "scope claims that are not an object",
        patch(&s, "/api/v1/scopes/payments/read", &json!({"claims": [1]})).await,
        "claims",
    );
    assert_eq!(s.get(path).await.2, before);
}

async fn a_malformed_query_or_path_is_refused_after_authentication_as_json(db: Db) {
    let s = Service::start(db).await;
    for path in [
        "/api/v1/mappings?limit=abc",
        "/api/v1/mappings/%FF",
        "/api/v1/scopes/%FF/read",
        "/api/v1/audit?after=x",
        "/api/v1/revocations?target=node",
        "/api/v1/revocations/%FF",
        "/api/v1/export?format=xml",
    ] {
        // Who asks is decided first: no token, no hint of what was wrong with it.
        let resp = s.req(Method::GET, path, None).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
        assert!(resp.headers().contains_key("www-authenticate"), "{path}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"], "unauthenticated", "{path}: {body}");
    }
    let r = s
        .req(Method::POST, "/api/v1/import?dry_run=maybe", None)
        .json(&json!({}));
    assert_eq!(s.send(r).await.0, 401);
    // With a token: a JSON 400 naming the parameter.
    for (path, param) in [
        ("/api/v1/mappings?limit=abc", "limit"),
        ("/api/v1/mappings?limit=-1", "limit"),
        ("/api/v1/mappings/%FF", "name"),
        ("/api/v1/scopes/%FF/read", "resource"),
        ("/api/v1/scopes/payments/%FF", "scope"),
        ("/api/v1/scopes?limit=1.5", "limit"),
        ("/api/v1/audit?after=x", "after"),
        ("/api/v1/revocations?target=node", "target"),
        ("/api/v1/revocations/%FF", "id"),
        ("/api/v1/export?format=xml", "format"),
    ] {
        assert_bad_parameter(path, s.get(path).await, param);
    }
    assert_bad_parameter(
        "DELETE with a bad path",
        s.delete("/api/v1/mappings/%FF", None).await,
        "name",
    );
    let doc = s.get("/api/v1/export").await.2;
    assert_bad_parameter(
        "import with dry_run=maybe",
        s.post("/api/v1/import?dry_run=maybe", &doc).await,
        "dry_run",
    );
    // Nothing was imported: the refusal came before the document was read.
    assert_eq!(s.get("/api/v1/export").await.2, doc);
}

async fn unknown_routes_and_methods_answer_the_json_error_shape(db: Db) {
    let s = Service::start(db).await;
    for (method, path) in [
        (Method::GET, "/api/v1/nothing-here"),
        (Method::GET, "/"),
        (Method::POST, "/api/v2/mappings"),
    ] {
        let resp = s.req(method, path, Some(ADMIN)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains(path), "{body}");
    }
    for (method, path, allow) in [
        (Method::DELETE, "/api/v1/mappings", "GET,HEAD,POST"),
        (Method::GET, "/api/v1/keys/rotate", "POST"),
        (Method::PUT, "/api/v1/revocations/rv-1", "GET,HEAD,DELETE"),
        (Method::POST, "/openapi.json", "GET,HEAD"),
    ] {
        let resp = s
            .req(method.clone(), path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        let got = resp.headers()["allow"].to_str().unwrap().to_string();
        let mut got: Vec<&str> = got.split(',').map(str::trim).collect();
        let mut want: Vec<&str> = allow.split(',').collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            body["error"], "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(path), "{body}");
    }
}

async fn a_page_size_outside_1_to_1000_is_refused_naming_limit(db: Db) {
    let s = Service::start(db).await;
    for list in ["/api/v1/mappings", "/api/v1/scopes", "/api/v1/audit"] {
        for limit in ["0", "1001", "999999", "99999999999999999999"] {
            let path = format!("{list}?limit={limit}");
            assert_bad_parameter(&path, s.get(&path).await, "limit");
        }
        for limit in ["1", "1000"] {
            let path = format!("{list}?limit={limit}");
            let (st, _, body) = s.get(&path).await;
            assert_eq!(st, 200, "{path}: {body}");
        }
    }
    let (_, _, page) = s.get("/api/v1/mappings?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
}

async fn a_list_refuses_the_query_parameters_it_does_not_apply(db: Db) {
    let s = Service::start(db).await;
    // A scope row has no subject nor participant: a filter on them would be ignored.
    for (path, param) in [
        (
            "/api/v1/scopes?subject=spiffe://cluster.local/ns/shop/sa/web",
            "subject",
        ),
        ("/api/v1/scopes?participant=acme", "participant"),
        ("/api/v1/mappings?colour=red", "colour"),
        ("/api/v1/audit?resource=payments", "resource"),
        ("/api/v1/revocations?limit=10", "limit"),
        ("/api/v1/export?prune=true", "prune"),
    ] {
        assert_bad_parameter(path, s.get(path).await, param);
    }
    let (st, _, page) = s.get("/api/v1/scopes?resource=payments&limit=1").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["items"][0]["resource"], "payments", "{page}");
}

async fn a_scope_row_is_checked_on_its_own_before_against_other_rows(db: Db) {
    let s = Service::start(db).await;
    // A resource no mapping could name is the resource's fault, not an unknown scope.
    let nul = json!({"resource": "pay\u{0}", "scope": "read", "claims": {"x": 1}});
    assert_invalid(
        "a NUL in the resource",
        s.post("/api/v1/scopes", &nul).await,
        "resource",
    );
    assert_invalid(
        "a NUL in the resource (PUT)",
        s.put("/api/v1/scopes/pay%00/read", &nul, None).await,
        "resource",
    );
    // A reserved claim in a scope no mapping grants: the claim is named.
    let reserved = json!({"resource": "payments", "scope": "delete", "claims": {"iss": "me"}});
    assert_invalid(
        "a reserved claim",
        s.post("/api/v1/scopes", &reserved).await,
        "claims.iss",
    );
    // An invalid scope token is said to be one (not "unknown scope").
    let bad = json!({"resource": "payments", "scope": "re\"ad", "claims": {"x": 1}});
    let (st, tag, err) = s.post("/api/v1/scopes", &bad).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not a valid scope"),
        "{err}"
    );
    assert_invalid("a bad scope token", (st, tag, err), "scope");
    let (_, _, list) = s.get("/api/v1/scopes").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
}

on_both_backends!(
    a_refused_body_names_the_json_path_of_the_field_not_its_value,
    a_merge_patch_that_breaks_the_shape_names_the_field,
    a_malformed_query_or_path_is_refused_after_authentication_as_json,
    unknown_routes_and_methods_answer_the_json_error_shape,
    a_page_size_outside_1_to_1000_is_refused_naming_limit,
    a_list_refuses_the_query_parameters_it_does_not_apply,
    a_scope_row_is_checked_on_its_own_before_against_other_rows,
);

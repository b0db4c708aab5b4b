//! Who may call the management API (no token, wrong role, expired, wrong issuer,
//! exchange audience, unbound caller; decided before the body is read, whatever the
//! method, path or header variant), the API never starting open or on the token port,
//! and `/openapi.json` covering every route and error shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;

use common::*;
use meshpass_exchange::config::Config;
use meshpass_exchange::mgmt::error::ERROR_CODES;
use meshpass_exchange::mgmt::routes::ROUTES;
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_without_a_valid_token_or_the_role() {
    let s = Service::start(Db::sqlite()).await;
    let body = mapping("x", "spiffe://cluster.local/ns/shop/*", "inventory");
    // No token.
    let resp = s
        .req(Method::GET, "/api/v1/mappings", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthenticated"
    );
    // Read-only caller writing.
    let (st, _, b) = s
        .send(
            s.req(Method::POST, "/api/v1/mappings", Some(VIEWER))
                .json(&body),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        s.send(s.req(Method::GET, "/api/v1/mappings", Some(VIEWER)))
            .await
            .0,
        200
    );
    // Keys role without write.
    assert_eq!(
        s.send(s.req(
            Method::DELETE,
            "/api/v1/mappings/web-to-orders",
            Some(KEYS_OP)
        ))
        .await
        .0,
        403
    );
    // Unbound caller: a valid identity with no management role.
    assert_eq!(
        s.send(s.req(Method::GET, "/api/v1/mappings", Some(WEB)))
            .await
            .0,
        403
    );
    let send_with = |token: String| {
        s.http
            .get(format!("{}/api/v1/mappings", s.api))
            .bearer_auth(token)
            .header("x-forwarded-client-cert", format!("URI={ADMIN}"))
            .send()
    };
    // Expired.
    let n = now();
    let expired = s.issuer.sign(
        &json!({"iss": ISSUER, "sub": ADMIN, "aud": [MGMT_AUD], "iat": n - 7200, "exp": n - 3600}),
    );
    assert_eq!(send_with(expired).await.unwrap().status().as_u16(), 401);
    // Another issuer (same claims, a key the service does not know).
    let other = TestIssuer::new("https://evil.test", "spire-1");
    let forged = other
        .sign(&json!({"iss": ISSUER, "sub": ADMIN, "aud": [MGMT_AUD], "iat": n, "exp": n + 600}));
    assert_eq!(send_with(forged).await.unwrap().status().as_u16(), 401);
    let unknown = other.sign(&json!({"iss": "https://evil.test", "sub": ADMIN, "aud": [MGMT_AUD], "iat": n, "exp": n + 600}));
    assert_eq!(send_with(unknown).await.unwrap().status().as_u16(), 401);
    // A subject token for exchanges (audience meshpass) is no management credential.
    let exchange_token = s.issuer.svid(ADMIN, n, 600);
    assert_eq!(
        send_with(exchange_token).await.unwrap().status().as_u16(),
        401
    );
    // Nothing was written by any of them.
    assert_eq!(s.get("/api/v1/audit").await.2["items"], json!([]));
}

/// A caller with `write` but not `read` writes, but never reads what is stored: a
/// `PATCH {}` answered the whole stored mapping (and scope row), and an import (a
/// dry run writes nothing) answered the diff against the store, naming and showing
/// every entry the document lacks or changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_caller_cannot_read_the_store_through_a_patch_or_an_import() {
    let s = Service::start(Db::sqlite()).await;
    let stored = s.get("/api/v1/mappings/web-to-orders").await.2;
    assert_eq!(stored["name"], "web-to-orders", "{stored}");
    let patch = |path: &str| {
        s.req(Method::PATCH, path, Some(WRITER))
            .header("content-type", "application/merge-patch+json")
            .body("{}")
    };
    let import = |path: &str| {
        s.req(Method::POST, path, Some(WRITER))
            .json(&json!({"mappings": [], "scopes": []}))
    };
    for (what, r) in [
        (
            "PATCH {} of a mapping",
            patch("/api/v1/mappings/web-to-orders"),
        ),
        (
            "PATCH {} of a scope row",
            patch("/api/v1/scopes/payments/read"),
        ),
        ("a dry-run import", import("/api/v1/import?dry_run=true")),
        ("an import", import("/api/v1/import")),
    ] {
        let (st, _, b) = s.send(r).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (403, Some("forbidden")),
            "{what} as a write-only caller was answered: {b}"
        );
    }
    // Writing what it sends is still its job.
    let (st, _, b) = s
        .send(
            s.req(Method::POST, "/api/v1/mappings", Some(WRITER))
                .json(&mapping(
                    "w",
                    "spiffe://cluster.local/ns/shop/*",
                    "inventory",
                )),
        )
        .await;
    assert_eq!(st, 201, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_tokens_are_bound_to_the_connection_they_arrive_on() {
    let s = Service::start(Db::sqlite()).await;
    let admin = s.token(ADMIN);
    let list = format!("{}/api/v1/mappings", s.api);
    let call = |client: reqwest::Client, xfcc: Option<&str>| {
        let mut r = client.get(&list).bearer_auth(&admin);
        if let Some(uri) = xfcc {
            r = r.header("x-forwarded-client-cert", format!("URI={uri}"));
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // The admin's token, spent over another workload's connection (the trusted proxy
    // names WEB): refused, and the answer says why.
    let (st, b) = call(s.http.clone(), Some(WEB)).await;
    assert_eq!(st, 401, "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(msg.contains("belongs to") && msg.contains(WEB), "{msg}");
    // Through the trusted proxy with no identity forwarded: refused (fail closed).
    let (st, b) = call(s.http.clone(), None).await;
    assert_eq!(st, 401, "{b}");
    assert!(b["message"].as_str().unwrap().contains("identity"), "{b}");
    // Over its own connection: accepted.
    assert_eq!(call(s.http.clone(), Some(ADMIN)).await.0, 200);
    // A local operator on loopback that is not the proxy (127.0.0.2): no identity to
    // bind to, accepted; an XFCC from it is refused, never believed.
    let local = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(call(local.clone(), None).await.0, 200);
    let (st, b) = call(local, Some(ADMIN)).await;
    assert_eq!(st, 401, "{b}");
}

/// Sends `bytes` on a new connection to the management API; the first answer read
/// within 3 s (empty when none came).
async fn first_answer_within_3s(s: &Service, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.api.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(std::time::Duration::from_secs(3), tcp.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => String::new(),
    }
}

/// "Who calls is decided before the query, path and body are read": an anonymous
/// client that announces a body and never sends it gets its 401 at once, and holds no
/// request (nor, with 8 MiB bodies, the memory) of the API open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_request_is_refused_before_its_body_is_read() {
    let s = Service::start(Db::sqlite()).await;
    // Control: the same anonymous request with its whole body is a 401 at once.
    let complete = first_answer_within_3s(
        &s,
        b"POST /api/v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n{",
    )
    .await;
    assert!(
        complete.starts_with("HTTP/1.1 401"),
        "control: {complete:?}"
    );
    // The body announced and not (yet) sent.
    let answer = first_answer_within_3s(
        &s,
        b"POST /api/v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "no 401 within 3 s for an anonymous request whose body is still coming: got {answer:?}"
    );
}

/// The same rule, visible in the status: an anonymous oversized body is `401`, not a
/// `413` that shows the body was judged before the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_oversized_body_is_unauthenticated_not_too_large() {
    let s = Service::start(Db::sqlite()).await;
    let answer = first_answer_within_3s(
        &s,
        b"POST /api/v1/import HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9437184\r\n\r\n{",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "anonymous 9 MiB import: {answer:?}"
    );
}

/// An authenticated caller's oversized body is still `413 too_large`, and that answer
/// carries `X-Request-Id` like every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_oversized_body_is_too_large_and_the_answer_carries_the_request_id() {
    let s = Service::start(Db::sqlite()).await;
    let body = vec![b' '; 9 * 1024 * 1024];
    let resp = s
        .req(Method::POST, "/api/v1/import", Some(ADMIN))
        .header("content-type", "application/json")
        .header("x-request-id", "req-413")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("req-413".to_string()),
        "413 without X-Request-Id: {:?}",
        resp.headers()
    );
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"], "too_large", "{b}");
}

/// HEAD, OPTIONS, a trailing slash, another case and a client-set internal connection
/// header get no request past authentication; every role keeps to its own routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_method_path_or_header_variant_gets_past_authentication() {
    let s = Service::start(Db::sqlite()).await;
    let anon = |m: Method, p: &str| s.http.request(m, format!("{}{p}", s.api)).send();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(anon(Method::HEAD, "/api/v1/mappings").await.unwrap()),
        401
    );
    assert_eq!(
        status(anon(Method::HEAD, "/api/v1/audit").await.unwrap()),
        401
    );
    assert_eq!(
        status(anon(Method::OPTIONS, "/api/v1/mappings").await.unwrap()),
        405
    );
    assert_eq!(
        status(anon(Method::GET, "/api/v1/mappings/").await.unwrap()),
        404
    );
    assert_eq!(
        status(anon(Method::GET, "/API/v1/mappings").await.unwrap()),
        404
    );
    // A client-set internal connection header is replaced, never believed.
    let r = s
        .http
        .get(format!("{}/api/v1/mappings", s.api))
        .bearer_auth(s.token(ADMIN))
        .header("x-meshpass-internal-connection", "unbound")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Viewer cannot rotate, import (even a dry run) or lift; the keys role cannot revoke;
    // a caller in no entry can do nothing.
    for (m, p, who, want) in [
        (Method::POST, "/api/v1/keys/rotate", VIEWER, 403),
        (Method::POST, "/api/v1/import?dry_run=true", VIEWER, 403),
        (Method::POST, "/api/v1/revocations", KEYS_OP, 403),
        (Method::DELETE, "/api/v1/revocations/rv-x", VIEWER, 403),
        (
            Method::POST,
            "/api/v1/keys/rotate",
            "spiffe://cluster.local/ns/ops/sa/nobody",
            403,
        ),
    ] {
        let (st, _, b) = s
            .send(s.req(m.clone(), p, Some(who)).json(&json!({})))
            .await;
        assert_eq!(st, want, "{m} {p} as {who}: {b}");
    }
    // An insane request id is replaced.
    let r = s
        .req(Method::GET, "/api/v1/mappings", Some(VIEWER))
        .header("x-request-id", "a\"b<c>")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(rid, "a\"b<c>");
}

fn config_with(extra: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config_toml(&issuer, &dir.path().join("m.db"), extra)).unwrap();
    Config::load(Some(&path)).map_err(|e| e.to_string())
}

#[tokio::test]
async fn never_starts_without_callers_and_never_on_the_token_port() {
    let cfg = config_with("").unwrap();
    assert_eq!(
        cfg.management.disabled_reason(),
        Some("no [[management.callers]] nor [management.kubernetes] configured: the API never runs open")
    );
    assert_eq!(cfg.management.listen.to_string(), "127.0.0.1:8081");
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let (state, store, stats) = local_parts(&cfg).await;
    let running = meshpass_exchange::mgmt::start(
        &cfg,
        &state,
        store,
        None,
        stats,
        std::future::pending::<()>(),
    )
    .await
    .unwrap();
    assert!(running.is_none(), "started with no callers");

    let e = config_with(
        "[server]\nlisten = \"0.0.0.0:9000\"\n[management]\nlisten = \"127.0.0.1:9000\"",
    )
    .unwrap_err();
    assert!(e.starts_with("management.listen:"), "{e}");
    let e = config_with(
        "[[management.callers]]\nid = \"spiffe://cluster.local/ns/*/x\"\nroles = [\"read\"]",
    )
    .unwrap_err();
    assert!(e.starts_with("management.callers[0].id:"), "{e}");
    let e = config_with(
        "[[management.callers]]\nid = \"spiffe://cluster.local/ns/ops/*\"\nroles = [\"root\"]",
    )
    .unwrap_err();
    // Named by its key, never quoted (a value in the wrong place may be a secret).
    assert!(
        e.starts_with("management.callers[0].roles[0]: unknown value, expected one of"),
        "{e}"
    );
    assert!(!e.contains("root"), "{e}");
}

/// The token endpoint's state (local signer), the store and the stats for `cfg`.
async fn local_parts(
    cfg: &Config,
) -> (
    meshpass_exchange::AppState,
    std::sync::Arc<meshpass_exchange::store::SqlStore>,
    std::sync::Arc<meshpass_exchange::mgmt::ExchangeStats>,
) {
    let state = state_with(
        cfg,
        signer().await,
        std::sync::Arc::new(meshpass_exchange::clock::SystemClock),
    )
    .await;
    let store = std::sync::Arc::new(
        meshpass_exchange::store::SqlStore::connect(&cfg.store, "participant").unwrap(),
    );
    let stats = std::sync::Arc::new(meshpass_exchange::mgmt::ExchangeStats::new().unwrap());
    (state, store, stats)
}

#[tokio::test]
async fn retiring_through_the_api_waits_out_the_verifier_leeway_as_the_schedule_does() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let mut cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), &management_toml("")),
    );
    cfg.token.max_ttl_secs = 600;
    cfg.keys.verifier_leeway = std::time::Duration::from_millis(89_500);
    let (state, store, stats) = local_parts(&cfg).await;
    let mgmt = meshpass_exchange::mgmt::MgmtState::new(&cfg, &state, store, None, stats).unwrap();
    // A token lives max_ttl_secs, and verifiers accept it for the leeway (rounded up)
    // past its exp: the schedule waits for both, so must `POST /keys/retire`.
    assert_eq!(mgmt.max_token_lifetime_secs, 600 + 90);
    assert_eq!(
        mgmt.max_ttl_secs, 600,
        "the cap on mapping TTLs stays the token's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route_and_every_error_shape() {
    let s = Service::start(Db::sqlite()).await;
    let doc: serde_json::Value = s
        .http
        .get(format!("{}/openapi.json", s.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method];
        assert!(op.is_object(), "{} {} missing", r.method, r.path);
        // Every authenticated route is served and refuses an anonymous call with the
        // documented error shape (so the router and the document agree).
        if r.role.is_some() {
            let path = r
                .path
                .replace("{name}", "n")
                .replace("{resource}", "r")
                .replace("{scope}", "s");
            let method = Method::from_bytes(r.method.to_uppercase().as_bytes()).unwrap();
            let (st, _, body) = s
                .send(s.http.request(method, format!("{}{path}", s.api)))
                .await;
            assert_eq!(st, 401, "{} {}", r.method, r.path);
            assert!(op["responses"]["401"].is_object());
            for key in body.as_object().unwrap().keys() {
                assert!(
                    doc["components"]["schemas"]["Error"]["properties"][key].is_object(),
                    "{key}"
                );
            }
        }
    }
    // The success statuses the API answers are the documented ones: a PUT that creates
    // is 201, one that replaces is 200.
    let m = mapping("put", "spiffe://cluster.local/ns/put/*", "inventory");
    for want in [201, 200] {
        let (st, _, body) = s
            .send(
                s.req(Method::PUT, "/api/v1/mappings/put", Some(ADMIN))
                    .json(&m),
            )
            .await;
        assert_eq!(st, want, "{body}");
        assert!(
            doc["paths"]["/api/v1/mappings/{name}"]["put"]["responses"][want.to_string()]
                .is_object(),
            "PUT mapping answers {want}, undocumented"
        );
    }
    let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for (code, status) in ERROR_CODES {
        assert!(codes.contains(code), "{code}");
        // A 405 answers a method no operation has: the document says so once.
        if *status == 405 {
            let info = doc["info"]["description"].as_str().unwrap();
            assert!(info.contains("405"), "{info}");
            continue;
        }
        let documented = doc["paths"].as_object().unwrap().values().any(|p| {
            p.as_object()
                .unwrap()
                .values()
                .any(|op| op["responses"][status.to_string()].is_object())
        });
        assert!(documented, "status {status} is in no route");
    }
    // The schemas list exactly the fields the types serialise.
    let m: meshpass_exchange::store::Mapping =
        serde_json::from_value(mapping("x", "spiffe://a/b", "r")).unwrap();
    let fields: Vec<String> = serde_json::to_value(&m)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut documented: Vec<String> = doc["components"]["schemas"]["Mapping"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    documented.sort();
    let mut fields = fields;
    fields.sort();
    assert_eq!(fields, documented);
    the_document_agrees_with_what_the_api_does(&s, &doc).await;
}

/// `template` with the seeded entities' names, and `value` for its parameter `param`.
fn concrete(template: &str, param: &str, value: &str) -> String {
    [
        ("name", "web-to-orders"),
        ("resource", "payments"),
        ("scope", "read"),
        ("id", "rv-none"),
    ]
    .iter()
    .fold(template.to_string(), |path, (p, seeded)| {
        path.replace(
            &format!("{{{p}}}"),
            if *p == param { value } else { seeded },
        )
    })
}

/// Values a parameter declared as `p` takes, and values it refuses with 400.
fn values_for(p: &Value) -> (Vec<String>, Vec<String>) {
    let schema = &p["schema"];
    match (p["in"].as_str(), schema["type"].as_str()) {
        (Some("query"), Some("integer")) => {
            let (min, max) = (schema["minimum"].as_i64(), schema["maximum"].as_i64());
            let mut bad = texts(&["abc", "1.5"]);
            bad.extend(
                [min.map(|n| n - 1), max.map(|n| n + 1)]
                    .iter()
                    .flatten()
                    .map(i64::to_string),
            );
            let good: Vec<String> = [min, max].iter().flatten().map(i64::to_string).collect();
            (if good.is_empty() { texts(&["0"]) } else { good }, bad)
        }
        (Some("query"), Some("boolean")) => (texts(&["true", "false"]), texts(&["maybe"])),
        (Some("query"), Some("string")) => match schema["enum"].as_array() {
            Some(v) => (
                v.iter().map(|v| v.as_str().unwrap().into()).collect(),
                texts(&["bogus"]),
            ),
            // Any text (a cursor is the base64url of a key: YQ is "a").
            None => (texts(&["YQ"]), vec![]),
        },
        (Some("path"), Some("string")) => (vec![], texts(&["%FF"])),
        (Some("header"), _) => (vec![], vec![]),
        other => panic!("{p}: {other:?}"),
    }
}

fn texts(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// `ADMIN` sends `method path` (with `body` as JSON): the status and the JSON body.
async fn call(s: &Service, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut r = s.req(method, path, Some(ADMIN));
    if let Some(b) = body {
        r = r.json(b);
    }
    let (st, _, body) = s.send(r).await;
    (st, body)
}

/// Every query parameter is declared with the type its handler parses, path parameters
/// and request bodies are refused as documented, `If-Match` is documented exactly where
/// it is honoured, YAML where it is spoken, and every status provoked here is
/// documented for its route.
async fn the_document_agrees_with_what_the_api_does(s: &Service, doc: &Value) {
    let export = s.get("/api/v1/export").await.2;
    let mut provoked: Vec<(&str, &str, u16, String)> = Vec::new();
    for r in ROUTES.iter().filter(|r| r.role.is_some()) {
        let (op, at) = (
            &doc["paths"][r.path][r.method],
            format!("{} {}", r.method, r.path),
        );
        let params = op["parameters"].as_array().unwrap();
        let path = concrete(r.path, "", "");
        // An import is sent the store's own document (a dry run or no change).
        let body = (r.path == "/api/v1/import").then_some(&export);
        for p in params {
            let name = p["name"].as_str().unwrap();
            let (good, bad) = values_for(p);
            let with = |v: &str| match p["in"].as_str() {
                Some("path") => concrete(r.path, name, v),
                _ => format!("{path}?{name}={v}"),
            };
            for v in good {
                let (st, b) = call(s, r.method, &with(&v), body).await;
                assert!(st != 400, "{at} {name}={v} refused: {b}");
                provoked.push((r.method, r.path, st, format!("{name}={v}")));
            }
            for v in bad {
                let (st, b) = call(s, r.method, &with(&v), body).await;
                let message = b["message"].as_str().unwrap_or_default();
                assert_eq!(st, 400, "{at} {name}={v}: {b}");
                assert!(message.starts_with(&format!("{name}: ")), "{at}: {b}");
                provoked.push((r.method, r.path, st, format!("{name}={v}")));
            }
        }
        // If-Match is documented where a stale one is refused with 412.
        let if_match = params.iter().any(|p| p["name"] == "If-Match");
        assert_eq!(if_match, op["responses"]["412"].is_object(), "{at}");
        if if_match {
            let current = s.get(&path).await.2;
            let stale = |tag: &'static str| {
                let m = Method::from_bytes(r.method.to_uppercase().as_bytes()).unwrap();
                let req = s.req(m, &path, Some(ADMIN)).header("if-match", tag);
                match r.method {
                    "put" => req.json(&current),
                    "patch" => req.json(&json!({})),
                    _ => req,
                }
            };
            for (tag, want) in [("\"0123abcd\"", 412), ("not-a-tag", 400)] {
                let (st, _, b) = s.send(stale(tag)).await;
                assert_eq!(st, want, "{at} If-Match {tag}: {b}");
                provoked.push((r.method, r.path, st, format!("If-Match: {tag}")));
            }
        }
        // A JSON body with a field no schema has: refused naming it, as the schema says.
        if let Some(schema) = r.request.filter(|s| *s != "IntrospectionRequest") {
            // A merge patch may name any field: the patched entity is what is checked.
            let closed = doc["components"]["schemas"][schema]["additionalProperties"] == false;
            assert_eq!(closed, schema != "MergePatch", "{schema}");
            // (A document must name a section to be read at all.)
            let unknown = match schema {
                "PolicyDocument" => json!({"mappings": [], "colour": 1}),
                _ => json!({"colour": 1}),
            };
            let (st, b) = call(s, r.method, &path, Some(&unknown)).await;
            assert_eq!(
                (st, b["field"].as_str()),
                (422, Some("colour")),
                "{at}: {b}"
            );
            provoked.push((r.method, r.path, st, "an unknown field".into()));
        }
    }
    let rate_limit = &doc["components"]["schemas"]["RateLimit"];
    assert_eq!(rate_limit["additionalProperties"], false);
    for (method, path, status, what) in &provoked {
        assert!(
            doc["paths"][path][method]["responses"][status.to_string()].is_object(),
            "{method} {path} answers {status} ({what}), undocumented"
        );
    }
    // The policy document is spoken in YAML too, both ways.
    let resp = s
        .req(Method::GET, "/api/v1/export?format=yaml", Some(ADMIN))
        .send()
        .await
        .unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let yaml = resp.text().await.unwrap();
    assert!(
        doc["paths"]["/api/v1/export"]["get"]["responses"]["200"]["content"][&ct].is_object(),
        "{ct}"
    );
    let r = s
        .req(Method::POST, "/api/v1/import?dry_run=true", Some(ADMIN))
        .header("content-type", "application/yaml")
        .body(yaml);
    assert_eq!(s.send(r).await.0, 200);
    assert!(
        doc["paths"]["/api/v1/import"]["post"]["requestBody"]["content"]["application/yaml"]
            .is_object()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_exchanges_are_audited_rate_limited_and_counted_without_a_label_per_subject() {
    // Burst 3, then one per 1000 s: an attack cannot flood the audit log.
    let s = Service::start_with(
        Db::sqlite(),
        signer().await,
        None,
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        "refusal_audit_per_second = 0.001\nrefusal_audit_burst = 3\n",
    )
    .await;
    let stranger = "spiffe://cluster.local/ns/other/sa/stranger";
    for _ in 0..10 {
        // payments only maps ns/shop: unauthorized_client, the subject is known.
        let token = s.issuer.svid(stranger, now() - 1, 3600);
        let r = s
            .http
            .post(format!("{}/token", s.token_url))
            .header("x-forwarded-client-cert", format!("URI={stranger}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(exchange_form(&token, &[("resource", "payments")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }
    // Twice the same token (web-to-orders allows a burst of 2): issued, then cached.
    let web = s.issuer.svid(WEB, now(), 3600);
    for _ in 0..2 {
        assert_eq!(s.exchange_token(&web, "orders").await.0, 200);
    }
    // The audit writer is asynchronous: wait for its three events.
    let items = s.audit_events("exchange.refused", 3).await;
    assert_eq!(items.len(), 3, "{items:?}");
    // Who was refused, and through which caller (here its own sidecar, CLIENT mode).
    assert_eq!(items[0]["actor"], format!("{stranger} via {stranger}"));
    assert_eq!(items[0]["target"], "resources/payments");
    assert!(
        items[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized_client"),
        "{}",
        items[0]
    );
    assert!(
        !serde_json::to_string(&items).unwrap().contains("eyJ"),
        "a token in the audit log"
    );

    let (st, _, stats) = s.get("/api/v1/stats").await;
    assert_eq!(st, 200);
    let top = stats["top_subjects"].as_array().unwrap();
    assert_eq!(top[0]["subject"], stranger, "{stats}");
    assert_eq!(top[1]["subject"], WEB);
    let count = |mapping: &str, outcome: &str| {
        stats["by_mapping"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["mapping"] == mapping && c["outcome"] == outcome)
            .map(|c| c["count"].as_u64().unwrap())
    };
    assert_eq!(count("", "unauthorized_client"), Some(10));
    assert_eq!(count("web-to-orders", "issued"), Some(1));
    assert_eq!(count("web-to-orders", "cached"), Some(1));
    // The seven refusals over the burst are counted where operators can see them.
    let refusals = s.state.hooks.as_ref().unwrap().refusals.clone().unwrap();
    let reg = prometheus::Registry::new();
    reg.register(refusals.collector().unwrap()).unwrap();
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("\nmeshpass_refusal_audit_dropped_total 7\n"),
        "{text}"
    );
    // The metric has mapping and outcome labels only: no SPIFFE ID anywhere in it.
    let reg = prometheus::Registry::new();
    reg.register(s.stats.collector()).unwrap();
    let text = format!("{:?}", reg.gather());
    assert!(!text.contains("spiffe://"), "a subject became a label");
}

#[test]
fn the_ttl_cap_is_one_rule_for_the_file_and_the_api() {
    let e = config_with("[[mappings]]\nname = \"long\"\nsubject = \"spiffe://cluster.local/ns/x/*\"\nresource = \"inventory\"\nparticipant = \"p\"\nttl_secs = 7200").unwrap_err();
    assert_eq!(
        e,
        "mappings[2]: invalid ttl_secs: exceeds token.max_ttl_secs (3600)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_subject_is_known_are_audited_with_who_asked_for_what() {
    let s = Service::start(Db::sqlite()).await;
    let post = |client: &reqwest::Client, xfcc: &str, body: String| {
        client
            .post(format!("{}/token", s.token_url))
            .header("x-forwarded-client-cert", format!("URI={xfcc}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // 1. A forged SVID (same issuer and kid, another key) from WEB's own sidecar.
    let forged = TestIssuer::new(ISSUER, "spire-1").svid(WEB, now(), 3600);
    let r = post(
        &s.http,
        WEB,
        exchange_form(&forged, &[("resource", "orders")]),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // 2. A valid token, with an XFCC header from a peer that is not the trusted proxy
    //    (127.0.0.1): the connection comes from 127.0.0.2.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let valid = s.issuer.svid(WEB, now(), 3600);
    let r = post(
        &elsewhere,
        WEB,
        exchange_form(&valid, &[("resource", "orders")]),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // 3. A form without grant_type.
    let r = post(
        &s.http,
        WEB,
        format!("subject_token={valid}&resource=orders"),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // 4. A resource no mapping names.
    let r = post(
        &s.http,
        WEB,
        exchange_form(&valid, &[("resource", "nonexistent")]),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The audit writer is asynchronous: wait for the four events.
    let items = s.audit_events("exchange.refused", 4).await;
    assert_eq!(items.len(), 4, "{items:?}");
    let seen: Vec<(String, String, String)> = items
        .iter()
        .map(|i| {
            let reason = i["reason"].as_str().unwrap();
            let code = reason.split(':').next().unwrap().to_string();
            (
                i["actor"].as_str().unwrap().into(),
                i["target"].as_str().unwrap().into(),
                code,
            )
        })
        .collect();
    let row = |actor: &str, target: &str, code: &str| (actor.into(), target.into(), code.into());
    assert_eq!(
        seen,
        vec![
            // The caller is known (its sidecar named it), the subject is not.
            row(WEB, "resources/orders", "invalid_grant"),
            // Nobody is known but the peer the header came from.
            row(
                "unidentified caller at 127.0.0.2",
                "resources/orders",
                "unauthorized_client"
            ),
            row(WEB, "resources/", "invalid_request"),
            row(WEB, "resources/nonexistent", "invalid_target"),
        ],
        "{items:?}"
    );
    assert!(
        !serde_json::to_string(&items).unwrap().contains("eyJ"),
        "a token in the audit log"
    );
    // An unknown resource is audited but never becomes a metric label.
    let metrics = s.metrics().await;
    assert!(metrics.contains("resource=\"orders\"") || metrics.contains("resource=\"\""));
    assert!(!metrics.contains("nonexistent"), "{metrics}");
}

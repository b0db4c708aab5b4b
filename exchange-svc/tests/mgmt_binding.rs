//! The management API's authentication and authorisation: who may call it
//! (README "Management API": connection binding, local operators, trusted proxies),
//! the listener never on a token port, no CORS or method override, and 401 before
//! anything that would tell an anonymous caller what exists.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use mgmt_common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// A management API on the test configuration, with `edit` applied to the TOML first
/// (`extra`: more `[management]` keys). Returns the listener's port and the issuer.
async fn start_edited(
    dir: &std::path::Path,
    extra: &str,
    edit: impl Fn(String) -> String,
) -> (u16, TestIssuer) {
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let toml = edit(config_toml(
        &issuer,
        &dir.join("m.db"),
        &management_toml(extra),
    ));
    let cfg = load_config(dir, &toml);
    let (state, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
    let stats = Arc::new(meshpass_exchange::mgmt::ExchangeStats::new().unwrap());
    let running = meshpass_exchange::mgmt::start(
        &cfg,
        &state,
        store,
        None,
        stats,
        std::future::pending::<()>(),
    )
    .await
    .unwrap()
    .expect("management API started");
    (running.addr.port(), issuer)
}

fn admin_token(issuer: &TestIssuer) -> String {
    let n = now();
    issuer.sign(&json!({"iss": ISSUER, "sub": ADMIN, "aud": [MGMT_AUD], "iat": n, "exp": n + 600}))
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn status_and_body(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

/// README: "A trusted proxy that forwards no identity ... is refused". The token
/// endpoint's `identify` compares trusted proxies by their canonical address (an
/// operator may write the sidecar as `::ffff:127.0.0.1`, as a dual-stack listener logs
/// it); the management binding must then not take that same proxy for a local operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_written_as_an_ipv4_mapped_address_that_forwards_no_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (port, issuer) = start_edited(dir.path(), "", |t| {
        t.replace(
            "xfcc_trusted_proxies = [\"127.0.0.1\"]",
            "xfcc_trusted_proxies = [\"::ffff:127.0.0.1\"]",
        )
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/api/v1/mappings");
    let token = admin_token(&issuer);
    let proxy = client_from("127.0.0.1");
    // Control: the proxy is trusted (its XFCC is believed and binds the connection).
    let (st, b) = status_and_body(
        proxy
            .get(&url)
            .bearer_auth(&token)
            .header("x-forwarded-client-cert", format!("URI={WEB}")),
    )
    .await;
    assert_eq!(st, 401, "the trusted proxy's XFCC was not used: {b}");
    assert!(
        b["message"].as_str().unwrap_or("").contains("belongs to"),
        "{b}"
    );
    // The same proxy forwarding no identity: a copied admin token must not work.
    let (st, b) = status_and_body(proxy.get(&url).bearer_auth(&token)).await;
    assert_eq!(
        st, 401,
        "a trusted proxy forwarding no identity was taken for a local operator: {b}"
    );
}

/// README: "When none is found, only a local operator is accepted: a loopback peer
/// that is not a trusted proxy". On a dual-stack listener (`[::]:PORT`) an IPv4
/// loopback peer is seen as `::ffff:127.0.0.x`: still a loopback peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_operator_on_a_dual_stack_listener_is_accepted_as_on_an_ipv4_one() {
    let dir = tempfile::tempdir().unwrap();
    let (port, issuer) = start_edited(dir.path(), "", |t| {
        t.replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"")
    })
    .await;
    let token = admin_token(&issuer);
    // Over IPv6 loopback: a local operator.
    let (st, b) = status_and_body(
        reqwest::Client::new()
            .get(format!("http://[::1]:{port}/api/v1/mappings"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(st, 200, "::1: {b}");
    // Over IPv4 loopback from 127.0.0.2 (not the trusted proxy 127.0.0.1): the same.
    let (st, b) = status_and_body(
        client_from("127.0.0.2")
            .get(format!("http://127.0.0.1:{port}/api/v1/mappings"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(
        st, 200,
        "a loopback operator over IPv4 on a dual-stack listener was refused: {b}"
    );
}

/// A remote-looking peer with no identity stays refused on the dual-stack listener
/// (control for the test above: the fix must not open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_forwarding_no_identity_is_refused_on_a_dual_stack_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (port, issuer) = start_edited(dir.path(), "", |t| {
        t.replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"")
    })
    .await;
    let (st, b) = status_and_body(
        client_from("127.0.0.1")
            .get(format!("http://127.0.0.1:{port}/api/v1/mappings"))
            .bearer_auth(admin_token(&issuer)),
    )
    .await;
    assert_eq!(st, 401, "{b}");
}

fn try_load(dir: &std::path::Path, toml: &str) -> Result<Config, String> {
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path)).map_err(|e| e.to_string())
}

/// README: `management.listen` is "refused when it is the token port". With
/// `[server.tls] listen`, `/token` is served on that address too.
#[test]
fn the_management_listener_is_refused_on_the_tls_token_port_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("meshpass.test".try_into().unwrap()));
    let w = |n: &str, c: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, c).unwrap();
        p.display().to_string()
    };
    let (cert, key, ca) = (
        w("c.pem", &cert),
        w("k.pem", &key),
        w("ca.pem", &pki.ca.pem()),
    );
    let issuer = TestIssuer::new(ISSUER, "k");
    let mgmt = format!(
        "[management]\nlisten = \"127.0.0.1:18444\"\n[[management.callers]]\nid = \"{ADMIN}\"\nroles = [\"read\"]\n"
    );
    let toml = config_toml(&issuer, &dir.path().join("m.db"), &mgmt).replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:18080\"\n[server.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{ca}\"\nlisten = \"127.0.0.1:18444\"\n\n[callers]"
        ),
    );
    let err = try_load(dir.path(), &toml)
        .expect_err("a management listener on the TLS token listener's address was accepted");
    assert!(err.starts_with("management.listen"), "{err}");
    // Control: the same file with another management port loads.
    try_load(
        dir.path(),
        &toml.replace(
            "listen = \"127.0.0.1:18444\"\n[[",
            "listen = \"127.0.0.1:18445\"\n[[",
        ),
    )
    .unwrap();
}

/// No CORS: a browser page elsewhere must not be able to read management answers, and
/// no method-override header turns a GET into a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_headers_are_given_and_no_method_override_is_honoured() {
    let s = Service::start(Db::sqlite()).await;
    let resp = s
        .http
        .request(Method::OPTIONS, format!("{}/api/v1/mappings", s.api))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        resp.headers()
    );
    let resp = s
        .req(Method::GET, "/api/v1/mappings", Some(VIEWER))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // A viewer's POST/GET carrying override headers never deletes.
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let (st, _, _) = s
            .send(
                s.req(Method::POST, "/api/v1/mappings/web-to-orders", Some(ADMIN))
                    .header(h, "DELETE"),
            )
            .await;
        assert_eq!(st, 405, "{h}");
    }
    assert_eq!(s.get("/api/v1/mappings/web-to-orders").await.0, 200);
}

/// "Who calls is decided before the query, path and body are read": an anonymous
/// caller learns nothing of what exists (401, never 404/409/412/422), and a caller
/// without the role gets 403, never a 404 or 422 about its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_or_unprivileged_caller_learns_nothing_of_what_exists() {
    let s = Service::start(Db::sqlite()).await;
    let bad = json!({"name": 1});
    for (m, p) in [
        (Method::GET, "/api/v1/mappings/missing"),
        (Method::GET, "/api/v1/mappings/web-to-orders"),
        (Method::DELETE, "/api/v1/mappings/missing"),
        (Method::PUT, "/api/v1/mappings/missing"),
        (Method::PATCH, "/api/v1/mappings/web-to-orders"),
        (Method::GET, "/api/v1/scopes/payments/missing"),
        (Method::GET, "/api/v1/revocations/rv-missing"),
        (Method::DELETE, "/api/v1/revocations/rv-missing"),
        (Method::POST, "/api/v1/keys/retire"),
        (Method::POST, "/api/v1/import?prune=maybe"),
        (Method::GET, "/api/v1/keys"),
        (Method::GET, "/api/v1/stats"),
        (Method::POST, "/api/v1/introspect"),
    ] {
        let (st, _, b) = s
            .send(
                s.req(m.clone(), p, None)
                    .header("if-match", "\"x\"")
                    .json(&bad),
            )
            .await;
        assert_eq!(
            (st, b["error"].as_str()),
            (401, Some("unauthenticated")),
            "{m} {p}: {b}"
        );
        // A valid identity with no management entry: 403 before anything else.
        let (st, _, b) = s
            .send(
                s.req(m.clone(), p, Some(WEB))
                    .header("if-match", "\"x\"")
                    .json(&bad),
            )
            .await;
        assert_eq!(
            (st, b["error"].as_str()),
            (403, Some("forbidden")),
            "{m} {p} as WEB: {b}"
        );
    }
    // Writes as a viewer: 403 whatever the path or body says.
    for (m, p) in [
        (Method::DELETE, "/api/v1/mappings/missing"),
        (Method::PUT, "/api/v1/mappings/missing"),
        (Method::PATCH, "/api/v1/mappings/missing"),
        (Method::POST, "/api/v1/keys/retire"),
        (Method::DELETE, "/api/v1/revocations/rv-missing"),
    ] {
        let (st, _, b) = s.send(s.req(m.clone(), p, Some(VIEWER)).json(&bad)).await;
        assert_eq!(st, 403, "{m} {p} as viewer: {b}");
    }
    assert_eq!(s.get("/api/v1/audit").await.2["items"], json!([]));
}

/// The audit records the caller and never its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_audited_with_its_caller_and_never_with_its_token() {
    let s = Service::start(Db::sqlite()).await;
    let (st, _, b) = s
        .post(
            "/api/v1/mappings",
            &mapping("audited", "spiffe://cluster.local/ns/inv/*", "inventory"),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (st, _, b) = s
        .send(
            s.req(Method::POST, "/api/v1/revocations", Some(ADMIN)).json(
                &json!({"target": "subject", "match": "spiffe://cluster.local/ns/x/sa/y", "reason": "test"}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["created_by"], ADMIN);
    let (_, _, page) = s.get("/api/v1/audit").await;
    let items = page["items"].as_array().unwrap();
    assert!(items.len() >= 2, "{page}");
    for e in items {
        assert_eq!(e["actor"], ADMIN, "{e}");
    }
    let text = page.to_string();
    assert!(!text.contains("eyJ"), "a JWT in the audit: {text}");
}

/// README "Management API": `[management.tls]` serves the API over TLS on its own
/// listener and binds a management token to the verified client certificate (outside a
/// mesh, where no sidecar forwards XFCC); before it, a remote operator had only plain
/// HTTP, the bearer token readable on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_over_tls_binds_the_token_to_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let extra = format!(
        "\n[management.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        file("mgmt.crt", &cert),
        file("mgmt.key", &key),
        file("ca.pem", &pki.ca.pem()),
    );
    // No trusted proxy: a loopback connection without a certificate is a local operator.
    let (port, issuer) = start_edited(dir.path(), &extra, |t| {
        t.replace(
            "xfcc_trusted_proxies = [\"127.0.0.1\"]",
            "xfcc_trusted_proxies = []",
        )
    })
    .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = |ident: Option<(String, String)>| {
        reqwest::Client::builder()
            .use_preconfigured_tls((*tls_client_config(&pki.ca.pem(), ident)).clone())
            .resolve("localhost", addr)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let uri = |id: &str| rcgen::SanType::URI(id.try_into().unwrap());
    let url = format!("https://localhost:{port}/api/v1/mappings");
    let token = admin_token(&issuer);

    let admin = client(Some(pki.issue(uri(ADMIN))));
    let (st, body) = status_and_body(admin.get(&url).bearer_auth(&token)).await;
    assert_eq!(st, 200, "the admin's own certificate and token: {body}");

    let other = client(Some(pki.issue(uri(VIEWER))));
    let (st, body) = status_and_body(other.get(&url).bearer_auth(&token)).await;
    assert_eq!(
        st, 401,
        "the admin's token over another workload's certificate was accepted: {body}"
    );

    let local = client(None);
    let (st, body) = status_and_body(local.get(&url).bearer_auth(&token)).await;
    assert_eq!(st, 200, "a local operator without a certificate: {body}");

    // Plain HTTP on the TLS listener gets no answer from the API.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/mappings"))
        .bearer_auth(&token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP was answered on the TLS management listener: {:?}",
        plain.map(|r| r.status())
    );
}

/// A bad `[management.tls]` refuses the start naming its field (as `[server.tls]` does).
#[test]
fn a_bad_management_tls_section_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let missing = dir.path().join("missing.pem").display().to_string();
    let section = |more: &str| {
        format!(
            "\n[management.tls]\ncert_file = {missing:?}\nkey_file = {missing:?}\nclient_ca_file = {missing:?}\n{more}"
        )
    };
    for (more, field) in [
        ("", "management.tls.cert_file"),
        (
            "max_connection_age_secs = 0",
            "management.tls.max_connection_age_secs",
        ),
        ("listen = \"127.0.0.1:0\"", "management.tls.listen"),
    ] {
        let toml = config_toml(
            &issuer,
            &dir.path().join("m.db"),
            &management_toml(&section(more)),
        );
        let path = dir.path().join("meshpass.toml");
        std::fs::write(&path, toml).unwrap();
        let err = Config::load(Some(&path))
            .err()
            .unwrap_or_else(|| panic!("accepted: {more:?}"));
        assert!(
            err.to_string().contains(field),
            "{more:?}: the error does not name {field}: {err}"
        );
    }
}

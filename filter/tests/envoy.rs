//! The built `.wasm` in real Envoy 1.40 (V8): mTLS SERVER-mode binding, the exchange,
//! the shared-data cache across two workers, every failure status, JWKS fetch, kid
//! rotation and a JWKS outage, and a refused configuration.
//!
//! One Envoy process holds everything: two plaintext "client" listeners that forward over
//! mTLS (one presenting Alice's SVID, one Bob's) to the listener running the filter,
//! whose upstream is an in-test echo server. The exchange service and the JWKS endpoint
//! are scripted in-test HTTP/1.1 servers.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{get, Request, Response, Server};
use common::*;
use meshpass_testkit::envoy::Envoy;
use serde_json::json;

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/shop/sa/bob";

fn wasm_path() -> PathBuf {
    let p = match std::env::var_os("MESHPASS_FILTER_WASM") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => meshpass_testkit::workspace_root()
            .join("target/wasm32-wasip1/wasm-release/meshpass_filter.wasm"),
    };
    assert!(
        p.exists(),
        "filter wasm not found at {} (build it: cargo build -p meshpass-filter --target wasm32-wasip1 --profile wasm-release, or set MESHPASS_FILTER_WASM)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CA + server cert + Alice's and Bob's SVIDs, as PEM files in `dir`.
fn write_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "meshpass test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, uri) in [
        ("server", "spiffe://cluster.local/ns/shop/sa/orders"),
        ("alice", ALICE),
        ("bob", BOB),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn cluster(name: &str, port: u16, tls: Option<(&Path, &str)>) -> String {
    let tls = match tls {
        Some((dir, who)) => format!(
            r#"
    max_requests_per_connection: 1
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{filename: "{d}/{who}.pem"}}
            private_key: {{filename: "{d}/{who}.key"}}
          validation_context: {{trusted_ca: {{filename: "{d}/ca.pem"}}}}"#,
            d = dir.display()
        ),
        None => String::new(),
    };
    format!(
        r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]{tls}"#
    )
}

fn proxy_listener(name: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: "{cluster}", timeout: 10s}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn filter_yaml(wasm: &Path, config: &serde_json::Value) -> String {
    let conf = serde_json::to_string(&config.to_string()).unwrap();
    format!(
        r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshpass
                root_id: meshpass
                vm_config:
                  vm_id: meshpass
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {conf}"#,
        wasm.display()
    )
}

fn mtls_filter_listener(port: u16, pki: &Path, filter: &str) -> String {
    let d = pki.display();
    format!(
        r#"
  - name: mesh
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: "{d}/server.pem"}}
              private_key: {{filename: "{d}/server.key"}}
            validation_context: {{trusted_ca: {{filename: "{d}/ca.pem"}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mesh
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: app, timeout: 10s}}}}]
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

#[derive(Default)]
struct Script {
    exchanges: Vec<BTreeMap<String, Vec<String>>>,
    jwks: String,
    jwks_down: bool,
    jwks_fetches: u32,
}

fn form(body: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in String::from_utf8_lossy(body).split('&') {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() + 1 {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        m.entry(dec(k)).or_default().push(dec(v));
    }
    m
}

/// The exchange service double: speaks RFC 8693; the requested `resource` scripts the
/// answer.
fn exchange_server(script: Arc<Mutex<Script>>) -> Server {
    Server::start(move |req: Request| {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/token"));
        let f = form(&req.body);
        let n = {
            let mut s = script.lock().unwrap();
            s.exchanges.push(f.clone());
            s.exchanges.len()
        };
        let resource = f
            .get("resource")
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default();
        let err = |status: u16, code: &str| {
            Some(Response::json(
                status,
                &json!({"error": code, "error_description": format!("{code} (test)")}),
            ))
        };
        match resource.as_str() {
            "forbidden" => {
                // Slow enough that concurrent requests wait on one exchange.
                std::thread::sleep(Duration::from_millis(300));
                err(400, "unauthorized_client")
            }
            "ratelimited" => err(429, "slow_down").map(|r| r.with_header("retry-after", "7")),
            "slow-forbidden" => {
                std::thread::sleep(Duration::from_millis(800));
                err(400, "unauthorized_client")
            }
            "slow-ratelimited" => {
                std::thread::sleep(Duration::from_millis(800));
                err(429, "slow_down").map(|r| r.with_header("retry-after", "7"))
            }
            "unavailable" => {
                err(503, "temporarily_unavailable").map(|r| r.with_header("retry-after", "11"))
            }
            "reset" => None,
            "invalid-request" => err(400, "invalid_request"),
            "garbage" => Some(Response {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"<html>login</html>".to_vec(),
            }),
            "slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                err(503, "temporarily_unavailable")
            }
            "big" => Some(Response::json(
                200,
                &json!({
                    "access_token": format!("pt-{n}-{}", "x".repeat(2000)),
                    "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "token_type": "Bearer",
                    "expires_in": 300,
                }),
            )),
            other => {
                if other == "delay" {
                    std::thread::sleep(Duration::from_millis(400));
                }
                if other == "slow-ok" {
                    std::thread::sleep(Duration::from_millis(800));
                }
                Some(
                    Response::json(
                        200,
                        &json!({
                            "access_token": format!("pt-{n}"),
                            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                            "token_type": "Bearer",
                            "expires_in": 300,
                            "scope": "read",
                        }),
                    )
                    .with_header("cache-control", "no-store"),
                )
            }
        }
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn filter_in_real_envoy_binds_exchanges_caches_and_fails_closed() {
    let wasm = wasm_path();
    let pki = tempfile::tempdir().unwrap();
    write_pki(pki.path());
    let k1 = Key::new("k1");
    let script = Arc::new(Mutex::new(Script {
        jwks: jwks(&[&k1]),
        ..Default::default()
    }));
    let exchange = exchange_server(script.clone());
    let s2 = script.clone();
    let jwks_server = Server::start(move |req| {
        let mut s = s2.lock().unwrap();
        s.jwks_fetches += 1;
        assert_eq!(req.path, "/keys");
        if s.jwks_down {
            return Some(Response::json(500, &json!({})));
        }
        Some(Response::json(200, &serde_json::from_str(&s.jwks).unwrap()))
    });
    let app = Server::start(|req: Request| {
        Some(Response::json(
            200,
            &json!({"path": req.path, "headers": req.headers}),
        ))
    });

    let config = json!({
        "mode": "SERVER",
        "issuers": [{
            "issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"],
            "spiffe_id_patterns": ["spiffe://cluster.local/ns/shop/*"],
            "jwks_cluster": "jwks", "jwks_path": "/keys", "jwks_refresh_secs": 1,
            "jwks_min_refetch_secs": 1,
        }],
        "exchange": {"cluster": "exchange", "authority": "exchange.test", "timeout_ms": 1000},
        "revocation": {"enabled": false},
        "bypass": [{"path": "/healthz"}],
        "set_subject_header": true,
        "tick_ms": 100,
        "rules": [
            {"path_prefix": "/forbidden", "resource": "forbidden"},
            {"path_prefix": "/ratelimited", "resource": "ratelimited"},
            {"path_prefix": "/unavailable", "resource": "unavailable"},
            {"path_prefix": "/reset", "resource": "reset"},
            {"path_prefix": "/slow", "resource": "slow"},
            {"path_prefix": "/delay", "resource": "delay"},
            {"path_prefix": "/open", "resource": "unavailable", "failure_mode": "allow"},
        ],
        "default_rule": {"resource": "orders", "scopes": ["read"]},
    });
    let (alice_port, bob_port, mesh_port) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "static_resources:\n  listeners:{}{}{}\n  clusters:{}{}{}{}{}{}\n",
        proxy_listener("as_alice", alice_port, "to_mesh_as_alice"),
        proxy_listener("as_bob", bob_port, "to_mesh_as_bob"),
        mtls_filter_listener(mesh_port, pki.path(), &filter_yaml(&wasm, &config)),
        cluster("to_mesh_as_alice", mesh_port, Some((pki.path(), "alice"))),
        cluster("to_mesh_as_bob", mesh_port, Some((pki.path(), "bob"))),
        cluster("app", app.port, None),
        cluster("exchange", exchange.port, None),
        cluster("jwks", jwks_server.port, None),
        "",
    );
    let envoy = Envoy::start(&yaml, 2);
    let stat = |n: &str| envoy.stat(&format!("wasmcustom.meshpass_{n}"));
    wait_for("first JWKS fetch", Duration::from_secs(10), || {
        stat("jwks_refresh_success") >= 1
    });
    assert_eq!(stat("jwks_refresh_failure"), 0);

    let now = now_secs();
    let alice = k1.svid(ISS, AUD, ALICE, now, 600);
    let bearer = |t: &str| format!("Bearer {t}");

    // 401 without a token; 401 invalid_token with a JSON body for a forged one.
    let r = get(alice_port, "/orders", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    let forged = Key::new("k1").svid(ISS, AUD, ALICE, now, 600);
    let r = get(
        alice_port,
        "/orders",
        &[("authorization", &bearer(&forged))],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.headers["www-authenticate"].contains("error=\"invalid_token\""),
        "{r:?}"
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(!r.body.contains(forged.rsplit('.').next().unwrap()));

    // Bypass route: no token needed, client-sent x-meshpass-subject dropped.
    let r = get(
        alice_port,
        "/healthz",
        &[("x-meshpass-subject", "spiffe://evil/x")],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-meshpass-subject").is_none(),
        "{r:?}"
    );

    // Allowed: the app sees the participant token and the subject, never the subject token.
    let r = get(
        alice_port,
        "/orders/1",
        &[
            ("authorization", &bearer(&alice)),
            ("x-meshpass-subject", "spiffe://evil/x"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &r.json()["headers"];
    assert_eq!(seen["authorization"], "Bearer pt-1");
    assert_eq!(seen["x-meshpass-subject"], ALICE);
    assert!(!r.body.contains(&alice));
    {
        let s = script.lock().unwrap();
        let f = &s.exchanges[0];
        assert_eq!(
            f["grant_type"],
            vec!["urn:ietf:params:oauth:grant-type:token-exchange"]
        );
        assert_eq!(f["subject_token"], vec![alice.clone()]);
        assert_eq!(f["resource"], vec!["orders"]);
        assert_eq!(f["scope"], vec!["read"]);
    }

    // Cache: 30 more requests, each on a new mTLS connection spread over both workers,
    // cost no further exchange.
    for _ in 0..30 {
        let r = get(
            alice_port,
            "/orders/2",
            &[("authorization", &bearer(&alice))],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["authorization"], "Bearer pt-1");
    }
    assert_eq!(script.lock().unwrap().exchanges.len(), 1);
    let mesh = format!("listener.127.0.0.1_{mesh_port}");
    let w0 = envoy.stat(&format!("{mesh}.worker_0.downstream_cx_total"));
    let w1 = envoy.stat(&format!("{mesh}.worker_1.downstream_cx_total"));
    assert!(
        w0 > 0 && w1 > 0,
        "both workers served requests: {w0} / {w1}"
    );
    wait_for("hit counter", Duration::from_secs(5), || {
        stat("cache_hits") >= 30
    });

    // The same (cached) token replayed over Bob's connection is refused.
    let r = get(bob_port, "/orders/1", &[("authorization", &bearer(&alice))]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("peer"));
    let bob = k1.svid(ISS, AUD, BOB, now, 600);
    let r = get(alice_port, "/orders/1", &[("authorization", &bearer(&bob))]);
    assert_eq!(r.status, 401);

    // Exchange failures.
    let t = bearer(&alice);
    let r = get(alice_port, "/forbidden", &[("authorization", &t)]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("unauthorized_client"));
    let r = get(alice_port, "/ratelimited", &[("authorization", &t)]);
    assert_eq!(
        (r.status, r.headers.get("retry-after").map(String::as_str)),
        (429, Some("7"))
    );
    let r = get(alice_port, "/unavailable", &[("authorization", &t)]);
    assert_eq!(
        (r.status, r.headers.get("retry-after").map(String::as_str)),
        (503, Some("11"))
    );
    let r = get(alice_port, "/reset", &[("authorization", &t)]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.contains_key("retry-after"));
    let r = get(alice_port, "/slow", &[("authorization", &t)]);
    assert_eq!(r.status, 503, "timeout: {r:?}");
    // failure_mode allow: forwarded, without any token.
    let r = get(alice_port, "/open", &[("authorization", &t)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["headers"].get("authorization").is_none());

    // Key rotation: the first request with a new kid waits for the refetch and passes.
    let k2 = Key::new("k2");
    script.lock().unwrap().jwks = jwks(&[&k1, &k2]);
    let rotated = k2.svid(ISS, AUD, ALICE, now, 600);
    let r = get(
        alice_port,
        "/orders/3",
        &[("authorization", &bearer(&rotated))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // A kid the JWKS does not have is refused (after the park time), not hung.
    let stranger = Key::new("k9").svid(ISS, AUD, ALICE, now, 600);
    let r = get(
        alice_port,
        "/orders/3",
        &[("authorization", &bearer(&stranger))],
    );
    assert_eq!(r.status, 401, "{r:?}");

    // JWKS endpoint down: refreshes fail, last good keys keep working.
    script.lock().unwrap().jwks_down = true;
    let failures = stat("jwks_refresh_failure");
    wait_for("JWKS failure", Duration::from_secs(10), || {
        stat("jwks_refresh_failure") > failures
    });
    let late = k2.svid(ISS, AUD, ALICE, now + 2, 600);
    let r = get(
        alice_port,
        "/orders/4",
        &[("authorization", &bearer(&late))],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // Metrics are exported with the meshpass_ prefix.
    let prom = envoy.prometheus();
    for m in [
        "meshpass_requests_allowed",
        "meshpass_denied_invalid_token",
        "meshpass_cache_hits",
        "meshpass_exchange_latency_ms",
    ] {
        assert!(prom.contains(m), "{m} missing from /stats/prometheus");
    }
    assert!(stat("denied_exchange_forbidden") >= 1);
    assert!(stat("denied_rate_limited") >= 1);
    assert!(stat("failure_mode_allowed") >= 1);
}

#[test]
fn envoy_refuses_an_invalid_filter_config_and_logs_the_field() {
    let wasm = wasm_path();
    let config = json!({
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"],
                     "jwks_cluster": "jwks", "jwks_path": "/keys"}],
        "exchange": {"cluster": "exchange", "timeout_ms": 0},
        "default_rule": {"resource": "r"},
    });
    let port = free_port();
    let filter = filter_yaml(&wasm, &config);
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200}}}}]
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    );
    let err = Envoy::try_start(&yaml, 1, &[], Duration::from_secs(20))
        .err()
        .expect("Envoy must refuse the filter configuration");
    assert!(
        err.contains("meshpass: invalid configuration: exchange.timeout_ms"),
        "{err}"
    );
}

#[test]
fn client_mode_discovers_its_identity_from_istio_node_metadata() {
    let wasm = wasm_path();
    let k1 = Key::new("k1");
    let script = Arc::new(Mutex::new(Script::default()));
    let exchange = exchange_server(script.clone());
    let app =
        Server::start(|req: Request| Some(Response::json(200, &json!({"headers": req.headers}))));
    let config = json!({
        "mode": "CLIENT",
        "own_identity": {"trust_domain": "cluster.local"},
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"],
                     "jwks": jwks(&[&k1])}],
        "exchange": {"cluster": "exchange"},
        "revocation": {"enabled": false},
        "default_rule": {"resource": "orders"},
    });
    let port = free_port();
    let yaml = format!(
        r#"
node: {{id: sidecar, cluster: test, metadata: {{NAMESPACE: shop, SERVICE_ACCOUNT: alice}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]
          http_filters:{}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{}{}
"#,
        filter_yaml(&wasm, &config),
        cluster("app", app.port, None),
        cluster("exchange", exchange.port, None),
    );
    let envoy = Envoy::start(&yaml, 1);
    let now = now_secs();
    let own = k1.svid(ISS, AUD, ALICE, now, 600);
    let r = get(port, "/", &[("authorization", &format!("Bearer {own}"))]);
    assert_eq!(r.status, 200, "{r:?}\n{}", envoy.log_tail(20));
    assert_eq!(r.json()["headers"]["authorization"], "Bearer pt-1");
    // A token of another workload is not this proxy's to use.
    let other = k1.svid(ISS, AUD, BOB, now, 600);
    let r = get(port, "/", &[("authorization", &format!("Bearer {other}"))]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("own"));
}

/// Sends `n` requests at once (a barrier releases them together), each on its own mTLS
/// connection (the client listener's cluster allows one request per connection), and
/// returns their statuses and `retry-after` values.
fn burst(port: u16, path: &str, token: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (b, t, p) = (barrier.clone(), format!("Bearer {token}"), path.to_string());
            std::thread::spawn(move || {
                b.wait();
                let r = get(port, &p, &[("authorization", &t)]);
                (r.status, r.headers.get("retry-after").cloned())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn concurrent_first_requests_across_both_workers_cost_exactly_one_exchange() {
    let wasm = wasm_path();
    let pki = tempfile::tempdir().unwrap();
    write_pki(pki.path());
    let k1 = Key::new("k1");
    let script = Arc::new(Mutex::new(Script::default()));
    let exchange = exchange_server(script.clone());
    let app = Server::start(|req: Request| {
        Some(Response::json(
            200,
            &json!({"path": req.path, "headers": req.headers}),
        ))
    });
    let config = json!({
        "mode": "SERVER",
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"],
                     "jwks": jwks(&[&k1])}],
        "exchange": {"cluster": "exchange", "timeout_ms": 3000},
        "revocation": {"enabled": false},
        "tick_ms": 100,
        "rules": [
            {"path_prefix": "/slow-forbidden", "resource": "slow-forbidden"},
            {"path_prefix": "/slow-ratelimited", "resource": "slow-ratelimited"},
        ],
        "default_rule": {"resource": "slow-ok"},
    });
    let (alice_port, mesh_port) = (free_port(), free_port());
    let yaml = format!(
        "static_resources:\n  listeners:{}{}\n  clusters:{}{}{}\n",
        proxy_listener("as_alice", alice_port, "to_mesh_as_alice"),
        mtls_filter_listener(mesh_port, pki.path(), &filter_yaml(&wasm, &config)),
        cluster("to_mesh_as_alice", mesh_port, Some((pki.path(), "alice"))),
        cluster("app", app.port, None),
        cluster("exchange", exchange.port, None),
    );
    let envoy = Envoy::start(&yaml, 2);
    let stat = |n: &str| envoy.stat(&format!("wasmcustom.meshpass_{n}"));
    let mesh = format!("listener.127.0.0.1_{mesh_port}");
    let per_worker = || {
        (
            envoy.stat(&format!("{mesh}.worker_0.downstream_cx_total")),
            envoy.stat(&format!("{mesh}.worker_1.downstream_cx_total")),
        )
    };
    let exchanges = || script.lock().unwrap().exchanges.len();
    let now = now_secs();
    const N: usize = 16;

    // One new token, N first requests at once: one exchange (800 ms), every request
    // gets the participant token, on both workers.
    let token = k1.svid(ISS, AUD, ALICE, now, 600);
    let (w0, w1) = per_worker();
    let got = burst(alice_port, "/orders", &token, N);
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    let (v0, v1) = per_worker();
    assert!(
        v0 > w0 && v1 > w1,
        "the burst reached both workers: {} / {}",
        v0 - w0,
        v1 - w1
    );
    assert_eq!(
        exchanges(),
        1,
        "exchanges for {N} concurrent first requests"
    );
    wait_for("cross-worker wait counter", Duration::from_secs(5), || {
        stat("exchange_coalesced_other_worker") >= 1
    });

    // Refusals reach the waiters of both workers too, with one exchange each burst.
    for (path, status, retry_after) in [
        ("/slow-forbidden", 403, None),
        ("/slow-ratelimited", 429, Some("7".to_string())),
    ] {
        // A new token per burst (iat differs, in the past).
        let token = k1.svid(ISS, AUD, ALICE, now - u64::from(status), 900);
        let before = exchanges();
        let (w0, w1) = per_worker();
        let got = burst(alice_port, path, &token, N);
        let (v0, v1) = per_worker();
        assert!(v0 > w0 && v1 > w1, "{path}: both workers served the burst");
        assert!(
            got.iter().all(|g| *g == (status, retry_after.clone())),
            "{path}: {got:?}"
        );
        assert_eq!(
            exchanges() - before,
            1,
            "{path}: exchanges for {N} requests"
        );
    }
}

/// A plain-HTTP listener with the filter in CLIENT mode (fixed own identity: Alice), an
/// app that echoes the headers it got, and the exchange double.
struct ClientSidecar {
    envoy: Envoy,
    port: u16,
    script: Arc<Mutex<Script>>,
    key: Key,
    _app: Server,
    _exchange: Server,
    _jwks: Server,
}

fn client_sidecar(concurrency: u32, edit: impl FnOnce(&mut serde_json::Value)) -> ClientSidecar {
    let wasm = wasm_path();
    let key = Key::new("k1");
    let script = Arc::new(Mutex::new(Script::default()));
    let exchange = exchange_server(script.clone());
    let app = Server::start(|req: Request| {
        Some(Response::json(
            200,
            &json!({"path": req.path, "headers": req.headers}),
        ))
    });
    // Cluster `jwks` serves the key set, slowly (1 s), for configs that fetch it.
    let doc: serde_json::Value = serde_json::from_str(&jwks(&[&key])).unwrap();
    let jwks_server = Server::start(move |_req| {
        std::thread::sleep(Duration::from_millis(1000));
        Some(Response::json(200, &doc))
    });
    let mut config = json!({
        "mode": "CLIENT",
        "own_identity": {"spiffe_id": ALICE},
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"],
                     "jwks": jwks(&[&key])}],
        "exchange": {"cluster": "exchange", "timeout_ms": 3000},
        "revocation": {"enabled": false},
        "tick_ms": 100,
        "bypass": [{"path": "/healthz"}],
        "default_rule": {"resource": "orders"},
    });
    edit(&mut config);
    let port = free_port();
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          # Bounds a request left paused by a trapped VM (see the trap test).
          stream_idle_timeout: 4s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: app, timeout: 10s}}}}]
          http_filters:{}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{}{}{}
"#,
        filter_yaml(&wasm, &config),
        cluster("app", app.port, None),
        cluster("exchange", exchange.port, None),
        cluster("jwks", jwks_server.port, None),
    );
    ClientSidecar {
        envoy: Envoy::start(&yaml, concurrency),
        port,
        script,
        key,
        _app: app,
        _exchange: exchange,
        _jwks: jwks_server,
    }
}

impl ClientSidecar {
    fn token(&self) -> String {
        self.key.svid(ISS, AUD, ALICE, now_secs(), 600)
    }
    fn exchanges(&self) -> usize {
        self.script.lock().unwrap().exchanges.len()
    }
}

#[test]
fn no_client_sent_meshpass_header_or_bypass_credential_reaches_the_app_through_envoy() {
    let s = client_sidecar(1, |_| {});
    let r = get(
        s.port,
        "/healthz",
        &[
            ("authorization", "Basic dXNlcjpwdw=="),
            ("x-meshpass-role", "admin"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &r.json()["headers"];
    assert!(seen.get("authorization").is_none(), "{r:?}");
    assert!(seen.get("x-meshpass-role").is_none(), "{r:?}");

    let t = format!("Bearer {}", s.token());
    let r = get(
        s.port,
        "/orders",
        &[("authorization", &t), ("x-meshpass-role", "admin")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &r.json()["headers"];
    assert_eq!(seen["authorization"], "Bearer pt-1");
    assert!(seen.get("x-meshpass-role").is_none(), "{r:?}");
}

#[test]
fn failure_mode_allow_fails_open_in_envoy_only_when_the_service_is_out() {
    let s = client_sidecar(1, |c| {
        c["rules"] = json!([
            {"path_prefix": "/bad", "resource": "invalid-request", "failure_mode": "allow"},
            {"path_prefix": "/garbage", "resource": "garbage", "failure_mode": "allow"},
            {"path_prefix": "/out", "resource": "unavailable", "failure_mode": "allow"},
        ]);
    });
    let t = format!("Bearer {}", s.token());
    for path in ["/bad", "/garbage"] {
        let r = get(s.port, path, &[("authorization", &t)]);
        assert_eq!(r.status, 503, "{path}: {r:?}");
    }
    let r = get(s.port, "/out", &[("authorization", &t)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["headers"].get("authorization").is_none());
    assert_eq!(s.exchanges(), 3);
    let stat = s.envoy.wait_stat(
        "wasmcustom.meshpass_failure_mode_allowed",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(stat, 1);
}

#[test]
fn a_client_reset_mid_exchange_leaves_the_answer_to_the_other_waiters() {
    use std::io::Write;
    let s = client_sidecar(1, |c| {
        c["rules"] = json!([{"path_prefix": "/slow-ok", "resource": "slow-ok"}]);
    });
    let token = s.token();
    // The first client starts the exchange (800 ms) and goes away after 300 ms.
    let mut first = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        first,
        "GET /slow-ok HTTP/1.1\r\nhost: app\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let others: Vec<_> = (0..3)
        .map(|_| {
            let (port, t) = (s.port, format!("Bearer {token}"));
            std::thread::spawn(move || get(port, "/slow-ok", &[("authorization", &t)]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(250));
    drop(first);
    for h in others {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", s.envoy.log_tail(20));
        assert_eq!(r.json()["headers"]["authorization"], "Bearer pt-1");
    }
    assert_eq!(s.exchanges(), 1);
    // The answer was cached: a later request costs no exchange.
    let r = get(
        s.port,
        "/slow-ok",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.exchanges(), 1);
}

#[test]
fn paths_that_normalisation_would_change_are_refused_by_the_filter_in_envoy() {
    let s = client_sidecar(1, |c| c["bypass"] = json!([{"path_prefix": "/healthz"}]));
    for p in ["/healthz/../admin", "//healthz/x", "/healthz%2F..%2Fadmin"] {
        let r = get(s.port, p, &[]);
        assert_eq!(r.status, 400, "{p}: {r:?}");
        assert_eq!(r.json()["error"], "invalid_request");
    }
    let r = get(s.port, "/healthz/live", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.exchanges(), 0);
}

#[test]
fn token_churn_leaves_envoy_memory_flat_with_bounded_cache_slots() {
    const SLOTS: usize = 64;
    let s = client_sidecar(1, |c| {
        c["default_rule"] = json!({"resource": "big"});
        c["cache"] = json!({"slots": SLOTS});
    });
    let send = |i: u64| {
        let t = s.key.svid(ISS, AUD, ALICE, now_secs() - (i % 500), 600 + i);
        let r = get(
            s.port,
            "/orders",
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(r.status, 200, "{r:?}");
    };
    // Warm up: every slot taken, every code path run once.
    for i in 0..(4 * SLOTS as u64) {
        send(i);
    }
    let mem = || s.envoy.stat("server.memory_allocated");
    let before = mem();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(20) {
        send(1_000_000 + n);
        n += 1;
    }
    let after = mem();
    assert_eq!(
        s.exchanges() as u64,
        4 * SLOTS as u64 + n,
        "every token was new"
    );
    // Unbounded, each token would leave its ~2 KiB entry (and its marker) behind.
    let per_token = after.saturating_sub(before) / n.max(1);
    eprintln!("{n} distinct tokens in 20 s; memory {before} -> {after} ({per_token} B/token)");
    assert!(n >= 200, "too few tokens to tell: {n}");
    assert!(
        per_token < 256,
        "{per_token} bytes per token: {before} -> {after}"
    );
}

#[test]
fn requests_arriving_before_the_first_jwks_wait_for_it_instead_of_503() {
    let s = client_sidecar(1, |c| {
        let i = c["issuers"][0].as_object_mut().unwrap();
        i.remove("jwks");
        i.insert("jwks_cluster".into(), json!("jwks"));
        i.insert("jwks_path".into(), json!("/keys"));
    });
    // Sent at once: the key set is still on its way (the JWKS server takes 1 s).
    let t = format!("Bearer {}", s.token());
    let r = get(s.port, "/orders", &[("authorization", &t)]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.envoy.log_tail(20));
    assert_eq!(r.json()["headers"]["authorization"], "Bearer pt-1");
}

/// What Envoy 1.40 (V8) does when the VM traps (documented in the README): the
/// trapping request gets 503, a request paused at that moment is never resumed and
/// ends only at the stream idle timeout (503), later requests get 503 (fail closed).
#[test]
fn a_vm_trap_fails_closed_and_a_paused_request_ends_at_the_stream_idle_timeout() {
    let s = client_sidecar(1, |c| {
        c["danger_trap_on_path"] = json!("/__trap");
        c["rules"] = json!([{"path_prefix": "/slow-ok", "resource": "slow-ok"}]);
    });
    assert!(
        s.envoy.log().contains("danger_trap_on_path"),
        "warned at start"
    );
    let t = format!("Bearer {}", s.token());
    // A request paused on its (800 ms) exchange when the VM traps.
    let paused = {
        let (port, t) = (s.port, t.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = get(port, "/slow-ok", &[("authorization", &t)]);
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let trap = get(s.port, "/__trap", &[("authorization", &t)]);
    let (r, waited) = paused.join().unwrap();
    let after = get(s.port, "/orders", &[("authorization", &t)]);
    eprintln!(
        "trap: {} | paused: {} after {waited:?} | next: {} | {}",
        trap.status,
        r.status,
        after.status,
        s.envoy.log_tail(8)
    );
    assert!(trap.status >= 500, "{trap:?}");
    assert_ne!(
        r.status, 200,
        "a trapped VM forwarded a paused request: {r:?}"
    );
    assert!(
        waited < Duration::from_secs(9),
        "paused request hung for {waited:?}"
    );
    assert_ne!(
        after.status, 200,
        "a trapped VM let a request through: {after:?}"
    );
}

//! The in-test pieces: the built module's path, the PKI, Envoy's listeners and clusters as YAML, the scripted exchange service.

use super::*;

pub(crate) fn wasm_path() -> PathBuf {
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

/// CA + server cert + Alice's and Bob's SVIDs, as PEM files in `dir`.
pub(crate) fn write_pki(dir: &Path) {
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

pub(crate) fn cluster(name: &str, port: u16, tls: Option<(&Path, &str)>) -> String {
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

pub(crate) fn proxy_listener(name: &str, port: u16, cluster: &str) -> String {
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

pub(crate) fn filter_yaml(wasm: &Path, config: &serde_json::Value) -> String {
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

pub(crate) fn mtls_filter_listener(port: u16, pki: &Path, filter: &str) -> String {
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
pub(crate) struct Script {
    pub(crate) exchanges: Vec<BTreeMap<String, Vec<String>>>,
    pub(crate) jwks: String,
    pub(crate) jwks_down: bool,
    pub(crate) jwks_fetches: u32,
    /// Answers the `slow` resource has sent (each after its 3 s delay).
    pub(crate) slow_answers: u32,
}

pub(crate) fn form(body: &[u8]) -> BTreeMap<String, Vec<String>> {
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
pub(crate) fn exchange_server(script: Arc<Mutex<Script>>) -> Server {
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
            "slow-unavailable" => {
                std::thread::sleep(Duration::from_millis(800));
                err(503, "temporarily_unavailable").map(|r| r.with_header("retry-after", "11"))
            }
            "granted-once" => {
                // Granted with a short life the first time, refused ever after (the
                // mapping was deleted in between).
                let first = script
                    .lock()
                    .unwrap()
                    .exchanges
                    .iter()
                    .filter(|e| e.get("resource").and_then(|r| r.first()) == Some(&resource))
                    .count()
                    == 1;
                if first {
                    Some(Response::json(
                        200,
                        &json!({
                            "access_token": format!("pt-{n}"),
                            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                            "token_type": "Bearer",
                            "expires_in": 60,
                        }),
                    ))
                } else {
                    err(400, "unauthorized_client")
                }
            }
            "reset" => None,
            "invalid-request" => err(400, "invalid_request"),
            "garbage" => Some(Response {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"<html>login</html>".to_vec(),
            }),
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
                if other == "slow" {
                    // A good answer, long after any test's exchange timeout: only a
                    // working timeout keeps it from the request and the cache.
                    std::thread::sleep(Duration::from_millis(3000));
                    script.lock().unwrap().slow_answers += 1;
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

pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! SERVER mode end to end in one Envoy (binding, exchange, cache across workers, every failure status, JWKS), a refused config, CLIENT mode's identity from Istio node metadata.

use super::*;

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
    // Every path the app was asked for.
    let app_saw = Arc::new(Mutex::new(Vec::<String>::new()));
    let saw = app_saw.clone();
    let app = Server::start(move |req: Request| {
        saw.lock().unwrap().push(req.path.clone());
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
    let www = r.headers.get("www-authenticate").map(String::as_str);
    assert!(
        www.is_some_and(|w| w.starts_with("Bearer error=\"insufficient_scope\"")
            && w.contains("unauthorized_client")),
        "403 without an RFC 6750 insufficient_scope challenge: {www:?}"
    );
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
    // Exchange timeout (1 s): the service answers 200 with a token, but after 3 s. The
    // request is refused as an outage, the app never sees it, and the late token is not
    // cached: the next request exchanges again.
    let slow_exchanges = || {
        let s = script.lock().unwrap();
        let slow = |f: &&BTreeMap<String, Vec<String>>| f["resource"] == ["slow"];
        s.exchanges.iter().filter(slow).count()
    };
    let r = get(alice_port, "/slow", &[("authorization", &t)]);
    assert_eq!(r.status, 503, "timeout: {r:?}");
    assert_eq!(r.json()["error"], "temporarily_unavailable", "{r:?}");
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("5"));
    assert_eq!(slow_exchanges(), 1);
    wait_for("the late answer", Duration::from_secs(10), || {
        script.lock().unwrap().slow_answers >= 1
    });
    // Time for Envoy to deliver the late answer, were the call still open.
    std::thread::sleep(Duration::from_millis(500));
    let r = get(alice_port, "/slow", &[("authorization", &t)]);
    assert_eq!(r.status, 503, "the late token was served: {r:?}");
    assert_eq!(slow_exchanges(), 2, "the late token was cached");
    let app_saw_slow: Vec<String> = app_saw
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with("/slow"))
        .cloned()
        .collect();
    assert!(app_saw_slow.is_empty(), "forwarded: {app_saw_slow:?}");
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
    // Beyond the lease's 10 s push: a fetch taken just before the switch whose answer
    // is slow on a loaded machine holds the schedule that long (CI at 536b583 timed out
    // at 10 s once, under a full suite on 2 cores).
    wait_for("JWKS failure", Duration::from_secs(30), || {
        stat("jwks_refresh_failure") > failures
    });
    let late = k2.svid(ISS, AUD, ALICE, now + 2, 600);
    let r = get(
        alice_port,
        "/orders/4",
        &[("authorization", &bearer(&late))],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // The issuer takes k1 out of its JWKS (the answer to a leaked key): ALICE's token,
    // which k1 verified and both workers have cached, is refused from the next refresh.
    let orders = |t: &str| get(alice_port, "/orders", &[("authorization", &bearer(t))]);
    for _ in 0..4 {
        assert_eq!(orders(&alice).status, 200);
    }
    {
        let mut s = script.lock().unwrap();
        s.jwks_down = false;
        s.jwks = jwks(&[&k2]);
    }
    let successes = stat("jwks_refresh_success");
    wait_for("a refresh without k1", Duration::from_secs(10), || {
        stat("jwks_refresh_success") > successes
    });
    wait_for("k1's cached token refused", Duration::from_secs(10), || {
        orders(&alice).status == 401
    });
    for _ in 0..8 {
        assert_eq!(orders(&alice).status, 401, "served from a worker's cache");
    }
    assert_eq!(orders(&late).status, 200, "k2's tokens still pass");

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

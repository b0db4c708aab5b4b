//! A CLIENT-mode sidecar in front of an echoing app: header hygiene, fail-open limits, resets, path normalisation, memory under token churn, the first JWKS, a VM trap.

use super::*;

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
fn a_deny_rule_request_arriving_during_an_allow_rule_exchange_is_never_forwarded_on_an_outage() {
    // One target, two outage behaviours; the service takes 800 ms to answer 503.
    let s = client_sidecar(1, |c| {
        c["rules"] = json!([
            {"path_prefix": "/public", "resource": "slow-unavailable", "failure_mode": "allow"},
            {"path_prefix": "/admin", "resource": "slow-unavailable"},
        ]);
    });
    let t = format!("Bearer {}", s.token());
    let public = {
        let (port, t) = (s.port, t.clone());
        std::thread::spawn(move || get(port, "/public", &[("authorization", &t)]))
    };
    // While the /public exchange is in flight.
    std::thread::sleep(Duration::from_millis(200));
    let admin = get(s.port, "/admin", &[("authorization", &t)]);
    let public = public.join().unwrap();
    assert_eq!(
        admin.status, 503,
        "the deny rule's request was forwarded: {admin:?}"
    );
    assert_eq!(public.status, 200, "{public:?}");
    assert!(public.json()["headers"].get("authorization").is_none());
}

#[test]
fn a_participant_token_the_service_stops_granting_is_not_served_after_its_refresh() {
    // 60 s tokens refreshed after 2 % of their life (1.2 s): the refresh is refused
    // (the mapping was deleted), so the cached token must end there, not in 60 s.
    let s = client_sidecar(1, |c| {
        c["default_rule"] = json!({"resource": "granted-once"});
        c["cache"] = json!({"expiry_margin_secs": 0, "refresh_ahead_percent": 2});
    });
    let t = format!("Bearer {}", s.token());
    let r = get(s.port, "/orders", &[("authorization", &t)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["authorization"], "Bearer pt-1");
    std::thread::sleep(Duration::from_millis(1500));
    // Served from the cache; starts the background refresh on the next tick.
    let r = get(s.port, "/orders", &[("authorization", &t)]);
    assert_eq!(r.status, 200, "{r:?}");
    wait_for("the refresh", Duration::from_secs(10), || {
        s.exchanges() >= 2
    });
    // The refusal lands, then the next request exchanges again and is refused.
    let mut last = None;
    wait_for("the cached token to end", Duration::from_secs(10), || {
        let r = get(s.port, "/orders", &[("authorization", &t)]);
        let done = r.status == 403;
        last = Some(r);
        done
    });
    let r = last.unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.exchanges() >= 3, "a new exchange, not the cached token");
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
    for p in [
        "/healthz/../admin",
        "//healthz/x",
        "/healthz%2F..%2Fadmin",
        // Envoy forwards it as it is; Tomcat and Spring serve /admin.
        "/healthz/..;/admin",
    ] {
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
    // Distinct tokens sent after the warm-up, each a miss (a few seconds here).
    const CHURN: u64 = 3000;
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
    // Bytes allocated now (admin /memory); the `server.memory_allocated` gauge only
    // moves at each stats flush (5 s), so it may still show memory before the warm-up.
    let mem = || {
        let (status, body) = s.envoy.admin_get("/memory").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["allocated"].as_str().unwrap().parse::<u64>().unwrap()
    };
    let before = mem();
    // A count, not a time window: a slow machine sends as many tokens as a fast one.
    for i in 0..CHURN {
        send(1_000_000 + i);
    }
    let after = mem();
    assert_eq!(
        s.exchanges() as u64,
        4 * SLOTS as u64 + CHURN,
        "every token was new"
    );
    // Unbounded, each token would leave its ~2 KiB entry (and its marker) behind.
    let per_token = after.saturating_sub(before) / CHURN;
    eprintln!("{CHURN} distinct tokens; memory {before} -> {after} ({per_token} B/token)");
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
    assert_eq!(trap.status, 503, "{trap:?}");
    assert_eq!(r.status, 503, "the paused request: {r:?}");
    // Not before the stream idle timeout (4 s), and not never: a generous upper bound,
    // well inside the client's own 20 s.
    assert!(
        waited >= Duration::from_millis(3500),
        "the paused request ended before the stream idle timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "the paused request hung for {waited:?}"
    );
    assert_eq!(
        after.status, 503,
        "a trapped VM let a request through: {after:?}"
    );
}

//! Concurrent first requests across both workers cost one exchange.

use super::*;

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

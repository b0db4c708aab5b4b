//! Revocation-feed benchmark (not a test): requests/s one replica serves for
//! `GET /revocations` as every sidecar polls it, over real loopback HTTP/1.1 keep-alive
//! connections, SQLite store, at concurrency 32:
//! - 304 poll: `since` = the current version (nothing new), the steady state;
//! - delta of 100 entries: `since` 100 versions back (after a burst of 100 revocations);
//! - snapshot of 100 entries: `since=0` (a new or reset sidecar).
//!
//! The load generator shares the machine (and its cores) with the service, so the
//! numbers are a floor. `cargo bench -p meshpass-exchange --bench revocation_feed`
//! (`MESHPASS_BENCH_SECS` sets the seconds per row, default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_exchange::clock::{Clock, SystemClock};
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::server::serve_on;
use meshpass_exchange::signer::{SignError, Signer, SigningKey};
use meshpass_exchange::store::{
    Actor, MappingStore, NewRevocation, RevocationStore, RevocationTarget, SqlStore,
};
use meshpass_exchange::AppState;
use serde_json::json;

const CALLER: &str = "URI=spiffe://cluster.local/ns/shop/sa/web";
const CONCURRENCY: usize = 32;

/// The feed never signs.
struct NoSigner;

#[async_trait]
impl Signer for NoSigner {
    fn current_key(&self) -> Result<SigningKey, SignError> {
        Err(SignError::NotReady)
    }
    async fn sign(&self, _: &SigningKey, _: &[u8]) -> Result<String, SignError> {
        Err(SignError::NotReady)
    }
    fn jwks(&self) -> serde_json::Value {
        json!({"keys": []})
    }
    fn is_ready(&self) -> bool {
        false
    }
}

/// Requests/s, p50 and p99 (ms) of `conc` keep-alive clients asking `url` with the
/// expected status.
async fn measure(url: String, expect: u16, secs: f64) -> (f64, f64, f64, usize) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, errors) = (http.clone(), url.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let ok = match http
                    .get(&url)
                    .header("x-forwarded-client-cert", CALLER)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16() == expect && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    (
        lat.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed),
    )
}

fn main() {
    let secs: f64 = std::env::var("MESHPASS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let p = key.verifying_key().to_encoded_point(false);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(p.y().unwrap())}]});
        let toml = format!(
            r#"
[token]
issuer = "https://meshpass.bench"
[store]
url = "sqlite://{db}"
[callers]
xfcc_trusted_proxies = ["127.0.0.1"]
[log]
level = "warn"
[vault]
address = "http://127.0.0.1:9"
auth = {{ method = "token", token = "unused" }}
[[issuers]]
issuer = "https://spire.test"
audiences = ["meshpass"]
trust_domains = ["cluster.local"]
jwks = '{jwks}'
"#,
            db = dir.path().join("feed.db").display(),
        );
        let path = dir.path().join("feed.toml");
        std::fs::write(&path, toml).unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
        store.migrate().await.unwrap();
        let actor = Actor {
            who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
            request_id: "bench".into(),
        };
        let now = SystemClock.now();
        for i in 0..100 {
            let new = NewRevocation {
                target: RevocationTarget::Subject,
                matches: format!("spiffe://cluster.local/ns/team-{i}/*"),
                reason: "compromised node pool".into(),
                until: None,
            };
            store.create_revocation(&new, &actor, now).await.unwrap();
        }
        let version = store.revocation_version().await.unwrap();
        let state = AppState::new(
            &cfg,
            Arc::new(NoSigner),
            store.clone() as Arc<dyn MappingStore>,
            IssuerKeys::from_config(&cfg).unwrap(),
            Arc::new(SystemClock),
        )
        .unwrap();
        state
            .revocations
            .attach(store as Arc<dyn RevocationStore>, Arc::new(SystemClock))
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/revocations", listener.local_addr().unwrap());
        tokio::spawn(serve_on(
            listener,
            state,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        println!("| feed request | concurrency | requests/s | p50 ms | p99 ms | errors |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (name, since, expect) in [
            ("304 poll (nothing new)", version, 304),
            ("delta of 100 entries", version - 100, 200),
            ("snapshot of 100 entries", 0, 200),
        ] {
            let url = format!("{base}?since={since}");
            let (rps, p50, p99, errors) = measure(url, expect, secs).await;
            println!("| {name} | {CONCURRENCY} | {rps:.0} | {p50:.2} | {p99:.2} | {errors} |");
        }
    });
}

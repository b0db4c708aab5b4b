//! Revocation-feed benchmark (not a test): requests/s one replica serves for
//! `GET /revocations` as every sidecar polls it, over real loopback HTTP/1.1 keep-alive
//! connections, SQLite store holding 100 revocations, at concurrency 32, each row beside
//! its baseline: a bare axum handler in the same process answering the same status,
//! headers and body bytes from memory (captured from the service's own answer), asked
//! by the same client at the same concurrency. Rows:
//! - 304 poll: `since` = the current version (nothing new), the steady state;
//! - delta of 100 entries: `since` 100 versions back (after a burst of 100 revocations,
//!   one revocation created and lifted before them, so that `since` is not 0);
//! - snapshot of 100 entries: `since=0` (a new or reset sidecar).
//!
//! Every repetition measures each baseline and its row back to back, rows in turn
//! (bare poll, feed poll, bare delta, …), so drift hits both; the report gives the mean
//! req/s with its 95 % interval and min–max over the repetitions, and the ratio to the
//! baseline paired repetition by repetition. The load generator shares the machine
//! (and its cores) with both servers, so only the ratios carry between runs.
//!
//! `cargo bench -p meshpass-exchange --bench revocation_feed` (`MESHPASS_BENCH_SECS`
//! sets the seconds per measurement, default 2; `MESHPASS_BENCH_REPS` the repetitions,
//! default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
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

/// Means and 95 % intervals over repetitions: the whole-system bench's own.
#[allow(dead_code, unused_imports)]
#[path = "../../bench/src/stats.rs"]
mod stats;
use stats::{paired_ratio, Estimate};

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

/// One measurement.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p99_ms: f64,
    errors: usize,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap()
}

/// Whether one `GET url` answered `expect` (body read to the end).
async fn get(http: &reqwest::Client, url: &str, expect: u16) -> bool {
    match http
        .get(url)
        .header("x-forwarded-client-cert", CALLER)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16() == expect && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// `CONCURRENCY` keep-alive clients asking `url` for `secs` seconds, their connections
/// opened before the window.
async fn measure(url: &str, expect: u16, secs: f64) -> Sample {
    let http = client();
    let warm: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_string());
            tokio::spawn(async move { get(&http, &url, expect).await })
        })
        .collect();
    for w in warm {
        assert!(w.await.unwrap(), "warm-up of {url} failed");
    }
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, errors) = (http.clone(), url.to_string(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                if !get(&http, &url, expect).await {
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
    Sample {
        rps: lat.len() as f64 / elapsed,
        p99_ms: lat[((lat.len() as f64 * 0.99) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// The baseline of one row: a bare axum server answering `GET /revocations` with the
/// status, headers and body the service gave for it; its URL with the row's query, the
/// status and the body.
async fn bare_axum(url: &str) -> (String, u16, Bytes) {
    let r = client()
        .get(url)
        .header("x-forwarded-client-cert", CALLER)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let mut headers = HeaderMap::new();
    for h in [header::CONTENT_TYPE, header::CACHE_CONTROL, header::ETAG] {
        if let Some(v) = r.headers().get(&h) {
            headers.insert(h, v.clone());
        }
    }
    let body: Bytes = r.bytes().await.unwrap();
    let answer = body.clone();
    let status = StatusCode::from_u16(status.as_u16()).unwrap();
    let app = axum::Router::new().route(
        "/revocations",
        axum::routing::get(move || {
            let (headers, body) = (headers.clone(), body.clone());
            async move { (status, headers, body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    (
        format!("http://{addr}/revocations?{query}"),
        status.as_u16(),
        answer,
    )
}

fn main() {
    let secs: f64 = std::env::var("MESHPASS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let reps: usize = std::env::var("MESHPASS_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
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
        // One created and lifted first: the delta's `since` below is then not 0 (which
        // would ask for a snapshot).
        let new = NewRevocation {
            target: RevocationTarget::Subject,
            matches: "spiffe://cluster.local/ns/lifted/*".into(),
            reason: "mistake".into(),
            until: None,
        };
        let first = store.create_revocation(&new, &actor, now).await.unwrap();
        store.lift_revocation(&first.id, &actor).await.unwrap();
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
        // (name, feed URL, bare URL, status, body bytes)
        let mut rows = Vec::new();
        for (name, since, expect) in [
            ("304 poll (nothing new)", version, 304),
            ("delta of 100 entries", version - 100, 200),
            ("snapshot of 100 entries", 0, 200),
        ] {
            let url = format!("{base}?since={since}");
            let (bare, status, body) = bare_axum(&url).await;
            assert_eq!(status, expect, "{name}: the service answered {status}");
            let full = String::from_utf8_lossy(&body).contains("\"full\":true");
            assert!(since == 0 || !full, "{name}: a snapshot came back");
            rows.push((name, url, bare, status, body.len()));
        }
        let (mut feed, mut bare) = (vec![Vec::new(); rows.len()], vec![Vec::new(); rows.len()]);
        for rep in 0..reps {
            for (i, (name, url, bare_url, status, _)) in rows.iter().enumerate() {
                let b = measure(bare_url, *status, secs).await;
                let f = measure(url, *status, secs).await;
                eprintln!(
                    "rep {}/{reps} {name}: bare axum {:.0} req/s, feed {:.0} req/s ({:.2})",
                    rep + 1,
                    b.rps,
                    f.rps,
                    f.rps / b.rps
                );
                bare[i].push(b);
                feed[i].push(f);
            }
        }
        println!(
            "\nrevocation feed: {reps} reps × {secs} s per measurement, rows interleaved, \
             concurrency {CONCURRENCY}, load generator in the same process \
             (mean ± 95 % interval, min–max)\n"
        );
        println!("| feed request | status, body bytes | feed req/s | bare axum req/s | feed / bare axum | p99 ms feed / bare | errors |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let rps = |s: &[Sample]| s.iter().map(|x| x.rps).collect::<Vec<_>>();
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{} ({lo:.0}–{hi:.0})", Estimate::of(v).fmt(0))
        };
        let p99 = |s: &[Sample]| Estimate::of(&s.iter().map(|x| x.p99_ms).collect::<Vec<_>>()).mean;
        for (i, (name, _, _, status, len)) in rows.iter().enumerate() {
            let (f, b) = (rps(&feed[i]), rps(&bare[i]));
            let errors: usize = feed[i].iter().chain(&bare[i]).map(|x| x.errors).sum();
            let ratio = paired_ratio(&f, &b);
            let (lo, hi) = f
                .iter()
                .zip(&b)
                .map(|(x, y)| x / y)
                .fold((f64::INFINITY, 0.0f64), |(l, h), r| (l.min(r), h.max(r)));
            println!(
                "| {name} | {status}, {len} | {} | {} | {} ({lo:.2}–{hi:.2}) | {:.2} / {:.2} | {errors} |",
                range(&f),
                range(&b),
                ratio.fmt(2),
                p99(&feed[i]),
                p99(&bare[i]),
            );
        }
    });
}

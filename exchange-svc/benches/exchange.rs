//! Exchange-service benchmark (not a test): requests/s, p50/p99 latency and CPU time
//! per request of `POST /token`, at concurrency 1 and 32, beside two baselines measured
//! in the same run: OpenBao's raw `transit/sign` rate and a bare axum handler returning
//! a fixed 600-byte JSON body. Only the ratios are comparable between runs.
//!
//! Rows of the exchange service:
//! - cold, true cold: minted-token cache off, every subject token new (never seen by
//!   the service), so each exchange parses and verifies an ES256 token and signs;
//! - cold, repeated tokens: minted-token cache off, 64 subject tokens over and over,
//!   so the verified-subject cache answers and each exchange still signs;
//! - cold, no policy/subject cache: the true-cold load against a service with
//!   `store.policy_cache_secs = 0` and `validation.subject_cache_secs = 0` (two SQL
//!   queries per exchange, as before those caches existed; the one row `make bench`
//!   section 2 does not have);
//! - warm: minted-token cache hit.
//!
//! Every repetition runs every row at each concurrency in turn (baselines first), so
//! drift hits all rows alike; the report gives the mean with its 95 % interval (and
//! min–max of req/s) over the repetitions, and each row's ratio to its baseline (cold
//! rows to raw sign, warm to bare axum) paired repetition by repetition.
//!
//! CPU columns: CPU time of this process (service and load generator together) and of
//! OpenBao during the row, divided by the requests served; and how busy the whole
//! machine was (all cores, other processes included), to tell a CPU-bound row from a
//! latency-bound one.
//!
//! `cargo bench -p meshpass-exchange --bench exchange` (needs OpenBao like the tests;
//! `MESHPASS_BENCH_SECS` sets the seconds per measurement, default 2;
//! `MESHPASS_BENCH_REPS` the repetitions, default 5; `MESHPASS_BENCH_ONLY` runs only
//! the rows whose name contains one of its comma-separated parts, for profiling).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::server::{build_signer, serve_on};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{seed, MappingStore, SqlStore};
use meshpass_exchange::AppState;
use meshpass_testkit::OpenBao;
use p256::ecdsa::signature::Signer as _;
use serde_json::json;

/// Means and 95 % intervals over repetitions: the whole-system bench's own.
#[allow(dead_code, unused_imports)]
#[path = "../../bench/src/stats.rs"]
mod stats;
use stats::{paired_ratio, Estimate};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
/// What the callers' sidecar would forward for WEB.
const XFCC_WEB: &str = "URI=spiffe://cluster.local/ns/shop/sa/web";
/// True-cold exchanges/s the never-seen tokens of one measurement are minted for (a
/// third of it at concurrency 1); far above what two cores reach in one process.
const COLD_RATE_BOUND: f64 = 12_000.0;

#[derive(Clone)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    /// CPU µs per request of this process and of OpenBao.
    cpu_self_us: f64,
    cpu_bao_us: f64,
    /// Share of the machine's CPU time that was busy (anything, other processes too).
    machine_busy: f64,
}

/// utime + stime of a process, in seconds (from /proc; clock ticks of 10 ms).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

static BAO_PID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs `conc` workers calling `call(i)` for `secs` seconds.
async fn measure<F, Fut>(conc: usize, secs: f64, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let counter = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    // Warm-up (connections, caches) outside the measured window.
    for i in 0..conc.min(8) {
        call(i).await;
    }
    let bao_pid = BAO_PID.get().cloned().unwrap_or_default();
    let (self0, bao0) = (cpu_secs("self"), cpu_secs(&bao_pid));
    let (busy0, total0) = machine_jiffies();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (call, counter, errors) = (call.clone(), counter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if !call(i).await {
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
    let (self1, bao1) = (cpu_secs("self"), cpu_secs(&bao_pid));
    let (busy1, total1) = machine_jiffies();
    let n = lat.len().max(1) as f64;
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Stats {
        rps: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
        cpu_self_us: (self1 - self0) * 1e6 / n,
        cpu_bao_us: (bao1 - bao0) * 1e6 / n,
        machine_busy: (busy1 - busy0) / (total1 - total0).max(1.0),
    }
}

/// One table row: the means over the repetitions and, with a baseline, the ratio to
/// it paired repetition by repetition.
fn row(name: &str, conc: usize, s: &[Stats], baseline: Option<(&str, &[Stats])>) {
    let mean = |f: fn(&Stats) -> f64| Estimate::of(&s.iter().map(f).collect::<Vec<_>>());
    let rps: Vec<f64> = s.iter().map(|x| x.rps).collect();
    let min_max = |v: &[f64], d: usize| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.d$}–{hi:.d$}")
    };
    let ratio = baseline
        .map(|(n, b)| {
            let b: Vec<f64> = b.iter().map(|x| x.rps).collect();
            let r: Vec<f64> = rps.iter().zip(&b).map(|(x, y)| x / y).collect();
            format!(
                "{} ({}) of {n}",
                paired_ratio(&rps, &b).fmt(2),
                min_max(&r, 2)
            )
        })
        .unwrap_or_default();
    println!(
        "| {name} | {conc} | {} ({}) | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} % | {ratio} |",
        Estimate::of(&rps).fmt(0),
        min_max(&rps, 0),
        mean(|x| x.p50_ms).mean,
        mean(|x| x.p99_ms).mean,
        s.iter().map(|x| x.errors).sum::<usize>(),
        mean(|x| x.cpu_self_us).mean,
        mean(|x| x.cpu_bao_us).mean,
        mean(|x| x.machine_busy).mean * 100.0
    );
}

/// `n` distinct subject tokens, `jti` from `first` on (made on both cores outside the
/// measured windows).
fn subject_tokens(key: &p256::ecdsa::SigningKey, first: usize, n: usize) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}).to_string());
    let make = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|i| {
                let claims = json!({"iss": "https://spire.test", "sub": WEB, "aud": "meshpass",
                    "iat": now, "exp": now + 3600, "jti": i});
                let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
                let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
            })
            .collect()
    };
    std::thread::scope(|s| {
        let half = n / 2;
        let make = &make;
        let a = s.spawn(move || make(first..first + half));
        let mut out = make(first + half..first + n);
        out.extend(a.join().unwrap());
        out
    })
}

/// Hands out each token once; running out is reported (and counted as errors).
struct FreshTokens {
    tokens: Vec<String>,
    next: AtomicUsize,
}

impl FreshTokens {
    fn take(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens.get(i).map(String::as_str)
    }

    fn ran_out(&self) -> bool {
        self.next.load(Ordering::Relaxed) > self.tokens.len()
    }
}

fn form(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("subject_token", token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("resource", "payments")
        .finish()
}

/// A service on its own listener; `name` tells the instances apart.
async fn start_service(
    bao: &OpenBao,
    dir: &std::path::Path,
    jwks: &str,
    name: &str,
    extra: &str,
) -> String {
    let toml = format!(
        r#"
[token]
issuer = "https://meshpass.bench"
[store]
url = "sqlite://{db}"
{extra}
[callers]
# The load generator stands in for the callers' sidecar (one caller, WEB).
xfcc_trusted_proxies = ["127.0.0.1"]
[log]
level = "warn"
[vault]
address = "{addr}"
auth = {{ method = "token", token = "{token}" }}
key_name = "bench"
publish_lead = "0s"
[[issuers]]
issuer = "https://spire.test"
audiences = ["meshpass"]
trust_domains = ["cluster.local"]
jwks = '{jwks}'
[[mappings]]
name = "bench"
subject = "spiffe://cluster.local/*"
resource = "payments"
participant = "acme"
scopes = ["read"]
ttl_secs = 600
"#,
        db = dir.join(format!("bench-{name}.db")).display(),
        addr = bao.addr(),
        token = bao.root_token(),
    );
    let path = dir.join(format!("bench-{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let cfg = Config::load(Some(&path)).unwrap();
    let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
    store.migrate().await.unwrap();
    seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims)
        .await
        .unwrap();
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    let signer = build_signer(&cfg).await.unwrap();
    let state = AppState::new(
        &cfg,
        signer as Arc<dyn Signer>,
        store as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(serve_on(
        listener,
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    url
}

async fn bare_axum() -> String {
    let body: &'static str = Box::leak(
        json!({"access_token": "x".repeat(480), "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
               "token_type": "Bearer", "expires_in": 300, "scope": "read"})
        .to_string()
        .into_boxed_str(),
    );
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |_body: axum::body::Bytes| async move {
            (
                [
                    ("content-type", "application/json"),
                    ("cache-control", "no-store"),
                ],
                body,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// POSTs `body` to `url`; whether the answer was a success.
async fn post(h: &reqwest::Client, url: &str, body: String) -> bool {
    h.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-client-cert", XFCC_WEB)
        .body(body)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

const RAW: &str = "OpenBao raw transit/sign (ecdsa-p256)";
const BARE: &str = "bare axum POST /token (fixed 600-byte JSON)";
const TRUE_COLD: &str = "exchange cold, true cold (new subject token each time)";
const REPEATED: &str =
    "exchange cold, repeated tokens (verified-subject cache hit, token cache off)";
const UNCACHED: &str = "exchange cold, true cold, policy and subject caches off (before)";
const WARM: &str = "exchange warm (token cache)";
/// The rows in the order each repetition runs them, with the baseline of each.
const ROWS: [(&str, Option<&str>); 6] = [
    (RAW, None),
    (BARE, None),
    (TRUE_COLD, Some(RAW)),
    (REPEATED, Some(RAW)),
    (UNCACHED, Some(RAW)),
    (WARM, Some(BARE)),
];
const CONCURRENCIES: [usize; 2] = [1, 32];

fn main() {
    for k in ["ADDR", "TOKEN", "CACERT", "NAMESPACE"] {
        std::env::remove_var(format!("VAULT_{k}"));
        std::env::remove_var(format!("BAO_{k}"));
    }
    let secs: f64 = std::env::var("MESHPASS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let reps: usize = std::env::var("MESHPASS_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let only = std::env::var("MESHPASS_BENCH_ONLY").unwrap_or_default();
    let wanted = move |name: &str| only.is_empty() || only.split(',').any(|o| name.contains(o));
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("bench", "ecdsa-p256");
    BAO_PID.set(bao.pid().to_string()).unwrap();
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}]})
        .to_string();
        let repeated = Arc::new(subject_tokens(&key, 0, 64));
        // Never-seen tokens for one true-cold measurement, minted just before it.
        let mut next_jti = 64;
        let mut fresh = |conc: usize| {
            let bound = if conc == 1 {
                COLD_RATE_BOUND / 3.0
            } else {
                COLD_RATE_BOUND
            };
            let n = (bound * secs) as usize + 100;
            let tokens = tokio::task::block_in_place(|| subject_tokens(&key, next_jti, n));
            next_jti += n;
            Arc::new(FreshTokens {
                tokens,
                next: AtomicUsize::new(0),
            })
        };
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();

        let sign_url = format!("{}/v1/transit/sign/bench", bao.addr());
        let root = bao.root_token().to_string();
        let bare = bare_axum().await;
        let no_token_cache = "[cache]\nenabled = false\n";
        let cold = start_service(&bao, dir.path(), &jwks, "cold", no_token_cache).await;
        let uncached = start_service(
            &bao,
            dir.path(),
            &jwks,
            "uncached",
            &format!("policy_cache_secs = 0\n{no_token_cache}[validation]\nsubject_cache_secs = 0\n"),
        )
        .await;
        let warm = start_service(&bao, dir.path(), &jwks, "warm", "").await;

        // cells[concurrency index][row index]: the samples in repetition order.
        let mut cells = vec![vec![Vec::<Stats>::new(); ROWS.len()]; CONCURRENCIES.len()];
        let mut ran_out = 0;
        for rep in 0..reps {
            for (ci, &conc) in CONCURRENCIES.iter().enumerate() {
                for (ri, &(name, _)) in ROWS.iter().enumerate() {
                    if !wanted(name) {
                        continue;
                    }
                    let (h, toks) = (http.clone(), repeated.clone());
                    let mut tokens = None;
                    let s = match name {
                        RAW => {
                            let (u, t) = (sign_url.clone(), root.clone());
                            measure(conc, secs, move |i| {
                                let (h, u, t) = (h.clone(), u.clone(), t.clone());
                                async move {
                                    let input = STANDARD.encode(format!("bench-input-{i}"));
                                    h.post(&u)
                                        .header("x-vault-token", t)
                                        .json(&json!({"input": input, "marshaling_algorithm": "jws"}))
                                        .send()
                                        .await
                                        .map(|r| r.status().is_success())
                                        .unwrap_or(false)
                                }
                            })
                            .await
                        }
                        BARE => {
                            let u = bare.clone();
                            measure(conc, secs, move |_| {
                                let (h, u) = (h.clone(), u.clone());
                                async move { post(&h, &u, "grant_type=x".into()).await }
                            })
                            .await
                        }
                        TRUE_COLD | UNCACHED => {
                            let u = if name == TRUE_COLD {
                                cold.clone()
                            } else {
                                uncached.clone()
                            };
                            let f = fresh(conc);
                            tokens = Some(f.clone());
                            measure(conc, secs, move |_| {
                                let (h, u) = (h.clone(), u.clone());
                                let body = f.take().map(form);
                                async move {
                                    match body {
                                        Some(b) => post(&h, &u, b).await,
                                        None => false,
                                    }
                                }
                            })
                            .await
                        }
                        REPEATED => {
                            let u = cold.clone();
                            measure(conc, secs, move |i| {
                                let (h, u) = (h.clone(), u.clone());
                                let body = form(&toks[i % toks.len()]);
                                async move { post(&h, &u, body).await }
                            })
                            .await
                        }
                        _ => {
                            // WARM
                            let (u, body) = (warm.clone(), form(&toks[0]));
                            measure(conc, secs, move |_| {
                                let (h, u, body) = (h.clone(), u.clone(), body.clone());
                                async move { post(&h, &u, body).await }
                            })
                            .await
                        }
                    };
                    if tokens.is_some_and(|t| t.ran_out()) {
                        ran_out += 1;
                    }
                    eprintln!(
                        "rep {}/{reps} c={conc:<2} {name}: {:.0} req/s, errors {}",
                        rep + 1,
                        s.rps,
                        s.errors
                    );
                    cells[ci][ri].push(s);
                }
            }
        }

        println!("\nmeshpass-exchange bench: {reps} reps × {secs} s per measurement, rows interleaved, 2 tokio workers, load generator in the same process (mean ± 95 % interval, min–max in brackets)\n");
        println!("| what | concurrency | req/s | p50 ms | p99 ms | errors | CPU µs/req (bench process) | CPU µs/req (OpenBao) | machine CPU busy | ratio |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (ci, &conc) in CONCURRENCIES.iter().enumerate() {
            for (ri, &(name, base)) in ROWS.iter().enumerate() {
                if cells[ci][ri].is_empty() {
                    continue;
                }
                let base = base.and_then(|b| {
                    let bi = ROWS.iter().position(|&(n, _)| n == b)?;
                    let short = if b == RAW { "raw sign" } else { "bare axum" };
                    (!cells[ci][bi].is_empty()).then_some((short, cells[ci][bi].as_slice()))
                });
                row(name, conc, &cells[ci][ri], base);
            }
        }
        if ran_out > 0 {
            println!("\nWARNING: the never-seen subject tokens ran out in {ran_out} measurement(s); the rest of those requests were counted as errors");
        }
        drop(bao);
    });
}

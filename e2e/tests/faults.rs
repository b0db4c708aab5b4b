//! Faults on the production-like setup: the exchange service on PostgreSQL, OpenBao with
//! persistent (raft) storage. Each scenario breaks one component, checks what callers
//! see, repairs it and checks recovery without restarting anything else. Each scenario is
//! a test of its own (`cargo test -p meshpass-e2e --test faults -- --list`); all share
//! one topology, started before the first scenario that runs and stopped when the binary
//! ends.
//!
//! **Order matters**: the scenarios run one at a time in the order of `main`'s list (the
//! runner forces one test thread and never reorders), each on the topology the previous
//! ones broke and repaired: the happy path first, then revocation under traffic and a
//! revocation feed outage (issue #16, in `faults/revocation.rs`; the sidecars run two
//! workers each), the JWKS outage, the exchange-service outage, the OpenBao outage, the
//! transit key rotation (it expects the version after the current one, so it also runs
//! alone), and the restart of the suite's PostgreSQL server last. That server is private
//! (testkit's `PostgresServer`: its own cluster and port), so restarting it cuts no other
//! suite's connections; the machine's shared server is never touched. A filtered run
//! keeps that relative order; a scenario that fails to repair its component fails the
//! ones after it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "faults/revocation.rs"]
mod revocation;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{assert_participant_token, eventually, scenarios};
use meshpass_e2e::blocking;
use meshpass_e2e::jwt::decode_unverified;
use meshpass_e2e::topology::{Options, Reply, Storage, Topology, SHORT_TTL_SECS, TRANSIT_KEY};
use meshpass_testkit::{BaoStorage, PgDb, PostgresServer};
use revocation::{
    revocation_feed_down_keeps_the_last_set_raises_staleness_and_catches_up_with_a_delta,
    revoking_a_subject_stops_its_cached_token_on_every_worker_and_lifting_restores_it,
};

/// What the scenarios share. Fields drop in order: the topology (every process killed)
/// first, then the database, then the private PostgreSQL server (stopped, its cluster
/// deleted).
struct Faults {
    topo: Arc<Topology>,
    _db: PgDb,
    pg: std::sync::Mutex<PostgresServer>,
}

impl Faults {
    async fn start() -> Result<Self> {
        let pg = PostgresServer::start();
        let db = pg.fresh_database();
        let topo = Topology::start(Options {
            storage: Storage::Postgres(db.url()),
            bao: BaoStorage::Persistent,
            // Revocation must reach every worker (issue #16).
            sidecar_concurrency: 2,
            ..Options::default()
        })
        .await?;
        Ok(Faults {
            topo: Arc::new(topo),
            _db: db,
            pg: std::sync::Mutex::new(pg),
        })
    }
}

fn main() -> ExitCode {
    common::run_scenarios(
        "faults/postgres",
        Faults::start,
        |f| {
            let pg = f.pg.lock().unwrap_or_else(|e| e.into_inner()).log_tail(20);
            format!(
                "dir {}\n{}\npostgres log:\n{pg}",
                f.topo.dir().display(),
                f.topo.diagnostics(30)
            )
        },
        // Run in this order (see the module docs).
        scenarios![
            happy_path_works_with_exchange_on_postgres,
            revoking_a_subject_stops_its_cached_token_on_every_worker_and_lifting_restores_it,
            revocation_feed_down_keeps_the_last_set_raises_staleness_and_catches_up_with_a_delta,
            jwt_svid_jwks_endpoint_down_keeps_last_good_keys,
            exchange_service_stopped_503_while_cached_tokens_serve_until_they_expire,
            openbao_stopped_answers_503_with_retry_after_then_recovers_by_itself,
            transit_key_rotation_during_steady_traffic_fails_no_request,
            postgres_restart_loses_no_mapping,
        ],
    )
}

async fn happy_path_works_with_exchange_on_postgres(f: &Faults) -> Result<()> {
    let t = &*f.topo;
    let tok = t.mint("frontend")?;
    assert_participant_token(
        t,
        &t.via_client_mode("/", Some(&tok)).await?,
        "frontend",
        "acme",
        &tok,
    )?;
    let tok = t.mint("reporting")?;
    assert_participant_token(
        t,
        &t.via_server_mode("reporting", "/", Some(&tok)).await?,
        "reporting",
        "globex",
        &tok,
    )?;
    Ok(())
}

async fn jwt_svid_jwks_endpoint_down_keeps_last_good_keys(f: &Faults) -> Result<()> {
    let t = &*f.topo;
    t.svid_jwks.lock().await.stop().await;
    // Let at least two refreshes of the filter and the service fail.
    tokio::time::sleep(Duration::from_secs(
        2 * t.options.svid_jwks_refresh_secs + 1,
    ))
    .await;
    let outcome = async {
        let down = reqwest::get(format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            t.ports.svid_jwks
        ))
        .await;
        ensure!(down.is_err(), "the JWKS endpoint still answers");
        let tok = t.mint("frontend")?;
        let r = t.via_client_mode("/", Some(&tok)).await?;
        ensure!(
            r.status == 200,
            "CLIENT mode with the JWKS endpoint down: {r}"
        );
        let tok = t.mint("reporting")?;
        let r = t.via_server_mode("reporting", "/", Some(&tok)).await?;
        ensure!(
            r.status == 200,
            "SERVER mode with the JWKS endpoint down: {r}"
        );
        Ok(())
    }
    .await;
    t.svid_jwks.lock().await.start_again().await?;
    outcome
}

async fn exchange_service_stopped_503_while_cached_tokens_serve_until_they_expire(
    f: &Faults,
) -> Result<()> {
    let t = &*f.topo;
    let long = t.mint("frontend")?;
    let short = t.mint("frontend")?;
    let r_long = t.via_client_mode("/", Some(&long)).await?;
    ensure!(r_long.status == 200, "priming: {r_long}");
    let r_short = t.via_client_mode("/short", Some(&short)).await?;
    ensure!(r_short.status == 200, "priming /short: {r_short}");
    let short_exp = decode_unverified(r_short.echo()?.bearer().unwrap_or_default())?.claims["exp"]
        .as_u64()
        .context("participant token without exp")?;

    {
        let mut exchange = t.exchange.lock().await;
        blocking(|| exchange.stop());
    }
    let outcome = async {
        let fresh = t.mint("frontend")?;
        let r = t.via_client_mode("/", Some(&fresh)).await?;
        ensure!(r.status == 503, "new token with the service down: {r}");
        ensure!(
            r.header("retry-after").is_some(),
            "503 without Retry-After: {r}"
        );
        let r = t.via_client_mode("/", Some(&long)).await?;
        ensure!(r.status == 200, "cached token with the service down: {r}");
        ensure!(
            r.echo()?.bearer() == r_long.echo()?.bearer(),
            "the cached participant token was not the one served"
        );
        let r = t.via_client_mode("/short", Some(&short)).await?;
        ensure!(
            r.status == 200,
            "short-lived cached token before expiry: {r}"
        );
        // Once the short token is (about to be) expired the filter stops serving it.
        let deadline = Duration::from_secs(SHORT_TTL_SECS + 5);
        eventually(
            "short-lived cached token refused after expiry",
            deadline,
            || async {
                let r = t.via_client_mode("/short", Some(&short)).await?;
                Ok(r.status == 503)
            },
        )
        .await?;
        let now = meshpass_e2e::jwt::now();
        ensure!(
            now + 2 >= short_exp,
            "refused at {now}, {}s before exp {short_exp}",
            short_exp.saturating_sub(now)
        );
        Ok(())
    }
    .await;
    {
        let mut exchange = t.exchange.lock().await;
        blocking(|| exchange.start_again());
    }
    outcome?;
    let fresh = t.mint("frontend")?;
    eventually(
        "exchange recovers after the service is back",
        Duration::from_secs(15),
        || async { Ok(t.via_client_mode("/", Some(&fresh)).await?.status == 200) },
    )
    .await
}

async fn openbao_stopped_answers_503_with_retry_after_then_recovers_by_itself(
    f: &Faults,
) -> Result<()> {
    let t = &*f.topo;
    {
        let mut bao = t.bao.lock().await;
        blocking(|| bao.stop());
    }
    let outcome = async {
        for mode in ["CLIENT", "SERVER"] {
            let tok = t.mint(if mode == "CLIENT" {
                "frontend"
            } else {
                "reporting"
            })?;
            let r = request(t, mode, &tok).await?;
            ensure!(r.status == 503, "{mode} mode with OpenBao down: {r}");
            ensure!(
                r.header("retry-after").is_some(),
                "{mode}: 503 without Retry-After: {r}"
            );
        }
        Ok(())
    }
    .await;
    {
        let mut bao = t.bao.lock().await;
        blocking(|| bao.start_again());
    }
    outcome?;
    for mode in ["CLIENT", "SERVER"] {
        eventually(
            &format!("{mode} mode recovers once OpenBao is back"),
            Duration::from_secs(30),
            || async {
                let tok = t.mint(if mode == "CLIENT" {
                    "frontend"
                } else {
                    "reporting"
                })?;
                Ok(request(t, mode, &tok).await?.status == 200)
            },
        )
        .await?;
    }
    Ok(())
}

async fn transit_key_rotation_during_steady_traffic_fails_no_request(f: &Faults) -> Result<()> {
    let t = &*f.topo;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let saw_new_kid = Arc::new(AtomicBool::new(false));
    let last_failure = Arc::new(std::sync::Mutex::new(String::new()));
    let before = current_key_version(t).await?;
    let want_kid = format!("{TRANSIT_KEY}:v{}", before + 1);
    let traffic = {
        let (topo, stop, failures, total, saw, last) = (
            f.topo.clone(),
            stop.clone(),
            failures.clone(),
            total.clone(),
            saw_new_kid.clone(),
            last_failure.clone(),
        );
        let want_kid = want_kid.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let mode = if i % 2 == 0 { "CLIENT" } else { "SERVER" };
                // A fresh JWT-SVID each time: every request is a new exchange and
                // a new signature, so the new key version is really exercised.
                let outcome = match topo.mint(if mode == "CLIENT" {
                    "frontend"
                } else {
                    "reporting"
                }) {
                    Ok(tok) => request(&topo, mode, &tok).await,
                    Err(e) => Err(e),
                };
                total.fetch_add(1, Ordering::SeqCst);
                match outcome {
                    Ok(r) if r.status == 200 => {
                        let kid = r
                            .echo()
                            .ok()
                            .and_then(|e| e.bearer().and_then(|b| decode_unverified(b).ok()))
                            .and_then(|j| j.header["kid"].as_str().map(String::from));
                        if kid.as_deref() == Some(want_kid.as_str()) {
                            saw.store(true, Ordering::SeqCst);
                        }
                    }
                    other => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        *last.lock().unwrap() = format!("{mode}: {other:?}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rotated = {
        let bao = t.bao.lock().await;
        blocking(|| bao.rotate_key(TRANSIT_KEY))
    };
    let deadline = Instant::now() + Duration::from_secs(t.options.publish_lead_secs + 20);
    while !saw_new_kid.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Keep going a little after the switch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await?;
    let new_version = rotated;
    ensure!(
        new_version == before + 1,
        "rotation went from v{before} to v{new_version}"
    );
    let (f, n) = (
        failures.load(Ordering::SeqCst),
        total.load(Ordering::SeqCst),
    );
    ensure!(
        saw_new_kid.load(Ordering::SeqCst),
        "no participant token signed with {want_kid} within {}s ({n} requests)",
        t.options.publish_lead_secs + 20
    );
    ensure!(
        f == 0,
        "{f} of {n} requests failed during rotation; last: {}",
        last_failure.lock().unwrap()
    );
    common::note(format!(
        "    rotation: {n} requests, 0 failed, new tokens carry {want_kid}"
    ));
    Ok(())
}

async fn postgres_restart_loses_no_mapping(f: &Faults) -> Result<()> {
    let t = &*f.topo;
    let (before, after) = blocking(|| {
        let mut pg = f.pg.lock().unwrap();
        let before = pg.pid();
        pg.restart();
        (before, pg.pid())
    });
    common::note(format!(
        "    postgres: private server restarted (postmaster pid {before} -> {after})"
    ));
    for (mode, workload, participant) in [
        ("CLIENT", "frontend", "acme"),
        ("SERVER", "reporting", "globex"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (r, tok) = loop {
            let tok = t.mint(workload)?;
            let r = request(t, mode, &tok).await;
            match r {
                Ok(r) if r.status == 200 => break (r, tok),
                other => ensure!(
                    Instant::now() < deadline,
                    "{mode} mode: no successful exchange 30 s after the restart; last: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_participant_token(t, &r, workload, participant, &tok)?;
    }
    // The unmapped workload is still refused by policy (403), not by an outage.
    let tok = t.mint("batch")?;
    let r = t.via_server_mode("batch", "/", Some(&tok)).await?;
    ensure!(r.status == 403, "unmapped workload after the restart: {r}");
    Ok(())
}

async fn request(t: &Topology, mode: &str, tok: &str) -> Result<Reply> {
    if mode == "CLIENT" {
        t.via_client_mode("/orders", Some(tok)).await
    } else {
        t.via_server_mode("reporting", "/orders", Some(tok)).await
    }
}

async fn current_key_version(t: &Topology) -> Result<u64> {
    let bao = t.bao.lock().await;
    let version = blocking(|| bao.transit_key_version(TRANSIT_KEY));
    ensure!(
        version > 0,
        "transit key {TRANSIT_KEY} has no latest_version"
    );
    Ok(version)
}

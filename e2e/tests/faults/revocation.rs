//! The revocation scenarios of the faults suite (issue #16): a subject revoked under
//! steady traffic on every worker of both sidecars, and the revocation feed down. They
//! run in `faults.rs`'s order, on its shared topology.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use meshpass_e2e::blocking;
use meshpass_e2e::revocation::{is_revocation_refusal, Sidecar};
use meshpass_e2e::topology::{Reply, Topology};

use super::common::{self, eventually};
use super::Faults;

/// Slack over the target (poll interval + 1 s) for a loaded 2-core machine: the
/// bound asserted is poll interval + 1 s + this; the time measured is printed.
const REVOCATION_SLACK: Duration = Duration::from_secs(2);

/// Frontend requests that must start after the bound and before the lift, all refused.
const MIN_REFUSED_AFTER_BOUND: usize = 10;

/// How long the revocation may stay in place past the bound waiting for them (a busy
/// machine sends the steady traffic slowly; an idle one needs about a second).
const REFUSED_SAMPLES_DEADLINE: Duration = Duration::from_secs(30);

/// One request of the steady traffic: when it started, which path, what came back.
struct Sample {
    at: Instant,
    path: &'static str,
    reply: Result<Reply, String>,
}

/// Steady traffic until `stop`, each reply appended to `out` as it comes: frontend's
/// cached token through the CLIENT-mode listener (a new connection each time, so both
/// workers serve it) and through the SERVER-mode listener, and reporting's cached token
/// through the SERVER-mode listener.
fn steady_traffic(
    topo: Arc<Topology>,
    front: String,
    rep: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Sample>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let push = |s: Sample| out.lock().unwrap().push(s);
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            let r = topo.via_client_mode_fresh("/orders", &front).await;
            push(Sample {
                at,
                path: "frontend/CLIENT",
                reply: r.map_err(|e| format!("{e:#}")),
            });
            let at = Instant::now();
            let r = topo
                .via_server_mode("frontend", "/orders", Some(&front))
                .await;
            push(Sample {
                at,
                path: "frontend/SERVER",
                reply: r.map_err(|e| format!("{e:#}")),
            });
            let at = Instant::now();
            let r = topo
                .via_server_mode("reporting", "/orders", Some(&rep))
                .await;
            push(Sample {
                at,
                path: "reporting/SERVER",
                reply: r.map_err(|e| format!("{e:#}")),
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn passed(s: &Sample) -> bool {
    matches!(&s.reply, Ok(r) if r.status == 200)
}

fn show(s: &Sample) -> String {
    match &s.reply {
        Ok(r) => format!("{}: {r}", s.path),
        Err(e) => format!("{}: {e}", s.path),
    }
}

pub(super) async fn revoking_a_subject_stops_its_cached_token_on_every_worker_and_lifting_restores_it(
    f: &Faults,
) -> Result<()> {
    let t = &*f.topo;
    const REASON: &str = "compromised node (e2e)";
    let poll = Duration::from_millis(t.options.revocation_poll_ms);
    let bound = poll + Duration::from_secs(1) + REVOCATION_SLACK;
    let (front, rep) = (t.mint("frontend")?, t.mint("reporting")?);
    // Cache both tokens in both sidecars.
    for r in [
        t.via_client_mode_fresh("/orders", &front).await?,
        t.via_server_mode("frontend", "/orders", Some(&front))
            .await?,
        t.via_server_mode("reporting", "/orders", Some(&rep))
            .await?,
    ] {
        ensure!(r.status == 200, "priming: {r}");
    }
    let workers = t.options.sidecar_concurrency;
    let port = t.ports.client_exchange;
    let denied = || {
        t.filter_metric(Sidecar::Client, "meshpass_denied_revoked")
            + t.filter_metric(Sidecar::Server, "meshpass_denied_revoked")
    };
    let denied_before = denied();
    let stop = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(Mutex::new(Vec::new()));
    let traffic = steady_traffic(
        f.topo.clone(),
        front.clone(),
        rep.clone(),
        stop.clone(),
        sampled.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let id = t.revoke_subject("frontend", REASON).await;
    let cx_before = t.connections_per_worker(Sidecar::Client, port, workers);
    if id.is_ok() {
        tokio::time::sleep(bound + Duration::from_secs(1)).await;
        // Keep it revoked until enough frontend requests were sent after the bound (they
        // are counted once answered, so all of them start before the lift).
        let after_bound = || {
            sampled
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.path.starts_with("frontend") && s.at >= t0 + bound)
                .count()
        };
        let deadline = Instant::now() + REFUSED_SAMPLES_DEADLINE;
        while after_bound() < MIN_REFUSED_AFTER_BOUND && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cx_after = t.connections_per_worker(Sidecar::Client, port, workers);
    let t_lift = Instant::now();
    let lifted = match &id {
        Ok(id) => t.lift_revocation(id).await,
        Err(_) => Ok(()),
    };
    // Lifting restores service on both paths (a new exchange: the entries were dropped).
    let restored = async {
        lifted?;
        eventually("frontend is served again after the lift", bound, || async {
            let a = t.via_client_mode_fresh("/orders", &front).await?;
            let b = t
                .via_server_mode("frontend", "/orders", Some(&front))
                .await?;
            Ok(a.status == 200 && b.status == 200)
        })
        .await
    }
    .await;
    let restored_in = t_lift.elapsed();
    stop.store(true, Ordering::SeqCst);
    traffic.await?;
    let samples = std::mem::take(&mut *sampled.lock().unwrap());
    let id = id?;
    restored?;

    // Other subjects: zero failures, before, during and after.
    let others: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.path.starts_with("reporting"))
        .collect();
    if let Some(bad) = others.iter().find(|s| !passed(s)) {
        anyhow::bail!("reporting failed while frontend was revoked: {}", show(bad));
    }
    // The revoked subject: before the revocation served; from t0 + bound until the
    // lift, refused on every request, on both sidecars, by the filter.
    let front_samples: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.path.starts_with("frontend"))
        .collect();
    if let Some(bad) = front_samples.iter().find(|s| s.at < t0 && !passed(s)) {
        anyhow::bail!("frontend failed before the revocation: {}", show(bad));
    }
    let window: Vec<&&Sample> = front_samples
        .iter()
        .filter(|s| s.at >= t0 + bound && s.at < t_lift)
        .collect();
    ensure!(
        window.len() >= MIN_REFUSED_AFTER_BOUND,
        "only {} frontend requests between the bound and the lift ({:.1?} after the bound)",
        window.len(),
        t_lift.saturating_duration_since(t0 + bound)
    );
    for s in &window {
        let refused = matches!(&s.reply, Ok(r) if is_revocation_refusal(r, REASON));
        ensure!(
            refused,
            "{:.1?} after the revocation ({id}), not refused by the filter: {}",
            s.at - t0,
            show(s)
        );
    }
    let last_pass = front_samples
        .iter()
        .filter(|s| s.at >= t0 && s.at < t_lift && passed(s))
        .map(|s| s.at - t0)
        .max();
    let first_refusal = front_samples
        .iter()
        .filter(|s| s.at >= t0 && !passed(s))
        .map(|s| s.at - t0)
        .min();
    // The filters refused them (the service refuses a revoked subject too, with the
    // same words): their own counter covers every refusal in the window.
    let want = denied_before + window.len() as u64;
    eventually(
        "the filters counted the refusals",
        Duration::from_secs(3),
        || async { Ok(denied() >= want) },
    )
    .await?;
    // Both workers of the client sidecar accepted connections while it was revoked.
    let spread: Vec<u64> = cx_after
        .iter()
        .zip(&cx_before)
        .map(|(a, b)| a - b)
        .collect();
    ensure!(
        spread.iter().all(|n| *n > 0),
        "revoked window: new connections per client-sidecar worker {spread:?}"
    );
    common::note(format!(
        "    revocation: last frontend request served {last_pass:?} after POST, first refused {first_refusal:?} \
         (bound {bound:?}); {} refused after the bound over workers {spread:?}; {} reporting requests, 0 failed; \
         served again {restored_in:.1?} after the lift",
        window.len(),
        others.len()
    ));
    Ok(())
}

pub(super) async fn revocation_feed_down_keeps_the_last_set_raises_staleness_and_catches_up_with_a_delta(
    f: &Faults,
) -> Result<()> {
    let t = &*f.topo;
    const REASON: &str = "feed outage drill (e2e)";
    let poll = Duration::from_millis(t.options.revocation_poll_ms);
    let bound = poll + Duration::from_secs(1) + REVOCATION_SLACK;
    let rep = t.mint("reporting")?;
    let r = t
        .via_server_mode("reporting", "/orders", Some(&rep))
        .await?;
    ensure!(r.status == 200, "priming reporting: {r}");
    let front = t.mint("frontend")?;
    let id = t.revoke_subject("frontend", REASON).await?;
    let result = feed_down_scenario(f, &id, REASON, &rep, &front, bound).await;
    if result.is_err() {
        // Never leave frontend revoked for the scenarios that follow.
        let mut exchange = t.exchange.lock().await;
        if !exchange.is_running() {
            blocking(|| exchange.start_again());
        }
        drop(exchange);
        let _ = t.lift_revocation(&id).await;
    }
    result
}

async fn feed_down_scenario(
    f: &Faults,
    id: &str,
    reason: &str,
    rep: &str,
    front: &str,
    bound: Duration,
) -> Result<()> {
    let t = &*f.topo;
    let metric = |s, m| t.filter_metric(s, m);
    let sidecars = [Sidecar::Client, Sidecar::Server];
    let version = |s| metric(s, "meshpass_revocation_version");
    let refused = |r: &Reply| is_revocation_refusal(r, reason);
    // Both filters hold the new set: they reached the service's version, which counts
    // this revocation (an earlier scenario's lift still on its way would not do; the
    // service refuses a revoked subject too, so a 403 alone would not tell).
    let target = t.service_revocation_version().await?;
    eventually(
        "both filters load the new revocation set",
        bound,
        || async { Ok(sidecars.into_iter().all(|s| version(s) >= target)) },
    )
    .await?;
    let before: Vec<(u64, u64)> = sidecars
        .into_iter()
        .map(|s| {
            (
                metric(s, "meshpass_revocation_snapshots"),
                metric(s, "meshpass_revocation_deltas"),
            )
        })
        .collect();

    {
        let mut exchange = t.exchange.lock().await;
        blocking(|| exchange.stop());
    }
    let outcome = async {
        eventually(
            "the staleness gauge rises with the feed down",
            Duration::from_secs(15),
            || async {
                Ok([Sidecar::Client, Sidecar::Server]
                    .into_iter()
                    .all(|s| metric(s, "meshpass_revocation_staleness_seconds") >= 3))
            },
        )
        .await?;
        // The last set is kept: still refused; reporting's cached token still served.
        let a = t.via_client_mode_fresh("/orders", front).await?;
        ensure!(refused(&a), "CLIENT mode, feed down: {a}");
        let b = t
            .via_server_mode("frontend", "/orders", Some(front))
            .await?;
        ensure!(refused(&b), "SERVER mode, feed down: {b}");
        let c = t.via_server_mode("reporting", "/orders", Some(rep)).await?;
        ensure!(c.status == 200, "reporting's cached token, feed down: {c}");
        Ok(())
    }
    .await;
    {
        let mut exchange = t.exchange.lock().await;
        blocking(|| exchange.start_again());
    }
    outcome?;
    // Back: lift; the filters catch up from their version with a delta.
    t.lift_revocation(id).await?;
    eventually(
        "frontend is served again after the feed is back and the lift",
        bound + Duration::from_secs(5),
        || async {
            let a = t.via_client_mode_fresh("/orders", front).await?;
            let b = t
                .via_server_mode("frontend", "/orders", Some(front))
                .await?;
            Ok(a.status == 200 && b.status == 200)
        },
    )
    .await?;
    eventually(
        "the catch-up is counted",
        Duration::from_secs(3),
        || async {
            Ok([Sidecar::Client, Sidecar::Server]
                .into_iter()
                .zip(&before)
                .all(|(s, (_, d))| metric(s, "meshpass_revocation_deltas") > *d))
        },
    )
    .await?;
    for (s, (snaps, _)) in [Sidecar::Client, Sidecar::Server].into_iter().zip(&before) {
        let now = metric(s, "meshpass_revocation_snapshots");
        ensure!(
            now == *snaps,
            "{s:?}: {snaps} -> {now} snapshots: the catch-up was not a delta"
        );
        let stale = metric(s, "meshpass_revocation_staleness_seconds");
        ensure!(
            stale <= 2,
            "{s:?}: still {stale} s stale after the feed came back"
        );
    }
    Ok(())
}

//! The batch loop of [`super::TransitSigner`]: coalesces concurrent signatures into
//! `batch_input` requests.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Inner, SignJob};

/// Collects sign jobs into batches: a job goes out at once while fewer than
/// `batch_pipeline_depth` requests are in flight (so alone when the service is idle);
/// otherwise it waits for company (at most `batch_max_size`) until a request in flight
/// finishes or `batch_max_wait` has passed, whichever comes first. So batches follow
/// Vault's own pace (each one collects what arrived during a round trip) and the
/// window only bounds the wait when Vault is slow.
///
/// With the default depth of 1, a busy service sends one request per round trip holding
/// everything that arrived during it. A depth of 2 kept a second slot open, which under
/// load a lone signature took at once after every answer: at 32 connections about a
/// third of the requests carried one signature, each paying Vault's fixed cost per
/// request (≈ 230 µs of OpenBao CPU against ≈ 62 µs per signature in a full batch).
pub(super) async fn batch_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<SignJob>) {
    let max = inner.cfg.batch_max_size;
    let wait = inner.cfg.batch_max_wait;
    let depth = inner.cfg.batch_pipeline_depth;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if jobs.len() < max && !wait.is_zero() {
            // Registered before in_flight is read, so a request finishing in between
            // still wakes us.
            let done = inner.request_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if inner.in_flight.load(Ordering::Relaxed) >= depth {
                let deadline = tokio::time::sleep(wait);
                tokio::pin!(deadline);
                while jobs.len() < max {
                    tokio::select! {
                        j = rx.recv() => match j {
                            Some(j) => jobs.push(j),
                            None => break,
                        },
                        _ = &mut done => break,
                        _ = &mut deadline => break,
                    }
                }
                // What queued while we were woken joins too (no await in between).
                while jobs.len() < max {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
            }
        }
        // Usually one version; group in case a rotation landed mid-batch.
        let mut groups: BTreeMap<u64, Vec<SignJob>> = BTreeMap::new();
        for j in jobs {
            groups.entry(j.version).or_default().push(j);
        }
        for (version, group) in groups {
            let Ok(permit) = inner.permits.clone().acquire_owned().await else {
                return;
            };
            inner.in_flight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(inner.clone().dispatch(version, group, permit));
        }
    }
}

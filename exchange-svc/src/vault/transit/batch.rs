//! The batch loop of [`super::TransitSigner`]: coalesces concurrent signatures into
//! `batch_input` requests.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Inner, SignJob};

/// Collects sign jobs into batches. A job goes out at once while nothing is in flight
/// (so alone when the service is idle). While fewer than `batch_pipeline_depth`
/// requests are in flight, it waits until `batch_pipeline_min_size` jobs are waiting,
/// then they go out together beside the one in flight; at the depth, it waits for
/// company up to `batch_max_size`. Either wait ends when a request in flight returns or
/// `batch_max_wait` has passed. So batches follow Vault's own pace (each one collects
/// what arrived during a round trip) and the window only bounds the wait when Vault is
/// slow.
///
/// Why a minimum for the second slot: a depth of 2 that let any job take it sent, at 32
/// connections, a third of the requests with one signature each, each paying Vault's
/// fixed cost per request (≈ 230 µs of OpenBao CPU against ≈ 62 µs per signature in a
/// full batch). A depth of 1 avoids that but leaves Vault idle while the service
/// verifies the next tokens and the service idle while Vault signs: about a fifth of
/// two cores at 32 connections. Further slots opened only for 16 waiting signatures
/// kept both busier: +14 % true-cold exchanges/s at 32 with a depth of 2; a depth of 3
/// with a minimum of 12 (the defaults) added about 6 % more: batches shrink (10.8 → 8.9
/// signatures) but OpenBao's CPU per signature hardly moves, while it stops waiting for
/// the one request in flight (see bench/notes.md).
pub(super) async fn batch_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<SignJob>) {
    let max = inner.cfg.batch_max_size;
    let wait = inner.cfg.batch_max_wait;
    let depth = inner.cfg.batch_pipeline_depth;
    let min_extra = inner.cfg.batch_pipeline_min_size.min(max);
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
            let busy = inner.in_flight.load(Ordering::Relaxed);
            let enough = match busy {
                0 => 1,
                b if b < depth => min_extra,
                _ => max,
            };
            if jobs.len() < enough {
                let deadline = tokio::time::sleep(wait);
                tokio::pin!(deadline);
                while jobs.len() < enough {
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

//! The root tick: each step is one responsibility's housekeeping, in this order.

use crate::api::{CallResponse, Host, Level};
use crate::cache::{self, Entry};
use crate::jwks::JWKS_TIMEOUT_MS;
use crate::worker::{Call, Worker};

/// How long past its timeout a call counts as never answered.
pub(crate) const LOST_CALL_SLACK_MS: u64 = 2000;

impl Worker {
    /// Root tick: calls never answered, JWKS refresh (one worker wins the lease by CAS), the revocation set
    /// (reload, gauges, poll: one worker wins its lease), parked unknown-kid
    /// requests, background token refreshes, stuck in-flight cleanup, waits on other
    /// workers, swept markers and heartbeat, expired-entry deletion, slots above this
    /// configuration's count (`slots`), memo sweep, metrics flush.
    pub fn on_tick(&mut self, host: &mut dyn Host) {
        let now = host.now_ms();
        self.coarse_now_ms = now;
        self.expire_lost_calls(host, now);
        self.fetch_due_keys(host, now, false);
        self.revocation_tick(host, now);
        self.retry_parked(host, now);
        self.start_refreshes(host, now);
        self.forget_refresh_backoffs(now);
        self.expire_stuck(host, now);
        // Waits on other workers' exchanges whose notification has not (yet) come.
        let waiting: Vec<String> = self.remote.keys().cloned().collect();
        for k in waiting {
            self.resolve_remote(host, &k, now);
        }
        self.sweep_markers(host, now);
        self.delete_expired(host, now);
        self.old_slots_tick(host, now);
        self.memo.sweep(now);
        self.flush_metrics(host);
    }

    /// Calls whose answer never came (Envoy answers every call by its timeout; a
    /// dropped callback or a VM torn down under it must not stop this worker fetching
    /// keys or polling the feed for good): past their timeout and some slack they are
    /// answered as a timeout, which counts as a failure with its backoff and warning.
    /// An exchange's waiters are answered by `expire_stuck`; its entry only goes.
    fn expire_lost_calls(&mut self, host: &mut dyn Host, now: u64) {
        let timeout = self.config.exchange.timeout_ms;
        let lost: Vec<(u32, bool)> = self
            .calls
            .iter()
            .filter_map(|(t, c)| {
                let (sent, limit, answer) = match c {
                    Call::Jwks { sent_ms, .. } => (*sent_ms, JWKS_TIMEOUT_MS, true),
                    Call::Revocations { sent_ms, .. } => (*sent_ms, timeout, true),
                    Call::Refresh { started_ms, .. } => (*started_ms, timeout, true),
                    Call::Exchange { started_ms, .. } => (*started_ms, timeout, false),
                };
                (now.saturating_sub(sent) > limit + LOST_CALL_SLACK_MS).then_some((*t, answer))
            })
            .collect();
        for (t, answer) in lost {
            if answer {
                host.log(
                    Level::Warn,
                    "meshpass: a call was never answered; counted as a timeout",
                );
                self.on_call_response(host, t, CallResponse::default());
            } else {
                self.calls.remove(&t);
            }
        }
    }

    /// Expired entries this worker wrote: empty their slots (shared data has no TTL).
    /// A slot another key (or a refresh) took meanwhile is checked again when that
    /// entry ends: an ended entry is dead whoever wrote it.
    fn delete_expired(&mut self, host: &mut dyn Host, now: u64) {
        let due: Vec<u64> = self
            .written
            .iter()
            .filter(|(_, exp)| **exp <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            self.written.remove(&n);
            let slot = cache::slot_key(n);
            if let Some((bytes, cas)) = host.shared_get(&slot) {
                match Entry::decode(&bytes) {
                    Some(e) if e.expires_ms > now => {
                        self.written.insert(n, e.expires_ms);
                    }
                    _ => {
                        // Emptied (shared data keeps the key; the slot is reused).
                        let _ = host.shared_set(&slot, None, Some(cas));
                    }
                }
            }
        }
    }
}

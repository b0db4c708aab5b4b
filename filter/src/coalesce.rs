//! Cross-worker coalescing: one exchange per cache key across all workers, waiters in
//! other workers resumed through proxy-wasm shared queues (README "Shared data and
//! workers").

use crate::api::{Counter, Host, Level, SharedError, CREATE_CAS};
use crate::cache::{self, Entry, Marker, MARKER_IDLE};
use crate::config::FailureMode;
use crate::exchange::DISPATCH_KICK;
use crate::outcome::Outcome;
use crate::revoke::REVOCATIONS_KICK;
use crate::worker::{RemoteWait, Waiter, Worker};

/// Shared-data counter handing out worker numbers (queue names).
const WORKERS_KEY: &str = "meshpass/workers";
/// Shared-data listing of the workers' notification queues: `name|heartbeat_ms` lines.
const QUEUES_KEY: &str = "meshpass/queues";
/// How often a worker refreshes its heartbeat in the listing.
const HEARTBEAT_MS: u64 = 10_000;

impl Worker {
    // ------------------------------------------------------------ cross-worker coalescing
    //
    // A worker that starts an exchange claims `meshpass/f/<hex>` by CAS with an
    // in-flight marker (owner + deadline). Other workers' requests for that key pause
    // (no validation: like a cache hit, they are bound on the result) and are resumed
    // when the owner publishes the outcome in the marker and enqueues the cache key on
    // every other worker's shared queue (listed in `meshpass/queues`). The tick is the
    // safety net: it re-reads the marker of every remote wait, so a lost notification
    // costs at most one tick, and a marker whose deadline passed without an outcome
    // answers 503 (fail closed; `failure_mode: allow` rules fail open as for any outage).

    /// Root-context start, after configuration: takes a worker number, registers this
    /// worker's notification queue and lists it in shared data.
    pub fn start(&mut self, host: &mut dyn Host) {
        if self.config.noop {
            return;
        }
        // Remote key sets: the first fetch goes out now, not on the first tick.
        let now = host.now_ms();
        self.fetch_due_keys(host, now, true);
        if self.config.validate_only {
            return;
        }
        // A configuration reload finds the set the previous workers left.
        if let Some(rc) = self.config.revocation.clone() {
            self.reload_revocations(host, &rc, now);
        }
        // Before any entry is written: a reload to fewer slots must find this count.
        self.old_slots_tick(host, now);
        let mut n = None;
        for _ in 0..16 {
            let (cur, cas) = match host.shared_get(WORKERS_KEY) {
                Some((v, cas)) => (
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                    cas,
                ),
                None => (0, CREATE_CAS),
            };
            let next = cur.saturating_add(1).to_string();
            match host.shared_set(WORKERS_KEY, Some(next.as_bytes()), Some(cas)) {
                Ok(()) => {
                    n = Some(next);
                    break;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => break,
            }
        }
        let Some(n) = n else {
            host.log(
                Level::Warn,
                "meshpass: no worker number; concurrent misses are coalesced per worker only",
            );
            return;
        };
        // The number is only a hint: two workers that both find the counter absent
        // both "create" it. A per-start nonce makes the name unique regardless.
        let name = format!("meshpass/q/{n}.{:016x}", start_nonce(host.now_ms()));
        self.queue_listed = host.register_queue(&name);
        if !self.queue_listed {
            host.log(
                Level::Warn,
                "meshpass: cannot register a shared queue; waits on other workers end on the tick",
            );
        }
        self.name = Some(name);
        let now = host.now_ms();
        self.heartbeat(host, now);
    }

    pub(crate) fn owner(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// Listing entries older than this belong to workers that are gone (config reload).
    pub(crate) fn queue_stale_ms(&self) -> u64 {
        (3 * self.config.tick_ms).max(6 * HEARTBEAT_MS)
    }

    /// Puts (or refreshes) this worker's queue in the listing, dropping stale ones.
    pub(crate) fn heartbeat(&mut self, host: &mut dyn Host, now: u64) {
        let Some(name) = self.name.clone().filter(|_| self.queue_listed) else {
            return;
        };
        let stale = self.queue_stale_ms();
        for _ in 0..8 {
            let (listing, cas) = match host.shared_get(QUEUES_KEY) {
                Some((v, cas)) => (v, cas),
                None => (Vec::new(), CREATE_CAS),
            };
            let mut out = String::new();
            for (n, hb) in parse_listing(&listing) {
                if n != name && hb.saturating_add(stale) > now {
                    out.push_str(&format!("{n}|{hb}\n"));
                }
            }
            out.push_str(&format!("{name}|{now}"));
            match host.shared_set(QUEUES_KEY, Some(out.as_bytes()), Some(cas)) {
                Ok(()) => {
                    self.last_heartbeat_ms = now;
                    return;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return,
            }
        }
    }

    /// The deadline of another worker's exchange of `key`, if one is in flight.
    pub(crate) fn other_in_flight(&self, host: &dyn Host, key: &str, now: u64) -> Option<u64> {
        let (v, _) = host.shared_get(&cache::marker_key(key, self.config.cache_slots))?;
        match Marker::decode(&v) {
            Marker::InFlight {
                deadline_ms,
                owner,
                id,
            } if deadline_ms > now && owner != self.owner() && id == cache::id(key) => {
                Some(deadline_ms)
            }
            _ => None,
        }
    }

    /// Claims the exchange of `key` for this worker (CAS on its marker). False when
    /// another worker's exchange is in flight; true also when the marker cannot be
    /// written (coalescing across workers saves exchanges, it never gates one).
    pub(crate) fn claim(&mut self, host: &mut dyn Host, key: &str, now: u64) -> bool {
        let mk = cache::marker_key(key, self.config.cache_slots);
        let mine = Marker::InFlight {
            deadline_ms: now + self.inflight_span_ms(),
            owner: self.owner().to_string(),
            id: cache::id(key).to_string(),
        }
        .encode();
        for _ in 0..4 {
            let cas = match host.shared_get(&mk) {
                Some((v, cas)) => {
                    match Marker::decode(&v) {
                        // Another key's live exchange (this worker's too) or its outcome
                        // its waiters may not have read yet: exchange without
                        // cross-worker coalescing, never over it.
                        Marker::InFlight {
                            deadline_ms: t, id, ..
                        }
                        | Marker::Done {
                            until_ms: t, id, ..
                        } if t > now && id != cache::id(key) => return true,
                        // The same key in another worker: wait for it.
                        Marker::InFlight {
                            deadline_ms, owner, ..
                        } if deadline_ms > now && owner != self.owner() => return false,
                        _ => {}
                    }
                    cas
                }
                None => CREATE_CAS,
            };
            match host.shared_set(&mk, Some(&mine), Some(cas)) {
                Ok(()) => return true,
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return true,
            }
        }
        true
    }

    pub(crate) fn wait_remote(
        &mut self,
        key: String,
        w: Waiter,
        failure_mode: FailureMode,
        now: u64,
    ) {
        let give_up_ms = now + 2 * self.inflight_span_ms();
        self.remote
            .entry(key)
            .or_insert_with(|| RemoteWait {
                waiters: Vec::new(),
                give_up_ms,
                failure_mode,
            })
            .waiters
            .push(w);
        self.bump(Counter::Coalesced);
        self.bump(Counter::CoalescedRemote);
    }

    /// Publishes the outcome of this worker's exchange of `key` in its marker and tells
    /// every other listed worker (message: the cache key).
    pub(crate) fn publish(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        outcome: &Outcome,
        subject: &str,
        now: u64,
    ) {
        let mk = cache::marker_key(key, self.config.cache_slots);
        // Readable for two ticks, so a worker that missed the notification still reads it.
        let until_ms = now + 2 * self.config.tick_ms + 1000;
        let m = Marker::Done {
            id: cache::id(key).to_string(),
            until_ms,
            subject: subject.to_string(),
            outcome: outcome.clone(),
        }
        .encode();
        // By CAS on the record just read: another worker can claim the slot for another
        // key between the read and the write, and that claim's waiters need it. Never
        // over another key's live exchange or unread outcome (nobody waits on ours in
        // this slot then: our claim, if any, had ended before that key could take it).
        for _ in 0..4 {
            let cas = match host.shared_get(&mk) {
                Some((v, cas)) => {
                    if matches!(Marker::decode(&v), Marker::InFlight { deadline_ms: t, id, .. }
                        | Marker::Done { until_ms: t, id, .. } if t > now && id != cache::id(key))
                    {
                        break;
                    }
                    cas
                }
                None => CREATE_CAS,
            };
            match host.shared_set(&mk, Some(&m), Some(cas)) {
                Ok(()) => {
                    self.markers.push((until_ms, mk));
                    break;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => break,
            }
        }
        // Notified even when not written: a waiter then serves the entry or fails closed
        // on its re-read (`resolve_remote`).
        let Some((listing, _)) = host.shared_get(QUEUES_KEY) else {
            return;
        };
        let stale = self.queue_stale_ms();
        let me = self.queue_name().unwrap_or("");
        for (name, hb) in parse_listing(&listing) {
            if name != me && hb.saturating_add(stale) > now {
                host.enqueue(name, key.as_bytes());
            }
        }
    }

    /// The live notification queues of the other workers.
    pub(crate) fn other_queues(&self, host: &dyn Host, now: u64) -> Vec<String> {
        let Some((listing, _)) = host.shared_get(QUEUES_KEY) else {
            return Vec::new();
        };
        let stale = self.queue_stale_ms();
        let me = self.queue_name().unwrap_or("");
        parse_listing(&listing)
            .into_iter()
            .filter(|(name, hb)| *name != me && hb.saturating_add(stale) > now)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// A message on this worker's queue: another worker finished the exchange of the
    /// cache key it names.
    pub fn on_notify(&mut self, host: &mut dyn Host, msg: &[u8]) {
        if msg == DISPATCH_KICK {
            self.dispatch_pending(host);
            return;
        }
        if msg == REVOCATIONS_KICK {
            if let Some(rc) = self.config.revocation.clone() {
                let now = host.now_ms();
                self.reload_revocations(host, &rc, now);
            }
            return;
        }
        let Ok(key) = std::str::from_utf8(msg) else {
            return;
        };
        if self.remote.contains_key(key) {
            let now = host.now_ms();
            self.resolve_remote(host, key, now);
        }
    }

    /// Answers the requests waiting on another worker's exchange of `key` once its
    /// marker holds an outcome (or its deadline passed); otherwise keeps them waiting.
    pub(crate) fn resolve_remote(&mut self, host: &mut dyn Host, key: &str, now: u64) {
        let Some(give_up_ms) = self.remote.get(key).map(|r| r.give_up_ms) else {
            return;
        };
        let marker = host
            .shared_get(&cache::marker_key(key, self.config.cache_slots))
            .map(|(v, _)| Marker::decode(&v));
        let mine = |id: &str| id == cache::id(key);
        let (outcome, subject) = match marker {
            Some(Marker::Done {
                id,
                subject,
                outcome,
                ..
            }) if mine(&id) => (outcome, subject),
            Some(Marker::InFlight {
                deadline_ms, id, ..
            }) if mine(&id) && deadline_ms > now && now < give_up_ms => return,
            other => {
                // No outcome of ours (the owner died or timed out, the record was swept,
                // or another key took the slot): serve the entry if one is there, else
                // wait while the give-up time allows a foreign record, else fail closed.
                let foreign = match &other {
                    Some(Marker::InFlight { id, .. } | Marker::Done { id, .. }) => !mine(id),
                    _ => false,
                };
                let slot = cache::entry_key(key, self.config.cache_slots);
                let entry = host.shared_get(&slot);
                match entry.as_ref().and_then(|(b, _)| Entry::decode_for(b, key)) {
                    Some(e) if e.expires_ms > now => {
                        (Outcome::Token(e.token.to_string()), e.subject.to_string())
                    }
                    _ if foreign && now < give_up_ms => return,
                    _ => (
                        Outcome::Unavailable(self.config.retry_after_secs),
                        String::new(),
                    ),
                }
            }
        };
        let Some(r) = self.remote.remove(key) else {
            return;
        };
        for w in &r.waiters {
            if host.set_effective_context(w.ctx) {
                self.apply(host, w, &outcome, &subject, r.failure_mode);
            }
        }
    }

    /// Outcome records this worker published: back to idle once read by everyone.
    pub(crate) fn sweep_markers(&mut self, host: &mut dyn Host, now: u64) {
        for (until, mk) in std::mem::take(&mut self.markers) {
            if until > now {
                self.markers.push((until, mk));
                continue;
            }
            if let Some((v, cas)) = host.shared_get(&mk) {
                // Only our own record: a newer claim or outcome stays.
                if matches!(Marker::decode(&v), Marker::Done { until_ms, .. } if until_ms == until)
                {
                    let _ = host.shared_set(&mk, Some(MARKER_IDLE), Some(cas));
                }
            }
        }
        if self.queue_listed && now.saturating_sub(self.last_heartbeat_ms) >= HEARTBEAT_MS {
            self.heartbeat(host, now);
        }
    }
}

/// `name|heartbeat_ms` lines of the queue listing.
fn parse_listing(bytes: &[u8]) -> Vec<(&str, u64)> {
    std::str::from_utf8(bytes)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (n, hb) = l.rsplit_once('|')?;
            Some((n, hb.parse().ok()?))
        })
        .collect()
}

/// A value no other worker's start draws: std's per-process random hash keys (WASI
/// `random_get`) over the clock.
fn start_nonce(now_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms);
    h.finish()
}

//! The exchange call: the RFC 8693 form, dispatch, and what its answer does (cache
//! entry, waiters resumed, outcome published to other workers).

use meshpass_core::oauth::{TokenExchangeRequest, TokenExchangeResponse};

use crate::api::{CallResponse, Counter, Host, Level};
use crate::cache::{self, Entry};
use crate::config::Target;
use crate::outcome::{self, Outcome};
use crate::worker::{Call, PendingExchange, WarnKind, Worker, WARN_EVERY_MS};

/// Largest exchange answer read.
pub const MAX_EXCHANGE_BODY: usize = 64 * 1024;

/// The message a worker puts on its own queue to run [`Worker::dispatch_pending`] in
/// the root context (a cache key never looks like this).
pub const DISPATCH_KICK: &[u8] = b"!dispatch";

impl Worker {
    /// Starts the exchange of a validated miss. An HTTP call belongs to the context
    /// that makes it, and Envoy cancels a stream's calls when the stream ends: so the
    /// call is made from the root context, reached through this worker's own queue
    /// (one event-loop turn later). Without a queue it is made here (the answer is then
    /// lost if the client goes away, and the waiters get 503 at the in-flight deadline).
    pub(crate) fn start_exchange(&mut self, host: &mut dyn Host, p: PendingExchange, now: u64) {
        if let Some(q) = self.queue_name().map(str::to_string) {
            let first = self.to_dispatch.is_empty();
            self.to_dispatch.push(p);
            if !first || host.enqueue(&q, DISPATCH_KICK) {
                return;
            }
            // The kick did not go out: dispatch what waits now, from here.
            self.dispatch_pending(host);
            return;
        }
        self.dispatch_one(host, p, now);
    }

    /// Root context (queue kick): dispatches every exchange waiting for it.
    pub fn dispatch_pending(&mut self, host: &mut dyn Host) {
        let now = host.now_ms();
        for p in std::mem::take(&mut self.to_dispatch) {
            self.dispatch_one(host, p, now);
        }
    }

    fn dispatch_one(&mut self, host: &mut dyn Host, p: PendingExchange, now: u64) {
        match self.send_exchange(host, &p.body, p.traceparent.as_deref()) {
            Ok(call) => {
                self.bump(Counter::ExchangeCalls);
                self.calls.insert(
                    call,
                    Call::Exchange {
                        key: p.key,
                        subject: p.subject,
                        subject_exp: p.subject_exp,
                        started_ms: now,
                        failure_mode: p.failure_mode,
                        memo: p.memo,
                    },
                );
            }
            Err(e) => {
                let msg = format!("meshpass: exchange dispatch failed: {e}");
                self.warn_limited(host, WarnKind::ExchangeDispatch, now, &msg);
                let outcome = Outcome::Unavailable(self.config.retry_after_secs);
                self.publish(host, &p.key, &outcome, &p.subject, now);
                if let Some(f) = self.inflight.remove(&p.key) {
                    for w in &f.waiters {
                        if host.set_effective_context(w.ctx) {
                            self.apply(host, w, &outcome, &f.subject, f.failure_mode);
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn send_exchange(
        &self,
        host: &mut dyn Host,
        body: &str,
        traceparent: Option<&str>,
    ) -> Result<u32, String> {
        let ex = &self.config.exchange;
        let len = body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &ex.path),
            (":authority", &ex.authority),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", &len),
            ("accept", "application/json"),
        ];
        if let Some(tp) = traceparent {
            headers.push(("traceparent", tp));
        }
        host.dispatch(&ex.cluster, &headers, body.as_bytes(), ex.timeout_ms)
    }

    /// An answer to a dispatched call (exchange, refresh, JWKS or revocation feed).
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, resp: CallResponse) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let now = host.now_ms();
        match call {
            Call::Exchange {
                key,
                subject,
                subject_exp,
                started_ms,
                failure_mode,
                memo,
            } => {
                host.record_latency_ms(now.saturating_sub(started_ms));
                let outcome = self.classify(&resp);
                if matches!(outcome, Outcome::Unavailable(_) | Outcome::Faulty(_)) {
                    let what = match resp.status {
                        Some(s) => format!("status {s}"),
                        None => "no answer: timeout or connection failure".to_string(),
                    };
                    let msg = format!("meshpass: exchange failed ({what}); requests get 503 (or pass without a token under failure_mode allow)");
                    self.warn_limited(host, WarnKind::ExchangeFailed, now, &msg);
                }
                if let Outcome::Token(t) = &outcome {
                    if let Stored::Refused { refresh_ms } = self.store(
                        host,
                        &key,
                        t,
                        &resp,
                        &subject,
                        subject_exp,
                        issued(started_ms),
                    ) {
                        // Another key's longer-lived entry keeps the slot: serve this
                        // token from the memo until its refresh time, not by a new
                        // exchange on every request. Unless it was revoked while the
                        // exchange was out: the memo never holds a revoked entry (its
                        // hits are not checked, and the set's sweep has run already).
                        // Nor one validated under keys since cut (its key epoch moved).
                        if self.revoked_reason(&subject, t).is_none()
                            && memo.epoch == self.key_epoch
                        {
                            let (token, actor) = (&memo.token, memo.actor.as_deref());
                            self.memo.insert(
                                token,
                                &memo.digest,
                                actor,
                                refresh_ms,
                                now,
                                &subject,
                                t,
                            );
                        }
                    }
                }
                self.publish(host, &key, &outcome, &subject, now);
                let Some(f) = self.inflight.remove(&key) else {
                    return;
                };
                for w in &f.waiters {
                    if host.set_effective_context(w.ctx) {
                        self.apply(host, w, &outcome, &subject, failure_mode);
                    }
                }
            }
            Call::Refresh {
                key,
                subject,
                subject_exp,
                started_ms,
            } => {
                host.record_latency_ms(now.saturating_sub(started_ms));
                match self.classify(&resp) {
                    Outcome::Token(t) => {
                        // A refused refresh leaves the slot to the other key; the next
                        // request misses and is memoised then. One that cannot be
                        // cached backs off, as a failure does (not again every tick).
                        match self.store(
                            host,
                            &key,
                            &t,
                            &resp,
                            &subject,
                            subject_exp,
                            issued(started_ms),
                        ) {
                            Stored::NotCached => self.refresh_failed(&key, 0, now),
                            _ => self.refresh_done(&key),
                        }
                    }
                    // The service no longer grants it (a mapping deleted, a subject it
                    // now refuses): the cached token ends here, and the next request
                    // exchanges again and gets the refusal.
                    refused @ (Outcome::Forbidden(_) | Outcome::InvalidGrant(_)) => {
                        self.refresh_done(&key);
                        self.drop_entry(host, &key);
                        host.log(
                            Level::Info,
                            &format!("meshpass: background refresh refused ({refused:?}); cached token dropped"),
                        );
                    }
                    other => {
                        let retry_after = match other {
                            Outcome::RateLimited(s)
                            | Outcome::Unavailable(s)
                            | Outcome::Faulty(s) => s,
                            _ => 0,
                        };
                        self.refresh_failed(&key, retry_after, now);
                        let msg = format!("meshpass: background refresh failed ({other:?}); cached token kept until expiry");
                        self.warn_limited(host, WarnKind::RefreshFailed, now, &msg);
                    }
                }
            }
            Call::Jwks { issuer, sent_ms } => self.on_jwks(host, &issuer, sent_ms, resp, now),
            Call::Revocations { since, .. } => self.on_feed(host, since, resp, now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        token: &str,
        resp: &CallResponse,
        subject: &str,
        subject_exp: u64,
        now: u64,
    ) -> Stored {
        let expires_in = serde_json::from_slice::<TokenExchangeResponse>(&resp.body)
            .map(|r| r.expires_in)
            .unwrap_or(0);
        let Some((expires_ms, refresh_ms)) = cache::lifetimes(
            now,
            expires_in,
            subject_exp,
            self.config.expiry_margin_ms,
            self.config.refresh_ahead_percent,
        ) else {
            return Stored::NotCached;
        };
        // A memo hit is checked against a clock up to one tick old, and a refresh is
        // dispatched on a tick: both must be done a tick before the entry ends, or a
        // long `tick_ms` would serve an answer past the subject token's expiry.
        let refresh_ms = refresh_ms.min(expires_ms.saturating_sub(self.config.tick_ms));
        let e = Entry {
            id: cache::id(key),
            expires_ms,
            refresh_ms,
            subject_exp,
            subject,
            token,
        };
        let n = cache::slot(key, self.config.cache_slots);
        let slot = cache::slot_key(n);
        // A slot keeps the entry that lives longer (eviction by expiry).
        if let Some((old, _)) = host.shared_get(&slot) {
            if let Some(o) = Entry::decode(&old) {
                if o.id != e.id && o.expires_ms > now && o.expires_ms > e.expires_ms {
                    return Stored::Refused { refresh_ms };
                }
            }
        }
        if host.shared_set(&slot, Some(&e.encode()), None).is_err() {
            return Stored::Refused { refresh_ms };
        }
        // One record per slot, however many keys passed through it.
        self.written.insert(n, expires_ms);
        Stored::Shared
    }

    /// Empties `key`'s shared-data slot when it still holds `key`'s entry (CAS: a slot
    /// another key took meanwhile is left alone).
    pub(crate) fn drop_entry(&self, host: &mut dyn Host, key: &str) {
        let slot = cache::entry_key(key, self.config.cache_slots);
        if let Some((bytes, cas)) = host.shared_get(&slot) {
            if Entry::decode_for(&bytes, key).is_some() {
                let _ = host.shared_set(&slot, None, Some(cas));
            }
        }
    }

    /// Tick step: background refreshes, dispatched from the root so they outlive any
    /// stream.
    pub(crate) fn start_refreshes(&mut self, host: &mut dyn Host, now: u64) {
        for p in std::mem::take(&mut self.refreshes) {
            let body = exchange_form(&p.token, &p.target, p.actor);
            match self.send_exchange(host, &body, None) {
                Ok(t) => {
                    self.bump(Counter::CacheRefresh);
                    self.bump(Counter::ExchangeCalls);
                    self.calls.insert(
                        t,
                        Call::Refresh {
                            key: p.key,
                            subject: p.subject,
                            subject_exp: p.subject_exp,
                            started_ms: now,
                        },
                    );
                }
                Err(_) => {
                    self.refresh_failed(&p.key, 0, now);
                }
            }
        }
    }

    /// A background refresh of `key` failed: not again before a backoff of 2 s doubling
    /// to 64 s with each failure in a row, and never before the service's `Retry-After`.
    fn refresh_failed(&mut self, key: &str, retry_after_secs: u64, now: u64) {
        let failures = self.refresh_state(key).map_or(0, |r| r.failures);
        let backoff = (2000u64 << failures.min(5)).max(retry_after_secs.saturating_mul(1000));
        self.set_refresh(key, now.saturating_add(backoff), failures.saturating_add(1));
    }

    /// Tick step: backoffs of refreshes whose entry was not hit again are forgotten a
    /// minute after they end (the map stays bounded by the hot entries).
    pub(crate) fn forget_refresh_backoffs(&mut self, now: u64) {
        self.refreshing.retain(|r| {
            r.not_before_ms == u64::MAX || now < r.not_before_ms.saturating_add(WARN_EVERY_MS)
        });
    }

    /// Tick step: exchanges whose answer never came (the stream went away and Envoy
    /// cancelled the call) answer their waiters 503 (or fail open).
    pub(crate) fn expire_stuck(&mut self, host: &mut dyn Host, now: u64) {
        let stuck: Vec<String> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stuck {
            if let Some(f) = self.inflight.remove(&k) {
                let ra = self.config.retry_after_secs;
                self.publish(host, &k, &Outcome::Unavailable(ra), &f.subject, now);
                for w in &f.waiters {
                    if host.set_effective_context(w.ctx) {
                        let outcome = Outcome::Unavailable(ra);
                        self.apply(host, w, &outcome, &f.subject, f.failure_mode);
                    }
                }
            }
        }
    }

    /// Maps an exchange answer to what the waiting requests get.
    pub fn classify(&self, resp: &CallResponse) -> Outcome {
        outcome::classify(resp, self.config.retry_after_secs)
    }
}

/// Where [`Worker::store`] put an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// In its shared-data slot, for every worker.
    Shared,
    /// Not in shared data: the slot keeps another key's longer-lived entry (or the host
    /// refused the write). Worth memoising here until `refresh_ms`.
    Refused {
        /// When the answer's entry would have started its background refresh.
        refresh_ms: u64,
    },
    /// Not cacheable at all (its lifetime is already over).
    NotCached,
}

/// The RFC 8693 form for `token` and `target` (with the actor token, if any).
pub(crate) fn exchange_form(token: &str, target: &Target, actor: Option<String>) -> String {
    let has_actor = actor.is_some();
    TokenExchangeRequest {
        subject_token: token.to_string(),
        subject_token_type: meshpass_core::oauth::TOKEN_TYPE_JWT.to_string(),
        resource: target.resource.iter().cloned().collect(),
        audience: target.audience.clone(),
        scope: target.scopes.clone(),
        requested_token_type: None,
        actor_token: actor,
        actor_token_type: has_actor.then(|| meshpass_core::oauth::TOKEN_TYPE_JWT.to_string()),
    }
    .to_form()
}

/// The earliest time the service can have counted an answer's `expires_in` from: its
/// clock in whole seconds, read after the call left at `started_ms`. Counting from the
/// answer's arrival instead kept a token cached past its `exp` by the exchange's
/// latency and the service's rounding.
fn issued(started_ms: u64) -> u64 {
    started_ms.saturating_sub(1000)
}

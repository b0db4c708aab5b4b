//! Remote key sets: the fetch lease (one worker fetches, all read shared data), backoff,
//! unknown-`kid` refetch and parked requests.

use meshpass_core::{KeySet, ValidationError};

use crate::api::{CallResponse, Counter, Host, Level, SharedError, CREATE_CAS};
use crate::config::IssuerKeys;
use crate::memo::Memo;
use crate::worker::{Call, Waiter, WarnKind, Worker};

const MAX_JWKS_BYTES: usize = 256 * 1024;

/// How long a request with an unknown kid waits for refetched keys.
pub(crate) const PARK_MS: u64 = 5000;
/// How long a request that arrives before the first key set waits for it.
pub(crate) const FIRST_KEYS_WAIT_MS: u64 = 2000;
/// The timeout of a key-set fetch.
pub(crate) const JWKS_TIMEOUT_MS: u64 = 5000;
/// How often a lease write that lost its CAS to another worker is decided again.
const LEASE_TRIES: usize = 4;
/// Shared-data key of the key epoch, part of every cache key: moved when a stored key
/// set loses a key (removed, or its material replaced under its `kid`), so the tokens
/// that key verified are served from no cache again; a set that only grows keeps it.
pub const KEY_EPOCH_KEY: &str = "meshpass/key-epoch";

/// The key epoch stored (8 bytes, little-endian); 0 before the first move.
fn epoch_of(b: &[u8]) -> u64 {
    b.try_into().map_or(0, u64::from_le_bytes)
}

/// The stored document: `<sent_ms>|<JWKS>`, the send time of the fetch it answers (a
/// store under CAS keeps a newer one). A bare JWKS (an older build's) reads as sent at 0.
fn split_doc(b: &[u8]) -> (u64, &[u8]) {
    let i = b.iter().position(|&c| c == b'|').unwrap_or(0);
    match std::str::from_utf8(&b[..i])
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(t) => (t, &b[i + 1..]),
        None => (0, b),
    }
}

/// How long a taken fetch lease keeps other workers from fetching (past the fetch
/// timeout and the lost-call slack).
const LEASE_MS: u64 = 10_000;

impl Worker {
    /// Tick step: fetches every remote key set that is due, if this worker wins its
    /// lease (CAS); the others read the shared document.
    ///
    /// `at_start` (configure time): every root context without keys fetches, without
    /// the lease. Envoy also configures short-lived root contexts whose calls it
    /// cancels; one of those holding the lease would hold every fetch off for its
    /// length. A start costs one fetch per worker.
    pub(crate) fn fetch_due_keys(&mut self, host: &mut dyn Host, now: u64, at_start: bool) {
        self.read_key_epoch(host);
        if at_start {
            self.load_remote_keys(host);
        }
        let remotes: Vec<(String, crate::config::RemoteJwks)> = self
            .config
            .keys
            .iter()
            .filter_map(|(i, k)| match k {
                IssuerKeys::Remote(r) => Some((i.clone(), r.clone())),
                IssuerKeys::Inline(_) => None,
            })
            .collect();
        for (issuer, r) in remotes {
            if self
                .calls
                .values()
                .any(|c| matches!(c, Call::Jwks { issuer: i, .. } if *i == issuer))
            {
                continue;
            }
            if at_start {
                if !self.keysets.contains_key(&issuer) {
                    self.send_jwks_fetch(host, issuer, &r, now);
                }
                continue;
            }
            let (lease, cas) = read_lease(host, &r.lease_key);
            // Due, or scheduled further ahead than this configuration ever schedules
            // (its refresh, or a taken lease): written under a longer `jwks_refresh_secs`
            // before a reload, and not kept.
            let stale = lease.next_due_ms > now + r.refresh_ms.max(LEASE_MS);
            if lease.next_due_ms > now && !stale {
                continue;
            }
            // Take the lease: nobody else fetches until it runs out.
            let taken = Lease {
                next_due_ms: now + LEASE_MS,
                ..lease
            };
            match host.shared_set(&r.lease_key, Some(taken.encode().as_bytes()), Some(cas)) {
                Ok(()) => {}
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => continue,
            }
            self.send_jwks_fetch(host, issuer, &r, now);
        }
    }

    fn send_jwks_fetch(
        &mut self,
        host: &mut dyn Host,
        issuer: String,
        r: &crate::config::RemoteJwks,
        now: u64,
    ) {
        let headers = [
            (":method", "GET"),
            (":path", r.path.as_str()),
            (":authority", r.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host.dispatch(&r.cluster, &headers, &[], JWKS_TIMEOUT_MS) {
            Ok(t) => {
                let sent_ms = now;
                self.calls.insert(t, Call::Jwks { issuer, sent_ms });
            }
            Err(e) => {
                let resp = CallResponse::default();
                host.log(Level::Warn, &format!("meshpass: JWKS dispatch failed: {e}"));
                self.on_jwks(host, &issuer, now, resp, now);
            }
        }
    }

    /// Tick step: parked requests are validated again once what they wait for came
    /// (or their time is up): their issuer's first keys, or the answer to a fetch sent
    /// after they parked on an unknown kid (an older fetch's answer may not hold it).
    pub(crate) fn retry_parked(&mut self, host: &mut dyn Host, now: u64) {
        if self.parked.is_empty() {
            return;
        }
        self.load_remote_keys(host);
        for p in std::mem::take(&mut self.parked) {
            let (ready, failed) = if p.awaiting_first_keys {
                (self.keysets.contains_key(&p.issuer), false)
            } else {
                let has_kid = self
                    .keysets
                    .get(&p.issuer)
                    .is_some_and(|s| s.keys().iter().any(|k| k.kid.is_some() && k.kid == p.kid));
                let failed = !has_kid && self.failed_since(host, &p.issuer, p.parked_ms);
                let ready = has_kid || failed || self.answered_since(host, &p.issuer, p.parked_ms);
                (ready, failed)
            };
            if !ready && p.deadline_ms > now {
                self.parked.push(p);
                continue;
            }
            if !host.set_effective_context(p.ctx) {
                continue;
            }
            if failed {
                // The refetch failed: the kid is not known to be unknown, the keys could
                // not be read. An outage (503), not an invalid token (401).
                let _ = self.deny_validation(host, ValidationError::NoKeys { issuer: p.issuer });
                continue;
            }
            if let Some(f) = self.inflight.get_mut(&p.key) {
                f.waiters.push(Waiter {
                    ctx: p.ctx,
                    identity: p.identity,
                });
                // Joined an exchange in flight, as a concurrent miss does.
                self.bump(Counter::Coalesced);
                continue;
            }
            let _ = self.miss(
                host, p.ctx, &p.token, &p.target, p.actor, p.key, p.identity, now, false,
            );
        }
    }

    /// Whether the stored keys of `issuer` are the answer to a fetch sent after
    /// `since_ms` (a refetch goes out on a tick after the park).
    fn answered_since(&self, host: &mut dyn Host, issuer: &str, since_ms: u64) -> bool {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return true;
        };
        read_lease(host, &r.lease_key).0.answered_sent_ms > since_ms
    }

    /// Whether a fetch of `issuer`'s keys sent after `since_ms` failed, with none answered
    /// since (a refetch for a rotated key met the endpoint down).
    fn failed_since(&self, host: &mut dyn Host, issuer: &str, since_ms: u64) -> bool {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return false;
        };
        let lease = read_lease(host, &r.lease_key).0;
        // The failed fetch was sent after the park (as in `answered_since`): an older
        // fetch's failure is not the refetch's.
        lease.failures > 0
            && lease.last_failed_sent_ms > since_ms
            && lease.answered_sent_ms <= since_ms
    }

    /// Adopts the shared key epoch; a move empties the memo (each of its entries may
    /// have been verified by the key that went).
    pub(crate) fn read_key_epoch(&mut self, host: &mut dyn Host) {
        let epoch = host
            .shared_get(KEY_EPOCH_KEY)
            .map_or(0, |(b, _)| epoch_of(&b));
        if epoch != self.key_epoch {
            self.key_epoch = epoch;
            self.memo = Memo::default();
        }
    }

    /// A stored key set lost a key: every worker's cached tokens move out of reach
    /// (this one's now, the others' at their next tick).
    fn bump_key_epoch(&mut self, host: &mut dyn Host) {
        for _ in 0..8 {
            let (b, cas) = host
                .shared_get(KEY_EPOCH_KEY)
                .unwrap_or((Vec::new(), CREATE_CAS));
            let next = epoch_of(&b).wrapping_add(1).to_le_bytes();
            if host
                .shared_set(KEY_EPOCH_KEY, Some(&next), Some(cas))
                .is_ok()
            {
                break;
            }
        }
        self.read_key_epoch(host);
    }

    /// Whether any issuer's keys come from a cluster.
    pub(crate) fn has_remote_keys(&self) -> bool {
        self.config
            .keys
            .values()
            .any(|k| matches!(k, IssuerKeys::Remote(_)))
    }

    pub(crate) fn load_remote_keys(&mut self, host: &mut dyn Host) {
        let config = self.config.clone();
        for (iss, k) in &config.keys {
            let IssuerKeys::Remote(r) = k else { continue };
            let Some((bytes, cas)) = host.shared_get(&r.shared_key) else {
                continue;
            };
            if self.key_cas.get(iss) == Some(&cas) {
                continue;
            }
            // Recorded when unreadable too: not parsed (nor warned about) again until
            // the document changes.
            self.key_cas.insert(iss.clone(), cas);
            match KeySet::parse(split_doc(&bytes).1) {
                Ok((set, _)) if !set.is_empty() => {
                    self.keysets.insert(iss.clone(), set);
                }
                _ => {
                    let now = host.now_ms();
                    self.warn_limited(
                        host,
                        WarnKind::JwksUnreadable,
                        now,
                        "meshpass: stored JWKS does not parse; keeping previous keys",
                    )
                }
            }
        }
    }

    /// Unknown kid: schedule a fetch on the next tick, at most once per
    /// `jwks_min_refetch_secs` across all workers.
    /// Returns whether a fetch is due, running or just done, i.e. whether a request
    /// with this unknown kid is worth parking until the keys change.
    /// `unknown_kid`: counted as `meshpass_jwks_unknown_kid_refetch` (not when the
    /// issuer has no keys at all yet: that is an outage, not a rotation).
    pub(crate) fn request_refetch(
        &mut self,
        host: &mut dyn Host,
        issuer: &str,
        now: u64,
        unknown_kid: bool,
    ) -> bool {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return false;
        };
        let (key, min_refetch_ms) = (r.lease_key.clone(), r.min_refetch_ms);
        let mut worth = true;
        let forced = update_lease(host, &key, |lease| {
            let since = now.saturating_sub(lease.last_forced_ms);
            // A forced fetch not answered yet (and not given up on): wait for it.
            let pending = lease.answered_sent_ms < lease.last_forced_ms && since < PARK_MS;
            // A fetch is due or running, or one was just forced: wait for it.
            worth = lease.next_due_ms <= now || pending || since >= min_refetch_ms;
            let force = worth && lease.next_due_ms > now && !pending && since >= min_refetch_ms;
            force.then_some(Lease {
                next_due_ms: now,
                last_forced_ms: now,
                ..lease
            })
        });
        match forced {
            Ok(Some(_)) => {
                if unknown_kid {
                    self.bump(Counter::JwksUnknownKid);
                }
                true
            }
            Ok(None) => worth,
            // Other workers kept writing the lease: a key rotation seen everywhere at
            // once, whose refetch one of them forces.
            Err(SharedError::CasMismatch) => true,
            Err(SharedError::Failed) => false,
        }
    }

    /// The answer to a key-set fetch sent at `sent_ms`.
    pub(crate) fn on_jwks(
        &mut self,
        host: &mut dyn Host,
        issuer: &str,
        sent_ms: u64,
        resp: CallResponse,
        now: u64,
    ) {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return;
        };
        let r = r.clone();
        let parsed = match resp.status {
            Some(200) if resp.body.len() > MAX_JWKS_BYTES => {
                Err(format!("the answer is larger than {MAX_JWKS_BYTES} bytes"))
            }
            Some(200) => KeySet::parse(&resp.body)
                .map_err(|e| e.to_string())
                .and_then(|(s, rej)| {
                    for k in rej {
                        host.log(
                            Level::Warn,
                            &format!(
                                "meshpass: JWKS of {issuer:?}: key {} ({:?}) dropped: {}",
                                k.index, k.kid, k.reason
                            ),
                        );
                    }
                    if s.is_empty() {
                        Err("no usable key".to_string())
                    } else {
                        Ok(s)
                    }
                }),
            Some(s) => Err(format!("status {s}")),
            None => Err("timeout or connection failure".into()),
        };
        match parsed {
            Ok(set) => {
                // Against the stored set (another worker's may be newer than ours).
                self.load_remote_keys(host);
                let dropped = self
                    .keysets
                    .get(issuer)
                    .is_some_and(|old| !set.keeps_every_key_of(old));
                if read_lease(host, &r.lease_key).0.answered_sent_ms > sent_ms
                    || !store_doc(host, &r.shared_key, sent_ms, &resp.body)
                {
                    // A fetch sent later was answered first (a refetch for a rotated
                    // key; or the store failed): the stored keys stay, for every worker.
                    self.key_cas.remove(issuer);
                    self.load_remote_keys(host);
                } else {
                    // After the store: a miss between the two validates with the new keys.
                    if dropped {
                        self.bump_key_epoch(host);
                    }
                    self.keysets.insert(issuer.to_string(), set);
                    self.key_cas.remove(issuer);
                    let _ = update_lease(host, &r.lease_key, |lease| {
                        // A refetch forced (unknown kid) once this fetch was out still
                        // goes: this answer may not hold the new key. (At the same
                        // millisecond too: at worst one fetch more.)
                        let forced_later = lease.last_forced_ms >= sent_ms;
                        Some(Lease {
                            next_due_ms: match forced_later {
                                true => lease.next_due_ms,
                                false => now + r.refresh_ms,
                            },
                            failures: 0,
                            answered_sent_ms: lease.answered_sent_ms.max(sent_ms),
                            ..lease
                        })
                    });
                }
                self.bump(Counter::JwksRefreshSuccess);
                // Requests waiting for these keys go on now (other workers: next tick).
                self.retry_parked(host, now);
            }
            Err(e) => {
                let mut backoff = 0;
                let _ = update_lease(host, &r.lease_key, |lease| {
                    // Fetches that were out together (every worker's at start) fail as
                    // one: only a fetch sent after the last recorded failure counts.
                    let concurrent = lease.failures > 0 && lease.last_failure_ms >= sent_ms;
                    let failures = match concurrent {
                        true => lease.failures,
                        false => lease.failures.saturating_add(1),
                    };
                    backoff = 1000u64
                        .saturating_mul(1 << failures.min(16))
                        .min(r.refresh_ms);
                    // A refetch forced once this fetch was out stays scheduled (or out).
                    let keep_due = concurrent || lease.last_forced_ms >= sent_ms;
                    // Still records the latest failed send (a parked request's refetch).
                    (!concurrent || sent_ms > lease.last_failed_sent_ms).then_some(Lease {
                        next_due_ms: match keep_due {
                            true => lease.next_due_ms,
                            false => now + backoff,
                        },
                        failures,
                        last_failure_ms: match concurrent {
                            true => lease.last_failure_ms,
                            false => now,
                        },
                        last_failed_sent_ms: lease.last_failed_sent_ms.max(sent_ms),
                        ..lease
                    })
                });
                self.bump(Counter::JwksRefreshFailure);
                host.log(
                    Level::Warn,
                    &format!("meshpass: JWKS fetch for {issuer:?} failed ({e}); keeping last good keys, retry in {backoff} ms"),
                );
            }
        }
    }
}

/// The shared fetch schedule of one issuer's key set.
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    /// When the next fetch is due (taken: pushed 10 s on while one is out).
    next_due_ms: u64,
    /// Failed fetches in a row (the backoff's exponent).
    failures: u32,
    /// When an unknown kid last forced a refetch.
    last_forced_ms: u64,
    /// When the last failure was recorded.
    last_failure_ms: u64,
    /// When the fetch whose answer is stored was sent.
    answered_sent_ms: u64,
    /// When the last failed fetch was sent (absent in an older build's lease: 0).
    last_failed_sent_ms: u64,
}

impl Lease {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.next_due_ms,
            self.failures,
            self.last_forced_ms,
            self.last_failure_ms,
            self.answered_sent_ms,
            self.last_failed_sent_ms
        )
    }
}

/// The lease and its CAS ([`CREATE_CAS`] when absent: "create if still absent").
fn read_lease(host: &mut dyn Host, key: &str) -> (Lease, u32) {
    match host.shared_get(key) {
        Some((bytes, cas)) => {
            let s = String::from_utf8_lossy(&bytes);
            let mut it = s.split('|');
            let l = Lease {
                next_due_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                failures: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                last_forced_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                last_failure_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                answered_sent_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                last_failed_sent_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            };
            (l, cas)
        }
        None => (Lease::default(), CREATE_CAS),
    }
}

/// Read-modify-write of a lease under its CAS: `decide` gets the current lease and
/// returns the one to write (`None`: leave it); decided again on the fresh lease when
/// another worker wrote it in between, so no worker's change is overwritten.
/// `Ok(written)`, or the last error (`CasMismatch` after [`LEASE_TRIES`]).
fn update_lease(
    host: &mut dyn Host,
    key: &str,
    mut decide: impl FnMut(Lease) -> Option<Lease>,
) -> Result<Option<Lease>, SharedError> {
    let mut last = SharedError::CasMismatch;
    for _ in 0..LEASE_TRIES {
        let (lease, cas) = read_lease(host, key);
        let Some(new) = decide(lease) else {
            return Ok(None);
        };
        match host.shared_set(key, Some(new.encode().as_bytes()), Some(cas)) {
            Ok(()) => return Ok(Some(new)),
            Err(e @ SharedError::CasMismatch) => last = e,
            Err(e @ SharedError::Failed) => return Err(e),
        }
    }
    Err(last)
}

/// Stores the answer to a fetch sent at `sent_ms` unless the stored one answers a
/// later fetch, under CAS: a newer answer stored in between by another worker is kept.
/// Whether it was stored.
fn store_doc(host: &mut dyn Host, key: &str, sent_ms: u64, body: &[u8]) -> bool {
    let mut doc = format!("{sent_ms}|").into_bytes();
    doc.extend_from_slice(body);
    for _ in 0..LEASE_TRIES {
        let (cur, cas) = host.shared_get(key).unwrap_or((Vec::new(), CREATE_CAS));
        if split_doc(&cur).0 > sent_ms {
            return false;
        }
        match host.shared_set(key, Some(&doc), Some(cas)) {
            Ok(()) => return true,
            Err(SharedError::CasMismatch) => {}
            Err(SharedError::Failed) => return false,
        }
    }
    false
}

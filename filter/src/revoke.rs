//! Revocation (docs/DESIGN.md "Revocation"): the feed poll from one worker at a time
//! (a lease in shared data, as for the JWKS refresh), the set every worker loads when
//! the shared version moves, the staleness gauge and its once-a-minute warning, and
//! the request-path checks.
//!
//! Shared data: `meshpass/rv/<id>` holds the set (`{"version", "entries"}`, written
//! only when it changes); `meshpass/rv-lease/<id>` holds
//! `next_due_ms|version|last_success_ms|last_warn_ms|started_ms` (small: every worker
//! reads it each tick and reads the set only when `version` differs from its own).
//! The poller tells the other workers through their queues, so a change reaches every
//! worker at once, not a tick later.
//!
//! Hit-path cost: none on a memo hit. The memo never holds an entry the current set
//! revokes (entries are checked before they are memoised, and a new set sweeps the
//! memo), so a warm hit does no revocation work at all; a shared-data hit does one
//! hash lookup (plus the patterns, when any are revoked, and a `jti` read, when any
//! `jti` is revoked).

use crate::api::{CallResponse, Counter, Gauge, Host, Level, SharedError, Verdict, CREATE_CAS};
use crate::cache;
use crate::config::Revocation;
use crate::feed::{parse_feed, RevocationSet, MAX_FEED_BYTES};
use crate::respond::send_error;
use crate::tick::LOST_CALL_SLACK_MS;
use crate::worker::{Call, WarnKind, Worker};

/// The message that tells a worker the shared revocation set changed.
pub const REVOCATIONS_KICK: &[u8] = b"!revocations";
/// At most one "feed unavailable" warning per this period (across workers).
pub const WARN_EVERY_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lease {
    next_due_ms: u64,
    version: u64,
    last_success_ms: u64,
    last_warn_ms: u64,
    started_ms: u64,
}

impl Lease {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.next_due_ms,
            self.version,
            self.last_success_ms,
            self.last_warn_ms,
            self.started_ms
        )
    }

    fn read(host: &dyn Host, key: &str) -> (Lease, u32) {
        let Some((bytes, cas)) = host.shared_get(key) else {
            return (Lease::default(), CREATE_CAS);
        };
        let s = String::from_utf8_lossy(&bytes);
        let mut it = s.split('|').map(|v| v.parse::<u64>().unwrap_or(0));
        let mut next = || it.next().unwrap_or(0);
        let l = Lease {
            next_due_ms: next(),
            version: next(),
            last_success_ms: next(),
            last_warn_ms: next(),
            started_ms: next(),
        };
        (l, cas)
    }

    /// Milliseconds since the feed last answered (since the first poll before that).
    fn stale_ms(&self, now: u64) -> u64 {
        let since = if self.last_success_ms > 0 {
            self.last_success_ms
        } else {
            self.started_ms
        };
        if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        }
    }
}

impl Worker {
    /// Tick step (every worker): load the shared set when its version moved, set the
    /// gauges, and poll the feed when due and this worker wins the lease (CAS).
    pub(crate) fn revocation_tick(&mut self, host: &mut dyn Host, now: u64) {
        let Some(rc) = self.config.revocation.clone() else {
            return;
        };
        let (lease, cas) = Lease::read(host, &rc.lease_key);
        if lease.version != self.revoked.version() {
            self.reload_revocations(host, &rc, now);
        }
        host.gauge(Gauge::RevocationStaleness, lease.stale_ms(now) / 1000);
        host.gauge(Gauge::RevocationVersion, self.revoked.version());
        let polling = self
            .calls
            .values()
            .any(|c| matches!(c, Call::Revocations { .. }));
        // Until a poll is answered or failed as lost (`expire_lost_calls`): no second
        // poll while one can still be answered.
        let taken_ms = self.config.exchange.timeout_ms + LOST_CALL_SLACK_MS + 1000;
        // Due, or scheduled further ahead than this configuration ever schedules (its
        // interval, or a taken lease): written under a longer `poll_interval_ms` before
        // a reload, and not kept (as the JWKS lease).
        let stale = lease.next_due_ms > now + rc.poll_interval_ms.max(taken_ms);
        if polling || (lease.next_due_ms > now && !stale) {
            return;
        }
        // Take the lease: nobody else polls until the answer (or its timeout) is in.
        let taken = Lease {
            next_due_ms: now + taken_ms,
            started_ms: if lease.started_ms == 0 {
                now
            } else {
                lease.started_ms
            },
            ..lease
        };
        match host.shared_set(&rc.lease_key, Some(taken.encode().as_bytes()), Some(cas)) {
            Ok(()) => {}
            Err(SharedError::CasMismatch | SharedError::Failed) => return,
        }
        let since = self.revoked.version();
        let path = format!("{}?since={since}", rc.path);
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", rc.authority.as_str()),
            ("accept", "application/json"),
        ];
        let timeout_ms = self.config.exchange.timeout_ms;
        match host.dispatch(&rc.cluster, &headers, &[], timeout_ms) {
            Ok(t) => {
                self.calls.insert(
                    t,
                    Call::Revocations {
                        since,
                        sent_ms: now,
                    },
                );
            }
            Err(e) => self.feed_failed(host, &rc, &format!("dispatch failed: {e}"), now),
        }
    }

    /// Loads the shared set if it is at another version than ours; true when it did.
    pub(crate) fn reload_revocations(&mut self, host: &mut dyn Host, rc: &Revocation, now: u64) {
        let Some((bytes, _)) = host.shared_get(&rc.set_key) else {
            return;
        };
        match RevocationSet::decode(&bytes) {
            Ok(set) if set.version() != self.revoked.version() => {
                self.install_revocations(host, set, now)
            }
            Ok(_) => {}
            // Every tick finds it again until a poll replaces it: once a minute.
            Err(e) => self.warn_limited(
                host,
                WarnKind::RevocationSetUnreadable,
                now,
                &format!("meshpass: stored revocation set does not parse ({e}); keeping ours"),
            ),
        }
    }

    /// Makes `set` this worker's, and drops the memo entries (and their shared
    /// entries) it revokes.
    fn install_revocations(&mut self, host: &mut dyn Host, set: RevocationSet, now: u64) {
        self.revoked = set;
        if self.revoked.is_empty() {
            return;
        }
        let now_s = now / 1000;
        let revoked = &self.revoked;
        let gone = self
            .memo
            .remove_revoked(|subject, token| revoked.check(subject, token, now_s).is_some());
        for (token, digest, actor) in gone {
            let key = cache::key(self.key_epoch, &digest, &token, actor.as_deref());
            self.drop_entry(host, &key);
        }
    }

    /// The feed's answer (polling worker).
    pub(crate) fn on_feed(
        &mut self,
        host: &mut dyn Host,
        since: u64,
        resp: CallResponse,
        now: u64,
    ) {
        let Some(rc) = self.config.revocation.clone() else {
            return;
        };
        if since != self.revoked.version() {
            // Our set moved while the poll was out (another worker's poll answered
            // first): this answer, snapshot or delta, describes an older state. A
            // store reset still gets through: its snapshot answers a poll from ours.
            host.log(
                Level::Debug,
                "meshpass: revocation feed answer to an older poll ignored",
            );
            return;
        }
        let next = match resp.status {
            Some(304) => Ok(None),
            Some(200) => parse_feed(&resp.body).and_then(|feed| {
                let full = feed.full;
                self.revoked.apply(feed).map(|set| Some((set, full)))
            }),
            Some(s) => {
                return self.feed_failed(host, &rc, &format!("status {s}"), now);
            }
            None => {
                return self.feed_failed(host, &rc, "timeout or connection failure", now);
            }
        };
        let next = match next {
            Ok(n) => n,
            Err(e) => return self.feed_failed(host, &rc, &e.to_string(), now),
        };
        let (lease, _) = Lease::read(host, &rc.lease_key);
        if lease.version != since {
            // Another worker stored a newer set while our poll was out, and its message
            // has not reached us yet: take that set; this answer describes an older
            // state and must not replace it. (A stored set we cannot read is replaced.)
            self.reload_revocations(host, &rc, now);
            if self.revoked.version() != since {
                return;
            }
        }
        // A set one worker enforces must be one every worker can load back.
        let next = match next.map(|(set, full)| {
            let bytes = set.encode();
            (set, full, bytes)
        }) {
            Some((_, _, bytes)) if bytes.len() > MAX_FEED_BYTES => {
                let why = format!(
                    "the set would be {} bytes, over the {MAX_FEED_BYTES} workers can share",
                    bytes.len()
                );
                return self.feed_failed(host, &rc, &why, now);
            }
            n => n,
        };
        let mut l = Lease {
            next_due_ms: now + rc.poll_interval_ms,
            last_success_ms: now,
            ..lease
        };
        self.bump(Counter::RevocationPollSuccess);
        if let Some((set, full, bytes)) = next.filter(|(set, full, bytes)| {
            // A snapshot of the set we hold (a service still at version 0 answers
            // every poll so): nothing to store, log or sweep.
            !(*full && set.version() == since && *bytes == self.revoked.encode())
        }) {
            self.bump(if full {
                Counter::RevocationSnapshots
            } else {
                Counter::RevocationDeltas
            });
            if host.shared_set(&rc.set_key, Some(&bytes), None).is_err() {
                return self.feed_failed(host, &rc, "cannot store the set in shared data", now);
            }
            l.version = set.version();
            host.log(
                Level::Info,
                &format!(
                    "meshpass: revocations at version {} ({} entries, {} from version {since})",
                    set.version(),
                    set.len(),
                    if full { "snapshot" } else { "delta" }
                ),
            );
            self.install_revocations(host, set, now);
        }
        let _ = host.shared_set(&rc.lease_key, Some(l.encode().as_bytes()), None);
        // The gauges follow the success at once (a scrape right after a catch-up must
        // not report the outage until the next tick).
        host.gauge(Gauge::RevocationStaleness, 0);
        host.gauge(Gauge::RevocationVersion, self.revoked.version());
        if l.version != lease.version {
            self.notify_revocations(host, now);
        }
    }

    /// Tells every other listed worker to load the new set now.
    fn notify_revocations(&mut self, host: &mut dyn Host, now: u64) {
        for q in self.other_queues(host, now) {
            host.enqueue(&q, REVOCATIONS_KICK);
        }
    }

    /// A poll failed: keep the set, poll again after the interval, warn at most once a
    /// minute (across workers: the time is in the lease).
    fn feed_failed(&mut self, host: &mut dyn Host, rc: &Revocation, why: &str, now: u64) {
        self.bump(Counter::RevocationPollFailure);
        let (lease, _) = Lease::read(host, &rc.lease_key);
        let mut l = Lease {
            next_due_ms: now + rc.poll_interval_ms,
            ..lease
        };
        if now.saturating_sub(lease.last_warn_ms) >= WARN_EVERY_MS {
            l.last_warn_ms = now;
            host.log(
                Level::Warn,
                &format!(
                    "meshpass: revocation feed unavailable ({why}); enforcing the set at version {} ({} entries), {} s stale",
                    self.revoked.version(),
                    self.revoked.len(),
                    lease.stale_ms(now) / 1000
                ),
            );
        }
        let _ = host.shared_set(&rc.lease_key, Some(l.encode().as_bytes()), None);
    }

    /// The reason a cached token (its subject, the participant token) is revoked now.
    pub(crate) fn revoked_reason(&self, subject: &str, participant: &str) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        self.revoked
            .check(subject, participant, self.coarse_now_ms / 1000)
            .map(str::to_string)
    }

    /// The reason a (validated) subject is revoked now.
    pub(crate) fn revoked_subject(&self, subject: &str) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        self.revoked
            .subject(subject, self.coarse_now_ms / 1000)
            .map(str::to_string)
    }

    /// `403 access_denied`, `revoked: <reason>`.
    pub(crate) fn deny_revoked(&mut self, host: &mut dyn Host, reason: &str) -> Verdict {
        self.bump(Counter::DeniedRevoked);
        send_error(
            host,
            403,
            "access_denied",
            &format!("revoked: {reason}"),
            None,
        );
        Verdict::Pause
    }
}

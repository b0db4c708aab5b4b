//! Cache slots a configuration with more of them left behind. Entries and markers live
//! in `cache.slots` fixed slots ([`crate::cache`]); a reload that lowers the count
//! leaves the slots from the new count up in shared data, where no worker of the new
//! configuration looks, nor tracks them to empty (participant tokens included).
//!
//! [`SLOTS_KEY`] records the highest count in use, `max|cursor|hold_until_ms|live_until_ms`:
//! - a worker of the largest configuration (count ≥ `max`) holds the range: it writes
//!   its count with `hold_until_ms` a minute ahead (renewed every half minute), so no
//!   smaller configuration sweeps slots it may still serve and empties itself;
//! - a worker of a smaller one, once the hold ran out, sweeps `[its count, max)` at most
//!   [`SWEEP_BATCH`] slots a tick from the shared cursor: ended entries emptied, ended
//!   markers idled, the latest end of a live record kept in `live_until_ms`. A pass that
//!   found nothing live lowers `max` to its count; otherwise the next pass starts once
//!   the last live record has ended.

use crate::api::{Host, CREATE_CAS};
use crate::cache::{self, Entry, Marker, MARKER_IDLE};
use crate::worker::Worker;

/// Shared-data key of the slot-count record.
pub const SLOTS_KEY: &str = "meshpass/c-slots";
/// How long the largest configuration's hold lasts without renewal.
const HOLD_MS: u64 = 60_000;
/// Slots (an entry and a marker each) one tick examines at most: a million-slot range
/// takes about four minutes at the default tick.
pub const SWEEP_BATCH: u64 = 4096;
/// The largest `cache.slots` (a corrupted record must not make a pass endless).
const MAX_SLOTS: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Record {
    max: u64,
    cursor: u64,
    hold_until_ms: u64,
    live_until_ms: u64,
}

impl Record {
    fn read(host: &dyn Host) -> (Option<Record>, u32) {
        let Some((bytes, cas)) = host.shared_get(SLOTS_KEY) else {
            return (None, CREATE_CAS);
        };
        let s = String::from_utf8_lossy(&bytes);
        let mut it = s.split('|').map(|v| v.parse::<u64>().unwrap_or(0));
        let mut next = || it.next().unwrap_or(0);
        let r = Record {
            max: next().min(MAX_SLOTS),
            cursor: next(),
            hold_until_ms: next(),
            live_until_ms: next(),
        };
        (Some(r), cas)
    }

    fn write(&self, host: &mut dyn Host, cas: u32) {
        let v = format!(
            "{}|{}|{}|{}",
            self.max, self.cursor, self.hold_until_ms, self.live_until_ms
        );
        // Lost to another worker's write: it moved the record on; decided again next tick.
        let _ = host.shared_set(SLOTS_KEY, Some(v.as_bytes()), Some(cas));
    }
}

impl Worker {
    /// Start and tick step: hold the slot range (largest configuration), or sweep a
    /// batch of the slots above this configuration's count.
    pub(crate) fn old_slots_tick(&mut self, host: &mut dyn Host, now: u64) {
        // Neither caches anything.
        if self.config.noop || self.config.validate_only {
            return;
        }
        let own = u64::from(self.config.cache_slots);
        let (rec, cas) = Record::read(host);
        let rec = match rec {
            Some(r) if r.max > own => r,
            Some(r) if r.max == own && r.hold_until_ms >= now + HOLD_MS / 2 => return,
            _ => {
                let held = Record {
                    max: own,
                    cursor: own,
                    hold_until_ms: now + HOLD_MS,
                    live_until_ms: 0,
                };
                return held.write(host, cas);
            }
        };
        if now < rec.hold_until_ms {
            return;
        }
        // A pass starts at this configuration's count.
        let from = if rec.cursor >= rec.max {
            own
        } else {
            rec.cursor.max(own)
        };
        let end = (from + SWEEP_BATCH).min(rec.max);
        let live = (from..end)
            .map(|n| sweep_slot(host, n, now))
            .fold(rec.live_until_ms, u64::max);
        let next = if end < rec.max {
            Record {
                cursor: end,
                live_until_ms: live,
                ..rec
            }
        } else if live == 0 {
            // Nothing left above our count: it is the highest in use now.
            Record {
                max: own,
                cursor: own,
                hold_until_ms: 0,
                live_until_ms: 0,
            }
        } else {
            // Again once every record seen live has ended.
            Record {
                cursor: own,
                hold_until_ms: live,
                live_until_ms: 0,
                ..rec
            }
        };
        next.write(host, cas);
    }
}

/// Empties slot `n`'s entry and idles its marker when they have ended; returns the end
/// of whichever is still live (0 for none).
fn sweep_slot(host: &mut dyn Host, n: u64, now: u64) -> u64 {
    let mut live = 0;
    let slot = cache::slot_key(n);
    if let Some((bytes, cas)) = host.shared_get(&slot) {
        match Entry::decode(&bytes) {
            Some(e) if e.expires_ms > now => live = e.expires_ms,
            // Ended, or unreadable (another build's): dead whoever wrote it.
            _ => {
                let _ = host.shared_set(&slot, None, Some(cas));
            }
        }
    }
    let mk = cache::marker_slot_key(n);
    if let Some((bytes, cas)) = host.shared_get(&mk) {
        let end = match Marker::decode(&bytes) {
            Marker::Idle => None,
            Marker::InFlight { deadline_ms, .. } => Some(deadline_ms),
            Marker::Done { until_ms, .. } => Some(until_ms),
        };
        match end {
            Some(e) if e > now => live = live.max(e),
            Some(_) => {
                let _ = host.shared_set(&mk, Some(MARKER_IDLE), Some(cas));
            }
            None => {}
        }
    }
    live
}

//! Cache entries in proxy-wasm shared data. An entry's identity (its *key*) is
//! `meshpass/c/` + hex(sha256(target digest ‖ token ‖ actor)). Shared data cannot
//! delete a key (an emptied key stays), so entries and exchange markers live in a fixed
//! number of slots (`cache.slots`): `meshpass/c/<slot>` and `meshpass/f/<slot>`, slot =
//! the key's first 64 bits mod N, each record holding the full hex digest it belongs
//! to. Memory stays flat under token churn; a slot keeps the entry that lives longer.
//! Entry value: `v3|id|expires_ms|refresh_ms|subject_exp_secs|subject|participant
//! token` (no JSON on the hit path), `id` the first 128 bits of the key's digest in hex
//! (enough to tell keys apart: a forged match is a 128-bit second preimage of sha256;
//! the full 256 bits cost 32 more bytes per cached token).

use sha2::{Digest, Sha256};

use crate::config::hex;
use crate::outcome::Outcome;

/// Shared-data key of a token + target (+ actor token: a header value never holds NUL,
/// so the separator is unambiguous) under key epoch `epoch` (moved when an issuer's key
/// set loses a key: the tokens cached under the old one are looked up no more).
pub fn key(epoch: u64, target_digest: &[u8; 32], token: &str, actor: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(epoch.to_le_bytes());
    h.update(target_digest);
    h.update(token.as_bytes());
    if let Some(a) = actor {
        h.update([0u8]);
        h.update(a.as_bytes());
    }
    let mut k = String::with_capacity(11 + 64);
    k.push_str("meshpass/c/");
    k.push_str(&hex(&h.finalize()));
    k
}

/// Hex digits of a key's digest that records carry (128 bits).
pub const ID_HEX: usize = 32;

/// The record id of a cache key (what slot records are checked against): the first
/// [`ID_HEX`] hex digits of its digest.
pub fn id(key: &str) -> &str {
    let h = key.strip_prefix("meshpass/c/").unwrap_or(key);
    h.get(..ID_HEX).unwrap_or(h)
}

/// The slot of a cache key among `slots`.
pub fn slot(key: &str, slots: u32) -> u64 {
    let h = id(key);
    let head = u64::from_str_radix(h.get(..16).unwrap_or(h), 16).unwrap_or(0);
    head % u64::from(slots.max(1))
}

/// Shared-data key of the slot holding the entry of `key`.
pub fn entry_key(key: &str, slots: u32) -> String {
    slot_key(slot(key, slots))
}

/// Shared-data key of entry slot number `n`.
pub fn slot_key(n: u64) -> String {
    format!("meshpass/c/{n}")
}

/// A decoded entry, borrowing the shared-data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The hex digest of the cache key this entry belongs to.
    pub id: &'a str,
    /// Serve until this time (ms); set before the participant token's `exp`.
    pub expires_ms: u64,
    /// Start a background refresh from this time (ms).
    pub refresh_ms: u64,
    /// The subject token's `exp` (caps refreshed entries).
    pub subject_exp: u64,
    /// The verified subject SPIFFE ID.
    pub subject: &'a str,
    /// The participant token.
    pub token: &'a str,
}

impl<'a> Entry<'a> {
    /// The entry of `key`, if its slot holds that one (another key's is a miss).
    pub fn decode_for(bytes: &'a [u8], key: &str) -> Option<Entry<'a>> {
        Entry::decode(bytes).filter(|e| e.id == id(key))
    }

    /// Parses an entry; `None` for anything malformed (treated as a miss).
    pub fn decode(bytes: &'a [u8]) -> Option<Entry<'a>> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.splitn(7, '|');
        if it.next()? != "v3" {
            return None;
        }
        let id = it.next()?;
        let expires_ms = it.next()?.parse().ok()?;
        let refresh_ms = it.next()?.parse().ok()?;
        let subject_exp = it.next()?.parse().ok()?;
        let subject = it.next()?;
        let token = it.next()?;
        if token.is_empty() {
            return None;
        }
        Some(Entry {
            id,
            expires_ms,
            refresh_ms,
            subject_exp,
            subject,
            token,
        })
    }

    /// Encodes an entry.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "v3|{}|{}|{}|{}|{}|{}",
            self.id, self.expires_ms, self.refresh_ms, self.subject_exp, self.subject, self.token
        )
        .into_bytes()
    }
}

/// Expiry and refresh times of a new entry, or `None` when it would be stale at once.
/// The entry dies min(`margin_ms`, 10 % of the remaining life) before the earlier of
/// the participant token's and the subject token's expiry; refresh starts after
/// `refresh_percent` of that life.
pub fn lifetimes(
    now_ms: u64,
    expires_in_secs: u64,
    subject_exp_secs: u64,
    margin_ms: u64,
    refresh_percent: u64,
) -> Option<(u64, u64)> {
    let hard = now_ms
        .saturating_add(expires_in_secs.saturating_mul(1000))
        .min(subject_exp_secs.saturating_mul(1000));
    // A short-lived token keeps most of its life: the margin is at most 10 % of it.
    let margin_ms = margin_ms.min(hard.saturating_sub(now_ms) / 10);
    let expires = hard.checked_sub(margin_ms)?;
    if expires <= now_ms {
        return None;
    }
    let life = expires - now_ms;
    let refresh = now_ms + life / 100 * refresh_percent.min(100);
    Some((expires, refresh))
}

/// Shared-data key of the slot holding the cross-worker exchange marker of `key`
/// (`meshpass/f/<slot>` beside the entry's `meshpass/c/<slot>`).
pub fn marker_key(key: &str, slots: u32) -> String {
    marker_slot_key(slot(key, slots))
}

/// Shared-data key of marker slot number `n`.
pub fn marker_slot_key(n: u64) -> String {
    format!("meshpass/f/{n}")
}

/// The value a swept marker is reset to: shared data (ABI 0.2.1) cannot delete a key,
/// and an empty value would hide the CAS the next claim needs.
pub const MARKER_IDLE: &[u8] = b"-";

/// Cross-worker state of one exchange (value of [`marker_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// Nobody is exchanging this key.
    Idle,
    /// Worker `owner` is exchanging; give up on it at `deadline_ms`.
    InFlight {
        /// The hex digest of the cache key being exchanged.
        id: String,
        /// Exchange timeout plus slack: after this the exchange is considered lost.
        deadline_ms: u64,
        /// The owner's queue name.
        owner: String,
    },
    /// The exchange ended with `outcome` (for a token: issued to `subject`); readable
    /// until `until_ms`, then swept back to [`Marker::Idle`].
    Done {
        /// The hex digest of the cache key that was exchanged.
        id: String,
        /// When the owner sweeps the record.
        until_ms: u64,
        /// The verified subject the token was issued to, or whose exchange met an outage
        /// (empty for refusals, and for outages no worker can attribute).
        subject: String,
        /// What every waiter gets.
        outcome: Outcome,
    },
}

impl Marker {
    /// Parses a marker; anything malformed reads as [`Marker::Idle`] (claimable).
    pub fn decode(bytes: &[u8]) -> Marker {
        Marker::parse(bytes).unwrap_or(Marker::Idle)
    }

    fn parse(bytes: &[u8]) -> Option<Marker> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.splitn(4, '|');
        match it.next()? {
            "i" => Some(Marker::InFlight {
                deadline_ms: it.next()?.parse().ok()?,
                owner: it.next()?.to_string(),
                id: it.next()?.to_string(),
            }),
            "d" => {
                let until_ms = it.next()?.parse().ok()?;
                let id = it.next()?.to_string();
                let mut rest = it.next()?.splitn(3, '|');
                let code = rest.next()?;
                let subject = rest.next()?.to_string();
                let arg = rest.next()?;
                let outcome = match code {
                    "T" if !arg.is_empty() => Outcome::Token(arg.to_string()),
                    "G" => Outcome::InvalidGrant(arg.to_string()),
                    "F" => Outcome::Forbidden(arg.to_string()),
                    "R" => Outcome::RateLimited(arg.parse().ok()?),
                    "U" => Outcome::Unavailable(arg.parse().ok()?),
                    "B" => Outcome::Faulty(arg.parse().ok()?),
                    _ => return None,
                };
                Some(Marker::Done {
                    id,
                    until_ms,
                    subject,
                    outcome,
                })
            }
            _ => None,
        }
    }

    /// Encodes a marker.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Marker::Idle => MARKER_IDLE.to_vec(),
            Marker::InFlight {
                deadline_ms,
                owner,
                id,
            } => format!("i|{deadline_ms}|{owner}|{id}").into_bytes(),
            Marker::Done {
                id,
                until_ms,
                subject,
                outcome,
            } => {
                // The subject is a SPIFFE ID (no `|`); the free text goes last.
                let (code, arg) = match outcome {
                    Outcome::Token(t) => ("T", t.clone()),
                    Outcome::InvalidGrant(d) => ("G", d.clone()),
                    Outcome::Forbidden(d) => ("F", d.clone()),
                    Outcome::RateLimited(s) => ("R", s.to_string()),
                    Outcome::Unavailable(s) => ("U", s.to_string()),
                    Outcome::Faulty(s) => ("B", s.to_string()),
                };
                format!("d|{until_ms}|{id}|{code}|{subject}|{arg}").into_bytes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_through_its_encoding() {
        let e = Entry {
            id: "ab12",
            expires_ms: 10,
            refresh_ms: 5,
            subject_exp: 7,
            subject: "spiffe://td/ns/a/sa/b",
            token: "a.b.c",
        };
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Some(e));
    }

    #[test]
    fn malformed_entries_are_misses() {
        for bad in [
            "",
            "v1|1|1|1|s|t",
            "v2|h|1|1|1|s|t",
            "v3|h|x|1|1|s|t",
            "v3|h|1|1|1|s|",
            "v3|h|1|1|1",
        ] {
            assert_eq!(Entry::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn keys_differ_by_key_epoch_target_and_token() {
        let a = key(0, &[0; 32], "t1", None);
        assert_ne!(a, key(1, &[0; 32], "t1", None));
        assert_ne!(a, key(0, &[1; 32], "t1", None));
        assert_ne!(a, key(0, &[0; 32], "t2", None));
        assert_ne!(a, key(0, &[0; 32], "t1", Some("actor")));
        assert_eq!(a.len(), 11 + 64);
    }

    #[test]
    fn entries_expire_before_either_token_and_refresh_ahead() {
        // participant 300 s, subject exp later: expires 10 s early, refresh at 75 %.
        let (exp, refresh) = lifetimes(1_000_000, 300, 10_000, 10_000, 75).unwrap();
        assert_eq!(exp, 1_000_000 + 290_000);
        assert_eq!(refresh, 1_000_000 + 290_000 / 100 * 75);
        // subject token expires first.
        let (exp, _) = lifetimes(1_000_000, 300, 1_100, 10_000, 75).unwrap();
        assert_eq!(exp, 1_090_000);
        // lifetime below the margin: the margin shrinks to 10 % of it.
        let (exp, _) = lifetimes(1_000_000, 5, 10_000, 10_000, 75).unwrap();
        assert_eq!(exp, 1_000_000 + 4_500);
        // already expired: not cached.
        assert_eq!(lifetimes(1_000_000, 0, 10_000, 10_000, 75), None);
    }

    #[test]
    fn markers_round_trip_and_garbage_reads_as_idle() {
        let cases = [
            Marker::Idle,
            Marker::InFlight {
                deadline_ms: 42,
                owner: "meshpass/q/3".into(),
                id: "ab".into(),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: "spiffe://td/ns/a/sa/b".into(),
                outcome: Outcome::Token("a.b.c".into()),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: String::new(),
                outcome: Outcome::Forbidden("no | way".into()),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: String::new(),
                outcome: Outcome::InvalidGrant(String::new()),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: String::new(),
                outcome: Outcome::RateLimited(9),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: String::new(),
                outcome: Outcome::Unavailable(5),
            },
            Marker::Done {
                id: "ab".into(),
                until_ms: 7,
                subject: String::new(),
                outcome: Outcome::Faulty(5),
            },
        ];
        for m in cases {
            assert_eq!(Marker::decode(&m.encode()), m);
        }
        for bad in [
            "",
            "x",
            "i|soon|w|h",
            "i|1|w",
            "d|1|h|T|s|",
            "d|1|h|R||x",
            "d|1|h|Q|s|x",
        ] {
            assert_eq!(Marker::decode(bad.as_bytes()), Marker::Idle, "{bad}");
        }
        assert_eq!(
            marker_key(&key(0, &[0; 32], "t", None), 8)[..11],
            *"meshpass/f/"
        );
    }

    #[test]
    fn a_hundred_thousand_distinct_tokens_use_at_most_the_configured_slots() {
        let mut entries = std::collections::HashSet::new();
        let mut markers = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            let k = key(0, &[7; 32], &format!("token-{i}"), None);
            entries.insert(entry_key(&k, 64));
            markers.insert(marker_key(&k, 64));
        }
        assert_eq!((entries.len(), markers.len()), (64, 64));
    }
}

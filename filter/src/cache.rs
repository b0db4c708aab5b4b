//! Cache entries in proxy-wasm shared data: one per (subject token, target). The key is
//! `meshpass/c/` + hex(sha256(target digest ‖ token)); the value a compact text record
//! `v1|expires_ms|refresh_ms|subject_exp_secs|subject|participant token` (no JSON on the hit path).

use sha2::{Digest, Sha256};

use crate::config::hex;

/// Shared-data key of a token + target (+ actor token: a header value never holds NUL,
/// so the separator is unambiguous).
pub fn key(target_digest: &[u8; 32], token: &str, actor: Option<&str>) -> String {
    let mut h = Sha256::new();
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

/// A decoded entry, borrowing the shared-data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
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
    /// Parses an entry; `None` for anything malformed (treated as a miss).
    pub fn decode(bytes: &'a [u8]) -> Option<Entry<'a>> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.splitn(6, '|');
        if it.next()? != "v1" {
            return None;
        }
        let expires_ms = it.next()?.parse().ok()?;
        let refresh_ms = it.next()?.parse().ok()?;
        let subject_exp = it.next()?.parse().ok()?;
        let subject = it.next()?;
        let token = it.next()?;
        if token.is_empty() {
            return None;
        }
        Some(Entry {
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
            "v1|{}|{}|{}|{}|{}",
            self.expires_ms, self.refresh_ms, self.subject_exp, self.subject, self.token
        )
        .into_bytes()
    }
}

/// Expiry and refresh times of a new entry, or `None` when it would be stale at once.
/// The entry dies `margin_ms` before the earlier of the participant token's and the
/// subject token's expiry; refresh starts after `refresh_percent` of that life.
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
    let expires = hard.checked_sub(margin_ms)?;
    if expires <= now_ms {
        return None;
    }
    let life = expires - now_ms;
    let refresh = now_ms + life / 100 * refresh_percent.min(100);
    Some((expires, refresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_through_its_encoding() {
        let e = Entry {
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
            "v2|1|1|1|s|t",
            "v1|x|1|1|s|t",
            "v1|1|1|1|s|",
            "v1|1|1|1",
        ] {
            assert_eq!(Entry::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn keys_differ_by_target_and_token() {
        let a = key(&[0; 32], "t1", None);
        assert_ne!(a, key(&[1; 32], "t1", None));
        assert_ne!(a, key(&[0; 32], "t2", None));
        assert_ne!(a, key(&[0; 32], "t1", Some("actor")));
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
        // lifetime below the margin: not cached.
        assert_eq!(lifetimes(1_000_000, 5, 10_000, 10_000, 75), None);
    }
}

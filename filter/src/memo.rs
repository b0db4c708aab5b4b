//! Per-worker memo in front of shared data (the warm hit path): no sha256, no
//! shared-data copy, no host clock read.

use std::collections::HashMap;

/// Per-worker memo in front of shared data, looked up by an exact compare of the
/// token bytes (so no sha256 and no shared-data copy on a warm hit). Valid only until
/// the entry's refresh time; after that the shared entry (maybe refreshed by another
/// worker) is consulted again.
pub(crate) struct L1Entry {
    pub(crate) digest: [u8; 32],
    pub(crate) actor: Option<String>,
    pub(crate) valid_until_ms: u64,
    pub(crate) subject: String,
    pub(crate) authorization: String,
}

/// Maximum tokens memoised per worker; the memo is cleared when full.
const L1_MAX: usize = 4096;

/// FxHash-style hasher: the memo key is attacker-supplied but every hit is confirmed by
/// an exact compare, and the map is size-capped, so a fast non-keyed hash is fine.
#[derive(Default, Clone, Copy)]
struct FxBuild;

impl std::hash::BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// The memo: token bytes → entries per (target digest, actor token).
#[derive(Default)]
pub(crate) struct Memo {
    map: HashMap<String, Vec<L1Entry>, FxBuild>,
}

impl Memo {
    /// The live entry for this token, target and actor, if any.
    pub(crate) fn get(
        &self,
        token: &str,
        digest: &[u8; 32],
        actor: Option<&str>,
        now_ms: u64,
    ) -> Option<&L1Entry> {
        self.map
            .get(token)?
            .iter()
            .find(|e| e.digest == *digest && e.actor.as_deref() == actor)
            .filter(|e| e.valid_until_ms > now_ms)
    }

    /// Remembers `participant` for this token until `until` (cleared when full).
    pub(crate) fn insert(
        &mut self,
        token: &str,
        digest: &[u8; 32],
        actor: Option<String>,
        until: u64,
        subject: &str,
        participant: &str,
    ) {
        if self.map.len() >= L1_MAX {
            self.map.clear();
        }
        let e = L1Entry {
            digest: *digest,
            actor,
            valid_until_ms: until,
            subject: subject.to_string(),
            authorization: format!("Bearer {participant}"),
        };
        let v = self.map.entry(token.to_string()).or_default();
        v.retain(|x| x.digest != e.digest || x.actor != e.actor);
        v.push(e);
    }

    /// Drops the entries `revoked(subject, participant token)` picks; returns each
    /// dropped one's (subject token, target digest, actor token), so its shared entry
    /// can be dropped too.
    pub(crate) fn remove_revoked(
        &mut self,
        mut revoked: impl FnMut(&str, &str) -> bool,
    ) -> Vec<(String, [u8; 32], Option<String>)> {
        let mut gone = Vec::new();
        self.map.retain(|token, v| {
            v.retain(|e| {
                let participant = e.authorization.strip_prefix("Bearer ").unwrap_or("");
                if revoked(&e.subject, participant) {
                    gone.push((token.clone(), e.digest, e.actor.clone()));
                    false
                } else {
                    true
                }
            });
            !v.is_empty()
        });
        gone
    }

    /// Drops entries past their time.
    pub(crate) fn sweep(&mut self, now: u64) {
        self.map.retain(|_, v| {
            v.retain(|e| e.valid_until_ms > now);
            !v.is_empty()
        });
    }
}

//! Revocations (docs/DESIGN.md "Revocation"): the feed answer's parser, the set a
//! worker holds, its shared-data encoding and the request-path match. Pure: no host.
//!
//! The feed (`GET /revocations?since=V` on the exchange cluster) answers a snapshot
//! (`full: true`, the set replaces ours) or a delta (`added` / `removed` since `V`).
//! A `subject` entry matches an exact SPIFFE ID or a `SpiffeIdPattern`
//! (`spiffe://td/ns/a/*`); a `jti` entry a participant token's `jti`; `caller`
//! entries are the service's to enforce (kept, never matched here). Targets this
//! build does not know are skipped (a newer service may add some); anything else
//! malformed refuses the whole answer (the last set stays, staleness rises).

use std::collections::{BTreeMap, HashMap};

use meshpass_core::{SpiffeId, SpiffeIdPattern};
use serde::{Deserialize, Serialize};

/// Largest feed answer (and shared-data set) read, in bytes; most revocations a set
/// holds. A feed answer past either is refused whole: the last set stays, the staleness
/// gauge rises and the warning says why (the service refuses revocations past them).
pub use meshpass_core::revocation_feed::{MAX_BYTES as MAX_FEED_BYTES, MAX_ENTRIES};
/// Longest `reason` (characters), as the contract bounds it.
pub const MAX_REASON_CHARS: usize = 256;
/// Longest `id` / `match` accepted (bytes).
const MAX_FIELD_BYTES: usize = 2048;

/// Why a feed answer (or the stored set) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Larger than [`MAX_FEED_BYTES`].
    #[error("answer of {0} bytes exceeds the bound of {MAX_FEED_BYTES}")]
    TooLarge(usize),
    /// Not the feed's JSON shape.
    #[error("not a revocation feed document: {0}")]
    Shape(String),
    /// An entry breaks the contract (index in `added`, what is wrong).
    #[error("added[{index}]: {reason}")]
    Entry {
        /// Position in `added`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The set would hold more than [`MAX_ENTRIES`].
    #[error("{0} revocations exceed the bound of {MAX_ENTRIES}")]
    TooMany(usize),
    /// A delta that does not follow the version it was asked from.
    #[error("delta to version {to} does not follow version {from}")]
    OutOfOrder {
        /// The version the set is at.
        from: u64,
        /// The version the delta claims to lead to.
        to: u64,
    },
}

/// What a revocation matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A subject SPIFFE ID, exactly.
    Subject(String),
    /// Subjects matching a pattern (`spiffe://td/ns/a/*`).
    SubjectPattern(SpiffeIdPattern),
    /// A participant token's `jti`.
    Jti(String),
    /// A caller (enforced by the service; kept so the set round-trips).
    Caller(String),
}

/// One active revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The service's id (`rv-<uuid>`), what deltas remove by.
    pub id: String,
    /// What it matches.
    pub kind: Kind,
    /// Shown in the 403 (`revoked: <reason>`).
    pub reason: String,
    /// Lapses at this time (unix seconds), if given.
    pub until: Option<u64>,
}

impl Revocation {
    fn active(&self, now_s: u64) -> bool {
        self.until.is_none_or(|u| u > now_s)
    }
}

/// One entry as the feed (and the stored set) spells it; unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireEntry {
    id: String,
    target: String,
    #[serde(rename = "match")]
    pattern: String,
    reason: String,
    #[serde(default)]
    until: Option<u64>,
}

#[derive(Deserialize)]
struct WireFeed {
    version: u64,
    full: bool,
    #[serde(default)]
    added: Vec<WireEntry>,
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct WireSet {
    version: u64,
    entries: Vec<WireEntry>,
}

/// A parsed feed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// The version the answer brings the receiver to.
    pub version: u64,
    /// A snapshot (replace) rather than a delta.
    pub full: bool,
    /// New (or changed) revocations.
    pub added: Vec<Revocation>,
    /// Ids lifted or lapsed.
    pub removed: Vec<String>,
}

fn entry(index: usize, w: WireEntry) -> Result<Option<Revocation>, FeedError> {
    let bad = |reason: &str| FeedError::Entry {
        index,
        reason: reason.to_string(),
    };
    if w.id.is_empty() || w.id.len() > MAX_FIELD_BYTES {
        return Err(bad("id must be 1..=2048 bytes"));
    }
    if w.pattern.len() > MAX_FIELD_BYTES {
        return Err(bad("match is longer than 2048 bytes"));
    }
    let chars = w.reason.chars().count();
    if chars == 0 || chars > MAX_REASON_CHARS {
        return Err(bad("reason must be 1..=256 characters"));
    }
    let kind = match w.target.as_str() {
        "subject" => match SpiffeIdPattern::parse(&w.pattern) {
            Ok(SpiffeIdPattern::Exact(id)) => Kind::Subject(id.as_str().to_string()),
            Ok(p) => Kind::SubjectPattern(p),
            Err(e) => return Err(bad(&format!("match: {e}"))),
        },
        "caller" => Kind::Caller(w.pattern),
        "jti" if !w.pattern.is_empty() => Kind::Jti(w.pattern),
        "jti" => return Err(bad("match: an empty jti")),
        // A target a newer service added: not ours to enforce.
        _ => return Ok(None),
    };
    Ok(Some(Revocation {
        id: w.id,
        kind,
        reason: w.reason,
        until: w.until,
    }))
}

fn entries(wire: Vec<WireEntry>) -> Result<Vec<Revocation>, FeedError> {
    let mut out = Vec::with_capacity(wire.len());
    for (i, w) in wire.into_iter().enumerate() {
        if let Some(r) = entry(i, w)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Parses a `200` feed answer.
pub fn parse_feed(bytes: &[u8]) -> Result<Feed, FeedError> {
    if bytes.len() > MAX_FEED_BYTES {
        return Err(FeedError::TooLarge(bytes.len()));
    }
    let w: WireFeed = serde_json::from_slice(bytes).map_err(|e| FeedError::Shape(e.to_string()))?;
    if w.added.len() > MAX_ENTRIES {
        return Err(FeedError::TooMany(w.added.len()));
    }
    if w.full && !w.removed.is_empty() {
        return Err(FeedError::Shape("a snapshot with removed ids".into()));
    }
    Ok(Feed {
        version: w.version,
        full: w.full,
        added: entries(w.added)?,
        removed: w.removed,
    })
}

/// What a request matched: the revocation's reason.
pub type Reason<'a> = &'a str;

/// The revocations a worker holds, indexed for the request path: exact subjects and
/// `jti`s in hash maps, patterns in a list (checked only when there are any).
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    version: u64,
    by_id: BTreeMap<String, Revocation>,
    subjects: HashMap<String, String>,
    jtis: HashMap<String, String>,
    patterns: Vec<String>,
}

/// Indexes `key` to revocation `id`, unless the one it already names lasts at least as
/// long: one subject or `jti` may be revoked more than once, and the entry lasting
/// longest is in force whenever any is (activity is only `until`), so one lookup stays
/// exact.
fn keep_longest(
    index: &mut HashMap<String, String>,
    by_id: &BTreeMap<String, Revocation>,
    key: &str,
    id: &str,
) {
    // `None` (for good) lasts longest: order by (is for good, until).
    let lasts = |id: &str| by_id.get(id).map(|r| (r.until.is_none(), r.until));
    match index.get(key) {
        Some(held) if lasts(held) >= lasts(id) => {}
        _ => {
            index.insert(key.to_owned(), id.to_owned());
        }
    }
}

impl RevocationSet {
    /// The feed version this set is at (0: none yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Active and lapsed-but-not-yet-removed revocations held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether any `jti` is revoked (only then is a participant token's `jti` read).
    pub fn has_jtis(&self) -> bool {
        !self.jtis.is_empty()
    }

    fn from_entries(version: u64, list: Vec<Revocation>) -> Result<RevocationSet, FeedError> {
        let mut by_id = BTreeMap::new();
        for r in list {
            by_id.insert(r.id.clone(), r);
        }
        RevocationSet::index(version, by_id)
    }

    fn index(version: u64, by_id: BTreeMap<String, Revocation>) -> Result<Self, FeedError> {
        if by_id.len() > MAX_ENTRIES {
            return Err(FeedError::TooMany(by_id.len()));
        }
        let mut s = RevocationSet {
            version,
            ..RevocationSet::default()
        };
        for (id, r) in &by_id {
            match &r.kind {
                Kind::Subject(sub) => keep_longest(&mut s.subjects, &by_id, sub, id),
                Kind::Jti(j) => keep_longest(&mut s.jtis, &by_id, j, id),
                Kind::SubjectPattern(_) => s.patterns.push(id.clone()),
                Kind::Caller(_) => {}
            }
        }
        s.by_id = by_id;
        Ok(s)
    }

    /// The set after `feed` (a snapshot replaces it, a delta must follow its version).
    pub fn apply(&self, feed: Feed) -> Result<RevocationSet, FeedError> {
        if feed.full {
            return RevocationSet::from_entries(feed.version, feed.added);
        }
        if feed.version <= self.version {
            return Err(FeedError::OutOfOrder {
                from: self.version,
                to: feed.version,
            });
        }
        let mut by_id = self.by_id.clone();
        for id in &feed.removed {
            by_id.remove(id);
        }
        for r in feed.added {
            by_id.insert(r.id.clone(), r);
        }
        RevocationSet::index(feed.version, by_id)
    }

    fn hit(&self, id: Option<&String>, now_s: u64) -> Option<Reason<'_>> {
        let r = self.by_id.get(id?)?;
        r.active(now_s).then_some(r.reason.as_str())
    }

    /// The reason `subject` is revoked (exactly or by a pattern), if it is.
    pub fn subject(&self, subject: &str, now_s: u64) -> Option<Reason<'_>> {
        if let Some(r) = self.hit(self.subjects.get(subject), now_s) {
            return Some(r);
        }
        if self.patterns.is_empty() {
            return None;
        }
        let id = SpiffeId::parse(subject).ok()?;
        self.patterns.iter().find_map(|pid| {
            let r = self.by_id.get(pid)?;
            match &r.kind {
                Kind::SubjectPattern(p) if p.matches(&id) && r.active(now_s) => {
                    Some(r.reason.as_str())
                }
                _ => None,
            }
        })
    }

    /// The reason a participant token with this `jti` is revoked, if it is.
    pub fn jti(&self, jti: &str, now_s: u64) -> Option<Reason<'_>> {
        self.hit(self.jtis.get(jti), now_s)
    }

    /// The reason a cached token (its subject, the participant token) is revoked: the
    /// subject first; the token's payload is read only when it can matter: its `jti`
    /// when `jti`s are revoked, its actors (every `sub` down `act`) when subjects are (a
    /// revoked workload may not act for anyone either, at any depth).
    pub fn check(&self, subject: &str, participant: &str, now_s: u64) -> Option<Reason<'_>> {
        if self.is_empty() {
            return None;
        }
        if let Some(r) = self.subject(subject, now_s) {
            return Some(r);
        }
        let subjects = !self.subjects.is_empty() || !self.patterns.is_empty();
        if !self.has_jtis() && !subjects {
            return None;
        }
        let ids = TokenIds::of(participant)?;
        if let Some(r) = ids.jti.as_deref().and_then(|j| self.jti(j, now_s)) {
            return Some(r);
        }
        ids.actors
            .iter()
            .filter(|_| subjects)
            .find_map(|a| self.subject(a, now_s))
    }

    /// The shared-data form (`{"version", "entries"}`, entries as the feed spells them).
    pub fn encode(&self) -> Vec<u8> {
        let entries = self
            .by_id
            .values()
            .map(|r| {
                let (target, pattern) = match &r.kind {
                    Kind::Subject(s) => ("subject", s.clone()),
                    Kind::SubjectPattern(p) => ("subject", p.to_string()),
                    Kind::Jti(j) => ("jti", j.clone()),
                    Kind::Caller(c) => ("caller", c.clone()),
                };
                WireEntry {
                    id: r.id.clone(),
                    target: target.to_string(),
                    pattern,
                    reason: r.reason.clone(),
                    until: r.until,
                }
            })
            .collect();
        serde_json::to_vec(&WireSet {
            version: self.version,
            entries,
        })
        .unwrap_or_default()
    }

    /// Reads the shared-data form back.
    pub fn decode(bytes: &[u8]) -> Result<RevocationSet, FeedError> {
        if bytes.len() > MAX_FEED_BYTES {
            return Err(FeedError::TooLarge(bytes.len()));
        }
        let w: WireSet =
            serde_json::from_slice(bytes).map_err(|e| FeedError::Shape(e.to_string()))?;
        if w.entries.len() > MAX_ENTRIES {
            return Err(FeedError::TooMany(w.entries.len()));
        }
        RevocationSet::from_entries(w.version, entries(w.entries)?)
    }
}

/// What a participant token says that a revocation can name: its `jti` and its actors
/// (`act.sub`, `act.act.sub`, ...). The payload is read unverified: the filter holds
/// the token the exchange service issued to it; these only select which revocation
/// applies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenIds {
    /// `jti`.
    pub jti: Option<String>,
    /// Every `sub` down the `act` chain, the current actor first (serde_json's depth
    /// limit bounds it).
    pub actors: Vec<String>,
}

impl TokenIds {
    /// The ids of a compact JWT, or None when its payload is not a JSON object (or its
    /// `jti` is neither a string nor null).
    pub fn of(token: &str) -> Option<TokenIds> {
        use serde_json::Value;
        let payload = token.split('.').nth(1)?;
        let bytes = meshpass_core::b64::decode(payload).ok()?;
        // Into a map, not a struct: a derived struct also reads a JSON array, and skips
        // the claims it does not name without checking their strings.
        let claims = serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes).ok()?;
        let jti = match claims.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(j)) => Some(j.clone()),
            Some(_) => return None,
        };
        // A revoked workload may not act for anyone at any depth, as the service rules.
        let mut actors = Vec::new();
        let mut act = claims.get("act");
        while let Some(a) = act {
            if let Some(s) = a.get("sub").and_then(Value::as_str) {
                actors.push(s.to_string());
            }
            act = a.get("act");
        }
        Some(TokenIds { jti, actors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(v: serde_json::Value) -> Result<Feed, FeedError> {
        parse_feed(v.to_string().as_bytes())
    }

    fn sub(id: &str, m: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "target": "subject", "match": m, "reason": format!("why {id}"), "until": null})
    }

    #[test]
    fn a_snapshot_replaces_and_a_delta_adds_and_removes() {
        let set = RevocationSet::default();
        let snap = feed(serde_json::json!({"version": 3, "full": true, "added": [
            sub("rv-1", "spiffe://td/ns/a/sa/b"),
            sub("rv-2", "spiffe://td/ns/x/*"),
            {"id": "rv-3", "target": "jti", "match": "j-1", "reason": "leaked"},
            {"id": "rv-4", "target": "caller", "match": "spiffe://td/ns/c/sa/d", "reason": "c"},
        ], "removed": []}))
        .unwrap();
        let set = set.apply(snap).unwrap();
        assert_eq!((set.version(), set.len()), (3, 4));
        assert_eq!(set.subject("spiffe://td/ns/a/sa/b", 0), Some("why rv-1"));
        assert_eq!(set.subject("spiffe://td/ns/x/sa/y", 0), Some("why rv-2"));
        assert_eq!(set.subject("spiffe://td/ns/xy/sa/y", 0), None);
        assert_eq!(
            set.subject("spiffe://td/ns/c/sa/d", 0),
            None,
            "callers are the service's"
        );
        assert_eq!(set.jti("j-1", 0), Some("leaked"));
        let delta = feed(serde_json::json!({"version": 5, "full": false,
            "added": [sub("rv-5", "spiffe://td/ns/e/sa/f")], "removed": ["rv-1", "rv-9"]}))
        .unwrap();
        let set = set.apply(delta).unwrap();
        assert_eq!((set.version(), set.len()), (5, 4));
        assert_eq!(set.subject("spiffe://td/ns/a/sa/b", 0), None);
        assert_eq!(set.subject("spiffe://td/ns/e/sa/f", 0), Some("why rv-5"));
    }

    #[test]
    fn a_subject_or_jti_revoked_twice_stays_revoked_while_either_is_in_force() {
        // The service lets one subject or jti be revoked more than once: here for good
        // and for a while, the lapsing one under either id order.
        for (forever, brief) in [("rv-a", "rv-b"), ("rv-b", "rv-a")] {
            let s = "spiffe://td/ns/a/sa/b";
            let snap = feed(serde_json::json!({"version": 2, "full": true, "added": [
                sub(forever, s),
                {"id": brief, "target": "subject", "match": s, "reason": "brief", "until": 100},
                {"id": format!("{forever}-j"), "target": "jti", "match": "j-1", "reason": "leaked"},
                {"id": format!("{brief}-j"), "target": "jti", "match": "j-1", "reason": "brief", "until": 100},
            ]}))
            .unwrap();
            let set = RevocationSet::default().apply(snap).unwrap();
            assert!(set.subject(s, 50).is_some());
            let later = format!("why {forever}");
            assert_eq!(set.subject(s, 200), Some(later.as_str()), "{forever}");
            assert_eq!(set.jti("j-1", 200), Some("leaked"), "{forever}");
        }
    }

    #[test]
    fn a_delta_that_does_not_move_forward_is_refused() {
        let set = RevocationSet::default()
            .apply(feed(serde_json::json!({"version": 4, "full": true, "added": []})).unwrap())
            .unwrap();
        let old =
            feed(serde_json::json!({"version": 4, "full": false, "added": [], "removed": []}))
                .unwrap();
        assert_eq!(
            set.apply(old).unwrap_err(),
            FeedError::OutOfOrder { from: 4, to: 4 }
        );
    }

    #[test]
    fn a_lapsed_revocation_no_longer_matches() {
        let mut e = sub("rv-1", "spiffe://td/ns/a/sa/b");
        e["until"] = serde_json::json!(100);
        let set = RevocationSet::default()
            .apply(feed(serde_json::json!({"version": 1, "full": true, "added": [e]})).unwrap())
            .unwrap();
        assert_eq!(set.subject("spiffe://td/ns/a/sa/b", 99), Some("why rv-1"));
        assert_eq!(set.subject("spiffe://td/ns/a/sa/b", 100), None);
    }

    #[test]
    fn malformed_entries_refuse_the_answer_and_unknown_targets_are_skipped() {
        for (bad, field) in [
            (sub("rv-1", "not-a-spiffe-id"), "added[0]: match"),
            (sub("", "spiffe://td/ns/a/sa/b"), "added[0]: id"),
            (
                serde_json::json!({"id": "rv", "target": "jti", "match": "", "reason": "r"}),
                "added[0]: match",
            ),
            (
                serde_json::json!({"id": "rv", "target": "jti", "match": "j", "reason": ""}),
                "added[0]: reason",
            ),
            (
                serde_json::json!({"id": "rv", "target": "jti", "match": "j", "reason": "x".repeat(257)}),
                "added[0]: reason",
            ),
        ] {
            let e =
                feed(serde_json::json!({"version": 1, "full": true, "added": [bad]})).unwrap_err();
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let f = feed(serde_json::json!({"version": 1, "full": true,
            "added": [{"id": "rv", "target": "device", "match": "d", "reason": "r"}]}))
        .unwrap();
        assert!(f.added.is_empty());
        assert!(matches!(parse_feed(b"{}"), Err(FeedError::Shape(_))));
        assert!(matches!(parse_feed(b"[1]"), Err(FeedError::Shape(_))));
    }

    #[test]
    fn more_than_the_bound_refuses_the_answer() {
        let added: Vec<_> = (0..=MAX_ENTRIES)
            .map(|i| serde_json::json!({"id": format!("rv-{i}"), "target": "jti", "match": format!("j{i}"), "reason": "r"}))
            .collect();
        let e = feed(serde_json::json!({"version": 1, "full": true, "added": added})).unwrap_err();
        assert_eq!(e, FeedError::TooMany(MAX_ENTRIES + 1));
        assert_eq!(
            parse_feed(&vec![b' '; MAX_FEED_BYTES + 1]).unwrap_err(),
            FeedError::TooLarge(MAX_FEED_BYTES + 1)
        );
    }

    #[test]
    fn the_shared_form_round_trips() {
        let set = RevocationSet::default()
            .apply(
                feed(serde_json::json!({"version": 9, "full": true, "added": [
                    sub("rv-1", "spiffe://td/ns/a/sa/b"),
                    sub("rv-2", "spiffe://td/ns/x/*"),
                    {"id": "rv-3", "target": "jti", "match": "j-1", "reason": "leaked", "until": 7},
                ]}))
                .unwrap(),
            )
            .unwrap();
        let back = RevocationSet::decode(&set.encode()).unwrap();
        assert_eq!(back.version(), 9);
        assert_eq!(back.by_id, set.by_id);
        assert_eq!(back.subject("spiffe://td/ns/x/sa/q", 0), Some("why rv-2"));
    }

    #[test]
    fn check_reads_the_jti_only_when_jtis_are_revoked() {
        let tok =
            |claims: &str| format!("e30.{}.sig", meshpass_core::b64::encode(claims.as_bytes()));
        let set = RevocationSet::default()
            .apply(
                feed(serde_json::json!({"version": 1, "full": true, "added": [
                    {"id": "rv-3", "target": "jti", "match": "j-1", "reason": "leaked"},
                ]}))
                .unwrap(),
            )
            .unwrap();
        assert_eq!(
            TokenIds::of(&tok(r#"{"jti":"j-1"}"#))
                .and_then(|i| i.jti)
                .as_deref(),
            Some("j-1")
        );
        assert_eq!(
            set.check("spiffe://td/ns/a/sa/b", &tok(r#"{"jti":"j-1"}"#), 0),
            Some("leaked")
        );
        assert_eq!(
            set.check("spiffe://td/ns/a/sa/b", &tok(r#"{"jti":"j-2"}"#), 0),
            None
        );
        assert_eq!(set.check("spiffe://td/ns/a/sa/b", "garbage", 0), None);
        assert_eq!(RevocationSet::default().check("s", "t", 0), None);
    }

    #[test]
    fn a_payload_that_is_not_a_json_object_names_no_ids() {
        // Found by fuzz/fuzz_targets/exchange_answer.rs: ids were read from a payload
        // with invalid UTF-8 in a claim the reader skipped, and from a JSON array.
        for payload in [
            &b"{\"er\":\"i\x92\x91\xff\xff\xff\xff\xff\"}"[..],
            br#"["j-1", {"sub": "spiffe://td/ns/a/sa/b"}]"#,
            br#"{"jti": "j-1", "x": "\ud800"}"#,
        ] {
            let token = format!("e30.{}.sig", meshpass_core::b64::encode(payload));
            assert_eq!(TokenIds::of(&token), None, "{payload:?}");
        }
    }

    #[test]
    fn check_refuses_a_token_whose_actor_is_a_revoked_subject() {
        let tok =
            |claims: &str| format!("e30.{}.sig", meshpass_core::b64::encode(claims.as_bytes()));
        let set = RevocationSet::default()
            .apply(
                feed(serde_json::json!({"version": 1, "full": true, "added": [
                    sub("rv-1", "spiffe://td/ns/batch/*"),
                ]}))
                .unwrap(),
            )
            .unwrap();
        let acted =
            tok(r#"{"jti":"j","act":{"sub":"spiffe://td/ns/batch/sa/run","act":{"sub":"y"}}}"#);
        assert_eq!(
            set.check("spiffe://td/ns/a/sa/b", &acted, 0),
            Some("why rv-1")
        );
        let other = tok(r#"{"jti":"j","act":{"sub":"spiffe://td/ns/c/sa/d"}}"#);
        assert_eq!(set.check("spiffe://td/ns/a/sa/b", &other, 0), None);
        // An earlier actor down the chain: the service refuses to mint for it and
        // drops its cached tokens; the filter served them until they expired.
        let nested = tok(
            r#"{"jti":"j","act":{"sub":"spiffe://td/ns/gw/sa/gw","act":{"sub":"spiffe://td/ns/batch/sa/run"}}}"#,
        );
        assert_eq!(
            set.check("spiffe://td/ns/a/sa/b", &nested, 0),
            Some("why rv-1"),
            "a revoked earlier actor in the act chain was not matched"
        );
        // An `act` that is not an object names no actor; the token is still read.
        let odd = tok(r#"{"jti":"j","act":"x"}"#);
        assert_eq!(
            TokenIds::of(&odd),
            Some(TokenIds {
                jti: Some("j".into()),
                actors: Vec::new()
            })
        );
        assert_eq!(set.check("spiffe://td/ns/a/sa/b", &odd, 0), None);
    }
}

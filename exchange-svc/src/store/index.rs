//! The mapping that applies to a subject, found without walking every mapping of the
//! resource. Built once per resource snapshot (`cached.rs` shares snapshots between
//! exchanges): an exact ID is one hash lookup, a prefix pattern one lookup per path
//! segment of the subject (its ancestors). Walking and re-parsing every pattern on each
//! exchange cost about 0.5 µs per mapping and made 10,000 mappings of one resource
//! collapse under load (`make bench`, section "mapping scaling").

use std::collections::HashMap;
use std::sync::OnceLock;

use meshpass_core::{SpiffeId, SpiffeIdPattern};

use super::Mapping;

/// Subject patterns → position in the resource's mappings (which are sorted by name).
#[derive(Debug, Clone, Default)]
pub(crate) struct MappingIndex {
    /// Exact IDs.
    exact: HashMap<String, usize>,
    /// Prefix patterns by the ID they cover, without the trailing `/*`
    /// (`spiffe://td/ns/a`; `spiffe://td` for a whole trust domain).
    prefix: HashMap<String, usize>,
}

impl MappingIndex {
    /// Indexes `mappings`; a stored pattern that does not parse matches nothing (and is
    /// logged once per snapshot, not once per exchange).
    pub(crate) fn build(mappings: &[Mapping]) -> Self {
        let mut ix = MappingIndex::default();
        for (i, m) in mappings.iter().enumerate() {
            // The same pattern twice: the first by name wins (`or_insert`).
            match SpiffeIdPattern::parse(&m.subject) {
                Ok(SpiffeIdPattern::Exact(id)) => {
                    ix.exact.entry(id.as_str().to_owned()).or_insert(i);
                }
                Ok(SpiffeIdPattern::Prefix { .. }) => {
                    if let Some(base) = m.subject.strip_suffix("/*") {
                        ix.prefix.entry(base.to_owned()).or_insert(i);
                    }
                }
                Err(_) => {
                    tracing::warn!(mapping = %m.name, "stored mapping has an invalid subject pattern");
                }
            }
        }
        ix
    }

    /// The most specific match for `id`: an exact ID beats a prefix, a longer prefix a
    /// shorter one. Prefixes are segment-aligned (`/ns/foo` covers `/ns/foo` and
    /// `/ns/foo/x`, never `/ns/foobar`), so the candidates are the ID and its ancestors.
    pub(crate) fn best(&self, id: &SpiffeId) -> Option<usize> {
        let s = id.as_str();
        if let Some(&i) = self.exact.get(s) {
            return Some(i);
        }
        if self.prefix.is_empty() {
            return None;
        }
        let root = s.len() - id.path().len();
        let mut end = s.len();
        loop {
            if let Some(&i) = s.get(..end).and_then(|c| self.prefix.get(c)) {
                return Some(i);
            }
            if end <= root {
                return None;
            }
            end = s
                .get(root..end)
                .and_then(|p| p.rfind('/'))
                .map_or(root, |j| root + j);
        }
    }
}

/// A [`MappingIndex`] built on first use. Derived data: it takes no part in equality.
#[derive(Debug, Clone, Default)]
pub(crate) struct LazyIndex(OnceLock<MappingIndex>);

impl LazyIndex {
    /// The index of `mappings` (built now if this is the first lookup).
    pub(crate) fn get(&self, mappings: &[Mapping]) -> &MappingIndex {
        self.0.get_or_init(|| MappingIndex::build(mappings))
    }
}

impl PartialEq for LazyIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mapping(name: &str, subject: &str) -> Mapping {
        Mapping {
            name: name.into(),
            subject: subject.into(),
            resource: "payments".into(),
            participant: "acme".into(),
            audiences: vec![],
            scopes: vec![],
            ttl_secs: 60,
            rate_limit: None,
            allowed_callers: vec![],
            allowed_actors: vec![],
        }
    }

    fn pick<'a>(ms: &'a [Mapping], s: &str) -> Option<&'a str> {
        let id = SpiffeId::parse(s).unwrap();
        MappingIndex::build(ms)
            .best(&id)
            .map(|i| ms[i].name.as_str())
    }

    /// The rule as written in DESIGN.md, by walking every pattern: the oracle.
    fn walk<'a>(ms: &'a [Mapping], s: &str) -> Option<&'a str> {
        let id = SpiffeId::parse(s).unwrap();
        let mut best: Option<(usize, &Mapping)> = None;
        for m in ms {
            let Ok(p) = SpiffeIdPattern::parse(&m.subject) else {
                continue;
            };
            if !p.matches(&id) {
                continue;
            }
            let rank = match &p {
                SpiffeIdPattern::Exact(_) => usize::MAX,
                SpiffeIdPattern::Prefix { prefix, .. } => prefix.len(),
            };
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, m));
            }
        }
        best.map(|(_, m)| m.name.as_str())
    }

    #[test]
    fn an_exact_id_beats_a_prefix_and_a_longer_prefix_beats_a_shorter_one() {
        let ms = vec![
            mapping("any", "spiffe://td/*"),
            mapping("exact", "spiffe://td/ns/shop/sa/web"),
            mapping("ns", "spiffe://td/ns/shop/*"),
        ];
        assert_eq!(pick(&ms, "spiffe://td/ns/shop/sa/web"), Some("exact"));
        assert_eq!(pick(&ms, "spiffe://td/ns/shop/sa/api"), Some("ns"));
        assert_eq!(pick(&ms, "spiffe://td/ns/shop"), Some("ns"));
        assert_eq!(pick(&ms, "spiffe://td/ns/other/sa/x"), Some("any"));
        assert_eq!(pick(&ms, "spiffe://other/ns/shop/sa/web"), None);
    }

    #[test]
    fn prefixes_are_segment_aligned() {
        let ms = vec![mapping("foo", "spiffe://td/ns/foo/*")];
        assert_eq!(pick(&ms, "spiffe://td/ns/foo/sa/a"), Some("foo"));
        assert_eq!(pick(&ms, "spiffe://td/ns/foobar/sa/a"), None);
        assert_eq!(pick(&ms, "spiffe://td/ns"), None);
        assert_eq!(pick(&ms, "spiffe://tdx/ns/foo/sa/a"), None);
    }

    #[test]
    fn an_exact_id_and_a_prefix_of_the_same_path_prefer_the_exact_one() {
        let ms = vec![
            mapping("a-prefix", "spiffe://td/ns/a/*"),
            mapping("b-exact", "spiffe://td/ns/a"),
        ];
        assert_eq!(pick(&ms, "spiffe://td/ns/a"), Some("b-exact"));
        assert_eq!(pick(&ms, "spiffe://td/ns/a/x"), Some("a-prefix"));
    }

    #[test]
    fn the_same_pattern_twice_goes_to_the_first_by_name_and_invalid_ones_match_nothing() {
        let ms = vec![
            mapping("a", "spiffe://td/ns/*"),
            mapping("b", "spiffe://td/ns/*"),
            mapping("bad", "spiffe://td/n*s/x"),
        ];
        assert_eq!(pick(&ms, "spiffe://td/ns/x"), Some("a"));
        assert_eq!(pick(&ms[2..], "spiffe://td/ns/x"), None);
    }

    #[test]
    fn the_index_agrees_with_walking_every_pattern_on_generated_mappings() {
        // Deterministic pseudo-random patterns and IDs over a small alphabet, so that
        // exact IDs, prefixes, near misses (`a` vs `ab`) and other trust domains collide.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let segs = ["a", "ab", "b", "ns", "sa"];
        let gen_path = |next: &mut dyn FnMut(u64) -> u64| {
            let td = if next(5) == 0 { "other" } else { "td" };
            let depth = next(4);
            let mut s = format!("spiffe://{td}");
            for _ in 0..depth {
                s.push('/');
                s.push_str(segs[next(segs.len() as u64) as usize]);
            }
            s
        };
        let mut matched = 0;
        for round in 0..200 {
            let mut ms: Vec<Mapping> = (0..(1 + next(12)))
                .map(|i| {
                    let base = gen_path(&mut next);
                    let subject = if next(2) == 0 {
                        format!("{base}/*")
                    } else {
                        base
                    };
                    mapping(&format!("m{round}-{i:02}"), &subject)
                })
                .filter(|m| SpiffeIdPattern::parse(&m.subject).is_ok())
                .collect();
            ms.sort_by(|a, b| a.name.cmp(&b.name));
            for _ in 0..30 {
                let id = gen_path(&mut next);
                if SpiffeId::parse(&id).is_err() {
                    continue;
                }
                let want = walk(&ms, &id);
                matched += usize::from(want.is_some());
                assert_eq!(pick(&ms, &id), want, "{id} against {ms:?}");
            }
        }
        assert!(matched > 500, "the generator rarely matches: {matched}");
    }
}

//! A header map in the proxy-wasm wire layout, read in place.
//!
//! The host hands the whole request header map over as one buffer: a little-endian
//! `u32` pair count, then a `u32` name length and a `u32` value length per pair, then
//! each name and each value followed by a NUL byte. The SDK's `get_map_bytes` copies
//! that into a `String` and a `Vec` per header (about half of a cache hit's wasm
//! instructions); [`HeaderMap`] keeps the one buffer and lends slices of it.
//! [`HeaderMap::parse`] checks the layout once, so iterating never fails. Names and
//! values stay bytes: a lookup compares bytes, and only what the filter must hand back
//! to the host by name (a reserved header to remove) has to be UTF-8.
//!
//! The checking pass also notes what every request asks for, so a cache hit walks the
//! map once instead of three times: whether any name is reserved (hygiene then has
//! nothing to look for) and where `authorization` is (on the host, `hit_loop` under
//! callgrind: 1,480 → 1,065 instructions per hit, bench/notes.md).

use std::str;

/// The reserved prefix: no client-sent header with it reaches the upstream.
pub const RESERVED_PREFIX: &str = "x-meshpass-";

/// Bytes of one `u32` in the layout.
const WORD: usize = 4;

/// Whether `name` starts with [`RESERVED_PREFIX`], in any case and with `_` for any
/// `-`: CGI, WSGI and Rack read `x-meshpass_subject` as `HTTP_X_MESHPASS_SUBJECT`, the
/// same variable as the header the filter writes.
pub fn is_reserved(name: &[u8]) -> bool {
    name.get(..RESERVED_PREFIX.len()).is_some_and(|p| {
        p.iter()
            .zip(RESERVED_PREFIX.as_bytes())
            .all(|(&c, &r)| c.to_ascii_lowercase() == r || (r == b'-' && c == b'_'))
    })
}

/// A checked header map: every length in bounds, every name and value NUL-terminated,
/// every reserved name ([`is_reserved`]) UTF-8, so it can be removed by name. The only
/// ways in are [`HeaderMap::parse`], [`HeaderMap::encode`] and [`HeaderMap::default`]
/// (empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    buf: Vec<u8>,
    pairs: usize,
    /// Whether any name is reserved, noted by the pass that checks the layout: a request
    /// without one (nearly all) then needs no second pass for header hygiene.
    any_reserved: bool,
    /// Where the first `authorization` value is (start, length), noted by the same pass:
    /// the filter reads or rewrites it on every request.
    authorization: Option<(usize, usize)>,
}

/// The header the filter reads or rewrites on every request, located while parsing.
const AUTHORIZATION: &[u8] = b"authorization";

fn word(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(WORD)?)?;
    let mut w = [0u8; WORD];
    w.copy_from_slice(bytes);
    usize::try_from(u32::from_le_bytes(w)).ok()
}

impl HeaderMap {
    /// Checks `buf`'s layout. `None` when it is malformed (a length out of bounds, a
    /// missing NUL, a reserved name that is not UTF-8, bytes left over): the caller
    /// treats that as a request without headers, which fails closed (no token). Envoy's
    /// codecs refuse such names before any filter runs; this is the backstop.
    pub fn parse(buf: Vec<u8>) -> Option<HeaderMap> {
        if buf.is_empty() {
            return Some(HeaderMap::default());
        }
        let pairs = word(&buf, 0)?;
        // Each pair takes at least 8 bytes of lengths and 2 NULs.
        if pairs > buf.len() / (2 * WORD + 2) {
            return None;
        }
        let mut data = WORD + pairs * 2 * WORD;
        let mut any_reserved = false;
        let mut authorization = None;
        for i in 0..pairs {
            let name_len = word(&buf, WORD + i * 2 * WORD)?;
            let value_len = word(&buf, WORD + i * 2 * WORD + WORD)?;
            let name_end = data.checked_add(name_len)?;
            let name = buf.get(data..name_end)?;
            if is_reserved(name) {
                str::from_utf8(name).ok()?;
                any_reserved = true;
            }
            if buf.get(name_end) != Some(&0) {
                return None;
            }
            let value_end = (name_end + 1).checked_add(value_len)?;
            if buf.get(value_end) != Some(&0) {
                return None;
            }
            if authorization.is_none() && name == AUTHORIZATION {
                authorization = Some((name_end + 1, value_len));
            }
            data = value_end + 1;
        }
        (data == buf.len()).then_some(HeaderMap {
            buf,
            pairs,
            any_reserved,
            authorization,
        })
    }

    /// Lays `pairs` out as the host does (hosts in tests and benchmarks).
    pub fn encode<N: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> HeaderMap {
        let list: Vec<(N, V)> = pairs.into_iter().collect();
        let mut buf = Vec::new();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        buf.extend_from_slice(&count(list.len()));
        for (k, v) in &list {
            buf.extend_from_slice(&count(k.as_ref().len()));
            buf.extend_from_slice(&count(v.as_ref().len()));
        }
        let mut authorization = None;
        for (k, v) in &list {
            buf.extend_from_slice(k.as_ref());
            buf.push(0);
            if authorization.is_none() && k.as_ref() == AUTHORIZATION {
                authorization = Some((buf.len(), v.as_ref().len()));
            }
            buf.extend_from_slice(v.as_ref());
            buf.push(0);
        }
        HeaderMap {
            buf,
            pairs: list.len(),
            any_reserved: list.iter().any(|(k, _)| is_reserved(k.as_ref())),
            authorization,
        }
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.pairs
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs == 0
    }

    /// The headers in the host's order, as (name, value) slices of the one buffer.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut data = WORD + self.pairs * 2 * WORD;
        (0..self.pairs).filter_map(move |i| {
            // In bounds: checked by `parse`, built so by `encode`.
            let name_len = word(&self.buf, WORD + i * 2 * WORD)?;
            let value_len = word(&self.buf, WORD + i * 2 * WORD + WORD)?;
            let name = self.buf.get(data..data + name_len)?;
            let value_at = data + name_len + 1;
            let value = self.buf.get(value_at..value_at + value_len)?;
            data = value_at + value_len + 1;
            Some((name, value))
        })
    }

    /// The first value of `name` (names are lower case, as Envoy hands them over).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        if name.as_bytes() == AUTHORIZATION {
            let (at, len) = self.authorization?;
            return self.buf.get(at..at + len);
        }
        self.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The reserved names present ([`is_reserved`]), as `str` for removal by name.
    pub fn reserved_names(&self) -> impl Iterator<Item = &str> + '_ {
        // `take(0)` when parse saw none: no pass over the map at all.
        let n = if self.any_reserved { self.pairs } else { 0 };
        self.iter()
            .take(n)
            .filter(|(k, _)| is_reserved(k))
            .filter_map(|(k, _)| str::from_utf8(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderMap {
        HeaderMap::encode([
            (":path", b"/a".as_slice()),
            ("authorization", b"Bearer x.y.z".as_slice()),
            ("x-empty", b"".as_slice()),
        ])
    }

    #[test]
    fn encoded_maps_parse_back_to_the_same_pairs() {
        let m = sample();
        let again = HeaderMap::parse(m.buf.clone()).unwrap();
        assert_eq!(again, m);
        let pairs: Vec<_> = again.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (b":path".as_slice(), b"/a".as_slice()),
                (b"authorization".as_slice(), b"Bearer x.y.z".as_slice()),
                (b"x-empty".as_slice(), b"".as_slice()),
            ]
        );
        assert_eq!(again.get("authorization"), Some(b"Bearer x.y.z".as_slice()));
        assert_eq!(again.get("Authorization"), None);
    }

    #[test]
    fn an_empty_buffer_is_an_empty_map() {
        assert!(HeaderMap::parse(Vec::new()).unwrap().is_empty());
        assert!(HeaderMap::parse(0u32.to_le_bytes().to_vec())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_every_truncation_of_a_valid_map() {
        let buf = sample().buf;
        for cut in 1..buf.len() {
            assert_eq!(HeaderMap::parse(buf[..cut].to_vec()), None, "cut at {cut}");
        }
    }

    #[test]
    fn rejects_trailing_bytes_missing_nuls_and_huge_counts() {
        let mut buf = sample().buf;
        buf.push(0);
        assert_eq!(HeaderMap::parse(buf), None);
        let mut buf = sample().buf;
        let nul = 4 + 3 * 8 + ":path".len();
        buf[nul] = b'x';
        assert_eq!(HeaderMap::parse(buf), None);
        let mut buf = sample().buf;
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(buf), None);
        let mut buf = sample().buf;
        // The second name's length pointing past the end.
        buf[4 + 8..4 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(buf), None);
    }

    #[test]
    fn rejects_a_reserved_name_that_is_not_utf8_and_keeps_other_names_as_bytes() {
        let mut buf = HeaderMap::encode([("X-Meshpass-a", b"v".as_slice())]).buf;
        buf[4 + 8 + 11] = 0xff;
        assert_eq!(HeaderMap::parse(buf), None);
        let mut buf = HeaderMap::encode([("x-other-a", b"v".as_slice())]).buf;
        buf[4 + 8 + 8] = 0xff;
        let m = HeaderMap::parse(buf).unwrap();
        assert_eq!(
            m.iter().next().map(|(k, _)| k),
            Some(b"x-other-\xff".as_slice())
        );
        assert_eq!(m.reserved_names().count(), 0);
    }

    #[test]
    fn reserved_names_are_found_with_underscores_for_dashes() {
        assert!(is_reserved(b"x-meshpass_subject"));
        assert!(is_reserved(b"X_MESHPASS_SUBJECT"));
        assert!(is_reserved(b"x_meshpass-role"));
        assert!(!is_reserved(b"x-meshpas_-subject"));
        assert!(!is_reserved(b"xxmeshpass-subject"));
    }

    #[test]
    fn reserved_names_are_found_in_any_case() {
        let m = HeaderMap::encode([
            ("x-meshpass-subject", b"a".as_slice()),
            ("X-MESHPASS-ROLE", b"b".as_slice()),
            ("x-meshpass", b"c".as_slice()),
            ("x-meshpass\u{e9}x", b"d".as_slice()),
        ]);
        let names: Vec<_> = m.reserved_names().collect();
        assert_eq!(names, vec!["x-meshpass-subject", "X-MESHPASS-ROLE"]);
        let parsed = HeaderMap::parse(m.buf.clone()).unwrap();
        assert_eq!(parsed.reserved_names().collect::<Vec<_>>(), names);
    }

    #[test]
    fn a_reserved_name_anywhere_in_a_parsed_map_is_found_and_none_means_none() {
        let plain = [(":path", "/a"), ("authorization", "Bearer x"), ("x-b", "")];
        let none = HeaderMap::parse(HeaderMap::encode(plain).buf).unwrap();
        assert_eq!(none.reserved_names().count(), 0);
        for at in 0..=plain.len() {
            let mut pairs = plain.to_vec();
            pairs.insert(at, ("X-Meshpass-Subject", "forged"));
            let m = HeaderMap::parse(HeaderMap::encode(pairs).buf).unwrap();
            let names: Vec<_> = m.reserved_names().collect();
            assert_eq!(names, vec!["X-Meshpass-Subject"], "inserted at {at}");
        }
    }

    #[test]
    fn authorization_is_the_first_one_wherever_it_is_and_absent_when_missing() {
        let first = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .find(|(k, _)| *k == "authorization")
                .map(|(_, v)| v.as_bytes().to_vec())
        };
        let cases: [&[(&str, &str)]; 5] = [
            &[("authorization", "Bearer a"), (":path", "/")],
            &[(":path", "/"), ("x", "y"), ("authorization", "Bearer b")],
            &[("authorization", ""), ("authorization", "Bearer second")],
            &[
                (":path", "/"),
                ("Authorization", "Bearer upper"),
                ("authorizations", "z"),
            ],
            &[],
        ];
        for pairs in cases {
            let encoded = HeaderMap::encode(pairs.iter().copied());
            let parsed = HeaderMap::parse(encoded.buf.clone()).unwrap();
            for m in [&encoded, &parsed] {
                let got = m.get("authorization").map(<[u8]>::to_vec);
                assert_eq!(got, first(pairs), "{pairs:?}");
            }
            assert_eq!(encoded, parsed);
        }
    }

    #[test]
    fn values_may_hold_any_bytes() {
        let m = HeaderMap::encode([("x-bin", [0xffu8, 0, 1].as_slice())]);
        let again = HeaderMap::parse(m.buf.clone()).unwrap();
        assert_eq!(again.get("x-bin"), Some([0xffu8, 0, 1].as_slice()));
    }
}

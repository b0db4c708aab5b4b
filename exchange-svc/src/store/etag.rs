//! Entity tags of stored entities, and `If-Match` read as RFC 9110 §13.1.1 says.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// An entity tag: the first 16 bytes of the SHA-256 of the entity's JSON, in hex. Equal
/// content has the equal tag, so a tag names a state, not a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// The tag of `v`.
    pub fn of<T: Serialize>(v: &T) -> ETag {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        ETag(hex::encode(&Sha256::digest(&bytes)[..16]))
    }

    /// The quoted form sent in `ETag` and expected in `If-Match`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The tag whose opaque part (between the quotes) is `opaque`, when it is one this
    /// API could have sent (hex; either case, as before); other tags can never match.
    fn from_opaque(opaque: &[u8]) -> Option<ETag> {
        let hex = !opaque.is_empty() && opaque.iter().all(u8::is_ascii_hexdigit);
        hex.then(|| ETag(String::from_utf8_lossy(opaque).to_ascii_lowercase()))
    }
}

/// Reads an `If-Match` value (RFC 9110 §13.1.1): `Ok(None)` for `*`, else the strong
/// tags of its entity-tag list that could match. `If-Match` compares strongly, so weak
/// tags (`W/"…"`) are dropped, as are tags this API never gives out: a list left empty
/// matches no state (the caller answers 412). Only a value that is neither `*` nor a
/// list of entity tags is an error (400). Empty list elements are allowed (§5.6.1).
pub fn parse_if_match(value: &[u8]) -> Result<Option<Vec<ETag>>, String> {
    let value = trim_ows(value);
    if value == b"*" {
        return Ok(None);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = trim_ows(rest);
        match rest.first() {
            None => return Ok(Some(tags)),
            Some(b',') => {
                rest = &rest[1..];
                continue;
            }
            Some(_) => {}
        }
        let (weak, tag) = match rest.strip_prefix(b"W/") {
            Some(t) => (true, t),
            None => (false, rest),
        };
        let Some(tag) = tag.strip_prefix(b"\"") else {
            return Err("an entity tag is a quoted string (\"…\" or W/\"…\"), or * alone".into());
        };
        let Some(end) = tag.iter().position(|&b| b == b'"') else {
            return Err("an entity tag lacks its closing quote".into());
        };
        let opaque = &tag[..end];
        // etagc: %x21 / %x23-7E / obs-text.
        if !opaque
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return Err("an entity tag contains a character entity tags cannot hold".into());
        }
        if !weak {
            tags.extend(ETag::from_opaque(opaque));
        }
        rest = trim_ows(&tag[end + 1..]);
        match rest.first() {
            None | Some(b',') => {}
            Some(_) => return Err("entity tags are separated by commas".into()),
        }
    }
}

/// `s` without leading and trailing optional whitespace (spaces and tabs).
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(z)) => &s[a..=z],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tags(v: &str) -> Vec<String> {
        parse_if_match(v.as_bytes())
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    #[test]
    fn a_star_alone_matches_any_state() {
        assert!(parse_if_match(b" * ").unwrap().is_none());
    }

    #[test]
    fn lists_keep_the_strong_tags_this_api_could_have_sent() {
        assert_eq!(tags("\"AB12\""), ["ab12"]);
        assert_eq!(tags("\"ab\", W/\"cd\" ,\"ef\""), ["ab", "ef"]);
        assert_eq!(tags("\"x,y\", \"00\""), ["00"], "a comma inside quotes");
        assert_eq!(tags(",\t\"ab\" ,,"), ["ab"], "empty elements");
        assert!(tags("W/\"ab\"").is_empty(), "weak tags never match");
        assert!(tags("\"not-hex!\", \"\"").is_empty());
        assert!(tags("").is_empty());
    }

    #[test]
    fn anything_but_star_or_a_list_of_entity_tags_is_malformed() {
        for bad in [
            "ab",
            "\"ab",
            "ab\"",
            "w/\"ab\"",
            "W/ab",
            "\"a b\"",
            "\"a\" \"b\"",
            "*, \"ab\"",
            "\"ab\" x",
        ] {
            assert!(parse_if_match(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}

//! Strict JSON for JOSE headers and claim sets: the top level must be an object, member
//! names must be unique at every depth (RFC 7515 §5.2 / RFC 7519 §4 say reject or
//! last-wins; we reject, so two parsers can never disagree about a token).

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a JSON document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The bytes are not UTF-8 or not valid JSON.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// A member name appears twice in one object.
    #[error("duplicate member name {0:?}")]
    DuplicateMember(String),
    /// The top-level value is not an object.
    #[error("top-level value is not an object")]
    NotAnObject,
}

/// Marker prefix of the serde error raised for a duplicate member, so it can be told
/// apart from syntax errors after serde_json wrapped it.
const DUP_MARKER: &str = "\u{0}meshpass-duplicate-member:";

/// Longest member name quoted back in an error (names come from untrusted input).
const MAX_NAME_IN_ERROR: usize = 64;

/// A `serde_json::Value` whose deserializer refuses duplicate member names.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(MAX_NAME_IN_ERROR).collect();
                return Err(de::Error::custom(format_args!("{DUP_MARKER}{shown}")));
            }
            let StrictValue(v) = map.next_value_seed(StrictSeed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = StrictValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StrictValue, D::Error> {
        StrictValue::deserialize(d)
    }
}

/// Parses any JSON value, rejecting duplicate member names at any depth and trailing
/// data. Nesting is bounded by serde_json's recursion limit (128).
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| {
        let msg = e.to_string();
        match msg.find(DUP_MARKER) {
            Some(at) => {
                let rest = &msg[at + DUP_MARKER.len()..];
                // serde_json appends " at line L column C"; drop it from the name.
                let name = rest.rfind(" at line ").map_or(rest, |end| &rest[..end]);
                JsonError::DuplicateMember(name.to_owned())
            }
            None => JsonError::Syntax(msg),
        }
    })
}

/// Parses a JSON object, rejecting duplicate member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse_value(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_objects_and_arrays() {
        let m = parse_object(br#"{"a":1,"b":[1,-2,3.5,"x",null,true,{"c":{}}],"d":{"e":"f"}}"#)
            .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["b"][2], serde_json::json!(3.5));
        assert_eq!(m["b"][1], serde_json::json!(-2));
    }

    #[test]
    fn rejects_duplicate_member_at_top_level() {
        assert_eq!(
            parse_object(br#"{"alg":"RS256","alg":"none"}"#),
            Err(JsonError::DuplicateMember("alg".into()))
        );
    }

    #[test]
    fn rejects_duplicate_member_at_any_depth() {
        assert_eq!(
            parse_object(br#"{"a":[{"b":{"c":1,"c":2}}]}"#),
            Err(JsonError::DuplicateMember("c".into()))
        );
    }

    #[test]
    fn rejects_duplicate_member_spelled_with_escapes() {
        assert_eq!(
            parse_object(br#"{"alg":"RS256","\u0061lg":"none"}"#),
            Err(JsonError::DuplicateMember("alg".into()))
        );
    }

    #[test]
    fn rejects_non_objects_and_trailing_data() {
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotAnObject));
        assert_eq!(parse_object(b"\"x\""), Err(JsonError::NotAnObject));
        assert!(matches!(parse_object(b"{} {}"), Err(JsonError::Syntax(_))));
        assert!(matches!(parse_object(b"{"), Err(JsonError::Syntax(_))));
        assert!(matches!(parse_object(b""), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn rejects_invalid_utf8_and_lone_surrogates() {
        assert!(matches!(
            parse_object(b"{\"a\":\"\xff\"}"),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_object(br#"{"a":"\ud800"}"#),
            Err(JsonError::Syntax(_))
        ));
    }

    #[test]
    fn rejects_excessive_nesting_without_overflowing_the_stack() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_object(deep.as_bytes()),
            Err(JsonError::Syntax(_))
        ));
    }
}

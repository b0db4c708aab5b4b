//! The entries of an `apply` file, read as the API would read them.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::client::CtlError;

/// The entries of a file: one object, a list, or a document's `key` list. A field named
/// twice is refused, as the API's typed parse refuses it (`Value` would keep the last).
pub fn entries(file: &Path, key: &str) -> Result<Vec<Value>, CtlError> {
    let raw = crate::read_input(file)?;
    let bad = |e: &dyn fmt::Display| CtlError::Usage(format!("{}: {e}", file.display()));
    // JSON as JSON (YAML's parser refuses some valid JSON, e.g. surrogate-pair escapes).
    let v: Value = match serde_json::from_slice(&raw) {
        Ok(v) => {
            let mut d = serde_json::Deserializer::from_slice(&raw);
            Unique::root().deserialize(&mut d).map_err(|e| bad(&e))?;
            v
        }
        Err(_) => {
            let v = serde_yaml::from_slice(&raw)
                .map_err(|e| bad(&format_args!("not YAML or JSON: {e}")))?;
            Unique::root()
                .deserialize(serde_yaml::Deserializer::from_slice(&raw))
                .map_err(|e| bad(&e))?;
            v
        }
    };
    Ok(match v {
        Value::Array(a) => a,
        Value::Object(ref o) if o.contains_key(key) => o[key]
            .as_array()
            .cloned()
            .ok_or_else(|| CtlError::Usage(format!("{}: `{key}` is not a list", file.display())))?,
        other => vec![other],
    })
}

/// Walks a document and fails on a map naming a key twice; `at` is where it is
/// (`mappings[0].claims`), for the message.
struct Unique {
    at: String,
}

impl Unique {
    fn root() -> Unique {
        Unique { at: String::new() }
    }
}

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(Unique {
                at: format!("{}[{i}]", self.at),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(Key(k)) = map.next_key()? {
            if !seen.insert(k.clone()) {
                let whose = if self.at.is_empty() {
                    "the document".to_string()
                } else {
                    format!("entry `{}`", self.at)
                };
                return Err(de::Error::custom(format!(
                    "{whose} names the field `{k}` twice (the API refuses it)"
                )));
            }
            let at = if self.at.is_empty() {
                k
            } else {
                format!("{}.{k}", self.at)
            };
            map.next_value_seed(Unique { at })?;
        }
        Ok(())
    }
}

/// A map key as text (a YAML key may be a number or a boolean).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E>(self, s: &str) -> Result<Key, E> {
                Ok(Key(s.to_string()))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Key, E> {
                Ok(Key(b.to_string()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Key, E> {
                Ok(Key(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Key, E> {
                Ok(Key(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Key, E> {
                Ok(Key(n.to_string()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check_json(s: &str) -> Result<(), String> {
        let mut d = serde_json::Deserializer::from_str(s);
        Unique::root()
            .deserialize(&mut d)
            .map_err(|e| e.to_string())
    }

    fn check_yaml(s: &str) -> Result<(), String> {
        Unique::root()
            .deserialize(serde_yaml::Deserializer::from_str(s))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_field_named_twice_is_refused_with_where_it_is() {
        let e = check_json(
            r#"{"mappings": [{"name": "a"}, {"name": "b", "ttl_secs": 1, "ttl_secs": 2}]}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("entry `mappings[1]`") && e.contains("`ttl_secs`"),
            "{e}"
        );
        let e = check_json(r#"[{"claims": {"a": 1, "a": 2}}]"#).unwrap_err();
        assert!(e.contains("`[0].claims`") && e.contains("`a`"), "{e}");
        let e = check_json(r#"{"name": "x", "name": "y"}"#).unwrap_err();
        assert!(e.contains("the document") && e.contains("`name`"), "{e}");
        let e = check_yaml("- name: a\n  scopes: [r]\n  scopes: [w]\n").unwrap_err();
        assert!(e.contains("`[0]`") && e.contains("`scopes`"), "{e}");
    }

    #[test]
    fn the_same_name_in_different_objects_is_fine() {
        let doc = r#"{"mappings": [{"name": "a", "claims": {"name": 1}}, {"name": "b"}],
            "scopes": [], "n": [1, -2, 1.5e300, 18446744073709551615, null, true, "s"]}"#;
        check_json(doc).unwrap();
        check_yaml("name: a\nclaims: {name: 1, 2: x, true: y}\nlist: [~, .nan, !!str 1]\n")
            .unwrap();
    }
}

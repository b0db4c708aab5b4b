//! The plugin configuration's JSON, read strictly: a member name written twice in one
//! object, at any depth, is refused naming its path (`issuers[0].jwks.keys[0].kid`).
//! serde_json keeps the last of two, so a hand-edited configuration could silently
//! run a stale copy of a setting, and an inline `jwks` object (re-serialised for core)
//! would skip the duplicate check core's JWKS reader makes on the same document as a
//! string. Core's strict reader has the same rule but is not exported, and names the
//! member only, not where it is; a serde visitor of our own would cost the module
//! about 4 KB, a scan of the (already valid) text a fraction of that.

use serde_json::Value;

use super::error::{err, ConfigError};

/// Parses the configuration, refusing a duplicate member name (naming its path).
pub(super) fn parse(bytes: &[u8]) -> Result<Value, ConfigError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| err("configuration", e.to_string()))?;
    match duplicate(bytes) {
        Some(field) => Err(err(
            // A name that is empty is refused as unknown anyway: name where it is.
            if field.is_empty() {
                "configuration".into()
            } else {
                field
            },
            "is written twice (a duplicate member name)",
        )),
        None => Ok(value),
    }
}

/// An open object (the member names seen) or array (the index of its current element).
enum Open {
    Object(Vec<String>),
    Array(usize),
}

/// The path of the first member name written twice in one object of `json`, which
/// serde_json has parsed (valid JSON: only strings and structure need reading).
fn duplicate(json: &[u8]) -> Option<String> {
    // Each open container with its path.
    let mut stack: Vec<(String, Open)> = Vec::new();
    // The member name whose value comes next (in an object), once read.
    let mut member: Option<String> = None;
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let end = string_end(json, i);
                let top = stack.last_mut();
                if let (Some((path, Open::Object(seen))), None) = (top, &member) {
                    let name = name(json.get(i..=end)?)?;
                    let at = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    if seen.contains(&name) {
                        return Some(at);
                    }
                    seen.push(name);
                    member = Some(at);
                }
                i = end;
            }
            b'{' | b'[' => {
                let path = match stack.last() {
                    Some((_, Open::Object(_))) => member.take().unwrap_or_default(),
                    Some((path, Open::Array(n))) => format!("{path}[{n}]"),
                    None => String::new(),
                };
                let open = if b == b'{' {
                    Open::Object(Vec::new())
                } else {
                    Open::Array(0)
                };
                stack.push((path, open));
            }
            b'}' | b']' => {
                stack.pop();
                member = None;
            }
            b',' => match stack.last_mut() {
                Some((_, Open::Array(n))) => *n += 1,
                _ => member = None,
            },
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote closing the string that opens at `start`.
fn string_end(json: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&b) = json.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    json.len()
}

/// A member name (its quoted JSON text), escapes decoded (`"k\u0069d"` is `kid`).
fn name(quoted: &[u8]) -> Option<String> {
    if quoted.contains(&b'\\') {
        // Through `Value`, whose reader the module has anyway.
        return match serde_json::from_slice(quoted) {
            Ok(Value::String(s)) => Some(s),
            _ => None,
        };
    }
    std::str::from_utf8(quoted.get(1..quoted.len() - 1)?)
        .ok()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::duplicate;

    #[test]
    fn a_duplicate_is_named_by_its_path_at_any_depth() {
        let dup = |s: &str| duplicate(s.as_bytes());
        assert_eq!(dup(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(dup(r#"{"a":[0,{"b":1,"b":2}]}"#).as_deref(), Some("a[1].b"));
        assert_eq!(
            dup(r#"{"x":{"y":[[],{"z":{"q":1, "q" :2}}]}}"#).as_deref(),
            Some("x.y[1].z.q")
        );
        // Spelled with an escape, it is the same name.
        assert_eq!(dup(r#"{"kid":1,"k\u0069d":2}"#).as_deref(), Some("kid"));
    }

    #[test]
    fn equal_names_in_different_objects_and_string_values_are_no_duplicates() {
        for ok in [
            r#"{"a":{"b":1},"b":2,"c":[{"b":3},{"b":4}]}"#,
            r#"{"a":"\"b\":1,\"a\":2}{[","b":"a","c":["a","a"]}"#,
            r#"{"a":[1,2,{"d":1}],"d":{"a":{}}}"#,
            r#"["a","a",{"a":1},{"a":2}]"#,
            r#"{"a\\":1,"a":2}"#,
        ] {
            assert_eq!(duplicate(ok.as_bytes()), None, "{ok}");
        }
    }
}

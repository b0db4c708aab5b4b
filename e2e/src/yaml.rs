//! A small YAML emitter for `serde_json::Value`: Envoy configs are built as JSON values
//! (typed, no string templating) and written as readable block YAML. Strings are always
//! emitted as JSON-quoted scalars, which YAML reads back unchanged.

use serde_json::Value;

/// Renders `value` as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(Value::String(s.clone()).to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

// Emits `v` as a block at `indent`; the caller has already written the line prefix.
fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                out.push_str(&pad);
                out.push_str(&key(k));
                out.push(':');
                match scalar(val) {
                    Some(s) => {
                        out.push(' ');
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => {
                        out.push('\n');
                        emit(val, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&pad);
                out.push('-');
                match scalar(item) {
                    Some(s) => {
                        out.push(' ');
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => {
                        // Nested block: render at indent+2, then put its first line
                        // right after the dash.
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(inner.trim_start_matches(' '));
                    }
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other).unwrap_or_default());
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nested_maps_and_lists_as_block_yaml() {
        let v = json!({"a": {"b": [1, {"c": "x y", "d": []}], "e": "1.0"}, "f g": true});
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "a:\n  b:\n    - 1\n    - c: \"x y\"\n      d: []\n  e: \"1.0\"\n\"f g\": true\n"
        );
    }
}

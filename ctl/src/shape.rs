//! What an answer must hold before ctl shows it or reports a write as done: JSON from
//! something else behind `--server` (another service, the wrong port-forward) is an
//! unexpected answer (exit 1), never an empty table or "configured".

use reqwest::StatusCode;
use serde_json::Value;

use crate::client::{snippet, Answer, CtlError};

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A list.
    Array,
    /// `true` or `false`.
    Bool,
    /// A string.
    Str,
}

/// An answer of the API by the fields it always holds.
pub struct Shape {
    /// What it is, for the message.
    what: &'static str,
    /// Each field and its type.
    fields: &'static [(&'static str, Kind)],
}

/// `keys status`, `rotate` and `retire`.
pub const KEY_STATUS: Shape = Shape {
    what: "key status",
    fields: &[("versions", Kind::Array)],
};
/// `export`.
pub const POLICY: Shape = Shape {
    what: "policy document",
    fields: &[("mappings", Kind::Array), ("scopes", Kind::Array)],
};
/// `import` (and its dry run).
pub const IMPORT_DIFF: Shape = Shape {
    what: "import result",
    fields: &[
        ("applied", Kind::Bool),
        ("added", Kind::Array),
        ("changed", Kind::Array),
        ("removed", Kind::Array),
    ],
};
/// `introspect` (RFC 7662: `active` is the one field always there).
pub const INTROSPECTION: Shape = Shape {
    what: "introspection result",
    fields: &[("active", Kind::Bool)],
};
/// `stats`.
pub const STATS: Shape = Shape {
    what: "statistics",
    fields: &[("by_mapping", Kind::Array), ("top_subjects", Kind::Array)],
};
/// A created revocation.
pub const REVOCATION: Shape = Shape {
    what: "revocation",
    fields: &[("id", Kind::Str)],
};

impl Shape {
    /// `v` when it holds every field with its type.
    pub fn check<'a>(&self, v: &'a Value) -> Result<&'a Value, CtlError> {
        for (field, kind) in self.fields {
            let ok = match kind {
                Kind::Array => v[field].is_array(),
                Kind::Bool => v[field].is_boolean(),
                Kind::Str => v[field].is_string(),
            };
            if !ok {
                return Err(unexpected(&format!("a {} has `{field}`", self.what), v));
            }
        }
        Ok(v)
    }
}

/// The items of a list page (of any list).
pub fn items(page: &Value) -> Result<&Vec<Value>, CtlError> {
    page["items"]
        .as_array()
        .ok_or_else(|| unexpected("a list page has `items`", page))
}

/// The answer to a `PUT` or `GET` of one entity names it: an object whose `key` fields
/// are the values sent or asked for (a mapping's name, a scope row's resource and scope).
pub fn names(v: &Value, what: &str, key: &[(&str, &str)]) -> Result<(), CtlError> {
    for (field, want) in key {
        if v[*field].as_str() != Some(*want) {
            return Err(unexpected(
                &format!("a {what} names its `{field}` {want:?}"),
                v,
            ));
        }
    }
    Ok(())
}

/// The answer to a `DELETE`: 204, as the API answers every one.
pub fn deleted(a: &Answer) -> Result<(), CtlError> {
    if a.status == StatusCode::NO_CONTENT {
        return Ok(());
    }
    Err(unexpected(
        &format!("a deletion is answered 204, not {}", a.status),
        &a.body,
    ))
}

fn unexpected(expected: &str, got: &Value) -> CtlError {
    CtlError::Other(format!(
        "unexpected answer ({expected}): {} (is --server the management API?)",
        snippet(got)
    ))
}

/// What a JSON value is, for messages: "a number", "a list", ...
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

//! Turning what figment read into the service's errors: every field named the way the
//! README names it, and never a value quoted (it may be a secret put in the wrong
//! place); and the `MESHPASS__` variables figment would drop without a word.

use super::{bad, ConfigError};

/// `e` without the lines of the file a TOML syntax error quotes (`N | text` and the
/// `|`/caret lines around it): the line may hold a secret (a password with a bad
/// escape, an unquoted token). Position and reason stay.
fn without_quoted_lines(mut e: figment::Error) -> figment::Error {
    if let figment::error::Kind::Message(m) = &mut e.kind {
        let quoted = |l: &str| {
            l.trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        };
        *m = m
            .lines()
            .filter(|l| !quoted(l))
            .collect::<Vec<_>>()
            .join("\n");
    }
    e
}

/// What kind of value `a` is, never the value itself.
fn kind_of(a: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) => "an unsigned int",
        Actual::Signed(_) => "a signed int",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "a unit value",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a newtype struct",
        Actual::Seq => "a sequence",
        Actual::Map => "a table",
        Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant => "an enum",
        Actual::Other(_) => "a value of another type",
    }
}

/// Refuses a variable in the `MESHPASS__` namespace that figment's `Env` provider would
/// drop without a word: one whose name has an empty segment (`MESHPASS__STORE____URL`,
/// a trailing `__`). Named, never its value. A name or value that is not UTF-8 is
/// refused too (figment would read it with replacement characters).
pub(super) fn check_env_names() -> Result<(), ConfigError> {
    const PREFIX: &str = "MESHPASS__";
    for (name, value) in std::env::vars_os() {
        let lossy = name.to_string_lossy();
        // As figment matches it: trimmed, the prefix in any case.
        let key = lossy.trim();
        let Some(head) = key.get(..PREFIX.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(PREFIX) {
            continue;
        }
        if name.to_str().is_none() {
            return Err(bad(key, "is not UTF-8"));
        }
        if value.to_str().is_none() {
            return Err(bad(key, "has a value that is not UTF-8"));
        }
        let rest = key[PREFIX.len()..].trim().replace("__", ".");
        if rest.split('.').any(str::is_empty) {
            return Err(bad(
                key,
                "has an empty name segment (a doubled, leading or trailing __): it names no key",
            ));
        }
    }
    Ok(())
}

/// A figment error with the field named the way the README and [`Config::validate`]
/// name it (`issuers[0].jwks_url`, not `default.issuers.0...`); errors with no key
/// (unreadable file, TOML syntax) stay figment's own.
pub(super) fn load_error(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut field = String::new();
    for part in &e.path {
        if part.parse::<usize>().is_ok() {
            field.push_str(&format!("[{part}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(part);
        }
    }
    let mut push = |key: &str| {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(key);
    };
    let reason = match &e.kind {
        Kind::UnknownField(key, _) => {
            // figment's path may already end with the key.
            if e.path.last().map(String::as_str) != Some(key.as_str()) {
                push(key);
            }
            "is not a known key".to_string()
        }
        Kind::MissingField(key) => {
            push(key);
            "is required".to_string()
        }
        Kind::Message(m) => match m.split_once(": ") {
            // IssuerConfig's own deserialiser names the key inside the issuer.
            Some((key, rest))
                if key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.') =>
            {
                push(key);
                rest.to_string()
            }
            _ => m.clone(),
        },
        // Never quote a value (figment's own messages do): it may be a secret put in
        // the wrong place, and an all-digit secret is read as a number.
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: {}, expected {expected}", kind_of(actual))
        }
        Kind::UnknownVariant(_, expected) => format!(
            "unknown value, expected one of {}",
            expected
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Kind::Unsupported(actual) => format!("unsupported type: {}", kind_of(actual)),
        Kind::UnsupportedKey(actual, expected) => {
            format!(
                "unsupported key type: {}, must be {expected}",
                kind_of(actual)
            )
        }
        other => other.to_string(),
    };
    if field.is_empty() {
        return ConfigError::Load(Box::new(without_quoted_lines(e)));
    }
    let source = e
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    bad(field, format!("{reason}{source}"))
}

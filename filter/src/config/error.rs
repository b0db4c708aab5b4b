//! Configuration errors: the JSON path of the field and what is wrong with it.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

/// Why a configuration was refused: the JSON path of the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field, e.g. `issuers[0].trust_domains[1]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.reason)
    }
}

pub(super) fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Deserialises `value` as `T`, naming the failing field as `prefix` + serde's path.
pub(super) fn typed<T: DeserializeOwned>(prefix: &str, value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match e.path().iter().next_back() {
            // A field named "" (an unknown one) is an empty last segment: name the
            // object holding it rather than nothing.
            Some(Segment::Map { key }) if key.is_empty() => {
                let p = e.path().to_string();
                p.strip_suffix('.').unwrap_or(".").to_string()
            }
            _ => e.path().to_string(),
        };
        let field = match (prefix, path.as_str()) {
            ("", ".") => "configuration".to_string(),
            (p, ".") => p.to_string(),
            ("", p) => p.to_string(),
            (pre, p) => format!("{pre}.{p}"),
        };
        err(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn an_unknown_field_with_an_empty_name_is_reported_on_the_object_holding_it() {
        // Found by fuzz/fuzz_targets/plugin_config.rs: the error named no field at all.
        let e = Config::parse(br#"{"": 500}"#).unwrap_err();
        assert_eq!(e.field, "configuration");
        assert_eq!(e.reason.split(',').next(), Some("unknown field ``"));
        let e = Config::parse(br#"{"cache": {"": 1}}"#).unwrap_err();
        assert_eq!(e.field, "cache");
        let e =
            Config::parse(br#"{"exchange": {"cluster": "x"}, "issuers": [{"": 1}]}"#).unwrap_err();
        assert_eq!(e.field, "issuers[0]");
    }
}

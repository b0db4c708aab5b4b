//! Configuration errors: the JSON path of the field and what is wrong with it.

use serde::de::DeserializeOwned;
use serde_json::Value;

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
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "configuration".to_string(),
            (p, ".") => p.to_string(),
            ("", p) => p.to_string(),
            (pre, p) => format!("{pre}.{p}"),
        };
        err(field, e.into_inner().to_string())
    })
}

//! Plugin configuration: the JSON an operator writes (typed `serde` structs, unknown
//! fields refused, [`raw`]) and the checked form the filter runs on ([`types`]).
//! [`Config::parse`] ([`build`]) is one validation pass that names the offending field
//! (`rules[1].audience: ...`). Issuer policy is core's own `IssuerPolicy` (deserialised
//! by core, checked by `ValidationPolicy::check`); scope tokens are checked by core's
//! one rule.

mod build;
mod error;
mod raw;
mod shadow;
mod strict;
mod types;

pub use error::ConfigError;
pub use types::*;

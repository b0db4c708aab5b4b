//! meshpass proxy-wasm filter: validates a SPIFFE-bound subject JWT, exchanges it
//! (RFC 8693) at the meshpass exchange service, caches the participant token in
//! proxy-wasm shared data and rewrites `Authorization` (see README.md).
//!
//! Only [`host`] (built for wasm32 only) touches the proxy-wasm host API; everything
//! else is plain Rust over [`api::Host`], unit-tested on the host with a mock.
//! Module map (README "Where things are"): [`worker`] holds the per-worker state;
//! [`request`], [`exchange`], [`coalesce`], [`jwks`], [`revoke`], [`respond`], [`tick`]
//! and [`slots`] are its behaviour by responsibility; [`cache`], [`memo`], [`outcome`]
//! and [`feed`] and [`header_map`] are plain data.

pub mod api;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod exchange;
pub mod feed;
pub mod header_map;
pub mod headers;
pub mod jwks;
mod memo;
pub mod outcome;
pub mod path;
pub mod request;
pub mod respond;
pub mod revoke;
pub mod slots;
pub mod tick;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod host;

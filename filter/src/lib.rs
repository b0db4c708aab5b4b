//! meshpass proxy-wasm filter: validates a SPIFFE-bound subject JWT, exchanges it
//! (RFC 8693) at the meshpass exchange service, caches the participant token in
//! proxy-wasm shared data and rewrites `Authorization` (see README.md).
//!
//! Only [`host`] (built for wasm32 only) touches the proxy-wasm host API; everything
//! else is plain Rust over [`api::Host`], unit-tested on the host with a mock.

pub mod api;
pub mod cache;
pub mod config;
pub mod logic;

#[cfg(target_arch = "wasm32")]
mod host;

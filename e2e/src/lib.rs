//! meshpass end-to-end topology: everything `e2e/tests` and `meshpass-demo` start on
//! loopback (see README.md for the picture).
//!
//! * [`ca`]: a test CA for one trust domain issuing X.509-SVIDs.
//! * [`jwt`]: a JWT-SVID issuer (ES256) and unverified JWT decoding for display.
//! * [`http`]: stoppable in-process HTTP servers (the issuer's JWKS, the echo app).
//! * [`echo`]: the upstream app, reporting the headers it saw.
//! * [`envoy`]: client and server sidecar configurations and the Envoy process.
//! * [`openbao`]: OpenBao with transit (dev or persistent).
//! * [`process`]: child processes killed on drop.
//! * [`exchange`]: the exchange service process and its generated TOML.
//! * [`topology`]: all of the above wired together.
//!
//! Library code returns `anyhow::Result`; nothing here panics.

pub mod ca;
pub mod echo;
pub mod envoy;
pub mod exchange;
pub mod http;
pub mod jwt;
pub mod openbao;
pub mod process;
pub mod topology;
pub mod yaml;

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn bin_from_env(var: &str, default_rel: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => workspace_root().join(default_rel),
    }
}

/// Envoy: `MESHPASS_ENVOY_BIN`, else `.tools/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    bin_from_env("MESHPASS_ENVOY_BIN", ".tools/bin/envoy")
}

/// OpenBao: `MESHPASS_BAO_BIN`, else `.tools/bin/bao`.
pub fn bao_bin() -> PathBuf {
    bin_from_env("MESHPASS_BAO_BIN", ".tools/bin/bao")
}

/// The filter: `MESHPASS_FILTER_WASM`, else the `wasm-release` build in `target/`.
pub fn filter_wasm() -> PathBuf {
    bin_from_env(
        "MESHPASS_FILTER_WASM",
        "target/wasm32-wasip1/wasm-release/meshpass_filter.wasm",
    )
}

/// The exchange service: `MESHPASS_EXCHANGE_BIN`, else `target/debug/meshpass-exchange`.
pub fn exchange_bin() -> PathBuf {
    bin_from_env("MESHPASS_EXCHANGE_BIN", "target/debug/meshpass-exchange")
}

//! Test support for meshpass (see README.md): the one way every test, the e2e suite, the
//! demo and the benchmarks start real components on loopback — OpenBao (dev or
//! persistent), Envoy with the built filter, the exchange service binary, Postgres
//! databases and plain child processes — on reserved ports, and stop them on drop.
//!
//! Everything here is synchronous and free of any async runtime, so it works from plain
//! `#[test]`s and from `#[tokio::test]`s alike (HTTP calls run on a helper thread).
//!
//! These helpers panic on failure with a message saying what is missing: a test that
//! needs OpenBao or Postgres must fail, never skip, when the component is not there.
// A test-support crate reports broken environments by panicking: that *is* its API.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod black_hole;
pub mod envoy;
mod exchange;
mod http;
mod openbao;
mod ports;
mod postgres;
mod process;
mod redis;
mod tcp_cut;

pub use black_hole::HoleRelay;
pub use envoy::{Envoy, EnvoyOptions};
pub use exchange::{to_toml, ExchangeService};
pub use http::{dechunk, raw_request};
pub use openbao::{BaoStorage, OpenBao, OpenBaoOptions};
pub use ports::{free_port, pid_listens_on, wait_port_released};
pub use postgres::{postgres_bin_dir, PgDb, Postgres, PostgresServer};
pub use process::{log_tail, wait_until, ChildGuard};
pub use redis::{redis_pings, redis_server_bin, shared_redis_url, unique_prefix, RedisServer};
pub use tcp_cut::CutRelay;

use std::path::PathBuf;

/// The variables with which the Vault client takes its address, token, CA and
/// namespace from the environment over its configuration (`VAULT_*`, `BAO_*`).
pub(crate) const VAULT_ENV: [&str; 8] = [
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_CACERT",
    "VAULT_NAMESPACE",
    "BAO_ADDR",
    "BAO_TOKEN",
    "BAO_CACERT",
    "BAO_NAMESPACE",
];

/// Removes [`VAULT_ENV`] from this process once, so no developer's shell redirects a
/// test's Vault client. Once: changing the environment while other test threads read it
/// is a data race, so every later call only waits for the first.
pub fn clear_vault_env_once() {
    static CLEARED: std::sync::Once = std::sync::Once::new();
    CLEARED.call_once(remove_vault_env);
}

/// Removes [`VAULT_ENV`] now. Only for a test binary whose tests set these variables
/// and take turns doing so (`clear_vault_env_once` everywhere else).
pub fn remove_vault_env() {
    for k in VAULT_ENV {
        std::env::remove_var(k);
    }
}

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A tool binary: `$env_var` when set and non-empty, else `<workspace root>/default_rel`.
/// Does not check that the file exists (callers panic with a clear message when it
/// does not).
pub fn bin_path(env_var: &str, default_rel: &str) -> PathBuf {
    match std::env::var_os(env_var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => workspace_root().join(default_rel),
    }
}

/// The OpenBao binary: `MESHPASS_BAO_BIN`, else `<workspace root>/.tools/bin/bao`.
pub fn bao_bin() -> PathBuf {
    bin_path("MESHPASS_BAO_BIN", ".tools/bin/bao")
}

/// The Envoy binary: `MESHPASS_ENVOY_BIN`, else `<workspace root>/.tools/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    bin_path("MESHPASS_ENVOY_BIN", ".tools/bin/envoy")
}

/// The filter: `MESHPASS_FILTER_WASM`, else the `wasm-release` build in `target/`.
pub fn filter_wasm() -> PathBuf {
    bin_path(
        "MESHPASS_FILTER_WASM",
        "target/wasm32-wasip1/wasm-release/meshpass_filter.wasm",
    )
}

/// The exchange service: `MESHPASS_EXCHANGE_BIN`, else `target/debug/meshpass-exchange`.
pub fn exchange_bin() -> PathBuf {
    bin_path("MESHPASS_EXCHANGE_BIN", "target/debug/meshpass-exchange")
}

/// A random lowercase hex string of `n_bytes` random bytes (tokens, database names).
pub fn random_hex(n_bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < n_bytes * 2 {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n_bytes * 2);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_path_prefers_the_environment_variable() {
        std::env::set_var("MESHPASS_TESTKIT_FAKE_BIN", "/x/y");
        assert_eq!(
            bin_path("MESHPASS_TESTKIT_FAKE_BIN", ".tools/bin/z"),
            PathBuf::from("/x/y")
        );
        assert_eq!(
            bin_path("MESHPASS_TESTKIT_UNSET_BIN", ".tools/bin/z"),
            workspace_root().join(".tools/bin/z")
        );
        assert!(workspace_root().join("Cargo.toml").exists());
    }
}

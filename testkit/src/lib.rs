//! Test support for meshpass (see README.md): starts real OpenBao servers and Postgres
//! databases on loopback, on free ports, and cleans them up on drop.
//!
//! Everything here is synchronous and free of any async runtime, so it works from plain
//! `#[test]`s and from `#[tokio::test]`s alike (HTTP calls run on a helper thread).
//!
//! These helpers panic on failure with a message saying what is missing: a test that
//! needs OpenBao or Postgres must fail, never skip, when the component is not there.
// A test-support crate reports broken environments by panicking: that *is* its API.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod envoy;
mod openbao;
mod postgres;
mod process;

pub use openbao::OpenBao;
pub use postgres::{PgDb, Postgres};
pub use process::{wait_until, ChildGuard};

use std::net::TcpListener;
use std::path::PathBuf;

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

/// A currently free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
/// Another process may grab it before you bind it: starters here retry on bind failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
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
    fn free_port_returns_a_bindable_port() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

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

//! meshpass end-to-end topology: everything `e2e/tests` and `meshpass-demo` start on
//! loopback (see README.md for the picture). Only what is specific to this topology
//! lives here; the components themselves (OpenBao, Envoy, the exchange service
//! process, Postgres databases, ports) come from `meshpass-testkit`.
//!
//! * [`ca`]: a test CA for one trust domain issuing X.509-SVIDs.
//! * [`jwt`]: a JWT-SVID issuer (ES256) and unverified JWT decoding for display.
//! * [`http`]: stoppable in-process HTTP servers (the issuer's JWKS, the echo app).
//! * [`echo`]: the upstream app, reporting the headers it saw.
//! * [`envoy`]: the client and server sidecar configurations.
//! * [`yaml`]: JSON values written as YAML (Envoy bootstraps).
//! * [`topology`]: all of the above wired together.
//! * [`revocation`]: the filters' feed settings, revoke/lift through the management
//!   API, the filters' metrics (issue #16).
//!
//! Library code returns `anyhow::Result`; the testkit calls it makes panic with a message
//! naming what is missing (a broken environment).

pub mod ca;
pub mod echo;
pub mod envoy;
pub mod http;
pub mod jwt;
pub mod revocation;
pub mod topology;
pub mod yaml;

/// Runs a blocking testkit call (start, stop, pause, admin request) from async code
/// without stalling the runtime's other tasks (the in-process servers keep serving).
/// Needs the multi-threaded runtime, which every caller here uses.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

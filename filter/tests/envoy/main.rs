//! The built `.wasm` in real Envoy 1.40 (V8): mTLS SERVER-mode binding, the exchange,
//! the shared-data cache across two workers, every failure status, JWKS fetch, kid
//! rotation and a JWKS outage, and a refused configuration.
//!
//! One Envoy process holds everything: two plaintext "client" listeners that forward over
//! mTLS (one presenting Alice's SVID, one Bob's) to the listener running the filter,
//! whose upstream is an in-test echo server. The exchange service and the JWKS endpoint
//! are scripted in-test HTTP/1.1 servers.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{get, Request, Response, Server};
use common::*;
use meshpass_testkit::envoy::Envoy;
// Reserved ports (never handed out twice, locked machine-wide), not bind(0)-then-close.
use meshpass_testkit::free_port;
use serde_json::json;

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/shop/sa/bob";

mod client_sidecar;
mod concurrency;
mod harness;
mod server_mode;
use harness::*;

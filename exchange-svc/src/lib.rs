//! meshpass exchange service (see README.md): RFC 8693 token exchange minting
//! Vault-transit-signed participant tokens.

pub mod app;
pub mod cache;
pub mod caller;
pub mod change_feed;
pub mod clock;
pub mod config;
pub mod error;
pub mod exchange;
pub mod http_serve;
pub mod key_maintenance;
pub mod key_schedule;
pub mod keys;
pub mod metrics;
pub mod mgmt;
pub mod ratelimit;
pub mod redact;
pub mod revocation;
pub mod server;
pub mod signer;
pub mod state;
pub mod store;
pub mod subject_cache;
pub mod tls;
pub mod tls_reload;
pub mod tokenreview;
pub mod vault;

pub use app::app;
pub use state::{AppState, Settings};

//! Vault/OpenBao client: configuration, authentication and token renewal, and the
//! transit [`Signer`](crate::signer::Signer) (see README-vault.md).

mod admin;
mod auth;
mod client;
mod config;
mod keys;
mod secret;
mod selfcheck;
mod transit;

pub use auth::{Auth, TokenInfo};
pub use client::{VaultClient, VaultError, VaultStats};
pub(crate) use config::de_duration;
pub use config::{
    parse_duration, AuthConfig, KeyType, RsaAlg, VaultConfig, VaultConfigError,
    DEFAULT_SA_TOKEN_FILE,
};
pub use keys::{jws_signature, parse_rfc3339};
pub use secret::Secret;
pub use transit::{sign_results, TransitSigner};

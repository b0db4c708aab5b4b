//! The seam between the HTTP side of the service and Vault transit signing.
//! The service builds the JWS header and payload; a [`Signer`] signs the bytes with the
//! exact transit key version named in the header, and publishes the live public keys.

use async_trait::async_trait;

/// JWS algorithms a participant token can be signed with (from the transit key type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlg {
    /// ecdsa-p256 (default).
    ES256,
    /// ecdsa-p384.
    ES384,
    /// rsa-2048/3072/4096 with PSS.
    PS256,
    /// rsa-2048/3072/4096 with PKCS#1 v1.5.
    RS256,
    /// ed25519 (optional).
    EdDSA,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::ES256 => "ES256",
            SigningAlg::ES384 => "ES384",
            SigningAlg::PS256 => "PS256",
            SigningAlg::RS256 => "RS256",
            SigningAlg::EdDSA => "EdDSA",
        }
    }
}

/// The key version new tokens are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The JWS `kid`: `"{transit key name}:v{version}"`.
    pub kid: String,
    /// The transit key version.
    pub version: u64,
    /// The JWS `alg`.
    pub alg: SigningAlg,
    /// The signer's key-material generation when the key was chosen (see
    /// [`Signer::still_publishes`]; 0 for signers that do not track it).
    pub material: u64,
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Vault/OpenBao is unreachable, sealed, or answered 5xx: retry later (→ 503).
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// The signing key is not loaded yet (→ 503).
    #[error("signing key not loaded")]
    NotReady,
    /// Vault answered something unexpected (wrong version prefix, bad signature size...).
    #[error("vault signing failed: {0}")]
    Failed(String),
}

/// Signs participant tokens and publishes their verification keys.
#[async_trait]
pub trait Signer: Send + Sync {
    /// The key version to sign new tokens with: the newest version that has been
    /// published in the JWKS for at least the configured publish lead.
    fn current_key(&self) -> Result<SigningKey, SignError>;

    /// Signs `signing_input` (the ASCII `BASE64URL(header).BASE64URL(payload)`) with
    /// exactly `key.version`, returning the JWS signature segment (base64url, no
    /// padding). Concurrent calls may be coalesced into one `batch_input` request.
    async fn sign(&self, key: &SigningKey, signing_input: &[u8]) -> Result<String, SignError>;

    /// The JWKS document (`{"keys":[...]}`) of every live key version.
    fn jwks(&self) -> serde_json::Value;

    /// Whether keys are loaded and Vault answered recently (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// Whether a token signed with `key` still verifies under the published keys: its
    /// version is still published, with the material it was signed with. A cached token
    /// is served again only while it does; checked on every cache hit, so it must be
    /// cheap (the transit signer reads three atomics).
    fn still_publishes(&self, key: &SigningKey) -> bool {
        let _ = key;
        true
    }
}

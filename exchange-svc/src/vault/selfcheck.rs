//! Vault's signatures checked against the keys the service publishes: Vault signs one
//! request with one key, so one signature per request tells whether the material
//! behind a version number is still the one in the JWKS (a transit key deleted and
//! re-created under its name holds new material as `v1` until the next key read).
//! A token no verifier accepts is never handed out.

use base64::Engine;
use meshpass_core::{Algorithm, Jwk};
use serde_json::Value;

/// A published key, ready to check a signature.
#[derive(Debug, Clone)]
pub(super) enum Published {
    /// ES*/RS*/PS*: core's verifier, the rules subject tokens get.
    Jose(Jwk, Algorithm),
    /// Ed25519 (`OKP`): core refuses EdDSA in subject tokens; ring checks it here.
    Ed25519(Vec<u8>),
}

impl Published {
    /// The checker of the published JWK `jwk` for `alg` (None: not a key this service
    /// writes).
    pub(super) fn of(jwk: &Value, alg: &str) -> Option<Published> {
        let obj = jwk.as_object()?;
        if obj.get("kty").and_then(Value::as_str) == Some("OKP") {
            let x = obj.get("x")?.as_str()?;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .ok()?;
            return Some(Published::Ed25519(raw));
        }
        let alg = Algorithm::parse(alg).ok()?;
        Jwk::from_json(obj).ok().map(|k| Published::Jose(k, alg))
    }

    /// Whether `signature` (JOSE, base64url) over `input` verifies with this key.
    pub(super) fn verifies(&self, input: &[u8], signature: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        match self {
            Published::Jose(key, alg) => key.verify_detached(*alg, input, &sig).is_ok(),
            Published::Ed25519(x) => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
                    .verify(input, &sig)
                    .is_ok()
            }
        }
    }
}

//! A JWT-SVID issuer (ES256 test keys) and helpers to read any JWT's header and claims.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issues JWT-SVIDs signed with ES256 keys generated at start; publishes their JWKS.
pub struct JwtSvidIssuer {
    issuer: String,
    kid: String,
    key: SigningKey,
}

impl JwtSvidIssuer {
    /// A new issuer whose `iss` claim is `issuer`, with a fresh P-256 key.
    pub fn new(issuer: &str) -> Self {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let kid = format!("svid-{}", &hex_of(&rand_bytes::<6>()));
        JwtSvidIssuer {
            issuer: issuer.to_string(),
            kid,
            key,
        }
    }

    /// The `iss` this issuer puts in its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS (`{"keys":[{kty:EC, crv:P-256, alg:ES256, use:sig, kid, x, y}]}`).
    pub fn jwks(&self) -> Value {
        json!({ "keys": [ec_jwk(&self.key, &self.kid)] })
    }

    /// Standard JWT-SVID claims: `iss`, `sub`, `aud`, `iat`, `exp = now + ttl_secs`.
    pub fn claims(&self, sub: &str, aud: &[&str], ttl_secs: u64) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": now + ttl_secs,
        })
    }

    /// A token for `sub` and `aud` valid for `ttl_secs`.
    pub fn mint_for(&self, sub: &str, aud: &[&str], ttl_secs: u64) -> Result<String> {
        self.mint(&self.claims(sub, aud, ttl_secs))
    }

    /// Signs `claims` with this issuer's key (header `{alg: ES256, typ: JWT, kid}`).
    pub fn mint(&self, claims: &Value) -> Result<String> {
        sign_es256(&self.key, &self.kid, claims)
    }

    /// Signs `claims` under this issuer's `kid` but with an unrelated key: a token whose
    /// signature cannot verify.
    pub fn mint_with_foreign_key(&self, claims: &Value) -> Result<String> {
        let other = SigningKey::random(&mut rand::rngs::OsRng);
        sign_es256(&other, &self.kid, claims)
    }
}

fn sign_es256(key: &SigningKey, kid: &str, claims: &Value) -> Result<String> {
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let sig: Signature = key.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

fn ec_jwk(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    let x = point
        .x()
        .map(|x| URL_SAFE_NO_PAD.encode(x))
        .unwrap_or_default();
    let y = point
        .y()
        .map(|y| URL_SAFE_NO_PAD.encode(y))
        .unwrap_or_default();
    json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y})
}

/// A JWT's header and claims, decoded without verifying anything (for display and
/// assertions on tokens that a real verifier already accepted).
#[derive(Debug, Clone)]
pub struct DecodedJwt {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
}

/// Decodes a compact JWS's header and payload (no verification).
pub fn decode_unverified(token: &str) -> Result<DecodedJwt> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS (expected three dot-separated parts)");
    };
    let header = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(h)
            .context("header is not base64url")?,
    )
    .context("header is not JSON")?;
    let claims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(p)
            .context("payload is not base64url")?,
    )
    .context("payload is not JSON")?;
    Ok(DecodedJwt { header, claims })
}

/// `n` random bytes from the OS.
pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Lowercase hex of `bytes`.
pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random lowercase hex string of `2 * 8` characters (names, database suffixes).
pub fn random_suffix() -> String {
    hex_of(&rand_bytes::<8>())
}

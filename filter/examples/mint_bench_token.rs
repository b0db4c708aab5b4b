//! Prints `{"token": ..., "jwks": ..., "sub": ...}`: a fresh ES256 key, its JWKS and a
//! JWT-SVID (valid 24 h) for `filter/bench/run.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

fn main() {
    let sk = SigningKey::random(&mut rand::rngs::OsRng);
    let p = sk.verifying_key().to_encoded_point(false);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench-1",
        "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(p.y().unwrap()),
    }]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sub = "spiffe://cluster.local/ns/bench/sa/client";
    let header = r#"{"alg":"ES256","kid":"bench-1","typ":"JWT"}"#;
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "meshpass", "sub": sub,
        "iat": now, "exp": now + 86_400, "jti": "0123456789abcdef01234567",
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: Signature = sk.sign(input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    println!(
        "{}",
        serde_json::json!({"token": token, "jwks": jwks.to_string(), "sub": sub})
    );
}

//! Prints `{"token", "rs256_token", "jwks", "sub"}` for `filter/bench/run.sh`: a fresh
//! ES256 key and RSA-2048 key, one JWKS holding both, and a JWT-SVID (valid 24 h) signed
//! by each (ES256: `token`, RS256: `rs256_token`), same claims.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::{SignatureEncoding, Signer};
use p256::ecdsa::{Signature, SigningKey};
use rsa::traits::PublicKeyParts;

fn main() {
    let sk = SigningKey::random(&mut rand::rngs::OsRng);
    let rk = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let p = sk.verifying_key().to_encoded_point(false);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench-1",
        "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(p.y().unwrap()),
    }, {
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench-rsa",
        "n": URL_SAFE_NO_PAD.encode(rk.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(rk.e().to_bytes_be()),
    }]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sub = "spiffe://cluster.local/ns/bench/sa/client";
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "meshpass", "sub": sub,
        "iat": now, "exp": now + 86_400, "jti": "0123456789abcdef01234567",
    });
    let input = |alg: &str, kid: &str| {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#)),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    };
    let es = input("ES256", "bench-1");
    let sig: Signature = sk.sign(es.as_bytes());
    let token = format!("{es}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    let rs = input("RS256", "bench-rsa");
    let rsig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(rk).sign(rs.as_bytes());
    let rs256_token = format!("{rs}.{}", URL_SAFE_NO_PAD.encode(rsig.to_vec()));
    println!(
        "{}",
        serde_json::json!({"token": token, "rs256_token": rs256_token, "jwks": jwks.to_string(), "sub": sub})
    );
}

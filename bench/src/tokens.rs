//! The benchmark's JWT-SVID issuer: one ES256 key, its JWKS, and tokens for one SPIFFE ID
//! (distinct `jti`s make never-seen tokens), all minted before any measurement.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::json;

/// `iss` of every benchmark token.
pub const ISSUER: &str = "https://issuer.bench";
/// `aud` of every benchmark token (the exchange service's).
pub const AUDIENCE: &str = "meshpass";
/// The SPIFFE ID every token is for (the CLIENT-mode filter's own identity).
pub const SUBJECT: &str = "spiffe://cluster.local/ns/bench/sa/client";
/// `kid` of the key.
const KID: &str = "bench-1";

/// An ES256 issuer.
pub struct Issuer {
    key: SigningKey,
    header: String,
    now: u64,
}

impl Issuer {
    /// A fresh random key.
    pub fn new() -> Result<Issuer> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        Ok(Issuer {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            header: URL_SAFE_NO_PAD
                .encode(format!(r#"{{"alg":"ES256","kid":"{KID}","typ":"JWT"}}"#)),
            now,
        })
    }

    /// The JWKS (text) holding the public key.
    pub fn jwks(&self) -> String {
        let p = self.key.verifying_key().to_encoded_point(false);
        let coord = |c: Option<&p256::FieldBytes>| c.map(|b| URL_SAFE_NO_PAD.encode(b));
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": coord(p.x()), "y": coord(p.y())}]})
        .to_string()
    }

    /// Token number `n` (valid 24 h; the same `n` gives the same claims).
    pub fn mint(&self, n: u64) -> String {
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT,
            "iat": self.now, "exp": self.now + 86_400, "jti": format!("{n:024x}"),
        });
        let input = format!(
            "{}.{}",
            self.header,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// Tokens `first..first + count`, made on two threads.
    pub fn mint_range(&self, first: u64, count: u64) -> Vec<String> {
        let half = first + count / 2;
        std::thread::scope(|s| {
            let a = s.spawn(|| (first..half).map(|n| self.mint(n)).collect::<Vec<_>>());
            let b: Vec<String> = (half..first + count).map(|n| self.mint(n)).collect();
            let mut out = a.join().unwrap_or_default();
            out.extend(b);
            out
        })
    }
}

/// Writes one line per item.
pub fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    Ok(())
}

/// The RFC 8693 form the exchange service gets for `token` (resource `resource`).
pub fn exchange_form(token: &str, resource: &str) -> String {
    format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
         &subject_token={token}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt\
         &resource={resource}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_distinct_es256_jwts_of_about_the_budgets_size() {
        let iss = Issuer::new().unwrap();
        let t = iss.mint_range(0, 4);
        assert_eq!(t.len(), 4);
        assert_ne!(t[0], t[1]);
        assert_eq!(t[0].split('.').count(), 3);
        // DESIGN.md's budget was measured with a 364-byte ES256 JWT.
        assert!((300..420).contains(&t[0].len()), "{}", t[0].len());
        assert!(iss.jwks().contains("\"crv\":\"P-256\""));
    }
}

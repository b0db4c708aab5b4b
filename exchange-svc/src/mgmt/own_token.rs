//! Checks that a participant token was signed by this service, against the keys it
//! publishes (`Signer::jwks`): the signature check of `POST /api/v1/introspect`.
//!
//! ES*/RS*/PS* go through meshpass-core's strict JOSE, the code that checks subject
//! tokens. EdDSA, which the service signs with when its transit key is `ed25519`
//! (DESIGN.md, "Participant tokens") but which core refuses in subject tokens, is
//! checked here with ring's Ed25519: the header may hold only what the service writes
//! (`alg`, `typ`, `kid`), the key is the published `OKP`/`Ed25519` JWK of that `kid`,
//! and base64url must be canonical. Without this, every live EdDSA token would be
//! introspected inactive.

use base64::Engine;
use meshpass_core::{CompactJws, KeySet, DEFAULT_MAX_TOKEN_BYTES};
use serde_json::{Map, Value};

/// The claims of `token` when one of the keys in `jwks` (a JWK Set) signed it.
pub fn verified_claims(jwks: &Value, token: &str) -> Option<Map<String, Value>> {
    match CompactJws::parse(token, DEFAULT_MAX_TOKEN_BYTES) {
        Ok(jws) => {
            let bytes = serde_json::to_vec(jwks).ok()?;
            let (keys, _) = KeySet::parse(&bytes).ok()?;
            let key = keys
                .select(jws.header.kid.as_deref(), jws.header.alg)
                .ok()?;
            jws.verify(key).ok()?;
            Some(jws.payload)
        }
        Err(_) => eddsa_claims(jwks, token),
    }
}

/// The claims of an EdDSA-signed `token` (see the module comment).
fn eddsa_claims(jwks: &Value, token: &str) -> Option<Map<String, Value>> {
    if token.len() > DEFAULT_MAX_TOKEN_BYTES {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, sig) = token.rsplit_once('.')?;
    let (header, payload) = input.split_once('.')?;
    let header: Map<String, Value> = serde_json::from_slice(&b64.decode(header).ok()?).ok()?;
    if header
        .keys()
        .any(|k| !matches!(k.as_str(), "alg" | "typ" | "kid"))
        || header.get("alg")?.as_str()? != "EdDSA"
    {
        return None;
    }
    let kid = header.get("kid")?.as_str()?;
    let jwk = jwks.get("keys")?.as_array()?.iter().find(|k| {
        k.get("kid").and_then(Value::as_str) == Some(kid)
            && k.get("kty").and_then(Value::as_str) == Some("OKP")
            && k.get("crv").and_then(Value::as_str) == Some("Ed25519")
    })?;
    let x = b64.decode(jwk.get("x")?.as_str()?).ok()?;
    let sig = b64.decode(sig).ok()?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
        .verify(input.as_bytes(), &sig)
        .ok()?;
    serde_json::from_slice(&b64.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn jwks(k: &Ed25519KeyPair, kid: &str) -> Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": B64.encode(k.public_key().as_ref())}]})
    }

    fn sign(k: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = B64.encode(k.sign(input.as_bytes()).as_ref());
        format!("{input}.{sig}")
    }

    #[test]
    fn an_eddsa_token_verifies_only_under_its_published_key_and_plain_header() {
        let (k, other) = (key(1), key(2));
        let keys = jwks(&k, "svc:v1");
        let claims = json!({"sub": "spiffe://td/ns/a/sa/b", "exp": 10});
        let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": "svc:v1"});
        let t = sign(&k, &h, &claims);
        assert_eq!(verified_claims(&keys, &t).unwrap()["sub"], claims["sub"]);
        // Another key, an unknown kid, a header member the service never writes.
        assert!(verified_claims(&keys, &sign(&other, &h, &claims)).is_none());
        let unknown = json!({"alg": "EdDSA", "kid": "svc:v2"});
        assert!(verified_claims(&keys, &sign(&k, &unknown, &claims)).is_none());
        let crit = json!({"alg": "EdDSA", "kid": "svc:v1", "crit": ["x"]});
        assert!(verified_claims(&keys, &sign(&k, &crit, &claims)).is_none());
        // The signature under other claims, and a non-canonical last character.
        let (_, sig) = t.rsplit_once('.').unwrap();
        let (head, _) = t.split_once('.').unwrap();
        let moved = format!(
            "{head}.{}.{sig}",
            B64.encode(json!({"sub": "x"}).to_string())
        );
        assert!(verified_claims(&keys, &moved).is_none());
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(verified_claims(&keys, &String::from_utf8(bytes).unwrap()).is_none());
        // An EC-typed JWK of that kid is not an Ed25519 key.
        let ec =
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "svc:v1", "x": "", "y": ""}]});
        assert!(verified_claims(&ec, &t).is_none());
    }
}

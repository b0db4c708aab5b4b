//! The signature-level entry point `verify_compact_jws`: a compact JWS over any payload,
//! one given key, the same algorithm and key rules as subject tokens, no claim checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use meshpass_core::b64;
use meshpass_core::{verify_compact_jws, Jwk, RawJws, ValidationError, DEFAULT_MAX_TOKEN_BYTES};
use serde_json::{json, Value};
use support::*;

const MAX: usize = DEFAULT_MAX_TOKEN_BYTES;

fn jwk(v: &Value) -> Jwk {
    Jwk::from_json(v.as_object().unwrap()).unwrap()
}

/// Signs raw payload bytes under a JSON header.
fn sign_bytes(header: &Value, payload: &[u8], signer: &Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(payload)
    );
    let alg = header["alg"].as_str().unwrap();
    let sig = signature_over(input.as_bytes(), alg, signer);
    format!("{input}.{}", b64::encode(&sig))
}

#[test]
fn verifies_the_rfc7520_examples_over_a_non_json_payload() {
    let doc: Value = serde_json::from_str(include_str!("vectors/rfc7520.json")).unwrap();
    let payload = doc["payload"].as_str().unwrap().as_bytes();
    for case in doc["cases"].as_array().unwrap() {
        let key = jwk(&case["key"]);
        let token = case["compact"].as_str().unwrap();
        let jws = verify_compact_jws(token, &key, MAX)
            .unwrap_or_else(|e| panic!("RFC 7520 §{}: {e}", case["section"]));
        assert_eq!(jws.payload, payload);
        assert_eq!(jws.header.alg.as_str(), case["alg"].as_str().unwrap());
        assert_eq!(
            jws.header.kid.as_deref(),
            Some("bilbo.baggins@hobbiton.example")
        );
        // One changed payload byte and the same signature no longer verify.
        let mut bad = payload.to_vec();
        bad[0] ^= 1;
        let (h, rest) = token.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let tampered = format!("{h}.{}.{s}", b64::encode(&bad));
        assert_eq!(
            verify_compact_jws(&tampered, &key, MAX).unwrap_err(),
            ValidationError::BadSignature
        );
    }
}

#[test]
fn verifies_every_algorithm_over_arbitrary_bytes_without_reading_claims() {
    let ec256 = p256_key();
    let ec384 = p384_key();
    let ec521 = p521_key();
    let payloads: [&[u8]; 3] = [b"\x00\xff binary, not JSON", b"[1,2,3]", b"{\"exp\":1}"];
    let cases: Vec<(&str, Value, Signer<'_>)> = vec![
        ("RS256", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("RS384", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("RS512", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("PS256", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("PS384", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("PS512", rsa_jwk(rsa_key(), "k"), Signer::Rsa(rsa_key())),
        ("ES256", p256_jwk(&ec256, "k"), Signer::P256(&ec256)),
        ("ES384", p384_jwk(&ec384, "k"), Signer::P384(&ec384)),
        ("ES512", p521_jwk(&ec521, "k"), Signer::P521(&ec521)),
    ];
    for (alg, key, signer) in &cases {
        for payload in payloads {
            let token = sign_bytes(&json!({ "alg": alg }), payload, signer);
            let jws =
                verify_compact_jws(&token, &jwk(key), MAX).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(jws.payload, payload, "{alg}");
        }
    }
}

#[test]
fn verifies_an_empty_payload_which_subject_tokens_refuse() {
    let k = p256_key();
    let token = sign_bytes(&json!({"alg": "ES256"}), b"", &Signer::P256(&k));
    assert!(token.contains(".."));
    let jws = verify_compact_jws(&token, &jwk(&p256_jwk(&k, "k")), MAX).unwrap();
    assert!(jws.payload.is_empty());
    assert_eq!(
        policy().parse(&token).unwrap_err(),
        ValidationError::Malformed("payload segment is empty")
    );
}

#[test]
fn applies_the_same_header_rules_as_subject_tokens() {
    let k = p256_key();
    let key = jwk(&p256_jwk(&k, "k"));
    let signer = Signer::P256(&k);
    let cases = [
        (json!({"alg": "none"}), "algorithm_not_allowed"),
        (
            json!({"alg": "ES256", "crit": ["b64"], "b64": false}),
            "critical_header",
        ),
        (
            json!({"alg": "ES256", "jku": "https://attacker.example/jwks"}),
            "forbidden_header",
        ),
        (json!({"alg": "ES256", "typ": "at+jwt"}), "bad_type"),
        (
            json!({"alg": "ES256", "kid": "../../etc/passwd"}),
            "bad_key_id",
        ),
    ];
    for (header, reason) in cases {
        let token = sign_bytes(&header, b"payload", &signer);
        let err = verify_compact_jws(&token, &key, MAX).unwrap_err();
        assert_eq!(err.reason(), reason, "{header}");
    }
    let dup = sign_raw(r#"{"alg":"ES256","alg":"ES256"}"#, "x", "ES256", &signer);
    assert_eq!(
        verify_compact_jws(&dup, &key, MAX).unwrap_err().reason(),
        "json"
    );
}

#[test]
fn applies_the_same_key_and_algorithm_rules_as_subject_tokens() {
    let ec = p256_key();
    let rsa_pinned = {
        let mut k = rsa_jwk(rsa_key(), "k");
        k["alg"] = json!("RS256");
        jwk(&k)
    };
    // HS256 over the RSA public key bytes (alg confusion): the alg itself is refused.
    let hs = sign_bytes(
        &json!({"alg": "HS256"}),
        b"p",
        &Signer::Hs256(rsa_jwk(rsa_key(), "k").to_string().as_bytes()),
    );
    assert_eq!(
        verify_compact_jws(&hs, &rsa_pinned, MAX)
            .unwrap_err()
            .reason(),
        "algorithm_not_allowed"
    );
    // A key pinned to RS256 does not verify PS256, even with a good PS256 signature.
    let ps = sign_bytes(&json!({"alg": "PS256"}), b"p", &Signer::Rsa(rsa_key()));
    assert_eq!(
        verify_compact_jws(&ps, &rsa_pinned, MAX).unwrap_err(),
        ValidationError::KeyAlgorithmMismatch("PS256")
    );
    // An RSA header on an EC key.
    let rs = sign_bytes(&json!({"alg": "RS256"}), b"p", &Signer::Rsa(rsa_key()));
    assert_eq!(
        verify_compact_jws(&rs, &jwk(&p256_jwk(&ec, "k")), MAX).unwrap_err(),
        ValidationError::KeyAlgorithmMismatch("RS256")
    );
    // A signature by another key.
    let other = sign_bytes(&json!({"alg": "ES256"}), b"p", &Signer::P256(&p256_key()));
    assert_eq!(
        verify_compact_jws(&other, &jwk(&p256_jwk(&ec, "k")), MAX).unwrap_err(),
        ValidationError::BadSignature
    );
    // r = s = 0 (CVE-2022-21449, "psychic signatures").
    let zero = sign_bytes(&json!({"alg": "ES256"}), b"p", &Signer::Raw(vec![0; 64]));
    assert_eq!(
        verify_compact_jws(&zero, &jwk(&p256_jwk(&ec, "k")), MAX).unwrap_err(),
        ValidationError::BadSignature
    );
}

#[test]
fn refuses_non_canonical_base64_and_oversize_tokens() {
    let k = p256_key();
    let key = jwk(&p256_jwk(&k, "k"));
    let token = sign_bytes(&json!({"alg": "ES256"}), b"ab", &Signer::P256(&k));
    assert!(verify_compact_jws(&token, &key, MAX).is_ok());
    // "YWI" is "ab"; "YWJ" decodes to the same bytes with a non-zero trailing bit.
    let bad = token.replacen(".YWI.", ".YWJ.", 1);
    assert_ne!(bad, token);
    assert_eq!(
        verify_compact_jws(&bad, &key, MAX).unwrap_err(),
        ValidationError::Base64 { segment: "payload" }
    );
    assert_eq!(
        verify_compact_jws(&token, &key, 10).unwrap_err().reason(),
        "too_large"
    );
}

#[test]
fn parsing_alone_exposes_the_signing_input_and_signature() {
    let k = p256_key();
    let token = sign_bytes(&json!({"alg": "ES256"}), b"hello", &Signer::P256(&k));
    let jws = RawJws::parse(&token, MAX).unwrap();
    assert!(token.starts_with(jws.signing_input()));
    assert_eq!(jws.signature().len(), 64);
    assert_eq!(jws.verify(&jwk(&p256_jwk(&k, "k"))), Ok(()));
}

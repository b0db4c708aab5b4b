//! Every subject-token rule, through the one entry point `ValidationPolicy::validate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use meshpass_core::b64;
use meshpass_core::{
    Binding, BindingMode, KeySet, SpiffeId, SpiffeIdError, SpiffeIdPattern, SubjectFormat,
    TrustDomain, ValidationError, ValidationPolicy,
};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use support::*;

fn p256_setup() -> (
    p256::ecdsa::SigningKey,
    std::collections::HashMap<String, KeySet>,
) {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    (k, keys)
}

fn validate_es256(
    header: &Value,
    payload: &Value,
) -> Result<meshpass_core::VerifiedSubject, ValidationError> {
    let (k, keys) = p256_setup();
    let token = sign(header, payload, &Signer::P256(&k));
    policy().validate(&token, NOW, &keys, &NO_BINDING)
}

fn es256_with(payload: Value) -> Result<meshpass_core::VerifiedSubject, ValidationError> {
    validate_es256(&header("ES256", "ec-1"), &payload)
}

fn with_claim(name: &str, value: Value) -> Value {
    let mut c = claims();
    c[name] = value;
    c
}

fn without_claim(name: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(name);
    c
}

// ---------------------------------------------------------------- accepted tokens

#[test]
fn accepts_es256_jwt_svid_and_reports_the_verified_subject() {
    let v = es256_with(claims()).unwrap();
    assert_eq!(v.spiffe_id, subject());
    assert_eq!(v.issuer, ISSUER);
    assert_eq!(v.audiences, vec![AUDIENCE.to_owned()]);
    assert_eq!(v.expires_at, NOW + 300);
    assert_eq!(v.issued_at, Some(NOW - 10));
    assert_eq!(v.alg, meshpass_core::Algorithm::ES256);
    assert_eq!(v.kid.as_deref(), Some("ec-1"));
    assert_eq!(v.claims["sub"], SUBJECT);
}

#[test]
fn accepts_es384_token() {
    let k = p384_key();
    let keys = lookup(key_set(&[p384_jwk(&k, "ec-384")]));
    let token = sign(&header("ES384", "ec-384"), &claims(), &Signer::P384(&k));
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
}

#[test]
fn accepts_es512_token_with_p521_key() {
    let k = p521_key();
    let keys = lookup(key_set(&[p521_jwk(&k, "ec-521")]));
    let token = sign(&header("ES512", "ec-521"), &claims(), &Signer::P521(&k));
    assert_eq!(
        policy()
            .validate(&token, NOW, &keys, &NO_BINDING)
            .unwrap()
            .alg,
        meshpass_core::Algorithm::ES512
    );
}

#[test]
fn accepts_every_rsa_algorithm_with_one_rsa_key() {
    let keys = lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")]));
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = sign(&header(alg, "rsa-1"), &claims(), &Signer::Rsa(rsa_key()));
        let v = policy().validate(&token, NOW, &keys, &NO_BINDING);
        assert!(v.is_ok(), "{alg}: {v:?}");
    }
}

#[test]
fn accepts_token_without_typ_and_with_typ_jose() {
    let mut h = json!({"alg": "ES256", "kid": "ec-1"});
    assert!(validate_es256(&h, &claims()).is_ok());
    h["typ"] = json!("JOSE");
    assert!(validate_es256(&h, &claims()).is_ok());
}

#[test]
fn accepts_audience_given_as_array_containing_a_configured_audience() {
    assert!(es256_with(with_claim("aud", json!(["other", AUDIENCE]))).is_ok());
}

#[test]
fn accepts_high_s_ecdsa_signature() {
    // ECDSA verification accepts both s and n - s (JWS does not require low-S).
    let (k, keys) = p256_setup();
    let h = header("ES256", "ec-1");
    let input = signing_input(&h, &claims());
    let sig: p256::ecdsa::Signature = signature::Signer::sign(&k, input.as_bytes());
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    for sig in [sig, flipped] {
        let token = format!("{input}.{}", b64::encode(&sig.to_bytes()));
        assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
    }
}

// ---------------------------------------------------------------- algorithms

#[test]
fn rejects_alg_none_in_every_letter_case() {
    let (_, keys) = p256_setup();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "kid": "ec-1"});
        // The classic form has an empty signature; also try a non-empty one.
        let input = signing_input(&h, &claims());
        for token in [format!("{input}."), format!("{input}.AAAA")] {
            assert_eq!(
                policy().validate(&token, NOW, &keys, &NO_BINDING),
                Err(ValidationError::AlgorithmNotAllowed(alg.into())),
                "{token}"
            );
        }
    }
}

#[test]
fn rejects_token_signed_with_hs256_using_public_key() {
    let keys = lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")]));
    let public = rsa_key().to_public_key();
    // Try the secrets a confused verifier might use: the raw modulus and the JWK text.
    let secrets: Vec<Vec<u8>> = vec![
        public.n().to_bytes_be(),
        rsa_jwk(rsa_key(), "rsa-1").to_string().into_bytes(),
    ];
    for secret in secrets {
        let token = sign(
            &header("HS256", "rsa-1"),
            &claims(),
            &Signer::Hs256(&secret),
        );
        assert_eq!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::AlgorithmNotAllowed("HS256".into()))
        );
    }
}

#[test]
fn rejects_every_hmac_and_eddsa_algorithm() {
    let (_, keys) = p256_setup();
    for alg in [
        "HS256", "HS384", "HS512", "EdDSA", "es256", "ES256K", "RSA-OAEP",
    ] {
        let token = sign(&header(alg, "ec-1"), &claims(), &Signer::Raw(vec![1; 64]));
        assert_eq!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::AlgorithmNotAllowed(alg.into()))
        );
    }
}

#[test]
fn rejects_missing_or_non_string_alg() {
    for h in [json!({"kid": "ec-1"}), json!({"alg": 256, "kid": "ec-1"})] {
        assert!(matches!(
            validate_es256(&h, &claims()),
            Err(ValidationError::AlgorithmNotAllowed(_))
        ));
    }
}

#[test]
fn rejects_rs256_header_on_ec_key() {
    let (k, keys) = p256_setup();
    let token = sign(&header("RS256", "ec-1"), &claims(), &Signer::P256(&k));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::KeyAlgorithmMismatch("RS256"))
    );
}

#[test]
fn rejects_es384_header_on_p256_key() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES384", "ec-1"), &claims(), &Signer::P256(&k));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::KeyAlgorithmMismatch("ES384"))
    );
}

#[test]
fn rejects_algorithm_other_than_the_one_the_jwk_pins() {
    let mut jwk = rsa_jwk(rsa_key(), "rsa-1");
    jwk["alg"] = json!("PS256");
    let keys = lookup(key_set(&[jwk]));
    let token = sign(
        &header("RS256", "rsa-1"),
        &claims(),
        &Signer::Rsa(rsa_key()),
    );
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::KeyAlgorithmMismatch("RS256"))
    );
    let token = sign(
        &header("PS256", "rsa-1"),
        &claims(),
        &Signer::Rsa(rsa_key()),
    );
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
}

#[test]
fn rejects_pkcs1_signature_presented_as_pss() {
    let keys = lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")]));
    let h = header("PS256", "rsa-1");
    let input = signing_input(&h, &claims());
    let sig = signature_over(input.as_bytes(), "RS256", &Signer::Rsa(rsa_key()));
    let token = format!("{input}.{}", b64::encode(&sig));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::BadSignature)
    );
}

// ---------------------------------------------------------------- signatures

#[test]
fn rejects_token_signed_by_another_key_with_the_same_kid() {
    let keys = lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")]));
    let token = sign(
        &header("RS256", "rsa-1"),
        &claims(),
        &Signer::Rsa(rsa_key_2()),
    );
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn rejects_token_whose_payload_was_changed_after_signing() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64::encode(
        with_claim("sub", json!("spiffe://example.org/admin"))
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert_eq!(
        policy().validate(&parts.join("."), NOW, &keys, &NO_BINDING),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn rejects_psychic_ecdsa_signature_with_r_and_s_zero() {
    let (_, keys) = p256_setup();
    let token = sign(
        &header("ES256", "ec-1"),
        &claims(),
        &Signer::Raw(vec![0; 64]),
    );
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn rejects_ecdsa_signature_with_r_or_s_equal_to_or_above_the_group_order() {
    let (k, keys) = p256_setup();
    let h = header("ES256", "ec-1");
    let input = signing_input(&h, &claims());
    let good = signature_over(input.as_bytes(), "ES256", &Signer::P256(&k));
    // n of P-256.
    let n = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let ff = [0xffu8; 32];
    for bad_half in [n, ff] {
        for side in 0..2 {
            let mut sig = good.clone();
            sig[side * 32..side * 32 + 32].copy_from_slice(&bad_half);
            let token = format!("{input}.{}", b64::encode(&sig));
            assert_eq!(
                policy().validate(&token, NOW, &keys, &NO_BINDING),
                Err(ValidationError::BadSignature)
            );
        }
    }
    // Sanity: the unmodified signature is accepted.
    let token = format!("{input}.{}", b64::encode(&good));
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn rejects_ecdsa_signature_that_is_too_long_too_short_or_der_encoded() {
    let (k, keys) = p256_setup();
    let h = header("ES256", "ec-1");
    let input = signing_input(&h, &claims());
    let good = signature_over(input.as_bytes(), "ES256", &Signer::P256(&k));
    let sig = p256::ecdsa::Signature::from_slice(&good).unwrap();
    let der = sig.to_der().as_bytes().to_vec();
    let mut long = good.clone();
    long.push(0);
    let mut long_front = vec![0u8];
    long_front.extend_from_slice(&good);
    for bad in [long, long_front, good[..63].to_vec(), der, vec![0; 96]] {
        let token = format!("{input}.{}", b64::encode(&bad));
        assert_eq!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::BadSignature)
        );
    }
}

#[test]
fn rejects_rsa_signature_of_the_wrong_length() {
    let keys = lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")]));
    let h = header("RS256", "rsa-1");
    let input = signing_input(&h, &claims());
    let good = signature_over(input.as_bytes(), "RS256", &Signer::Rsa(rsa_key()));
    let mut padded = vec![0u8];
    padded.extend_from_slice(&good);
    for bad in [padded, good[1..].to_vec(), vec![0; 256], vec![0xff; 256]] {
        let token = format!("{input}.{}", b64::encode(&bad));
        assert_eq!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::BadSignature)
        );
    }
}

// ---------------------------------------------------------------- headers

#[test]
fn rejects_embedded_jwk_header_even_when_signed_by_that_key() {
    let (_, keys) = p256_setup();
    let attacker = p256_key();
    let mut h = header("ES256", "ec-1");
    h["jwk"] = p256_jwk(&attacker, "ec-1");
    let token = sign(&h, &claims(), &Signer::P256(&attacker));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::ForbiddenHeader("jwk"))
    );
}

#[test]
fn rejects_jku_x5u_and_x5c_headers() {
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut h = header("ES256", "ec-1");
        h[name] = value;
        let got = validate_es256(&h, &claims());
        assert!(
            matches!(got, Err(ValidationError::ForbiddenHeader(n)) if n == name),
            "{name}: {got:?}"
        );
    }
}

#[test]
fn rejects_any_crit_header() {
    for crit in [json!(["exp"]), json!([]), json!(["b64"])] {
        let mut h = header("ES256", "ec-1");
        h["crit"] = crit;
        h["b64"] = json!(false);
        assert_eq!(
            validate_es256(&h, &claims()),
            Err(ValidationError::CriticalHeader)
        );
    }
}

#[test]
fn rejects_typ_other_than_jwt_or_jose() {
    for typ in [json!("at+jwt"), json!("jwt"), json!(""), json!(1)] {
        let mut h = header("ES256", "ec-1");
        h["typ"] = typ;
        assert_eq!(validate_es256(&h, &claims()), Err(ValidationError::BadType));
    }
}

#[test]
fn rejects_garbage_kid_cleanly() {
    let long = "a".repeat(10 * 1024);
    let bad = [
        json!(long),
        json!("../../../../etc/passwd"),
        json!("key\u{0}id"),
        json!("key\nid"),
        json!("key id"),
        json!("' OR '1'='1"),
        json!(""),
        json!(42),
        json!(null),
    ];
    let (k, keys) = p256_setup();
    let mut p = policy();
    p.max_token_bytes = 64 * 1024;
    for kid in bad {
        let mut h = header("ES256", "ec-1");
        h["kid"] = kid.clone();
        let token = sign(&h, &claims(), &Signer::P256(&k));
        let shown: String = kid.to_string().chars().take(40).collect();
        assert_eq!(
            p.validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::BadKeyId),
            "{shown}"
        );
    }
}

#[test]
fn rejects_unknown_kid_with_a_refetch_hint_naming_the_issuer() {
    let got = validate_es256(&header("ES256", "rotated-2"), &claims()).unwrap_err();
    assert_eq!(
        got,
        ValidationError::UnknownKeyId {
            issuer: ISSUER.into(),
            kid: "rotated-2".into()
        }
    );
    assert!(got.suggests_key_refetch());
    assert_eq!(got.reason(), "unknown_key_id");
}

#[test]
fn accepts_token_without_kid_when_exactly_one_key_fits_its_algorithm() {
    let ec = p256_key();
    let keys = lookup(key_set(&[
        p256_jwk(&ec, "ec-1"),
        rsa_jwk(rsa_key(), "rsa-1"),
    ]));
    let token = sign(&json!({"alg": "ES256"}), &claims(), &Signer::P256(&ec));
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
}

#[test]
fn rejects_token_without_kid_when_two_keys_fit_its_algorithm() {
    let a = p256_key();
    let b = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&a, "a"), p256_jwk(&b, "b")]));
    let token = sign(&json!({"alg": "ES256"}), &claims(), &Signer::P256(&a));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::AmbiguousKey)
    );
}

#[test]
fn rejects_token_without_kid_when_no_key_fits_its_algorithm() {
    let (k, keys) = p256_setup();
    let token = sign(&json!({"alg": "ES384"}), &claims(), &Signer::P256(&k));
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::AmbiguousKey)
    );
}

#[test]
fn reports_no_keys_when_the_issuer_has_no_key_set() {
    let k = p256_key();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let empty = std::collections::HashMap::<String, KeySet>::new();
    let got = policy()
        .validate(&token, NOW, &empty, &NO_BINDING)
        .unwrap_err();
    assert_eq!(got, ValidationError::NoKeys);
    assert!(got.suggests_key_refetch());
    let empty_set = lookup(KeySet::default());
    assert_eq!(
        policy().validate(&token, NOW, &empty_set, &NO_BINDING),
        Err(ValidationError::NoKeys)
    );
}

// ---------------------------------------------------------------- structure

#[test]
fn rejects_token_larger_than_the_cap_before_parsing() {
    let big = "a".repeat(9000);
    assert_eq!(
        policy().validate(&big, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::TooLarge {
            len: 9000,
            max: 8192
        })
    );
    let mut p = policy();
    p.max_token_bytes = 100;
    let got = {
        let (k, keys) = p256_setup();
        let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
        p.validate(&token, NOW, &keys, &NO_BINDING)
    };
    assert!(matches!(
        got,
        Err(ValidationError::TooLarge { max: 100, .. })
    ));
}

#[test]
fn rejects_jws_json_serialization() {
    let token = r#"{"payload":"e30","protected":"eyJhbGciOiJFUzI1NiJ9","signature":"AAAA"}"#;
    assert_eq!(
        policy().validate(token, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::JsonSerializationNotSupported)
    );
}

#[test]
fn rejects_jwe_compact_tokens() {
    let token = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d";
    assert_eq!(
        policy().validate(token, NOW, &lookup(KeySet::default()), &NO_BINDING),
        Err(ValidationError::JweNotSupported)
    );
}

#[test]
fn rejects_tokens_without_exactly_three_non_empty_segments() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        String::new(),
        parts[0].to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.x"),
        format!("{}..{}", parts[0], parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
    ];
    for t in cases {
        assert!(
            matches!(
                policy().validate(&t, NOW, &keys, &NO_BINDING),
                Err(ValidationError::Malformed(_))
            ),
            "{t}"
        );
    }
}

#[test]
fn rejects_padded_and_non_canonical_base64url_in_any_segment() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    assert!(policy().validate(&token, NOW, &keys, &NO_BINDING).is_ok());
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let segment_names = ["header", "payload", "signature"];
    for (i, name) in segment_names.iter().enumerate() {
        let mut variants = vec![
            format!("{}=", parts[i]),
            format!("{}==", parts[i]),
            parts[i].replace('-', "+").replace('_', "/") + "+/",
            format!(" {}", parts[i]),
            format!("{}\n", parts[i]),
        ];
        // A non-canonical final character: same bytes, non-zero trailing bits.
        if let Some(last) = non_canonical_tail(&parts[i]) {
            variants.push(last);
        }
        for v in variants {
            let mut p = parts.clone();
            p[i] = v.clone();
            let got = policy().validate(&p.join("."), NOW, &keys, &NO_BINDING);
            assert_eq!(
                got,
                Err(ValidationError::Base64 { segment: name }),
                "{name}: {v:?}"
            );
        }
    }
}

/// Flips the lowest bit of the last character's 6-bit value when that bit is padding.
fn non_canonical_tail(seg: &str) -> Option<String> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if seg.len() % 4 == 0 {
        return None;
    }
    let last = *seg.as_bytes().last()?;
    let idx = ALPHA.iter().position(|c| *c == last)?;
    let mut s = seg[..seg.len() - 1].to_owned();
    s.push(ALPHA[idx ^ 1] as char);
    Some(s)
}

#[test]
fn rejects_duplicate_member_names_in_header_and_payload() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let signer = Signer::P256(&k);
    let good_payload = claims().to_string();
    let dup_header = r#"{"alg":"ES256","kid":"ec-1","kid":"other"}"#;
    let token = sign_raw(dup_header, &good_payload, "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "header",
            ..
        })
    ));
    let dup_payload = format!(
        r#"{{"iss":"{ISSUER}","sub":"{SUBJECT}","sub":"spiffe://example.org/admin","aud":"{AUDIENCE}","exp":{}}}"#,
        NOW + 60
    );
    let token = sign_raw(
        r#"{"alg":"ES256","kid":"ec-1"}"#,
        &dup_payload,
        "ES256",
        &signer,
    );
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
    let nested = format!(
        r#"{{"iss":"{ISSUER}","sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{},"act":{{"sub":"a","sub":"b"}}}}"#,
        NOW + 60
    );
    let token = sign_raw(r#"{"alg":"ES256","kid":"ec-1"}"#, &nested, "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
}

#[test]
fn rejects_header_or_payload_that_is_not_a_utf8_json_object() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let signer = Signer::P256(&k);
    let h = r#"{"alg":"ES256","kid":"ec-1"}"#;
    for payload in ["[1,2]", "\"x\"", "{", "{\"iss\":\"\u{fffd}\"} x"] {
        let token = sign_raw(h, payload, "ES256", &signer);
        assert!(matches!(
            policy().validate(&token, NOW, &keys, &NO_BINDING),
            Err(ValidationError::Json {
                segment: "payload",
                ..
            })
        ));
    }
    // Invalid UTF-8 bytes inside the payload.
    let input = format!(
        "{}.{}",
        b64::encode(h.as_bytes()),
        b64::encode(b"{\"iss\":\"\xff\"}")
    );
    let sig = signature_over(input.as_bytes(), "ES256", &signer);
    let token = format!("{input}.{}", b64::encode(&sig));
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "payload",
            ..
        })
    ));
    let token = sign_raw("[\"ES256\"]", &claims().to_string(), "ES256", &signer);
    assert!(matches!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::Json {
            segment: "header",
            ..
        })
    ));
}

// ---------------------------------------------------------------- claims

#[test]
fn rejects_unknown_issuer() {
    assert_eq!(
        es256_with(with_claim("iss", json!("https://evil.example"))),
        Err(ValidationError::UnknownIssuer)
    );
}

#[test]
fn rejects_missing_or_non_string_issuer() {
    assert_eq!(
        es256_with(without_claim("iss")),
        Err(ValidationError::MissingClaim("iss"))
    );
    assert!(matches!(
        es256_with(with_claim("iss", json!(["https://issuer.example"]))),
        Err(ValidationError::InvalidClaim { claim: "iss", .. })
    ));
}

#[test]
fn rejects_wrong_audience() {
    assert_eq!(
        es256_with(with_claim("aud", json!("someone-else"))),
        Err(ValidationError::AudienceMismatch)
    );
    assert_eq!(
        es256_with(with_claim("aud", json!(["a", "b"]))),
        Err(ValidationError::AudienceMismatch)
    );
    // Matching is exact: no prefix or case folding.
    assert_eq!(
        es256_with(with_claim("aud", json!("MESHPASS"))),
        Err(ValidationError::AudienceMismatch)
    );
}

#[test]
fn rejects_missing_or_empty_audience() {
    assert_eq!(
        es256_with(without_claim("aud")),
        Err(ValidationError::MissingClaim("aud"))
    );
    for aud in [
        json!([]),
        json!(""),
        json!([""]),
        json!(null),
        json!(1),
        json!([AUDIENCE, 2]),
    ] {
        assert!(
            matches!(
                es256_with(with_claim("aud", aud.clone())),
                Err(ValidationError::InvalidClaim { claim: "aud", .. })
            ),
            "{aud}"
        );
    }
}

#[test]
fn rejects_token_without_exp() {
    assert_eq!(
        es256_with(without_claim("exp")),
        Err(ValidationError::MissingClaim("exp"))
    );
}

#[test]
fn rejects_expired_token_beyond_the_leeway() {
    assert_eq!(
        es256_with(with_claim("exp", json!(NOW - 31))),
        Err(ValidationError::Expired)
    );
    assert_eq!(
        es256_with(with_claim("exp", json!(NOW - 30))),
        Err(ValidationError::Expired)
    );
    // Within the 30 s leeway.
    assert!(es256_with(with_claim("exp", json!(NOW - 29))).is_ok());
}

#[test]
fn rejects_not_yet_valid_token_beyond_the_leeway() {
    assert_eq!(
        es256_with(with_claim("nbf", json!(NOW + 31))),
        Err(ValidationError::NotYetValid)
    );
    assert!(es256_with(with_claim("nbf", json!(NOW + 30))).is_ok());
}

#[test]
fn rejects_token_issued_in_the_future_beyond_the_leeway() {
    assert_eq!(
        es256_with(with_claim("iat", json!(NOW + 31))),
        Err(ValidationError::IssuedInFuture)
    );
    assert!(es256_with(with_claim("iat", json!(NOW + 30))).is_ok());
}

#[test]
fn accepts_u64_max_exp_without_wrapping_and_caps_it_with_max_lifetime() {
    let (k, keys) = p256_setup();
    let token = sign(
        &header("ES256", "ec-1"),
        &with_claim("exp", json!(u64::MAX)),
        &Signer::P256(&k),
    );
    let mut p = policy();
    p.issuers[0].leeway_secs = u64::MAX;
    assert!(p.validate(&token, NOW, &keys, &NO_BINDING).is_ok());
    assert!(p.validate(&token, u64::MAX, &keys, &NO_BINDING).is_err());
    p.issuers[0].max_lifetime_secs = Some(3600);
    assert_eq!(
        p.validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::LifetimeTooLong)
    );
}

#[test]
fn enforces_max_lifetime_and_requires_iat_for_it() {
    let (k, keys) = p256_setup();
    let mut p = policy();
    p.issuers[0].max_lifetime_secs = Some(600);
    let ok = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    assert!(p.validate(&ok, NOW, &keys, &NO_BINDING).is_ok());
    let long = sign(
        &header("ES256", "ec-1"),
        &with_claim("exp", json!(NOW + 3600)),
        &Signer::P256(&k),
    );
    assert_eq!(
        p.validate(&long, NOW, &keys, &NO_BINDING),
        Err(ValidationError::LifetimeTooLong)
    );
    let no_iat = sign(
        &header("ES256", "ec-1"),
        &without_claim("iat"),
        &Signer::P256(&k),
    );
    assert_eq!(
        p.validate(&no_iat, NOW, &keys, &NO_BINDING),
        Err(ValidationError::MissingClaim("iat"))
    );
}

#[test]
fn rejects_numeric_dates_that_are_not_non_negative_numbers() {
    for claim in ["exp", "nbf", "iat"] {
        for bad in [
            json!("1700000300"),
            json!(true),
            json!(null),
            json!(-1),
            json!(-0.5),
            json!([NOW + 300]),
            json!({"t": NOW}),
            json!(1e30),
        ] {
            let got = es256_with(with_claim(claim, bad.clone()));
            assert!(
                matches!(got, Err(ValidationError::InvalidClaim { claim: c, .. }) if c == claim),
                "{claim} = {bad}: {got:?}"
            );
        }
    }
}

#[test]
fn accepts_fractional_numeric_dates_truncated() {
    let v = es256_with(with_claim("iat", json!((NOW - 10) as f64 + 0.75))).unwrap();
    assert_eq!(v.issued_at, Some(NOW - 10));
}

// ---------------------------------------------------------------- subjects

#[test]
fn rejects_subject_that_is_not_a_spiffe_id() {
    for (sub, err) in [
        ("web", SpiffeIdError::WrongScheme),
        ("SPIFFE://example.org/web", SpiffeIdError::WrongScheme),
        (
            "spiffe://example.org/ns/../admin",
            SpiffeIdError::DotSegment,
        ),
        ("spiffe://example.org/web/", SpiffeIdError::EmptySegment),
        (
            "spiffe://example.org:443/web",
            SpiffeIdError::ForbiddenComponent,
        ),
    ] {
        assert_eq!(
            es256_with(with_claim("sub", json!(sub))),
            Err(ValidationError::InvalidSubject(err)),
            "{sub}"
        );
    }
    assert_eq!(
        es256_with(without_claim("sub")),
        Err(ValidationError::MissingClaim("sub"))
    );
    assert!(matches!(
        es256_with(with_claim("sub", json!(7))),
        Err(ValidationError::InvalidClaim { claim: "sub", .. })
    ));
}

#[test]
fn rejects_subject_in_a_trust_domain_the_issuer_does_not_allow() {
    assert_eq!(
        es256_with(with_claim(
            "sub",
            json!("spiffe://evil.org/ns/default/sa/web")
        )),
        Err(ValidationError::TrustDomainNotAllowed)
    );
    // A trust domain that merely ends with the allowed one is a different one.
    assert_eq!(
        es256_with(with_claim(
            "sub",
            json!("spiffe://evil.example.org/ns/default/sa/web")
        )),
        Err(ValidationError::TrustDomainNotAllowed)
    );
}

#[test]
fn enforces_the_issuers_id_patterns_segment_aligned() {
    let (k, keys) = p256_setup();
    let mut p = policy();
    p.issuers[0].id_patterns = vec![
        SpiffeIdPattern::parse("spiffe://example.org/ns/default/*").unwrap(),
        SpiffeIdPattern::parse("spiffe://example.org/ns/ops/sa/deployer").unwrap(),
    ];
    let check = |sub: &str| {
        let token = sign(
            &header("ES256", "ec-1"),
            &with_claim("sub", json!(sub)),
            &Signer::P256(&k),
        );
        p.validate(&token, NOW, &keys, &NO_BINDING)
            .map(|v| v.spiffe_id)
    };
    assert!(check("spiffe://example.org/ns/default/sa/web").is_ok());
    assert!(check("spiffe://example.org/ns/ops/sa/deployer").is_ok());
    for sub in [
        "spiffe://example.org/ns/defaultx/sa/web",
        "spiffe://example.org/ns/ops/sa/deployer2",
        "spiffe://example.org/ns/ops",
        "spiffe://example.org",
    ] {
        assert_eq!(check(sub), Err(ValidationError::SubjectNotAllowed), "{sub}");
    }
}

#[test]
fn maps_kubernetes_service_account_subject_into_the_first_trust_domain() {
    let (k, keys) = p256_setup();
    let mut p = policy();
    p.issuers[0].subject_format = SubjectFormat::KubernetesServiceAccount;
    p.issuers[0]
        .trust_domains
        .insert(0, TrustDomain::parse("cluster.local").unwrap());
    let check = |sub: &str| {
        let token = sign(
            &header("ES256", "ec-1"),
            &with_claim("sub", json!(sub)),
            &Signer::P256(&k),
        );
        p.validate(&token, NOW, &keys, &NO_BINDING)
            .map(|v| v.spiffe_id)
    };
    assert_eq!(
        check("system:serviceaccount:payments:api-server")
            .unwrap()
            .as_str(),
        "spiffe://cluster.local/ns/payments/sa/api-server"
    );
    for bad in [
        "spiffe://cluster.local/ns/payments/sa/api-server",
        "system:serviceaccount:payments",
        "system:serviceaccount:Payments:api",
        "system:serviceaccount:pay/../x:api",
        "system:serviceaccount:payments:api:extra",
        "system:node:worker-1",
    ] {
        assert_eq!(
            check(bad),
            Err(ValidationError::InvalidSubject(
                SpiffeIdError::NotServiceAccount
            )),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------- binding

#[test]
fn server_binding_requires_the_subject_to_equal_the_mtls_peer() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let same = subject();
    let other = SpiffeId::parse("spiffe://example.org/ns/default/sa/other").unwrap();
    let p = policy();
    assert!(p
        .validate(&token, NOW, &keys, &Binding::Server(Some(&same)))
        .is_ok());
    assert_eq!(
        p.validate(&token, NOW, &keys, &Binding::Server(Some(&other))),
        Err(ValidationError::BindingMismatch("mTLS peer"))
    );
    assert_eq!(
        p.validate(&token, NOW, &keys, &Binding::Server(None)),
        Err(ValidationError::BindingUnavailable("mTLS peer"))
    );
}

#[test]
fn client_binding_requires_the_subject_to_equal_the_proxys_own_identity() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let same = subject();
    let other = SpiffeId::parse("spiffe://example.org/ns/default/sa/other").unwrap();
    let p = policy();
    assert!(p
        .validate(
            &token,
            NOW,
            &keys,
            &BindingMode::Client.binding(None, Some(&same))
        )
        .is_ok());
    assert!(matches!(
        p.validate(&token, NOW, &keys, &Binding::Client(Some(&other))),
        Err(ValidationError::BindingMismatch(_))
    ));
    // Fail closed: the peer identity is no substitute for the unknown own identity.
    assert!(matches!(
        p.validate(
            &token,
            NOW,
            &keys,
            &BindingMode::Client.binding(Some(&same), None)
        ),
        Err(ValidationError::BindingUnavailable(_))
    ));
}

// ---------------------------------------------------------------- order & pieces

#[test]
fn checks_the_signature_before_the_claims() {
    // An expired token with a bad signature reports the signature, not the expiry.
    let (_, keys) = p256_setup();
    let other = p256_key();
    let token = sign(
        &header("ES256", "ec-1"),
        &with_claim("exp", json!(NOW - 3600)),
        &Signer::P256(&other),
    );
    assert_eq!(
        policy().validate(&token, NOW, &keys, &NO_BINDING),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn exposes_parse_verify_and_claim_checks_as_separate_steps() {
    let (k, keys) = p256_setup();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&k));
    let p = policy();
    let jws = p.parse(&token).unwrap();
    assert_eq!(jws.header.kid.as_deref(), Some("ec-1"));
    let issuer = p.verify_signature(&jws, &keys).unwrap();
    let claims = issuer.check_claims(&jws.payload, NOW).unwrap();
    assert_eq!(issuer.subject(&claims).unwrap(), subject());
    assert_eq!(
        issuer.check_claims(&jws.payload, NOW + 3600),
        Err(ValidationError::Expired)
    );
}

#[test]
fn validation_policy_deserializes_with_defaults_and_checks_its_config() {
    let p: ValidationPolicy = serde_json::from_value(json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "trust_domains": [TD],
            "id_patterns": ["spiffe://example.org/ns/default/*"],
            "subject_format": "kubernetes_service_account"
        }]
    }))
    .unwrap();
    assert_eq!(p.max_token_bytes, 8192);
    assert_eq!(p.issuers[0].leeway_secs, 30);
    assert_eq!(
        p.issuers[0].subject_format,
        SubjectFormat::KubernetesServiceAccount
    );
    assert!(p.check().is_ok());
    // Bad values are refused by the newtypes while deserializing.
    assert!(serde_json::from_value::<ValidationPolicy>(json!({
        "issuers": [{"issuer": ISSUER, "audiences": [""], "trust_domains": [TD]}]
    }))
    .is_err());
    assert!(serde_json::from_value::<ValidationPolicy>(json!({
        "issuers": [{"issuer": ISSUER, "audiences": ["a"], "trust_domains": ["Bad"]}]
    }))
    .is_err());
    let mut dup = p.clone();
    dup.issuers.push(dup.issuers[0].clone());
    assert!(matches!(
        dup.check(),
        Err(meshpass_core::PolicyError::DuplicateIssuer { index: 1, .. })
    ));
    let mut outside = p.clone();
    outside.issuers[0].id_patterns = vec![SpiffeIdPattern::parse("spiffe://other.org/*").unwrap()];
    assert!(matches!(
        outside.check(),
        Err(meshpass_core::PolicyError::PatternOutsideTrustDomains { .. })
    ));
}

#[test]
fn every_error_has_a_distinct_snake_case_reason() {
    let errors = [
        ValidationError::TooLarge { len: 1, max: 0 },
        ValidationError::JweNotSupported,
        ValidationError::JsonSerializationNotSupported,
        ValidationError::Malformed("x"),
        ValidationError::Base64 { segment: "header" },
        ValidationError::Json {
            segment: "header",
            reason: String::new(),
        },
        ValidationError::AlgorithmNotAllowed(String::new()),
        ValidationError::ForbiddenHeader("jwk"),
        ValidationError::CriticalHeader,
        ValidationError::BadType,
        ValidationError::BadKeyId,
        ValidationError::NoKeys,
        ValidationError::UnknownKeyId {
            issuer: String::new(),
            kid: String::new(),
        },
        ValidationError::AmbiguousKey,
        ValidationError::KeyAlgorithmMismatch("ES256"),
        ValidationError::BadSignature,
        ValidationError::MissingClaim("exp"),
        ValidationError::InvalidClaim {
            claim: "exp",
            reason: "",
        },
        ValidationError::UnknownIssuer,
        ValidationError::AudienceMismatch,
        ValidationError::Expired,
        ValidationError::NotYetValid,
        ValidationError::IssuedInFuture,
        ValidationError::LifetimeTooLong,
        ValidationError::InvalidSubject(SpiffeIdError::Empty),
        ValidationError::TrustDomainNotAllowed,
        ValidationError::SubjectNotAllowed,
        ValidationError::BindingMismatch("mTLS peer"),
        ValidationError::BindingUnavailable("mTLS peer"),
    ];
    let mut seen = std::collections::HashSet::new();
    for e in &errors {
        let r = e.reason();
        assert!(
            r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{r}"
        );
        assert!(seen.insert(r), "duplicate reason {r}");
    }
}

//! Protected headers: embedded keys, key URLs, crit, typ, kid selection.

use super::*;

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
    assert!(matches!(got, ValidationError::NoKeys { .. }), "{got:?}");
    assert!(got.suggests_key_refetch());
    let empty_set = lookup(KeySet::default());
    assert_eq!(
        policy().validate(&token, NOW, &empty_set, &NO_BINDING),
        Err(ValidationError::NoKeys {
            issuer: ISSUER.to_string()
        })
    );
}

/// RFC 7797 §7 (updates RFC 7519): "JSON Web Tokens (JWTs) MUST NOT use "b64" with a
/// "false" value." A subject token whose header says b64:false (no crit) is accepted.
#[test]
fn rejects_an_unencoded_payload_header_b64_false_even_without_crit() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let mut h = header("ES256", "ec-1");
    h["b64"] = json!(false);
    let token = sign(&h, &claims(), &Signer::P256(&k));
    let got = policy().validate(&token, NOW, &keys, &NO_BINDING);
    assert_eq!(got.err(), Some(ValidationError::ForbiddenHeader("b64")));
}

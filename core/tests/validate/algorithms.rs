//! Algorithm confusion: none, HMAC with a public key, an algorithm the key does not pin.

use super::*;

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

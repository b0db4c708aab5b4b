//! Tokens the rules accept: every algorithm and key type, typ forms, audience arrays, high-s ECDSA.

use super::*;

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

//! Signatures: another key, a changed payload, psychic and out-of-range ECDSA values, wrong lengths.

use super::*;

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

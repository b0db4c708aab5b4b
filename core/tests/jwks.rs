//! JWKS parsing: which keys are kept, which are rejected and why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use meshpass_core::b64;
use meshpass_core::jwk::{JwksError, KeySet};
use meshpass_core::{Algorithm, ValidationError};
use serde_json::{json, Value};
use support::*;

fn parse(keys: Vec<Value>) -> (KeySet, Vec<meshpass_core::KeyRejection>) {
    KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

/// Parses one key and returns why it was rejected.
fn rejection(key: Value) -> String {
    let (set, rejected) = parse(vec![key]);
    assert!(set.is_empty(), "key was kept");
    assert_eq!(rejected.len(), 1);
    rejected[0].reason.clone()
}

#[test]
fn keeps_rsa_and_ec_signing_keys() {
    let (set, rejected) = parse(vec![
        rsa_jwk(rsa_key(), "rsa-1"),
        p256_jwk(&p256_key(), "p256"),
        p384_jwk(&p384_key(), "p384"),
        p521_jwk(&p521_key(), "p521"),
    ]);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(set.len(), 4);
    assert!(set.select(Some("rsa-1"), Algorithm::PS384).is_ok());
    assert!(set.select(Some("p521"), Algorithm::ES512).is_ok());
}

#[test]
fn rejects_rsa_key_shorter_than_2048_bits() {
    let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    assert_eq!(
        rejection(rsa_jwk(&small, "small")),
        "RSA key shorter than 2048 bits"
    );
}

#[test]
fn rejects_rsa_key_with_empty_or_all_zero_modulus_without_panicking() {
    // Found by the jwks_parse fuzz target: an empty `n` underflowed the bit count.
    for n in ["", "AA", "AAAA"] {
        assert_eq!(
            rejection(json!({"kty": "RSA", "kid": "z", "n": n, "e": "AQAB"})),
            "RSA key shorter than 2048 bits",
            "n = {n:?}"
        );
    }
}

#[test]
fn rejects_rsa_key_with_bad_exponent() {
    for e in [
        vec![1u8],
        vec![2],
        vec![0x01, 0x00, 0x00],
        vec![1, 0, 0, 0, 1],
        vec![],
    ] {
        let mut k = rsa_jwk(rsa_key(), "rsa");
        k["e"] = json!(b64::encode(&e));
        let reason = rejection(k);
        assert!(
            reason.contains("exponent") || reason.contains("e is"),
            "{e:?}: {reason}"
        );
    }
}

#[test]
fn rejects_rsa_key_with_even_or_oversize_modulus() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    let mut n = b64::decode(k["n"].as_str().unwrap()).unwrap();
    *n.last_mut().unwrap() &= 0xfe;
    k["n"] = json!(b64::encode(&n));
    assert_eq!(rejection(k), "RSA modulus is even");
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["n"] = json!(b64::encode(&[0xffu8; 1025]));
    assert_eq!(rejection(k), "RSA key longer than 8192 bits");
}

/// A real RSA key with the structure of the vulnerable Infineon library's keys
/// (CVE-2017-15361): both primes are `k·M + (65537^a mod M)`, with `M` the product of
/// the primes up to 167 (the library used a larger primorial; the fingerprint is taken
/// mod these primes, so a smaller `M` gives keys of the same fingerprint).
fn roca_structured_key() -> rsa::RsaPrivateKey {
    use num_bigint_dig::prime::probably_prime;
    use rand::RngCore as _;
    use rsa::BigUint;
    let m = (2u32..=167)
        .filter(|n| (2..*n).all(|d| n % d != 0))
        .fold(BigUint::from(1u32), |acc, p| acc * BigUint::from(p));
    let g = BigUint::from(65537u32);
    let mut rng = rand::thread_rng();
    let k_bits = 1025 - m.bits();
    let mut prime = || loop {
        let mut k = vec![0u8; k_bits.div_ceil(8)];
        rng.fill_bytes(&mut k);
        let k = BigUint::from_bytes_be(&k) >> (k.len() * 8 - k_bits);
        let a = BigUint::from(rng.next_u32());
        let p = k * &m + g.modpow(&a, &m);
        // p ≥ 2^1023.5, so that any two of them make a 2048-bit modulus.
        if p.bits() == 1024 && (&p * &p).bits() == 2048 && probably_prime(&p, 20) {
            return p;
        }
    };
    let (p, q) = (prime(), prime());
    rsa::RsaPrivateKey::from_p_q(p, q, g).unwrap()
}

#[test]
fn rejects_rsa_key_with_the_roca_fingerprint() {
    let weak = roca_structured_key();
    let reason = rejection(rsa_jwk(&weak, "roca"));
    assert!(
        reason.contains("ROCA") && reason.contains("CVE-2017-15361"),
        "{reason}"
    );
    // A token the weak key signed finds no key: the set kept only the good one.
    let (set, rejected) = parse(vec![rsa_jwk(&weak, "roca"), rsa_jwk(rsa_key(), "good")]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(set.len(), 1);
    let token = sign(&header("RS256", "roca"), &claims(), &Signer::Rsa(&weak));
    let err = policy()
        .validate(&token, NOW, &lookup(set), &NO_BINDING)
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_key_id");
}

#[test]
fn keeps_generated_rsa_keys_which_do_not_have_the_roca_fingerprint() {
    let (set, rejected) = parse(vec![rsa_jwk(rsa_key(), "a"), rsa_jwk(rsa_key_2(), "b")]);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(set.len(), 2);
}

#[test]
fn tolerates_one_leading_zero_octet_in_the_rsa_modulus() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    let mut n = vec![0u8];
    n.extend(b64::decode(k["n"].as_str().unwrap()).unwrap());
    k["n"] = json!(b64::encode(&n));
    let (set, rejected) = parse(vec![k]);
    assert!(rejected.is_empty());
    assert_eq!(set.len(), 1);
}

#[test]
fn rejects_ec_point_not_on_the_curve() {
    let mut k = p256_jwk(&p256_key(), "ec");
    let mut y = b64::decode(k["y"].as_str().unwrap()).unwrap();
    y[31] ^= 1;
    k["y"] = json!(b64::encode(&y));
    assert_eq!(rejection(k), "EC point is not on the curve");
}

#[test]
fn rejects_ec_identity_and_zero_coordinates() {
    let mut k = p256_jwk(&p256_key(), "ec");
    k["x"] = json!(b64::encode(&[0u8; 32]));
    k["y"] = json!(b64::encode(&[0u8; 32]));
    assert_eq!(rejection(k), "EC point is not on the curve");
}

#[test]
fn rejects_ec_coordinates_of_the_wrong_length() {
    let mut k = p256_jwk(&p256_key(), "ec");
    let x = b64::decode(k["x"].as_str().unwrap()).unwrap();
    k["x"] = json!(b64::encode(&x[1..]));
    assert_eq!(rejection(k), "x is not 32 bytes long");
    // A P-256 key labelled P-384.
    let mut k = p256_jwk(&p256_key(), "ec");
    k["crv"] = json!("P-384");
    assert_eq!(rejection(k), "x is not 48 bytes long");
}

#[test]
fn rejects_unknown_curve_and_key_type() {
    let mut k = p256_jwk(&p256_key(), "ec");
    k["crv"] = json!("secp256k1");
    assert!(rejection(k).starts_with("crv is not"));
    assert_eq!(
        rejection(
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        ),
        "kty is not RSA or EC"
    );
    assert_eq!(rejection(json!({"kid": "x"})), "kty is missing");
}

#[test]
fn rejects_keys_with_private_members() {
    let mut k = p256_jwk(&p256_key(), "ec");
    k["d"] = json!("AAAA");
    assert_eq!(rejection(k), "key has the private member \"d\"");
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["p"] = json!("AAAA");
    assert_eq!(rejection(k), "key has the private member \"p\"");
    assert_eq!(
        rejection(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})),
        "key has the private member \"k\""
    );
}

#[test]
fn rejects_keys_not_meant_for_verifying_signatures() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["use"] = json!("enc");
    assert_eq!(rejection(k), "use is not \"sig\" or \"jwt-svid\"");
    let mut k = p256_jwk(&p256_key(), "ec");
    k["key_ops"] = json!(["encrypt"]);
    assert_eq!(rejection(k), "key_ops does not contain \"verify\"");
    let mut k = p256_jwk(&p256_key(), "ec");
    k["key_ops"] = json!(["verify", "verify"]);
    assert_eq!(rejection(k), "key_ops repeats a value");
    let mut k = p256_jwk(&p256_key(), "ec");
    k["key_ops"] = json!(["verify"]);
    assert_eq!(parse(vec![k]).0.len(), 1);
}

/// SPIFFE bundles (what SPIRE's bundle endpoint serves) mark JWT-SVID signing keys
/// `use: "jwt-svid"` and X.509 authorities `use: "x509-svid"` (SPIFFE JWT-SVID §7,
/// Trust Domain and Bundle §4.2): the first verify tokens, the second never do.
#[test]
fn keeps_the_jwt_svid_keys_of_a_spiffe_bundle_and_drops_its_x509_authorities() {
    let mut jwt = p256_jwk(&p256_key(), "jwt");
    jwt.as_object_mut().unwrap().remove("alg");
    jwt["use"] = json!("jwt-svid");
    let mut x509 = p256_jwk(&p256_key(), "x509");
    x509["use"] = json!("x509-svid");
    let (set, rejected) = parse(vec![jwt, x509]);
    assert_eq!(set.len(), 1, "{rejected:?}");
    assert!(set.select(Some("jwt"), Algorithm::ES256).is_ok());
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, "use is not \"sig\" or \"jwt-svid\"");
}

#[test]
fn rejects_keys_whose_alg_is_not_accepted_or_does_not_fit() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["alg"] = json!("RSA-OAEP");
    assert_eq!(rejection(k), "alg is not an accepted signature algorithm");
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["alg"] = json!("HS256");
    assert_eq!(rejection(k), "alg is not an accepted signature algorithm");
    let mut k = p256_jwk(&p256_key(), "ec");
    k["alg"] = json!("ES384");
    assert_eq!(rejection(k), "alg ES384 does not fit the key type or curve");
}

#[test]
fn rejects_every_key_sharing_a_duplicate_kid() {
    let (set, rejected) = parse(vec![
        p256_jwk(&p256_key(), "same"),
        p256_jwk(&p256_key(), "other"),
        rsa_jwk(rsa_key(), "same"),
    ]);
    assert_eq!(set.len(), 1);
    assert_eq!(set.keys()[0].kid.as_deref(), Some("other"));
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| r.reason == "duplicate kid"));
    assert_eq!(
        rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 2]
    );
}

#[test]
fn a_rejected_key_does_not_count_as_a_duplicate_kid() {
    let mut enc = rsa_jwk(rsa_key(), "k1");
    enc["use"] = json!("enc");
    let (set, rejected) = parse(vec![enc, p256_jwk(&p256_key(), "k1")]);
    assert_eq!(set.len(), 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, "use is not \"sig\" or \"jwt-svid\"");
}

#[test]
fn rejects_keys_with_an_invalid_kid_or_non_base64url_members() {
    let mut k = p256_jwk(&p256_key(), "ec");
    k["kid"] = json!("../../etc/passwd");
    assert_eq!(rejection(k), "kid is not a valid key id");
    let mut k = p256_jwk(&p256_key(), "ec");
    let x = k["x"].as_str().unwrap().to_owned();
    k["x"] = json!(format!("{x}="));
    assert_eq!(rejection(k), "x is not strict base64url");
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["e"] = json!(65537);
    assert_eq!(rejection(k), "e is not a string");
}

#[test]
fn reports_the_index_and_readable_kid_of_each_rejected_key() {
    let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let (set, rejected) = parse(vec![
        p256_jwk(&p256_key(), "good"),
        json!("not an object"),
        rsa_jwk(&small, "weak"),
    ]);
    assert_eq!(set.len(), 1);
    assert_eq!(rejected[0].index, 1);
    assert_eq!(rejected[0].kid, None);
    assert_eq!(rejected[1].index, 2);
    assert_eq!(rejected[1].kid.as_deref(), Some("weak"));
}

#[test]
fn refuses_documents_that_are_not_a_jwks() {
    assert_eq!(KeySet::parse(b"{}").unwrap_err(), JwksError::NoKeysArray);
    assert_eq!(
        KeySet::parse(br#"{"keys":{}}"#).unwrap_err(),
        JwksError::NoKeysArray
    );
    assert!(matches!(KeySet::parse(b"[]"), Err(JwksError::Json(_))));
    assert!(matches!(
        KeySet::parse(br#"{"keys":[],"keys":[]}"#),
        Err(JwksError::Json(_))
    ));
    let big = vec![b' '; meshpass_core::jwk::DEFAULT_MAX_JWKS_BYTES + 1];
    assert!(matches!(KeySet::parse(&big), Err(JwksError::TooLarge(_))));
    assert!(matches!(
        KeySet::parse_with_limit(br#"{"keys":[]}"#, 4),
        Err(JwksError::TooLarge(4))
    ));
}

#[test]
fn rejects_keys_beyond_the_key_count_cap() {
    let k = p256_jwk(&p256_key(), "x");
    let mut keys = Vec::new();
    for i in 0..(meshpass_core::jwk::MAX_KEYS + 2) {
        let mut k = k.clone();
        k["kid"] = json!(format!("k{i}"));
        keys.push(k);
    }
    let (set, rejected) = parse(keys);
    assert_eq!(set.len(), meshpass_core::jwk::MAX_KEYS);
    assert_eq!(rejected.len(), 2);
}

#[test]
fn selects_by_kid_and_checks_the_algorithm_fits() {
    let (set, _) = parse(vec![rsa_jwk(rsa_key(), "rsa"), p256_jwk(&p256_key(), "ec")]);
    assert!(set.select(Some("ec"), Algorithm::ES256).is_ok());
    assert_eq!(
        set.select(Some("ec"), Algorithm::RS256).unwrap_err(),
        ValidationError::KeyAlgorithmMismatch("RS256")
    );
    assert!(matches!(
        set.select(Some("nope"), Algorithm::ES256),
        Err(ValidationError::UnknownKeyId { .. })
    ));
    assert_eq!(
        set.select(Some("bad kid"), Algorithm::ES256).unwrap_err(),
        ValidationError::BadKeyId
    );
    assert!(set.select(None, Algorithm::RS512).is_ok());
    assert_eq!(
        set.select(None, Algorithm::ES384).unwrap_err(),
        ValidationError::AmbiguousKey
    );
}

/// README: "one leading zero octet in `n` is tolerated, RFC 7518 §6.3.1.1"; RFC 7518 §2
/// Base64urlUInt: "The octet sequence MUST utilize the minimum number of octets needed to
/// represent the value." Two leading zero octets must drop the key.
#[test]
fn drops_an_rsa_key_whose_modulus_has_more_than_one_leading_zero_octet() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    let mut n = vec![0u8, 0u8];
    n.extend(b64::decode(k["n"].as_str().unwrap()).unwrap());
    k["n"] = json!(b64::encode(&n));
    let (set, rejected) = parse(vec![k]);
    assert_eq!(
        set.len(),
        0,
        "key with 2 leading zero octets in n kept: {rejected:?}"
    );
}

/// RFC 7518 §2 Base64urlUInt (minimum octets) for `e`: "AAEAAQ" is not 65537's encoding.
#[test]
fn drops_an_rsa_key_whose_exponent_has_a_leading_zero_octet() {
    let mut k = rsa_jwk(rsa_key(), "rsa");
    k["e"] = json!(b64::encode(&[0u8, 1, 0, 1]));
    let (set, rejected) = parse(vec![k]);
    assert_eq!(
        set.len(),
        0,
        "key with a zero-prefixed e kept: {rejected:?}"
    );
}

#[test]
fn a_set_keeps_another_only_when_every_key_is_there_with_its_kid_alg_and_material() {
    let (a, b) = (p256_key(), p384_key());
    let rsa = rsa_key();
    let old = parse(vec![
        p256_jwk(&a, "a"),
        rsa_jwk(rsa, "r"),
        p384_jwk(&b, "b"),
    ])
    .0;
    // Reordered, with a key added: kept.
    let grown = parse(vec![
        p384_jwk(&b, "b"),
        p521_jwk(&p521_key(), "new"),
        rsa_jwk(rsa, "r"),
        p256_jwk(&a, "a"),
    ])
    .0;
    assert!(grown.keeps_every_key_of(&old));
    assert!(!old.keeps_every_key_of(&grown), "the added key is missing");
    // A key taken out, a kid renamed, material replaced under a kid, an alg pinned.
    let removed = parse(vec![p256_jwk(&a, "a"), rsa_jwk(rsa, "r")]).0;
    let renamed = parse(vec![
        p256_jwk(&a, "a2"),
        rsa_jwk(rsa, "r"),
        p384_jwk(&b, "b"),
    ])
    .0;
    let replaced = parse(vec![
        p256_jwk(&p256_key(), "a"),
        rsa_jwk(rsa, "r"),
        p384_jwk(&b, "b"),
    ])
    .0;
    let rsa_replaced = parse(vec![
        p256_jwk(&a, "a"),
        rsa_jwk(rsa_key_2(), "r"),
        p384_jwk(&b, "b"),
    ])
    .0;
    let mut pinned_a = p256_jwk(&a, "a");
    pinned_a["alg"] = json!("ES256");
    let pinned = parse(vec![pinned_a, rsa_jwk(rsa, "r"), p384_jwk(&b, "b")]).0;
    for (name, new) in [
        ("removed", removed),
        ("renamed", renamed),
        ("replaced", replaced),
        ("pinned", pinned),
        ("rsa replaced", rsa_replaced),
    ] {
        assert!(!new.keeps_every_key_of(&old), "{name}");
    }
    assert!(old.keeps_every_key_of(&old));
}

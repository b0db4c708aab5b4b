//! Edges of core's subject-token rules (DESIGN.md "Subject tokens" items 1-4,
//! core/README.md `validate` steps): each asserts what the documents promise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use meshpass_core::{
    Audience, IssuerPolicy, KeySet, SpiffeId, SpiffeIdPattern, TrustDomain, ValidationError,
    ValidationPolicy,
};
use serde_json::{json, Value};
use support::*;

fn es256_set(key: &p256::ecdsa::SigningKey, kid: &str) -> HashMap<String, KeySet> {
    lookup(key_set(&[p256_jwk(key, kid)]))
}

fn validate(token: &str, keys: &HashMap<String, KeySet>) -> Result<SpiffeId, ValidationError> {
    policy()
        .validate(token, NOW, keys, &NO_BINDING)
        .map(|v| v.spiffe_id)
}

#[test]
fn a_header_member_name_repeated_through_a_json_escape_is_refused() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    let header = r#"{"alg":"ES256","kid":"k1","\u0061lg":"ES256"}"#;
    let t = sign_raw(header, &claims().to_string(), "ES256", &Signer::P256(&k));
    assert!(matches!(
        validate(&t, &keys),
        Err(ValidationError::Json { .. })
    ));
}

#[test]
fn a_payload_sub_repeated_through_a_json_escape_is_refused() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    let payload = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"sub":"{SUBJECT}","\u0073ub":"spiffe://example.org/ns/admin/sa/root"}}"#,
        NOW + 300
    );
    let t = sign_raw(
        &header("ES256", "k1").to_string(),
        &payload,
        "ES256",
        &Signer::P256(&k),
    );
    assert!(matches!(
        validate(&t, &keys),
        Err(ValidationError::Json { .. })
    ));
}

#[test]
fn an_empty_crit_array_and_a_crit_naming_a_known_member_are_refused() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    for crit in [json!([]), json!(["exp"]), json!(null)] {
        let mut h = header("ES256", "k1");
        h["crit"] = crit.clone();
        let t = sign(&h, &claims(), &Signer::P256(&k));
        assert_eq!(
            validate(&t, &keys),
            Err(ValidationError::CriticalHeader),
            "{crit}"
        );
    }
}

#[test]
fn a_typ_other_than_jwt_or_jose_is_refused() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    for typ in ["at+jwt", "JWS", "", "application/jwt"] {
        let mut h = header("ES256", "k1");
        h["typ"] = json!(typ);
        let t = sign(&h, &claims(), &Signer::P256(&k));
        assert_eq!(validate(&t, &keys), Err(ValidationError::BadType), "{typ}");
    }
}

#[test]
fn nbf_and_iat_past_the_leeway_in_the_future_are_refused_and_exp_at_the_leeway_edge_is_expired() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    let mut c = claims();
    c["nbf"] = json!(NOW + 31);
    let t = sign(&header("ES256", "k1"), &c, &Signer::P256(&k));
    assert_eq!(validate(&t, &keys), Err(ValidationError::NotYetValid));
    let mut c = claims();
    c["iat"] = json!(NOW + 31);
    c["nbf"] = json!(NOW - 10);
    let t = sign(&header("ES256", "k1"), &c, &Signer::P256(&k));
    assert_eq!(validate(&t, &keys), Err(ValidationError::IssuedInFuture));
    let mut c = claims();
    c["exp"] = json!(NOW - 30);
    let t = sign(&header("ES256", "k1"), &c, &Signer::P256(&k));
    assert_eq!(validate(&t, &keys), Err(ValidationError::Expired));
    // Strings are not NumericDates.
    let mut c = claims();
    c["exp"] = json!((NOW + 300).to_string());
    let t = sign(&header("ES256", "k1"), &c, &Signer::P256(&k));
    assert!(matches!(
        validate(&t, &keys),
        Err(ValidationError::InvalidClaim { claim: "exp", .. })
    ));
}

#[test]
fn a_kid_naming_a_key_of_another_issuer_finds_no_key() {
    let a = p256_key();
    let b = p256_key();
    let other = "https://other.example";
    let mut p = policy();
    p.issuers.push(IssuerPolicy::new(
        other,
        vec![Audience::parse(AUDIENCE).unwrap()],
        vec![TrustDomain::parse(TD).unwrap()],
    ));
    let mut keys = HashMap::new();
    keys.insert(ISSUER.to_string(), key_set(&[p256_jwk(&a, "a-1")]));
    keys.insert(other.to_string(), key_set(&[p256_jwk(&b, "b-1")]));
    // Issuer `other`'s token signed with ISSUER's key, naming ISSUER's kid.
    let mut c = claims();
    c["iss"] = json!(other);
    let t = sign(&header("ES256", "a-1"), &c, &Signer::P256(&a));
    assert!(matches!(
        p.validate(&t, NOW, &keys, &NO_BINDING),
        Err(ValidationError::UnknownKeyId { .. })
    ));
    // Without a kid, the other issuer's one key is chosen and the signature fails.
    let h = json!({"alg": "ES256", "typ": "JWT"});
    let t = sign(&h, &c, &Signer::P256(&a));
    assert_eq!(
        p.validate(&t, NOW, &keys, &NO_BINDING).map(|_| ()),
        Err(ValidationError::BadSignature)
    );
}

#[test]
fn jwks_members_that_are_not_sound_public_signing_keys_are_dropped() {
    let k = p256_key();
    let good = p256_jwk(&k, "ok");
    let mut enc = p256_jwk(&k, "enc");
    enc["use"] = json!("enc");
    let mut private = p256_jwk(&k, "priv");
    private["d"] = json!("AAAA");
    let mut wrong_alg = p256_jwk(&k, "alg");
    wrong_alg["alg"] = json!("ES384");
    let mut hs = p256_jwk(&k, "hs");
    hs["alg"] = json!("HS256");
    let mut ops = p256_jwk(&k, "ops");
    ops["key_ops"] = json!(["sign"]);
    let oct = json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"});
    let doc = json!({"keys": [good, enc, private, wrong_alg, hs, ops, oct]});
    let (set, rejected) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1, "{rejected:?}");
    assert_eq!(rejected.len(), 6, "{rejected:?}");
    // A key whose kid appears twice (even with different keys) is dropped altogether.
    let doc = json!({"keys": [p256_jwk(&k, "dup"), p256_jwk(&p256_key(), "dup")]});
    let (set, rejected) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert!(set.is_empty());
    assert_eq!(rejected.len(), 2);
}

#[test]
fn spiffe_ids_with_odd_characters_or_case_are_not_ids() {
    for bad in [
        "SPIFFE://example.org/ns/a",
        "spiffe://Example.org/ns/a",
        "spiffe://example.org/ns/a%2Fb",
        "spiffe://example.org/ns/./a",
        "spiffe://example.org/ns/../a",
        "spiffe://example.org//a",
        "spiffe://example.org/a/",
        "spiffe://example.org:443/a",
        "spiffe://user@example.org/a",
        "spiffe://example.org/a?b",
        "spiffe://example.org/a#b",
        "spiffe://example.org/a b",
        "spiffe://example.org/a\u{0}",
        "spiffe://example.org/\u{e9}",
        "spiffe:///a",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad:?}");
    }
    // A prefix pattern never matches a longer segment or another trust domain.
    let p = SpiffeIdPattern::parse("spiffe://example.org/ns/a/*").unwrap();
    assert!(!p.matches(&SpiffeId::parse("spiffe://example.org/ns/ab").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://example.org.evil/ns/a").unwrap()));
    assert!(p.matches(&SpiffeId::parse("spiffe://example.org/ns/a/sa/x").unwrap()));
}

#[test]
fn a_kubernetes_subject_with_odd_names_maps_to_no_spiffe_id() {
    let td = TrustDomain::parse(TD).unwrap();
    for bad in [
        "system:serviceaccount:Shop:web",
        "system:serviceaccount:shop:web:extra",
        "system:serviceaccount:shop:",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:we/b",
        "system:serviceaccount:shop:..",
        "system:serviceaccount:shop:-web",
        "System:serviceaccount:shop:web",
        "system:serviceaccounts:shop",
    ] {
        assert!(
            SpiffeId::from_kubernetes_subject(bad, &td).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn an_aud_array_needs_one_configured_audience_exactly_not_a_prefix_or_case_variant() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    for aud in [
        json!(["Meshpass"]),
        json!(["meshpass "]),
        json!(["meshpass-other", "other"]),
        json!([]),
        json!(["meshpass", 5]),
        json!(["meshpass", ""]),
        json!({"0": "meshpass"}),
    ] {
        let mut c = claims();
        c["aud"] = aud.clone();
        let t = sign(&header("ES256", "k1"), &c, &Signer::P256(&k));
        assert!(validate(&t, &keys).is_err(), "{aud}");
    }
}

#[test]
fn hs256_signed_with_the_public_key_bytes_is_refused() {
    let k = p256_key();
    let keys = es256_set(&k, "k1");
    let jwk: Value = p256_jwk(&k, "k1");
    let secret = jwk.to_string();
    let t = sign(
        &header("HS256", "k1"),
        &claims(),
        &Signer::Hs256(secret.as_bytes()),
    );
    assert!(matches!(
        validate(&t, &keys),
        Err(ValidationError::AlgorithmNotAllowed(_))
    ));
    let _ = ValidationPolicy::new(vec![]);
}

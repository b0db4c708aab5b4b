//! The order of the checks, the separate steps, the policy config, the error reasons.

use super::*;

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
        ValidationError::NoKeys {
            issuer: String::new(),
        },
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

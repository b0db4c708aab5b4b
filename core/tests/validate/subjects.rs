//! Subjects: SPIFFE IDs, trust domains, patterns, Kubernetes service-account names.

use super::*;

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
    ] {
        assert_eq!(check(sub), Err(ValidationError::SubjectNotAllowed), "{sub}");
    }
    // The trust domain's own ID is no workload at all (before any pattern).
    assert_eq!(
        check("spiffe://example.org"),
        Err(ValidationError::InvalidSubject(
            meshpass_core::SpiffeIdError::NotAWorkload
        ))
    );
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

/// README: "SA a DNS-1123 subdomain"; Kubernetes (IsDNS1123Subdomain): at most 253
/// characters matching `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`,
/// no per-label cap. A service account named with a 64-character label exists in
/// Kubernetes; its token must map.
#[test]
fn accepts_a_service_account_name_with_a_part_longer_than_a_dns_label() {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    let mut p = policy();
    p.issuers[0].subject_format = SubjectFormat::KubernetesServiceAccount;
    p.issuers[0]
        .trust_domains
        .insert(0, TrustDomain::parse("cluster.local").unwrap());
    let sa = "a".repeat(64);
    let mut c = claims();
    c["sub"] = json!(format!("system:serviceaccount:payments:{sa}"));
    let token = sign(&header("ES256", "ec-1"), &c, &Signer::P256(&k));
    let got = p
        .validate(&token, NOW, &keys, &NO_BINDING)
        .map(|v| v.spiffe_id.to_string());
    assert_eq!(
        got,
        Ok(format!("spiffe://cluster.local/ns/payments/sa/{sa}"))
    );
}

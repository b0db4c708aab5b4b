//! Claims: issuer, audience, the numeric dates and their leeway, the maximum lifetime.

use super::*;

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

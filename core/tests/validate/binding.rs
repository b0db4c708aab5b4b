//! Binding the subject to the connection's mTLS identity.

use super::*;

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

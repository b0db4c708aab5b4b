//! The issuer policy and binding mode as configuration: the one builder the filter and
//! the service share (`ValidationPolicy` deserialization + `check()`, `BindingMode`).
//! Each mistake is refused with a message naming the field and the value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshpass_core::{BindingMode, PolicyError, SpiffeId, ValidationPolicy};
use serde_json::json;

fn policy(v: serde_json::Value) -> Result<ValidationPolicy, String> {
    serde_json::from_value::<ValidationPolicy>(v).map_err(|e| e.to_string())
}

fn issuer() -> serde_json::Value {
    json!({
        "issuer": "https://issuer.example",
        "audiences": ["meshpass"],
        "trust_domains": ["example.org"],
    })
}

#[test]
fn deserializes_an_issuer_policy_with_its_defaults() {
    let p = policy(json!({ "issuers": [issuer()] })).unwrap();
    assert_eq!(p.check(), Ok(()));
    assert_eq!(p.max_token_bytes, 8192);
    let i = &p.issuers[0];
    assert_eq!(i.leeway_secs, 30);
    assert_eq!(i.max_lifetime_secs, None);
    assert!(i.id_patterns.is_empty());
}

#[test]
fn refuses_unknown_fields_naming_them() {
    let mut i = issuer();
    i["leeway"] = json!(5);
    let err = policy(json!({ "issuers": [i] })).unwrap_err();
    assert!(err.contains("unknown field `leeway`"), "{err}");
    let err = policy(json!({ "issuers": [issuer()], "max_bytes": 1 })).unwrap_err();
    assert!(err.contains("unknown field `max_bytes`"), "{err}");
}

#[test]
fn refuses_bad_trust_domains_patterns_and_audiences_quoting_the_value() {
    let mut i = issuer();
    i["trust_domains"] = json!(["Example.org"]);
    let err = policy(json!({ "issuers": [i] })).unwrap_err();
    assert!(
        err.contains(r#"invalid trust domain "Example.org""#),
        "{err}"
    );
    let mut i = issuer();
    i["id_patterns"] = json!(["spiffe://example.org/ns/*/sa/web"]);
    let err = policy(json!({ "issuers": [i] })).unwrap_err();
    assert!(
        err.contains(r#"invalid SPIFFE ID pattern "spiffe://example.org/ns/*/sa/web""#),
        "{err}"
    );
    let mut i = issuer();
    i["audiences"] = json!([""]);
    assert!(policy(json!({ "issuers": [i] })).is_err());
}

#[test]
fn check_names_the_field_of_each_configuration_mistake() {
    let mut outside = issuer();
    outside["id_patterns"] = json!(["spiffe://other.org/ns/a/*"]);
    let p = policy(json!({ "issuers": [outside] })).unwrap();
    let err = p.check().unwrap_err();
    assert!(matches!(
        err,
        PolicyError::PatternOutsideTrustDomains { index: 0, .. }
    ));
    assert_eq!(
        err.to_string(),
        "issuers[0].id_patterns: spiffe://other.org/ns/a/* is outside the issuer's trust_domains"
    );
    let p = policy(json!({ "issuers": [issuer(), issuer()] })).unwrap();
    assert_eq!(
        p.check().unwrap_err().to_string(),
        r#"issuers[1].issuer: "https://issuer.example" is configured twice"#
    );
    let p = policy(json!({ "issuers": [issuer()], "max_token_bytes": 0 })).unwrap();
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "max_token_bytes: must be greater than zero"
    );
    let mut empty = issuer();
    empty["trust_domains"] = json!([]);
    let p = policy(json!({ "issuers": [empty] })).unwrap();
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "issuers[0].trust_domains: must not be empty"
    );
}

#[test]
fn binding_mode_from_configuration_builds_the_per_request_binding() {
    let peer = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
    let own = SpiffeId::parse("spiffe://example.org/ns/a/sa/c").unwrap();
    let mode: BindingMode = serde_json::from_value(json!("CLIENT")).unwrap();
    assert_eq!(mode.binding(Some(&peer), Some(&own)).check(&own), Ok(()));
    assert!(mode.binding(Some(&peer), Some(&own)).check(&peer).is_err());
    let err = serde_json::from_value::<BindingMode>(json!("mtls")).unwrap_err();
    assert!(err.to_string().contains("server, client or none"), "{err}");
}

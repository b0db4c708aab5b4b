//! Two rules core once lacked: a JWT-SVID's `sub` names a workload (a bare trust-domain
//! ID was accepted as one), and a JWK's `use` and `key_ops` agree (RFC 7517 §4.3: a
//! `sig` key also claiming `encrypt` was kept).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use meshpass_core::{KeySet, ValidationError};
use serde_json::{json, Value};
use support::*;

fn es256(
    header: &Value,
    payload: &Value,
) -> Result<meshpass_core::VerifiedSubject, ValidationError> {
    let k = p256_key();
    let keys: HashMap<String, KeySet> = lookup(key_set(&[p256_jwk(&k, "k1")]));
    let token = sign(header, payload, &Signer::P256(&k));
    policy().validate(&token, NOW, &keys, &NO_BINDING)
}

/// JWT-SVID §3: `sub` is the SPIFFE ID of the *workload*; `spiffe://TD` (no path) names
/// the trust domain itself, never a workload (X509-SVID leaf IDs need a non-root path).
#[test]
fn a_jwt_svid_whose_sub_is_the_bare_trust_domain_id_is_refused() {
    let mut c = claims();
    c["sub"] = json!("spiffe://example.org");
    let r = es256(&header("ES256", "k1"), &c);
    assert!(
        matches!(r, Err(ValidationError::InvalidSubject(_))),
        "a token whose sub is the trust domain's own ID (no workload path) was accepted as a workload subject: {r:?}"
    );
}

/// RFC 7517 §4.3: when `use` and `key_ops` are both present they MUST be consistent; a
/// `sig` key that also claims `encrypt` is not a sound signing-only key.
#[test]
fn a_jwk_whose_use_sig_contradicts_key_ops_encrypt_is_dropped() {
    let k = p256_key();
    let mut jwk = p256_jwk(&k, "k1");
    jwk["use"] = json!("sig");
    jwk["key_ops"] = json!(["verify", "encrypt"]);
    let doc = json!({ "keys": [jwk] });
    let (set, rejected) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert!(
        set.is_empty() && rejected.len() == 1,
        "a JWK with use=sig and key_ops containing encrypt (inconsistent, RFC 7517 §4.3) was kept as a signing key; rejected = {rejected:?}"
    );
}

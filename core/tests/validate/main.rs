//! Every subject-token rule, through the one entry point `ValidationPolicy::validate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

use meshpass_core::b64;
use meshpass_core::{
    Binding, BindingMode, KeySet, SpiffeId, SpiffeIdError, SpiffeIdPattern, SubjectFormat,
    TrustDomain, ValidationError, ValidationPolicy,
};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use support::*;

fn p256_setup() -> (
    p256::ecdsa::SigningKey,
    std::collections::HashMap<String, KeySet>,
) {
    let k = p256_key();
    let keys = lookup(key_set(&[p256_jwk(&k, "ec-1")]));
    (k, keys)
}

fn validate_es256(
    header: &Value,
    payload: &Value,
) -> Result<meshpass_core::VerifiedSubject, ValidationError> {
    let (k, keys) = p256_setup();
    let token = sign(header, payload, &Signer::P256(&k));
    policy().validate(&token, NOW, &keys, &NO_BINDING)
}

fn es256_with(payload: Value) -> Result<meshpass_core::VerifiedSubject, ValidationError> {
    validate_es256(&header("ES256", "ec-1"), &payload)
}

fn with_claim(name: &str, value: Value) -> Value {
    let mut c = claims();
    c[name] = value;
    c
}

fn without_claim(name: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(name);
    c
}

mod accepted_tokens;
mod algorithms;
mod binding;
mod claims;
mod headers;
mod order;
mod signatures;
mod structure;
mod subjects;

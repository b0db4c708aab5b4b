//! Cost of subject-token validation, whole and by step, for ES256 and RS256 tokens.
//! `validate` is the full entry point (on the active backend); `parse`,
//! `verify_signature` and `check_claims` time the steps apart (the signature dominates;
//! the filter caches verdicts). `validate/<backend>` runs the same steps with the
//! signature checked on each compiled-in backend, in the same run: build with
//! `--features native-crypto` (as `make bench` does) to get both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshpass_core::{Binding, KeyLookup as _, KeySet, SignatureBackend};
use support::*;

struct Case {
    name: &'static str,
    token: String,
    keys: std::collections::HashMap<String, KeySet>,
}

fn cases() -> Vec<Case> {
    let ec = p256_key();
    let es256 = Case {
        name: "ES256",
        token: sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&ec)),
        keys: lookup(key_set(&[p256_jwk(&ec, "ec-1")])),
    };
    let rs256 = Case {
        name: "RS256",
        token: sign(
            &header("RS256", "rsa-1"),
            &claims(),
            &Signer::Rsa(rsa_key()),
        ),
        keys: lookup(key_set(&[rsa_jwk(rsa_key(), "rsa-1")])),
    };
    vec![es256, rs256]
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let peer = subject();
    let binding = Binding::Server(Some(&peer));
    for case in cases() {
        // Sanity: the benchmarked token is valid.
        policy
            .validate(&case.token, NOW, &case.keys, &binding)
            .unwrap();
        let mut g = c.benchmark_group(case.name);
        g.bench_function("validate", |b| {
            b.iter(|| {
                policy
                    .validate(black_box(&case.token), NOW, &case.keys, &binding)
                    .unwrap()
            })
        });
        g.bench_function("parse", |b| {
            b.iter(|| policy.parse(black_box(&case.token)).unwrap())
        });
        for backend in [SignatureBackend::RustCrypto, SignatureBackend::Native] {
            if !backend.is_available() {
                continue;
            }
            // `validate`'s steps with the signature on `backend`.
            g.bench_function(format!("validate/{}", backend.name()), |b| {
                b.iter(|| {
                    let jws = policy.parse(black_box(&case.token)).unwrap();
                    let iss = jws.payload["iss"].as_str().unwrap();
                    let issuer = policy.issuer(iss).unwrap();
                    let key = case
                        .keys
                        .keys_for(&issuer.issuer)
                        .unwrap()
                        .select(jws.header.kid.as_deref(), jws.header.alg)
                        .unwrap();
                    jws.verify_with(key, backend).unwrap();
                    let claims = issuer.check_claims(&jws.payload, NOW).unwrap();
                    let id = issuer.subject(&claims).unwrap();
                    binding.check(&id).unwrap();
                    id
                })
            });
        }
        let jws = policy.parse(&case.token).unwrap();
        g.bench_function("verify_signature", |b| {
            b.iter(|| {
                policy
                    .verify_signature(black_box(&jws), &case.keys)
                    .unwrap()
            })
        });
        let issuer = policy.verify_signature(&jws, &case.keys).unwrap();
        g.bench_function("check_claims_subject_binding", |b| {
            b.iter(|| {
                let claims = issuer.check_claims(black_box(&jws.payload), NOW).unwrap();
                let id = issuer.subject(&claims).unwrap();
                binding.check(&id).unwrap();
                id
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

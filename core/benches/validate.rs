//! Cost of subject-token validation, whole and by step, for ES256 and RS256 tokens.
//! `validate` is the full entry point (on the active backend); `parse`,
//! `verify_signature` and `check_claims` time the steps apart (the signature dominates;
//! the filter caches verdicts). `validate/<backend>` runs the same steps with the
//! signature checked on each compiled-in backend, in the same run: build with
//! `--features native-crypto` (as `make bench` does) to get both. `ES256 signature`
//! sets core's comb tables beside ring's verifier (parse and verify against verify only).
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

/// ES256 on core's comb tables against ring's verifier, over the same token and key in
/// the same run (ring is what the comb replaced on the host).
fn es256_against_ring(c: &mut Criterion) {
    let ec = p256_key();
    let token = sign(&header("ES256", "ec-1"), &claims(), &Signer::P256(&ec));
    let jwk = meshpass_core::Jwk::from_json(p256_jwk(&ec, "ec-1").as_object().unwrap()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = meshpass_core::b64::decode(sig).unwrap();
    let point = ec.verifying_key().to_encoded_point(false);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes().to_vec(),
    );
    ring_key.verify(input.as_bytes(), &sig).unwrap();
    let mut g = c.benchmark_group("ES256 signature");
    g.bench_function("comb", |b| {
        b.iter(|| {
            meshpass_core::verify_compact_jws(black_box(&token), &jwk, 16 * 1024).unwrap();
        })
    });
    g.bench_function("ring", |b| {
        b.iter(|| {
            ring_key
                .verify(black_box(input.as_bytes()), black_box(&sig))
                .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench, es256_against_ring);
criterion_main!(benches);

//! The signing path (TransitSigner on a real OpenBao): every signature the
//! signer returns must verify against the JWKS it publishes under the `kid` it was
//! asked for, and a version signs only once its publish lead has passed
//! (docs/DESIGN.md "Participant tokens"; README "Vault" / Behaviour: Signing, Rotation).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use std::sync::Arc;
use std::time::Duration;

use meshpass_exchange::signer::{SignError, Signer};
use meshpass_exchange::vault::{RsaAlg, TransitSigner, VaultConfig};
use vault_common::*;

/// Deletes transit key `name` and creates it again with the same name and type: the
/// same versions (v1) now hold other key material (an operator mistake, a dev server
/// re-provisioned, a restore).
fn recreate_key(bao: &meshpass_testkit::OpenBao, name: &str, key_type: &str) {
    bao.api_ok(
        "POST",
        &format!("transit/keys/{name}/config"),
        Some(serde_json::json!({"deletion_allowed": true})),
    );
    bao.api_ok("DELETE", &format!("transit/keys/{name}"), None);
    bao.create_transit_key(name, key_type);
}

/// DESIGN.md: "kid = the transit key name and the version that actually signed" and the
/// JWKS publishes every live version: a token the service hands out must verify against
/// the JWKS it serves. README (Rotation): a version "is never used before its lead has
/// passed". When Vault's key material under a version changes (key re-created), the
/// signer keeps sending `key_version = 1` to Vault, which signs with the *new* material,
/// while the JWKS still publishes the old public key until the next key refresh: the
/// signature does not verify against the published key.
#[tokio::test]
async fn a_transit_key_recreated_under_its_name_never_yields_a_signature_the_published_jwks_cannot_verify(
) {
    let bao = bao_with_key("k", "ecdsa-p256");
    let cfg = VaultConfig {
        // The documented default is 30 s; a long interval makes the window certain.
        key_refresh_interval: Duration::from_secs(3600),
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    let first = sign_and_verify(&signer, "{\"n\":1}").await;
    assert_eq!(first.kid, "k:v1");

    recreate_key(&bao, "k", "ecdsa-p256");

    // The service now mints as it always does: current key, then sign.
    let key = signer.current_key().unwrap();
    let input = signing_input(&key, "{\"n\":2}");
    match signer.sign(&key, input.as_bytes()).await {
        // Refusing (503) until the new material is published is the safe side.
        Err(SignError::Unavailable(_) | SignError::NotReady) => {}
        Err(e) => panic!("unexpected error kind (should be 503-able): {e:?}"),
        Ok(sig) => {
            let published = jwk_of(&signer, &key.kid);
            verify_with_jwk(&published, input.as_bytes(), &sig).unwrap_or_else(|e| {
                panic!(
                    "signer returned a signature under kid {} that does not verify with the \
                     JWK the service publishes for that kid ({e}): every verifier refuses \
                     this token",
                    key.kid
                )
            });
        }
    }
    // The refusal woke the key read (the hour-long refresh would not come): the new
    // material is published and, after its lead, signs tokens verifiers accept.
    let recovered = eventually(Duration::from_secs(60), || async {
        let Ok(k) = signer.current_key() else {
            return false;
        };
        let input = signing_input(&k, "{\"n\":3}");
        match signer.sign(&k, input.as_bytes()).await {
            Ok(sig) => verify_with_jwk(&jwk_of(&signer, &k.kid), input.as_bytes(), &sig).is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(
        recovered,
        "the signer never signed again after the key was re-created"
    );
}

/// README (Rotation): "A version is never used before its lead has passed, not even
/// when it is the only one"; DESIGN.md: "never a fallback to an unpublished one: 503
/// instead". The key is chosen (`current_key`), then a key refresh lands that finds
/// other material under the same version (so it is re-published with a fresh lead and
/// `current_key` answers NotReady), then the already-chosen key is signed with. The
/// signature must not come from material whose lead has not passed.
#[tokio::test]
async fn a_version_whose_material_was_just_replaced_does_not_sign_before_its_publish_lead() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let lead = Duration::from_secs(4);
    let cfg = VaultConfig {
        publish_lead: lead,
        key_refresh_interval: Duration::from_secs(3600),
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            signer.current_key().is_ok()
        })
        .await,
        "v1 never became the signing version"
    );
    // Chosen now, as mint.rs chooses the key before queueing the signature.
    let key = signer.current_key().unwrap();
    let old_jwk = jwk_of(&signer, &key.kid);

    recreate_key(&bao, "k", "ecdsa-p256");
    signer.refresh().await.unwrap();
    let new_jwk = jwk_of(&signer, &key.kid);
    assert_ne!(
        old_jwk, new_jwk,
        "the re-created key should have new material"
    );
    // The new material waits out the lead: nothing may sign with it yet.
    assert!(
        matches!(signer.current_key(), Err(SignError::NotReady)),
        "new material already signs: {:?}",
        signer.current_key()
    );

    let input = signing_input(&key, "{\"late\":true}");
    let r = signer.sign(&key, input.as_bytes()).await;
    let still_in_lead = signer.current_key().is_err();
    match r {
        Err(_) => {}
        Ok(sig) => {
            let by_old = verify_with_jwk(&old_jwk, input.as_bytes(), &sig).is_ok();
            let by_new = verify_with_jwk(&new_jwk, input.as_bytes(), &sig).is_ok();
            assert!(
                by_old || !still_in_lead,
                "kid {} signed with material published {:?} ago at most (lead {lead:?}): \
                 verifies with old JWK: {by_old}, with the just-published JWK: {by_new}",
                key.kid,
                lead
            );
        }
    }
}

/// Batches (`batch_input`) for every key type: each concurrent caller gets the signature
/// of its own input (no cross-wiring by order), in JOSE encoding (r||s for ECDSA,
/// base64url), verifying with the JWK published under its kid; a rotation landing while
/// the signatures are queued does not change the version that signs a chosen kid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batched_signatures_of_every_key_type_each_verify_for_their_own_input_and_kid() {
    let bao = bao_with_key("p256", "ecdsa-p256");
    for (name, ty) in [
        ("p384", "ecdsa-p384"),
        ("rsa", "rsa-2048"),
        ("rsa3072", "rsa-3072"),
        ("ed", "ed25519"),
    ] {
        bao.create_transit_key(name, ty);
    }
    for (name, rsa_alg) in [
        ("p256", RsaAlg::PS256),
        ("p384", RsaAlg::PS256),
        ("rsa", RsaAlg::PS256),
        ("rsa", RsaAlg::RS256),
        ("rsa3072", RsaAlg::PS256),
        ("ed", RsaAlg::PS256),
    ] {
        let cfg = VaultConfig {
            rsa_alg,
            batch_max_wait: Duration::from_millis(50),
            ..config(&bao, name)
        };
        let signer = Arc::new(TransitSigner::start(&cfg).await.unwrap());
        let v_before = signer.current_key().unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..48 {
            let signer = signer.clone();
            let key = v_before.clone();
            set.spawn(async move {
                let input = signing_input(
                    &key,
                    &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i)),
                );
                let sig = signer.sign(&key, input.as_bytes()).await;
                (key, input, sig)
            });
        }
        // A rotation lands while signatures are queued: the chosen kid still signs.
        let new_version = bao.rotate_key(name);
        signer.refresh().await.unwrap();
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            let (key, input, sig) = r.unwrap();
            let sig = sig.unwrap_or_else(|e| panic!("{name}/{rsa_alg:?}: sign failed: {e}"));
            let jwk = jwk_of(signer.as_ref(), &key.kid);
            verify_with_jwk(&jwk, input.as_bytes(), &sig).unwrap_or_else(|e| {
                panic!(
                    "{name}/{rsa_alg:?}: signature for {} does not verify: {e}",
                    key.kid
                )
            });
            n += 1;
        }
        assert_eq!(n, 48);
        // With no lead, the rotated version signs next and verifies under its own kid.
        let k2 = sign_and_verify(&signer, "{}").await;
        assert_eq!(k2.version, new_version, "{name}");
        eprintln!(
            "{name}/{rsa_alg:?}: 48 signatures in {} transit requests",
            signer.stats().sign_requests()
        );
    }
}

/// Callers that go away while their signature is in flight (a client disconnect drops
/// the exchange future) must not leak in-flight slots: afterwards the signer still
/// signs a full set of concurrent requests. OpenBao is paused so the requests hang
/// until `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_and_timed_out_requests_leave_the_signer_able_to_sign_concurrently() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    let cfg = VaultConfig {
        batch_max_size: 1, // one request per signature: many in-flight slots used
        ..config(&bao, "k")
    };
    let signer = Arc::new(TransitSigner::start(&cfg).await.unwrap());
    let key = signer.current_key().unwrap();
    for _round in 0..3 {
        bao.pause();
        let mut handles = Vec::new();
        for i in 0..64 {
            let (signer, key) = (signer.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let input = signing_input(&key, &format!("{{\"c\":{i}}}"));
                let _ = signer.sign(&key, input.as_bytes()).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for h in &handles {
            h.abort();
        }
        bao.resume();
        // Recovery (the probe) then 64 concurrent signatures, all verified.
        assert!(
            eventually(Duration::from_secs(20), || async { signer.is_ready() }).await,
            "signer did not recover"
        );
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let (signer, key) = (signer.clone(), key.clone());
            set.spawn(async move {
                let input = signing_input(&key, &format!("{{\"after\":{i}}}"));
                let mut last = None;
                // The first attempts may still meet the fail-fast of a just-down signer.
                for _ in 0..50 {
                    match signer.sign(&key, input.as_bytes()).await {
                        Ok(sig) => return (input, sig),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("never signed after recovery: {last:?}");
            });
        }
        let jwk = jwk_of(signer.as_ref(), &key.kid);
        while let Some(r) = set.join_next().await {
            let (input, sig) = r.unwrap();
            verify_with_jwk(&jwk, input.as_bytes(), &sig).unwrap();
        }
    }
}

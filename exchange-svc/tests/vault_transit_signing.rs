//! Transit signing against a real OpenBao: every key type, JWKS, rotation, batching,
//! outages.
// Test code: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use meshpass_exchange::signer::{SignError, Signer, SigningAlg};
use meshpass_exchange::vault::{RsaAlg, TransitSigner, VaultError};
use std::time::{Duration, Instant};
use vault_common::*;

async fn signs_with(key_type: &str, rsa_alg: RsaAlg, want: SigningAlg) {
    let bao = bao_with_key("k", key_type);
    let cfg = meshpass_exchange::vault::VaultConfig {
        rsa_alg,
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    assert!(signer.is_ready());
    let key = signer.current_key().unwrap();
    assert_eq!(key.alg, want);
    assert_eq!((key.kid.as_str(), key.version), ("k:v1", 1));
    let jwk = jwk_of(&signer, "k:v1");
    assert_eq!(jwk["alg"], want.as_str());
    // Several payloads, so RSA/PSS randomness and ECDSA nonces are exercised.
    for i in 0..3 {
        sign_and_verify(&signer, &format!("{{\"sub\":\"spiffe://td/x\",\"n\":{i}}}")).await;
    }
    // A signature never verifies over other bytes.
    let input = signing_input(&key, "{}");
    let sig = signer.sign(&key, input.as_bytes()).await.unwrap();
    assert!(verify_with_jwk(&jwk, b"tampered", &sig).is_err());
}

#[tokio::test]
async fn ecdsa_p256_signatures_verify_with_the_published_es256_jwk() {
    signs_with("ecdsa-p256", RsaAlg::PS256, SigningAlg::ES256).await;
}

#[tokio::test]
async fn ecdsa_p384_signatures_verify_with_the_published_es384_jwk() {
    signs_with("ecdsa-p384", RsaAlg::PS256, SigningAlg::ES384).await;
}

#[tokio::test]
async fn rsa_2048_pss_signatures_verify_as_ps256_with_hash_length_salt() {
    signs_with("rsa-2048", RsaAlg::PS256, SigningAlg::PS256).await;
}

#[tokio::test]
async fn rsa_2048_pkcs1_signatures_verify_as_rs256() {
    signs_with("rsa-2048", RsaAlg::RS256, SigningAlg::RS256).await;
}

#[tokio::test]
async fn ed25519_signatures_verify_with_the_published_okp_jwk() {
    signs_with("ed25519", RsaAlg::PS256, SigningAlg::EdDSA).await;
}

#[tokio::test]
async fn rotation_with_no_lead_signs_with_the_new_version_and_keeps_the_old_one_published() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    let v1 = sign_and_verify(&signer, "{\"a\":1}").await;
    assert_eq!(v1.version, 1);
    assert_eq!(bao.rotate_key("k"), 2);
    signer.refresh().await.unwrap();
    let v2 = sign_and_verify(&signer, "{\"a\":2}").await;
    assert_eq!((v2.kid.as_str(), v2.version), ("k:v2", 2));
    let kids: Vec<String> = signer.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, ["k:v1", "k:v2"]);
    // The kid names the version that actually signed: v1 still signs as v1, and a v2
    // signature does not verify with the v1 key.
    let input = signing_input(&v1, "{}");
    let sig1 = signer.sign(&v1, input.as_bytes()).await.unwrap();
    verify_with_jwk(&jwk_of(&signer, "k:v1"), input.as_bytes(), &sig1).unwrap();
    let input2 = signing_input(&v2, "{}");
    let sig2 = signer.sign(&v2, input2.as_bytes()).await.unwrap();
    assert!(verify_with_jwk(&jwk_of(&signer, "k:v1"), input2.as_bytes(), &sig2).is_err());
}

#[tokio::test]
async fn a_new_version_is_published_at_once_but_signs_only_after_the_publish_lead() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let lead = Duration::from_secs(3);
    let cfg = meshpass_exchange::vault::VaultConfig {
        publish_lead: lead,
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    // A single young version waits out the lead too (503, never a key verifiers may not
    // have seen): nothing falls back to it.
    assert!(matches!(
        signer.current_key(),
        Err(meshpass_exchange::signer::SignError::NotReady)
    ));
    assert!(
        eventually(Duration::from_secs(10), || async {
            signer.current_key().is_ok()
        })
        .await
    );
    assert_eq!(sign_and_verify(&signer, "{}").await.version, 1);
    bao.rotate_key("k");
    signer.refresh().await.unwrap();
    let rotated = Instant::now();
    jwk_of(&signer, "k:v2"); // published
    assert_eq!(
        signer.current_key().unwrap().version,
        1,
        "v2 used before the lead"
    );
    assert_eq!(sign_and_verify(&signer, "{}").await.version, 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            signer.current_key().unwrap().version == 2
        })
        .await
    );
    assert!(rotated.elapsed() >= lead - Duration::from_millis(200));
    assert_eq!(sign_and_verify(&signer, "{}").await.version, 2);
}

#[tokio::test]
async fn background_refresh_picks_up_rotations_and_min_version_hides_old_versions() {
    let bao = bao_with_key("k", "ed25519");
    bao.rotate_key("k");
    let cfg = meshpass_exchange::vault::VaultConfig {
        key_refresh_interval: Duration::from_millis(200),
        min_version: Some(2),
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    assert_eq!(signer.jwks()["keys"].as_array().unwrap().len(), 1);
    assert_eq!(sign_and_verify(&signer, "{}").await.version, 2);
    bao.rotate_key("k");
    assert!(
        eventually(Duration::from_secs(5), || async {
            signer.current_key().unwrap().version == 3
        })
        .await
    );
    assert_eq!(signer.jwks()["keys"].as_array().unwrap().len(), 2);
    sign_and_verify(&signer, "{}").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_signs_are_coalesced_into_fewer_batch_requests() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let signer = std::sync::Arc::new(TransitSigner::start(&config(&bao, "k")).await.unwrap());
    let key = signer.current_key().unwrap();
    let jwk = jwk_of(signer.as_ref(), &key.kid);
    let before = signer.stats().sign_requests();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (signer, key) = (signer.clone(), key.clone());
        set.spawn(async move {
            let input = signing_input(&key, &format!("{{\"i\":{i}}}"));
            let sig = signer.sign(&key, input.as_bytes()).await.unwrap();
            (input, sig)
        });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        let (input, sig) = r.unwrap();
        verify_with_jwk(&jwk, input.as_bytes(), &sig).unwrap();
        n += 1;
    }
    let requests = signer.stats().sign_requests() - before;
    assert_eq!(n, 64);
    assert!(requests < 64, "{requests} requests for 64 signatures");
    assert_eq!(signer.stats().signatures(), 64);
    eprintln!("64 concurrent signatures took {requests} transit requests");
}

/// The longest batch window the configuration accepts (`batch_max_wait` is at most 1 s,
/// too short to tell apart from a loaded machine's latency in one go). The batching
/// tests below repeat their case `ROUNDS` times: a batch that sat out the window would
/// make the rounds last at least `ROUNDS` windows (a timer never fires early), so a
/// bound of half that is generous for the correct behaviour (a few Vault round trips
/// per round) and still cannot be met by the wrong one.
const WINDOW: Duration = Duration::from_secs(1);
const ROUNDS: u32 = 20;

/// With the longest batch window, a signature requested while nothing is in flight must
/// not wait for company: each of these sequential signatures is one transit request,
/// and all of them together take less than half the windows they would have sat out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_goes_out_at_once_when_nothing_is_in_flight_whatever_the_batch_window() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let cfg = meshpass_exchange::vault::VaultConfig {
        batch_max_wait: WINDOW,
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&cfg).await.unwrap();
    let key = signer.current_key().unwrap();
    let before = signer.stats().sign_requests();
    let started = Instant::now();
    for i in 0..ROUNDS {
        let input = signing_input(&key, &format!("{{\"i\":{i}}}"));
        signer.sign(&key, input.as_bytes()).await.unwrap();
    }
    let took = started.elapsed();
    assert_eq!(signer.stats().sign_requests() - before, u64::from(ROUNDS));
    assert!(
        took < WINDOW * ROUNDS / 2,
        "{ROUNDS} sequential signatures took {took:?}: they waited for the batch window"
    );
}

/// Signatures that wait for company beside a request in flight go out together as soon
/// as it returns, not when the window ends. Each round holds one request in flight (on
/// a paused OpenBao), queues seven signatures beside it (below the minimum of 12 that
/// would open another slot), then lets it return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_signatures_go_out_when_a_request_in_flight_returns_not_at_the_end_of_the_window() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    let cfg = meshpass_exchange::vault::VaultConfig {
        batch_max_wait: WINDOW,
        request_timeout: Duration::from_secs(30),
        ..config(&bao, "k")
    };
    let signer = std::sync::Arc::new(TransitSigner::start(&cfg).await.unwrap());
    let key = signer.current_key().unwrap();
    let jwk = jwk_of(signer.as_ref(), "k:v1");
    let sent = || signer.stats().sign_requests();
    let mut waited = Duration::ZERO;
    for round in 0..ROUNDS {
        let before = sent();
        let mut set = tokio::task::JoinSet::new();
        let mut spawn = |i: u32| sign_in(&mut set, &signer, &key, round, i);
        bao.pause();
        spawn(0);
        assert!(eventually(Duration::from_secs(5), || async { sent() == before + 1 }).await);
        // From here a window would end no sooner than a second later.
        let queued = Instant::now();
        for i in 1..8 {
            spawn(i);
        }
        // Time to reach the batch loop, which holds them beside the one in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            sent(),
            before + 1,
            "round {round}: a waiting signature went out"
        );
        bao.resume();
        while let Some(r) = set.join_next().await {
            let (input, sig) = r.unwrap();
            verify_with_jwk(&jwk, input.as_bytes(), &sig.unwrap()).unwrap();
        }
        waited += queued.elapsed();
        assert_eq!(
            sent(),
            before + 2,
            "round {round}: the seven waiting signatures did not go out together"
        );
    }
    assert!(
        waited < WINDOW * ROUNDS / 2,
        "{ROUNDS} rounds took {waited:?} from queueing to answer: batches sat out the window"
    );
}

/// Signs `{"round":R,"i":I}` in a task of `set`, which yields the input and the result.
fn sign_in(
    set: &mut tokio::task::JoinSet<(String, Result<String, meshpass_exchange::signer::SignError>)>,
    signer: &std::sync::Arc<TransitSigner>,
    key: &meshpass_exchange::signer::SigningKey,
    round: u32,
    i: u32,
) {
    let (signer, key) = (signer.clone(), key.clone());
    set.spawn(async move {
        let input = signing_input(&key, &format!("{{\"round\":{round},\"i\":{i}}}"));
        let sig = signer.sign(&key, input.as_bytes()).await;
        (input, sig)
    });
}

/// While one request is in flight (held there by a paused OpenBao), a second one goes
/// out only once `batch_pipeline_min_size` signatures wait for it: fewer wait for the
/// one in flight, so a lone signature never pays Vault's fixed cost per request in the
/// second slot; the one that makes the minimum sends them at once, not at the end of
/// the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_beside_one_in_flight_waits_for_the_minimum_batch() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    let cfg = meshpass_exchange::vault::VaultConfig {
        batch_max_wait: WINDOW,
        batch_pipeline_depth: 2,
        batch_pipeline_min_size: 4,
        request_timeout: Duration::from_secs(30),
        ..config(&bao, "k")
    };
    let signer = std::sync::Arc::new(TransitSigner::start(&cfg).await.unwrap());
    let key = signer.current_key().unwrap();
    let jwk = jwk_of(signer.as_ref(), "k:v1");
    let sent = || signer.stats().sign_requests();
    let mut waited = Duration::ZERO;
    for round in 0..ROUNDS {
        let before = sent();
        bao.pause();
        let mut set = tokio::task::JoinSet::new();
        let mut spawn = |i: u32| sign_in(&mut set, &signer, &key, round, i);
        // Nothing in flight: the first goes out at once (and hangs on the paused OpenBao).
        spawn(0);
        assert!(eventually(Duration::from_secs(5), || async { sent() == before + 1 }).await);
        // From here a window would end no sooner than a second later.
        let queued = Instant::now();
        // Three wait: below the minimum of 4, the second slot stays closed.
        for i in 1..4 {
            spawn(i);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            sent(),
            before + 1,
            "round {round}: a second request went out with fewer than 4 signatures"
        );
        // The fourth makes the minimum: they go out together now.
        spawn(4);
        while sent() < before + 2 {
            assert!(
                queued.elapsed() < Duration::from_secs(10),
                "round {round}: no second request"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        waited += queued.elapsed();
        bao.resume();
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            let (input, sig) = r.unwrap();
            verify_with_jwk(&jwk, input.as_bytes(), &sig.unwrap()).unwrap();
            n += 1;
        }
        assert_eq!((n, sent() - before), (5, 2), "round {round}");
    }
    assert!(
        waited < WINDOW * ROUNDS / 2,
        "{ROUNDS} minimum batches took {waited:?} to go out: they sat out the window"
    );
}

#[tokio::test]
async fn paused_openbao_makes_signing_unavailable_quickly_and_it_recovers_after_resume() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    let key = sign_and_verify(&signer, "{}").await;
    bao.pause();
    for _ in 0..3 {
        let started = Instant::now();
        let r = signer.sign(&key, b"x.y").await;
        assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
        // request_timeout is 800 ms: no caller hangs on a dead Vault.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(!signer.is_ready());
    // Known down: fail fast without sending a sign request to the frozen Vault (it would
    // wait out the request timeout), and keep publishing the keys.
    let sent = signer.stats().sign_requests();
    for _ in 0..3 {
        assert!(matches!(
            signer.sign(&key, b"x.y").await,
            Err(SignError::Unavailable(_))
        ));
    }
    assert_eq!(
        signer.stats().sign_requests(),
        sent,
        "a sign request went to a Vault known to be down"
    );
    jwk_of(&signer, "k:v1");
    bao.resume();
    assert!(eventually(Duration::from_secs(10), || async { signer.is_ready() }).await);
    sign_and_verify(&signer, "{}").await;
}

#[tokio::test]
async fn stopped_openbao_answers_unavailable_and_readiness_returns_when_it_is_back() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    let key = sign_and_verify(&signer, "{}").await;
    bao.stop();
    let r = signer.sign(&key, b"x.y").await;
    assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
    // Back on the same port and root token; dev mode lost the key, so re-create it
    // (a new v1: the signer keeps serving while it re-reads).
    bao.restart_same_port();
    bao.enable_transit();
    bao.create_transit_key("k", "ecdsa-p256");
    assert!(eventually(Duration::from_secs(10), || async { signer.is_ready() }).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            signer.refresh().await.is_ok()
        })
        .await
    );
    sign_and_verify(&signer, "{}").await;
}

#[tokio::test]
async fn signer_started_while_openbao_is_paused_becomes_ready_after_resume() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    bao.pause();
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    assert!(!signer.is_ready());
    assert!(matches!(signer.current_key(), Err(SignError::NotReady)));
    assert_eq!(signer.jwks()["keys"].as_array().unwrap().len(), 0);
    bao.resume();
    assert!(eventually(Duration::from_secs(15), || async { signer.is_ready() }).await);
    sign_and_verify(&signer, "{}").await;
}

#[tokio::test]
async fn start_refuses_a_missing_key_and_a_key_that_cannot_sign() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let err = TransitSigner::start(&config(&bao, "missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound(_)), "{err}");
    bao.create_transit_key("aes", "aes256-gcm96");
    let err = TransitSigner::start(&config(&bao, "aes"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot sign JWS"), "{err}");
    let cfg = meshpass_exchange::vault::VaultConfig {
        key_type: Some(meshpass_exchange::vault::KeyType::Ed25519),
        ..config(&bao, "k")
    };
    let err = TransitSigner::start(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("vault.key_type"), "{err}");
}

#[tokio::test]
async fn a_batch_answer_with_one_failed_item_fails_only_that_item() {
    use base64::Engine;
    let bao = bao_with_key("k", "ecdsa-p256");
    let good = base64::engine::general_purpose::STANDARD.encode("a.b");
    // The real wire answer of OpenBao to a batch whose second item is not base64.
    let (status, answer) = bao.api(
        "POST",
        "transit/sign/k",
        Some(serde_json::json!({
            "key_version": 1,
            "marshaling_algorithm": "jws",
            "hash_algorithm": "sha2-256",
            "batch_input": [
                {"reference": "0", "input": good},
                {"reference": "1", "input": "***not base64***"},
                {"reference": "2", "input": good},
            ],
        })),
    );
    assert_eq!(status, 200, "{answer}");
    let answer = serde_json::to_vec(&answer).unwrap();
    let results = meshpass_exchange::vault::sign_results(&answer, 3, 1, 64);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(SignError::Failed(_))),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    // A signature from another version than asked is refused (rotation race).
    let results = meshpass_exchange::vault::sign_results(&answer, 3, 2, 64);
    assert!(results.iter().all(|r| r.is_err()));
    // An answer with the wrong number of items fails every item.
    let results = meshpass_exchange::vault::sign_results(&answer, 4, 1, 64);
    assert!(results.iter().all(|r| r.is_err()));
}

#[tokio::test]
async fn a_deleted_transit_key_makes_signing_unavailable_and_the_signer_unready_until_it_is_back() {
    let bao = bao_with_key("k", "ecdsa-p256");
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    let key = sign_and_verify(&signer, "{}").await;
    assert!(signer.is_ready());
    // Vault answers, but the key is gone (a restarted dev server, an operator mistake).
    bao.api_ok(
        "POST",
        "transit/keys/k/config",
        Some(serde_json::json!({"deletion_allowed": true})),
    );
    bao.api_ok("DELETE", "transit/keys/k", None);
    let r = signer.sign(&key, b"x.y").await;
    // 503 + Retry-After for the client (it can work again), not a 500.
    assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
    assert!(!signer.is_ready(), "ready without a key to sign with");
    // Back: a new key is read, published and used.
    bao.create_transit_key("k", "ecdsa-p256");
    assert!(
        eventually(Duration::from_secs(10), || async {
            signer.refresh().await.is_ok()
        })
        .await
    );
    sign_and_verify(&signer, "{}").await;
    assert!(signer.is_ready());
}

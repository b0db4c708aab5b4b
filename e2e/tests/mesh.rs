//! The mesh on its default storage (SQLite) and an OpenBao dev server: the happy path in
//! both modes, every rejection, and caching. Each scenario is a test of its own
//! (`cargo test -p meshpass-e2e --test mesh -- --list`); they share one topology, started
//! before the first scenario that runs and stopped when the binary ends. None depends on
//! another, so any one runs alone (`cargo test -p meshpass-e2e --test mesh --
//! rejects_expired_token`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::ExitCode;

use anyhow::{ensure, Result};
use common::{assert_participant_token, assert_rejected, scenarios};
use meshpass_e2e::jwt::now;
use meshpass_e2e::topology::{Options, Topology};
use serde_json::json;

fn main() -> ExitCode {
    common::run_scenarios(
        "mesh/sqlite",
        || Topology::start(Options::default()),
        |t| format!("dir {}\n{}", t.dir().display(), t.diagnostics(30)),
        scenarios![
            // happy path
            client_mode_app_receives_participant_token_never_the_jwt_svid,
            server_mode_app_receives_participant_token_bound_to_peer_certificate,
            // rejections
            rejects_request_without_token,
            rejects_token_with_bad_signature,
            rejects_expired_token,
            rejects_token_for_another_audience,
            rejects_token_from_unconfigured_issuer,
            rejects_spiffe_id_outside_the_trust_domain,
            rejects_token_of_workload_a_over_connection_of_workload_b,
            rejects_unmapped_subject_with_403,
            rejects_scope_the_mapping_does_not_allow_with_403,
            rejects_a_stolen_subject_token_presented_to_the_exchange_service_by_another_identity,
            // caching
            twenty_requests_with_one_token_cause_one_exchange,
            concurrent_first_requests_cause_one_exchange_per_token,
        ],
    )
}

async fn client_mode_app_receives_participant_token_never_the_jwt_svid(t: &Topology) -> Result<()> {
    let tok = t.mint("frontend")?;
    let r = t.via_client_mode("/orders/42", Some(&tok)).await?;
    assert_participant_token(t, &r, "frontend", "acme", &tok)?;
    ensure!(r.echo()?.path == "/orders/42", "path changed: {r}");
    Ok(())
}

async fn server_mode_app_receives_participant_token_bound_to_peer_certificate(
    t: &Topology,
) -> Result<()> {
    let tok = t.mint("reporting")?;
    let r = t
        .via_server_mode("reporting", "/orders/42", Some(&tok))
        .await?;
    let claims = assert_participant_token(t, &r, "reporting", "globex", &tok)?;
    let xfcc = r
        .echo()?
        .header("x-forwarded-client-cert")
        .unwrap_or_default()
        .to_string();
    ensure!(
        xfcc.contains(claims["sub"].as_str().unwrap_or("?")),
        "the peer certificate ({xfcc}) is not the token's subject"
    );
    Ok(())
}

async fn rejects_request_without_token(t: &Topology) -> Result<()> {
    assert_rejected(
        &t.via_client_mode("/", None).await?,
        401,
        "invalid_request",
        "no subject token",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", None).await?,
        401,
        "invalid_request",
        "no subject token",
    )
}

async fn rejects_token_with_bad_signature(t: &Topology) -> Result<()> {
    let bad = t.issuer.mint_with_foreign_key(&t.svid_claims("frontend"))?;
    assert_rejected(
        &t.via_client_mode("/", Some(&bad)).await?,
        401,
        "invalid_token",
        "signature",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", Some(&bad)).await?,
        401,
        "invalid_token",
        "signature",
    )
}

async fn rejects_expired_token(t: &Topology) -> Result<()> {
    let mut c = t.svid_claims("frontend");
    c["iat"] = json!(now() - 900);
    c["exp"] = json!(now() - 300);
    let expired = t.issuer.mint(&c)?;
    assert_rejected(
        &t.via_client_mode("/", Some(&expired)).await?,
        401,
        "invalid_token",
        "expired",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", Some(&expired)).await?,
        401,
        "invalid_token",
        "expired",
    )
}

async fn rejects_token_for_another_audience(t: &Topology) -> Result<()> {
    let mut c = t.svid_claims("frontend");
    c["aud"] = json!(["some-other-service"]);
    let tok = t.issuer.mint(&c)?;
    assert_rejected(
        &t.via_client_mode("/", Some(&tok)).await?,
        401,
        "invalid_token",
        "audience",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", Some(&tok)).await?,
        401,
        "invalid_token",
        "audience",
    )
}

async fn rejects_token_from_unconfigured_issuer(t: &Topology) -> Result<()> {
    let mut c = t.svid_claims("frontend");
    c["iss"] = json!("https://rogue-issuer.e2e.test");
    let tok = t.issuer.mint(&c)?;
    assert_rejected(
        &t.via_client_mode("/", Some(&tok)).await?,
        401,
        "invalid_token",
        "issuer",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", Some(&tok)).await?,
        401,
        "invalid_token",
        "issuer",
    )
}

async fn rejects_spiffe_id_outside_the_trust_domain(t: &Topology) -> Result<()> {
    let mut c = t.svid_claims("frontend");
    c["sub"] = json!("spiffe://evil.example/ns/demo/sa/frontend");
    let tok = t.issuer.mint(&c)?;
    assert_rejected(
        &t.via_client_mode("/", Some(&tok)).await?,
        401,
        "invalid_token",
        "trust domain",
    )?;
    assert_rejected(
        &t.via_server_mode("frontend", "/", Some(&tok)).await?,
        401,
        "invalid_token",
        "trust domain",
    )
}

async fn rejects_token_of_workload_a_over_connection_of_workload_b(t: &Topology) -> Result<()> {
    // SERVER mode: frontend's token over batch's mTLS connection.
    let tok = t.mint("frontend")?;
    assert_rejected(
        &t.via_server_mode("batch", "/", Some(&tok)).await?,
        401,
        "invalid_token",
        "does not match",
    )?;
    // CLIENT mode: reporting's token handed to frontend's sidecar.
    let tok = t.mint("reporting")?;
    assert_rejected(
        &t.via_client_mode("/", Some(&tok)).await?,
        401,
        "invalid_token",
        "does not match",
    )
}

async fn rejects_unmapped_subject_with_403(t: &Topology) -> Result<()> {
    let tok = t.mint("batch")?;
    let r = t.via_server_mode("batch", "/", Some(&tok)).await?;
    ensure!(r.status == 403, "expected 403, got {r}");
    ensure!(r.echo().is_err(), "reached the app: {r}");
    Ok(())
}

async fn rejects_scope_the_mapping_does_not_allow_with_403(t: &Topology) -> Result<()> {
    let tok = t.mint("frontend")?;
    let r = t.via_client_mode("/admin/orders", Some(&tok)).await?;
    ensure!(r.status == 403, "CLIENT mode: expected 403, got {r}");
    ensure!(r.echo().is_err(), "reached the app: {r}");
    let r = t
        .via_server_mode("frontend", "/admin/orders", Some(&tok))
        .await?;
    ensure!(r.status == 403, "SERVER mode: expected 403, got {r}");
    Ok(())
}

async fn twenty_requests_with_one_token_cause_one_exchange(t: &Topology) -> Result<()> {
    for (mode, workload) in [("CLIENT", "frontend"), ("SERVER", "reporting")] {
        let tok = t.mint(workload)?;
        let before = exchanges(t, mode).await?;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20 {
            let r = request(t, mode, workload, &tok).await?;
            ensure!(r.status == 200, "{mode} request {i}: {r}");
            seen.insert(r.echo()?.bearer().unwrap_or_default().to_string());
        }
        let n = exchanges(t, mode).await? - before;
        ensure!(n == 1, "{mode} mode: 20 requests caused {n} exchanges");
        ensure!(
            seen.len() == 1,
            "{mode} mode: the app saw {} different tokens",
            seen.len()
        );
    }
    Ok(())
}

async fn concurrent_first_requests_cause_one_exchange_per_token(t: &Topology) -> Result<()> {
    for (mode, workload) in [("CLIENT", "frontend"), ("SERVER", "reporting")] {
        let tokens: Vec<String> = (0..3).map(|_| t.mint(workload)).collect::<Result<_>>()?;
        let before = exchanges(t, mode).await?;
        let burst = tokens
            .iter()
            .flat_map(|tok| (0..8).map(move |_| request(t, mode, workload, tok)));
        let replies = futures_join_all(burst).await;
        for r in replies {
            let r = r?;
            ensure!(r.status == 200, "{mode} burst request: {r}");
        }
        let n = exchanges(t, mode).await? - before;
        ensure!(
            n == 3,
            "{mode} mode: 24 concurrent requests over 3 tokens caused {n} exchanges"
        );
    }
    Ok(())
}

async fn request(
    t: &Topology,
    mode: &str,
    workload: &str,
    tok: &str,
) -> Result<meshpass_e2e::topology::Reply> {
    if mode == "CLIENT" {
        t.via_client_mode("/orders", Some(tok)).await
    } else {
        t.via_server_mode(workload, "/orders", Some(tok)).await
    }
}

async fn exchanges(t: &Topology, mode: &str) -> Result<u64> {
    if mode == "CLIENT" {
        t.client_exchanges().await
    } else {
        t.server_exchanges().await
    }
}

/// Runs futures concurrently on this task (no extra crate needed).
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(set.len());
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

/// `POST /token` straight to the exchange service's TLS port as `workload` (its
/// X509-SVID as client certificate), exchanging `token` for the echo app.
async fn exchange_as(
    t: &Topology,
    workload: &str,
    token: &str,
) -> Result<(u16, serde_json::Value)> {
    let svid = t.ca.issue(&t.spiffe_id(workload))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(t.ca.cert_pem().as_bytes())?)
        .identity(reqwest::Identity::from_pem(
            format!("{}{}", svid.cert_pem, svid.key_pem).as_bytes(),
        )?)
        // An SVID names a SPIFFE ID, not a host: the CA is verified, the name is not.
        .danger_accept_invalid_hostnames(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let r = client
        .post(format!("https://127.0.0.1:{}/token", t.ports.exchange_tls))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", meshpass_e2e::topology::APP_RESOURCE),
        ])
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or_default()))
}

/// A subject token stolen from its workload buys nothing at the exchange service: the
/// service binds the caller (its mTLS peer) to the subject (CLIENT mode) or to the
/// mapping's `allowed_callers` (SERVER mode: the echo sidecar exchanging for its peer).
async fn rejects_a_stolen_subject_token_presented_to_the_exchange_service_by_another_identity(
    t: &Topology,
) -> Result<()> {
    // CLIENT mode: frontend's own token, as its sidecar exchanges it.
    let frontend = t.mint("frontend")?;
    let (status, body) = exchange_as(t, "frontend", &frontend).await?;
    ensure!(status == 200, "frontend's own exchange: {status} {body}");
    let (status, body) = exchange_as(t, "batch", &frontend).await?;
    ensure!(
        status == 403 && body["error"] == "unauthorized_client",
        "batch exchanging frontend's token: {status} {body}"
    );
    let why = body["error_description"].as_str().unwrap_or_default();
    ensure!(why.contains(&t.spiffe_id("batch")), "unclear error: {why}");
    // SERVER mode: reporting's token, as the echo sidecar exchanges it for its peer.
    let reporting = t.mint("reporting")?;
    let (status, body) = exchange_as(t, "echo", &reporting).await?;
    ensure!(
        status == 200,
        "the echo sidecar's exchange: {status} {body}"
    );
    let (status, body) = exchange_as(t, "batch", &reporting).await?;
    ensure!(
        status == 403 && body["error"] == "unauthorized_client",
        "batch exchanging reporting's token: {status} {body}"
    );
    Ok(())
}

//! Edges of the Vault client over real sockets: a redirect never carries the token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::vault::{AuthConfig, Secret, TransitSigner, VaultConfig, VaultError};
use vault_common::clear_vault_env;

async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_vault_is_not_followed_with_the_token() {
    clear_vault_env();
    // Where the redirect points: counts requests that carry the token.
    let leaked = Arc::new(AtomicUsize::new(0));
    let seen = leaked.clone();
    let elsewhere = serve(axum::Router::new().fallback(move |h: HeaderMap| {
        let seen = seen.clone();
        async move {
            if h.contains_key("x-vault-token") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            StatusCode::NOT_FOUND
        }
    }))
    .await;
    // "Vault": redirects everything there, counting what it is asked and what came with
    // the token (so the test knows the client did call it, as itself).
    let asked = Arc::new(AtomicUsize::new(0));
    let asked_with_token = Arc::new(AtomicUsize::new(0));
    let (all, with_token) = (asked.clone(), asked_with_token.clone());
    let vault = serve(axum::Router::new().fallback(move |uri: Uri, h: HeaderMap| {
        all.fetch_add(1, Ordering::SeqCst);
        if h.get("x-vault-token")
            .is_some_and(|t| t == "s.secret-token")
        {
            with_token.fetch_add(1, Ordering::SeqCst);
        }
        let to = format!("{elsewhere}{uri}");
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response() }
    }))
    .await;
    let cfg = VaultConfig {
        address: Some(vault),
        auth: AuthConfig::Token {
            token: Some(Secret::new("s.secret-token")),
        },
        key_name: "k".into(),
        publish_lead: Duration::ZERO,
        request_timeout: Duration::from_millis(800),
        ..VaultConfig::default()
    };
    let started = TransitSigner::start(&cfg).await;
    // Give a signer's background tasks (if start made one) time to try again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No signer that could sign came of it: a redirect is no answer from Vault.
    match &started {
        Ok(signer) => assert!(!signer.is_ready(), "ready behind a redirecting Vault"),
        Err(e) => assert!(
            matches!(e, VaultError::Rejected { status: 307, .. }),
            "start failed for another reason than the redirect: {e}"
        ),
    }
    // The client did talk to "Vault" with the token...
    assert!(asked.load(Ordering::SeqCst) >= 1, "Vault was never called");
    assert!(
        asked_with_token.load(Ordering::SeqCst) >= 1,
        "no request to Vault carried X-Vault-Token"
    );
    // ...and the token never reached the redirect's target.
    assert_eq!(
        leaked.load(Ordering::SeqCst),
        0,
        "X-Vault-Token followed a redirect"
    );
}

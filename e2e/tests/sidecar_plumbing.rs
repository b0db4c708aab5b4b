//! The sidecar plumbing without the meshpass filter: real Envoys, real mTLS with test
//! X.509-SVIDs, real `jwt_authn`. Proves the topology the other scenarios build on.

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use meshpass_e2e::blocking;
use meshpass_e2e::ca::TestCa;
use meshpass_e2e::echo::{self, EchoReport};
use meshpass_e2e::envoy::{self, ClientSidecar, JwtAuthn, ServerSidecar, UpstreamIdentity};
use meshpass_e2e::http::HttpServer;
use meshpass_e2e::jwt::JwtSvidIssuer;
use meshpass_testkit::{free_port, Envoy, EnvoyOptions};
use serde_json::json;

struct Ports {
    mesh: u16,
    exchanged: u16,
    client_exchange: u16,
    plain: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_jwt_authn_sidecars_deliver_verified_requests_with_the_callers_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("cluster.local").unwrap();
    let bundle = ca.write_bundle(d).unwrap();
    let server_id = ca.spiffe_id("demo", "echo");
    let client_id = ca.spiffe_id("demo", "frontend");
    let other_id = ca.spiffe_id("demo", "batch");
    let server_svid = ca.issue(&server_id).unwrap().write(d, "server").unwrap();
    let client_svid = ca.issue(&client_id).unwrap().write(d, "client").unwrap();
    let other_svid = ca.issue(&other_id).unwrap().write(d, "other").unwrap();

    // jwt_authn verifies tokens of this issuer here (the full suite points it at the
    // exchange service instead).
    let issuer = JwtSvidIssuer::new("https://issuer.e2e.test");
    let jwks = issuer.jwks();
    let jwks_server = HttpServer::start(
        "jwks",
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let j = jwks.clone();
                async move { axum::Json(j) }
            }),
        ),
    )
    .await
    .unwrap();
    let app = HttpServer::start("echo", echo::router()).await.unwrap();

    let p = Ports {
        mesh: free_port(),
        exchanged: free_port(),
        client_exchange: free_port(),
        plain: free_port(),
    };
    let server_cfg = ServerSidecar {
        mesh_port: p.mesh,
        exchanged_port: p.exchanged,
        svid: server_svid,
        ca_bundle: bundle.clone(),
        trust_domain: "cluster.local".into(),
        filter: None,
        jwt_authn: JwtAuthn {
            issuer: issuer.issuer().into(),
            audiences: vec!["echo".into()],
            jwks_uri: format!("{}/.well-known/jwks.json", jwks_server.base_url()),
            cache_duration_secs: 60,
        },
        app_port: app.port(),
        exchange_port: jwks_server.port(),
        svid_jwks_port: jwks_server.port(),
    };
    let client_cfg = ClientSidecar {
        exchange_port_listener: p.client_exchange,
        plain_port: p.plain,
        svid: client_svid.clone(),
        identities: vec![
            UpstreamIdentity {
                name: "frontend".into(),
                svid: client_svid,
            },
            UpstreamIdentity {
                name: "batch".into(),
                svid: other_svid,
            },
        ],
        ca_bundle: bundle,
        server_spiffe_id: server_id.clone(),
        server_mesh_port: p.mesh,
        server_exchanged_port: p.exchanged,
        filter: None,
        node_metadata: json!({"NAMESPACE": "demo", "SERVICE_ACCOUNT": "frontend"}),
        exchange_port: jwks_server.port(),
        svid_jwks_port: jwks_server.port(),
    };
    let server_yaml = envoy::yaml(&envoy::server_sidecar_config(&server_cfg));
    let client_yaml = envoy::yaml(&envoy::client_sidecar_config(&client_cfg));
    meshpass_testkit::envoy::validate(&server_yaml).unwrap();
    meshpass_testkit::envoy::validate(&client_yaml).unwrap();
    let _server = start(&server_yaml, d, "server");
    let _client = start(&client_yaml, d, "client");

    let http = reqwest::Client::new();
    let token = issuer.mint_for(&client_id, &["echo"], 300).unwrap();

    // Through outbound_exchange (no filter here) to inbound_exchanged.
    let r = http
        .get(format!("http://127.0.0.1:{}/hello", p.client_exchange))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen: EchoReport = r.json().await.unwrap();
    assert_eq!(
        seen.bearer(),
        Some(token.as_str()),
        "jwt_authn must forward the token"
    );
    assert!(
        seen.header("x-forwarded-client-cert")
            .unwrap_or_default()
            .contains(&client_id),
        "XFCC carries the caller's SPIFFE ID: {seen:?}"
    );

    // Through outbound_plain, choosing the presented SVID by header.
    let r = http
        .get(format!("http://127.0.0.1:{}/x", p.plain))
        .header(envoy::IDENTITY_HEADER, "batch")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: EchoReport = r.json().await.unwrap();
    assert!(seen
        .header("x-forwarded-client-cert")
        .unwrap_or_default()
        .contains(&other_id));
    assert_eq!(seen.header(envoy::IDENTITY_HEADER), None);

    // jwt_authn rejects what it cannot verify.
    let r = http
        .get(format!("http://127.0.0.1:{}/x", p.plain))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let wrong_aud = issuer.mint_for(&client_id, &["elsewhere"], 300).unwrap();
    let r = http
        .get(format!("http://127.0.0.1:{}/x", p.plain))
        .bearer_auth(wrong_aud)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "wrong audience");
}

fn start(yaml: &str, d: &Path, name: &str) -> Envoy {
    let options = EnvoyOptions {
        name: name.into(),
        log_path: Some(d.join(format!("{name}.log"))),
        ..EnvoyOptions::default()
    };
    blocking(|| Envoy::start_with(yaml, &options)).unwrap()
}

//! The caller named by the service's own sidecar: a real Envoy terminates mTLS in front
//! of the service and sets `x-forwarded-client-cert` (`forward_client_cert_details:
//! SANITIZE_SET`, subject, URI and DNS as Istio does); the service believes it only from
//! that proxy's address, and only as one element (a SAN holding a comma spells two).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::server::serve_on;
use meshpass_testkit::envoy::Envoy;
use meshpass_testkit::free_port;
use serde_json::json;

const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/thief";

/// Envoy: mTLS listener (client certificate required) → the service over plain HTTP,
/// with the verified client certificate's URI forwarded in XFCC.
fn sidecar_yaml(listen: u16, service: u16, dir: &std::path::Path) -> String {
    let file = |n: &str| dir.join(n).display().to_string();
    json!({
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificates": [{
                                    "certificate_chain": {"filename": file("envoy.crt")},
                                    "private_key": {"filename": file("envoy.key")},
                                }],
                                "validation_context": {"trusted_ca": {"filename": file("ca.crt")}},
                            },
                        },
                    },
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "sidecar",
                            "forward_client_cert_details": "SANITIZE_SET",
                            // What Istio sets on a sidecar's inbound listener.
                            "set_current_client_cert_details": {"subject": true, "uri": true, "dns": true},
                            "route_config": {"virtual_hosts": [{
                                "name": "svc", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
                            }]},
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            }],
                        },
                    }],
                }],
            }],
            "clusters": [{
                "name": "svc", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": service}}}}
                ]}]},
            }],
        },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_sidecar_names_it_in_xfcc_and_a_client_sent_xfcc_is_never_believed() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    std::fs::write(dir.path().join("envoy.crt"), cert).unwrap();
    std::fs::write(dir.path().join("envoy.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), pki.ca.pem()).unwrap();

    // The service trusts XFCC from 127.0.0.1 only (the common configuration).
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap().port();
    tokio::spawn(serve_on(
        listener,
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let listen = free_port();
    let envoy = Envoy::start(&sidecar_yaml(listen, service, dir.path()), 1);

    let client_with = |sans: Vec<rcgen::SanType>| {
        let (c, k) = pki.issue_with(sans, None);
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let uri = |id: &str| rcgen::SanType::URI(id.try_into().unwrap());
    let client = |id: &str| client_with(vec![uri(id)]);
    let token = issuer.svid(WEB, now(), 600);
    let body = exchange_form(&token, &[("resource", "orders")]);
    let post = |c: reqwest::Client, url: String, xfcc: Option<String>| {
        let body = body.clone();
        async move {
            let mut r = c
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            if let Some(x) = xfcc {
                r = r.header("x-forwarded-client-cert", x);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let via_envoy = format!("https://127.0.0.1:{listen}/token");

    // The subject itself, through its sidecar: 200.
    let (status, text) = post(client(WEB), via_envoy.clone(), None).await;
    assert_eq!(status, 200, "{text}\n{}", envoy.log_tail(20));
    // Another workload with the stolen token, even claiming to be WEB in its own XFCC:
    // Envoy replaces the header (SANITIZE_SET) and the service sees the thief.
    let (status, text) = post(client(EVIL), via_envoy.clone(), Some(format!("URI={WEB}"))).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains(EVIL), "{text}");
    // A SAN holding a comma: Envoy writes URI and DNS values unquoted, so the thief's
    // certificate spelt a second element of XFCC, naming WEB.
    for sans in [
        vec![uri(&format!("{EVIL},URI={WEB}"))],
        vec![
            uri(EVIL),
            rcgen::SanType::DnsName(format!("thief.evil.svc,URI={WEB}").try_into().unwrap()),
        ],
    ] {
        let (status, text) = post(client_with(sans.clone()), via_envoy.clone(), None).await;
        assert_ne!(status, 200, "{sans:?} was taken as {WEB}: {text}");
    }
    // Straight to the service from a peer that is not the trusted proxy: a forged XFCC
    // is refused, never believed.
    let direct = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let (status, text) = post(
        direct,
        format!("http://127.0.0.1:{service}/token"),
        Some(format!("URI={WEB}")),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("x-forwarded-client-cert"), "{text}");
}

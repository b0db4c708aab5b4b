//! The configurations the topology hands its components: the filter's plugin
//! configuration, the exchange service's, and the sidecars' mTLS exchange cluster.

use std::path::Path;

use anyhow::{anyhow, Result};
use meshpass_testkit::OpenBao;
use serde_json::{json, Value};

use super::{
    Options, APP_RESOURCE, DEFAULT_SCOPE, FORBIDDEN_SCOPE, NAMESPACE, PARTICIPANT_CLAIM,
    SCOPE_CLAIM, SHORT_RESOURCE, SHORT_TTL_SECS, SVID_AUDIENCE, SVID_ISSUER, TRANSIT_KEY,
    TRUST_DOMAIN,
};
use crate::envoy;

/// The filter's plugin configuration (filter/README.md) for `mode`.
pub fn plugin_config(mode: &str, svid_jwks_refresh_secs: u64) -> Value {
    let mut cfg = json!({
        "mode": mode,
        "issuers": [{
            "issuer": SVID_ISSUER,
            "audiences": [SVID_AUDIENCE],
            "trust_domains": [TRUST_DOMAIN],
            "jwks_cluster": envoy::SVID_JWKS_CLUSTER,
            "jwks_path": "/.well-known/jwks.json",
            "jwks_refresh_secs": svid_jwks_refresh_secs,
            "jwks_min_refetch_secs": 1,
        }],
        "rules": [
            {"path_prefix": "/admin", "resource": APP_RESOURCE, "audience": [APP_RESOURCE], "scopes": [FORBIDDEN_SCOPE]},
            {"path_prefix": "/short", "resource": SHORT_RESOURCE, "audience": [APP_RESOURCE], "scopes": [DEFAULT_SCOPE]},
        ],
        "default_rule": {"resource": APP_RESOURCE, "audience": [APP_RESOURCE], "scopes": [DEFAULT_SCOPE]},
        "exchange": {"cluster": envoy::EXCHANGE_CLUSTER, "path": "/token", "timeout_ms": 3000},
        "retry_after_secs": 1,
        // Serve cached tokens until 1 s before they expire (short-lived test tokens).
        "cache": {"expiry_margin_secs": 1},
    });
    if mode == "CLIENT" {
        // The app-facing listener is plain HTTP (no local certificate), so the filter
        // derives its own identity from Istio-style node metadata (NAMESPACE,
        // SERVICE_ACCOUNT) in this trust domain, as it does in an Istio sidecar.
        cfg["own_identity"] = json!({"trust_domain": TRUST_DOMAIN});
    }
    cfg
}

/// The exchange service's configuration (exchange-svc/README.md) as JSON.
pub fn exchange_config(
    port: u16,
    svid_jwks_port: u16,
    bao: &OpenBao,
    store_url: &str,
    o: &Options,
) -> Value {
    let id = |sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}");
    json!({
        "server": {
            "listen": format!("127.0.0.1:{port}"),
            "retry_after_secs": 1,
            "jwks_max_age_secs": o.jwt_authn_cache_secs,
            "shutdown_grace_secs": 2,
        },
        "token": {
            "issuer": format!("http://127.0.0.1:{port}"),
            "participant_claim": PARTICIPANT_CLAIM,
            "max_ttl_secs": 3600,
        },
        "store": {"url": store_url},
        "log": {"level": "info"},
        "vault": {
            "address": bao.addr(),
            "auth": {"method": "token", "token": bao.root_token()},
            "key_name": TRANSIT_KEY,
            "publish_lead": format!("{}s", o.publish_lead_secs),
            "key_refresh_interval": format!("{}s", o.key_refresh_secs),
            "request_timeout": "2s",
        },
        "issuers": [{
            "issuer": SVID_ISSUER,
            "audiences": [SVID_AUDIENCE],
            "trust_domains": [TRUST_DOMAIN],
            "jwks_url": format!("http://127.0.0.1:{svid_jwks_port}/.well-known/jwks.json"),
            "refresh_secs": o.svid_jwks_refresh_secs,
            "min_refetch_secs": 1,
        }],
        // The echo workload's sidecar (SERVER mode) exchanges on behalf of its peers.
        "mappings": [
            {"name": "frontend-echo", "subject": id("frontend"), "resource": APP_RESOURCE,
             "participant": "acme", "audiences": [APP_RESOURCE],
             "scopes": ["orders.read", "orders.write"], "ttl_secs": 600,
             "allowed_callers": [id("echo")]},
            {"name": "frontend-echo-short", "subject": id("frontend"), "resource": SHORT_RESOURCE,
             "participant": "acme", "audiences": [APP_RESOURCE],
             "scopes": ["orders.read"], "ttl_secs": SHORT_TTL_SECS,
             "allowed_callers": [id("echo")]},
            {"name": "reporting-echo", "subject": id("reporting"), "resource": APP_RESOURCE,
             "participant": "globex", "audiences": [APP_RESOURCE],
             "scopes": ["orders.read"], "ttl_secs": 600,
             "allowed_callers": [id("echo")]},
        ],
        "scope_claims": [
            {"resource": APP_RESOURCE, "scope": "orders.read", "claims": {SCOPE_CLAIM.0: SCOPE_CLAIM.1}},
        ],
    })
}

/// Points a sidecar's exchange cluster at the service's TLS port, presenting the
/// sidecar's SVID and verifying the service's.
pub(super) fn exchange_over_mtls(
    bootstrap: &mut Value,
    port: u16,
    svid: &crate::ca::SvidFiles,
    ca_bundle: &Path,
    service_id: &str,
) -> Result<()> {
    let cluster = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == envoy::EXCHANGE_CLUSTER))
        .ok_or_else(|| anyhow!("no {} cluster", envoy::EXCHANGE_CLUSTER))?;
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = json!(port);
    cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": svid.cert.display().to_string()},
                    "private_key": {"filename": svid.key.display().to_string()},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": ca_bundle.display().to_string()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": service_id}}
                    ],
                },
            },
        },
    });
    Ok(())
}

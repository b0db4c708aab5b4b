//! Envoy sidecar configurations (built as JSON values, rendered as YAML); the Envoy
//! process itself is `meshpass_testkit::Envoy` (admin listener added by the launcher).
//!
//! Two sidecars, like two pods of a mesh:
//!
//! * the **client sidecar** fronts the calling app. Listener `outbound_exchange` (plain
//!   HTTP from the app) runs the meshpass filter in `CLIENT` mode and forwards over mTLS,
//!   with the client's X.509-SVID, to the server sidecar's `inbound_exchanged` listener.
//!   Listener `outbound_plain` runs no meshpass filter: it forwards the app's JWT-SVID
//!   untouched over mTLS to the server sidecar's `inbound_mesh` listener, choosing which
//!   X.509-SVID to present from the `x-e2e-identity` request header (so tests can speak
//!   as several workloads, including one whose certificate does not match its token).
//! * the **server sidecar** terminates mTLS (client certificate required, issued by the
//!   test CA). `inbound_mesh` runs the meshpass filter in `SERVER` mode (bound to the
//!   peer certificate), then `jwt_authn`, then the router to the echo app.
//!   `inbound_exchanged` runs only `jwt_authn` and the router: requests arriving there
//!   were already exchanged by the caller's sidecar, and a `SERVER` filter would
//!   otherwise try to exchange a participant token as if it were a JWT-SVID. Keeping
//!   the two modes on separate listeners mirrors a mesh where each hop is exchanged
//!   exactly once, by whichever side owns the exchange for that route.
//!
//! Both sidecars run the filter with the same plugin configuration apart from `mode`
//! (and its identity source); it reaches the exchange service through the cluster
//! [`EXCHANGE_CLUSTER`] and the JWT-SVID issuer's JWKS through [`SVID_JWKS_CLUSTER`].

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::ca::SvidFiles;
use crate::yaml::to_yaml;

/// Cluster the meshpass filter uses for `POST /token`.
pub const EXCHANGE_CLUSTER: &str = "meshpass_exchange";
/// Cluster `jwt_authn` uses to fetch the exchange service's JWKS.
pub const EXCHANGE_JWKS_CLUSTER: &str = "meshpass_exchange_jwks";
/// Cluster the meshpass filter uses to fetch the JWT-SVID issuer's JWKS.
pub const SVID_JWKS_CLUSTER: &str = "jwt_svid_jwks";
/// Cluster the server sidecar routes to: the echo app.
pub const APP_CLUSTER: &str = "echo_app";
/// Header on the client sidecar's `outbound_plain` listener naming which X.509-SVID to
/// present upstream (removed before forwarding).
pub const IDENTITY_HEADER: &str = "x-e2e-identity";

/// The meshpass wasm filter as configured in one sidecar.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    /// The `.wasm` file.
    pub wasm_path: PathBuf,
    /// The plugin configuration (filter/README.md), passed as a JSON string.
    pub plugin_config: Value,
    /// `root_id` of the plugin.
    pub root_id: String,
}

/// `jwt_authn` settings on the server sidecar: verifies participant tokens with the
/// exchange service's published JWKS.
#[derive(Clone, Debug)]
pub struct JwtAuthn {
    /// The exchange service's `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: any).
    pub audiences: Vec<String>,
    /// Full JWKS URL (`http://127.0.0.1:PORT/.well-known/jwks.json`).
    pub jwks_uri: String,
    /// How long Envoy caches the JWKS.
    pub cache_duration_secs: u64,
}

/// One X.509-SVID the client sidecar can present on `outbound_plain`.
#[derive(Clone, Debug)]
pub struct UpstreamIdentity {
    /// Value of [`IDENTITY_HEADER`] selecting it (the first one is the default).
    pub name: String,
    /// Its certificate and key files.
    pub svid: SvidFiles,
}

/// Inputs of the server sidecar config.
#[derive(Clone, Debug)]
pub struct ServerSidecar {
    /// `inbound_mesh` (filter SERVER + jwt_authn) port.
    pub mesh_port: u16,
    /// `inbound_exchanged` (jwt_authn only) port.
    pub exchanged_port: u16,
    /// The server's own SVID.
    pub svid: SvidFiles,
    /// The trust bundle (CA PEM file).
    pub ca_bundle: PathBuf,
    /// Trust domain whose peers the TLS layer accepts.
    pub trust_domain: String,
    /// The meshpass filter in SERVER mode (`None`: mTLS + `jwt_authn` only, which is
    /// how the configs are checked before the filter is built).
    pub filter: Option<WasmFilter>,
    /// `jwt_authn` settings.
    pub jwt_authn: JwtAuthn,
    /// The echo app's port.
    pub app_port: u16,
    /// The exchange service's port (token endpoint and JWKS).
    pub exchange_port: u16,
    /// The JWT-SVID issuer's JWKS port.
    pub svid_jwks_port: u16,
}

/// Inputs of the client sidecar config.
#[derive(Clone, Debug)]
pub struct ClientSidecar {
    /// `outbound_exchange` (filter CLIENT) port.
    pub exchange_port_listener: u16,
    /// `outbound_plain` (no filter) port.
    pub plain_port: u16,
    /// The client's own SVID (used towards `inbound_exchanged`).
    pub svid: SvidFiles,
    /// SVIDs selectable on `outbound_plain` (first = default).
    pub identities: Vec<UpstreamIdentity>,
    /// The trust bundle.
    pub ca_bundle: PathBuf,
    /// The SPIFFE ID the server sidecar must present.
    pub server_spiffe_id: String,
    /// The server sidecar's `inbound_mesh` port.
    pub server_mesh_port: u16,
    /// The server sidecar's `inbound_exchanged` port.
    pub server_exchanged_port: u16,
    /// The meshpass filter in CLIENT mode (`None`: plain forwarding).
    pub filter: Option<WasmFilter>,
    /// Node metadata (Istio-style `NAMESPACE`, `SERVICE_ACCOUNT`, `WORKLOAD_IDENTITY`...).
    pub node_metadata: Value,
    /// The exchange service's port.
    pub exchange_port: u16,
    /// The JWT-SVID issuer's JWKS port.
    pub svid_jwks_port: u16,
}

fn socket(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn plain_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": socket(port)}}
        ]}]},
    })
}

fn cert_pair(svid: &SvidFiles) -> Value {
    json!({
        "certificate_chain": {"filename": svid.cert.display().to_string()},
        "private_key": {"filename": svid.key.display().to_string()},
    })
}

fn mtls_cluster(name: &str, port: u16, svid: &SvidFiles, ca: &Path, server_id: &str) -> Value {
    let mut c = plain_cluster(name, port);
    c["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [cert_pair(svid)],
                "validation_context": {
                    "trusted_ca": {"filename": ca.display().to_string()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": server_id}}
                    ],
                },
            },
        },
    });
    c
}

fn downstream_mtls(svid: &SvidFiles, ca: &Path, trust_domain: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [cert_pair(svid)],
                "validation_context": {
                    "trusted_ca": {"filename": ca.display().to_string()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": format!("spiffe://{trust_domain}/")}}
                    ],
                },
            },
        },
    })
}

/// The `envoy.filters.http.wasm` entry for the meshpass filter.
pub fn wasm_http_filter(f: &WasmFilter) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "meshpass",
                "root_id": f.root_id,
                "fail_open": false,
                "vm_config": {
                    "vm_id": "meshpass",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": f.wasm_path.display().to_string()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": f.plugin_config.to_string(),
                },
            },
        },
    })
}

/// The `jwt_authn` filter entry requiring a participant token on every route.
pub fn jwt_authn_http_filter(j: &JwtAuthn) -> Value {
    let mut provider = json!({
        "issuer": j.issuer,
        // Keep the token in Authorization: the app must see it.
        "forward": true,
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        "remote_jwks": {
            "http_uri": {"uri": j.jwks_uri, "cluster": EXCHANGE_JWKS_CLUSTER, "timeout": "5s"},
            "cache_duration": format!("{}s", j.cache_duration_secs),
            "async_fetch": {"fast_listener": false, "failed_refetch_duration": "1s"},
            "retry_policy": {"num_retries": 3, "retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}},
        },
        "payload_in_metadata": "participant",
    });
    if !j.audiences.is_empty() {
        provider["audiences"] = json!(j.audiences);
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"meshpass": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "meshpass"}}],
        },
    })
}

fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

fn hcm(stat_prefix: &str, http_filters: Vec<Value>, routes: Vec<Value>, xfcc: bool) -> Value {
    let mut cfg = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "http_filters": http_filters,
        "route_config": {
            "name": stat_prefix,
            "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
        },
    });
    if xfcc {
        // The app learns the caller's SPIFFE ID the way Istio apps do.
        cfg["forward_client_cert_details"] = json!("SANITIZE_SET");
        cfg["set_current_client_cert_details"] = json!({"uri": true});
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg})
}

fn route_to(cluster: &str) -> Value {
    json!({"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "15s"}})
}

fn listener(name: &str, port: u16, hcm: Value, tls: Option<Value>) -> Value {
    let mut chain = json!({"filters": [hcm]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    json!({"name": name, "address": socket(port), "filter_chains": [chain]})
}

/// The server sidecar's bootstrap.
pub fn server_sidecar_config(s: &ServerSidecar) -> Value {
    let tls = || downstream_mtls(&s.svid, &s.ca_bundle, &s.trust_domain);
    let mesh = listener(
        "inbound_mesh",
        s.mesh_port,
        hcm(
            "inbound_mesh",
            s.filter
                .iter()
                .map(wasm_http_filter)
                .chain([jwt_authn_http_filter(&s.jwt_authn), router_filter()])
                .collect(),
            vec![route_to(APP_CLUSTER)],
            true,
        ),
        Some(tls()),
    );
    let exchanged = listener(
        "inbound_exchanged",
        s.exchanged_port,
        hcm(
            "inbound_exchanged",
            vec![jwt_authn_http_filter(&s.jwt_authn), router_filter()],
            vec![route_to(APP_CLUSTER)],
            true,
        ),
        Some(tls()),
    );
    json!({
        "node": {"id": "server-sidecar", "cluster": "e2e"},
        "static_resources": {
            "listeners": [mesh, exchanged],
            "clusters": [
                plain_cluster(APP_CLUSTER, s.app_port),
                plain_cluster(EXCHANGE_CLUSTER, s.exchange_port),
                plain_cluster(EXCHANGE_JWKS_CLUSTER, s.exchange_port),
                plain_cluster(SVID_JWKS_CLUSTER, s.svid_jwks_port),
            ],
        },
    })
}

fn identity_cluster_name(name: &str) -> String {
    format!("server_mesh_as_{name}")
}

/// The client sidecar's bootstrap.
pub fn client_sidecar_config(c: &ClientSidecar) -> Value {
    let exchange = listener(
        "outbound_exchange",
        c.exchange_port_listener,
        hcm(
            "outbound_exchange",
            c.filter
                .iter()
                .map(wasm_http_filter)
                .chain([router_filter()])
                .collect(),
            vec![route_to("server_exchanged")],
            false,
        ),
        None,
    );
    let mut plain_routes: Vec<Value> = c
        .identities
        .iter()
        .map(|id| {
            json!({
                "match": {"prefix": "/", "headers": [
                    {"name": IDENTITY_HEADER, "string_match": {"exact": id.name}}
                ]},
                "route": {"cluster": identity_cluster_name(&id.name), "timeout": "15s"},
                "request_headers_to_remove": [IDENTITY_HEADER],
            })
        })
        .collect();
    if let Some(first) = c.identities.first() {
        plain_routes.push(route_to(&identity_cluster_name(&first.name)));
    }
    let plain = listener(
        "outbound_plain",
        c.plain_port,
        hcm("outbound_plain", vec![router_filter()], plain_routes, false),
        None,
    );
    let mut clusters = vec![
        mtls_cluster(
            "server_exchanged",
            c.server_exchanged_port,
            &c.svid,
            &c.ca_bundle,
            &c.server_spiffe_id,
        ),
        plain_cluster(EXCHANGE_CLUSTER, c.exchange_port),
        plain_cluster(SVID_JWKS_CLUSTER, c.svid_jwks_port),
    ];
    for id in &c.identities {
        clusters.push(mtls_cluster(
            &identity_cluster_name(&id.name),
            c.server_mesh_port,
            &id.svid,
            &c.ca_bundle,
            &c.server_spiffe_id,
        ));
    }
    json!({
        "node": {"id": "client-sidecar", "cluster": "e2e", "metadata": c.node_metadata},
        "static_resources": {"listeners": [exchange, plain], "clusters": clusters},
    })
}

/// The bootstrap as YAML for `meshpass_testkit::Envoy::start_with`.
pub fn yaml(config: &Value) -> String {
    to_yaml(config)
}

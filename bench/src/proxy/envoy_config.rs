//! The Envoy bootstrap of the proxy-overhead section: one listener per row (each a
//! direct response behind the row's filter chain), the upstream-check listeners, and the
//! clusters of the bare servers they call.

use serde_json::{json, Value};
use std::path::Path;

use super::{Options, Row};
use crate::stack::RESOURCE;
use crate::tokens::{AUDIENCE, ISSUER, SUBJECT};

fn router_filter() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn listener(name: &str, filters: Vec<Value>) -> Value {
    let mut chain = filters;
    chain.push(router_filter());
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": chain}}]}],
    })
}

fn wasm_filter(vm: &str, code: &Path, config: Option<&Value>) -> Value {
    let mut c = json!({
        "name": vm, "root_id": vm,
        "vm_config": {"vm_id": vm, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": code.display().to_string()}}},
    });
    if let Some(cfg) = config {
        // A JSON string is passed as it is (the floor filter's `map`), anything else as JSON.
        let value = match cfg {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        c["configuration"] = json!({"@type": "type.googleapis.com/google.protobuf.StringValue",
                                    "value": value});
    }
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": c}})
}

fn jwt_filter(jwks: &str, cache: bool) -> Value {
    let mut p = json!({"issuer": ISSUER, "audiences": [AUDIENCE],
                       "local_jwks": {"inline_string": jwks}, "forward": true});
    if cache {
        p["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"p": p}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}})
}

fn cluster(name: &str, port: u16) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
}

/// The meshpass filter's configuration (filter/README.md): CLIENT mode, defaults
/// otherwise (header hygiene on).
fn meshpass_config(jwks: &str) -> Value {
    json!({
        "mode": "CLIENT",
        "own_identity": {"spiffe_id": SUBJECT},
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "trust_domains": ["cluster.local"], "jwks": jwks}],
        "exchange": {"cluster": "exchange", "authority": "exchange.bench"},
        "default_rule": {"resource": RESOURCE, "scopes": ["read"]},
    })
}

fn ext_authz_http(authz_port: u16) -> Value {
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "http_service": {
            "server_uri": {"uri": format!("http://127.0.0.1:{authz_port}"), "cluster": "authz", "timeout": "1s"},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "authorization"}]}}}}})
}

fn ext_authz_grpc() -> Value {
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz_grpc"}, "timeout": "1s"}}})
}

/// Ports of the bare servers an Envoy bootstrap points at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Upstreams {
    /// The exchange service (0: none).
    pub exchange: u16,
    /// The HTTP authorizer.
    pub authz: u16,
    /// The gRPC authorizer.
    pub authz_grpc: u16,
    /// The upstream that echoes the `authorization` it received (0: none).
    pub echo: u16,
}

/// The listener that sends what an `ext_authz` or floor row lets through to the echoing
/// upstream (not measured: it proves the header the row's filter writes reaches the
/// upstream, so no row is an empty filter in disguise).
pub fn upstream_check_name(row: Row) -> String {
    format!("{}_upstream", row.name())
}

/// The Envoy bootstrap (JSON, which is YAML) with one listener per row.
pub fn envoy_config(o: &Options, jwks: &str, up: Upstreams) -> Value {
    let mesh = meshpass_config(jwks);
    let mut listeners = Vec::new();
    for row in &o.rows {
        let filters = match row {
            Row::Router => vec![],
            Row::JwtAuthn => vec![jwt_filter(jwks, false)],
            Row::JwtAuthnCache => vec![jwt_filter(jwks, true)],
            Row::NoopWasm => vec![wasm_filter("noop", &o.noop_wasm, None)],
            Row::FloorMap => vec![wasm_filter("floor_map", &o.floor_wasm, Some(&json!("map")))],
            Row::FloorOne => vec![wasm_filter("floor_one", &o.floor_wasm, Some(&json!("one")))],
            Row::ExtAuthzHttp => vec![ext_authz_http(up.authz)],
            Row::ExtAuthzGrpc => vec![ext_authz_grpc()],
            // Separate VMs (and so separate shared data) for the hit and the miss rows.
            Row::MeshpassHit => vec![wasm_filter("meshpass_hit", &o.filter_wasm, Some(&mesh))],
            Row::MeshpassHitBaseline => match &o.baseline_wasm {
                Some(b) => vec![wasm_filter("meshpass_base", b, Some(&mesh))],
                None => continue,
            },
            Row::MeshpassMiss => vec![wasm_filter("meshpass_miss", &o.filter_wasm, Some(&mesh))],
        };
        if row.writes_fixed_authorization().is_some() && up.echo != 0 {
            let mut check = listener(&upstream_check_name(*row), filters.clone());
            let route = &mut check["filter_chains"][0]["filters"][0]["typed_config"]
                ["route_config"]["virtual_hosts"][0]["routes"][0];
            route["route"] = json!({"cluster": "echo"});
            if let Some(r) = route.as_object_mut() {
                r.remove("direct_response");
            }
            listeners.push(check);
        }
        listeners.push(listener(row.name(), filters));
    }
    let mut grpc = cluster("authz_grpc", up.authz_grpc);
    grpc["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    let mut clusters = vec![cluster("authz", up.authz), grpc];
    for (name, port) in [("exchange", up.exchange), ("echo", up.echo)] {
        if port != 0 {
            clusters.push(cluster(name, port));
        }
    }
    json!({"static_resources": {"listeners": listeners, "clusters": clusters}})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section's options for `rows`, with stand-in module paths.
    fn options(rows: Vec<Row>) -> Options {
        Options {
            rows,
            reps: 1,
            secs: 1.0,
            connections: 1,
            filter_wasm: "/f.wasm".into(),
            noop_wasm: "/n.wasm".into(),
            floor_wasm: "/fl.wasm".into(),
            baseline_wasm: None,
            miss_rate_bound: 1.0,
            profile: vec![],
            profile_dir: "/tmp".into(),
            instructions: crate::instructions::Options::none(),
        }
    }

    #[test]
    fn every_row_gets_its_own_listener_and_the_baseline_only_when_given() {
        let o = options(vec![
            Row::Router,
            Row::NoopWasm,
            Row::MeshpassHit,
            Row::MeshpassHitBaseline,
        ]);
        let cfg = envoy_config(
            &o,
            "{}",
            Upstreams {
                exchange: 1,
                authz: 2,
                authz_grpc: 3,
                echo: 4,
            },
        );
        let names: Vec<&str> = cfg["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["router", "noop_wasm", "meshpass_hit"]);
        let text = cfg.to_string();
        assert!(text.contains("/n.wasm") && text.contains("/f.wasm"));
    }

    #[test]
    fn each_ext_authz_row_gets_a_twin_listener_routed_to_the_echo_upstream_and_grpc_speaks_http2() {
        let o = options(vec![Row::Router, Row::ExtAuthzHttp, Row::ExtAuthzGrpc]);
        let up = Upstreams {
            exchange: 0,
            authz: 2,
            authz_grpc: 3,
            echo: 4,
        };
        let cfg = envoy_config(&o, "{}", up);
        let listeners = cfg["static_resources"]["listeners"].as_array().unwrap();
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "router",
                "ext_authz_http_upstream",
                "ext_authz_http",
                "ext_authz_grpc_upstream",
                "ext_authz_grpc"
            ]
        );
        let route = |i: usize| {
            listeners[i]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                ["virtual_hosts"][0]["routes"][0]
                .clone()
        };
        assert_eq!(route(3)["route"]["cluster"], "echo");
        assert!(route(3).get("direct_response").is_none());
        assert!(route(4).get("direct_response").is_some());
        let clusters = cfg["static_resources"]["clusters"].as_array().unwrap();
        let grpc = clusters.iter().find(|c| c["name"] == "authz_grpc").unwrap();
        assert!(grpc.to_string().contains("http2_protocol_options"));
        assert!(clusters.iter().any(|c| c["name"] == "echo"));
        assert!(!clusters.iter().any(|c| c["name"] == "exchange"));
    }
}

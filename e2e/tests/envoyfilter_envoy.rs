//! The EnvoyFilters under `istio/` applied the way istiod applies them to an Istio-like
//! sidecar configuration (an inbound listener with its HTTP connection manager, the
//! `inbound|PORT||` and `outbound|PORT||HOST` clusters, the `xds-grpc` ADS cluster), then
//! handed to the real Envoy in `--mode validate`:
//! - as delivered: the HTTP filter patch refers to the extension config over ECDS (ADS);
//! - as resolved: the extension config istio-agent serves after pulling the OCI image,
//!   i.e. the same Wasm config with `remote` replaced by the local `.wasm` file. Envoy
//!   then loads the module and runs its `on_configure` on the pluginConfig.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::path::{Path, PathBuf};
use std::process::Command;

use manifests::{manifests, root};
use serde_json::{json, Value};

const EXCHANGE_CLUSTER: &str = "outbound|8080||meshpass-exchange.meshpass.svc.cluster.local";

fn wasm() -> PathBuf {
    let p = std::env::var("MESHPASS_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/wasm32-wasip1/wasm-release/meshpass_filter.wasm"));
    assert!(p.exists(), "{} is missing: make wasm", p.display());
    p
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    })
}

/// What istiod generates for a sidecar, reduced to the parts the patches touch.
fn sidecar() -> Value {
    let xds = {
        let mut c = static_cluster("xds-grpc", 15012);
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
        c
    };
    json!({
        "node": {"id": "sidecar~10.0.0.1~echo-1.demo~demo.svc.cluster.local", "cluster": "echo.demo"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "clusters": [xds, static_cluster("inbound|8080||", 8080), static_cluster(EXCHANGE_CLUSTER, 18080)],
            "listeners": [{
                "name": "virtualInbound",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                "traffic_direction": "INBOUND",
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound_0.0.0.0_8080",
                        "route_config": {"name": "inbound|8080||", "virtual_hosts": [{"name": "inbound|http|8080", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||"}}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }]
        }
    })
}

/// Applies an EnvoyFilter's patches as istiod does (the operations the project uses;
/// anything else fails the test). Returns the extension configs it adds (ECDS).
fn apply(config: &mut Value, filter: &Value) -> Vec<Value> {
    let mut extensions = Vec::new();
    for p in filter["spec"]["configPatches"].as_array().unwrap() {
        let (op, value) = (
            p["patch"]["operation"].as_str().unwrap(),
            p["patch"]["value"].clone(),
        );
        match (p["applyTo"].as_str().unwrap(), op) {
            ("CLUSTER", "ADD") => config["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap()
                .push(value),
            ("EXTENSION_CONFIG", "ADD") => extensions.push(value),
            ("HTTP_FILTER", _) => {
                assert_eq!(
                    p["match"]["context"], "SIDECAR_INBOUND",
                    "only inbound patches are modelled"
                );
                let chain = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]
                    ["filters"][0];
                assert_eq!(
                    chain["name"],
                    p["match"]["listener"]["filterChain"]["filter"]["name"]
                );
                let filters = chain["typed_config"]["http_filters"]
                    .as_array_mut()
                    .unwrap();
                let sub = &p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"];
                let at = |fs: &Vec<Value>| {
                    fs.iter()
                        .position(|f| &f["name"] == sub)
                        .unwrap_or_else(|| panic!("no {sub}"))
                };
                match op {
                    "INSERT_FIRST" => filters.insert(0, value),
                    "INSERT_BEFORE" => filters.insert(at(filters), value),
                    "INSERT_AFTER" => filters.insert(at(filters) + 1, value),
                    other => panic!("HTTP_FILTER {other} is not modelled"),
                }
            }
            other => panic!("patch {other:?} is not modelled"),
        }
    }
    extensions
}

/// The pod mounts the cluster CA at the path the kube-JWKS cluster names; here a real CA
/// file stands in, since Envoy reads it while validating.
fn mount_files(config: &mut Value, dir: &Path) {
    let ca =
        rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()]).unwrap();
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    for c in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        let tc = c.pointer_mut(
            "/transport_socket/typed_config/common_tls_context/validation_context/trusted_ca",
        );
        if let Some(tc) = tc {
            let f = tc["filename"].as_str().unwrap();
            assert!(f.starts_with("/etc/meshpass/"), "{f}: not the mounted CA");
            *tc = json!({"filename": ca_path.display().to_string()});
        }
    }
}

/// `envoy --mode validate`: Ok, or Envoy's complaint.
fn validate(config: &Value, dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let out = Command::new(meshpass_testkit::envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run Envoy: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn meshpass_envoyfilters() -> (Value, Value) {
    let all = manifests();
    let get = |name: &str| {
        all.iter()
            .find(|(_, d)| d["kind"] == "EnvoyFilter" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("EnvoyFilter {name}"))
            .1
            .clone()
    };
    (get("meshpass-kube-jwks"), get("meshpass-inbound-wasm"))
}

/// The sidecar with both EnvoyFilters applied; the filter refers to its config over ECDS.
fn patched(dir: &Path) -> (Value, Value) {
    let (kube_jwks, wasm_filter) = meshpass_envoyfilters();
    let mut config = sidecar();
    assert!(apply(&mut config, &kube_jwks).is_empty());
    let ext = apply(&mut config, &wasm_filter);
    assert_eq!(ext.len(), 1);
    mount_files(&mut config, dir);
    (config, ext[0].clone())
}

/// The same sidecar once istio-agent has pulled the module: the extension config inline,
/// its code a local file.
fn resolved(mut config: Value, ext: &Value, wasm: &Path) -> Value {
    let mut typed = ext["typed_config"].clone();
    let code = &mut typed["config"]["vm_config"]["code"];
    assert!(code["remote"]["http_uri"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("oci://"));
    *code = json!({"local": {"filename": wasm.display().to_string()}});
    let filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
        .unwrap();
    let slot = filters
        .iter_mut()
        .find(|f| f["name"] == ext["name"])
        .unwrap();
    *slot = json!({"name": ext["name"], "typed_config": typed});
    config
}

#[test]
fn the_envoyfilter_patches_are_accepted_by_envoy_as_istio_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let (config, ext) = patched(dir.path());
    let filters = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    assert_eq!(filters[0]["name"], ext["name"], "meshpass runs first");
    assert!(filters[0]["config_discovery"].is_object());
    if let Err(e) = validate(&config, dir.path(), "ecds") {
        panic!("Envoy refuses the patched sidecar config:\n{e}");
    }
}

#[test]
fn the_resolved_wasm_extension_config_with_the_built_module_is_accepted_by_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let (config, ext) = patched(dir.path());
    let config = resolved(config, &ext, &wasm());
    if let Err(e) = validate(&config, dir.path(), "resolved") {
        panic!("Envoy refuses the resolved Wasm filter:\n{e}");
    }
}

#[test]
fn envoy_validation_refuses_a_broken_patch() {
    // Proves the two tests above can fail: the same patch with a misspelt field.
    let dir = tempfile::tempdir().unwrap();
    let (config, mut ext) = patched(dir.path());
    ext["typed_config"]["config"]["vm_config"]["runtimee"] = json!("envoy.wasm.runtime.v8");
    let config = resolved(config, &ext, &wasm());
    let err = validate(&config, dir.path(), "broken").unwrap_err();
    assert!(
        err.contains("runtimee"),
        "refused for another reason:\n{err}"
    );
}

#[test]
fn envoy_validation_loads_the_module_and_runs_its_configuration_check() {
    // Validation instantiates the VM and calls the filter's on_configure with the
    // pluginConfig: a config the filter refuses fails validation, naming the field.
    let dir = tempfile::tempdir().unwrap();
    let (config, mut ext) = patched(dir.path());
    let cfg = &mut ext["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: Value = serde_json::from_str(cfg.as_str().unwrap()).unwrap();
    plugin["mode"] = json!("BOGUS");
    *cfg = json!(plugin.to_string());
    let config = resolved(config, &ext, &wasm());
    let err = validate(&config, dir.path(), "bad-plugin-config").unwrap_err();
    assert!(
        err.contains("invalid configuration: mode"),
        "refused for another reason:\n{err}"
    );
}

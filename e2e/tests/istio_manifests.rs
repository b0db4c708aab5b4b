//! Every manifest under `istio/` is checked the way a cluster and the components would
//! check it: Istio kinds against the `openAPIV3Schema` of their CRD (with unknown fields
//! refused, since the API server would silently prune them), the CEL rules that matter,
//! each `pluginConfig` with the filter's own parser, the ConfigMap's `exchange.toml` with
//! the exchange service's loader, and the names that tie the pieces together.

// Test helpers outside #[test] fns panic on purpose: a panic is a failed check here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn crd_file() -> PathBuf {
    if let Ok(p) = std::env::var("MESHPASS_ISTIO_CRDS") {
        return PathBuf::from(p);
    }
    let p = root().join("e2e/vendor/istio/customresourcedefinitions.gen.yaml");
    assert!(
        p.exists(),
        "Istio CRD schemas not found at {} (set MESHPASS_ISTIO_CRDS)",
        p.display()
    );
    p
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every manifest under istio/, with the file it came from.
fn manifests() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("istio")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                for doc in yaml_docs(&p) {
                    out.push((p.clone(), doc));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 10,
        "expected the istio/ manifests, found {}",
        out.len()
    );
    out
}

/// (group/version, kind) → the CRD's openAPIV3Schema.
fn crd_schemas() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for crd in yaml_docs(&crd_file()) {
        if crd["kind"] != "CustomResourceDefinition" {
            continue;
        }
        let group = crd["spec"]["group"].as_str().unwrap().to_string();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let api = format!("{group}/{}", v["name"].as_str().unwrap());
            out.insert((api, kind.clone()), v["schema"]["openAPIV3Schema"].clone());
        }
    }
    out
}

/// Kubernetes prunes fields a structural schema does not list; a typo would vanish
/// silently. Refuse them instead, except where the schema preserves unknown fields.
/// `nullable` is OpenAPI, not JSON Schema: allow null there.
fn strict(schema: &mut Value) {
    if let Value::Object(m) = schema {
        let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if m.contains_key("properties") && !preserve && !m.contains_key("additionalProperties") {
            m.insert("additionalProperties".into(), json!(false));
        }
        if m.remove("nullable") == Some(json!(true)) {
            if let Some(Value::String(t)) = m.get("type").cloned() {
                m.insert("type".into(), json!([t, "null"]));
            }
        }
        for v in m.values_mut() {
            strict(v);
        }
    } else if let Value::Array(a) = schema {
        for v in a {
            strict(v);
        }
    }
}

fn istio_kind(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|a| a.contains("istio.io/"))
}

#[test]
fn every_istio_manifest_validates_against_its_crd_schema_with_unknown_fields_refused() {
    let schemas = crd_schemas();
    let mut checked = 0;
    for (path, doc) in manifests() {
        let name = doc["metadata"]["name"].as_str().unwrap_or("");
        assert!(
            !name.is_empty(),
            "{}: metadata.name is missing",
            path.display()
        );
        if !istio_kind(&doc) {
            continue;
        }
        let key = (
            doc["apiVersion"].as_str().unwrap().to_string(),
            doc["kind"].as_str().unwrap().to_string(),
        );
        let schema = schemas
            .get(&key)
            .unwrap_or_else(|| panic!("{}: no CRD serves {key:?}", path.display()));
        let mut spec_schema = schema["properties"]["spec"].clone();
        strict(&mut spec_schema);
        let validator = jsonschema::validator_for(&spec_schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc["spec"])
            .map(|e| format!("{} at spec{}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} ({} {name}) does not fit its CRD schema:\n{}",
            path.display(),
            key.1,
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} Istio resources were checked");
}

#[test]
fn the_schema_check_refuses_a_misspelt_field_and_a_bad_enum() {
    // Proves the check above can fail: the same CRD schema with two mistakes.
    let schemas = crd_schemas();
    let mut schema = schemas[&(
        "extensions.istio.io/v1alpha1".to_string(),
        "WasmPlugin".to_string(),
    )]["properties"]["spec"]
        .clone();
    strict(&mut schema);
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(&json!({"url": "oci://x/y:1", "phase": "AUTHN"})));
    assert!(!v.is_valid(&json!({"url": "oci://x/y:1", "phaze": "AUTHN"})));
    assert!(!v.is_valid(&json!({"url": "oci://x/y:1", "phase": "FIRST"})));
}

#[test]
fn wasm_extensions_follow_the_crd_cel_rules() {
    for (path, doc) in manifests() {
        let kind = doc["kind"].as_str().unwrap_or("");
        if kind != "WasmPlugin" && kind != "TrafficExtension" {
            continue;
        }
        let spec = &doc["spec"];
        assert!(
            spec.get("selector").is_none() || spec.get("targetRefs").is_none(),
            "{}: only one of targetRefs or selector can be set",
            path.display()
        );
        if kind == "TrafficExtension" {
            assert!(
                spec.get("wasm").is_some() != spec.get("lua").is_some(),
                "{}: exactly one of wasm or lua must be set",
                path.display()
            );
        }
        for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
            assert!(!k.contains('*') && !v.as_str().unwrap().contains('*'));
        }
        let wasm = if kind == "WasmPlugin" {
            spec
        } else {
            &spec["wasm"]
        };
        assert_eq!(
            wasm["failStrategy"],
            "FAIL_CLOSE",
            "{}: the filter must fail closed",
            path.display()
        );
    }
}

fn plugin_configs() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .filter_map(|(p, d)| match d["kind"].as_str() {
            Some("WasmPlugin") => Some((p, d["spec"]["pluginConfig"].clone())),
            Some("TrafficExtension") => Some((p, d["spec"]["wasm"]["pluginConfig"].clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_plugin_config_is_accepted_by_the_filters_own_parser() {
    let configs = plugin_configs();
    assert!(configs.len() >= 3);
    for (path, cfg) in configs {
        let bytes = serde_json::to_vec(&cfg).unwrap();
        if let Err(e) = meshpass_filter::config::Config::parse(&bytes) {
            panic!(
                "{}: the filter refuses its pluginConfig: {e}",
                path.display()
            );
        }
    }
}

fn exchange_toml() -> String {
    let cm = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "meshpass-exchange")
        .expect("ConfigMap meshpass-exchange");
    cm.1["data"]["exchange.toml"].as_str().unwrap().to_string()
}

#[test]
fn the_exchange_config_map_is_accepted_by_the_services_loader() {
    assert_exchange_config_loads("istio/exchange/configmap.yaml", &exchange_toml());
}

#[test]
fn the_kind_kits_exchange_config_is_accepted_by_the_services_loader() {
    let path = root().join("e2e/kind/overlay/exchange.toml");
    // The kit's Deployment sets VAULT_TOKEN (token auth against the dev OpenBao). No other
    // test in this binary uses token auth, so setting it here cannot disturb them.
    std::env::set_var("VAULT_TOKEN", "root");
    assert_exchange_config_loads(
        "e2e/kind/overlay/exchange.toml",
        &std::fs::read_to_string(path).unwrap(),
    );
}

fn assert_exchange_config_loads(origin: &str, text: &str) {
    // The files the pod would mount (Vault CA, the service account's CA and token) are
    // checked at startup: stand them in with real ones in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: toml::Value = toml::from_str(text).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let mut mounted = 0;
    redirect_mounted_files(&mut cfg, dir.path(), &ca.cert.pem(), &mut mounted);
    assert!(
        mounted >= 2,
        "expected the mounted CA and token files, found {mounted}"
    );
    let path = dir.path().join("exchange.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    if let Err(e) = meshpass_exchange::config::Config::load(Some(&path)) {
        panic!("{origin}: the exchange service refuses it: {e}");
    }
}

fn redirect_mounted_files(v: &mut toml::Value, dir: &Path, ca_pem: &str, n: &mut usize) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let file_key = matches!(k.as_str(), "ca_cert" | "ca_file" | "bearer_token_file");
                match v {
                    toml::Value::String(s) if file_key && s.starts_with('/') => {
                        *n += 1;
                        let p = dir.join(format!("mounted-{n}"));
                        let content = if k.starts_with("ca") { ca_pem } else { "token" };
                        std::fs::write(&p, content).unwrap();
                        *s = p.display().to_string();
                    }
                    _ => redirect_mounted_files(v, dir, ca_pem, n),
                }
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                redirect_mounted_files(v, dir, ca_pem, n);
            }
        }
        _ => {}
    }
}

#[test]
fn the_pieces_name_each_other_consistently() {
    let all = manifests();
    let find = |kind: &str, name: &str| {
        all.iter()
            .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{kind} {name} is missing"))
    };
    let svc = find("Service", "meshpass-exchange");
    let deploy = find("Deployment", "meshpass-exchange");
    let ns = svc["metadata"]["namespace"].as_str().unwrap();
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    // The Service selects the Deployment's pods, in the same namespace.
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&deploy["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(deploy["metadata"]["namespace"], ns);
    // The Deployment mounts the ConfigMap where it tells the service to read it.
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(
        args,
        json!(["serve", "--config", "/etc/meshpass/exchange.toml"])
    );
    // Every filter points at that Service through Istio's outbound cluster name.
    let host = format!("meshpass-exchange.{ns}.svc.cluster.local");
    for (path, cfg) in plugin_configs() {
        assert_eq!(
            cfg["exchange"]["cluster"],
            format!("outbound|{port}||{host}"),
            "{}",
            path.display()
        );
    }
    // RequestAuthentication trusts exactly the issuer the service mints with, and its
    // JWKS URL is the service's.
    let toml: toml::Value = toml::from_str(&exchange_toml()).unwrap();
    let issuer = toml["token"]["issuer"].as_str().unwrap();
    let ra = find("RequestAuthentication", "meshpass-participant-tokens");
    let rule = &ra["spec"]["jwtRules"][0];
    assert_eq!(rule["issuer"], issuer);
    assert_eq!(
        rule["jwksUri"],
        format!("http://{host}:{port}/.well-known/jwks.json")
    );
    // The participant audiences Istio accepts are the resources the mappings grant.
    let granted: Vec<&str> = toml["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["audiences"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap())
        .collect();
    for aud in rule["audiences"].as_array().unwrap() {
        assert!(
            granted.contains(&aud.as_str().unwrap()),
            "{aud} is never granted"
        );
    }
}

#[test]
fn the_kustomization_lists_files_that_exist() {
    let k = &yaml_docs(&root().join("istio/kustomization.yaml"))[0];
    for r in k["resources"].as_array().unwrap() {
        let p = root().join("istio").join(r.as_str().unwrap());
        assert!(p.exists(), "kustomization lists missing {}", p.display());
    }
}

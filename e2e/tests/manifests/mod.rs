//! Shared by the manifest tests (`istio_manifests`, `istio_policies`, `istio_access`,
//! `envoyfilter_envoy`): reading the YAML under `istio/` and `e2e/kind/`, the vendored
//! Istio CRD schemas, a kustomize renderer for the subset the project uses, Istio's
//! AuthorizationPolicy decision (`authz.rs`), and small parsers (durations, HCL paths).

// Test support may unwrap and panic: a panic is a failed check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod authz;
pub mod kustomize;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Istio CRDs the manifests are checked against: vendored with the repository
/// (e2e/vendor/istio/README.md says which release), or `MESHPASS_ISTIO_CRDS`.
pub fn crd_file() -> PathBuf {
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

pub fn yaml_docs_str(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_docs_str(&text)
}

/// Every Kubernetes manifest (`*.yaml`, not kustomizations) under `dir`, with its file.
pub fn manifests_under(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
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
    out
}

/// Every manifest under istio/, with the file it came from.
pub fn manifests() -> Vec<(PathBuf, Value)> {
    let out = manifests_under(&root().join("istio"));
    assert!(
        out.len() >= 10,
        "expected the istio/ manifests, found {}",
        out.len()
    );
    out
}

/// The manifests the kind kit applies with `kubectl apply -f` (its overlay is rendered
/// separately).
pub fn kind_manifests() -> Vec<(PathBuf, Value)> {
    manifests_under(&root().join("e2e/kind/manifests"))
}

/// (group/version, kind) → the CRD's openAPIV3Schema.
pub fn crd_schemas() -> BTreeMap<(String, String), Value> {
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
pub fn strict(schema: &mut Value) {
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

pub fn istio_kind(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|a| a.contains("istio.io/"))
}

/// The errors of an Istio resource against its CRD's `spec` schema (unknown fields
/// refused); `Err` when no CRD serves its kind.
pub fn istio_schema_errors(
    schemas: &BTreeMap<(String, String), Value>,
    doc: &Value,
) -> Result<Vec<String>, String> {
    let key = (
        doc["apiVersion"].as_str().unwrap_or("").to_string(),
        doc["kind"].as_str().unwrap_or("").to_string(),
    );
    let schema = schemas
        .get(&key)
        .ok_or_else(|| format!("no CRD serves {key:?}"))?;
    let mut spec_schema = schema["properties"]["spec"].clone();
    strict(&mut spec_schema);
    let validator = jsonschema::validator_for(&spec_schema).unwrap();
    Ok(validator
        .iter_errors(&doc["spec"])
        .map(|e| format!("{} at spec{}", e, e.instance_path()))
        .collect())
}

/// A Go/humantime-style duration: `90s`, `25m`, `1h30m`, `250ms`, `20m0s`, or bare seconds.
pub fn duration(text: &str) -> Duration {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        assert!(digits > 0, "bad duration {text:?}");
        let n: u64 = rest[..digits].parse().unwrap();
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => panic!("bad duration unit {unit:?} in {text:?}"),
        };
    }
    total
}

/// `path "P" { capabilities = ["a", "b"] }` blocks of a Vault policy → P → capabilities.
pub fn hcl_policy(text: &str) -> BTreeMap<String, Vec<String>> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeMap::new();
    for block in body.split("path ").skip(1) {
        let path = block.split('"').nth(1).unwrap().to_string();
        let caps = block
            .split_once("capabilities")
            .unwrap()
            .1
            .split_once('[')
            .unwrap()
            .1
            .split_once(']')
            .unwrap()
            .0
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .filter(|c| !c.is_empty())
            .collect();
        assert!(out.insert(path, caps).is_none(), "a path listed twice");
    }
    out
}

/// The ConfigMap the exchange Deployment mounts as its config (volume `config`), found
/// through the Deployment's reference: kustomize names it `meshpass-exchange-<hash>`.
pub fn exchange_config_map(docs: &[Value]) -> &Value {
    let deploy = find(docs, "Deployment", "meshpass-exchange");
    let name = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .expect("the exchange Deployment's `config` volume")["configMap"]["name"]
        .as_str()
        .expect("the `config` volume is a ConfigMap");
    docs.iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"] == deploy["metadata"]["namespace"]
        })
        .unwrap_or_else(|| {
            panic!("the exchange Deployment mounts ConfigMap {name}, which is missing")
        })
}

/// The `exchange.toml` of a rendered kustomization (the ConfigMap the Deployment mounts).
pub fn exchange_toml_of(docs: &[Value]) -> toml::Value {
    toml::from_str(
        exchange_config_map(docs)["data"]["exchange.toml"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is missing"))
}

/// Does a `matchLabels` selector select a pod with these labels?
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
}

/// `istio/base`, rendered.
pub fn base_docs() -> Vec<Value> {
    kustomize::render(&root().join("istio/base"))
}

/// What the kind kit applies: its overlay, rendered, and its own manifests.
pub fn kit_docs() -> Vec<Value> {
    let mut docs = kustomize::render(&root().join("e2e/kind/overlay"));
    docs.extend(kind_manifests().into_iter().map(|(_, d)| d));
    docs
}

/// The pod template labels of a Deployment.
pub fn pod_labels(deploy: &Value) -> &Value {
    &deploy["spec"]["template"]["metadata"]["labels"]
}

/// Every kustomization a user applies, rendered, with a name for messages.
pub fn rendered() -> Vec<(String, Vec<Value>)> {
    [
        "istio",
        "istio/base",
        "istio/overlays/dev",
        "istio/overlays/production",
        "e2e/kind/overlay",
    ]
    .iter()
    .map(|d| (d.to_string(), kustomize::render(&root().join(d))))
    .collect()
}

//! A changed exchange configuration reaches the pods: the service reads `exchange.toml`
//! once, at start, so every environment mounts it from a ConfigMap named by kustomize's
//! content hash, and the project's kustomize renderer (`manifests/kustomize.rs`) hashes
//! and rewrites references as kustomize v5 does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::path::{Path, PathBuf};

use manifests::kustomize::{config_map_hash, render};
use manifests::{exchange_config_map, find, rendered, root};
use serde_json::{json, Value};

/// The exchange service reads its config once, at start: every environment mounts a
/// ConfigMap whose name carries kustomize's content hash of that config, so an edited
/// exchange.toml renames it, changes the pod template and rolls the pods on `kubectl
/// apply -k`. (The test below edits the files and compares the rendered pod templates.)
#[test]
fn every_environment_mounts_the_exchange_config_under_its_content_hash() {
    for (dir, docs) in rendered() {
        let cm = exchange_config_map(&docs);
        let name = cm["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            name,
            format!("meshpass-exchange-{}", config_map_hash(cm)),
            "{dir}: the exchange config's name must carry its content hash"
        );
        assert!(
            cm["metadata"]["annotations"].is_null(),
            "{dir}: the renderer's build annotation leaked: {cm}"
        );
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "meshpass-exchange"),
            "{dir}: a ConfigMap under the plain name (no hash) would never roll the pods"
        );
    }
    let base = render(&root().join("istio/base"));
    assert_eq!(
        exchange_config_map(&base)["data"]["exchange.toml"],
        json!(std::fs::read_to_string(root().join("istio/base/exchange/exchange.toml")).unwrap()),
        "the base's ConfigMap is generated from istio/base/exchange/exchange.toml"
    );
}

/// kustomize's ConfigMap name hash: the vectors of its api/hasher/hasher_test.go (and
/// kubectl's hash_test.go, the same encoding with string values), and names kustomize
/// v5.5.0 (`kubectl kustomize`, kubectl 1.32) gave generators with Go's JSON escapes.
#[test]
fn the_renderer_hashes_config_maps_as_kustomize_does() {
    let cm = |data: Value| json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": data});
    assert_eq!(
        config_map_hash(&json!({"kind": "ConfigMap", "metadata": {"name": ""}})),
        "6ct58987ht"
    );
    assert_eq!(config_map_hash(&cm(json!({"one": ""}))), "9g67k2htb6");
    assert_eq!(
        config_map_hash(&cm(json!({"two": "2", "one": "", "three": "3"}))),
        "f5h7t85m9b"
    );
    assert_eq!(
        config_map_hash(&cm(json!({"two": 2, "one": "", "three": 3}))),
        "7757f9kkct"
    );
    // `literals: ["a=<x>"]`: Go escapes <, > and & (\u003c...).
    assert_eq!(config_map_hash(&cm(json!({"a": "<x>"}))), "tthc84b5f6");
    // A file with every kind of escape Go's encoder writes.
    assert_eq!(
        config_map_hash(&cm(json!({
            "f.txt": "q\"b\\s\u{8}f\u{c}n\nr\rt\tc\u{1}<>&\u{2028}\u{2029}\u{e9}\u{7f}\n"
        }))),
        "t678c558d9"
    );
}

/// What the renderer does with generated names, as `kubectl kustomize` (kustomize v5.5.0)
/// does on the same files: the hash at the top of the build from the merged data,
/// references rewritten in every place a pod spec names a ConfigMap, in its namespace
/// only, and `disableNameSuffixHash` honoured.
#[test]
fn the_renderer_suffixes_generated_names_and_rewrites_their_references() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, overlay) = (tmp.path().join("base"), tmp.path().join("overlay"));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        base.join("kustomization.yaml"),
        r#"resources: [deploy.yaml]
configMapGenerator:
- name: app
  namespace: ns
  literals: ["a=1"]
- name: fixed
  namespace: ns
  literals: ["b=2"]
  options:
    disableNameSuffixHash: true
"#,
    )
    .unwrap();
    std::fs::write(
        base.join("deploy.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: ns}
spec:
  template:
    spec:
      initContainers:
      - name: i
        envFrom: [{configMapRef: {name: app}}]
      containers:
      - name: c
        envFrom: [{configMapRef: {name: app}}, {configMapRef: {name: fixed}}]
        env: [{name: A, valueFrom: {configMapKeyRef: {name: app, key: a}}}]
      volumes:
      - {name: v, configMap: {name: app}}
      - name: p
        projected:
          sources: [{configMap: {name: app}}, {configMap: {name: fixed}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other, namespace: elsewhere}
spec:
  template:
    spec:
      containers: [{name: c, image: x}]
      volumes: [{name: v, configMap: {name: app}}]
"#,
    )
    .unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        r#"resources: [../base]
configMapGenerator:
- name: app
  namespace: ns
  behavior: merge
  literals: ["c=3"]
"#,
    )
    .unwrap();
    for (dir, app) in [(&base, "app-h29d89cmmt"), (&overlay, "app-c7k972c749")] {
        let docs = render(dir);
        let cm = find(&docs, "ConfigMap", app);
        assert!(cm["metadata"]["annotations"].is_null(), "{cm}");
        find(&docs, "ConfigMap", "fixed");
        let spec = &find(&docs, "Deployment", "app")["spec"]["template"]["spec"];
        for (path, want) in [
            ("/initContainers/0/envFrom/0/configMapRef/name", app),
            ("/containers/0/envFrom/0/configMapRef/name", app),
            ("/containers/0/envFrom/1/configMapRef/name", "fixed"),
            ("/containers/0/env/0/valueFrom/configMapKeyRef/name", app),
            ("/volumes/0/configMap/name", app),
            ("/volumes/1/projected/sources/0/configMap/name", app),
            ("/volumes/1/projected/sources/1/configMap/name", "fixed"),
        ] {
            assert_eq!(spec.pointer(path), Some(&json!(want)), "{path}");
        }
        let other = &find(&docs, "Deployment", "other")["spec"]["template"]["spec"];
        assert_eq!(
            other["volumes"][0]["configMap"]["name"], "app",
            "another namespace's ConfigMap `app` is not the generated one"
        );
    }
    let merged = render(&overlay);
    assert_eq!(
        find(&merged, "ConfigMap", "app-c7k972c749")["data"],
        json!({"a": "1", "c": "3"})
    );
}

// ---- Configuration changes reach the pods ----------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn exchange_pod_template(dir: &Path) -> Value {
    let docs = manifests::kustomize::render(dir);
    manifests::find(&docs, "Deployment", "meshpass-exchange")["spec"]["template"].clone()
}

/// The service reads `exchange.toml` once, at start, and the Deployment mounts it with
/// `subPath` (kubelet never updates a subPath mount). A changed configuration (a mapping
/// tightened, a caller taken out of `allowed_callers`, `max_ttl_secs` lowered) reaches
/// the pods only if `kubectl apply -k` changes their template, as kustomize's
/// content-hashed ConfigMap names (or a checksum annotation) do. With a fixed name (as
/// the ConfigMap once had, the kit even setting `disableNameSuffixHash`) the apply
/// reports the ConfigMap configured and every running replica keeps the old policy,
/// while pods the HPA adds later start with the new one (and, "the file wins", write its
/// mappings over the shared store). The base generates it from
/// `istio/base/exchange/exchange.toml` with the hash, and the kit replaces it keeping it.
#[test]
fn a_changed_exchange_config_rolls_the_exchange_pods_in_every_environment() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&root().join("istio"), &tmp.path().join("istio"));
    copy_dir(
        &root().join("e2e/kind/overlay"),
        &tmp.path().join("e2e/kind/overlay"),
    );
    // The operator lowers the token lifetime cap and a mapping's TTL in both configs.
    let edit = |p: PathBuf| {
        let text = std::fs::read_to_string(&p).unwrap();
        let changed = text
            .replace("max_ttl_secs = 900", "max_ttl_secs = 600")
            .replace("ttl_secs = 300", "ttl_secs = 240");
        assert_ne!(text, changed, "{}: nothing to change", p.display());
        std::fs::write(&p, changed).unwrap();
    };
    edit(tmp.path().join("istio/base/exchange/exchange.toml"));
    edit(tmp.path().join("e2e/kind/overlay/exchange.toml"));
    let mut unchanged = Vec::new();
    for env in [
        "istio/base",
        "istio/overlays/dev",
        "istio/overlays/production",
        "e2e/kind/overlay",
    ] {
        // The edit did reach the rendered ConfigMap...
        let before = manifests::exchange_toml_of(&manifests::kustomize::render(&root().join(env)));
        let after =
            manifests::exchange_toml_of(&manifests::kustomize::render(&tmp.path().join(env)));
        assert_ne!(before, after, "{env}: the edit did not reach the ConfigMap");
        // ...and must reach the pods.
        if exchange_pod_template(&root().join(env)) == exchange_pod_template(&tmp.path().join(env))
        {
            unchanged.push(env);
        }
    }
    assert!(
        unchanged.is_empty(),
        "a changed exchange.toml leaves the exchange Deployment's pod template unchanged in \
         {unchanged:?}: `kubectl apply -k` updates the ConfigMap (mounted with subPath, read \
         once at start) and restarts no pod, so running replicas keep the old configuration"
    );
}

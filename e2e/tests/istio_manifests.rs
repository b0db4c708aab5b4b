//! Every manifest under `istio/` and `e2e/kind/manifests/`, and everything the
//! kustomizations render (base, `dev` and `production` overlays, the kind kit's overlay),
//! is checked the way a cluster and the components would check it: Istio kinds against
//! the `openAPIV3Schema` of their CRD (Istio 1.31, vendored in `e2e/vendor/istio/`; unknown
//! fields refused, since the API server would silently prune them), the CEL rules that
//! matter, each `pluginConfig` with the filter's own parser, each `exchange.toml` with the
//! exchange service's loader, the names that tie the pieces together, what each overlay
//! changes, and the digest pins of both images (the filter's against the current `.wasm`).
//! The operational rules (JWKS reachability, callers, `publish_lead`, RBAC, Vault,
//! monitoring) are in `istio_policies.rs`.

// Test helpers outside #[test] fns panic on purpose: a panic is a failed check here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::path::{Path, PathBuf};

use manifests::kustomize::render;
use manifests::{
    crd_schemas, exchange_config_map, find, istio_kind, istio_schema_errors, kind_manifests,
    manifests, rendered, root, strict, yaml_docs,
};
use serde_json::{json, Value};

#[test]
fn every_istio_manifest_validates_against_its_crd_schema_with_unknown_fields_refused() {
    let schemas = crd_schemas();
    let mut docs: Vec<(String, Value)> = manifests()
        .into_iter()
        .chain(kind_manifests())
        .map(|(p, d)| (p.display().to_string(), d))
        .collect();
    // What the overlays produce, patches applied, is what reaches the API server.
    for (dir, out) in rendered() {
        docs.extend(out.into_iter().map(|d| (format!("{dir} (rendered)"), d)));
    }
    let mut checked = 0;
    for (origin, doc) in docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or("");
        assert!(!name.is_empty(), "{origin}: metadata.name is missing");
        if !istio_kind(&doc) {
            continue;
        }
        let errors =
            istio_schema_errors(&schemas, &doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert!(
            errors.is_empty(),
            "{origin} ({} {name}) does not fit its CRD schema:\n{}",
            doc["kind"],
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} Istio resources were checked");
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

/// Every meshpass pluginConfig: WasmPlugin, TrafficExtension, and the JSON string of the
/// EnvoyFilter's Wasm extension config.
fn plugin_configs() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .filter_map(|(p, d)| match d["kind"].as_str() {
            Some("WasmPlugin") => Some((p, d["spec"]["pluginConfig"].clone())),
            Some("TrafficExtension") => Some((p, d["spec"]["wasm"]["pluginConfig"].clone())),
            Some("EnvoyFilter") => envoyfilter_wasm(&d).map(|w| {
                let text = w["config"]["configuration"]["value"].as_str().unwrap();
                (p, serde_json::from_str(text).unwrap())
            }),
            _ => None,
        })
        .collect()
}

/// The Wasm filter config an EnvoyFilter adds as an extension config, if any.
fn envoyfilter_wasm(doc: &Value) -> Option<Value> {
    doc["spec"]["configPatches"]
        .as_array()?
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .map(|p| p["patch"]["value"]["typed_config"].clone())
}

#[test]
fn every_plugin_config_is_accepted_by_the_filters_own_parser() {
    let configs = plugin_configs();
    assert!(configs.len() >= 4);
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

/// The base's exchange.toml (istio/base/kustomization.yaml generates the ConfigMap).
fn exchange_toml() -> String {
    std::fs::read_to_string(root().join("istio/base/exchange/exchange.toml")).unwrap()
}

fn kit_exchange_toml() -> String {
    std::fs::read_to_string(root().join("e2e/kind/overlay/exchange.toml")).unwrap()
}

#[test]
fn the_exchange_config_map_is_accepted_by_the_services_loader() {
    assert_exchange_config_loads("istio/base/exchange/exchange.toml", &exchange_toml());
}

#[test]
fn the_kind_kits_exchange_config_is_accepted_by_the_services_loader() {
    assert_exchange_config_loads("e2e/kind/overlay/exchange.toml", &kit_exchange_toml());
}

/// The management API's port is open to one namespace (the AuthorizationPolicy's rule
/// for 8081); the service checks a caller's token against its issuers first, so the
/// service-account issuer must admit that namespace's identities, or every
/// `meshpassctl` there gets 401 whatever SubjectAccessReview would say.
#[test]
fn management_callers_from_the_namespace_its_port_is_open_to_pass_the_issuer_policy() {
    let all = manifests();
    let policy = all
        .iter()
        .find(|(_, d)| {
            d["kind"] == "AuthorizationPolicy" && d["metadata"]["name"] == "meshpass-exchange"
        })
        .expect("AuthorizationPolicy meshpass-exchange");
    let namespaces: Vec<String> = policy.1["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["to"][0]["operation"]["ports"] == json!(["8081"]))
        .flat_map(|r| {
            r["from"][0]["source"]["namespaces"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(!namespaces.is_empty(), "no rule opens 8081 to a namespace");
    for (origin, text) in [
        ("istio/base/exchange/exchange.toml", exchange_toml()),
        ("e2e/kind/overlay/exchange.toml", kit_exchange_toml()),
    ] {
        let cfg = assert_exchange_config_loads(origin, &text);
        let kube = cfg
            .issuers
            .iter()
            .find(|i| {
                i.policy.subject_format == meshpass_core::SubjectFormat::KubernetesServiceAccount
            })
            .expect("a service-account issuer");
        for ns in &namespaces {
            let id = meshpass_core::SpiffeId::parse(&format!(
                "spiffe://cluster.local/ns/{ns}/sa/meshpassctl"
            ))
            .unwrap();
            let admitted = kube.policy.id_patterns.is_empty()
                || kube.policy.id_patterns.iter().any(|p| p.matches(&id));
            assert!(
                admitted,
                "{origin}: {id} is refused by the issuer's id_patterns"
            );
        }
    }
}

fn assert_exchange_config_loads(origin: &str, text: &str) -> meshpass_exchange::config::Config {
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
    match meshpass_exchange::config::Config::load(Some(&path)) {
        Ok(c) => c,
        Err(e) => panic!("{origin}: the exchange service refuses it: {e}"),
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
    // A verifier that follows the discovery document is sent to the same place, in the
    // base and in the kind kit alike.
    for text in [exchange_toml(), kit_exchange_toml()] {
        let t: toml::Value = toml::from_str(&text).unwrap();
        let public = t["server"]["public_url"].as_str().unwrap();
        assert_eq!(
            format!("{public}/.well-known/jwks.json"),
            rule["jwksUri"].as_str().unwrap()
        );
    }
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
    for dir in [
        "istio",
        "istio/base",
        "istio/monitoring",
        "istio/overlays/dev",
        "istio/overlays/production",
        "e2e/kind/overlay",
    ] {
        let k = &yaml_docs(&root().join(dir).join("kustomization.yaml"))[0];
        for r in k["resources"]
            .as_array()
            .unwrap()
            .iter()
            .chain(k["components"].as_array().into_iter().flatten())
        {
            let p = root().join(dir).join(r.as_str().unwrap());
            assert!(
                p.exists(),
                "{dir}/kustomization.yaml lists missing {}",
                p.display()
            );
        }
    }
}

// ---- Overlays ---------------------------------------------------------------------------

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn exchange_container(docs: &[Value]) -> Value {
    find(docs, "Deployment", "meshpass-exchange")["spec"]["template"]["spec"]["containers"][0]
        .clone()
}

#[test]
fn a_read_only_root_filesystem_still_leaves_the_service_a_writable_tmp() {
    // SQLite writes statement journals and large sorts to the first writable of
    // /var/tmp, /usr/tmp, /tmp and fails the statement when none is.
    for (dir, docs) in rendered() {
        if !kinds(&docs).contains(&"Deployment/meshpass-exchange".to_string()) {
            continue;
        }
        let c = exchange_container(&docs);
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{dir}"
        );
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/tmp")
            .unwrap_or_else(|| panic!("{dir}: no volume at /tmp"));
        assert_ne!(mount["readOnly"], true, "{dir}");
        let d = find(&docs, "Deployment", "meshpass-exchange");
        let vol = d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{dir}: /tmp's volume is not in the pod"));
        assert!(vol["emptyDir"].is_object(), "{dir}: {vol}");
    }
}

#[test]
fn the_overlays_render_what_each_environment_needs() {
    let all = rendered();
    let get = |name: &str| &all.iter().find(|(d, _)| d == name).unwrap().1;
    let (base, dev, prod, kit) = (
        get("istio/base"),
        get("istio/overlays/dev"),
        get("istio/overlays/production"),
        get("e2e/kind/overlay"),
    );
    assert_eq!(kinds(get("istio")), kinds(base), "istio/ is the base");
    // dev: one replica on SQLite, nothing that needs several.
    let d = find(dev, "Deployment", "meshpass-exchange");
    assert_eq!(d["spec"]["replicas"], 1);
    // Its SQLite file outlives the pod, and two pods never hold it at once.
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let mount = exchange_container(dev)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/meshpass")
        .unwrap()["name"]
        .clone();
    let vol = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount)
        .unwrap();
    let claim = vol["persistentVolumeClaim"]["claimName"].as_str().unwrap();
    assert!(kinds(dev).contains(&format!("PersistentVolumeClaim/{claim}")));
    let cm = exchange_config_map(dev);
    let toml: toml::Value = cm["data"]["exchange.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        toml["store"]["url"]
            .as_str()
            .unwrap()
            .starts_with("sqlite:///var/lib/meshpass/"),
        "dev's SQLite file is on the claim"
    );
    assert!(
        !exchange_container(dev)
            .to_string()
            .contains("meshpass-exchange-store"),
        "dev needs no PostgreSQL Secret"
    );
    for gone in [
        "HorizontalPodAutoscaler/meshpass-exchange",
        "PodDisruptionBudget/meshpass-exchange",
    ] {
        assert!(
            kinds(base).contains(&gone.to_string()) && !kinds(dev).contains(&gone.to_string()),
            "{gone}"
        );
    }
    // production: the base plus monitoring.
    for k in [
        "PodMonitor/meshpass-exchange",
        "PodMonitor/meshpass-sidecars",
        "PrometheusRule/meshpass",
        "ConfigMap/meshpass-grafana-dashboard",
    ] {
        assert!(
            kinds(prod).contains(&k.to_string()) && !kinds(base).contains(&k.to_string()),
            "{k}"
        );
    }
    // kube-prometheus-stack's Prometheus selects by `release` (its Helm release name).
    for (kind, name) in [
        ("PodMonitor", "meshpass-exchange"),
        ("PodMonitor", "meshpass-sidecars"),
        ("PrometheusRule", "meshpass"),
    ] {
        assert_eq!(
            find(prod, kind, name)["metadata"]["labels"]["release"],
            "kube-prometheus-stack",
            "{kind}/{name}"
        );
    }
    let dash = find(prod, "ConfigMap", "meshpass-grafana-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    serde_json::from_str::<Value>(dash["data"]["grafana-dashboard.json"].as_str().unwrap())
        .unwrap();
    assert!(
        find(prod, "HorizontalPodAutoscaler", "meshpass-exchange")["spec"]["minReplicas"]
            .as_u64()
            .unwrap()
            >= 2
    );
    // the kit: the base with images from its registry (same digests), its exchange.toml.
    let image = exchange_container(kit)["image"]
        .as_str()
        .unwrap()
        .to_string();
    let base_image = exchange_container(base)["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        image.split_once('@').unwrap().1,
        base_image.split_once('@').unwrap().1
    );
    assert!(
        image.starts_with("localhost:5001/meshpass-exchange@sha256:"),
        "{image}"
    );
    let url = find(kit, "WasmPlugin", "meshpass-inbound")["spec"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let base_url = find(base, "WasmPlugin", "meshpass-inbound")["spec"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        url.split_once('@').unwrap().1,
        base_url.split_once('@').unwrap().1,
        "the kit pulls the filter the base pins"
    );
    assert!(url.starts_with("oci://kind-registry:5000/"), "{url}");
    let kit_cm = exchange_config_map(kit);
    assert_eq!(
        kit_cm["data"]["exchange.toml"].as_str().unwrap(),
        kit_exchange_toml()
    );
    assert!(
        !kit.iter().any(|d| d.to_string().contains("openbao-ca")),
        "the kit's dev OpenBao has no CA to mount"
    );
}

/// `kubectl apply -k` of a fresh cluster fails on a resource whose namespace does not
/// exist: every environment creates the namespaces it uses (Istio's own aside).
#[test]
fn every_namespace_an_environment_puts_a_resource_in_is_one_it_creates() {
    for (dir, docs) in rendered() {
        let created: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "Namespace")
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        for d in &docs {
            if let Some(ns) = d["metadata"]["namespace"].as_str() {
                assert!(
                    ns == "istio-system" || created.contains(&ns),
                    "{dir}: {}/{} is in namespace {ns}, which {dir} never creates",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                );
            }
        }
    }
}

#[test]
fn the_kustomize_renderer_refuses_what_it_does_not_implement() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: []\nnamePrefix: x-\n",
    )
    .unwrap();
    let r = std::panic::catch_unwind(|| render(dir.path()));
    assert!(
        r.is_err(),
        "an unsupported field must fail the render, not be skipped"
    );
}

// ---- Images -----------------------------------------------------------------------------

/// (file, image reference) of every digest-pinned image: WasmPlugin/TrafficExtension/
/// EnvoyFilter module URLs with their `sha256`, and the exchange Deployment's image.
fn pinned_images() -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (path, d) in manifests() {
        let origin = path.display().to_string();
        match d["kind"].as_str().unwrap_or("") {
            "WasmPlugin" => out.push((
                origin,
                d["spec"]["url"].as_str().unwrap().into(),
                d["spec"]["sha256"].as_str().map(Into::into),
            )),
            "TrafficExtension" => out.push((
                origin,
                d["spec"]["wasm"]["url"].as_str().unwrap().into(),
                d["spec"]["wasm"]["sha256"].as_str().map(Into::into),
            )),
            "EnvoyFilter" => {
                if let Some(w) = envoyfilter_wasm(&d) {
                    let remote = &w["config"]["vm_config"]["code"]["remote"];
                    out.push((
                        origin,
                        remote["http_uri"]["uri"].as_str().unwrap().into(),
                        remote["sha256"].as_str().map(Into::into),
                    ));
                }
            }
            "Deployment" if d["metadata"]["name"] == "meshpass-exchange" => {
                out.push((
                    origin,
                    exchange_container(std::slice::from_ref(&d))["image"]
                        .as_str()
                        .unwrap()
                        .into(),
                    None,
                ));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_image_is_pinned_by_digest_and_the_filter_digest_is_the_current_wasm_image() {
    let images = pinned_images();
    assert!(images.len() >= 5, "{images:?}");
    let mut filter_digests = std::collections::BTreeSet::new();
    for (origin, reference, sha) in &images {
        let (_, digest) = reference
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{origin}: {reference} is not pinned by digest"));
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{origin}: {reference}"
        );
        if reference.contains("meshpass-filter") {
            assert!(
                reference.starts_with("oci://"),
                "{origin}: the filter is pulled as an OCI image"
            );
            assert_eq!(
                sha.as_deref(),
                Some(digest),
                "{origin}: sha256 must equal the digest in the url"
            );
            filter_digests.insert(digest.to_string());
        }
    }
    assert_eq!(
        filter_digests.len(),
        1,
        "every filter manifest pins the same module: {filter_digests:?}"
    );
    // The image the current .wasm gives (scripts/oci_image.py is reproducible).
    let wasm = std::env::var("MESHPASS_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/wasm32-wasip1/wasm-release/meshpass_filter.wasm"));
    assert!(wasm.exists(), "{} is missing: make wasm", wasm.display());
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new("python3")
        .arg(root().join("scripts/oci_image.py"))
        .args(["wasm", "--tag", env!("CARGO_PKG_VERSION"), "--wasm"])
        .arg(&wasm)
        .arg("--out")
        .arg(out.path().join("filter"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let built = String::from_utf8(run.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("sha256:")
        .to_string();
    assert!(
        filter_digests.contains(&built),
        "the manifests pin meshpass-filter@sha256:{filter_digests:?}, the current {} gives {built}: run `make images`",
        wasm.display()
    );
}

/// `scripts/images.sh`'s `pin`, run by bash on copies of the manifests.
fn run_pin(name: &str, digest: &str) -> (bool, String, Vec<(PathBuf, String)>) {
    let script = std::fs::read_to_string(root().join("scripts/images.sh")).unwrap();
    let func = |start: &str| {
        let from = script.find(start).unwrap();
        let len = script[from..].find("\n}\n").unwrap() + 3;
        script[from..from + len].to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for f in [
        "istio/base/filter/wasmplugin-inbound.yaml",
        "istio/base/exchange/deployment.yaml",
    ] {
        let to = dir.path().join(f.replace('/', "_"));
        std::fs::copy(root().join(f), &to).unwrap();
        copies.push((to.clone(), std::fs::read_to_string(&to).unwrap()));
    }
    let program = format!(
        "set -euo pipefail\nlog() {{ printf '[images] %s\\n' \"$*\"; }}\n{}\nMANIFESTS=({})\npin {name} \"{digest}\"\n",
        func("pin() {"),
        copies
            .iter()
            .map(|(p, _)| format!("'{}'", p.display()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let after = copies
        .into_iter()
        .map(|(p, before)| {
            let now = std::fs::read_to_string(&p).unwrap();
            (p, if now == before { String::new() } else { now })
        })
        .collect();
    (out.status.success(), text, after)
}

#[test]
fn pinning_an_empty_or_partial_digest_fails_and_leaves_the_manifests_alone() {
    // What "$(layout_filter)" gives when the image build fails: set -e does not stop
    // the script inside an argument's command substitution.
    for bad in ["", "sha256:", "sha256:abc", "not-a-digest"] {
        let (ok, text, after) = run_pin("meshpass-filter", bad);
        assert!(!ok, "{bad:?} pinned: {text}");
        assert!(text.contains("not pinning meshpass-filter"), "{text}");
        assert!(
            after.iter().all(|(_, changed)| changed.is_empty()),
            "{bad:?} changed a manifest"
        );
    }
    // A whole digest is pinned (the check above can tell).
    let good = format!("sha256:{}", "ab".repeat(32));
    let (ok, text, after) = run_pin("meshpass-filter", &good);
    assert!(ok, "{text}");
    assert!(
        after
            .iter()
            .any(|(_, changed)| changed.contains(&"ab".repeat(32))),
        "{text}"
    );
}

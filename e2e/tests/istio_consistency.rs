//! The Istio/Kubernetes artefacts (istio/, e2e/kind/) consistent with each other: checks
//! the schema and policy tests do not make. Each test reads only files inside the repository and
//! asserts what the documents (istio/README.md, docs/DESIGN.md, exchange-svc/README.md,
//! filter/README.md) or Istio/Kubernetes promise.

// Test helpers outside #[test] fns panic on purpose: a panic is a failed check here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use manifests::kustomize::render;
use manifests::{exchange_toml_of, find, kind_manifests, manifests, root, selects, yaml_docs_str};
use meshpass_core::{SpiffeId, SpiffeIdPattern};
use serde_json::Value;

/// The inbound filter manifests under istio/base/filter with their pluginConfig: the
/// WasmPlugin (applied), the EnvoyFilter's ECDS config and the TrafficExtension
/// (alternatives).
fn filter_configs() -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for (path, d) in manifests() {
        let origin = path.strip_prefix(root()).unwrap().display().to_string();
        match d["kind"].as_str().unwrap_or("") {
            "WasmPlugin" => out.push((
                origin,
                d["spec"]["selector"]["matchLabels"].clone(),
                d["spec"]["pluginConfig"].clone(),
            )),
            "TrafficExtension" => out.push((
                origin,
                d["spec"]["selector"]["matchLabels"].clone(),
                d["spec"]["wasm"]["pluginConfig"].clone(),
            )),
            "EnvoyFilter" => {
                let patches = d["spec"]["configPatches"].as_array().unwrap();
                if let Some(p) = patches.iter().find(|p| p["applyTo"] == "EXTENSION_CONFIG") {
                    let text = p["patch"]["value"]["typed_config"]["config"]["configuration"]
                        ["value"]
                        .as_str()
                        .unwrap();
                    out.push((
                        origin,
                        d["spec"]["workloadSelector"]["labels"].clone(),
                        serde_json::from_str(text).unwrap(),
                    ));
                }
            }
            _ => {}
        }
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

/// The kit's Deployments (e2e/kind/manifests), which give each selected workload its
/// service account and so the SPIFFE ID its sidecar presents.
fn kit_deployments() -> Vec<Value> {
    kind_manifests()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "Deployment")
        .collect()
}

fn spiffe_of(deploy: &Value) -> String {
    format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        deploy["metadata"]["namespace"].as_str().unwrap(),
        deploy["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
    )
}

fn pattern_matches(pattern: &str, id: &str) -> bool {
    SpiffeIdPattern::parse(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(&SpiffeId::parse(id).unwrap())
}

/// The resources a pluginConfig's rules and default rule ask the exchange service for.
fn requested_resources(cfg: &Value) -> Vec<String> {
    cfg["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&cfg["default_rule"]))
        .filter_map(|r| r["resource"].as_str().map(str::to_string))
        .collect()
}

/// DESIGN.md "Subject tokens" item 5 and exchange-svc/src/exchange/caller.rs: in SERVER
/// mode the caller of /token is the receiving sidecar, and the service accepts it only
/// when it is the subject itself or matches the mapping's `allowed_callers`. A mapping
/// of a resource that a SERVER-mode filter requests, for a subject other than that
/// sidecar, without the sidecar in `allowed_callers`, can never be used: every such
/// request gets 403 `unauthorized_client` from the service (and a 403 from the filter).
#[test]
fn every_mapping_a_server_mode_filter_requests_admits_that_filters_sidecar_as_caller() {
    let deployments = kit_deployments();
    let base = render(&root().join("istio/base"));
    let kit = render(&root().join("e2e/kind/overlay"));
    let tomls = [
        ("istio/base/exchange/exchange.toml", exchange_toml_of(&base)),
        ("e2e/kind/overlay/exchange.toml", exchange_toml_of(&kit)),
    ];
    let mut problems = Vec::new();
    let mut checked = 0;
    for (origin, selector, cfg) in filter_configs() {
        if cfg["mode"].as_str().unwrap_or("SERVER") != "SERVER" {
            continue;
        }
        // The sidecars this filter runs in: the kit's workloads it selects.
        let callers: Vec<String> = deployments
            .iter()
            .filter(|d| selects(&selector, &d["spec"]["template"]["metadata"]["labels"]))
            .map(spiffe_of)
            .collect();
        for caller in &callers {
            for resource in requested_resources(&cfg) {
                for (cfg_origin, toml) in &tomls {
                    let mappings: Vec<&toml::Value> = toml["mappings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| m["resource"].as_str() == Some(resource.as_str()))
                        .collect();
                    if mappings.is_empty() {
                        problems.push(format!(
                            "{origin}: resource {resource:?} has no mapping in {cfg_origin}"
                        ));
                    }
                    for m in mappings {
                        checked += 1;
                        let subject = m["subject"].as_str().unwrap();
                        let own = pattern_matches(subject, caller) && !subject.ends_with('*');
                        let allowed: Vec<&str> = m
                            .get("allowed_callers")
                            .and_then(|a| a.as_array())
                            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        if !own && !allowed.iter().any(|p| pattern_matches(p, caller)) {
                            problems.push(format!(
                                "{cfg_origin}: mapping {:?} (subject {subject}, resource {resource:?}) \
                                 is requested by the SERVER-mode filter {origin} running in {caller}'s \
                                 sidecar, but its allowed_callers {allowed:?} do not admit {caller}: \
                                 every such exchange is refused with 403 unauthorized_client",
                                m["name"].as_str().unwrap_or("")
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no SERVER-mode filter selects a kit workload");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// istio/base/kustomization.yaml: "filter/trafficextension-inbound.yaml (the same plugin
/// through the newer API)"; istio/README.md: "the inbound filter through the newer
/// TrafficExtension API". The EnvoyFilter alternative carries the WasmPlugin's
/// pluginConfig exactly; the TrafficExtension must too, or the alternative silently
/// drops the inbound filter's restrictions (spiffe_id_patterns, max_lifetime_secs), its
/// /healthz bypass and its /admin rule.
#[test]
fn every_inbound_alternative_carries_the_wasmplugins_plugin_config() {
    let configs = filter_configs();
    let reference = configs
        .iter()
        .find(|(o, _, _)| o.ends_with("wasmplugin-inbound.yaml"))
        .unwrap()
        .2
        .clone();
    let mut problems = Vec::new();
    for (origin, _, cfg) in &configs {
        if cfg["mode"] != "SERVER" || origin.ends_with("wasmplugin-inbound.yaml") {
            continue;
        }
        let (a, b) = (reference.as_object().unwrap(), cfg.as_object().unwrap());
        let mut diff: Vec<String> = a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                format!(
                    "  {k}: wasmplugin-inbound.yaml has {}, {origin} has {}",
                    a.get(k).map_or("nothing".into(), |v| v.to_string()),
                    b.get(k).map_or("nothing".into(), |v| v.to_string())
                )
            })
            .collect();
        if !diff.is_empty() {
            problems.push(format!("{origin} differs from the inbound WasmPlugin:"));
            problems.append(&mut diff);
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// filter/README.md "Istio (WasmPlugin)" is the example an operator copies. Its
/// `jwks_cluster` must be one that can reach the API server's JWKS over TLS: the API
/// server has no sidecar, so Istio's own `outbound|443||kubernetes.default.svc...`
/// cluster carries plain text (no TLS origination) to a TLS port, and the JWKS fetch
/// fails (every request then 503s). istio/ ships the cluster for this
/// (envoyfilter-kube-jwks.yaml: "verifying the API server with the cluster CA").
#[test]
fn the_filter_readmes_istio_example_fetches_the_api_servers_jwks_through_a_tls_cluster() {
    let readme = std::fs::read_to_string(root().join("filter/README.md")).unwrap();
    let section = readme
        .split("## Istio (WasmPlugin)")
        .nth(1)
        .expect("filter/README.md has an Istio (WasmPlugin) section");
    let block = section
        .split("```yaml")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block");
    let doc = &yaml_docs_str(block)[0];
    // The TLS clusters istio/ adds through EnvoyFilter CLUSTER patches.
    let tls_clusters: Vec<String> = manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "EnvoyFilter")
        .flat_map(|(_, d)| d["spec"]["configPatches"].as_array().cloned().unwrap())
        .filter(|p| {
            p["applyTo"] == "CLUSTER" && p["patch"]["value"]["transport_socket"].is_object()
        })
        .filter_map(|p| p["patch"]["value"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(!tls_clusters.is_empty());
    let mut problems = Vec::new();
    for issuer in doc["spec"]["pluginConfig"]["issuers"].as_array().unwrap() {
        let Some(cluster) = issuer["jwks_cluster"].as_str() else {
            continue;
        };
        let to_api_server = cluster.contains("||kubernetes.default.svc");
        if to_api_server
            || (!cluster.starts_with("outbound|") && !tls_clusters.iter().any(|c| c == cluster))
        {
            problems.push(format!(
                "filter/README.md's Istio example fetches {}'s JWKS through {cluster:?}, a plain-text \
                 Istio cluster to the API server's TLS port; istio/ defines {tls_clusters:?} for this",
                issuer["issuer"].as_str().unwrap_or("")
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// envoyfilter-kube-jwks.yaml adds the `meshpass-kube-jwks` cluster only to pods labelled
/// `meshpass.io/filter: enabled` and reads the CA from the `kube-ca` user volume (the pod
/// annotations the file shows); monitoring/podmonitor.yaml scrapes the filter's counters
/// by the same label. Every kit workload a filter manifest selects (the applied inbound
/// plugin and the documented alternatives) must carry both, or the filter has no JWKS
/// and fails closed on every request.
#[test]
fn every_kit_workload_a_filter_manifest_selects_has_the_jwks_clusters_label_and_ca_volume() {
    let deployments = kit_deployments();
    let mut problems = Vec::new();
    for (origin, selector, cfg) in filter_configs() {
        let uses_kube_jwks = cfg["issuers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["jwks_cluster"] == "meshpass-kube-jwks");
        if !uses_kube_jwks {
            continue;
        }
        let selected: Vec<&Value> = deployments
            .iter()
            .filter(|d| selects(&selector, &d["spec"]["template"]["metadata"]["labels"]))
            .collect();
        // The TrafficExtension alternative selects `app: echo-v2` on purpose (so it can be
        // applied beside the WasmPlugin); its header says no kit workload carries it.
        let example_only = origin.contains("trafficextension")
            && std::fs::read_to_string(
                manifests::root().join("istio/base/filter/trafficextension-inbound.yaml"),
            )
            .unwrap()
            .contains("no such workload in the kit");
        if selected.is_empty() && !example_only {
            problems.push(format!(
                "{origin}: selects {selector}, which no kit workload (e2e/kind/manifests) carries"
            ));
        }
        for d in selected {
            let meta = &d["spec"]["template"]["metadata"];
            let name = d["metadata"]["name"].as_str().unwrap();
            if meta["labels"]["meshpass.io/filter"] != "enabled" {
                problems.push(format!(
                    "{origin}: kit workload {name} lacks the label meshpass.io/filter: enabled \
                     (no meshpass-kube-jwks cluster in its sidecar, no filter metrics)"
                ));
            }
            let volume = meta["annotations"]["sidecar.istio.io/userVolumeMount"]
                .as_str()
                .unwrap_or("");
            if !volume.contains("/etc/meshpass/kube-ca") {
                problems.push(format!(
                    "{origin}: kit workload {name} does not mount the kube CA at /etc/meshpass/kube-ca \
                     in its sidecar (the meshpass-kube-jwks cluster's trusted_ca)"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ---- Checks of suspicions that turned out fine (regression guards) ---------------------

/// Istio: WasmPlugin/TrafficExtension `phase: AUTHN` = "Insert plugin before Istio
/// authentication filters", `match.mode: SERVER` = inbound; EnvoyFilter `HTTP_FILTER`
/// `INSERT_FIRST` on `SIDECAR_INBOUND` (istio/README.md "Order of filters"). The
/// participant token must exist before jwt_authn and RBAC run.
#[test]
fn the_inbound_filter_runs_on_inbound_traffic_before_istios_authentication() {
    for (path, d) in manifests() {
        let origin = path.display().to_string();
        match d["kind"].as_str().unwrap_or("") {
            "WasmPlugin" | "TrafficExtension" => {
                let spec = &d["spec"];
                assert_eq!(spec["phase"], "AUTHN", "{origin}");
                let cfg = if d["kind"] == "WasmPlugin" {
                    &spec["pluginConfig"]
                } else {
                    &spec["wasm"]["pluginConfig"]
                };
                let want = if cfg["mode"] == "CLIENT" {
                    "CLIENT"
                } else {
                    "SERVER"
                };
                for m in spec["match"].as_array().unwrap() {
                    assert_eq!(m["mode"], want, "{origin}: plugin mode vs Istio match mode");
                }
            }
            "EnvoyFilter" => {
                for p in d["spec"]["configPatches"].as_array().unwrap() {
                    if p["applyTo"] == "HTTP_FILTER" {
                        assert_eq!(p["match"]["context"], "SIDECAR_INBOUND", "{origin}");
                        assert_eq!(p["patch"]["operation"], "INSERT_FIRST", "{origin}");
                    }
                    if p["applyTo"] == "CLUSTER" {
                        assert_eq!(p["patch"]["operation"], "ADD", "{origin}");
                    }
                }
            }
            _ => {}
        }
    }
}

/// Pod Security "restricted" for the exchange container in every rendered environment,
/// plus a memory limit (the HPA scales on CPU requests; no CPU limit on purpose).
#[test]
fn the_exchange_pod_meets_the_restricted_pod_security_profile_in_every_environment() {
    for dir in [
        "istio/base",
        "istio/overlays/dev",
        "istio/overlays/production",
        "e2e/kind/overlay",
    ] {
        let docs = render(&root().join(dir));
        let d = find(&docs, "Deployment", "meshpass-exchange");
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let psc = &pod["securityContext"];
        let csc = &c["securityContext"];
        assert!(
            psc["runAsNonRoot"] == true || csc["runAsNonRoot"] == true,
            "{dir}"
        );
        assert!(
            psc["seccompProfile"]["type"] == "RuntimeDefault"
                || csc["seccompProfile"]["type"] == "RuntimeDefault",
            "{dir}"
        );
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{dir}");
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{dir}");
        assert_eq!(
            csc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{dir}"
        );
        assert!(c["resources"]["limits"]["memory"].is_string(), "{dir}");
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{dir}");
    }
}

/// exchange-svc/src/app.rs: /readyz waits READYZ_STORE_WAIT for the store, then (with
/// `rate_limit.backend = "redis"`) may PING Redis for up to `redis_timeout_ms`. The
/// readiness probe's timeout must outwait both, in every environment.
#[test]
fn the_readiness_timeout_outwaits_every_wait_of_readyz() {
    for dir in [
        "istio/base",
        "istio/overlays/production",
        "e2e/kind/overlay",
    ] {
        let docs = render(&root().join(dir));
        let d = find(&docs, "Deployment", "meshpass-exchange");
        let probe = &d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
        let toml = exchange_toml_of(&docs);
        let rl = toml.get("rate_limit");
        let redis_ms = match rl.and_then(|r| r.get("backend")).and_then(|b| b.as_str()) {
            Some("redis") => rl
                .and_then(|r| r.get("redis_timeout_ms"))
                .and_then(|t| t.as_integer())
                .unwrap_or(250) as u128,
            _ => 0,
        };
        let worst = meshpass_exchange::app::READYZ_STORE_WAIT.as_millis() + redis_ms;
        let timeout_ms = u128::from(probe["timeoutSeconds"].as_u64().unwrap_or(1)) * 1000;
        assert!(
            timeout_ms > worst,
            "{dir}: probe {probe} vs /readyz {worst} ms"
        );
    }
}

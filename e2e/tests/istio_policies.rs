//! What the manifests under `istio/` promise an operator, checked on the manifests
//! themselves (the companion of `istio_manifests.rs`, which checks their schemas and
//! parsers): istiod can fetch the JWKS (who may call what: `istio_access.rs`),
//! `publish_lead` covers istiod's JWKS refresh, the discovery RBAC exposes one document,
//! the Vault policy and role grant only what the service uses, the service is highly
//! available, and monitoring names only metrics the code exports. Each rule is a function
//! returning the violations, so a test can also show it refuses a broken manifest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::collections::BTreeSet;
use std::time::Duration;

use manifests::authz::{allows, Request};
use manifests::kustomize::render;
use manifests::{
    duration, exchange_toml_of, find, hcl_policy, kind_manifests, pod_labels, root, selects,
    yaml_docs,
};
use serde_json::{json, Value};

fn base() -> Vec<Value> {
    manifests::base_docs()
}

fn kit() -> Vec<Value> {
    manifests::kit_docs()
}

// ---- JWKS reachability ----------------------------------------------------------------

/// What a `jwksUri` leads to: the workload behind it and the container port.
struct JwksTarget<'a> {
    ns: String,
    deploy: &'a Value,
    container_port: u64,
    path: String,
}

fn jwks_target<'a>(docs: &'a [Value], uri: &str) -> Result<JwksTarget<'a>, String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| format!("{uri}: not an http(s) URL"))?;
    let (authority, path) = rest.split_once('/').unwrap();
    let (host, port) = authority
        .split_once(':')
        .map_or((authority, 80), |(h, p)| (h, p.parse().unwrap()));
    let mut parts = host.split('.');
    let (svc_name, ns) = (parts.next().unwrap(), parts.next().unwrap());
    let svc = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"] == svc_name
                && d["metadata"]["namespace"] == ns
        })
        .ok_or_else(|| format!("{uri}: no Service {ns}/{svc_name}"))?;
    let sp = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .ok_or_else(|| format!("{uri}: Service {ns}/{svc_name} has no port {port}"))?;
    let deploy = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["namespace"] == ns
                && selects(&svc["spec"]["selector"], pod_labels(d))
        })
        .ok_or_else(|| format!("{uri}: no Deployment behind {ns}/{svc_name}"))?;
    let container_port = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().unwrap().iter())
        .find(|p| p["name"] == sp["targetPort"] || p["containerPort"] == sp["targetPort"])
        .map(|p| p["containerPort"].as_u64().unwrap())
        .ok_or_else(|| format!("{uri}: no container port {}", sp["targetPort"]))?;
    Ok(JwksTarget {
        ns: ns.to_string(),
        deploy,
        container_port,
        path: format!("/{path}"),
    })
}

/// The mTLS mode of a workload port: the workload's PeerAuthentication (selector) wins
/// over the namespace's; its port-level mode over its own.
fn mtls_mode(docs: &[Value], t: &JwksTarget) -> String {
    let pas: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "PeerAuthentication" && d["metadata"]["namespace"] == t.ns.as_str()
        })
        .filter(|d| {
            d["spec"]["selector"].is_null()
                || selects(&d["spec"]["selector"]["matchLabels"], pod_labels(t.deploy))
        })
        .collect();
    let pa = pas
        .iter()
        .find(|d| !d["spec"]["selector"].is_null())
        .or(pas.first());
    pa.map_or("PERMISSIVE".to_string(), |pa| {
        let port_mode = &pa["spec"]["portLevelMtls"][t.container_port.to_string()]["mode"];
        port_mode
            .as_str()
            .or(pa["spec"]["mtls"]["mode"].as_str())
            .unwrap_or("PERMISSIVE")
            .to_string()
    })
}

/// A caller without identity (istiod) must be let through to GET the JWKS, and must not
/// be let through to POST /token on the same port (Istio's decision, `manifests/authz.rs`).
fn authz_violations(docs: &[Value], t: &JwksTarget, uri: &str) -> Vec<String> {
    let port = u16::try_from(t.container_port).unwrap();
    let plain = |method, path| Request {
        principal: None,
        port,
        method,
        path,
    };
    let may = |req: &Request| allows(docs, &t.ns, pod_labels(t.deploy), req);
    let mut bad = Vec::new();
    if !may(&plain("GET", &t.path)) {
        bad.push(format!(
            "{uri}: no ALLOW rule lets a caller without identity GET {}",
            t.path
        ));
    }
    if may(&plain("POST", "/token")) {
        bad.push(format!(
            "{uri}: a caller without an mTLS principal may POST /token on port {port}"
        ));
    }
    bad
}

/// istiod fetches every RequestAuthentication `jwksUri` without a sidecar: the port behind
/// it must accept plain text (PERMISSIVE or DISABLE for that workload port), an ALLOW rule
/// must let a caller without identity GET that path, and plain text must not open /token.
fn jwks_reachability_violations(docs: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    for ra in docs.iter().filter(|d| d["kind"] == "RequestAuthentication") {
        for rule in ra["spec"]["jwtRules"].as_array().unwrap() {
            let uri = rule["jwksUri"].as_str().unwrap();
            let t = match jwks_target(docs, uri) {
                Ok(t) => t,
                Err(e) => {
                    bad.push(e);
                    continue;
                }
            };
            if mtls_mode(docs, &t) == "STRICT" {
                bad.push(format!(
                    "{uri}: port {} of {} is STRICT mTLS; istiod cannot fetch it",
                    t.container_port, t.ns
                ));
            }
            bad.extend(authz_violations(docs, &t, uri));
        }
    }
    bad
}

#[test]
fn istiod_can_fetch_the_jwks_without_mtls_and_plain_text_opens_nothing_else() {
    for (name, docs) in [("istio/base", base()), ("e2e/kind/overlay", kit())] {
        let bad = jwks_reachability_violations(&docs);
        assert!(bad.is_empty(), "{name}:\n{}", bad.join("\n"));
    }
}

#[test]
fn the_jwks_check_refuses_a_strict_port_and_an_open_token_endpoint() {
    let mut docs = base();
    let pa = docs
        .iter_mut()
        .find(|d| d["kind"] == "PeerAuthentication")
        .unwrap();
    pa["spec"].as_object_mut().unwrap().remove("portLevelMtls");
    assert!(jwks_reachability_violations(&docs)
        .iter()
        .any(|v| v.contains("STRICT")));
    let mut docs = base();
    let ap = docs
        .iter_mut()
        .find(|d| d["kind"] == "AuthorizationPolicy" && d["metadata"]["namespace"] == "meshpass")
        .unwrap();
    ap["spec"]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("from");
    assert!(jwks_reachability_violations(&docs)
        .iter()
        .any(|v| v.contains("/token")));
}

// ---- publish_lead -----------------------------------------------------------------------

/// istiod's default `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`.
const ISTIOD_JWKS_REFRESH: Duration = Duration::from_secs(20 * 60);

/// A rotated key may sign only once every verifier can hold it: istiod's refresh, plus
/// how late the service itself sees the new version, plus how long a JWKS may be cached.
fn publish_lead_violation(toml: &toml::Value, istiod_refresh: Duration) -> Option<String> {
    let v = &toml["vault"];
    let lead = duration(
        v.get("publish_lead")
            .and_then(|x| x.as_str())
            .unwrap_or("60s"),
    );
    let refresh = duration(
        v.get("key_refresh_interval")
            .and_then(|x| x.as_str())
            .unwrap_or("30s"),
    );
    let max_age = Duration::from_secs(
        toml["server"]
            .get("jwks_max_age_secs")
            .and_then(|x| x.as_integer())
            .unwrap_or(60) as u64,
    );
    let need = istiod_refresh + refresh + max_age;
    (lead < need).then(|| format!("publish_lead {lead:?} < istiod refresh {istiod_refresh:?} + key_refresh_interval {refresh:?} + jwks_max_age {max_age:?} = {need:?}"))
}

fn kit_istiod_refresh() -> Duration {
    let op = &yaml_docs(&root().join("e2e/kind/istio-operator.yaml"))[0];
    let v = &op["spec"]["values"]["pilot"]["env"]["PILOT_JWT_PUB_KEY_REFRESH_INTERVAL"];
    v.as_str().map_or(ISTIOD_JWKS_REFRESH, duration)
}

#[test]
fn publish_lead_covers_istiods_jwks_refresh_interval() {
    let shipped = exchange_toml_of(&base());
    assert_eq!(
        publish_lead_violation(&shipped, ISTIOD_JWKS_REFRESH),
        None,
        "istio/base"
    );
    let kit_toml = exchange_toml_of(&kit());
    assert!(
        kit_istiod_refresh() < ISTIOD_JWKS_REFRESH,
        "the kit lowers istiod's interval"
    );
    assert_eq!(
        publish_lead_violation(&kit_toml, kit_istiod_refresh()),
        None,
        "e2e/kind"
    );
    // The rule bites: the kit's short lead with istiod's default interval, and the lead
    // the base shipped before (90 s).
    assert!(publish_lead_violation(&kit_toml, ISTIOD_JWKS_REFRESH).is_some());
    let mut old = shipped.clone();
    old["vault"]
        .as_table_mut()
        .unwrap()
        .insert("publish_lead".into(), "90s".into());
    assert!(publish_lead_violation(&old, ISTIOD_JWKS_REFRESH).is_some());
}

// ---- RBAC, Vault, availability ---------------------------------------------------------

#[test]
fn anonymous_callers_may_read_only_the_api_servers_jwks() {
    let docs = base();
    for b in docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding") {
        let anonymous = b["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "system:unauthenticated" || s["name"] == "system:anonymous");
        if !anonymous {
            continue;
        }
        let role = find(&docs, "ClusterRole", b["roleRef"]["name"].as_str().unwrap());
        assert_eq!(
            role["rules"],
            json!([{"nonResourceURLs": ["/openid/v1/jwks"], "verbs": ["get"]}]),
            "{}: anonymous callers get exactly GET /openid/v1/jwks",
            b["metadata"]["name"]
        );
    }
    // ... which is the document the filter fetches without credentials.
    for (_, f) in manifests::manifests()
        .iter()
        .filter(|(_, d)| d["kind"] == "WasmPlugin")
    {
        for i in f["spec"]["pluginConfig"]["issuers"].as_array().unwrap() {
            if i["jwks_cluster"] == "meshpass-kube-jwks" {
                assert_eq!(i["jwks_path"], "/openid/v1/jwks");
            }
        }
    }
}

#[test]
fn the_vault_policy_and_role_grant_only_signing_and_maintenance_of_the_configured_key() {
    let docs = base();
    let toml = exchange_toml_of(&docs);
    let v = &toml["vault"];
    let mount = v
        .get("transit_mount")
        .and_then(|x| x.as_str())
        .unwrap_or("transit");
    let key = v["key_name"].as_str().unwrap();
    let policy = hcl_policy(
        &std::fs::read_to_string(root().join("istio/vault/meshpass-signer.hcl")).unwrap(),
    );
    let expected: std::collections::BTreeMap<String, Vec<String>> = [
        (format!("{mount}/keys/{key}"), vec!["read".to_string()]),
        (format!("{mount}/sign/{key}"), vec!["update".to_string()]),
        // Key maintenance (management API, [keys] schedule); exchange-svc's
        // vault_auth.rs runs every call the service makes under this file on OpenBao.
        (
            format!("{mount}/keys/{key}/rotate"),
            vec!["update".to_string()],
        ),
        (
            format!("{mount}/keys/{key}/config"),
            vec!["update".to_string()],
        ),
    ]
    .into();
    assert_eq!(policy, expected);
    let role: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("istio/vault/kubernetes-auth-role.json")).unwrap(),
    )
    .unwrap();
    let deploy = find(&docs, "Deployment", "meshpass-exchange");
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        role["bound_service_account_names"],
        json!([spec["serviceAccountName"]])
    );
    assert_eq!(
        role["bound_service_account_namespaces"],
        json!([deploy["metadata"]["namespace"]])
    );
    assert_eq!(role["token_policies"], json!(["meshpass-signer"]));
    assert_eq!(v["auth"]["method"].as_str(), Some("kubernetes"));
    assert_eq!(v["auth"]["role"].as_str(), Some("meshpass-exchange"));
    // The login token is a projected one with the role's audience, mounted where the
    // config reads it.
    let jwt_file = v["auth"]["jwt_file"].as_str().unwrap();
    let mount_dir = jwt_file.rsplit_once('/').unwrap().0;
    let c = &spec["containers"][0];
    let vm = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == mount_dir)
        .unwrap();
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == vm["name"])
        .unwrap();
    let sat = &vol["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], role["audience"]);
    assert_eq!(
        format!("{mount_dir}/{}", sat["path"].as_str().unwrap()),
        jwt_file
    );
}

#[test]
fn the_exchange_service_is_deployed_for_production() {
    let docs = base();
    let deploy = find(&docs, "Deployment", "meshpass-exchange");
    let labels = pod_labels(deploy);
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    // The HPA owns the count: a fixed spec.replicas would be re-applied over it.
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "{}",
        deploy["spec"]
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", "meshpass-exchange");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = find(&docs, "PodDisruptionBudget", "meshpass-exchange");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    let np = find(&docs, "NetworkPolicy", "meshpass-exchange");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], labels));
    let np_ports: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap())
        .map(|p| &p["port"])
        .collect();
    for p in c["ports"].as_array().unwrap() {
        assert!(
            np_ports.contains(&&p["containerPort"]),
            "NetworkPolicy admits no traffic to {p}"
        );
    }
    // The management port, in the container and the Service.
    let svc = find(&docs, "Service", "meshpass-exchange");
    assert!(svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["targetPort"] == "management"));
    assert!(c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "management"));
    // PostgreSQL: the URL comes from a Secret, never from the ConfigMap.
    let env = c["env"].as_array().unwrap();
    let store = env
        .iter()
        .find(|e| e["name"] == "MESHPASS__STORE__URL")
        .unwrap();
    assert!(store["valueFrom"]["secretKeyRef"]["name"].is_string());
    // TokenReview: system:auth-delegator for the service's account.
    let tr = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding" && d["roleRef"]["name"] == "system:auth-delegator"
        })
        .unwrap();
    assert_eq!(tr["subjects"][0]["name"], spec["serviceAccountName"]);
    assert_eq!(
        tr["subjects"][0]["namespace"],
        deploy["metadata"]["namespace"]
    );
    // The image runs as the non-root user it was built with, read-only.
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn replicas_spread_over_nodes_and_outlive_their_drain_in_every_overlay() {
    for dir in ["istio/base", "istio/overlays/production"] {
        let docs = render(&root().join(dir));
        let deploy = find(&docs, "Deployment", "meshpass-exchange");
        let labels = pod_labels(deploy);
        let spec = &deploy["spec"]["template"]["spec"];
        // A readiness probe that outwaits /readyz's own wait for the store.
        let probe = &spec["containers"][0]["readinessProbe"];
        assert!(
            probe["timeoutSeconds"].as_u64().unwrap_or(1)
                > meshpass_exchange::app::READYZ_STORE_WAIT.as_secs(),
            "{dir}: {probe}"
        );
        // Two replicas at least (the HPA's count, never a fixed one), on different nodes
        // where possible.
        assert!(deploy["spec"].get("replicas").is_none(), "{dir}");
        let min = find(&docs, "HorizontalPodAutoscaler", "meshpass-exchange")["spec"]
            ["minReplicas"]
            .as_u64()
            .unwrap();
        assert!(min >= 2, "{dir}");
        let anti = &spec["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname", "{dir}");
        assert!(
            selects(&anti["labelSelector"]["matchLabels"], labels),
            "{dir}"
        );
        // The HPA scales on CPU; the PDB keeps one serving.
        let hpa = find(&docs, "HorizontalPodAutoscaler", "meshpass-exchange");
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["name"], "cpu",
            "{dir}"
        );
        let pdb = find(&docs, "PodDisruptionBudget", "meshpass-exchange");
        assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() >= 1, "{dir}");
        // SIGTERM: drain delay, then in-flight exchanges; the pod and its sidecar
        // outlive both, so no kill cuts an exchange short.
        let toml = exchange_toml_of(&docs);
        let server = &toml["server"];
        let drain = server["drain_delay_secs"].as_integer().unwrap() as u64;
        let grace = server["shutdown_grace_secs"].as_integer().unwrap() as u64;
        assert!(
            drain >= 1,
            "{dir}: a drain delay lets endpoints update first"
        );
        let term = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            term > drain + grace,
            "{dir}: terminationGracePeriodSeconds {term}"
        );
        let proxy: Value = serde_json::from_str(
            deploy["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let sidecar = duration(proxy["terminationDrainDuration"].as_str().unwrap());
        assert!(sidecar >= Duration::from_secs(drain + grace), "{dir}");
        assert!(sidecar < Duration::from_secs(term), "{dir}");
    }
}

// ---- Monitoring -------------------------------------------------------------------------

/// Every `meshpass_*` metric name the code defines (string literals in the service and
/// the filter).
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in ["exchange-svc/src", "filter/src"] {
        let mut dirs = vec![root().join(dir)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for lit in text.split('"').skip(1).step_by(2) {
                        if lit.starts_with("meshpass_")
                            && lit.len() > 9
                            && lit
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        {
                            names.insert(lit.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

/// Metric names a PromQL expression uses (histogram series map to their metric).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("meshpass_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.push(base.to_string());
        }
        i = end;
    }
    out
}

fn unknown_metrics<'a>(
    exprs: impl Iterator<Item = &'a str>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    exprs
        .flat_map(metrics_in)
        .filter(|m| !known.contains(m))
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_the_code_exports() {
    let known = exported_metrics();
    assert!(
        known.contains("meshpass_exchanges_total") && known.contains("meshpass_requests_allowed"),
        "{known:?}"
    );
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("istio/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    let rule = &yaml_docs(&root().join("istio/monitoring/prometheusrule.yaml"))[0];
    let alerts: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(alerts.len() >= 6);
    for (what, list) in [("dashboard", &exprs), ("PrometheusRule", &alerts)] {
        let used: BTreeSet<String> = list.iter().flat_map(|e| metrics_in(e)).collect();
        assert!(used.len() >= 5, "{what} uses {used:?}");
        let unknown = unknown_metrics(list.iter().map(String::as_str), &known);
        assert!(
            unknown.is_empty(),
            "{what} queries metrics the code does not export: {unknown:?}"
        );
    }
    // The check can fail.
    assert_eq!(
        unknown_metrics(["rate(meshpass_exchange_total[5m])"].into_iter(), &known),
        ["meshpass_exchange_total"]
    );
    // The PodMonitors select the exchange pods and the filter's sidecars.
    let prod = render(&root().join("istio/overlays/production"));
    let deploy = find(&prod, "Deployment", "meshpass-exchange");
    let pm = find(&prod, "PodMonitor", "meshpass-exchange");
    assert!(selects(
        &pm["spec"]["selector"]["matchLabels"],
        pod_labels(deploy)
    ));
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    let sidecars = find(&prod, "PodMonitor", "meshpass-sidecars");
    let echo = kind_manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["name"] == "echo")
        .unwrap()
        .1;
    assert!(selects(
        &sidecars["spec"]["selector"]["matchLabels"],
        pod_labels(&echo)
    ));
}

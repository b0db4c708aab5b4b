//! Who may reach what on the exchange service through Istio, decided by evaluating the
//! AuthorizationPolicies in `istio/` (`manifests/authz.rs`) for every service account the
//! manifests run, a stranger and a plain-text caller: only the sidecars that run the
//! filter may `POST /token` and poll `GET /revocations` (a filter that cannot poll the
//! feed keeps serving revoked subjects' cached tokens); anyone may read the public
//! documents; the management API is reachable in the mesh from the `meshpass` namespace
//! only, as its NetworkPolicy says. Each rule returns its violations, so a test also
//! shows it refuses a broken manifest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;

use std::collections::BTreeSet;

use manifests::authz::{allows, Request};
use manifests::{find, kind_manifests, pod_labels, selects};
use serde_json::{json, Value};

fn base() -> Vec<Value> {
    manifests::base_docs()
}

fn kit() -> Vec<Value> {
    manifests::kit_docs()
}

/// The principal of every workload whose sidecar a meshpass filter manifest selects (by
/// its service account in the kind kit).
fn filter_sidecars() -> BTreeSet<String> {
    let workloads = kind_manifests();
    let mut out = BTreeSet::new();
    for (_, f) in manifests::manifests() {
        let selector = match f["kind"].as_str().unwrap_or("") {
            "WasmPlugin" | "TrafficExtension" => &f["spec"]["selector"]["matchLabels"],
            "EnvoyFilter" if f["metadata"]["name"] != "meshpass-kube-jwks" => {
                &f["spec"]["workloadSelector"]["labels"]
            }
            _ => continue,
        };
        let ns = f["metadata"]["namespace"].as_str().unwrap();
        for (_, d) in workloads
            .iter()
            .filter(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["namespace"] == ns)
        {
            if selects(selector, pod_labels(d)) {
                let sa = d["spec"]["template"]["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap();
                out.insert(format!("cluster.local/ns/{ns}/sa/{sa}"));
            }
        }
    }
    // The kit applies no `frontend` WasmPlugin, but wasmplugin-outbound.yaml selects it.
    assert!(out.len() >= 2, "{out:?}");
    out
}

/// Every service account a Deployment of `docs` runs as, an operator's pod in the
/// exchange's namespace, and a stranger.
fn principals(docs: &[Value]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            let ns = d["metadata"]["namespace"].as_str().unwrap();
            let sa = d["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            format!("cluster.local/ns/{ns}/sa/{sa}")
        })
        .collect();
    out.insert("cluster.local/ns/meshpass/sa/meshpassctl".into());
    out.insert("cluster.local/ns/demo/sa/stranger".into());
    out.insert("cluster.local/ns/other/sa/default".into());
    out
}

/// What the exchange service's port rules must decide, for each caller.
fn access_violations(docs: &[Value], filters: &BTreeSet<String>) -> Vec<String> {
    let deploy = find(docs, "Deployment", "meshpass-exchange");
    let ns = deploy["metadata"]["namespace"].as_str().unwrap();
    let labels = pod_labels(deploy);
    let mut callers: Vec<Option<String>> = principals(docs).into_iter().map(Some).collect();
    callers.extend(filters.iter().cloned().map(Some));
    callers.push(None);
    let mut bad = Vec::new();
    for caller in &callers {
        let who = caller.as_deref().unwrap_or("a plain-text caller");
        let may = |port, method, path| {
            let req = Request {
                principal: caller.as_deref(),
                port,
                method,
                path,
            };
            allows(docs, ns, labels, &req)
        };
        let filter = caller.as_ref().is_some_and(|c| filters.contains(c));
        for (method, path) in [("POST", "/token"), ("GET", "/revocations")] {
            if may(8080, method, path) != filter {
                bad.push(format!(
                    "{who} {} {method} {path} on 8080, but only the filter sidecars may",
                    if filter { "may not" } else { "may" },
                ));
            }
        }
        if !may(8080, "GET", "/.well-known/jwks.json") {
            bad.push(format!("{who} may not GET the JWKS, which is public"));
        }
        let operator = caller
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("cluster.local/ns/{ns}/")));
        for (method, path) in [("GET", "/api/v1/mappings"), ("POST", "/api/v1/revocations")] {
            if may(8081, method, path) != operator {
                bad.push(format!(
                    "{who} {} {method} {path} on the management port 8081, but exactly the \
                     callers in namespace {ns} may (its NetworkPolicy's rule)",
                    if operator { "may not" } else { "may" },
                ));
            }
        }
    }
    bad
}

#[test]
fn only_the_filter_sidecars_may_exchange_and_poll_the_revocation_feed_and_only_the_namespace_may_manage(
) {
    let filters = filter_sidecars();
    for (name, docs) in [("istio/base", base()), ("the kind kit", kit())] {
        let bad = access_violations(&docs, &filters);
        assert!(bad.is_empty(), "{name}:\n{}", bad.join("\n"));
    }
}

fn rules(docs: &mut [Value]) -> &mut Vec<Value> {
    let ap = docs
        .iter_mut()
        .find(|d| {
            d["kind"] == "AuthorizationPolicy" && d["metadata"]["name"] == "meshpass-exchange"
        })
        .unwrap();
    ap["spec"]["rules"].as_array_mut().unwrap()
}

#[test]
fn the_access_check_refuses_a_policy_that_forgets_the_feed_or_the_management_port() {
    let filters = filter_sidecars();
    // Without /revocations, the filters cannot poll the feed.
    let mut docs = base();
    for r in rules(&mut docs).iter_mut() {
        let tos = r.get_mut("to").and_then(Value::as_array_mut);
        for to in tos.into_iter().flatten() {
            // `pointer_mut`, not indexing: indexing a missing key would insert a null.
            if let Some(paths) = to
                .pointer_mut("/operation/paths")
                .and_then(Value::as_array_mut)
            {
                paths.retain(|p| p != "/revocations");
            }
        }
    }
    let bad = access_violations(&docs, &filters);
    assert!(
        bad.iter().any(|v| v.contains("may not GET /revocations")),
        "{bad:?}"
    );
    // Without the management rule, meshpassctl in the namespace is refused.
    let mut docs = base();
    rules(&mut docs).retain(|r| !r.to_string().contains("8081"));
    let bad = access_violations(&docs, &filters);
    assert!(bad.iter().any(|v| v.contains("8081")), "{bad:?}");
    // A rule that opens /token to every principal.
    let mut docs = base();
    rules(&mut docs).push(json!({"to": [{"operation": {"paths": ["/token"]}}]}));
    let bad = access_violations(&docs, &filters);
    assert!(
        bad.iter()
            .any(|v| v.contains("a plain-text caller may POST /token")),
        "{bad:?}"
    );
}

#[test]
fn the_principals_allowed_to_exchange_are_named_one_by_one() {
    let docs = base();
    let ap = find(&docs, "AuthorizationPolicy", "meshpass-exchange");
    for r in ap["spec"]["rules"].as_array().unwrap() {
        for p in r["from"][0]["source"]["principals"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let p = p.as_str().unwrap();
            let parts: Vec<&str> = p.split('/').collect();
            assert!(
                !p.contains('*') && parts.len() == 5 && parts[1] == "ns" && parts[3] == "sa",
                "{p}: name one service account (TRUST_DOMAIN/ns/NS/sa/SA), never a pattern"
            );
        }
    }
}

// ---- the evaluator itself ----------------------------------------------------------------

fn policy(rules: Value) -> Vec<Value> {
    vec![json!({
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "action": "ALLOW", "rules": rules},
    })]
}

fn req<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        principal,
        port: 8080,
        method,
        path,
    }
}

#[test]
fn an_allow_rule_needs_a_matching_source_and_operation() {
    let docs = policy(json!([{
        "from": [{"source": {"principals": ["td/ns/a/sa/b"]}}],
        "to": [{"operation": {"ports": ["8080"], "methods": ["GET"], "paths": ["/x", "/y*"]}}],
    }]));
    let labels = json!({"app": "x"});
    let may = |r: &Request| allows(&docs, "ns", &labels, r);
    assert!(may(&req(Some("td/ns/a/sa/b"), "GET", "/x")));
    assert!(may(&req(Some("td/ns/a/sa/b"), "GET", "/y/z")));
    assert!(!may(&req(Some("td/ns/a/sa/c"), "GET", "/x")));
    assert!(!may(&req(None, "GET", "/x")));
    assert!(!may(&req(Some("td/ns/a/sa/b"), "POST", "/x")));
    assert!(!may(&req(Some("td/ns/a/sa/b"), "GET", "/z")));
    let other_port = Request {
        port: 8081,
        ..req(Some("td/ns/a/sa/b"), "GET", "/x")
    };
    assert!(!may(&other_port));
    // A pod the policy does not select is not governed by it.
    assert!(allows(
        &docs,
        "ns",
        &json!({"app": "other"}),
        &req(None, "GET", "/z")
    ));
}

#[test]
fn namespaces_need_an_mtls_peer_and_not_fields_exclude() {
    let docs = policy(json!([{
        "from": [{"source": {"namespaces": ["a"], "notPrincipals": ["*/sa/bad"]}}],
    }]));
    let labels = json!({"app": "x"});
    assert!(allows(
        &docs,
        "ns",
        &labels,
        &req(Some("td/ns/a/sa/ok"), "PUT", "/")
    ));
    assert!(!allows(
        &docs,
        "ns",
        &labels,
        &req(Some("td/ns/a/sa/bad"), "PUT", "/")
    ));
    assert!(!allows(
        &docs,
        "ns",
        &labels,
        &req(Some("td/ns/b/sa/ok"), "PUT", "/")
    ));
    assert!(!allows(&docs, "ns", &labels, &req(None, "PUT", "/")));
}

#[test]
#[should_panic(expected = "not understood")]
fn a_field_the_evaluator_does_not_know_fails_the_check() {
    let docs = policy(json!([{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]));
    allows(&docs, "ns", &json!({"app": "x"}), &req(None, "GET", "/"));
}

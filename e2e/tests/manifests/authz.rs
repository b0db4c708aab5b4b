//! Istio's AuthorizationPolicy decision for one request, evaluated on the manifests, so a
//! test can ask "may this caller do this?" instead of pattern-matching YAML. Follows
//! Istio's rules: the policies that apply are those of the pod's namespace whose selector
//! picks the pod (or that have none) and those of the root namespace (`istio-system`);
//! a matching DENY refuses; with no ALLOW policy everything else is allowed, otherwise
//! one matching ALLOW rule is needed. A rule matches when one of its `from` sources and
//! one of its `to` operations match (an absent list matches anything). Only the fields
//! listed below are understood; any other field panics, so a manifest that starts using
//! one cannot pass a check that ignores it.

use serde_json::Value;

use super::selects;

/// Istio's root namespace: its policies apply to every workload.
const ROOT_NAMESPACE: &str = "istio-system";

/// A request as the server-side sidecar sees it.
pub struct Request<'a> {
    /// The mTLS peer's principal (`TRUST_DOMAIN/ns/NS/sa/SA`), `None` for plain text.
    pub principal: Option<&'a str>,
    pub port: u16,
    pub method: &'a str,
    /// The path without its query (Istio's `paths` match the path only).
    pub path: &'a str,
}

impl Request<'_> {
    /// The peer's namespace, read from its principal (Istio's `source.namespace`).
    fn namespace(&self) -> Option<&str> {
        let p = self.principal?;
        let mut parts = p.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some("ns"), Some(ns)) => Some(ns),
            _ => None,
        }
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any value).
fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

/// `field` of `obj` (a string list) against `value`: an absent field matches anything, a
/// present one needs a value (`None` never matches, as a plain-text request never
/// matches `principals`) that one of its patterns matches; `not_field` the reverse.
fn field_matches(obj: &Value, field: &str, value: Option<&str>) -> bool {
    let list = |name: &str| {
        obj.get(name).map(|v| {
            v.as_array()
                .unwrap_or_else(|| panic!("{name} is not a list"))
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    };
    let any = |ps: &[String]| value.is_some_and(|v| ps.iter().any(|p| matches(p, v)));
    let not_field = format!("not{}{}", field[..1].to_uppercase(), &field[1..]);
    list(field).is_none_or(|ps| any(&ps)) && list(&not_field).is_none_or(|ps| !any(&ps))
}

fn known_fields(obj: &Value, what: &str, known: &[&str]) {
    for k in obj
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a map"))
        .keys()
    {
        let base = k.strip_prefix("not").map_or(k.clone(), |rest| {
            let mut c = rest.chars();
            c.next()
                .map_or(String::new(), |f| f.to_lowercase().chain(c).collect())
        });
        assert!(
            known.contains(&base.as_str()),
            "{what}: field {k} is not understood by the test's AuthorizationPolicy evaluator"
        );
    }
}

fn source_matches(source: &Value, req: &Request) -> bool {
    known_fields(source, "source", &["principals", "namespaces"]);
    field_matches(source, "principals", req.principal)
        && field_matches(source, "namespaces", req.namespace())
}

fn operation_matches(op: &Value, req: &Request) -> bool {
    known_fields(op, "operation", &["ports", "methods", "paths"]);
    let port = req.port.to_string();
    field_matches(op, "ports", Some(&port))
        && field_matches(op, "methods", Some(req.method))
        && field_matches(op, "paths", Some(req.path))
}

fn rule_matches(rule: &Value, req: &Request) -> bool {
    known_fields(rule, "rule", &["from", "to"]);
    let any = |key: &str, inner: &str, f: &dyn Fn(&Value) -> bool| {
        rule.get(key)
            .is_none_or(|l| l.as_array().unwrap().iter().any(|e| f(&e[inner])))
    };
    any("from", "source", &|s| source_matches(s, req))
        && any("to", "operation", &|o| operation_matches(o, req))
}

/// The AuthorizationPolicies that apply to a pod with `labels` in namespace `ns`.
pub fn applying<'a>(docs: &'a [Value], ns: &str, labels: &Value) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"] == "AuthorizationPolicy")
        .filter(|d| {
            let pns = d["metadata"]["namespace"].as_str().unwrap_or("");
            pns == ns || pns == ROOT_NAMESPACE
        })
        .filter(|d| {
            let sel = &d["spec"]["selector"]["matchLabels"];
            sel.is_null() || selects(sel, labels)
        })
        .collect()
}

/// Whether Istio lets `req` through to a pod with `labels` in namespace `ns`.
pub fn allows(docs: &[Value], ns: &str, labels: &Value, req: &Request) -> bool {
    let policies = applying(docs, ns, labels);
    let action = |p: &Value| p["spec"]["action"].as_str().unwrap_or("ALLOW").to_string();
    let hit = |p: &Value| {
        p["spec"]["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| rule_matches(r, req)))
    };
    for p in &policies {
        let a = action(p);
        assert!(
            a == "ALLOW" || a == "DENY",
            "{}: action {a} is not understood by the test's evaluator",
            p["metadata"]["name"]
        );
    }
    if policies.iter().any(|p| action(p) == "DENY" && hit(p)) {
        return false;
    }
    let allow: Vec<_> = policies.iter().filter(|p| action(p) == "ALLOW").collect();
    allow.is_empty() || allow.iter().any(|p| hit(p))
}

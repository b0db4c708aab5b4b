//! The plugin configuration against filter/README.md ("Configuration") and
//! docs/DESIGN.md: defaults, bounds, unknown fields, field-named errors, start warnings,
//! values that would overflow a u64 ms computation. (The Istio manifests' configs go
//! through the same parser in e2e/tests/istio_manifests.rs.)
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use meshpass_filter::api::{CallResponse, Verdict};
use meshpass_filter::config::{Config, FailureMode, IssuerKeys, Mode, OwnIdentity};
use meshpass_filter::worker::Worker;
use serde_json::{json, Value};

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const PEER: [&str; 2] = ["connection", "uri_san_peer_certificate"];

fn base(key: &Key) -> Value {
    json!({
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "jwks": jwks(&[key]),
        }],
        "exchange": {"cluster": "exchange"},
        "default_rule": {"resource": "r"},
    })
}

fn remote(key: &Key) -> Value {
    let mut c = base(key);
    let i = c["issuers"][0].as_object_mut().unwrap();
    i.remove("jwks");
    i.insert("jwks_cluster".into(), json!("jwks"));
    i.insert("jwks_path".into(), json!("/keys"));
    c
}

fn parse(c: &Value) -> Result<Config, meshpass_filter::config::ConfigError> {
    Config::parse(c.to_string().as_bytes())
}

/// Sets `value` at a dotted path (`a.b`, `issuers.0.x`).
fn set(c: &mut Value, path: &str, value: Value) {
    let mut cur = c;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[part],
        };
    }
    *cur = value;
}

// ---------------------------------------------------------------------------------
// Defaults and bounds: the README table.
// ---------------------------------------------------------------------------------

#[test]
fn every_default_in_the_readme_table_is_the_one_the_parser_applies() {
    let key = Key::new("k1");
    let c = parse(&remote(&key)).unwrap();
    assert_eq!(c.mode, Mode::Server);
    assert!(c.own_identity.is_none());
    assert_eq!(c.token_header, "authorization");
    assert!(c.bearer);
    assert_eq!(c.policy.max_token_bytes, 8192);
    assert!(c.bypass.is_empty());
    assert!(c.rules.is_empty());
    assert_eq!(c.exchange.path, "/token");
    assert_eq!(
        c.exchange.authority, "exchange",
        "authority defaults to the cluster name"
    );
    assert_eq!(c.exchange.timeout_ms, 2000);
    assert!(c.exchange.actor_token_header.is_none());
    assert!(!c.set_subject_header);
    assert!(!c.insecure_keep_x_meshpass_headers);
    assert!(!c.allow_unnormalised_paths);
    assert!(c.danger_trap_on_path.is_none());
    assert_eq!(c.expiry_margin_ms, 10_000);
    assert_eq!(c.cache_slots, 4096);
    assert_eq!(c.refresh_ahead_percent, 75);
    assert_eq!(c.retry_after_secs, 5);
    assert_eq!(c.tick_ms, 1000);
    assert!(!c.noop && !c.validate_only);
    assert_eq!(
        c.default_target.as_ref().unwrap().failure_mode,
        FailureMode::Deny
    );
    let rv = c
        .revocation
        .as_ref()
        .expect("revocation on by default with an exchange");
    assert_eq!(rv.poll_interval_ms, 5000);
    assert_eq!(rv.path, "/revocations");
    assert_eq!(rv.cluster, "exchange");
    assert_eq!(rv.authority, "exchange");
    let ip = &c.policy.issuers[0];
    assert!(ip.id_patterns.is_empty());
    assert_eq!(ip.leeway_secs, 30);
    assert_eq!(ip.max_lifetime_secs, None);
    assert_eq!(ip.subject_format, meshpass_core::SubjectFormat::JwtSvid);
    match &c.keys[ISS] {
        IssuerKeys::Remote(r) => {
            assert_eq!(r.refresh_ms, 300_000);
            assert_eq!(r.min_refetch_ms, 30_000);
            assert_eq!(
                r.authority, "jwks",
                "jwks_authority defaults to the cluster name"
            );
        }
        IssuerKeys::Inline(_) => panic!("remote keys expected"),
    }
    // CLIENT mode without own_identity: trust domain cluster.local.
    let mut cl = remote(&key);
    cl["mode"] = json!("CLIENT");
    let c = parse(&cl).unwrap();
    match c.own_identity {
        Some(OwnIdentity::Discover(td)) => assert_eq!(td.as_str(), "cluster.local"),
        other => panic!("{other:?}"),
    }
    // retry_after_secs: 0 is raised to 1.
    let mut r = base(&key);
    r["retry_after_secs"] = json!(0);
    assert_eq!(parse(&r).unwrap().retry_after_secs, 1);
}

#[test]
fn every_bound_in_the_readme_table_is_enforced_at_its_exact_edges_naming_the_field() {
    let key = Key::new("k1");
    // (path, field, accepted edge values, refused values)
    let cases: Vec<(&str, &str, Vec<Value>, Vec<Value>)> = vec![
        (
            "max_token_bytes",
            "max_token_bytes",
            vec![json!(1), json!(65536)],
            vec![json!(0), json!(65537)],
        ),
        (
            "cache.slots",
            "cache.slots",
            vec![json!(16), json!(1_048_576)],
            vec![json!(15), json!(1_048_577)],
        ),
        (
            "cache.refresh_ahead_percent",
            "cache.refresh_ahead_percent",
            vec![json!(1), json!(100)],
            vec![json!(0), json!(101)],
        ),
        (
            "retry_after_secs",
            "retry_after_secs",
            vec![json!(0), json!(3600)],
            vec![json!(3601), json!(u64::MAX)],
        ),
        (
            "tick_ms",
            "tick_ms",
            vec![json!(10), json!(60_000)],
            vec![json!(9), json!(60_001)],
        ),
        (
            "exchange.timeout_ms",
            "exchange.timeout_ms",
            vec![json!(1)],
            vec![json!(0)],
        ),
        (
            "issuers.0.leeway_secs",
            "issuers[0].leeway_secs",
            vec![json!(0), json!(300)],
            vec![json!(301)],
        ),
        (
            "issuers.0.max_lifetime_secs",
            "issuers[0].max_lifetime_secs",
            vec![json!(1), json!(31_536_000)],
            vec![json!(0), json!(31_536_001)],
        ),
        (
            "issuers.0.audiences",
            "issuers[0].audiences",
            vec![json!(["a"])],
            vec![json!([])],
        ),
        (
            "issuers.0.trust_domains",
            "issuers[0].trust_domains",
            vec![json!(["cluster.local"])],
            vec![json!([])],
        ),
    ];
    for (path, field, ok, bad) in cases {
        for v in ok {
            let mut c = base(&key);
            set(&mut c, path, v.clone());
            // A tick above 5000 needs a poll interval at least as long: the default follows.
            if let Err(e) = parse(&c) {
                panic!("{path} = {v} is inside the README bound but refused: {e}");
            }
        }
        for v in bad {
            let mut c = base(&key);
            set(&mut c, path, v.clone());
            match parse(&c) {
                Ok(_) => panic!("{path} = {v} is outside the README bound but accepted"),
                Err(e) => assert_eq!(e.field, field, "{path} = {v}: {e}"),
            }
        }
    }
    // revocation.poll_interval_ms: 100..=3600000 and >= tick_ms.
    for (v, tick, ok) in [
        (100, 10, true),
        (3_600_000, 1000, true),
        (99, 10, false),
        (3_600_001, 1000, false),
        (999, 1000, false),
        (1000, 1000, true),
    ] {
        let mut c = base(&key);
        c["tick_ms"] = json!(tick);
        c["revocation"] = json!({"poll_interval_ms": v});
        match (parse(&c), ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert_eq!(e.field, "revocation.poll_interval_ms", "{e}"),
            (r, _) => panic!("poll_interval_ms {v} with tick {tick}: {:?}", r.map(|_| ())),
        }
    }
    // jwks_refresh_secs > 0, jwks_min_refetch_secs >= 1.
    for (name, field) in [
        ("jwks_refresh_secs", "issuers[0].jwks_refresh_secs"),
        ("jwks_min_refetch_secs", "issuers[0].jwks_min_refetch_secs"),
    ] {
        let mut c = remote(&key);
        c["issuers"][0][name] = json!(0);
        assert_eq!(parse(&c).unwrap_err().field, field);
        c["issuers"][0][name] = json!(1);
        parse(&c).unwrap();
        c["issuers"][0][name] = json!(86_400);
        parse(&c).unwrap();
        c["issuers"][0][name] = json!(86_401);
        assert_eq!(parse(&c).unwrap_err().field, field, "{name} = 86401");
    }
    // issuers: required, at least one.
    let mut c = base(&key);
    c.as_object_mut().unwrap().remove("issuers");
    assert_eq!(parse(&c).unwrap_err().field, "issuers");
}

// ---------------------------------------------------------------------------------
// Unknown fields: a typo never runs with a (less secure) default.
// ---------------------------------------------------------------------------------

#[test]
fn a_misspelt_field_at_any_level_is_refused_naming_the_unknown_key() {
    let key = Key::new("k1");
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut add = |edit: &dyn Fn(&mut Value), field: &'static str, from: Value| {
        let mut c = from;
        edit(&mut c);
        cases.push((c, field));
    };
    // Typos of security-relevant fields, each of which would otherwise run with a
    // looser default.
    add(
        &|c| c["insecure_disable_bindings"] = json!(true),
        "insecure_disable_bindings",
        base(&key),
    );
    add(&|c| c["modes"] = json!("CLIENT"), "modes", base(&key));
    add(
        &|c| c["issuers"][0]["id_pattern"] = json!(["spiffe://cluster.local/ns/a/*"]),
        "issuers[0].id_pattern",
        base(&key),
    );
    add(
        &|c| c["issuers"][0]["spiffe_id_pattern"] = json!(["spiffe://cluster.local/ns/a/*"]),
        "issuers[0].spiffe_id_pattern",
        base(&key),
    );
    add(
        &|c| c["issuers"][0]["max_lifetime"] = json!(60),
        "issuers[0].max_lifetime",
        base(&key),
    );
    add(
        &|c| c["issuers"][0]["jwks_refresh"] = json!(60),
        "issuers[0].jwks_refresh",
        remote(&key),
    );
    add(
        &|c| c["default_rule"]["failuremode"] = json!("deny"),
        "default_rule.failuremode",
        base(&key),
    );
    add(
        &|c| c["rules"] = json!([{"resource": "r", "method": ["GET"]}]),
        "rules[0].method",
        base(&key),
    );
    add(
        &|c| c["bypass"] = json!([{"path": "/healthz", "exact": true}]),
        "bypass[0].exact",
        base(&key),
    );
    add(
        &|c| c["exchange"]["timeout"] = json!(5),
        "exchange.timeout",
        base(&key),
    );
    add(
        &|c| c["cache"] = json!({"slot": 16}),
        "cache.slot",
        base(&key),
    );
    add(
        &|c| c["revocation"] = json!({"enable": false}),
        "revocation.enable",
        base(&key),
    );
    add(
        &|c| {
            c["mode"] = json!("CLIENT");
            c["own_identity"] = json!({"spiffeid": ALICE});
        },
        "own_identity.spiffeid",
        base(&key),
    );
    for (c, field) in cases {
        match parse(&c) {
            Ok(_) => panic!("{field}: an unknown field was accepted silently"),
            Err(e) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Start warnings: "Every insecure_* / danger_* / benchmark option set is warned about
// in Envoy's log at start."
// ---------------------------------------------------------------------------------

#[test]
fn every_insecure_danger_and_benchmark_option_set_is_warned_about_at_start() {
    let key = Key::new("k1");
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut c = base(&key);
    c["mode"] = json!("NONE");
    c["insecure_disable_binding"] = json!(true);
    cases.push(("insecure_disable_binding", c));
    let mut c = base(&key);
    c["insecure_keep_x_meshpass_headers"] = json!(true);
    cases.push(("insecure_keep_x_meshpass_headers", c));
    let mut c = base(&key);
    c["danger_trap_on_path"] = json!("/trap");
    cases.push(("danger_trap_on_path", c));
    let mut c = base(&key);
    for k in ["exchange", "default_rule"] {
        c.as_object_mut().unwrap().remove(k);
    }
    c["validate_only_for_benchmarks"] = json!(true);
    cases.push(("validate_only_for_benchmarks", c));
    // The benchmark aid that turns the whole filter off (every request goes on
    // unauthenticated) is a benchmark option too.
    cases.push(("noop_for_benchmarks", json!({"noop_for_benchmarks": true})));
    for (name, cfg) in cases {
        let c = parse(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = c.warnings();
        assert!(
            w.iter().any(|l| l.contains(name)),
            "{name} is set but no start warning names it: {w:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Field-named errors and refusals the README promises.
// ---------------------------------------------------------------------------------

#[test]
fn a_jwks_authority_beside_an_inline_jwks_is_refused_naming_jwks_authority() {
    let key = Key::new("k1");
    let mut c = base(&key);
    c["issuers"][0]["jwks_authority"] = json!("spire.test");
    let e = parse(&c).unwrap_err();
    // The operator wrote jwks_authority (no jwks_path anywhere): the error must name it.
    assert_eq!(e.field, "issuers[0].jwks_authority", "{e}");
}

#[test]
fn a_refresh_setting_beside_an_inline_jwks_is_refused_naming_the_field() {
    // Inline keys are never fetched: a refresh setting there is a mistake (0 is out of
    // range besides), as jwks_path and jwks_authority are.
    let key = Key::new("k1");
    for field in ["jwks_refresh_secs", "jwks_min_refetch_secs"] {
        let mut c = base(&key);
        c["issuers"][0][field] = json!(0);
        let e = parse(&c).unwrap_err();
        assert_eq!(e.field, format!("issuers[0].{field}"), "{e}");
    }
}

#[test]
fn a_rule_authority_wildcard_is_only_accepted_as_star_dot_suffix() {
    // README: `authority` (a host: exact or `*.suffix`). `*example.com` is neither, and
    // it selects the rule for `evilexample.com` too; a bare `*` selects every host.
    let key = Key::new("k1");
    for a in ["*example.com", "*", "api.*.test", "*.*.test"] {
        let mut c = base(&key);
        c["rules"] = json!([{"authority": a, "resource": "a"}]);
        match parse(&c) {
            Ok(cfg) => {
                let picked = cfg
                    .select(Some("evilexample.com"), Some("/"), Some("GET"))
                    .and_then(|t| t.resource.clone());
                panic!(
                    "rules[0].authority {a:?} is no host and no *.suffix but was accepted \
                     (it selects rule {picked:?} for evilexample.com)"
                );
            }
            Err(e) => assert_eq!(e.field, "rules[0].authority", "{a}: {e}"),
        }
    }
    // `*.example.com` stays fine and does not match `evilexample.com`.
    let mut c = base(&key);
    c["rules"] = json!([{"authority": "*.example.com", "resource": "a"}]);
    let cfg = parse(&c).unwrap();
    assert_eq!(
        cfg.select(Some("evilexample.com"), Some("/"), Some("GET"))
            .and_then(|t| t.resource.clone()),
        Some("r".to_string())
    );
}

#[test]
fn a_token_header_in_the_reserved_x_meshpass_namespace_is_refused_however_it_is_spelt() {
    // README: `x-meshpass-*` is refused as token_header; hygiene treats `_` as `-` and
    // ignores case (header_map::is_reserved), so these name the same reserved headers.
    let key = Key::new("k1");
    for h in [
        "x-meshpass-token",
        "X-MESHPASS-TOKEN",
        "x_meshpass_token",
        "x-meshpass_token",
    ] {
        let mut c = base(&key);
        c["token_header"] = json!(h);
        match parse(&c) {
            Ok(_) => panic!("token_header {h:?} is a reserved x-meshpass-* name but was accepted"),
            Err(e) => assert_eq!(e.field, "token_header", "{h}: {e}"),
        }
    }
}

#[test]
fn a_disabled_revocation_section_is_still_checked_against_its_bounds() {
    // README: revocation.poll_interval_ms 100..=3600000, revocation.path no query. A
    // section with `enabled: false` is still configuration an operator wrote: a value
    // out of bound there must not pass silently (and fail once it is switched on).
    let key = Key::new("k1");
    for (section, field) in [
        (
            json!({"enabled": false, "poll_interval_ms": 0}),
            "revocation.poll_interval_ms",
        ),
        (
            json!({"enabled": false, "path": "revocations?x"}),
            "revocation.path",
        ),
    ] {
        let mut c = base(&key);
        c["revocation"] = section.clone();
        match parse(&c) {
            Ok(_) => panic!("{section} was accepted"),
            Err(e) => assert_eq!(e.field, field, "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Values the parser accepts must not overflow a u64 ms computation (a panic is an
// abort in the wasm build; release wraps silently).
// ---------------------------------------------------------------------------------

fn no_panic(what: &str, f: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{what}: the accepted configuration makes the filter panic: {msg}");
    }
}

#[test]
fn a_huge_exchange_timeout_is_refused_or_runs_without_overflowing() {
    let key = Key::new("k1");
    let mut c = base(&key);
    c["exchange"]["timeout_ms"] = json!(u64::MAX);
    let cfg = match parse(&c) {
        Err(e) => {
            assert_eq!(e.field, "exchange.timeout_ms", "{e}");
            return;
        }
        Ok(cfg) => cfg,
    };
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = Worker::new(cfg.clone());
    w.start(&mut host);
    // The root tick (revocation poll lease: now + timeout_ms + 1000).
    no_panic("tick with revocation on", || {
        host.ctx = 0;
        w.on_tick(&mut host);
    });
    // A miss (in-flight deadline: now + timeout_ms + 2000).
    let mut host = Mock::new(now * 1000);
    let mut w = Worker::new(cfg);
    w.start(&mut host);
    let t = key.svid(ISS, AUD, ALICE, now, 600);
    host.set_prop(&PEER, ALICE);
    host.request(
        1,
        &[(":path", "/x"), ("authorization", &format!("Bearer {t}"))],
    );
    no_panic("a cache miss", || {
        assert_eq!(w.on_request(&mut host, 1), Verdict::Pause);
    });
}

#[test]
fn a_huge_jwks_refresh_is_refused_or_runs_without_overflowing() {
    let key = Key::new("k1");
    let mut c = remote(&key);
    c["revocation"] = json!({"enabled": false});
    c["issuers"][0]["jwks_refresh_secs"] = json!(u64::MAX / 1000);
    let cfg = match parse(&c) {
        Err(e) => {
            assert_eq!(e.field, "issuers[0].jwks_refresh_secs", "{e}");
            return;
        }
        Ok(cfg) => cfg,
    };
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = Worker::new(cfg);
    w.start(&mut host); // the first fetch goes out at configure time
    let d = host.dispatched.last().expect("first JWKS fetch").clone();
    assert_eq!(d.header(":path"), Some("/keys"));
    no_panic(
        "the JWKS answer (next fetch due: now + jwks_refresh_secs * 1000)",
        || {
            host.ctx = d.from_ctx;
            w.on_call_response(
                &mut host,
                d.token,
                CallResponse {
                    status: Some(200),
                    retry_after: None,
                    body: jwks(&[&key]).into_bytes(),
                },
            );
        },
    );
}

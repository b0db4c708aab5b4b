//! The configuration: what is accepted, what is refused and how the field is named; rule selection.

use super::*;

#[test]
fn accepts_a_minimal_config_with_secure_defaults() {
    let key = Key::new("k1");
    let c = Config::parse(
        json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
            "exchange": {"cluster": "outbound|8080||exchange.meshpass.svc.cluster.local"},
            "default_rule": {"resource": "r"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.mode, Mode::Server);
    assert_eq!(c.exchange.path, "/token");
    assert_eq!(c.exchange.timeout_ms, 2000);
    assert_eq!(c.policy.max_token_bytes, 8192);
    assert_eq!(c.token_header, "authorization");
    assert_eq!(c.default_target.unwrap().failure_mode, FailureMode::Deny);
}

#[test]
fn refuses_invalid_configs_naming_the_field() {
    let key = Key::new("k1");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["issuers"] = json!([])), "issuers"),
        (Box::new(|c| c["mode"] = json!("NONE")), "mode"),
        (Box::new(|c| c["mode"] = json!("server")), "mode"),
        (
            Box::new(|c| c["insecure_disable_binding"] = json!(true)),
            "insecure_disable_binding",
        ),
        (
            Box::new(|c| c["issuers"][0]["trust_domains"] = json!(["Bad Domain"])),
            "issuers[0].trust_domains[0]",
        ),
        (
            Box::new(|c| c["issuers"][0]["spiffe_id_patterns"] = json!(["http://x"])),
            "issuers[0].spiffe_id_patterns[0]",
        ),
        (
            Box::new(|c| c["issuers"][0]["audiences"] = json!([])),
            "issuers[0].audiences",
        ),
        (
            Box::new(|c| c["issuers"][0]["subject_format"] = json!("x509")),
            "issuers[0].subject_format",
        ),
        (
            Box::new(|c| c["issuers"][0]["jwks"] = json!({"keys": []})),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| {
                c["issuers"][0].as_object_mut().unwrap().remove("jwks");
            }),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| c["issuers"][0]["jwks_cluster"] = json!("jwks")),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| c["rules"][0]["failure_mode"] = json!("open")),
            "rules[0].failure_mode",
        ),
        (
            Box::new(|c| c["exchange"]["timeout_ms"] = json!(0)),
            "exchange.timeout_ms",
        ),
        (
            Box::new(|c| c["exchange"]["path"] = json!("token")),
            "exchange.path",
        ),
        (
            Box::new(|c| c["token_header"] = json!("x-meshpass-token")),
            "token_header",
        ),
        (
            Box::new(|c| c["max_token_bytes"] = json!(0)),
            "max_token_bytes",
        ),
        (Box::new(|c| c["bypass"] = json!([{}])), "bypass[0]"),
        (Box::new(|c| c["surprise"] = json!(1)), "surprise"),
        (
            Box::new(|c| c["exchange"]["actor_token_header"] = json!("x-actor")),
            "exchange.actor_token_header",
        ),
        // Checked also where no revocation section inherits it (revocation is off here).
        (
            Box::new(|c| c["exchange"]["authority"] = json!("exchange test")),
            "exchange.authority",
        ),
        (
            Box::new(|c| {
                let i = c["issuers"][0].as_object_mut().unwrap();
                i.remove("jwks");
                i.insert("jwks_cluster".into(), json!("jwks"));
                i.insert("jwks_path".into(), json!("/keys"));
                i.insert("jwks_authority".into(), json!("spire\r\nx: y"));
            }),
            "issuers[0].jwks_authority",
        ),
    ];
    for (edit, field) in cases {
        let mut cfg = base_config(&key);
        edit(&mut cfg);
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(!e.reason.is_empty());
    }
    let e = Config::parse(b"{\"surprise\": 1}").unwrap_err();
    assert!(e.reason.contains("surprise"), "{e}");
}

#[test]
fn refuses_a_rule_or_bypass_that_could_never_match() {
    // Found by fuzz/fuzz_targets/plugin_config.rs: requests are matched on the host
    // (port dropped) and on the path without its query, so these were accepted and then
    // silently never matched: the request fell to the default rule, or was not bypassed.
    let key = Key::new("k1");
    for (rules, bypass, field) in [
        (
            json!([{"authority": "api.test:8443", "resource": "a"}]),
            json!([]),
            "rules[0].authority",
        ),
        (
            json!([{"path_prefix": "/admin?x=1", "resource": "a"}]),
            json!([]),
            "rules[0].path_prefix",
        ),
        (
            json!([]),
            json!([{"path": "/healthz?full=1"}]),
            "bypass[0].path",
        ),
        (
            json!([]),
            json!([{"path_prefix": "/static#x"}]),
            "bypass[0].path_prefix",
        ),
    ] {
        let mut cfg = base_config(&key);
        cfg["rules"] = rules;
        cfg["bypass"] = bypass;
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    // A host alone, an IPv6 literal and a wildcard are fine.
    let mut cfg = base_config(&key);
    cfg["rules"] = json!([
        {"authority": "api.test", "resource": "a"},
        {"authority": "[::1]", "resource": "b"},
        {"authority": "*.shop.test", "resource": "c"},
    ]);
    Config::parse(cfg.to_string().as_bytes()).unwrap();
}

#[test]
fn refuses_an_id_pattern_outside_the_issuers_trust_domains() {
    // Core's ValidationPolicy::check: such a pattern could never match.
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["issuers"][0]["spiffe_id_patterns"] = json!(["spiffe://elsewhere.test/ns/shop/*"]);
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "issuers[0].id_patterns", "{e}");
    assert!(e.reason.contains("outside"), "{e}");
}

/// CLIENT binding makes every subject equal to the proxy's own identity: a fixed one no
/// issuer admits (another trust domain, or outside `spiffe_id_patterns`) was accepted,
/// and then every outbound request got 401. A discovery trust domain no issuer lists is
/// warned (a local certificate's SAN may still be admitted). And an actor token header
/// named `x-meshpass-subject`, the filter's own header, was accepted and never read.
#[test]
fn client_mode_refuses_an_own_identity_no_issuer_admits_and_an_actor_header_it_owns() {
    let key = Key::new("k1");
    let client = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base_config(&key);
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"spiffe_id": ALICE});
        edit(&mut c);
        Config::parse(c.to_string().as_bytes())
    };
    client(&|_| {}).unwrap();
    for (id, why) in [
        ("spiffe://other.example/ns/shop/sa/alice", "trust domain"),
        ("spiffe://cluster.local/ns/billing/sa/alice", "id pattern"),
    ] {
        let e = client(&|c| c["own_identity"] = json!({"spiffe_id": id})).unwrap_err();
        assert_eq!(e.field, "own_identity.spiffe_id", "{why}: {e}");
    }
    let c = client(&|c| c["own_identity"] = json!({"trust_domain": "other.example"})).unwrap();
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("\"other.example\" is in no issuer's trust_domains")),
        "{w:?}"
    );
    for name in ["x-meshpass-subject", "X_Meshpass_Subject"] {
        let e = client(&|c| {
            c["exchange"]["actor_token_header"] = json!(name);
            c["insecure_keep_x_meshpass_headers"] = json!(true);
        })
        .unwrap_err();
        assert_eq!(e.field, "exchange.actor_token_header", "{name}: {e}");
    }
}

#[test]
fn issuer_policy_accepts_core_spellings_and_older_filter_ones() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    let pats = cfg["issuers"][0]
        .as_object_mut()
        .unwrap()
        .remove("spiffe_id_patterns")
        .unwrap();
    cfg["issuers"][0]["id_patterns"] = pats;
    cfg["issuers"][0]["subject_format"] = json!("kubernetes_sa");
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(c.policy.issuers[0].id_patterns.len(), 1);
    cfg["issuers"][0]["subject_format"] = json!("kubernetes_service_account");
    Config::parse(cfg.to_string().as_bytes()).unwrap();
    // Both spellings at once are ambiguous.
    cfg["issuers"][0]["spiffe_id_patterns"] = json!([]);
    assert!(Config::parse(cfg.to_string().as_bytes()).is_err());
}

#[test]
fn refuses_typed_field_errors_naming_the_nested_field() {
    let key = Key::new("k1");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"rules": [{"resource": "r"}, {"resource": "r", "scopes": ["a b"]}]}),
            "rules[1].scopes[0]",
        ),
        (
            json!({"rules": [{"resource": "r", "audience": [""]}]}),
            "rules[0].audience[0]",
        ),
        (
            json!({"rules": [{"resource": "r", "surprise": 1}]}),
            "rules[0].surprise",
        ),
        (
            json!({"exchange": {"cluster": "x", "timeout_ms": "soon"}}),
            "exchange.timeout_ms",
        ),
        (
            json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key]), "leeway_secs": -1}]}),
            "issuers[0].leeway_secs",
        ),
        // Values that parse but defeat their rule: a year of leeway, a lifetime cap no
        // token can meet, an unknown-kid refetch on every request.
        (
            json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key]), "leeway_secs": 31536000}]}),
            "issuers[0].leeway_secs",
        ),
        (
            json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key]), "max_lifetime_secs": 0}]}),
            "issuers[0].max_lifetime_secs",
        ),
        (
            json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks_cluster": "jwks", "jwks_path": "/jwks", "jwks_min_refetch_secs": 0}]}),
            "issuers[0].jwks_min_refetch_secs",
        ),
    ];
    for (edit, field) in cases {
        let mut cfg = base_config(&key);
        for (k, v) in edit.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn mode_none_needs_the_insecure_flag() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["mode"] = json!("NONE");
    cfg["insecure_disable_binding"] = json!(true);
    assert_eq!(
        Config::parse(cfg.to_string().as_bytes()).unwrap().mode,
        Mode::NoneInsecure
    );
}

#[test]
fn rules_select_by_authority_path_and_method_then_default() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["rules"] = json!([
        {"authority": "api.test", "path_prefix": "/admin", "methods": ["post"], "resource": "admin"},
        {"authority": "*.shop.test", "resource": "shop"},
    ]);
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    let pick = |a, p, m| c.select(a, p, m).and_then(|t| t.resource.clone());
    assert_eq!(
        pick(Some("api.test:443"), Some("/admin/x"), Some("POST")),
        Some("admin".into())
    );
    assert_eq!(
        pick(Some("api.test"), Some("/admin/x"), Some("GET")),
        Some("https://default.test".into())
    );
    // A method differing in case only (an HTTP/2 `:method`, which Envoy passes as sent)
    // gets the same rule: apps that upper-case it (Werkzeug, so Flask) serve it as POST,
    // and ones that do not refuse it.
    for m in ["post", "Post"] {
        assert_eq!(
            pick(Some("api.test"), Some("/admin/x"), Some(m)),
            Some("admin".into()),
            "{m}"
        );
    }
    assert_eq!(
        pick(Some("a.shop.test"), Some("/"), Some("GET")),
        Some("shop".into())
    );
    assert_eq!(
        pick(Some("shop.test"), Some("/"), Some("GET")),
        Some("https://default.test".into())
    );
    cfg.as_object_mut().unwrap().remove("default_rule");
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert!(c.select(Some("x"), Some("/"), Some("GET")).is_none());
}

#[test]
fn a_trailing_dot_on_the_authority_selects_the_same_rule_as_the_bare_host() {
    // `api.test.` is the same name as `api.test` (DNS root label); Envoy routes both to
    // the same virtual host unless told otherwise, so the rule must not fall to the default.
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["rules"] = json!([
        {"authority": "api.test", "resource": "api"},
        {"authority": "*.shop.test", "resource": "shop"},
    ]);
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    let pick = |a| {
        c.select(Some(a), Some("/"), Some("GET"))
            .and_then(|t| t.resource.clone())
    };
    assert_eq!(pick("api.test."), Some("api".into()));
    assert_eq!(pick("API.test.:8443"), Some("api".into()));
    assert_eq!(pick("a.shop.test."), Some("shop".into()));
    // Only one root dot: `api.test..` is not a host name.
    assert_eq!(pick("api.test.."), Some("https://default.test".into()));
    assert_eq!(pick("."), Some("https://default.test".into()));
}

#[test]
fn a_key_dropped_from_an_inline_jwks_is_named_with_its_reason_in_the_start_warnings() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg.as_object_mut().unwrap().remove("revocation");
    // A good key and one of an unsupported curve: the config loads, the warning says why.
    let bad = r#"{"kty":"EC","crv":"secp256k1","kid":"odd","x":"AA","y":"AA"}"#;
    let doc = format!(r#"{{"keys":[{},{bad}]}}"#, key.jwk());
    cfg["issuers"][0]["jwks"] = json!(doc);
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("meshpass: issuers[0].jwks: key 1 (kid odd) dropped: "),
        "{w:?}"
    );
    // Nothing dropped, nothing said (revocation on, as by default).
    let mut quiet = base_config(&key);
    quiet.as_object_mut().unwrap().remove("revocation");
    assert!(Config::parse(quiet.to_string().as_bytes())
        .unwrap()
        .warnings()
        .is_empty());
}

#[test]
fn options_that_weaken_enforcement_are_named_in_the_start_warnings() {
    let key = Key::new("k1");
    let parse = |cfg: &serde_json::Value| Config::parse(cfg.to_string().as_bytes()).unwrap();
    let mut on = base_config(&key);
    on.as_object_mut().unwrap().remove("revocation");
    assert!(parse(&on).warnings().is_empty());

    // Revocation switched off: a revoked workload keeps being served until its tokens end.
    let w = parse(&base_config(&key)).warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("meshpass: revocation.enabled: false: "),
        "{w:?}"
    );

    // Fail open, named by the rule that does it (and by the default rule).
    let mut open = on.clone();
    open["rules"][0]["failure_mode"] = json!("allow");
    open["default_rule"]["failure_mode"] = json!("allow");
    let w = parse(&open).warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("meshpass: rules[0].failure_mode: allow: "),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("meshpass: default_rule.failure_mode: allow: "),
        "{w:?}"
    );

    let mut paths = on.clone();
    paths["allow_unnormalised_paths"] = json!(true);
    let w = parse(&paths).warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("meshpass: allow_unnormalised_paths: "),
        "{w:?}"
    );
}

#[test]
fn a_long_tick_alone_is_accepted_with_revocation_polled_on_every_tick() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg.as_object_mut().unwrap().remove("revocation");
    cfg["tick_ms"] = json!(10_000);
    // Revocation on by default: its default interval follows the tick.
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(c.revocation.unwrap().poll_interval_ms, 10_000);
    cfg["revocation"] = json!({"path": "/revocations"});
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(c.revocation.unwrap().poll_interval_ms, 10_000);
    // A short tick keeps the 5 s default.
    cfg["tick_ms"] = json!(1_000);
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(c.revocation.unwrap().poll_interval_ms, 5_000);
    // Written below the tick: still refused, naming what was written.
    cfg["tick_ms"] = json!(10_000);
    cfg["revocation"] = json!({"poll_interval_ms": 5_000});
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "revocation.poll_interval_ms", "{e}");
}

fn parse(c: &serde_json::Value) -> Result<Config, meshpass_filter::config::ConfigError> {
    Config::parse(c.to_string().as_bytes())
}

/// README: a rule's `authority` is matched "the request's port and one trailing root dot
/// ignored", and a rule that "could never match" is refused (a port, `?`/`#`, a path not
/// in normal form). A rule authority with its own trailing dot, or written as a URL,
/// can never match any request (the request's dot is dropped before the compare, a
/// scheme never appears in `:authority`), yet it is accepted: every request it was
/// meant for silently falls to the default rule. Refused, or (one trailing dot)
/// matched as the host it names.
#[test]
fn refuses_a_rule_authority_that_no_request_authority_could_ever_match() {
    let key = Key::new("k1");
    let mut wrong = Vec::new();
    for (authority, request) in [
        ("api.test.", "api.test."),
        ("*.shop.test.", "a.shop.test."),
        ("https://api.test", "api.test"),
    ] {
        let mut cfg = base_config(&key);
        cfg["rules"] = json!([{"authority": authority, "resource": "strong"}]);
        match parse(&cfg) {
            Err(e) => assert_eq!(e.field, "rules[0].authority", "{authority}: {e}"),
            Ok(c) => {
                let got = c
                    .select(Some(request), Some("/"), Some("GET"))
                    .and_then(|t| t.resource.clone());
                // Accepted only if it matches what it names (the root dot dropped).
                if got.as_deref() == Some("strong") {
                    continue;
                }
                wrong.push(format!(
                    "rules[0].authority {authority:?} accepted; a request for {request:?} gets {got:?}, not the rule"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// "First match wins": a rule that an earlier rule covers entirely (its authority,
/// path prefix and methods all inside the earlier one's) can never be selected, and a
/// rule whose `path_prefix` lies under a bypass prefix can never be reached (bypass is
/// checked first). Both are accepted today, so `/api/admin/x` silently gets the broad
/// `/api` rule's token, and `/public/admin/x` none at all. The README refuses other
/// rules that "could never match"; these should be refused too, naming the dead rule.
#[test]
fn refuses_a_rule_that_an_earlier_rule_or_a_bypass_prefix_shadows_entirely() {
    let key = Key::new("k1");
    let cases = [
        (
            json!([]),
            json!([
                {"path_prefix": "/api", "resource": "api"},
                {"path_prefix": "/api/admin", "resource": "admin", "scopes": ["admin"]},
            ]),
            "rules[1]",
            "/api/admin/x",
        ),
        (
            json!([]),
            json!([
                {"resource": "catch-all"},
                {"path_prefix": "/admin", "resource": "admin"},
            ]),
            "rules[1]",
            "/admin/x",
        ),
        (
            json!([{"path_prefix": "/public"}]),
            json!([{"path_prefix": "/public/admin", "resource": "admin"}]),
            "rules[0]",
            "/public/admin/x",
        ),
    ];
    let mut wrong = Vec::new();
    for (bypass, rules, field, path) in cases {
        let mut cfg = base_config(&key);
        cfg["bypass"] = bypass;
        cfg["rules"] = rules.clone();
        match parse(&cfg) {
            Err(e) => assert!(
                e.field.starts_with(field) || e.field.starts_with("bypass[0]"),
                "{rules}: {e}"
            ),
            Ok(c) => {
                let bypassed = c.bypassed(path);
                let got = c
                    .select(None, Some(path), Some("GET"))
                    .and_then(|t| t.resource.clone());
                wrong.push(format!(
                    "{field} can never match but was accepted: {path} bypassed={bypassed}, rule resource {got:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A method that is no HTTP token (RFC 9110 §9: `tchar`s, never empty) can never equal
/// a request's `:method`; `"GET, POST"` (one string for two) is the likely mistake.
/// Accepted today: the rule silently never matches and its requests get the default.
#[test]
fn refuses_a_rule_method_that_is_no_http_method_token() {
    let key = Key::new("k1");
    let mut wrong = Vec::new();
    for method in ["GET, POST", "", "GET "] {
        let mut cfg = base_config(&key);
        cfg["rules"] = json!([{"methods": [method], "path_prefix": "/admin", "resource": "admin"}]);
        match parse(&cfg) {
            Err(e) => assert_eq!(e.field, "rules[0].methods[0]", "{method:?}: {e}"),
            Ok(c) => {
                let got = c
                    .select(None, Some("/admin/x"), Some("GET"))
                    .and_then(|t| t.resource.clone());
                wrong.push(format!(
                    "rules[0].methods[0] {method:?} accepted; GET /admin/x gets {got:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A bypass prefix of `/` bypasses every request (no token needed, none exchanged),
/// beside issuers, an exchange and a `default_rule` (or an authority-only rule) that
/// then never run: authentication silently off. Refused naming the field, as
/// `noop_for_benchmarks` is beside issuers; an exact bypass of `/` (the root only)
/// stays accepted.
#[test]
fn a_bypass_prefix_covering_every_path_is_refused_naming_the_field() {
    let key = Key::new("k1");
    for (what, rules) in [
        ("a default_rule", json!([])),
        (
            "an authority-only rule",
            json!([{"authority": "orders.test", "resource": "https://orders.test"}]),
        ),
    ] {
        let mut cfg = base_config(&key);
        cfg["bypass"] = json!([{"path": "/healthz"}, {"path_prefix": "/"}]);
        cfg["rules"] = rules;
        match parse(&cfg) {
            Err(e) => assert_eq!(e.field, "bypass[1].path_prefix", "with {what}: {e}"),
            Ok(c) => panic!(
                "with {what}: bypass path_prefix \"/\" accepted; /orders/1 bypassed: {}",
                c.bypassed("/orders/1")
            ),
        }
    }
    let mut cfg = base_config(&key);
    cfg["bypass"] = json!([{"path": "/"}]);
    let c = parse(&cfg).unwrap();
    assert!(c.bypassed("/") && !c.bypassed("/orders/1"));
}

/// docs/DESIGN.md (rule 1) and core's `KeySet::parse`: a JWKS is parsed with duplicate
/// member names refused, as a fetched JWKS and an inline `jwks` given as a string are.
/// The inline `jwks` may be an object too; read with a parser that keeps the last of
/// two equal names and re-serialised for core, the very same document was accepted
/// (with whichever `kid` came last).
#[test]
fn an_inline_jwks_object_with_a_duplicate_member_is_refused_like_the_same_jwks_as_a_string() {
    let key = Key::new("k1");
    // The key's JWK with `kid` written twice: "k0" first, then "k1".
    let jwk = key.jwk().replacen('{', r#"{"kid":"k0","#, 1);
    let doc = format!(r#"{{"keys":[{jwk}]}}"#);
    let mut cfg = base_config(&key);
    // As a string: core's parser sees the duplicate and refuses it.
    cfg["issuers"][0]["jwks"] = json!(doc);
    let as_string = parse(&cfg).unwrap_err();
    assert_eq!(as_string.field, "issuers[0].jwks", "{as_string}");
    // As an object: the same bytes, inline in the configuration's JSON.
    cfg["issuers"][0]["jwks"] = json!("__JWKS__");
    let text = cfg.to_string().replace(r#""__JWKS__""#, &doc);
    match Config::parse(text.as_bytes()) {
        Err(e) => assert_eq!(e.field, "issuers[0].jwks.keys[0].kid", "{e}"),
        Ok(_) => panic!("the same JWKS inline as an object was accepted ({as_string})"),
    }
}

/// A configuration that writes a security setting twice (`revocation` enabled, then a
/// stale copy disabling it further down a hand-edited Envoy `StringValue`) was accepted
/// with the last one; the project's own JSON readers (core's) refuse duplicates, and
/// invalid configuration is refused naming the field.
#[test]
fn a_plugin_configuration_that_writes_a_member_twice_is_refused_naming_it() {
    let key = Key::new("k1");
    let text = base_config(&key).to_string();
    let body = &text[1..text.len() - 1];
    for (twice, field) in [
        (
            format!(
                r#"{{"revocation":{{"enabled":true}},{body},"revocation":{{"enabled":false}}}}"#
            ),
            "revocation",
        ),
        (
            format!(r#"{{"cache":{{"slots":64,"slots":32}},{body}}}"#),
            "cache.slots",
        ),
    ] {
        match Config::parse(twice.as_bytes()) {
            Err(e) => assert_eq!(e.field, field, "{e}"),
            Ok(c) => panic!(
                "accepted with {field} written twice (revocation {}, {} slots)",
                if c.revocation.is_some() { "on" } else { "off" },
                c.cache_slots
            ),
        }
    }
}

//! Paths that Envoy and the filter could read differently: escaped slashes and dot
//! segments where `allow_unnormalised_paths` matches the normal form, a `:path` that is
//! not UTF-8 in per-name mode, and rule or bypass paths no request could match.

use super::*;
use common::raw_host::RawHost;

/// A rule prefix beside another, a bypass prefix, and a default rule that fails open:
/// a path matched as the wrong one shows.
fn paths_fixture(edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
    fixture_with(|c| {
        c["bypass"] = json!([{"path_prefix": "/healthz"}]);
        c["rules"] = json!([
            {"path_prefix": "/admin/", "resource": "https://admin.test"},
            {"path_prefix": "/public", "resource": "https://public.test"},
        ]);
        c["default_rule"] = json!({"resource": "https://default.test", "failure_mode": "allow"});
        edit(c);
    })
}

/// The `resource` of the last exchange form sent (the fixture's worker is not started,
/// so exchanges go out at once).
fn last_resource(host: &Mock) -> Option<String> {
    let d = host.dispatched.last()?;
    form_urlencoded_pairs(&d.body)
        .into_iter()
        .find(|(k, _)| k == "resource")
        .map(|(_, v)| v)
}

fn allow_mode() -> Fixture {
    paths_fixture(|c| c["allow_unnormalised_paths"] = json!(true))
}

/// Envoy routes `/public/..;/admin` on `/public` (`..;` is no dot segment to it), while
/// Tomcat and Spring drop the `;` parameters and serve `/admin`: with the `/public`
/// rule's token, or past the `/healthz` bypass with none. Refused in either mode.
#[test]
fn a_dot_segment_with_parameters_is_refused_in_either_mode() {
    for allow in [false, true] {
        for path in [
            "/public/..;/admin/x",
            "/healthz/..;x=1/admin/",
            "/public/.;/x",
        ] {
            let mut f = paths_fixture(|c| c["allow_unnormalised_paths"] = json!(allow));
            assert_eq!(f.send(1, &[(":path", path)]), Verdict::Pause, "{path}");
            assert_eq!(
                f.host.replies.get(&1).map(|r| r.status),
                Some(400),
                "{path} (allow_unnormalised_paths {allow})"
            );
            assert_eq!(f.count(Counter::Bypassed), 0, "{path}");
            assert!(f.host.dispatched.is_empty(), "{path}");
        }
    }
    // Parameters on any other segment change nothing.
    let mut f = paths_fixture(|_| {});
    let auth = format!("Bearer {}", f.token(ALICE));
    f.send(
        1,
        &[
            (":path", "/public;jsessionid=1/x"),
            ("authorization", &auth),
        ],
    );
    assert!(!f.host.replies.contains_key(&1));
    assert_eq!(
        last_resource(&f.host).as_deref(),
        Some("https://public.test")
    );
}

/// Envoy keeps `%2F` by default and routes `/admin%2F..%2Fhealthz` on `/admin`; read
/// decoded, it would be the `/healthz` bypass and go on with no token.
#[test]
fn allow_mode_refuses_an_escaped_slash_rather_than_bypass_a_path_envoy_routes_elsewhere() {
    let mut f = allow_mode();
    assert_eq!(
        f.send(1, &[(":path", "/admin%2F..%2Fhealthz")]),
        Verdict::Pause
    );
    assert_eq!(f.host.replies.get(&1).map(|r| r.status), Some(400));
    assert_eq!(f.count(Counter::Bypassed), 0);
}

/// The reverse: `/public%5C..%5Cadmin/x` is routed on `/public`; read decoded, it would
/// get the admin rule's participant token sent to the `/public` upstream.
#[test]
fn allow_mode_refuses_an_escaped_backslash_rather_than_exchange_for_another_rule() {
    let mut f = allow_mode();
    let auth = format!("Bearer {}", f.token(ALICE));
    f.send(
        1,
        &[
            (":path", "/public%5C..%5Cadmin/x"),
            ("authorization", &auth),
        ],
    );
    assert_eq!(f.host.replies.get(&1).map(|r| r.status), Some(400));
    assert_eq!(last_resource(&f.host), None);
}

/// Envoy forwards `/admin/x/..` as `/admin/` (RFC 3986): the `/admin/` rule, not the
/// default one.
#[test]
fn allow_mode_matches_a_final_dot_segment_as_its_directory() {
    let mut f = allow_mode();
    let auth = format!("Bearer {}", f.token(ALICE));
    f.send(1, &[(":path", "/admin/x/.."), ("authorization", &auth)]);
    assert_eq!(
        last_resource(&f.host).as_deref(),
        Some("https://admin.test")
    );
}

/// Per-name reads cannot see a value that is not UTF-8; the path must still be
/// refused, never read as no path (which gives the default rule).
#[test]
fn per_name_mode_refuses_a_path_that_is_not_utf8() {
    let f = paths_fixture(|c| c["insecure_keep_x_meshpass_headers"] = json!(true));
    let auth = format!("Bearer {}", f.token(ALICE));
    let mut host = RawHost {
        m: f.host,
        raw: vec![
            (b":path".to_vec(), b"/admin/users?q=\xff".to_vec()),
            (b"authorization".to_vec(), auth.into_bytes()),
        ],
    };
    let mut w = f.w;
    host.m.ctx = 1;
    assert_eq!(w.on_request(&mut host, 1), Verdict::Pause);
    assert_eq!(host.m.replies.get(&1).map(|r| r.status), Some(400));
    assert_eq!(last_resource(&host.m), None);
}

/// A rule or bypass path not itself in normal form could never match a request path
/// (those are refused or normalised first): refused, naming the field.
#[test]
fn refuses_a_rule_or_bypass_path_that_is_not_in_normal_form() {
    for (rules, bypass, field) in [
        (
            json!([{"path_prefix": "/api//v1", "resource": "a"}]),
            json!([]),
            "rules[0].path_prefix",
        ),
        (
            json!([{"path_prefix": "/%61dmin", "resource": "a"}]),
            json!([]),
            "rules[0].path_prefix",
        ),
        (
            json!([]),
            json!([{"path": "/healthz/./live"}]),
            "bypass[0].path",
        ),
    ] {
        let mut cfg = base_config(&Key::new("k1"));
        cfg["rules"] = rules;
        cfg["bypass"] = bypass;
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

/// README (`allow_unnormalised_paths`): "a path holding … a `..;` segment is still
/// refused, since Envoy keeps those by default and would route it as another path".
/// `%2e%2e;` is that segment once its unreserved escapes are decoded (Envoy's
/// `normalize_path` decodes them, and keeps the `..;`), and a backslash is a `/` to
/// Envoy's normaliser as to the filter's: Envoy routes `/admin/..;/healthz` under
/// `/admin/`, an app that does not read `..;` as `..` serves it there, while the filter
/// matched its normal form `/healthz`, the bypass, and forwarded it with no token.
#[test]
fn allow_mode_refuses_an_escaped_or_backslashed_dot_segment_with_parameters_rather_than_bypass() {
    let mut wrong = Vec::new();
    for path in [
        "/admin/%2e%2e;/healthz",
        "/admin/%2E.;x=1/healthz",
        "/admin/x/.%2e;/../healthz",
        "/admin\\..;\\healthz",
    ] {
        let mut f = paths_fixture(|c| c["allow_unnormalised_paths"] = json!(true));
        let verdict = f.send(1, &[(":path", path)]);
        let status = f.host.replies.get(&1).map(|r| r.status);
        if f.count(Counter::Bypassed) != 0 || status != Some(400) {
            wrong.push(format!(
                "{path}: {verdict:?}, status {status:?}, bypassed {}",
                f.count(Counter::Bypassed)
            ));
        }
    }
    assert!(wrong.is_empty(), "not refused: {wrong:#?}");
}

/// Each of `paths` gets the `/admin/` rule of [`paths_fixture`], or a 400: never the
/// default rule.
fn assert_keeps_the_admin_rule(paths: &[&str]) {
    let mut wrong = Vec::new();
    for &path in paths {
        let mut f = paths_fixture(|_| {});
        let auth = format!("Bearer {}", f.token(ALICE));
        f.send(1, &[(":path", path), ("authorization", &auth)]);
        let status = f.host.replies.get(&1).map(|r| r.status);
        let resource = last_resource(&f.host);
        if status != Some(400) && resource.as_deref() != Some("https://admin.test") {
            wrong.push(format!(
                "{path}: status {status:?}, exchanged for {resource:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "matched past the /admin/ rule: {wrong:#?}"
    );
}

/// README: `;` parameters are what "Tomcat and Spring read" away (`..;x` is `..` to
/// them), and tests/logic/paths.rs says "Parameters on any other segment change
/// nothing". They do for a rule prefix that ends in `/` or spans segments:
/// `/admin;jsessionid=1/users` is `/admin/users` to Tomcat and Spring (Envoy forwards
/// it as sent), but does not start with the `/admin/` rule's prefix, so the filter
/// exchanges it under the default rule (here one that fails open) and forwards it
/// without refusal. It should get the `/admin/` rule, or a 400.
#[test]
fn a_path_parameter_on_a_segment_does_not_move_a_request_from_its_rule_to_the_default() {
    assert_keeps_the_admin_rule(&["/admin;jsessionid=1/users", "/admin;/users", "/admin;x=1/"]);
}

/// A segment of parameters alone (`/;x/admin/users`) left an empty segment once they
/// were removed, `//admin/users`, which no rule matched: the token was exchanged under
/// the default rule (here one that fails open), though Tomcat and Spring merge the
/// empty segment and serve `/admin/users`. It gets the `/admin/` rule now.
#[test]
fn a_segment_of_parameters_alone_does_not_move_a_request_from_its_rule_to_the_default() {
    assert_keeps_the_admin_rule(&["/;x/admin/users", "/;/admin/users", "/;a/;b/admin/"]);
}

/// Parameters never open a bypass the path without them would not: `/healthz;x=1` is
/// `/healthz` to Tomcat but another path to an app that keeps parameters, so an exact
/// `/healthz` bypass needs a token for it; a prefix bypass still covers both forms.
#[test]
fn a_path_parameter_never_opens_an_exact_bypass() {
    let mut f = paths_fixture(|c| c["bypass"] = json!([{"path": "/healthz"}]));
    f.send(1, &[(":path", "/healthz;x=1")]);
    assert_eq!(f.count(Counter::Bypassed), 0);
    assert_eq!(f.host.replies.get(&1).map(|r| r.status), Some(401));
    let mut f = paths_fixture(|_| {});
    assert_eq!(
        f.send(2, &[(":path", "/healthz;x=1/live")]),
        Verdict::Continue
    );
    assert_eq!(f.count(Counter::Bypassed), 1);
}

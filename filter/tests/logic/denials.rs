//! Requests refused before any exchange: no token, an invalid or oversize one, a path normalisation would change, an unbound subject, no rule.

use super::*;

#[test]
fn request_without_token_gets_401_with_bearer_challenge() {
    let mut f = fixture();
    assert_eq!(f.send(1, &[(":path", "/x")]), Verdict::Pause);
    let r = &f.host.replies[&1];
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(f.count(Counter::DeniedNoToken), 1);
    assert!(f.host.dispatched.is_empty());
}

/// RFC 6749 §5.2 and RFC 6750 §3: `error_description` holds only %x20-21 / %x23-5B /
/// %x5D-7E, in the JSON body and in `WWW-Authenticate`. Core's messages quote claim
/// names (`claim "sub" is missing`).
#[test]
fn denial_descriptions_keep_to_the_characters_rfc6749_allows() {
    let mut f = fixture();
    let no_sub = f
        .key
        .sign(&json!({"iss": ISS, "aud": AUD, "iat": f.now, "exp": f.now + 600}));
    f.send_token(1, &no_sub);
    let r = f.host.replies[&1].clone();
    assert_eq!(r.status, 401);
    let allowed = |c: char| matches!(c as u32, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e);
    let d = r.json()["error_description"].as_str().unwrap().to_string();
    assert!(d.contains("sub"), "{d}");
    assert!(d.chars().all(allowed), "{d:?}");
    let www = r.header("www-authenticate").unwrap();
    let quoted = www
        .strip_prefix("Bearer error=\"invalid_token\", error_description=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{www}"));
    assert!(quoted.chars().all(allowed), "{www}");
}

#[test]
fn invalid_token_gets_401_invalid_token_and_json_that_never_echoes_the_token() {
    let mut f = fixture();
    let other = Key::new("k1");
    let forged = other.svid(ISS, AUD, ALICE, f.now, 600);
    f.send_token(1, &forged);
    let r = f.host.replies[&1].clone();
    assert_eq!(r.status, 401);
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{www}"
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("signature"));
    let sig = forged.rsplit('.').next().unwrap();
    assert!(!r.body.contains(sig) && !www.contains(sig));
    assert_eq!(f.count(Counter::DeniedInvalidToken), 1);

    // Not a Bearer token, expired, wrong audience: all 401 without any dispatch.
    f.send(
        2,
        &[(":path", "/x"), ("authorization", "Basic dXNlcjpwdw==")],
    );
    assert_eq!(f.host.replies[&2].status, 401);
    let expired = f.key.svid(ISS, AUD, ALICE, f.now - 4000, 600);
    f.send_token(3, &expired);
    assert!(f.host.replies[&3].json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let wrong_aud = f.key.svid(ISS, "other", ALICE, f.now, 600);
    f.send_token(4, &wrong_aud);
    assert_eq!(f.host.replies[&4].status, 401);
    assert!(f.host.dispatched.is_empty());
}

#[test]
fn paths_that_normalisation_would_change_are_refused_before_any_rule() {
    let mut f = fixture_with(|c| c["bypass"] = json!([{"path_prefix": "/healthz"}]));
    for (ctx, p) in [
        (1, "/healthz/../orders"),
        (2, "//healthz"),
        (3, "/healthz%2F..%2Fadmin"),
        (4, "/%68ealthz/x"),
    ] {
        assert_eq!(f.send(ctx, &[(":path", p)]), Verdict::Pause, "{p}");
        assert_eq!(f.host.replies[&ctx].status, 400, "{p}");
    }
    assert_eq!(f.count(Counter::Bypassed), 0);
    assert_eq!(f.count(Counter::DeniedBadPath), 4);
    // Normal paths, with any query, go on as before.
    assert_eq!(
        f.send(5, &[(":path", "/healthz/live?x=/../")]),
        Verdict::Continue
    );

    // Configured otherwise: matched on the normal form (here: not a bypass, so 401).
    let mut f = fixture_with(|c| {
        c["bypass"] = json!([{"path_prefix": "/healthz"}]);
        c["allow_unnormalised_paths"] = json!(true);
    });
    f.send(1, &[(":path", "/healthz/../orders")]);
    assert_eq!(f.host.replies[&1].status, 401);
    assert_eq!(f.send(2, &[(":path", "//healthz")]), Verdict::Continue);
}

#[test]
fn oversize_token_is_refused_before_any_parsing() {
    let mut f = fixture_with(|c| c["max_token_bytes"] = json!(100));
    let t = f.token(ALICE);
    f.send_token(1, &t);
    let r = &f.host.replies[&1];
    assert_eq!(r.status, 401);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("100-byte"));
}

#[test]
fn token_whose_subject_is_not_the_mtls_peer_is_refused() {
    let mut f = fixture();
    let t = f.token(BOB);
    f.send_token(1, &t);
    assert_eq!(f.host.replies[&1].status, 401);
    assert_eq!(f.count(Counter::DeniedBinding), 1);
    // No peer certificate at all: binding unavailable, still 401.
    f.host.props.clear();
    let t = f.token(ALICE);
    f.send_token(2, &t);
    assert_eq!(f.host.replies[&2].status, 401);
    assert_eq!(f.count(Counter::DeniedBinding), 2);
    assert!(f.host.dispatched.is_empty());
}

#[test]
fn no_matching_rule_without_default_is_403() {
    let mut f = fixture_with(|c| {
        c.as_object_mut().unwrap().remove("default_rule");
    });
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.replies[&1].status, 403);
    assert_eq!(f.count(Counter::DeniedNoRule), 1);
}

/// "Rules match on a normalised path": a `:path` holding a byte that is not UTF-8
/// (here in its query) is refused, never matched as if the request had no path (which
/// would give it the default rule's target and failure mode).
#[test]
fn a_path_that_is_not_utf8_is_refused_not_matched_as_no_path() {
    let f = fixture_with(|c| {
        c["rules"] = json!([{"path_prefix": "/admin", "resource": "https://admin.test"}]);
        c["default_rule"] = json!({"resource": "https://orders.test", "failure_mode": "allow"});
    });
    let t = f.token(ALICE);
    let mut host = common::raw_host::RawHost {
        m: f.host,
        raw: Vec::new(),
    };
    let mut w = f.w;
    host.raw = vec![
        (b":path".to_vec(), b"/admin/users?q=\xff".to_vec()),
        (
            b"authorization".to_vec(),
            format!("Bearer {t}").into_bytes(),
        ),
    ];
    host.m.ctx = 1;
    assert_eq!(w.on_request(&mut host, 1), Verdict::Pause);
    assert_eq!(host.m.replies.get(&1).map(|r| r.status), Some(400));
    assert!(host.m.enqueued.is_empty() && host.m.dispatched.is_empty());
}

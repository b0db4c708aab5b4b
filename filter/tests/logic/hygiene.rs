//! Header hygiene (no client-sent `x-meshpass-*` or credential reaches the app) and the binding modes.

use super::*;

#[test]
fn client_sent_meshpass_headers_never_reach_the_app() {
    let mut f = fixture();
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert_eq!(f.count(Counter::Bypassed), 1);

    let mut f = fixture_with(|c| c["set_subject_header"] = json!(true));
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);

    let mut f = fixture_with(|c| c["strip_all_x_meshpass_headers"] = json!(true));
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-anything", "1"),
            ("x-other", "2"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-anything"), None);
    assert_eq!(f.host.req_header(1, "x-other").as_deref(), Some("2"));
}

#[test]
fn a_header_name_with_a_multibyte_char_at_the_reserved_prefix_boundary_does_not_trap() {
    // "x-meshpass" + 'é' has no char boundary at the prefix's 11 bytes; slicing the name as `str` at
    // the prefix's length used to panic (a trap that kills the VM for every stream).
    let mut f = fixture();
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass\u{e9}subject", "1"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert_eq!(
        f.host.req_header(1, "x-meshpass\u{e9}subject").as_deref(),
        Some("1")
    );
    assert_eq!(f.count(Counter::Bypassed), 1);
}

#[test]
fn every_client_sent_meshpass_header_is_removed_by_default() {
    let mut f = fixture();
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    let sent = [
        (":path", "/x"),
        ("authorization", auth.as_str()),
        ("x-meshpass-role", "admin"),
        ("X-Meshpass-Subject", "spiffe://evil/x"),
        ("x-other", "kept"),
    ];
    f.send(1, &sent);
    assert!(f.host.replies.is_empty(), "{:?}", f.host.replies.get(&1));
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(f.host.req_header(1, "x-meshpass-role"), None);
    assert_eq!(f.host.req_header(1, "X-Meshpass-Subject"), None);
    assert_eq!(f.host.req_header(1, "x-other").as_deref(), Some("kept"));

    // Only the insecure flag keeps them (it strips x-meshpass-subject alone).
    let mut f = fixture_with(|c| c["insecure_keep_x_meshpass_headers"] = json!(true));
    let auth = format!("Bearer {}", f.token(ALICE));
    let sent = [
        (":path", "/x"),
        ("authorization", auth.as_str()),
        ("x-meshpass-role", "admin"),
        ("x-meshpass-subject", "spiffe://evil/x"),
    ];
    f.send(1, &sent);
    f.answer(ok_response("p", 300));
    assert_eq!(
        f.host.req_header(1, "x-meshpass-role").as_deref(),
        Some("admin")
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert!(f
        .w
        .config
        .warnings()
        .iter()
        .any(|w| w.contains("insecure_keep_x_meshpass_headers")));
}

#[test]
fn bypass_routes_and_fail_open_forward_no_client_credential() {
    let mut f = fixture_with(|c| {
        c["token_header"] = json!("x-subject-token");
        c["default_rule"]["failure_mode"] = json!("allow");
    });
    let t = f.token(ALICE);
    let sent = [
        (":path", "/healthz"),
        ("authorization", "Basic dXNlcjpwdw=="),
        ("x-subject-token", t.as_str()),
    ];
    assert_eq!(f.send(1, &sent), Verdict::Continue);
    assert_eq!(f.host.req_header(1, "authorization"), None);
    assert_eq!(f.host.req_header(1, "x-subject-token"), None);

    // Fail open: neither the subject token nor the client's own Authorization goes on.
    let sent = [
        (":path", "/x"),
        ("authorization", "Basic dXNlcjpwdw=="),
        ("x-subject-token", t.as_str()),
    ];
    f.send(2, &sent);
    f.answer(error_response(503, "temporarily_unavailable", None));
    assert_eq!(f.host.resumed, vec![2]);
    assert_eq!(f.host.req_header(2, "authorization"), None);
    assert_eq!(f.host.req_header(2, "x-subject-token"), None);
}

#[test]
fn token_from_a_custom_header_is_removed_once_exchanged() {
    let mut f = fixture_with(|c| c["token_header"] = json!("X-Workload-Token"));
    let t = f.token(ALICE);
    f.send(1, &[(":path", "/x"), ("x-workload-token", &t)]);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.req_header(1, "x-workload-token"), None);
    assert_eq!(
        f.host.req_header(1, "authorization").as_deref(),
        Some("Bearer p")
    );
}

// ---------------------------------------------------------------- modes

#[test]
fn client_mode_binds_to_the_identity_from_istio_node_metadata() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"trust_domain": "cluster.local"});
    });
    f.host.props.clear();
    f.host.set_prop(&["node", "metadata", "NAMESPACE"], "shop");
    f.host
        .set_prop(&["node", "metadata", "SERVICE_ACCOUNT"], "alice");
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.dispatched.len(), 1);
    let t = f.token(BOB);
    f.send_token(2, &t);
    assert_eq!(f.host.replies[&2].status, 401);
}

/// Node metadata holding what no Kubernetes name can (a capital, a `/`, a `:`) give no
/// identity: the request gets the proxy's 503 before any exchange, also with a token
/// whose subject spells the same made-up path.
#[test]
fn client_mode_takes_no_identity_from_node_metadata_that_are_no_kubernetes_names() {
    for (ns, sa) in [
        ("shop", "Alice"),
        ("shop/sa/alice/ns/x", "y"),
        ("Shop", "alice"),
        ("shop", "alice:x"),
    ] {
        let mut f = fixture_with(|c| {
            c["mode"] = json!("CLIENT");
            c["own_identity"] = json!({"trust_domain": "cluster.local"});
        });
        f.host.props.clear();
        f.host.set_prop(&["node", "metadata", "NAMESPACE"], ns);
        f.host
            .set_prop(&["node", "metadata", "SERVICE_ACCOUNT"], sa);
        let t = f.token(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"));
        f.send_token(1, &t);
        assert!(f.host.dispatched.is_empty(), "{ns:?} {sa:?} was exchanged");
        assert_eq!(f.host.replies[&1].status, 503, "{ns:?} {sa:?}");
    }
}

#[test]
fn mode_none_skips_binding() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("NONE");
        c["insecure_disable_binding"] = json!(true);
    });
    f.host.props.clear();
    let t = f.token(BOB);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
}

/// `insecure_keep_x_meshpass_headers` still strips every client-sent
/// `x-meshpass-subject`, whatever bytes its value holds.
#[test]
fn per_name_mode_strips_a_client_sent_subject_header_that_is_not_utf8() {
    let f = fixture_with(|c| c["insecure_keep_x_meshpass_headers"] = json!(true));
    let mut host = common::raw_host::RawHost {
        m: f.host,
        raw: Vec::new(),
    };
    let mut w = f.w;
    host.raw = vec![
        (b":path".to_vec(), b"/healthz".to_vec()),
        (
            b"x-meshpass-subject".to_vec(),
            b"spiffe://cluster.local/ns/shop/sa/admin\xff".to_vec(),
        ),
    ];
    host.m.ctx = 1;
    assert_eq!(w.on_request(&mut host, 1), Verdict::Continue);
    let forged = host.raw.iter().find(|(k, _)| k == b"x-meshpass-subject");
    assert!(
        forged.is_none(),
        "a client-sent x-meshpass-subject reached the app: {forged:?}"
    );
}

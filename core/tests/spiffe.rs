//! SPIFFE IDs, trust domains and allow-patterns (SPIFFE ID spec §2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshpass_core::{SpiffeId, SpiffeIdError, SpiffeIdPattern, TrustDomain};

#[test]
fn accepts_spec_examples_and_round_trips_them() {
    for s in [
        "spiffe://example.org",
        "spiffe://example.org/service",
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://staging.example.org/payments/mysql",
        "spiffe://k8s-west.example.com/ns/staging/sa/default",
        "spiffe://trust_domain-1.0/Path.With-Mixed_Case/9",
        "spiffe://a/.../..a/a..",
    ] {
        let id = SpiffeId::parse(s).unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(s.parse::<SpiffeId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }
}

#[test]
fn splits_trust_domain_and_path() {
    let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
    assert_eq!(
        id.trust_domain(),
        TrustDomain::parse("example.org").unwrap()
    );
    assert_eq!(id.path(), "/ns/a/sa/b");
    let td_only = SpiffeId::parse("spiffe://example.org").unwrap();
    assert_eq!(td_only.path(), "");
    assert_eq!(TrustDomain::parse("example.org").unwrap().id(), td_only);
}

#[test]
fn rejects_invalid_spiffe_ids_from_the_spec() {
    use SpiffeIdError::*;
    let long_td = format!("spiffe://{}/x", "a".repeat(256));
    let long_id = format!("spiffe://example.org/{}", "a".repeat(2048));
    let table: Vec<(&str, SpiffeIdError)> = vec![
        ("", Empty),
        ("example.org/path", WrongScheme),
        ("SPIFFE://example.org/path", WrongScheme),
        ("Spiffe://example.org/path", WrongScheme),
        ("https://example.org/path", WrongScheme),
        ("spiffe:/example.org/path", WrongScheme),
        ("spiffe://", MissingTrustDomain),
        ("spiffe:///path", MissingTrustDomain),
        ("spiffe://Example.org/path", BadTrustDomainChar),
        ("spiffe://exa mple.org/path", BadTrustDomainChar),
        ("spiffe://example.org%2F/path", BadTrustDomainChar),
        ("spiffe://exämple.org/path", BadTrustDomainChar),
        ("spiffe://example.org:8080/path", ForbiddenComponent),
        ("spiffe://user@example.org/path", ForbiddenComponent),
        ("spiffe://user:pw@example.org/path", ForbiddenComponent),
        ("spiffe://example.org/path?query=1", ForbiddenComponent),
        ("spiffe://example.org/path#frag", ForbiddenComponent),
        ("spiffe://example.org/", EmptySegment),
        ("spiffe://example.org/path/", EmptySegment),
        ("spiffe://example.org//path", EmptySegment),
        ("spiffe://example.org/a//b", EmptySegment),
        ("spiffe://example.org/.", DotSegment),
        ("spiffe://example.org/..", DotSegment),
        ("spiffe://example.org/a/./b", DotSegment),
        ("spiffe://example.org/a/../b", DotSegment),
        ("spiffe://example.org/pa th", BadPathChar),
        ("spiffe://example.org/pa%20th", BadPathChar),
        ("spiffe://example.org/pa*th", BadPathChar),
        ("spiffe://example.org/päth", BadPathChar),
        ("spiffe://example.org/a\\b", BadPathChar),
        (long_td.as_str(), TooLong),
        (long_id.as_str(), TooLong),
    ];
    for (input, want) in table {
        assert_eq!(SpiffeId::parse(input), Err(want.clone()), "{input:?}");
        assert!(serde_json::from_value::<SpiffeId>(serde_json::json!(input)).is_err());
    }
}

#[test]
fn accepts_ids_at_the_length_limits() {
    let td = "a".repeat(255);
    assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
    let path = "a".repeat(2048 - "spiffe://example.org/".len());
    assert!(SpiffeId::parse(&format!("spiffe://example.org/{path}")).is_ok());
}

#[test]
fn parses_bare_trust_domains_only() {
    assert_eq!(
        TrustDomain::parse("example.org").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(TrustDomain::parse(""), Err(SpiffeIdError::Empty));
    assert_eq!(
        TrustDomain::parse("spiffe://example.org"),
        Err(SpiffeIdError::ForbiddenComponent)
    );
    assert_eq!(
        TrustDomain::parse("example.org/x"),
        Err(SpiffeIdError::BadTrustDomainChar)
    );
    assert_eq!(
        TrustDomain::parse("EXAMPLE.org"),
        Err(SpiffeIdError::BadTrustDomainChar)
    );
    assert_eq!(
        TrustDomain::parse(&"a".repeat(256)),
        Err(SpiffeIdError::TooLong)
    );
    let td: TrustDomain = serde_json::from_str("\"cluster.local\"").unwrap();
    assert_eq!(td.to_string(), "cluster.local");
}

#[test]
fn maps_kubernetes_service_accounts_to_spiffe_ids() {
    let td = TrustDomain::parse("cluster.local").unwrap();
    let id = SpiffeId::from_kubernetes_subject("system:serviceaccount:default:web", &td).unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
    let id = SpiffeId::from_kubernetes_subject("system:serviceaccount:a-1:my.sa-2", &td).unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/a-1/sa/my.sa-2");
    for bad in [
        "system:serviceaccount:default",
        "system:serviceaccount::web",
        "system:serviceaccount:default:",
        "system:serviceaccount:Default:web",
        "system:serviceaccount:-ns:web",
        "system:serviceaccount:ns-:web",
        "system:serviceaccount:n.s:web",
        "system:serviceaccount:ns:web:x",
        "system:serviceaccount:ns:we_b",
        "system:serviceaccount:ns:..",
        "system:serviceaccount:ns:a..b",
        "system:serviceaccounts:ns:web",
        "System:serviceaccount:ns:web",
        "spiffe://cluster.local/ns/default/sa/web",
    ] {
        assert_eq!(
            SpiffeId::from_kubernetes_subject(bad, &td),
            Err(SpiffeIdError::NotServiceAccount),
            "{bad}"
        );
    }
    let long_ns = format!("system:serviceaccount:{}:web", "a".repeat(64));
    assert!(SpiffeId::from_kubernetes_subject(&long_ns, &td).is_err());
}

#[test]
fn exact_pattern_matches_only_that_id() {
    let p = SpiffeIdPattern::parse("spiffe://td/ns/a/sa/b").unwrap();
    assert!(p.matches(&SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://td/ns/a/sa/b/c").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://td/ns/a/sa/bb").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://other/ns/a/sa/b").unwrap()));
}

#[test]
fn prefix_pattern_is_segment_aligned() {
    let p = SpiffeIdPattern::parse("spiffe://td/ns/foo/*").unwrap();
    for ok in [
        "spiffe://td/ns/foo",
        "spiffe://td/ns/foo/sa/x",
        "spiffe://td/ns/foo/a/b/c",
    ] {
        assert!(p.matches(&SpiffeId::parse(ok).unwrap()), "{ok}");
    }
    for no in [
        "spiffe://td/ns/foobar",
        "spiffe://td/ns/fo",
        "spiffe://td/ns",
        "spiffe://td2/ns/foo/x",
    ] {
        assert!(!p.matches(&SpiffeId::parse(no).unwrap()), "{no}");
    }
}

#[test]
fn trust_domain_pattern_matches_every_id_in_it_and_nothing_else() {
    let p = SpiffeIdPattern::parse("spiffe://td/*").unwrap();
    assert!(p.matches(&SpiffeId::parse("spiffe://td").unwrap()));
    assert!(p.matches(&SpiffeId::parse("spiffe://td/x/y").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://td.evil/x").unwrap()));
    assert!(!p.matches(&SpiffeId::parse("spiffe://tdx/x").unwrap()));
}

#[test]
fn rejects_malformed_patterns() {
    for bad in [
        "spiffe://td/ns/*/sa/x",
        "spiffe://td/ns/foo*",
        "spiffe://td/*/*",
        "spiffe://*/x",
        "spiffe://td/**",
        "*",
    ] {
        assert_eq!(
            SpiffeIdPattern::parse(bad),
            Err(SpiffeIdError::BadPattern),
            "{bad}"
        );
    }
    assert_eq!(
        SpiffeIdPattern::parse("spiffe://td//*"),
        Err(SpiffeIdError::EmptySegment)
    );
    assert_eq!(
        SpiffeIdPattern::parse("spiffe://TD/*"),
        Err(SpiffeIdError::BadTrustDomainChar)
    );
    assert_eq!(SpiffeIdPattern::parse(""), Err(SpiffeIdError::Empty));
}

#[test]
fn patterns_round_trip_through_display_fromstr_and_serde() {
    for s in [
        "spiffe://td/*",
        "spiffe://td/ns/a/*",
        "spiffe://td/ns/a/sa/b",
        "spiffe://td",
    ] {
        let p: SpiffeIdPattern = s.parse().unwrap();
        assert_eq!(p.to_string(), s);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SpiffeIdPattern>(&json).unwrap(), p);
    }
}

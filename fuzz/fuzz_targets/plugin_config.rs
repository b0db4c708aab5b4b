//! The plugin configuration (`Config::parse`, the JSON an operator writes): never
//! panics; a refusal names a field; an accepted configuration holds every bound the
//! filter relies on; parsing is deterministic down to the cache-key digests, and targets
//! that exchange for different things never share a digest (one's cached token is never
//! served for the other); a rule is selected for the values it names, and the default
//! target when none matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::oauth::is_scope_token;
use meshpass_filter::config::{Bypass, Config, IssuerKeys, Target};

fn targets(c: &Config) -> Vec<&Target> {
    c.rules
        .iter()
        .map(|r| &r.target)
        .chain(c.default_target.as_ref())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let c = match Config::parse(data) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e}");
            return;
        }
    };
    let _ = c.warnings();
    if c.noop {
        assert!(c.rules.is_empty() && c.default_target.is_none());
        assert!(c.policy.issuers.is_empty() && c.revocation.is_none());
        return;
    }
    assert_eq!(c.policy.check(), Ok(()));
    assert!((1..=64 * 1024).contains(&c.policy.max_token_bytes));
    assert_eq!(c.keys.len(), c.policy.issuers.len());
    for ip in &c.policy.issuers {
        match c.keys.get(&ip.issuer) {
            Some(IssuerKeys::Inline(set)) => assert!(!set.is_empty()),
            Some(IssuerKeys::Remote(r)) => {
                assert!(r.path.starts_with('/') && !r.cluster.trim().is_empty());
                assert!(r.refresh_ms > 0 && r.min_refetch_ms > 0);
            }
            None => panic!("issuer {:?} has no keys", ip.issuer),
        }
    }
    assert!(!c.token_header.is_empty() && !c.token_header.starts_with("x-meshpass-"));
    assert_eq!(c.token_header, c.token_header.to_ascii_lowercase());
    assert_eq!(c.bearer, c.token_header == "authorization");
    assert!(c.exchange.path.starts_with('/') && c.exchange.timeout_ms > 0);
    assert_ne!(
        c.exchange.actor_token_header.as_deref(),
        Some("authorization")
    );
    assert_ne!(
        c.exchange.actor_token_header.as_deref(),
        Some(c.token_header.as_str())
    );
    assert!(c.validate_only || !c.exchange.cluster.trim().is_empty());
    assert!(c.validate_only || !targets(&c).is_empty());
    assert!((1..=100).contains(&c.refresh_ahead_percent));
    assert!((16..=1 << 20).contains(&c.cache_slots));
    assert!((10..=60_000).contains(&c.tick_ms) && c.retry_after_secs >= 1);
    if let Some(r) = &c.revocation {
        assert!(!c.validate_only && r.poll_interval_ms >= c.tick_ms);
        assert!(r.path.starts_with('/') && !r.path.contains('?'));
        assert!(!r.cluster.trim().is_empty() && !r.authority.is_empty());
    }
    for t in targets(&c) {
        assert!(t.resource.is_some() || !t.audience.is_empty());
        assert!(t.resource.as_deref() != Some("") && t.audience.iter().all(|a| !a.is_empty()));
        assert!(t.scopes.iter().all(|s| is_scope_token(s)));
    }
    for b in &c.bypass {
        let (Bypass::Exact(p) | Bypass::Prefix(p)) = b;
        assert!(p.starts_with('/'));
        // Every accepted bypass matches its own path (no `?`: queries are cut).
        assert!(c.bypassed(p), "{p:?} does not match itself");
    }
    assert_eq!(
        c.needs_authority,
        c.rules.iter().any(|r| r.authority.is_some())
    );
    assert_eq!(
        c.needs_path,
        c.rules.iter().any(|r| r.path_prefix.is_some())
    );
    assert_eq!(
        c.needs_method,
        c.rules.iter().any(|r| !r.methods.is_empty())
    );

    // The same bytes give the same cache keys (every worker, every reload).
    let again = Config::parse(data).expect("parses twice");
    let digests = |c: &Config| targets(c).iter().map(|t| t.digest).collect::<Vec<_>>();
    assert_eq!(digests(&c), digests(&again));
    assert_eq!(c.revocation, again.revocation);
    let all = targets(&c);
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let same =
                (&a.resource, &a.audience, &a.scopes) == (&b.resource, &b.audience, &b.scopes);
            assert_eq!(same, a.digest == b.digest, "{a:?} / {b:?}");
        }
    }

    // Selection never panics, falls back to the default target, and every accepted rule
    // matches the values it names (an authority with a port is refused: ports are cut
    // from the request's authority before the comparison).
    if c.default_target.is_some() {
        assert!(c.select(None, None, None).is_some());
    }
    for r in &c.rules {
        let method = r.methods.first().map(String::as_str);
        let picked = c.select(r.authority.as_deref(), r.path_prefix.as_deref(), method);
        assert!(picked.is_some(), "{r:?} does not match its own values");
    }
});

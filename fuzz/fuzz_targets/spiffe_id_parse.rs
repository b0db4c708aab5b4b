//! SPIFFE ID, trust-domain and pattern parsing: never panics, and whatever parses
//! round-trips exactly through Display and parses again to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::{SpiffeId, SpiffeIdPattern, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.to_string(), s);
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
        assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
        assert!(s.len() <= 2048 && id.trust_domain().as_str().len() <= 255);
        let all = SpiffeIdPattern::parse(&format!("spiffe://{}/*", id.trust_domain()));
        assert!(all.is_ok_and(|p| p.matches(&id)));
    }
    if let Ok(td) = TrustDomain::parse(s) {
        assert_eq!(td.to_string(), s);
        assert_eq!(TrustDomain::parse(&td.to_string()).as_ref(), Ok(&td));
    }
    if let Ok(p) = SpiffeIdPattern::parse(s) {
        assert_eq!(p.to_string(), s);
        assert_eq!(SpiffeIdPattern::parse(&p.to_string()).as_ref(), Ok(&p));
    }
    if let Ok(td) = TrustDomain::parse("cluster.local") {
        if let Ok(id) = SpiffeId::from_kubernetes_subject(s, &td) {
            assert!(id.path().starts_with("/ns/"));
        }
    }
});

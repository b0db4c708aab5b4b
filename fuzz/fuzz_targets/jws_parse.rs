//! Strict compact-JWS parsing, then the claim and subject checks on whatever parsed:
//! nothing may panic, and a parsed token re-encodes to the same signing input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::{Audience, CompactJws, IssuerPolicy, TrustDomain, DEFAULT_MAX_TOKEN_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jws) = CompactJws::parse(token, DEFAULT_MAX_TOKEN_BYTES) else {
        return;
    };
    // What parsed is exactly the token's first two segments.
    assert!(token.starts_with(jws.signing_input()));
    assert_eq!(
        token.len(),
        jws.signing_input().len() + 1 + meshpass_core::b64::encode(jws.signature()).len()
    );
    // The claim checks never panic on arbitrary payloads.
    let (Ok(aud), Ok(td)) = (Audience::parse("a"), TrustDomain::parse("td")) else {
        return;
    };
    let issuer = IssuerPolicy::new("i", vec![aud], vec![td]);
    if let Ok(claims) = issuer.check_claims(&jws.payload, 1_700_000_000) {
        let _ = issuer.subject(&claims);
    }
});

//! The signature-level entry point on arbitrary input, with the RFC 7520 keys (the seeds
//! are that RFC's tokens, so mutations start from valid signatures): nothing panics, and
//! whatever verifies is exactly the token's segments, under a key that fits its alg.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshpass_core::{b64, verify_compact_jws, Jwk, DEFAULT_MAX_TOKEN_BYTES};

const KEYS: [&str; 2] = [
    r#"{"kty":"RSA","kid":"bilbo.baggins@hobbiton.example","use":"sig","n":"n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw","e":"AQAB"}"#,
    r#"{"kty":"EC","kid":"bilbo.baggins@hobbiton.example","use":"sig","crv":"P-521","x":"AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt","y":"AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1"}"#,
];

fn keys() -> &'static [Jwk] {
    static K: OnceLock<Vec<Jwk>> = OnceLock::new();
    K.get_or_init(|| {
        KEYS.iter()
            .filter_map(|k| serde_json::from_str::<serde_json::Map<_, _>>(k).ok())
            .filter_map(|obj| Jwk::from_json(&obj).ok())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(keys().len(), KEYS.len());
    for key in keys() {
        let Ok(jws) = verify_compact_jws(token, key, DEFAULT_MAX_TOKEN_BYTES) else {
            continue;
        };
        let mut segments = token.split('.');
        assert!(token.starts_with(jws.signing_input()));
        assert_eq!(segments.nth(1), Some(b64::encode(&jws.payload).as_str()));
        assert_eq!(segments.next(), Some(b64::encode(jws.signature()).as_str()));
        assert!(key.fits(jws.header.alg));
    }
});

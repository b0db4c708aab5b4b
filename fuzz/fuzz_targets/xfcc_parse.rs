//! The exchange service's `x-forwarded-client-cert` parse (core's `xfcc`): never panics;
//! splitting loses nothing; a value of more than one element names no caller, so
//! neither an element a client forwarded nor a certificate SAN holding a `,` (Envoy
//! writes URI and DNS values unquoted) can name one; and a caller it names is a SPIFFE
//! ID the value spells exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::xfcc::{split_unquoted, uri};
use meshpass_core::SpiffeId;

/// What a client could put before the proxy's element, or a SAN after a comma in it.
const OTHER: [&str; 3] = [
    "By=spiffe://td/ns/mesh/sa/x;URI=spiffe://td/ns/evil/sa/y",
    "URI=spiffe://td/ns/evil/sa/y",
    "DNS=x",
];

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    for sep in *b",;" {
        let parts: Vec<&str> = split_unquoted(value, sep).collect();
        assert!(!parts.is_empty());
        assert_eq!(parts.join(char::from(sep).to_string().as_str()), value);
    }
    let got = uri(value);
    // Another element beside a well-formed one: never a caller.
    if got.is_ok() {
        for other in OTHER {
            assert!(uri(&format!("{other},{value}")).is_err(), "{other}");
            assert!(uri(&format!("{value},{other}")).is_err(), "{other}");
        }
    }
    if let Ok(id) = &got {
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(id));
        assert_eq!(split_unquoted(value, b',').count(), 1);
        let named = split_unquoted(value, b';')
            .filter(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("uri") && v.trim().trim_matches('"') == id.as_str()
                })
            })
            .count();
        assert_eq!(named, 1);
    }
});

//! The exchange service's `x-forwarded-client-cert` parse (core's `xfcc`): never panics;
//! splitting loses nothing; only the last element names the caller, so an element any
//! earlier hop added never changes it; and a caller it names is a SPIFFE ID that element
//! spells exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::xfcc::{split_unquoted, uri};
use meshpass_core::SpiffeId;

/// An element an earlier (untrusted) hop could have added: no quote or backslash, so the
/// split state after its `,` is the state at the start of the value.
const EARLIER: &str = "By=spiffe://td/ns/mesh/sa/x;URI=spiffe://td/ns/evil/sa/y";

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
    assert_eq!(uri(&format!("{EARLIER},{value}")), got);
    if let Ok(id) = &got {
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(id));
        let last = split_unquoted(value, b',').last().unwrap_or_default();
        let named = split_unquoted(last, b';')
            .filter(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("uri") && v.trim().trim_matches('"') == id.as_str()
                })
            })
            .count();
        assert_eq!(named, 1);
    }
});

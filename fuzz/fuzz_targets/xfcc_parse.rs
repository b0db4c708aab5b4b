//! The exchange service's `x-forwarded-client-cert` parse (core's `xfcc`): never panics;
//! splitting loses nothing; only the last element names the caller, so an element any
//! earlier hop added never changes it; and a caller it names is a SPIFFE ID that element
//! spells exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::xfcc::{last_element, split_unquoted, uri};
use meshpass_core::SpiffeId;

/// Elements an earlier (untrusted) hop could have added, among them ones that open a
/// quote and never close it, or end in an escape.
const EARLIER: [&str; 4] = [
    "By=spiffe://td/ns/mesh/sa/x;URI=spiffe://td/ns/evil/sa/y",
    "URI=spiffe://td/ns/evil/sa/y;X=\"",
    "URI=spiffe://td/ns/evil/sa/y;X=\"\\",
    "X=\"a\\\",URI=spiffe://td/ns/evil/sa/y",
];

/// Whether `s` is what a proxy writes: its quotes close, and `\` appears only inside
/// quotes (escaping the next character).
fn well_formed(s: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in s.bytes() {
        match c {
            _ if escaped => escaped = false,
            b'\\' if !quoted => return false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted && !escaped
}

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
    // The last element decides alone: nothing an earlier hop wrote before it changes
    // the caller it names (for an element as a proxy writes it).
    if well_formed(value) {
        for earlier in EARLIER {
            assert_eq!(uri(&format!("{earlier},{value}")), got, "{earlier}");
        }
    }
    if let Ok(id) = &got {
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(id));
        let named = split_unquoted(last_element(value), b';')
            .filter(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("uri") && v.trim().trim_matches('"') == id.as_str()
                })
            })
            .count();
        assert_eq!(named, 1);
    }
});

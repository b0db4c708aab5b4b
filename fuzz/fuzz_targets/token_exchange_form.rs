//! RFC 8693 form parsing: never panics, and a parsed request re-encodes (`to_form`)
//! to a body that parses back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::oauth::TokenExchangeRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = TokenExchangeRequest::parse_form(data) {
        let form = req.to_form();
        assert_eq!(
            TokenExchangeRequest::parse_form(form.as_bytes()).as_ref(),
            Ok(&req)
        );
    }
});

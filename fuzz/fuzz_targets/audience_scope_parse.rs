//! The configuration words core parses from strings: audiences (`Audience`), RFC 6749
//! scopes (the `scope` of a token-exchange form, `is_scope_token`) and binding modes.
//! Never panics; an accepted audience is exactly the input and within its rules, and
//! serde agrees with `parse`; a scope parses iff every space-separated token is a
//! scope-token, comes back joined as sent, and a refusal is `invalid_scope`; a binding
//! mode is its name in any letter case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::audience::AudienceError;
use meshpass_core::oauth::{is_scope_token, ErrorCode, TokenExchangeRequest, TOKEN_TYPE_JWT};
use meshpass_core::{Audience, BindingMode};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::to_string(s).expect("a string serialises");

    // Audience.
    match Audience::parse(s) {
        Ok(a) => {
            assert_eq!((a.as_str(), a.to_string().as_str()), (s, s));
            assert!(s.len() <= 1024 && !s.chars().any(char::is_control));
            assert_eq!(
                serde_json::to_string(&a).ok().as_deref(),
                Some(json.as_str())
            );
            assert_eq!(s.parse::<Audience>().as_ref(), Ok(&a));
        }
        Err(AudienceError::Empty) => assert!(s.is_empty()),
        Err(AudienceError::TooLong) => assert!(s.len() > 1024),
        Err(AudienceError::ControlCharacter) => assert!(s.chars().any(char::is_control)),
    }
    assert_eq!(
        serde_json::from_str::<Audience>(&json).ok(),
        Audience::parse(s).ok()
    );

    // Scope, as the `scope` of a token-exchange form.
    if is_scope_token(s) {
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    }
    let form = TokenExchangeRequest {
        subject_token: "t".into(),
        subject_token_type: TOKEN_TYPE_JWT.into(),
        audience: vec!["a".into()],
        scope: vec![s.to_string()],
        ..TokenExchangeRequest::default()
    }
    .to_form();
    match TokenExchangeRequest::parse_form(form.as_bytes()) {
        Ok(req) if s.is_empty() => assert!(req.scope.is_empty()),
        Ok(req) => {
            assert!(req.scope.iter().all(|t| is_scope_token(t)));
            assert_eq!(req.scope_string().as_deref(), Some(s));
        }
        Err(e) => {
            assert_eq!(e.error, ErrorCode::InvalidScope, "{e:?}");
            assert!(!s.split(' ').all(is_scope_token));
        }
    }

    // Binding mode.
    match s.parse::<BindingMode>() {
        Ok(m) => {
            assert!(m.as_str().eq_ignore_ascii_case(s));
            assert_eq!(m.to_string().parse::<BindingMode>(), Ok(m));
        }
        Err(_) => assert!(["server", "client", "none"]
            .iter()
            .all(|n| !n.eq_ignore_ascii_case(s))),
    }
    assert_eq!(
        serde_json::from_str::<BindingMode>(&json).ok(),
        s.parse::<BindingMode>().ok()
    );
});

//! RFC 8693 token-exchange form parsing and encoding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshpass_core::oauth::{
    ErrorCode, ErrorResponse, TokenExchangeRequest, MAX_FORM_BYTES, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT,
};

const GT: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
const STT: &str = "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

fn minimal() -> String {
    format!("{GT}&subject_token=eyJ.eyJ.sig&{STT}")
}

fn invalid_request(body: &str) -> String {
    let err = TokenExchangeRequest::parse_form(body.as_bytes()).unwrap_err();
    assert_eq!(err.error, ErrorCode::InvalidRequest, "{body}: {err:?}");
    err.error_description.unwrap()
}

#[test]
fn parses_a_minimal_request() {
    let r = TokenExchangeRequest::parse_form(minimal().as_bytes()).unwrap();
    assert_eq!(r.subject_token, "eyJ.eyJ.sig");
    assert_eq!(r.subject_token_type, TOKEN_TYPE_JWT);
    assert!(r.resource.is_empty() && r.audience.is_empty() && r.scope.is_empty());
    assert_eq!(r.actor_token, None);
}

#[test]
fn parses_every_field_with_repeated_resource_and_audience() {
    let body = format!(
        "{}&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example&audience=x&audience=y\
         &scope=read+write%20admin&requested_token_type={}&actor_token=act.tok.en&actor_token_type={}\
         &client_id=ignored",
        minimal(),
        TOKEN_TYPE_ACCESS_TOKEN,
        TOKEN_TYPE_ID_TOKEN
    );
    let r = TokenExchangeRequest::parse_form(body.as_bytes()).unwrap();
    assert_eq!(r.resource, vec!["https://a.example", "https://b.example"]);
    assert_eq!(r.audience, vec!["x", "y"]);
    assert_eq!(r.scope, vec!["read", "write", "admin"]);
    assert_eq!(
        r.requested_token_type.as_deref(),
        Some(TOKEN_TYPE_ACCESS_TOKEN)
    );
    assert_eq!(r.actor_token.as_deref(), Some("act.tok.en"));
    assert_eq!(r.actor_token_type.as_deref(), Some(TOKEN_TYPE_ID_TOKEN));
    assert_eq!(
        TokenExchangeRequest::parse_form(r.to_form().as_bytes()).unwrap(),
        r
    );
}

#[test]
fn accepts_id_token_and_access_token_subject_types() {
    for t in [TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN] {
        let body = format!("{GT}&subject_token=a.b.c&subject_token_type={t}");
        assert_eq!(
            TokenExchangeRequest::parse_form(body.as_bytes())
                .unwrap()
                .subject_token_type,
            t
        );
    }
}

#[test]
fn rejects_wrong_grant_type_as_unsupported_grant_type() {
    for gt in [
        "client_credentials",
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ] {
        let body = format!("grant_type={gt}&subject_token=a.b.c&{STT}");
        let err = TokenExchangeRequest::parse_form(body.as_bytes()).unwrap_err();
        assert_eq!(err.error, ErrorCode::UnsupportedGrantType);
        assert_eq!(err.error.http_status(), 400);
    }
}

#[test]
fn rejects_missing_required_fields_with_precise_descriptions() {
    assert_eq!(
        invalid_request("subject_token=a.b.c"),
        "grant_type is missing"
    );
    assert_eq!(
        invalid_request(&format!("{GT}&{STT}")),
        "subject_token is missing"
    );
    assert_eq!(
        invalid_request(&format!("{GT}&subject_token=a.b.c")),
        "subject_token_type is missing"
    );
    assert_eq!(invalid_request(""), "grant_type is missing");
}

#[test]
fn rejects_duplicated_non_repeatable_fields() {
    for field in [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "scope",
        "requested_token_type",
    ] {
        let extra = match field {
            "grant_type" => GT.to_owned(),
            "subject_token_type" => STT.to_owned(),
            "requested_token_type" => format!("requested_token_type={TOKEN_TYPE_JWT}"),
            other => format!("{other}=x"),
        };
        let body = format!("{}&{extra}&{extra}", minimal());
        assert_eq!(
            invalid_request(&body),
            format!("{field} is given more than once")
        );
    }
}

#[test]
fn rejects_unknown_token_types_without_echoing_them() {
    let body = format!(
        "{GT}&subject_token=a.b.c&subject_token_type=urn:ietf:params:oauth:token-type:saml2"
    );
    let d = invalid_request(&body);
    assert!(
        d.starts_with("subject_token_type is not a supported token type"),
        "{d}"
    );
    assert!(!d.contains("saml2"));
    let body = format!("{}&requested_token_type=urn:x:secret", minimal());
    assert!(invalid_request(&body).starts_with("requested_token_type is not"));
}

#[test]
fn rejects_actor_token_without_type_and_type_without_token() {
    assert_eq!(
        invalid_request(&format!("{}&actor_token=a.b.c", minimal())),
        "actor_token_type is required when actor_token is given"
    );
    assert_eq!(
        invalid_request(&format!("{}&actor_token_type={TOKEN_TYPE_JWT}", minimal())),
        "actor_token_type must not be given without actor_token"
    );
    assert!(invalid_request(&format!(
        "{}&actor_token=a.b.c&actor_token_type=urn:x",
        minimal()
    ))
    .starts_with("actor_token_type is not"));
}

/// RFC 6749 §3.2: "Parameters sent without a value MUST be treated as if they were
/// omitted from the request."
#[test]
fn treats_parameters_without_a_value_as_omitted() {
    assert_eq!(
        invalid_request(&format!("{GT}&subject_token=&{STT}")),
        "subject_token is missing"
    );
    assert_eq!(
        invalid_request(&format!("{GT}&subject_token&{STT}")),
        "subject_token is missing"
    );
    assert_eq!(
        invalid_request(&format!("grant_type=&subject_token=a.b.c&{STT}")),
        "grant_type is missing"
    );
    let parse = |extra: &str| {
        TokenExchangeRequest::parse_form(format!("{}{extra}", minimal()).as_bytes()).unwrap()
    };
    let plain = parse("");
    for extra in [
        "&resource=",
        "&scope=",
        "&audience",
        "&actor_token=&actor_token_type=",
    ] {
        assert_eq!(parse(extra), plain, "{extra}");
    }
    // An empty one does not count as a second occurrence.
    assert_eq!(parse("&scope=&scope=read").scope, ["read"]);
    assert_eq!(parse("&resource=&resource=r").resource, ["r"]);
    // An actor token without a value is omitted, so its type alone is refused.
    assert_eq!(
        invalid_request(&format!(
            "{}&actor_token=&actor_token_type={TOKEN_TYPE_JWT}",
            minimal()
        )),
        "actor_token_type must not be given without actor_token"
    );
}

/// RFC 6749 §5.2: a malformed scope is `invalid_scope`, not `invalid_request`.
fn invalid_scope(body: &str) -> String {
    let err = TokenExchangeRequest::parse_form(body.as_bytes()).unwrap_err();
    assert_eq!(err.error, ErrorCode::InvalidScope, "{body}: {err:?}");
    err.error_description.unwrap()
}

#[test]
fn a_malformed_scope_is_invalid_scope_naming_the_empty_token_or_the_character_rule() {
    for scope in ["a++b", "+a", "a+", "a%20%20b"] {
        assert!(
            invalid_scope(&format!("{}&scope={scope}", minimal())).contains("empty scope token")
        );
    }
    for scope in ["a%22b", "a%5Cb", "a%7Fb", "caf%C3%A9"] {
        assert!(invalid_scope(&format!("{}&scope={scope}", minimal())).contains("RFC 6749"));
    }
}

#[test]
fn rejects_oversize_non_utf8_and_badly_escaped_bodies() {
    let big = format!("{}&pad={}", minimal(), "a".repeat(MAX_FORM_BYTES));
    assert!(invalid_request(&big).contains("larger than"));
    let mut raw = minimal().into_bytes();
    raw.extend_from_slice(b"&resource=\xff");
    let err = TokenExchangeRequest::parse_form(&raw).unwrap_err();
    assert_eq!(
        err.error_description.as_deref(),
        Some("request body is not UTF-8")
    );
    assert!(invalid_request(&format!("{}&resource=%ff", minimal())).contains("not UTF-8"));
    assert!(invalid_request(&format!("{}&resource=%zz", minimal())).contains("percent escape"));
    assert!(invalid_request(&format!("{}&resource=%4", minimal())).contains("percent escape"));
}

#[test]
fn to_form_round_trips_values_needing_escapes() {
    let r = TokenExchangeRequest {
        subject_token: "a+b/c=d&e".into(),
        subject_token_type: TOKEN_TYPE_JWT.into(),
        resource: vec!["https://x.example/p?q=1&r=2".into()],
        audience: vec!["spiffe://td/ns/a/sa/b".into(), "ünïcode".into()],
        scope: vec!["read:all".into(), "write".into()],
        requested_token_type: None,
        actor_token: None,
        actor_token_type: None,
    };
    let form = r.to_form();
    assert!(
        form.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange")
    );
    assert_eq!(
        TokenExchangeRequest::parse_form(form.as_bytes()).unwrap(),
        r
    );
    assert_eq!(r.scope_string().as_deref(), Some("read:all write"));
}

#[test]
fn error_responses_serialize_as_rfc6749_json() {
    let e = ErrorResponse::new(ErrorCode::InvalidRequest, "grant_type is missing");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        serde_json::json!({"error": "invalid_request", "error_description": "grant_type is missing"})
    );
    let e: ErrorResponse = serde_json::from_str(r#"{"error":"unsupported_grant_type"}"#).unwrap();
    assert_eq!(e.error, ErrorCode::UnsupportedGrantType);
    assert_eq!(ErrorCode::SlowDown.http_status(), 429);
    assert_eq!(ErrorCode::TemporarilyUnavailable.http_status(), 503);
}

#[test]
fn scope_token_rule_is_rfc_6749_section_3_3() {
    use meshpass_core::oauth::is_scope_token;
    for ok in ["orders.read", "a!", "x#[]~", "urn:example:scope"] {
        assert!(is_scope_token(ok), "{ok}");
    }
    for bad in ["", "a b", "q\"", "back\\slash", "tab\t", "é"] {
        assert!(!is_scope_token(bad), "{bad:?}");
    }
}

#[test]
fn debug_output_of_a_request_never_shows_the_subject_or_actor_token() {
    let body = format!(
        "{}&actor_token=actor-s3cret&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
        minimal()
    );
    let r = TokenExchangeRequest::parse_form(body.as_bytes()).unwrap();
    let shown = format!("{r:?}");
    assert!(!shown.contains(&r.subject_token), "{shown}");
    assert!(!shown.contains("actor-s3cret"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

/// RFC 6749 §5.2: `error_description` holds only %x20-21 / %x23-5B / %x5D-7E.
#[test]
fn error_descriptions_keep_to_the_characters_rfc6749_allows() {
    let allowed = |c: char| matches!(c as u32, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e);
    let e = ErrorResponse::new(
        ErrorCode::InvalidScope,
        "scope \"admin\\x\"… not allowed (RFC 6749 §3.3)\n\u{7f}é",
    );
    let d = e.error_description.unwrap();
    assert!(d.chars().all(allowed), "{d:?}");
    assert_eq!(
        d,
        "scope 'admin/x'... not allowed (RFC 6749 section 3.3)???"
    );
    assert_eq!(
        meshpass_core::oauth::error_description("plain text, kept as is: #[]~!"),
        "plain text, kept as is: #[]~!"
    );
}

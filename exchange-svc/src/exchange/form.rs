//! Step 1 of an exchange: read and parse the form (content type, size, RFC 8693 fields,
//! what this service can issue).

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap};
use meshpass_core::audience::Audience;
use meshpass_core::oauth::{
    TokenExchangeRequest, MAX_FORM_BYTES, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
};
use std::time::Duration;

use crate::error::ApiError;

/// Refuses anything but `application/x-www-form-urlencoded` (parameters allowed).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let wrong = || {
        ApiError::InvalidRequest("Content-Type must be application/x-www-form-urlencoded".into())
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(wrong)?
        .to_str()
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(())
    } else {
        Err(wrong())
    }
}

fn too_large() -> ApiError {
    ApiError::InvalidRequest(format!(
        "request body is larger than {MAX_FORM_BYTES} bytes"
    ))
}

/// Refuses a declared `Content-Length` above [`MAX_FORM_BYTES`] before the body is read.
pub(crate) fn check_declared_length(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_FORM_BYTES as u64 => Err(too_large()),
        _ => Ok(()),
    }
}

/// Checks what the request asks for beyond the form's syntax: a JWT (or access token,
/// which is a JWT here) and at most one resource.
pub(crate) fn check_request(req: &TokenExchangeRequest) -> Result<(), ApiError> {
    if let Some(t) = &req.requested_token_type {
        if t != TOKEN_TYPE_JWT && t != TOKEN_TYPE_ACCESS_TOKEN {
            return Err(ApiError::InvalidRequest(
                "requested_token_type is not supported: this service issues JWTs".into(),
            ));
        }
    }
    if req.resource.len() > 1 {
        return Err(ApiError::InvalidTarget(
            "only one resource may be requested".into(),
        ));
    }
    Ok(())
}

/// Reads the form's bytes: content type and size are refused before the body is read
/// (and then the connection is closed, see [`ApiError::BodyUnread`]).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    let unread = |e| ApiError::BodyUnread(Box::new(e));
    check_content_type(headers).map_err(unread)?;
    check_declared_length(headers).map_err(unread)?;
    match tokio::time::timeout(deadline, to_bytes(body, MAX_FORM_BYTES)).await {
        Ok(read) => read.map_err(|_| unread(too_large())),
        // The client stopped sending: its fault, not an outage (no Retry-After).
        Err(_) => Err(unread(ApiError::InvalidRequest(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs_f64()
        )))),
    }
}

/// Parses the form read by [`read_body`] and checks what it asks for.
pub(crate) fn parse(bytes: &[u8]) -> Result<TokenExchangeRequest, ApiError> {
    let req = TokenExchangeRequest::parse_form(bytes).map_err(ApiError::Protocol)?;
    check_request(&req)?;
    Ok(req)
}

/// The resource the exchange is for: the `resource`, else the first `audience`.
pub(crate) fn target(req: &TokenExchangeRequest) -> Result<String, ApiError> {
    let target = req
        .resource
        .first()
        .or_else(|| req.audience.first())
        .cloned()
        .ok_or_else(|| ApiError::InvalidRequest("resource or audience is required".into()))?;
    // Mapping writes take a resource only through `Audience::parse`, so a value it
    // refuses names no mapping; PostgreSQL would also refuse a NUL in any query:
    // answer here, not with a store error.
    Audience::parse(&target).map_err(|e| {
        ApiError::InvalidTarget(format!("the resource or audience is unusable: {e}"))
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: &str, len: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        if let Some(l) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn request(form: &str) -> TokenExchangeRequest {
        TokenExchangeRequest::parse_form(form.as_bytes()).unwrap()
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
        &subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

    #[test]
    fn content_type_must_be_form_encoded_with_any_parameters() {
        assert!(check_content_type(&headers("application/x-www-form-urlencoded", None)).is_ok());
        assert!(check_content_type(&headers(
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            None
        ))
        .is_ok());
        assert!(check_content_type(&headers("application/json", None)).is_err());
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_declared_length_above_the_limit_is_refused_before_reading() {
        let over = (MAX_FORM_BYTES + 1).to_string();
        assert!(check_declared_length(&headers("x", Some(&over))).is_err());
        assert!(check_declared_length(&headers("x", Some("10"))).is_ok());
        assert!(check_declared_length(&headers("x", None)).is_ok());
    }

    #[test]
    fn only_jwts_and_one_resource_can_be_requested() {
        assert!(check_request(&request(BASE)).is_ok());
        let mut saml = request(BASE);
        saml.requested_token_type = Some("urn:ietf:params:oauth:token-type:saml2".into());
        assert!(matches!(
            check_request(&saml),
            Err(ApiError::InvalidRequest(_))
        ));
        let two = format!("{BASE}&resource=a&resource=b");
        assert!(matches!(
            check_request(&request(&two)),
            Err(ApiError::InvalidTarget(_))
        ));
    }

    #[test]
    fn the_target_is_the_resource_else_the_first_audience() {
        assert_eq!(
            target(&request(&format!("{BASE}&resource=r&audience=a"))).unwrap(),
            "r"
        );
        assert_eq!(
            target(&request(&format!("{BASE}&audience=a&audience=b"))).unwrap(),
            "a"
        );
        assert!(target(&request(BASE)).is_err());
    }

    #[test]
    fn a_target_no_mapping_could_name_is_an_invalid_target() {
        let long = "r".repeat(1025);
        for bad in ["pay%00ments", "a%0Ab", long.as_str()] {
            let got = target(&request(&format!("{BASE}&resource={bad}")));
            assert!(
                matches!(got, Err(ApiError::InvalidTarget(_))),
                "{bad:?}: {got:?}"
            );
        }
    }
}

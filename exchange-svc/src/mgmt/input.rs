//! Reading a management request: bodies, JSON, query strings, path parameters.
//!
//! A body that does not fit its type is a `422` naming the field by its JSON path
//! (`ttl_secs`, `rate_limit.burst`, `mappings[1].ttl_secs`), never by the value serde
//! quotes. A query or path parameter that cannot be read is a JSON `400` naming it.
//! Handlers read the body, the query and the path through these only after
//! authenticating (axum's own extractors would refuse first, in plain text, and tell an
//! anonymous caller what was wrong with the request; a body extractor would wait for a
//! body an anonymous caller announced and never sends).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::MgmtError;
use super::transfer::MAX_BODY_BYTES;

/// Largest page a list answers.
pub const MAX_LIMIT: u32 = 1000;

/// A page size: 1 to [`MAX_LIMIT`]. Anything else is refused rather than clamped, so a
/// client never takes a short page for the whole list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    /// The page size when the request names none.
    pub const DEFAULT: Limit = Limit(100);

    /// `n` when it is a page size.
    pub fn new(n: u32) -> Option<Limit> {
        (1..=MAX_LIMIT).contains(&n).then_some(Limit(n))
    }

    /// The size.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        u32::try_from(n)
            .ok()
            .and_then(Limit::new)
            .ok_or_else(|| D::Error::custom(format!("must be 1 to {MAX_LIMIT}, not {n}")))
    }
}

/// The field a deserialisation error is about. serde reports a missing (or duplicate)
/// field at the object that lacks it, so its name is added to the path; an unknown
/// field is reported at the field itself. `None`: the error is about the whole input.
fn field_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let path = path.to_string();
    let path = (path != ".").then_some(path);
    let lacking = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path, lacking) {
        (Some(p), Some(name)) => Some(format!("{p}.{name}")),
        (None, Some(name)) => Some(name.to_string()),
        (p, None) => p,
    }
}

fn invalid(e: serde_path_to_error::Error<serde_json::Error>) -> MgmtError {
    let message = e.inner().to_string();
    let field = field_of(e.path(), &message).unwrap_or_else(|| "body".into());
    MgmtError::invalid(field, message)
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]; call it after authenticating.
/// A larger one is `413`, refused by its `Content-Length` before any of it is read, or
/// as soon as the stream passes the bound; a body that breaks off (the client went
/// away) is `400`.
pub async fn read_body(body: Body) -> Result<Bytes, MgmtError> {
    let too_large = || MgmtError::TooLarge(MAX_BODY_BYTES);
    if usize::try_from(body.size_hint().lower()).map_or(true, |n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        // `to_bytes` fails with the body's own error (an `axum::Error`) or with its
        // length limit.
        .map_err(|e| match e.into_inner().downcast::<axum::Error>() {
            Ok(read) => MgmtError::BadRequest(format!("the body could not be read: {read}")),
            Err(_) => too_large(),
        })
}

/// Parses a JSON body; a shape error is a `422` naming the field by its JSON path.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, MgmtError> {
    let not_json =
        |e: serde_json::Error| MgmtError::BadRequest(format!("body is not valid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize(&mut de).map_err(|e| match e.inner().classify() {
            serde_json::error::Category::Data => invalid(e),
            // Valid JSON (RFC 8259 sets no range) that no float holds (`1e400`): a bad
            // value of its field, though serde_json classifies it as syntax.
            serde_json::error::Category::Syntax if out_of_range(e.inner()) => invalid(e),
            _ => not_json(e.into_inner()),
        })?;
    // Trailing text after the document, as `serde_json::from_slice` refuses it.
    de.end().map_err(not_json)?;
    Ok(value)
}

/// Whether `e` is serde_json's "number out of range" (it has no category of its own).
fn out_of_range(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("number out of range")
}

/// Reads a JSON value (a merge patch applied to an entity) as `T`; `422` naming the
/// field by its JSON path.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, MgmtError> {
    serde_path_to_error::deserialize(v).map_err(invalid)
}

/// Parses a query string (axum's `RawQuery`) as `T`; a parameter that cannot be read,
/// or one `T` does not take, is a `400` naming it.
pub fn parse_query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, MgmtError> {
    let pairs = form_urlencoded::parse(raw.unwrap_or_default().as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let message = e.inner().to_string();
        let param = field_of(e.path(), &message).unwrap_or_else(|| "query".into());
        MgmtError::BadRequest(format!("{param}: {message}"))
    })
}

/// The path parameters, or a `400` naming the one that could not be read (not UTF-8
/// once percent-decoded: `%FF`).
pub fn path_params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, MgmtError> {
    let e = match p {
        Ok(Path(v)) => return Ok(v),
        Err(PathRejection::FailedToDeserializePathParams(e)) => e,
        // The route has no such parameters: a bug in the route table.
        Err(other) => return Err(MgmtError::Internal(other.body_text())),
    };
    Err(MgmtError::BadRequest(match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            format!("{key}: not UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
            format!("{key}: {}", e.kind())
        }
        other => format!("path: {other}"),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        n: u64,
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<u8>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
        b: u32,
    }

    fn field(body: &str) -> String {
        match parse_body::<Outer>(body.as_bytes()) {
            Err(MgmtError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_body_error_names_the_json_path_of_the_field() {
        assert_eq!(field(r#"{"n": -1}"#), "n");
        assert_eq!(field(r#"{"n": "1"}"#), "n");
        assert_eq!(field(r#"{}"#), "n");
        assert_eq!(field(r#"{"n": 1, "n": 2}"#), "n");
        assert_eq!(field(r#"{"n": 1, "x": 2}"#), "x");
        assert_eq!(
            field(r#"{"n": 1, "inner": {"a": 5000000000, "b": 1}}"#),
            "inner.a"
        );
        assert_eq!(field(r#"{"n": 1, "inner": {"a": 1}}"#), "inner.b");
        assert_eq!(
            field(r#"{"n": 1, "inner": {"a": 1, "b": 1, "c": 1}}"#),
            "inner.c"
        );
        assert_eq!(field(r#"{"n": 1, "list": [1, 256]}"#), "list[1]");
        assert_eq!(field(r#""text""#), "body");
    }

    #[test]
    fn a_body_that_is_not_json_is_a_bad_request() {
        for body in ["{not json", r#"{"n": 1} trailing"#, ""] {
            assert!(
                matches!(
                    parse_body::<Outer>(body.as_bytes()),
                    Err(MgmtError::BadRequest(_))
                ),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_the_bound_and_one_broken_off_is_a_bad_request_not_too_large() {
        let exact = vec![b'x'; MAX_BODY_BYTES];
        let read = read_body(Body::from(exact.clone())).await.unwrap();
        assert_eq!(read.len(), MAX_BODY_BYTES);
        // Announced larger (Content-Length): refused before any of it is read.
        let over = vec![b'x'; MAX_BODY_BYTES + 1];
        assert!(matches!(
            read_body(Body::from(over.clone())).await,
            Err(MgmtError::TooLarge(MAX_BODY_BYTES))
        ));
        // Streamed (no length): refused once it passes the bound.
        let chunks = over
            .chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        assert!(matches!(
            read_body(streamed).await,
            Err(MgmtError::TooLarge(MAX_BODY_BYTES))
        ));
        // Broken off: the client's failure, not a size.
        let broken = Body::from_stream(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ]));
        match read_body(broken).await {
            Err(MgmtError::BadRequest(m)) => assert!(m.contains("connection reset"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Query {
        limit: Option<Limit>,
        flag: Option<bool>,
    }

    fn refused(q: &str) -> String {
        match parse_query::<Query>(Some(q)) {
            Err(MgmtError::BadRequest(m)) => m,
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn a_query_error_names_the_parameter_and_a_page_size_is_never_clamped() {
        for q in [
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=-1",
            "limit=99999999999",
        ] {
            assert!(refused(q).starts_with("limit: "), "{q}: {}", refused(q));
        }
        assert_eq!(refused("limit=0"), "limit: must be 1 to 1000, not 0");
        assert!(refused("flag=maybe").starts_with("flag: "));
        assert!(refused("colour=red").starts_with("colour: "));
        let q: Query = parse_query(Some("limit=1000&flag=true")).unwrap();
        assert_eq!(q.limit.map(Limit::get), Some(1000));
        let q: Query = parse_query(None).unwrap();
        assert!(q.limit.is_none());
    }
}

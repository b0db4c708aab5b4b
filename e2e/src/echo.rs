//! The upstream app: answers every request with a JSON report of what it received.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::any;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the echo app saw (its response body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EchoReport {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// Body length in bytes.
    pub body_len: usize,
}

impl EchoReport {
    /// A header the app received, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The bearer token in `Authorization`, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// The echo app's router (any method, any path).
pub fn router() -> Router {
    Router::new()
        .route("/", any(echo))
        .route("/{*rest}", any(echo))
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<EchoReport> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    Json(EchoReport {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: map,
        body_len: body.len(),
    })
}

//! `GET /revocations?since=V` on the token listener (DESIGN.md "Revocation"): the
//! changes since version `V` for the filters, to callers that may call `/token`.
//!
//! Cost: a poll with nothing new (`since` = the version, or `If-None-Match`) is
//! answered from memory with `304` and no store access; a delta or snapshot is read
//! from the store once per (`since`, version) and memoised, since every sidecar of the
//! mesh asks for the same few. The 304 check uses this replica's set, which follows the
//! store within [`super::REFRESH_INTERVAL`]; a `since` ahead of it (another replica
//! answered first) refreshes from the store before answering.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::caller::ConnInfo;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::RevocationChanges;

#[derive(Debug, Default, Deserialize)]
struct FeedQuery {
    since: Option<u64>,
}

/// The JSON body of a feed answer.
pub fn render(c: &RevocationChanges) -> Result<Bytes, serde_json::Error> {
    c.to_feed_json().map(Bytes::from)
}

fn etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{version}\"")).ok()
}

fn answer(status: StatusCode, version: u64, body: Option<Bytes>) -> Response {
    let mut resp = match body {
        Some(b) => (status, Body::from(b)).into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    if status == StatusCode::OK {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(v) = etag(version) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// The version named by `If-None-Match: "<version>"`, if any.
fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// The `GET /revocations` handler.
pub async fn feed(State(st): State<AppState>, request: Request) -> Response {
    match serve(&st, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(st: &AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let conn = parts
        .extensions
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| &c.0);
    // The same rule as /token: a caller it would not serve gets nothing here, nor does
    // a revoked one.
    let caller = crate::exchange::identify_caller(&st.settings.callers, conn, &parts.headers)?;
    let now = st.clock.now();
    if !st.revocations.loaded() {
        // Not read once yet: the caller check below would pass anyone.
        return Err(ApiError::Unavailable {
            what: "the revocation list",
            detail: "not read from the store yet".into(),
            retry_after_secs: st.settings.store_retry_after_secs,
        });
    }
    if let Some(r) = caller
        .as_ref()
        .and_then(|c| st.revocations.current().caller(c, now).cloned())
    {
        return Err(ApiError::Revoked(r.reason));
    }
    let Query(q) = Query::<FeedQuery>::try_from_uri(&parts.uri)
        .map_err(|_| ApiError::InvalidRequest("since must be a non-negative integer".into()))?;
    let since = q.since.unwrap_or(0);
    let revs = &st.revocations;
    let store = revs.store().ok_or_else(|| ApiError::Unavailable {
        what: "revocation store",
        detail: "no revocation store attached".into(),
        retry_after_secs: st.settings.store_retry_after_secs,
    })?;
    let unavailable = |source| ApiError::Store {
        source,
        retry_after_secs: st.settings.store_retry_after_secs,
    };
    let cur = revs.current();
    if cur.lapse_due(now) || since > cur.version {
        revs.refresh(now).await.map_err(unavailable)?;
    }
    let version = revs.current().version;
    if (since == version && since != 0) || if_none_match(&parts.headers) == Some(version) {
        return Ok(answer(StatusCode::NOT_MODIFIED, version, None));
    }
    // Every snapshot answer is memoised under 0, so `since` values that all get the
    // snapshot (0, past the version, older than the log) share one copy.
    let memo_key = if since > version { 0 } else { since };
    if let Some(body) = revs.memo_get(memo_key, version) {
        return Ok(answer(StatusCode::OK, version, Some(body)));
    }
    let changes = store.revocation_changes(since).await.map_err(unavailable)?;
    if !changes.full && changes.version == since {
        return Ok(answer(StatusCode::NOT_MODIFIED, changes.version, None));
    }
    let body = render(&changes).map_err(|e| ApiError::Internal(e.to_string()))?;
    let memo_key = if changes.full { 0 } else { since };
    revs.memo_put(memo_key, changes.version, body.clone());
    Ok(answer(StatusCode::OK, changes.version, Some(body)))
}

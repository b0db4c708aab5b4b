//! `/api/v1/mappings` and `/api/v1/scopes`: list, get, create, replace, patch, delete.
//!
//! Writes are validated by the store's rules ([`crate::store::validate_mapping`],
//! [`crate::store::validate_scope_claims`], the cross-row checks) plus the service's
//! own: the TTL cap, scope claims that conflict with another scope (422 here, the
//! store's check stays the atomic guard), and scopes no mapping of the resource grants.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_core::{SpiffeId, SpiffeIdPattern};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Role;
use super::error::MgmtError;
use super::input::{from_value, parse_body, parse_query, path_params, read_body, Limit};
use super::{MgmtState, RequestId};
use crate::store::{
    check_claim_conflicts, check_scope_granted, check_ttl_cap, validate_scope_claims, ETag,
    Mapping, MappingStore, Precondition, Saved, ScopeClaims, ScopeKey,
};

/// The mappings list's filters and page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    subject: Option<String>,
    resource: Option<String>,
    participant: Option<String>,
    cursor: Option<String>,
    limit: Option<Limit>,
}

/// The scope list's filter and page: a scope row has no subject nor participant, so a
/// filter on them is refused rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    resource: Option<String>,
    cursor: Option<String>,
    limit: Option<Limit>,
}

/// One page of a list.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The entries, in stable order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page (absent on the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Cuts `items` into the page after `cursor`, in byte order of `key`: the cursor is
/// compared in that order, and a database's collation (PostgreSQL's `en_US`, ICU) may
/// return rows in another, which would skip some.
fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    cursor: Option<&str>,
    limit: Option<Limit>,
) -> Result<Page<T>, MgmtError> {
    let limit = limit.unwrap_or(Limit::DEFAULT).get() as usize;
    let after = cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| MgmtError::BadRequest("cursor is not one this API gave".into()))
        })
        .transpose()?;
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .map(|i| (key(&i), i))
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    let next_cursor = (rest.len() > limit).then(|| URL_SAFE_NO_PAD.encode(&rest[limit - 1].0));
    rest.truncate(limit);
    Ok(Page {
        items: rest.into_iter().map(|(_, i)| i).collect(),
        next_cursor,
    })
}

/// The precondition of `If-Match` / `If-None-Match`.
fn precondition(headers: &HeaderMap, default: Precondition) -> Result<Precondition, MgmtError> {
    if headers.contains_key(header::IF_MATCH) {
        // Several field lines are one list (RFC 9110 §5.3).
        let lines: Vec<&[u8]> = headers
            .get_all(header::IF_MATCH)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        return Precondition::if_match(&lines.join(&b","[..])).map_err(MgmtError::BadRequest);
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().ok().map(str::trim) == Some("*") {
            return Ok(Precondition::NoneMatch);
        }
        return Err(MgmtError::BadRequest(
            "only If-None-Match: * is supported on writes".into(),
        ));
    }
    Ok(default)
}

/// A JSON answer with its `ETag`.
fn tagged<T: Serialize>(status: StatusCode, item: &T, etag: &ETag) -> Response {
    let mut resp = (status, Json(item)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag.quoted()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn saved<T: Serialize>(s: &Saved<T>) -> Response {
    let status = if s.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tagged(status, &s.item, &s.etag)
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    // An object patch applies to an object: any other target starts from `{}` (§2), so
    // a member set to null in a new object is removed, never stored as null.
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// What the write of a patch computed from the state read under `read` must find: that
/// very state, whatever `If-Match` allowed. A list (`"A", "B"`) is checked against the
/// state read (412 when it is not named), then the write must find that state: checked
/// at the write instead, a state written meanwhile that the list also named (or the read
/// one come back) was overwritten by a patch of another state, a lost update.
fn patch_precondition(
    requested: Precondition,
    read: ETag,
    target: impl FnOnce() -> String,
) -> Result<Precondition, MgmtError> {
    match requested {
        Precondition::Exists | Precondition::None => Ok(Precondition::Matches(read)),
        Precondition::Matches(t) if t == read => Ok(Precondition::Matches(read)),
        Precondition::MatchesAny(tags) if tags.contains(&read) => Ok(Precondition::Matches(read)),
        Precondition::Matches(_) | Precondition::MatchesAny(_) => {
            Err(MgmtError::PreconditionFailed(target()))
        }
        p => Ok(p),
    }
}

fn patched<T: Serialize + DeserializeOwned>(current: &T, body: &[u8]) -> Result<T, MgmtError> {
    let patch: Value = parse_body(body)?;
    if !patch.is_object() {
        return Err(MgmtError::BadRequest(
            "a merge patch is a JSON object".into(),
        ));
    }
    let mut v = serde_json::to_value(current).map_err(|e| MgmtError::Internal(e.to_string()))?;
    merge_patch(&mut v, &patch);
    from_value(v)
}

fn check_mapping(st: &MgmtState, m: &Mapping) -> Result<(), MgmtError> {
    crate::store::validate_mapping(m)?;
    check_ttl_cap(m, st.max_ttl_secs)?;
    Ok(())
}

/// The row on its own first (a bad resource is the resource's fault, not an unknown
/// scope; and no store query sees a value no row can hold), then against other rows.
async fn check_scope(st: &MgmtState, row: &ScopeClaims) -> Result<(), MgmtError> {
    validate_scope_claims(row, &st.participant_claim)?;
    let others = st.store.list_scope_claims().await?;
    check_claim_conflicts(row, &others).map_err(|e| MgmtError::invalid("claims", e.to_string()))?;
    let mappings = st.store.resource_policy(&row.resource).await?.mappings;
    check_scope_granted(row, &mappings)?;
    Ok(())
}

/// `GET /api/v1/mappings`.
pub async fn list_mappings(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Mapping>>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let q: ListQuery = parse_query(query.as_deref())?;
    let id = q.subject.as_deref().and_then(|s| SpiffeId::parse(s).ok());
    let items: Vec<Mapping> = st
        .store
        .list_mappings()
        .await?
        .into_iter()
        .filter(|m| q.resource.as_ref().is_none_or(|r| *r == m.resource))
        .filter(|m| q.participant.as_ref().is_none_or(|p| *p == m.participant))
        .filter(|m| match &q.subject {
            None => true,
            Some(s) if *s == m.subject => true,
            Some(_) => match (&id, SpiffeIdPattern::parse(&m.subject)) {
                (Some(id), Ok(p)) => p.matches(id),
                _ => false,
            },
        })
        .collect();
    Ok(Json(paginate(
        items,
        |m| m.name.clone(),
        q.cursor.as_deref(),
        q.limit,
    )?))
}

/// `GET /api/v1/mappings/{name}`.
pub async fn get_mapping(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let name = path_params(name)?;
    let (m, tag) = st
        .store
        .mapping_tagged(&name)
        .await?
        .ok_or(MgmtError::NotFound(format!("mappings/{name}")))?;
    Ok(tagged(StatusCode::OK, &m, &tag))
}

/// `POST /api/v1/mappings`.
pub async fn create_mapping(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let m: Mapping = parse_body(&body)?;
    check_mapping(&st, &m)?;
    let r = st
        .store
        .save_mapping(&m, Precondition::Absent, &rid.actor(&caller))
        .await;
    st.written();
    Ok(saved(&r?))
}

/// `PUT /api/v1/mappings/{name}`.
pub async fn put_mapping(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let name = path_params(name)?;
    let pre = precondition(&headers, Precondition::None)?;
    let m: Mapping = parse_body(&body)?;
    if m.name != name {
        return Err(MgmtError::invalid(
            "name",
            "must equal the name in the path",
        ));
    }
    check_mapping(&st, &m)?;
    let r = st.store.save_mapping(&m, pre, &rid.actor(&caller)).await;
    st.written();
    Ok(saved(&r?))
}

/// `PATCH /api/v1/mappings/{name}`.
pub async fn patch_mapping(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, MgmtError> {
    // Write, and read: the answer is the whole stored entry, which the request did not send.
    let caller = st
        .auth
        .require_all(&headers, &[Role::Write, Role::Read])
        .await?;
    let body = read_body(body).await?;
    let name = path_params(name)?;
    let (current, tag) = st
        .store
        .mapping_tagged(&name)
        .await?
        .ok_or(MgmtError::NotFound(format!("mappings/{name}")))?;
    let requested = precondition(&headers, Precondition::Matches(tag.clone()))?;
    let pre = patch_precondition(requested, tag, || format!("mappings/{name}"))?;
    let m: Mapping = patched(&current, &body)?;
    if m.name != name {
        return Err(MgmtError::invalid(
            "name",
            "cannot be changed (create a new mapping)",
        ));
    }
    check_mapping(&st, &m)?;
    let r = st.store.save_mapping(&m, pre, &rid.actor(&caller)).await;
    st.written();
    Ok(saved(&r?))
}

/// `DELETE /api/v1/mappings/{name}`.
pub async fn delete_mapping(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let name = path_params(name)?;
    let pre = precondition(&headers, Precondition::Exists)?;
    let r = st
        .store
        .remove_mapping(&name, pre, &rid.actor(&caller))
        .await;
    st.written();
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/scopes`.
pub async fn list_scopes(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<ScopeClaims>>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let q: ScopeQuery = parse_query(query.as_deref())?;
    let items: Vec<ScopeClaims> = st
        .store
        .list_scope_claims()
        .await?
        .into_iter()
        .filter(|s| q.resource.as_ref().is_none_or(|r| *r == s.resource))
        .collect();
    // The key keeps the (resource, scope) order: NUL sorts before every other byte.
    Ok(Json(paginate(
        items,
        |s| format!("{}\u{0}{}", s.resource, s.scope),
        q.cursor.as_deref(),
        q.limit,
    )?))
}

fn scope_key(resource: String, scope: String) -> ScopeKey {
    ScopeKey { resource, scope }
}

/// `GET /api/v1/scopes/{resource}/{scope}`.
pub async fn get_scope(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    key: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let (resource, scope) = path_params(key)?;
    let key = scope_key(resource, scope);
    let (row, tag) = st
        .store
        .scope_tagged(&key)
        .await?
        .ok_or_else(|| MgmtError::NotFound(format!("scopes/{}/{}", key.resource, key.scope)))?;
    Ok(tagged(StatusCode::OK, &row, &tag))
}

/// `POST /api/v1/scopes`.
pub async fn create_scope(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let row: ScopeClaims = parse_body(&body)?;
    check_scope(&st, &row).await?;
    if st.store.scope_tagged(&row_key(&row)).await?.is_some() {
        return Err(MgmtError::Conflict(format!(
            "scopes/{}/{} already exists",
            row.resource, row.scope
        )));
    }
    let r = st
        .store
        .save_scope(&row, Precondition::Absent, &rid.actor(&caller))
        .await;
    st.written();
    Ok(saved(&r?))
}

fn row_key(row: &ScopeClaims) -> ScopeKey {
    scope_key(row.resource.clone(), row.scope.clone())
}

/// `PUT /api/v1/scopes/{resource}/{scope}`.
pub async fn put_scope(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    key: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Response, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let (resource, scope) = path_params(key)?;
    let pre = precondition(&headers, Precondition::None)?;
    let row: ScopeClaims = parse_body(&body)?;
    if row.resource != resource || row.scope != scope {
        return Err(MgmtError::invalid(
            "resource",
            "resource and scope must equal those in the path",
        ));
    }
    check_scope(&st, &row).await?;
    let r = st.store.save_scope(&row, pre, &rid.actor(&caller)).await;
    st.written();
    Ok(saved(&r?))
}

/// `PATCH /api/v1/scopes/{resource}/{scope}`.
pub async fn patch_scope(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    key: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Response, MgmtError> {
    // Write, and read: the answer is the whole stored entry, which the request did not send.
    let caller = st
        .auth
        .require_all(&headers, &[Role::Write, Role::Read])
        .await?;
    let body = read_body(body).await?;
    let (resource, scope) = path_params(key)?;
    let key = scope_key(resource, scope);
    let (current, tag) = st
        .store
        .scope_tagged(&key)
        .await?
        .ok_or_else(|| MgmtError::NotFound(format!("scopes/{}/{}", key.resource, key.scope)))?;
    let requested = precondition(&headers, Precondition::Matches(tag.clone()))?;
    let pre = patch_precondition(requested, tag, || {
        format!("scopes/{}/{}", key.resource, key.scope)
    })?;
    let row: ScopeClaims = patched(&current, &body)?;
    if row_key(&row) != key {
        return Err(MgmtError::invalid(
            "resource",
            "resource and scope cannot be changed",
        ));
    }
    check_scope(&st, &row).await?;
    let r = st.store.save_scope(&row, pre, &rid.actor(&caller)).await;
    st.written();
    Ok(saved(&r?))
}

/// `DELETE /api/v1/scopes/{resource}/{scope}`.
pub async fn delete_scope(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    key: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let (resource, scope) = path_params(key)?;
    let pre = precondition(&headers, Precondition::Exists)?;
    let key = scope_key(resource, scope);
    let r = st.store.remove_scope(&key, pre, &rid.actor(&caller)).await;
    st.written();
    r?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn pages_follow_byte_order_whatever_order_the_database_returns() {
        // As PostgreSQL with an en_US collation sorts: case-insensitively.
        let rows = vec!["alpha", "Beta", "gamma", "Zulu"];
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = paginate(
                rows.clone(),
                |s| s.to_string(),
                cursor.as_deref(),
                Limit::new(1),
            )
            .unwrap();
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["Beta", "Zulu", "alpha", "gamma"]);
    }

    /// RFC 7396 Appendix A, every example. The nested ones failed: a patch object
    /// applied to a missing or non-object member was copied as it was, its nulls
    /// included (`{"a":{"bb":{"ccc":null}}}` on `{}` stored `ccc: null`).
    /// An `If-Match` list (or one tag) was checked only at the write: a patch computed
    /// from state A under `If-Match: "A", "B"` was written over B when another writer
    /// committed B in between (B's change lost, both answered 200), and under
    /// `If-Match: "A"` over A come back after C. The write must find the state read.
    #[test]
    fn a_patch_is_written_only_over_the_state_it_was_computed_from() {
        let tag = |s: &str| ETag::of(&json!({"v": s}));
        let (a, b) = (tag("a"), tag("b"));
        let t = || "mappings/m".to_string();
        let list = Precondition::MatchesAny(vec![a.clone(), b.clone()]);
        assert_eq!(
            patch_precondition(list.clone(), a.clone(), t).unwrap(),
            Precondition::Matches(a.clone())
        );
        assert!(matches!(
            patch_precondition(list, tag("c"), t),
            Err(MgmtError::PreconditionFailed(_))
        ));
        assert_eq!(
            patch_precondition(Precondition::Exists, b.clone(), t).unwrap(),
            Precondition::Matches(b)
        );
        assert!(matches!(
            patch_precondition(Precondition::MatchesAny(vec![a]), tag("c"), t),
            Err(MgmtError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn merge_patch_gives_the_results_of_rfc_7396_appendix_a() {
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
    }
}

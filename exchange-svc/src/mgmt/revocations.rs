//! `/api/v1/revocations` (list, get, create, lift) and `POST /api/v1/introspect`
//! (RFC 7662). Writes go through the attached [`RevocationStore`] (audited in the
//! change's transaction) and are applied to this process's set before the answer, so
//! the next exchange here enforces them and the cached tokens of the party are gone.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use meshpass_core::SpiffeId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::config::Role;
use super::error::{Dependency, MgmtError};
use super::input::{parse_body, parse_query, path_params, read_body};
use super::{MgmtState, RequestId};
use crate::store::{NewRevocation, Revocation, RevocationStore, RevocationTarget};

/// `?target=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    target: Option<RevocationTarget>,
}

/// The active revocations.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevocationList {
    /// Entries, oldest first.
    pub items: Vec<Revocation>,
    /// The store version they reflect (the feed's version).
    pub version: u64,
}

fn store(st: &MgmtState) -> Result<&std::sync::Arc<dyn RevocationStore>, MgmtError> {
    st.revocations
        .store()
        .ok_or(MgmtError::Unavailable(Dependency::RevocationStore))
}

/// Reloads the set from the store after a write, so this replica's feed serves the
/// new version at once (the write itself is already applied locally).
async fn confirm(st: &MgmtState) {
    if let Err(e) = st.revocations.refresh(st.clock.now()).await {
        tracing::warn!(error = %e, "revocation set not reloaded after a write; the refresh retries");
    }
}

/// `GET /api/v1/revocations`.
pub async fn list(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<RevocationList>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let q: ListQuery = parse_query(query.as_deref())?;
    let now = st.clock.now();
    let all = store(&st)?.revocation_changes(0).await?;
    let items = all
        .added
        .into_iter()
        .filter(|r| r.active_at(now))
        .filter(|r| q.target.is_none_or(|t| t == r.target))
        .collect();
    Ok(Json(RevocationList {
        items,
        version: all.version,
    }))
}

/// `GET /api/v1/revocations/{id}`.
pub async fn get(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Revocation>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let id = path_params(id)?;
    let now = st.clock.now();
    store(&st)?
        .get_revocation(&id)
        .await?
        .filter(|r| r.active_at(now))
        .map(Json)
        .ok_or(MgmtError::NotFound(format!("revocations/{id}")))
}

/// `POST /api/v1/revocations`.
pub async fn create(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let new: NewRevocation = parse_body(&body)?;
    refuse_self_lockout(&new, &caller)?;
    let now = st.clock.now();
    let r = store(&st)?
        .create_revocation(&new, &rid.actor(&caller), now)
        .await?;
    st.revocations.created(r.clone());
    confirm(&st).await;
    tracing::warn!(id = %r.id, target = r.target.as_str(), matches = %r.matches, by = %r.created_by, "revocation created");
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// A subject or caller revocation covering the requesting caller: a revoked identity
/// is no management caller, so neither it nor anyone else it covers could lift it (one
/// missing segment, `spiffe://td/*` for `spiffe://td/ns/x/*`, covers every caller, and
/// the way back would be the database). Another caller, not covered, must create it.
fn refuse_self_lockout(new: &NewRevocation, caller: &super::auth::Caller) -> Result<(), MgmtError> {
    if matches!(new.target, RevocationTarget::Jti) {
        return Ok(());
    }
    let (Ok(pattern), Ok(me)) = (
        meshpass_core::SpiffeIdPattern::parse(&new.matches),
        SpiffeId::parse(&caller.id),
    ) else {
        // A bad pattern is the store's 422.
        return Ok(());
    };
    if pattern.matches(&me) {
        return Err(MgmtError::Conflict(format!(
            "{} covers the caller itself ({}), which could then never lift it: have a \
             management caller it does not cover create it, or narrow the pattern",
            new.matches, caller.id
        )));
    }
    Ok(())
}

/// `DELETE /api/v1/revocations/{id}`.
pub async fn lift(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let id = path_params(id)?;
    let r = store(&st)?
        .lift_revocation(&id, &rid.actor(&caller))
        .await?;
    st.revocations.lifted(&r.id);
    confirm(&st).await;
    tracing::info!(id = %r.id, by = %caller.id, "revocation lifted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/introspect` (form `token=...`): RFC 7662. `{"active": false}` for a
/// token that is not a live participant token of this service (foreign, badly
/// signed, expired, not yet valid) or that is revoked (by `jti`, by its subject, or by
/// the workload it names as acting).
pub async fn introspect(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let body = read_body(body).await?;
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MgmtError::BadRequest("the form parameter token is required".into()))?;
    // Never read (authentication refuses then too; checked here as well, where it is
    // the answer): "active" must not come from an empty set.
    if !st.revocations.loaded() {
        return Err(MgmtError::Unavailable(Dependency::RevocationStore));
    }
    let answer = inspect(&st, &token, st.clock.now()).unwrap_or_else(|| json!({"active": false}));
    let mut resp = Json(answer).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The claims of `token` when it is an active participant token at `now`.
fn inspect(st: &MgmtState, token: &str, now: u64) -> Option<Value> {
    let claims = super::own_token::verified_claims(&st.signer.jwks(), token)?;
    let c: &Map<String, Value> = &claims;
    let num = |k: &str| c.get(k).and_then(Value::as_u64);
    let text = |k: &str| c.get(k).and_then(Value::as_str);
    if text("iss")? != st.issuer {
        return None;
    }
    let exp = num("exp")?;
    if exp <= now || num("nbf").is_some_and(|nbf| nbf > now) {
        return None;
    }
    let jti = text("jti")?;
    let sub = text("sub")?;
    let set = st.revocations.current();
    if set.jti(jti, now).is_some() {
        return None;
    }
    // Its subject, or any workload of its `act` chain (as the token endpoint checks
    // them), revoked: inactive.
    let revoked = |id: &SpiffeId| set.subject(id, now).is_some();
    let sub_id = SpiffeId::parse(sub).ok();
    let subject_revoked = sub_id.as_ref().is_some_and(revoked);
    let td = sub_id.map(|id| id.trust_domain());
    if subject_revoked
        || crate::exchange::act_chain(c, td.as_ref())
            .iter()
            .any(revoked)
    {
        return None;
    }
    let mut out = Map::new();
    out.insert("active".into(), json!(true));
    out.insert("token_type".into(), json!("Bearer"));
    for k in [
        "iss", "sub", "aud", "scope", "exp", "iat", "nbf", "jti", "act",
    ] {
        if let Some(v) = c.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(p) = c.get(&st.participant_claim) {
        out.insert("participant".into(), p.clone());
    }
    Some(Value::Object(out))
}

//! `/api/v1/export` and `/api/v1/import`: every mapping and scope as one document, so
//! they can live in Git. Import is all or nothing, in one transaction; `dry_run` reports
//! the diff only; `prune` (off by default) deletes what the document lacks.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::config::Role;
use super::error::MgmtError;
use super::input::{parse_body, parse_query, read_body};
use super::{MgmtState, RequestId};
use crate::store::{
    check_scope_granted, check_ttl_cap, import_leaves_ungranted, mappings_after_import,
    rows_left_ungranted, validate_scope_claims, ImportDiff, PolicyDocument,
};

/// Largest request body the management API reads (an import document).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// `?format=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    format: Option<String>,
}

/// `?dry_run=&prune=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    prune: bool,
}

fn wants_yaml(format: Option<&str>, headers: &HeaderMap) -> Result<bool, MgmtError> {
    match format {
        Some("yaml") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(MgmtError::BadRequest(format!(
            "format: {other:?} is neither json nor yaml"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("yaml"))),
    }
}

/// `GET /api/v1/export`.
pub async fn export(
    State(st): State<MgmtState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    let q: ExportQuery = parse_query(query.as_deref())?;
    let yaml = wants_yaml(q.format.as_deref(), &headers)?;
    let doc = st.store.export().await?;
    if yaml {
        let text = serde_yaml::to_string(&doc).map_err(|e| MgmtError::Internal(e.to_string()))?;
        Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
    } else {
        Ok(Json(doc).into_response())
    }
}

/// Reads a document: JSON when the content type says so (or the body starts with `{`),
/// else YAML.
fn parse_document(headers: &HeaderMap, body: &[u8]) -> Result<PolicyDocument, MgmtError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = ct.contains("json")
        || (!ct.contains("yaml") && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    names_a_section(body, json)?;
    if json {
        return parse_body(body);
    }
    serde_yaml::from_slice(body)
        .map_err(|e| MgmtError::invalid("body", format!("not a policy document: {e}")))
}

/// A document must name `mappings` or `scopes`: an empty body (a file lost on the way,
/// a heredoc gone wrong) or `{}` would otherwise read as a policy with nothing in it,
/// which with `prune` deletes every mapping. An explicit empty list still prunes. A body
/// that does not parse is left to the typed parse, which says why.
fn names_a_section(body: &[u8], json: bool) -> Result<(), MgmtError> {
    let keys: Option<Vec<String>> = if json {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => Some(m.keys().cloned().collect()),
            Ok(_) => None,
            Err(_) if body.iter().all(u8::is_ascii_whitespace) => None,
            Err(_) => return Ok(()),
        }
    } else {
        match serde_yaml::from_slice::<serde_yaml::Value>(body) {
            Ok(serde_yaml::Value::Mapping(m)) => Some(
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect(),
            ),
            Ok(_) => None,
            Err(_) => return Ok(()),
        }
    };
    match keys {
        Some(k) if k.iter().any(|k| k == "mappings" || k == "scopes") => Ok(()),
        _ => Err(MgmtError::invalid(
            "body",
            "not a policy document: it names neither mappings nor scopes (send `mappings: []` to mean none)",
        )),
    }
}

/// The service's rules on a whole document: each entry's own rules (naming it), the TTL
/// cap on every mapping, every scope row of the document granted by a mapping of the
/// resulting set, and no stored row the import keeps (without `prune`) left granted by
/// none (409; the store checks this again inside the import's transaction).
fn check_document(
    st: &MgmtState,
    doc: &PolicyDocument,
    stored: &PolicyDocument,
    prune: bool,
) -> Result<(), MgmtError> {
    for (i, m) in doc.mappings.iter().enumerate() {
        crate::store::validate_mapping(m)
            .and_then(|()| check_ttl_cap(m, st.max_ttl_secs))
            .map_err(|e| prefix(e.into(), &format!("mappings[{i}]")))?;
    }
    let result = mappings_after_import(&stored.mappings, &doc.mappings, prune);
    for (i, row) in doc.scopes.iter().enumerate() {
        validate_scope_claims(row, &st.participant_claim)
            .and_then(|()| check_scope_granted(row, &result))
            .map_err(|e| prefix(e.into(), &format!("scopes[{i}]")))?;
    }
    let in_doc = |r: &&crate::store::ScopeClaims| {
        doc.scopes
            .iter()
            .any(|d| d.resource == r.resource && d.scope == r.scope)
    };
    // With prune, every stored row the document lacks is deleted with its grant.
    let kept: Vec<_> = match prune {
        true => Vec::new(),
        false => stored
            .scopes
            .iter()
            .filter(|r| !in_doc(r))
            .cloned()
            .collect(),
    };
    let left = rows_left_ungranted(&kept, &stored.mappings, &result);
    if !left.is_empty() {
        return Err(import_leaves_ungranted(&left).into());
    }
    Ok(())
}

fn prefix(e: MgmtError, at: &str) -> MgmtError {
    match e {
        MgmtError::Invalid { field, reason } => MgmtError::invalid(format!("{at}.{field}"), reason),
        other => other,
    }
}

/// `POST /api/v1/import`.
pub async fn import(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<ImportDiff>, MgmtError> {
    let caller = st.auth.require(&headers, Role::Write).await?;
    let body = read_body(body).await?;
    let q: ImportQuery = parse_query(query.as_deref())?;
    let doc = parse_document(&headers, &body)?;
    let stored = st.store.export().await?;
    check_document(&st, &doc, &stored, q.prune)?;
    let r = st
        .store
        .import(&doc, q.prune, q.dry_run, &rid.actor(&caller))
        .await;
    if !q.dry_run {
        st.written();
    }
    Ok(Json(r?))
}

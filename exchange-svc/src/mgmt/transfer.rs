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
    check_granted, check_ttl_cap, grants, import_leaves_ungranted, mappings_after_import,
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

/// Which sections a document names with a list (an empty one included).
#[derive(Debug, Clone, Copy)]
struct Sections {
    mappings: bool,
    scopes: bool,
}

/// Reads a document: JSON when the content type says so (or the body starts with `{`),
/// else YAML; and which sections it names.
fn parse_document(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(PolicyDocument, Sections), MgmtError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = ct.contains("json")
        || (!ct.contains("yaml") && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let sections = named_sections(body, json)?;
    if json {
        return Ok((parse_body(body)?, sections));
    }
    // Through JSON values, so a refusal names the field by its JSON path as a JSON
    // document's does.
    let value: serde_json::Value = serde_yaml::from_slice(body)
        .map_err(|e| MgmtError::invalid("body", format!("not a policy document: {e}")))?;
    let text = serde_json::to_vec(&value).map_err(|e| MgmtError::Internal(e.to_string()))?;
    Ok((parse_body(&text)?, sections))
}

/// A document must name `mappings` or `scopes` with a list: an empty body (a file lost
/// on the way, a heredoc gone wrong), `{}` or sections whose entries are all commented
/// out (`mappings:` with no value) would otherwise read as a policy with nothing in it,
/// which with `prune` deletes every mapping. An explicit empty list still prunes. A body
/// that does not parse is left to the typed parse, which says why.
fn named_sections(body: &[u8], json: bool) -> Result<Sections, MgmtError> {
    let named: Option<Sections> = if json {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => Some(Sections {
                mappings: m.get("mappings").is_some_and(serde_json::Value::is_array),
                scopes: m.get("scopes").is_some_and(serde_json::Value::is_array),
            }),
            Ok(_) => None,
            Err(_) if body.iter().all(u8::is_ascii_whitespace) => None,
            Err(_) => {
                return Ok(Sections {
                    mappings: true,
                    scopes: true,
                })
            }
        }
    } else {
        match serde_yaml::from_slice::<serde_yaml::Value>(body) {
            Ok(serde_yaml::Value::Mapping(m)) => Some(Sections {
                mappings: m
                    .get("mappings")
                    .is_some_and(serde_yaml::Value::is_sequence),
                scopes: m.get("scopes").is_some_and(serde_yaml::Value::is_sequence),
            }),
            Ok(_) => None,
            Err(_) => {
                return Ok(Sections {
                    mappings: true,
                    scopes: true,
                })
            }
        }
    };
    match named {
        Some(n) if n.mappings || n.scopes => Ok(n),
        _ => Err(MgmtError::invalid(
            "body",
            "not a policy document: it names neither mappings nor scopes with a list (send `mappings: []` to mean none)",
        )),
    }
}

/// With `prune`, a section the document leaves out would delete every entry of its
/// kind: it must name both (`[]` for none).
fn check_prune(sections: Sections) -> Result<(), MgmtError> {
    for (named, field) in [(sections.mappings, "mappings"), (sections.scopes, "scopes")] {
        if !named {
            return Err(MgmtError::invalid(
                field,
                "with prune the document must name both mappings and scopes with a list (`[]` for none): a missing one would delete every entry of it",
            ));
        }
    }
    Ok(())
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
    // Sets and groups, not scans per row: a document of thousands of entries is
    // checked in time linear in its size.
    let in_doc: std::collections::HashSet<(&str, &str)> = doc
        .scopes
        .iter()
        .map(|d| (d.resource.as_str(), d.scope.as_str()))
        .collect();
    // With prune, every stored row the document lacks is deleted with its grant.
    let kept: Vec<_> = match prune {
        true => Vec::new(),
        false => stored
            .scopes
            .iter()
            .filter(|r| !in_doc.contains(&(r.resource.as_str(), r.scope.as_str())))
            .cloned()
            .collect(),
    };
    // The rows the store will hold: a claim two of them set differently is refused here
    // as for a single row (422 naming it), not by the store's check (409); in one pass.
    let mut claims = crate::store::ClaimIndex::default();
    for r in &kept {
        claims.note(r);
    }
    let granted = grants(&result);
    for (i, row) in doc.scopes.iter().enumerate() {
        validate_scope_claims(row, &st.participant_claim)
            .and_then(|()| check_granted(row, &granted))
            .map_err(|e| prefix(e.into(), &format!("scopes[{i}]")))?;
        claims
            .add(row)
            .map_err(|e| MgmtError::invalid(format!("scopes[{i}].claims"), e.to_string()))?;
    }
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
    // Write, and read: the diff shows what is stored (a dry run writes nothing and shows it all).
    let caller = st
        .auth
        .require_all(&headers, &[Role::Write, Role::Read])
        .await?;
    let body = read_body(body).await?;
    let q: ImportQuery = parse_query(query.as_deref())?;
    let (doc, sections) = parse_document(&headers, &body)?;
    if q.prune {
        check_prune(sections)?;
    }
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

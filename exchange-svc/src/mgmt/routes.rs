//! Every management route, declared once: the router and `/openapi.json` are both built
//! from [`ROUTES`], so the document cannot miss a route.

use std::collections::BTreeMap;

use axum::http::{Method, Uri};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;

use super::config::Role;
use super::error::MgmtError;
use super::input::MAX_LIMIT;
use super::{audit, keys, mappings, openapi, revocations, stats, transfer, MgmtState};

/// What a query parameter holds, as its handler reads it (documented as its schema).
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    /// Any text.
    Text,
    /// A whole number, within the bounds given.
    Integer {
        /// Smallest accepted.
        minimum: Option<i64>,
        /// Largest accepted.
        maximum: Option<i64>,
    },
    /// `true` or `false`.
    Boolean,
    /// One of these words.
    OneOf(&'static [&'static str]),
}

/// A query parameter of a route.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// What it holds.
    pub kind: ParamType,
}

const fn text(name: &'static str, description: &'static str) -> QueryParam {
    QueryParam {
        name,
        description,
        kind: ParamType::Text,
    }
}

const fn flag(name: &'static str, description: &'static str) -> QueryParam {
    QueryParam {
        name,
        description,
        kind: ParamType::Boolean,
    }
}

const LIMIT: QueryParam = QueryParam {
    name: "limit",
    description: "page size (default 100, 1 to 1000; others are refused)",
    kind: ParamType::Integer {
        minimum: Some(1),
        maximum: Some(MAX_LIMIT as i64),
    },
};

/// One route: how it is served and how it is documented.
pub struct Route {
    /// HTTP method (lowercase, as in OpenAPI).
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// Role required (None: public, e.g. the OpenAPI document).
    pub role: Option<Role>,
    /// One-line summary.
    pub summary: &'static str,
    /// Query parameters (a route that takes some refuses any other with 400).
    pub query: &'static [QueryParam],
    /// Request body schema (a component name).
    pub request: Option<&'static str>,
    /// Success status and its body schema (a component name, or None for no body).
    pub ok: (u16, Option<&'static str>),
    /// Answers `201 Created` (same body) when it creates what did not exist (PUT).
    pub created: bool,
    /// Error statuses it can answer (beyond 401/403/500/503, which every authenticated
    /// route can, and 400, which every route with parameters or a body can). `If-Match`
    /// is documented where 412 is listed: only routes that honour it list 412.
    pub errors: &'static [u16],
    /// The handler.
    pub handler: fn() -> MethodRouter<MgmtState>,
}

const LIST_QUERY: &[QueryParam] = &[
    text(
        "subject",
        "only mappings whose pattern is this, or matches this SPIFFE ID",
    ),
    text("resource", "only this resource"),
    text("participant", "only this participant"),
    text("cursor", "next_cursor of the previous page"),
    LIMIT,
];
const SCOPE_QUERY: &[QueryParam] = &[
    text("resource", "only this resource"),
    text("cursor", "next_cursor of the previous page"),
    LIMIT,
];
const EXPORT_QUERY: &[QueryParam] = &[QueryParam {
    name: "format",
    description: "json (default, or Accept: application/yaml) or yaml",
    kind: ParamType::OneOf(&["json", "yaml"]),
}];
const IMPORT_QUERY: &[QueryParam] = &[
    flag("dry_run", "true: only report the diff"),
    flag(
        "prune",
        "true: delete entries the document lacks (default false)",
    ),
];
const AUDIT_QUERY: &[QueryParam] = &[
    QueryParam {
        name: "after",
        description: "only events after this id (else the newest)",
        kind: ParamType::Integer {
            minimum: None,
            maximum: None,
        },
    },
    LIMIT,
    text("action", "only this action"),
    text("target", "only targets starting with this"),
];
const REVOCATION_QUERY: &[QueryParam] = &[QueryParam {
    name: "target",
    description: "only revocations of this target",
    kind: ParamType::OneOf(&["subject", "caller", "jti"]),
}];

/// The routes.
pub const ROUTES: &[Route] = &[
    Route { method: "get", path: "/api/v1/mappings", role: Some(Role::Read), summary: "List mappings", query: LIST_QUERY, request: None, ok: (200, Some("MappingPage")), created: false, errors: &[400], handler: || get(mappings::list_mappings) },
    Route { method: "post", path: "/api/v1/mappings", role: Some(Role::Write), summary: "Create a mapping (409 if the name exists)", query: &[], request: Some("Mapping"), ok: (201, Some("Mapping")), created: false, errors: &[400, 409, 422], handler: || post(mappings::create_mapping) },
    Route { method: "get", path: "/api/v1/mappings/{name}", role: Some(Role::Read), summary: "Get a mapping (ETag)", query: &[], request: None, ok: (200, Some("Mapping")), created: false, errors: &[404], handler: || get(mappings::get_mapping) },
    Route { method: "put", path: "/api/v1/mappings/{name}", role: Some(Role::Write), summary: "Create or replace a mapping (If-Match: replace only that state; If-None-Match: * create only)", query: &[], request: Some("Mapping"), ok: (200, Some("Mapping")), created: true, errors: &[400, 404, 409, 412, 422], handler: || put(mappings::put_mapping) },
    Route { method: "patch", path: "/api/v1/mappings/{name}", role: Some(Role::Write), summary: "Change a mapping with a JSON merge patch (RFC 7396; If-Match honoured; needs read too)", query: &[], request: Some("MergePatch"), ok: (200, Some("Mapping")), created: false, errors: &[400, 404, 409, 412, 422], handler: || patch(mappings::patch_mapping) },
    Route { method: "delete", path: "/api/v1/mappings/{name}", role: Some(Role::Write), summary: "Delete a mapping (If-Match honoured; 409 when a scope row would be granted by no mapping)", query: &[], request: None, ok: (204, None), created: false, errors: &[404, 409, 412], handler: || delete(mappings::delete_mapping) },
    Route { method: "get", path: "/api/v1/scopes", role: Some(Role::Read), summary: "List scope → claims rows", query: SCOPE_QUERY, request: None, ok: (200, Some("ScopePage")), created: false, errors: &[400], handler: || get(mappings::list_scopes) },
    Route { method: "post", path: "/api/v1/scopes", role: Some(Role::Write), summary: "Create a scope → claims row (409 if it exists)", query: &[], request: Some("ScopeClaims"), ok: (201, Some("ScopeClaims")), created: false, errors: &[400, 409, 422], handler: || post(mappings::create_scope) },
    Route { method: "get", path: "/api/v1/scopes/{resource}/{scope}", role: Some(Role::Read), summary: "Get a scope row (ETag; percent-encode the resource)", query: &[], request: None, ok: (200, Some("ScopeClaims")), created: false, errors: &[404], handler: || get(mappings::get_scope) },
    Route { method: "put", path: "/api/v1/scopes/{resource}/{scope}", role: Some(Role::Write), summary: "Create or replace a scope row (If-Match / If-None-Match honoured)", query: &[], request: Some("ScopeClaims"), ok: (200, Some("ScopeClaims")), created: true, errors: &[400, 404, 409, 412, 422], handler: || put(mappings::put_scope) },
    Route { method: "patch", path: "/api/v1/scopes/{resource}/{scope}", role: Some(Role::Write), summary: "Change a scope row with a JSON merge patch (needs read too)", query: &[], request: Some("MergePatch"), ok: (200, Some("ScopeClaims")), created: false, errors: &[400, 404, 409, 412, 422], handler: || patch(mappings::patch_scope) },
    Route { method: "delete", path: "/api/v1/scopes/{resource}/{scope}", role: Some(Role::Write), summary: "Delete a scope row (If-Match honoured)", query: &[], request: None, ok: (204, None), created: false, errors: &[404, 412], handler: || delete(mappings::delete_scope) },
    Route { method: "get", path: "/api/v1/export", role: Some(Role::Read), summary: "Every mapping and scope as one document (stable order)", query: EXPORT_QUERY, request: None, ok: (200, Some("PolicyDocument")), created: false, errors: &[400], handler: || get(transfer::export) },
    Route { method: "post", path: "/api/v1/import", role: Some(Role::Write), summary: "Make the store hold a document (JSON or YAML body): all or nothing (needs read too)", query: IMPORT_QUERY, request: Some("PolicyDocument"), ok: (200, Some("ImportDiff")), created: false, errors: &[400, 409, 422], handler: || post(transfer::import) },
    Route { method: "get", path: "/api/v1/audit", role: Some(Role::Read), summary: "Audit events, oldest first", query: AUDIT_QUERY, request: None, ok: (200, Some("AuditPage")), created: false, errors: &[400], handler: || get(audit::list) },
    Route { method: "get", path: "/api/v1/keys", role: Some(Role::Read), summary: "Transit key versions: published, signing, since when", query: &[], request: None, ok: (200, Some("KeyStatus")), created: false, errors: &[404], handler: || get(keys::status) },
    Route { method: "post", path: "/api/v1/keys/rotate", role: Some(Role::Keys), summary: "Rotate the transit key (the new version signs after the publish lead)", query: &[], request: None, ok: (200, Some("KeyStatus")), created: false, errors: &[404], handler: || post(keys::rotate) },
    Route { method: "post", path: "/api/v1/keys/retire", role: Some(Role::Keys), summary: "Stop publishing versions below `below` (only once no token they signed can be live)", query: &[], request: Some("RetireRequest"), ok: (200, Some("KeyStatus")), created: false, errors: &[400, 404, 409, 422], handler: || post(keys::retire) },
    Route { method: "get", path: "/api/v1/stats", role: Some(Role::Read), summary: "Exchanges by mapping and outcome; top subjects by rate (at most 100)", query: &[], request: None, ok: (200, Some("Stats")), created: false, errors: &[], handler: || get(stats::view) },
    Route { method: "get", path: "/api/v1/revocations", role: Some(Role::Read), summary: "Active revocations and the store version", query: REVOCATION_QUERY, request: None, ok: (200, Some("RevocationList")), created: false, errors: &[400], handler: || get(revocations::list) },
    Route { method: "post", path: "/api/v1/revocations", role: Some(Role::Write), summary: "Revoke a subject, a caller (SPIFFE ID or pattern) or a participant token (jti); enforced by this replica's next exchange (409 when the filters could not take the set)", query: &[], request: Some("NewRevocation"), ok: (201, Some("Revocation")), created: false, errors: &[400, 409, 422], handler: || post(revocations::create) },
    Route { method: "get", path: "/api/v1/revocations/{id}", role: Some(Role::Read), summary: "Get an active revocation", query: &[], request: None, ok: (200, Some("Revocation")), created: false, errors: &[404], handler: || get(revocations::get) },
    Route { method: "delete", path: "/api/v1/revocations/{id}", role: Some(Role::Write), summary: "Lift a revocation", query: &[], request: None, ok: (204, None), created: false, errors: &[404], handler: || delete(revocations::lift) },
    Route { method: "post", path: "/api/v1/introspect", role: Some(Role::Read), summary: "RFC 7662 introspection of a participant token (form token=...): active false when foreign, badly signed, expired or revoked", query: &[], request: Some("IntrospectionRequest"), ok: (200, Some("Introspection")), created: false, errors: &[400], handler: || post(revocations::introspect) },
    Route { method: "get", path: "/openapi.json", role: None, summary: "This document", query: &[], request: None, ok: (200, Some("OpenApiDocument")), created: false, errors: &[], handler: || get(openapi::document) },
];

/// A path no route serves: the API's JSON 404.
async fn no_route(uri: Uri) -> MgmtError {
    MgmtError::NotFound(format!("route {}", uri.path()))
}

/// A method a route's path does not serve: the API's JSON 405 (the router adds `Allow`).
async fn no_method(method: Method, uri: Uri) -> MgmtError {
    MgmtError::MethodNotAllowed(format!("{method} {}", uri.path()))
}

/// The router of every route (state not yet supplied).
pub fn build() -> Router<MgmtState> {
    let mut by_path: BTreeMap<&str, MethodRouter<MgmtState>> = BTreeMap::new();
    for r in ROUTES {
        let mr = (r.handler)();
        let merged = match by_path.remove(r.path) {
            Some(prev) => prev.merge(mr),
            None => mr,
        };
        by_path.insert(r.path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, mr)| router.route(path, mr))
        .fallback(no_route)
        // After the routes: it becomes the fallback of each of them.
        .method_not_allowed_fallback(no_method)
}

//! `/openapi.json` (OpenAPI 3.1), built from [`ROUTES`] and the schemas below. The
//! `openapi` tests check that every route and every error code is in it, and that the
//! schemas list exactly the fields the types serialise.

use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ERROR_CODES;
use super::routes::{ParamType, QueryParam, Route, ROUTES};

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Malformed request",
        401 => "No valid bearer token",
        403 => "The caller lacks the role",
        404 => "Not found",
        405 => "The path does not serve this method (Allow lists those it does)",
        409 => "Conflict",
        412 => "If-Match does not match the stored entity",
        413 => "The request body exceeds 8 MiB",
        422 => "Invalid field (see field and message)",
        500 => "Internal error",
        503 => "A dependency is unavailable (Retry-After)",
        _ => "Other",
    }
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

/// The component schemas.
pub fn schemas() -> Value {
    let error_codes: Vec<&str> = ERROR_CODES.iter().map(|(c, _)| *c).collect();
    json!({
        "Error": {
            "type": "object", "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": error_codes},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the invalid field (error = invalid)"}
            }
        },
        "RateLimit": {
            "type": "object", "required": ["per_second", "burst"], "additionalProperties": false,
            "properties": {"per_second": {"type": "number"}, "burst": {"type": "integer"}}
        },
        "Mapping": {
            "type": "object", "required": ["name", "subject", "resource", "participant", "ttl_secs"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                "subject": {"type": "string", "description": "SPIFFE ID or pattern ending in /*"},
                "resource": {"type": "string"},
                "participant": {"type": "string"},
                "audiences": strings(),
                "scopes": strings(),
                "ttl_secs": {"type": "integer", "minimum": 1},
                "rate_limit": {"oneOf": [reference("RateLimit"), {"type": "null"}]},
                "allowed_callers": {"type": "array", "items": {"type": "string"},
                    "description": "SPIFFE ID patterns of sidecars that may exchange on the subject's behalf (SERVER mode)"},
                "allowed_actors": {"type": "array", "items": {"type": "string"},
                    "description": "SPIFFE ID patterns of actors that may act for the subject when its token has no may_act"}
            }
        },
        "ScopeClaims": {
            "type": "object", "required": ["resource", "scope", "claims"], "additionalProperties": false,
            "properties": {
                "resource": {"type": "string"},
                "scope": {"type": "string"},
                "claims": {"type": "object"}
            }
        },
        "MergePatch": {"type": "object", "description": "RFC 7396 JSON merge patch"},
        "MappingPage": {
            "type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": reference("Mapping")}, "next_cursor": {"type": "string"}}
        },
        "ScopePage": {
            "type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": reference("ScopeClaims")}, "next_cursor": {"type": "string"}}
        },
        "PolicyDocument": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "mappings": {"type": "array", "items": reference("Mapping")},
                "scopes": {"type": "array", "items": reference("ScopeClaims")}
            }
        },
        "ImportDiff": {
            "type": "object", "required": ["added", "changed", "removed", "unchanged", "applied"],
            "properties": {
                "added": strings(), "changed": strings(), "removed": strings(),
                "unchanged": {"type": "integer"}, "applied": {"type": "boolean"}
            }
        },
        "AuditEvent": {
            "type": "object", "required": ["id", "at", "request_id", "actor", "action", "target", "before", "after", "reason"],
            "properties": {
                "id": {"type": "integer"}, "at": {"type": "integer"},
                "request_id": {"type": "string"}, "actor": {"type": "string"},
                "action": {"type": "string"}, "target": {"type": "string"},
                "before": {}, "after": {}, "reason": {"type": "string"}
            }
        },
        "AuditPage": {
            "type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": reference("AuditEvent")}, "last_id": {"type": ["integer", "null"]}}
        },
        "KeyVersionStatus": {
            "type": "object", "required": ["version", "kid", "published", "signing", "published_since", "signs_from"],
            "properties": {
                "version": {"type": "integer"}, "kid": {"type": "string"},
                "published": {"type": "boolean"}, "signing": {"type": "boolean"},
                "published_since": {"type": "integer"}, "signs_from": {"type": "integer"}
            }
        },
        "KeyStatus": {
            "type": "object", "required": ["key", "alg", "publish_lead_secs", "refresh_interval_secs", "signing_version", "versions"],
            "properties": {
                "key": {"type": "string"}, "alg": {"type": "string"},
                "publish_lead_secs": {"type": "integer"}, "refresh_interval_secs": {"type": "integer"},
                "signing_version": {"type": ["integer", "null"]},
                "versions": {"type": "array", "items": reference("KeyVersionStatus")}
            }
        },
        "Revocation": {
            "type": "object", "required": ["id", "target", "match", "reason", "until", "created_at", "created_by"],
            "properties": {
                "id": {"type": "string", "description": "rv-<uuid>"},
                "target": {"type": "string", "enum": ["subject", "caller", "jti"]},
                "match": {"type": "string", "description": "SPIFFE ID or pattern (subject, caller), or the exact jti"},
                "reason": {"type": "string", "maxLength": 256},
                "until": {"type": ["integer", "null"], "description": "unix seconds after which it lapses"},
                "created_at": {"type": "integer"},
                "created_by": {"type": "string"}
            }
        },
        "NewRevocation": {
            "type": "object", "required": ["target", "match", "reason"], "additionalProperties": false,
            "properties": {
                "target": {"type": "string", "enum": ["subject", "caller", "jti"]},
                "match": {"type": "string"},
                "reason": {"type": "string", "minLength": 1, "maxLength": 256},
                "until": {"type": ["integer", "null"], "minimum": 0}
            }
        },
        "RevocationList": {
            "type": "object", "required": ["items", "version"],
            "properties": {"items": {"type": "array", "items": reference("Revocation")}, "version": {"type": "integer"}}
        },
        "IntrospectionRequest": {
            "type": "object", "required": ["token"],
            "description": "sent as application/x-www-form-urlencoded",
            "properties": {"token": {"type": "string"}}
        },
        "Introspection": {
            "type": "object", "required": ["active"],
            "properties": {
                "active": {"type": "boolean"}, "token_type": {"type": "string"},
                "iss": {"type": "string"}, "sub": {"type": "string"}, "aud": {},
                "scope": {"type": "string"}, "exp": {"type": "integer"}, "iat": {"type": "integer"},
                "nbf": {"type": "integer"}, "jti": {"type": "string"}, "act": {"type": "object"},
                "participant": {}
            }
        },
        "OpenApiDocument": {
            "type": "object", "required": ["openapi", "info", "paths"],
            "description": "This OpenAPI document"
        },
        "RetireRequest": {
            "type": "object", "required": ["below"], "additionalProperties": false,
            "properties": {"below": {"type": "integer", "minimum": 1}}
        },
        "Stats": {
            "type": "object", "required": ["by_mapping", "top_subjects", "untracked"],
            "properties": {
                "by_mapping": {"type": "array", "items": {"type": "object", "properties": {
                    "mapping": {"type": "string"}, "outcome": {"type": "string"}, "count": {"type": "integer"}}}},
                "top_subjects": {"type": "array", "maxItems": super::stats::TOP_SUBJECTS, "items": {"type": "object", "properties": {
                    "subject": {"type": "string"}, "per_second": {"type": "number"}}}},
                "untracked": {"type": "integer"}
            }
        }
    })
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn query_param(q: &QueryParam) -> Value {
    let schema = match q.kind {
        ParamType::Text => json!({"type": "string"}),
        ParamType::Boolean => json!({"type": "boolean"}),
        ParamType::OneOf(values) => json!({"type": "string", "enum": values}),
        ParamType::Integer { minimum, maximum } => {
            let mut s = json!({"type": "integer"});
            if let Some(n) = minimum {
                s["minimum"] = json!(n);
            }
            if let Some(n) = maximum {
                s["maximum"] = json!(n);
            }
            s
        }
    };
    json!({"name": q.name, "in": "query", "required": false, "description": q.description, "schema": schema})
}

/// The media types a body of `schema` is read or written in: a policy document is
/// JSON or YAML (export and import), introspection a form, the rest JSON.
fn content(schema: &str) -> Value {
    let s = json!({"schema": reference(schema)});
    match schema {
        "PolicyDocument" => json!({"application/json": s, "application/yaml": s}),
        "IntrospectionRequest" => json!({"application/x-www-form-urlencoded": s}),
        _ => json!({"application/json": s}),
    }
}

fn operation(r: &Route) -> Value {
    let mut responses = Map::new();
    let mut ok = json!({"description": reason(r.ok.0)});
    if let Some(schema) = r.ok.1 {
        ok["content"] = content(schema);
    }
    if r.created {
        let mut created = ok.clone();
        created["description"] = json!(reason(201));
        responses.insert("201".into(), created);
    }
    responses.insert(r.ok.0.to_string(), ok);
    let mut errors: Vec<u16> = r.errors.to_vec();
    if r.role.is_some() {
        errors.extend([401, 403, 500, 503]);
    }
    if r.request.is_some() {
        errors.push(413);
    }
    // A parameter or a body can always be malformed.
    if r.path.contains('{') || !r.query.is_empty() || r.request.is_some() {
        errors.push(400);
    }
    errors.sort_unstable();
    errors.dedup();
    for e in errors {
        responses.insert(
            e.to_string(),
            json!({"description": reason(e), "content": {"application/json": {"schema": reference("Error")}}}),
        );
    }
    let mut params = path_params(r.path);
    params.extend(r.query.iter().map(query_param));
    // Only where the handler honours it: a route that cannot answer 412 ignores it.
    if r.errors.contains(&412) {
        params.push(json!({"name": "If-Match", "in": "header", "required": false, "description": "the ETag read before; 412 when it changed", "schema": {"type": "string"}}));
    }
    if r.created {
        params.push(json!({"name": "If-None-Match", "in": "header", "required": false, "description": "*: create only (412 when it exists)", "schema": {"type": "string", "enum": ["*"]}}));
    }
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}'], "_")),
        "parameters": params,
        "responses": responses,
    });
    match r.role {
        Some(role) => {
            op["security"] = json!([{"bearer": []}]);
            op["x-meshpass-role"] = json!(role.as_str());
        }
        None => op["security"] = json!([]),
    }
    if let Some(schema) = r.request {
        op["requestBody"] = json!({"required": true, "content": content(schema)});
    }
    op
}

/// The whole document.
pub fn spec() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "meshpass management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mappings, scopes, import/export, audit, keys, stats, revocations and introspection of the meshpass exchange service. Roles: read, write, keys. A path no route serves is answered 404, a method a path does not serve 405 (with Allow), both as Error."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        }
    })
}

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    Json(spec())
}

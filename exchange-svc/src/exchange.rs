//! `POST /token`: RFC 8693 token exchange.
//!
//! Binding: the service runs with binding mode `None`. It has no mTLS peer of the
//! workload (its caller is the workload's sidecar), so the proof of possession is the
//! filter's job (SERVER/CLIENT binding there). Every other rule (signature, issuer,
//! audience, time, trust domain, ID patterns, size) is re-checked here with the same
//! meshpass-core code: the service never trusts the filter's verdict.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_core::oauth::{
    ErrorCode, TokenExchangeRequest, TokenExchangeResponse, MAX_FORM_BYTES,
    TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
};
use meshpass_core::{
    Binding, SpiffeId, SpiffeIdPattern, ValidationError, ValidationPolicy, VerifiedSubject,
};
use serde_json::{json, Map, Value};

use crate::app::AppState;
use crate::cache::{CacheKey, CachedToken};
use crate::error::{no_store, ApiError};
use crate::store::{Mapping, RESERVED_CLAIMS};
use crate::subject_cache::TokenDigest;

/// What the metrics say about one exchange.
struct Outcome {
    path: &'static str,
    resource: String,
    subject: String,
    mapping: String,
}

/// Who was refused what, once the subject is known (for the audit and stats hooks).
struct Refused {
    resource: String,
    subject: String,
}

/// The error code as a metric label.
pub fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::InvalidClient => "invalid_client",
        ErrorCode::InvalidGrant => "invalid_grant",
        ErrorCode::UnauthorizedClient => "unauthorized_client",
        ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
        ErrorCode::InvalidScope => "invalid_scope",
        ErrorCode::InvalidTarget => "invalid_target",
        ErrorCode::SlowDown => "slow_down",
        ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        ErrorCode::ServerError => "server_error",
    }
}

/// The `POST /token` handler.
pub async fn token(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let retry = st.settings.sign_retry_after_secs;
    let result = match tokio::time::timeout(
        st.settings.request_timeout,
        exchange(&st, &headers, body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err((
            ApiError::Timeout {
                retry_after_secs: retry,
            },
            None,
        )),
    };
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok((answer, outcome)) => {
            st.metrics
                .exchange_seconds
                .with_label_values(&[outcome.path])
                .observe(elapsed);
            let label = if outcome.path == "warm" {
                "cached"
            } else {
                "issued"
            };
            st.metrics
                .exchanges
                .with_label_values(&[label, outcome.resource.as_str()])
                .inc();
            if let Some(h) = &st.hooks {
                h.exchanged(&outcome.subject, &outcome.mapping, label);
            }
            let mut resp = Json(answer).into_response();
            no_store(&mut resp);
            resp
        }
        Err((e, refused)) => {
            let resource = refused.as_ref().map(|r| r.resource.as_str());
            st.metrics
                .exchange_seconds
                .with_label_values(&["error"])
                .observe(elapsed);
            st.metrics
                .exchanges
                .with_label_values(&[code_label(e.code()), resource.unwrap_or("")])
                .inc();
            if let Some(h) = &st.hooks {
                let subject = refused.as_ref().map(|r| r.subject.as_str()).unwrap_or("");
                h.refused(
                    subject,
                    "",
                    resource.unwrap_or(""),
                    code_label(e.code()),
                    &e.to_string(),
                );
            }
            e.into_response()
        }
    }
}

type Failure = (ApiError, Option<Refused>);

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "Content-Type must be application/x-www-form-urlencoded".into(),
            )
        })?
        .to_str()
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::InvalidRequest(
            "Content-Type must be application/x-www-form-urlencoded".into(),
        ));
    }
    Ok(())
}

async fn exchange(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(TokenExchangeResponse, Outcome), Failure> {
    check_content_type(headers).map_err(|e| (e, None))?;
    let too_large = || {
        (
            ApiError::InvalidRequest(format!(
                "request body is larger than {MAX_FORM_BYTES} bytes"
            )),
            None,
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_FORM_BYTES as u64 {
            return Err(too_large());
        }
    }
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| too_large())?;
    let req =
        TokenExchangeRequest::parse_form(&bytes).map_err(|e| (ApiError::Protocol(e), None))?;
    if let Some(t) = &req.requested_token_type {
        if t != TOKEN_TYPE_JWT && t != TOKEN_TYPE_ACCESS_TOKEN {
            return Err((
                ApiError::InvalidRequest(
                    "requested_token_type is not supported: this service issues JWTs".into(),
                ),
                None,
            ));
        }
    }
    if req.resource.len() > 1 {
        return Err((
            ApiError::InvalidTarget("only one resource may be requested".into()),
            None,
        ));
    }
    let now = st.clock.now();

    let key = st.cache.as_ref().map(|_| CacheKey::of(&req));
    if let (Some(cache), Some(key)) = (&st.cache, &key) {
        if let Some(hit) = cache.get(key, now) {
            st.metrics.cache_hits.inc();
            return serve_cached(st, &hit, now).map_err(|e| {
                let r = Refused {
                    resource: hit.resource.to_string(),
                    subject: hit.subject.to_string(),
                };
                (e, Some(r))
            });
        }
        st.metrics.cache_misses.inc();
    }

    let subject = validate(st, &req.subject_token, now, "subject_token")
        .await
        .map_err(|e| (e, None))?;
    if let Some(reviewer) = st.reviewers.get(&subject.issuer) {
        let sub = subject
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("");
        reviewer
            .review(&req.subject_token, sub)
            .await
            .map_err(|e| (ApiError::Review(e), None))?;
    }
    let actor = match &req.actor_token {
        Some(t) => Some(
            validate(st, t, now, "actor_token")
                .await
                .map_err(|e| (e, None))?,
        ),
        None => None,
    };

    let target = req
        .resource
        .first()
        .or_else(|| req.audience.first())
        .ok_or_else(|| {
            (
                ApiError::InvalidRequest("resource or audience is required".into()),
                None,
            )
        })?
        .clone();
    let policy = st
        .store
        .shared_resource_policy(&target)
        .await
        .map_err(|source| {
            (
                ApiError::Store {
                    source,
                    retry_after_secs: st.settings.store_retry_after_secs,
                },
                None,
            )
        })?;
    if policy.mappings.is_empty() {
        return Err((
            ApiError::InvalidTarget("the requested resource is not known".into()),
            None,
        ));
    }
    let fail = |e: ApiError| {
        let r = Refused {
            resource: target.clone(),
            subject: subject.spiffe_id.as_str().to_string(),
        };
        (e, Some(r))
    };
    let mapping = best_mapping(&policy.mappings, &subject.spiffe_id).ok_or_else(|| {
        fail(ApiError::UnauthorizedClient(
            "the subject is not allowed to exchange for this resource".into(),
        ))
    })?;

    let allowed = mapping.allowed_audiences();
    let audiences: Vec<String> = if req.audience.is_empty() {
        vec![allowed
            .first()
            .copied()
            .unwrap_or(mapping.resource.as_str())
            .to_string()]
    } else {
        let mut out = Vec::new();
        for a in &req.audience {
            if !allowed.contains(&a.as_str()) {
                return Err(fail(ApiError::InvalidTarget(
                    "a requested audience is not allowed for this resource".into(),
                )));
            }
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    };
    let scopes: Vec<String> = if req.scope.is_empty() {
        mapping.scopes.clone()
    } else {
        let requested: BTreeSet<&String> = req.scope.iter().collect();
        for s in &requested {
            if !mapping.scopes.contains(s) {
                return Err(fail(ApiError::InvalidScope(format!(
                    "scope {s:?} is not allowed for this subject and resource"
                ))));
            }
        }
        requested.into_iter().cloned().collect()
    };

    if let Some(limit) = mapping.rate_limit {
        st.limiter
            .check(subject.spiffe_id.as_str(), &mapping.name, limit)
            .map_err(|wait| {
                fail(ApiError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil() as u64,
                })
            })?;
    }

    let ttl = mapping.ttl_secs.min(st.settings.max_ttl_secs);
    let mut exp = now.saturating_add(ttl).min(subject.expires_at);
    if let Some(a) = &actor {
        exp = exp.min(a.expires_at);
    }
    if exp <= now {
        return Err(fail(ApiError::ExpiresTooSoon));
    }

    let jti = uuid::Uuid::new_v4().to_string();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(st.settings.issuer));
    claims.insert("sub".into(), json!(subject.spiffe_id.as_str()));
    claims.insert(
        "aud".into(),
        if audiences.len() == 1 {
            json!(audiences[0])
        } else {
            json!(audiences)
        },
    );
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims.insert("jti".into(), json!(jti));
    let scope_str = (!scopes.is_empty()).then(|| scopes.join(" "));
    if let Some(s) = &scope_str {
        claims.insert("scope".into(), json!(s));
    }
    let participant_claim = st.settings.participant_claim.as_str();
    claims.insert(participant_claim.into(), json!(mapping.participant));
    for row in &policy.scope_claims {
        if !scopes.contains(&row.scope) {
            continue;
        }
        for (name, value) in &row.claims {
            // Writes are validated; this guards against rows written by other means.
            if RESERVED_CLAIMS.contains(&name.as_str()) || name == participant_claim {
                tracing::warn!(claim = %name, scope = %row.scope, "reserved claim in scope claims ignored");
                continue;
            }
            claims.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    if let Some(act) = act_claim(&subject, actor.as_deref()) {
        claims.insert("act".into(), act);
    }

    let key_info = st.signer.current_key().map_err(|source| {
        fail(ApiError::Sign {
            source,
            retry_after_secs: st.settings.sign_retry_after_secs,
        })
    })?;
    let header = json!({"alg": key_info.alg.as_str(), "typ": "JWT", "kid": key_info.kid});
    let encode = |v: &Value| serde_json::to_vec(v).map(|b| URL_SAFE_NO_PAD.encode(b));
    let signing_input = match (encode(&header), encode(&Value::Object(claims))) {
        (Ok(h), Ok(p)) => format!("{h}.{p}"),
        _ => return Err(fail(ApiError::Internal("encoding the token failed".into()))),
    };
    let sign_started = Instant::now();
    let signed = st.signer.sign(&key_info, signing_input.as_bytes()).await;
    st.metrics
        .sign_seconds
        .with_label_values(&[if signed.is_ok() { "ok" } else { "error" }])
        .observe(sign_started.elapsed().as_secs_f64());
    let signature = signed.map_err(|source| {
        fail(ApiError::Sign {
            source,
            retry_after_secs: st.settings.sign_retry_after_secs,
        })
    })?;
    let access_token = format!("{signing_input}.{signature}");

    tracing::info!(
        target: "meshpass::audit",
        event = "token_issued",
        sub = %subject.spiffe_id,
        aud = ?audiences,
        scope = scope_str.as_deref().unwrap_or(""),
        jti = %jti,
        kid = %key_info.kid,
        exp,
        resource = %mapping.resource,
        mapping = %mapping.name,
        actor = actor.as_ref().map(|a| a.spiffe_id.as_str()).unwrap_or(""),
        "participant token issued"
    );

    if let (Some(cache), Some(key)) = (&st.cache, key) {
        cache.insert(
            key,
            CachedToken {
                access_token: access_token.as_str().into(),
                scope: scope_str.as_deref().map(Into::into),
                issued_at: now,
                expires_at: exp,
                subject: subject.spiffe_id.as_str().into(),
                mapping: mapping.name.as_str().into(),
                resource: mapping.resource.as_str().into(),
                rate_limit: mapping.rate_limit,
            },
            now,
        );
    }

    Ok((
        TokenExchangeResponse {
            access_token,
            issued_token_type: TOKEN_TYPE_JWT.into(),
            token_type: "Bearer".into(),
            expires_in: exp - now,
            scope: scope_str,
        },
        Outcome {
            path: "cold",
            resource: mapping.resource.clone(),
            subject: subject.spiffe_id.as_str().to_string(),
            mapping: mapping.name.clone(),
        },
    ))
}

fn serve_cached(
    st: &AppState,
    hit: &CachedToken,
    now: u64,
) -> Result<(TokenExchangeResponse, Outcome), ApiError> {
    if let Some(limit) = hit.rate_limit {
        st.limiter
            .check(&hit.subject, &hit.mapping, limit)
            .map_err(|wait| ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })?;
    }
    Ok((
        TokenExchangeResponse {
            access_token: hit.access_token.to_string(),
            issued_token_type: TOKEN_TYPE_JWT.into(),
            token_type: "Bearer".into(),
            expires_in: hit.expires_at.saturating_sub(now),
            scope: hit.scope.as_deref().map(str::to_string),
        },
        Outcome {
            path: "warm",
            resource: hit.resource.to_string(),
            subject: hit.subject.to_string(),
            mapping: hit.mapping.to_string(),
        },
    ))
}

/// Validates a subject or actor token; an unknown `kid` refetches the issuer's keys
/// (rate limited) and tries once more.
///
/// A token verified before with the current key-set generation is taken from the
/// verified-subject cache: its signature is not checked again, but every claim rule
/// (time included) and the subject rules are, against `now`.
async fn validate(
    st: &AppState,
    token: &str,
    now: u64,
    which: &'static str,
) -> Result<Arc<VerifiedSubject>, ApiError> {
    let policy = &st.settings.policy;
    let invalid = |source| ApiError::InvalidGrant { which, source };
    // Oversized tokens are refused by the full validation; never hash or cache them.
    let cache = st
        .subjects
        .as_ref()
        .filter(|_| token.len() <= policy.max_token_bytes);
    let digest = cache.map(|_| TokenDigest::of(token));
    let (generation, keys) = st.keys.generation_snapshot();
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        if let Some(hit) = cache.get(digest, now, generation) {
            st.metrics.subject_cache_hits.inc();
            return recheck(policy, &hit, now).map(|()| hit).map_err(invalid);
        }
        st.metrics.subject_cache_misses.inc();
    }
    let first = policy.validate(token, now, &*keys, &Binding::None);
    drop(keys);
    let (generation, result) = match first {
        Err(ValidationError::UnknownKeyId { issuer, .. }) => {
            st.keys.refetch_unknown_kid(&issuer).await;
            let (generation, keys) = st.keys.generation_snapshot();
            (
                generation,
                policy.validate(token, now, &*keys, &Binding::None),
            )
        }
        other => (generation, other),
    };
    let subject = Arc::new(result.map_err(|source| match source {
        ValidationError::NoKeys => ApiError::Unavailable {
            what: "issuer keys",
            detail: format!("no keys loaded for the {which}'s issuer"),
            retry_after_secs: st.settings.sign_retry_after_secs,
        },
        source => invalid(source),
    })?);
    if let (Some(cache), Some(digest)) = (cache, digest) {
        cache.insert(digest, Arc::clone(&subject), now, generation);
    }
    Ok(subject)
}

/// The checks a cached verified subject must pass again at `now`: the issuer's claim
/// rules (`iss`, `aud`, `exp`, `nbf`, `iat`, lifetime, leeway) and subject rules (trust
/// domain, ID patterns), exactly as [`ValidationPolicy::validate`] runs them after the
/// signature check. Binding is `None` on the service (see the module documentation).
fn recheck(
    policy: &ValidationPolicy,
    subject: &VerifiedSubject,
    now: u64,
) -> Result<(), ValidationError> {
    let issuer = policy
        .issuer(&subject.issuer)
        .ok_or(ValidationError::UnknownIssuer)?;
    let claims = issuer.check_claims(&subject.claims, now)?;
    let id = issuer.subject(&claims)?;
    if id != subject.spiffe_id {
        // Cannot happen for an entry made from the same claims; refuse rather than guess.
        return Err(ValidationError::SubjectNotAllowed);
    }
    Binding::None.check(&id)
}

/// The most specific mapping whose subject pattern matches `id`: an exact ID beats a
/// prefix, a longer prefix beats a shorter one; ties go to the first by name.
fn best_mapping<'a>(mappings: &'a [Mapping], id: &SpiffeId) -> Option<&'a Mapping> {
    let mut best: Option<(usize, &Mapping)> = None;
    for m in mappings {
        let Ok(p) = SpiffeIdPattern::parse(&m.subject) else {
            tracing::warn!(mapping = %m.name, "stored mapping has an invalid subject pattern");
            continue;
        };
        if !p.matches(id) {
            continue;
        }
        let rank = match &p {
            SpiffeIdPattern::Exact(_) => usize::MAX,
            SpiffeIdPattern::Prefix { prefix, .. } => prefix.len(),
        };
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, m));
        }
    }
    best.map(|(_, m)| m)
}

/// RFC 8693 §4.1 `act`: the actor's subject, with the subject token's own `act` chain
/// (earlier actors) nested under it. Without an actor token the subject's chain is kept.
fn act_claim(subject: &VerifiedSubject, actor: Option<&VerifiedSubject>) -> Option<Value> {
    let prior = subject.claims.get("act").cloned();
    match actor {
        Some(a) => {
            let mut act = Map::new();
            act.insert("sub".into(), json!(a.spiffe_id.as_str()));
            if let Some(p) = prior {
                act.insert("act".into(), p);
            }
            Some(Value::Object(act))
        }
        None => prior,
    }
}

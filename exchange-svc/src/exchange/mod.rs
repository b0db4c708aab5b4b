//! `POST /token`: RFC 8693 token exchange, as the steps of the protocol:
//! [`form`] (parse the form) → [`caller`] (identify the caller) → [`subject`] (validate
//! subject and actor) → [`authorize`] (against the resource's mappings; the caller
//! binding and [`delegation`] too) → [`mint`] → answer.
//!
//! Every subject rule (signature, issuer, audience, time, trust domain, ID patterns,
//! size) is re-checked here with the same meshpass-core code: the service never trusts
//! the filter's verdict.

mod authorize;
mod caller;
mod delegation;
pub use delegation::act_chain;
mod form;
mod mint;
mod subject;

pub(crate) use caller::caller as identify_caller;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use meshpass_core::oauth::{ErrorCode, TokenExchangeRequest};

use crate::cache::{AnswerBody, CacheKey, CachedToken};
use crate::caller::ConnInfo;
use crate::error::{no_store, ApiError};
use crate::state::AppState;
use crate::tokenreview::ReviewError;

/// A successful exchange: the token (minted now or cached) and how it was served.
struct Outcome {
    /// `cold` (minted) or `warm` (cached).
    path: &'static str,
    token: Arc<CachedToken>,
    expires_in: u64,
}

/// Who was refused what, as far as it was known when the exchange was refused (for
/// the audit and stats hooks; DESIGN.md: every refused exchange is audited). A field
/// not known yet is empty.
#[derive(Default)]
struct Refused {
    /// The resource asked for (the audit's target).
    resource: String,
    /// Whether `resource` is one the policy knows: only those become metric labels
    /// (anyone can name any resource).
    known: bool,
    /// The verified subject's SPIFFE ID.
    subject: String,
    /// Who called `/token`: its SPIFFE ID, or the peer it could not be identified from.
    caller: String,
    /// The mapping chosen before the refusal (empty before one was).
    mapping: String,
}

/// The most of an unknown resource name an audit event keeps.
const MAX_ASKED_RESOURCE: usize = 128;

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

/// The `POST /token` handler (its state is behind one `Arc`: axum clones the state for
/// every request).
pub async fn token(State(st): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let conn = parts
        .extensions
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| &c.0);
    let headers = &parts.headers;
    let started = Instant::now();
    let retry = st.settings.sign_retry_after_secs;
    let result = exchange(&st, conn, headers, body, retry).await;
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(outcome) => {
            let t = &outcome.token;
            let label = if outcome.path == "warm" {
                st.metrics.path_seconds.warm.observe(elapsed);
                match &t.cached_counter {
                    Some(c) => c.inc(),
                    None => st
                        .metrics
                        .exchanges
                        .with_label_values(&["cached", &*t.resource])
                        .inc(),
                }
                "cached"
            } else {
                st.metrics.path_seconds.cold.observe(elapsed);
                st.metrics
                    .exchanges
                    .with_label_values(&["issued", &*t.resource])
                    .inc();
                "issued"
            };
            if let Some(h) = &st.hooks {
                h.exchanged(subject_of(&t.rate_key), &t.mapping, label);
            }
            json_answer(t.body.render(outcome.expires_in))
        }
        Err((e, r)) => {
            let label = if r.known { r.resource.as_str() } else { "" };
            st.metrics.path_seconds.error.observe(elapsed);
            st.metrics
                .exchanges
                .with_label_values(&[code_label(e.code()), label])
                .inc();
            if let Some(h) = &st.hooks {
                let who = crate::mgmt::RefusedBy {
                    subject: &r.subject,
                    caller: &r.caller,
                    mapping: &r.mapping,
                };
                h.refused(who, &r.resource, code_label(e.code()), &e.to_string());
            }
            e.into_response()
        }
    }
}

/// A `200` with a JSON body that must not be stored.
fn json_answer(body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(&mut resp);
    resp
}

type Failure = (ApiError, Refused);

/// Tags an error with the known resource it concerns (a metrics label), the mapping
/// chosen (empty before one was), the subject and the caller (the refusal audit).
fn on<'a>(
    resource: &'a str,
    mapping: &'a str,
    subject: &'a str,
    caller: &'a str,
) -> impl Fn(ApiError) -> Failure + 'a {
    move |e| {
        let r = Refused {
            resource: resource.to_string(),
            known: true,
            subject: subject.to_string(),
            caller: caller.to_string(),
            mapping: mapping.to_string(),
        };
        (e, r)
    }
}

/// Tags an error raised before the resource is known to be valid: `asked` is the
/// resource the form named, if any (kept for the audit, never a label), `subject` the
/// verified subject when there is one.
fn asking<'a>(
    asked: Option<&'a str>,
    subject: &'a str,
    caller: &'a str,
) -> impl Fn(ApiError) -> Failure + Copy + 'a {
    move |e| {
        let asked = asked.unwrap_or("");
        let mut end = asked.len().min(MAX_ASKED_RESOURCE);
        while !asked.is_char_boundary(end) {
            end -= 1;
        }
        let r = Refused {
            resource: asked[..end].to_string(),
            known: false,
            subject: subject.to_string(),
            caller: caller.to_string(),
            mapping: String::new(),
        };
        (e, r)
    }
}

/// [`asking`] before the subject token was validated.
fn before<'a>(asked: Option<&'a str>, caller: &'a str) -> impl Fn(ApiError) -> Failure + Copy + 'a {
    asking(asked, "", caller)
}

/// The audit's name for a caller that could not be identified: its peer address.
fn unidentified(conn: Option<&ConnInfo>) -> String {
    conn.map_or_else(
        || "unidentified caller".to_string(),
        |c| format!("unidentified caller at {}", c.peer.ip()),
    )
}

/// The subject of a cached entry (its rate key is `caller subject`).
fn subject_of(rate_key: &str) -> &str {
    rate_key.split_once(' ').map_or(rate_key, |(_, s)| s)
}

/// Who to audit a refusal before the caller check as (built only on a refusal).
fn who(c: &CallerResult, conn: Option<&ConnInfo>) -> String {
    match c {
        Ok(id) => id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        Err(_) => unidentified(conn),
    }
}

type CallerResult = Result<Option<meshpass_core::SpiffeId>, ApiError>;

/// Reads the form (a client's stalled upload is its own fault: 400, the connection
/// closed), then decides within `server.request_timeout_secs` (503 past it).
async fn exchange(
    st: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    body: Body,
    retry: u64,
) -> Result<Outcome, Failure> {
    // A form error comes before a caller error, so the caller's is kept for later.
    let caller = caller::caller(&st.settings.callers, conn, headers);
    let bytes = match form::read_body(headers, body, st.settings.request_timeout).await {
        Ok(b) => b,
        Err(e) => return Err(before(None, &who(&caller, conn))(e)),
    };
    let audited = who(&caller, conn);
    match tokio::time::timeout(
        st.settings.request_timeout,
        decide(st, conn, caller, &bytes),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(before(None, &audited)(ApiError::Timeout {
            retry_after_secs: retry,
        })),
    }
}

async fn decide(
    st: &AppState,
    conn: Option<&ConnInfo>,
    caller: CallerResult,
    bytes: &[u8],
) -> Result<Outcome, Failure> {
    let now = st.clock.now();
    if !st.revocations.loaded() {
        // Started with the store down: an empty set would be "nothing is revoked".
        return Err(before(None, &who(&caller, conn))(ApiError::Unavailable {
            what: "the revocation list",
            detail: "not read from the store yet".into(),
            retry_after_secs: st.settings.store_retry_after_secs,
        }));
    }
    let revoked = st.revocations.current();
    // The warm path: the same bytes from the same caller were answered before (see
    // `crate::cache`), so the form is not parsed again.
    let mut alias = None;
    if let (Some(cache), Ok(c)) = (st.servable_cache(), &caller) {
        let caller_id = c.as_ref().map(|c| c.as_str()).unwrap_or("");
        let key = CacheKey::of_form(bytes, caller_id);
        // A token minted under older issuer keys goes the full way (`still_verified`).
        let hit = cache
            .get_alias(&key, now)
            .filter(|h| h.under_keys(st.keys.generation()) && !unpublished(st, cache, h));
        if let Some(hit) = hit {
            // Revocations first: a revoked caller gets nothing, not even a cached token.
            if let Some(r) = c.as_ref().and_then(|c| revoked.caller(c, now)) {
                // The same bytes asked for the cached token's resource, for its subject.
                let subject = subject_of(&hit.rate_key);
                let tag = on(&hit.resource, &hit.mapping, subject, caller_id);
                return Err(tag(ApiError::Revoked(r.reason.clone())));
            }
            if !revoked_hit(&revoked, &hit, now) {
                st.metrics.cache_hits.inc();
                return serve_cached(st, hit, now).await;
            }
            // Revoked since it was cached: the full path below decides.
            cache.remove_where(|t| t.jti == hit.jti);
        }
        alias = Some(key);
    }
    let req = match form::parse(bytes) {
        Ok(r) => r,
        Err(e) => return Err(before(None, &who(&caller, conn))(e)),
    };
    let asked = req
        .resource
        .first()
        .or(req.audience.first())
        .map(String::as_str);
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return Err(before(asked, &unidentified(conn))(e)),
    };
    let caller_id = caller.as_ref().map(|c| c.as_str()).unwrap_or("");
    let unlabelled = before(asked, caller_id);
    // Revocations first (one look at the in-memory set): a revoked caller gets
    // nothing, not even a cached token.
    if let Some(r) = caller.as_ref().and_then(|c| revoked.caller(c, now)) {
        return Err(unlabelled(ApiError::Revoked(r.reason.clone())));
    }

    let key = st.cache.as_ref().map(|_| CacheKey::of(&req, caller_id));
    if let (Some(cache), Some(key)) = (st.servable_cache(), &key) {
        match cache.get(key, now) {
            Some(hit) if unpublished(st, cache, &hit) => {}
            Some(hit) if !revoked_hit(&revoked, &hit, now) => {
                let generation = st.keys.generation();
                if !hit.under_keys(generation) {
                    if let Err(e) = still_verified(st, &req, now).await {
                        if !matches!(e, ApiError::Unavailable { .. }) {
                            cache.remove_where(|t| t.jti == hit.jti);
                        }
                        let subject = subject_of(&hit.rate_key);
                        return Err(on(&hit.resource, &hit.mapping, subject, caller_id)(e));
                    }
                    hit.key_generation.store(generation, Ordering::Relaxed);
                }
                st.metrics.cache_hits.inc();
                if let Some(a) = alias {
                    cache.alias(a, *key);
                }
                return serve_cached(st, hit, now).await;
            }
            Some(hit) => {
                // Revoked by another replica since the last refresh swept the cache: a
                // revoked subject is refused below, a revoked jti is minted anew.
                cache.remove_where(|t| t.jti == hit.jti);
            }
            None => {}
        }
        st.metrics.cache_misses.inc();
    }

    // Read before the verification: keys changing meanwhile make the entry verify again.
    let key_generation = st.keys.generation();
    let subject = subject::validate(st, &req.subject_token, now, "subject_token")
        .await
        .map_err(unlabelled)?;
    // A caller other than the subject hears that it is refused until a mapping binds
    // it: not whether the resource exists, the subject is mapped to it or revoked (a
    // stolen subject token tells a stranger nothing, DESIGN.md item 5). An outage is
    // no secret and stays a 503.
    let stranger = caller
        .as_ref()
        .filter(|c| !caller::is_subject(c, &subject.spiffe_id));
    let hide = |e: ApiError| match (stranger, &e) {
        (Some(c), e) if e.code() != ErrorCode::TemporarilyUnavailable => caller::refused(c),
        _ => e,
    };
    // A revoked workload may not act for anyone, whether it is the subject, or the
    // subject token's `act` chain (carried into the minted token) names it, at any depth.
    let subject_revoked = || {
        std::iter::once(&subject.spiffe_id)
            .chain(&delegation::chain(&subject))
            .find_map(|id| revoked.subject(id, now))
            .map(|r| ApiError::Revoked(r.reason.clone()))
    };
    delegation::check_act(&subject, "subject_token", delegation::SUBJECT_ACT_DEPTH)
        .map_err(unlabelled)?;
    if stranger.is_none() {
        if let Some(e) = subject_revoked() {
            return Err(asking(asked, subject.spiffe_id.as_str(), caller_id)(e));
        }
    }
    let target = form::target(&req).map_err(hide).map_err(unlabelled)?;
    let policy = st
        .store
        .shared_resource_policy(&target)
        .await
        .map_err(|source| ApiError::Store {
            source,
            retry_after_secs: st.settings.store_retry_after_secs,
        })
        .map_err(unlabelled)?;
    let sub = subject.spiffe_id.as_str().to_string();
    let on = |resource| on(resource, "", &sub, caller_id);
    // An unknown resource is not a metrics label (anyone can name any resource).
    let mapping = authorize::mapping(&policy, &subject.spiffe_id).map_err(|e| {
        if policy.mappings.is_empty() {
            unlabelled(hide(e))
        } else {
            on(&target)(hide(e))
        }
    })?;
    let on = |resource| self::on(resource, &mapping.name, &sub, caller_id);
    // The caller before what it asks for: one that may not ask for this subject (a
    // stolen subject token) must not learn the mapping's audiences and scopes.
    let mode = caller::bind(caller.as_ref(), &subject.spiffe_id, mapping).map_err(on(&target))?;
    if stranger.is_some() {
        if let Some(e) = subject_revoked() {
            return Err(on(&target)(e));
        }
    }
    let grant = authorize::grant(mapping, &req).map_err(on(&target))?;
    // Budgets are per (caller, subject): nobody can spend someone else's.
    let rate_key = rate_key(caller_id, subject.spiffe_id.as_str());
    if let Some(limit) = mapping.rate_limit {
        st.limiter
            .check(&rate_key, &mapping.name, limit)
            .await
            .map_err(on(&target))?;
    }
    // A refusal by TokenReview or of the actor is audited like any other refusal; an
    // API-server outage is not a refusal (503, counted only).
    let reviewed = |e| match e {
        e @ ApiError::Review {
            source: ReviewError::Unavailable(_),
            ..
        } => unlabelled(e),
        refused => on(&target)(refused),
    };
    subject::review(st, &req.subject_token, &subject, "subject_token")
        .await
        .map_err(reviewed)?;
    let actor = match &req.actor_token {
        Some(t) => {
            let a = subject::validate(st, t, now, "actor_token")
                .await
                .map_err(on(&target))?;
            delegation::check_act(&a, "actor_token", delegation::ACTOR_ACT_DEPTH)
                .map_err(on(&target))?;
            // A revoked workload may not act for anyone either. Like the subject's, its
            // revocation and its delegation are decided before the API server is asked.
            let own_chain = delegation::chain(&a);
            if let Some(r) = std::iter::once(&a.spiffe_id)
                .chain(&own_chain)
                .find_map(|id| revoked.subject(id, now))
            {
                return Err(on(&target)(ApiError::Revoked(r.reason.clone())));
            }
            delegation::check_actor(&subject, &a, mapping).map_err(on(&target))?;
            // The actor's issuer may want its tokens reviewed as well (a deleted pod's
            // token stays signed until it expires).
            subject::review(st, t, &a, "actor_token")
                .await
                .map_err(reviewed)?;
            Some(a)
        }
        None => None,
    };
    let parties = subject::Parties { subject, actor };

    let exp = mint::expiry(&parties, mapping.ttl_secs, st.settings.max_ttl_secs, now)
        .map_err(on(&target))?;
    let jti = uuid::Uuid::new_v4().to_string();
    let scope_str = (!grant.scopes.is_empty()).then(|| grant.scopes.join(" "));
    let times = mint::Times { now, exp };
    let issuer = mint::Issuer {
        iss: &st.settings.issuer,
        participant_claim: &st.settings.participant_claim,
    };
    let claims = mint::claims(
        issuer,
        &parties,
        &grant,
        &policy.scope_claims,
        scope_str.as_deref(),
        times,
        &jti,
    )
    .map_err(on(&target))?;
    let minted = mint::sign(st, &claims, jti, exp)
        .await
        .map_err(on(&target))?;

    tracing::info!(
        target: "meshpass::audit",
        event = "token_issued",
        sub = %parties.subject.spiffe_id,
        caller = caller_id,
        binding = mode.as_str(),
        aud = ?grant.audiences,
        scope = scope_str.as_deref().unwrap_or(""),
        jti = %minted.jti,
        kid = %minted.key.kid,
        exp = minted.expires_at,
        resource = %mapping.resource,
        mapping = %mapping.name,
        actor = delegation::acting(&parties.subject, parties.actor.as_deref())
            .as_ref()
            .map_or("", meshpass_core::SpiffeId::as_str),
        "participant token issued"
    );

    let token = Arc::new(CachedToken {
        body: AnswerBody::new(&minted.access_token, scope_str.as_deref()),
        // Only a cached token is ever served (and counted) again.
        cached_counter: st.cache.as_ref().and_then(|_| {
            st.metrics
                .exchanges
                .get_metric_with_label_values(&["cached", &mapping.resource])
                .ok()
        }),
        access_token: minted.access_token.into(),
        scope: scope_str.map(Into::into),
        issued_at: now,
        expires_at: exp,
        rate_key: rate_key.into(),
        mapping: mapping.name.as_str().into(),
        resource: mapping.resource.as_str().into(),
        rate_limit: mapping.rate_limit,
        jti: minted.jti.into(),
        actors: delegation::acted(&parties.subject, parties.actor.as_deref())
            .iter()
            .map(|a| Arc::from(a.as_str()))
            .collect(),
        key_generation: key_generation.into(),
        signed_with: minted.key,
    });
    if let (Some(cache), Some(key)) = (&st.cache, key) {
        cache.insert(key, Arc::clone(&token), now);
        if let Some(a) = alias {
            cache.alias(a, key);
        }
    }

    Ok(Outcome {
        path: "cold",
        token,
        expires_in: exp - now,
    })
}

/// The issuer keys changed since a cached token was minted for `req`: its subject and
/// actor tokens must verify with the current keys before it is served again (the claim
/// rules are re-run as well, by [`subject::validate`]; the mappings' part is unchanged,
/// since a policy change clears the cache).
async fn still_verified(
    st: &AppState,
    req: &TokenExchangeRequest,
    now: u64,
) -> Result<(), ApiError> {
    subject::validate(st, &req.subject_token, now, "subject_token").await?;
    if let Some(actor) = &req.actor_token {
        subject::validate(st, actor, now, "actor_token").await?;
    }
    Ok(())
}

/// Whether `hit` was signed by a key the signer no longer publishes (the version taken
/// out of the JWKS in Vault, the key re-created under its name): every verifier would
/// refuse it. Drops every such entry in one pass, since a key change makes many at once.
fn unpublished(st: &AppState, cache: &crate::cache::TokenCache, hit: &CachedToken) -> bool {
    if st.signer.still_publishes(&hit.signed_with) {
        return false;
    }
    let dropped = cache.remove_where(|t| !st.signer.still_publishes(&t.signed_with));
    tracing::info!(
        dropped,
        kid = %hit.signed_with.kid,
        "minted-token cache: dropped tokens whose signing key is no longer published"
    );
    true
}

/// Whether a cached token may not be served any more: its `jti`, its subject or its
/// actor is revoked (the caller was checked before the lookup). Nothing revoked: no work.
fn revoked_hit(set: &crate::revocation::RevocationSet, hit: &CachedToken, now: u64) -> bool {
    if set.is_empty() {
        return false;
    }
    let revoked_id = |id: &str| {
        meshpass_core::SpiffeId::parse(id).map_or(true, |s| set.subject(&s, now).is_some())
    };
    set.jti(&hit.jti, now).is_some()
        || revoked_id(subject_of(&hit.rate_key))
        || hit.actors.iter().any(|a| revoked_id(a))
}

/// The rate-limit key of a (caller, subject) pair (a space never occurs in either).
fn rate_key(caller: &str, subject: &str) -> String {
    let mut key = String::with_capacity(caller.len() + 1 + subject.len());
    key.push_str(caller);
    key.push(' ');
    key.push_str(subject);
    key
}

async fn serve_cached(st: &AppState, hit: Arc<CachedToken>, now: u64) -> Result<Outcome, Failure> {
    if let Some(limit) = hit.rate_limit {
        if let Err(e) = st.limiter.check(&hit.rate_key, &hit.mapping, limit).await {
            let (caller, subject) = hit.rate_key.split_once(' ').unwrap_or(("", &hit.rate_key));
            return Err(on(&hit.resource, &hit.mapping, subject, caller)(e));
        }
    }
    Ok(Outcome {
        path: "warm",
        expires_in: hit.expires_at.saturating_sub(now),
        token: hit,
    })
}

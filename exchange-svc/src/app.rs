//! The HTTP application: state, router, discovery, health and metrics endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshpass_core::oauth::GRANT_TYPE_TOKEN_EXCHANGE;
use meshpass_core::ValidationPolicy;
use serde_json::{json, Value};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::cache::TokenCache;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::keys::IssuerKeySource;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::signer::Signer;
use crate::store::{MappingStore, PolicyCache};
use crate::subject_cache::SubjectCache;
use crate::tokenreview::TokenReviewer;

/// Settings the handlers need, derived from the configuration once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The subject-token validation policy.
    pub policy: ValidationPolicy,
    /// `iss` of minted tokens.
    pub issuer: String,
    /// Name of the participant-context claim.
    pub participant_claim: String,
    /// Cap on minted-token lifetime.
    pub max_ttl_secs: u64,
    /// JWKS/discovery `Cache-Control: max-age`.
    pub jwks_max_age_secs: u64,
    /// `Retry-After` when signing is unavailable.
    pub sign_retry_after_secs: u64,
    /// `Retry-After` when the store is unavailable.
    pub store_retry_after_secs: u64,
    /// Upper bound on one exchange.
    pub request_timeout: Duration,
}

impl Settings {
    /// Derives the settings from a validated configuration.
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        Ok(Settings {
            policy: cfg.validation_policy()?,
            issuer: cfg.token.issuer.clone(),
            participant_claim: cfg.token.participant_claim.clone(),
            max_ttl_secs: cfg.token.max_ttl_secs,
            jwks_max_age_secs: cfg.server.jwks_max_age_secs,
            sign_retry_after_secs: cfg.server.retry_after_secs,
            store_retry_after_secs: cfg.store.retry_after_secs,
            request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
        })
    }
}

/// Everything the handlers share; dependencies are trait objects so tests and the
/// binary wire different implementations.
#[derive(Clone)]
pub struct AppState {
    /// Signs participant tokens and publishes their keys.
    pub signer: Arc<dyn Signer>,
    /// The mapping store (behind the policy cache unless `store.policy_cache_secs` is
    /// 0); writes through it take effect on the token endpoint at once.
    pub store: Arc<dyn MappingStore>,
    /// Subject-token issuer keys.
    pub keys: Arc<dyn IssuerKeySource>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Derived settings.
    pub settings: Arc<Settings>,
    /// Minted-token cache (None: disabled).
    pub cache: Option<Arc<TokenCache>>,
    /// Verified subject/actor tokens (None: disabled).
    pub subjects: Option<Arc<SubjectCache>>,
    /// Per-subject rate limits.
    pub limiter: Arc<RateLimiter>,
    /// Metrics (behind an `Arc`: the state is cloned for every request).
    pub metrics: Arc<Metrics>,
    /// TokenReview per issuer that has it configured.
    pub reviewers: Arc<HashMap<String, TokenReviewer>>,
    /// Exchange statistics and the refused-exchange audit (set by `serve`).
    pub hooks: Option<Arc<crate::mgmt::ExchangeHooks>>,
}

impl AppState {
    /// Builds the state from a validated configuration and its dependencies; `store`
    /// is wrapped in a [`PolicyCache`] when `store.policy_cache_secs` is not 0.
    pub fn new(
        cfg: &Config,
        signer: Arc<dyn Signer>,
        store: Arc<dyn MappingStore>,
        keys: Arc<dyn IssuerKeySource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let mut reviewers = HashMap::new();
        for (i, c) in cfg.issuers.iter().enumerate() {
            if let Some(tr) = &c.token_review {
                let r = TokenReviewer::new(tr, c.ca_file.as_ref(), &c.audiences).map_err(|e| {
                    ConfigError::Invalid {
                        field: format!("issuers[{i}].token_review"),
                        reason: e.to_string(),
                    }
                })?;
                reviewers.insert(c.issuer.clone(), r);
            }
        }
        let metrics = Metrics::new().map_err(|e| ConfigError::Invalid {
            field: "metrics".into(),
            reason: e.to_string(),
        })?;
        let store: Arc<dyn MappingStore> = if cfg.store.policy_cache_secs > 0 {
            Arc::new(PolicyCache::new(
                store,
                Arc::clone(&clock),
                cfg.store.policy_cache_secs,
            ))
        } else {
            store
        };
        let v = &cfg.validation;
        Ok(AppState {
            signer,
            store,
            keys,
            clock,
            subjects: (v.subject_cache_secs > 0).then(|| {
                Arc::new(SubjectCache::new(
                    v.subject_cache_secs,
                    v.subject_cache_max_entries,
                ))
            }),
            settings: Arc::new(Settings::from_config(cfg)?),
            cache: cfg.cache.enabled.then(|| {
                Arc::new(TokenCache::new(
                    cfg.cache.max_entries,
                    cfg.cache.min_remaining_fraction,
                ))
            }),
            limiter: Arc::new(RateLimiter::default()),
            metrics: Arc::new(metrics),
            reviewers: Arc::new(reviewers),
            hooks: None,
        })
    }
}

/// The W3C trace context of a request, if it sent a well-formed `traceparent`.
fn trace_ids(req: &Request) -> Option<(String, String)> {
    let tp = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())?;
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    match parts.as_slice() {
        [ver, trace, span, flags, ..]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some((trace.to_string(), span.to_string()))
        }
        _ => None,
    }
}

/// The router: `POST /token`, discovery, `/healthz`, `/readyz`, `/metrics`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/token", post(crate::exchange::token))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth_metadata),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let span = tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        trace_id = tracing::field::Empty,
                        parent_span_id = tracing::field::Empty,
                    );
                    if let Some((trace_id, parent_id)) = trace_ids(req) {
                        span.record("trace_id", trace_id.as_str());
                        span.record("parent_span_id", parent_id.as_str());
                    }
                    span
                })
                // Error answers are logged once, by ApiError, at the right level.
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

fn public_cache(resp: &mut Response, max_age: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
}

async fn jwks(State(st): State<AppState>) -> Response {
    let mut resp = Json(st.signer.jwks()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    public_cache(&mut resp, st.settings.jwks_max_age_secs);
    resp
}

/// Algorithms of the published keys and of the current signing key.
fn signing_algs(st: &AppState) -> Vec<String> {
    let mut algs: Vec<String> = Vec::new();
    if let Ok(k) = st.signer.current_key() {
        algs.push(k.alg.as_str().to_string());
    }
    if let Some(keys) = st.signer.jwks().get("keys").and_then(Value::as_array) {
        for k in keys {
            if let Some(a) = k.get("alg").and_then(Value::as_str) {
                if !algs.iter().any(|x| x == a) {
                    algs.push(a.to_string());
                }
            }
        }
    }
    algs
}

fn metadata(st: &AppState, oidc: bool) -> Value {
    let iss = &st.settings.issuer;
    let mut doc = json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
    });
    if oidc {
        doc["subject_types_supported"] = json!(["public"]);
        doc["id_token_signing_alg_values_supported"] = json!(signing_algs(st));
    }
    doc
}

async fn openid_configuration(State(st): State<AppState>) -> Response {
    let mut resp = Json(metadata(&st, true)).into_response();
    public_cache(&mut resp, st.settings.jwks_max_age_secs);
    resp
}

async fn oauth_metadata(State(st): State<AppState>) -> Response {
    let mut resp = Json(metadata(&st, false)).into_response();
    public_cache(&mut resp, st.settings.jwks_max_age_secs);
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> Response {
    let signer_ok = st.signer.is_ready();
    let mut issuers = serde_json::Map::new();
    let mut keys_ok = true;
    for s in st.keys.status() {
        let ok = s.keys > 0;
        keys_ok &= ok;
        issuers.insert(s.issuer, json!(if ok { "ok" } else { "no keys loaded" }));
    }
    let store_ok = match tokio::time::timeout(Duration::from_secs(3), st.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: store ping timed out");
            false
        }
    };
    let ok = signer_ok && keys_ok && store_ok;
    let body = json!({
        "ready": ok,
        "signer": if signer_ok { "ok" } else { "not ready" },
        "issuer_keys": issuers,
        "store": if store_ok { "ok" } else { "unavailable" },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (status, Json(body)).into_response();
    if !ok {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(st.settings.sign_retry_after_secs),
        );
    }
    resp
}

async fn metrics(State(st): State<AppState>) -> Response {
    for s in st.keys.status() {
        st.metrics
            .jwks_age
            .with_label_values(&[s.issuer.as_str()])
            .set(s.age_secs.unwrap_or(-1.0));
        st.metrics
            .jwks_keys
            .with_label_values(&[s.issuer.as_str()])
            .set(s.keys as f64);
    }
    if let Some(c) = &st.cache {
        st.metrics.cache_entries.set(c.len() as f64);
    }
    match st.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

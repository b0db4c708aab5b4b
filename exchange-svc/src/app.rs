//! The HTTP application: the router, discovery, health and metrics endpoints. The
//! token endpoint is [`crate::exchange`]; both read [`crate::state::AppState`].

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshpass_core::oauth::GRANT_TYPE_TOKEN_EXCHANGE;

use crate::config::base_path;
use crate::error::ApiError;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use crate::state::{AppState, Settings};

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

/// Longest `/readyz` waits for the store's ping (a Kubernetes readiness probe's
/// `timeoutSeconds` must exceed it: e2e's istio_policies.rs checks the manifests).
pub const READYZ_STORE_WAIT: Duration = Duration::from_secs(3);

/// The router: `POST /token`, `GET /revocations` (the feed), discovery, `/healthz`, `/readyz`, `/metrics`.
pub fn app(state: AppState) -> Router {
    // The token endpoint takes its state behind one `Arc`: axum clones a handler's state
    // for every request, and `AppState` is a dozen `Arc`s.
    let token = post(crate::exchange::token)
        .fallback(|| async { crate::error::ApiError::MethodNotAllowed })
        .with_state(std::sync::Arc::new(state.clone()));
    let public = Router::new()
        .route("/token", token)
        .route("/revocations", get(crate::revocation::feed::feed))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth_metadata),
        );
    let mut router = public.clone();
    // An issuer or public URL with a path advertises its documents and token endpoint
    // under it: served there too (and behind a proxy that strips it, at the root).
    let issuer_path = base_path(&state.settings.issuer).ok().flatten();
    let public_path = base_path(&state.settings.public_url).ok().flatten();
    if let Some(p) = &issuer_path {
        // RFC 8414 §3.1: the well-known suffix goes between host and path.
        router = router.nest(p, public.clone()).route(
            &format!("/.well-known/oauth-authorization-server{p}"),
            get(oauth_metadata),
        );
    }
    if let Some(p) = public_path.filter(|p| Some(p) != issuer_path.as_ref()) {
        router = router.nest(&p, public);
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // A panic below a handler (lints forbid our own; a library's remain) costs its
        // request a 500, not the replica (the release profile unwinds).
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::Internal("a request handler panicked".into()).into_response()
            },
        ))
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

/// `503` + `Retry-After` (and `no-store`) while the signing key was never read.
fn keys_not_read(st: &AppState) -> Response {
    ApiError::Unavailable {
        what: "signing keys",
        detail: "the signing key has not been read from Vault yet".into(),
        retry_after_secs: st.settings.sign_retry_after_secs,
    }
    .into_response()
}

async fn jwks(State(st): State<AppState>) -> Response {
    let set = st.signer.jwks();
    if set["keys"].as_array().is_none_or(Vec::is_empty) {
        // Not yet read from Vault: an empty set would be cached by verifiers for
        // max-age and fail every participant token meanwhile.
        return keys_not_read(&st);
    }
    let mut resp = Json(set).into_response();
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
    let (iss, base) = (&st.settings.issuer, &st.settings.public_url);
    let mut doc = json!({
        "issuer": iss,
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        // The token endpoint knows its callers by their mTLS identity (RFC 8705).
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        // Required by both documents, yet there is no authorization endpoint: like the
        // Kubernetes service-account issuer, name only `id_token` (never the implicit
        // flow's `token`).
        "response_types_supported": ["id_token"],
    });
    if oidc {
        doc["subject_types_supported"] = json!(["public"]);
        doc["id_token_signing_alg_values_supported"] = json!(signing_algs(st));
    }
    doc
}

async fn openid_configuration(State(st): State<AppState>) -> Response {
    let doc = metadata(&st, true);
    if doc["id_token_signing_alg_values_supported"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        // As for the JWKS: an empty list (a required member) would be cached for
        // max-age, and some verifiers then assume RS256 and refuse every token.
        return keys_not_read(&st);
    }
    let mut resp = Json(doc).into_response();
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
    let store = async {
        match tokio::time::timeout(READYZ_STORE_WAIT, st.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: store ping failed");
                false
            }
            Err(_) => {
                tracing::warn!("readiness: store ping timed out");
                false
            }
        }
    };
    // Side by side: the answer comes within the store's wait, the Redis probe's bound
    // being shorter (`ratelimit::READYZ_REDIS_WAIT`).
    let (store_ok, rate_limit) =
        tokio::join!(store, crate::ratelimit::probe_and_describe(&st.limiter));
    // A draining replica (SIGTERM received) is taken out of the load balancer first.
    let draining = st.draining.load(std::sync::atomic::Ordering::Relaxed);
    // Started with the store down: not ready until the revocation list is read once.
    let revocations_ok = st.revocations.loaded();
    let ok = signer_ok && keys_ok && store_ok && revocations_ok && !draining;
    let body = json!({
        "ready": ok,
        "draining": draining,
        "signer": if signer_ok { "ok" } else { "not ready" },
        "issuer_keys": issuers,
        "store": if store_ok { "ok" } else { "unavailable" },
        "revocations": if revocations_ok { "ok" } else { "not loaded" },
        "rate_limit": rate_limit,
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
    let revoked = st.revocations.current();
    st.metrics
        .revocations_active
        .set(revoked.active(st.clock.now()).len() as f64);
    st.metrics.revocation_version.set(revoked.version as f64);
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

//! The management API (its own listener, `/api/v1/...`): mappings, scopes, export and
//! import, audit, keys, stats, revocations and introspection, and `/openapi.json`. See README "Management API".
//!
//! Every route is declared once in [`routes::ROUTES`], which builds both the router and
//! the OpenAPI document. Every request is authenticated ([`auth`]); every change is
//! audited in the same transaction as the change ([`crate::store::SqlStore`]'s
//! management operations); every write drops the token endpoint's policy snapshots, so
//! the next exchange on this replica sees it.

pub mod audit;
pub mod auth;
pub mod binding;
pub mod config;
pub mod error;
pub mod input;
pub mod keys;
pub mod kube_authz;
pub mod mappings;
pub mod openapi;
pub mod own_token;
pub mod revocations;
pub mod routes;
pub mod stats;
pub mod transfer;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

pub use audit::RefusalAudit;
pub use auth::{Authenticator, Caller};
pub use config::{CallerRoles, ManagementConfig, Role};
pub use error::{Dependency, MgmtError, RetryAfter};
pub use keys::{check_retire, KeyAdmin, KeyStatus, KeyVersionStatus};
pub use stats::ExchangeStats;

use crate::app::AppState;
use crate::config::{Config, ConfigError};
use crate::store::{Actor, MappingStore, SqlStore};

/// What the management handlers share.
#[derive(Clone)]
pub struct MgmtState {
    /// The store (management operations are on the SQL store itself).
    pub store: Arc<SqlStore>,
    /// The token endpoint's view of the store: invalidated after every write.
    pub policy: Arc<dyn MappingStore>,
    /// Caller authentication and roles.
    pub auth: Arc<Authenticator>,
    /// Key operations (None: the signer is not a transit signer).
    pub keys: Option<Arc<crate::key_maintenance::LockedKeyAdmin>>,
    /// `token.max_ttl_secs`: mappings above it are refused.
    pub max_ttl_secs: u64,
    /// Longest a participant token can be accepted past a key's last use (retirement
    /// safety): [`Config::token_acceptance_secs`].
    pub max_token_lifetime_secs: u64,
    /// Exchange counts and top subjects.
    pub stats: Arc<ExchangeStats>,
    /// The token endpoint's minted-token cache: cleared after every write, so no token
    /// minted under the old policy is served again.
    pub token_cache: Option<Arc<crate::cache::TokenCache>>,
    /// The service clock.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// How a request's connection is identified (management tokens are bound to it).
    pub binding: Arc<binding::BindingSettings>,
    /// The token endpoint's revocation set (writes are applied to it at once).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// The signer whose published keys introspection verifies with.
    pub signer: Arc<dyn crate::signer::Signer>,
    /// `token.issuer`: introspection only vouches for this issuer's tokens.
    pub issuer: String,
    /// `token.participant_claim`.
    pub participant_claim: String,
    /// `Retry-After` of a 503, by what is down.
    pub retry_after: RetryAfter,
}

impl MgmtState {
    /// The state for `cfg` next to the token endpoint's `app` state; `store` must be the
    /// store under `app.store`.
    pub fn new(
        cfg: &Config,
        app: &AppState,
        store: Arc<SqlStore>,
        keys: Option<Arc<dyn KeyAdmin>>,
        stats: Arc<ExchangeStats>,
    ) -> Result<Self, ConfigError> {
        let auth = Authenticator::new(
            &app.settings.policy,
            &app.reviewers,
            &cfg.management,
            Arc::clone(&app.keys),
            Arc::clone(&app.clock),
            Arc::clone(&app.revocations),
        )
        .map_err(|(field, reason)| ConfigError::Invalid { field, reason })?;
        // Key changes hold the maintenance lock and are audited in its transaction.
        let keys = keys.map(|k| {
            Arc::new(crate::key_maintenance::LockedKeyAdmin::new(
                k,
                Arc::clone(&store),
            ))
        });
        Ok(MgmtState {
            store,
            policy: Arc::clone(&app.store),
            auth: Arc::new(auth),
            keys,
            max_ttl_secs: cfg.token.max_ttl_secs,
            max_token_lifetime_secs: cfg.token_acceptance_secs(),
            stats,
            token_cache: app.cache.clone(),
            clock: Arc::clone(&app.clock),
            binding: Arc::new(binding::BindingSettings {
                callers: app.settings.callers.clone(),
                insecure_unbound_callers: cfg.management.insecure_unbound_callers,
            }),
            revocations: Arc::clone(&app.revocations),
            signer: Arc::clone(&app.signer),
            issuer: app.settings.issuer.clone(),
            participant_claim: app.settings.participant_claim.clone(),
            retry_after: RetryAfter {
                store_secs: app.settings.store_retry_after_secs,
                other_secs: app.settings.sign_retry_after_secs,
            },
        })
    }

    /// Called after every write: the next exchange reads the store again.
    pub fn written(&self) {
        self.policy.invalidate();
        if let Some(c) = &self.token_cache {
            c.clear(self.clock.now());
        }
    }
}

/// The request id of a management request (`X-Request-Id`, or a new UUID).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The audit actor of `caller` in this request.
    pub fn actor(&self, caller: &Caller) -> Actor {
        Actor {
            who: caller.id.clone(),
            request_id: self.0.clone(),
        }
    }
}

/// Takes a sane client `X-Request-Id` (at most 64 of `[A-Za-z0-9._-]`) or makes one,
/// and echoes it on the answer.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The management router (every route of [`routes::ROUTES`] and `/openapi.json`).
///
/// No layer reads or judges the body: a handler reads it ([`input::read_body`], bounded
/// by [`transfer::MAX_BODY_BYTES`]) only after authenticating the caller. The request
/// id is the outermost layer, so every answer carries it.
pub fn router(st: MgmtState) -> Router {
    let binding = Arc::clone(&st.binding);
    let retry = st.retry_after;
    routes::build()
        .layer(axum::middleware::from_fn_with_state(
            binding,
            binding::bind_connection,
        ))
        .layer(axum::middleware::map_response_with_state(
            retry,
            error::retry_after,
        ))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(st)
}

/// The running management listener.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The server task (ends on shutdown).
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the management API next to the token endpoint, unless `[management]` keeps
/// it off (logged with the reason: it never runs without configured callers). Stops
/// accepting when `shutdown` resolves.
pub async fn start(
    cfg: &Config,
    app: &AppState,
    store: Arc<SqlStore>,
    keys: Option<Arc<dyn KeyAdmin>>,
    stats: Arc<ExchangeStats>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<Running>, crate::server::ServeError> {
    if let Some(reason) = cfg.management.disabled_reason() {
        tracing::warn!(reason, "management API not started");
        return Ok(None);
    }
    // Nothing attached the revocation store yet (tests, embedders): the plain one.
    app.revocations
        .attach(
            store.clone() as Arc<dyn crate::store::RevocationStore>,
            Arc::clone(&app.clock),
        )
        .await;
    let st = MgmtState::new(cfg, app, store, keys, stats)?;
    let listener = tokio::net::TcpListener::bind(cfg.management.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, callers = cfg.management.callers.len(), tls = cfg.management.tls.is_some(), "management API listening");
    if cfg.management.insecure_unbound_callers {
        tracing::warn!(
            "management.insecure_unbound_callers = true: management tokens are accepted from \
             connections whose identity is unknown (a copied token works from anywhere)"
        );
    }
    let task = match &cfg.management.tls {
        None => tokio::spawn(crate::http_serve::serve(listener, router(st), shutdown)),
        Some(t) => {
            let tls = crate::tls::section_config(
                "management.tls",
                &t.cert_file,
                &t.key_file,
                &t.client_ca_file,
            )?;
            let age = std::time::Duration::from_secs(t.max_connection_age_secs);
            let listener = crate::tls::TlsListener::new(listener, tls, age)?;
            tokio::spawn(crate::http_serve::serve(listener, router(st), shutdown))
        }
    };
    Ok(Some(Running { addr, task }))
}

/// What the token endpoint reports to the management side: every exchange to the
/// statistics, every refusal to the rate-limited audit.
#[derive(Debug)]
pub struct ExchangeHooks {
    /// Counts by mapping and outcome, top subjects.
    pub stats: Arc<ExchangeStats>,
    /// The refused-exchange audit (None: not recorded).
    pub refusals: Option<Arc<RefusalAudit>>,
}

/// Who a refused exchange was for, as far as it got: each field empty when unknown.
#[derive(Debug, Clone, Copy)]
pub struct RefusedBy<'a> {
    /// The verified subject's SPIFFE ID.
    pub subject: &'a str,
    /// Who called `/token`.
    pub caller: &'a str,
    /// The mapping chosen before the refusal.
    pub mapping: &'a str,
}

impl ExchangeHooks {
    /// A successful exchange (`outcome`: `issued` or `cached`).
    pub fn exchanged(&self, subject: &str, mapping: &str, outcome: &str) {
        self.stats.record(subject, mapping, outcome);
    }

    /// A refused exchange: `subject`, `caller` and the chosen `mapping` when known (else
    /// empty), the error `code` and its public `reason` (never the token).
    pub fn refused(&self, who: RefusedBy<'_>, resource: &str, code: &str, reason: &str) {
        let RefusedBy {
            subject,
            caller,
            mapping,
        } = who;
        self.stats.record(subject, mapping, code);
        // Outages are no refusals: only policy and token decisions are audited.
        if matches!(
            code,
            "temporarily_unavailable" | "server_error" | "slow_down"
        ) {
            return;
        }
        if let Some(r) = &self.refusals {
            r.refused(subject, caller, resource, &format!("{code}: {reason}"));
        }
    }
}

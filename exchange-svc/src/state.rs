//! What every handler shares: the settings derived from the configuration once, and
//! the dependencies (signer, store, keys, caches, limiter, metrics).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshpass_core::ValidationPolicy;

use crate::cache::TokenCache;
use crate::caller::CallerSettings;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::keys::IssuerKeySource;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::revocation::Revocations;
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
    /// Base of the discovery documents' `token_endpoint` and `jwks_uri`
    /// (`server.public_url`, else the issuer).
    pub public_url: String,
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
    /// How long past the store's last confirmation (see [`AppState::store_confirmed`])
    /// minted tokens are still served from the cache: `store.policy_cache_secs` plus
    /// one `store.change_check_interval_ms`, the time between two confirmations.
    pub cache_confirmed_within: Duration,
    /// How callers of `/token` are identified.
    pub callers: CallerSettings,
}

impl Settings {
    /// Derives the settings from a validated configuration.
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        Ok(Settings {
            policy: cfg.validation_policy()?,
            issuer: cfg.token.issuer.clone(),
            public_url: cfg
                .server
                .public_url
                .clone()
                .unwrap_or_else(|| cfg.token.issuer.clone()),
            participant_claim: cfg.token.participant_claim.clone(),
            max_ttl_secs: cfg.token.max_ttl_secs,
            jwks_max_age_secs: cfg.server.jwks_max_age_secs,
            sign_retry_after_secs: cfg.server.retry_after_secs,
            store_retry_after_secs: cfg.store.retry_after_secs,
            request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
            cache_confirmed_within: Duration::from_secs(cfg.store.policy_cache_secs)
                + Duration::from_millis(cfg.store.change_check_interval_ms),
            callers: CallerSettings {
                xfcc_trusted_proxies: cfg.callers.xfcc_trusted_proxies.clone(),
                insecure_unbound_callers: cfg.callers.insecure_unbound_callers,
            },
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
    /// The revocation set the token endpoint enforces and the feed serves (attached to
    /// its store by `serve`, or by the management API when nothing else did).
    pub revocations: Arc<Revocations>,
    /// The store's change version as other replicas' writes arrive (set by `serve`;
    /// see `crate::change_feed`): subscribe to reload in-memory views.
    pub changes: Option<tokio::sync::watch::Receiver<Option<i64>>>,
    /// When the shared store last confirmed this replica's views (set by `serve` with
    /// the change feed): cache hits stop past `settings.cache_confirmed_within`.
    pub store_confirmed: Option<Arc<crate::change_feed::Confirmed>>,
    /// Set on SIGTERM: `/readyz` fails while the replica drains (`server.drain_delay_secs`).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// The minted-token cache, when hits may be served: not while this replica is cut
    /// off from the store (a hit reads no policy, so it would grant a mapping another
    /// replica deleted meanwhile); the full path then decides (503 while the store is
    /// unreachable).
    pub fn servable_cache(&self) -> Option<&Arc<TokenCache>> {
        let cache = self.cache.as_ref()?;
        match &self.store_confirmed {
            Some(c) if c.age() > self.settings.cache_confirmed_within => None,
            _ => Some(cache),
        }
    }

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
                let audiences: Vec<String> = c
                    .policy
                    .audiences
                    .iter()
                    .map(|a| a.as_str().to_string())
                    .collect();
                // A projected service-account token carries one audience: with no audience
                // in both lists, none is accepted by both checks. Not refused: a token
                // requested with several audiences can still pass.
                if !tr.audiences.is_empty() && !tr.audiences.iter().any(|a| audiences.contains(a)) {
                    tracing::warn!(
                        "issuers[{i}].token_review.audiences {:?} shares no audience with \
                         issuers[{i}].audiences {:?}: a token with one audience (a projected \
                         service-account token) is refused by one check or the other",
                        tr.audiences,
                        audiences
                    );
                }
                let r = TokenReviewer::new(tr, c.ca_file.as_ref(), &audiences).map_err(|e| {
                    ConfigError::Invalid {
                        field: format!("issuers[{i}].token_review"),
                        reason: e.to_string(),
                    }
                })?;
                reviewers.insert(c.policy.issuer.clone(), r);
            }
        }
        let metrics = Metrics::new().map_err(|e| ConfigError::Invalid {
            field: "metrics".into(),
            reason: e.to_string(),
        })?;
        let limiter =
            RateLimiter::from_config(&cfg.rate_limit, &metrics, cfg.server.retry_after_secs)
                .map_err(|reason| ConfigError::Invalid {
                    field: "rate_limit".into(),
                    reason,
                })?;
        let store: Arc<dyn MappingStore> = if cfg.store.policy_cache_secs > 0 {
            let cache = PolicyCache::new(store, Arc::clone(&clock), cfg.store.policy_cache_secs)
                .with_max_age_secs(cfg.store.policy_max_age_secs);
            cache
                .register_metrics(&metrics)
                .map_err(|e| ConfigError::Invalid {
                    field: "metrics".into(),
                    reason: e.to_string(),
                })?;
            Arc::new(cache)
        } else {
            store
        };
        let v = &cfg.validation;
        let subjects = (v.subject_cache_secs > 0).then(|| {
            Arc::new(SubjectCache::new(
                v.subject_cache_secs,
                v.subject_cache_max_entries,
            ))
        });
        let cache = cfg.cache.enabled.then(|| {
            Arc::new(
                TokenCache::new(cfg.cache.max_entries, cfg.cache.min_remaining_fraction)
                    .with_max_age_secs(cfg.store.policy_max_age_secs),
            )
        });
        Ok(AppState {
            signer,
            store,
            keys,
            clock,
            revocations: Arc::new(Revocations::new(cache.clone(), subjects.clone())),
            subjects,
            settings: Arc::new(Settings::from_config(cfg)?),
            cache,
            limiter: Arc::new(limiter),
            metrics: Arc::new(metrics),
            reviewers: Arc::new(reviewers),
            hooks: None,
            changes: None,
            store_confirmed: None,
            draining: Arc::default(),
        })
    }
}

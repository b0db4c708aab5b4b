//! Wiring for `meshpass-exchange serve`: store, issuer keys, signer, listener, graceful
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::TcpListener;

use crate::app::{app, AppState};
use crate::caller::ConnInfo;
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::keys::IssuerKeys;
use crate::signer::Signer;
use crate::store::{seed, MappingStore, SqlStore, StoreError};
use crate::tls::TlsListener;
use crate::vault::{TransitSigner, VaultStats};

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The configured mappings or scope claims cannot be applied to the store.
    #[error("configuration refused by the store: {0}")]
    Seed(StoreError),
    /// The signer could not be built.
    #[error("signer: {0}")]
    Signer(String),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Binding or serving the listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Migrates and seeds the store; when the database is down, keeps retrying in the
/// background (the service answers 503 and `/readyz` says why meanwhile). Seeding
/// refused (the configured rows are invalid against what is stored), or connection
/// options the driver refuses (`store.url`), is an error: the service does not start
/// on a configuration it cannot apply.
pub async fn prepare_store(store: Arc<SqlStore>, cfg: &Config) -> Result<(), StoreError> {
    let mappings = cfg.mappings.clone();
    let scope_claims = cfg.scope_claims.clone();
    let attempt = {
        let store = Arc::clone(&store);
        move || {
            let store = Arc::clone(&store);
            let mappings = mappings.clone();
            let scope_claims = scope_claims.clone();
            async move {
                store.migrate().await?;
                let n = seed(store.as_ref(), &mappings, &scope_claims).await?;
                tracing::info!(
                    backend = store.backend_name(),
                    written = n,
                    "mapping store ready"
                );
                Ok::<(), StoreError>(())
            }
        }
    };
    match attempt().await {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Some(refusal) = refused(&e) {
                return Err(refusal);
            }
            tracing::warn!(error = %e, "store not ready; retrying in the background");
            // Not ready until done, even once the database answers: a replica without
            // its schema or its configured mappings would fail or refuse exchanges.
            store.set_setup_pending(true);
            tokio::spawn(async move {
                let mut backoff = Duration::from_secs(1);
                loop {
                    tokio::time::sleep(backoff).await;
                    match attempt().await {
                        Ok(()) => {
                            store.set_setup_pending(false);
                            break;
                        }
                        Err(e) => {
                            if let Some(refusal) = refused(&e) {
                                // Retrying cannot help; the replica stays unready
                                // (readiness names the store) until restarted with a
                                // configuration the store accepts.
                                tracing::error!(error = %refusal, "the store refused this configuration (its schema, the configured rows or store.url)");
                                break;
                            }
                            tracing::warn!(error = %e, "store still not ready");
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            });
            Ok(())
        }
    }
}

/// A setup error no retry can fix, as the error to report: the store refused the
/// configured rows (or its schema), or the driver refused the connection options
/// (`store.url`; `StoreConfig::validate` parses it as the driver does, so this is the
/// rare option only met when connecting).
fn refused(e: &StoreError) -> Option<StoreError> {
    match e {
        StoreError::Invalid { .. } | StoreError::Conflict(_) => Some(e.clone()),
        _ => e.configuration_reason().map(|reason| StoreError::Invalid {
            field: "store.url".into(),
            reason,
        }),
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// SIGHUP reloads nothing (the configuration is read once; TLS files, the Vault token
/// file and the issuers' JWKS are re-read on their own), and left to its default it
/// would end the process without the drain: an operator's habitual `kill -HUP` or a
/// closed terminal must not take a replica down. Logged and otherwise ignored.
pub fn ignore_hangups() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!(
                        "SIGHUP ignored: the configuration is read only at start; \
                         restart the replica to apply a change (SIGTERM drains it)"
                    );
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP: it would end the process without a drain")
        }
    }
}

/// Resolves `delay` after SIGTERM/SIGINT, having set `draining` at once: `/readyz`
/// fails (load balancers stop sending new requests) while requests are still served;
/// then the listener closes and in-flight exchanges finish (`shutdown_grace_secs`).
pub async fn drain(draining: Arc<std::sync::atomic::AtomicBool>, delay: Duration) {
    shutdown_signal().await;
    if !draining.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            drain_delay_secs = delay.as_secs(),
            "draining: /readyz fails, requests are still served until the delay has passed"
        );
    }
    tokio::time::sleep(delay).await;
}

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `grace` for in-flight requests.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    serve_with(listener, state, shutdown, grace).await
}

/// [`serve_on`] terminating TLS with `tls` (see [`crate::tls`]); a connection naming a
/// caller is closed gracefully after `max_connection_age` (`server.tls`).
pub async fn serve_tls_on(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    max_connection_age: Duration,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let listener = TlsListener::new(listener, tls, max_connection_age)?;
    serve_with(listener, state, shutdown, grace).await
}

async fn serve_with<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError>
where
    L: Listener,
    L::Addr: Into<ConnInfo>,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = tx.send(());
    };
    let server = crate::http_serve::serve(listener, app(state), signal);
    let deadline = async move {
        if rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = server => Ok(()),
        _ = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time");
            Ok(())
        }
    }
}

/// Builds the transit signer of `[vault]` (starts not ready when Vault is unreachable;
/// fails when Vault refuses the credentials or the key).
pub async fn build_signer(cfg: &Config) -> Result<Arc<TransitSigner>, ServeError> {
    TransitSigner::start(&cfg.vault)
        .await
        .map(Arc::new)
        .map_err(|e| ServeError::Signer(e.to_string()))
}

/// Upper bounds of `meshpass_transit_batch_size` (`vault.batch_max_size` is at most 1024).
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Exposes the Vault client's counters, token TTL and batch sizes as Prometheus metrics.
pub struct VaultCollector {
    stats: Arc<VaultStats>,
    token_ttl: prometheus::Gauge,
    sign_requests: crate::metrics::Mirrored,
    signatures: crate::metrics::Mirrored,
    sign_errors: crate::metrics::Mirrored,
    logins: crate::metrics::Mirrored,
    renewals: crate::metrics::Mirrored,
    auth_failures: crate::metrics::Mirrored,
    batch_sizes: prometheus::Histogram,
}

impl VaultCollector {
    /// A collector over `stats`.
    pub fn new(stats: Arc<VaultStats>) -> Result<Self, prometheus::Error> {
        use crate::metrics::Mirrored;
        use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter};
        let batch_sizes = Histogram::with_opts(
            HistogramOpts::new(
                "meshpass_transit_batch_size",
                "Signatures per transit/sign request (1: a single sign).",
            )
            .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )?;
        stats.observe_batch_sizes(batch_sizes.clone());
        Ok(VaultCollector {
            stats,
            batch_sizes,
            token_ttl: Gauge::new(
                "meshpass_vault_token_ttl_seconds",
                "Seconds until the service's Vault token expires (negative once expired; absent when it never expires or none is loaded).",
            )?,
            sign_requests: Mirrored::new(IntCounter::new(
                "meshpass_vault_sign_requests_total",
                "HTTP requests to transit/sign (a batch counts once).",
            )?),
            signatures: Mirrored::new(IntCounter::new(
                "meshpass_vault_signatures_total",
                "Signatures returned by Vault.",
            )?),
            sign_errors: Mirrored::new(IntCounter::new(
                "meshpass_vault_sign_errors_total",
                "Signatures that failed.",
            )?),
            logins: Mirrored::new(IntCounter::new(
                "meshpass_vault_logins_total",
                "Successful Vault logins.",
            )?),
            renewals: Mirrored::new(IntCounter::new(
                "meshpass_vault_token_renewals_total",
                "Successful token renewals.",
            )?),
            auth_failures: Mirrored::new(IntCounter::new(
                "meshpass_vault_auth_failures_total",
                "Failed Vault login, lookup or renewal attempts.",
            )?),
        })
    }
}

impl prometheus::core::Collector for VaultCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = Vec::new();
        d.extend(self.token_ttl.desc());
        d.extend(self.batch_sizes.desc());
        for c in [
            &self.sign_requests,
            &self.signatures,
            &self.sign_errors,
            &self.logins,
            &self.renewals,
            &self.auth_failures,
        ] {
            d.extend(c.desc());
        }
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let s = &self.stats;
        // No sentinel for "never expires": -1 would read as "expired a second ago", and
        // an alert skipping it would resolve the moment the token expired.
        let mut out = match s.token_ttl_seconds() {
            Some(t) => {
                self.token_ttl.set(t as f64);
                self.token_ttl.collect()
            }
            None => Vec::new(),
        };
        out.extend(self.batch_sizes.collect());
        for (c, v) in [
            (&self.sign_requests, s.sign_requests()),
            (&self.signatures, s.signatures()),
            (&self.sign_errors, s.sign_errors()),
            (&self.logins, s.logins()),
            (&self.renewals, s.renewals()),
            (&self.auth_failures, s.auth_failures()),
        ] {
            out.extend(c.collect_at(v));
        }
        out
    }
}

/// `meshpass-exchange serve`.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    ignore_hangups();
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim)?);
    prepare_store(Arc::clone(&store), &cfg)
        .await
        .map_err(ServeError::Seed)?;
    let keys = IssuerKeys::from_config(&cfg)?;
    if tokio::time::timeout(Duration::from_secs(10), keys.refresh_all())
        .await
        .is_err()
    {
        tracing::warn!("loading issuer keys took longer than 10 s; continuing in the background");
    }
    let _refreshers = keys.spawn_refresh();
    let signer = build_signer(&cfg).await?;
    let mut state = AppState::new(
        &cfg,
        signer.clone() as Arc<dyn Signer>,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )?;
    // The revocation set follows the store from here on (the management API writes
    // through the same handle).
    state
        .revocations
        .attach(
            store.clone() as Arc<dyn crate::store::RevocationStore>,
            Arc::clone(&state.clock),
        )
        .await;
    // Replicas: other replicas' writes drop this one's views (policy, minted tokens).
    let change_feed = start_change_feed(Arc::clone(&store), &cfg, &mut state)?;
    let _key_reload = spawn_key_reload(&state, Arc::clone(&signer));
    let _key_schedule = crate::key_schedule::KeySchedule::new(
        &cfg.keys,
        cfg.token_acceptance_secs(),
        Arc::clone(&store),
        Arc::clone(&signer),
        &state.metrics,
    )
    .map_err(|e| ServeError::Signer(format!("metrics: {e}")))?
    .spawn();
    let collector = VaultCollector::new(signer.stats())
        .map_err(|e| ServeError::Signer(format!("metrics: {e}")))?;
    if let Err(e) = state.metrics.register(Box::new(collector)) {
        tracing::warn!(error = %e, "Vault metrics not registered");
    }
    let stats = Arc::new(
        crate::mgmt::ExchangeStats::new()
            .map_err(|e| ServeError::Signer(format!("metrics: {e}")))?,
    );
    if let Err(e) = state.metrics.register(stats.collector()) {
        tracing::warn!(error = %e, "mapping metrics not registered");
    }
    let refusals = crate::mgmt::RefusalAudit::start(Arc::clone(&store), &cfg.management);
    match refusals.collector() {
        Ok(c) => {
            if let Err(e) = state.metrics.register(c) {
                tracing::warn!(error = %e, "refusal-audit metrics not registered");
            }
        }
        Err(e) => tracing::warn!(error = %e, "refusal-audit metrics not created"),
    }
    state.hooks = Some(Arc::new(crate::mgmt::ExchangeHooks {
        stats: Arc::clone(&stats),
        refusals: Some(Arc::clone(&refusals)),
    }));
    if cfg.callers.insecure_unbound_callers {
        tracing::warn!(
            "callers.insecure_unbound_callers = true: /token accepts callers it cannot identify, \
             so anyone holding a subject token can exchange it"
        );
    }
    let listener = TcpListener::bind(cfg.server.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, issuer = %cfg.token.issuer, tls = cfg.server.tls.is_some(), signature_backend = meshpass_core::SignatureBackend::active().name(), "meshpass-exchange listening");
    // One stop for every listener, the management API's too: SIGTERM fails `/readyz`
    // at once, and every port is still served for the drain delay (one Service fronts
    // both), then closes and lets its requests in flight finish within the grace.
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let delay = Duration::from_secs(cfg.server.drain_delay_secs);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let management = crate::mgmt::start(
        &cfg,
        &state,
        Arc::clone(&store),
        Some(signer.clone() as Arc<dyn crate::mgmt::KeyAdmin>),
        stats,
        stopped(stop_rx.clone()),
    )
    .await?;
    let draining = Arc::clone(&state.draining);
    let signal = async {
        // Or the token listener could not start: the rest stops too.
        tokio::select! {
            () = drain(draining, delay) => {}
            () = stopped(stop.subscribe()) => {}
        }
        let _ = stop.send(true);
    };
    let management = {
        let stop_rx = stop_rx.clone();
        async move {
            let Some(m) = management else { return };
            stopped(stop_rx).await;
            if tokio::time::timeout(grace, m.task).await.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "management requests in flight did not finish in time"
                );
            }
        }
    };
    let serving = async {
        // Its own block: a `?` inside (TLS files, the TLS listener's bind) must still
        // send the stop below, or `serve` would wait for a SIGTERM for ever.
        let r: Result<(), ServeError> = async {
            match &cfg.server.tls {
                None => serve_on(listener, state, stopped(stop_rx), grace).await,
                Some(t) => {
                    let tls = crate::tls::server_config(&t.cert_file, &t.key_file, &t.client_ca_file)?;
                    let age = Duration::from_secs(t.max_connection_age_secs);
                    match t.listen {
                        None => serve_tls_on(listener, tls, age, state, stopped(stop_rx), grace).await,
                        Some(addr) => {
                            let tls_listener = TcpListener::bind(addr).await?;
                            tracing::info!(listen = %tls_listener.local_addr()?, "TLS listener (callers identified by client certificate)");
                            let plain =
                                serve_on(listener, state.clone(), stopped(stop_rx.clone()), grace);
                            let secure =
                                serve_tls_on(tls_listener, tls, age, state, stopped(stop_rx), grace);
                            let (plain, secure) = tokio::join!(plain, secure);
                            plain.and(secure)
                        }
                    }
                }
            }
        }
        .await;
        if r.is_err() {
            let _ = stop.send(true);
        }
        r
    };
    let (_, r, ()) = tokio::join!(signal, serving, management);
    // Refusals answered before the listeners closed are audited before the store goes
    // (their writer may be waiting behind a long write or a locked table).
    if !refusals.flush(AUDIT_FLUSH).await {
        tracing::warn!(
            waited_secs = AUDIT_FLUSH.as_secs(),
            "refused exchanges still queued for the audit log at exit were not written"
        );
    }
    // Only now: a management write in flight still had its store.
    drop(change_feed);
    store.close().await;
    r
}

/// Longest wait at exit for refusals still queued for the audit log: short beside the
/// pod's termination grace, which must also cover the drain delay and the requests in
/// flight (`istio/`: 45 s for 5 + 30).
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// Re-reads the transit key whenever the store's change version moves (another
/// replica rotated or retired a version under the maintenance lock), so every replica
/// serves the same JWKS at once. Mapping writes move it too: one key read each, rare.
pub fn spawn_key_reload(
    state: &AppState,
    signer: Arc<TransitSigner>,
) -> Option<crate::server::AbortOnDrop> {
    let mut rx = state.changes.clone()?;
    Some(AbortOnDrop(tokio::spawn(async move {
        // The first version seen is the start-up state: the key was just loaded.
        let _ = rx.borrow_and_update();
        while rx.changed().await.is_ok() {
            if let Err(e) = signer.refresh().await {
                tracing::warn!(error = %e, "re-reading the transit key after a change failed");
            }
        }
    })))
}

/// A task aborted when this goes.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the [`crate::change_feed::ChangeFeed`]: every new change version drops the
/// state's policy snapshots and minted tokens; `state.changes` subscribes to it.
pub fn start_change_feed(
    store: Arc<SqlStore>,
    cfg: &Config,
    state: &mut AppState,
) -> Result<crate::change_feed::ChangeFeed, ServeError> {
    let views = state.clone();
    let on_change: crate::change_feed::OnChange = Arc::new(move |_version| {
        views.store.invalidate();
        if let Some(c) = &views.cache {
            c.clear(views.clock.now());
        }
        // Another replica's revocation is enforced here now, not at the next refresh.
        let revocations = Arc::clone(&views.revocations);
        let now = views.clock.now();
        tokio::spawn(async move {
            if let Err(e) = revocations.refresh(now).await {
                tracing::warn!(error = %e, "revocation refresh after a change failed");
            }
        });
    });
    // Cut off from the store (no notification, no version check), the policy cache's
    // expiry bounds staleness: past it, minted tokens (served without a policy read)
    // go too, so a mapping deleted meanwhile is not granted from the cache.
    let views = state.clone();
    let policy_bound = Duration::from_secs(cfg.store.policy_cache_secs);
    let on_outage: crate::change_feed::OnOutage = Arc::new(move |failing_for| {
        if failing_for >= policy_bound {
            if let Some(c) = &views.cache {
                c.clear(views.clock.now());
            }
        }
    });
    let feed = crate::change_feed::ChangeFeed::start(
        store,
        Duration::from_millis(cfg.store.change_check_interval_ms),
        on_change,
        on_outage,
        &state.metrics,
    )
    .map_err(|e| ServeError::Signer(format!("metrics: {e}")))?;
    state.changes = Some(feed.subscribe());
    state.store_confirmed = Some(feed.confirmed());
    Ok(feed)
}

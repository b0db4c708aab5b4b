//! Wiring for `meshpass-exchange serve`: store, issuer keys, signer, listener, graceful
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{app, AppState};
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::keys::IssuerKeys;
use crate::signer::Signer;
use crate::store::{seed, MappingStore, SqlStore, StoreError};

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The signer could not be built.
    #[error("signer: {0}")]
    Signer(String),
    /// Binding or serving the listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Migrates and seeds the store; when the database is down, keeps retrying in the
/// background (the service answers 503 and `/readyz` says why meanwhile).
pub async fn prepare_store(store: Arc<SqlStore>, cfg: &Config) {
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
        Ok(()) => {}
        Err(e @ (StoreError::Invalid { .. } | StoreError::Conflict(_))) => {
            tracing::error!(error = %e, "seeding mappings from the configuration failed");
        }
        Err(e) => {
            tracing::warn!(error = %e, "store not ready; retrying in the background");
            tokio::spawn(async move {
                let mut backoff = Duration::from_secs(1);
                loop {
                    tokio::time::sleep(backoff).await;
                    match attempt().await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "store still not ready");
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            });
        }
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
    tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
}

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `grace` for in-flight requests.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = tx.send(());
    };
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(signal);
    let deadline = async move {
        if rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r.map_err(ServeError::Io),
        _ = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time");
            Ok(())
        }
    }
}

/// Builds the signer of `[vault]`.
pub async fn build_signer(cfg: &Config) -> Result<Arc<dyn Signer>, ServeError> {
    let _ = &cfg.vault;
    Err(ServeError::Signer(
        "the Vault transit signer is not wired in this build yet".into(),
    ))
}

/// `meshpass-exchange serve`.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim)?);
    prepare_store(Arc::clone(&store), &cfg).await;
    let keys = IssuerKeys::from_config(&cfg)?;
    if tokio::time::timeout(Duration::from_secs(10), keys.refresh_all())
        .await
        .is_err()
    {
        tracing::warn!("loading issuer keys took longer than 10 s; continuing in the background");
    }
    let _refreshers = keys.spawn_refresh();
    let signer = build_signer(&cfg).await?;
    let state = AppState::new(
        &cfg,
        signer,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )?;
    let listener = TcpListener::bind(cfg.server.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, issuer = %cfg.token.issuer, "meshpass-exchange listening");
    let r = serve_on(
        listener,
        state,
        shutdown_signal(),
        Duration::from_secs(cfg.server.shutdown_grace_secs),
    )
    .await;
    store.close().await;
    r
}

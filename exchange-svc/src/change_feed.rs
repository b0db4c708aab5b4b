//! Cross-replica invalidation: every replica learns of every committed write to the
//! shared store and drops its in-memory views (policy snapshots, minted tokens, and
//! whatever else subscribes).
//!
//! Two paths feed one [`tokio::sync::watch`] channel carrying the store's change
//! version (`store/changes.rs`):
//! - **notifications** (PostgreSQL): a dedicated connection `LISTEN`s on
//!   `meshpass_changes`; a write's `NOTIFY` arrives within milliseconds of its commit.
//!   A dropped connection is re-opened with backoff (0.1 s … 5 s), logged and counted
//!   (`meshpass_change_listener_reconnects_total`); after every (re)connect the version
//!   is checked at once, since notifications sent while it was down are lost;
//! - **the periodic check** (both backends): every `store.change_check_interval_ms`
//!   the version is read (one primary-key row); a difference means a notification was
//!   missed, and the views are dropped all the same
//!   (`meshpass_change_fallback_invalidations_total`).
//!
//! A write is therefore enforced by every replica within the notification latency, or,
//! when notifications fail, within one check interval (default 1 s: one tiny query per
//! replica per second, and the same bound the notifications aim at).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::store::{SqlStore, CHANGE_CHANNEL};

/// Called with the new version whenever the store changed.
pub type OnChange = Arc<dyn Fn(i64) + Send + Sync>;
/// What the feed runs after each failed version check, with how long checks have
/// failed: views that nothing else expires can be dropped once the outage is long.
pub type OnOutage = Arc<dyn Fn(Duration) + Send + Sync>;

/// The listener's `application_name` (operators and tests find its backend by it).
pub const LISTENER_APPLICATION_NAME: &str = "meshpass-change-listener";

/// Longest wait between two reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The feed's metrics.
#[derive(Clone)]
struct FeedMetrics {
    version: prometheus::IntGauge,
    listener_up: prometheus::IntGauge,
    notifications: prometheus::IntCounter,
    reconnects: prometheus::IntCounter,
    fallback: prometheus::IntCounter,
}

impl FeedMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        use prometheus::{IntCounter, IntGauge};
        Ok(FeedMetrics {
            version: IntGauge::new(
                "meshpass_change_version",
                "The store's change version this replica has applied.",
            )?,
            listener_up: IntGauge::new(
                "meshpass_change_listener_up",
                "1 while the LISTEN connection to PostgreSQL is open (0: down or SQLite).",
            )?,
            notifications: IntCounter::new(
                "meshpass_change_notifications_total",
                "Change notifications received from PostgreSQL.",
            )?,
            reconnects: IntCounter::new(
                "meshpass_change_listener_reconnects_total",
                "Times the LISTEN connection was lost or could not be opened.",
            )?,
            fallback: IntCounter::new(
                "meshpass_change_fallback_invalidations_total",
                "Changes found by the periodic version check (a notification was missed).",
            )?,
        })
    }

    fn register(&self, m: &crate::metrics::Metrics) {
        for c in [
            Box::new(self.version.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.listener_up.clone()),
            Box::new(self.notifications.clone()),
            Box::new(self.reconnects.clone()),
            Box::new(self.fallback.clone()),
        ] {
            if let Err(e) = m.register(c) {
                tracing::warn!(error = %e, "change feed metric not registered");
            }
        }
    }
}

/// When the store last showed this replica it is in step: a version check that
/// answered (counted from its start), or a notification received. A cache hit reads no
/// policy; past a bound of silence (a partition that swallows packets makes each check
/// hang for a whole acquire timeout before it even fails) it must not be served.
#[derive(Debug)]
pub struct Confirmed {
    origin: Instant,
    ms: AtomicU64,
}

impl Confirmed {
    /// Confirmed now (the store was just reached to start the replica).
    fn new() -> Self {
        Confirmed {
            origin: Instant::now(),
            ms: AtomicU64::new(0),
        }
    }

    fn mark(&self, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        self.ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the store last confirmed this replica's views.
    pub fn age(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.ms.load(Ordering::Relaxed)))
    }
}

/// Shared between the two tasks: the last applied version and the callback.
struct Applier {
    confirmed: Arc<Confirmed>,
    tx: watch::Sender<Option<i64>>,
    on_change: OnChange,
    on_outage: OnOutage,
    metrics: FeedMetrics,
}

impl Applier {
    /// Applies `version` when it is news: from a notification only when newer (a late
    /// notification must not move the version back), from the check when different
    /// (a re-created database starts again from 0). Whether it was applied.
    fn apply(&self, version: i64, from_check: bool) -> bool {
        let mut changed = false;
        self.tx.send_if_modified(|cur| {
            let news = match *cur {
                None => true,
                Some(c) if from_check => c != version,
                Some(c) => version > c,
            };
            if news {
                if cur.is_some() && from_check {
                    self.metrics.fallback.inc();
                }
                *cur = Some(version);
                changed = true;
            }
            news
        });
        if changed {
            self.metrics.version.set(version);
            (self.on_change)(version);
            tracing::debug!(
                version,
                from_check,
                "store changed: in-memory views dropped"
            );
        }
        changed
    }
}

/// The running feed; its tasks stop when it is dropped.
pub struct ChangeFeed {
    rx: watch::Receiver<Option<i64>>,
    confirmed: Arc<Confirmed>,
    check_now: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("version", &*self.rx.borrow())
            .finish_non_exhaustive()
    }
}

impl ChangeFeed {
    /// Starts the periodic check (every `interval`) and, on PostgreSQL, the listener;
    /// `on_change` runs on every new version (also the first one read), `on_outage`
    /// after every failed check, with the time since the store last confirmed. Metrics are registered in `metrics`.
    pub fn start(
        store: Arc<SqlStore>,
        interval: Duration,
        on_change: OnChange,
        on_outage: OnOutage,
        metrics: &crate::metrics::Metrics,
    ) -> Result<ChangeFeed, prometheus::Error> {
        let metrics = {
            let fm = FeedMetrics::new()?;
            fm.register(metrics);
            fm
        };
        let (tx, rx) = watch::channel(None);
        let confirmed = Arc::new(Confirmed::new());
        let applier = Arc::new(Applier {
            confirmed: Arc::clone(&confirmed),
            tx,
            on_change,
            on_outage,
            metrics,
        });
        let check_now = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(check_loop(
            Arc::clone(&store),
            interval,
            Arc::clone(&applier),
            Arc::clone(&check_now),
        ))];
        if let Some(url) = store.listen_url() {
            tasks.push(tokio::spawn(listen_loop(
                url.to_string(),
                applier,
                Arc::clone(&check_now),
            )));
        }
        Ok(ChangeFeed {
            rx,
            confirmed,
            check_now,
            tasks,
        })
    }

    /// When the store last confirmed this replica's views.
    pub fn confirmed(&self) -> Arc<Confirmed> {
        Arc::clone(&self.confirmed)
    }

    /// The change version as it moves (None until first read). Subscribers (e.g. the
    /// revocation view) reload when it changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.rx.clone()
    }

    /// The last applied version.
    pub fn version(&self) -> Option<i64> {
        *self.rx.borrow()
    }

    /// Runs the version check now instead of at the next tick.
    pub fn check_now(&self) {
        self.check_now.notify_one();
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn check_loop(
    store: Arc<SqlStore>,
    interval: Duration,
    applier: Arc<Applier>,
    check_now: Arc<Notify>,
) {
    // Whether the last check failed (the outage is logged once).
    let mut failing = false;
    loop {
        let started = Instant::now();
        match store.change_version().await {
            Ok(v) => {
                failing = false;
                applier.confirmed.mark(started);
                applier.apply(v, true);
            }
            // Before migration 5 ran, or while the database is down: the policy cache's
            // own expiry bounds staleness meanwhile.
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "change version check failed; retrying");
                    failing = true;
                }
                (applier.on_outage)(applier.confirmed.age());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = check_now.notified() => {}
        }
    }
}

async fn connect_listener(url: &str) -> Result<PgListener, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?.application_name(LISTENER_APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await?;
    let mut l = PgListener::connect_with(&pool).await?;
    // A lost connection makes try_recv answer at once; reconnecting (with backoff and
    // a version check) is ours.
    l.eager_reconnect(false);
    l.listen(CHANGE_CHANNEL).await?;
    Ok(l)
}

async fn listen_loop(url: String, applier: Arc<Applier>, check_now: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect_listener(&url).await {
            Ok(mut l) => {
                applier.metrics.listener_up.set(1);
                backoff = Duration::from_millis(100);
                tracing::info!(channel = CHANGE_CHANNEL, "listening for store changes");
                // Anything sent while we were not listening is lost: check at once.
                check_now.notify_one();
                loop {
                    match l.try_recv().await {
                        Ok(Some(n)) => {
                            applier.confirmed.mark(Instant::now());
                            applier.metrics.notifications.inc();
                            match n.payload().trim().parse::<i64>() {
                                Ok(v) => {
                                    // Not newer than what was applied: late, or the
                                    // store went back (a restore); the check decides.
                                    if !applier.apply(v, false) {
                                        check_now.notify_one();
                                    }
                                }
                                Err(_) => check_now.notify_one(),
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("change listener connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "change listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change listener cannot connect");
            }
        }
        applier.metrics.listener_up.set(0);
        applier.metrics.reconnects.inc();
        check_now.notify_one();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

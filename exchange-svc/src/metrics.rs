//! Prometheus metrics (text exposition format at `/metrics`).

use prometheus::core::Collector as _;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    Opts, Registry, TextEncoder,
};

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The prometheus library refused a metric definition or failed to encode.
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The encoded text is not UTF-8.
    #[error("metrics output is not UTF-8")]
    Utf8,
}

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Exchanges by outcome (`issued`, `cached`, or the error code) and resource.
    pub exchanges: IntCounterVec,
    /// Whole-exchange latency by path (`cold`, `warm`, `error`).
    pub exchange_seconds: HistogramVec,
    /// `exchange_seconds{path}` of each path, resolved once (no label lookup per request).
    pub path_seconds: PathSeconds,
    /// Signing latency by outcome.
    pub sign_seconds: HistogramVec,
    /// Token cache hits.
    pub cache_hits: IntCounter,
    /// Token cache misses.
    pub cache_misses: IntCounter,
    /// Subject/actor tokens served from the verified-subject cache (no signature check).
    pub subject_cache_hits: IntCounter,
    /// Subject/actor tokens verified in full.
    pub subject_cache_misses: IntCounter,
    /// Seconds since each issuer's keys were last loaded.
    pub jwks_age: GaugeVec,
    /// Number of keys held per issuer.
    pub jwks_keys: GaugeVec,
    /// Cached tokens.
    pub cache_entries: Gauge,
    /// Revocations in this replica's set (lapsed ones excluded).
    pub revocations_active: Gauge,
    /// The revocation store version this replica's set reflects.
    pub revocation_version: Gauge,
}

/// The `meshpass_exchange_duration_seconds` series of each path.
#[derive(Clone, Debug)]
pub struct PathSeconds {
    /// `path="cold"`.
    pub cold: Histogram,
    /// `path="warm"`.
    pub warm: Histogram,
    /// `path="error"`.
    pub error: Histogram,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let exchanges = IntCounterVec::new(
            Opts::new(
                "meshpass_exchanges_total",
                "Token exchanges by outcome and resource.",
            ),
            &["outcome", "resource"],
        )?;
        let exchange_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meshpass_exchange_duration_seconds",
                "Latency of POST /token, by path (cold: minted, warm: cached, error).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["path"],
        )?;
        let sign_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meshpass_sign_duration_seconds",
                "Latency of signing one participant token (Vault transit), by outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let cache_hits = IntCounter::new("meshpass_token_cache_hits_total", "Token cache hits.")?;
        let cache_misses =
            IntCounter::new("meshpass_token_cache_misses_total", "Token cache misses.")?;
        let subject_cache_hits = IntCounter::new(
            "meshpass_subject_cache_hits_total",
            "Subject/actor tokens found in the verified-subject cache (claims re-checked, signature not).",
        )?;
        let subject_cache_misses = IntCounter::new(
            "meshpass_subject_cache_misses_total",
            "Subject/actor tokens verified in full (signature included).",
        )?;
        let jwks_age = GaugeVec::new(
            Opts::new(
                "meshpass_issuer_jwks_age_seconds",
                "Seconds since the issuer's keys were last loaded (-1: never).",
            ),
            &["issuer"],
        )?;
        let jwks_keys = GaugeVec::new(
            Opts::new("meshpass_issuer_jwks_keys", "Usable keys held per issuer."),
            &["issuer"],
        )?;
        let cache_entries = Gauge::new("meshpass_token_cache_entries", "Cached tokens.")?;
        registry.register(Box::new(exchanges.clone()))?;
        registry.register(Box::new(exchange_seconds.clone()))?;
        registry.register(Box::new(sign_seconds.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(subject_cache_hits.clone()))?;
        registry.register(Box::new(subject_cache_misses.clone()))?;
        registry.register(Box::new(jwks_age.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        let revocations_active = Gauge::new(
            "meshpass_revocations_active",
            "Revocations this replica enforces.",
        )?;
        let revocation_version = Gauge::new(
            "meshpass_revocation_version",
            "Revocation store version this replica's set reflects (the feed's version).",
        )?;
        registry.register(Box::new(revocations_active.clone()))?;
        registry.register(Box::new(revocation_version.clone()))?;
        let path_seconds = PathSeconds {
            cold: exchange_seconds.get_metric_with_label_values(&["cold"])?,
            warm: exchange_seconds.get_metric_with_label_values(&["warm"])?,
            error: exchange_seconds.get_metric_with_label_values(&["error"])?,
        };
        Ok(Metrics {
            registry,
            exchanges,
            exchange_seconds,
            path_seconds,
            sign_seconds,
            cache_hits,
            cache_misses,
            subject_cache_hits,
            subject_cache_misses,
            jwks_age,
            jwks_keys,
            cache_entries,
            revocations_active,
            revocation_version,
        })
    }

    /// Registers an extra collector (e.g. the Vault client's token TTL gauge).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), MetricsError> {
        Ok(self.registry.register(c)?)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|_| MetricsError::Utf8)
    }
}

/// A Prometheus counter that shows a count kept elsewhere (an atomic the hot path
/// bumps without touching prometheus), brought up to it at scrape time. The catch-up is
/// serialised: two scrapes at once (two Prometheus servers) would otherwise both add the
/// same difference, and a counter never comes back down.
#[derive(Debug)]
pub struct Mirrored {
    counter: prometheus::IntCounter,
    sync: std::sync::Mutex<()>,
}

impl Mirrored {
    /// Mirrors into `counter`.
    pub fn new(counter: prometheus::IntCounter) -> Mirrored {
        Mirrored {
            counter,
            sync: std::sync::Mutex::new(()),
        }
    }

    /// Its description, for [`prometheus::core::Collector::desc`].
    pub fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    /// The counter brought up to `count` (never down), collected.
    pub fn collect_at(&self, count: u64) -> Vec<prometheus::proto::MetricFamily> {
        let _serial = match self.sync.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let cur = self.counter.get();
        if count > cur {
            self.counter.inc_by(count - cur);
        }
        self.counter.collect()
    }
}

#[cfg(test)]
mod mirrored_tests {
    #![allow(clippy::unwrap_used)]
    use super::Mirrored;
    use std::sync::Arc;

    #[test]
    fn scrapes_at_once_bring_the_counter_to_the_count_exactly_once() {
        let m = Arc::new(Mirrored::new(
            prometheus::IntCounter::new("t_total", "t").unwrap(),
        ));
        // The count stands still while several scrapes catch up to it at once: an
        // unserialised catch-up adds the same difference twice, and it sticks.
        const ROUNDS: u64 = 20_000;
        const SCRAPERS: usize = 3;
        let step = Arc::new(std::sync::Barrier::new(SCRAPERS + 1));
        let threads: Vec<_> = (0..SCRAPERS)
            .map(|_| {
                let (m, step) = (Arc::clone(&m), Arc::clone(&step));
                std::thread::spawn(move || {
                    for n in 1..=ROUNDS {
                        step.wait();
                        m.collect_at(n);
                        step.wait();
                    }
                })
            })
            .collect();
        let mut over = 0;
        for n in 1..=ROUNDS {
            step.wait();
            step.wait();
            if m.counter.get() != n {
                over += 1;
                m.counter.reset();
                m.counter.inc_by(n);
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(over, 0, "rounds where the counter passed the count");
        // Never down.
        m.collect_at(3);
        assert_eq!(m.counter.get(), ROUNDS);
    }
}

//! Exchange counts by mapping and outcome (a Prometheus counter: mapping names are
//! configured entities, so the label set is bounded), and the top subjects by rate as a
//! bounded view at `/api/v1/stats`: never a metric label per SPIFFE ID.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};

use super::config::Role;
use super::error::MgmtError;
use super::MgmtState;

/// Subjects shown by `/api/v1/stats`.
pub const TOP_SUBJECTS: usize = 100;
/// Subjects counted per window; new subjects beyond it are only counted in `untracked`.
const MAX_TRACKED: usize = 10_000;
/// The rate window.
const WINDOW: Duration = Duration::from_secs(60);

struct Windows {
    started: Instant,
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
    untracked: u64,
}

/// Exchange statistics shared by the token endpoint and the management API.
pub struct ExchangeStats {
    by_mapping: IntCounterVec,
    windows: Mutex<Windows>,
}

impl std::fmt::Debug for ExchangeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeStats").finish_non_exhaustive()
    }
}

/// One subject's rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectRate {
    /// The subject's SPIFFE ID.
    pub subject: String,
    /// Exchanges per second over about the last minute.
    pub per_second: f64,
}

/// One mapping × outcome count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingCount {
    /// The mapping name (empty when the exchange was refused before one was chosen).
    pub mapping: String,
    /// `issued`, `cached`, or the RFC 6749 error code.
    pub outcome: String,
    /// Exchanges since the process started.
    pub count: u64,
}

/// `/api/v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsView {
    /// Exchanges by mapping and outcome.
    pub by_mapping: Vec<MappingCount>,
    /// At most [`TOP_SUBJECTS`] subjects, fastest first.
    pub top_subjects: Vec<SubjectRate>,
    /// Exchanges of subjects beyond the tracking bound in this window.
    pub untracked: u64,
}

impl ExchangeStats {
    /// New statistics (register [`ExchangeStats::collector`] to export the counter).
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(ExchangeStats {
            by_mapping: IntCounterVec::new(
                Opts::new(
                    "meshpass_mapping_exchanges_total",
                    "Token exchanges by mapping name and outcome (issued, cached, or the error code).",
                ),
                &["mapping", "outcome"],
            )?,
            windows: Mutex::new(Windows {
                started: Instant::now(),
                current: HashMap::new(),
                previous: HashMap::new(),
                untracked: 0,
            }),
        })
    }

    /// The top subjects by rate over the last minute at `now`, and the exchanges not
    /// tracked by subject (over the bound).
    fn top_subjects(&self, now: Instant) -> (Vec<SubjectRate>, u64) {
        let mut w = self.lock();
        Self::roll(&mut w, now);
        // The previous window weighs what part of it still lies in the last minute.
        let elapsed = now.saturating_duration_since(w.started).as_secs_f64();
        let weight = 1.0 - (elapsed / WINDOW.as_secs_f64()).min(1.0);
        let mut rates: HashMap<&str, f64> = HashMap::new();
        for (s, n) in &w.previous {
            *rates.entry(s.as_str()).or_default() += *n as f64 * weight;
        }
        for (s, n) in &w.current {
            *rates.entry(s.as_str()).or_default() += *n as f64;
        }
        let secs = WINDOW.as_secs_f64();
        let mut v: Vec<SubjectRate> = rates
            .into_iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(s, n)| SubjectRate {
                subject: s.to_string(),
                per_second: n / secs,
            })
            .collect();
        v.sort_by(|a, b| {
            b.per_second
                .total_cmp(&a.per_second)
                .then_with(|| a.subject.cmp(&b.subject))
        });
        v.truncate(TOP_SUBJECTS);
        (v, w.untracked)
    }

    /// The counter, for a Prometheus registry.
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.by_mapping.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        match self.windows.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Moves the windows on in whole steps from when the current one started: a window
    /// restarted at the call instead would make counts up to two minutes old weigh as
    /// if just made, on the first look after a quiet spell.
    fn roll(w: &mut Windows, now: Instant) {
        let age = now.saturating_duration_since(w.started);
        if age < WINDOW {
            return;
        }
        if age >= WINDOW * 2 {
            w.previous = HashMap::new();
            w.current.clear();
            w.started = now;
        } else {
            w.previous = std::mem::take(&mut w.current);
            w.started += WINDOW;
        }
        w.untracked = 0;
    }

    /// Counts one exchange: `subject` (empty when unknown), `mapping` (empty when none
    /// was chosen), `outcome`.
    pub fn record(&self, subject: &str, mapping: &str, outcome: &str) {
        self.by_mapping.with_label_values(&[mapping, outcome]).inc();
        self.record_subject(subject, Instant::now());
    }

    fn record_subject(&self, subject: &str, now: Instant) {
        if subject.is_empty() {
            return;
        }
        let mut w = self.lock();
        Self::roll(&mut w, now);
        if let Some(n) = w.current.get_mut(subject) {
            *n += 1;
        } else if w.current.len() < MAX_TRACKED {
            w.current.insert(subject.to_string(), 1);
        } else {
            w.untracked += 1;
        }
    }

    /// The bounded view.
    pub fn view(&self) -> StatsView {
        let (top_subjects, untracked) = self.top_subjects(Instant::now());
        let mut by_mapping = Vec::new();
        for family in prometheus::core::Collector::collect(&self.by_mapping) {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                by_mapping.push(MappingCount {
                    mapping: label("mapping"),
                    outcome: label("outcome"),
                    count: m.get_counter().get_value() as u64,
                });
            }
        }
        by_mapping.sort_by(|a, b| (&a.mapping, &a.outcome).cmp(&(&b.mapping, &b.outcome)));
        StatsView {
            by_mapping,
            top_subjects,
            untracked,
        }
    }
}

/// `GET /api/v1/stats`.
pub async fn view(
    State(st): State<MgmtState>,
    headers: HeaderMap,
) -> Result<Json<StatsView>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    Ok(Json(st.stats.view()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rate(stats: &ExchangeStats, at: Instant) -> f64 {
        let (top, _) = stats.top_subjects(at);
        top.iter()
            .find(|s| s.subject == "spiffe://td/web")
            .map_or(0.0, |s| s.per_second)
    }

    #[test]
    fn an_exchange_made_110_seconds_ago_weighs_only_what_of_its_window_lies_in_the_last_minute() {
        let stats = ExchangeStats::new().unwrap();
        let t0 = stats.lock().started;
        stats.record_subject("spiffe://td/web", t0 + Duration::from_secs(1));
        let full = 1.0 / WINDOW.as_secs_f64();
        assert_eq!(rate(&stats, t0 + Duration::from_secs(30)), full);
        // Quiet since: the first look comes 110 s after the window began. Its window
        // ended 50 s ago, so 10 s of it lie in the last minute: a sixth.
        let later = rate(&stats, t0 + Duration::from_secs(110));
        assert!(
            (later - full / 6.0).abs() < 1e-9,
            "an exchange 109 s old weighs {later}/s (full rate {full}/s)"
        );
        // Two windows on, nothing is left.
        assert_eq!(rate(&stats, t0 + Duration::from_secs(181)), 0.0);
    }

    #[test]
    fn steady_traffic_reads_the_same_whenever_it_is_looked_at() {
        let stats = ExchangeStats::new().unwrap();
        let t0 = stats.lock().started;
        for s in 0..300u64 {
            let at = t0 + Duration::from_millis(s * 1000 + 500);
            stats.record_subject("spiffe://td/web", at);
            // One a second, whichever second of a window it is looked at.
            if [150, 170, 200, 239, 299].contains(&s) {
                let r = rate(&stats, at);
                assert!((r - 1.0).abs() < 0.05, "at {s} s: {r}/s");
            }
        }
    }
}

//! How long a run will take, printed before it starts (a full `make bench` is long: the
//! 10-minute soak and 100,000 distinct tokens through the filter). Rough: measured
//! seconds plus the fixed costs seen on the 2-core development machine under load
//! (start-ups, warm-ups, minting tokens in the debug-built orchestrator at about 1,600
//! per second); the filling of the filter's cache is bounded by the miss rate, assumed
//! here at 300 per second.

/// The sections' sizes.
pub struct Plan {
    /// Proxy rows, repetitions, seconds per measurement, whether the miss row (and its
    /// minted tokens) is in (None: section off).
    pub proxy: Option<(usize, usize, f64, bool)>,
    /// Exchange concurrencies, repetitions, seconds (None: off).
    pub exchange: Option<(usize, usize, f64)>,
    /// Filter scaling: distinct tokens, seconds per hit measurement (None: off).
    pub scaling: Option<(u64, f64)>,
    /// Soak seconds and slice seconds (None: off).
    pub soak: Option<(f64, f64)>,
    /// Mapping steps, concurrencies per step, seconds, refresh samples (None: off).
    pub mappings: Option<(usize, usize, f64, usize)>,
    /// Several replicas: rows per repetition, repetitions, seconds (None: off).
    pub replicas: Option<(usize, usize, f64)>,
    /// Instructions per request under callgrind: rows, N, passes (None: off).
    pub instructions: Option<(usize, u64, usize)>,
}

/// wrk runs whole seconds.
fn w(secs: f64) -> f64 {
    secs.ceil().max(1.0)
}

/// Tokens minted per second by the orchestrator (two threads, debug build).
const MINT_PER_SEC: f64 = 1_600.0;
/// Misses per second assumed while filling the filter's cache.
const MISS_PER_SEC: f64 = 300.0;

impl Plan {
    /// Seconds per section, in run order.
    pub fn estimate(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        if let Some((rows, reps, secs, miss)) = self.proxy {
            // Start-up, one warm-up second per row, the miss tokens (at least 3,500/s of
            // each measurement; twice the warm-up's miss rate where that is more), the
            // measurements.
            let mint = if miss {
                (reps + 1) as f64 * (3_500.0 * secs + 100.0) / MINT_PER_SEC
            } else {
                0.0
            };
            out.push((
                "proxy",
                15.0 + rows as f64 + mint + (rows * reps) as f64 * w(secs),
            ));
        }
        if let Some((rows, n, passes)) = self.instructions {
            // Envoy's start-up under valgrind (V8 compiling every module), then about
            // 3.5 ms per request and a second per dump: 3N requests per row and pass.
            let requests = (rows as u64 * (passes as u64 * 3 * n + 100)) as f64;
            out.push((
                "callgrind",
                60.0 + requests * 0.0035 + (2 * rows * passes) as f64,
            ));
        }
        if let Some((concs, reps, secs)) = self.exchange {
            // Six rows per concurrency, warm-ups, start-ups and cold-token minting
            // (a third as many at concurrency 1).
            let mint =
                reps as f64 * (concs as f64 - 2.0 / 3.0) * crate::exchange::COLD_RATE_BOUND * secs
                    / MINT_PER_SEC;
            out.push((
                "exchange",
                20.0 + mint + (6 * concs * reps) as f64 * (w(secs) + 2.0),
            ));
        }
        if let Some((tokens, secs)) = self.scaling {
            let steps = [1u64, 10, 100, 1_000, 4_096, 10_000, 30_000, 100_000]
                .iter()
                .filter(|n| **n <= tokens)
                .count() as f64;
            let t = tokens as f64;
            out.push((
                "scaling",
                15.0 + t / MINT_PER_SEC + t / MISS_PER_SEC + steps * (w(secs) + 2.0),
            ));
        }
        if let Some((secs, slice)) = self.soak {
            // Only the first slice's tokens are minted before it; the rest while it runs.
            out.push((
                "soak",
                15.0 + secs + (2_000.0 * slice + 100.0) / MINT_PER_SEC,
            ));
        }
        if let Some((steps, concs, secs, refresh)) = self.mappings {
            // Two backends; per step a restart, a warm-up, the measurements and the
            // refresh samples (each waits the 2 s policy snapshot out).
            let per_step = 3.0 + concs as f64 * w(secs) + refresh as f64 * 2.3;
            out.push(("mappings", 10.0 + 2.0 * steps as f64 * per_step));
        }
        if let Some((rows, reps, secs)) = self.replicas {
            // Six replicas and a database to start, cold tokens minted per repetition
            // (at most 8,000 per second of a cold row), a warm-up per row.
            let mint = (reps * rows / 2) as f64 * 8_000.0 * secs / MINT_PER_SEC;
            out.push((
                "replicas",
                30.0 + mint + (rows * reps) as f64 * (w(secs) + 2.0),
            ));
        }
        out
    }

    /// One line for the log: the total and each section, in minutes.
    pub fn describe(&self) -> String {
        let parts = self.estimate();
        let total: f64 = parts.iter().map(|(_, s)| s).sum();
        let each: Vec<String> = parts
            .iter()
            .map(|(n, s)| format!("{n} {:.1}", s / 60.0))
            .collect();
        format!(
            "about {:.0} min ({} min; rough: a loaded machine takes longer)",
            total / 60.0,
            each.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_run_is_estimated_at_tens_of_minutes_and_a_smoke_at_seconds() {
        let full = Plan {
            proxy: Some((9, 5, 8.0, true)),
            exchange: Some((4, 3, 4.0)),
            scaling: Some((100_000, 4.0)),
            soak: Some((600.0, 30.0)),
            mappings: Some((4, 2, 4.0, 3)),
            replicas: Some((8, 3, 4.0)),
            instructions: Some((6, 1000, 2)),
        };
        let total: f64 = full.estimate().iter().map(|(_, s)| s).sum();
        assert!((1_500.0..3_600.0).contains(&total), "{total}");
        let smoke = Plan {
            proxy: Some((3, 1, 1.0, false)),
            exchange: None,
            scaling: None,
            soak: None,
            mappings: Some((1, 1, 1.0, 1)),
            replicas: Some((2, 1, 1.0)),
            instructions: None,
        };
        let total: f64 = smoke.estimate().iter().map(|(_, s)| s).sum();
        assert!(total < 90.0, "{total}");
        let counted = Plan {
            instructions: Some((2, 20, 1)),
            ..smoke
        };
        let total: f64 = counted.estimate().iter().map(|(_, s)| s).sum();
        assert!(total < 180.0, "{total}");
    }
}

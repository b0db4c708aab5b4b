//! Section 3, scaling of the filter's cache: Envoy's memory and the cache-hit cost as the
//! number of distinct tokens that went through the filter grows (1 → `max_tokens`).
//! Every new token is a miss (validation in wasm, real exchange, cache write); the cache
//! is bounded (`cache.slots`, default 4096, and a per-worker memo of 4096), so memory
//! should grow by less than 1 KiB per entry up to the bound and stay flat after it.

use std::path::Path;

use anyhow::{anyhow, Result};

use crate::machine;
use crate::proxy::MeshpassStack;
use crate::tokens::{self, Issuer};
use crate::wrk::{Load, Wrk};

/// One step.
#[derive(Clone, Debug)]
pub struct Step {
    /// Distinct tokens that have gone through the filter so far.
    pub tokens: u64,
    /// Envoy's resident memory, KiB.
    pub rss_kib: u64,
    /// Cache-hit throughput and Envoy CPU per request at this size.
    pub hit_rps: f64,
    /// Envoy CPU per cache hit, µs.
    pub hit_cpu_us: f64,
    /// Failed requests while filling and measuring.
    pub errors: u64,
}

/// Sends every token of `fresh` through the filter at least once, in bounded time.
/// wrk starts its file from the first line on every run, so each run gets the tokens
/// the previous ones did not reach (less a margin for the requests in flight when it
/// stopped), sized from the miss rate seen so far; a run that wraps has sent them all.
fn fill(wrk: &Wrk, url: &str, dir: &Path, n: u64, fresh: &[String]) -> Result<u64> {
    const CONNECTIONS: usize = 32;
    let started = std::time::Instant::now();
    // Misses run at a few hundred per second on a loaded machine; never less than 20/s.
    let bound = (fresh.len() as f64 / 20.0).max(120.0);
    let (mut next, mut errors, mut rate) = (0usize, 0u64, 100.0f64);
    let path = dir.join(format!("scale-{n}.txt"));
    loop {
        let rest = &fresh[next..];
        tokens::write_lines(&path, rest)?;
        let secs = (rest.len() as f64 / rate * 1.2).clamp(2.0, 60.0);
        let r = wrk.run(url, CONNECTIONS, secs, &Load::Bearer(path.clone(), vec![]))?;
        errors += r.errors();
        if r.wrapped > 0 {
            return Ok(errors);
        }
        rate = r.rps().max(20.0);
        // Completed requests went out in order; the last few may not have been answered.
        next += (r.requests as usize)
            .saturating_sub(CONNECTIONS)
            .min(rest.len() - 1);
        if started.elapsed().as_secs_f64() > bound {
            return Err(anyhow!(
                "sent {next} of {} new tokens in {:.0} s (bound {bound:.0} s)",
                fresh.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }
}

/// Runs the section up to `max_tokens` distinct tokens (steps ×10, plus the slot bound).
pub fn run(
    max_tokens: u64,
    secs: f64,
    dir: &Path,
    issuer: &Issuer,
    wrk: &Wrk,
    filter_wasm: &Path,
) -> Result<Vec<Step>> {
    let st = MeshpassStack::start("envoy-scaling", dir, issuer, filter_wasm)?;
    let (envoy, url) = (&st.envoy, &st.url);
    let tck = machine::clk_tck();
    let mut sizes: Vec<u64> = vec![1, 10, 100, 1_000, 4_096, 10_000, 30_000, 100_000];
    sizes.retain(|n| *n <= max_tokens);
    let mut done = 0u64;
    let mut steps = Vec::new();
    for &n in &sizes {
        // Fill: tokens done..n, each sent once (a miss: validation, exchange, cache write).
        let fresh = issuer.mint_range(50_000_000 + done, n - done);
        let errors = fill(wrk, url, dir, n, &fresh)?;
        done = n;
        let hit = Load::Static(vec![(
            "Authorization".into(),
            format!("Bearer {}", fresh[fresh.len() - 1]),
        )]);
        let c0 = machine::cpu_secs(envoy.pid(), tck);
        let r = wrk.run(url, 32, secs, &hit)?;
        let c1 = machine::cpu_secs(envoy.pid(), tck);
        let step = Step {
            tokens: n,
            rss_kib: machine::rss_kib(envoy.pid()),
            hit_rps: r.rps(),
            hit_cpu_us: (c1 - c0) * 1e6 / r.requests.max(1) as f64,
            errors: errors + r.errors(),
        };
        eprintln!(
            "[bench] scaling {:>7} tokens: Envoy RSS {:>8} KiB, hit {:>8.0} rps {:>6.1} µs/req, errors {}",
            step.tokens, step.rss_kib, step.hit_rps, step.hit_cpu_us, step.errors
        );
        steps.push(step);
    }
    Ok(steps)
}

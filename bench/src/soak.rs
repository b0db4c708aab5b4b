//! Section 4, soak: mixed traffic through one Envoy with the meshpass filter and the real
//! exchange service for a fixed time, in slices: cache hits, misses (never-seen tokens),
//! rejections (a token with a broken signature: 401 expected), and one rotation of the
//! transit key half-way. Every slice checks that no unexpected error happened and
//! samples Envoy's and the service's memory, so "flat" is a table, not a claim.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::machine;
use crate::proxy::{MeshpassStack, LOAD_CPU};
use crate::stack::TRANSIT_KEY;
use crate::tokens::{self, Issuer};
use crate::wrk::{Load, Wrk, WrkResult};

/// One slice of the soak.
#[derive(Clone, Debug)]
pub struct Slice {
    /// Seconds since the start, at the end of the slice.
    pub at_secs: f64,
    /// Cache hits served (2xx) / failed.
    pub hits: (u64, u64),
    /// Misses served / failed (any non-2xx is unexpected).
    pub misses: (u64, u64),
    /// Rejections answered 4xx / anything else (unexpected).
    pub rejections: (u64, u64),
    /// Envoy and exchange service resident memory, KiB.
    pub rss_kib: (u64, u64),
    /// Whether the transit key was rotated before this slice.
    pub rotated: bool,
}

impl Slice {
    /// Unexpected outcomes in the slice.
    pub fn unexpected(&self) -> u64 {
        self.hits.1 + self.misses.1 + self.rejections.1
    }
}

fn served(r: &WrkResult) -> (u64, u64) {
    (r.requests.saturating_sub(r.status), r.errors())
}

/// Misses per second the first slice's never-seen tokens are sized for.
const FIRST_MISS_RATE: f64 = 1_000.0;

/// Never-seen tokens for a slice: twice the expected misses, and a few spare.
fn miss_tokens_for(per_sec: f64, slice_secs: f64) -> u64 {
    (2.0 * per_sec * slice_secs).ceil() as u64 + 100
}

/// Runs the soak for `total_secs` in slices of `slice_secs`.
pub fn run(
    total_secs: f64,
    slice_secs: f64,
    dir: &Path,
    issuer: &Issuer,
    filter_wasm: &Path,
    script: &Path,
) -> Result<Vec<Slice>> {
    let st = MeshpassStack::start("envoy-soak", dir, issuer, filter_wasm)?;
    let (envoy, service, url) = (&st.envoy, &st.service, &st.url);
    let good = issuer.mint(0);
    // A valid token whose signature is broken: the filter must refuse it (401) every time.
    let bad = format!("{}AAAA", &good[..good.len() - 4]);
    let wrk = Wrk {
        script,
        cpu: Some(LOAD_CPU),
    };
    let slices = (total_secs / slice_secs).ceil().max(1.0) as usize;
    let mut next_id = 200_000_000u64;
    let mut mint_file = |i: usize, per_sec: f64| -> Result<(PathBuf, u64)> {
        let n = miss_tokens_for(per_sec, slice_secs);
        let path = dir.join(format!("soak-{i}.txt"));
        tokens::write_lines(&path, &issuer.mint_range(next_id, n))?;
        next_id += n;
        Ok((path, n))
    };
    // The first slice's never-seen tokens are minted now; every later slice's while the
    // slice before it runs (not measured: the soak judges errors and memory), sized from
    // the miss rate of the slice before that, so a faster machine or filter cannot run
    // out of them.
    let mut ready = Some(mint_file(0, FIRST_MISS_RATE)?);
    let mut last_rate = FIRST_MISS_RATE;
    let t0 = std::time::Instant::now();
    let mut out = Vec::new();
    for i in 0..slices {
        let rotated = i == slices / 2 && slices > 1;
        if rotated {
            st.bao.rotate_key(TRANSIT_KEY);
        }
        let (miss_file, per_slice) = match ready.take() {
            Some(f) => f,
            None => mint_file(i, last_rate)?,
        };
        let hit_load = Load::Static(vec![("Authorization".into(), format!("Bearer {good}"))]);
        let bad_load = Load::Static(vec![("Authorization".into(), format!("Bearer {bad}"))]);
        let miss_load = Load::Bearer(miss_file, vec![]);
        let (h, m, r, minted) = std::thread::scope(|s| {
            let h = s.spawn(|| wrk.run(url, 8, slice_secs, &hit_load));
            let m = s.spawn(|| wrk.run(url, 2, slice_secs, &miss_load));
            let minted = (i + 1 < slices).then(|| s.spawn(|| mint_file(i + 1, last_rate)));
            let r = wrk.run(url, 1, slice_secs, &bad_load);
            (h.join(), m.join(), r, minted.map(|t| t.join()))
        });
        if let Some(minted) = minted {
            ready = Some(minted.map_err(|_| anyhow!("minting panicked"))??);
        }
        let h = h.map_err(|_| anyhow!("hit load panicked"))??;
        let m = m.map_err(|_| anyhow!("miss load panicked"))??;
        let r = r?;
        let slice = Slice {
            at_secs: t0.elapsed().as_secs_f64(),
            hits: served(&h),
            misses: served(&m),
            // Every rejection is a 4xx (wrk's status count); sockets errors are unexpected.
            rejections: (
                r.status,
                r.requests.saturating_sub(r.status) + r.connect + r.read + r.write + r.timeout,
            ),
            rss_kib: (
                machine::rss_kib(envoy.pid()),
                machine::rss_kib(service.pid()),
            ),
            rotated,
        };
        eprintln!(
            "[bench] soak {:>5.0} s: hits {:?} misses {:?} rejections {:?} RSS Envoy {} KiB service {} KiB{}",
            slice.at_secs,
            slice.hits,
            slice.misses,
            slice.rejections,
            slice.rss_kib.0,
            slice.rss_kib.1,
            if rotated { " (key rotated)" } else { "" }
        );
        last_rate = (m.requests as f64 / slice_secs).max(FIRST_MISS_RATE / 2.0);
        if m.wrapped > 0 {
            return Err(anyhow!(
                "soak: the slice's never-seen tokens ran out ({per_slice})"
            ));
        }
        out.push(slice);
    }
    Ok(out)
}

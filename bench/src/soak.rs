//! Section 4, soak: mixed traffic through one Envoy with the meshpass filter and the real
//! exchange service for a fixed time, in slices: cache hits, misses (never-seen tokens),
//! rejections (a token with a broken signature: 401 expected), and one rotation of the
//! transit key half-way. Every slice checks that no unexpected error happened and
//! samples Envoy's and the service's memory, so "flat" is a table, not a claim.

use std::path::Path;

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
    let per_slice = (400.0 * slice_secs) as u64 + 100;
    let t0 = std::time::Instant::now();
    let mut out = Vec::new();
    for i in 0..slices {
        let rotated = i == slices / 2 && slices > 1;
        if rotated {
            st.bao.rotate_key(TRANSIT_KEY);
        }
        let miss_file = dir.join(format!("soak-{i}.txt"));
        tokens::write_lines(
            &miss_file,
            &issuer.mint_range(200_000_000 + i as u64 * per_slice, per_slice),
        )?;
        let hit_load = Load::Static(vec![("Authorization".into(), format!("Bearer {good}"))]);
        let bad_load = Load::Static(vec![("Authorization".into(), format!("Bearer {bad}"))]);
        let miss_load = Load::Bearer(miss_file, vec![]);
        let (h, m, r) = std::thread::scope(|s| {
            let h = s.spawn(|| wrk.run(url, 8, slice_secs, &hit_load));
            let m = s.spawn(|| wrk.run(url, 2, slice_secs, &miss_load));
            let r = wrk.run(url, 1, slice_secs, &bad_load);
            (h.join(), m.join(), r)
        });
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
        if m.wrapped > 0 {
            return Err(anyhow!(
                "soak: the slice's never-seen tokens ran out ({per_slice})"
            ));
        }
        out.push(slice);
    }
    Ok(out)
}

//! The release `.wasm` must stay under 1 MiB (it is pulled by every sidecar).
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn release_wasm_is_smaller_than_one_mebibyte() {
    let p = match std::env::var_os("MESHPASS_FILTER_WASM") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => meshpass_testkit::workspace_root()
            .join("target/wasm32-wasip1/wasm-release/meshpass_filter.wasm"),
    };
    let len = std::fs::metadata(&p)
        .unwrap_or_else(|e| {
            panic!(
                "filter wasm not found at {} ({e}); build it with `make wasm`",
                p.display()
            )
        })
        .len();
    assert!(len < 1024 * 1024, "{} is {len} bytes", p.display());
}

//! `perf record` of Envoy during one more run of a proxy row (`--profile ROW,ROW`): the
//! report by DSO (with each DSO's share of the CPU per request) and by symbol, written
//! to `bench/profiles/ROW.txt`.

use std::path::Path;

use anyhow::Result;

use crate::proxy::{Options, Row};

/// `perf record -g` of Envoy while `load` runs; the report by DSO and by symbol.
pub fn profile(
    row: Row,
    pid: u32,
    o: &Options,
    dir: &Path,
    load: impl FnOnce() -> Result<f64>,
) -> Result<()> {
    use std::process::{Command, Stdio};
    let data = dir.join(format!("perf-{}.data", row.name()));
    let mut rec = Command::new("timeout")
        .arg(format!("{}", o.secs as u64 + 60))
        .args(["perf", "record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep"])
        .arg(format!("{}", o.secs.ceil() as u64))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let cpu_us = load()?;
    rec.wait()?;
    let report = |sort: &str| -> Result<String> {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.7",
                "-g",
                "none",
                "--sort",
                sort,
                "-i",
            ])
            .arg(&data)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n"))
    };
    std::fs::create_dir_all(&o.profile_dir)?;
    let by_dso = report("dso")?;
    let split: Vec<String> = by_dso
        .lines()
        .filter_map(|l| {
            let (pct, dso) = l.trim().split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            Some(format!(
                "{:>8.2} µs/req  {}",
                pct / 100.0 * cpu_us,
                dso.trim()
            ))
        })
        .collect();
    let text = format!(
        "perf record -F 999 -g -p <envoy> during {} s of `{}` ({} connections). Envoy is a stripped\n\
         binary (its own code shows as addresses); V8's JIT'd wasm code shows as [JIT].\n\
         Envoy CPU during the profile: {:.2} µs per request.\n\n\
         By DSO (share of samples, and that share of the CPU per request):\n{}\n\n{}\n\n\
         By DSO and symbol:\n{}\n",
        o.secs,
        row.name(),
        o.connections,
        cpu_us,
        by_dso,
        split.join("\n"),
        report("dso,sym")?
    );
    std::fs::write(o.profile_dir.join(format!("{}.txt", row.name())), text)?;
    Ok(())
}

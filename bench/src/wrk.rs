//! Runs wrk (one thread, pinned to the load generator's core) with `wrk.lua` and reads
//! the figures its `done()` prints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

/// The script (embedded, written next to the run's other files).
pub const SCRIPT: &str = include_str!("wrk.lua");

/// What one wrk run sends.
#[derive(Clone, Debug)]
pub enum Load {
    /// The same GET with these headers every time.
    Static(Vec<(String, String)>),
    /// GET with `authorization: Bearer <line>`, a new line per request, plus headers.
    Bearer(PathBuf, Vec<(String, String)>),
    /// POST with the line as body, a new line per request, plus headers.
    Body(PathBuf, Vec<(String, String)>),
}

/// The figures of one run.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WrkResult {
    /// Completed requests (any status).
    pub requests: u64,
    /// Measured wall time.
    pub duration_us: u64,
    /// Socket errors.
    pub connect: u64,
    /// Read errors.
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Answers with status >= 400.
    pub status: u64,
    /// Requests over the timeout.
    pub timeout: u64,
    /// Latency mean.
    pub mean_us: f64,
    /// Latency percentiles.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest latency.
    pub max_us: u64,
    /// How often the per-request lines ran out and started again (0 = every line new).
    pub wrapped: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    /// Every failed request: socket errors, timeouts and statuses >= 400.
    pub fn errors(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// Parses the `WRKJSON` line of wrk's output.
pub fn parse_output(out: &str) -> Result<WrkResult> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .ok_or_else(|| anyhow!("wrk printed no WRKJSON line:\n{out}"))?;
    serde_json::from_str(line).with_context(|| format!("wrk summary {line}"))
}

/// A wrk invocation.
pub struct Wrk<'a> {
    /// Where `wrk.lua` is.
    pub script: &'a Path,
    /// CPU the load generator is pinned to (None: not pinned).
    pub cpu: Option<usize>,
}

impl Wrk<'_> {
    /// Writes the script into `dir`; returns its path.
    pub fn install(dir: &Path) -> Result<PathBuf> {
        let p = dir.join("wrk.lua");
        std::fs::write(&p, SCRIPT)?;
        Ok(p)
    }

    /// The command line of one run (also what the report shows).
    pub fn command(&self, url: &str, connections: usize, secs: f64, load: &Load) -> Command {
        self.command_threads(url, 1, connections, secs, load)
    }

    /// The load split over `addrs` (`host:port`, all serving `url`'s path): one wrk
    /// thread per address with `each` connections, every thread on its own share of
    /// the per-request lines (`wrk.lua`: `MESHPASS_WRK_ADDRS`, `MESHPASS_WRK_SPLIT`).
    pub fn command_split(
        &self,
        url: &str,
        addrs: &[String],
        each: usize,
        secs: f64,
        load: &Load,
    ) -> Command {
        let t = addrs.len().max(1);
        let mut cmd = self.command_threads(url, t, each * t, secs, load);
        cmd.env("MESHPASS_WRK_ADDRS", addrs.join(","))
            .env("MESHPASS_WRK_SPLIT", t.to_string());
        cmd
    }

    /// Runs [`Wrk::command_split`] and returns its figures.
    pub fn run_split(
        &self,
        url: &str,
        addrs: &[String],
        each: usize,
        secs: f64,
        load: &Load,
    ) -> Result<WrkResult> {
        run_command(self.command_split(url, addrs, each, secs, load))
    }

    fn command_threads(
        &self,
        url: &str,
        threads: usize,
        connections: usize,
        secs: f64,
        load: &Load,
    ) -> Command {
        // Bounded in time even if wrk hangs: `timeout` stops it 30 s past its duration.
        let mut cmd = Command::new("timeout");
        cmd.arg(format!("{}", wall_bound(secs).as_secs()));
        if let Some(c) = self.cpu {
            cmd.args(["taskset", "-c", &c.to_string()]);
        }
        cmd.arg("wrk");
        cmd.arg(format!("-t{threads}"))
            .args(["--latency", "--timeout", "10s"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", secs.ceil().max(1.0) as u64))
            .arg("-s")
            .arg(self.script);
        let headers = match load {
            Load::Static(h) => {
                cmd.env("MESHPASS_WRK_MODE", "static");
                h
            }
            Load::Bearer(f, h) => {
                cmd.env("MESHPASS_WRK_MODE", "bearer")
                    .env("MESHPASS_WRK_FILE", f);
                h
            }
            Load::Body(f, h) => {
                cmd.env("MESHPASS_WRK_MODE", "body")
                    .env("MESHPASS_WRK_FILE", f);
                h
            }
        };
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.arg(url);
        cmd
    }

    /// Runs wrk and returns its figures.
    pub fn run(&self, url: &str, connections: usize, secs: f64, load: &Load) -> Result<WrkResult> {
        run_command(self.command(url, connections, secs, load))
    }
}

/// Runs one wrk command line and reads its `WRKJSON` summary.
fn run_command(mut cmd: Command) -> Result<WrkResult> {
    let out = cmd
        .output()
        .context("running wrk (make setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(anyhow!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_output(&text)
}

/// A command line as a shell would show it (long arguments shortened).
pub fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.len() > 60 {
            s.push_str(&format!(" '{}…'", &a[..40]));
        } else if a.contains(' ') {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push_str(&format!(" {a}"));
        }
    }
    s
}

/// A load that runs `secs` seconds must not block longer than this.
pub fn wall_bound(secs: f64) -> Duration {
    Duration::from_secs_f64(secs + 30.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrkjson_line_is_found_among_wrks_own_output() {
        let out = "Running 1s test @ http://x\n  1 threads\nWRKJSON {\"requests\":100,\"duration_us\":1000000,\"connect\":0,\"read\":0,\"write\":0,\"status\":2,\"timeout\":1,\"mean_us\":50.5,\"p50_us\":40,\"p90_us\":60,\"p99_us\":90,\"p999_us\":120,\"max_us\":300,\"wrapped\":0}\n";
        let r = parse_output(out).unwrap();
        assert_eq!(r.requests, 100);
        assert_eq!(r.errors(), 3);
        assert!((r.rps() - 100.0).abs() < 1e-9);
        assert_eq!(r.p999_us, 120);
    }

    #[test]
    fn output_without_a_summary_is_an_error() {
        assert!(parse_output("Running 1s test").is_err());
    }
}

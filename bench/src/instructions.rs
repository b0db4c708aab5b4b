//! Instructions per request of Envoy under callgrind (`--instructions ROW,ROW`): the one
//! figure of section 1 that other tenants of the machine cannot move. CPU time per
//! request drifts with CPU steal and with what shares the caches (a busy pass put the
//! cache hit +10.6 µs over the ABI floor, a quiet one +1.7 µs); an instruction count
//! is the same for the same binary, inputs and configuration.
//!
//! One more Envoy runs the rows' listeners under `valgrind --tool=callgrind`, against the
//! same upstreams as the timed rows (the hit's one miss goes to the real exchange
//! service). Each row is driven over one keep-alive connection, N requests and then 2N,
//! the counters zeroed before and dumped after each run: (I(2N) − I(N)) / N is one
//! request, start-up, warm-up and the connection's own cost cancelling out, once
//! Envoy's idle instructions per second (counted before and after each pass) are taken
//! out of each run by its duration. Passes alternate the rows' order like the timed
//! repetitions. What it does not see: cache
//! misses and the other effects of memory traffic, which the timed rows do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use meshpass_testkit::{Envoy, EnvoyOptions};

use crate::proxy::{rep_order, Row};

/// The rows a full run counts (those of the hit's goals, and the floor with a single
/// header read beside the map read: what the default header hygiene costs), in this
/// order.
pub const DEFAULT_ROWS: [Row; 6] = [
    Row::Router,
    Row::NoopWasm,
    Row::FloorOne,
    Row::FloorMap,
    Row::MeshpassHit,
    Row::ExtAuthzHttp,
];

/// Requests each row gets before any count (the hit's miss, V8's JIT).
const WARMUP: u64 = 100;

/// How long Envoy's idle instructions are counted, before and after each pass.
const IDLE: Duration = Duration::from_secs(4);

/// Envoy's start-up under callgrind: V8 compiles every module about 50 times slower.
const START_TIMEOUT: Duration = Duration::from_secs(900);

/// What to count.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rows to count (empty: none).
    pub rows: Vec<Row>,
    /// N: the shorter run's requests (the longer one sends 2N).
    pub requests: u64,
    /// Passes over the rows.
    pub passes: usize,
}

impl Options {
    /// Nothing counted.
    pub fn none() -> Options {
        Options {
            rows: Vec::new(),
            requests: 0,
            passes: 0,
        }
    }
}

/// What [`measure`] found.
#[derive(Clone, Debug)]
pub struct Counted {
    /// Per row.
    pub counts: Vec<Count>,
    /// Envoy's instructions per second without requests, each time it was measured.
    pub idle_per_sec: Vec<f64>,
}

/// One row's instructions per request, one figure per pass.
#[derive(Clone, Debug)]
pub struct Count {
    /// The row.
    pub row: Row,
    /// Instructions per request, per pass.
    pub per_request: Vec<f64>,
}

impl Count {
    /// The mean over the passes.
    pub fn mean(&self) -> f64 {
        self.per_request.iter().sum::<f64>() / self.per_request.len().max(1) as f64
    }
}

/// Starts Envoy with `yaml` (the rows' listeners) under callgrind, writing its dumps
/// into `dir`, and counts every row of `o`; `header` goes with every request.
pub fn measure(yaml: &str, o: &Options, header: &str, dir: &Path) -> Result<Counted> {
    let out = dir.join("callgrind.out");
    let envoy = Envoy::start_with(
        yaml,
        &EnvoyOptions {
            name: "envoy-callgrind".into(),
            concurrency: 1,
            extra_args: vec!["--log-level".into(), "error".into()],
            timeout: START_TIMEOUT,
            wrapper: vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                // V8 writes and rewrites the code it runs.
                "--smc-check=all-non-file".into(),
                format!("--callgrind-out-file={}.%p", out.display()),
            ],
            ..EnvoyOptions::default()
        },
    )
    .map_err(|e| anyhow!("Envoy under callgrind: {e}"))?;
    let pid = envoy.pid();
    let port = |row: Row| -> Result<u16> {
        envoy
            .listener_port(row.name())
            .ok_or_else(|| anyhow!("no listener {}", row.name()))
    };
    for &row in &o.rows {
        drive(port(row)?, WARMUP, header).with_context(|| format!("warm-up of {}", row.name()))?;
    }
    let mut dumps = 0u32;
    // Instructions and seconds of one window: the counters zeroed, `work` done, dumped.
    let mut window = |work: &mut dyn FnMut() -> Result<()>| -> Result<(u64, f64)> {
        control(pid, "-z")?;
        let t0 = Instant::now();
        work()?;
        let secs = t0.elapsed().as_secs_f64();
        control(pid, "-d")?;
        dumps += 1;
        let file = PathBuf::from(format!("{}.{pid}.{dumps}", out.display()));
        Ok((total(&file)?, secs))
    };
    let mut counts: Vec<Count> = o
        .rows
        .iter()
        .map(|&row| Count {
            row,
            per_request: Vec::new(),
        })
        .collect();
    let mut idle = Vec::new();
    let mut sleep = || -> Result<()> {
        std::thread::sleep(IDLE);
        Ok(())
    };
    for pass in 0..o.passes {
        // What Envoy runs without requests (timers, and every module's ticks: the
        // meshpass filter's run even while another row is driven) grows with the wall
        // time, which under valgrind is ~50 times a request's: measured before and
        // after the pass and taken out of each window by its duration.
        let (n, secs) = window(&mut sleep)?;
        let before = n as f64 / secs;
        let mut raw = Vec::new();
        for i in rep_order(o.rows.len(), pass) {
            let row = o.rows[i];
            let p = port(row)?;
            let mut drive_n = |n: u64| {
                window(&mut || {
                    drive(p, n, header).with_context(|| format!("{n} requests of {}", row.name()))
                })
            };
            let short = drive_n(o.requests)?;
            let long = drive_n(2 * o.requests)?;
            raw.push((i, short, long));
        }
        let (n, secs) = window(&mut sleep)?;
        let after = n as f64 / secs;
        idle.extend([before, after]);
        let rate = (before + after) / 2.0;
        for (i, (short, t_short), (long, t_long)) in raw {
            let row = o.rows[i];
            let per = ((long as f64 - rate * t_long) - (short as f64 - rate * t_short))
                / o.requests as f64;
            if !per.is_finite() || per <= 0.0 {
                return Err(anyhow!(
                    "{}: {short} instructions in {t_short:.1} s for {} requests, {long} in {t_long:.1} s \
                     for twice as many, {rate:.0} a second idle",
                    row.name(),
                    o.requests
                ));
            }
            eprintln!(
                "[bench] callgrind pass {} {:<22} {:>10.0} instructions/request",
                pass + 1,
                row.name(),
                per
            );
            counts[i].per_request.push(per);
        }
    }
    Ok(Counted {
        counts,
        idle_per_sec: idle,
    })
}

/// The report's table: every counted row beside router only and the empty filter, and
/// the hit against the ABI floor.
pub fn render(out: &mut String, counted: &Counted, o: &Options) -> std::fmt::Result {
    use std::fmt::Write as _;
    let counts = &counted.counts;
    let of = |row: Row| counts.iter().find(|c| c.row == row).map(Count::mean);
    writeln!(
        out,
        "\n**Instructions per request** (Envoy under `valgrind --tool=callgrind`, every thread; \
         {} passes, each row {} then {} keep-alive requests, the difference over {}: \
         the machine's other load does not move these; user space only, without the kernel's \
         socket work, so the ratios exceed the timed ones; Envoy's idle instructions, {}, \
         taken out of each window by its duration):\n",
        o.passes,
        o.requests,
        2 * o.requests,
        o.requests,
        idle_rates(&counted.idle_per_sec),
    )?;
    writeln!(
        out,
        "| configuration | instructions per request (each pass) | over router only | over the empty wasm filter | × empty wasm |"
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: | ---: |")?;
    let signed = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:+.0}"));
    for c in counts {
        let m = c.mean();
        let passes: Vec<String> = c.per_request.iter().map(|v| format!("{v:.0}")).collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            c.row.describe(),
            passes.join(" / "),
            signed(of(Row::Router).map(|r| m - r)),
            signed(of(Row::NoopWasm).map(|n| m - n)),
            of(Row::NoopWasm).map_or("—".into(), |n| format!("{:.3}", m / n)),
        )?;
    }
    if let (Some(hit), Some(floor), Some(noop)) =
        (of(Row::MeshpassHit), of(Row::FloorMap), of(Row::NoopWasm))
    {
        writeln!(
            out,
            "\nThe cache hit executes {:+.0} instructions per request over the ABI floor, {:.0} % of \
             its {:+.0} over the empty filter; the floor's host calls are the other {:.0} %.",
            hit - floor,
            100.0 * (hit - floor) / (hit - noop),
            hit - noop,
            100.0 * (floor - noop) / (hit - noop),
        )?;
    }
    if let (Some(map), Some(one), Some(noop)) =
        (of(Row::FloorMap), of(Row::FloorOne), of(Row::NoopWasm))
    {
        writeln!(
            out,
            "\nReading the whole request header map, which stripping every client-sent \
             `x-meshpass-*` header needs, costs {:+.0} instructions per request over reading \
             `authorization` alone: {:.0} % of the map floor's {:+.0} over the empty filter.",
            map - one,
            100.0 * (map - one) / (map - noop),
            map - noop,
        )?;
    }
    // A paragraph of its own before what the report writes next.
    writeln!(out)?;
    Ok(())
}

fn idle_rates(v: &[f64]) -> String {
    let each: Vec<String> = v.iter().map(|r| format!("{:.0}", r)).collect();
    format!("{} a second", each.join(" / "))
}

/// `callgrind_control ARG PID` (`-z` zeroes the counters, `-d` dumps them).
fn control(pid: u32, arg: &str) -> Result<()> {
    let out = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .output()
        .context("callgrind_control (the valgrind package; `make setup` installs it)")?;
    if !out.status.success() {
        return Err(anyhow!(
            "callgrind_control {arg} {pid}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The instruction total of a callgrind dump (its `totals:` line), waiting for the file
/// (callgrind_control returns once the request is taken, the dump follows).
fn total(file: &Path) -> Result<u64> {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(n) = parse_total(&text) {
                return Ok(n);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "no callgrind dump with totals at {}",
        file.display()
    ))
}

fn parse_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `n` `GET /` over one keep-alive connection, each answered 200.
fn drive(port: u16, n: u64, header: &str) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let req = format!("GET / HTTP/1.1\r\nhost: bench\r\n{header}\r\n");
    let mut line = String::new();
    for i in 0..n {
        s.write_all(req.as_bytes())?;
        line.clear();
        r.read_line(&mut line)?;
        if line.split_whitespace().nth(1) != Some("200") {
            return Err(anyhow!("request {i}: {:?}", line.trim_end()));
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(anyhow!("request {i}: connection closed in the headers"));
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_the_totals_line_of_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 183410311\n\nfl=(1)\n\ntotals: 183423632\n";
        assert_eq!(parse_total(dump), Some(183_423_632));
        assert_eq!(parse_total("summary: 5\n"), None);
    }
}

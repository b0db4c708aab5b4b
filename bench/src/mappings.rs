//! Section 5, mapping scaling: the exchange service with 10 → 100,000 mappings in its
//! store, on SQLite and on PostgreSQL. Every mapping is for the benchmark's one resource
//! (the worst case for a lookup by resource: the whole set is one policy snapshot), each
//! for its own exact SPIFFE ID, beside the configuration's `bench` mapping (the prefix
//! `spiffe://cluster.local/*`) that the measured subject matches.
//!
//! The rows are inserted straight into the service's own schema (its migrations ran at a
//! first start) with one `INSERT … SELECT` over a generated series: 100,000 rows in
//! seconds, where the management API would take one validated transaction each. The
//! service is restarted for every step (start-up time is one of the figures), then
//! measured on the cold path with the subject cache (64 tokens repeated, minted-token
//! cache off): the policy lookup and the mapping match are on every exchange, the ES256
//! verification is not.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use meshpass_testkit::{free_port, ExchangeService, OpenBao, PgDb, Postgres};

use crate::machine;
use crate::stack::{self, ServiceKind, RESOURCE};
use crate::tokens::{self, Issuer, SUBJECT};
use crate::wrk::{Load, Wrk};

/// The store's policy snapshot lifetime (`store.policy_cache_secs`, the default).
const POLICY_CACHE_SECS: u64 = 2;

/// A store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A fresh database on the machine's PostgreSQL.
    Postgres,
}

impl Backend {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// What the section runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mappings in the store at each step, ascending.
    pub steps: Vec<u64>,
    /// Seconds per measurement.
    pub secs: f64,
    /// Concurrencies measured at each step.
    pub concurrencies: Vec<usize>,
    /// Exchanges timed right after the policy snapshot expired (each waits it out).
    pub refresh_samples: usize,
}

/// One measurement at one step and concurrency.
#[derive(Clone, Debug)]
pub struct Cell {
    /// wrk connections.
    pub concurrency: usize,
    /// Exchanges completed in the measurement.
    pub requests: u64,
    /// Exchanges per second.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Service CPU per exchange, µs.
    pub cpu_us: f64,
    /// Failed requests.
    pub errors: u64,
}

/// One step of one backend.
#[derive(Clone, Debug)]
pub struct Step {
    /// The store.
    pub backend: Backend,
    /// Mappings in the store (the configuration's one included).
    pub mappings: u64,
    /// Seconds to insert this step's new rows.
    pub insert_secs: f64,
    /// Seconds from starting the service to it serving its JWKS.
    pub start_secs: f64,
    /// The first exchange after start (policy snapshot read from the store), ms.
    pub first_ms: f64,
    /// Exchanges right after the snapshot expired (the refresh on the request path: a
    /// version check while nothing changed), the median, ms.
    pub refresh_ms: f64,
    /// Service resident memory after the measurements, KiB.
    pub rss_kib: u64,
    /// One per concurrency.
    pub cells: Vec<Cell>,
}

/// Default steps.
pub fn default_steps(quick: bool, smoke: bool) -> Vec<u64> {
    match (smoke, quick) {
        (true, _) => vec![10],
        (false, true) => vec![10, 1_000, 10_000],
        _ => vec![10, 1_000, 10_000, 100_000],
    }
}

/// Runs one SQL statement on the store (`sqlite3` or `psql`, as the benchmark's
/// loader; the service itself uses sqlx).
fn sql(backend: Backend, db: &str, statement: &str) -> Result<()> {
    let out = match backend {
        Backend::Sqlite => Command::new("sqlite3")
            .args(["-bail", db, statement])
            .output(),
        Backend::Postgres => Command::new("psql")
            .args([db, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", statement])
            .output(),
    }
    .with_context(|| format!("running the {} client", backend.name()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            backend.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Filler mappings `first..=last` (exact subjects, the benchmark's resource).
fn insert_statement(backend: Backend, first: u64, last: u64) -> String {
    let series = match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last}) "
        ),
        Backend::Postgres => {
            format!("WITH s(i) AS (SELECT generate_series({first}::bigint, {last}::bigint)) ")
        }
    };
    format!(
        "{series}INSERT INTO mappings (name, subject, resource, participant, audiences, scopes, \
         ttl_secs, rate_per_second, rate_burst, revision, updated_at, allowed_callers, allowed_actors) \
         SELECT 'fill-' || i, 'spiffe://cluster.local/ns/fill-' || i || '/sa/app', '{RESOURCE}', \
         'acme', '[]', '[\"read\"]', 3600, 0, 0, 1, 0, '[]', '[]' FROM s"
    )
}

/// One POST with `Connection: close`; its status and wall time.
fn post(port: u16, path: &str, headers: &[(String, String)], body: &str) -> Result<(u16, f64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let status = String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, ms))
}

/// Where one backend's store lives for the section (the PostgreSQL database is
/// dropped with it).
struct Store {
    url: String,
    /// What the loader connects to: the file or `postgres://…`.
    client_target: String,
    _pg: Option<PgDb>,
}

impl Store {
    fn new(backend: Backend, dir: &Path) -> Store {
        match backend {
            Backend::Sqlite => {
                let file = dir.join("mappings-scaling.db");
                Store {
                    url: format!("sqlite://{}", file.display()),
                    client_target: file.display().to_string(),
                    _pg: None,
                }
            }
            Backend::Postgres => {
                let db = Postgres::fresh_database();
                Store {
                    url: db.url(),
                    client_target: db.url(),
                    _pg: Some(db),
                }
            }
        }
    }
}

/// Runs the section on both backends.
pub fn run(o: &Options, dir: &Path, issuer: &Issuer, wrk: &Wrk) -> Result<Vec<Step>> {
    let jwks = issuer.jwks();
    let bao = stack::start_openbao();
    let headers = vec![
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        (
            "X-Forwarded-Client-Cert".to_string(),
            format!("URI={SUBJECT}"),
        ),
    ];
    let forms: Vec<String> = issuer
        .mint_range(20_000_000, 64)
        .iter()
        .map(|t| tokens::exchange_form(t, RESOURCE))
        .collect();
    let mut steps = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let store = Store::new(backend, dir);
        let mut in_store = 1u64; // the configuration's `bench` mapping
        for &n in &o.steps {
            let t = Instant::now();
            let svc_dir = dir.join(format!("mappings-{}-{n}", backend.name()));
            std::fs::create_dir_all(&svc_dir)?;
            if n > in_store {
                if in_store == 1 {
                    // The schema is the service's: let it migrate (and seed) first.
                    drop(start(&bao, &svc_dir, &jwks, &store)?);
                }
                sql(
                    backend,
                    &store.client_target,
                    &insert_statement(backend, in_store, n - 1),
                )
                .with_context(|| format!("inserting mappings up to {n}"))?;
                in_store = n;
            }
            let insert_secs = t.elapsed().as_secs_f64();
            let step = measure(o, &bao, &svc_dir, &jwks, &store, wrk, &forms, &headers)
                .map(|(start_secs, first_ms, refresh_ms, rss_kib, cells)| Step {
                    backend,
                    mappings: n.max(in_store),
                    insert_secs,
                    start_secs,
                    first_ms,
                    refresh_ms,
                    rss_kib,
                    cells,
                })
                .with_context(|| format!("{} with {n} mappings", backend.name()))?;
            for c in &step.cells {
                eprintln!(
                    "[bench] mappings {:<10} {:>7}: c{:<3} {:>7.0} exch/s p50 {:>8.2} ms p99 {:>8.2} ms {:>7.0} µs CPU/exch errors {} | start {:.2} s, first {:.1} ms, refresh {:.1} ms, RSS {} KiB",
                    backend.name(),
                    step.mappings,
                    c.concurrency,
                    c.rps,
                    c.p50_us as f64 / 1e3,
                    c.p99_us as f64 / 1e3,
                    c.cpu_us,
                    c.errors,
                    step.start_secs,
                    step.first_ms,
                    step.refresh_ms,
                    step.rss_kib
                );
            }
            steps.push(step);
        }
    }
    Ok(steps)
}

fn start(bao: &OpenBao, dir: &Path, jwks: &str, store: &Store) -> Result<ExchangeService> {
    let port = free_port();
    let mut cfg = stack::service_config(
        port,
        bao,
        dir,
        jwks,
        ServiceKind {
            token_cache: false,
            unbound_callers: false,
        },
    );
    cfg["store"] = serde_json::json!({"url": store.url, "policy_cache_secs": POLICY_CACHE_SECS});
    Ok(ExchangeService::start(dir, port, &cfg))
}

type Measured = (f64, f64, f64, u64, Vec<Cell>);

#[allow(clippy::too_many_arguments)]
fn measure(
    o: &Options,
    bao: &OpenBao,
    dir: &Path,
    jwks: &str,
    store: &Store,
    wrk: &Wrk,
    forms: &[String],
    headers: &[(String, String)],
) -> Result<Measured> {
    let t = Instant::now();
    let svc = start(bao, dir, jwks, store)?;
    let start_secs = t.elapsed().as_secs_f64();
    machine::pin(svc.pid(), crate::proxy::LOAD_CPU).ok();
    let port = svc.port();
    let first = forms.first().ok_or_else(|| anyhow!("no forms"))?;
    let (status, first_ms) = post(port, "/token", headers, first)?;
    if status != 200 {
        bail!(
            "the first exchange answered {status}\nservice log:\n{}",
            svc.log_tail(30)
        );
    }
    let url = format!("{}/token", svc.base_url());
    let forms_file = dir.join("forms.txt");
    tokens::write_lines(&forms_file, forms)?;
    let load = Load::Body(forms_file, headers.to_vec());
    // Fill the subject cache (every form once) before measuring.
    let warm = wrk.run(&url, 4, 1.0, &load)?;
    if warm.errors() > 0 {
        bail!("warm-up: {warm:?}\nservice log:\n{}", svc.log_tail(30));
    }
    let tck = machine::clk_tck();
    let mut cells = Vec::new();
    for &c in &o.concurrencies {
        let c0 = machine::cpu_secs(svc.pid(), tck);
        let r = wrk.run(&url, c, o.secs, &load)?;
        let c1 = machine::cpu_secs(svc.pid(), tck);
        cells.push(Cell {
            concurrency: c,
            requests: r.requests,
            rps: r.rps(),
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            cpu_us: (c1 - c0) * 1e6 / r.requests.max(1) as f64,
            errors: r.errors(),
        });
    }
    // The refresh on the request path: wait the snapshot out, then one exchange.
    let mut refresh = Vec::new();
    for form in forms.iter().take(o.refresh_samples.max(1)) {
        std::thread::sleep(Duration::from_millis(POLICY_CACHE_SECS * 1000 + 200));
        let (status, ms) = post(port, "/token", headers, form)?;
        if status != 200 {
            bail!("an exchange after the snapshot expired answered {status}");
        }
        refresh.push(ms);
    }
    refresh.sort_by(f64::total_cmp);
    let rss = machine::rss_kib(svc.pid());
    Ok((start_secs, first_ms, refresh[refresh.len() / 2], rss, cells))
}

/// The report's section.
pub fn write_section(out: &mut String, o: &Options, steps: &[Step]) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(out, "## 5. Mapping scaling\n")?;
    writeln!(
        out,
        "The release exchange service on SQLite and on PostgreSQL with N mappings in its store, \
         all for the one resource the exchanges ask for (each for its own exact SPIFFE ID, \
         plus the `spiffe://cluster.local/*` mapping the subject matches): the whole set is \
         the resource's policy snapshot. Rows inserted with one SQL statement into the \
         service's own schema; the service restarted at every step; then the cold path with \
         the subject cache (64 tokens repeated, minted-token cache off, so the policy lookup \
         and the mapping match run on every exchange), {} s per concurrency, wrk in its own \
         process. *Refresh* = one exchange right after the policy snapshot expired \
         (`store.policy_cache_secs` = {POLICY_CACHE_SECS}), median of {}: with nothing \
         written, a check of the store's change version confirms the snapshot, and the \
         rows are read again only once they are `store.policy_max_age_secs` old (default \
         300 s, longer than a step), at about the cost of *first* = the first exchange \
         after start (a read of the whole resource).\n",
        o.secs, o.refresh_samples
    )?;
    writeln!(out, "| store | mappings | concurrency | exchanges/s | p50 ms | p99 ms | service CPU µs/exchange | errors | insert s | start-up s | first ms | refresh ms | service RSS MiB |")?;
    writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for s in steps {
        for c in &s.cells {
            let (rps, p50, p99, cpu) = if c.requests == 0 {
                let none = "—".to_string();
                (
                    format!("**none completed in {} s**", o.secs),
                    none.clone(),
                    none.clone(),
                    none,
                )
            } else {
                (
                    format!("{:.0}", c.rps),
                    format!("{:.3}", c.p50_us as f64 / 1e3),
                    format!("{:.3}", c.p99_us as f64 / 1e3),
                    format!("{:.0}", c.cpu_us),
                )
            };
            writeln!(
                out,
                "| {} | {} | {} | {rps} | {p50} | {p99} | {cpu} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
                s.backend.name(),
                s.mappings,
                c.concurrency,
                c.errors,
                s.insert_secs,
                s.start_secs,
                s.first_ms,
                s.refresh_ms,
                s.rss_kib as f64 / 1024.0
            )?;
        }
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filler_insert_names_every_column_the_schema_requires_on_both_backends() {
        for b in [Backend::Sqlite, Backend::Postgres] {
            let s = insert_statement(b, 1, 9);
            assert!(s.contains("INSERT INTO mappings (name, subject, resource"));
            assert!(s.contains("'payments'") && s.contains("'fill-' || i"));
        }
        assert!(insert_statement(Backend::Sqlite, 1, 9).contains("WITH RECURSIVE"));
        assert!(insert_statement(Backend::Postgres, 1, 9).contains("generate_series(1::bigint"));
    }
}

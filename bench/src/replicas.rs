//! Section 5, several replicas: exchanges/s with 1, 2 and 3 release `meshpass-exchange`
//! processes sharing one OpenBao (batched signing, `vault.batch_max_size` 64) and one
//! PostgreSQL database (a fresh one per run, testkit's helper), beside OpenBao's raw
//! sign rate measured in the same run, repetitions interleaved.
//!
//! The load is split by wrk itself: every exchange row runs the same wrk (as many
//! threads as the least common multiple of the replica counts, 6 for 1, 2, 3, with the
//! same connections each), thread i connecting to replica i mod n (`wrk.lua`,
//! `MESHPASS_WRK_ADDRS`) with its own share of the never-seen tokens: the load
//! generator is identical in every row and each replica gets the same share. Not an
//! Envoy round-robin cluster: on this 2-core machine a proxy in front would take CPU
//! from the replicas and put its own cost into every row. Redis is not used (the local
//! rate-limit backend; no mapping has a limit).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshpass_testkit::{ExchangeService, OpenBao, Postgres};
use serde_json::{json, Value};

use crate::machine::{self, CpuTimes};
use crate::stack::{self, ServiceKind, RESOURCE, TRANSIT_KEY};
use crate::tokens::{self, Issuer, SUBJECT};
use crate::wrk::{Load, Wrk, WrkResult};

/// Items per batched raw `transit/sign` request.
pub const BATCH: usize = 64;

/// One kind of measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// OpenBao raw `transit/sign`, one input per request.
    RawSign,
    /// OpenBao raw `transit/sign` with `batch_input` of [`BATCH`].
    RawSignBatch,
    /// True cold exchanges over this many replicas.
    Cold(usize),
    /// Warm exchanges (minted-token cache hit) over this many replicas.
    Warm(usize),
}

impl Row {
    /// Short name.
    pub fn name(self) -> String {
        match self {
            Row::RawSign => "openbao_sign".into(),
            Row::RawSignBatch => "openbao_sign_batch64".into(),
            Row::Cold(n) => format!("cold_replicas={n}"),
            Row::Warm(n) => format!("warm_replicas={n}"),
        }
    }

    /// Replicas serving it (0: OpenBao itself).
    pub fn replicas(self) -> usize {
        match self {
            Row::Cold(n) | Row::Warm(n) => n,
            _ => 0,
        }
    }
}

/// What the section runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Replica counts measured.
    pub replicas: Vec<usize>,
    /// Also the raw OpenBao rows.
    pub raw: bool,
    /// Repetitions.
    pub reps: usize,
    /// Seconds per measurement.
    pub secs: f64,
    /// Total connections (split evenly, rounded up to a multiple of the replicas).
    pub connections: usize,
    /// Upper bound of true-cold exchanges/s the token files are sized for.
    pub cold_rate_bound: f64,
}

impl Options {
    /// The rows of one repetition, in order.
    pub fn rows(&self) -> Vec<Row> {
        let mut r = Vec::new();
        if self.raw {
            r.extend([Row::RawSign, Row::RawSignBatch]);
        }
        for &n in &self.replicas {
            r.extend([Row::Cold(n), Row::Warm(n)]);
        }
        r
    }

    /// wrk threads of every exchange row: divisible by every replica count.
    pub fn threads(&self) -> usize {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        self.replicas
            .iter()
            .fold(1, |l, &n| l / gcd(l, n.max(1)) * n.max(1))
    }

    /// Connections per wrk thread (the total nearest `connections`).
    pub fn each(&self) -> usize {
        ((self.connections as f64 / self.threads() as f64).round() as usize).max(1)
    }

    /// Connections of every exchange row.
    pub fn exchange_connections(&self) -> usize {
        self.each() * self.threads()
    }

    /// The thread addresses of a row over `addrs` (thread i → replica i mod n).
    fn spread(&self, addrs: &[String]) -> Vec<String> {
        (0..self.threads())
            .map(|i| addrs[i % addrs.len()].clone())
            .collect()
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    /// wrk's figures.
    pub wrk: WrkResult,
    /// CPU µs per request of each replica serving the row (OpenBao rows: OpenBao).
    pub replica_cpu_us: Vec<f64>,
    /// CPU µs per request of OpenBao.
    pub bao_cpu_us: f64,
    /// CPU µs per request of the database's PostgreSQL backends.
    pub pg_cpu_us: f64,
    /// Steal share during the run.
    pub steal: f64,
    /// Busy share of the machine during the run.
    pub busy: f64,
}

impl Sample {
    /// The replicas' CPU per request, summed.
    pub fn service_cpu_us(&self) -> f64 {
        self.replica_cpu_us.iter().sum()
    }
}

/// Everything the section measured.
#[derive(Clone, Debug)]
pub struct Results {
    /// Row → samples in repetition order.
    pub cells: Vec<(Row, Vec<Sample>)>,
    /// Example command lines.
    pub commands: Vec<String>,
    /// The options.
    pub options: Options,
}

impl Results {
    /// The samples of one row.
    pub fn cell(&self, row: Row) -> &[Sample] {
        self.cells
            .iter()
            .find(|(r, _)| *r == row)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[])
    }
}

fn sign_body(i: usize) -> String {
    json!({"input": STANDARD.encode(format!("replicas-input-{i}")), "marshaling_algorithm": "jws"})
        .to_string()
}

fn batch_body(i: usize) -> String {
    let items: Vec<_> = (0..BATCH)
        .map(|j| json!({"input": STANDARD.encode(format!("replicas-input-{i}-{j}"))}))
        .collect();
    json!({"batch_input": items, "marshaling_algorithm": "jws"}).to_string()
}

/// A replica: the bench's service configuration on the shared database and issuer.
fn start_replica(
    bao: &OpenBao,
    dir: &Path,
    jwks: &str,
    db_url: &str,
    token_cache: bool,
) -> Result<ExchangeService> {
    let port = meshpass_testkit::free_port();
    let sub = dir.join(format!("replica-{port}"));
    std::fs::create_dir_all(&sub)?;
    let kind = ServiceKind {
        token_cache,
        unbound_callers: false,
    };
    let mut cfg: Value = stack::service_config(port, bao, &sub, jwks, kind);
    cfg["store"] = json!({"url": db_url, "max_connections": 4});
    // Replicas of one service share its issuer.
    cfg["token"]["issuer"] = json!("https://meshpass.bench");
    Ok(ExchangeService::start(&sub, port, &cfg))
}

/// The PostgreSQL backends serving the database (pids; re-read per measurement).
fn pg_backends(db: &meshpass_testkit::PgDb) -> Vec<u32> {
    db.psql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Runs the section.
pub fn run(o: &Options, dir: &Path, issuer: &Issuer, wrk: &Wrk) -> Result<Results> {
    let jwks = issuer.jwks();
    let bao = stack::start_openbao();
    let db = Postgres::fresh_database();
    let max = o.replicas.iter().copied().max().unwrap_or(1);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..max {
        cold.push(start_replica(&bao, dir, &jwks, &db.url(), false)?);
        warm.push(start_replica(&bao, dir, &jwks, &db.url(), true)?);
    }
    let write = |name: &str, lines: Vec<String>| -> Result<PathBuf> {
        let p = dir.join(name);
        tokens::write_lines(&p, &lines)?;
        Ok(p)
    };
    let form_headers = vec![
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        (
            "X-Forwarded-Client-Cert".to_string(),
            format!("URI={SUBJECT}"),
        ),
    ];
    let bao_headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Vault-Token".to_string(), bao.root_token().to_string()),
    ];
    let sign_file = write("r-sign.txt", (0..1024).map(sign_body).collect())?;
    let batch_file = write("r-batch.txt", (0..64).map(batch_body).collect())?;
    let warm_file = write(
        "r-warm.txt",
        vec![tokens::exchange_form(&issuer.mint(7), RESOURCE)],
    )?;
    let sign_url = format!("{}/v1/transit/sign/{TRANSIT_KEY}", bao.addr());
    let addrs = |set: &[ExchangeService], n: usize| -> Vec<String> {
        set[..n]
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    };
    let tck = machine::clk_tck();
    let mut next_jti = 50_000_000u64;
    let mut fresh = |tag: &str| -> Result<PathBuf> {
        let n = (o.cold_rate_bound * o.secs).ceil() as u64 + 100;
        let forms = issuer
            .mint_range(next_jti, n)
            .iter()
            .map(|t| tokens::exchange_form(t, RESOURCE))
            .collect();
        next_jti += n;
        write(&format!("r-cold-{tag}.txt"), forms)
    };
    // (url, addrs to split over, load, pids whose CPU is the row's own)
    let spec = |row: Row, file: Option<PathBuf>| -> (String, Vec<String>, Load, Vec<u32>) {
        match row {
            Row::RawSign => (
                sign_url.clone(),
                Vec::new(),
                Load::Body(sign_file.clone(), bao_headers.clone()),
                vec![bao.pid()],
            ),
            Row::RawSignBatch => (
                sign_url.clone(),
                Vec::new(),
                Load::Body(batch_file.clone(), bao_headers.clone()),
                vec![bao.pid()],
            ),
            Row::Cold(n) | Row::Warm(n) => {
                let set = if matches!(row, Row::Cold(_)) {
                    &cold
                } else {
                    &warm
                };
                (
                    format!("{}/token", set[0].base_url()),
                    addrs(set, n),
                    Load::Body(
                        file.unwrap_or_else(|| warm_file.clone()),
                        form_headers.clone(),
                    ),
                    set[..n].iter().map(|s| s.pid()).collect(),
                )
            }
        }
    };
    let go = |url: &str, split: &[String], conns: usize, secs: f64, load: &Load| {
        if split.is_empty() {
            wrk.run(url, conns, secs, load)
        } else {
            wrk.run_split(url, &o.spread(split), conns.min(o.each()), secs, load)
        }
    };
    // Warm-up: each row once, everything must succeed.
    let mut commands = Vec::new();
    for row in o.rows() {
        let file = match row {
            Row::Cold(_) => Some(fresh(&format!("warmup-{}", row.name()))?),
            _ => None,
        };
        let (url, split, load, _) = spec(row, file);
        let r = go(&url, &split, 8.max(split.len()), 1.0, &load)?;
        if r.errors() > 0 || r.requests == 0 {
            return Err(anyhow!(
                "warm-up of {} failed: {r:?}\nfirst replica's log:\n{}",
                row.name(),
                cold[0].log_tail(30)
            ));
        }
        let cmd = if split.is_empty() {
            wrk.command(&url, o.connections, o.secs, &load)
        } else {
            wrk.command_split(&url, &o.spread(&split), o.each(), o.secs, &load)
        };
        commands.push(
            format!("{}: {}", row.name(), crate::wrk::show(&cmd))
                .replace(bao.root_token(), "<root token>"),
        );
    }
    let mut cells: Vec<(Row, Vec<Sample>)> = Vec::new();
    for rep in 0..o.reps {
        for row in o.rows() {
            let file = match row {
                Row::Cold(_) => Some(fresh(&format!("{rep}-{}", row.name()))?),
                _ => None,
            };
            let (url, split, load, pids) = spec(row, file);
            let pg = pg_backends(&db);
            let cpu = |pids: &[u32]| -> Vec<f64> {
                pids.iter().map(|p| machine::cpu_secs(*p, tck)).collect()
            };
            let (r0, b0, p0) = (cpu(&pids), cpu(&[bao.pid()]), cpu(&pg));
            let m0 = CpuTimes::now();
            let r = go(&url, &split, o.connections, o.secs, &load)?;
            let m1 = CpuTimes::now();
            let (r1, b1, p1) = (cpu(&pids), cpu(&[bao.pid()]), cpu(&pg));
            let n = r.requests.max(1) as f64;
            let per = |a: &[f64], b: &[f64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| (y - x) * 1e6 / n).collect()
            };
            let s = Sample {
                replica_cpu_us: per(&r0, &r1),
                bao_cpu_us: per(&b0, &b1).iter().sum(),
                pg_cpu_us: per(&p0, &p1).iter().sum(),
                steal: m0.steal_share(&m1),
                busy: m0.busy_share(&m1),
                wrk: r,
            };
            eprintln!(
                "[bench] replicas rep {} {:<22} {:>8.0} req/s  p99 {:>7.2} ms  service {:>7.1} µs/req {:?}  OpenBao {:>6.1}  Postgres {:>5.1}  errors {}  wrapped {}",
                rep + 1,
                row.name(),
                s.wrk.rps(),
                s.wrk.p99_us as f64 / 1e3,
                s.service_cpu_us(),
                s.replica_cpu_us.iter().map(|c| c.round()).collect::<Vec<_>>(),
                s.bao_cpu_us,
                s.pg_cpu_us,
                s.wrk.errors(),
                s.wrk.wrapped
            );
            match cells.iter_mut().find(|(r, _)| *r == row) {
                Some((_, v)) => v.push(s),
                None => cells.push((row, vec![s])),
            }
        }
    }
    Ok(Results {
        cells,
        commands,
        options: o.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_gets_the_same_wrk_split_evenly_over_its_replicas_and_rows_pair_cold_with_warm() {
        let o = Options {
            replicas: vec![1, 2, 3],
            raw: true,
            reps: 1,
            secs: 1.0,
            connections: 32,
            cold_rate_bound: 1.0,
        };
        // 6 wrk threads (divisible by 1, 2 and 3) of 5 connections: 30 in every row.
        assert_eq!(
            (o.threads(), o.each(), o.exchange_connections()),
            (6, 5, 30)
        );
        let addrs = ["a".to_string(), "b".to_string()];
        assert_eq!(o.spread(&addrs), ["a", "b", "a", "b", "a", "b"]);
        let smoke = Options {
            replicas: vec![2],
            ..o.clone()
        };
        assert_eq!((smoke.threads(), smoke.each()), (2, 16));
        assert_eq!(
            o.rows(),
            vec![
                Row::RawSign,
                Row::RawSignBatch,
                Row::Cold(1),
                Row::Warm(1),
                Row::Cold(2),
                Row::Warm(2),
                Row::Cold(3),
                Row::Warm(3)
            ]
        );
        assert_eq!(Row::Cold(2).name(), "cold_replicas=2");
    }
}

//! Section 2, the exchange service: `POST /token` exchanges/s and latency at several
//! concurrencies beside OpenBao's raw `transit/sign` (single and batched) and a bare axum
//! handler, in the same run, repetitions interleaved. wrk runs in its own process, so
//! the CPU per request read from /proc for the service, OpenBao and the bare server is
//! theirs alone.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use crate::machine::{self, CpuTimes};
use crate::stack::{self, ServiceKind, RESOURCE, TRANSIT_KEY};
use crate::tokens::{self, Issuer, SUBJECT};
use crate::wrk::{Load, Wrk, WrkResult};

/// Items per batched `transit/sign` request.
pub const BATCH: usize = 64;
/// True-cold exchanges per second the never-seen tokens of a cell are minted for
/// (a third of it at concurrency 1). Above what a quiet 2-core run reaches at
/// concurrency 128 (15,744/s on 2026-12-04, when 12,000 ran out three times): with too
/// few the tokens run out mid-cell and the rest are verified-subject cache hits counted
/// as true cold (`wrapped` in the log, "ran out" in the report).
pub const COLD_RATE_BOUND: f64 = 24_000.0;

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// The bare axum `POST /token`.
    Bare,
    /// OpenBao `transit/sign`, one input per request.
    RawSign,
    /// OpenBao `transit/sign` with `batch_input` of [`BATCH`].
    RawSignBatch,
    /// True cold: every subject token never seen, minted-token cache off.
    Cold,
    /// Cold with the verified-subject cache: 64 tokens over and over, token cache off.
    ColdSubjectCache,
    /// Warm: the minted-token cache answers.
    Warm,
}

impl Row {
    /// All rows, in the order each repetition runs them.
    pub const ALL: [Row; 6] = [
        Row::Bare,
        Row::RawSign,
        Row::RawSignBatch,
        Row::Cold,
        Row::ColdSubjectCache,
        Row::Warm,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Row::Bare => "bare_axum",
            Row::RawSign => "openbao_sign",
            Row::RawSignBatch => "openbao_sign_batch64",
            Row::Cold => "exchange_cold",
            Row::ColdSubjectCache => "exchange_cold_subject_cache",
            Row::Warm => "exchange_warm",
        }
    }

    /// What it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Row::Bare => "bare axum `POST /token` (fixed 600-byte JSON)",
            Row::RawSign => "OpenBao raw `transit/sign` ecdsa-p256, one per request",
            Row::RawSignBatch => {
                "OpenBao raw `transit/sign`, `batch_input` of 64 (req/s = batches/s)"
            }
            Row::Cold => "exchange, true cold (never-seen subject token, token cache off)",
            Row::ColdSubjectCache => {
                "exchange, cold with the subject cache (64 tokens repeated, token cache off)"
            }
            Row::Warm => "exchange, warm (minted-token cache hit)",
        }
    }
}

/// What the section runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrencies (wrk connections).
    pub concurrencies: Vec<usize>,
    /// Repetitions.
    pub reps: usize,
    /// Seconds per measurement.
    pub secs: f64,
    /// Upper bound of true-cold exchanges per second the token files are sized for.
    pub cold_rate_bound: f64,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    /// wrk's figures.
    pub wrk: WrkResult,
    /// CPU µs per request of the process serving the row (service, OpenBao or bare).
    pub server_cpu_us: f64,
    /// CPU µs per request of OpenBao (exchange rows: signing behind the service).
    pub bao_cpu_us: f64,
    /// Steal share during the run.
    pub steal: f64,
    /// Busy share of the machine during the run.
    pub busy: f64,
}

/// Everything the section measured.
#[derive(Clone, Debug)]
pub struct Results {
    /// (row, concurrency) → samples in repetition order.
    pub cells: Vec<((Row, usize), Vec<Sample>)>,
    /// Example command lines.
    pub commands: Vec<String>,
    /// The options.
    pub options: Options,
}

impl Results {
    /// The samples of one cell.
    pub fn cell(&self, row: Row, conc: usize) -> &[Sample] {
        self.cells
            .iter()
            .find(|((r, c), _)| *r == row && *c == conc)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[])
    }
}

fn sign_body(i: usize) -> String {
    json!({"input": STANDARD.encode(format!("bench-input-{i}")), "marshaling_algorithm": "jws"})
        .to_string()
}

fn batch_body(i: usize) -> String {
    let items: Vec<_> = (0..BATCH)
        .map(|j| json!({"input": STANDARD.encode(format!("bench-input-{i}-{j}"))}))
        .collect();
    json!({"batch_input": items, "marshaling_algorithm": "jws"}).to_string()
}

/// Runs the section.
pub fn run(o: &Options, dir: &Path, issuer: &Issuer, wrk: &Wrk) -> Result<Results> {
    let jwks = issuer.jwks();
    let bao = stack::start_openbao();
    let servers = stack::start_servers()?;
    let cold = stack::start_service(
        &bao,
        dir,
        &jwks,
        ServiceKind {
            token_cache: false,
            unbound_callers: false,
        },
    )?;
    let warm = stack::start_service(
        &bao,
        dir,
        &jwks,
        ServiceKind {
            token_cache: true,
            unbound_callers: false,
        },
    )?;
    // Every batched item must have signed (a batch answers 200 even when items fail).
    let (_, answer) = bao.api(
        "POST",
        &format!("transit/sign/{TRANSIT_KEY}"),
        Some(serde_json::from_str(&batch_body(0))?),
    );
    let signed = answer["data"]["batch_results"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["signature"].is_string()).count())
        .unwrap_or(0);
    anyhow::ensure!(
        signed == BATCH,
        "a batch of {BATCH} signed {signed}: {answer}"
    );

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
    let bare_file = write("bare.txt", vec!["grant_type=x".into()])?;
    let sign_file = write("sign.txt", (0..1024).map(sign_body).collect())?;
    let batch_file = write("batch.txt", (0..64).map(batch_body).collect())?;
    let repeated: Vec<String> = issuer
        .mint_range(10, 64)
        .iter()
        .map(|t| tokens::exchange_form(t, RESOURCE))
        .collect();
    let repeated_file = write("repeated.txt", repeated.clone())?;
    let warm_file = write("warm.txt", repeated[..1].to_vec())?;
    let sign_url = format!("{}/v1/transit/sign/{TRANSIT_KEY}", bao.addr());
    let bare_url = format!("http://127.0.0.1:{}/token", servers.bare_port);
    let cold_url = format!("{}/token", cold.base_url());
    let warm_url = format!("{}/token", warm.base_url());
    let tck = machine::clk_tck();
    let mut next_jti = 10_000_000u64;
    // True-cold forms for one run of `conc` connections, never used before.
    let mut fresh = |tag: &str, conc: usize| -> Result<PathBuf> {
        let bound = if conc == 1 {
            o.cold_rate_bound / 3.0
        } else {
            o.cold_rate_bound
        };
        let n = (bound * o.secs).ceil() as u64 + 100;
        let forms = issuer
            .mint_range(next_jti, n)
            .iter()
            .map(|t| tokens::exchange_form(t, RESOURCE))
            .collect();
        next_jti += n;
        write(&format!("cold-{tag}.txt"), forms)
    };
    let spec = |row: Row, file: Option<PathBuf>| -> (String, Load, u32) {
        match row {
            Row::Bare => (
                bare_url.clone(),
                Load::Body(bare_file.clone(), vec![]),
                servers.child.pid(),
            ),
            Row::RawSign => (
                sign_url.clone(),
                Load::Body(sign_file.clone(), bao_headers.clone()),
                bao.pid(),
            ),
            Row::RawSignBatch => (
                sign_url.clone(),
                Load::Body(batch_file.clone(), bao_headers.clone()),
                bao.pid(),
            ),
            Row::Cold => (
                cold_url.clone(),
                Load::Body(
                    file.unwrap_or_else(|| repeated_file.clone()),
                    form_headers.clone(),
                ),
                cold.pid(),
            ),
            Row::ColdSubjectCache => (
                cold_url.clone(),
                Load::Body(repeated_file.clone(), form_headers.clone()),
                cold.pid(),
            ),
            Row::Warm => (
                warm_url.clone(),
                Load::Body(warm_file.clone(), form_headers.clone()),
                warm.pid(),
            ),
        }
    };
    // Warm-up: each row once, all must succeed.
    let mut commands = Vec::new();
    for row in Row::ALL {
        let file = if row == Row::Cold {
            Some(fresh("warmup", 8)?)
        } else {
            None
        };
        let (url, load, _) = spec(row, file);
        let r = wrk.run(&url, 8, 1.0, &load)?;
        if r.errors() > 0 || r.requests == 0 {
            return Err(anyhow!(
                "warm-up of {} failed: {r:?}\ncold service log:\n{}\nwarm service log:\n{}",
                row.name(),
                cold.log_tail(30),
                warm.log_tail(30)
            ));
        }
        let mut cmd = wrk.command(&url, 32, o.secs, &load);
        cmd.env_remove("__none__");
        commands
            .push(format!("{}: {:?}", row.name(), cmd).replace(bao.root_token(), "<root token>"));
    }
    let mut cells: Vec<((Row, usize), Vec<Sample>)> = Vec::new();
    for rep in 0..o.reps {
        for &conc in &o.concurrencies {
            for row in Row::ALL {
                let file = if row == Row::Cold {
                    Some(fresh(&format!("{rep}-{conc}"), conc)?)
                } else {
                    None
                };
                let (url, load, pid) = spec(row, file);
                let (s0, b0) = (
                    machine::cpu_secs(pid, tck),
                    machine::cpu_secs(bao.pid(), tck),
                );
                let m0 = CpuTimes::now();
                let r = wrk.run(&url, conc, o.secs, &load)?;
                let m1 = CpuTimes::now();
                let (s1, b1) = (
                    machine::cpu_secs(pid, tck),
                    machine::cpu_secs(bao.pid(), tck),
                );
                let n = r.requests.max(1) as f64;
                let s = Sample {
                    server_cpu_us: (s1 - s0) * 1e6 / n,
                    bao_cpu_us: (b1 - b0) * 1e6 / n,
                    steal: m0.steal_share(&m1),
                    busy: m0.busy_share(&m1),
                    wrk: r,
                };
                eprintln!(
                    "[bench] exchange rep {} c={:<3} {:<28} {:>8.0} req/s  p99 {:>7.2} ms  server {:>7.1} µs/req  OpenBao {:>7.1} µs/req  errors {}  wrapped {}",
                    rep + 1,
                    conc,
                    row.name(),
                    s.wrk.rps(),
                    s.wrk.p99_us as f64 / 1e3,
                    s.server_cpu_us,
                    s.bao_cpu_us,
                    s.wrk.errors(),
                    s.wrk.wrapped
                );
                match cells.iter_mut().find(|((r, c), _)| *r == row && *c == conc) {
                    Some((_, v)) => v.push(s),
                    None => cells.push(((row, conc), vec![s])),
                }
            }
        }
    }
    Ok(Results {
        cells,
        commands,
        options: o.clone(),
    })
}

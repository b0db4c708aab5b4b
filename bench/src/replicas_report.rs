//! The report's "Several replicas" section and its chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::charts;
use crate::replicas::{Results, Row, BATCH};
use crate::stats::{paired_ratio, Estimate};

fn series(s: &[crate::replicas::Sample], f: impl Fn(&crate::replicas::Sample) -> f64) -> Vec<f64> {
    s.iter().map(f).collect()
}

fn mean_ms(s: &[crate::replicas::Sample], f: impl Fn(&crate::replicas::Sample) -> u64) -> String {
    format!(
        "{:.2}",
        Estimate::of(&series(s, |v| f(v) as f64)).mean / 1e3
    )
}

/// Writes the section.
pub fn section(out: &mut String, x: &Results, charts_dir: &Path, rel: &str) -> Result<()> {
    let o = &x.options;
    writeln!(out, "## Several replicas of the exchange service\n")?;
    writeln!(
        out,
        "Release `meshpass-exchange` processes on one PostgreSQL database (fresh per run) and one OpenBao dev \
         server (ecdsa-p256, batched signing: `vault.batch_max_size` 64), the rate-limit backend local (no Redis), \
         change notifications on. Two sets of {max} replicas run side by side (minted-token cache off for the \
         true-cold rows, on for the warm rows); a row with n replicas loads the first n of its set. wrk splits \
         the load itself, the same wrk in every exchange row: {t} threads of {each} connections ({c} in all), \
         thread i on replica i mod n, each thread with its own share of the never-seen subject tokens (not an \
         Envoy round-robin cluster, whose CPU would come out of the same two cores). The raw OpenBao rows use \
         one thread and {raw} connections. {reps} repetitions of {secs} s, rows interleaved. CPU \
         per exchange is Δ(utime+stime)/exchanges of each replica, of OpenBao, and of the database's PostgreSQL \
         backends (from `pg_stat_activity`).\n",
        max = o.replicas.iter().max().copied().unwrap_or(1),
        c = o.exchange_connections(),
        t = o.threads(),
        each = o.each(),
        raw = o.connections,
        reps = o.reps,
        secs = o.secs,
    )?;
    writeln!(
        out,
        "**Read this on a {}-core machine**: every replica, OpenBao, PostgreSQL and wrk share the same cores, so \
         adding replicas cannot add CPU. The ratio to one replica shows what several replicas *cost* (the \
         coordination: smaller batches per OpenBao request, one more process scheduling, change checks), not \
         what they would gain on more machines. On a machine shared with other work, more processes also \
         win a larger share of the cores from the other tenants (the scheduler is fair per thread), which can \
         make several replicas look faster than one: compare CPU per exchange, not only req/s.\n",
        crate::machine::cores()
    )?;
    writeln!(out, "| what | replicas | connections | req/s | × 1 replica | × raw sign | p50 ms | p99 ms | service CPU µs/req (per replica) | OpenBao CPU µs/req | Postgres CPU µs/req | errors |")?;
    writeln!(
        out,
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"
    )?;
    let rps = |row: Row| series(x.cell(row), |s| s.wrk.rps());
    let raw = rps(Row::RawSign);
    for (row, s) in &x.cells {
        let r = rps(*row);
        let (what, vs_one, vs_raw) = match row {
            Row::RawSign => (
                "OpenBao raw `transit/sign`, one per request".to_string(),
                String::new(),
                String::new(),
            ),
            Row::RawSignBatch => (
                format!("OpenBao raw `transit/sign`, `batch_input` of {BATCH} (req/s = batches/s)"),
                String::new(),
                format!(
                    "{} signatures/s",
                    Estimate::of(&series(s, |v| v.wrk.rps() * BATCH as f64)).fmt(0)
                ),
            ),
            Row::Cold(_) | Row::Warm(_) => {
                let one = if matches!(row, Row::Cold(_)) {
                    Row::Cold(1)
                } else {
                    Row::Warm(1)
                };
                (
                    if matches!(row, Row::Cold(_)) {
                        "exchange, true cold (never-seen subject token)".to_string()
                    } else {
                        "exchange, warm (minted-token cache hit)".to_string()
                    },
                    if x.cell(one).is_empty() {
                        "—".into()
                    } else {
                        paired_ratio(&r, &rps(one)).fmt(2)
                    },
                    if raw.is_empty() {
                        "—".into()
                    } else {
                        paired_ratio(&r, &raw).fmt(2)
                    },
                )
            }
        };
        let n = row.replicas();
        let per_replica: Vec<String> = (0..n)
            .map(|i| {
                Estimate::of(&series(s, |v| {
                    v.replica_cpu_us.get(i).copied().unwrap_or(f64::NAN)
                }))
                .fmt(0)
            })
            .collect();
        let service = if n == 0 {
            "—".to_string()
        } else {
            format!(
                "{} ({})",
                Estimate::of(&series(s, |v| v.service_cpu_us())).fmt(1),
                per_replica.join(" / ")
            )
        };
        writeln!(
            out,
            "| {what} | {} | {} | {} | {vs_one} | {vs_raw} | {} | {} | {service} | {} | {} | {} |",
            if n == 0 { "—".into() } else { n.to_string() },
            if n == 0 {
                o.connections
            } else {
                o.exchange_connections()
            },
            Estimate::of(&r).fmt(0),
            mean_ms(s, |v| v.wrk.p50_us),
            mean_ms(s, |v| v.wrk.p99_us),
            Estimate::of(&series(s, |v| v.bao_cpu_us)).fmt(1),
            if n == 0 {
                "—".into()
            } else {
                Estimate::of(&series(s, |v| v.pg_cpu_us)).fmt(1)
            },
            s.iter().map(|v| v.wrk.errors()).sum::<u64>(),
        )?;
    }
    let wrapped: u64 = x
        .cells
        .iter()
        .filter(|(r, _)| matches!(r, Row::Cold(_)))
        .flat_map(|(_, s)| s.iter().map(|v| v.wrk.wrapped))
        .sum();
    let steal = x
        .cells
        .iter()
        .flat_map(|(_, s)| s.iter().map(|v| v.steal))
        .fold(0.0, f64::max);
    writeln!(
        out,
        "\nTrue-cold rows: the never-seen tokens ran out {wrapped} time(s) (0 = every exchange had a new subject \
         token). Largest CPU steal in one measurement: {:.1} %.\n",
        steal * 100.0
    )?;
    let items: Vec<(String, Estimate)> = x
        .cells
        .iter()
        .filter(|(r, _)| *r != Row::RawSignBatch)
        .map(|(r, s)| (r.name(), Estimate::of(&series(s, |v| v.wrk.rps()))))
        .collect();
    charts::bars(
        &charts_dir.join("replicas_rps.png"),
        "Exchanges/s with 1, 2, 3 replicas (one OpenBao, one PostgreSQL) beside raw OpenBao signing",
        "requests/s (mean, 95 % CI)",
        &items,
    )?;
    writeln!(
        out,
        "![Exchanges/s by replica count]({rel}/replicas_rps.png)\n"
    )?;
    Ok(())
}

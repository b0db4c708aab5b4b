//! `meshpass-bench`: the whole-system benchmark behind `make bench` (README.md in this
//! folder). It starts every component through testkit, drives them with wrk, and writes
//! BENCHMARKS.md with PNG charts.
//!
//! ```text
//! meshpass-bench [--smoke | --quick] [--reps N] [--secs S] [--connections C]
//!                [--exchange-reps N] [--exchange-secs S] [--only proxy|exchange]
//!                [--baseline-wasm PATH] [--out FILE] [--charts DIR]
//!                [--rows ROW,ROW] [--profile ROW,ROW] [--scale-max N]
//!                [--instructions ROW,ROW|none] [--instruction-requests N]
//!                [--soak-secs S] [--mapping-steps N,N]
//!                (--only proxy|exchange|scaling|soak|mappings|replicas)
//! ```

mod charts;
mod exchange;
mod instructions;
mod machine;
mod mappings;
mod plan;
mod profile;
mod proxy;
mod replicas;
mod replicas_report;
mod report;
mod scaling;
mod soak;
mod stack;
mod stats;
mod tokens;
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

/// What a whole run produced (the report's input).
pub struct Run {
    /// When (UTC).
    pub date: String,
    /// Machine and run facts, in order.
    pub facts: Vec<(String, String)>,
    /// The commands that made it.
    pub commands: Vec<String>,
    /// Section 1.
    pub proxy: Option<proxy::Results>,
    /// Section 2.
    pub exchange: Option<exchange::Results>,
    /// Section 3: filter cache scaling.
    pub scaling: Option<Vec<scaling::Step>>,
    /// Section 4: soak.
    pub soak: Option<Vec<soak::Slice>>,
    /// Section 5: mapping scaling (its options, its steps).
    pub mappings: Option<(mappings::Options, Vec<mappings::Step>)>,
    /// Several replicas of the exchange service.
    pub replicas: Option<replicas::Results>,
    /// The hand-written analysis (bench/notes.md), appended verbatim.
    pub notes: String,
}

#[derive(Debug)]
struct Args {
    smoke: bool,
    quick: bool,
    reps: Option<usize>,
    secs: Option<f64>,
    connections: usize,
    exchange_reps: Option<usize>,
    exchange_secs: Option<f64>,
    only: Option<String>,
    baseline_wasm: Option<PathBuf>,
    out: Option<PathBuf>,
    charts: Option<PathBuf>,
    rows: Option<Vec<String>>,
    profile: Vec<String>,
    instructions: Option<Vec<String>>,
    instruction_requests: Option<u64>,
    scale_max: Option<u64>,
    soak_secs: Option<f64>,
    mapping_steps: Option<Vec<u64>>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        smoke: false,
        quick: false,
        reps: None,
        secs: None,
        connections: 32,
        exchange_reps: None,
        exchange_secs: None,
        only: None,
        baseline_wasm: std::env::var_os("BASELINE_WASM")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        out: None,
        charts: None,
        rows: None,
        profile: Vec::new(),
        instructions: None,
        instruction_requests: None,
        scale_max: None,
        soak_secs: None,
        mapping_steps: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--quick" => a.quick = true,
            "--reps" => a.reps = Some(val()?.parse()?),
            "--secs" => a.secs = Some(val()?.parse()?),
            "--connections" => a.connections = val()?.parse()?,
            "--exchange-reps" => a.exchange_reps = Some(val()?.parse()?),
            "--exchange-secs" => a.exchange_secs = Some(val()?.parse()?),
            "--only" => a.only = Some(val()?),
            "--baseline-wasm" => a.baseline_wasm = Some(PathBuf::from(val()?)),
            "--out" => a.out = Some(PathBuf::from(val()?)),
            "--charts" => a.charts = Some(PathBuf::from(val()?)),
            "--rows" => a.rows = Some(val()?.split(',').map(String::from).collect()),
            "--profile" => a.profile = val()?.split(',').map(String::from).collect(),
            "--instructions" => {
                a.instructions = Some(
                    val()?
                        .split(',')
                        .filter(|r| !r.is_empty() && *r != "none")
                        .map(String::from)
                        .collect(),
                )
            }
            "--instruction-requests" => a.instruction_requests = Some(val()?.parse()?),
            "--scale-max" => a.scale_max = Some(val()?.parse()?),
            "--soak-secs" => a.soak_secs = Some(val()?.parse()?),
            "--mapping-steps" => {
                a.mapping_steps = Some(
                    val()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            "-h" | "--help" => {
                println!("{}", include_str!("../README.md"));
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (--help)"),
        }
    }
    Ok(a)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    machine::version_of(cmd, args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[bench] FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let root = meshpass_testkit::workspace_root();
    let work = tempfile::Builder::new()
        .prefix("meshpass-bench-")
        .tempdir()?;
    let wrk_script = wrk::Wrk::install(work.path())?;
    let issuer = tokens::Issuer::new()?;
    let noop_wasm = std::env::var_os("MESHPASS_NOOP_WASM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root.join("target/wasm32-wasip1/wasm-release/meshpass_noop_filter.wasm")
        });
    let floor_wasm = std::env::var_os("MESHPASS_FLOOR_WASM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root.join("target/wasm32-wasip1/wasm-release/meshpass_floor_filter.wasm")
        });
    let filter_wasm = meshpass_testkit::filter_wasm();
    let run_proxy = args.only.as_deref().is_none_or(|o| o == "proxy");
    let run_exchange = !args.smoke && args.only.as_deref().is_none_or(|o| o == "exchange");
    let run_scaling = !args.smoke && args.only.as_deref().is_none_or(|o| o == "scaling");
    let run_soak = !args.smoke && args.only.as_deref().is_none_or(|o| o == "soak");
    let run_mappings = args.only.as_deref().is_none_or(|o| o == "mappings");
    // The smoke run includes one short replicas=2 row pair (the split load end to end).
    let run_replicas = args.only.as_deref().is_none_or(|o| o == "replicas");
    for (what, p) in [
        ("the empty filter", &noop_wasm),
        ("the ABI floor filter", &floor_wasm),
        ("the meshpass filter", &filter_wasm),
    ] {
        if !p.is_file() && (run_proxy || run_scaling || run_soak) {
            bail!("{what} not found at {} (make wasm builds it)", p.display());
        }
    }
    let (reps, secs) = match (args.smoke, args.quick) {
        (true, _) => (1, 1.0),
        (false, true) => (3, 3.0),
        // Ten shorter repetitions rather than five longer ones: the same time, a 95 %
        // interval about 40 % narrower (t(9)/√10 against t(4)/√5), less drift per pair.
        _ => (10, 4.0),
    };
    let by_name = |names: &[String]| -> Result<Vec<proxy::Row>> {
        names
            .iter()
            .map(|n| {
                proxy::ALL_ROWS
                    .into_iter()
                    .find(|r| r.name() == n)
                    .ok_or_else(|| anyhow!("no proxy row {n}"))
            })
            .collect()
    };
    let rows = if args.smoke {
        // Every kind of row once, the product's own included: a hit, and a miss through
        // the real exchange service and OpenBao.
        vec![
            proxy::Row::Router,
            proxy::Row::NoopWasm,
            proxy::Row::FloorMap,
            proxy::Row::ExtAuthzGrpc,
            proxy::Row::MeshpassHit,
            proxy::Row::MeshpassMiss,
        ]
    } else if let Some(r) = &args.rows {
        let mut r = by_name(r)?;
        // The ratios need both baselines.
        for base in [proxy::Row::NoopWasm, proxy::Row::Router] {
            if !r.contains(&base) {
                r.insert(0, base);
            }
        }
        r
    } else {
        proxy::ALL_ROWS.to_vec()
    };
    let popts = proxy::Options {
        rows,
        reps: args.reps.unwrap_or(reps),
        secs: args.secs.unwrap_or(secs),
        connections: if args.smoke { 4 } else { args.connections },
        filter_wasm,
        noop_wasm,
        floor_wasm,
        baseline_wasm: args.baseline_wasm.clone(),
        // Twice the fastest miss rate seen (1,717/s on 2026-12-03): no repetition may run out.
        miss_rate_bound: 3500.0,
        profile: by_name(&args.profile)?,
        profile_dir: root.join("bench/profiles"),
        instructions: instructions::Options {
            rows: match &args.instructions {
                Some(names) => by_name(names)?,
                // The smoke keeps the callgrind path from rotting at the least cost: two
                // rows whose modules V8 compiles quickly under valgrind.
                None if args.smoke => vec![proxy::Row::Router, proxy::Row::NoopWasm],
                None => instructions::DEFAULT_ROWS.to_vec(),
            },
            requests: args
                .instruction_requests
                .unwrap_or(match (args.smoke, args.quick) {
                    (true, _) => 20,
                    (false, true) => 300,
                    _ => 1000,
                }),
            passes: if args.smoke || args.quick { 1 } else { 2 },
        },
    };
    let xopts = exchange::Options {
        concurrencies: if args.quick {
            vec![1, 32]
        } else {
            vec![1, 8, 32, 128]
        },
        reps: args.exchange_reps.unwrap_or(if args.quick { 2 } else { 3 }),
        secs: args
            .exchange_secs
            .unwrap_or(if args.quick { 2.0 } else { 4.0 }),
        cold_rate_bound: exchange::COLD_RATE_BOUND,
    };
    let scale = (
        args.scale_max
            .unwrap_or(if args.quick { 1_000 } else { 100_000 }),
        if args.quick { 2.0 } else { 4.0 },
    );
    let soak_secs = args
        .soak_secs
        .unwrap_or(if args.quick { 60.0 } else { 600.0 });
    let soak_plan = (soak_secs, if soak_secs >= 300.0 { 30.0 } else { 10.0 });
    let mo = mappings::Options {
        steps: args
            .mapping_steps
            .clone()
            .unwrap_or_else(|| mappings::default_steps(args.quick, args.smoke)),
        secs: if args.smoke { 1.0 } else { xopts.secs },
        concurrencies: if args.smoke { vec![4] } else { vec![1, 32] },
        refresh_samples: if args.smoke { 1 } else { 3 },
    };
    let ropts = replicas::Options {
        replicas: if args.smoke { vec![2] } else { vec![1, 2, 3] },
        raw: !args.smoke,
        reps: if args.smoke { 1 } else { xopts.reps },
        secs: if args.smoke { 1.0 } else { xopts.secs },
        connections: args.connections,
        // Twice the fastest rate seen (11,092/s with 1 replica on 2026-12-04, when 8,000 ran
        // out): wrk splits the file over 6 threads, so each share must outlast its thread.
        cold_rate_bound: 22_000.0,
    };
    let plan = plan::Plan {
        proxy: run_proxy.then_some((
            popts.rows.len(),
            popts.reps,
            popts.secs,
            popts.rows.contains(&proxy::Row::MeshpassMiss),
        )),
        exchange: run_exchange.then_some((xopts.concurrencies.len(), xopts.reps, xopts.secs)),
        scaling: run_scaling.then_some(scale),
        soak: run_soak.then_some(soak_plan),
        mappings: run_mappings.then_some((
            mo.steps.len(),
            mo.concurrencies.len(),
            mo.secs,
            mo.refresh_samples,
        )),
        replicas: run_replicas.then_some((ropts.rows().len(), ropts.reps, ropts.secs)),
        instructions: {
            let i = &popts.instructions;
            let counted = i.rows.iter().filter(|r| popts.rows.contains(r)).count();
            (run_proxy && counted > 0).then_some((counted, i.requests, i.passes))
        },
    };
    eprintln!("[bench] estimated duration: {}", plan.describe());
    let load = |label: &str| (label.to_string(), format!("{:.2}", machine::loadavg1()));
    let mut facts = vec![
        ("cores".to_string(), machine::cores().to_string()),
        ("CPU model".to_string(), machine::cpu_model()),
        ("kernel".to_string(), sh("uname", &["-sr"])),
        load("load average (1 min) at start"),
    ];
    let cpu0 = machine::CpuTimes::now();
    let t0 = std::time::Instant::now();
    let mut commands = vec![format!(
        "make bench ARGS='{}'   # = meshpass-bench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )];
    let wrk = wrk::Wrk {
        script: &wrk_script,
        cpu: Some(proxy::LOAD_CPU),
    };
    let proxy = if run_proxy {
        eprintln!(
            "[bench] section 1: proxy overhead ({} rows × {} reps × {} s)",
            popts.rows.len(),
            popts.reps,
            popts.secs
        );
        let r = proxy::run(&popts, work.path(), &issuer, &wrk).context("proxy overhead")?;
        commands.extend(r.commands.iter().cloned());
        Some(r)
    } else {
        None
    };
    let exchange = if run_exchange {
        eprintln!("[bench] section 2: exchange service");
        let unpinned = wrk::Wrk {
            script: &wrk_script,
            cpu: None,
        };
        let r =
            exchange::run(&xopts, work.path(), &issuer, &unpinned).context("exchange service")?;
        commands.extend(r.commands.iter().cloned());
        Some(r)
    } else {
        None
    };
    let mut section_errors: Vec<String> = Vec::new();
    let replicas = if run_replicas {
        eprintln!("[bench] several replicas: {:?} replicas", ropts.replicas);
        let unpinned = wrk::Wrk {
            script: &wrk_script,
            cpu: None,
        };
        match replicas::run(&ropts, work.path(), &issuer, &unpinned) {
            Ok(r) => {
                commands.extend(r.commands.iter().cloned());
                Some(r)
            }
            Err(e) => {
                eprintln!("[bench] replicas FAILED: {e:#}");
                section_errors.push(format!("replicas: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let scaling = if run_scaling {
        let (max, secs) = scale;
        eprintln!("[bench] section 3: filter cache scaling up to {max} distinct tokens");
        // A failure here must not lose the sections already measured: it is reported.
        match scaling::run(max, secs, work.path(), &issuer, &wrk, &popts.filter_wasm) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("[bench] scaling FAILED: {e:#}");
                section_errors.push(format!("scaling: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let soak = if run_soak {
        let (secs, slice) = soak_plan;
        eprintln!("[bench] section 4: soak, {secs} s of mixed traffic in slices of {slice} s");
        match soak::run(
            secs,
            slice,
            work.path(),
            &issuer,
            &popts.filter_wasm,
            &wrk_script,
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("[bench] soak FAILED: {e:#}");
                section_errors.push(format!("soak: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let mappings = if run_mappings {
        eprintln!("[bench] section 5: mapping scaling, steps {:?}", mo.steps);
        let unpinned = wrk::Wrk {
            script: &wrk_script,
            cpu: None,
        };
        match mappings::run(&mo, work.path(), &issuer, &unpinned) {
            Ok(s) => Some((mo, s)),
            Err(e) => {
                eprintln!("[bench] mappings FAILED: {e:#}");
                section_errors.push(format!("mappings: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let cpu1 = machine::CpuTimes::now();
    let samples_steal: Vec<f64> = proxy
        .iter()
        .flat_map(|p| p.rows.iter().flat_map(|(_, s)| s.iter().map(|x| x.steal)))
        .chain(
            exchange
                .iter()
                .flat_map(|x| x.cells.iter().flat_map(|(_, s)| s.iter().map(|v| v.steal))),
        )
        .collect();
    facts.push(load("load average (1 min) at the end"));
    facts.push((
        "CPU steal over the whole run (/proc/stat)".into(),
        format!(
            "{:.2} % (largest in one measurement: {:.2} %)",
            cpu0.steal_share(&cpu1) * 100.0,
            samples_steal.iter().copied().fold(0.0, f64::max) * 100.0
        ),
    ));
    facts.push((
        "machine busy over the whole run (all processes)".into(),
        format!("{:.1} %", cpu0.busy_share(&cpu1) * 100.0),
    ));
    facts.push((
        "run time".into(),
        format!("{:.0} s", t0.elapsed().as_secs_f64()),
    ));
    facts.push((
        "Envoy".into(),
        sh(
            &meshpass_testkit::envoy_bin().to_string_lossy(),
            &["--version"],
        ),
    ));
    facts.push((
        "OpenBao".into(),
        sh(&meshpass_testkit::bao_bin().to_string_lossy(), &["version"]),
    ));
    facts.push(("wrk".into(), sh("wrk", &["-v"])));
    facts.push(("rustc".into(), sh("rustc", &["-V"])));
    facts.push((
        "exchange service binary".into(),
        meshpass_testkit::exchange_bin().display().to_string(),
    ));
    facts.push((
        "meshpass commit".into(),
        sh(
            "git",
            &[
                "-C",
                &root.to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        ),
    ));
    if let Some(b) = &args.baseline_wasm {
        facts.push(("baseline filter".into(), b.display().to_string()));
    }
    let run = Run {
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        facts,
        commands,
        proxy,
        exchange,
        scaling,
        soak,
        mappings,
        replicas,
        notes: section_errors
            .iter()
            .map(|e| format!("**A section failed in this run**: {e}\n\n"))
            .collect::<String>()
            + include_str!("../notes.md"),
    };
    let (out, charts_dir) = if args.smoke {
        (
            work.path().join("BENCHMARKS.md"),
            work.path().join("charts"),
        )
    } else {
        (
            args.out
                .clone()
                .unwrap_or_else(|| root.join("BENCHMARKS.md")),
            args.charts
                .clone()
                .unwrap_or_else(|| root.join("bench/charts")),
        )
    };
    let rel = charts_dir
        .strip_prefix(out.parent().unwrap_or(&root))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| charts_dir.display().to_string());
    report::write(&run, &out, &charts_dir, &rel)?;
    if !section_errors.is_empty() {
        bail!(
            "{} section(s) failed (the report says which)",
            section_errors.len()
        );
    }
    if args.smoke {
        smoke_check(&run)?;
        eprintln!("[bench] smoke: report and charts written and every row served without errors");
    } else {
        eprintln!(
            "[bench] wrote {} and {}",
            out.display(),
            charts_dir.display()
        );
    }
    Ok(())
}

/// The smoke run (`make test`) fails unless every row served requests without errors.
fn smoke_check(run: &Run) -> Result<()> {
    let r = run
        .replicas
        .as_ref()
        .ok_or_else(|| anyhow!("the smoke run measured no replicas row"))?;
    for (row, samples) in &r.cells {
        for s in samples {
            if s.wrk.requests == 0 || s.wrk.errors() > 0 {
                bail!("smoke: row {} measured {:?}", row.name(), s.wrk);
            }
        }
    }
    let p = run
        .proxy
        .as_ref()
        .ok_or_else(|| anyhow!("the smoke run measured nothing"))?;
    for (row, samples) in &p.rows {
        for s in samples {
            if s.wrk.requests == 0 || s.wrk.errors() > 0 || s.envoy_cpu_us <= 0.0 {
                bail!(
                    "smoke: row {} measured {:?} (Envoy {} µs/req)",
                    row.name(),
                    s.wrk,
                    s.envoy_cpu_us
                );
            }
        }
    }
    if let Some((_, steps)) = &run.mappings {
        for s in steps {
            for c in &s.cells {
                if c.rps <= 0.0 || c.errors > 0 {
                    bail!(
                        "smoke: mappings {} × {} measured {:?}",
                        s.backend.name(),
                        s.mappings,
                        c
                    );
                }
            }
        }
    }
    Ok(())
}

//! `make demo`: starts the whole meshpass stack on loopback (client and server Envoy
//! sidecars with the meshpass filter, the exchange service on SQLite, an OpenBao dev
//! server with transit, a JWT-SVID issuer and an echo app), walks through one exchange,
//! then leaves everything running for `curl` until Ctrl-C. `--once` exits after the
//! walkthrough.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meshpass_e2e::jwt::decode_unverified;
use meshpass_e2e::topology::{
    Options, Reply, Topology, APP_RESOURCE, DEFAULT_SCOPE, SVID_AUDIENCE, TRUST_DOMAIN,
};
use serde_json::Value;

const USAGE: &str = "usage: meshpass-demo [--once]

Starts Envoy (client + server sidecars) with the meshpass filter, the exchange service
(SQLite), OpenBao (dev server), a JWT-SVID issuer and an echo app on 127.0.0.1, shows one
token exchange end to end, then keeps the stack up for you to curl until Ctrl-C.

  --once   run the walkthrough and exit (0 when every step behaved as expected)";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut once = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(once).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmeshpass demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `text` in bold when stdout is a terminal.
fn bold(text: &str) -> String {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn step(n: u32, title: &str) {
    println!("\n{}", bold(&format!("[{n}/8] {title}")));
}

fn short(token: &str) -> String {
    if token.len() > 40 {
        format!(
            "{}…{} ({} bytes)",
            &token[..24],
            &token[token.len() - 8..],
            token.len()
        )
    } else {
        token.to_string()
    }
}

fn indent_json(v: &Value) -> String {
    serde_json::to_string_pretty(v)
        .unwrap_or_default()
        .lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn expect(cond: bool, what: &str, reply: &Reply) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{what}: {reply}"))
    }
}

async fn run(once: bool) -> Result<()> {
    println!(
        "{}: a workload's JWT-SVID goes in, a Vault-signed participant token comes out.",
        bold("meshpass demo")
    );
    step(
        1,
        "starting the stack on 127.0.0.1 (SQLite store, OpenBao dev server)",
    );
    let started = Instant::now();
    // Listening from the start: a Ctrl-C while the stack starts or during the
    // walkthrough stops what was started (the components run in process groups of
    // their own, so the terminal's SIGINT reaches only the demo).
    let interrupted = wait_for_shutdown();
    tokio::pin!(interrupted);
    let topo = tokio::select! {
        t = Topology::start(Options::default()) => t.context("starting the topology")?,
        () = &mut interrupted => {
            println!("\ninterrupted while starting; stopped what was started.");
            anyhow::bail!("interrupted");
        }
    };
    let walked = tokio::select! {
        r = walkthrough(&topo, started, once) => Some(r),
        () = &mut interrupted => None,
    };
    let result = match walked {
        None => Err(anyhow::anyhow!("interrupted during the walkthrough")),
        Some(Err(e)) => {
            eprintln!("\ncomponent logs:\n{}", topo.diagnostics(25));
            Err(anyhow::anyhow!("{e:#}"))
        }
        Some(Ok(())) => {
            if !once {
                interrupted.await;
            }
            Ok(())
        }
    };
    println!("\nstopping Envoy, the exchange service and OpenBao ...");
    drop(topo);
    println!("stopped; nothing left running.");
    result
}

async fn walkthrough(t: &Topology, started: Instant, once: bool) -> Result<()> {
    let p = &t.ports;
    println!(
        "    up in {:.1?} (work dir {}):",
        started.elapsed(),
        t.dir().display()
    );
    println!("      client sidecar  (Envoy, meshpass CLIENT)   http://127.0.0.1:{}   (the app's outbound listener)", p.client_exchange);
    println!("      client sidecar  (Envoy, no filter)         http://127.0.0.1:{}   (forwards over mTLS to the SERVER-mode listener)", p.client_plain);
    println!("      server sidecar  (Envoy, mTLS: meshpass SERVER + jwt_authn) 127.0.0.1:{}; jwt_authn only: 127.0.0.1:{}", p.server_mesh, p.server_exchanged);
    println!(
        "      exchange service (meshpass-exchange)       http://127.0.0.1:{}",
        p.exchange
    );
    println!(
        "      OpenBao dev server (transit)               {}",
        t.bao.lock().await.addr()
    );
    println!("      JWT-SVID issuer JWKS                       http://127.0.0.1:{}/.well-known/jwks.json", p.svid_jwks);
    println!(
        "      echo app (reports the headers it got)      http://127.0.0.1:{}",
        p.app
    );

    step(2, "mappings seeded into the exchange service's store");
    if let Some(ms) = t.exchange_config["mappings"].as_array() {
        for m in ms {
            println!(
                "      {:<22} {} -> resource {:<10} participant {:<7} scopes {}  ttl {}s",
                m["name"].as_str().unwrap_or("?"),
                m["subject"].as_str().unwrap_or("?"),
                m["resource"].as_str().unwrap_or("?"),
                m["participant"].as_str().unwrap_or("?"),
                m["scopes"],
                m["ttl_secs"]
            );
        }
    }
    println!("      (spiffe://{TRUST_DOMAIN}/ns/demo/sa/batch has no mapping)");

    step(
        3,
        "the caller's JWT-SVID (workload frontend, minted by the test SPIFFE issuer)",
    );
    let svid = t.mint_with_ttl("frontend", 3600)?;
    let d = decode_unverified(&svid)?;
    println!("    token  {}", short(&svid));
    println!("    header {}", d.header);
    println!("    claims\n{}", indent_json(&d.claims));

    step(
        4,
        "CLIENT mode: frontend's app calls through its sidecar with that JWT-SVID",
    );
    let before = t.client_exchanges().await?;
    let r = t.via_client_mode("/orders/42", Some(&svid)).await?;
    expect(
        r.status == 200,
        "the request through the client sidecar failed",
        &r,
    )?;
    let after = t.client_exchanges().await?;
    println!(
        "    the filter checked signature, issuer, audience {SVID_AUDIENCE:?}, expiry, trust domain and that the"
    );
    println!(
        "    subject is the sidecar's own identity, then exchanged it (RFC 8693) at the service:"
    );
    println!(
        "      POST /token grant_type=token-exchange subject_token=<JWT-SVID> resource={APP_RESOURCE} audience={APP_RESOURCE} scope={DEFAULT_SCOPE}"
    );
    println!("      exchanges sent by the client sidecar: {before} -> {after}");
    let seen = r.echo()?;
    let participant = seen
        .bearer()
        .context("the app got no bearer token")?
        .to_string();
    let pd = decode_unverified(&participant)?;
    println!(
        "    participant token (signed by OpenBao transit, never by a key the service holds):"
    );
    println!("      kid    {}", pd.header["kid"].as_str().unwrap_or("?"));
    println!("      header {}", pd.header);
    println!("      claims\n{}", indent_json(&pd.claims));
    println!(
        "    what the app received (after the server sidecar's jwt_authn verified the token with"
    );
    println!("    the exchange service's /.well-known/jwks.json):");
    println!("      {} {}", seen.method, seen.path);
    for (k, v) in &seen.headers {
        let shown = if k == "authorization" {
            format!("Bearer {}", short(&participant))
        } else {
            v.clone()
        };
        println!("      {k}: {shown}");
    }
    println!(
        "      the original JWT-SVID reached the app: {}",
        if seen.headers.values().any(|v| v.contains(&svid)) {
            "YES (bug!)"
        } else {
            "no"
        }
    );
    let r2 = t.via_client_mode("/orders/43", Some(&svid)).await?;
    expect(r2.status == 200, "the second request failed", &r2)?;
    println!(
        "    a second request with the same JWT-SVID is served from the filter's cache: exchanges {} -> {}",
        after,
        t.client_exchanges().await?
    );

    step(
        5,
        "SERVER mode: workload reporting calls over mTLS; the receiving sidecar exchanges",
    );
    let rep = t.mint_with_ttl("reporting", 3600)?;
    let r = t
        .via_server_mode("reporting", "/orders", Some(&rep))
        .await?;
    expect(r.status == 200, "the SERVER-mode request failed", &r)?;
    let seen = r.echo()?;
    let pt = decode_unverified(seen.bearer().unwrap_or_default())?;
    println!(
        "    bound to the peer certificate {}; the app got a token with sub {} participant {} scope {}",
        seen.header("x-forwarded-client-cert").unwrap_or("?"),
        pt.claims["sub"],
        pt.claims["participant"],
        pt.claims["scope"]
    );

    step(6, "a rejected request");
    let r = t.via_client_mode("/orders", Some(&rep)).await?;
    expect(
        r.status == 401,
        "reporting's token at frontend's sidecar was not refused",
        &r,
    )?;
    println!("    reporting's JWT-SVID sent through frontend's sidecar (a stolen token):");
    println!("      HTTP {} {}", r.status, r.body);
    let batch = t.mint_with_ttl("batch", 3600)?;
    let r = t.via_server_mode("batch", "/orders", Some(&batch)).await?;
    expect(r.status == 403, "the unmapped workload was not refused", &r)?;
    println!("    workload batch (valid JWT-SVID, no mapping):");
    println!("      HTTP {} {}", r.status, r.body);

    step(
        7,
        "a live change: meshpassctl adds batch's mapping, no restart",
    );
    live_change(t).await?;

    step(
        8,
        "a revocation: meshpassctl revokes frontend, its cached token stops working on the running stack",
    );
    revocation(t, &svid).await?;

    // `--once` stops the stack when the walkthrough ends: commands for it would fail.
    if once {
        println!("\n(--once: walkthrough complete; the stack stops now. `make demo` without --once keeps it running for curl.)");
        return Ok(());
    }
    // Tokens for the user's own requests.
    let files = [("frontend", &svid), ("reporting", &rep), ("batch", &batch)];
    for (name, tok) in files {
        std::fs::write(t.dir().join(format!("{name}.jwt")), tok)?;
    }
    let dir = t.dir().display();
    println!(
        "\n{} (JWT-SVIDs valid for 1 hour, written to {dir}):",
        bold("try it yourself")
    );
    println!("  # CLIENT mode: frontend's app -> its sidecar -> server sidecar -> echo app");
    println!("  curl -s -H \"Authorization: Bearer $(cat {dir}/frontend.jwt)\" http://127.0.0.1:{}/orders", p.client_exchange);
    println!("  # SERVER mode: reporting's mTLS connection, exchanged by the receiving sidecar");
    println!("  curl -s -H 'x-e2e-identity: reporting' -H \"Authorization: Bearer $(cat {dir}/reporting.jwt)\" http://127.0.0.1:{}/orders", p.client_plain);
    println!("  # rejected (401): someone else's token through frontend's sidecar");
    println!("  curl -si -H \"Authorization: Bearer $(cat {dir}/reporting.jwt)\" http://127.0.0.1:{}/orders", p.client_exchange);
    println!("  # batch: refused (403) until step 7 added its mapping, served now");
    println!("  curl -si -H 'x-e2e-identity: batch' -H \"Authorization: Bearer $(cat {dir}/batch.jwt)\" http://127.0.0.1:{}/orders", p.client_plain);
    println!("  # the keys any verifier uses, and the discovery document");
    println!(
        "  curl -s http://127.0.0.1:{}/.well-known/jwks.json",
        p.exchange
    );
    println!(
        "  curl -s http://127.0.0.1:{}/.well-known/openid-configuration",
        p.exchange
    );
    println!("  # filter counters");
    println!(
        "  curl -s 'http://127.0.0.1:{}/stats?filter=meshpass'",
        p.client_admin
    );
    println!("\nthe stack keeps running; press Ctrl-C to stop everything.");
    Ok(())
}

/// Runs `meshpassctl --server <management API> ARGS` with the ops workload's token;
/// prints the command and its output, returns stdout.
fn meshpassctl(t: &Topology, args: &[&str]) -> Result<String> {
    let ctl = meshpass_testkit::bin_path("MESHPASS_CTL_BIN", "target/debug/meshpassctl");
    let server = format!("http://127.0.0.1:{}", t.ports.management);
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("{a:?}")
            } else {
                a.to_string()
            }
        })
        .collect();
    println!("    $ meshpassctl --server {server} {}", shown.join(" "));
    let out = std::process::Command::new(&ctl)
        .args(["--server", &server])
        .args(args)
        .env("MESHPASS_TOKEN", t.management_token()?)
        .output()
        .with_context(|| format!("running {} (make build builds it)", ctl.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in stdout.lines() {
        println!("    {line}");
    }
    anyhow::ensure!(
        out.status.success(),
        "meshpassctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Requests `path` with `token` through the CLIENT-mode listener until `done` holds
/// (10 s at most); the last reply and how long it took.
async fn until_reply(
    t: &Topology,
    token: &str,
    done: impl Fn(&Reply) -> bool,
) -> Result<(Reply, Duration)> {
    let start = Instant::now();
    loop {
        let r = t.via_client_mode("/orders", Some(token)).await?;
        if done(&r) || start.elapsed() > Duration::from_secs(10) {
            return Ok((r, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Step 8: revoke frontend through `meshpassctl`; the filter (which polls the
/// service's revocation feed) refuses its cached token, then lifting restores it.
async fn revocation(t: &Topology, svid: &str) -> Result<()> {
    let r = t.via_client_mode("/orders", Some(svid)).await?;
    expect(
        r.status == 200,
        "frontend's cached token before the revocation",
        &r,
    )?;
    println!(
        "    frontend's token is cached in its sidecar (HTTP {}); the filters poll GET /revocations every {} ms",
        r.status, t.options.revocation_poll_ms
    );
    let frontend = t.spiffe_id("frontend");
    let out = meshpassctl(
        t,
        &[
            "revocations",
            "add",
            "--subject",
            &frontend,
            "--reason",
            "demo: compromised node",
        ],
    )?;
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("rv-"))
        .context("meshpassctl printed no revocation id")?
        .to_string();
    let (r, took) = until_reply(t, svid, |r| r.status == 403).await?;
    expect(
        r.status == 403,
        "frontend was not refused after the revocation",
        &r,
    )?;
    println!(
        "    frontend's next requests, same cached token: refused {:.1?} later",
        took
    );
    println!("      HTTP {} {}", r.status, r.body);
    meshpassctl(t, &["revocations", "lift", &id])?;
    let (r, took) = until_reply(t, svid, |r| r.status == 200).await?;
    expect(
        r.status == 200,
        "frontend was still refused after the lift",
        &r,
    )?;
    println!(
        "    lifted: frontend is served again {:.1?} later: HTTP {} (a new participant token)",
        took, r.status
    );
    Ok(())
}

/// Step 7: the management API through `meshpassctl`, as an operator would use it.
async fn live_change(t: &Topology) -> Result<()> {
    let mapping = serde_json::json!({
        "name": "batch-echo",
        "subject": t.spiffe_id("batch"),
        "resource": APP_RESOURCE,
        "participant": "initech",
        "audiences": [APP_RESOURCE],
        "scopes": ["orders.read"],
        "ttl_secs": 600,
        "allowed_callers": [t.spiffe_id("echo")],
    });
    let file = t.dir().join("batch-mapping.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&mapping)?)?;
    let ctl = meshpass_testkit::bin_path("MESHPASS_CTL_BIN", "target/debug/meshpassctl");
    let server = format!("http://127.0.0.1:{}", t.ports.management);
    println!(
        "    $ meshpassctl --server {server} mappings apply -f {}",
        file.display()
    );
    let out = std::process::Command::new(&ctl)
        .args(["--server", &server, "mappings", "apply", "-f"])
        .arg(&file)
        .env("MESHPASS_TOKEN", t.management_token()?)
        .output()
        .with_context(|| format!("running {} (make build builds it)", ctl.display()))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "meshpassctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = t.mint_with_ttl("batch", 3600)?;
    let r = t.via_server_mode("batch", "/orders", Some(&batch)).await?;
    expect(
        r.status == 200,
        "batch was still refused after the mapping was added",
        &r,
    )?;
    let pt = decode_unverified(r.echo()?.bearer().unwrap_or_default())?;
    println!(
        "    batch's next request: HTTP {}, the app got a token with participant {} (the service was not restarted)",
        r.status, pt.claims["participant"]
    );
    Ok(())
}

async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    // Give the terminal's ^C a line of its own.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

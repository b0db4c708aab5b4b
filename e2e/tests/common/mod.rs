//! Shared by the scenario test binaries (`mesh`, `faults`, both `harness = false`): a
//! libtest-compatible runner that makes every scenario its own test (listed, filtered
//! and counted by cargo) while all of a binary's scenarios share one topology, and the
//! assertions they share.

// Test support may unwrap and panic (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use meshpass_e2e::jwt::decode_unverified;
use meshpass_e2e::topology::{
    Reply, Topology, APP_RESOURCE, DEFAULT_SCOPE, PARTICIPANT_CLAIM, SCOPE_CLAIM, TRANSIT_KEY,
};
use serde_json::Value;

/// A scenario body: borrows the binary's shared context `C` for one run.
pub type ScenarioFn<C> = for<'a> fn(&'a C) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// One named scenario; the name is the test name cargo lists and filters on.
pub struct Scenario<C> {
    pub name: &'static str,
    pub run: ScenarioFn<C>,
}

/// `scenarios![a, b]`: one [`Scenario`] per `async fn NAME(&C) -> Result<()>`, named
/// after the function, in the order given (which is the order they run in).
macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        vec![$(common::Scenario {
            name: stringify!($name),
            run: |c| Box::pin($name(c)),
        }),+]
    };
}
pub(crate) use scenarios;

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Prints progress notes only with `--nocapture` (like a captured `eprintln!` under the
/// standard harness), so the default output stays plain libtest format.
pub fn note(msg: impl std::fmt::Display) {
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!("{msg}");
    }
}

enum State<C, S> {
    NotStarted(S),
    Up(C),
    /// Start failed; the flag says whether a scenario has reported the full error yet.
    Failed(String, bool),
    TornDown,
}

struct Shared<C, S> {
    suite: &'static str,
    rt: tokio::runtime::Runtime,
    state: Mutex<State<C, S>>,
    diagnostics: fn(&C) -> String,
}

/// The `main` of a scenario binary. Parses the libtest command line (filters, `--exact`,
/// `--skip`, `--list`, `--nocapture`, `--format`...), forces one test thread (scenarios
/// share the context and run in the order given), starts the context with `start` on
/// the first scenario that actually runs (so `--list` or a filter matching nothing
/// starts nothing), runs each scenario as a libtest trial, then drops the context
/// (killing every process it started) before returning the exit code. A failing
/// scenario's message ends with `diagnostics` (the components' log tails).
pub fn run_scenarios<C, S, Fut>(
    suite: &'static str,
    start: S,
    diagnostics: fn(&C) -> String,
    scenarios: Vec<Scenario<C>>,
) -> ExitCode
where
    C: Send + 'static,
    S: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<C>>,
{
    let mut args = Arguments::from_args();
    // Scenarios share one context and may depend on the order they run in.
    args.test_threads = Some(1);
    VERBOSE.store(args.nocapture, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    let shared = Arc::new(Shared {
        suite,
        rt,
        state: Mutex::new(State::NotStarted(start)),
        diagnostics,
    });
    let trials = scenarios
        .into_iter()
        .map(|s| {
            let shared = shared.clone();
            Trial::test(s.name, move || shared.run(s.run))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    shared.tear_down();
    conclusion.exit_code()
}

impl<C, S, Fut> Shared<C, S>
where
    S: FnOnce() -> Fut,
    Fut: Future<Output = Result<C>>,
{
    fn run(&self, scenario: ScenarioFn<C>) -> Result<(), Failed> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, State::NotStarted(_)) {
            let State::NotStarted(start) = std::mem::replace(&mut *state, State::TornDown) else {
                unreachable!()
            };
            let t = Instant::now();
            *state = match catch_unwind(AssertUnwindSafe(|| self.rt.block_on(start()))) {
                Ok(Ok(ctx)) => {
                    note(format!(
                        "[{}] topology up in {:.1?}",
                        self.suite,
                        t.elapsed()
                    ));
                    State::Up(ctx)
                }
                Ok(Err(e)) => State::Failed(format!("{e:#}"), false),
                Err(panic) => State::Failed(panic_message(&*panic), false),
            };
        }
        match &mut *state {
            State::Up(ctx) => {
                let ctx = &*ctx;
                let outcome = catch_unwind(AssertUnwindSafe(|| self.rt.block_on(scenario(ctx))));
                let error = match outcome {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(panic) => panic_message(&*panic),
                };
                Err(format!("{error}\n\ncomponent logs:\n{}", (self.diagnostics)(ctx)).into())
            }
            State::Failed(error, reported) => Err(if std::mem::replace(reported, true) {
                format!("[{}] the topology did not start (error above)", self.suite).into()
            } else {
                format!("[{}] the topology did not start: {error}", self.suite).into()
            }),
            State::NotStarted(_) | State::TornDown => {
                Err(format!("[{}] the topology is gone", self.suite).into())
            }
        }
    }
}

impl<C, S> Shared<C, S> {
    /// Drops the context (inside the runtime, for its servers' tasks), then leaves the
    /// runtime to be dropped with `self`.
    fn tear_down(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Up(ctx) = std::mem::replace(&mut *state, State::TornDown) {
            let t = Instant::now();
            let _guard = self.rt.enter();
            drop(ctx);
            note(format!("[{}] torn down in {:.1?}", self.suite, t.elapsed()));
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    format!("panicked: {text}")
}

/// The app got a participant token for `workload` (not `original`) with every claim
/// the contract promises; returns its claims.
pub fn assert_participant_token(
    topo: &Topology,
    reply: &Reply,
    workload: &str,
    participant: &str,
    original: &str,
) -> Result<Value> {
    ensure!(reply.status == 200, "expected 200, got {reply}");
    let seen = reply.echo()?;
    let bearer = seen
        .bearer()
        .context("the app received no Bearer token")?
        .to_string();
    ensure!(bearer != original, "the app received the original JWT-SVID");
    for (name, value) in &seen.headers {
        ensure!(
            !value.contains(original),
            "the original JWT-SVID reached the app in header {name}"
        );
    }
    let jwt = decode_unverified(&bearer)?;
    let c = &jwt.claims;
    ensure!(
        c["iss"] == topo.exchange_issuer().as_str(),
        "iss {} != {}",
        c["iss"],
        topo.exchange_issuer()
    );
    ensure!(
        c["sub"] == topo.spiffe_id(workload).as_str(),
        "sub {} != {}",
        c["sub"],
        topo.spiffe_id(workload)
    );
    let aud_ok = c["aud"] == APP_RESOURCE
        || c["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == APP_RESOURCE));
    ensure!(aud_ok, "aud {} does not contain {APP_RESOURCE}", c["aud"]);
    ensure!(
        c["scope"] == DEFAULT_SCOPE,
        "scope {} != {DEFAULT_SCOPE}",
        c["scope"]
    );
    ensure!(
        c[PARTICIPANT_CLAIM] == participant,
        "{PARTICIPANT_CLAIM} {} != {participant}",
        c[PARTICIPANT_CLAIM]
    );
    ensure!(
        c[SCOPE_CLAIM.0] == SCOPE_CLAIM.1,
        "scope claim {} = {} (expected {})",
        SCOPE_CLAIM.0,
        c[SCOPE_CLAIM.0],
        SCOPE_CLAIM.1
    );
    for claim in ["iat", "exp", "jti"] {
        ensure!(!c[claim].is_null(), "claim {claim} missing: {c}");
    }
    let kid = jwt.header["kid"].as_str().unwrap_or_default();
    ensure!(
        kid.starts_with(&format!("{TRANSIT_KEY}:v")),
        "kid {kid:?} is not {TRANSIT_KEY}:vN"
    );
    ensure!(jwt.header["alg"] == "ES256", "alg {}", jwt.header["alg"]);
    Ok(c.clone())
}

/// The request was refused by the sidecar with `status` and an RFC 6749-style
/// `error`, whose description contains `because`; the app never saw it.
pub fn assert_rejected(reply: &Reply, status: u16, error: &str, because: &str) -> Result<()> {
    ensure!(reply.status == status, "expected {status}, got {reply}");
    ensure!(
        reply.echo().is_err(),
        "the request reached the app: {reply}"
    );
    let body: Value = serde_json::from_str(&reply.body)
        .with_context(|| format!("error body is not JSON: {reply}"))?;
    ensure!(
        body["error"] == error,
        "error {} != {error}: {reply}",
        body["error"]
    );
    let desc = body["error_description"].as_str().unwrap_or_default();
    ensure!(
        desc.to_lowercase().contains(&because.to_lowercase()),
        "error_description {desc:?} does not say {because:?}"
    );
    if status == 401 {
        ensure!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "401 without WWW-Authenticate: {reply}"
        );
    }
    Ok(())
}

/// Polls `f` every 250 ms until it returns Ok(true), failing after `timeout` with the
/// last error or state.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => "condition false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            Instant::now() < deadline,
            "{what}: not true after {timeout:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

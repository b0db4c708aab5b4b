//! What an operator reads (docs/operations.md, exchange-svc/README.md, istio/) against
//! what the real `meshpass-exchange` binary does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::OpenBao;
use mgmt_common::{management_toml, KEYS_OP, MGMT_AUD};
use serde_json::json;

fn repo_file(rel: &str) -> String {
    let p = meshpass_testkit::workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `meshpass-exchange serve --config` as a child process, killed on drop.
struct Svc {
    _serving: Serving,
    log: PathBuf,
    base: String,
    _dir: tempfile::TempDir,
}

impl Svc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes `toml`, starts the binary on it and waits for `/readyz` 200.
async fn serve(dir: tempfile::TempDir, port: u16, toml: &str) -> Svc {
    let cfg = dir.path().join("exchange.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = dir.path().join("exchange.log");
    let svc = Svc {
        _serving: Serving::start(&cfg, &log),
        log,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let http = reqwest::Client::new();
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", svc.base)).send().await {
            if r.status() == 200 {
                return svc;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the service never became ready:\n{}",
            svc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The standard test configuration on the binary: the shared OpenBao's transit key
/// `key` signing with `vault_token`, the token endpoint on `port`.
fn binary_config(
    issuer: &TestIssuer,
    db: &Path,
    bao: &OpenBao,
    key: &str,
    vault_token: &str,
    port: u16,
    extra: &str,
) -> String {
    let vault = format!(
        "address = \"{}\"\nkey_name = \"{key}\"\npublish_lead = \"0s\"\nauth = {{ method = \"token\", token = \"{vault_token}\" }}",
        bao.addr()
    );
    config_toml_vault(
        issuer,
        db,
        &vault,
        &format!("\n[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_delay_secs = 0\n{extra}"),
    )
}

/// istio/vault/meshpass-signer.hcl: "An operator who rotates with bao only may drop the
/// last two paths (then `POST /api/v1/keys/rotate` and `/retire` answer 500 and log
/// Vault's refusal)". The binary answers that rotation with another status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_the_shipped_policy_without_its_key_paths_refuses_answers_the_status_its_comment_gives(
) {
    meshpass_testkit::clear_vault_env_once();
    let hcl = repo_file("istio/vault/meshpass-signer.hcl");
    let promised: u16 = {
        let i = hcl
            .find("/retire` answer ")
            .expect("the comment about dropping the key paths");
        hcl[i + "/retire` answer ".len()..][..3].parse().unwrap()
    };
    let bao = OpenBao::shared();
    let key = new_transit_key(bao);
    // The shipped policy with the last two paths dropped, as the comment allows.
    let cut = hcl
        .find("path \"transit/keys/meshpass-participant/rotate\"")
        .unwrap();
    let policy = hcl[..cut].replace("meshpass-participant", &key);
    assert!(policy.contains(&format!("transit/sign/{key}")), "{policy}");
    let name = format!("signer-only-{key}");
    bao.write_policy(&name, &policy);
    let vault_token = bao.create_token(&[&name], "1h");

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let port = meshpass_testkit::free_port();
    let mgmt_port = meshpass_testkit::free_port();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let mgmt = management_toml("").replace("127.0.0.1:0", &format!("127.0.0.1:{mgmt_port}"));
    let toml = binary_config(&issuer, &db, bao, &key, &vault_token, port, &mgmt);
    let svc = serve(dir, port, &toml).await;
    let t = now();
    let token = issuer
        .sign(&json!({"iss": ISSUER, "sub": KEYS_OP, "aud": [MGMT_AUD], "iat": t, "exp": t + 600}));
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{mgmt_port}/api/v1/keys/rotate"))
        .bearer_auth(token)
        .header("x-forwarded-client-cert", format!("URI={KEYS_OP}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").cloned();
    let body = r.text().await.unwrap();
    assert_eq!(bao.transit_key_version(&key), 1, "rotated anyway: {body}");
    assert_eq!(
        status,
        promised,
        "meshpass-signer.hcl says a rotation without the rotate path answers {promised}; \
         the service answered {status} (Retry-After: {retry_after:?}): {body}\n{}",
        svc.log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The value of the sample `series` (name and labels exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// istio/monitoring/prometheusrule.yaml, `MeshpassSigningFailures` (critical):
/// `rate(meshpass_vault_sign_errors_total[5m]) > 0` for 5 minutes, "transit/sign is
/// failing ... exchanges answer 503. Check Vault/OpenBao (sealed? ...)". While Vault is
/// down or sealed, the signer counts the first failed requests and then fails fast
/// without counting (`TransitSigner::sign` returns before `dispatch`): the counter stops
/// after three, its 5-minute rate falls back to 0 while every exchange still answers
/// 503, so the alert cannot stay true for its 5 minutes of an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_failures_alert_counter_keeps_counting_while_vault_is_down() {
    meshpass_testkit::clear_vault_env_once();
    let rules = repo_file("istio/monitoring/prometheusrule.yaml");
    assert!(
        rules.contains("rate(meshpass_vault_sign_errors_total[5m])) > 0"),
        "the alert changed"
    );
    let mut bao = own_openbao();
    let key = new_transit_key(&bao);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let port = meshpass_testkit::free_port();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = binary_config(&issuer, &db, &bao, &key, bao.root_token(), port, "").replace(
        "publish_lead = \"0s\"",
        "publish_lead = \"0s\"\nrequest_timeout = \"500ms\"",
    );
    let svc = serve(dir, port, &toml).await;
    let http = reqwest::Client::new();
    let mut n = 0u64;
    let mut exchange = || {
        n += 1;
        // A new subject token each time: never a cache hit, every answer is signed.
        let body = exchange_form(
            &issuer.svid(WEB, now() + n, 3600),
            &[("resource", "payments")],
        );
        let r = http
            .post(format!("{}/token", svc.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .body(body)
            .send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, body) = exchange().await;
    assert_eq!(st, 200, "{body}");
    let metrics = || {
        let r = http.get(format!("{}/metrics", svc.base)).send();
        async move { r.await.unwrap().text().await.unwrap() }
    };
    bao.stop();
    let mut refused = 0;
    for _ in 0..20 {
        let (st, body) = exchange().await;
        assert_eq!(st, 503, "{body}");
        refused += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics().await;
    let counted = sample(&m, "meshpass_vault_sign_errors_total").unwrap();
    let failed = sample(
        &m,
        "meshpass_sign_duration_seconds_count{outcome=\"error\"}",
    )
    .unwrap_or(0.0);
    assert!(
        counted >= f64::from(refused),
        "Vault down: {refused} exchanges answered 503 (meshpass_sign_duration_seconds \
         counts {failed} failed signings), but meshpass_vault_sign_errors_total, which \
         MeshpassSigningFailures watches, counted only {counted}: its rate returns to 0 \
         while the outage goes on"
    );
}

/// istio/monitoring/prometheusrule.yaml, `MeshpassIssuerJwksStale`:
/// `meshpass_issuer_jwks_age_seconds > 900` for 5 minutes, "The exchange service cannot
/// fetch the subject-token issuer's JWKS". For an issuer configured with inline keys
/// (`issuers[].jwks`, README: "inline JWKS text", nothing to fetch) the gauge is the
/// time since the process started and grows forever: 20 minutes after every start the
/// alert fires, and stays firing, for an issuer that has nothing to refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_inline_keys_never_ages_towards_the_stale_jwks_alert() {
    meshpass_testkit::clear_vault_env_once();
    let rules = repo_file("istio/monitoring/prometheusrule.yaml");
    assert!(
        rules.contains("meshpass_issuer_jwks_age_seconds > 900"),
        "the alert changed"
    );
    let bao = OpenBao::shared();
    let key = new_transit_key(bao);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let port = meshpass_testkit::free_port();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = binary_config(&issuer, &db, bao, &key, bao.root_token(), port, "");
    assert!(toml.contains("jwks = '"), "the issuer's keys are inline");
    let svc = serve(dir, port, &toml).await;
    let http = reqwest::Client::new();
    let series = format!("meshpass_issuer_jwks_age_seconds{{issuer=\"{ISSUER}\"}}");
    let age = || {
        let r = http.get(format!("{}/metrics", svc.base)).send();
        let series = series.clone();
        async move { sample(&r.await.unwrap().text().await.unwrap(), &series).unwrap() }
    };
    let first = age().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = age().await;
    assert!(
        later <= first,
        "the inline issuer's key age grew from {first} to {later} s in 3 s: it counts \
         from the process start, so after 900 s MeshpassIssuerJwksStale fires for keys \
         that are never fetched"
    );
}

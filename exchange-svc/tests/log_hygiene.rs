//! Secret hygiene of logs, error answers, audit records and metrics, and the metrics'
//! contract (exchange-svc/README.md "Metrics"), against the real binary and real
//! components (OpenBao, SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod mgmt_common;
mod replicas_common;

use std::time::Duration;

use common::*;
use mgmt_common::{Db, Service, ADMIN, MGMT_AUD};
use serde_json::{json, Value};

/// The signature segment of a compact JWS (what makes it a bearer credential).
fn sig(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

/// Lines of `log` that hold `needle`, for a failure message.
fn lines_with(log: &str, needle: &str) -> String {
    log.lines()
        .filter(|l| l.contains(needle))
        .take(5)
        .map(|l| l.chars().take(600).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

struct Real {
    _dir: tempfile::TempDir,
    _bao: meshpass_testkit::OpenBao,
    svc: meshpass_testkit::ExchangeService,
    issuer: TestIssuer,
    mgmt: String,
    root_token: String,
}

/// The real binary on SQLite and OpenBao (root token), with the management API on its
/// own port and `extra` merged into the configuration.
async fn real(extra: Value) -> Real {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let port = meshpass_testkit::free_port();
    let mport = meshpass_testkit::free_port();
    let mut extra = extra;
    let base = json!({
        "management": {
            "enabled": true,
            "listen": format!("127.0.0.1:{mport}"),
            "audiences": [MGMT_AUD],
            "callers": [{"id": ADMIN, "roles": ["read", "write", "keys"]}],
        },
    });
    merge(&mut extra, base);
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let cfg = replicas_common::config(port, &bao, &url, &issuer, extra);
    let d = dir.path().to_path_buf();
    let svc = tokio::task::spawn_blocking(move || replicas_common::start(&d, "r1", port, &cfg))
        .await
        .unwrap();
    let root_token = bao.root_token().to_string();
    Real {
        _dir: dir,
        _bao: bao,
        svc,
        issuer,
        mgmt: format!("http://127.0.0.1:{mport}"),
        root_token,
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            if !a.contains_key(&k) {
                a.insert(k, v);
            } else {
                merge(a.get_mut(&k).unwrap(), v);
            }
        }
    }
}

impl Real {
    fn mgmt_token(&self) -> String {
        let now = now();
        self.issuer.sign(
            &json!({"iss": ISSUER, "sub": ADMIN, "aud": [MGMT_AUD], "iat": now, "exp": now + 3600}),
        )
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.svc.log_path()).unwrap_or_default()
    }
}

async fn post_token(
    client: &reqwest::Client,
    base: &str,
    caller: &str,
    form: String,
) -> (u16, Value) {
    let r = client
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-client-cert", format!("URI={caller}"))
        .body(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// No token of any kind (subject, minted, management bearer) and no Vault token reaches
/// the log, even at `trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_vault_token_appears_in_the_log_even_at_trace_level() {
    let r = real(json!({"log": {"level": "trace"}})).await;
    let client = reqwest::Client::new();
    let base = r.svc.base_url();
    let subject = r.issuer.svid(WEB, now(), 600);
    // Issued, then cached.
    let (st, b) = post_token(
        &client,
        &base,
        WEB,
        exchange_form(&subject, &[("resource", "payments")]),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let minted = b["access_token"].as_str().unwrap().to_string();
    let (st, _) = post_token(
        &client,
        &base,
        WEB,
        exchange_form(&subject, &[("resource", "payments")]),
    )
    .await;
    assert_eq!(st, 200);
    // Refused: unknown resource, and a token with a broken signature.
    let (st, _) = post_token(
        &client,
        &base,
        WEB,
        exchange_form(&subject, &[("resource", "nowhere")]),
    )
    .await;
    assert_eq!(st, 400);
    let forged = format!("{}x", &subject[..subject.len() - 1]);
    let (st, _) = post_token(
        &client,
        &base,
        WEB,
        exchange_form(&forged, &[("resource", "payments")]),
    )
    .await;
    assert_eq!(st, 400);
    // Management: read, introspect the minted token, and a refused bearer.
    let bearer = r.mgmt_token();
    let resp = client
        .get(format!("{}/api/v1/mappings", r.mgmt))
        .bearer_auth(&bearer)
        .header("x-forwarded-client-cert", format!("URI={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client
        .post(format!("{}/api/v1/introspect", r.mgmt))
        .bearer_auth(&bearer)
        .header("x-forwarded-client-cert", format!("URI={ADMIN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", &minted)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client
        .get(format!("{}/api/v1/mappings", r.mgmt))
        .bearer_auth(&subject)
        .header("x-forwarded-client-cert", format!("URI={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = r.log();
    assert!(log.len() > 1000, "no trace log? {}", r.svc.log_tail(20));
    for (what, secret) in [
        ("subject token", sig(&subject)),
        ("forged subject token", sig(&forged)),
        ("minted token", sig(&minted)),
        ("management bearer", sig(&bearer)),
        ("vault token", r.root_token.as_str()),
    ] {
        assert!(
            !log.contains(secret),
            "the {what} appears in the log:\n{}",
            lines_with(&log, secret)
        );
    }
}

/// README "Metrics": `meshpass_mapping_exchanges_total{mapping}` is "empty when none
/// was chosen". A subject over its mapping's rate limit was refused *by* that mapping:
/// the refusal must be counted under it, else an operator cannot tell which mapping
/// throttles (the same counter, `/api/v1/stats` `by_mapping`, is read here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_mapping_was_chosen_is_counted_under_that_mapping() {
    let s = Service::start(Db::sqlite()).await;
    // web-to-orders: burst 2, 0.5/s; a cached answer is charged too.
    let token = s.issuer.svid(WEB, now(), 3600);
    let mut last = 0;
    for _ in 0..3 {
        last = s.exchange_token(&token, "orders").await.0;
    }
    assert_eq!(last, 429, "the third exchange is over the burst");
    let (_, _, stats) = s.get("/api/v1/stats").await;
    let rows = stats["by_mapping"].as_array().unwrap().clone();
    let slow: Vec<&Value> = rows
        .iter()
        .filter(|r| r["outcome"] == "slow_down")
        .collect();
    assert_eq!(slow.len(), 1, "{rows:?}");
    assert_eq!(
        slow[0]["mapping"], "web-to-orders",
        "the rate-limited refusal is counted without its mapping: {rows:?}"
    );
}

/// DESIGN.md: refused exchanges are audited with (subject, resource, reason); README:
/// the audit's target is "the resource asked for". A revoked subject asking for a
/// resource is a refusal like any other: its record names what it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_subjects_refused_exchange_is_audited_with_the_resource_it_asked_for() {
    let s = Service::start(Db::sqlite()).await;
    let (st, _, body) = s
        .post(
            "/api/v1/revocations",
            &json!({"target": "subject", "match": WEB, "reason": "compromised node"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let (st, b) = s.exchange(WEB, "payments").await;
    assert_eq!(st, 403, "{b}");
    let items = s.audit_events("exchange.refused", 1).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        items[0]["actor"],
        format!("{WEB} via {WEB}"),
        "{}",
        items[0]
    );
    assert_eq!(
        items[0]["target"], "resources/payments",
        "the refusal of a revoked subject does not say what it asked for: {}",
        items[0]
    );
}

/// A `redis-server` of this test's own requiring `password`, stopped on drop.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
}

impl PasswordRedis {
    fn start(dir: &std::path::Path, password: &str) -> PasswordRedis {
        let port = meshpass_testkit::free_port();
        let child = std::process::Command::new(meshpass_testkit::redis_server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PasswordRedis { child, port }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every credential the service holds (AppRole secret ID and the Vault token it gets,
/// the PostgreSQL password, the Redis password) stays out of the log at `trace`, through
/// a login, exchanges, and rate-limited exchanges on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_of_the_service_appears_in_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    bao.write_policy(
        "signer",
        r#"path "transit/keys/mp" { capabilities = ["read"] }
path "transit/sign/mp" { capabilities = ["update"] }
path "transit/sign/mp/*" { capabilities = ["update"] }"#,
    );
    let (role_id, secret_id) = bao.approle(
        "meshpass",
        json!({"token_policies": ["signer"], "token_ttl": "1h"}),
    );
    let redis_pw = format!("RedisPw{}", meshpass_testkit::random_hex(8));
    let redis = {
        let (d, pw) = (dir.path().to_path_buf(), redis_pw.clone());
        tokio::task::spawn_blocking(move || PasswordRedis::start(&d, &pw))
            .await
            .unwrap()
    };
    let db = tokio::task::spawn_blocking(meshpass_testkit::Postgres::fresh_database)
        .await
        .unwrap();
    let pg_pw = format!("PgPw{}", meshpass_testkit::random_hex(8));
    // Trust authentication on the test server: the password is sent, never checked.
    let store_url = db.url().replacen('@', &format!(":{pg_pw}@"), 1);
    let port = meshpass_testkit::free_port();
    let cfg = replicas_common::config(
        port,
        &bao,
        &store_url,
        &issuer,
        json!({
            "log": {"level": "trace"},
            "rate_limit": {
                "backend": "redis",
                "redis_url": format!("redis://:{redis_pw}@127.0.0.1:{}", redis.port),
            },
            "mappings": [{
                "name": "web-to-payments", "subject": format!("spiffe://{TD}/ns/shop/*"),
                "resource": "payments", "participant": "acme", "scopes": ["read"],
                "ttl_secs": 600, "rate_limit": {"per_second": 100.0, "burst": 100},
            }],
        }),
    );
    let mut cfg = cfg;
    cfg["vault"]["auth"] = json!({"method": "approle", "role_id": role_id, "secret_id": secret_id});
    let d = dir.path().to_path_buf();
    let svc = tokio::task::spawn_blocking(move || replicas_common::start(&d, "r1", port, &cfg))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let base = svc.base_url();
    for _ in 0..2 {
        let token = issuer.svid(WEB, now(), 600);
        let (st, b) = replicas_common::exchange(&client, &base, &token, WEB)
            .await
            .unwrap();
        assert_eq!(st, 200, "{b}\n{}", svc.log_tail(30));
    }
    let readyz: Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readyz["rate_limit"], "redis", "{readyz}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(svc.log_path()).unwrap_or_default();
    assert!(log.contains("TRACE"), "no trace log: {}", svc.log_tail(20));
    for (what, secret) in [
        ("AppRole secret ID", secret_id.as_str()),
        ("PostgreSQL password", pg_pw.as_str()),
        ("Redis password", redis_pw.as_str()),
    ] {
        assert!(
            !log.contains(secret),
            "the {what} appears in the log:\n{}",
            lines_with(&log, secret)
        );
    }
    // The Vault token the login obtained (OpenBao service tokens: `s.` / `hvs.`).
    let vault_token = regex_lite_find(&log);
    assert!(
        vault_token.is_none(),
        "a Vault token appears in the log: {vault_token:?}"
    );
    drop(svc);
}

/// The first thing in `log` shaped like a Vault/OpenBao service token.
fn regex_lite_find(log: &str) -> Option<String> {
    for prefix in ["hvs.", "s."] {
        let mut rest = log;
        while let Some(i) = rest.find(prefix) {
            let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
            let tail = &rest[i + prefix.len()..];
            let n = tail
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if before_ok && n >= 20 {
                return Some(format!("{prefix}{}", &tail[..n]));
            }
            rest = &rest[i + prefix.len()..];
        }
    }
    None
}

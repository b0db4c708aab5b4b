//! Real-process replicas of `meshpass-exchange` (testkit's `ExchangeService`) for the
//! drain and Envoy tests: their configuration and an HTTP client speaking `/token`
//! through a trusted loopback proxy (XFCC names the caller).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use meshpass_testkit::{ExchangeService, OpenBao};
use serde_json::{json, Value};

use crate::common::{exchange_form, TestIssuer, TD};

/// The transit key the replicas sign with.
pub const KEY: &str = "mp";

/// OpenBao (dev) with transit and the key (blocking: call from a blocking context).
pub fn openbao() -> OpenBao {
    meshpass_testkit::clear_vault_env_once();
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key(KEY, "ecdsa-p256");
    bao
}

/// The configuration of one replica on `port`; `extra` is merged into it (objects
/// key by key).
pub fn config(
    port: u16,
    bao: &OpenBao,
    store_url: &str,
    issuer: &TestIssuer,
    extra: Value,
) -> Value {
    let mut c = json!({
        "server": {
            "listen": format!("127.0.0.1:{port}"),
            "retry_after_secs": 1,
            "shutdown_grace_secs": 10,
            "drain_delay_secs": 1,
        },
        "token": {"issuer": "https://meshpass.test", "max_ttl_secs": 3600},
        "store": {"url": store_url, "max_connections": 4, "policy_cache_secs": 60},
        "log": {"level": "info"},
        "management": {"enabled": false},
        "callers": {"xfcc_trusted_proxies": ["127.0.0.1"]},
        "vault": {
            "address": bao.addr(),
            "auth": {"method": "token", "token": bao.root_token()},
            "key_name": KEY,
            "publish_lead": "0s",
            "request_timeout": "8s",
        },
        "issuers": [{
            "issuer": issuer.iss,
            "audiences": ["meshpass"],
            "trust_domains": [TD],
            "jwks": issuer.jwks(),
        }],
        "mappings": [{
            "name": "web-to-payments", "subject": format!("spiffe://{TD}/ns/shop/*"),
            "resource": "payments", "participant": "acme", "scopes": ["read"], "ttl_secs": 600,
        }],
    });
    merge(&mut c, extra);
    c
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Starts a replica in its own folder under `dir` (blocking).
pub fn start(dir: &Path, name: &str, port: u16, config: &Value) -> ExchangeService {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    ExchangeService::start(&d, port, config)
}

/// `POST {base}/token` for `token` (resource `payments`), the caller being the subject
/// (XFCC from the trusted loopback proxy); (status, JSON body), or Err on a transport
/// failure (connection refused or reset).
pub async fn exchange(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    subject: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let r = client
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-forwarded-client-cert",
            format!("By=spiffe://{TD}/ns/meshpass/sa/exchange;URI={subject}"),
        )
        .body(exchange_form(token, &[("resource", "payments")]))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// A metric's value from `GET {base}/metrics` (first sample whose line starts with
/// `name`), or None.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

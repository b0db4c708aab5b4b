//! Revocation on the test mesh (issue #16): the filters' feed settings and the feed
//! cluster, the management API calls that revoke and lift, the filters' revocation
//! metrics, and requests on fresh connections (spread over a sidecar's workers).
//!
//! The filters poll `GET /revocations` through [`FEED_CLUSTER`], a copy of the
//! exchange cluster (same service, same mTLS identity): the exchange cluster's request
//! counter then keeps counting exchanges only, which the caching scenarios and the demo
//! assert on. The filter's default is the exchange cluster itself.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};

use crate::blocking;
use crate::envoy;
use crate::topology::{Reply, Topology};

/// The Envoy cluster the filters poll the feed through (a copy of the exchange's).
pub const FEED_CLUSTER: &str = "meshpass_revocations";
/// The filters' root tick on the test mesh: a quarter of the default poll interval, so
/// a due poll goes out at most 250 ms late.
pub const TICK_MS: u64 = 250;

/// A sidecar of the test mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sidecar {
    /// The client sidecar (meshpass CLIENT, frontend's own identity).
    Client,
    /// The server sidecar (meshpass SERVER, in front of the echo app).
    Server,
}

/// Sets the filter's `revocation` settings (poll every `poll_ms` through
/// [`FEED_CLUSTER`]) and a tick that keeps up with it.
pub fn configure_plugin(cfg: &mut Value, poll_ms: u64) {
    cfg["revocation"] = json!({"cluster": FEED_CLUSTER, "poll_interval_ms": poll_ms});
    cfg["tick_ms"] = json!(TICK_MS.min(poll_ms));
}

/// Adds [`FEED_CLUSTER`] to a sidecar bootstrap: the exchange cluster (address and
/// mTLS) under another name.
pub fn add_feed_cluster(bootstrap: &mut Value) -> Result<()> {
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("bootstrap without clusters"))?;
    let mut feed = clusters
        .iter()
        .find(|c| c["name"] == envoy::EXCHANGE_CLUSTER)
        .cloned()
        .ok_or_else(|| anyhow!("no {} cluster", envoy::EXCHANGE_CLUSTER))?;
    feed["name"] = json!(FEED_CLUSTER);
    if feed.get("load_assignment").is_some() {
        feed["load_assignment"]["cluster_name"] = json!(FEED_CLUSTER);
    }
    clusters.push(feed);
    Ok(())
}

impl Topology {
    fn sidecar(&self, s: Sidecar) -> &meshpass_testkit::Envoy {
        match s {
            Sidecar::Client => &self.client,
            Sidecar::Server => &self.server,
        }
    }

    /// A filter metric (`meshpass_…`, Envoy's `wasmcustom.` prefix added) of a sidecar.
    pub fn filter_metric(&self, s: Sidecar, name: &str) -> u64 {
        blocking(|| self.sidecar(s).stat(&format!("wasmcustom.{name}")))
    }

    /// Connections each worker of a sidecar's listener on `port` accepted so far.
    pub fn connections_per_worker(&self, s: Sidecar, port: u16, workers: u32) -> Vec<u64> {
        let stats = blocking(|| self.sidecar(s).stats());
        (0..workers)
            .map(|w| {
                let name = format!("listener.127.0.0.1_{port}.worker_{w}.downstream_cx_total");
                stats.get(&name).copied().unwrap_or(0)
            })
            .collect()
    }

    /// `POST /api/v1/revocations` on the management API as the ops workload; the
    /// created revocation (its `id` lifts it).
    pub async fn revoke(&self, target: &str, matcher: &str, reason: &str) -> Result<Value> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/revocations",
            self.ports.management
        );
        let r = management_client()?
            .post(&url)
            .bearer_auth(self.management_token()?)
            .json(&json!({"target": target, "match": matcher, "reason": reason}))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        ensure!(status == 201, "POST {url}: HTTP {status} {body}");
        let v: Value = serde_json::from_str(&body).context("revocation is not JSON")?;
        ensure!(v["id"].is_string(), "revocation without id: {v}");
        Ok(v)
    }

    /// The service's revocation version (`GET /api/v1/revocations`): what a filter
    /// must have reached to hold every revocation made so far.
    pub async fn service_revocation_version(&self) -> Result<u64> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/revocations",
            self.ports.management
        );
        let r = management_client()?
            .get(&url)
            .bearer_auth(self.management_token()?)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        ensure!(status == 200, "GET {url}: HTTP {status} {body}");
        let v: Value = serde_json::from_str(&body).context("revocation list is not JSON")?;
        v["version"]
            .as_u64()
            .with_context(|| format!("revocation list without version: {v}"))
    }

    /// Revokes `workload`'s SPIFFE ID (target `subject`); returns the revocation id.
    pub async fn revoke_subject(&self, workload: &str, reason: &str) -> Result<String> {
        let v = self
            .revoke("subject", &self.spiffe_id(workload), reason)
            .await?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    /// `DELETE /api/v1/revocations/{id}` (lift).
    pub async fn lift_revocation(&self, id: &str) -> Result<()> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/revocations/{id}",
            self.ports.management
        );
        let r = management_client()?
            .delete(&url)
            .bearer_auth(self.management_token()?)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        let status = r.status().as_u16();
        ensure!(
            status == 204,
            "DELETE {url}: HTTP {status} {}",
            r.text().await?
        );
        Ok(())
    }

    /// `GET path` through the CLIENT-mode listener on a new connection (so successive
    /// requests land on the sidecar's workers as the kernel spreads connections).
    pub async fn via_client_mode_fresh(&self, path: &str, token: &str) -> Result<Reply> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()?;
        let resp = client
            .get(self.client_mode_url(path))
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let headers: BTreeMap<String, String> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.text().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

fn management_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Whether `r` is the filter's revocation refusal (`403 access_denied`, `revoked: …`).
pub fn is_revocation_refusal(r: &Reply, reason: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(&r.body) else {
        return false;
    };
    r.status == 403
        && v["error"] == "access_denied"
        && v["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("revoked: ") && d.contains(reason))
}

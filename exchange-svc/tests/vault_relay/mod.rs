//! A fault-injecting HTTP relay in front of the real OpenBao, for faults Vault itself
//! cannot be made to show at the right moment: the key read failing right after a
//! rotation (once or for good), the answer to a rotation lost on its way back, Vault
//! sealed, Vault's clock behind the replicas' (its `creation_time`s and `Date`
//! header shifted back), an absurd login lease, a batch answer reordered. Every request still reaches OpenBao, which does the real work.
//! With the helpers the key tests share: OpenBao with key [`KEY`], a SQLite store, the
//! audit events of one action.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use meshpass_exchange::store::{AuditQuery, SqlStore, StoreConfig};
use meshpass_exchange::vault::{parse_rfc3339, TransitSigner, VaultConfig};
use meshpass_testkit::OpenBao;
use reqwest::Method;

use crate::vault_common;

/// The transit key the tests rotate.
pub const KEY: &str = "mp";

#[derive(Default)]
pub struct Faults {
    /// OpenBao's clock this many seconds behind the replicas': the key's
    /// `creation_time`s and the `Date` header are shifted back by it.
    pub vault_clock_behind_secs: AtomicI64,
    /// Set once OpenBao answered a rotation with success.
    pub rotated: AtomicBool,
    /// A rotation is done by OpenBao but its answer is replaced by a 502.
    pub lose_rotate_answer: AtomicBool,
    /// After a rotation: this many reads of the key answer 503, then they pass again.
    pub failed_reads_after_rotate: AtomicU32,
    /// Once `rotated`: every read of the key answers 503 (Vault went away).
    pub fail_key_reads_after_rotate: AtomicBool,
    /// Every request answers 503 (Vault sealed or overloaded).
    pub down: AtomicBool,
    /// Every login answer's `auth.lease_duration` becomes `u64::MAX` (a broken or
    /// hostile Vault or proxy).
    pub absurd_lease: AtomicBool,
    /// A `transit/sign` answer of three items or more comes back with its last two
    /// swapped (an intermediary that reorders JSON arrays); counted in `swapped`.
    pub swap_batch_items: AtomicBool,
    /// Batch answers swapped so far.
    pub swapped: AtomicU32,
}

pub struct Relay {
    pub addr: String,
    pub faults: Arc<Faults>,
}

/// RFC 3339 (UTC, nanoseconds) of `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let (date, hms) = civil(d.as_secs());
    format!("{date}T{hms}.{:09}Z", d.subsec_nanos())
}

/// ("YYYY-MM-DD", "HH:MM:SS") of unix seconds (Howard Hinnant's civil_from_days).
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60),
    )
}

/// A relay to `bao` (see [`Faults`]); its address is `Relay::addr`.
pub async fn relay_to(bao: &OpenBao) -> Relay {
    let target = bao.addr();
    let faults = Arc::new(Faults::default());
    let http = reqwest::Client::new();
    let f = faults.clone();
    let handler = move |req: Request<Body>| {
        let (target, f, http) = (target.clone(), f.clone(), http.clone());
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let headers = req.headers().clone();
            let body = axum::body::to_bytes(req.into_body(), 16 << 20)
                .await
                .unwrap();
            if f.down.load(Ordering::SeqCst) {
                return sealed();
            }
            let key_path = format!("/v1/transit/keys/{KEY}");
            let rotate_path = format!("/v1/transit/keys/{KEY}/rotate");
            let behind = f.vault_clock_behind_secs.load(Ordering::SeqCst);
            let vault_now = SystemTime::now() - Duration::from_secs(behind.max(0) as u64);
            if method == Method::GET
                && path == key_path
                && f.rotated.load(Ordering::SeqCst)
                && (f.fail_key_reads_after_rotate.load(Ordering::SeqCst)
                    || f.failed_reads_after_rotate
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok())
            {
                return sealed();
            }
            let mut r = http.request(
                reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
                format!("{target}{pq}"),
            );
            for (k, v) in headers.iter() {
                if k != "host" && k != "content-length" {
                    r = r.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = match r.body(body.to_vec()).send().await {
                Ok(resp) => resp,
                Err(_) => return Response::builder().status(502).body(Body::empty()).unwrap(),
            };
            let status = resp.status().as_u16();
            let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
            if method == Method::POST && path == rotate_path && (200..300).contains(&status) {
                f.rotated.store(true, Ordering::SeqCst);
                if f.lose_rotate_answer.load(Ordering::SeqCst) {
                    return Response::builder()
                        .status(502)
                        .body(Body::from("upstream connection reset"))
                        .unwrap();
                }
            }
            let ok = (200..300).contains(&status);
            if ok
                && method == Method::POST
                && path.ends_with("/login")
                && f.absurd_lease.load(Ordering::SeqCst)
            {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                v["auth"]["lease_duration"] = serde_json::json!(u64::MAX);
                bytes = serde_json::to_vec(&v).unwrap();
            }
            if ok
                && method == Method::POST
                && path == format!("/v1/transit/sign/{KEY}")
                && f.swap_batch_items.load(Ordering::SeqCst)
            {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                if let Some(items) = v["data"]["batch_results"].as_array_mut() {
                    let n = items.len();
                    if n >= 3 {
                        // Past the first: the signer checks the first signature of
                        // every batch against the published key.
                        items.swap(n - 2, n - 1);
                        f.swapped.fetch_add(1, Ordering::SeqCst);
                    }
                }
                bytes = serde_json::to_vec(&v).unwrap();
            }
            if behind > 0 && method == Method::GET && path == key_path && status == 200 {
                // OpenBao's clock behind: every creation time it writes is earlier.
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                if let Some(keys) = v["data"]["keys"].as_object_mut() {
                    for entry in keys.values_mut() {
                        if let Some(t) = entry["creation_time"].as_str().and_then(parse_rfc3339) {
                            entry["creation_time"] =
                                serde_json::json!(rfc3339(t - Duration::from_secs(behind as u64)));
                        }
                    }
                }
                bytes = serde_json::to_vec(&v).unwrap();
            }
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json")
                .header("date", httpdate::fmt_http_date(vault_now))
                .body(Body::from(bytes))
                .unwrap()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Relay { addr, faults }
}

fn sealed() -> Response<Body> {
    Response::builder()
        .status(503)
        .body(Body::from(r#"{"errors":["Vault is sealed"]}"#))
        .unwrap()
}

pub async fn bao() -> OpenBao {
    tokio::task::spawn_blocking(|| vault_common::bao_with_key(KEY, "ecdsa-p256"))
        .await
        .unwrap()
}

pub async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<SqlStore> {
    let cfg = StoreConfig {
        url: format!("sqlite://{}", dir.path().join("m.db").display()),
        max_connections: 2,
        ..StoreConfig::default()
    };
    let s = Arc::new(SqlStore::connect(&cfg, "participant").unwrap());
    s.migrate().await.unwrap();
    s
}

pub async fn audit(store: &SqlStore, action: &str) -> Vec<meshpass_exchange::store::AuditEvent> {
    store
        .audit_events(&AuditQuery {
            limit: 100,
            action: Some(action.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The Vault settings of a signer reaching `bao` through `relay`, with no background
/// key refresh to speak of (a test reads the key when it wants).
pub fn relayed_config(bao: &OpenBao, relay: &Relay) -> VaultConfig {
    let mut vault = vault_common::config(bao, KEY);
    vault.address = Some(relay.addr.clone());
    vault.key_refresh_interval = Duration::from_secs(3600);
    vault
}

/// A signer started on [`relayed_config`] and a SQLite store beside it.
pub struct Relayed {
    pub signer: Arc<TransitSigner>,
    pub store: Arc<SqlStore>,
    _dir: tempfile::TempDir,
}

pub async fn relayed(bao: &OpenBao, relay: &Relay) -> Relayed {
    let signer = Arc::new(
        TransitSigner::start(&relayed_config(bao, relay))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    Relayed {
        signer,
        store,
        _dir: dir,
    }
}

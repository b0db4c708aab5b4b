//! A running service for the management tests: the token endpoint and the management
//! API on their own loopback sockets, over SQLite or PostgreSQL, and callers with
//! management tokens from the test issuer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::{ExchangeHooks, ExchangeStats, KeyAdmin, RefusalAudit};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{seed, MappingStore, SqlStore};
use meshpass_exchange::AppState;
use serde_json::{json, Value};

use crate::common::*;

pub const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
pub const VIEWER: &str = "spiffe://cluster.local/ns/ops/sa/viewer";
pub const KEYS_OP: &str = "spiffe://cluster.local/ns/ops/sa/keys";
/// Write without read (a CI job applying a policy it does not need to see).
pub const WRITER: &str = "spiffe://cluster.local/ns/ops/sa/writer";
pub const MGMT_AUD: &str = "meshpass-admin";

/// Which database a service runs on.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(meshpass_testkit::PgDb),
    /// PostgreSQL behind a relay the test can cut; the store waits at most a second for
    /// a connection and asks for `Retry-After: 7`.
    PostgresCut(meshpass_testkit::PgDb, meshpass_testkit::CutRelay),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }
    pub fn postgres() -> Db {
        Db::Postgres(meshpass_testkit::Postgres::fresh_database())
    }
    pub fn postgres_cut() -> Db {
        let db = meshpass_testkit::Postgres::fresh_database();
        let relay = meshpass_testkit::CutRelay::start(&db.host_port()).unwrap();
        Db::PostgresCut(db, relay)
    }
    /// The relay of [`Db::postgres_cut`].
    pub fn relay(&self) -> &meshpass_testkit::CutRelay {
        match self {
            Db::PostgresCut(_, r) => r,
            _ => panic!("not a database behind a relay"),
        }
    }
    /// The `[store]` lines that replace the default `url`.
    fn store_lines(&self, dir: &Path) -> String {
        match self {
            Db::Sqlite(d) => format!("url = \"sqlite://{}\"", d.path().join("m.db").display()),
            Db::Postgres(p) => {
                let _ = dir;
                format!("url = \"{}\"", p.url())
            }
            Db::PostgresCut(p, relay) => format!(
                "url = \"{}\"\nacquire_timeout_secs = 1\nretry_after_secs = 7",
                p.url_via(relay.port())
            ),
        }
    }
}

/// The `[management]` section every test service gets (`extra`: more of its keys).
pub fn management_toml(extra: &str) -> String {
    format!(
        r#"
[management]
listen = "127.0.0.1:0"
audiences = ["{MGMT_AUD}"]
{extra}

[[management.callers]]
id = "{ADMIN}"
roles = ["read", "write", "keys"]

[[management.callers]]
id = "{VIEWER}"
roles = ["read"]

[[management.callers]]
id = "{KEYS_OP}"
roles = ["read", "keys"]

[[management.callers]]
id = "{WRITER}"
roles = ["write"]
"#
    )
}

pub struct Service {
    pub issuer: TestIssuer,
    pub cfg: Config,
    pub store: Arc<SqlStore>,
    pub state: AppState,
    pub stats: Arc<ExchangeStats>,
    /// `http://127.0.0.1:PORT` of the management API.
    pub api: String,
    /// `http://127.0.0.1:PORT` of the token endpoint.
    pub token_url: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    pub db: Db,
}

impl Service {
    /// A service on `db` with the common test mappings and `[management]`; `vault` is
    /// the body of `[vault]` (for a real signer) and `signer` the signer to use.
    pub async fn start_with(
        db: Db,
        signer: Arc<dyn Signer>,
        keys: Option<Arc<dyn KeyAdmin>>,
        vault: &str,
        extra: &str,
    ) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(ISSUER, "spire-1");
        let sqlite = dir.path().join("unused.db");
        let toml = config_toml_vault(&issuer, &sqlite, vault, &management_toml(extra)).replace(
            &format!("url = \"sqlite://{}\"", sqlite.display()),
            &db.store_lines(dir.path()),
        );
        let cfg = load_config(dir.path(), &toml);
        let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
        store.migrate().await.unwrap();
        seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims)
            .await
            .unwrap();
        let issuer_keys = IssuerKeys::from_config(&cfg).unwrap();
        issuer_keys.refresh_all().await;
        let mut state = AppState::new(
            &cfg,
            signer,
            store.clone() as Arc<dyn MappingStore>,
            issuer_keys,
            Arc::new(SystemClock),
        )
        .unwrap();
        let stats = Arc::new(ExchangeStats::new().unwrap());
        state.hooks = Some(Arc::new(ExchangeHooks {
            stats: stats.clone(),
            refusals: Some(RefusalAudit::start(store.clone(), &cfg.management)),
        }));
        let running = meshpass_exchange::mgmt::start(
            &cfg,
            &state,
            store.clone(),
            keys,
            stats.clone(),
            std::future::pending::<()>(),
        )
        .await
        .unwrap()
        .expect("management API started");
        let token_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_url = format!("http://{}", token_listener.local_addr().unwrap());
        // The service's own listener, so the token endpoint sees its peers (caller
        // binding reads XFCC only from the trusted loopback proxy).
        let serving = state.clone();
        tokio::spawn(async move {
            meshpass_exchange::server::serve_on(
                token_listener,
                serving,
                std::future::pending::<()>(),
                std::time::Duration::from_secs(1),
            )
            .await
            .unwrap();
        });
        Service {
            issuer,
            cfg,
            store,
            state,
            stats,
            api: format!("http://{}", running.addr),
            token_url,
            http: reqwest::Client::new(),
            _dir: dir,
            db,
        }
    }

    pub async fn start(db: Db) -> Service {
        Service::start_with(
            db,
            signer().await,
            None,
            "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
            "",
        )
        .await
    }

    /// A management token for `who` (audience [`MGMT_AUD`], valid for an hour).
    pub fn token(&self, who: &str) -> String {
        let now = now();
        self.issuer.sign(
            &json!({"iss": ISSUER, "sub": who, "aud": [MGMT_AUD], "iat": now, "exp": now + 3600}),
        )
    }

    /// A request to the management API as `who` (None: no token).
    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        who: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.api));
        // The tests' client stands behind the trusted loopback proxy, which names the
        // caller (management tokens are bound to the connection's identity).
        match who {
            Some(w) => r
                .bearer_auth(self.token(w))
                .header("x-forwarded-client-cert", format!("URI={w}")),
            None => r,
        }
    }

    /// Sends and returns (status, ETag, JSON body).
    pub async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        (
            status,
            etag,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Option<String>, Value) {
        self.send(self.req(reqwest::Method::GET, path, Some(ADMIN)))
            .await
    }

    /// The body of a `GET` as an admin, as text (YAML, or JSON compared as written).
    pub async fn get_text(&self, path: &str) -> String {
        let resp = self
            .req(reqwest::Method::GET, path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Option<String>, Value) {
        self.send(
            self.req(reqwest::Method::POST, path, Some(ADMIN))
                .json(body),
        )
        .await
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut r = self.req(reqwest::Method::PUT, path, Some(ADMIN)).json(body);
        if let Some(t) = if_match {
            r = r.header("if-match", t);
        }
        self.send(r).await
    }

    pub async fn delete(&self, path: &str, if_match: Option<&str>) -> (u16, Option<String>, Value) {
        let mut r = self.req(reqwest::Method::DELETE, path, Some(ADMIN));
        if let Some(t) = if_match {
            r = r.header("if-match", t);
        }
        self.send(r).await
    }

    /// The token listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.token_url)).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// The audit events of `action`, once at least `n` are written (the refusal audit
    /// is written asynchronously; gives up after 5 s and returns what there is).
    pub async fn audit_events(&self, action: &str, n: usize) -> Vec<Value> {
        let mut items = Vec::new();
        for _ in 0..100 {
            let (_, _, page) = self.get(&format!("/api/v1/audit?action={action}")).await;
            items = page["items"].as_array().unwrap().clone();
            if items.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        items
    }

    /// `POST /token` for `subject` and `resource`: (status, JSON).
    pub async fn exchange(&self, subject: &str, resource: &str) -> (u16, Value) {
        let token = self.issuer.svid(subject, now(), 3600);
        self.exchange_token(&token, resource).await
    }

    /// `POST /token` with `token` as the subject token, from the subject's own sidecar
    /// (CLIENT mode: the caller, named in XFCC by the trusted loopback proxy, is the
    /// token's `sub`).
    pub async fn exchange_token(&self, token: &str, resource: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/token", self.token_url))
            .header("x-forwarded-client-cert", format!("URI={}", sub_of(token)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(exchange_form(token, &[("resource", resource)]))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// A valid mapping document.
pub fn mapping(name: &str, subject: &str, resource: &str) -> Value {
    json!({
        "name": name, "subject": subject, "resource": resource, "participant": "acme",
        "audiences": [], "scopes": ["read", "write"], "ttl_secs": 300, "rate_limit": null,
        "allowed_callers": [], "allowed_actors": []
    })
}

/// The `sub` of a JWT, read without verifying it (the test's own tokens).
pub fn sub_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["sub"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs each named `async fn(Db)` as two tests, on SQLite and on PostgreSQL.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Db::sqlite()).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Db::postgres()).await;
                }
            )*
        }
    };
}

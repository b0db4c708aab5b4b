//! The whole end-to-end topology on loopback, started in dependency order and stopped
//! on drop:
//!
//! ```text
//!  test / curl ──HTTP──▶ client sidecar ──mTLS (X.509-SVID)──▶ server sidecar ──HTTP──▶ echo app
//!                        outbound_exchange: meshpass CLIENT ─▶ inbound_exchanged: jwt_authn
//!                        outbound_plain:    (no filter)     ─▶ inbound_mesh: meshpass SERVER, jwt_authn
//!                              │ POST /token, issuer JWKS          │ POST /token, issuer JWKS, exchange JWKS
//!                              ▼                                   ▼
//!                  meshpass-exchange ──transit/sign──▶ OpenBao      JWT-SVID issuer JWKS (in-process)
//!                        │
//!                  SQLite file | Postgres database
//! ```
//!
//! Workloads (namespace `demo`, trust domain `cluster.local`): `frontend` (the client
//! sidecar's own identity; mapped for resource `echo` with scopes `orders.read` and
//! `orders.write`, participant `acme`), `reporting` (mapped, `orders.read` only,
//! participant `globex`), `batch` (no mapping), and `echo` (the server).
//!
//! The filter picks what to exchange for by path: `/admin...` asks for scope
//! `orders.admin` (no mapping allows it), `/short...` asks for resource `echo-short`
//! (tokens live [`SHORT_TTL_SECS`]), everything else for resource `echo`, audience
//! `echo`, scope `orders.read`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use meshpass_testkit::{
    free_port, BaoStorage, Envoy, EnvoyOptions, ExchangeService, OpenBao, OpenBaoOptions,
};

use crate::blocking;
use crate::ca::TestCa;
use crate::echo::{self, EchoReport};
use crate::envoy::{self, ClientSidecar, JwtAuthn, ServerSidecar, UpstreamIdentity, WasmFilter};
use crate::http::HttpServer;
use crate::jwt::JwtSvidIssuer;

mod configs;
use configs::exchange_over_mtls;
pub use configs::{exchange_config, plugin_config};

/// The SPIFFE trust domain of the test mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace of every workload.
pub const NAMESPACE: &str = "demo";
/// `iss` of JWT-SVIDs.
pub const SVID_ISSUER: &str = "https://spire.e2e.test";
/// `aud` JWT-SVIDs must carry (the exchange service).
pub const SVID_AUDIENCE: &str = "meshpass-exchange";
/// The resource and audience of participant tokens for the echo app.
pub const APP_RESOURCE: &str = "echo";
/// Resource whose tokens are short-lived (see [`SHORT_TTL_SECS`]).
pub const SHORT_RESOURCE: &str = "echo-short";
/// Lifetime of `echo-short` participant tokens.
pub const SHORT_TTL_SECS: u64 = 6;
/// Scope requested by default.
pub const DEFAULT_SCOPE: &str = "orders.read";
/// Scope requested under `/admin` and granted to nobody.
pub const FORBIDDEN_SCOPE: &str = "orders.admin";
/// The participant-context claim name.
pub const PARTICIPANT_CLAIM: &str = "participant";
/// The transit key name.
pub const TRANSIT_KEY: &str = "meshpass-participant";
/// The claim the `orders.read` scope adds (scope→claims mapping).
pub const SCOPE_CLAIM: (&str, &str) = ("orders_access", "read");
/// `aud` of the tokens the management API accepts (never an exchange audience).
pub const MANAGEMENT_AUDIENCE: &str = "meshpass-management";
/// The workload whose JWT-SVID carries the management roles `read` and `write`.
pub const MANAGEMENT_WORKLOAD: &str = "ops";

/// Where the exchange service keeps its mappings.
#[derive(Clone, Debug)]
pub enum Storage {
    /// A SQLite file in the topology's directory.
    Sqlite,
    /// A Postgres database URL (`postgres://postgres@127.0.0.1:PORT/NAME`).
    Postgres(String),
}

impl Storage {
    /// `sqlite` or `postgres`.
    pub fn label(&self) -> &'static str {
        match self {
            Storage::Sqlite => "sqlite",
            Storage::Postgres(_) => "postgres",
        }
    }
}

/// Knobs of a topology.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mapping store.
    pub storage: Storage,
    /// OpenBao flavour.
    pub bao: BaoStorage,
    /// How often the filter and the service refresh the JWT-SVID issuer's JWKS.
    pub svid_jwks_refresh_secs: u64,
    /// How long `jwt_authn` caches the exchange service's JWKS.
    pub jwt_authn_cache_secs: u64,
    /// How long a new transit key version is published before it signs.
    pub publish_lead_secs: u64,
    /// How often the service re-reads the transit key.
    pub key_refresh_secs: u64,
    /// Envoy log level (`info`, `debug`...).
    pub envoy_log_level: String,
    /// Worker threads of each sidecar (`--concurrency`).
    pub sidecar_concurrency: u32,
    /// How often the filters poll the revocation feed (see [`crate::revocation`]).
    pub revocation_poll_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            storage: Storage::Sqlite,
            bao: BaoStorage::Dev,
            svid_jwks_refresh_secs: 2,
            jwt_authn_cache_secs: 2,
            publish_lead_secs: 5,
            key_refresh_secs: 1,
            envoy_log_level: "info".into(),
            sidecar_concurrency: 1,
            revocation_poll_ms: 1000,
        }
    }
}

/// A workload of the test mesh.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Service account name (also the `x-e2e-identity` value).
    pub name: &'static str,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
}

/// Ports of everything listening.
#[derive(Clone, Debug)]
pub struct Ports {
    /// Client sidecar: meshpass CLIENT listener (plain HTTP).
    pub client_exchange: u16,
    /// Client sidecar: no-filter listener towards the SERVER-mode listener.
    pub client_plain: u16,
    /// Client sidecar admin (chosen by Envoy, known once it runs).
    pub client_admin: u16,
    /// Server sidecar: meshpass SERVER + jwt_authn (mTLS).
    pub server_mesh: u16,
    /// Server sidecar: jwt_authn only (mTLS).
    pub server_exchanged: u16,
    /// Server sidecar admin (chosen by Envoy, known once it runs).
    pub server_admin: u16,
    /// The exchange service (plain HTTP: JWKS, discovery, health).
    pub exchange: u16,
    /// The exchange service's TLS listener: `/token` for callers with an SVID.
    pub exchange_tls: u16,
    /// The exchange service's management API (meshpassctl).
    pub management: u16,
    /// The JWT-SVID issuer's JWKS.
    pub svid_jwks: u16,
    /// The echo app.
    pub app: u16,
}

/// An HTTP answer as the caller saw it.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names, repeated ones joined by `, `).
    pub headers: BTreeMap<String, String>,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// What the echo app reported (only for requests that reached it).
    pub fn echo(&self) -> Result<EchoReport> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not an echo report (HTTP {}): {}", self.status, self.body))
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.body)
    }
}

/// The running topology.
pub struct Topology {
    /// Knobs it was started with.
    pub options: Options,
    /// Ports.
    pub ports: Ports,
    /// The test CA.
    pub ca: TestCa,
    /// The JWT-SVID issuer.
    pub issuer: Arc<JwtSvidIssuer>,
    /// Workloads by name.
    pub workloads: BTreeMap<&'static str, Workload>,
    /// The client sidecar.
    pub client: Envoy,
    /// The server sidecar.
    pub server: Envoy,
    /// The exchange service (behind a lock: fault scenarios stop and start it while
    /// traffic flows).
    pub exchange: Mutex<ExchangeService>,
    /// OpenBao (locked like `exchange`).
    pub bao: Mutex<OpenBao>,
    /// The JWT-SVID issuer's JWKS endpoint (locked like `exchange`).
    pub svid_jwks: Mutex<HttpServer>,
    /// The echo app.
    pub app: HttpServer,
    /// The plugin configuration of the CLIENT-mode filter.
    pub client_plugin_config: Value,
    /// The plugin configuration of the SERVER-mode filter.
    pub server_plugin_config: Value,
    /// The exchange service's configuration (as JSON; written as TOML).
    pub exchange_config: Value,
    exchange_log: PathBuf,
    bao_log: PathBuf,
    http: reqwest::Client,
    // Last: removed after every process is gone.
    dir: tempfile::TempDir,
}

const WORKLOADS: [&str; 4] = ["frontend", "reporting", "batch", "echo"];

async fn json_route(value: Value) -> axum::Json<Value> {
    axum::Json(value)
}

impl Topology {
    /// Starts everything; fails with the tail of the failing component's log.
    pub async fn start(options: Options) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meshpass-e2e-")
            .tempdir()
            .context("cannot create the topology's temp dir")?;
        let d = dir.path().to_path_buf();
        let wasm = meshpass_testkit::filter_wasm();
        if !wasm.exists() {
            anyhow::bail!(
                "filter wasm not found at {} (set MESHPASS_FILTER_WASM or run `make wasm`)",
                wasm.display()
            );
        }

        // Identities.
        let ca = TestCa::new(TRUST_DOMAIN)?;
        let bundle = ca.write_bundle(&d)?;
        let mut workloads = BTreeMap::new();
        let mut svids = BTreeMap::new();
        for name in WORKLOADS {
            let spiffe_id = ca.spiffe_id(NAMESPACE, name);
            svids.insert(name, ca.issue(&spiffe_id)?.write(&d, name)?);
            workloads.insert(name, Workload { name, spiffe_id });
        }
        let svid = |n: &str| svids.get(n).cloned().ok_or_else(|| anyhow!("no SVID {n}"));

        // JWT-SVID issuer and its JWKS endpoint, the echo app.
        let issuer = Arc::new(JwtSvidIssuer::new(SVID_ISSUER));
        let jwks = issuer.jwks();
        let svid_jwks = HttpServer::start(
            "jwt-svid-jwks",
            axum::Router::new().route(
                "/.well-known/jwks.json",
                axum::routing::get(move || json_route(jwks.clone())),
            ),
        )
        .await?;
        let app = HttpServer::start("echo-app", echo::router()).await?;

        // OpenBao with transit, then the exchange service, on a blocking thread while
        // the sidecars start (they need only the exchange's port, reserved here).
        let exchange_port = free_port();
        let store_url = match &options.storage {
            Storage::Sqlite => format!("sqlite://{}", d.join("meshpass.db").display()),
            Storage::Postgres(url) => url.clone(),
        };
        // The sidecars call /token over mTLS with their SVIDs, so the service knows who
        // calls (caller binding); JWKS and health stay on the plain port.
        let exchange_tls_port = free_port();
        let service_svid = ca.issue(&ca.spiffe_id("meshpass", "meshpass-exchange"))?;
        let service_files = service_svid.write(&d, "meshpass-exchange")?;
        let service_tls = json!({
            "cert_file": service_files.cert.display().to_string(),
            "key_file": service_files.key.display().to_string(),
            "client_ca_file": bundle.display().to_string(),
            "listen": format!("127.0.0.1:{exchange_tls_port}"),
        });
        let management_port = free_port();
        let management = json!({
            "listen": format!("127.0.0.1:{management_port}"),
            "audiences": [MANAGEMENT_AUDIENCE],
            "callers": [{"id": ca.spiffe_id(NAMESPACE, MANAGEMENT_WORKLOAD), "roles": ["read", "write"]}],
        });
        let backend = {
            let (d, options, svid_jwks_port) = (d.clone(), options.clone(), svid_jwks.port());
            tokio::task::spawn_blocking(move || {
                let bao = OpenBao::start_with(OpenBaoOptions {
                    storage: options.bao,
                    tls: false,
                    dir: Some(d.join("openbao")),
                });
                bao.enable_transit();
                bao.create_transit_key(TRANSIT_KEY, "ecdsa-p256");
                let mut exchange_config =
                    exchange_config(exchange_port, svid_jwks_port, &bao, &store_url, &options);
                exchange_config["server"]["tls"] = service_tls;
                exchange_config["management"] = management;
                let exchange = ExchangeService::start(&d, exchange_port, &exchange_config);
                (bao, exchange_config, exchange)
            })
        };

        // The sidecars.
        let mut ports = Ports {
            client_exchange: free_port(),
            client_plain: free_port(),
            client_admin: 0,
            server_mesh: free_port(),
            server_exchanged: free_port(),
            server_admin: 0,
            exchange: exchange_port,
            exchange_tls: exchange_tls_port,
            management: management_port,
            svid_jwks: svid_jwks.port(),
            app: app.port(),
        };
        let mut server_plugin_config = plugin_config("SERVER", options.svid_jwks_refresh_secs);
        let mut client_plugin_config = plugin_config("CLIENT", options.svid_jwks_refresh_secs);
        for cfg in [&mut server_plugin_config, &mut client_plugin_config] {
            crate::revocation::configure_plugin(cfg, options.revocation_poll_ms);
        }
        let filter = |cfg: &Value| WasmFilter {
            wasm_path: wasm.clone(),
            plugin_config: cfg.clone(),
            root_id: "meshpass".into(),
        };
        let server_cfg = ServerSidecar {
            mesh_port: ports.server_mesh,
            exchanged_port: ports.server_exchanged,
            svid: svid("echo")?,
            ca_bundle: bundle.clone(),
            trust_domain: TRUST_DOMAIN.into(),
            filter: Some(filter(&server_plugin_config)),
            jwt_authn: JwtAuthn {
                issuer: format!("http://127.0.0.1:{exchange_port}"),
                audiences: vec![APP_RESOURCE.into()],
                jwks_uri: format!("http://127.0.0.1:{exchange_port}/.well-known/jwks.json"),
                cache_duration_secs: options.jwt_authn_cache_secs,
            },
            app_port: ports.app,
            exchange_port,
            svid_jwks_port: ports.svid_jwks,
        };
        let identities = ["frontend", "reporting", "batch"]
            .into_iter()
            .map(|n| {
                Ok(UpstreamIdentity {
                    name: n.into(),
                    svid: svid(n)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let client_cfg = ClientSidecar {
            exchange_port_listener: ports.client_exchange,
            plain_port: ports.client_plain,
            svid: svid("frontend")?,
            identities,
            ca_bundle: bundle,
            server_spiffe_id: ca.spiffe_id(NAMESPACE, "echo"),
            server_mesh_port: ports.server_mesh,
            server_exchanged_port: ports.server_exchanged,
            filter: Some(filter(&client_plugin_config)),
            node_metadata: json!({
                "NAMESPACE": NAMESPACE,
                "SERVICE_ACCOUNT": "frontend",
                "WORKLOAD_NAME": "frontend",
            }),
            exchange_port,
            svid_jwks_port: ports.svid_jwks,
        };
        let service_id = ca.spiffe_id("meshpass", "meshpass-exchange");
        let mut server_envoy = envoy::server_sidecar_config(&server_cfg);
        let mut client_envoy = envoy::client_sidecar_config(&client_cfg);
        exchange_over_mtls(
            &mut server_envoy,
            exchange_tls_port,
            &server_cfg.svid,
            &server_cfg.ca_bundle,
            &service_id,
        )?;
        exchange_over_mtls(
            &mut client_envoy,
            exchange_tls_port,
            &client_cfg.svid,
            &client_cfg.ca_bundle,
            &service_id,
        )?;
        crate::revocation::add_feed_cluster(&mut server_envoy)?;
        crate::revocation::add_feed_cluster(&mut client_envoy)?;
        let sidecar = |name: &str, config: &Value| {
            let yaml = envoy::yaml(config);
            let options = EnvoyOptions {
                name: name.into(),
                concurrency: options.sidecar_concurrency,
                // Envoy's own chatter at warning; the wasm filter's log at the level asked.
                extra_args: ["--log-level", "warning", "--component-log-level"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([format!("wasm:{}", options.envoy_log_level)])
                    .collect(),
                log_path: Some(d.join(format!("{name}.log"))),
                timeout: Duration::from_secs(60),
                ..EnvoyOptions::default()
            };
            tokio::task::spawn_blocking(move || Envoy::start_with(&yaml, &options))
        };
        let (server, client) = tokio::join!(
            sidecar("server-sidecar", &server_envoy),
            sidecar("client-sidecar", &client_envoy),
        );
        let server = server?.map_err(|e| anyhow!("server sidecar: {e}"))?;
        let client = client?.map_err(|e| anyhow!("client sidecar: {e}"))?;
        ports.server_admin = server.admin_port();
        ports.client_admin = client.admin_port();
        let (bao, exchange_config, exchange) = backend
            .await
            .map_err(|e| anyhow!("starting OpenBao and the exchange service: {e}"))?;

        let topo = Topology {
            options,
            ports,
            ca,
            issuer,
            workloads,
            client,
            server,
            exchange_log: exchange.log_path().to_path_buf(),
            bao_log: bao.log_path(),
            exchange: Mutex::new(exchange),
            bao: Mutex::new(bao),
            svid_jwks: Mutex::new(svid_jwks),
            app,
            client_plugin_config,
            server_plugin_config,
            exchange_config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(64)
                .build()?,
            dir,
        };
        topo.wait_until_filters_have_keys().await?;
        topo.wait_until_jwt_authn_has_keys().await?;
        topo.wait_until_exchange_can_sign().await?;
        Ok(topo)
    }

    /// The sidecars started before the exchange service served its JWKS, so
    /// `jwt_authn`'s first fetch may have failed (it refetches every second): waits
    /// until both server listeners have fetched it.
    async fn wait_until_jwt_authn_has_keys(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let stat = |l: &str| format!("http.{l}.jwt_authn.jwks_fetch_success");
        loop {
            let fetched = blocking(|| {
                let stats = self.server.stats();
                ["inbound_mesh", "inbound_exchanged"]
                    .iter()
                    .all(|l| stats.get(&stat(l)).is_some_and(|n| *n > 0))
            });
            if fetched {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "jwt_authn has not fetched the exchange service's JWKS after 30 s\n{}",
                    self.diagnostics(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The filters fetch the JWT-SVID issuer's JWKS after Envoy starts and answer 503
    /// until they have it (fail closed). Probes both listeners with an expired token
    /// (refused with 401 once keys are there, never exchanged, so no cache or counter is
    /// touched) until neither answers 503.
    async fn wait_until_filters_have_keys(&self) -> Result<()> {
        let mut c = self.svid_claims("frontend");
        c["iat"] = json!(crate::jwt::now() - 7200);
        c["exp"] = json!(crate::jwt::now() - 3600);
        let expired = self.issuer.mint(&c)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.via_client_mode("/", Some(&expired)).await?;
            let b = self
                .via_server_mode("frontend", "/", Some(&expired))
                .await?;
            if a.status != 503 && b.status != 503 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the filters still answer 503 after 30 s (CLIENT: {a}; SERVER: {b})\n{}",
                    self.diagnostics(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the exchange service's `/readyz`: it is ready once a key version has
    /// waited out `publish_lead` (a fresh transit key signs nothing before that).
    async fn wait_until_exchange_can_sign(&self) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ports.exchange);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("the exchange service did not become ready (readyz at {url})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The topology's working directory (configs, logs, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SPIFFE ID of a workload (`frontend`, `reporting`, `batch`, `echo`).
    pub fn spiffe_id(&self, workload: &str) -> String {
        self.workloads
            .get(workload)
            .map(|w| w.spiffe_id.clone())
            .unwrap_or_else(|| self.ca.spiffe_id(NAMESPACE, workload))
    }

    /// The exchange service's `iss`.
    pub fn exchange_issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.exchange)
    }

    /// A fresh JWT-SVID for `workload` valid 10 minutes (unique `jti`, so never served
    /// from a cache).
    pub fn mint(&self, workload: &str) -> Result<String> {
        self.issuer.mint(&self.svid_claims(workload))
    }

    /// Like [`Topology::mint`], valid `ttl_secs`.
    pub fn mint_with_ttl(&self, workload: &str, ttl_secs: u64) -> Result<String> {
        let mut c = self.svid_claims(workload);
        c["exp"] = json!(crate::jwt::now() + ttl_secs);
        self.issuer.mint(&c)
    }

    /// A JWT-SVID of [`MANAGEMENT_WORKLOAD`] for the management API (its audience),
    /// valid 10 minutes.
    pub fn management_token(&self) -> Result<String> {
        let id = self.spiffe_id(MANAGEMENT_WORKLOAD);
        self.issuer
            .mint(&self.issuer.claims(&id, &[MANAGEMENT_AUDIENCE], 600))
    }

    /// The claims [`Topology::mint`] signs; tests alter them to build bad tokens.
    pub fn svid_claims(&self, workload: &str) -> Value {
        let mut c = self
            .issuer
            .claims(&self.spiffe_id(workload), &[SVID_AUDIENCE], 600);
        c["jti"] = json!(crate::jwt::random_suffix());
        c
    }

    /// URL of the CLIENT-mode path (the app's outbound listener).
    pub fn client_mode_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.client_exchange)
    }

    /// URL of the SERVER-mode path (plain client sidecar listener → `inbound_mesh`).
    pub fn server_mode_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.client_plain)
    }

    /// `GET path` through the client sidecar's meshpass CLIENT listener.
    pub async fn via_client_mode(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.get(&self.client_mode_url(path), None, token).await
    }

    /// `GET path` to the server sidecar's meshpass SERVER listener over mTLS presenting
    /// `as_workload`'s X.509-SVID.
    pub async fn via_server_mode(
        &self,
        as_workload: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<Reply> {
        self.get(&self.server_mode_url(path), Some(as_workload), token)
            .await
    }

    async fn get(&self, url: &str, identity: Option<&str>, token: Option<&str>) -> Result<Reply> {
        let mut req = self.http.get(url);
        if let Some(id) = identity {
            req = req.header(envoy::IDENTITY_HEADER, id);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let mut headers = BTreeMap::new();
        for (k, v) in resp.headers() {
            headers
                .entry(k.as_str().to_string())
                .and_modify(|e: &mut String| {
                    e.push_str(", ");
                    e.push_str(&String::from_utf8_lossy(v.as_bytes()));
                })
                .or_insert_with(|| String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let body = resp.text().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Exchanges the client sidecar's filter has sent (requests on its exchange cluster).
    pub async fn client_exchanges(&self) -> Result<u64> {
        Ok(blocking(|| self.client.stat(&exchange_requests_stat())))
    }

    /// Exchanges the server sidecar's filter has sent.
    pub async fn server_exchanges(&self) -> Result<u64> {
        Ok(blocking(|| self.server.stat(&exchange_requests_stat())))
    }

    /// The last lines of every component's log, for failure messages.
    pub fn diagnostics(&self, lines: usize) -> String {
        let logs: [(&str, PathBuf); 4] = [
            ("client sidecar", self.client.log_path().to_path_buf()),
            ("server sidecar", self.server.log_path().to_path_buf()),
            ("exchange service", self.exchange_log.clone()),
            ("openbao", self.bao_log.clone()),
        ];
        logs.iter()
            .map(|(n, p)| {
                format!(
                    "----- {n} ({}) -----\n{}",
                    p.display(),
                    meshpass_testkit::log_tail(p, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The counter of requests a sidecar sent to the exchange service (each is one exchange).
fn exchange_requests_stat() -> String {
    format!("cluster.{}.upstream_rq_total", envoy::EXCHANGE_CLUSTER)
}

impl Drop for Topology {
    /// Stops the processes side by side (each waits for its own exit), sidecars first
    /// so nothing calls a service that is going away; the fields then drop as no-ops.
    fn drop(&mut self) {
        let (client, server) = (&mut self.client, &mut self.server);
        std::thread::scope(|s| {
            s.spawn(|| client.stop());
            s.spawn(|| server.stop());
        });
        let (exchange, bao) = (self.exchange.get_mut(), self.bao.get_mut());
        std::thread::scope(|s| {
            s.spawn(|| exchange.stop());
            s.spawn(|| bao.stop());
        });
    }
}

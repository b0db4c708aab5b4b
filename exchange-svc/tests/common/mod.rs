//! Shared test helpers: a subject-token issuer, the real transit signer on a key of the
//! test's own in the binary's shared OpenBao, configuration and app builders, and token
//! verification with meshpass-core.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_core::{CompactJws, KeySet};
use meshpass_exchange::caller::ConnInfo;
use meshpass_exchange::clock::Clock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{seed, MappingStore, SqlStore};
use meshpass_exchange::vault::{AuthConfig, Secret, TransitSigner, VaultConfig};
use meshpass_exchange::AppState;
use meshpass_testkit::OpenBao;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

pub const ISSUER: &str = "https://spire.test";
pub const TD: &str = "cluster.local";
pub const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const SERVICE_ISSUER: &str = "https://meshpass.test";

/// A mapping `ledger` for shop subjects on which `shop/batch` may act (delegation tests).
pub const DELEGATED_LEDGER: &str = r#"
[[mappings]]
name = "shop-to-ledger"
subject = "spiffe://cluster.local/ns/shop/*"
resource = "ledger"
participant = "acme-ledger"
ttl_secs = 300
allowed_actors = ["spiffe://cluster.local/ns/shop/sa/batch"]
"#;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str, alg: bool) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    let mut jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    });
    if alg {
        jwk["alg"] = json!("ES256");
    }
    jwk
}

fn es256(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// A JWT-SVID issuer with one ES256 key.
pub struct TestIssuer {
    pub iss: String,
    pub kid: String,
    key: p256::ecdsa::SigningKey,
}

impl TestIssuer {
    pub fn new(iss: &str, kid: &str) -> Self {
        TestIssuer {
            iss: iss.into(),
            kid: kid.into(),
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
        }
    }
    pub fn jwk(&self) -> Value {
        ec_jwk(&self.key, &self.kid, true)
    }
    pub fn jwks(&self) -> String {
        json!({"keys": [self.jwk()]}).to_string()
    }
    pub fn sign(&self, claims: &Value) -> String {
        es256(
            &self.key,
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
    /// A JWT-SVID for `sub`, audience `meshpass`, valid `ttl` seconds from `now`.
    pub fn svid(&self, sub: &str, now: u64, ttl: u64) -> String {
        self.sign(&json!({"iss": self.iss, "sub": sub, "aud": ["meshpass"], "iat": now, "exp": now + ttl}))
    }
}

/// The real signer ([`TransitSigner`]) on an ecdsa-p256 transit key of its own in this
/// test binary's shared dev OpenBao ([`OpenBao::shared`]: started by the first test that
/// asks, never paused or stopped; a test that takes Vault down uses [`own_openbao`] and
/// [`signer_on`]). Ready to sign: its kid is `{key}:v1`.
pub async fn signer() -> Arc<dyn Signer> {
    let bao = OpenBao::shared();
    start_signer(&signer_config(bao, &new_transit_key(bao))).await
}

/// A dev OpenBao of the test's own with transit mounted, for a test that pauses or
/// stops it (stopped on drop).
pub fn own_openbao() -> OpenBao {
    let bao = OpenBao::start();
    bao.enable_transit();
    bao
}

/// The real signer on a new ecdsa-p256 transit key of `bao` (transit mounted), quick to
/// notice an outage and a recovery: it re-reads the key every 200 ms and gives up on a
/// Vault request after 800 ms.
pub async fn signer_on(bao: &OpenBao) -> Arc<dyn Signer> {
    start_signer(&VaultConfig {
        key_refresh_interval: Duration::from_millis(200),
        request_timeout: Duration::from_millis(800),
        ..signer_config(bao, &new_transit_key(bao))
    })
    .await
}

/// Creates an ecdsa-p256 transit key on `bao` under a name no other test uses; returns
/// the name.
pub fn new_transit_key(bao: &OpenBao) -> String {
    let name = format!("test-{}", meshpass_testkit::random_hex(8));
    bao.create_transit_key(&name, "ecdsa-p256");
    name
}

/// `[vault]` for transit key `key` of `bao` with its root token: no publish lead (a
/// new key signs at once) and a 1 ms batching window (a lone signature never waits for
/// company anyway; this bounds the wait of concurrent ones).
pub fn signer_config(bao: &OpenBao, key: &str) -> VaultConfig {
    VaultConfig {
        address: Some(bao.addr()),
        auth: AuthConfig::Token {
            token: Some(Secret::new(bao.root_token())),
        },
        key_name: key.to_string(),
        publish_lead: Duration::ZERO,
        batch_max_wait: Duration::from_millis(1),
        ..VaultConfig::default()
    }
}

async fn start_signer(cfg: &VaultConfig) -> Arc<dyn Signer> {
    // VAULT_* and BAO_* in the environment would override the configuration.
    meshpass_testkit::clear_vault_env_once();
    let signer = TransitSigner::start(cfg).await.unwrap();
    assert!(signer.is_ready(), "signer on {} not ready", cfg.key_name);
    Arc::new(signer)
}

/// The TOML of a configuration with one inline-JWKS issuer, a SQLite store at `db`,
/// two mappings and scope claims; `extra` is appended.
pub fn config_toml(issuer: &TestIssuer, db: &Path, extra: &str) -> String {
    config_toml_vault(
        issuer,
        db,
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }",
        extra,
    )
}

/// Like [`config_toml`] with the body of the `[vault]` section.
pub fn config_toml_vault(issuer: &TestIssuer, db: &Path, vault: &str, extra: &str) -> String {
    format!(
        r#"
[token]
issuer = "{SERVICE_ISSUER}"

[store]
url = "sqlite://{db}"

[callers]
# Tests over real sockets stand in for the service's own sidecar.
xfcc_trusted_proxies = ["127.0.0.1"]

[[issuers]]
issuer = "{iss}"
audiences = ["meshpass"]
trust_domains = ["{TD}"]
jwks = '{jwks}'

[[mappings]]
name = "web-to-payments"
subject = "spiffe://cluster.local/ns/shop/*"
resource = "payments"
participant = "acme"
audiences = ["payments", "https://payments.internal"]
scopes = ["read", "write"]
ttl_secs = 300

[[mappings]]
name = "web-to-orders"
subject = "{WEB}"
resource = "orders"
participant = "acme-orders"
scopes = ["orders.read"]
ttl_secs = 600
rate_limit = {{ per_second = 0.5, burst = 2 }}

[[scope_claims]]
resource = "payments"
scope = "write"
claims = {{ role = "writer", tier = 2 }}

[[scope_claims]]
resource = "payments"
scope = "read"
claims = {{ role_read = true }}

[vault]
{vault}
{extra}
"#,
        db = db.display(),
        iss = issuer.iss,
        jwks = issuer.jwks(),
    )
}

pub fn load_config(dir: &Path, toml: &str) -> Config {
    let path = dir.join("meshpass.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// A state on a real SQLite file with the config's mappings seeded.
pub async fn state_with(cfg: &Config, signer: Arc<dyn Signer>, clock: Arc<dyn Clock>) -> AppState {
    state_and_store(cfg, signer, clock).await.0
}

/// [`state_with`], also returning the SQL store under it.
#[allow(dead_code)]
pub async fn state_and_store(
    cfg: &Config,
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
) -> (AppState, Arc<SqlStore>) {
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
    store.migrate().await.unwrap();
    seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims)
        .await
        .unwrap();
    let keys = IssuerKeys::from_config(cfg).unwrap();
    keys.refresh_all().await;
    // As `serve` does; the tasks end with the test's runtime.
    drop(keys.spawn_refresh());
    let state = AppState::new(
        cfg,
        signer,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        clock,
    )
    .unwrap();
    (state, store)
}

pub fn form(fields: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

pub fn exchange_form(subject_token: &str, extra: &[(&str, &str)]) -> String {
    let mut f = vec![
        ("grant_type", GRANT),
        ("subject_token", subject_token),
        ("subject_token_type", JWT_TYPE),
    ];
    f.extend_from_slice(extra);
    form(&f)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

pub async fn call(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

/// The claims of a compact JWT, read unverified (to look at what was minted).
pub fn claims_of(token: &str) -> Option<Value> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// The `jti` of a participant token (read without verifying it; empty when none).
pub fn jti_of(token: &str) -> String {
    claims_of(token)
        .and_then(|c| c["jti"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The `sub` of the form's `subject_token` (unverified: only to pick a caller).
fn form_subject(body: &str) -> Option<String> {
    let token = form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "subject_token")?
        .1
        .into_owned();
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    // A Kubernetes service-account subject is the workload spiffe://TD/ns/NS/sa/SA.
    match sub.strip_prefix("system:serviceaccount:") {
        Some(rest) => {
            let (ns, sa) = rest.split_once(':')?;
            Some(format!("spiffe://{TD}/ns/{ns}/sa/{sa}"))
        }
        None => Some(sub.to_string()),
    }
}

/// `POST /token` from the subject itself (CLIENT mode: the connection's mTLS peer is
/// the subject token's subject).
pub async fn post_token(app: &Router, body: String) -> Answer {
    let caller = form_subject(&body);
    post_token_as(app, body, caller.as_deref()).await
}

/// `POST /token` over a connection whose verified mTLS peer is `caller` (None: a plain
/// connection with no client certificate).
pub async fn post_token_as(app: &Router, body: String, caller: Option<&str>) -> Answer {
    let mut req = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    with_caller(&mut req, caller);
    call(app, req).await
}

/// Marks `req` as arriving over a connection whose verified mTLS peer is `caller`.
pub fn with_caller(req: &mut Request<Body>, caller: Option<&str>) {
    req.extensions_mut().insert(ConnectInfo(ConnInfo {
        peer: "10.1.2.3:40000".parse().unwrap(),
        tls_peer: caller.and_then(|c| meshpass_core::SpiffeId::parse(c).ok()),
        identity_until: None,
    }));
}

pub async fn get(app: &Router, path: &str) -> Answer {
    call(app, Request::get(path).body(Body::empty()).unwrap()).await
}

/// Verifies `token` against `jwks` with meshpass-core and returns (header kid, claims).
pub fn verify(token: &str, jwks: &Value) -> (String, Map<String, Value>) {
    let (set, rejected) = KeySet::parse(jwks.to_string().as_bytes()).unwrap();
    assert!(rejected.is_empty(), "JWKS keys rejected: {rejected:?}");
    let jws = CompactJws::parse(token, 64 * 1024).unwrap();
    let kid = jws.header.kid.clone().expect("participant token has a kid");
    let key = set.select(Some(&kid), jws.header.alg).unwrap();
    jws.verify(key).unwrap();
    assert_eq!(jws.header.typ.as_deref(), Some("JWT"));
    (kid, jws.payload.clone())
}

pub async fn get_text(app: &Router, path: &str) -> String {
    let r = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    String::from_utf8(
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

/// A CA, the service's certificate and a client certificate per SPIFFE ID, as PEM.
pub struct Pki {
    pub ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test mesh CA");
        Pki {
            ca: p.self_signed(&ca_key).unwrap(),
            ca_key,
        }
    }
    /// (cert PEM, key PEM) for a server name or a SPIFFE ID.
    pub fn issue(&self, san: rcgen::SanType) -> (String, String) {
        self.issue_with(vec![san], None)
    }
    /// (cert PEM, key PEM) with `sans`, valid until `not_after` (Unix seconds) if given.
    pub fn issue_with(
        &self,
        sans: Vec<rcgen::SanType>,
        not_after: Option<u64>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        if let Some(t) = not_after {
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            p.not_before = epoch + Duration::from_secs(t - 3 * 86_400);
            p.not_after = epoch + Duration::from_secs(t);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One replica in this process, built as `serve` builds it: the revocation set follows
/// the store, and the change feed runs.
pub struct Replica {
    pub app: Router,
    pub cache: Arc<meshpass_exchange::cache::TokenCache>,
    pub store: Arc<SqlStore>,
    pub feed: meshpass_exchange::change_feed::ChangeFeed,
}

pub async fn replica(cfg: &Config) -> Replica {
    let clock = Arc::new(meshpass_exchange::clock::SystemClock);
    let (mut state, store) = state_and_store(cfg, signer().await, clock).await;
    state
        .revocations
        .attach(
            Arc::clone(&store) as Arc<dyn meshpass_exchange::store::RevocationStore>,
            Arc::clone(&state.clock),
        )
        .await;
    let feed =
        meshpass_exchange::server::start_change_feed(Arc::clone(&store), cfg, &mut state).unwrap();
    Replica {
        cache: state.cache.clone().unwrap(),
        app: meshpass_exchange::app(state),
        store,
        feed,
    }
}

impl Replica {
    /// Waits for the feed's first version read (it drops the views too, just after it
    /// is published) and for the next second (nothing minted in the second of a drop is
    /// cached): a token minted from here stays cached until a change drops it.
    pub async fn settled(self) -> Self {
        let mut versions = self.feed.subscribe();
        tokio::time::timeout(Duration::from_secs(10), versions.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self
    }
}

/// The service binary as a command (`MESHPASS_EXCHANGE_BIN` when set, else the one
/// cargo built), without the test's own `MESHPASS__*`, `VAULT_*` and `BAO_*` variables.
pub fn exchange_command() -> std::process::Command {
    let path = std::env::var("MESHPASS_EXCHANGE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_meshpass-exchange").to_string());
    let mut c = std::process::Command::new(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("MESHPASS__")
            || k == "MESHPASS_CONFIG"
            || k.starts_with("VAULT_")
            || k.starts_with("BAO_")
            || k == "RUST_BACKTRACE"
        {
            c.env_remove(k);
        }
    }
    c
}

/// `meshpass-exchange serve --config cfg` with its output in `log`, killed on drop.
pub struct Serving(pub std::process::Child);

impl Serving {
    pub fn start(cfg: impl AsRef<std::ffi::OsStr>, log: &std::path::Path) -> Serving {
        Serving::start_with_env(cfg, log, &[])
    }

    /// [`Serving::start`] with `env` set for the process.
    pub fn start_with_env(
        cfg: impl AsRef<std::ffi::OsStr>,
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Serving {
        let out = std::fs::File::create(log).unwrap();
        let mut cmd = exchange_command();
        cmd.envs(env.iter().copied());
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Serving(child)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A log sink for tests that read what the service logged (a `tracing_subscriber`
/// writer); `text()` is everything written so far.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process-wide log of a test binary (every thread: a served app's handlers run on
/// the runtime's workers), installed once, at INFO.
pub fn captured_log() -> LogBuf {
    static LOG: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let buf = LogBuf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
    .clone()
}

fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client (HTTP/1.1; TLS 1.3 session resumption on, as in every rustls,
/// BoringSSL or Envoy client) trusting `ca_pem`, presenting `client` (cert, key PEM).
pub fn tls_client_config(
    ca_pem: &str,
    client: Option<(String, String)>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// `meshpass-exchange check-config` on `toml` (written to `dir/c.toml`) with `env`
/// set: its exit code and everything it wrote.
pub fn check_config_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let p = dir.join("c.toml");
    std::fs::write(&p, toml).unwrap();
    let mut c = exchange_command();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.arg("check-config").arg(&p).output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Revokes `matches` as `target` in `store` (as an operator would), applied to the
/// replica `st` at once.
pub async fn revoke_in(
    st: &AppState,
    store: &SqlStore,
    target: meshpass_exchange::store::RevocationTarget,
    matches: &str,
) -> meshpass_exchange::store::Revocation {
    use meshpass_exchange::store::{Actor, NewRevocation, RevocationStore};
    let rev = store
        .create_revocation(
            &NewRevocation {
                target,
                matches: matches.into(),
                reason: "compromised".into(),
                until: None,
            },
            &Actor {
                who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
                request_id: "test".into(),
            },
            now(),
        )
        .await
        .unwrap();
    st.revocations.created(rev.clone());
    rev
}

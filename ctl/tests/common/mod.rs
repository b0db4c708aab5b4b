//! The helpers the test crates share: a test issuer, the service's configuration, the
//! service started in-process on loopback sockets, and `meshpassctl` run as a process.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::{ExchangeStats, KeyAdmin};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{seed, MappingStore, SqlStore};
use meshpass_exchange::vault::TransitSigner;
use meshpass_exchange::AppState;
use meshpass_testkit::OpenBao;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};

pub const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";

pub struct Issuer(pub p256::ecdsa::SigningKey);

impl Issuer {
    pub fn jwks(&self) -> String {
        let p = self.0.verifying_key().to_encoded_point(false);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(p.y().unwrap())}]})
        .to_string()
    }
    pub fn token(&self, sub: &str) -> String {
        self.token_for(sub, "meshpass-admin")
    }
    pub fn token_for(&self, sub: &str, aud: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!(
            "{}.{}",
            enc(json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})),
            enc(
                json!({"iss": "https://spire.test", "sub": sub, "aud": [aud], "iat": now, "exp": now + 3600})
            )
        );
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

pub fn config(dir: &Path, issuer: &Issuer, bao: &OpenBao) -> Config {
    config_with(dir, issuer, bao, "")
}

/// [`config`] with `management` (TOML) at the end of the `[management]` section's keys.
pub fn config_with(dir: &Path, issuer: &Issuer, bao: &OpenBao, management: &str) -> Config {
    let toml = format!(
        r#"
[token]
issuer = "https://meshpass.test"
[store]
url = "sqlite://{db}"
[callers]
xfcc_trusted_proxies = ["127.0.0.2"]
[[issuers]]
issuer = "https://spire.test"
audiences = ["meshpass"]
trust_domains = ["cluster.local"]
jwks = '{jwks}'
[[mappings]]
name = "web-to-orders"
subject = "spiffe://cluster.local/ns/shop/sa/web"
resource = "orders"
participant = "acme"
scopes = ["read"]
ttl_secs = 600
[vault]
address = "{addr}"
auth = {{ method = "token", token = "{root}" }}
publish_lead = "0s"
[management]
listen = "127.0.0.1:0"
audiences = ["meshpass-admin"]
{management}
[[management.callers]]
id = "{ADMIN}"
roles = ["read", "write", "keys"]
"#,
        db = dir.join("m.db").display(),
        jwks = issuer.jwks(),
        addr = bao.addr(),
        root = bao.root_token(),
    );
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// Starts the service; returns the management API URL.
pub async fn serve(cfg: &Config) -> String {
    serve_both(cfg).await.0
}

/// Starts the service; returns the management API and token endpoint URLs.
pub async fn serve_both(cfg: &Config) -> (String, String) {
    let signer = Arc::new(TransitSigner::start(&cfg.vault).await.unwrap());
    let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
    store.migrate().await.unwrap();
    seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims)
        .await
        .unwrap();
    let keys = IssuerKeys::from_config(cfg).unwrap();
    keys.refresh_all().await;
    let state = AppState::new(
        cfg,
        signer.clone() as Arc<dyn Signer>,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let stats = Arc::new(ExchangeStats::new().unwrap());
    let running = meshpass_exchange::mgmt::start(
        cfg,
        &state,
        store,
        Some(signer as Arc<dyn KeyAdmin>),
        stats,
        std::future::pending::<()>(),
    )
    .await
    .unwrap()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        meshpass_exchange::server::serve_on(
            listener,
            state,
            std::future::pending::<()>(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    });
    (format!("http://{}", running.addr), token_url)
}

/// A YAML mapping document as JSON (the test writes both forms).
pub fn serde_yaml_like(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap()
}

pub struct Ctl {
    pub server: String,
    pub token_file: std::path::PathBuf,
}

impl Ctl {
    /// Runs meshpassctl with `args` on a blocking thread: (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_env(args, &[]).await
    }

    /// As [`Ctl::run`], with `env` set (and no proxy variable from the test's own
    /// environment).
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = Command::cargo_bin("meshpassctl").unwrap();
        cmd.env_remove("MESHPASS_TOKEN")
            .env_remove("MESHPASS_SERVER");
        for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
            cmd.env_remove(v).env_remove(v.to_lowercase());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .timeout(Duration::from_secs(60));
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

/// A minimal HTTP/1.1 peer on loopback: every request (head and body) is recorded, and
/// `answer(method, path)` gives the raw response. Returns (base URL, recorded requests).
pub fn fake_http(answer: fn(&str, &str) -> String) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || loop {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                rec.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..head_end + len]).to_string());
                let mut first = head.split_whitespace();
                let (m, p) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let resp = answer(m, p);
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (url, seen)
}

pub fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub async fn start_service(dir: &Path) -> (OpenBao, Issuer, Ctl, String) {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config(dir, &issuer, &bao);
    let (server, token_url) = serve_both(&cfg).await;
    let token_file = dir.join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    (bao, issuer, Ctl { server, token_file }, token_url)
}

//! `meshpassctl` end to end against a running service (token endpoint and management
//! API on loopback sockets, SQLite store, real OpenBao for the keys): tables, JSON,
//! apply, export → edit → import round trip, keys, audit, and the exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
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

const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";

struct Issuer(p256::ecdsa::SigningKey);

impl Issuer {
    fn jwks(&self) -> String {
        let p = self.0.verifying_key().to_encoded_point(false);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(p.y().unwrap())}]})
        .to_string()
    }
    fn token(&self, sub: &str) -> String {
        self.token_for(sub, "meshpass-admin")
    }
    fn token_for(&self, sub: &str, aud: &str) -> String {
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

fn config(dir: &Path, issuer: &Issuer, bao: &OpenBao) -> Config {
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
async fn serve(cfg: &Config) -> String {
    serve_both(cfg).await.0
}

/// Starts the service; returns the management API and token endpoint URLs.
async fn serve_both(cfg: &Config) -> (String, String) {
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
fn serde_yaml_like(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap()
}

struct Ctl {
    server: String,
    token_file: std::path::PathBuf,
}

impl Ctl {
    /// Runs meshpassctl with `args` on a blocking thread: (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::cargo_bin("meshpassctl").unwrap();
        cmd.env_remove("MESHPASS_TOKEN")
            .env_remove("MESHPASS_SERVER")
            .arg("--server")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manages_mappings_keys_and_audit_end_to_end_with_documented_exit_codes() {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config(dir.path(), &issuer, &bao);
    let server = serve(&cfg).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    let ctl = Ctl {
        server: server.clone(),
        token_file,
    };

    // Table by default, JSON on request.
    let (code, out, err) = ctl.run(&["mappings", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("web-to-orders"), "{out}");

    let file = dir.path().join("inv.yaml");
    std::fs::write(&file, "name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: 300\n").unwrap();
    let (code, out, err) = ctl
        .run(&["mappings", "apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!((code, out.trim()), (0, "mapping inv created"), "{err}");
    let (code, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert_eq!(code, 0);
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["resource"], "inventory");

    // export → edit → import --dry-run → import.
    let (code, exported, _) = ctl.run(&["export"]).await;
    assert_eq!(code, 0);
    assert!(exported.contains("name: inv"), "{exported}");
    let edited = exported.replace("ttl_secs: 300", "ttl_secs: 120");
    assert_ne!(edited, exported);
    let doc = dir.path().join("doc.yaml");
    std::fs::write(&doc, &edited).unwrap();
    let (code, out, err) = ctl
        .run(&["import", "--dry-run", "-f", doc.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("change") && out.contains("mappings/inv"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing applied"), "{out}");
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert!(
        out.contains("\"ttl_secs\": 300"),
        "dry run changed nothing: {out}"
    );
    let (code, out, err) = ctl.run(&["import", "-f", doc.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied"), "{out}");
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "yaml"]).await;
    assert!(out.contains("ttl_secs: 120"), "{out}");

    // Conditional writes: the ETag of what was read, a stale one refused (exit 4).
    let (code, tag, err) = ctl.run(&["mappings", "get", "inv", "--etag"]).await;
    assert_eq!(code, 0, "{err}");
    let tag = tag.trim().to_string();
    assert!(tag.starts_with('"') && tag.len() > 2, "{tag}");
    let edit = dir.path().join("inv2.yaml");
    let inv = |ttl: u32| {
        format!("name: inv\nsubject: spiffe://cluster.local/ns/shop/*\nresource: inventory\nparticipant: acme\nscopes: [read]\nttl_secs: {ttl}\n")
    };
    std::fs::write(&edit, inv(200)).unwrap();
    let f = edit.to_str().unwrap();
    let (code, out, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &tag])
        .await;
    assert_eq!((code, out.trim()), (0, "mapping inv configured"), "{err}");
    std::fs::write(&edit, inv(250)).unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &tag])
        .await;
    assert_eq!(code, 4, "a stale ETag: {err}");
    assert_eq!(
        ctl.run(&["mappings", "delete", "inv", "--if-match", &tag])
            .await
            .0,
        4
    );
    let (_, out, _) = ctl.run(&["mappings", "get", "inv", "-o", "json"]).await;
    assert!(
        out.contains("\"ttl_secs\": 200"),
        "the stale writes changed nothing: {out}"
    );
    // The current tag, given bare (unquoted), is accepted.
    let (_, current, _) = ctl.run(&["mappings", "get", "inv", "--etag"]).await;
    let bare = current.trim().trim_matches('"').to_string();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &bare])
        .await;
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &edit,
        format!(
            "[{}, {}]",
            serde_json::to_string(&serde_yaml_like(&inv(1))).unwrap(),
            serde_json::to_string(&serde_yaml_like(&inv(2))).unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", f, "--if-match", &bare])
        .await;
    assert_eq!(code, 2, "one ETag, two mappings: {err}");

    // Keys.
    let (code, out, err) = ctl.run(&["keys", "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("meshpass-participant:v1"), "{out}");
    let (code, out, _) = ctl.run(&["keys", "rotate", "-o", "json"]).await;
    assert_eq!(code, 0);
    let k: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(k["versions"].as_array().unwrap().len(), 2);
    // v1 may have signed tokens that are still live: retiring it is a conflict (exit 4);
    // retiring the signing version is invalid input, by field (exit 5).
    let (code, _, err) = ctl.run(&["keys", "retire", "--below", "2"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may be live"), "{err}");
    let (code, _, err) = ctl.run(&["keys", "retire", "--below", "9"]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("below"), "{err}");
    let (code, out, _) = ctl.run(&["keys", "status", "-o", "json"]).await;
    assert_eq!(code, 0);
    let k: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        k["versions"].as_array().unwrap().len(),
        2,
        "nothing retired"
    );

    // Stats: a table by default, the API's document as JSON.
    let (code, out, err) = ctl.run(&["stats"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MAPPING") && out.contains("SUBJECT"), "{out}");
    let (code, out, _) = ctl.run(&["stats", "-o", "json"]).await;
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert!(
        st["by_mapping"].is_array() && st["top_subjects"].is_array(),
        "{st}"
    );

    // Audit.
    let (code, out, _) = ctl.run(&["audit", "tail", "-n", "50"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("mapping.create") && out.contains("keys.rotate") && out.contains(ADMIN),
        "{out}"
    );
    assert!(
        !out.contains("keys.retire"),
        "a refused retirement is not a change: {out}"
    );

    // A mapping that is the only grant of a scope row stays, and the refusal says why.
    let row = dir.path().join("row.yaml");
    std::fs::write(
        &row,
        "resource: inventory\nscope: read\nclaims: {tier: 1}\n",
    )
    .unwrap();
    let (code, out, err) = ctl
        .run(&["scopes", "apply", "-f", row.to_str().unwrap()])
        .await;
    assert_eq!(
        (code, out.trim()),
        (0, "scope inventory read created"),
        "{err}"
    );
    let (code, _, err) = ctl.run(&["mappings", "delete", "inv"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("conflict: scope row inventory/read is granted only by this mapping (inv)"),
        "{err}"
    );
    let (code, _, err) = ctl.run(&["scopes", "delete", "inventory", "read"]).await;
    assert_eq!(code, 0, "{err}");
    // `.` and `..` name nothing: refused, never sent as another path (it would list).
    for dots in [".", ".."] {
        let (code, out, err) = ctl.run(&["mappings", "get", dots]).await;
        assert_eq!((code, out.as_str()), (2, ""), "{dots}: {err}");
    }

    // Exit codes a script can rely on.
    assert_eq!(ctl.run(&["mappings", "delete", "inv"]).await.0, 0);
    assert_eq!(
        ctl.run(&["mappings", "delete", "inv"]).await.0,
        3,
        "not found"
    );
    std::fs::write(
        &file,
        "name: bad\nsubject: not-spiffe\nresource: inventory\nparticipant: acme\nttl_secs: 300\n",
    )
    .unwrap();
    let (code, _, err) = ctl
        .run(&["mappings", "apply", "-f", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 5, "invalid: {err}");
    assert!(err.contains("subject"), "{err}");
    std::fs::write(
        dir.path().join("token"),
        issuer.token("spiffe://cluster.local/ns/shop/sa/web"),
    )
    .unwrap();
    assert_eq!(ctl.run(&["mappings", "list"]).await.0, 6, "not allowed");
    let nobody = Ctl {
        server: server.clone(),
        token_file: dir.path().join("missing"),
    };
    assert_eq!(nobody.run(&["mappings", "list"]).await.0, 2, "no token");
    let down = Ctl {
        server: "http://127.0.0.1:9".into(),
        token_file: dir.path().join("token"),
    };
    assert_eq!(down.run(&["mappings", "list"]).await.0, 7, "unreachable");
    let (code, out, _) = ctl.run(&["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("meshpassctl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_lists_lifts_and_introspects_end_to_end() {
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let cfg = config(dir.path(), &issuer, &bao);
    let (server, token_url) = serve_both(&cfg).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token(ADMIN)).unwrap();
    let ctl = Ctl { server, token_file };
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    // A participant token minted for web (from its own sidecar), active.
    // The workload's sidecar (the trusted proxy, 127.0.0.2) names it in XFCC; meshpassctl
    // itself is a local operator on 127.0.0.1.
    let http = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let exchange = || async {
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&resource=orders",
            issuer.token_for(WEB, "meshpass")
        );
        let r = http
            .post(format!("{token_url}/token"))
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (st, minted) = exchange().await;
    assert_eq!(st, 200, "{minted}");
    let participant = dir.path().join("participant");
    std::fs::write(&participant, minted["access_token"].as_str().unwrap()).unwrap();
    let p = participant.to_str().unwrap();
    let (code, out, err) = ctl.run(&["introspect", "-f", p, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (info["active"].clone(), info["sub"].clone()),
        (json!(true), json!(WEB))
    );

    // add (table and JSON), list, get.
    let (code, out, err) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            WEB,
            "--reason",
            "compromised node",
            "--until",
            "+1h",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("revocation rv-") && out.trim_end().ends_with(" created"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (code, out, _) = ctl.run(&["revocations", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID") && out.contains(&id) && out.contains("compromised node"),
        "{out}"
    );
    let (code, out, _) = ctl.run(&["revocations", "get", &id, "-o", "json"]).await;
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["target"].as_str(), r["match"].as_str()),
        (Some("subject"), Some(WEB))
    );
    assert!(r["until"].as_u64().is_some());
    let (code, out, _) = ctl
        .run(&["revocations", "list", "--target", "jti", "-o", "json"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"],
        json!([])
    );

    // Enforced at once: the exchange is refused, the token inactive.
    let (st, body) = exchange().await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error_description"], "revoked: compromised node");
    let (_, out, _) = ctl.run(&["introspect", "-f", p]).await;
    assert!(out.lines().nth(1).unwrap().starts_with("false"), "{out}");

    // lift, and the documented exit codes.
    let (code, out, err) = ctl.run(&["revocations", "lift", &id]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("revocation {id} lifted").as_str()),
        "{err}"
    );
    assert_eq!(exchange().await.0, 200);
    assert_eq!(
        ctl.run(&["revocations", "lift", &id]).await.0,
        3,
        "not found"
    );
    let (code, _, err) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            "not-spiffe",
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("match"), "{err}");
    let (code, _, _) = ctl
        .run(&[
            "revocations",
            "add",
            "--subject",
            WEB,
            "--jti",
            "j",
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(code, 2, "one target only");
    let (code, _, _) = ctl
        .run(&[
            "revocations",
            "add",
            "--jti",
            "j",
            "--reason",
            "r",
            "--until",
            "soon",
        ])
        .await;
    assert_eq!(code, 2, "bad --until");
}

//! Secrets never reaching the log or `check-config`'s output, against the real binary
//! and real components (PostgreSQL, the service's own TLS listener): a TLS private key
//! that does not load (the PEM parser quotes the line it could not read), and what the
//! PostgreSQL driver would say about `store.url` and the `.pgpass` file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// `s` as Rust prints a `Vec<u8>` (`[45, 45, ...]` without the brackets): how a PEM
/// parser's error quotes the line it could not read.
fn as_byte_list(s: &str) -> String {
    s.bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fresh private key (PKCS#8 PEM) and a 40-character piece of its base64 body.
fn private_key() -> (String, String) {
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let piece = body[8..48].to_string();
    (pem, piece)
}

/// Where `text` shows the key `piece` (as text, or as the bytes a `Vec<u8>` prints),
/// for a failure message; None when it does not.
fn shows_key(text: &str, piece: &str) -> Option<String> {
    let bytes = as_byte_list(piece);
    text.lines()
        .find(|l| l.contains(piece) || l.contains(&bytes))
        .map(|l| l.chars().take(400).collect())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The service's configuration (SQLite at `dir/m.db`, Vault nowhere: the service starts
/// and retries it) listening on `port`, with `extra` appended.
fn config(dir: &Path, port: u16, extra: &str) -> String {
    let issuer = TestIssuer::new(ISSUER, "k1");
    config_toml(
        &issuer,
        &dir.join("m.db"),
        &format!("\n[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_delay_secs = 0\n{extra}"),
    )
}

/// Waits until the log at `log` holds `needle` (panics with the log after `secs`).
fn wait_for_log(log: &Path, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key file whose line breaks were lost on its way (pasted from JSON or an
/// environment variable: `\n` written out) is refused, as it must be, but the error
/// quotes the key's whole line as bytes: `check-config` (run in CI, its output kept)
/// prints the service's private key.
#[test]
fn check_config_never_prints_a_tls_private_key_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, _) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let (key, piece) = private_key();
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let ca_file = write(dir.path(), "ca.crt", &pki.ca.pem());
    let key_file = write(dir.path(), "tls.key", &key.replace('\n', "\\n"));
    let toml = config(
        dir.path(),
        meshpass_testkit::free_port(),
        &format!(
            "[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\n"
        ),
    );
    let (code, out) = check_config_env(dir.path(), &toml, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("server.tls.key_file"), "{out}");
    if let Some(line) = shows_key(&out, &piece) {
        panic!("check-config prints the TLS private key:\n{line}");
    }
}

/// cert-manager renews the pair in place; a renewed key file that does not load keeps
/// the last good pair, logged. The log line quotes the new key (its whole one-line
/// PEM, as bytes): the private key the service is about to serve with is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_tls_key_that_does_not_load_is_never_written_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &key);
    let ca_file = write(dir.path(), "ca.crt", &pki.ca.pem());
    let (port, tls_port) = (meshpass_testkit::free_port(), meshpass_testkit::free_port());
    let toml = config(
        dir.path(),
        port,
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\n"
        ),
    );
    let cfg = write(dir.path(), "c.toml", &toml);
    let log = dir.path().join("exchange.log");
    let started = Instant::now();
    let _svc = Serving::start(&cfg, &log);
    {
        let log = log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, "listening", 30))
            .await
            .unwrap();
    }
    // The renewal: a new key whose line breaks became spaces on its way.
    let (renewed, piece) = private_key();
    std::fs::write(&key_file, renewed.replace('\n', " ") + "\n").unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(&key_file)
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    // A handshake after the recheck interval reads the files again.
    let wait = meshpass_exchange::tls_reload::RECHECK + Duration::from_millis(300);
    if let Some(rest) = wait.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls_client_config(&pki.ca.pem(), None)).clone())
        .resolve(
            "localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], tls_port)),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{tls_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the last good pair serves");
    let text = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, "not loaded", 10))
            .await
            .unwrap()
    };
    if let Some(line) = shows_key(&text, &piece) {
        panic!("the renewed TLS private key is in the log:\n{line}");
    }
}

/// Starts the service on `toml` with `env` (and its output in `log`), waits until its
/// store is ready, and returns the log.
fn serve_until_store_ready(dir: &Path, toml: &str, env: &[(&str, &str)]) -> String {
    let cfg = write(dir, "c.toml", toml);
    let log = dir.join("exchange.log");
    let env: Vec<(&str, &str)> = [("NO_COLOR", "1")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let svc = Serving::start_with_env(&cfg, &log, &env);
    wait_for_log(&log, "mapping store ready", 30);
    // The change listener connects (and parses the URL again) right after.
    let text = wait_for_log(&log, "listening for store changes", 30);
    drop(svc);
    text
}

/// `store.url` on a PostgreSQL URL, on a fresh database.
fn postgres_config(dir: &Path, url: &str) -> String {
    let toml = config(dir, meshpass_testkit::free_port(), "");
    let sqlite = format!("url = \"sqlite://{}\"", dir.join("m.db").display());
    assert!(toml.contains(&sqlite));
    toml.replace(&sqlite, &format!("url = {}", toml::Value::from(url)))
}

/// README: `store.url` is parsed as the driver parses it, and refused "without quoting
/// it". A parameter the PostgreSQL driver does not know (libpq's `sslpassword`, the
/// password of an encrypted client key) was neither refused nor hidden: the driver
/// ignored it and logged its value at WARN every time the URL was parsed. It is refused
/// now, naming the key, never the value.
#[test]
fn a_store_url_parameter_the_driver_would_ignore_is_refused_by_name_never_by_value() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("KeyPw{}", meshpass_testkit::random_hex(8));
    let url = format!("postgres://meshpass@127.0.0.1:5432/db?sslmode=disable&sslpassword={secret}");
    let toml = postgres_config(dir.path(), &url);
    let (code, out) = check_config_env(dir.path(), &toml, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("store.url") && out.contains("\"sslpassword\""),
        "{out}"
    );
    assert!(!out.contains(&secret), "the value is quoted: {out}");
}

/// Without a password in `store.url` the driver looks one up in the `.pgpass` file
/// (`PGPASSFILE`). A line missing its user field (`host:port:db:password`) is skipped,
/// and the driver logs it whole at WARN: the database password is in the service's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_pgpass_line_never_puts_its_password_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = tokio::task::spawn_blocking(meshpass_testkit::Postgres::fresh_database)
        .await
        .unwrap();
    let secret = format!("PgPw{}", meshpass_testkit::random_hex(8));
    let pgpass = dir.path().join("pgpass");
    std::fs::write(&pgpass, format!("*:*:*:{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let toml = postgres_config(dir.path(), &db.url());
    let d = dir.path().to_path_buf();
    let p = pgpass.display().to_string();
    let log = tokio::task::spawn_blocking(move || {
        serve_until_store_ready(&d, &toml, &[("PGPASSFILE", p.as_str())])
    })
    .await
    .unwrap();
    let shown: Vec<&str> = log.lines().filter(|l| l.contains(&secret)).collect();
    assert!(
        shown.is_empty(),
        "the .pgpass password is in the log {} times:\n{}",
        shown.len(),
        shown.first().unwrap_or(&"")
    );
    drop(db);
}

//! The `meshpass-exchange` binary's configuration handling: `check-config`, env
//! overrides, refusal to start on bad configuration naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    exchange_command()
}

fn write(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let p = dir.join("c.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// `meshpass-exchange check-config` on `toml`: its exit code and stderr.
fn check_config(dir: &std::path::Path, toml: &str) -> (Option<i32>, String) {
    let out = bin()
        .arg("check-config")
        .arg(write(dir, toml))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn good(dir: &std::path::Path) -> String {
    config_toml(&TestIssuer::new(ISSUER, "k"), &dir.join("m.db"), "")
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("check-config")
        .arg(write(dir.path(), &good(dir.path())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ttl_secs = 300", "ttl_secs = 0", "mappings[0]"),
        ("[token]\n", "[token]\nbogus_key = 1\n", "bogus_key"),
        (
            "trust_domains = [\"cluster.local\"]",
            "trust_domains = [\"Bad Domain\"]",
            "issuers[0].trust_domains",
        ),
        (
            "claims = { role = \"writer\", tier = 2 }",
            "claims = { iss = \"x\" }",
            "scope_claims[0]",
        ),
        (
            "issuer = \"https://meshpass.test\"",
            "issuer = \"ftp://x\"",
            "token.issuer",
        ),
        ("url = \"sqlite://", "url = \"mysql://", "store.url: "),
        (
            "[store]\n",
            "[store]\npolicy_cache_secs = 3600\n",
            "store.policy_cache_secs: ",
        ),
        // `Retry-After: 0` tells every client to retry at once: a hot loop against a
        // store or Vault that is down.
        (
            "[store]\n",
            "[store]\nretry_after_secs = 0\n",
            "store.retry_after_secs: ",
        ),
        (
            "[store]\n",
            "[store]\nretry_after_secs = 86400\n",
            "store.retry_after_secs: ",
        ),
        (
            "[callers]",
            "[server]\nretry_after_secs = 86400\n\n[callers]",
            "server.retry_after_secs: ",
        ),
        (
            "[callers]",
            "[server]\npublic_url = \"http://meshpass.test:8080/\"\n\n[callers]",
            "server.public_url: ",
        ),
        (
            "[callers]",
            "[server]\npublic_url = \"ftp://meshpass.test\"\n\n[callers]",
            "server.public_url: ",
        ),
        (
            "[callers]",
            "[server]\npublic_url = \"https://meshpass.test?x=1\"\n\n[callers]",
            "server.public_url: ",
        ),
    ];
    for (from, to, field) in cases {
        let toml = good(dir.path()).replacen(from, to, 1);
        assert_ne!(toml, good(dir.path()), "{from} not found");
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(2), "{to}: {err}");
        assert!(
            err.contains(field),
            "{to}: error does not name {field}: {err}"
        );
    }
}

#[test]
fn environment_variables_override_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &good(dir.path()));
    let out = bin()
        .arg("check-config")
        .arg(&path)
        .env("MESHPASS__CACHE__MIN_REMAINING_FRACTION", "1.5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("cache.min_remaining_fraction"), "{err}");
    let out = bin()
        .arg("check-config")
        .arg(&path)
        .env("MESHPASS__SERVER__LISTEN", "127.0.0.1:1234")
        .env("MESHPASS__TOKEN__PARTICIPANT_CLAIM", "tenant")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .arg("check-config")
        .arg(&path)
        .env("MESHPASS__TOKEN__PARTICIPANT_CLAIM", "sub")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("token.participant_claim"));
}

#[test]
fn serve_refuses_to_start_with_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let toml = good(dir.path()).replacen("[[issuers]]", "[[issuers]]\nunknown = true", 1);
    let out = bin()
        .arg("serve")
        .arg("--config")
        .arg(write(dir.path(), &toml))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown"));
}

#[test]
fn check_config_names_fields_inside_arrays_the_way_the_readme_does() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "audiences = [\"meshpass\"]",
            "audiences = \"meshpass\"",
            "issuers[0].audiences",
        ),
        ("ttl_secs = 300", "ttl_secs = \"soon\"", "mappings[0].ttl_secs"),
        (
            "[[issuers]]",
            "[[issuers]]\njwks_urll = \"https://x\"",
            "issuers[0].jwks_urll: is not a known key",
        ),
        (
            "name = \"web-to-orders\"",
            "name = \"web-to-orders\"\nallowed_callers = \"spiffe://cluster.local/x\"",
            "mappings[1].allowed_callers",
        ),
        (
            "[store]",
            "[server.tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"\nclient_ca_file = \"/nonexistent.pem\"\n\n[store]",
            "server.tls.cert_file",
        ),
    ];
    for (from, to, field) in cases {
        let toml = good(dir.path()).replacen(from, to, 1);
        assert_ne!(toml, good(dir.path()), "{from} not found");
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(2), "{to}: {err}");
        assert!(
            err.contains(field),
            "{to}: error does not name {field}: {err}"
        );
        assert!(
            !err.contains("default."),
            "{to}: figment's key path leaked: {err}"
        );
    }
}

#[test]
fn check_config_refuses_a_rotation_schedule_that_would_replace_versions_before_they_sign() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let vault = "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }\npublish_lead = \"10m\"\nkey_refresh_interval = \"30s\"";
    let cases = [
        // Not longer than publish_lead + key_refresh_interval (630 s).
        ("rotate_every = \"10m\"", "keys.rotate_every"),
        ("rotate_every = 630", "keys.rotate_every"),
        (
            "rotate_every = \"1h\"\ncheck_interval = \"1h\"",
            "keys.check_interval",
        ),
        (
            "rotate_every = \"1h\"\ncheck_interval = \"10ms\"",
            "keys.check_interval",
        ),
        ("rotate_every = \"30 days\"", "keys.rotate_every"),
    ];
    for (keys, field) in cases {
        let toml = config_toml_vault(
            &issuer,
            &dir.path().join("m.db"),
            vault,
            &format!("[keys]\n{keys}\n"),
        );
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(2), "{keys}: {err}");
        assert!(
            err.contains(field),
            "{keys}: error does not name {field}: {err}"
        );
    }
    for keys in [
        "rotate_every = \"30d\"",
        "rotate_every = 631\ncheck_interval = \"500ms\"",
        "",
    ] {
        let toml = config_toml_vault(
            &issuer,
            &dir.path().join("m.db"),
            vault,
            &format!("[keys]\n{keys}\n"),
        );
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(0), "{keys}: {}", err);
    }
}

#[test]
fn check_config_refuses_time_settings_that_defeat_their_rule() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let td = "trust_domains = [\"cluster.local\"]";
    // (the [[issuers]] edit, the [vault] body, the field named)
    let unused =
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }";
    let lead =
        |l: &str| format!("{unused}\nverifier_refresh_interval = \"20m\"\npublish_lead = \"{l}\"");
    let cases = [
        // A year of clock-skew leeway: tokens a year past exp.
        (
            format!("{td}\nleeway_secs = 31536000"),
            unused.to_string(),
            "issuers[0].leeway_secs",
        ),
        // A lifetime cap no token can meet.
        (
            format!("{td}\nmax_lifetime_secs = 0"),
            unused.to_string(),
            "issuers[0].max_lifetime_secs",
        ),
        // An unknown kid would fetch the JWKS on every request.
        (
            format!("{td}\nmin_refetch_secs = 0"),
            unused.to_string(),
            "issuers[0].min_refetch_secs",
        ),
        // publish_lead >= verifier refresh (20m) + key_refresh_interval (30s) +
        // server.jwks_max_age_secs (60): 21m30s; 21m covers only the first two.
        (td.to_string(), lead("21m"), "vault.publish_lead"),
    ];
    for (edit, vault, field) in &cases {
        let toml =
            config_toml_vault(&issuer, &dir.path().join("m.db"), vault, "").replacen(td, edit, 1);
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(2), "{edit} / {vault}: {err}");
        assert!(
            err.contains(field),
            "{edit}: error does not name {field}: {err}"
        );
    }
    for (edit, vault) in [
        (
            format!("{td}\nleeway_secs = 300\nmax_lifetime_secs = 86400\nmin_refetch_secs = 1"),
            unused.to_string(),
        ),
        (td.to_string(), lead("1290s")),
    ] {
        let toml =
            config_toml_vault(&issuer, &dir.path().join("m.db"), &vault, "").replacen(td, &edit, 1);
        let (code, err) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(0), "{edit} / {vault}: {}", err);
    }
}

/// Runs `serve` until it exits (at most 60 s): its exit code and everything it wrote.
fn serve_until_exit(dir: &std::path::Path, toml: &str) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(write(dir, toml))
        .env("MESHPASS__SERVER__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (code, out)
}

#[test]
fn serve_refuses_to_start_when_a_configured_scope_row_is_granted_by_no_mapping() {
    let dir = tempfile::tempdir().unwrap();
    // A typo'd scope: the row would sit in the store adding claims to no token.
    let toml = good(dir.path()).replacen(
        "[vault]",
        "[[scope_claims]]\nresource = \"payments\"\nscope = \"wirte\"\nclaims = { flag = true }\n\n[vault]",
        1,
    );
    let (code, out) = serve_until_exit(dir.path(), &toml);
    assert_eq!(code, Some(2), "it did not refuse to start: {out}");
    assert!(out.contains("scope_claims[2]"), "{out}");
    assert!(out.contains("wirte"), "{out}");
}

fn try_load(
    dir: &std::path::Path,
    toml: &str,
) -> Result<meshpass_exchange::config::Config, String> {
    meshpass_exchange::config::Config::load(Some(&write(dir, toml))).map_err(|e| e.to_string())
}

/// The standard config with the issuer's inline JWKS line replaced by `keys`.
fn issuer_toml(issuer: &TestIssuer, db: &std::path::Path, keys: &str) -> String {
    config_toml(issuer, db, "").replace(&format!("jwks = '{}'", issuer.jwks()), keys)
}

/// `check-config` with `env` set: its exit code and everything it wrote.
fn check_config_env(
    dir: &std::path::Path,
    toml: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut c = bin();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .arg("check-config")
        .arg(write(dir, toml))
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_negative_issuer_refresh_secs_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = issuer_toml(
        &issuer,
        &dir.path().join("m.db"),
        &format!("jwks = '{}'\nrefresh_secs = -1", issuer.jwks()),
    );
    let err = try_load(dir.path(), &toml).expect_err("refresh_secs = -1 accepted");
    assert!(
        err.contains("issuers[0].refresh_secs"),
        "error does not name issuers[0].refresh_secs: {err}"
    );
}

#[test]
fn a_wrongly_typed_token_review_timeout_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = issuer_toml(
        &issuer,
        &dir.path().join("m.db"),
        &format!(
            "jwks = '{}'\ntoken_review = {{ in_cluster = true, timeout_secs = \"5s\" }}",
            issuer.jwks()
        ),
    );
    let err = try_load(dir.path(), &toml).expect_err("timeout_secs = \"5s\" accepted");
    assert!(
        err.contains("timeout_secs"),
        "error does not name token_review.timeout_secs: {err}"
    );
}

/// What `serve` refuses of the issuers (an inline set with no usable key, a CA file
/// that cannot be read), check-config refuses too, naming the field.
#[test]
fn check_config_refuses_issuer_keys_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    for (keys, field) in [
        (r#"jwks = '{"keys": []}'"#, "issuers[0].jwks"),
        (
            "jwks_url = \"https://jwks.test/keys\"\nca_file = \"/nonexistent/ca.pem\"",
            "issuers[0].ca_file",
        ),
    ] {
        let toml = issuer_toml(&issuer, &dir.path().join("m.db"), keys);
        let loaded = try_load(dir.path(), &toml);
        // What serve does with the same configuration:
        let serve = loaded.as_ref().ok().map(|cfg| {
            meshpass_exchange::keys::IssuerKeys::from_config(cfg)
                .err()
                .map(|e| e.to_string())
        });
        let err = loaded.err().unwrap_or_else(|| {
            panic!("{keys}: check-config accepted it, but serve says: {serve:?}")
        });
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn an_unknown_key_is_refused_naming_that_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        "[callers]",
        "[server]\nlistn = \"0.0.0.0:9000\"\n\n[callers]",
    );
    let (code, out) = check_config_env(dir.path(), &toml, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("server.listn: is not a known key"),
        "check-config does not name server.listn: {out}"
    );
    let good = config_toml(&issuer, &dir.path().join("m.db"), "");
    let (code, out) = check_config_env(
        dir.path(),
        &good,
        &[("MESHPASS__SERVER__LISTN", "0.0.0.0:9000")],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("server.listn: is not a known key"),
        "check-config does not name server.listn (env): {out}"
    );
}

#[test]
fn a_tls_listener_on_the_token_listeners_address_is_refused_naming_the_field() {
    let err = try_tls_section("listen = \"127.0.0.1:18443\"")
        .expect_err("a TLS listener on the token listener's address was accepted");
    assert!(err.contains("server.tls.listen"), "{err}");
}

#[test]
fn a_tls_max_connection_age_of_zero_is_refused_naming_the_field() {
    let err = try_tls_section("max_connection_age_secs = 0")
        .expect_err("max_connection_age_secs = 0 was accepted");
    assert!(err.contains("server.tls.max_connection_age_secs"), "{err}");
}

/// "No limit" written as a huge number passed the check and overflowed the instant a
/// caller's identity lapses: every mTLS handshake then panicked and every identified
/// caller was cut off. Refused at load, naming the field.
#[test]
fn a_tls_max_connection_age_too_large_for_a_clock_is_refused_naming_the_field() {
    for huge in ["9223372036854775807", "86401"] {
        let err = try_tls_section(&format!("max_connection_age_secs = {huge}"))
            .expect_err("a huge max_connection_age_secs was accepted");
        assert!(err.contains("server.tls.max_connection_age_secs"), "{err}");
    }
    assert!(try_tls_section("max_connection_age_secs = 86400").is_ok());
}

/// Loads a config whose `[server.tls]` (real files, `server.listen` 127.0.0.1:18443)
/// ends with `extra`.
fn try_tls_section(extra: &str) -> Result<meshpass_exchange::config::Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("meshpass.test".try_into().unwrap()));
    let w = |n: &str, c: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, c).unwrap();
        p.display().to_string()
    };
    let (cert, key, ca) = (
        w("c.pem", &cert),
        w("k.pem", &key),
        w("ca.pem", &pki.ca.pem()),
    );
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:18443\"\n[server.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{ca}\"\n{extra}\n\n[callers]"
        ),
    );
    try_load(dir.path(), &toml)
}

const DB_PASSWORD: &str = "S3cr3t-db-pass";
const VAULT_TOKEN: &str = "hvs.CAESIAuditSecretVaultToken0123456789";

/// Files whose error would quote a secret: a syntax error on the line holding it (a
/// password with a backslash, `\q` being no TOML escape; a token pasted unquoted: the
/// toml crate quotes the whole line), or a secret given where a section is expected.
fn files_that_would_quote_a_secret() -> Vec<(String, &'static str)> {
    vec![
        (
            format!("[store]\nurl = \"postgres://meshpass:{DB_PASSWORD}\\q@db:5432/meshpass\"\n"),
            DB_PASSWORD,
        ),
        (
            format!("[vault.auth]\nmethod = \"token\"\ntoken = {VAULT_TOKEN}\n"),
            VAULT_TOKEN,
        ),
        (
            format!("store = \"postgres://meshpass:{DB_PASSWORD}@db:5432/meshpass\"\n"),
            DB_PASSWORD,
        ),
        (format!("[vault]\nauth = \"{VAULT_TOKEN}\"\n"), VAULT_TOKEN),
    ]
}

#[test]
fn a_configuration_error_never_quotes_a_secret_yet_says_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    for (text, secret) in files_that_would_quote_a_secret() {
        let msg = try_load(dir.path(), &text).expect_err("the file is refused");
        assert!(!msg.contains(secret), "the secret is in the error:\n{msg}");
        assert!(
            msg.contains("TOML parse error at line") || msg.contains("invalid type"),
            "{msg}"
        );
    }
}

#[test]
fn serve_and_check_config_never_print_a_secret_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (text, secret) = files_that_would_quote_a_secret().remove(0);
    let p = write(dir.path(), &text);
    for args in [
        vec!["check-config".to_string(), p.display().to_string()],
        vec!["serve".into(), "--config".into(), p.display().to_string()],
    ] {
        let out = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            !stderr.contains(secret),
            "{args:?} printed the secret:\n{stderr}"
        );
    }
}

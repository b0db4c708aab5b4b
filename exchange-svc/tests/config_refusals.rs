//! Configuration refusals as an operator meets them: `MESHPASS__SECTION__KEY`
//! environment overrides, `check-config` against `serve`, secrets in error messages, the
//! configuration path. Each refusal names the key (or the variable, or the path) and
//! never quotes a value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn bin() -> Command {
    exchange_command()
}

/// The standard test configuration (one inline-JWKS issuer, SQLite store in `dir`,
/// Vault unreachable: `check-config` never connects).
fn good(dir: &Path) -> String {
    config_toml(&TestIssuer::new(ISSUER, "k"), &dir.join("m.db"), "")
}

/// `serve --config` on `toml`: its exit code (None: still running after `wait`, then
/// killed) and everything it wrote.
fn serve_for(dir: &Path, toml: &str, wait: Duration) -> (Option<i32>, String) {
    let p = dir.join("serve.toml");
    std::fs::write(&p, toml).unwrap();
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > wait {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

/// A configuration `serve` can run on its own loopback port with no management
/// listener (others' tests run beside this one), with `store.url` = `url`.
fn serve_toml(dir: &Path, url: &str) -> String {
    let toml = good(dir).replacen(
        &format!("url = \"sqlite://{}\"", dir.join("m.db").display()),
        &format!("url = \"{url}\""),
        1,
    );
    assert!(toml.contains(url), "store.url line not found");
    toml.replacen(
        "[token]",
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[management]\nenabled = false\n\n[token]",
        1,
    )
}

// ---------------------------------------------------------------------------------
// check-config against serve: store.url
// ---------------------------------------------------------------------------------

/// README: `check-config` exits "0 valid, 2 invalid (names the field)" and applies the
/// environment `serve` will have. `check-config` passed these `store.url`s ("ok", exit
/// 0) though `serve` could never use them (a bad port, a bad IPv6 host, an unknown
/// `sslmode`): it only looked at the scheme prefix and never parsed the URL the way the
/// pool does.
#[test]
fn check_config_refuses_a_store_url_that_serve_refuses_naming_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        "postgres://meshpass:pw@db.example:99999/meshpass",
        "postgres://meshpass:pw@[::1/meshpass",
        "postgres://meshpass:pw@db.example:5432/meshpass?sslmode=bogus",
    ];
    let mut wrong = Vec::new();
    for url in cases {
        let (code, out) = check_config_env(
            dir.path(),
            &good(dir.path()),
            &[("MESHPASS__STORE__URL", url)],
        );
        if code != Some(2) || !out.contains("store.url") {
            wrong.push(format!("{url}: exit {code:?}: {}", out.trim()));
        }
    }
    assert!(
        wrong.is_empty(),
        "check-config accepted store.url values the service cannot use (serve refuses or never connects):\n{}",
        wrong.join("\n")
    );
}

/// README "Configuration": "bad values refuse to start and name the field". A
/// PostgreSQL URL whose options cannot be parsed (`sslmode=bogus`) is a configuration
/// error, not an outage: no retry can ever connect. `serve` treated it as a database
/// that was down: it started listening, logged "store not ready; retrying in the
/// background ... unknown value \"bogus\" for `ssl_mode`" and stayed unready forever.
#[test]
fn serve_refuses_to_start_with_a_store_url_whose_options_do_not_parse_naming_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let toml = serve_toml(
        dir.path(),
        "postgres://meshpass:pw@127.0.0.1:5432/meshpass?sslmode=bogus",
    );
    let (code, out) = serve_for(dir.path(), &toml, Duration::from_secs(20));
    // The first lines say enough (the retries repeat them).
    let out: String = out.lines().take(3).collect::<Vec<_>>().join("\n");
    assert_eq!(
        code,
        Some(2),
        "serve did not refuse to start on a store.url it can never use (None = still running after 20 s):\n{out}"
    );
    assert!(
        out.contains("store.url"),
        "the refusal does not name store.url:\n{out}"
    );
}

// ---------------------------------------------------------------------------------
// MESHPASS__* variables
// ---------------------------------------------------------------------------------

/// README: "every key overridable by the environment: `MESHPASS__SECTION__KEY` ...
/// Unknown keys are errors". A variable in the `MESHPASS__` namespace whose name had an
/// empty segment (a doubled `__`, a trailing `__`) was dropped without a word (figment
/// skips keys with an empty segment), so `MESHPASS__STORE____URL=postgres://...` left
/// the replica on the file's (or the default) SQLite store while the operator believed
/// it shared PostgreSQL with the others. `MESHPASS__STORE__URLL` was refused; these
/// are now as well.
#[test]
fn a_meshpass_variable_with_an_empty_name_segment_is_refused_not_silently_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let pg = "postgres://meshpass@127.0.0.1:5432/meshpass";
    let mut ignored = Vec::new();
    for var in [
        "MESHPASS__STORE____URL",
        "MESHPASS__STORE__URL__",
        "MESHPASS____STORE__URL",
    ] {
        let (code, out) = check_config_env(dir.path(), &good(dir.path()), &[(var, pg)]);
        if code != Some(2) {
            ignored.push(format!("{var}={pg}: exit {code:?}: {}", out.trim()));
        }
    }
    assert!(
        ignored.is_empty(),
        "a MESHPASS__ variable the service cannot apply was silently ignored (the service would run on the file's store):\n{}",
        ignored.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Secrets in configuration errors
// ---------------------------------------------------------------------------------

/// README: an environment value is read as TOML reads it unquoted, so a string key
/// whose value looks like a number is refused naming the key; config.rs: never quote a
/// value, it may be a secret; README `[vault]`: tokens and secret IDs "are never
/// logged". A Vault token or AppRole secret ID that was all digits, given unquoted, was
/// refused as "vault.auth: invalid type: found unsigned int `918273645`": the secret
/// itself was printed (stderr: the pod's log) and the key named was `vault.auth`, not
/// the one at fault.
#[test]
fn a_numeric_vault_secret_is_refused_naming_its_key_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "918273645";
    let cases: [(&[(&str, &str)], &str); 2] = [
        (
            &[("MESHPASS__VAULT__AUTH__TOKEN", secret)],
            "vault.auth.token",
        ),
        (
            &[
                ("MESHPASS__VAULT__AUTH__METHOD", "approle"),
                ("MESHPASS__VAULT__AUTH__ROLE_ID", "meshpass"),
                ("MESHPASS__VAULT__AUTH__SECRET_ID", secret),
            ],
            "vault.auth.secret_id",
        ),
    ];
    let toml = config_toml_vault(
        &TestIssuer::new(ISSUER, "k"),
        &dir.path().join("m.db"),
        "address = \"http://127.0.0.1:9\"",
        "",
    );
    let mut wrong = Vec::new();
    for (env, field) in cases {
        let (code, out) = check_config_env(dir.path(), &toml, env);
        if code != Some(2) || out.contains(secret) || !out.contains(field) {
            wrong.push(format!(
                "{env:?}: exit {code:?}, want {field} named and the value hidden: {}",
                out.trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// config.rs `load_error`: never quote a value, it may be a secret put in the wrong
/// place (cli_config.rs's
/// `a_configuration_error_never_quotes_a_secret_yet_says_where_and_why` covers a secret
/// given where a section is expected). A secret given to an enum key
/// (`vault.auth.method`, `log.format`: two variables swapped in a Helm chart) or to a
/// duration was quoted whole: "unknown variant: found `hvs.…`", "invalid duration
/// \"hvs.…\"".
#[test]
fn a_secret_given_to_an_enum_or_duration_key_is_refused_without_being_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hvs.CAESIConfigRefusalsSecretToken0123";
    let mut quoted = Vec::new();
    for var in [
        "MESHPASS__VAULT__AUTH__METHOD",
        "MESHPASS__LOG__FORMAT",
        "MESHPASS__VAULT__PUBLISH_LEAD",
    ] {
        let (code, out) = check_config_env(dir.path(), &good(dir.path()), &[(var, secret)]);
        assert_eq!(code, Some(2), "{var}: {out}");
        if out.contains(secret) {
            quoted.push(format!("{var}: {}", out.trim()));
        }
    }
    assert!(
        quoted.is_empty(),
        "the configuration error printed the value (a secret in the wrong place):\n{}",
        quoted.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The configuration path
// ---------------------------------------------------------------------------------

/// README: "a path that does not exist is refused (`--config: … does not exist`, exit
/// 2)". A path that existed but was a directory (the ConfigMap's mount point instead of
/// the file in it) was read as no file at all (figment skips what is not a file): the
/// error was "token.issuer: is required", which sent the operator to the wrong place,
/// and with the required keys in the environment the file would have been skipped
/// silently.
#[test]
fn a_configuration_path_that_is_a_directory_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("etc-meshpass");
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join("exchange.toml"), good(dir.path())).unwrap();
    let out = bin().arg("check-config").arg(&mount).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        !text.contains("token.issuer") && (text.contains("--config") || text.contains("directory")),
        "check-config on a directory should say the path is not a file, it said: {}",
        text.trim()
    );
    let out = bin()
        .arg("serve")
        .arg("--config")
        .arg(&mount)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        !text.contains("token.issuer") && (text.contains("--config") || text.contains("directory")),
        "serve --config on a directory should say the path is not a file, it said: {}",
        text.trim()
    );
}

// ---------------------------------------------------------------------------------
// token.issuer
// ---------------------------------------------------------------------------------

/// `server.public_url` refuses a URL with a user or password; `token.issuer` accepted
/// one (`https://user:pw@meshpass.test`), and the password would have been in the `iss`
/// of every minted token and in the discovery documents. It is refused naming
/// `token.issuer`, without quoting the URL.
#[test]
fn an_issuer_with_a_user_or_password_is_refused_naming_token_issuer_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    for issuer in [
        "https://meshpass:Pa55w0rdKcfg@meshpass.test",
        "https://meshpass@meshpass.test",
        "https://:Pa55w0rdKcfg@meshpass.test/tenant",
    ] {
        let (code, out) = check_config_env(
            dir.path(),
            &good(dir.path()),
            &[("MESHPASS__TOKEN__ISSUER", issuer)],
        );
        assert_eq!(code, Some(2), "{issuer}: {out}");
        assert!(out.contains("token.issuer"), "{issuer}: {out}");
        assert!(
            !out.contains("Pa55w0rdKcfg") && !out.contains(issuer),
            "{issuer}: {out}"
        );
    }
}

//! Audit: secrets held in the configuration file must not reach error messages, logs or
//! stderr. A TOML syntax error on the line that holds a secret makes the `toml` crate
//! quote that whole line (with a caret) in its message; `Config::load` passes the
//! message on unchanged (`ConfigError::Load`), and `meshpass-exchange serve` /
//! `check-config` print it to stderr (the pod log).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use meshpass_exchange::config::Config;

const DB_PASSWORD: &str = "S3cr3t-db-pass";
const VAULT_TOKEN: &str = "hvs.CAESIAuditSecretVaultToken0123456789";

/// A password with a backslash (TOML basic strings refuse `\q`).
fn store_url_line() -> String {
    format!("url = \"postgres://meshpass:{DB_PASSWORD}\\q@db:5432/meshpass\"\n")
}

/// A Vault token pasted without quotes.
fn vault_token_line() -> String {
    format!("token = {VAULT_TOKEN}\n")
}

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("c.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshpass-exchange"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MESHPASS__") || k.starts_with("VAULT_") || k.starts_with("BAO_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn a_syntax_error_on_the_store_url_line_does_not_quote_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), &format!("[store]\n{}", store_url_line()));
    let e = Config::load(Some(&p)).expect_err("the file does not parse");
    let msg = e.to_string();
    eprintln!("Config::load error:\n{msg}");
    assert!(
        !msg.contains(DB_PASSWORD),
        "the store.url password is in the configuration error:\n{msg}"
    );
}

#[test]
fn a_syntax_error_on_the_vault_token_line_does_not_quote_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        &format!("[vault.auth]\nmethod = \"token\"\n{}", vault_token_line()),
    );
    let e = Config::load(Some(&p)).expect_err("the file does not parse");
    let msg = e.to_string();
    eprintln!("Config::load error:\n{msg}");
    assert!(
        !msg.contains(VAULT_TOKEN),
        "the Vault token is in the configuration error:\n{msg}"
    );
}

#[test]
fn serve_and_check_config_do_not_print_the_secret_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        &format!(
            "[store]\n{}[vault.auth]\nmethod = \"token\"\n",
            store_url_line()
        ),
    );
    for args in [
        vec!["check-config".to_string(), p.display().to_string()],
        vec![
            "serve".to_string(),
            "--config".to_string(),
            p.display().to_string(),
        ],
    ] {
        let out = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{args:?} → {:?}\n{stderr}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            !stderr.contains(DB_PASSWORD),
            "{args:?} printed the store.url password:\n{stderr}"
        );
    }
}

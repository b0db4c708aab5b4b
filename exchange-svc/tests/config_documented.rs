//! The configuration tables of exchange-svc/README.md against what the service does
//! with a configuration (`check-config` and `serve`, as a process): defaults, bounds,
//! environment overrides and the fields errors name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    exchange_command()
}

/// The standard test configuration with `vault` as the body of its `[vault]` section.
fn with_vault(dir: &std::path::Path, vault: &str, extra: &str) -> String {
    config_toml_vault(
        &TestIssuer::new(ISSUER, "k"),
        &dir.join("m.db"),
        vault,
        extra,
    )
}

/// README, `[vault]` table: "`auth.method` | `token` | `token`, `token_file`, ...": the
/// method defaults to `token`, so a `[vault.auth]` table that gives only the token (or
/// the token given as `MESHPASS__VAULT__AUTH__TOKEN`) is a token login. The service
/// refuses it: "vault.auth.method: is required".
#[test]
fn a_vault_auth_section_without_a_method_uses_the_documented_default_method_token() {
    let dir = tempfile::tempdir().unwrap();
    let address = "address = \"http://127.0.0.1:9\"";
    // In the file: a [vault.auth] table with the token and no method.
    let toml = with_vault(
        dir.path(),
        &format!("{address}\n\n[vault.auth]\ntoken = \"unused\""),
        "",
    );
    let (code, out) = check_config_env(dir.path(), &toml, &[]);
    assert_eq!(
        code,
        Some(0),
        "a [vault.auth] table without `method` is refused although the README gives `token` as its default: {out}"
    );
    // From the environment: every key is overridable by MESHPASS__SECTION__KEY.
    let toml = with_vault(dir.path(), address, "");
    let (code, out) = check_config_env(
        dir.path(),
        &toml,
        &[("MESHPASS__VAULT__AUTH__TOKEN", "unused")],
    );
    assert_eq!(
        code,
        Some(0),
        "MESHPASS__VAULT__AUTH__TOKEN alone is refused although the README gives `token` as the default method: {out}"
    );
}

/// README: bad values refuse to start naming the field (exit 2); `vault.key_refresh_interval`
/// is documented with a lower bound only ("at least 100 ms"). A very long interval
/// (`u64::MAX` seconds, or `213503982334601d`) makes `check-config` and `serve` panic
/// ("overflow when adding durations", exit 101) in the checks that add it to
/// `publish_lead` (with `[keys] rotate_every`) or to `verifier_refresh_interval`.
#[test]
fn a_huge_vault_key_refresh_interval_is_refused_naming_a_field_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }";
    let huge = "key_refresh_interval = \"18446744073709551615s\"";
    let cases = [
        // key_schedule.rs: publish_lead + key_refresh_interval
        (
            format!("{base}\n{huge}"),
            "[keys]\nrotate_every = \"30d\"\n",
        ),
        // config.rs: verifier_refresh_interval + key_refresh_interval + jwks_max_age
        (
            format!("{base}\n{huge}\nverifier_refresh_interval = \"20m\"\npublish_lead = \"7d\""),
            "",
        ),
    ];
    for (vault, extra) in &cases {
        let toml = with_vault(dir.path(), vault, extra);
        let (code, out) = check_config_env(dir.path(), &toml, &[]);
        assert!(
            !out.contains("panicked"),
            "check-config panicked on a configuration ({vault} / {extra}):\n{out}"
        );
        assert_eq!(code, Some(2), "{vault} / {extra}: {out}");
        assert!(
            [
                "vault.key_refresh_interval",
                "vault.publish_lead",
                "keys.rotate_every"
            ]
            .iter()
            .any(|f| out.contains(f)),
            "the refusal names no field: {out}"
        );
    }
    // serve reads the configuration the same way.
    let toml = with_vault(dir.path(), &cases[0].0, cases[0].1);
    let p = dir.path().join("s.toml");
    std::fs::write(&p, toml).unwrap();
    let out = bin()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .env("MESHPASS__SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "serve panicked:\n{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
}

/// README, Configuration: an environment value is read as TOML reads it unquoted, so a
/// string key whose value looks like a number is quoted (`MESHPASS__VAULT__KEY_NAME=
/// '"2025"'`); unquoted it is refused naming the key, never taken as something else.
#[test]
fn a_string_key_whose_value_looks_like_a_number_is_set_quoted_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let vault =
        "address = \"http://127.0.0.1:9\"\nauth = { method = \"token\", token = \"unused\" }";
    let toml = with_vault(dir.path(), vault, "");
    for (var, field) in [
        ("MESHPASS__VAULT__KEY_NAME", "vault.key_name"),
        ("MESHPASS__RATE_LIMIT__KEY_PREFIX", "rate_limit.key_prefix"),
    ] {
        let (code, out) = check_config_env(dir.path(), &toml, &[(var, "\"2025\"")]);
        assert_eq!(code, Some(0), "{var}='\"2025\"': {out}");
        let (code, out) = check_config_env(dir.path(), &toml, &[(var, "2025")]);
        assert_eq!(code, Some(2), "{var}=2025: {out}");
        assert!(
            out.contains(field),
            "{var}=2025 refused without naming {field}: {out}"
        );
    }
}

/// README, Configuration: "bad values refuse to start and name the field the way this
/// table does, also for type errors and unknown keys inside arrays of tables
/// (`issuers[0].jwks_urll: is not a known key`)". Inside an issuer's `token_review`
/// the field comes out as `issuers[0]: token_review.bogus: unknown field ...` and
/// `issuers[0]: token_review.timeout_secs: invalid type ...`, not as the dotted path
/// every other section gives (`mappings[0].rate_limit.bogus: is not a known key`,
/// `management.kubernetes.bogus: is not a known key`).
#[test]
fn an_unknown_or_mistyped_key_inside_an_issuers_token_review_is_named_by_its_dotted_path() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let jwks = format!("jwks = '{}'", issuer.jwks());
    let cases = [
        (
            "token_review = { in_cluster = true, bogus = 1 }",
            "issuers[0].token_review.bogus: is not a known key",
        ),
        (
            "token_review = { in_cluster = true, timeout_secs = \"5\" }",
            "issuers[0].token_review.timeout_secs: ",
        ),
    ];
    for (edit, named) in cases {
        let toml = config_toml(&issuer, &dir.path().join("m.db"), "")
            .replace(&jwks, &format!("{jwks}\n{edit}"));
        let (code, out) = check_config_env(dir.path(), &toml, &[]);
        assert_eq!(code, Some(2), "{edit}: {out}");
        assert!(
            out.contains(named),
            "{edit}: the error does not say {named:?}: {out}"
        );
    }
}

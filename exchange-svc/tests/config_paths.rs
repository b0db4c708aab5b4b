//! Relative paths in the configuration file are read from the file's own directory, as
//! an operator who writes `cert_file = "tls.crt"` beside `/etc/meshpass/exchange.toml`
//! means, whatever directory the service was started from (systemd starts it in `/`).
//! Values from `MESHPASS__*` variables name no file and stay relative to the working
//! directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::free_port;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A configuration in `dir/etc/c.toml` whose every file is named relative to `dir/etc`:
/// the issuer's JWKS, its Kubernetes CA and token, the TLS listener's certificate, key
/// and client CA, Vault's CA and token file, and the SQLite database.
fn relative_config(dir: &Path, plain: u16, tls_port: u16) -> PathBuf {
    let etc = dir.join("etc");
    let issuer = TestIssuer::new(ISSUER, "k");
    write(&etc.join("keys/jwks.json"), &issuer.jwks());
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    write(&etc.join("tls/tls.crt"), &cert);
    write(&etc.join("tls/tls.key"), &key);
    write(&etc.join("tls/ca.crt"), &pki.ca.pem());
    write(&etc.join("vault/ca.pem"), &pki.ca.pem());
    write(&etc.join("vault/token"), "unused-token\n");
    let toml = config_toml_vault(
        &issuer,
        Path::new("state/m.db"),
        "address = \"http://127.0.0.1:9\"\nca_cert = \"vault/ca.pem\"\nauth = { method = \"token_file\", path = \"vault/token\" }",
        "",
    )
    .replace(
        &format!("jwks = '{}'", issuer.jwks()),
        "jwks_file = \"keys/jwks.json\"",
    )
    .replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{plain}\"\ndrain_delay_secs = 0\n[server.tls]\ncert_file = \"tls/tls.crt\"\nkey_file = \"./tls/tls.key\"\nclient_ca_file = \"tls/ca.crt\"\nlisten = \"127.0.0.1:{tls_port}\"\n\n[callers]"
        ),
    );
    std::fs::create_dir_all(etc.join("state")).unwrap();
    let path = etc.join("c.toml");
    write(&path, &toml);
    path
}

/// `meshpass-exchange check-config path` run from `cwd` with `env`: exit code, stderr.
fn check_config_from(path: &Path, cwd: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = exchange_command()
        .arg("check-config")
        .arg(path)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn relative_paths_in_the_file_are_read_from_the_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = relative_config(dir.path(), 1, 2);
    // The test's working directory is the crate's: none of these files is there.
    let cfg = meshpass_exchange::config::Config::load(Some(&path))
        .unwrap_or_else(|e| panic!("refused a file whose paths name files beside it: {e}"));
    let etc = std::path::absolute(dir.path().join("etc")).unwrap();
    let tls = cfg.server.tls.as_ref().expect("the [server.tls] section");
    assert_eq!(tls.cert_file, etc.join("tls/tls.crt"));
    assert_eq!(tls.key_file, etc.join("./tls/tls.key"));
    assert_eq!(tls.client_ca_file, etc.join("tls/ca.crt"));
    assert_eq!(cfg.issuers[0].jwks_file, Some(etc.join("keys/jwks.json")));
    assert_eq!(cfg.vault.ca_cert, Some(etc.join("vault/ca.pem")));
    match &cfg.vault.auth {
        meshpass_exchange::vault::AuthConfig::TokenFile { path } => {
            assert_eq!(path, &etc.join("vault/token"))
        }
        other => panic!("auth is {other:?}"),
    }
    assert_eq!(
        cfg.store.url,
        format!("sqlite://{}", etc.join("state/m.db").display())
    );
}

#[test]
fn absolute_paths_and_values_from_the_environment_are_left_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = relative_config(dir.path(), 1, 2);
    let etc = std::path::absolute(dir.path().join("etc")).unwrap();
    // An absolute path in the file, and the same SQLite URL spelled with four slashes.
    let abs_ca = etc.join("tls/ca.crt");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "client_ca_file = \"tls/ca.crt\"",
            &format!("client_ca_file = \"{}\"", abs_ca.display()),
        )
        .replace(
            "url = \"sqlite://state/m.db\"",
            &format!("url = \"sqlite:///{}\"", etc.join("state/m.db").display()),
        );
    write(&path, &text);
    let cfg = meshpass_exchange::config::Config::load(Some(&path)).unwrap();
    assert_eq!(cfg.server.tls.as_ref().unwrap().client_ca_file, abs_ca);
    assert_eq!(
        cfg.store.url,
        format!("sqlite:///{}", etc.join("state/m.db").display())
    );

    // From the environment: relative to the working directory, where the process runs.
    let env = [("MESHPASS__VAULT__CA_CERT", "vault/ca.pem")];
    let (code, err) = check_config_from(&path, &etc, &env);
    assert_eq!(code, Some(0), "{env:?} run from {}: {err}", etc.display());
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, err) = check_config_from(&path, elsewhere.path(), &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("vault.ca_cert"), "{err}");
}

/// The real binary, started from another directory: `check-config` accepts the file,
/// and `serve` opens its SQLite database and its TLS listener from the files beside it.
#[test]
fn serve_started_from_another_directory_uses_the_files_beside_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls_port) = (free_port(), free_port());
    let path = relative_config(dir.path(), plain, tls_port);
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();

    let (code, err) = check_config_from(&path, &cwd, &[]);
    assert_eq!(code, Some(0), "check-config from another directory: {err}");

    let log = dir.path().join("svc.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = exchange_command()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(&cwd)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut svc = Serving(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        if let Some(status) = svc.0.try_wait().unwrap() {
            panic!(
                "serve exited {status:?}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the TLS listener never came up: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        dir.path().join("etc/state/m.db").exists(),
        "no database beside the configuration"
    );
    assert!(
        !cwd.join("state").exists(),
        "a database was created under the working directory"
    );
}

/// A ConfigMap mounts each key as a link into a `..data` directory that changes on every
/// update; an operator may also link the file in from elsewhere. Paths are read beside
/// the path given to `--config`, the link, not beside its target.
#[test]
fn a_configuration_reached_through_a_symlink_reads_paths_beside_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = relative_config(dir.path(), 1, 2);
    let etc = std::path::absolute(dir.path().join("etc")).unwrap();
    // The file itself lives elsewhere, with none of the files it names beside it.
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::rename(&path, shared.join("c.toml")).unwrap();
    std::os::unix::fs::symlink(shared.join("c.toml"), &path).unwrap();
    let cfg = meshpass_exchange::config::Config::load(Some(&path))
        .unwrap_or_else(|e| panic!("paths were not read beside the link: {e}"));
    assert_eq!(cfg.issuers[0].jwks_file, Some(etc.join("keys/jwks.json")));
}

/// An upgrade must not start on a new, empty database: a relative SQLite path was read
/// from the working directory before, and now names a file beside the configuration.
/// Where that file does not exist yet while the working directory holds the database,
/// `check-config` and `serve` refuse, naming both places.
#[test]
fn a_database_left_in_the_working_directory_by_the_old_reading_is_not_replaced_by_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = relative_config(dir.path(), free_port(), free_port());
    let cwd = dir.path().join("var");
    // The database as the old reading made it: under the working directory.
    write(&cwd.join("state/m.db"), "");
    for cmd in ["check-config", "serve"] {
        let mut c = exchange_command();
        c.arg(cmd);
        if cmd == "serve" {
            c.arg("--config");
        }
        let out = c.arg(&path).current_dir(&cwd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("store.url"), "{cmd}: {err}");
        assert!(err.contains("etc/state/m.db"), "{cmd}: {err}");
        assert!(err.contains("var/state/m.db"), "{cmd}: {err}");
    }
    assert!(
        !dir.path().join("etc/state/m.db").exists(),
        "an empty database was created beside the configuration"
    );
    // Once it is moved beside the file (or the path is written absolute), it starts.
    std::fs::rename(cwd.join("state/m.db"), dir.path().join("etc/state/m.db")).unwrap();
    let (code, err) = check_config_from(&path, &cwd, &[]);
    assert_eq!(code, Some(0), "{err}");
}

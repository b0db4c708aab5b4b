//! `examples/local.toml` is valid and `meshpass-exchange serve -c` runs it as is (an
//! OpenBao dev server stands in for 127.0.0.1:8200 through VAULT_ADDR; ports and the
//! database file are moved by the documented environment overrides only because
//! other tests may hold 8080/8081, and the file's relative database path would put the
//! database beside it, in the source tree).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshpass_exchange::config::Config;
use meshpass_testkit::{free_port, OpenBao};

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local.toml")
}

#[test]
fn the_local_example_configuration_is_valid() {
    let cfg = Config::load(Some(&example())).unwrap();
    assert_eq!(cfg.token.issuer, "http://127.0.0.1:8080");
    assert!(cfg.store.url.starts_with("sqlite://"));
    assert_eq!(cfg.management.listen.to_string(), "127.0.0.1:8081");
    assert!(cfg.management.disabled_reason().is_none());
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_runs_the_local_example_with_its_management_api() {
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("meshpass-participant", "ecdsa-p256");
    let dir = tempfile::tempdir().unwrap();
    let (port, mgmt_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshpass-exchange"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MESHPASS") || k.starts_with("VAULT_") || k.starts_with("BAO_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .current_dir(dir.path())
        .args(["serve", "-c"])
        .arg(example())
        .env("VAULT_ADDR", bao.addr())
        .env("VAULT_TOKEN", bao.root_token())
        .env("MESHPASS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        // From the environment, a relative path is read from the working directory.
        .env("MESHPASS__STORE__URL", "sqlite://meshpass-local.db")
        .env(
            "MESHPASS__MANAGEMENT__LISTEN",
            format!("127.0.0.1:{mgmt_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Child(child);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the local example never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .get(format!("http://127.0.0.1:{mgmt_port}/api/v1/mappings"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the management API runs and is closed"
    );
    let doc = http
        .get(format!("http://127.0.0.1:{mgmt_port}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status().as_u16(), 200);
    assert!(dir.path().join("meshpass-local.db").exists());
}

//! HTTPS to OpenBao: `ca_cert` and the `VAULT_*` environment. Own test binary, because
//! it sets process environment variables.
// Test code: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use meshpass_exchange::signer::{SignError, Signer};
use meshpass_exchange::vault::{TransitSigner, VaultConfig};
use meshpass_testkit::OpenBao;
use vault_common::*;

/// Both tests set process-wide variables (`VAULT_*`, `SSL_CERT_FILE`): one at a time.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTPS OpenBao with transit key `k`, and its CA file; the environment cleared.
fn tls_bao() -> (OpenBao, std::path::PathBuf) {
    // This binary's tests set the variables, one at a time (ENV): remove them for real.
    meshpass_testkit::remove_vault_env();
    let bao = OpenBao::start_tls();
    bao.enable_transit();
    bao.create_transit_key("k", "ecdsa-p256");
    let ca = bao.ca_cert_path().unwrap();
    (bao, ca)
}

#[tokio::test]
async fn https_openbao_is_trusted_through_ca_cert_or_vault_cacert_and_refused_without_it() {
    let _env = ENV.lock().await;
    let (bao, ca) = tls_bao();

    let with_ca = VaultConfig {
        ca_cert: Some(ca.clone()),
        ..config(&bao, "k")
    };
    let signer = TransitSigner::start(&with_ca).await.unwrap();
    sign_and_verify(&signer, "{}").await;

    // Without the CA the handshake fails before any token is sent: not ready.
    let signer = TransitSigner::start(&config(&bao, "k")).await.unwrap();
    assert!(!signer.is_ready());
    assert!(matches!(signer.current_key(), Err(SignError::NotReady)));
    drop(signer);

    // Everything from the environment, as with the Vault CLI.
    std::env::set_var("VAULT_ADDR", bao.addr());
    std::env::set_var("VAULT_CACERT", &ca);
    std::env::set_var("VAULT_TOKEN", bao.root_token());
    let from_env = VaultConfig {
        key_name: "k".into(),
        publish_lead: std::time::Duration::ZERO,
        ..VaultConfig::default()
    };
    let r = TransitSigner::start(&from_env).await;
    meshpass_testkit::remove_vault_env();
    sign_and_verify(&r.unwrap(), "{}").await;
}

/// A CA that signed nothing the tests talk to.
fn unrelated_ca_pem(dir: &std::path::Path) -> std::path::PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "unrelated test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("unrelated-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn without_ca_cert_the_system_roots_are_trusted_and_ca_cert_replaces_them() {
    let _env = ENV.lock().await;
    let (bao, ca) = tls_bao();
    let dir = tempfile::tempdir().unwrap();
    let unrelated = unrelated_ca_pem(dir.path());

    // The system trust store (SSL_CERT_FILE, as the image sets it) holds OpenBao's CA:
    // with no ca_cert, the client trusts it, as the Vault CLI does.
    std::env::set_var("SSL_CERT_FILE", &ca);
    let system = TransitSigner::start(&config(&bao, "k")).await;
    // ca_cert names another CA: it replaces the system roots instead of adding to them,
    // so OpenBao's certificate is no longer trusted.
    let replaced = TransitSigner::start(&VaultConfig {
        ca_cert: Some(unrelated),
        ..config(&bao, "k")
    })
    .await;
    std::env::remove_var("SSL_CERT_FILE");
    sign_and_verify(&system.unwrap(), "{}").await;
    let replaced = replaced.unwrap();
    assert!(!replaced.is_ready());
    assert!(matches!(replaced.current_key(), Err(SignError::NotReady)));
}

//! HTTPS to OpenBao: `ca_cert` and the `VAULT_*` environment. Own test binary, because
//! it sets process environment variables.
// Test code: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use meshpass_exchange::signer::{SignError, Signer};
use meshpass_exchange::vault::{TransitSigner, VaultConfig};
use meshpass_testkit::OpenBao;
use vault_common::*;

#[tokio::test]
async fn https_openbao_is_trusted_through_ca_cert_or_vault_cacert_and_refused_without_it() {
    clear_vault_env();
    let bao = OpenBao::start_tls();
    bao.enable_transit();
    bao.create_transit_key("k", "ecdsa-p256");
    let ca = bao.ca_cert_path().unwrap();

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
    clear_vault_env();
    sign_and_verify(&r.unwrap(), "{}").await;
}

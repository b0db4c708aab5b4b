//! `serve`'s listeners at start-up, with the real binary: one that cannot be bound ends
//! the process with an error (exit 1), never a replica waiting for a SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::free_port;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// README "Configuration": bad configuration refuses to start; a listener that cannot
/// be bound ended `serve` with an error (exit 1) before the listeners were put under
/// one stop. `server.tls.listen` on a port another process holds: the `?` on its bind
/// leaves the serving future early, the stop is never sent, and `serve` waits for a
/// SIGTERM for ever (its token port bound but never served, the management API up).
#[test]
fn serve_exits_with_an_error_when_its_tls_listener_address_is_already_taken() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &key);
    let ca_file = write(dir.path(), "ca.crt", &pki.ca.pem());
    // Another process's listener on the TLS port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = taken.local_addr().unwrap().port();
    let plain = free_port();

    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{plain}\"\ndrain_delay_secs = 0\n[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\nlisten = \"127.0.0.1:{tls_port}\"\n\n[callers]"
        ),
    );
    let cfg_path = write(dir.path(), "c.toml", &toml);
    let log_path = dir.path().join("svc.log");
    let mut child = Serving::start(&cfg_path, &log_path);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // What the service said of its listeners (the rest is Vault, unreachable here).
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("listen") || l.contains("ERROR") || l.contains("stopped"))
        .collect();
    let status = status.unwrap_or_else(|| {
        panic!(
            "serve still runs 30 s after its TLS listener (127.0.0.1:{tls_port}) could not \
             be bound; its log of its listeners: {tail:#?}"
        )
    });
    drop(taken);
    assert!(!status.success(), "exited {status:?}: {log}");
    assert!(
        log.contains("in use") || log.contains("AddrInUse"),
        "exited {status:?} without naming the bind error: {log}"
    );
}

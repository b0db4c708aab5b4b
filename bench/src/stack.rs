//! The components the measurements run against, started through testkit: OpenBao with a
//! transit key, the exchange service (the release binary), and the bare servers
//! (`meshpass-bench-servers`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use meshpass_testkit::{free_port, ChildGuard, ExchangeService, OpenBao};
use serde_json::{json, Value};

use crate::tokens::{AUDIENCE, ISSUER};

/// The transit key the service signs with.
pub const TRANSIT_KEY: &str = "bench";
/// The resource every benchmark exchange asks for.
pub const RESOURCE: &str = "payments";

/// OpenBao (dev server) with the transit engine and an ecdsa-p256 key.
pub fn start_openbao() -> OpenBao {
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key(TRANSIT_KEY, "ecdsa-p256");
    bao
}

/// How an exchange service instance is configured.
#[derive(Clone, Copy, Debug)]
pub struct ServiceKind {
    /// The minted-token cache (`cache.enabled`).
    pub token_cache: bool,
    /// `callers.insecure_unbound_callers`: the filter's exchange call carries no caller
    /// identity on this plain-HTTP loopback setup (no sidecar in front of the service).
    pub unbound_callers: bool,
}

/// The service's configuration (exchange-svc/README.md) for the benchmark.
pub fn service_config(
    port: u16,
    bao: &OpenBao,
    dir: &Path,
    jwks: &str,
    kind: ServiceKind,
) -> Value {
    json!({
        "server": {"listen": format!("127.0.0.1:{port}"), "shutdown_grace_secs": 1},
        "token": {"issuer": format!("http://127.0.0.1:{port}")},
        "store": {"url": format!("sqlite://{}", dir.join(format!("bench-{port}.db")).display())},
        "log": {"level": "warn"},
        "cache": {"enabled": kind.token_cache},
        "callers": {
            "xfcc_trusted_proxies": ["127.0.0.1"],
            "insecure_unbound_callers": kind.unbound_callers,
        },
        "management": {"enabled": false},
        "vault": {
            "address": bao.addr(),
            "auth": {"method": "token", "token": bao.root_token()},
            "key_name": TRANSIT_KEY,
            "publish_lead": "0s",
        },
        "issuers": [{
            "issuer": ISSUER, "audiences": [AUDIENCE], "trust_domains": ["cluster.local"],
            "jwks": jwks,
        }],
        "mappings": [{
            "name": "bench", "subject": "spiffe://cluster.local/*", "resource": RESOURCE,
            "participant": "acme", "scopes": ["read"], "ttl_secs": 3600,
        }],
    })
}

/// Starts an exchange service (binary: `MESHPASS_EXCHANGE_BIN`, which `make bench` points
/// at the release build) in its own directory under `dir`.
pub fn start_service(
    bao: &OpenBao,
    dir: &Path,
    jwks: &str,
    kind: ServiceKind,
) -> Result<ExchangeService> {
    let port = free_port();
    let sub = dir.join(format!("exchange-{port}"));
    std::fs::create_dir_all(&sub)?;
    let cfg = service_config(port, bao, &sub, jwks, kind);
    Ok(ExchangeService::start(&sub, port, &cfg))
}

/// The bare servers (`meshpass-bench-servers`, next to this binary).
pub struct Servers {
    /// The process.
    pub child: ChildGuard,
    /// `POST /token` of the bare axum handler.
    pub bare_port: u16,
    /// The ext_authz HTTP authorizer.
    pub authz_port: u16,
    /// The ext_authz gRPC authorizer (HTTP/2).
    pub authz_grpc_port: u16,
    /// The upstream echoing the `authorization` header it received.
    pub echo_port: u16,
}

/// The servers binary: `MESHPASS_BENCH_SERVERS_BIN` (`make bench` points it at the
/// release build), else beside the running `meshpass-bench`.
pub fn servers_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHPASS_BENCH_SERVERS_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .context("no parent directory of the executable")?;
    Ok(dir.join("meshpass-bench-servers"))
}

/// Starts the bare servers; returns once both ports are bound by them.
pub fn start_servers() -> Result<Servers> {
    let bin = servers_bin()?;
    anyhow::ensure!(
        bin.is_file(),
        "{} not found (cargo build -p meshpass-bench-servers builds it)",
        bin.display()
    );
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut cmd = Command::new(&bin);
    for (flag, port) in ["--bare", "--authz", "--authz-grpc", "--echo"]
        .into_iter()
        .zip(ports)
    {
        cmd.args([flag, &format!("127.0.0.1:{port}")]);
    }
    let mut child = ChildGuard::spawn("meshpass-bench-servers", cmd);
    let pid = child.pid();
    child.wait_ready("listening", Duration::from_secs(30), || {
        ports
            .iter()
            .all(|p| meshpass_testkit::pid_listens_on(pid, *p))
    });
    Ok(Servers {
        child,
        bare_port: ports[0],
        authz_port: ports[1],
        authz_grpc_port: ports[2],
        echo_port: ports[3],
    })
}

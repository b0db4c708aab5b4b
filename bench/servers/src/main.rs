//! The bare servers `meshpass-bench` measures against, in their own process (so their CPU
//! per request is theirs alone):
//!
//! - `--bare ADDR`: a bare axum `POST /token` answering a fixed 600-byte JSON body (the
//!   exchange service's warm path cannot beat it: the same runtime, framework and
//!   answer, without any exchange logic);
//! - `--authz ADDR`: the `ext_authz` HTTP authorizer that does nothing but allow and add
//!   `authorization: Bearer participant` (any method, any path);
//! - `--authz-grpc ADDR`: the same over gRPC (`envoy.service.auth.v3.Authorization/Check`,
//!   HTTP/2), `grpc_authz.rs`;
//! - `--echo ADDR`: an upstream answering the `authorization` header it received as its
//!   body (the benchmark checks through it that the authorizers' header reaches upstream).
//!
//! Both run on one multi-threaded tokio runtime like the exchange service's, until the
//! process is stopped (meshpass-bench runs it under testkit's `ChildGuard`).

mod grpc_authz;

use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;

// The exchange service's allocator: the bare handler is the same program minus the
// exchange logic.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fixed answer of the bare `/token` (as large as a real exchange answer).
fn token_body() -> String {
    serde_json::json!({
        "access_token": "x".repeat(480),
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "read",
    })
    .to_string()
}

async fn serve(addr: SocketAddr, app: Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("server on {addr} stopped: {e}");
        }
    });
    Ok(())
}

/// The addresses to serve on (each optional).
#[derive(Default)]
struct Addrs {
    bare: Option<SocketAddr>,
    authz: Option<SocketAddr>,
    authz_grpc: Option<SocketAddr>,
    echo: Option<SocketAddr>,
}

fn parse_args() -> Result<Addrs> {
    let mut args = std::env::args().skip(1);
    let mut out = Addrs::default();
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| anyhow!("{a} needs an address"))?;
        let addr: SocketAddr = value.parse().with_context(|| format!("{a} {value}"))?;
        match a.as_str() {
            "--bare" => out.bare = Some(addr),
            "--authz" => out.authz = Some(addr),
            "--authz-grpc" => out.authz_grpc = Some(addr),
            "--echo" => out.echo = Some(addr),
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let Addrs {
        bare,
        authz,
        authz_grpc,
        echo,
    } = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Some(addr) = bare {
            let body: &'static str = Box::leak(token_body().into_boxed_str());
            let app = Router::new().route(
                "/token",
                axum::routing::post(move |_form: axum::body::Bytes| async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        body,
                    )
                }),
            );
            serve(addr, app).await?;
        }
        if let Some(addr) = authz {
            let app = Router::new().fallback(|| async {
                [(header::AUTHORIZATION, "Bearer participant")].into_response()
            });
            serve(addr, app).await?;
        }
        if let Some(addr) = authz_grpc {
            grpc_authz::serve(addr).await?;
        }
        if let Some(addr) = echo {
            let app = Router::new().fallback(|headers: header::HeaderMap| async move {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            });
            serve(addr, app).await?;
        }
        std::future::pending::<()>().await;
        Ok(())
    })
}

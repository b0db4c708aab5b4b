//! Serving a router on a listener: axum's accept loop, with what `axum::serve` does
//! not let us set: a deadline on reading a request head.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::http::Request;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::caller::ConnInfo;

/// Longest wait for a whole HTTP/1 request head: a client trickling header lines would
/// otherwise hold its connection, a task and the head's buffer for as long as it liked
/// (hyper's own default needs a timer, which `axum::serve` does not give it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl From<SocketAddr> for ConnInfo {
    fn from(peer: SocketAddr) -> Self {
        ConnInfo {
            peer,
            tls_peer: None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and
/// resolves once the open connections have finished their requests (the caller bounds
/// that wait). Each request carries its connection's [`ConnInfo`] as `ConnectInfo`.
pub async fn serve<L>(mut listener: L, router: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    L::Addr: Into<ConnInfo>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let info: ConnInfo = addr.into();
        let svc = router
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

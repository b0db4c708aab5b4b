//! Serving a router on a listener: axum's accept loop, with what `axum::serve` does
//! not let us set: a deadline on reading a request head.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Longest wait for a whole HTTP/1 request head, and for a connection's first request
/// in either protocol: a client trickling header lines, sending nothing, or stopping
/// inside the HTTP/2 preface or its first HEADERS would otherwise hold its connection,
/// a task and a buffer for as long as it liked (hyper's HTTP/1 deadline needs a timer,
/// which `axum::serve` does not give it, and covers neither the protocol sniffing nor
/// HTTP/2).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 keep-alive: a peer that stops answering pings is cut off.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

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
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let info: ConnInfo = addr.into();
        // Set when the connection's first request head is complete.
        let started = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&started);
        let svc = router
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = &mut conn => Some(r),
                () = tokio::time::sleep(HEADER_READ_TIMEOUT) => None,
            };
            let r = match ended {
                Some(r) => r,
                // No whole request head yet: dropped (closed).
                None if !started.load(Ordering::Relaxed) => {
                    tracing::debug!("connection closed: no request head within the deadline");
                    return;
                }
                None => conn.await,
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

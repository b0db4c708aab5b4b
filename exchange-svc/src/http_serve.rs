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
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::caller::ConnInfo;

/// Longest wait for a whole HTTP/1 request head, and for a connection's first request
/// in either protocol: a client trickling header lines, sending nothing, or stopping
/// inside the HTTP/2 preface or its first HEADERS would otherwise hold its connection,
/// a task and a buffer for as long as it liked (hyper's HTTP/1 deadline needs a timer,
/// which `axum::serve` does not give it, and covers neither the protocol sniffing nor
/// HTTP/2).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection whose identity lapsed is given to close after it was asked
/// to (its requests in flight finish; new ones already name no caller).
const LAPSED_CLOSE_GRACE: Duration = Duration::from_secs(30);

/// HTTP/2 keep-alive: a peer that stops answering pings is cut off.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

impl From<SocketAddr> for ConnInfo {
    fn from(peer: SocketAddr) -> Self {
        ConnInfo {
            peer,
            tls_peer: None,
            identity_until: None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and
/// resolves once the open connections have finished their requests (the caller bounds
/// that wait). Each request carries its connection's [`ConnInfo`] as `ConnectInfo`; a
/// connection whose identity lapses ([`ConnInfo::identity_until`]) is closed gracefully
/// then (HTTP/2 GOAWAY; in-flight requests finish, the client reconnects).
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
    // `true` asks every connection to finish; `closed()` resolves once all have ended
    // (each task holds a receiver).
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let info: ConnInfo = addr.into();
        let lapses = info.identity_until;
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
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let head = tokio::time::sleep(HEADER_READ_TIMEOUT);
            tokio::pin!(head);
            let lapse = async move {
                match lapses {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(lapse);
            // After the identity lapsed and the close was asked: a client that ignores
            // it (no HTTP/2 PING acknowledgement, so no GOAWAY) is cut off.
            let cut = tokio::time::sleep(Duration::MAX);
            tokio::pin!(cut);
            let (mut head_due, mut asked, mut cutting) = (true, false, false);
            let r = loop {
                tokio::select! {
                    r = &mut conn => break r,
                    () = &mut head, if head_due => {
                        head_due = false;
                        if !started.load(Ordering::Relaxed) {
                            // No whole request head yet: dropped (closed).
                            tracing::debug!("connection closed: no request head within the deadline");
                            return;
                        }
                    }
                    () = &mut lapse, if !asked => {
                        asked = true;
                        tracing::debug!("connection closed: its client identity lapsed");
                        conn.as_mut().graceful_shutdown();
                        cutting = true;
                        cut.as_mut().reset(tokio::time::Instant::now() + LAPSED_CLOSE_GRACE);
                    }
                    () = &mut cut, if cutting => {
                        tracing::debug!("connection cut: its client kept it open past its identity's lapse");
                        return;
                    }
                    _ = stopping.wait_for(|s| *s), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            drop(stopping);
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
}

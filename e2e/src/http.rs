//! In-process HTTP servers on loopback (the JWKS endpoint of the JWT-SVID issuer, the echo
//! app) that can be stopped and started again on the same port.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An axum server bound to `127.0.0.1:port`.
pub struct HttpServer {
    name: String,
    port: u16,
    router: Router,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl HttpServer {
    /// Serves `router` on a port reserved by `meshpass_testkit::free_port`, so that
    /// after a stop nobody else can take it before [`HttpServer::start_again`].
    pub async fn start(name: &str, router: Router) -> Result<Self> {
        let port = meshpass_testkit::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("{name}: cannot bind 127.0.0.1:{port}"))?;
        let mut s = HttpServer {
            name: name.to_string(),
            port,
            router,
            running: None,
        };
        s.serve(listener);
        Ok(s)
    }

    /// The port it listens on (kept across stop/start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let app = self.router.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.running = Some((tx, task));
    }

    /// Stops listening and closes its connections (idle keep-alive ones included), so
    /// clients see the endpoint down. Idempotent.
    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            // Graceful shutdown finishes in-flight requests; do not wait forever.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Serves again on the same port (retries while the old socket is still closing).
    pub async fn start_again(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let mut last_err = None;
        for _ in 0..50 {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(anyhow::anyhow!(
            "{}: cannot bind 127.0.0.1:{} again: {:?}",
            self.name,
            self.port,
            last_err
        ))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}

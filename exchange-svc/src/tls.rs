//! Optional TLS termination (`[server.tls]`): a listener that completes handshakes off
//! the accept loop and records the verified client certificate's SPIFFE ID (its one
//! `spiffe://` URI SAN) as the connection's caller. A client certificate is optional at
//! the TLS level (verifiers fetch the JWKS without one); `/token` requires a caller.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{IncomingStream, Listener};
use meshpass_core::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::caller::ConnInfo;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{field}: {reason}")]
    File {
        /// The configuration key, e.g. `server.tls.cert_file`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{0}")]
    Rustls(String),
}

/// The rustls server configuration: `cert_file` (chain) and `key_file` serve, client
/// certificates are verified against `client_ca_file` when presented; all re-read when
/// they change ([`crate::tls_reload`]).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let served = crate::tls_reload::ReloadingCert::load(cert_file, key_file, provider.clone())?;
    let verifier = Arc::new(crate::tls_reload::ReloadingClientCa::load(
        client_ca_file,
        provider.clone(),
    )?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(served));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener for `axum::serve`: accepts TCP on a background task, handshakes each
/// connection on its own task (a slow client never holds up the others) and yields the
/// established streams with their [`ConnInfo`].
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, ConnInfo)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let tls_peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| spiffe_id_of(c.as_ref()));
                    let _ = conn_tx.send((tls, ConnInfo { peer, tls_peer })).await;
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener {
            local,
            ready,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConnInfo {
            peer: self.local,
            tls_peer: None,
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// One DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The SPIFFE ID of an X.509 certificate (DER): its only URI SAN, which must parse as
/// a SPIFFE ID (X509-SVID rule: exactly one URI SAN). None otherwise.
pub fn spiffe_id_of(cert: &[u8]) -> Option<SpiffeId> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let (_, cert, _) = tlv(cert)?; // Certificate
    let (_, mut tbs, _) = tlv(cert)?; // TBSCertificate
    let mut extensions = None;
    while !tbs.is_empty() {
        let (tag, body, rest) = tlv(tbs)?;
        if tag == 0xa3 {
            extensions = Some(tlv(body)?.1); // [3] EXPLICIT SEQUENCE OF Extension
        }
        tbs = rest;
    }
    let mut exts = extensions?;
    let mut uris = Vec::new();
    while !exts.is_empty() {
        let (_, ext, rest) = tlv(exts)?;
        exts = rest;
        let (_, oid, mut fields) = tlv(ext)?;
        if oid != SAN_OID {
            continue;
        }
        let (mut tag, mut value, after) = tlv(fields)?;
        if tag == 0x01 {
            // critical BOOLEAN
            fields = after;
            (tag, value, _) = tlv(fields)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (_, mut names, _) = tlv(value)?; // GeneralNames SEQUENCE
        while !names.is_empty() {
            let (tag, name, rest) = tlv(names)?;
            if tag == 0x86 {
                uris.push(std::str::from_utf8(name).ok()?);
            }
            names = rest;
        }
    }
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn reads_the_one_spiffe_uri_san_of_a_certificate() {
        let der = cert(vec![
            rcgen::SanType::DnsName("web.shop.svc".try_into().unwrap()),
            uri("spiffe://cluster.local/ns/shop/sa/web"),
        ]);
        assert_eq!(
            spiffe_id_of(&der).unwrap().as_str(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
    }

    #[test]
    fn no_or_several_uri_sans_or_a_non_spiffe_uri_give_no_identity() {
        assert!(spiffe_id_of(&cert(vec![])).is_none());
        assert!(spiffe_id_of(&cert(vec![uri("https://example.com/x")])).is_none());
        assert!(spiffe_id_of(&cert(vec![
            uri("spiffe://cluster.local/a"),
            uri("spiffe://cluster.local/b")
        ]))
        .is_none());
        assert!(spiffe_id_of(b"\x30\x03\x02\x01").is_none());
    }
}

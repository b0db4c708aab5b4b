//! Optional TLS termination (`[server.tls]`): a listener that completes handshakes off
//! the accept loop and records the verified client certificate's SPIFFE ID (its one
//! `spiffe://` URI SAN) as the connection's caller. A client certificate is optional at
//! the TLS level (verifiers fetch the JWKS without one); `/token` requires a caller.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
        field: String,
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
    section_config("server.tls", cert_file, key_file, client_ca_file)
}

/// [`server_config`] for the TLS section `section` (`management.tls`): errors and
/// warnings name its fields.
pub fn section_config(
    section: &'static str,
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let served =
        crate::tls_reload::ReloadingCert::load(section, cert_file, key_file, provider.clone())?;
    let verifier = Arc::new(crate::tls_reload::ReloadingClientCa::load(
        section,
        client_ca_file,
        provider.clone(),
    )?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(served));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No resumption: a resumed session brings back the stored client chain without
    // asking the verifier again, so a certificate that expired, or whose CA was taken
    // out of client_ca_file, would stay a caller (for a ticket's 24 h, renewed on every
    // resumption). Every connection does a full handshake against the bundle as it is.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener for `axum::serve`: accepts TCP on a background task, handshakes each
/// connection on its own task (a slow client never holds up the others) and yields the
/// established streams with their [`ConnInfo`]: a connection naming a caller carries
/// the instant its identity lapses (`max_age` from now, or the client certificate's
/// notAfter if sooner), when the server closes it.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, ConnInfo)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`; connections naming a caller live at most
    /// `max_age`.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        max_age: Duration,
    ) -> std::io::Result<Self> {
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
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let tls_peer = leaf.and_then(|c| spiffe_id_of(c.as_ref()));
                    let identity_until = match (&tls_peer, leaf) {
                        (Some(_), Some(cert)) => Some(identity_until(cert.as_ref(), max_age)),
                        _ => None,
                    };
                    let info = ConnInfo {
                        peer,
                        tls_peer,
                        identity_until,
                    };
                    let _ = conn_tx.send((tls, info)).await;
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
            identity_until: None,
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// When a connection presenting `cert` stops naming its caller: after `max_age`, or at
/// the certificate's notAfter if sooner (already past: now; the handshake checked it,
/// but the clock moves).
fn identity_until(cert: &[u8], max_age: Duration) -> Instant {
    let now = Instant::now();
    let by_age = now + max_age;
    match not_after(cert) {
        Some(t) => {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            by_age.min(now + left)
        }
        None => by_age,
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

/// The `notAfter` of an X.509 certificate (DER), when its validity reads.
pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (_, cert, _) = tlv(cert)?; // Certificate
    let (_, tbs, _) = tlv(cert)?; // TBSCertificate
    let (mut tag, mut body, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = tlv(rest)?; // past the version: the serial number
    }
    // signature, issuer, then validity.
    for _ in 0..3 {
        (tag, body, rest) = tlv(rest)?;
    }
    let _ = (tag, rest);
    let (_, _, after) = tlv(body)?; // past notBefore
    let (tag, time, _) = tlv(after)?;
    let t = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, t) = match tag {
        // UTCTime: YY below 50 is 20YY (RFC 5280 4.1.2.5.1).
        0x17 => {
            let yy: u64 = t.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?), // GeneralizedTime
        _ => return None,
    };
    if t.len() != 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| t.get(i..i + 2).and_then(|d| d.parse::<u64>().ok());
    let (month, day, secs) = (n(0)?, n(2)?, n(4)? * 3600 + n(6)? * 60 + n(8)?);
    if !(1..=12).contains(&month) || year < 1970 {
        return None;
    }
    // Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(days * 86_400 + secs))
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

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        for (y, mo, d, h, mi, se) in [
            (2030, 5, 17, 12, 34, 56),
            (1999, 12, 31, 23, 59, 59),
            (2050, 1, 1, 0, 0, 1),
            (2024, 2, 29, 6, 0, 0),
        ] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.not_after =
                rcgen::date_time_ymd(y, mo, d) + Duration::from_secs(h * 3600 + mi * 60 + se);
            let want = params.not_after.unix_timestamp() as u64;
            let der = params.self_signed(&key).unwrap().der().to_vec();
            assert_eq!(
                not_after(&der),
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(want)),
                "{y}-{mo}-{d}"
            );
        }
        assert_eq!(not_after(b"\x30\x03\x02\x01\x00"), None);
    }

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

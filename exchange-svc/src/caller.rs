//! Who is calling: the connection facts the server records for every request (peer
//! address, the mTLS peer's SPIFFE ID) and how the caller of `/token` is identified from
//! them (DESIGN.md "Subject tokens" item 5).
//!
//! - The service terminates TLS itself (`[server.tls]`): the caller is the URI SAN of
//!   the client certificate, verified against `client_ca_file`.
//! - Its own sidecar terminates mTLS and sets `x-forwarded-client-cert`: the header is
//!   believed only on connections from `callers.xfcc_trusted_proxies`; from anyone else
//!   it is refused, never believed.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::http::HeaderMap;
use axum::serve::IncomingStream;
use meshpass_core::SpiffeId;
use tokio::net::TcpListener;

/// The header Envoy sets with `forward_client_cert_details`.
pub const XFCC: &str = "x-forwarded-client-cert";

/// What the server knows about the connection a request came over (a request
/// extension set by the listener, through axum's `ConnectInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The verified client certificate's SPIFFE ID, when the service terminates TLS and
    /// the client presented one with exactly one `spiffe://` URI SAN.
    pub tls_peer: Option<SpiffeId>,
    /// When the connection must stop carrying `tls_peer`: the client certificate's
    /// notAfter, or the TLS listener's maximum connection age (the CA bundle it was
    /// verified against may change meanwhile). The server closes it gracefully then.
    pub identity_until: Option<Instant>,
}

impl ConnInfo {
    /// `tls_peer` while the connection may carry it: none past `identity_until`. The
    /// server then closes the connection gracefully, but a client may keep it open
    /// (an HTTP/2 client that never acknowledges the shutdown PING gets no GOAWAY), and
    /// its requests must not name a caller whose certificate or CA has lapsed.
    pub fn current_tls_peer(&self) -> Option<SpiffeId> {
        match self.identity_until {
            Some(until) if Instant::now() >= until => None,
            _ => self.tls_peer.clone(),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TcpListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ConnInfo {
            peer: *stream.remote_addr(),
            tls_peer: None,
            identity_until: None,
        }
    }
}

/// How callers are identified (from `[callers]`).
#[derive(Debug, Clone, Default)]
pub struct CallerSettings {
    /// Peers whose `x-forwarded-client-cert` is believed.
    pub xfcc_trusted_proxies: Vec<IpAddr>,
    /// Exchanges without an identified caller are allowed (unsafe; warned at start).
    pub insecure_unbound_callers: bool,
}

/// Why the caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// An `x-forwarded-client-cert` header came from a peer that is not a trusted proxy.
    #[error("x-forwarded-client-cert is accepted only from the service's own proxy")]
    UntrustedXfcc,
    /// The trusted proxy's `x-forwarded-client-cert` is malformed or names no single
    /// SPIFFE ID.
    #[error("x-forwarded-client-cert does not name exactly one SPIFFE ID")]
    BadXfcc,
    /// The caller's SPIFFE ID is a trust domain's own (`spiffe://TD`, no path: the URI
    /// SAN of a CA certificate), which names no workload.
    #[error("the caller's SPIFFE ID names a trust domain, not a workload")]
    NotAWorkload,
}

/// Whether the connection comes from a trusted proxy (`xfcc_trusted_proxies`). A
/// dual-stack listener sees an IPv4 peer as `::ffff:a.b.c.d`: every address is compared
/// in its canonical form, whichever way the operator wrote it.
pub fn is_trusted_proxy(settings: &CallerSettings, conn: Option<&ConnInfo>) -> bool {
    conn.is_some_and(|c| {
        let ip = c.peer.ip().to_canonical();
        settings
            .xfcc_trusted_proxies
            .iter()
            .any(|p| p.to_canonical() == ip)
    })
}

/// The caller of this request: `Ok(None)` when the connection carries no identity.
pub fn identify(
    settings: &CallerSettings,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<Option<SpiffeId>, CallerError> {
    let id = identify_any(settings, conn, headers)?;
    // As core refuses such a subject: a whole-domain pattern (`spiffe://TD/*`) would
    // otherwise match it.
    match id {
        Some(id) if id.path().is_empty() => Err(CallerError::NotAWorkload),
        id => Ok(id),
    }
}

fn identify_any(
    settings: &CallerSettings,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<Option<SpiffeId>, CallerError> {
    let mut xfcc = headers.get_all(XFCC).iter();
    let first = xfcc.next();
    let trusted = is_trusted_proxy(settings, conn);
    if trusted {
        // The proxy sanitises the header; two of them means something else added one.
        let value = match (first, xfcc.next()) {
            // Nothing forwarded: the proxy itself is the caller (its certificate, if any).
            (None, _) => return Ok(conn.and_then(ConnInfo::current_tls_peer)),
            (Some(v), None) => v.to_str().map_err(|_| CallerError::BadXfcc)?,
            (Some(_), Some(_)) => return Err(CallerError::BadXfcc),
        };
        return xfcc_uri(value).map(Some);
    }
    if first.is_some() {
        return Err(CallerError::UntrustedXfcc);
    }
    Ok(conn.and_then(ConnInfo::current_tls_peer))
}

/// The SPIFFE ID in the `URI=` of an XFCC value of one element: the element the trusted
/// proxy added for the client it verified (core's parse, fuzzed there).
pub fn xfcc_uri(value: &str) -> Result<SpiffeId, CallerError> {
    meshpass_core::xfcc::uri(value).map_err(|_| CallerError::BadXfcc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;
    use meshpass_core::xfcc::split_unquoted;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn conn(ip: &str, tls: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: SocketAddr::new(ip.parse().unwrap(), 40000),
            tls_peer: tls.map(|t| SpiffeId::parse(t).unwrap()),
            identity_until: None,
        }
    }

    fn xfcc(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(XFCC, HeaderValue::from_str(v).unwrap());
        h
    }

    fn trusting(ip: &str) -> CallerSettings {
        CallerSettings {
            xfcc_trusted_proxies: vec![ip.parse().unwrap()],
            insecure_unbound_callers: false,
        }
    }

    /// The server closes a connection gracefully when its identity lapses, but an
    /// HTTP/2 client that never acknowledges the shutdown PING keeps it open (GOAWAY
    /// is sent only on that acknowledgement), and every new stream named the caller of
    /// a certificate past its notAfter or of a CA since taken out of the bundle.
    #[test]
    fn a_connection_past_its_identity_lapse_names_no_caller() {
        let mut c = conn("10.0.0.5", Some(WEB));
        c.identity_until = Some(Instant::now() + std::time::Duration::from_secs(60));
        let id = identify(&CallerSettings::default(), Some(&c), &HeaderMap::new()).unwrap();
        assert_eq!(id.unwrap().as_str(), WEB);
        c.identity_until = Some(Instant::now() - std::time::Duration::from_millis(1));
        assert_eq!(
            identify(&CallerSettings::default(), Some(&c), &HeaderMap::new()),
            Ok(None),
            "a lapsed connection still named its caller"
        );
        // Nor through a trusted proxy that forwards no XFCC (the proxy is the caller).
        let mut p = conn("10.0.0.9", Some(WEB));
        p.identity_until = c.identity_until;
        assert_eq!(
            identify(&trusting("10.0.0.9"), Some(&p), &HeaderMap::new()),
            Ok(None)
        );
    }

    #[test]
    fn the_tls_peer_is_the_caller_when_no_proxy_is_trusted() {
        let c = conn("10.0.0.5", Some(WEB));
        let id = identify(&CallerSettings::default(), Some(&c), &HeaderMap::new()).unwrap();
        assert_eq!(id.unwrap().as_str(), WEB);
        let plain = conn("10.0.0.5", None);
        assert_eq!(
            identify(&CallerSettings::default(), Some(&plain), &HeaderMap::new()),
            Ok(None)
        );
        assert_eq!(
            identify(&CallerSettings::default(), None, &HeaderMap::new()),
            Ok(None)
        );
    }

    #[test]
    fn xfcc_from_an_untrusted_peer_is_refused_never_believed() {
        let h = xfcc(&format!("Hash=ab;URI={WEB}"));
        let c = conn("10.0.0.9", Some("spiffe://cluster.local/ns/evil/sa/x"));
        assert_eq!(
            identify(&trusting("127.0.0.1"), Some(&c), &h),
            Err(CallerError::UntrustedXfcc)
        );
        assert_eq!(
            identify(&CallerSettings::default(), None, &h),
            Err(CallerError::UntrustedXfcc)
        );
    }

    #[test]
    fn xfcc_from_the_trusted_proxy_names_the_caller_by_its_one_element() {
        let h = xfcc(&format!(
            "By=spiffe://cluster.local/ns/mesh/sa/exchange;Hash=\"a,b;c\";Subject=\"CN=x,O=y\";URI={WEB}"
        ));
        let c = conn("127.0.0.1", None);
        let id = identify(&trusting("127.0.0.1"), Some(&c), &h).unwrap();
        assert_eq!(id.unwrap().as_str(), WEB);
        // Two elements (one forwarded from the client, or a SAN holding a comma): none.
        let two = xfcc(&format!(
            "URI=spiffe://cluster.local/ns/a/sa/first,URI={WEB}"
        ));
        assert_eq!(
            identify(&trusting("127.0.0.1"), Some(&c), &two),
            Err(CallerError::BadXfcc)
        );
        // The trusted proxy without a header and without a certificate: no caller.
        assert_eq!(
            identify(&trusting("127.0.0.1"), Some(&c), &HeaderMap::new()),
            Ok(None)
        );
    }

    #[test]
    fn a_trusted_ipv4_proxy_seen_on_a_dual_stack_listener_is_still_trusted() {
        let h = xfcc(&format!("Hash=ab;URI={WEB}"));
        let mapped = conn("::ffff:127.0.0.1", None);
        let id = identify(&trusting("127.0.0.1"), Some(&mapped), &h).unwrap();
        assert_eq!(id.unwrap().as_str(), WEB);
        // And another address, mapped or not, is still refused.
        let other = conn("::ffff:127.0.0.2", None);
        assert_eq!(
            identify(&trusting("127.0.0.1"), Some(&other), &h),
            Err(CallerError::UntrustedXfcc)
        );
    }

    #[test]
    fn splitting_ignores_separators_inside_quotes_and_escaped_quotes() {
        let parts: Vec<&str> = split_unquoted(r#"a="x,\",y",b,,c"#, b',').collect();
        assert_eq!(parts, [r#"a="x,\",y""#, "b", "", "c"]);
        assert_eq!(split_unquoted("", b',').collect::<Vec<_>>(), [""]);
        assert_eq!(split_unquoted("a,", b',').collect::<Vec<_>>(), ["a", ""]);
    }

    #[test]
    fn malformed_or_ambiguous_xfcc_is_refused() {
        let c = conn("127.0.0.1", None);
        for bad in [
            "Hash=ab".to_string(),
            format!("URI={WEB};URI=spiffe://cluster.local/ns/a/sa/b"),
            "URI=https://example.com/x".to_string(),
        ] {
            assert_eq!(
                identify(&trusting("127.0.0.1"), Some(&c), &xfcc(&bad)),
                Err(CallerError::BadXfcc),
                "{bad}"
            );
        }
        let mut two = xfcc(&format!("URI={WEB}"));
        two.append(XFCC, HeaderValue::from_str(&format!("URI={WEB}")).unwrap());
        assert_eq!(
            identify(&trusting("127.0.0.1"), Some(&c), &two),
            Err(CallerError::BadXfcc)
        );
    }
}

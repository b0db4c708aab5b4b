//! Management tokens are bound to the connection they arrive on (DESIGN.md "Mappings
//! and management": SPIFFE-bound identities), so a management JWT copied out of one
//! workload cannot be spent from another.
//!
//! The connection's identity is found the way `/token` finds its caller
//! ([`crate::caller::identify`]): the mTLS peer, or the XFCC header of a trusted proxy
//! (the service's own sidecar). Then:
//! - an identity was found: the bearer token's SPIFFE ID must be that identity;
//! - none, on a loopback connection from a peer that is not a trusted proxy: a local
//!   operator on the host or in the pod (the default listener is 127.0.0.1) — accepted;
//! - none otherwise (including a trusted proxy that forwarded no identity): refused,
//!   unless `management.insecure_unbound_callers = true`.
//!
//! The decision is made once per request by a middleware and handed to the
//! authenticator in a header that only the server sets (any client value is removed
//! first); an authenticated route refuses a request that did not pass the middleware.

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meshpass_core::SpiffeId;

use super::error::MgmtError;
use crate::caller::{identify, CallerSettings, ConnInfo};

/// The internal header carrying the middleware's decision to the authenticator.
pub const CONNECTION_HEADER: &str = "x-meshpass-internal-connection";

/// Who the connection is, for the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionIdentity {
    /// The connection proved this SPIFFE ID: the token must name it.
    Bound(SpiffeId),
    /// A local (loopback) connection without an identity, from a peer that is not a
    /// proxy, or any unidentified caller under `insecure_unbound_callers`.
    Unbound,
}

/// Decides who the connection is, or why it may not use the API.
pub fn connection_identity(
    settings: &CallerSettings,
    insecure_unbound_callers: bool,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<ConnectionIdentity, MgmtError> {
    let found = identify(settings, conn, headers)
        .map_err(|e| MgmtError::Unauthenticated(format!("caller identity: {e}")))?;
    if let Some(id) = found {
        return Ok(ConnectionIdentity::Bound(id));
    }
    // Loopback in canonical form (a dual-stack listener sees 127.0.0.1 as
    // `::ffff:127.0.0.1`), and never the trusted proxy: judged by the rule `identify`
    // used, or a proxy forwarding no identity would pass as a local operator.
    let local_operator = conn.is_some_and(|c| c.peer.ip().to_canonical().is_loopback())
        && !crate::caller::is_trusted_proxy(settings, conn);
    if local_operator || insecure_unbound_callers {
        return Ok(ConnectionIdentity::Unbound);
    }
    Err(MgmtError::Unauthenticated(
        "the management API needs the caller's identity: mTLS, or the x-forwarded-client-cert \
         of the service's own proxy"
            .into(),
    ))
}

/// What the middleware needs.
#[derive(Debug, Clone)]
pub struct BindingSettings {
    /// How callers are identified (the service's `[callers]`).
    pub callers: CallerSettings,
    /// `management.insecure_unbound_callers`.
    pub insecure_unbound_callers: bool,
}

/// The middleware: strips any client value of [`CONNECTION_HEADER`], decides, and
/// passes the decision on (a refusal is answered by the authenticator: 401).
pub async fn bind_connection(
    axum::extract::State(settings): axum::extract::State<std::sync::Arc<BindingSettings>>,
    mut req: Request,
    next: Next,
) -> Response {
    req.headers_mut().remove(CONNECTION_HEADER);
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.clone());
    let decided = connection_identity(
        &settings.callers,
        settings.insecure_unbound_callers,
        conn.as_ref(),
        req.headers(),
    );
    // Public routes (the OpenAPI document) never look at it; authenticated ones refuse
    // a `refused` connection whatever the token.
    let value = match decided {
        Ok(ConnectionIdentity::Bound(id)) => HeaderValue::from_str(&format!("bound {id}")),
        Ok(ConnectionIdentity::Unbound) => Ok(HeaderValue::from_static("unbound")),
        Err(e) => HeaderValue::from_str(&format!("refused {e}")),
    };
    match value {
        Ok(v) => {
            req.headers_mut().insert(CONNECTION_HEADER, v);
            next.run(req).await
        }
        Err(_) => {
            MgmtError::Internal("connection identity is not a header value".into()).into_response()
        }
    }
}

/// The authenticator's side: checks a validated token's SPIFFE ID against the
/// middleware's decision (absent: the request did not pass it, refused).
pub fn check_token_binding(headers: &HeaderMap, token_id: &SpiffeId) -> Result<(), MgmtError> {
    let decided = headers
        .get(CONNECTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| MgmtError::Unauthenticated("caller identity was not established".into()))?;
    if let Some(why) = decided.strip_prefix("refused ") {
        return Err(MgmtError::Unauthenticated(why.to_string()));
    }
    match decided.strip_prefix("bound ") {
        None if decided == "unbound" => Ok(()),
        Some(id) if id == token_id.as_str() => Ok(()),
        Some(id) => Err(MgmtError::Unauthenticated(format!(
            "the bearer token belongs to {token_id}, but the connection is {id}"
        ))),
        None => Err(MgmtError::Unauthenticated(
            "caller identity was not established".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo {
            peer: format!("{ip}:40000").parse().unwrap(),
            tls_peer: None,
            identity_until: None,
        }
    }

    fn settings(proxies: &[&str]) -> CallerSettings {
        CallerSettings {
            xfcc_trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
            insecure_unbound_callers: false,
        }
    }

    fn xfcc(uri: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-client-cert",
            format!("URI={uri}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn the_trusted_proxys_xfcc_binds_the_connection() {
        let got = connection_identity(
            &settings(&["127.0.0.6"]),
            false,
            Some(&conn("127.0.0.6")),
            &xfcc(OPS),
        );
        assert_eq!(
            got.unwrap(),
            ConnectionIdentity::Bound(SpiffeId::parse(OPS).unwrap())
        );
    }

    #[test]
    fn a_trusted_proxy_that_forwards_no_identity_is_refused() {
        let got = connection_identity(
            &settings(&["127.0.0.6"]),
            false,
            Some(&conn("127.0.0.6")),
            &HeaderMap::new(),
        );
        assert!(matches!(got, Err(MgmtError::Unauthenticated(_))));
    }

    #[test]
    fn a_local_operator_on_loopback_is_unbound_but_accepted() {
        let got = connection_identity(
            &settings(&["127.0.0.6"]),
            false,
            Some(&conn("127.0.0.1")),
            &HeaderMap::new(),
        );
        assert_eq!(got.unwrap(), ConnectionIdentity::Unbound);
    }

    #[test]
    fn an_unidentified_remote_caller_is_refused_unless_insecure() {
        let s = settings(&[]);
        let remote = conn("10.1.2.3");
        assert!(connection_identity(&s, false, Some(&remote), &HeaderMap::new()).is_err());
        assert_eq!(
            connection_identity(&s, true, Some(&remote), &HeaderMap::new()).unwrap(),
            ConnectionIdentity::Unbound
        );
    }

    #[test]
    fn an_xfcc_from_an_untrusted_peer_is_refused_not_believed() {
        let got = connection_identity(&settings(&[]), true, Some(&conn("127.0.0.1")), &xfcc(OPS));
        assert!(matches!(got, Err(MgmtError::Unauthenticated(_))));
    }

    #[test]
    fn a_token_of_another_identity_than_the_connection_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION_HEADER,
            "bound spiffe://cluster.local/ns/shop/sa/web"
                .parse()
                .unwrap(),
        );
        let ops = SpiffeId::parse(OPS).unwrap();
        assert!(check_token_binding(&h, &ops).is_err());
        h.insert(CONNECTION_HEADER, format!("bound {OPS}").parse().unwrap());
        assert!(check_token_binding(&h, &ops).is_ok());
    }

    #[test]
    fn a_refused_connection_is_refused_whatever_the_token() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION_HEADER, "refused no identity".parse().unwrap());
        let ops = SpiffeId::parse(OPS).unwrap();
        let e = check_token_binding(&h, &ops).unwrap_err();
        assert_eq!(e.to_string(), "no identity");
    }

    #[test]
    fn a_request_that_skipped_the_middleware_is_refused() {
        let ops = SpiffeId::parse(OPS).unwrap();
        assert!(check_token_binding(&HeaderMap::new(), &ops).is_err());
    }
}

//! Step 2 of an exchange: identify the caller from the connection ([`crate::caller`]),
//! and, once the subject and its mapping are known, bind them (DESIGN.md "Subject
//! tokens" item 5): CLIENT mode, the caller is the subject itself; SERVER mode, the
//! caller matches one of the mapping's `allowed_callers`.

use axum::http::HeaderMap;
use meshpass_core::{BindingMode, SpiffeId, SpiffeIdPattern};

use crate::caller::{identify, CallerSettings, ConnInfo};
use crate::error::ApiError;
use crate::store::Mapping;

/// The identified caller (None only with `insecure_unbound_callers`).
pub(crate) fn caller(
    settings: &CallerSettings,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<Option<SpiffeId>, ApiError> {
    match identify(settings, conn, headers).map_err(ApiError::Caller)? {
        Some(id) => Ok(Some(id)),
        None if settings.insecure_unbound_callers => Ok(None),
        None => Err(ApiError::CallerUnknown),
    }
}

/// Which mode binds `caller` to `subject` under `mapping`, or why none does.
pub(crate) fn bind(
    caller: Option<&SpiffeId>,
    subject: &SpiffeId,
    mapping: &Mapping,
) -> Result<BindingMode, ApiError> {
    let Some(caller) = caller else {
        // Only reachable with insecure_unbound_callers.
        return Ok(BindingMode::None);
    };
    if is_subject(caller, subject) {
        return Ok(BindingMode::Client);
    }
    let listed = mapping.allowed_callers.iter().any(|p| {
        SpiffeIdPattern::parse(p)
            .map(|p| p.matches(caller))
            .unwrap_or(false)
    });
    if listed {
        Ok(BindingMode::Server)
    } else {
        Err(refused(caller))
    }
}

/// Whether `caller` is `subject` itself (CLIENT mode).
pub(crate) fn is_subject(caller: &SpiffeId, subject: &SpiffeId) -> bool {
    BindingMode::Client
        .binding(None, Some(caller))
        .check(subject)
        .is_ok()
}

/// The one answer a caller gets for another subject's token it may not exchange,
/// whatever else stands in the way (an unknown resource, no mapping, a revocation).
pub(crate) fn refused(caller: &SpiffeId) -> ApiError {
    ApiError::CallerRefused(format!(
        "the caller {caller} may not exchange a token of another subject for this resource"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn mapping(callers: &[&str]) -> Mapping {
        Mapping {
            name: "m".into(),
            subject: "spiffe://cluster.local/ns/shop/*".into(),
            resource: "payments".into(),
            participant: "acme".into(),
            audiences: vec![],
            scopes: vec![],
            ttl_secs: 60,
            rate_limit: None,
            allowed_callers: callers.iter().map(|s| s.to_string()).collect(),
            allowed_actors: vec![],
        }
    }

    #[test]
    fn the_subject_itself_is_bound_in_client_mode() {
        assert_eq!(
            bind(Some(&id(WEB)), &id(WEB), &mapping(&[])).unwrap(),
            BindingMode::Client
        );
    }

    #[test]
    fn another_caller_must_be_listed_in_allowed_callers() {
        let gw = id("spiffe://cluster.local/ns/edge/sa/gateway");
        assert!(matches!(
            bind(Some(&gw), &id(WEB), &mapping(&[])),
            Err(ApiError::CallerRefused(_))
        ));
        assert_eq!(
            bind(
                Some(&gw),
                &id(WEB),
                &mapping(&["spiffe://cluster.local/ns/edge/*"])
            )
            .unwrap(),
            BindingMode::Server
        );
    }

    #[test]
    fn no_caller_is_refused_unless_unbound_callers_are_allowed() {
        let strict = CallerSettings::default();
        assert!(matches!(
            caller(&strict, None, &HeaderMap::new()),
            Err(ApiError::CallerUnknown)
        ));
        let lax = CallerSettings {
            insecure_unbound_callers: true,
            ..CallerSettings::default()
        };
        assert_eq!(caller(&lax, None, &HeaderMap::new()).unwrap(), None);
        assert_eq!(
            bind(None, &id(WEB), &mapping(&[])).unwrap(),
            BindingMode::None
        );
    }
}

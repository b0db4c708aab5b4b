//! Step 4 of an exchange: the resource's mapping for the subject, then (once the
//! caller is bound to it) what it grants: audiences, scopes.

use std::collections::BTreeSet;

use meshpass_core::oauth::TokenExchangeRequest;
use meshpass_core::SpiffeId;

use crate::error::ApiError;
use crate::store::{Mapping, ResourcePolicy};

/// What policy grants one exchange.
#[derive(Debug)]
pub(crate) struct Grant<'p> {
    /// The mapping that grants it.
    pub mapping: &'p Mapping,
    /// `aud` of the minted token (requested ones, deduplicated; else the default).
    pub audiences: Vec<String>,
    /// Granted scopes (requested ones, sorted and deduplicated; else all allowed).
    pub scopes: Vec<String>,
}

/// The mapping of `policy` for `subject`. The caller is bound to it next, before
/// [`grant`] judges what is asked: a caller that may not ask for this subject learns
/// nothing of the mapping's audiences and scopes from the answers.
pub(crate) fn mapping<'p>(
    policy: &'p ResourcePolicy,
    subject: &SpiffeId,
) -> Result<&'p Mapping, ApiError> {
    if policy.mappings.is_empty() {
        return Err(ApiError::InvalidTarget(
            "the requested resource is not known".into(),
        ));
    }
    policy.mapping_for(subject).ok_or_else(|| {
        ApiError::UnauthorizedClient(
            "the subject is not allowed to exchange for this resource".into(),
        )
    })
}

/// The audiences and scopes `req` may get under `mapping`.
pub(crate) fn grant<'p>(
    mapping: &'p Mapping,
    req: &TokenExchangeRequest,
) -> Result<Grant<'p>, ApiError> {
    Ok(Grant {
        mapping,
        audiences: audiences(mapping, &req.audience)?,
        scopes: scopes(mapping, &req.scope)?,
    })
}

/// The requested audiences (each allowed, first occurrence kept), or the mapping's
/// default audience when none is requested.
fn audiences(mapping: &Mapping, requested: &[String]) -> Result<Vec<String>, ApiError> {
    let allowed = mapping.allowed_audiences();
    if requested.is_empty() {
        let default = allowed
            .first()
            .copied()
            .unwrap_or(mapping.resource.as_str());
        return Ok(vec![default.to_string()]);
    }
    let mut out: Vec<String> = Vec::new();
    for a in requested {
        if !allowed.contains(&a.as_str()) {
            return Err(ApiError::InvalidTarget(
                "a requested audience is not allowed for this resource".into(),
            ));
        }
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// The most characters of a refused scope quoted back.
const MAX_QUOTED_SCOPE: usize = 64;

/// The requested scopes (sorted, deduplicated, each allowed), or every allowed scope
/// when none is requested.
fn scopes(mapping: &Mapping, requested: &[String]) -> Result<Vec<String>, ApiError> {
    if requested.is_empty() {
        return Ok(mapping.scopes.clone());
    }
    let requested: BTreeSet<&String> = requested.iter().collect();
    for s in &requested {
        if !mapping.scopes.contains(s) {
            // Quoted into the answer, a log line and an audit row: a prefix is enough.
            let shown: String = s.chars().take(MAX_QUOTED_SCOPE).collect();
            let more = if shown.len() < s.len() { "…" } else { "" };
            return Err(ApiError::InvalidScope(format!(
                "scope {shown:?}{more} is not allowed for this subject and resource"
            )));
        }
    }
    Ok(requested.into_iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mapping(name: &str, subject: &str) -> Mapping {
        Mapping {
            name: name.into(),
            subject: subject.into(),
            resource: "payments".into(),
            participant: "acme".into(),
            audiences: vec!["payments".into(), "https://payments.internal".into()],
            scopes: vec!["read".into(), "write".into()],
            ttl_secs: 60,
            rate_limit: None,
            allowed_callers: vec![],
            allowed_actors: vec![],
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn requested_scopes_are_sorted_and_deduplicated_and_must_be_allowed() {
        let m = mapping("m", "spiffe://td/*");
        let req = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scopes(&m, &req(&["write", "read", "write"])).unwrap(),
            ["read", "write"]
        );
        assert_eq!(scopes(&m, &[]).unwrap(), ["read", "write"]);
        assert!(matches!(
            scopes(&m, &req(&["admin"])),
            Err(ApiError::InvalidScope(_))
        ));
    }

    #[test]
    fn requested_audiences_must_be_allowed_and_default_to_the_first_allowed() {
        let m = mapping("m", "spiffe://td/*");
        let req = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(audiences(&m, &[]).unwrap(), ["payments"]);
        assert_eq!(
            audiences(
                &m,
                &req(&["https://payments.internal", "payments", "payments"])
            )
            .unwrap(),
            ["https://payments.internal", "payments"]
        );
        assert!(matches!(
            audiences(&m, &req(&["orders"])),
            Err(ApiError::InvalidTarget(_))
        ));
    }

    #[test]
    fn an_unknown_resource_is_invalid_target_and_an_unmapped_subject_unauthorized() {
        let req = TokenExchangeRequest::parse_form(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
              &subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
        )
        .unwrap();
        let empty = ResourcePolicy::default();
        assert!(matches!(
            super::mapping(&empty, &id("spiffe://td/x")),
            Err(ApiError::InvalidTarget(_))
        ));
        let policy = ResourcePolicy::new(vec![mapping("m", "spiffe://td/ns/*")], vec![]);
        assert!(matches!(
            super::mapping(&policy, &id("spiffe://td/other")),
            Err(ApiError::UnauthorizedClient(_))
        ));
        let m = super::mapping(&policy, &id("spiffe://td/ns/a")).unwrap();
        let g = grant(m, &req).unwrap();
        assert_eq!(g.mapping.name, "m");
    }
}

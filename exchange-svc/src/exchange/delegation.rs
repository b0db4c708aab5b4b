//! Delegation (RFC 8693 §4.4, §4.1): whether the actor may act for the subject, and
//! the `act` claim of the minted token.

use meshpass_core::{SpiffeId, SpiffeIdPattern, TrustDomain, VerifiedSubject};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::store::Mapping;

/// The actor may act for the subject: when the subject token carries `may_act`, the
/// actor must match every claim in it; otherwise the mapping's `allowed_actors` decide
/// (none listed: no delegation).
pub(crate) fn check_actor(
    subject: &VerifiedSubject,
    actor: &VerifiedSubject,
    mapping: &Mapping,
) -> Result<(), ApiError> {
    let refused = || {
        ApiError::UnauthorizedClient(format!(
            "the actor {} may not act for this subject",
            actor.spiffe_id
        ))
    };
    if let Some(may_act) = subject.claims.get("may_act") {
        let Value::Object(wanted) = may_act else {
            return Err(refused());
        };
        let matches = !wanted.is_empty()
            && wanted.iter().all(|(k, v)| match k.as_str() {
                // `sub` names the actor by its SPIFFE ID, or as its token does; a `sub`
                // is unique only within its issuer (RFC 7519 §4.1.2), so the latter only
                // for the subject token's own issuer unless `may_act` names `iss` too.
                "sub" => {
                    v.as_str() == Some(actor.spiffe_id.as_str())
                        || (actor.claims.get("sub") == Some(v)
                            && (wanted.contains_key("iss") || actor.issuer == subject.issuer))
                }
                "iss" => v.as_str() == Some(actor.issuer.as_str()),
                other => actor.claims.get(other) == Some(v),
            });
        return if matches { Ok(()) } else { Err(refused()) };
    }
    let listed = mapping.allowed_actors.iter().any(|p| {
        SpiffeIdPattern::parse(p)
            .map(|p| p.matches(&actor.spiffe_id))
            .unwrap_or(false)
    });
    if listed {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The most nested actors an `act` chain may hold (a minted token's too).
const MAX_ACT_DEPTH: usize = 16;

/// How deep a subject token's `act` chain may be: it is carried over as it is.
pub(crate) const SUBJECT_ACT_DEPTH: usize = MAX_ACT_DEPTH;
/// How deep an actor token's own chain may be: the minted token nests it under the
/// actor, one level more, and must stay within what the service accepts as input.
pub(crate) const ACTOR_ACT_DEPTH: usize = MAX_ACT_DEPTH - 1;

/// A token's own `act` claim, when it has one, must be what RFC 8693 §4.1 says it is:
/// a JSON object naming the actor's `sub` (a string), with the actors before it nested
/// in `act` the same way, at most `max_depth` deep. It is carried into the minted
/// token, so anything else is refused rather than copied.
pub(crate) fn check_act(
    token: &VerifiedSubject,
    which: &str,
    max_depth: usize,
) -> Result<(), ApiError> {
    let td = token.spiffe_id.trust_domain();
    let mut next = token.claims.get("act");
    for _ in 0..=max_depth {
        let Some(act) = next else {
            return Ok(());
        };
        let Some(sub) = act.as_object().and_then(|o| o.get("sub")) else {
            break;
        };
        // A level naming no workload could never be matched by a revocation (they name
        // SPIFFE IDs), here or in the filter: an unrevocable actor is refused.
        if sub.as_str().and_then(|s| workload(s, Some(&td))).is_none() {
            return Err(ApiError::InvalidRequest(format!(
                "{which}: every act.sub must be a SPIFFE ID or a Kubernetes service account (system:serviceaccount:NS:SA)"
            )));
        }
        next = act.get("act");
    }
    Err(ApiError::InvalidRequest(format!(
        "{which}: its act claim must be a JSON object with a string sub, nested at most {max_depth} deep (RFC 8693 §4.1)"
    )))
}

/// RFC 8693 §4.1 `act`: the current actor's subject, with the actor token's own `act`
/// chain (the actors before it) nested inside. Without an actor token, the subject
/// token's own `act` chain is carried over. A level naming a Kubernetes service account
/// (`system:serviceaccount:NS:SA`) is carried as its SPIFFE ID in the token's trust
/// domain, so revocations (and the filter, which reads `act.sub`) match it.
pub(crate) fn act_claim(
    subject: &VerifiedSubject,
    actor: Option<&VerifiedSubject>,
) -> Option<Value> {
    match actor {
        Some(a) => {
            let mut act = Map::new();
            act.insert("sub".into(), json!(a.spiffe_id.as_str()));
            if let Some(prior) = a.claims.get("act") {
                act.insert(
                    "act".into(),
                    as_workloads(prior, &a.spiffe_id.trust_domain()),
                );
            }
            Some(Value::Object(act))
        }
        None => subject
            .claims
            .get("act")
            .map(|act| as_workloads(act, &subject.spiffe_id.trust_domain())),
    }
}

/// `act` rebuilt from its identities alone: each level `{"sub": <its workload's SPIFFE
/// ID>, "act": <the level before>}` (a Kubernetes service account as its SPIFFE ID in
/// `td`), bounded as [`check_act`] bounds it. Every other member is dropped: RFC 8693
/// §4.1 says non-identity claims (`exp`, `aud`, ...) must not be used there, and one
/// copied as is (a `cnf`, a `scope`) would reach resources unchecked.
fn as_workloads(act: &Value, td: &TrustDomain) -> Value {
    let mut subs = Vec::new();
    let mut level = Some(act);
    while let Some(sub) = level
        .and_then(|l| l.get("sub"))
        .and_then(Value::as_str)
        .filter(|_| subs.len() <= MAX_ACT_DEPTH)
    {
        // check_act refused a sub naming no workload; kept as is were one to get here.
        let id =
            workload(sub, Some(td)).map_or_else(|| sub.to_string(), |i| i.as_str().to_string());
        subs.push(id);
        level = level.and_then(|l| l.get("act"));
    }
    subs.into_iter().rev().fold(Value::Null, |inner, sub| {
        let mut o = Map::new();
        o.insert("sub".into(), json!(sub));
        if !inner.is_null() {
            o.insert("act".into(), inner);
        }
        Value::Object(o)
    })
}

/// The workload an `act.sub` names: a SPIFFE ID, or a Kubernetes service account in
/// `td` (the token's own trust domain, as its issuer maps its subjects). Anything else
/// names no workload, and no revocation can match it.
fn workload(sub: &str, td: Option<&TrustDomain>) -> Option<SpiffeId> {
    SpiffeId::parse(sub)
        .ok()
        .or_else(|| td.and_then(|td| SpiffeId::from_kubernetes_subject(sub, td).ok()))
}

/// The workload a minted token names as acting (its top-level `act.sub`), when it
/// names one: the actor token's subject, or else the subject token's own actor. The
/// one revocations are checked against, as the filter checks the token's `act.sub`.
pub(crate) fn acting(
    subject: &VerifiedSubject,
    actor: Option<&VerifiedSubject>,
) -> Option<SpiffeId> {
    match actor {
        Some(a) => Some(a.spiffe_id.clone()),
        None => own_actor(subject),
    }
}

/// Every workload that acted in a minted token, for revocations: the actor token's
/// subject and every `act.sub` of its own chain, and every `act.sub` of the subject
/// token's chain (a part taken, even where the minted token no longer names it: an
/// actor token, or a deeper level, must not launder a revoked workload's part).
pub(crate) fn acted(subject: &VerifiedSubject, actor: Option<&VerifiedSubject>) -> Vec<SpiffeId> {
    let mut out: Vec<SpiffeId> = Vec::new();
    let ids = actor
        .map(|a| a.spiffe_id.clone())
        .into_iter()
        .chain(actor.map(chain).unwrap_or_default())
        .chain(chain(subject));
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Every workload `token`'s delegation chain names (`act.sub`, `act.act.sub`, …;
/// bounded as [`check_act`] bounds it; see [`workload`]), outermost first.
pub(crate) fn chain(token: &VerifiedSubject) -> Vec<SpiffeId> {
    act_chain(&token.claims, Some(&token.spiffe_id.trust_domain()))
}

/// [`chain`] of a token's claims, a Kubernetes service account read in `td` (also of
/// a minted token, for introspection: its subject's trust domain).
pub fn act_chain(
    claims: &serde_json::Map<String, Value>,
    td: Option<&TrustDomain>,
) -> Vec<SpiffeId> {
    let mut out = Vec::new();
    let mut next = claims.get("act");
    for _ in 0..=MAX_ACT_DEPTH {
        let Some(act) = next else { break };
        if let Some(id) = act
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| workload(s, td))
        {
            out.push(id);
        }
        next = act.get("act");
    }
    out
}

/// The workload the subject token's own `act.sub` names.
fn own_actor(subject: &VerifiedSubject) -> Option<SpiffeId> {
    subject
        .claims
        .get("act")
        .and_then(|act| act.get("sub"))
        .and_then(Value::as_str)
        .and_then(|s| workload(s, Some(&subject.spiffe_id.trust_domain())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshpass_core::{Algorithm, SpiffeId};

    fn party(sub: &str, extra: Value) -> VerifiedSubject {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(sub));
        if let Value::Object(m) = extra {
            claims.extend(m);
        }
        VerifiedSubject {
            spiffe_id: SpiffeId::parse(sub).unwrap(),
            issuer: "https://spire.test".into(),
            audiences: vec!["meshpass".into()],
            expires_at: 0,
            issued_at: None,
            alg: Algorithm::ES256,
            kid: None,
            claims,
        }
    }

    fn mapping(actors: &[&str]) -> Mapping {
        Mapping {
            name: "m".into(),
            subject: "spiffe://td/*".into(),
            resource: "r".into(),
            participant: "p".into(),
            audiences: vec![],
            scopes: vec![],
            ttl_secs: 60,
            rate_limit: None,
            allowed_callers: vec![],
            allowed_actors: actors.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn may_act_names_the_only_actor_allowed() {
        let subject = party(
            "spiffe://td/web",
            json!({"may_act": {"sub": "spiffe://td/batch"}}),
        );
        let ok = party("spiffe://td/batch", json!({}));
        let other = party("spiffe://td/other", json!({}));
        // may_act wins over the mapping.
        assert!(check_actor(&subject, &ok, &mapping(&[])).is_ok());
        assert!(check_actor(&subject, &other, &mapping(&["spiffe://td/*"])).is_err());
        let wrong_iss = party(
            "spiffe://td/web",
            json!({"may_act": {"sub": "spiffe://td/batch", "iss": "https://elsewhere"}}),
        );
        assert!(check_actor(&wrong_iss, &ok, &mapping(&[])).is_err());
    }

    #[test]
    fn may_act_naming_a_raw_sub_without_iss_is_not_met_by_another_issuers_actor() {
        let sa = "system:serviceaccount:ops:batch";
        let subject = party("spiffe://td/web", json!({"may_act": {"sub": sa}}));
        let mut same = party("spiffe://td/ns/ops/sa/batch", json!({"sub": sa}));
        assert!(check_actor(&subject, &same, &mapping(&[])).is_ok());
        // The same `sub` from another cluster's issuer is another workload.
        same.issuer = "https://cluster-b.example".into();
        assert!(check_actor(&subject, &same, &mapping(&[])).is_err());
        // Unless `may_act` names that issuer.
        let named = party(
            "spiffe://td/web",
            json!({"may_act": {"sub": sa, "iss": "https://cluster-b.example"}}),
        );
        assert!(check_actor(&named, &same, &mapping(&[])).is_ok());
    }

    #[test]
    fn without_may_act_only_allowed_actors_may_act() {
        let subject = party("spiffe://td/web", json!({}));
        let actor = party("spiffe://td/batch", json!({}));
        assert!(check_actor(&subject, &actor, &mapping(&[])).is_err());
        assert!(check_actor(&subject, &actor, &mapping(&["spiffe://td/batch"])).is_ok());
    }

    #[test]
    fn act_nests_the_actor_tokens_own_chain_not_the_subjects() {
        let subject = party("spiffe://td/web", json!({"act": {"sub": "spiffe://td/x"}}));
        let actor = party(
            "spiffe://td/batch",
            json!({"act": {"sub": "spiffe://td/cron"}}),
        );
        assert_eq!(
            act_claim(&subject, Some(&actor)).unwrap(),
            json!({"sub": "spiffe://td/batch", "act": {"sub": "spiffe://td/cron"}})
        );
        assert_eq!(
            act_claim(&subject, None).unwrap(),
            json!({"sub": "spiffe://td/x"})
        );
    }
}

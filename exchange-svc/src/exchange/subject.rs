//! Step 3 of an exchange: validate the subject and actor tokens with meshpass-core's one
//! validator (and TokenReview the subject when its issuer says so).

use std::sync::Arc;

use meshpass_core::{Binding, ValidationError, ValidationPolicy, VerifiedSubject};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;
use crate::subject_cache::TokenDigest;

/// The verified parties of an exchange.
pub(crate) struct Parties {
    /// The subject (whose identity the minted token carries).
    pub subject: Arc<VerifiedSubject>,
    /// The actor, when an actor token was given.
    pub actor: Option<Arc<VerifiedSubject>>,
}

/// Asks TokenReview about a subject or actor token when its issuer has it configured
/// (after the rate limit: a review is a round trip to the API server).
pub(crate) async fn review(
    st: &AppState,
    token: &str,
    verified: &VerifiedSubject,
    which: &'static str,
) -> Result<(), ApiError> {
    let Some(reviewer) = st.reviewers.get(&verified.issuer) else {
        return Ok(());
    };
    let sub = verified
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("");
    reviewer
        .review(token, sub)
        .await
        .map(|_| ())
        .map_err(|source| ApiError::Review {
            which,
            source,
            retry_after_secs: st.settings.sign_retry_after_secs,
        })
}

/// Validates a subject or actor token; an unknown `kid` refetches the issuer's keys
/// (rate limited) and tries once more.
///
/// A token verified before with the current key-set generation is taken from the
/// verified-subject cache: its signature is not checked again, but every claim rule
/// (time included) and the subject rules are, against `now`.
pub(crate) async fn validate(
    st: &AppState,
    token: &str,
    now: u64,
    which: &'static str,
) -> Result<Arc<VerifiedSubject>, ApiError> {
    let policy = &st.settings.policy;
    let invalid = |source| ApiError::InvalidGrant { which, source };
    // Oversized tokens are refused by the full validation; never hash or cache them.
    let cache = st
        .subjects
        .as_ref()
        .filter(|_| token.len() <= policy.max_token_bytes);
    let digest = cache.map(|_| TokenDigest::of(token));
    let (generation, keys) = st.keys.generation_snapshot();
    if let (Some(cache), Some(digest)) = (cache, &digest) {
        if let Some(hit) = cache.get(digest, now, generation) {
            st.metrics.subject_cache_hits.inc();
            return recheck(policy, &hit, now).map(|()| hit).map_err(invalid);
        }
        st.metrics.subject_cache_misses.inc();
    }
    // The caller binding is the service's own rule (see `caller`), checked after
    // validation: the token itself is validated unbound.
    let first = policy.validate(token, now, &*keys, &Binding::None);
    drop(keys);
    let (generation, result) = match first {
        // No keys at all (the issuer's endpoint was down so far) is an unknown kid too:
        // the same rate-limited refetch, not 503 until the background retry.
        Err(ValidationError::UnknownKeyId { issuer, .. } | ValidationError::NoKeys { issuer }) => {
            st.keys.refetch_unknown_kid(&issuer).await;
            let (generation, keys) = st.keys.generation_snapshot();
            (
                generation,
                policy.validate(token, now, &*keys, &Binding::None),
            )
        }
        other => (generation, other),
    };
    let subject = Arc::new(result.map_err(|source| match source {
        ValidationError::NoKeys { .. } => ApiError::Unavailable {
            what: "issuer keys",
            detail: format!("no keys loaded for the {which}'s issuer"),
            retry_after_secs: st.settings.sign_retry_after_secs,
        },
        source => invalid(source),
    })?);
    if let (Some(cache), Some(digest)) = (cache, digest) {
        cache.insert(digest, Arc::clone(&subject), now, generation);
    }
    Ok(subject)
}

/// The checks a cached verified subject must pass again at `now`: the issuer's claim
/// rules (`iss`, `aud`, `exp`, `nbf`, `iat`, lifetime, leeway) and subject rules (trust
/// domain, ID patterns), exactly as [`ValidationPolicy::validate`] runs them after the
/// signature check.
pub(crate) fn recheck(
    policy: &ValidationPolicy,
    subject: &VerifiedSubject,
    now: u64,
) -> Result<(), ValidationError> {
    let issuer = policy
        .issuer(&subject.issuer)
        .ok_or(ValidationError::UnknownIssuer)?;
    let claims = issuer.check_claims(&subject.claims, now)?;
    let id = issuer.subject(&claims)?;
    if id != subject.spiffe_id {
        // Cannot happen for an entry made from the same claims; refuse rather than guess.
        return Err(ValidationError::SubjectNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use meshpass_core::{Algorithm, Audience, IssuerPolicy, SpiffeId, TrustDomain};
    use serde_json::{json, Map};

    use super::*;

    fn policy() -> ValidationPolicy {
        ValidationPolicy::new(vec![IssuerPolicy::new(
            "https://spire.test",
            vec![Audience::parse("meshpass").unwrap()],
            vec![TrustDomain::parse("td").unwrap()],
        )])
    }

    fn cached(iss: &str, exp: u64) -> VerifiedSubject {
        let claims: Map<String, Value> = serde_json::from_value(
            json!({"iss": iss, "sub": "spiffe://td/web", "aud": "meshpass", "exp": exp}),
        )
        .unwrap();
        VerifiedSubject {
            spiffe_id: SpiffeId::parse("spiffe://td/web").unwrap(),
            issuer: iss.into(),
            audiences: vec!["meshpass".into()],
            expires_at: exp,
            issued_at: None,
            alg: Algorithm::ES256,
            kid: None,
            claims,
        }
    }

    #[test]
    fn a_cached_subject_passes_again_only_while_its_claims_hold_at_now() {
        let p = policy();
        assert!(recheck(&p, &cached("https://spire.test", 2_000), 1_000).is_ok());
        assert!(recheck(&p, &cached("https://spire.test", 2_000), 3_000).is_err());
        assert!(matches!(
            recheck(&p, &cached("https://other.test", 2_000), 1_000),
            Err(ValidationError::UnknownIssuer)
        ));
    }
}

//! Step 5 of an exchange: build the participant token's claims and have them signed.

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::signer::SigningKey;
use crate::state::AppState;
use crate::store::{ScopeClaims, RESERVED_CLAIMS};

use super::authorize::Grant;
use super::subject::Parties;

/// A minted participant token.
pub(crate) struct Minted {
    /// The compact JWS.
    pub access_token: String,
    /// `jti`.
    pub jti: String,
    /// `exp`.
    pub expires_at: u64,
    /// The key that signed it.
    pub key: SigningKey,
}

/// `exp` of the minted token: the mapping's TTL (capped by `max_ttl_secs`), never past
/// the subject's or the actor's `exp`; an exchange that would mint an expired token is
/// refused.
pub(crate) fn expiry(
    parties: &Parties,
    ttl_secs: u64,
    max_ttl_secs: u64,
    now: u64,
) -> Result<u64, ApiError> {
    let mut exp = now
        .saturating_add(ttl_secs.min(max_ttl_secs))
        .min(parties.subject.expires_at);
    if let Some(a) = &parties.actor {
        exp = exp.min(a.expires_at);
    }
    if exp <= now {
        return Err(ApiError::ExpiresTooSoon);
    }
    Ok(exp)
}

/// The claims of the participant token: registered claims, `scope`, the participant
/// claim, the granted scopes' claims (never a reserved one) and `act`.
pub(crate) fn claims(
    st: &AppState,
    parties: &Parties,
    grant: &Grant<'_>,
    scope_claims: &[ScopeClaims],
    now: u64,
    exp: u64,
    jti: &str,
) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(st.settings.issuer));
    claims.insert("sub".into(), json!(parties.subject.spiffe_id.as_str()));
    claims.insert(
        "aud".into(),
        match grant.audiences.as_slice() {
            [one] => json!(one),
            many => json!(many),
        },
    );
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims.insert("jti".into(), json!(jti));
    if !grant.scopes.is_empty() {
        claims.insert("scope".into(), json!(grant.scopes.join(" ")));
    }
    let participant_claim = st.settings.participant_claim.as_str();
    claims.insert(participant_claim.into(), json!(grant.mapping.participant));
    for row in scope_claims {
        if !grant.scopes.contains(&row.scope) {
            continue;
        }
        for (name, value) in &row.claims {
            // Writes are validated; this guards against rows written by other means.
            if RESERVED_CLAIMS.contains(&name.as_str()) || name == participant_claim {
                tracing::warn!(claim = %name, scope = %row.scope, "reserved claim in scope claims ignored");
                continue;
            }
            claims.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    if let Some(act) = super::delegation::act_claim(&parties.subject, parties.actor.as_deref()) {
        claims.insert("act".into(), act);
    }
    claims
}

/// Signs `claims` with the signer's current key.
pub(crate) async fn sign(
    st: &AppState,
    claims: Map<String, Value>,
    jti: String,
    exp: u64,
) -> Result<Minted, ApiError> {
    let sign_error = |source| ApiError::Sign {
        source,
        retry_after_secs: st.settings.sign_retry_after_secs,
    };
    let key = st.signer.current_key().map_err(sign_error)?;
    let header = json!({"alg": key.alg.as_str(), "typ": "JWT", "kid": key.kid});
    let encode = |v: &Value| serde_json::to_vec(v).map(|b| URL_SAFE_NO_PAD.encode(b));
    let signing_input = match (encode(&header), encode(&Value::Object(claims))) {
        (Ok(h), Ok(p)) => format!("{h}.{p}"),
        _ => return Err(ApiError::Internal("encoding the token failed".into())),
    };
    let started = Instant::now();
    let signed = st.signer.sign(&key, signing_input.as_bytes()).await;
    st.metrics
        .sign_seconds
        .with_label_values(&[if signed.is_ok() { "ok" } else { "error" }])
        .observe(started.elapsed().as_secs_f64());
    let signature = signed.map_err(sign_error)?;
    Ok(Minted {
        access_token: format!("{signing_input}.{signature}"),
        jti,
        expires_at: exp,
        key,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use meshpass_core::{Algorithm, SpiffeId, VerifiedSubject};

    use super::*;

    fn party(exp: u64) -> Arc<VerifiedSubject> {
        Arc::new(VerifiedSubject {
            spiffe_id: SpiffeId::parse("spiffe://td/web").unwrap(),
            issuer: "https://spire.test".into(),
            audiences: vec![],
            expires_at: exp,
            issued_at: None,
            alg: Algorithm::ES256,
            kid: None,
            claims: Map::new(),
        })
    }

    #[test]
    fn expiry_is_the_ttl_capped_by_the_maximum_and_both_tokens() {
        let now = 1_000;
        let alone = Parties {
            subject: party(now + 10_000),
            actor: None,
        };
        assert_eq!(expiry(&alone, 300, 3600, now).unwrap(), now + 300);
        assert_eq!(expiry(&alone, 300, 60, now).unwrap(), now + 60);
        let short_actor = Parties {
            subject: party(now + 10_000),
            actor: Some(party(now + 20)),
        };
        assert_eq!(expiry(&short_actor, 300, 3600, now).unwrap(), now + 20);
        let expired = Parties {
            subject: party(now),
            actor: None,
        };
        assert!(matches!(
            expiry(&expired, 300, 3600, now),
            Err(ApiError::ExpiresTooSoon)
        ));
    }
}

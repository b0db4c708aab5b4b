//! Step 5 of an exchange: build the participant token's claims and have them signed.

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::signer::SigningKey;
use crate::state::AppState;
use crate::store::{is_reserved_claim, ScopeClaims, MAX_TOKEN_CLAIMS_BYTES};

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
    let mut which = "subject_token";
    if let Some(a) = &parties.actor {
        if a.expires_at < exp {
            exp = a.expires_at;
            which = "actor_token";
        }
    }
    if exp <= now {
        return Err(ApiError::ExpiresTooSoon { which });
    }
    Ok(exp)
}

/// One claim's value, borrowed where it can be: the claims are written straight to
/// JSON, without a `serde_json::Value` tree built and dropped per exchange.
enum Claim<'a> {
    Str(&'a str),
    Int(u64),
    Strs(&'a [String]),
    Json(&'a Value),
    Owned(Value),
}

impl Serialize for Claim<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Claim::Str(v) => s.serialize_str(v),
            Claim::Int(v) => s.serialize_u64(*v),
            Claim::Strs(v) => v.serialize(s),
            Claim::Json(v) => v.serialize(s),
            Claim::Owned(v) => v.serialize(s),
        }
    }
}

/// A JSON object of distinct names, in the order given.
struct Object<'a>(&'a [(&'a str, Claim<'a>)]);

impl Serialize for Object<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The claims of the participant token as JSON: registered claims, `scope`, the
/// participant claim, the granted scopes' claims (never a reserved one; the first row
/// naming a claim wins) and `act`. Names are in byte order, as a `serde_json::Map`
/// would write them, so the payload is the same as it always was.
pub(crate) fn claims(
    issuer: Issuer<'_>,
    parties: &Parties,
    grant: &Grant<'_>,
    scope_claims: &[ScopeClaims],
    scope: Option<&str>,
    times: Times,
    jti: &str,
) -> Result<Vec<u8>, ApiError> {
    let participant_claim = issuer.participant_claim;
    let mut fields: Vec<(&str, Claim<'_>)> = Vec::with_capacity(12);
    fields.push(("iss", Claim::Str(issuer.iss)));
    fields.push(("sub", Claim::Str(parties.subject.spiffe_id.as_str())));
    fields.push((
        "aud",
        match grant.audiences.as_slice() {
            [one] => Claim::Str(one),
            many => Claim::Strs(many),
        },
    ));
    fields.push(("iat", Claim::Int(times.now)));
    fields.push(("nbf", Claim::Int(times.now)));
    fields.push(("exp", Claim::Int(times.exp)));
    fields.push(("jti", Claim::Str(jti)));
    if let Some(scope) = scope {
        fields.push(("scope", Claim::Str(scope)));
    }
    fields.push((participant_claim, Claim::Str(&grant.mapping.participant)));
    for row in scope_claims {
        if !grant.scopes.contains(&row.scope) {
            continue;
        }
        for (name, value) in &row.claims {
            // Writes are validated; this guards against rows written by other means.
            if is_reserved_claim(name, participant_claim) {
                tracing::warn!(claim = %name, scope = %row.scope, "reserved claim in scope claims ignored");
                continue;
            }
            if !fields.iter().any(|(n, _)| *n == name.as_str()) {
                fields.push((name, Claim::Json(value)));
            }
        }
    }
    if let Some(act) = super::delegation::act_claim(&parties.subject, parties.actor.as_deref()) {
        fields.push(("act", Claim::Owned(act)));
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let bytes = serde_json::to_vec(&Object(&fields))
        .map_err(|_| ApiError::Internal("encoding the token failed".into()))?;
    if bytes.len() > MAX_TOKEN_CLAIMS_BYTES {
        return Err(ApiError::Internal(format!(
            "the participant token's claims would take {} bytes, over {MAX_TOKEN_CLAIMS_BYTES}: the scope claims of resource {:?} granted together are too large for an HTTP header",
            bytes.len(),
            grant.mapping.resource
        )));
    }
    Ok(bytes)
}

/// Who mints: `iss` and the name of the participant claim (from the settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Issuer<'a> {
    /// `iss`.
    pub iss: &'a str,
    /// The participant claim's name.
    pub participant_claim: &'a str,
}

/// `iat`/`nbf` and `exp` of a minted token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    /// `iat` and `nbf`.
    pub now: u64,
    /// `exp`.
    pub exp: u64,
}

/// Signs the JSON `claims` with the signer's current key.
pub(crate) async fn sign(
    st: &AppState,
    claims: &[u8],
    jti: String,
    exp: u64,
) -> Result<Minted, ApiError> {
    let sign_error = |source| ApiError::Sign {
        source,
        retry_after_secs: st.settings.sign_retry_after_secs,
    };
    let key = st.signer.current_key().map_err(sign_error)?;
    let header = [
        ("alg", Claim::Str(key.alg.as_str())),
        ("kid", Claim::Str(&key.kid)),
        ("typ", Claim::Str("JWT")),
    ];
    let header = serde_json::to_vec(&Object(&header))
        .map_err(|_| ApiError::Internal("encoding the token failed".into()))?;
    // header.claims.signature, the signature (≤ 684 characters for RS/PS 4096) added
    // in place.
    let b64 = |n: usize| n.div_ceil(3) * 4;
    let mut token = String::with_capacity(b64(header.len()) + b64(claims.len()) + 700);
    URL_SAFE_NO_PAD.encode_string(&header, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let started = Instant::now();
    let signed = st.signer.sign(&key, token.as_bytes()).await;
    st.metrics
        .sign_seconds
        .with_label_values(&[if signed.is_ok() { "ok" } else { "error" }])
        .observe(started.elapsed().as_secs_f64());
    let signature = signed.map_err(sign_error)?;
    token.push('.');
    token.push_str(&signature);
    Ok(Minted {
        access_token: token,
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
    use crate::store::Mapping;
    use serde_json::Map;

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

    fn party_with(sub: &str, claims: Value) -> Arc<VerifiedSubject> {
        let Value::Object(claims) = claims else {
            panic!("claims must be an object")
        };
        Arc::new(VerifiedSubject {
            spiffe_id: SpiffeId::parse(sub).unwrap(),
            claims,
            ..(*party(2_000)).clone()
        })
    }

    fn mapping() -> Mapping {
        Mapping {
            name: "m".into(),
            subject: "spiffe://td/*".into(),
            resource: "payments".into(),
            participant: "acme \"corp\"".into(),
            audiences: vec![],
            scopes: vec![],
            ttl_secs: 300,
            rate_limit: None,
            allowed_callers: vec![],
            allowed_actors: vec![],
        }
    }

    /// The claims as they were built before they were written directly: a
    /// `serde_json::Map` filled in this order, then serialised.
    fn reference(
        issuer: Issuer<'_>,
        parties: &Parties,
        grant: &Grant<'_>,
        scope_claims: &[ScopeClaims],
        times: Times,
        jti: &str,
    ) -> Vec<u8> {
        use serde_json::json;
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(issuer.iss));
        claims.insert("sub".into(), json!(parties.subject.spiffe_id.as_str()));
        claims.insert(
            "aud".into(),
            match grant.audiences.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        );
        claims.insert("iat".into(), json!(times.now));
        claims.insert("nbf".into(), json!(times.now));
        claims.insert("exp".into(), json!(times.exp));
        claims.insert("jti".into(), json!(jti));
        if !grant.scopes.is_empty() {
            claims.insert("scope".into(), json!(grant.scopes.join(" ")));
        }
        claims.insert(
            issuer.participant_claim.into(),
            json!(grant.mapping.participant),
        );
        for row in scope_claims {
            if !grant.scopes.contains(&row.scope) {
                continue;
            }
            for (name, value) in &row.claims {
                if crate::store::RESERVED_CLAIMS.contains(&name.as_str())
                    || name == issuer.participant_claim
                {
                    continue;
                }
                claims.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        if let Some(act) =
            super::super::delegation::act_claim(&parties.subject, parties.actor.as_deref())
        {
            claims.insert("act".into(), act);
        }
        serde_json::to_vec(&Value::Object(claims)).unwrap()
    }

    fn scope_row(scope: &str, claims: Value) -> ScopeClaims {
        let Value::Object(claims) = claims else {
            panic!("claims must be an object")
        };
        ScopeClaims {
            resource: "payments".into(),
            scope: scope.into(),
            claims,
        }
    }

    #[test]
    fn claims_are_the_same_bytes_as_a_serialised_claims_map() {
        let m = mapping();
        let rows = vec![
            scope_row(
                "read",
                serde_json::json!({"tier": "gold", "limits": {"rps": 5}, "iss": "evil", "org": 1}),
            ),
            scope_row(
                "write",
                serde_json::json!({"tier": "silver", "x\"q\u{1}é": [true, null], "org": 2}),
            ),
            scope_row("admin", serde_json::json!({"never": "granted"})),
        ];
        let subjects = [
            party_with("spiffe://td/web", serde_json::json!({})),
            party_with(
                "spiffe://td/web",
                serde_json::json!({"act": {"sub": "spiffe://td/gw"}}),
            ),
        ];
        let actor = party_with(
            "spiffe://td/batch",
            serde_json::json!({"act": {"sub": "spiffe://td/cron"}}),
        );
        let times = Times {
            now: 1_000,
            exp: 1_300,
        };
        for participant_claim in ["participant", "org", "zz_ctx", "a"] {
            let issuer = Issuer {
                iss: "https://meshpass.test",
                participant_claim,
            };
            for audiences in [vec!["payments".to_string()], vec!["a".into(), "b\"".into()]] {
                for scopes in [
                    vec![],
                    vec!["read".to_string()],
                    vec!["read".into(), "write".into()],
                ] {
                    for subject in &subjects {
                        for actor in [None, Some(actor.clone())] {
                            let parties = Parties {
                                subject: subject.clone(),
                                actor,
                            };
                            let grant = Grant {
                                mapping: &m,
                                audiences: audiences.clone(),
                                scopes: scopes.clone(),
                            };
                            let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
                            let got = claims(
                                issuer,
                                &parties,
                                &grant,
                                &rows,
                                scope.as_deref(),
                                times,
                                "jti-1",
                            )
                            .unwrap();
                            let want = reference(issuer, &parties, &grant, &rows, times, "jti-1");
                            assert_eq!(
                                String::from_utf8(got).unwrap(),
                                String::from_utf8(want).unwrap()
                            );
                        }
                    }
                }
            }
        }
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
            Err(ApiError::ExpiresTooSoon {
                which: "subject_token"
            })
        ));
        let expired_actor = Parties {
            subject: party(now + 10_000),
            actor: Some(party(now)),
        };
        assert!(matches!(
            expiry(&expired_actor, 300, 3600, now),
            Err(ApiError::ExpiresTooSoon {
                which: "actor_token"
            })
        ));
    }
}

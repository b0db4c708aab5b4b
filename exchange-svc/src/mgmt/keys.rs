//! `/api/v1/keys`: the transit key's versions (published since, signing from),
//! rotation, and retirement of old versions once no token they signed can be live.

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::config::Role;
use super::error::{Dependency, MgmtError};
use super::input::{parse_body, read_body};
use super::{MgmtState, RequestId};
use crate::key_maintenance::LockedKeyAdmin;

/// One published key version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyVersionStatus {
    /// Transit version.
    pub version: u64,
    /// The JWS `kid`.
    pub kid: String,
    /// Whether it is in the JWKS.
    pub published: bool,
    /// Whether new tokens are signed with it.
    pub signing: bool,
    /// Unix time it was first published (by this process, or its creation in Vault).
    pub published_since: u64,
    /// Unix time from which it may sign (published + lead).
    pub signs_from: u64,
}

/// The transit key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Transit key name.
    pub key: String,
    /// JWS algorithm.
    pub alg: String,
    /// How long a version is published before it signs.
    pub publish_lead_secs: u64,
    /// How often replicas re-read the key.
    pub refresh_interval_secs: u64,
    /// The version new tokens are signed with.
    pub signing_version: Option<u64>,
    /// Published versions, oldest first.
    pub versions: Vec<KeyVersionStatus>,
}

/// Key operations (implemented by the transit signer).
#[async_trait]
pub trait KeyAdmin: Send + Sync {
    /// The key's versions as this replica last read them.
    async fn status(&self) -> Result<KeyStatus, MgmtError>;
    /// The key's versions read from Vault now (this replica's view is refreshed too):
    /// what a key change decides on, since another replica may have changed it since.
    async fn fresh_status(&self) -> Result<KeyStatus, MgmtError>;
    /// Rotates the key in Vault (read it again to publish the new version).
    async fn rotate(&self) -> Result<(), MgmtError>;
    /// Stops publishing versions below `below` in Vault (the caller checked it is safe).
    async fn retire_below(&self, below: u64) -> Result<(), MgmtError>;
}

/// `POST /api/v1/keys/retire` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// Versions below this one stop being published.
    pub below: u64,
}

fn admin(st: &MgmtState) -> Result<&LockedKeyAdmin, MgmtError> {
    st.keys
        .as_deref()
        .ok_or_else(|| MgmtError::NotFound("keys (the signer is not a transit signer)".into()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether retiring versions below `below` is safe at `now`: the first kept version
/// must sign now, and must have been signing (on every replica: plus one refresh
/// interval) for longer than the longest token lifetime, so no token a retired version
/// signed can still be live.
pub fn check_retire(
    status: &KeyStatus,
    below: u64,
    max_lifetime_secs: u64,
    now: u64,
) -> Result<(), MgmtError> {
    let signing = status
        .signing_version
        .ok_or(MgmtError::Unavailable(Dependency::TransitKey))?;
    if below > signing {
        return Err(MgmtError::invalid(
            "below",
            format!("version {signing} signs: it and newer versions cannot be retired"),
        ));
    }
    if !status.versions.iter().any(|v| v.version < below) {
        return Err(MgmtError::invalid(
            "below",
            "no published version is below it",
        ));
    }
    let successor = status
        .versions
        .iter()
        .find(|v| v.version >= below)
        .ok_or_else(|| MgmtError::invalid("below", "no published version is at or above it"))?;
    let safe_at = successor
        .signs_from
        .saturating_add(status.refresh_interval_secs)
        .saturating_add(max_lifetime_secs);
    if now < safe_at {
        return Err(MgmtError::Conflict(format!(
            "tokens signed by versions below {below} may be live until {safe_at} (unix time); retry after it"
        )));
    }
    Ok(())
}

/// `GET /api/v1/keys`.
pub async fn status(
    State(st): State<MgmtState>,
    headers: HeaderMap,
) -> Result<Json<KeyStatus>, MgmtError> {
    st.auth.require(&headers, Role::Read).await?;
    Ok(Json(admin(&st)?.status().await?))
}

/// `POST /api/v1/keys/rotate`.
pub async fn rotate(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Json<KeyStatus>, MgmtError> {
    let caller = st.auth.require(&headers, Role::Keys).await?;
    let actor = rid.actor(&caller);
    Ok(Json(admin(&st)?.rotate(&actor).await?))
}

/// `POST /api/v1/keys/retire`.
pub async fn retire(
    State(st): State<MgmtState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<KeyStatus>, MgmtError> {
    let caller = st.auth.require(&headers, Role::Keys).await?;
    let body = read_body(body).await?;
    let req: RetireRequest = parse_body(&body)?;
    let actor = rid.actor(&caller);
    let keys = admin(&st)?;
    Ok(Json(
        keys.retire_below(req.below, st.max_token_lifetime_secs, now(), &actor)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(signs_from_v2: u64) -> KeyStatus {
        let v = |version, signing, signs_from| KeyVersionStatus {
            version,
            kid: format!("k:v{version}"),
            published: true,
            signing,
            published_since: 0,
            signs_from,
        };
        KeyStatus {
            key: "k".into(),
            alg: "ES256".into(),
            publish_lead_secs: 60,
            refresh_interval_secs: 30,
            signing_version: Some(2),
            versions: vec![v(1, false, 0), v(2, true, signs_from_v2)],
        }
    }

    #[test]
    fn retiring_is_allowed_only_once_the_successor_signed_longer_than_a_token_lives() {
        let s = status(1000);
        // v2 signs from 1000; replicas follow within 30 s; tokens live 3600 s.
        assert!(matches!(
            check_retire(&s, 2, 3600, 4629),
            Err(MgmtError::Conflict(_))
        ));
        assert!(check_retire(&s, 2, 3600, 4630).is_ok());
        assert!(matches!(
            check_retire(&s, 3, 3600, 99_999),
            Err(MgmtError::Invalid { .. })
        ));
        assert!(matches!(
            check_retire(&s, 1, 3600, 99_999),
            Err(MgmtError::Invalid { .. })
        ));
    }
}

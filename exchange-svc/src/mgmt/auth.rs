//! Who calls the management API: a bearer JWT validated by meshpass-core against the
//! service's configured issuers (same keys, same rules as subject tokens; audiences
//! from `management.audiences` when set) and, when its issuer has `token_review`,
//! reviewed by the Kubernetes API server as `/token` reviews it; its SPIFFE ID mapped to
//! roles by `[[management.callers]]`. With `[management.kubernetes]` the tokens of its
//! cluster are always reviewed (by that API server when the issuer has no
//! `token_review`): a role granted by SubjectAccessReview is asked for the user the API
//! server authenticates now, with its groups, never for a bare `sub` claim (a deleted
//! service account's token still verifies until it expires, and RBAC bindings outlive
//! the account).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use meshpass_core::{Audience, Binding, SpiffeIdPattern, ValidationError, ValidationPolicy};

use super::config::{ManagementConfig, Role};
use super::error::{Dependency, MgmtError};
use crate::clock::Clock;
use crate::keys::IssuerKeySource;
use crate::tokenreview::{ReviewError, TokenReviewer};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's SPIFFE ID.
    pub id: String,
    /// Its roles from the callers table.
    pub roles: BTreeSet<Role>,
    /// Its Kubernetes user as the API server's TokenReview answered it (username
    /// `system:serviceaccount:NS:SA`, uid, groups, extra) when it presented a
    /// service-account token of the reviewed cluster.
    pub kube_user: Option<k8s_openapi::api::authentication::v1::UserInfo>,
}

/// Authenticates and authorises management requests.
pub struct Authenticator {
    policy: ValidationPolicy,
    keys: Arc<dyn IssuerKeySource>,
    clock: Arc<dyn Clock>,
    table: Vec<(SpiffeIdPattern, Vec<Role>)>,
    /// TokenReview per issuer that has `token_review` (the token endpoint's reviewers,
    /// asking for `management.audiences` when set).
    reviewers: Arc<HashMap<String, TokenReviewer>>,
    kube: Option<super::kube_authz::AccessReviewer>,
    /// The issuer whose service-account tokens `kube` reviews.
    kube_issuer: Option<String>,
    /// Revoked subjects and callers are no management callers either: a compromised
    /// identity, once revoked, must not change policy nor lift its own revocation.
    revocations: Arc<crate::revocation::Revocations>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("callers", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds from the service's subject-token policy, its TokenReview `reviewers` (by
    /// issuer) and a validated `[management]`.
    pub fn new(
        subject_policy: &ValidationPolicy,
        reviewers: &Arc<HashMap<String, TokenReviewer>>,
        cfg: &ManagementConfig,
        keys: Arc<dyn IssuerKeySource>,
        clock: Arc<dyn Clock>,
        revocations: Arc<crate::revocation::Revocations>,
    ) -> Result<Self, (String, String)> {
        let mut policy = subject_policy.clone();
        if !cfg.audiences.is_empty() {
            let auds = cfg
                .audiences
                .iter()
                .map(|a| Audience::parse(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("management.audiences".to_string(), e.to_string()))?;
            for i in &mut policy.issuers {
                i.audiences = auds.clone();
            }
        }
        // A management token carries `management.audiences` when set: the API server
        // must be asked about those, not the issuer's.
        let reviewers = if cfg.audiences.is_empty() {
            Arc::clone(reviewers)
        } else {
            Arc::new(
                reviewers
                    .iter()
                    .map(|(issuer, r)| (issuer.clone(), r.with_audiences(&cfg.audiences)))
                    .collect(),
            )
        };
        let table = cfg
            .callers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                SpiffeIdPattern::parse(&c.id)
                    .map(|p| (p, c.roles.clone()))
                    .map_err(|e| (format!("management.callers[{i}].id"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kube = cfg
            .kubernetes
            .as_ref()
            .map(super::kube_authz::AccessReviewer::new)
            .transpose()
            .map_err(|e| ("management.kubernetes".to_string(), e.to_string()))?;
        let kube_issuer = cfg
            .kubernetes
            .as_ref()
            .map(|k| k.reviewed_issuer(&policy))
            .transpose()?;
        // SubjectAccessReview implies TokenReview, by the same API server when the
        // issuer has no `token_review` of its own.
        let reviewers = match (&cfg.kubernetes, &kube_issuer) {
            (Some(k), Some(issuer)) if !reviewers.contains_key(issuer) => {
                let audiences: Vec<String> = policy
                    .issuers
                    .iter()
                    .filter(|i| i.issuer == *issuer)
                    .flat_map(|i| i.audiences.iter().map(|a| a.as_str().to_string()))
                    .collect();
                let own = TokenReviewer::new(&k.client_config(), None, &audiences)
                    .map_err(|e| ("management.kubernetes".to_string(), e.to_string()))?;
                let mut all = (*reviewers).clone();
                all.insert(issuer.clone(), own);
                Arc::new(all)
            }
            _ => reviewers,
        };
        Ok(Authenticator {
            policy,
            keys,
            clock,
            table,
            reviewers,
            kube,
            kube_issuer,
            revocations,
        })
    }

    /// The caller of a request holding `role`: 401 without a valid token, 403 without
    /// the role. Errors never echo the token.
    pub async fn require(&self, headers: &HeaderMap, role: Role) -> Result<Caller, MgmtError> {
        self.require_all(headers, &[role]).await
    }

    /// [`Self::require`] for a request needing every one of `roles`: the token is
    /// validated (and reviewed) once, the API server asked once per role not in the
    /// callers table; 403 names the first role missing.
    pub async fn require_all(
        &self,
        headers: &HeaderMap,
        roles: &[Role],
    ) -> Result<Caller, MgmtError> {
        let mut caller = self.authenticate(headers).await?;
        for &role in roles {
            if caller.roles.contains(&role) {
                continue;
            }
            if let (Some(kube), Some(user)) = (&self.kube, &caller.kube_user) {
                if kube.allows(user, role).await? {
                    caller.roles.insert(role);
                    continue;
                }
            }
            return Err(MgmtError::Forbidden(format!(
                "{} lacks the {} role",
                caller.id,
                role.as_str()
            )));
        }
        Ok(caller)
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, MgmtError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| MgmtError::Unauthenticated("Authorization: Bearer is required".into()))?
            .to_str()
            .map_err(|_| MgmtError::Unauthenticated("malformed Authorization header".into()))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                MgmtError::Unauthenticated("Authorization: Bearer is required".into())
            })?;
        let now = self.clock.now();
        let first = {
            let (_, keys) = self.keys.generation_snapshot();
            self.policy.validate(token, now, &*keys, &Binding::None)
        };
        let result = match first {
            Err(
                ValidationError::UnknownKeyId { issuer, .. } | ValidationError::NoKeys { issuer },
            ) => {
                self.keys.refetch_unknown_kid(&issuer).await;
                let (_, keys) = self.keys.generation_snapshot();
                self.policy.validate(token, now, &*keys, &Binding::None)
            }
            other => other,
        };
        let subject = result.map_err(|e| match e {
            ValidationError::NoKeys { .. } => MgmtError::Unavailable(Dependency::IssuerKeys),
            e => MgmtError::Unauthenticated(format!("bearer token refused: {e}")),
        })?;
        // The token must belong to the connection it came over (see `binding`).
        super::binding::check_token_binding(headers, &subject.spiffe_id)?;
        // As at `/token` and `GET /revocations`: a revoked subject or caller is refused
        // (the token's identity is the connection's, checked just above).
        if !self.revocations.loaded() {
            // Never read: the empty set would pass a revoked caller.
            return Err(MgmtError::Unavailable(Dependency::RevocationStore));
        }
        let set = self.revocations.current();
        if let Some(r) = set
            .subject(&subject.spiffe_id, now)
            .or_else(|| set.caller(&subject.spiffe_id, now))
        {
            return Err(MgmtError::Forbidden(format!(
                "{} is revoked ({}): lifted only by another management caller",
                subject.spiffe_id.as_str(),
                r.reason
            )));
        }
        // As at `/token`: a token the API server no longer authenticates (its pod or
        // service account deleted) is no credential.
        let reviewed = match self.reviewers.get(&subject.issuer) {
            Some(reviewer) => {
                let sub = subject
                    .claims
                    .get("sub")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                let user = reviewer.review(token, sub).await.map_err(|e| match e {
                    ReviewError::Unavailable(reason) => {
                        tracing::warn!(%reason, "management: TokenReview unavailable");
                        MgmtError::Unavailable(Dependency::KubernetesApi)
                    }
                    e => MgmtError::Unauthenticated(format!("bearer token refused: {e}")),
                })?;
                Some(user)
            }
            None => None,
        };
        let roles: BTreeSet<Role> = self
            .table
            .iter()
            .filter(|(p, _)| p.matches(&subject.spiffe_id))
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let id = subject.spiffe_id.as_str().to_string();
        // Only the reviewed cluster's own service accounts: `system:serviceaccount:ns:sa`
        // names someone else in another cluster.
        let from_reviewed_cluster = self.kube_issuer.as_deref().is_some_and(|i| {
            subject
                .claims
                .get("iss")
                .and_then(serde_json::Value::as_str)
                == Some(i)
        });
        let kube_user = reviewed.filter(|u| {
            from_reviewed_cluster
                && u.username
                    .as_deref()
                    .is_some_and(|s| s.starts_with("system:serviceaccount:"))
        });
        if roles.is_empty() && (self.kube.is_none() || kube_user.is_none()) {
            return Err(MgmtError::Forbidden(format!(
                "{id} is not a management caller"
            )));
        }
        Ok(Caller {
            id,
            roles,
            kube_user,
        })
    }
}

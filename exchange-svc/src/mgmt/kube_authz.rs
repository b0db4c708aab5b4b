//! Kubernetes SubjectAccessReview (`authorization.k8s.io/v1`) as an alternative to the
//! callers table: a caller presenting a service-account token gets a role when the API
//! server says its user may use verb ROLE on resource `management` of group
//! `meshpass.io` (grant it with a ClusterRole; see README "Management API").

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{self, HeaderValue};
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::config::Role;
use super::error::{Dependency, MgmtError};
use crate::config::TokenReviewConfig;
use crate::tokenreview::{bearer_header, kube_client, read_answer, ReviewSetupError};

/// The API group of the management resource.
pub const GROUP: &str = "meshpass.io";
/// The resource the verbs apply to.
pub const RESOURCE: &str = "management";

/// `[management.kubernetes]`: where the API server is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeAuthzConfig {
    /// API server base URL (unless `in_cluster`).
    #[serde(default)]
    pub url: Option<String>,
    /// Use the pod's in-cluster configuration.
    #[serde(default)]
    pub in_cluster: bool,
    /// PEM CA bundle of the API server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File with the service's own bearer token (re-read on every review).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Timeout of one review.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The `kubernetes_service_account` issuer (`iss`) of this API server's cluster:
    /// only its tokens are reviewed (a service account of the same name in another
    /// cluster is someone else). Optional when exactly one such issuer is configured.
    #[serde(default)]
    pub issuer: Option<String>,
}

fn default_timeout() -> u64 {
    5
}

impl KubeAuthzConfig {
    pub(crate) fn client_config(&self) -> TokenReviewConfig {
        TokenReviewConfig {
            url: self.url.clone(),
            in_cluster: self.in_cluster,
            ca_file: self.ca_file.clone(),
            bearer_token_file: self.bearer_token_file.clone(),
            audiences: Vec::new(),
            timeout_secs: self.timeout_secs,
        }
    }

    /// Checks the section (field names under `management.kubernetes`), by the same
    /// rule as `issuers[].token_review`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.client_config()
            .check("management.kubernetes")
            .map_err(|e| match e {
                crate::config::ConfigError::Invalid { field, reason } => (field, reason),
                e => ("management.kubernetes".into(), e.to_string()),
            })
    }
}

impl KubeAuthzConfig {
    /// The issuer whose service-account tokens are reviewed, among `policy`'s issuers.
    pub fn reviewed_issuer(
        &self,
        policy: &meshpass_core::policy::ValidationPolicy,
    ) -> Result<String, (String, String)> {
        use meshpass_core::policy::SubjectFormat;
        let kube: Vec<&str> = policy
            .issuers
            .iter()
            .filter(|i| i.subject_format == SubjectFormat::KubernetesServiceAccount)
            .map(|i| i.issuer.as_str())
            .collect();
        let field = "management.kubernetes.issuer".to_string();
        match (&self.issuer, kube.as_slice()) {
            (Some(i), _) if kube.contains(&i.as_str()) => Ok(i.clone()),
            (Some(i), _) => Err((
                field,
                format!("{i:?} is not an [[issuers]] entry with subject_format = \"kubernetes_service_account\""),
            )),
            (None, [one]) => Ok((*one).to_string()),
            (None, []) => Err((
                "management.kubernetes".into(),
                "reviews service-account callers, but no [[issuers]] entry has subject_format = \"kubernetes_service_account\"".into(),
            )),
            (None, _) => Err((
                field,
                "several kubernetes_service_account issuers are configured: name the one of this API server's cluster".into(),
            )),
        }
    }
}

/// Asks the API server whether a user may act in a role.
#[derive(Clone)]
pub struct AccessReviewer {
    client: kube::Client,
    bearer_token_file: Option<PathBuf>,
    timeout: Duration,
}

impl std::fmt::Debug for AccessReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AccessReviewer {
    /// A reviewer for `cfg` (inside a tokio runtime).
    pub fn new(cfg: &KubeAuthzConfig) -> Result<Self, ReviewSetupError> {
        let (client, bearer_token_file, timeout) = kube_client(&cfg.client_config(), None)?;
        Ok(AccessReviewer {
            client,
            bearer_token_file,
            timeout,
        })
    }

    fn request(
        &self,
        user: &UserInfo,
        role: Role,
    ) -> Result<http::Request<kube::client::Body>, MgmtError> {
        let internal = |e: String| MgmtError::Internal(format!("SubjectAccessReview: {e}"));
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                // Everything the TokenReview said of the user: "User but not Groups"
                // asks about a user in no group, and a role granted to the namespace's
                // service accounts (a group) would be refused.
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    verb: Some(role.as_str().into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let body = serde_json::to_vec(&review).map_err(|e| internal(e.to_string()))?;
        let mut req = kube::core::Request::new(SubjectAccessReview::url_path(&(), None))
            .create(&PostParams::default(), body)
            .map_err(|e| internal(e.to_string()))?;
        if let Some(p) = &self.bearer_token_file {
            // Unreadable now (being rewritten): the API cannot be asked, try again.
            let v = bearer_header(p).map_err(|e| {
                tracing::warn!(error = %e, "SubjectAccessReview bearer token unreadable");
                MgmtError::Unavailable(Dependency::KubernetesApi)
            })?;
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        req.headers_mut().insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Ok(req.map(kube::client::Body::from))
    }

    async fn ask(&self, user: &UserInfo, role: Role) -> Result<bool, MgmtError> {
        let down = |e: String| {
            tracing::warn!(error = %e, "SubjectAccessReview failed");
            MgmtError::Unavailable(Dependency::KubernetesApi)
        };
        let resp = self
            .client
            .send(self.request(user, role)?)
            .await
            .map_err(|e| down(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(down(format!("API server answered {}", resp.status())));
        }
        let bytes = read_answer(resp).await.map_err(down)?;
        let answer: SubjectAccessReview =
            serde_json::from_slice(&bytes).map_err(|e| down(format!("bad answer: {e}")))?;
        let status = answer.status.unwrap_or_default();
        Ok(status.allowed && status.denied != Some(true))
    }

    /// Whether `user` (`system:serviceaccount:NS:SA`, as the TokenReview answered it)
    /// may act as `role`; fails closed.
    pub async fn allows(&self, user: &UserInfo, role: Role) -> Result<bool, MgmtError> {
        tokio::time::timeout(self.timeout, self.ask(user, role))
            .await
            .map_err(|_| MgmtError::Unavailable(Dependency::KubernetesApi))?
    }
}

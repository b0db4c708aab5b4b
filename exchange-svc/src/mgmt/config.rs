//! `[management]`: the management API's listener and who may call it.

use std::net::SocketAddr;

use meshpass_core::{Audience, SpiffeIdPattern};
use serde::{Deserialize, Serialize};

/// A management role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read mappings, scopes, export, audit, keys status, stats.
    Read,
    /// Create, change, delete and import mappings and scopes.
    Write,
    /// Rotate and retire signing keys.
    Keys,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Keys => "keys",
        }
    }
}

/// `[[management.callers]]`: callers whose SPIFFE ID matches `id` get `roles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRoles {
    /// SPIFFE ID pattern (`spiffe://td/exact`, `spiffe://td/prefix/*`); a Kubernetes
    /// service-account token's subject is `spiffe://TD/ns/NS/sa/SA`.
    pub id: String,
    /// Roles granted (a caller matching several entries gets all their roles).
    pub roles: Vec<Role>,
}

/// `[management]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// Whether the API runs (it never runs without `callers`).
    pub enabled: bool,
    /// Listen address; never the token endpoint's.
    pub listen: SocketAddr,
    /// `aud` a management token must carry (one of); empty: the issuer's own audiences.
    /// Set it, so a subject token minted for exchanges is no management credential.
    pub audiences: Vec<String>,
    /// Who may call the API, and with which roles.
    pub callers: Vec<CallerRoles>,
    /// Refused exchanges written to the audit log per second (the rest are counted).
    pub refusal_audit_per_second: f64,
    /// Burst of refused exchanges written to the audit log.
    pub refusal_audit_burst: u32,
    /// Kubernetes SubjectAccessReview for callers with service-account tokens, on top of
    /// (or instead of) `callers`.
    pub kubernetes: Option<super::kube_authz::KubeAuthzConfig>,
    /// Accept management tokens on connections whose identity is unknown (no mTLS peer,
    /// no proxy XFCC, not a local loopback operator). Unsafe: a copied token then works
    /// from anywhere that reaches the port.
    pub insecure_unbound_callers: bool,
    /// `[management.tls]`: serve the API over TLS on `listen`; a verified client
    /// certificate's SPIFFE ID binds the management token (as the service's sidecar's
    /// XFCC does in a mesh). Same keys as `[server.tls]` but `listen`.
    pub tls: Option<crate::config::TlsConfig>,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            audiences: Vec::new(),
            callers: Vec::new(),
            refusal_audit_per_second: 5.0,
            refusal_audit_burst: 20,
            kubernetes: None,
            insecure_unbound_callers: false,
            tls: None,
        }
    }
}

/// A bad `[management]` value: the dotted field and why.
pub type FieldError = (String, String);

impl ManagementConfig {
    /// Checks the section; `token_listen` and `tls_listen` are the token endpoint's
    /// listeners (`server.listen`, `server.tls.listen`).
    pub fn validate(
        &self,
        token_listen: SocketAddr,
        tls_listen: Option<SocketAddr>,
    ) -> Result<(), FieldError> {
        use crate::config::listeners_overlap;
        let bad = |f: &str, r: &str| Err((format!("management.{f}"), r.to_string()));
        if listeners_overlap(self.listen, token_listen) {
            return bad("listen", "must differ from server.listen (the token port)");
        }
        if tls_listen.is_some_and(|t| listeners_overlap(self.listen, t)) {
            return bad(
                "listen",
                "must differ from server.tls.listen (the TLS token port)",
            );
        }
        for a in &self.audiences {
            if let Err(e) = Audience::parse(a) {
                return bad("audiences", &e.to_string());
            }
        }
        for (i, c) in self.callers.iter().enumerate() {
            if let Err(e) = SpiffeIdPattern::parse(&c.id) {
                return Err((format!("management.callers[{i}].id"), e.to_string()));
            }
            if c.roles.is_empty() {
                return Err((
                    format!("management.callers[{i}].roles"),
                    "at least one role is required".into(),
                ));
            }
        }
        if !(self.refusal_audit_per_second.is_finite() && self.refusal_audit_per_second > 0.0) {
            return bad("refusal_audit_per_second", "must be a positive number");
        }
        if self.refusal_audit_burst == 0 {
            return bad("refusal_audit_burst", "must be at least 1");
        }
        if let Some(k) = &self.kubernetes {
            k.validate()?;
        }
        Ok(())
    }

    /// Why the API will not start, if it will not.
    pub fn disabled_reason(&self) -> Option<&'static str> {
        if !self.enabled {
            Some("management.enabled = false")
        } else if self.callers.is_empty() && self.kubernetes.is_none() {
            Some("no [[management.callers]] nor [management.kubernetes] configured: the API never runs open")
        } else {
            None
        }
    }
}

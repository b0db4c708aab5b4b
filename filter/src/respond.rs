//! Local answers and header writes: allow (rewrite `authorization`), deny (JSON error,
//! `WWW-Authenticate` / `Retry-After`), and delivering an outcome to a waiter.

use meshpass_core::ValidationError;

use crate::api::{Counter, Host, Verdict};
use crate::config::{FailureMode, Mode};
use crate::headers::{credential_headers, SUBJECT_HEADER};
use crate::outcome::Outcome;
use crate::worker::{Waiter, Worker};

impl Worker {
    pub(crate) fn allow(&mut self, host: &mut dyn Host, participant: &str, subject: &str) {
        let mut v = String::with_capacity(7 + participant.len());
        v.push_str("Bearer ");
        v.push_str(participant);
        host.set_header("authorization", &v);
        if !self.config.bearer {
            host.remove_header(&self.config.token_header);
        }
        if self.config.set_subject_header {
            host.set_header(SUBJECT_HEADER, subject);
        }
        self.bump(Counter::Allowed);
    }

    pub(crate) fn deny_token(
        &mut self,
        host: &mut dyn Host,
        c: Counter,
        desc: &str,
        invalid: bool,
    ) -> Verdict {
        self.bump(c);
        let www = if invalid {
            challenge("invalid_token", desc)
        } else {
            "Bearer".to_string()
        };
        let code = if invalid {
            "invalid_token"
        } else {
            "invalid_request"
        };
        send_error(host, 401, code, desc, Some(&www));
        Verdict::Pause
    }

    pub(crate) fn deny_binding(&mut self, host: &mut dyn Host, known: bool) -> Verdict {
        let e = if known {
            ValidationError::BindingMismatch(self.binding_name())
        } else {
            ValidationError::BindingUnavailable(self.binding_name())
        };
        self.deny_token(host, Counter::DeniedBinding, &e.to_string(), true)
    }

    pub(crate) fn binding_name(&self) -> &'static str {
        match self.config.mode {
            Mode::Server => "peer",
            _ => "own",
        }
    }

    pub(crate) fn deny_validation(&mut self, host: &mut dyn Host, e: ValidationError) -> Verdict {
        match &e {
            ValidationError::BindingMismatch(_) | ValidationError::BindingUnavailable(_) => {
                self.deny_token(host, Counter::DeniedBinding, &e.to_string(), true)
            }
            ValidationError::NoKeys { .. } => {
                self.bump(Counter::DeniedUnavailable);
                let ra = self.config.retry_after_secs.to_string();
                send_error(
                    host,
                    503,
                    "temporarily_unavailable",
                    "signing keys are not available yet",
                    Some(&ra),
                );
                Verdict::Pause
            }
            _ => self.deny_token(host, Counter::DeniedInvalidToken, &e.to_string(), true),
        }
    }

    pub(crate) fn apply(
        &mut self,
        host: &mut dyn Host,
        w: &Waiter,
        outcome: &Outcome,
        subject: &str,
        failure_mode: FailureMode,
    ) {
        match outcome {
            Outcome::Token(t) => {
                if self.config.mode != Mode::NoneInsecure && w.identity.as_deref() != Some(subject)
                {
                    self.deny_binding(host, w.identity.is_some());
                    return;
                }
                // Revoked while the exchange was out.
                if let Some(reason) = self.revoked_reason(subject, t) {
                    self.deny_revoked(host, &reason);
                    return;
                }
                self.allow(host, t, subject);
                host.resume();
            }
            Outcome::InvalidGrant(d) => {
                self.deny_token(host, Counter::DeniedInvalidToken, d, true);
            }
            Outcome::Forbidden(d) => {
                self.bump(Counter::DeniedForbidden);
                // RFC 6750 §3.1: the token is good, the privileges it buys are not enough.
                let www = challenge("insufficient_scope", d);
                send_error(host, 403, "access_denied", d, Some(&www));
            }
            Outcome::RateLimited(ra) => {
                self.bump(Counter::DeniedRateLimited);
                send_error(
                    host,
                    429,
                    "slow_down",
                    "token exchange is rate limited",
                    Some(&ra.to_string()),
                );
            }
            // Fail open only a request that would have been served: bound to the
            // exchanged subject (a request joining another's exchange was never
            // validated itself), and that subject not revoked. Without a known subject
            // (the owner worker gone), 503, in every mode: its revocation is unknown.
            Outcome::Unavailable(_)
                if failure_mode == FailureMode::Allow && !subject.is_empty() =>
            {
                if self.config.mode != Mode::NoneInsecure && w.identity.as_deref() != Some(subject)
                {
                    self.deny_binding(host, w.identity.is_some());
                    return;
                }
                if let Some(reason) = self.revoked_subject(subject) {
                    self.deny_revoked(host, &reason);
                    return;
                }
                // Fail open: forward without any token, never the subject token.
                self.bump(Counter::FailOpen);
                for name in credential_headers(&self.config) {
                    host.remove_header(name);
                }
                if self.config.set_subject_header {
                    host.remove_header(SUBJECT_HEADER);
                }
                host.resume();
            }
            Outcome::Unavailable(ra) | Outcome::Faulty(ra) => {
                self.bump(Counter::DeniedUnavailable);
                send_error(
                    host,
                    503,
                    "temporarily_unavailable",
                    "token exchange is unavailable",
                    Some(&ra.to_string()),
                );
            }
        }
    }
}

/// A `Bearer` challenge with an RFC 6750 error code and the description, made safe for
/// a quoted string.
fn challenge(code: &str, desc: &str) -> String {
    format!(
        "Bearer error=\"{code}\", error_description=\"{}\"",
        meshpass_core::oauth::error_description(desc)
    )
}

/// Sends a JSON error (`{error, error_description}`) with optional
/// `WWW-Authenticate` (401/403) or `Retry-After` (429/503).
pub(crate) fn send_error(
    host: &mut dyn Host,
    status: u32,
    code: &str,
    desc: &str,
    extra: Option<&str>,
) {
    let desc = meshpass_core::oauth::error_description(desc);
    let body = serde_json::json!({"error": code, "error_description": desc}).to_string();
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    match (status, extra) {
        (401 | 403, Some(v)) => headers.push(("www-authenticate", v)),
        (429 | 503, Some(v)) => headers.push(("retry-after", v)),
        _ => {}
    }
    host.send_response(status, &headers, body.as_bytes());
}

//! Getting, renewing and replacing the service's Vault token.

use super::client::{VaultClient, VaultError};
use super::config::AuthConfig;
use super::secret::Secret;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often a `token_file` is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(1);
/// Retry delays after failed logins or renewals (exponential with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What Vault says about the current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    /// Remaining lifetime; `None` for tokens that never expire (root, TTL 0).
    pub ttl: Option<Duration>,
    /// Whether `renew-self` can extend it.
    pub renewable: bool,
}

/// The longest token TTL believed: a longer one (Vault's own default maximum is 32
/// days) is read as this, so the renewal instant computed from it cannot overflow.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl TokenInfo {
    fn from_secs(ttl: u64, renewable: bool) -> TokenInfo {
        TokenInfo {
            ttl: (ttl > 0).then(|| Duration::from_secs(ttl).min(MAX_TOKEN_TTL)),
            renewable,
        }
    }
}

/// Exponential backoff with "equal jitter" (half fixed, half random).
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
    }
}

/// Logs in with the configured method and keeps the token alive.
pub struct Auth {
    cfg: AuthConfig,
    client: Arc<VaultClient>,
    reauth: Notify,
    /// sha256 of the token file content last loaded (`token_file` only).
    file_digest: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("method", &self.cfg.method())
            .finish_non_exhaustive()
    }
}

fn read_secret_file(path: &Path) -> Result<(Secret, [u8; 32]), VaultError> {
    let (digest, secret) = read_secret_file_digest(path)?;
    Ok((secret?, digest))
}

/// The file's digest once it could be read, and the secret it holds (empty or not
/// UTF-8: an error): a caller watching the file remembers these bytes either way.
fn read_secret_file_digest(
    path: &Path,
) -> Result<([u8; 32], Result<Secret, VaultError>), VaultError> {
    let raw = std::fs::read(path)
        .map_err(|e| VaultError::Setup(format!("reading {}: {e}", path.display())))?;
    let digest: [u8; 32] = Sha256::digest(&raw).into();
    let secret = match String::from_utf8(raw) {
        Err(_) => Err(VaultError::Setup(format!(
            "{} is not UTF-8",
            path.display()
        ))),
        Ok(text) if text.trim().is_empty() => {
            Err(VaultError::Setup(format!("{} is empty", path.display())))
        }
        Ok(text) => Ok(Secret::new(text.trim())),
    };
    Ok((digest, secret))
}

fn auth_info(v: &Value) -> Result<(Secret, TokenInfo), VaultError> {
    let auth = v
        .get("auth")
        .ok_or_else(|| VaultError::Protocol("login answer without `auth`".into()))?;
    let token = auth
        .get("client_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| VaultError::Protocol("login answer without client_token".into()))?;
    let ttl = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let renewable = auth
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((Secret::new(token), TokenInfo::from_secs(ttl, renewable)))
}

impl Auth {
    /// An authenticator for `cfg` (already resolved: `VAULT_TOKEN` applied).
    pub fn new(cfg: AuthConfig, client: Arc<VaultClient>) -> Auth {
        Auth {
            cfg,
            client,
            reauth: Notify::new(),
            file_digest: Mutex::new(None),
        }
    }

    /// Whether this method can obtain a fresh token by itself (vs. a given token).
    fn can_login(&self) -> bool {
        !matches!(
            self.cfg,
            AuthConfig::Token { .. } | AuthConfig::TokenFile { .. }
        )
    }

    /// Asks the background task to log in again now (a request got 403).
    pub fn request_reauth(&self) {
        self.reauth.notify_one();
    }

    /// Obtains a token with the configured method, installs it in the client and
    /// returns its lifetime.
    pub async fn login(&self) -> Result<TokenInfo, VaultError> {
        let r = self.login_inner().await;
        let stats = self.client.stats();
        match &r {
            Ok(info) => {
                stats.add_login();
                stats.set_token_ttl(info.ttl);
                tracing::info!(
                    method = self.cfg.method(),
                    ttl_secs = info.ttl.map(|t| t.as_secs()),
                    renewable = info.renewable,
                    "vault token obtained"
                );
            }
            Err(e) => {
                stats.add_auth_failure();
                tracing::warn!(method = self.cfg.method(), error = %e, "vault login failed");
            }
        }
        r
    }

    async fn login_inner(&self) -> Result<TokenInfo, VaultError> {
        let (mount, body) = match &self.cfg {
            AuthConfig::Token { token } => {
                let t = token
                    .clone()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| VaultError::Setup("no token configured".into()))?;
                return self.adopt_token(t).await;
            }
            AuthConfig::TokenFile { path } => {
                let (digest, token) = read_secret_file_digest(path)?;
                // Remember the file even when it holds no token (empty while a writer
                // truncates it) or the token is refused: a rewrite is then the signal
                // to try again, and the same bytes are not "a change" to retry at once.
                if let Ok(mut d) = self.file_digest.lock() {
                    *d = Some(digest);
                }
                return self.adopt_token(token?).await;
            }
            AuthConfig::Approle {
                mount,
                role_id,
                secret_id,
                secret_id_file,
            } => {
                let sid = match (secret_id, secret_id_file) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(f)) => Some(read_secret_file(f)?.0),
                    (None, None) => None,
                };
                let mut body = json!({ "role_id": role_id });
                if let Some(s) = sid {
                    body["secret_id"] = json!(s.expose());
                }
                (mount, body)
            }
            AuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            }
            | AuthConfig::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                // Re-read at every login: projected service-account tokens rotate.
                let jwt = read_secret_file(jwt_file)?.0;
                (mount, json!({ "role": role, "jwt": jwt.expose() }))
            }
        };
        let path = format!("auth/{mount}/login");
        let v = self
            .client
            .call(Method::POST, &path, Some(&body), false)
            .await
            .map_err(|e| match e {
                // A login refused with 400 means bad credentials: say so plainly.
                VaultError::Rejected {
                    status, message, ..
                } => VaultError::Rejected {
                    path,
                    status,
                    message,
                },
                other => other,
            })?;
        let (token, info) = auth_info(&v)?;
        self.client.set_token(token);
        Ok(info)
    }

    /// Installs a given token and looks it up (validity and TTL).
    async fn adopt_token(&self, token: Secret) -> Result<TokenInfo, VaultError> {
        let v = self
            .client
            .call_with(
                Method::GET,
                "auth/token/lookup-self",
                None,
                Some(token.clone()),
            )
            .await?;
        let data = v
            .get("data")
            .ok_or_else(|| VaultError::Protocol("lookup-self without data".into()))?;
        let ttl = data.get("ttl").and_then(Value::as_u64).unwrap_or(0);
        let renewable = data
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.client.set_token(token);
        // TTL 0 with an `expire_time` is a token in its last second, not one that never
        // expires (root tokens have none): taken for the latter, the TTL gauge vanished
        // the moment the token expired.
        let expires = data.get("expire_time").is_some_and(|t| !t.is_null());
        if ttl == 0 && expires {
            return Ok(TokenInfo {
                ttl: Some(Duration::ZERO),
                renewable,
            });
        }
        Ok(TokenInfo::from_secs(ttl, renewable))
    }

    /// `auth/token/renew-self`.
    pub async fn renew(&self) -> Result<TokenInfo, VaultError> {
        let r = self
            .client
            .call(
                Method::POST,
                "auth/token/renew-self",
                Some(&json!({})),
                true,
            )
            .await
            .and_then(|v| auth_info(&v).map(|(_, info)| info));
        let stats = self.client.stats();
        match &r {
            Ok(info) => {
                stats.add_renewal();
                // A renewed token always expires: lease 0 is its last second.
                stats.set_token_ttl(Some(info.ttl.unwrap_or_default()));
                tracing::debug!(
                    ttl_secs = info.ttl.map(|t| t.as_secs()),
                    "vault token renewed"
                );
            }
            Err(e) => {
                stats.add_auth_failure();
                tracing::warn!(error = %e, "vault token renewal failed");
            }
        }
        r
    }

    /// Whether the token file now holds something other than what was loaded.
    fn token_file_changed(&self) -> bool {
        let AuthConfig::TokenFile { path } = &self.cfg else {
            return false;
        };
        let Ok(raw) = std::fs::read(path) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&raw).into();
        self.file_digest
            .lock()
            .map(|d| *d != Some(digest))
            .unwrap_or(false)
    }

    /// Resolves when the token file changes (never for other methods).
    async fn wait_token_file_change(&self) {
        if !matches!(self.cfg, AuthConfig::TokenFile { .. }) {
            return std::future::pending().await;
        }
        // Sleeps before every look: this wait always yields, whatever the file holds.
        loop {
            tokio::time::sleep(TOKEN_FILE_POLL).await;
            if self.token_file_changed() {
                return;
            }
        }
    }

    /// Keeps the token alive forever: renews at 2/3 of its TTL, logs in again when
    /// renewal fails or the max TTL is near, re-reads a changed token file, and retries
    /// with backoff. `current` is the result of the initial login, if it succeeded.
    pub async fn run(self: Arc<Self>, mut current: Option<TokenInfo>) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // Between logins asked for by refusals (403s): a token refused soon after it
        // was obtained is refused for its policy, and a new login would not help.
        let mut reauth_backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // When the current token was last renewed (or obtained): its renewal schedule.
        let mut obtained = Instant::now();
        // When it was obtained (login, or a token read): renewals do not move this, since
        // only a token refused right after its login is refused for its policy.
        let mut logged_in = Instant::now();
        // TTL of the last fresh login: a renewal granting much less means the max TTL
        // is near, so the next step is a new login rather than another renewal.
        let mut login_ttl = current.and_then(|i| i.ttl);
        let mut relogin_due = false;
        // Whether the last wait after a failed login was cut short by a refused signature.
        let mut cut_short = false;
        loop {
            let Some(info) = current else {
                match self.login().await {
                    Ok(info) => {
                        current = Some(info);
                        login_ttl = info.ttl;
                        relogin_due = false;
                        obtained = Instant::now();
                        logged_in = obtained;
                        backoff.reset();
                        cut_short = false;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        // After an outage, a refused signature (Vault is back) is worth
                        // a login at once; after a refused login, every refused
                        // signature would be one more login at the request rate. Once
                        // only: a login that fails again waits its whole backoff (Vault
                        // answering 429 to logins while it refuses every signature would
                        // otherwise see a login per request).
                        let early = e.is_transient() && !cut_short;
                        cut_short = false;
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.reauth.notified(), if early => cut_short = true,
                            // A rewritten token file is worth trying at once.
                            _ = self.wait_token_file_change() => {}
                        }
                    }
                }
                continue;
            };
            let act_at = match info.ttl {
                Some(ttl) => obtained + ttl.mul_f64(2.0 / 3.0),
                // Never expires: only a token-file change or a 403 wakes us.
                None => obtained + Duration::from_secs(365 * 24 * 3600),
            };
            let poll = matches!(self.cfg, AuthConfig::TokenFile { .. });
            tokio::select! {
                _ = tokio::time::sleep_until(act_at) => {}
                _ = self.reauth.notified() => {
                    if !self.client.current_token_refused() {
                        // Refused with a token replaced since (a request sent before the
                        // last login): the current one may be fine.
                        continue;
                    }
                    if logged_in.elapsed() < BACKOFF_MAX {
                        // Not one login per refused signature (each a new Vault token,
                        // and an AppRole secret ID's use).
                        tokio::time::sleep(reauth_backoff.next_delay()).await;
                    } else {
                        reauth_backoff.reset();
                    }
                    tracing::info!("vault token refused; authenticating again");
                    current = None;
                    continue;
                }
                _ = tokio::time::sleep(TOKEN_FILE_POLL), if poll => {
                    if self.token_file_changed() {
                        tracing::info!("vault token file changed; reloading");
                        current = None;
                    }
                    continue;
                }
            }
            // Time to renew (or log in again).
            if (relogin_due || !info.renewable) && self.can_login() {
                current = None;
                continue;
            }
            if !info.renewable {
                // A fixed, non-renewable token: nothing to do but look it up again later,
                // or at once when its file is rewritten or a signature is refused.
                current = None;
                let remaining = info.ttl.unwrap_or_default().mul_f64(1.0 / 3.0);
                tokio::select! {
                    _ = tokio::time::sleep(remaining.max(Duration::from_secs(1))) => {}
                    _ = self.wait_token_file_change() => {}
                    _ = self.reauth.notified() => {}
                }
                continue;
            }
            match self.renew().await {
                Ok(new) => {
                    backoff.reset();
                    obtained = Instant::now();
                    // Granted less than a fresh login's TTL: the max TTL caps renewals
                    // from now on, so log in again at 2/3 of what is left (as Vault's
                    // own lifetime watcher does). TTL 0 here means "about to expire".
                    let capped = match (new.ttl, login_ttl) {
                        (Some(granted), Some(full)) => granted < full,
                        (None, Some(_)) => true,
                        _ => false,
                    };
                    if capped && self.can_login() {
                        relogin_due = true;
                        current = Some(TokenInfo {
                            ttl: Some(new.ttl.unwrap_or_default()),
                            renewable: true,
                        });
                    } else if new.ttl.is_none() && login_ttl.is_some() {
                        // A given token at its max TTL: nothing left to renew.
                        tracing::warn!("vault token reached its max TTL and cannot be renewed");
                        current = None;
                        tokio::time::sleep(backoff.next_delay()).await;
                    } else {
                        current = Some(new);
                    }
                }
                // Near the max TTL Vault may answer 500 (or a TTL it then does not
                // honour): a method that can log in does so at once rather than
                // retrying the renewal; a failing login then backs off.
                Err(_) if self.can_login() => {
                    current = None;
                }
                Err(e) if e.is_transient() => {
                    // Vault is down: retry the renewal soon, keep the token meanwhile.
                    let delay = backoff.next_delay();
                    obtained = Instant::now();
                    current = Some(TokenInfo {
                        ttl: Some(delay.mul_f64(1.5)),
                        renewable: true,
                    });
                }
                Err(_) => {
                    // Refused (revoked, max TTL): log in again (or re-read the token).
                    current = None;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

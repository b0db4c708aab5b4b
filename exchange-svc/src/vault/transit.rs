//! [`TransitSigner`]: the [`Signer`] backed by Vault/OpenBao transit.

use super::auth::{Auth, Backoff, TokenInfo};
use super::client::{VaultClient, VaultError, VaultStats};
use super::config::{KeyType, VaultConfig, MAX_SIGN_REQUESTS_IN_FLIGHT};
use crate::signer::{SignError, Signer, SigningAlg, SigningKey};
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

mod batch;
mod keyset;
mod wire;

pub use wire::sign_results;

/// Consecutive failed Vault requests after which the signer reports not ready and
/// fails fast instead of waiting for timeouts (a probe keeps checking).
const DOWN_AFTER_FAILURES: u32 = 3;

/// One published key version.
#[derive(Debug, Clone)]
pub(super) struct Version {
    jwk: Value,
    /// `jwk` ready to check Vault's signatures (None: not checkable; never signs).
    check: Option<super::selfcheck::Published>,
    sig_len: usize,
    /// When this process (or, for versions present at start-up, Vault) first showed it.
    pub(super) published_at: SystemTime,
    /// Its `creation_time` in Vault (the same on every replica; capped at now).
    pub(super) created: SystemTime,
}

/// Everything loaded from `transit/keys/NAME`.
#[derive(Debug)]
pub(super) struct KeySet {
    key_type: KeyType,
    pub(super) alg: SigningAlg,
    pub(super) versions: BTreeMap<u64, Version>,
    jwks: Value,
}

struct SignJob {
    version: u64,
    input: Vec<u8>,
    reply: oneshot::Sender<Result<String, SignError>>,
}

pub(super) struct Inner {
    pub(super) client: Arc<VaultClient>,
    auth: Arc<Auth>,
    pub(super) cfg: VaultConfig,
    keys: RwLock<Option<Arc<KeySet>>>,
    failures: AtomicU32,
    /// Vault answers, but refused the last call that needed the token or the key (403:
    /// a revoked or expired token; 400/404: no such mount or key): not ready until a
    /// call succeeds again.
    refused: AtomicBool,
    /// Vault answers, but its key cannot be loaded as this replica publishes it (its
    /// type changed, no live version left, a malformed answer): the old keys stay
    /// published, signing answers 503 and `/readyz` fails until a read succeeds.
    unusable: AtomicBool,
    /// The lowest and highest published versions, and a generation bumped whenever a
    /// published version's material is replaced: what [`Signer::still_publishes`] reads.
    lowest: AtomicU64,
    highest: AtomicU64,
    material: AtomicU64,
    degraded: Notify,
    in_flight: AtomicUsize,
    /// Woken whenever a sign request in flight finishes (the batch loop stops waiting
    /// for company then: the pipe to Vault is free again).
    request_done: Notify,
    permits: Arc<Semaphore>,
}

/// Aborts background tasks when the signer goes away.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Signs participant tokens with a Vault/OpenBao transit key and publishes its JWKS.
///
/// Background tasks (started by [`TransitSigner::start`], stopped on drop) keep the
/// token alive, re-read the key every `key_refresh_interval`, and coalesce concurrent
/// signatures into `batch_input` requests.
pub struct TransitSigner {
    pub(super) inner: Arc<Inner>,
    tx: mpsc::Sender<SignJob>,
    _tasks: Tasks,
}

impl std::fmt::Debug for TransitSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitSigner")
            .field("key", &self.inner.cfg.key_name)
            .finish_non_exhaustive()
    }
}

impl TransitSigner {
    /// Resolves and validates `cfg` (environment applied), logs in and loads the key,
    /// then starts the background tasks. Must run inside a tokio runtime.
    ///
    /// Fails on configuration errors and when Vault *refuses* (bad credentials,
    /// missing key or policy, unsupported key type). When Vault is merely unreachable it
    /// starts anyway, not ready, and keeps retrying.
    pub async fn start(cfg: &VaultConfig) -> Result<TransitSigner, VaultError> {
        let cfg = cfg
            .resolved()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let client = Arc::new(VaultClient::new(&cfg)?);
        let auth = Arc::new(Auth::new(cfg.auth.clone(), client.clone()));
        let inner = Arc::new(Inner {
            client,
            auth: auth.clone(),
            keys: RwLock::new(None),
            failures: AtomicU32::new(0),
            refused: AtomicBool::new(false),
            unusable: AtomicBool::new(false),
            lowest: AtomicU64::new(0),
            highest: AtomicU64::new(0),
            material: AtomicU64::new(0),
            degraded: Notify::new(),
            in_flight: AtomicUsize::new(0),
            request_done: Notify::new(),
            permits: Arc::new(Semaphore::new(MAX_SIGN_REQUESTS_IN_FLIGHT)),
            cfg,
        });

        let login: Option<TokenInfo> = match auth.login().await {
            Ok(info) => Some(info),
            Err(e) if e.is_transient() || matches!(e, VaultError::Setup(_)) => {
                // Vault down or a credentials file not written yet: retry in background.
                tracing::warn!(error = %e, "vault not reachable at start-up; will retry");
                inner.note_failure();
                None
            }
            Err(e) => return Err(e),
        };
        if login.is_some() {
            match inner.load_keys().await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "transit key not loaded at start-up; will retry");
                }
                Err(e) => return Err(e),
            }
        }

        let (tx, rx) = mpsc::channel(inner.cfg.batch_max_size.saturating_mul(16).max(64));
        let tasks = vec![
            tokio::spawn(auth.run(login)),
            tokio::spawn(refresh_loop(inner.clone())),
            tokio::spawn(batch::batch_loop(inner.clone(), rx)),
        ];
        Ok(TransitSigner {
            inner,
            tx,
            _tasks: Tasks(tasks),
        })
    }

    /// Counters and the token TTL, for metrics.
    pub fn stats(&self) -> Arc<VaultStats> {
        self.inner.client.stats().clone()
    }

    /// Re-reads the transit key now (normally done every `key_refresh_interval`).
    pub async fn refresh(&self) -> Result<(), VaultError> {
        self.inner.load_keys().await
    }

    /// The JWS algorithm of the loaded key, if loaded.
    pub fn alg(&self) -> Option<SigningAlg> {
        self.inner.keyset().map(|k| k.alg)
    }

    /// Consecutive failed Vault requests (0 when the last one succeeded).
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.failures.load(Ordering::Relaxed)
    }
}

impl Inner {
    pub(super) fn keyset(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    fn note_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.refused.store(false, Ordering::Relaxed);
    }

    /// Vault is up but will not do what the signer needs (see [`Inner::refused`]).
    fn note_refused(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.refused.store(true, Ordering::Relaxed);
    }

    fn note_failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
            // Wake the refresh loop so it starts probing for recovery.
            self.degraded.notify_one();
        }
    }

    fn is_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= DOWN_AFTER_FAILURES
    }

    /// Records the outcome of a Vault call for readiness.
    fn observe<T>(&self, r: &Result<T, VaultError>) {
        match r {
            Err(e) => self.observe_err(e),
            // Any answer at all means Vault is up.
            Ok(_) => self.note_success(),
        }
    }

    pub(super) fn observe_err(&self, e: &VaultError) {
        match e {
            e if e.is_transient() => self.note_failure(),
            VaultError::PermissionDenied(_) => {
                self.note_refused();
                self.auth.request_reauth();
            }
            _ => self.note_refused(),
        }
    }

    /// Records a refused or failed key operation (rotate, config): a policy without
    /// them is the documented minimum, so a refusal must not take a signer that can
    /// sign out of readiness.
    pub(super) fn observe_admin_err(&self, e: &VaultError) {
        match e {
            e if e.is_transient() => self.note_failure(),
            VaultError::PermissionDenied(_) => self.auth.request_reauth(),
            _ => {}
        }
    }

    /// `GET {mount}/keys/{name}` → a new [`KeySet`]; the previous one stays on error.
    pub(super) async fn load_keys(&self) -> Result<(), VaultError> {
        let path = format!("{}/keys/{}", self.cfg.transit_mount, self.cfg.key_name);
        let v = match self.client.call(Method::GET, &path, None, true).await {
            Ok(v) => v,
            Err(e) => {
                // While down, only a successful key read brings the signer back: a Vault
                // that answers but cannot give us the key (a restarted server without its
                // mount or key yet) may come back with other key material, which must be
                // published before anything is signed with it.
                if !self.is_down() || e.is_transient() {
                    self.observe_err(&e);
                } else if matches!(e, VaultError::PermissionDenied(_)) {
                    // Vault is back and our token expired meanwhile: log in now, not
                    // when the login backoff (up to 30 s) would next try.
                    self.auth.request_reauth();
                }
                tracing::warn!(error = %e, "reading transit key failed");
                return Err(e);
            }
        };
        let previous = self.keyset();
        let set = match self.build_keyset(&v, previous.as_deref()) {
            Ok(set) => set,
            Err(e) => {
                // Vault would sign with a key this replica cannot publish: 503 and not
                // ready (never tokens no verifier accepts), probing until it can.
                if !self.unusable.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, key = %self.cfg.key_name, "transit key unusable: keeping the published keys, signing answers 503 until a read of the key succeeds");
                }
                return Err(e);
            }
        };
        // Vault is up and the key we publish is the key it holds.
        self.note_success();
        self.unusable.store(false, Ordering::Relaxed);
        // Before the new set is published: a cached token of replaced material or of a
        // version gone is not served once the JWKS no longer holds its key.
        let replaced = previous.as_ref().is_some_and(|p| {
            set.versions
                .iter()
                .any(|(n, v)| p.versions.get(n).is_some_and(|old| old.jwk != v.jwk))
        });
        if replaced {
            self.material.fetch_add(1, Ordering::Relaxed);
        }
        let (lowest, highest) = (
            set.versions.keys().next().copied().unwrap_or(0),
            set.versions.keys().next_back().copied().unwrap_or(0),
        );
        self.lowest.store(lowest, Ordering::Relaxed);
        self.highest.store(highest, Ordering::Relaxed);
        let live: Vec<u64> = set.versions.keys().copied().collect();
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.versions.keys().copied().collect::<Vec<_>>() != live);
        if changed {
            tracing::info!(key = %self.cfg.key_name, versions = ?live, alg = set.alg.as_str(), "transit key loaded");
        }
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::new(set));
        }
        self.client.stats().add_key_load();
        Ok(())
    }

    pub(super) fn current(&self, now: SystemTime) -> Result<SigningKey, SignError> {
        // Read before the set: a replacement in between leaves the older generation,
        // which only makes a cached token of this key be minted again.
        let material = self.material.load(Ordering::Relaxed);
        let set = self.keyset().ok_or(SignError::NotReady)?;
        let lead = self.cfg.publish_lead;
        let version = set
            .versions
            .iter()
            .rev()
            // Never a version verifiers may not have seen yet, not even when it is the
            // only one: answering 503 until its lead has passed is the safe side.
            .find(|(_, v)| v.published_at + lead <= now)
            .map(|(n, _)| *n)
            .ok_or(SignError::NotReady)?;
        Ok(SigningKey {
            kid: format!("{}:v{version}", self.cfg.key_name),
            version,
            alg: set.alg,
            material,
        })
    }

    fn sign_params(&self, set: &KeySet, version: u64) -> Value {
        let mut body = json!({
            "key_version": version,
            "marshaling_algorithm": "jws",
        });
        if let Some(hash) = wire::Prehash::for_alg(set.alg) {
            body["hash_algorithm"] = json!(hash.vault_name());
            body["prehashed"] = json!(true);
        }
        match set.alg {
            SigningAlg::PS256 => {
                body["signature_algorithm"] = json!("pss");
                // JWS PS256 requires the salt length to equal the hash length.
                body["salt_length"] = json!("hash");
            }
            SigningAlg::RS256 => body["signature_algorithm"] = json!("pkcs1v15"),
            SigningAlg::ES256 | SigningAlg::ES384 | SigningAlg::EdDSA => {}
        }
        body
    }

    /// Signs `inputs` with `version` in one request (`batch_input` when more than one);
    /// one result per input, in order.
    async fn sign_many(&self, version: u64, inputs: &[Vec<u8>]) -> Vec<Result<String, SignError>> {
        let n = inputs.len();
        let fail_all = |e: SignError| -> Vec<Result<String, SignError>> {
            let msg = e.to_string();
            let unavailable = matches!(e, SignError::Unavailable(_));
            (0..n)
                .map(|_| {
                    Err(if unavailable {
                        SignError::Unavailable(msg.clone())
                    } else {
                        SignError::Failed(msg.clone())
                    })
                })
                .collect()
        };
        let Some(set) = self.keyset() else {
            return (0..n).map(|_| Err(SignError::NotReady)).collect();
        };
        if self.unusable.load(Ordering::Relaxed) {
            return fail_all(SignError::Unavailable(
                "the transit key in Vault is not the key this replica publishes".into(),
            ));
        }
        let Some(ver) = set.versions.get(&version) else {
            return fail_all(SignError::Failed(format!(
                "key version {version} is not live"
            )));
        };
        // Chosen before a key read found other material under this version (published
        // again, now): it waits out its lead like any new key.
        if ver.published_at + self.cfg.publish_lead > SystemTime::now() {
            return (0..n).map(|_| Err(SignError::NotReady)).collect();
        }
        let digests = wire::Prehash::for_alg(set.alg).map(|hash| hash.digests(inputs));
        let body = wire::sign_body(
            &self.sign_params(&set, version),
            digests.as_deref().unwrap_or(inputs),
        );
        let path = format!("{}/sign/{}", self.cfg.transit_mount, self.cfg.key_name);
        self.client.stats().add_sign_request(n);
        let r = self.client.call_raw(Method::POST, &path, body).await;
        self.observe(&r);
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, n, "transit sign failed");
                return fail_all(match e {
                    VaultError::Unavailable(m) => SignError::Unavailable(m),
                    // A refused token is being replaced: a retry will work (→ 503).
                    VaultError::PermissionDenied(p) => {
                        SignError::Unavailable(format!("permission denied on {p}"))
                    }
                    // Vault answers but cannot sign with the key (gone after a dev
                    // server restart or a deletion, versions trimmed): the signer is
                    // not ready, and a retry works once Vault holds the key again
                    // (→ 503 + Retry-After, not a 500).
                    e @ (VaultError::NotFound(_) | VaultError::Rejected { .. }) => {
                        SignError::Unavailable(format!("vault cannot sign: {e}"))
                    }
                    other => SignError::Failed(other.to_string()),
                });
            }
        };
        let results = sign_results(&v, n, version, ver.sig_len);
        // One signature per request against the published key (see `selfcheck`).
        let first = inputs
            .iter()
            .zip(&results)
            .find_map(|(i, r)| r.as_ref().ok().map(|s| (i, s)));
        if let Some((input, sig)) = first {
            if !ver.check.as_ref().is_some_and(|c| c.verifies(input, sig)) {
                tracing::error!(key = %self.cfg.key_name, version, "vault signed with key material the service does not publish (the transit key re-created?); reading the key again");
                // Wakes the key refresh, which publishes the new material (signing
                // waits out its lead).
                self.note_failure();
                return fail_all(SignError::Unavailable(format!(
                    "version {version}'s signature does not verify with its published key"
                )));
            }
        }
        results
    }

    /// Runs one request under the in-flight limit and answers its callers.
    async fn dispatch(
        self: Arc<Self>,
        version: u64,
        jobs: Vec<SignJob>,
        permit: OwnedSemaphorePermit,
    ) {
        let (inputs, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let results = self.sign_many(version, &inputs).await;
        // Free the slot before waking the callers, so that a caller's next signature
        // finds nothing in flight and goes out at once instead of waiting for company.
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        self.request_done.notify_waiters();
        let stats = self.client.stats();
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        stats.add_signatures(ok);
        stats.add_sign_errors(results.len() as u64 - ok);
        for (reply, r) in replies.into_iter().zip(results) {
            // The caller may have gone (request cancelled): nothing to do then.
            let _ = reply.send(r);
        }
    }
}

/// Re-reads the key every refresh interval; while Vault is failing, probes with backoff
/// so readiness comes back as soon as Vault answers.
async fn refresh_loop(inner: Arc<Inner>) {
    let mut probe = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let failing = inner.failures.load(Ordering::Relaxed) > 0
            || inner.keyset().is_none()
            || inner.unusable.load(Ordering::Relaxed);
        let wait = if failing {
            probe.next_delay().min(inner.cfg.key_refresh_interval)
        } else {
            probe.reset();
            inner.cfg.key_refresh_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = inner.degraded.notified() => {
                tokio::time::sleep(probe.next_delay()).await;
            }
        }
        if inner.client.has_token() {
            let _ = inner.load_keys().await;
        }
    }
}

#[async_trait]
impl Signer for TransitSigner {
    fn current_key(&self) -> Result<SigningKey, SignError> {
        self.inner.current(SystemTime::now())
    }

    async fn sign(&self, key: &SigningKey, signing_input: &[u8]) -> Result<String, SignError> {
        let set = self.inner.keyset().ok_or(SignError::NotReady)?;
        if key.alg != set.alg || key.kid != format!("{}:v{}", self.inner.cfg.key_name, key.version)
        {
            return Err(SignError::Failed(format!(
                "key {} ({}) does not belong to this signer",
                key.kid,
                key.alg.as_str()
            )));
        }
        if self.inner.is_down() {
            // Fail fast while Vault is known down; the refresh loop probes for recovery.
            // Counted as a failed signature: the signing-failures alert must see the
            // whole outage, not only the requests that reached Vault.
            self.inner.client.stats().add_sign_errors(1);
            return Err(SignError::Unavailable("vault is down (probing)".into()));
        }
        let (reply, rx) = oneshot::channel();
        let job = SignJob {
            version: key.version,
            input: signing_input.to_vec(),
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| SignError::Unavailable("signer stopped".into()))?;
        rx.await
            .map_err(|_| SignError::Unavailable("signer stopped".into()))?
    }

    fn jwks(&self) -> Value {
        self.inner
            .keyset()
            .map(|k| k.jwks.clone())
            .unwrap_or_else(|| json!({ "keys": [] }))
    }

    fn is_ready(&self) -> bool {
        // Ready means able to sign: a version has waited out the publish lead.
        self.inner.current(SystemTime::now()).is_ok()
            && self.inner.client.has_token()
            && !self.inner.is_down()
            && !self.inner.refused.load(Ordering::Relaxed)
            && !self.inner.unusable.load(Ordering::Relaxed)
    }

    fn still_publishes(&self, key: &SigningKey) -> bool {
        let i = &self.inner;
        key.material == i.material.load(Ordering::Relaxed)
            && (i.lowest.load(Ordering::Relaxed)..=i.highest.load(Ordering::Relaxed))
                .contains(&key.version)
    }
}

//! Shared test helpers: ES256 key pairs and JWT-SVIDs minted at test time, and a mock
//! of the filter's host interface that records everything the logic does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod http;
pub mod raw_host;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_filter::api::{CallResponse, Counter, Gauge, HeaderMap, Host, Level, SharedError};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

/// An ES256 signing key with its `kid`.
pub struct Key {
    pub kid: String,
    pub sk: SigningKey,
}

impl Key {
    pub fn new(kid: &str) -> Key {
        Key {
            kid: kid.to_string(),
            sk: SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    /// The public JWK (JSON object text).
    pub fn jwk(&self) -> String {
        let p = self.sk.verifying_key().to_encoded_point(false);
        format!(
            r#"{{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"{}","x":"{}","y":"{}"}}"#,
            self.kid,
            URL_SAFE_NO_PAD.encode(p.x().unwrap()),
            URL_SAFE_NO_PAD.encode(p.y().unwrap())
        )
    }

    /// Signs `claims` (a JSON object) as a compact JWS.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, self.kid);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = self.sk.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// A JWT-SVID for `sub`, valid for `ttl` seconds from `now`.
    pub fn svid(&self, iss: &str, aud: &str, sub: &str, now: u64, ttl: u64) -> String {
        self.sign(&serde_json::json!({
            "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl
        }))
    }
}

/// A JWKS document of the given keys.
pub fn jwks(keys: &[&Key]) -> String {
    let ks: Vec<String> = keys.iter().map(|k| k.jwk()).collect();
    format!(r#"{{"keys":[{}]}}"#, ks.join(","))
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A local answer the mock recorded.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A dispatched call.
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub token: u32,
    pub from_ctx: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Dispatched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Mock host: per-context header maps, properties, shared data with CAS, recorded
/// dispatches, local replies, resumes and metrics.
#[derive(Default)]
pub struct Mock {
    pub now_ms: u64,
    pub ctx: u32,
    pub headers: HashMap<u32, Vec<(String, String)>>,
    pub props: HashMap<String, Vec<u8>>,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    next_token: u32,
    pub dispatched: Vec<Dispatched>,
    pub replies: HashMap<u32, Reply>,
    pub resumed: Vec<u32>,
    pub counters: HashMap<&'static str, u64>,
    pub gauges: HashMap<&'static str, u64>,
    pub latencies: Vec<u64>,
    pub logs: RefCell<Vec<String>>,
    /// The lines of `logs` logged at warn.
    pub warns: RefCell<Vec<String>>,
    pub fail_dispatch: bool,
    pub gone: HashSet<u32>,
    pub header_reads: RefCell<Vec<String>>,
    /// Every host call, by `Host` method name, in order (the hit path's regression
    /// tests count them).
    pub calls: RefCell<Vec<&'static str>>,
    pub header_writes: Vec<String>,
    /// Registered shared queues and what was enqueued on them (name, message).
    pub queues: Vec<String>,
    pub enqueued: Vec<(String, Vec<u8>)>,
}

impl Mock {
    pub fn new(now_ms: u64) -> Mock {
        Mock {
            now_ms,
            next_cas: 1,
            next_token: 1,
            ..Default::default()
        }
    }

    /// Warn lines holding `needle`.
    pub fn warnings(&self, needle: &str) -> usize {
        self.warns
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Starts a request on context `ctx` with these headers (names lower-case).
    pub fn request(&mut self, ctx: u32, headers: &[(&str, &str)]) {
        self.ctx = ctx;
        self.headers.insert(
            ctx,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    pub fn req_header(&self, ctx: u32, name: &str) -> Option<String> {
        self.headers
            .get(&ctx)?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_prop(&mut self, path: &[&str], v: &str) {
        self.props.insert(path.join("."), v.as_bytes().to_vec());
    }

    /// The host calls made since the last call of this (and forgets them).
    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(c.name()).copied().unwrap_or(0)
    }
}

impl Host for Mock {
    fn now_ms(&self) -> u64 {
        self.calls.borrow_mut().push("now_ms");
        self.now_ms
    }
    fn log(&self, level: Level, msg: &str) {
        self.calls.borrow_mut().push("log");
        self.logs.borrow_mut().push(msg.to_string());
        if level == Level::Warn {
            self.warns.borrow_mut().push(msg.to_string());
        }
    }
    fn header(&self, name: &str) -> Option<String> {
        self.calls.borrow_mut().push("header");
        self.header_reads.borrow_mut().push(name.to_string());
        self.req_header(self.ctx, name)
    }
    fn headers(&self) -> HeaderMap {
        self.calls.borrow_mut().push("headers");
        self.header_reads.borrow_mut().push("*".to_string());
        self.headers
            .get(&self.ctx)
            .map(|h| HeaderMap::encode(h.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))))
            .unwrap_or_default()
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.calls.borrow_mut().push("set_header");
        self.header_writes.push(name.to_string());
        let h = self.headers.entry(self.ctx).or_default();
        h.retain(|(k, _)| k != name);
        h.push((name.to_string(), value.to_string()));
    }
    fn remove_header(&mut self, name: &str) {
        self.calls.borrow_mut().push("remove_header");
        self.header_writes.push(format!("-{name}"));
        if let Some(h) = self.headers.get_mut(&self.ctx) {
            h.retain(|(k, _)| k != name);
        }
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.calls.borrow_mut().push("property");
        self.props.get(&path.join(".")).cloned()
    }
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.calls.borrow_mut().push("shared_get");
        // As host.rs: an emptied key reads as absent.
        self.shared.get(key).filter(|(v, _)| !v.is_empty()).cloned()
    }
    fn shared_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        self.calls.borrow_mut().push("shared_set");
        // As Envoy (proxy-wasm-cpp-host SharedData::set): the CAS is checked only
        // against an existing key; a CAS for an absent key creates it.
        if let (Some(c), Some((_, current))) = (cas, self.shared.get(key)) {
            if *current != c {
                return Err(SharedError::CasMismatch);
            }
        }
        match value {
            Some(v) => {
                self.next_cas += 1;
                self.shared
                    .insert(key.to_string(), (v.to_vec(), self.next_cas));
            }
            // Envoy cannot delete a key: "deleting" leaves it with an empty value.
            None => {
                self.next_cas += 1;
                self.shared
                    .insert(key.to_string(), (Vec::new(), self.next_cas));
            }
        }
        Ok(())
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, String> {
        self.calls.borrow_mut().push("dispatch");
        if self.fail_dispatch {
            return Err("no such cluster".into());
        }
        let token = self.next_token;
        self.next_token += 1;
        self.dispatched.push(Dispatched {
            token,
            from_ctx: self.ctx,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8(body.to_vec()).unwrap(),
        });
        Ok(token)
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.calls.borrow_mut().push("send_response");
        self.replies.insert(
            self.ctx,
            Reply {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: String::from_utf8(body.to_vec()).unwrap(),
            },
        );
    }
    fn set_effective_context(&mut self, context_id: u32) -> bool {
        self.calls.borrow_mut().push("set_effective_context");
        if self.gone.contains(&context_id) {
            return false;
        }
        self.ctx = context_id;
        true
    }
    fn resume(&mut self) {
        self.calls.borrow_mut().push("resume");
        self.resumed.push(self.ctx);
    }
    fn register_queue(&mut self, name: &str) -> bool {
        self.calls.borrow_mut().push("register_queue");
        if !self.queues.iter().any(|q| q == name) {
            self.queues.push(name.to_string());
        }
        true
    }
    fn enqueue(&mut self, name: &str, msg: &[u8]) -> bool {
        self.calls.borrow_mut().push("enqueue");
        if !self.queues.iter().any(|q| q == name) {
            return false;
        }
        self.enqueued.push((name.to_string(), msg.to_vec()));
        true
    }
    fn count(&mut self, c: Counter, n: u64) {
        self.calls.borrow_mut().push("count");
        *self.counters.entry(c.name()).or_default() += n;
    }
    fn record_latency_ms(&mut self, ms: u64) {
        self.calls.borrow_mut().push("record_latency_ms");
        self.latencies.push(ms);
    }
    fn gauge(&mut self, g: Gauge, value: u64) {
        self.calls.borrow_mut().push("gauge");
        self.gauges.insert(g.name(), value);
    }
}

/// An exchange service answer.
pub fn ok_response(token: &str, expires_in: u64) -> CallResponse {
    CallResponse {
        status: Some(200),
        retry_after: None,
        body: serde_json::json!({
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": "read"
        })
        .to_string()
        .into_bytes(),
    }
}

pub fn error_response(status: u16, code: &str, retry_after: Option<&str>) -> CallResponse {
    CallResponse {
        status: Some(status),
        retry_after: retry_after.map(String::from),
        body: serde_json::json!({"error": code, "error_description": format!("{code} says the service")})
            .to_string()
            .into_bytes(),
    }
}

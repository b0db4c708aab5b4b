//! A Kubernetes API server double for the TokenReview endpoint: HTTPS with a CA and
//! server certificate generated at test time (rcgen), speaking the real
//! `authentication.k8s.io/v1` wire format (`POST /apis/authentication.k8s.io/v1/tokenreviews`,
//! a `TokenReview` in, the same `TokenReview` with `status` out, `201 Created`; a
//! `Status` object with the error code otherwise). It records every review and the
//! `Authorization` header it came with. It also answers `authorization.k8s.io/v1`
//! SubjectAccessReviews: allowed when the verb is one it was told to allow.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_rustls::rustls;

/// One review as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request body (a `TokenReview`).
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
}

/// What the double answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `201` with this `status` object.
    Status(Value),
    /// This HTTP error code with a `Status` body (`kind: Status`, `status: Failure`).
    Fail(u16),
}

#[derive(Clone)]
struct Shared {
    reviews: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Reply>>,
    access_reviews: Arc<Mutex<Vec<Received>>>,
    allowed_verbs: Arc<Mutex<Vec<String>>>,
}

async fn access_reviews(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let Ok(mut body) = serde_json::from_str::<Value>(&body) else {
        return failure(400, "BadRequest", "body is not JSON");
    };
    s.access_reviews.lock().unwrap().push(Received {
        body: body.clone(),
        authorization: header("authorization"),
        content_type: header("content-type"),
    });
    let type_ok = |field: &str, want: &str| body[field].is_null() || body[field] == want;
    if !type_ok("apiVersion", "authorization.k8s.io/v1") || !type_ok("kind", "SubjectAccessReview")
    {
        return failure(
            400,
            "BadRequest",
            "not an authorization.k8s.io/v1 SubjectAccessReview",
        );
    }
    let attrs = &body["spec"]["resourceAttributes"];
    if !body["spec"]["user"].is_string() || !attrs.is_object() {
        return failure(
            422,
            "Invalid",
            "spec.user and spec.resourceAttributes: Required value",
        );
    }
    let verb = attrs["verb"].as_str().unwrap_or("").to_string();
    let allowed = s.allowed_verbs.lock().unwrap().contains(&verb);
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SubjectAccessReview");
    body["metadata"] = json!({"creationTimestamp": null});
    body["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by the test double"})
    } else {
        json!({"allowed": false})
    };
    (StatusCode::CREATED, Json(body))
}

/// A running double (stops with the test's runtime).
pub struct KubeApi {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// PEM of the CA that signed the server certificate.
    pub ca_pem: String,
    /// `ca_pem` written to a file.
    pub ca_file: PathBuf,
    shared: Shared,
    _dir: tempfile::TempDir,
}

async fn token_reviews(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_string())
    };
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => return failure(400, "BadRequest", "body is not JSON"),
    };
    s.reviews.lock().unwrap().push(Received {
        body: body.clone(),
        authorization: header("authorization"),
        content_type: header("content-type"),
    });
    // Like the API server: type fields may be omitted (Go clients, OpenBao among them,
    // send none; the path says it), but when present they must match it.
    let type_ok = |field: &str, want: &str| body[field].is_null() || body[field] == want;
    if !type_ok("apiVersion", "authentication.k8s.io/v1") || !type_ok("kind", "TokenReview") {
        return failure(
            400,
            "BadRequest",
            "not an authentication.k8s.io/v1 TokenReview",
        );
    }
    if !body["spec"]["token"].is_string() {
        return failure(422, "Invalid", "spec.token: Required value");
    }
    let answer = s.answer.lock().unwrap().clone();
    match answer {
        Reply::Status(status) => {
            // As the API server does: the request comes back with `status` filled in.
            let mut review = body;
            review["apiVersion"] = json!("authentication.k8s.io/v1");
            review["kind"] = json!("TokenReview");
            review["metadata"] = json!({"creationTimestamp": null});
            review["status"] = status;
            (StatusCode::CREATED, Json(review))
        }
        Reply::Fail(code) => failure(code, "InternalError", "the double was told to fail"),
    }
}

fn failure(code: u16, reason: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        })),
    )
}

impl KubeApi {
    /// The `url` and `ca_file` of this double and a `bearer_token_file` for the service
    /// (written in `dir` with a trailing newline, as `echo` writes it: the service trims
    /// it), as TOML inline-table fields, and that file.
    pub fn explicit(&self, dir: &std::path::Path) -> (String, std::path::PathBuf) {
        let token_file = dir.join("reviewer-token");
        std::fs::write(&token_file, "exchange-sa-token\n").unwrap();
        let fields = format!(
            "url = \"{}\", ca_file = \"{}\", bearer_token_file = \"{}\"",
            self.url,
            self.ca_file.display(),
            token_file.display()
        );
        (fields, token_file)
    }

    /// Starts the double on a free loopback port; it answers `answer` until told
    /// otherwise.
    pub async fn start(answer: Reply) -> KubeApi {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let shared = Shared {
            reviews: Arc::new(Mutex::new(Vec::new())),
            answer: Arc::new(Mutex::new(answer)),
            access_reviews: Arc::new(Mutex::new(Vec::new())),
            allowed_verbs: Arc::new(Mutex::new(Vec::new())),
        };
        let router = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_reviews),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_reviews),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });

        let dir = tempfile::tempdir().unwrap();
        let ca_pem = ca.pem();
        let ca_file = dir.path().join("kube-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        KubeApi {
            url,
            ca_pem,
            ca_file,
            shared,
            _dir: dir,
        }
    }

    /// Changes the answer for the following reviews.
    pub fn answer(&self, answer: Reply) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// Verbs later SubjectAccessReviews allow (any user).
    pub fn allow_verbs(&self, verbs: &[&str]) {
        *self.shared.allowed_verbs.lock().unwrap() = verbs.iter().map(|v| v.to_string()).collect();
    }

    /// Every SubjectAccessReview received so far.
    pub fn access_reviews(&self) -> Vec<Received> {
        self.shared.access_reviews.lock().unwrap().clone()
    }

    /// Every review received so far.
    pub fn reviews(&self) -> Vec<Received> {
        self.shared.reviews.lock().unwrap().clone()
    }

    /// The last review received (panics when there was none).
    pub fn last_review(&self) -> Received {
        self.reviews()
            .last()
            .cloned()
            .expect("the Kubernetes API double received no TokenReview")
    }
}

/// `status` of an authenticated review for `username` valid for `audiences`.
pub fn authenticated(username: &str, uid: &str, audiences: &[&str]) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": username,
            "uid": uid,
            "groups": ["system:serviceaccounts", "system:authenticated"],
        },
        "audiences": audiences,
    })
}

//! Login credentials for tests: JWTs signed with test-only keys (see
//! `tests/fixtures/README.md`) and a mock HTTP auth webhook.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// HS256 secret every test deployment accepts by default
/// (`auth.jwt_secret`).
pub const JWT_SECRET: &str = "gpush-integration-test-secret-0123456789";

/// RS256 signing key (PKCS#1 PEM).
pub const RSA_PRIVATE: &str = "rsa-private.pem";
/// Public key matching [`RSA_PRIVATE`] (SPKI PEM), for `auth.jwt_public_key`.
pub const RSA_PUBLIC: &str = "rsa-public.pem";
/// An unrelated RSA key: tokens signed with it must be refused.
pub const RSA_OTHER_PRIVATE: &str = "rsa-other-private.pem";
/// ES256 (P-256) signing key (PKCS#8 PEM).
pub const EC_PRIVATE: &str = "ec-private.pem";
/// Public key matching [`EC_PRIVATE`] (SPKI PEM), for `auth.jwt_public_key`.
pub const EC_PUBLIC: &str = "ec-public.pem";
/// An unrelated P-256 key: tokens signed with it must be refused.
pub const EC_OTHER_PRIVATE: &str = "ec-other-private.pem";

/// Path of a file in `integration-tests/tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An `exp` one hour from now.
pub fn in_one_hour() -> i64 {
    now() + 3600
}

/// An `exp` one hour ago: well past any verifier's clock-skew leeway.
pub fn an_hour_ago() -> i64 {
    now() - 3600
}

fn claims(uid: &str, exp: i64) -> Value {
    json!({"sub": uid, "exp": exp, "iat": now().min(exp)})
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key)
        .unwrap_or_else(|e| panic!("signing a {algorithm:?} JWT: {e}"))
}

/// An HS256 token for `uid`, valid for an hour, signed with [`JWT_SECRET`].
pub fn hs256(uid: &str) -> String {
    hs256_with(JWT_SECRET, uid, in_one_hour())
}

/// An HS256 token for `uid` expiring at `exp`, signed with `secret`.
pub fn hs256_with(secret: &str, uid: &str, exp: i64) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        &claims(uid, exp),
    )
}

/// An HS256 token for `uid` whose "secret" is the bytes of fixture
/// `public_key`: the classic algorithm-confusion attack on verifiers that
/// let the token pick the algorithm.
pub fn hs256_keyed_with_fixture(public_key: &str, uid: &str) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&read_fixture(public_key)),
        &claims(uid, in_one_hour()),
    )
}

/// An RS256 token for `uid` expiring at `exp`, signed with fixture
/// `private_key` ([`RSA_PRIVATE`] or [`RSA_OTHER_PRIVATE`]).
pub fn rs256(private_key: &str, uid: &str, exp: i64) -> String {
    let key = EncodingKey::from_rsa_pem(&read_fixture(private_key))
        .unwrap_or_else(|e| panic!("fixture {private_key} is not an RSA key: {e}"));
    sign(Algorithm::RS256, &key, &claims(uid, exp))
}

/// An ES256 token for `uid` expiring at `exp`, signed with fixture
/// `private_key` ([`EC_PRIVATE`] or [`EC_OTHER_PRIVATE`]).
pub fn es256(private_key: &str, uid: &str, exp: i64) -> String {
    let key = EncodingKey::from_ec_pem(&read_fixture(private_key))
        .unwrap_or_else(|e| panic!("fixture {private_key} is not an EC key: {e}"));
    sign(Algorithm::ES256, &key, &claims(uid, exp))
}

/// How the mock webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMode {
    /// For a body `{"token":"tok-<uid>"}`: 200 `{"uid":"<uid>"}`; for any
    /// other body: 401.
    Good,
    /// Like `Good`, in the original gpush shape: 200
    /// `{"code":0,"data":{"user_info":{"uid":"<uid>"}}}`, and 200
    /// `{"code":1,"message":"invalid token"}` for a bad token.
    Original,
    /// Waits this long, then answers like `Good`.
    Slow(Duration),
    /// 200 with body `not json`.
    Garbage,
    /// Like `Good`, with `"expires": <unix seconds>` beside the uid.
    GoodUntil(i64),
    /// Like `Original`, with `"expires": <unix seconds>` in `data`.
    OriginalUntil(i64),
}

#[derive(Debug)]
struct WebhookState {
    mode: Mutex<WebhookMode>,
    requests: Mutex<Vec<String>>,
}

/// An HTTP auth webhook on 127.0.0.1:0 whose behaviour a test can switch.
#[derive(Debug)]
pub struct MockWebhook {
    addr: SocketAddr,
    state: Arc<WebhookState>,
    shutdown: CancellationToken,
}

impl MockWebhook {
    /// Starts the webhook answering in `mode`.
    pub async fn start(mode: WebhookMode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock webhook");
        let addr = listener.local_addr().expect("mock webhook address");
        let state = Arc::new(WebhookState {
            mode: Mutex::new(mode),
            requests: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/auth", post(answer))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await;
        });
        Self {
            addr,
            state,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>/auth`, for `auth.webhook_url`.
    pub fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    /// Changes how the webhook answers from now on.
    pub fn set_mode(&self, mode: WebhookMode) {
        *lock(&self.state.mode) = mode;
    }

    /// Every request body received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for MockWebhook {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A webhook URL where nothing listens.
pub fn down_webhook_url() -> String {
    format!("http://127.0.0.1:{}/auth", crate::free_port())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn answer(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    lock(&state.requests).push(text);
    let mode = *lock(&state.mode);
    let uid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .and_then(|token| token.strip_prefix("tok-").map(str::to_owned));
    match (mode, uid) {
        (WebhookMode::Garbage, _) => (StatusCode::OK, "not json").into_response(),
        (WebhookMode::Slow(delay), uid) => {
            tokio::time::sleep(delay).await;
            good(uid)
        }
        (WebhookMode::Good, uid) => good(uid),
        (WebhookMode::Original, Some(uid)) => axum::Json(json!({
            "code": 0,
            "data": {"user_info": {"uid": uid}},
        }))
        .into_response(),
        (WebhookMode::GoodUntil(expires), Some(uid)) => {
            axum::Json(json!({"uid": uid, "expires": expires})).into_response()
        }
        (WebhookMode::OriginalUntil(expires), Some(uid)) => axum::Json(json!({
            "code": 0,
            "data": {"user_info": {"uid": uid}, "expires": expires},
        }))
        .into_response(),
        (WebhookMode::GoodUntil(_), None) => good(None),
        (WebhookMode::Original | WebhookMode::OriginalUntil(_), None) => {
            axum::Json(json!({"code": 1, "message": "invalid token"})).into_response()
        }
    }
}

fn good(uid: Option<String>) -> Response {
    match uid {
        Some(uid) => axum::Json(json!({"uid": uid})).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid token"})),
        )
            .into_response(),
    }
}

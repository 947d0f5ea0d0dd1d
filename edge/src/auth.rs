//! Login: turning a client's token into a uid.
//!
//! Tried in order, as configured: JWT verification (HS256 secret, or an
//! RS256 / ES256 public key; uid = `sub`, `exp` required and enforced), then
//! an HTTP auth webhook. Every failure, including a webhook that is down,
//! slow or answers garbage, is an [`AuthError`] (reply 30003), never a
//! crash.
//!
//! The webhook receives `POST {"token": <data>}` (the login request's `data`
//! as sent) and must answer 2xx with either `{"uid": "<uid>"}` or the
//! original gpush shape `{"code": 0, "data": {"user_info": {"uid": "<uid>"}}}`.
//! Any other answer refuses the login. Either may say when the login
//! expires, in unix seconds: `{"uid": .., "expires": T}`, or
//! `"expires": T` in `data`.
//!
//! A login lasts as long as its token: JWT `exp`, or the webhook's
//! `expires` (none: it never expires, like a token-is-uid login). The
//! connection ends it at that time plus `auth.expiry_leeway` unless the
//! client refreshed it (see `conn/commands/login.rs`).

use crate::config::AuthConfig;
use gpush_common::push::validate_name;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// The largest webhook answer read: a uid fits many times over. A longer
/// answer refuses the login without being read to its end.
pub const MAX_WEBHOOK_ANSWER: usize = 16 * 1024;

/// Why a login was refused. The text goes to the client as `detail`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No verification method is configured.
    #[error("no login method is configured on this server")]
    NotConfigured,
    /// The token is not a string (JWT needs one).
    #[error("token must be a string")]
    NotAString,
    /// JWT verification failed (bad signature, expired, malformed).
    #[error("invalid token: {0}")]
    Jwt(String),
    /// The webhook could not be reached, timed out or answered an error.
    #[error("auth service unavailable")]
    WebhookUnavailable,
    /// The webhook refused the token.
    #[error("token refused by auth service")]
    WebhookRefused,
    /// The webhook answered something that is not a uid, or more than
    /// [`MAX_WEBHOOK_ANSWER`] bytes.
    #[error("auth service answered an unexpected response")]
    WebhookGarbage,
    /// The webhook's `expires` is already past (leeway included).
    #[error("token expired (auth service)")]
    WebhookExpired,
    /// `auth.webhook_max_concurrent` webhook calls are already in flight.
    #[error("auth service busy: too many logins in progress, retry later")]
    WebhookBusy,
    /// The uid is not a valid name.
    #[error("uid {0}")]
    BadUid(gpush_common::NameError),
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthSetupError {
    /// The public key file could not be read.
    #[error("cannot read auth.jwt_public_key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    /// The file is neither an RSA nor an EC public key in PEM.
    #[error("auth.jwt_public_key {0} is not an RSA or EC (P-256) public key in PEM format")]
    BadKey(String),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook client: {0}")]
    Client(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// A successful login: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) uid: String,
    /// When the token expires, in unix seconds; `None`: never.
    pub(crate) expires: Option<u64>,
}

/// The auth webhook: where it is and how many calls may be in flight.
struct Webhook {
    client: reqwest::Client,
    url: String,
    calls: tokio::sync::Semaphore,
}

/// Verifies login tokens.
pub(crate) struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    webhook: Option<Webhook>,
    insecure_token_is_uid: bool,
    max_name_len: usize,
    /// `auth.expiry_leeway`, in seconds.
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("webhook", &self.webhook.as_ref().map(|w| &w.url))
            .field("insecure_token_is_uid", &self.insecure_token_is_uid)
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from config; reads the public key file.
    pub(crate) fn new(config: &AuthConfig, max_name_len: usize) -> Result<Self, AuthSetupError> {
        let jwt = if let Some(secret) = &config.jwt_secret {
            Some((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256, config),
            ))
        } else if let Some(path) = &config.jwt_public_key {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| AuthSetupError::ReadKey {
                path: shown.clone(),
                source,
            })?;
            let (key, algorithm) = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                .map_err(|_| AuthSetupError::BadKey(shown))?;
            Some((key, validation(algorithm, config)))
        } else {
            None
        };
        let webhook = match &config.webhook_url {
            Some(url) => {
                let client = webhook_client(config.webhook_timeout)?;
                Some(Webhook {
                    client,
                    url: url.clone(),
                    calls: tokio::sync::Semaphore::new(config.webhook_max_concurrent),
                })
            }
            None => None,
        };
        if config.insecure_token_is_uid {
            tracing::warn!(
                "auth.insecure_token_is_uid is on: any client can log in as any uid \
                 by sending it as its token; for development only"
            );
        }
        Ok(Self {
            jwt,
            webhook,
            insecure_token_is_uid: config.insecure_token_is_uid,
            max_name_len,
            leeway: config.expiry_leeway.as_secs(),
        })
    }

    /// The uid the token proves and when that login expires, or why not.
    pub(crate) async fn login(&self, token: &Value) -> Result<Login, AuthError> {
        let mut result = Err(AuthError::NotConfigured);
        if let Some((key, validation)) = &self.jwt {
            result = match token.as_str() {
                Some(token) => jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map(|data| Login {
                        uid: data.claims.sub,
                        expires: Some(data.claims.exp),
                    })
                    .map_err(|e| AuthError::Jwt(e.to_string())),
                None => Err(AuthError::NotAString),
            };
        }
        if result.is_err()
            && let Some(webhook) = &self.webhook
        {
            result = webhook
                .login(token)
                .await
                .and_then(|login| match login.expires {
                    Some(expires) if self.ends_at(expires) <= now_secs() => {
                        Err(AuthError::WebhookExpired)
                    }
                    _ => Ok(login),
                });
        }
        if self.insecure_token_is_uid
            && let Some(token) = token.as_str()
        {
            // Only ever alone: the config refuses it beside JWT or a webhook.
            result = Ok(Login {
                uid: token.to_owned(),
                expires: None,
            });
        }
        let login = result?;
        validate_name(&login.uid, self.max_name_len).map_err(AuthError::BadUid)?;
        Ok(login)
    }

    /// When a login whose token expires at `expires` ends: the leeway
    /// later (unix seconds).
    pub(crate) fn ends_at(&self, expires: u64) -> u64 {
        expires.saturating_add(self.leeway)
    }
}

/// The HTTP client of a webhook the edge calls (auth, events): each call
/// bounded by `timeout`. No redirects: a redirect would re-send what the
/// edge sends (a user's token) to wherever the webhook points, and let that
/// host answer (choose the uid). No proxy from the environment either: the
/// webhook is reached directly, as configured.
pub(crate) fn webhook_client(
    timeout: std::time::Duration,
) -> Result<reqwest::Client, AuthSetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| AuthSetupError::Client(e.to_string()))
}

/// Now, in unix seconds.
pub(crate) fn now_secs() -> u64 {
    gpush_common::push::now_us() / 1_000_000
}

fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.expiry_leeway.as_secs();
    validation.validate_nbf = true;
    // jsonwebtoken checks `aud` and `iss` only when the token has them:
    // a configured claim must also be required.
    let mut required = vec!["exp", "sub"];
    if let Some(audience) = &config.jwt_audience {
        validation.set_audience(&[audience]);
        required.push("aud");
    } else {
        validation.validate_aud = false;
    }
    if let Some(issuer) = &config.jwt_issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The webhook's answer: ours, or the original gpush one.
#[derive(Deserialize)]
#[serde(untagged)]
enum WebhookAnswer {
    Plain {
        uid: String,
        #[serde(default)]
        expires: Option<u64>,
    },
    Original {
        code: i64,
        data: OriginalData,
    },
}

#[derive(Deserialize)]
struct OriginalData {
    user_info: OriginalUser,
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Deserialize)]
struct OriginalUser {
    uid: String,
}

impl Webhook {
    /// One webhook call, if a slot is free: the uid it vouches for, and
    /// until when.
    async fn login(&self, token: &Value) -> Result<Login, AuthError> {
        let Ok(_slot) = self.calls.try_acquire() else {
            return Err(AuthError::WebhookBusy);
        };
        let mut response = self
            .client
            .post(&self.url)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "auth webhook unreachable");
                AuthError::WebhookUnavailable
            })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(AuthError::WebhookUnavailable);
        }
        if !status.is_success() {
            return Err(AuthError::WebhookRefused);
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_WEBHOOK_ANSWER as u64)
        {
            return Err(AuthError::WebhookGarbage);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            tracing::warn!(error = %e, "auth webhook body unreadable");
            AuthError::WebhookUnavailable
        })? {
            if body.len() + chunk.len() > MAX_WEBHOOK_ANSWER {
                return Err(AuthError::WebhookGarbage);
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<WebhookAnswer>(&body) {
            Ok(WebhookAnswer::Plain { uid, expires }) => Ok(Login { uid, expires }),
            Ok(WebhookAnswer::Original { code: 0, data }) => Ok(Login {
                uid: data.user_info.uid,
                expires: data.expires,
            }),
            Ok(WebhookAnswer::Original { .. }) => Err(AuthError::WebhookRefused),
            Err(_) => Err(AuthError::WebhookGarbage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-unit-test-secret-of-32-bytes!!";

    fn now() -> u64 {
        now_secs()
    }

    fn hs256(secret: &str, sub: &str, exp: u64) -> Value {
        let token = jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode");
        Value::String(token)
    }

    fn with_secret() -> Authenticator {
        let config = AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        Authenticator::new(&config, 64).expect("auth")
    }

    #[tokio::test]
    async fn hs256_good_expired_and_wrong_key() {
        let auth = with_secret();
        let exp = now() + 60;
        let ok = auth.login(&hs256(SECRET, "alice", exp)).await;
        assert_eq!(
            ok.expect("valid"),
            Login {
                uid: "alice".into(),
                expires: Some(exp)
            }
        );
        let expired = auth.login(&hs256(SECRET, "alice", now() - 60)).await;
        assert!(matches!(expired, Err(AuthError::Jwt(_))), "{expired:?}");
        let wrong = auth.login(&hs256("other", "alice", now() + 60)).await;
        assert!(matches!(wrong, Err(AuthError::Jwt(_))), "{wrong:?}");
        let not_string = auth.login(&json!({"t": 1})).await;
        assert!(matches!(not_string, Err(AuthError::NotAString)));
    }

    #[tokio::test]
    async fn uid_from_token_must_be_a_valid_name() {
        let auth = with_secret();
        let bad = auth.login(&hs256(SECRET, "a\nb", now() + 60)).await;
        assert!(matches!(bad, Err(AuthError::BadUid(_))), "{bad:?}");
    }

    #[tokio::test]
    async fn nothing_configured_refuses_everyone() {
        let auth = Authenticator::new(&AuthConfig::default(), 64).expect("auth");
        assert!(matches!(
            auth.login(&json!("x")).await,
            Err(AuthError::NotConfigured)
        ));
        let insecure = AuthConfig {
            insecure_token_is_uid: true,
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&insecure, 64).expect("auth");
        let dev = auth.login(&json!("bob")).await.expect("dev mode");
        assert_eq!(dev.expires, None, "a token-is-uid login never expires");
        assert_eq!(dev.uid, "bob");
    }

    #[test]
    fn unreadable_key_is_a_setup_error() {
        let config = AuthConfig {
            jwt_public_key: Some("/nonexistent/key.pem".into()),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Authenticator::new(&config, 64),
            Err(AuthSetupError::ReadKey { .. })
        ));
    }
}

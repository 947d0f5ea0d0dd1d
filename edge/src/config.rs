//! Edge configuration: TOML file, then `GPUSH_*` env vars and flags.

use gpush_common::config::{ConfigError, Problems};
use gpush_common::push::DEFAULT_MAX_NAME_LEN;
use gpush_common::rate::Rate;
use gpush_common::subject::{DEFAULT_PREFIX, Subjects};
use gpush_common::telemetry::LogFormat;
use gpush_ingress::config::{
    DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_NATS_URL, PushApiConfig,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default WebSocket port (as in the original gpush).
pub const DEFAULT_WS_PORT: u16 = 9992;
/// Default number of registry shards.
pub const DEFAULT_SHARDS: usize = 64;
/// Default maximum subscriptions (public + private) per connection.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;
/// Default interval between server WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time a connection may stay silent before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default batching interval of writes to one connection.
pub const DEFAULT_WRITE_INTERVAL: Duration = Duration::from_millis(5);
/// Default bound of one connection's outgoing queue, in frames.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;
/// Default bound of one connection's outgoing queue, in bytes.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Default maximum size of a client message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024;
/// Default time given to clients to go on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Upper bound of `auth.webhook_max_concurrent` (a semaphore's permits).
pub const MAX_WEBHOOK_CONCURRENT: usize = 65_536;
/// Shortest accepted `auth.jwt_secret`: 32 bytes, HS256's hash length
/// (RFC 7518 3.2 requires a key at least that long).
pub const MIN_JWT_SECRET_LEN: usize = 32;
/// Default number of auth webhook calls in flight at once per edge.
pub const DEFAULT_WEBHOOK_MAX_CONCURRENT: usize = 64;
/// Default timeout of one auth webhook call.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default maximum number of WebSocket connections one edge holds: about
/// 170 MiB of idle connections (1.7 KiB each), and well within the file
/// limit of `deploy/gpush-edge.service`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default time a client has from its TCP connect until its WebSocket
/// upgrade is done (the HTTP request included).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum number of connections in their handshake at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default requests per second one connection may make, on average.
pub const DEFAULT_REQUEST_RATE: u32 = 100;
/// Default burst of requests one connection may make at once (and the
/// number of refusals, without a pause that refills the bucket, after which
/// it is closed): room for a client that logs in and subscribes
/// `max_subscriptions` topics on reconnect.
pub const DEFAULT_REQUEST_BURST: u32 = 200;

/// Everything `gpush-edge` reads from its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// WebSocket listen address (clients connect to `ws://<addr>/ws`).
    pub ws_addr: SocketAddr,
    /// PEM certificate chain (leaf first) for TLS on `ws_addr`. With
    /// `tls_key`, clients connect to `wss://<addr>/ws` and `/`, `/gpush.js`,
    /// `/healthz`, `/readyz` and `/metrics` are HTTPS; standalone, the push
    /// API serves HTTPS and gRPC over TLS with the same certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Run alone: in-process bus, no NATS or etcd, and the push API served
    /// by this process on `http_addr` and `grpc_addr`.
    pub standalone: bool,
    /// Standalone push API HTTP address (default like ingress).
    pub http_addr: Option<SocketAddr>,
    /// Standalone push API gRPC address (default like ingress).
    pub grpc_addr: Option<SocketAddr>,
    /// NATS servers (each entry may be a comma-separated list).
    pub nats_urls: Vec<String>,
    /// Prefix of every NATS subject; must match ingress's.
    pub subject_prefix: String,
    /// etcd endpoints to register in. Empty: do not register.
    pub etcd_endpoints: Vec<String>,
    /// Unique id of this edge (default: hostname and a random suffix).
    pub node_id: Option<String>,
    /// WebSocket URL clients should use to reach this edge, published in
    /// etcd (default `ws://<ws_addr>/ws`, `wss://` with TLS).
    pub public_url: Option<String>,
    /// TTL of the etcd lease; the record vanishes this long after a crash.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Number of registry shards (locks).
    pub shards: usize,
    /// Maximum subscriptions (public + private) per connection.
    pub max_subscriptions: usize,
    /// Maximum length of a topic or uid, in bytes.
    pub max_name_len: usize,
    /// Maximum size of one client message, in bytes.
    pub max_message: usize,
    /// Maximum number of WebSocket connections (open plus being upgraded);
    /// over it an upgrade is refused with 503 before it happens.
    pub max_connections: usize,
    /// Time a client has from its TCP connect until its WebSocket upgrade
    /// is done; after it the socket is closed. Plain HTTP connections
    /// (`/metrics`, `/healthz`) are closed after it too.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Maximum number of accepted connections not yet upgraded. When that
    /// many are in their handshake, the edge stops accepting until one
    /// finishes; new connections wait in the listen backlog.
    pub max_handshakes: usize,
    /// Requests (text or binary messages) per second one connection may
    /// make on average; 0 = unlimited. Over it: reply 30006.
    pub request_rate: u32,
    /// Requests one connection may make at once. A connection refused
    /// `request_burst` times without pausing long enough to refill its
    /// bucket (`request_burst / request_rate` seconds) is closed with 4002.
    pub request_burst: u32,
    /// Web origins (`scheme://host[:port]`) whose pages may open WebSocket
    /// connections. Empty = any. Requests without an `Origin` header
    /// (non-browser clients) are always allowed; a listed-out origin gets
    /// 403.
    pub allowed_origins: Vec<String>,
    /// Interval of server WebSocket pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Writes to a connection are batched for this long; 0 writes at once.
    #[serde(with = "humantime_serde")]
    pub write_interval: Duration,
    /// Bound of a connection's outgoing queue in frames; a client that
    /// falls this far behind is a slow consumer and is closed.
    pub queue_frames: usize,
    /// Bound of a connection's outgoing queue in bytes (same outcome).
    pub queue_bytes: usize,
    /// How long clients get to go on SIGTERM before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How login tokens are verified.
    pub auth: AuthConfig,
    /// Standalone push API limits and API key.
    pub push: PushApiConfig,
    /// Standalone: how long a publish may take.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Log format: `human` or `json`.
    pub log_format: LogFormat,
}

/// Login verification. With nothing configured every login fails (30003).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret for JWT logins.
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key for JWT
    /// logins.
    pub jwt_public_key: Option<PathBuf>,
    /// Required `aud` claim, if any.
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, if any.
    pub jwt_issuer: Option<String>,
    /// URL of an HTTP auth webhook: POSTed `{"token": <data>}`, answers
    /// `{"uid": "..."}` (or the original gpush shape). Tried for tokens that
    /// JWT verification (if configured) does not accept.
    pub webhook_url: Option<String>,
    /// Timeout of one webhook call.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Webhook calls in flight at once on this edge; a login beyond it is
    /// refused at once (30003, "auth service busy") instead of queueing
    /// behind a slow webhook.
    pub webhook_max_concurrent: usize,
    /// Development only: the token itself is the uid. Never in production;
    /// refused beside JWT or a webhook, and warned about at start-up.
    pub insecure_token_is_uid: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            webhook_url: None,
            webhook_timeout: DEFAULT_WEBHOOK_TIMEOUT,
            webhook_max_concurrent: DEFAULT_WEBHOOK_MAX_CONCURRENT,
            insecure_token_is_uid: false,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            ws_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_WS_PORT)),
            tls_cert: None,
            tls_key: None,
            standalone: false,
            http_addr: None,
            grpc_addr: None,
            nats_urls: vec![DEFAULT_NATS_URL.to_owned()],
            subject_prefix: DEFAULT_PREFIX.to_owned(),
            etcd_endpoints: Vec::new(),
            node_id: None,
            public_url: None,
            lease_ttl: gpush_common::registry::DEFAULT_LEASE_TTL,
            shards: DEFAULT_SHARDS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_message: DEFAULT_MAX_MESSAGE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            request_rate: DEFAULT_REQUEST_RATE,
            request_burst: DEFAULT_REQUEST_BURST,
            allowed_origins: Vec::new(),
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_interval: DEFAULT_WRITE_INTERVAL,
            queue_frames: DEFAULT_QUEUE_FRAMES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            auth: AuthConfig::default(),
            push: PushApiConfig::default(),
            publish_timeout: gpush_common::bus::DEFAULT_PUBLISH_TIMEOUT,
            log_format: LogFormat::Human,
        }
    }
}

impl EdgeConfig {
    /// The per-connection request rate.
    pub fn request_limit(&self) -> Rate {
        Rate {
            per_second: self.request_rate,
            burst: self.request_burst,
        }
    }

    /// Whether a WebSocket upgrade with this `Origin` header value (None:
    /// no header) may proceed: always when `allowed_origins` is empty or
    /// the header is missing, otherwise when it is listed (ASCII case
    /// ignored, as browsers may differ in the case of the host).
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(origin) => self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)),
        }
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        if let Err(e) = Subjects::new(&self.subject_prefix) {
            p.push(e.to_string());
        }
        p.check(
            !self.standalone && self.nats_urls.iter().all(|u| u.trim().is_empty()),
            || "nats_urls must name at least one server (or use standalone)".into(),
        );
        p.check(self.shards == 0, || "shards must be > 0".into());
        p.check(self.max_subscriptions == 0, || {
            "max_subscriptions must be > 0".into()
        });
        p.check(self.max_name_len == 0, || "max_name_len must be > 0".into());
        p.check(self.max_message < 64, || "max_message must be >= 64".into());
        p.check(self.max_connections == 0, || {
            "max_connections must be > 0".into()
        });
        p.check(self.handshake_timeout.is_zero(), || {
            "handshake_timeout must be > 0".into()
        });
        p.check(
            self.max_handshakes > tokio::sync::Semaphore::MAX_PERMITS,
            || {
                format!(
                    "max_handshakes must be <= {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )
            },
        );
        p.check(self.max_handshakes == 0, || {
            "max_handshakes must be > 0".into()
        });
        p.check(self.request_rate > 0 && self.request_burst == 0, || {
            "request_burst must be > 0 (or request_rate 0 for no limit)".into()
        });
        for origin in &self.allowed_origins {
            if let Some(why) = gpush_ingress::config::origin_problem(origin) {
                p.push(format!("allowed_origins: {origin:?} {why}"));
            }
        }
        p.check(self.ping_interval.is_zero(), || {
            "ping_interval must be > 0".into()
        });
        p.check(self.idle_timeout <= self.ping_interval, || {
            format!(
                "idle_timeout ({:?}) must be longer than ping_interval ({:?})",
                self.idle_timeout, self.ping_interval
            )
        });
        p.check(self.queue_frames == 0, || "queue_frames must be > 0".into());
        p.check(self.queue_bytes < 1024, || {
            "queue_bytes must be >= 1024".into()
        });
        p.check(self.lease_ttl < Duration::from_secs(2), || {
            "lease_ttl must be >= 2s".into()
        });
        p.check(
            self.auth.jwt_secret.is_some() && self.auth.jwt_public_key.is_some(),
            || "set either auth.jwt_secret or auth.jwt_public_key, not both".into(),
        );
        p.check(self.auth.jwt_secret.as_deref() == Some(""), || {
            "auth.jwt_secret must not be empty".into()
        });
        p.check(self.auth.webhook_timeout.is_zero(), || {
            "auth.webhook_timeout must be > 0".into()
        });
        p.check(
            self.auth.insecure_token_is_uid
                && (self.auth.jwt_secret.is_some()
                    || self.auth.jwt_public_key.is_some()
                    || self.auth.webhook_url.is_some()),
            || {
                "auth.insecure_token_is_uid cannot be combined with auth.jwt_secret, \
                 auth.jwt_public_key or auth.webhook_url (it would log in any token \
                 they refuse)"
                    .into()
            },
        );
        p.check(
            !(1..=MAX_WEBHOOK_CONCURRENT).contains(&self.auth.webhook_max_concurrent),
            || format!("auth.webhook_max_concurrent must be 1..={MAX_WEBHOOK_CONCURRENT}"),
        );
        p.check(
            self.auth
                .jwt_secret
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.len() < MIN_JWT_SECRET_LEN),
            || {
                format!(
                    "auth.jwt_secret must be at least {MIN_JWT_SECRET_LEN} bytes \
                     (an HS256 secret shorter than the hash is guessable offline)"
                )
            },
        );
        if let Some(url) = &self.auth.webhook_url {
            p.check(
                !(url.starts_with("http://") || url.starts_with("https://")),
                || format!("auth.webhook_url {url:?} must be an http:// or https:// URL"),
            );
        }
        gpush_common::tls::check_identity(
            "",
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            &mut p,
        );
        if self.standalone {
            self.push.validate(&mut p);
            self.push
                .check_exposure([self.http_addr(), self.grpc_addr()], &mut p);
        }
        p.finish()
    }

    /// Whether the edge serves TLS (`tls_cert` and `tls_key` set).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Standalone push API HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
            .unwrap_or_else(|| self.push.default_addr(DEFAULT_HTTP_PORT))
    }

    /// Standalone push API gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
            .unwrap_or_else(|| self.push.default_addr(DEFAULT_GRPC_PORT))
    }

    /// The standalone push API config: [`Self::push`] with the edge's own
    /// web origins added to `cors_allowed_origins`, so the demo page the
    /// edge serves at `/` may push. Those are the origins of the WebSocket
    /// listener `ws_addr` (`https` with TLS; `localhost` and `127.0.0.1`
    /// too when it is loopback or every interface) and of `public_url` (`ws` becomes
    /// `http`, `wss` becomes `https`).
    pub fn standalone_push_api(&self, ws_addr: SocketAddr, public_url: &str) -> PushApiConfig {
        let mut push = self.push.clone();
        let origins = &mut push.cors_allowed_origins;
        if origins.iter().any(|o| o == "*") {
            return push;
        }
        let port = ws_addr.port();
        let scheme = if self.tls() { "https" } else { "http" };
        let mut own = Vec::new();
        if ws_addr.ip().is_unspecified() || ws_addr.ip().is_loopback() {
            own.push(format!("{scheme}://localhost:{port}"));
            own.push(format!("{scheme}://127.0.0.1:{port}"));
        }
        if !ws_addr.ip().is_unspecified() {
            own.push(format!("{scheme}://{ws_addr}"));
        }
        own.extend(web_origin(public_url));
        for origin in own {
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        push
    }
}

/// The web origin (`http://host:port`) of a WebSocket URL, or `None` when
/// it is not a `ws://` or `wss://` URL.
fn web_origin(ws_url: &str) -> Option<String> {
    let (scheme, rest) = ws_url.split_once("://")?;
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_push_api_allows_the_edges_own_origins() {
        let mut config = EdgeConfig {
            standalone: true,
            ..EdgeConfig::default()
        };
        config.push.cors_allowed_origins = vec!["https://app.example".into()];
        let any = SocketAddr::from(([0, 0, 0, 0], 9992));
        let push = config.standalone_push_api(any, "wss://push.example/ws");
        assert_eq!(
            push.cors_allowed_origins,
            [
                "https://app.example",
                "http://localhost:9992",
                "http://127.0.0.1:9992",
                "https://push.example",
            ]
        );
        let lan = SocketAddr::from(([10, 0, 0, 5], 9000));
        let push = config.standalone_push_api(lan, "ws://10.0.0.5:9000/ws");
        assert_eq!(
            push.cors_allowed_origins,
            ["https://app.example", "http://10.0.0.5:9000"]
        );
        let mut problems = Problems::default();
        push.validate(&mut problems);
        assert!(problems.finish().is_ok());
        config.push.cors_allowed_origins = vec!["*".into()];
        let push = config.standalone_push_api(any, "ws://h:9992/ws");
        assert_eq!(push.cors_allowed_origins, ["*"]);
    }

    #[test]
    fn origins_are_matched_exactly_when_listed() {
        let mut config = EdgeConfig::default();
        assert!(config.origin_allowed(Some(b"https://evil.example")));
        config.allowed_origins = vec!["https://app.example".into(), "http://localhost:8080".into()];
        config.validate().expect("valid");
        assert!(config.origin_allowed(None));
        assert!(config.origin_allowed(Some(b"https://app.example")));
        assert!(config.origin_allowed(Some(b"HTTPS://APP.example")));
        assert!(config.origin_allowed(Some(b"http://localhost:8080")));
        for refused in [
            &b"https://evil.example"[..],
            b"http://app.example",
            b"https://app.example:443",
            b"https://app.example.evil.example",
            b"http://localhost",
            b"null",
            b"",
        ] {
            assert!(
                !config.origin_allowed(Some(refused)),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        config.allowed_origins = vec!["app.example".into(), "*".into()];
        let message = config.validate().expect_err("invalid").to_string();
        assert!(message.contains("\"app.example\""), "{message}");
        assert!(message.contains("\"*\""), "{message}");
    }

    #[test]
    fn limits_are_validated() {
        let config = EdgeConfig {
            max_connections: 0,
            handshake_timeout: Duration::ZERO,
            max_handshakes: 0,
            request_burst: 0,
            ..EdgeConfig::default()
        };
        let message = config.validate().expect_err("invalid").to_string();
        for key in [
            "max_connections",
            "handshake_timeout",
            "max_handshakes",
            "request_burst",
        ] {
            assert!(message.contains(key), "{key} not in {message}");
        }
        let unlimited = EdgeConfig {
            request_rate: 0,
            request_burst: 0,
            ..EdgeConfig::default()
        };
        unlimited.validate().expect("request_rate 0 needs no burst");
        assert!(!unlimited.request_limit().is_limited());
    }

    #[test]
    fn tls_needs_a_cert_and_a_key_that_can_be_read() {
        let config = EdgeConfig {
            tls_cert: Some("/nonexistent/gpush-edge-cert.pem".into()),
            ..EdgeConfig::default()
        };
        let message = config.validate().expect_err("no key").to_string();
        assert!(
            message.contains("tls_cert is set but tls_key is not"),
            "{message}"
        );
        let config = EdgeConfig {
            tls_key: Some("/nonexistent/gpush-edge-key.pem".into()),
            ..config
        };
        assert!(config.tls());
        let message = config.validate().expect_err("missing file").to_string();
        assert!(
            message.contains("/nonexistent/gpush-edge-cert.pem"),
            "{message}"
        );
        let config = EdgeConfig {
            standalone: true,
            ..config
        };
        let any = SocketAddr::from(([0, 0, 0, 0], 9992));
        let push = config.standalone_push_api(any, "wss://push.example/ws");
        assert_eq!(
            push.cors_allowed_origins,
            [
                "https://localhost:9992",
                "https://127.0.0.1:9992",
                "https://push.example"
            ]
        );
    }

    /// The documented example must parse and equal the defaults it claims.
    #[test]
    fn deploy_example_is_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.toml");
        let example: EdgeConfig = gpush_common::config::load_file(&path).expect("example parses");
        example.validate().expect("example is valid");
        assert_eq!(
            format!("{example:?}"),
            format!("{:?}", EdgeConfig::default())
        );
    }
}

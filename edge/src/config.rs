//! Edge configuration: TOML file, then `GPUSH_*` env vars and flags.

use gpush_common::config::{ConfigError, Problems};
use gpush_common::push::DEFAULT_MAX_NAME_LEN;
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
/// Default timeout of one auth webhook call.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything `gpush-edge` reads from its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// WebSocket listen address (clients connect to `ws://<addr>/ws`).
    pub ws_addr: SocketAddr,
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
    /// etcd (default `ws://<ws_addr>/ws`).
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
    /// Development only: the token itself is the uid. Never in production.
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
            insecure_token_is_uid: false,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            ws_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_WS_PORT)),
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
        if let Some(url) = &self.auth.webhook_url {
            p.check(
                !(url.starts_with("http://") || url.starts_with("https://")),
                || format!("auth.webhook_url {url:?} must be an http:// or https:// URL"),
            );
        }
        if self.standalone {
            self.push.validate(&mut p);
        }
        p.finish()
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
    /// listener `ws_addr` (`localhost` and `127.0.0.1` too when it is
    /// loopback or every interface) and of `public_url` (`ws` becomes
    /// `http`, `wss` becomes `https`).
    pub fn standalone_push_api(&self, ws_addr: SocketAddr, public_url: &str) -> PushApiConfig {
        let mut push = self.push.clone();
        let origins = &mut push.cors_allowed_origins;
        if origins.iter().any(|o| o == "*") {
            return push;
        }
        let port = ws_addr.port();
        let mut own = Vec::new();
        if ws_addr.ip().is_unspecified() || ws_addr.ip().is_loopback() {
            own.push(format!("http://localhost:{port}"));
            own.push(format!("http://127.0.0.1:{port}"));
        }
        if !ws_addr.ip().is_unspecified() {
            own.push(format!("http://{ws_addr}"));
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

//! Edge configuration: TOML file, then `GPUSH_*` env vars and flags.
//! `presence`: the `[presence]` and `[events]` sections.

mod presence;

pub use presence::{
    DEFAULT_EVENTS_MAX_AGE, DEFAULT_EVENTS_WEBHOOK_BATCH, DEFAULT_EVENTS_WEBHOOK_QUEUE_BYTES,
    DEFAULT_EVENTS_WEBHOOK_TIMEOUT, DEFAULT_PRESENCE_HEARTBEAT, DEFAULT_PRESENCE_INTERVAL,
    DEFAULT_PRESENCE_MAX_BYTES, DEFAULT_PRESENCE_MAX_CHANGES, EventsConfig, LIVENESS_HEARTBEATS,
    PresenceConfig, PresenceRule, UserLimitScope,
};

use gpush_common::bus::MAX_LOCAL_QUEUE_BYTES;
use gpush_common::config::sections::{LogConfig, NatsConfig, TlsConfig};
use gpush_common::config::{ConfigError, Problems};
use gpush_common::history::HistoryConfig;
use gpush_common::push::DEFAULT_MAX_NAME_LEN;
use gpush_common::rate::Rate;
use gpush_common::subject::Subjects;
use gpush_ingress::config::{PushAddrs, PushApiConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default WebSocket port (as in the original gpush).
pub const DEFAULT_WS_PORT: u16 = 9992;
/// Default number of hub shards (locks).
pub const DEFAULT_SHARDS: usize = 64;
/// Default maximum subscriptions (public + private) per connection.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;
/// Default interval between server WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time a connection may stay silent before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default batching interval of writes to one connection.
pub const DEFAULT_WRITE_INTERVAL: Duration = Duration::from_millis(5);
/// Default bound of one connection's outgoing queue, in bytes (each frame
/// charged its length plus its slot, `outbox::FRAME_SLOT`). Large enough
/// that a full default push batch (`push.max_batch`, 10,000) to one
/// connection fits: 10,000 frames of at most ~600 bytes of framing
/// (WebSocket header, push object, a 256-byte topic escaped) plus their
/// slots take ~6.3 MB, which leaves ~10 MB for the payloads.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Default maximum size of a client message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024;
/// Default time given to clients to go on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Upper bound of `auth.webhook_max_concurrent` (a semaphore's permits).
pub const MAX_WEBHOOK_CONCURRENT: usize = 65_536;
/// Shortest accepted `auth.jwt_secret`: 32 bytes, HS256's hash length
/// (RFC 7518 3.2 requires a key at least that long).
pub const MIN_JWT_SECRET_LEN: usize = 32;
/// Smallest accepted `publish_queue_bytes`.
pub const MIN_PUBLISH_QUEUE_BYTES: usize = 1024;
/// Default maximum number of distinct public topics one edge serves. NATS
/// subscriptions are per topic bucket (at most
/// [`TOPIC_BUCKETS`](gpush_common::subject::TOPIC_BUCKETS)), so a topic
/// costs the edge its index entry and what it follows of the topic's
/// history (see `gpush-bench many-topics`).
pub const DEFAULT_MAX_TOPICS: usize = 50_000;
/// Default number of auth webhook calls in flight at once per edge.
pub const DEFAULT_WEBHOOK_MAX_CONCURRENT: usize = 64;
/// Default timeout of one auth webhook call.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `auth.expiry_leeway`: clock skew tolerated on token times.
pub const DEFAULT_EXPIRY_LEEWAY: Duration = Duration::from_secs(5);
/// Largest `auth.expiry_leeway`: beyond it an expired token is not an
/// expired token any more.
pub const MAX_EXPIRY_LEEWAY: Duration = Duration::from_secs(300);
/// Default maximum number of WebSocket connections one edge holds: about
/// 170 MiB of idle connections (1.7 KiB each), and well within the file
/// limit of `deploy/gpush-edge.service`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default time a client has from its TCP connect until its WebSocket
/// upgrade is done (the HTTP request included).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum number of connections in their handshake at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default most connections logged in as one user on one edge: room for
/// every tab and device of a person, not for a flood under one identity.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
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
    /// `tls_cert`, `tls_key`: TLS on `ws_addr` (clients connect to
    /// `wss://<addr>/ws`, and `/`, `/gpush.js`, `/healthz`, `/readyz` and
    /// `/metrics` are HTTPS); standalone, the push API serves HTTPS and
    /// gRPC over TLS with the same certificate.
    #[serde(flatten)]
    pub tls: TlsConfig,
    /// Run alone: in-process bus, no NATS or etcd, and the push API served
    /// by this process on `http_addr` and `grpc_addr`.
    pub standalone: bool,
    /// `http_addr`, `grpc_addr`: the standalone push API's addresses
    /// (defaults as on ingress).
    #[serde(flatten)]
    pub push_addrs: PushAddrs,
    /// `nats_urls`, `subject_prefix`: where pushes come from (not
    /// standalone).
    #[serde(flatten)]
    pub nats: NatsConfig,
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
    /// Number of hub shards (locks).
    pub shards: usize,
    /// Maximum subscriptions (public + private) per connection.
    pub max_subscriptions: usize,
    /// Maximum distinct public topics with a subscriber on this edge; a
    /// subscribe to one more gets 30005.
    pub max_topics: usize,
    /// Maximum connections logged in as one user on this edge; one more
    /// login as that user gets 30005 (the connection stays, logged out).
    pub max_connections_per_user: usize,
    /// `edge`: `max_connections_per_user` counts this edge's connections;
    /// `cluster`: also all edges' together, as this edge's presence
    /// tracker knows them (up to about two `presence.interval`s late, so
    /// logins on several edges at once may pass it by a few). `cluster`
    /// makes every edge track every logged-in user of the cluster.
    pub max_connections_per_user_scope: UserLimitScope,
    /// Maximum length of a topic or uid, in bytes; at most what keeps every
    /// NATS subject under its limit (1,276 with the default prefix).
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
    /// Bound of a connection's outgoing queue in bytes, each frame charged
    /// its length plus its slot in the queue; a client that falls this
    /// far behind is a slow consumer and is closed (4001). Only bytes are
    /// bounded, so a burst of many small frames (a push batch) reaches a
    /// client that reads; a full push batch to one connection must fit.
    /// (`queue_frames`, the old bound in frames, was removed: it cut
    /// reading clients on every large batch.)
    pub queue_bytes: usize,
    /// How long clients get to go on SIGTERM before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How login tokens are verified.
    pub auth: AuthConfig,
    /// Which pushes are kept for clients that reconnect (`[history]`):
    /// standalone keeps them in memory.
    pub history: HistoryConfig,
    /// Standalone push API limits and API key.
    pub push: PushApiConfig,
    /// Who joins and leaves topics (`[presence]`): pushes 10005, 10006,
    /// 10010 and request code 7, per topic prefix.
    pub presence: PresenceConfig,
    /// User online/offline events for backends (`[events]`).
    pub events: EventsConfig,
    /// Standalone: how long a publish may take.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Standalone: bound of the queue between the push API and the
    /// fan-out, in bytes (names and payloads of the pushes not yet
    /// delivered). A publish waits for room up to `publish_timeout`, then
    /// gets 503 / `UNAVAILABLE`.
    pub publish_queue_bytes: usize,
    /// `log_format`: `human` or `json`.
    #[serde(flatten)]
    pub log: LogConfig,
    /// Serve the demo page at `/` (default: only standalone). It honours
    /// `?ws=` and `?push=`, so on a production edge a crafted link would
    /// send what a user types there to another host; off, `/` answers 404.
    /// `/gpush.js` is served either way.
    pub demo_page: Option<bool>,
    /// Test only: serve WebSocket upgrades at `/` too (instead of the demo
    /// page), and answer every text or binary message with itself instead
    /// of treating it as a request, with no 20000 greeting. This is what
    /// Autobahn|Testsuite's cases expect of a server; it exercises the
    /// real connection loop (framing, close handshake) with an echo in
    /// place of the request dispatch. Never enable it in production.
    pub conformance_echo: bool,
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
    /// Clock skew tolerated on token times, in whole seconds: a JWT's
    /// `exp` and `nbf` are checked with it, and a login whose token
    /// expires (JWT `exp`, webhook `expires`) ends this long after it
    /// unless refreshed (push 10004).
    #[serde(with = "humantime_serde")]
    pub expiry_leeway: Duration,
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
            expiry_leeway: DEFAULT_EXPIRY_LEEWAY,
            insecure_token_is_uid: false,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            ws_addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_WS_PORT)),
            tls: TlsConfig::default(),
            standalone: false,
            push_addrs: PushAddrs::default(),
            nats: NatsConfig::default(),
            etcd_endpoints: Vec::new(),
            node_id: None,
            public_url: None,
            lease_ttl: gpush_common::registry::DEFAULT_LEASE_TTL,
            shards: DEFAULT_SHARDS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_topics: DEFAULT_MAX_TOPICS,
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_connections_per_user_scope: UserLimitScope::default(),
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
            queue_bytes: DEFAULT_QUEUE_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            auth: AuthConfig::default(),
            history: HistoryConfig::default(),
            push: PushApiConfig::default(),
            presence: PresenceConfig::default(),
            events: EventsConfig::default(),
            publish_timeout: gpush_common::bus::DEFAULT_PUBLISH_TIMEOUT,
            publish_queue_bytes: gpush_common::bus::DEFAULT_LOCAL_QUEUE_BYTES,
            log: LogConfig::default(),
            demo_page: None,
            conformance_echo: false,
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
        self.nats.check(!self.standalone, &mut p);
        self.history.check(&mut p);
        if let Ok(subjects) = Subjects::new(&self.nats.subject_prefix)
            && let Some(problem) = subjects.name_len_problem("max_name_len", self.max_name_len)
        {
            p.push(problem);
        }
        p.check(self.shards == 0, || "shards must be > 0".into());
        p.check(self.max_subscriptions == 0, || {
            "max_subscriptions must be > 0".into()
        });
        p.check(self.max_topics == 0, || "max_topics must be > 0".into());
        p.check(self.max_connections_per_user == 0, || {
            "max_connections_per_user must be > 0".into()
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
            self.auth.expiry_leeway > MAX_EXPIRY_LEEWAY
                || self.auth.expiry_leeway.subsec_nanos() != 0,
            || {
                format!(
                    "auth.expiry_leeway must be whole seconds, at most {}s",
                    MAX_EXPIRY_LEEWAY.as_secs()
                )
            },
        );
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
        self.presence.check(self.max_name_len, &mut p);
        self.events.check(self.standalone, &mut p);
        self.tls.check(&mut p);
        if self.standalone {
            self.push.validate(&mut p);
            self.push
                .check_exposure([self.http_addr(), self.grpc_addr()], &mut p);
        }
        p.check(
            !(MIN_PUBLISH_QUEUE_BYTES..=MAX_LOCAL_QUEUE_BYTES).contains(&self.publish_queue_bytes),
            || {
                format!(
                    "publish_queue_bytes must be {MIN_PUBLISH_QUEUE_BYTES}..={MAX_LOCAL_QUEUE_BYTES}"
                )
            },
        );
        p.finish()
    }

    /// Whether `/` serves the demo page: `demo_page`, by default only
    /// standalone.
    pub fn demo_page(&self) -> bool {
        self.demo_page.unwrap_or(self.standalone)
    }

    /// Whether the edge serves TLS (`tls_cert` and `tls_key` set).
    pub fn tls(&self) -> bool {
        self.tls.enabled()
    }

    /// Standalone push API HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.push_addrs.http(&self.push)
    }

    /// Standalone push API gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.push_addrs.grpc(&self.push)
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
    use gpush_common::telemetry::LogFormat;

    /// The shared sections are flattened: their keys stay top-level, and
    /// an unknown key is still an error.
    #[test]
    fn shared_sections_read_top_level_keys_and_unknown_keys_are_refused() {
        let config: EdgeConfig = toml::from_str(
            "nats_urls = [\"nats://n:1\"]\nsubject_prefix = \"p\"\ntls_cert = \"c.pem\"\n\
             tls_key = \"k.pem\"\nlog_format = \"json\"\nhttp_addr = \"127.0.0.1:1\"\n\
             max_message = 100\n",
        )
        .expect("parses");
        assert_eq!(config.nats.nats_urls, ["nats://n:1"]);
        assert_eq!(config.nats.subject_prefix, "p");
        assert!(config.tls());
        assert_eq!(config.log.log_format, LogFormat::Json);
        assert_eq!(config.http_addr().to_string(), "127.0.0.1:1");
        assert_eq!(config.max_message, 100);
        for typo in ["nats_url = []", "tls_certificate = \"c\"", "log = \"json\""] {
            let error = toml::from_str::<EdgeConfig>(typo)
                .expect_err(typo)
                .to_string();
            assert!(error.contains("unknown field"), "{typo}: {error}");
        }
    }

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
            tls: TlsConfig {
                tls_cert: Some("/nonexistent/gpush-edge-cert.pem".into()),
                tls_key: None,
            },
            ..EdgeConfig::default()
        };
        let message = config.validate().expect_err("no key").to_string();
        assert!(
            message.contains("tls_cert is set but tls_key is not"),
            "{message}"
        );
        let config = EdgeConfig {
            tls: TlsConfig {
                tls_key: Some("/nonexistent/gpush-edge-key.pem".into()),
                ..config.tls.clone()
            },
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

    #[test]
    fn the_removed_queue_frames_key_is_refused() {
        let path = std::env::temp_dir().join(format!(
            "gpush-edge-queue-frames-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "queue_frames = 1024\n").expect("write config");
        let error = gpush_common::config::load_file::<EdgeConfig>(&path)
            .expect_err("queue_frames was removed");
        let _ = std::fs::remove_file(&path);
        assert!(error.to_string().contains("queue_frames"), "{error}");
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

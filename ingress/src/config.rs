//! Ingress configuration: TOML file, then `GPUSH_*` env vars and flags.

use gpush_common::config::Problems;
use gpush_common::config::sections::{LogConfig, NatsConfig, TlsConfig};
use gpush_common::push::DEFAULT_MAX_NAME_LEN;
use gpush_common::subject::Subjects;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default HTTP push API port (as in the original gpush).
pub const DEFAULT_HTTP_PORT: u16 = 10068;
/// Default gRPC push API port (as in the original gpush).
pub const DEFAULT_GRPC_PORT: u16 = 10067;
/// Default maximum payload of one push, in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Default maximum number of messages in one batch call.
pub const DEFAULT_MAX_BATCH: usize = 10_000;
/// Default maximum size of one gRPC request message, in bytes: the cap of
/// an HTTP push body too ([`crate::api::MAX_REQUEST_BYTES`]).
pub const DEFAULT_MAX_GRPC_MESSAGE: usize = 64 * 1024 * 1024;
/// Default push rate limit, in messages per second: 0 = unlimited. A rate
/// suits one deployment and not another, so none is imposed.
pub const DEFAULT_PUSH_RATE: u32 = 0;
/// Default burst of the push rate limit, in messages: a full default batch.
pub const DEFAULT_PUSH_BURST: u32 = DEFAULT_MAX_BATCH as u32;
/// Default time a client has to send a request header on the HTTP push
/// API, which is also how long an idle keep-alive connection stays open.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time one push call may take from its header to its answer,
/// body and publish included, on both transports.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of HTTP push API connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default number of concurrent gRPC calls on one connection.
pub const DEFAULT_GRPC_MAX_STREAMS: u32 = 64;
pub use gpush_common::bus::DEFAULT_NATS_URL;

/// Limits and access control of the push API (HTTP and gRPC). Shared by
/// `gpush-ingress` and `gpush-edge --standalone`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushApiConfig {
    /// When set, every push call must carry `Authorization: Bearer <key>`
    /// (HTTP header or gRPC metadata). Unset: no authentication, and the
    /// push API binds loopback unless an address is given explicitly.
    pub api_key: Option<String>,
    /// Maximum payload of one push, in bytes (after base64 decoding).
    pub max_payload: usize,
    /// Maximum number of messages in one batch call.
    pub max_batch: usize,
    /// Maximum length of a topic or uid, in bytes.
    pub max_name_len: usize,
    /// Web origins (`scheme://host[:port]`) whose pages may call the HTTP
    /// push API from a browser (CORS). Empty: no CORS headers, so browsers
    /// refuse cross-origin calls; `["*"]`: any origin (only sensible with an
    /// API key). A standalone edge also allows its own origins, so its demo
    /// page works.
    pub cors_allowed_origins: Vec<String>,
    /// Maximum size of one gRPC request message, in bytes; larger ones get
    /// `OUT_OF_RANGE` (from tonic) before they are decoded. The limit applied is
    /// the smaller of this and the size a full batch needs.
    pub max_grpc_message: usize,
    /// Messages per second the push API accepts, summed over every caller
    /// and both transports; 0 = unlimited. Over it: HTTP 429 `rate_limited`
    /// with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`; nothing of the call is
    /// published.
    pub push_rate: u32,
    /// Messages the push API accepts at once after a quiet period; must
    /// hold a full batch (`max_batch`) when `push_rate` is set.
    pub push_burst: u32,
    /// Serve the push API without `api_key` on an address beyond
    /// loopback. Without this, such a config is refused at start: anyone
    /// who can reach the port could push to every user.
    pub api_insecure: bool,
    /// Time an HTTP client has to send a request header (an idle
    /// keep-alive connection is closed after it too), and a gRPC client
    /// the HTTP/2 connection preface, its first 24 bytes.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time one push call may take from its header to its answer, body
    /// and publish included: HTTP answers 408 `request_timeout`, gRPC
    /// `CANCELLED` (tonic's timeout).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections served at once on each push API listener (HTTP and
    /// gRPC count apart); beyond it that listener stops accepting, so new
    /// connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent gRPC calls (HTTP/2 streams) on one connection.
    pub grpc_max_streams: u32,
    /// How long a server API call (disconnect, presence, ...) waits for
    /// every edge's answer; an edge that has not answered by then is named
    /// in `missing`.
    #[serde(with = "humantime_serde")]
    pub control_timeout: Duration,
    /// Most bytes of the edges' answers one server API call holds (a
    /// presence of 50,000 users is about 0.5 MiB); over it the call gets
    /// 413 `answer_too_large` / `RESOURCE_EXHAUSTED`.
    pub control_max_bytes: usize,
}

impl Default for PushApiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_batch: DEFAULT_MAX_BATCH,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            cors_allowed_origins: Vec::new(),
            max_grpc_message: DEFAULT_MAX_GRPC_MESSAGE,
            push_rate: DEFAULT_PUSH_RATE,
            push_burst: DEFAULT_PUSH_BURST,
            api_insecure: false,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            grpc_max_streams: DEFAULT_GRPC_MAX_STREAMS,
            control_timeout: gpush_common::control::DEFAULT_CONTROL_TIMEOUT,
            control_max_bytes: gpush_common::control::DEFAULT_CONTROL_MAX_BYTES,
        }
    }
}

impl PushApiConfig {
    /// Adds this section's problems to `problems`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(self.max_payload == 0, || "max_payload must be > 0".into());
        problems.check(self.max_batch == 0, || "max_batch must be > 0".into());
        problems.check(self.max_name_len == 0, || "max_name_len must be > 0".into());
        problems.check(self.max_grpc_message < 1024, || {
            "max_grpc_message must be >= 1024".into()
        });
        problems.check(
            self.push_rate > 0 && (self.push_burst as usize) < self.max_batch,
            || {
                format!(
                    "push_burst ({}) must be >= max_batch ({}) when push_rate is set, \
                     or a full batch could never be accepted",
                    self.push_burst, self.max_batch
                )
            },
        );
        problems.check(self.header_read_timeout.is_zero(), || {
            "header_read_timeout must be > 0".into()
        });
        problems.check(self.request_timeout.is_zero(), || {
            "request_timeout must be > 0".into()
        });
        problems.check(
            self.control_timeout.is_zero() || self.control_timeout >= self.request_timeout,
            || "control_timeout must be > 0 and shorter than request_timeout".into(),
        );
        problems.check(self.control_max_bytes < 4096, || {
            "control_max_bytes must be >= 4096".into()
        });
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        problems.check(!(1..=most).contains(&self.max_connections), || {
            format!("max_connections must be from 1 to {most}")
        });
        problems.check(self.grpc_max_streams == 0, || {
            "grpc_max_streams must be > 0".into()
        });
        problems.check(self.api_key.as_deref() == Some(""), || {
            "api_key must not be empty (leave it unset for no authentication)".into()
        });
        let origins = &self.cors_allowed_origins;
        problems.check(
            origins.len() > 1 && origins.iter().any(|o| o == "*"),
            || "cors_allowed_origins: \"*\" allows every origin and must be the only entry".into(),
        );
        for origin in origins.iter().filter(|o| *o != "*") {
            if let Some(why) = origin_problem(origin) {
                problems.push(format!("cors_allowed_origins: {origin:?} {why}"));
            }
        }
    }

    /// Refuses a push API without `api_key` listening beyond loopback
    /// (`addrs`: the HTTP and gRPC addresses), unless `api_insecure`.
    pub fn check_exposure(&self, addrs: [SocketAddr; 2], problems: &mut Problems) {
        if self.api_key.is_some() || self.api_insecure {
            return;
        }
        for addr in addrs.iter().filter(|a| !a.ip().is_loopback()) {
            problems.push(format!(
                "the push API would listen on {addr} without api_key: anyone reaching it \
                 could push to every user. Set api_key (--api-key, GPUSH_API_KEY), bind \
                 loopback, or accept this with push.api_insecure (--api-insecure, \
                 GPUSH_API_INSECURE=true)"
            ));
        }
    }

    /// The push rate limit.
    pub fn push_limit(&self) -> gpush_common::rate::Rate {
        gpush_common::rate::Rate {
            per_second: self.push_rate,
            burst: self.push_burst,
        }
    }

    /// The default bind address for a push API port: all interfaces when an
    /// API key protects it, loopback otherwise.
    pub fn default_addr(&self, port: u16) -> SocketAddr {
        if self.api_key.is_some() {
            SocketAddr::from(([0, 0, 0, 0], port))
        } else {
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    }
}

/// Why `origin` is not a web origin as browsers send it in the `Origin`
/// header (`http://host` or `https://host:port`: no path, no trailing
/// slash), or `None` when it is one. The edge checks its
/// `allowed_origins` with it too.
pub fn origin_problem(origin: &str) -> Option<&'static str> {
    let Some((_, authority)) = origin
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
    else {
        return Some("must start with http:// or https://");
    };
    if authority.is_empty() {
        return Some("has no host");
    }
    if authority.contains(['/', '?', '#']) {
        return Some("must be scheme://host[:port], without a path or trailing slash");
    }
    if !authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be ASCII without spaces (write international names as punycode)");
    }
    None
}

/// The push API's listen addresses: top-level keys `http_addr` and
/// `grpc_addr`, the same on ingress and a standalone edge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PushAddrs {
    /// HTTP push API address. Default: `0.0.0.0:10068` with an API key,
    /// `127.0.0.1:10068` without.
    pub http_addr: Option<SocketAddr>,
    /// gRPC push API address. Default: `0.0.0.0:10067` with an API key,
    /// `127.0.0.1:10067` without.
    pub grpc_addr: Option<SocketAddr>,
}

impl PushAddrs {
    /// The HTTP address to bind: as configured, or `push`'s default.
    pub fn http(&self, push: &PushApiConfig) -> SocketAddr {
        self.http_addr
            .unwrap_or_else(|| push.default_addr(DEFAULT_HTTP_PORT))
    }

    /// The gRPC address to bind: as configured, or `push`'s default.
    pub fn grpc(&self, push: &PushApiConfig) -> SocketAddr {
        self.grpc_addr
            .unwrap_or_else(|| push.default_addr(DEFAULT_GRPC_PORT))
    }
}

/// Everything `gpush-ingress` reads from its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// `http_addr`, `grpc_addr`: where the push API listens.
    #[serde(flatten)]
    pub addrs: PushAddrs,
    /// `tls_cert`, `tls_key`: TLS on both push APIs (HTTPS, gRPC over TLS).
    #[serde(flatten)]
    pub tls: TlsConfig,
    /// PEM bundle of the CAs that sign the gRPC callers' client
    /// certificates (mutual TLS). Set, a gRPC caller must present a
    /// certificate chaining to one of them or the handshake fails; the
    /// HTTP push API asks for none. Needs `tls_cert` and `tls_key`.
    pub grpc_client_ca: Option<PathBuf>,
    /// `nats_urls`, `subject_prefix`: where pushes are published.
    #[serde(flatten)]
    pub nats: NatsConfig,
    /// How long a publish may take before the caller gets 503 / UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// When a push counts as published, and so when the caller gets 200 /
    /// OK: `server` (a NATS server confirmed it by a round trip) or
    /// `flush` (written to the server's connection; faster).
    pub publish_ack: gpush_common::bus::Ack,
    /// etcd endpoints, for `GET /v1/edges`. Empty: no edge listing.
    pub etcd_endpoints: Vec<String>,
    /// Push API limits and API key.
    pub push: PushApiConfig,
    /// Which pushes are kept in JetStream for clients that reconnect
    /// (`[history]`, the same as on every edge).
    pub history: gpush_common::history::HistoryConfig,
    /// `log_format`: `human` or `json`.
    #[serde(flatten)]
    pub log: LogConfig,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            addrs: PushAddrs::default(),
            tls: TlsConfig::default(),
            grpc_client_ca: None,
            nats: NatsConfig::default(),
            publish_timeout: gpush_common::bus::DEFAULT_PUBLISH_TIMEOUT,
            publish_ack: gpush_common::bus::Ack::default(),
            etcd_endpoints: Vec::new(),
            push: PushApiConfig::default(),
            history: Default::default(),
            log: LogConfig::default(),
        }
    }
}

impl IngressConfig {
    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), gpush_common::config::ConfigError> {
        let mut problems = Problems::default();
        self.nats.check(true, &mut problems);
        self.history.check(&mut problems);
        if let Ok(subjects) = Subjects::new(&self.nats.subject_prefix)
            && let Some(problem) =
                subjects.name_len_problem("push.max_name_len", self.push.max_name_len)
        {
            problems.push(problem);
        }
        problems.check(self.publish_timeout.is_zero(), || {
            "publish_timeout must be > 0".into()
        });
        self.tls.check(&mut problems);
        if let Some(ca) = &self.grpc_client_ca {
            problems.check(self.tls.tls_cert.is_none(), || {
                "grpc_client_ca needs tls_cert and tls_key: client certificates are a TLS feature"
                    .into()
            });
            gpush_common::tls::check_client_ca("grpc_client_ca", ca, &mut problems);
        }
        self.push.validate(&mut problems);
        self.push
            .check_exposure([self.http_addr(), self.grpc_addr()], &mut problems);
        problems.finish()
    }

    /// The HTTP address to bind.
    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http(&self.push)
    }

    /// The gRPC address to bind.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.addrs.grpc(&self.push)
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn cors_origins_are_checked() {
        let check = |origins: &[&str]| {
            let config = PushApiConfig {
                cors_allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                ..PushApiConfig::default()
            };
            let mut problems = Problems::default();
            config.validate(&mut problems);
            problems.finish().err().map(|e| e.to_string())
        };
        assert_eq!(check(&[]), None);
        assert_eq!(check(&["*"]), None);
        assert_eq!(
            check(&["http://localhost:9992", "https://app.example.com"]),
            None
        );
        let message = check(&[
            "*",
            "localhost:9992",
            "http://a.example/",
            "https://",
            "http://b c",
        ])
        .expect("invalid");
        for needle in [
            "must be the only entry",
            "\"localhost:9992\" must start with http://",
            "\"http://a.example/\" must be scheme://host[:port]",
            "\"https://\" has no host",
            "\"http://b c\" must be ASCII",
        ] {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    }

    #[test]
    fn push_limits_are_checked() {
        let config = PushApiConfig {
            max_grpc_message: 10,
            push_rate: 100,
            push_burst: 10,
            ..PushApiConfig::default()
        };
        let mut problems = Problems::default();
        config.validate(&mut problems);
        let message = problems.finish().expect_err("invalid").to_string();
        assert!(message.contains("max_grpc_message"), "{message}");
        assert!(message.contains("push_burst (10)"), "{message}");
        let unlimited = PushApiConfig {
            push_burst: 0,
            ..PushApiConfig::default()
        };
        let mut problems = Problems::default();
        unlimited.validate(&mut problems);
        assert!(problems.finish().is_ok());
        assert!(!unlimited.push_limit().is_limited());
    }

    #[test]
    fn tls_settings_are_checked() {
        let config = IngressConfig {
            tls: TlsConfig {
                tls_cert: None,
                tls_key: Some("/nonexistent/gpush-ingress-key.pem".into()),
            },
            grpc_client_ca: Some("/nonexistent/gpush-clients-ca.pem".into()),
            ..IngressConfig::default()
        };
        let message = config.validate().expect_err("invalid").to_string();
        for needle in [
            "tls_key is set but tls_cert is not",
            "grpc_client_ca needs tls_cert",
            "grpc_client_ca: cannot read certificates from /nonexistent/gpush-clients-ca.pem",
        ] {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
        let config = IngressConfig {
            tls: TlsConfig {
                tls_cert: Some("/nonexistent/gpush-ingress-cert.pem".into()),
                ..config.tls.clone()
            },
            ..config
        };
        let message = config.validate().expect_err("invalid").to_string();
        assert!(
            message.contains("cannot read certificates from /nonexistent/gpush-ingress-cert.pem"),
            "{message}"
        );
        assert!(!message.contains("needs tls_cert"), "{message}");
    }

    #[test]
    fn an_open_push_api_beyond_loopback_is_refused() {
        let open = |http: &str, key: Option<&str>, insecure: bool| {
            let config = IngressConfig {
                addrs: PushAddrs {
                    http_addr: Some(http.parse().expect("addr")),
                    grpc_addr: None,
                },
                push: PushApiConfig {
                    api_key: key.map(str::to_owned),
                    api_insecure: insecure,
                    ..PushApiConfig::default()
                },
                ..IngressConfig::default()
            };
            config.validate().err().map(|e| e.to_string())
        };
        let message = open("0.0.0.0:1", None, false).expect("refused");
        assert!(message.contains("--api-insecure"), "{message}");
        assert!(message.contains("0.0.0.0:1"), "{message}");
        assert!(open("[::]:1", None, false).is_some());
        assert_eq!(open("127.0.0.1:1", None, false), None);
        assert_eq!(open("[::1]:1", None, false), None);
        assert_eq!(open("0.0.0.0:1", Some("k"), false), None);
        assert_eq!(open("0.0.0.0:1", None, true), None);
    }

    /// The documented example must parse and equal the defaults it claims.
    #[test]
    fn deploy_example_is_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ingress.toml");
        let example: IngressConfig =
            gpush_common::config::load_file(&path).expect("example parses");
        example.validate().expect("example is valid");
        assert_eq!(
            format!("{example:?}"),
            format!("{:?}", IngressConfig::default())
        );
    }
}

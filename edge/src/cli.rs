//! Command-line flags of `gpush-edge`, each with a `GPUSH_*` environment
//! equivalent. Precedence: flag or env var, then the `--config` file, then
//! the defaults in [`config`](crate::config).

use crate::config::EdgeConfig;
use clap::Parser;
use gpush_common::config::flags::{
    LogFlags, NatsFlags, ShowDefault as _, TlsFlags, duration, override_list, override_option,
    override_value,
};
use gpush_common::config::{ConfigError, load_file};
use gpush_ingress::cli::PushApiFlags;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The WebSocket edge of gpush; `--standalone` runs everything in one process.
#[derive(Debug, Default, Parser)]
#[command(name = "gpush-edge", version, about)]
pub struct Cli {
    /// TOML config file; flags and env vars override its values.
    #[arg(long, env = "GPUSH_CONFIG")]
    pub config: Option<PathBuf>,
    /// WebSocket listen address.
    #[arg(long, env = "GPUSH_WS_ADDR", shown_default = defaults().ws_addr)]
    pub ws_addr: Option<SocketAddr>,
    /// TLS on the WebSocket listener (standalone: the push API too).
    #[command(flatten)]
    pub tls: TlsFlags,
    /// One process, no NATS or etcd: also serves the push API.
    #[arg(long, env = "GPUSH_STANDALONE")]
    pub standalone: bool,
    /// Test only: WebSocket at `/` too, every message echoed, no greeting
    /// (for Autobahn|Testsuite's cases). Never in production.
    #[arg(long, env = "GPUSH_CONFORMANCE_ECHO")]
    pub conformance_echo: bool,
    /// The standalone push API's addresses, key and CORS origins.
    #[command(flatten)]
    pub push_api: PushApiFlags,
    /// Where pushes come from.
    #[command(flatten)]
    pub nats: NatsFlags,
    /// etcd endpoints to register in (repeat or comma-separate).
    #[arg(long, env = "GPUSH_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Unique id of this edge.
    #[arg(
        long,
        env = "GPUSH_NODE_ID",
        shown_default = "host name and a random suffix"
    )]
    pub node_id: Option<String>,
    /// WebSocket URL published in etcd.
    #[arg(
        long,
        env = "GPUSH_PUBLIC_URL",
        shown_default = "ws://<ws_addr>/ws (wss:// with TLS)"
    )]
    pub public_url: Option<String>,
    /// etcd lease TTL, e.g. `10s`.
    #[arg(
        long,
        env = "GPUSH_LEASE_TTL",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().lease_ttl)
    )]
    pub lease_ttl: Option<Duration>,
    /// Registry shards.
    #[arg(long, env = "GPUSH_SHARDS", shown_default = defaults().shards)]
    pub shards: Option<usize>,
    /// Maximum subscriptions per connection.
    #[arg(long, env = "GPUSH_MAX_SUBSCRIPTIONS", shown_default = defaults().max_subscriptions)]
    pub max_subscriptions: Option<usize>,
    /// Maximum WebSocket connections; over it upgrades get 503.
    #[arg(long, env = "GPUSH_MAX_CONNECTIONS", shown_default = defaults().max_connections)]
    pub max_connections: Option<usize>,
    /// Time from TCP connect to a completed WebSocket upgrade.
    #[arg(
        long,
        env = "GPUSH_HANDSHAKE_TIMEOUT",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().handshake_timeout)
    )]
    pub handshake_timeout: Option<Duration>,
    /// Connections in their handshake at once; more wait to be accepted.
    #[arg(long, env = "GPUSH_MAX_HANDSHAKES", shown_default = defaults().max_handshakes)]
    pub max_handshakes: Option<usize>,
    /// Requests per second per connection, on average; 0 = unlimited.
    #[arg(long, env = "GPUSH_REQUEST_RATE", shown_default = defaults().request_rate)]
    pub request_rate: Option<u32>,
    /// Requests per connection at once; that many refused without a pause close it.
    #[arg(long, env = "GPUSH_REQUEST_BURST", shown_default = defaults().request_burst)]
    pub request_burst: Option<u32>,
    /// Web origins whose pages may connect (repeat or comma-separate).
    #[arg(long, env = "GPUSH_ALLOWED_ORIGINS", value_delimiter = ',')]
    #[arg(shown_default = "any")]
    pub allowed_origins: Vec<String>,
    /// Server WebSocket ping interval.
    #[arg(
        long,
        env = "GPUSH_PING_INTERVAL",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().ping_interval)
    )]
    pub ping_interval: Option<Duration>,
    /// Close connections silent for this long.
    #[arg(
        long,
        env = "GPUSH_IDLE_TIMEOUT",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().idle_timeout)
    )]
    pub idle_timeout: Option<Duration>,
    /// Write batching interval; 0 writes at once.
    #[arg(
        long,
        env = "GPUSH_WRITE_INTERVAL",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().write_interval)
    )]
    pub write_interval: Option<Duration>,
    /// Time clients get to leave on SIGTERM.
    #[arg(
        long,
        env = "GPUSH_SHUTDOWN_GRACE",
        value_parser = humantime::parse_duration,
        shown_default = duration(defaults().shutdown_grace)
    )]
    pub shutdown_grace: Option<Duration>,
    /// HS256 secret for JWT logins.
    #[arg(long, env = "GPUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RSA for RS256, EC P-256 for ES256) for JWT logins.
    #[arg(long, env = "GPUSH_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Auth webhook URL: POSTed `{"token": ...}`, answers `{"uid": ...}`.
    #[arg(long, env = "GPUSH_AUTH_WEBHOOK")]
    pub auth_webhook: Option<String>,
    /// Logging.
    #[command(flatten)]
    pub log: LogFlags,
}

fn defaults() -> EdgeConfig {
    EdgeConfig::default()
}

impl Cli {
    /// Reads the config file (if any), applies the overrides and validates
    /// the result, reporting every problem at once.
    pub fn load(&self) -> Result<EdgeConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => EdgeConfig::default(),
        };
        self.apply_overrides(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Overwrites the values of `config` that were given as flags or env vars.
    pub fn apply_overrides(&self, config: &mut EdgeConfig) {
        let c = config;
        override_value(&mut c.ws_addr, &self.ws_addr);
        c.tls.apply(&self.tls);
        c.standalone |= self.standalone;
        c.conformance_echo |= self.conformance_echo;
        self.push_api.apply(&mut c.push_addrs, &mut c.push);
        c.nats.apply(&self.nats);
        override_list(&mut c.etcd_endpoints, &self.etcd_endpoints);
        override_option(&mut c.node_id, &self.node_id);
        override_option(&mut c.public_url, &self.public_url);
        override_value(&mut c.lease_ttl, &self.lease_ttl);
        override_value(&mut c.shards, &self.shards);
        override_value(&mut c.max_subscriptions, &self.max_subscriptions);
        override_value(&mut c.max_connections, &self.max_connections);
        override_value(&mut c.handshake_timeout, &self.handshake_timeout);
        override_value(&mut c.max_handshakes, &self.max_handshakes);
        override_value(&mut c.request_rate, &self.request_rate);
        override_value(&mut c.request_burst, &self.request_burst);
        override_list(&mut c.allowed_origins, &self.allowed_origins);
        override_value(&mut c.ping_interval, &self.ping_interval);
        override_value(&mut c.idle_timeout, &self.idle_timeout);
        override_value(&mut c.write_interval, &self.write_interval);
        override_value(&mut c.shutdown_grace, &self.shutdown_grace);
        override_option(&mut c.auth.jwt_secret, &self.jwt_secret);
        override_option(&mut c.auth.jwt_public_key, &self.jwt_public_key);
        override_option(&mut c.auth.webhook_url, &self.auth_webhook);
        c.log.apply(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("gpush-edge").chain(args.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("gpush-edge-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("edge.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\nping_interval = \"5s\"\nmax_subscriptions = 7\n\
             [auth]\nwebhook_url = \"http://auth/check\"\nwebhook_timeout = \"300ms\"\n",
        )
        .expect("write");
        let cli = parse(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--node-id",
            "edge-9",
            "--nats-url",
            "nats://a:1,nats://b:2",
            "--write-interval",
            "0s",
            "--jwt-secret",
            "a-secret-of-at-least-32-bytes-xyz",
            "--cors-allowed-origins",
            "http://a.example,https://b.example",
            "--max-connections",
            "5000",
            "--handshake-timeout",
            "3s",
            "--max-handshakes",
            "64",
            "--request-rate",
            "7",
            "--request-burst",
            "9",
            "--allowed-origins",
            "https://app.example",
        ]);
        let config = cli.load().expect("valid");
        assert_eq!(config.node_id.as_deref(), Some("edge-9"));
        assert_eq!(config.ping_interval, Duration::from_secs(5));
        assert_eq!(config.max_subscriptions, 7);
        assert_eq!(config.nats.nats_urls, ["nats://a:1", "nats://b:2"]);
        assert_eq!(config.write_interval, Duration::ZERO);
        assert_eq!(config.max_connections, 5000);
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert_eq!(config.max_handshakes, 64);
        assert_eq!((config.request_rate, config.request_burst), (7, 9));
        assert_eq!(config.allowed_origins, ["https://app.example"]);
        assert_eq!(
            config.auth.jwt_secret.as_deref(),
            Some("a-secret-of-at-least-32-bytes-xyz")
        );
        assert_eq!(config.auth.webhook_timeout, Duration::from_millis(300));
        assert_eq!(
            config.push.cors_allowed_origins,
            ["http://a.example", "https://b.example"]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn defaults_follow_the_original_ports() {
        let config = Cli::default().load().expect("valid");
        assert_eq!(config.ws_addr.to_string(), "0.0.0.0:9992");
        assert_eq!(config.http_addr().to_string(), "127.0.0.1:10068");
        assert_eq!(config.grpc_addr().to_string(), "127.0.0.1:10067");
    }

    #[test]
    fn every_problem_is_reported_and_typos_are_errors() {
        let cli = parse(&[
            "--shards",
            "0",
            "--idle-timeout",
            "1s",
            "--ping-interval",
            "2s",
            "--tls-cert",
            "/nonexistent/cert.pem",
        ]);
        let message = cli.load().expect_err("invalid").to_string();
        assert!(message.contains("shards"), "{message}");
        assert!(message.contains("idle_timeout"), "{message}");
        assert!(
            message.contains("tls_cert is set but tls_key is not"),
            "{message}"
        );

        let dir = std::env::temp_dir().join(format!("gpush-edge-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("edge.toml");
        std::fs::write(&path, "ping_intervl = \"5s\"\n").expect("write");
        let cli = parse(&["--config", path.to_str().expect("utf-8")]);
        let message = cli.load().expect_err("typo").to_string();
        assert!(message.contains("ping_intervl"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

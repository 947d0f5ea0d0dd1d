//! Command-line flags of `gpush-edge`, each with a `GPUSH_*` environment
//! equivalent. Precedence: flag or env var, then the `--config` file, then
//! the defaults in [`config`](crate::config).

use crate::config::EdgeConfig;
use clap::Parser;
use gpush_common::config::{ConfigError, load_file};
use gpush_common::telemetry::LogFormat;
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
    /// WebSocket listen address [default: 0.0.0.0:9992].
    #[arg(long, env = "GPUSH_WS_ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// PEM certificate chain for TLS (wss:// and HTTPS; standalone, the push API too); needs --tls-key.
    #[arg(long, env = "GPUSH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GPUSH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// One process, no NATS or etcd: also serves the push API.
    #[arg(long, env = "GPUSH_STANDALONE")]
    pub standalone: bool,
    /// Standalone push API HTTP address [default: 127.0.0.1:10068, or 0.0.0.0:10068 with an API key].
    #[arg(long, env = "GPUSH_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Standalone push API gRPC address [default: 127.0.0.1:10067, or 0.0.0.0:10067 with an API key].
    #[arg(long, env = "GPUSH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Standalone push API key, required as `Authorization: Bearer <key>`.
    #[arg(long, env = "GPUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Web origins allowed to call the standalone HTTP push API from a browser
    /// (CORS), besides the edge's own; `*` for any (repeat or comma-separate).
    #[arg(long, env = "GPUSH_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// NATS server URLs (repeat or comma-separate) [default: nats://127.0.0.1:4222].
    #[arg(long = "nats-url", env = "GPUSH_NATS_URL", value_delimiter = ',')]
    pub nats_urls: Vec<String>,
    /// Prefix of the NATS subjects; must match ingress's [default: gpush].
    #[arg(long, env = "GPUSH_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
    /// etcd endpoints to register in (repeat or comma-separate).
    #[arg(long, env = "GPUSH_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Unique id of this edge [default: host name and a random suffix].
    #[arg(long, env = "GPUSH_NODE_ID")]
    pub node_id: Option<String>,
    /// WebSocket URL published in etcd [default: ws://<ws-addr>/ws, wss:// with TLS].
    #[arg(long, env = "GPUSH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// etcd lease TTL, e.g. `10s` [default: 10s].
    #[arg(long, env = "GPUSH_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Registry shards [default: 64].
    #[arg(long, env = "GPUSH_SHARDS")]
    pub shards: Option<usize>,
    /// Maximum subscriptions per connection [default: 128].
    #[arg(long, env = "GPUSH_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Maximum WebSocket connections; over it upgrades get 503 [default: 100000].
    #[arg(long, env = "GPUSH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time from TCP connect to a completed WebSocket upgrade [default: 10s].
    #[arg(long, env = "GPUSH_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Connections in their handshake at once; more wait to be accepted [default: 1024].
    #[arg(long, env = "GPUSH_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Requests per second per connection, on average; 0 = unlimited [default: 100].
    #[arg(long, env = "GPUSH_REQUEST_RATE")]
    pub request_rate: Option<u32>,
    /// Requests per connection at once; that many refused without a pause close it [default: 200].
    #[arg(long, env = "GPUSH_REQUEST_BURST")]
    pub request_burst: Option<u32>,
    /// Web origins whose pages may connect (repeat or comma-separate) [default: any].
    #[arg(long, env = "GPUSH_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Server WebSocket ping interval [default: 25s].
    #[arg(long, env = "GPUSH_PING_INTERVAL", value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Close connections silent for this long [default: 60s].
    #[arg(long, env = "GPUSH_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Write batching interval; 0 writes at once [default: 5ms].
    #[arg(long, env = "GPUSH_WRITE_INTERVAL", value_parser = humantime::parse_duration)]
    pub write_interval: Option<Duration>,
    /// Time clients get to leave on SIGTERM [default: 10s].
    #[arg(long, env = "GPUSH_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
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
    /// Log format: human or json [default: human].
    #[arg(long, env = "GPUSH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
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
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        fn set_opt<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        fn set_list(target: &mut Vec<String>, value: &[String]) {
            if !value.is_empty() {
                *target = value.to_vec();
            }
        }
        set(&mut config.ws_addr, &self.ws_addr);
        set_opt(&mut config.tls_cert, &self.tls_cert);
        set_opt(&mut config.tls_key, &self.tls_key);
        config.standalone |= self.standalone;
        set_opt(&mut config.http_addr, &self.http_addr);
        set_opt(&mut config.grpc_addr, &self.grpc_addr);
        set_opt(&mut config.push.api_key, &self.api_key);
        set_list(
            &mut config.push.cors_allowed_origins,
            &self.cors_allowed_origins,
        );
        set_list(&mut config.nats_urls, &self.nats_urls);
        set(&mut config.subject_prefix, &self.subject_prefix);
        set_list(&mut config.etcd_endpoints, &self.etcd_endpoints);
        set_opt(&mut config.node_id, &self.node_id);
        set_opt(&mut config.public_url, &self.public_url);
        set(&mut config.lease_ttl, &self.lease_ttl);
        set(&mut config.shards, &self.shards);
        set(&mut config.max_subscriptions, &self.max_subscriptions);
        set(&mut config.max_connections, &self.max_connections);
        set(&mut config.handshake_timeout, &self.handshake_timeout);
        set(&mut config.max_handshakes, &self.max_handshakes);
        set(&mut config.request_rate, &self.request_rate);
        set(&mut config.request_burst, &self.request_burst);
        set_list(&mut config.allowed_origins, &self.allowed_origins);
        set(&mut config.ping_interval, &self.ping_interval);
        set(&mut config.idle_timeout, &self.idle_timeout);
        set(&mut config.write_interval, &self.write_interval);
        set(&mut config.shutdown_grace, &self.shutdown_grace);
        set_opt(&mut config.auth.jwt_secret, &self.jwt_secret);
        set_opt(&mut config.auth.jwt_public_key, &self.jwt_public_key);
        set_opt(&mut config.auth.webhook_url, &self.auth_webhook);
        set(&mut config.log_format, &self.log_format);
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
            "s",
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
        assert_eq!(config.nats_urls, ["nats://a:1", "nats://b:2"]);
        assert_eq!(config.write_interval, Duration::ZERO);
        assert_eq!(config.max_connections, 5000);
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert_eq!(config.max_handshakes, 64);
        assert_eq!((config.request_rate, config.request_burst), (7, 9));
        assert_eq!(config.allowed_origins, ["https://app.example"]);
        assert_eq!(config.auth.jwt_secret.as_deref(), Some("s"));
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

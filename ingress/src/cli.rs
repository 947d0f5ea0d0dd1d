//! Command-line flags of `gpush-ingress`, each with a `GPUSH_*` environment
//! equivalent. Precedence: flag or env var, then the `--config` file, then
//! the defaults in [`config`](crate::config).

use crate::config::IngressConfig;
use clap::Parser;
use gpush_common::config::{ConfigError, load_file};
use gpush_common::telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The stateless push API of gpush: HTTP and gRPC in, NATS out.
#[derive(Debug, Default, Parser)]
#[command(name = "gpush-ingress", version, about)]
pub struct Cli {
    /// TOML config file; flags and env vars override its values.
    #[arg(long, env = "GPUSH_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP push API address [default: 127.0.0.1:10068, or 0.0.0.0:10068 with an API key].
    #[arg(long, env = "GPUSH_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// gRPC push API address [default: 127.0.0.1:10067, or 0.0.0.0:10067 with an API key].
    #[arg(long, env = "GPUSH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// PEM certificate chain for TLS on both push APIs (HTTPS, gRPC over TLS); needs --tls-key.
    #[arg(long, env = "GPUSH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GPUSH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs of gRPC client certificates: gRPC then requires one (mutual TLS).
    #[arg(long, env = "GPUSH_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<PathBuf>,
    /// NATS server URLs (repeat or comma-separate) [default: nats://127.0.0.1:4222].
    #[arg(long = "nats-url", env = "GPUSH_NATS_URL", value_delimiter = ',')]
    pub nats_urls: Vec<String>,
    /// etcd endpoints for `GET /v1/edges` (repeat or comma-separate).
    #[arg(long, env = "GPUSH_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// API key required as `Authorization: Bearer <key>` on push calls.
    #[arg(long, env = "GPUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Prefix of the NATS subjects; must match the edges' [default: gpush].
    #[arg(long, env = "GPUSH_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
    /// Web origins allowed to call the HTTP push API from a browser (CORS),
    /// e.g. `https://app.example.com`; `*` for any (repeat or comma-separate) [default: none].
    #[arg(long, env = "GPUSH_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Maximum payload of one push, in bytes [default: 65536].
    #[arg(long, env = "GPUSH_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// Maximum number of messages in one batch call [default: 10000].
    #[arg(long, env = "GPUSH_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Largest gRPC request message, in bytes [default: 67108864].
    #[arg(long, env = "GPUSH_MAX_GRPC_MESSAGE")]
    pub max_grpc_message: Option<usize>,
    /// Push messages per second accepted in total; 0 = unlimited [default: 0].
    #[arg(long, env = "GPUSH_PUSH_RATE")]
    pub push_rate: Option<u32>,
    /// Push messages accepted at once; at least max-batch [default: 10000].
    #[arg(long, env = "GPUSH_PUSH_BURST")]
    pub push_burst: Option<u32>,
    /// How long a publish may take before the call fails, e.g. `2s` [default: 2s].
    #[arg(long, env = "GPUSH_PUBLISH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub publish_timeout: Option<Duration>,
    /// When a push counts as published: server (confirmed by a round trip
    /// through the NATS server) or flush (written to its connection)
    /// [default: server].
    #[arg(long, env = "GPUSH_PUBLISH_ACK")]
    pub publish_ack: Option<gpush_common::bus::Ack>,
    /// Log format: human or json [default: human].
    #[arg(long, env = "GPUSH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// Reads the config file (if any), applies the overrides and validates
    /// the result, reporting every problem at once.
    pub fn load(&self) -> Result<IngressConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => IngressConfig::default(),
        };
        self.apply_overrides(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Overwrites the values of `config` that were given as flags or env vars.
    pub fn apply_overrides(&self, config: &mut IngressConfig) {
        if self.http_addr.is_some() {
            config.http_addr = self.http_addr;
        }
        if self.grpc_addr.is_some() {
            config.grpc_addr = self.grpc_addr;
        }
        if self.tls_cert.is_some() {
            config.tls_cert.clone_from(&self.tls_cert);
        }
        if self.tls_key.is_some() {
            config.tls_key.clone_from(&self.tls_key);
        }
        if self.grpc_client_ca.is_some() {
            config.grpc_client_ca.clone_from(&self.grpc_client_ca);
        }
        if !self.nats_urls.is_empty() {
            config.nats_urls.clone_from(&self.nats_urls);
        }
        if !self.etcd_endpoints.is_empty() {
            config.etcd_endpoints.clone_from(&self.etcd_endpoints);
        }
        if self.api_key.is_some() {
            config.push.api_key.clone_from(&self.api_key);
        }
        if !self.cors_allowed_origins.is_empty() {
            config
                .push
                .cors_allowed_origins
                .clone_from(&self.cors_allowed_origins);
        }
        if let Some(prefix) = &self.subject_prefix {
            config.subject_prefix.clone_from(prefix);
        }
        if let Some(max) = self.max_payload {
            config.push.max_payload = max;
        }
        if let Some(max) = self.max_batch {
            config.push.max_batch = max;
        }
        if let Some(max) = self.max_grpc_message {
            config.push.max_grpc_message = max;
        }
        if let Some(rate) = self.push_rate {
            config.push.push_rate = rate;
        }
        if let Some(burst) = self.push_burst {
            config.push.push_burst = burst;
        }
        if let Some(timeout) = self.publish_timeout {
            config.publish_timeout = timeout;
        }
        if let Some(ack) = self.publish_ack {
            config.publish_ack = ack;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("gpush-ingress").chain(args.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("gpush-ingress-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ingress.toml");
        std::fs::write(
            &path,
            "subject_prefix = \"file\"\netcd_endpoints = [\"http://e:2379\"]\n\
             [push]\nmax_payload = 10\nmax_batch = 5\n",
        )
        .expect("write");
        let cli = parse(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--nats-url",
            "nats://a:4222,nats://b:4222",
            "--nats-url",
            "nats://c:4222",
            "--max-payload",
            "20",
            "--publish-timeout",
            "150ms",
            "--api-key",
            "k",
            "--log-format",
            "json",
            "--http-addr",
            "0.0.0.0:1",
            "--cors-allowed-origins",
            "http://a.example,https://b.example:8443",
            "--max-grpc-message",
            "4096",
            "--push-rate",
            "1000",
            "--push-burst",
            "5",
        ]);
        let config = cli.load().expect("valid");
        assert_eq!(
            config.nats_urls,
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(config.push.max_payload, 20);
        assert_eq!(config.push.max_batch, 5);
        assert_eq!(config.push.max_grpc_message, 4096);
        assert_eq!((config.push.push_rate, config.push.push_burst), (1000, 5));
        assert_eq!(config.subject_prefix, "file");
        assert_eq!(config.etcd_endpoints, ["http://e:2379"]);
        assert_eq!(config.publish_timeout, Duration::from_millis(150));
        assert_eq!(config.push.api_key.as_deref(), Some("k"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(
            config.push.cors_allowed_origins,
            ["http://a.example", "https://b.example:8443"]
        );
        assert_eq!(config.http_addr().to_string(), "0.0.0.0:1");
        // With an API key the other port binds every interface.
        assert_eq!(config.grpc_addr().to_string(), "0.0.0.0:10067");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn defaults_bind_loopback_without_a_key() {
        let config = Cli::default().load().expect("valid");
        assert_eq!(config.http_addr().to_string(), "127.0.0.1:10068");
        assert_eq!(config.grpc_addr().to_string(), "127.0.0.1:10067");
    }

    #[test]
    fn every_problem_is_reported() {
        let cli = parse(&[
            "--max-payload",
            "0",
            "--subject-prefix",
            "a.*",
            "--cors-allowed-origins",
            "example.com",
            "--grpc-client-ca",
            "/nonexistent/ca.pem",
        ]);
        let message = cli.load().expect_err("invalid").to_string();
        assert!(
            message.contains("grpc_client_ca needs tls_cert"),
            "{message}"
        );
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert!(message.contains("max_payload"), "{message}");
        assert!(message.contains("cors_allowed_origins"), "{message}");
        assert!(message.contains("a.*"), "{message}");
    }
}

//! Command-line flags of `gpush-ingress`, each with a `GPUSH_*` environment
//! equivalent. Precedence: flag or env var, then the `--config` file, then
//! the defaults in [`config`](crate::config).

use crate::config::{
    DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, IngressConfig, PushAddrs, PushApiConfig,
};
use clap::Parser;
use gpush_common::config::flags::{
    LogFlags, NatsFlags, ShowDefault as _, TlsFlags, duration, override_list, override_option,
    override_value,
};
use gpush_common::config::{ConfigError, load_file};
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
    /// The push API's addresses, key and CORS origins.
    #[command(flatten)]
    pub push_api: PushApiFlags,
    /// TLS on both push APIs.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// PEM bundle of the CAs of gRPC client certificates: gRPC then requires one (mutual TLS).
    #[arg(long, env = "GPUSH_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<PathBuf>,
    /// Where pushes are published.
    #[command(flatten)]
    pub nats: NatsFlags,
    /// etcd endpoints for `GET /v1/edges` (repeat or comma-separate).
    #[arg(long, env = "GPUSH_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Maximum payload of one push, in bytes.
    #[arg(long, env = "GPUSH_MAX_PAYLOAD", shown_default = push_defaults().max_payload)]
    pub max_payload: Option<usize>,
    /// Maximum number of messages in one batch call.
    #[arg(long, env = "GPUSH_MAX_BATCH", shown_default = push_defaults().max_batch)]
    pub max_batch: Option<usize>,
    /// Largest gRPC request message, in bytes.
    #[arg(long, env = "GPUSH_MAX_GRPC_MESSAGE", shown_default = push_defaults().max_grpc_message)]
    pub max_grpc_message: Option<usize>,
    /// Push messages per second accepted in total; 0 = unlimited.
    #[arg(long, env = "GPUSH_PUSH_RATE", shown_default = push_defaults().push_rate)]
    pub push_rate: Option<u32>,
    /// Push messages accepted at once; at least max-batch.
    #[arg(long, env = "GPUSH_PUSH_BURST", shown_default = push_defaults().push_burst)]
    pub push_burst: Option<u32>,
    /// How long a publish may take before the call fails, e.g. `2s`.
    #[arg(
        long,
        env = "GPUSH_PUBLISH_TIMEOUT",
        value_parser = humantime::parse_duration,
        shown_default = duration(IngressConfig::default().publish_timeout)
    )]
    pub publish_timeout: Option<Duration>,
    /// When a push counts as published: server (confirmed by a round trip
    /// through the NATS server) or flush (written to its connection).
    #[arg(long, env = "GPUSH_PUBLISH_ACK", shown_default = IngressConfig::default().publish_ack)]
    pub publish_ack: Option<gpush_common::bus::Ack>,
    /// Logging.
    #[command(flatten)]
    pub log: LogFlags,
}

fn push_defaults() -> PushApiConfig {
    PushApiConfig::default()
}

/// The push API's flags, the same on `gpush-ingress` and
/// `gpush-edge --standalone`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct PushApiFlags {
    /// HTTP push API address (edge: standalone only).
    #[arg(long, env = "GPUSH_HTTP_ADDR", shown_default = default_addr_text(DEFAULT_HTTP_PORT))]
    pub http_addr: Option<SocketAddr>,
    /// gRPC push API address (edge: standalone only).
    #[arg(long, env = "GPUSH_GRPC_ADDR", shown_default = default_addr_text(DEFAULT_GRPC_PORT))]
    pub grpc_addr: Option<SocketAddr>,
    /// API key required as `Authorization: Bearer <key>` on push calls.
    #[arg(long, env = "GPUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Web origins allowed to call the HTTP push API from a browser (CORS),
    /// e.g. `https://app.example.com`; `*` for any (repeat or
    /// comma-separate). A standalone edge also allows its own.
    #[arg(long, env = "GPUSH_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    #[arg(shown_default = "none")]
    pub cors_allowed_origins: Vec<String>,
    /// Serve the push API without an API key beyond loopback (refused
    /// otherwise): anyone reaching it can push to every user.
    #[arg(long, env = "GPUSH_API_INSECURE")]
    pub api_insecure: bool,
}

/// The default of an address flag: loopback without an API key, every
/// interface with one.
fn default_addr_text(port: u16) -> String {
    let keyed = PushApiConfig {
        api_key: Some(String::new()),
        ..PushApiConfig::default()
    };
    format!(
        "{}, or {} with an API key",
        PushApiConfig::default().default_addr(port),
        keyed.default_addr(port)
    )
}

impl PushApiFlags {
    /// Overwrites the push API settings that were given as flags or env vars.
    pub fn apply(&self, addrs: &mut PushAddrs, push: &mut PushApiConfig) {
        override_option(&mut addrs.http_addr, &self.http_addr);
        override_option(&mut addrs.grpc_addr, &self.grpc_addr);
        override_option(&mut push.api_key, &self.api_key);
        override_list(&mut push.cors_allowed_origins, &self.cors_allowed_origins);
        push.api_insecure |= self.api_insecure;
    }
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
        let c = config;
        self.push_api.apply(&mut c.addrs, &mut c.push);
        c.tls.apply(&self.tls);
        override_option(&mut c.grpc_client_ca, &self.grpc_client_ca);
        c.nats.apply(&self.nats);
        override_list(&mut c.etcd_endpoints, &self.etcd_endpoints);
        override_value(&mut c.push.max_payload, &self.max_payload);
        override_value(&mut c.push.max_batch, &self.max_batch);
        override_value(&mut c.push.max_grpc_message, &self.max_grpc_message);
        override_value(&mut c.push.push_rate, &self.push_rate);
        override_value(&mut c.push.push_burst, &self.push_burst);
        override_value(&mut c.publish_timeout, &self.publish_timeout);
        override_value(&mut c.publish_ack, &self.publish_ack);
        c.log.apply(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpush_common::telemetry::LogFormat;

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
            config.nats.nats_urls,
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(config.push.max_payload, 20);
        assert_eq!(config.push.max_batch, 5);
        assert_eq!(config.push.max_grpc_message, 4096);
        assert_eq!((config.push.push_rate, config.push.push_burst), (1000, 5));
        assert_eq!(config.nats.subject_prefix, "file");
        assert_eq!(config.etcd_endpoints, ["http://e:2379"]);
        assert_eq!(config.publish_timeout, Duration::from_millis(150));
        assert_eq!(config.push.api_key.as_deref(), Some("k"));
        assert_eq!(config.log.log_format, LogFormat::Json);
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

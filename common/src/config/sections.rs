//! Config sections both binaries have, declared once: each is
//! `#[serde(flatten)]`ed into `EdgeConfig` and `IngressConfig`, so its keys
//! stay top-level in the TOML file, and carries its own checks and the
//! flags that override it ([`super::flags`]).

use super::Problems;
use super::flags::{LogFlags, NatsFlags, TlsFlags, override_list, override_option, override_value};
use crate::subject::{DEFAULT_PREFIX, Subjects};
use crate::telemetry::LogFormat;
use serde::Deserialize;
use std::path::PathBuf;

/// Where the bus is: keys `nats_urls` and `subject_prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// NATS servers (each entry may be a comma-separated list).
    pub nats_urls: Vec<String>,
    /// Prefix of every NATS subject gpush uses; the same on every edge and
    /// ingress.
    pub subject_prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            nats_urls: vec![crate::bus::DEFAULT_NATS_URL.to_owned()],
            subject_prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl NatsConfig {
    /// The default section with these servers.
    pub fn with_urls(nats_urls: Vec<String>) -> Self {
        Self {
            nats_urls,
            ..Self::default()
        }
    }

    /// Adds this section's problems; `required`: the process needs NATS
    /// (everything but a standalone edge).
    pub fn check(&self, required: bool, problems: &mut Problems) {
        if let Err(e) = Subjects::new(&self.subject_prefix) {
            problems.push(e.to_string());
        }
        problems.check(
            required && self.nats_urls.iter().all(|u| u.trim().is_empty()),
            || "nats_urls must name at least one server".into(),
        );
    }

    /// Overwrites what the flags give.
    pub fn apply(&mut self, flags: &NatsFlags) {
        override_list(&mut self.nats_urls, &flags.nats_urls);
        override_value(&mut self.subject_prefix, &flags.subject_prefix);
    }
}

/// The certificate every listener of the process serves: keys `tls_cert`
/// and `tls_key`, both or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). With `tls_key`, every listener
    /// of the process serves TLS: the edge's WebSocket (`wss://`) and HTTP,
    /// the push API's HTTPS and gRPC.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on (`tls_cert` and `tls_key` set).
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Adds this section's problems: one without the other, or files that
    /// do not make a server identity.
    pub fn check(&self, problems: &mut Problems) {
        crate::tls::check_identity(
            "",
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            problems,
        );
    }

    /// Overwrites what the flags give.
    pub fn apply(&mut self, flags: &TlsFlags) {
        override_option(&mut self.tls_cert, &flags.tls_cert);
        override_option(&mut self.tls_key, &flags.tls_key);
    }
}

/// How the process logs: key `log_format`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
}

impl LogConfig {
    /// Overwrites what the flags give.
    pub fn apply(&mut self, flags: &LogFlags) {
        override_value(&mut self.log_format, &flags.log_format);
    }
}

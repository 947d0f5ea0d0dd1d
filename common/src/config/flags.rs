//! The command-line flags both binaries have, declared once and flattened
//! into each `Cli` (`#[command(flatten)]`), and the one way flags override
//! the file.
//!
//! Every flag is optional, so that an absent flag leaves the file's value;
//! its help still ends in `[default: ...]`, written by
//! [`ShowDefault::shown_default`] from the config's own `Default`, never by
//! hand.

use crate::telemetry::LogFormat;
use std::fmt::Display;
use std::path::PathBuf;

/// Appends `[default: <value>]` to a flag's help; used as a clap raw
/// attribute, `#[arg(shown_default = Config::default().key)]`, after the
/// doc comment has set the help. The value is only shown: the config's
/// `Default` applies it when neither the file nor a flag sets the key.
pub trait ShowDefault {
    /// The arg with its help ending in `[default: <value>]`.
    #[must_use]
    fn shown_default(self, value: impl Display) -> Self;
}

impl ShowDefault for clap::Arg {
    fn shown_default(self, value: impl Display) -> Self {
        let help = self.get_help().map(ToString::to_string).unwrap_or_default();
        self.help(format!("{help} [default: {value}]"))
    }
}

/// The default a flag's help shows, as its help wrote it: the text after
/// `[default: ` up to the matching `]`. For the drift checks.
pub fn shown_default_of(arg: &clap::Arg) -> Option<String> {
    let help = arg.get_help()?.to_string();
    let start = help.rfind("[default: ")? + "[default: ".len();
    help[start..].strip_suffix(']').map(str::to_owned)
}

/// A duration as the deploy files write it: whole seconds as `60s`,
/// whole milliseconds as `5ms`, anything else as humantime does.
pub fn duration(value: std::time::Duration) -> String {
    if value.subsec_nanos() == 0 {
        format!("{}s", value.as_secs())
    } else if value.subsec_nanos().is_multiple_of(1_000_000) && value.as_secs() == 0 {
        format!("{}ms", value.subsec_millis())
    } else {
        humantime::format_duration(value).to_string()
    }
}

/// Replaces `target` when the flag was given.
pub fn override_value<T: Clone>(target: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        target.clone_from(value);
    }
}

/// Replaces an optional `target` when the flag was given.
pub fn override_option<T: Clone>(target: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        target.clone_from(flag);
    }
}

/// Replaces a list `target` when the flag was given at least once.
pub fn override_list(target: &mut Vec<String>, flag: &[String]) {
    if !flag.is_empty() {
        *target = flag.to_vec();
    }
}

/// Where the bus is: both binaries publish or subscribe there.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct NatsFlags {
    /// NATS server URLs (repeat or comma-separate).
    #[arg(
        long = "nats-url",
        env = "GPUSH_NATS_URL",
        value_delimiter = ',',
        shown_default = crate::bus::DEFAULT_NATS_URL
    )]
    pub nats_urls: Vec<String>,
    /// Prefix of the NATS subjects; the same on every edge and ingress.
    #[arg(long, env = "GPUSH_SUBJECT_PREFIX", shown_default = crate::subject::DEFAULT_PREFIX)]
    pub subject_prefix: Option<String>,
}

/// The certificate every listener of the process serves.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct TlsFlags {
    /// PEM certificate chain for TLS on every listener: the edge's
    /// WebSocket and HTTP, the push API's HTTPS and gRPC; needs --tls-key.
    #[arg(long, env = "GPUSH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GPUSH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// How the process logs.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct LogFlags {
    /// Log format: human or json.
    #[arg(long, env = "GPUSH_LOG_FORMAT", shown_default = LogFormat::default())]
    pub log_format: Option<LogFormat>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_was_given() {
        let mut list = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        override_list(&mut list, &[]);
        assert_eq!(list, ["a", "b", "c"]);
        override_list(&mut list, &["x".to_owned()]);
        assert_eq!(list, ["x"]);
        override_list(&mut list, &["y".to_owned(), "z".to_owned()]);
        assert_eq!(list, ["y", "z"]);
        let mut value = 1;
        override_value(&mut value, &None);
        override_value(&mut value, &Some(2));
        assert_eq!(value, 2);
        let mut option = Some(1);
        override_option(&mut option, &None);
        assert_eq!(option, Some(1));
    }

    #[test]
    fn the_default_is_appended_and_read_back() {
        let arg = clap::Arg::new("x").help("Some value.").shown_default(25);
        assert_eq!(
            arg.get_help().map(ToString::to_string).as_deref(),
            Some("Some value. [default: 25]")
        );
        assert_eq!(shown_default_of(&arg).as_deref(), Some("25"));
        assert_eq!(
            shown_default_of(&clap::Arg::new("y").help("No default.")),
            None
        );
    }
}

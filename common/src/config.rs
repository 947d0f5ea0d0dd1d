//! Loading a TOML config file, reporting every bad value at once, and
//! reading list-valued settings; [`flags`]: the flags both binaries share;
//! [`sections`]: the config sections they share.

pub mod flags;
pub mod sections;

use serde::de::DeserializeOwned;
use std::path::Path;

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The `--config` path as given.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path}: {source}")]
    Parse {
        /// The `--config` path as given.
        path: String,
        /// The TOML error, with the line and the key.
        source: toml::de::Error,
    },
    /// Values that parse but make no sense, every one of them.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Reads `path` as TOML into `T`. Unknown keys are errors (`T` should use
/// `#[serde(deny_unknown_fields)]`), so a typo is never silently ignored.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Collects validation problems; [`Problems::finish`] turns them into one
/// error listing all of them.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records a problem when `bad` holds.
    pub fn check(&mut self, bad: bool, message: impl FnOnce() -> String) {
        if bad {
            self.0.push(message());
        }
    }

    /// Records a problem.
    pub fn push(&mut self, message: String) {
        self.0.push(message);
    }

    /// Ok when nothing was recorded.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// The entries of a list setting, where each entry may itself be a
/// comma-separated list (`--nats-url a,b` or an env var holding several
/// URLs). Entries are trimmed; blank ones are dropped.
pub fn split_list(entries: &[String]) -> Vec<&str> {
    entries
        .iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_list_flattens_comma_lists_and_drops_blanks() {
        let entries = [
            "nats://a:4222, nats://b:4222".to_owned(),
            String::new(),
            " ,nats://c:4222,, ".to_owned(),
        ];
        assert_eq!(
            split_list(&entries),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert!(split_list(&[]).is_empty());
    }
}

//! The `[history]` config section: which pushes are kept, how many, how
//! long, and where. Ingress and every edge of a cluster must have the same
//! section (as they have the same `subject_prefix`): both derive from it
//! which JetStream stream keeps a topic.

use super::StreamKey;
use crate::config::Problems;
use serde::Deserialize;
use std::time::Duration;

/// Default pushes kept per stream (topic or user).
pub const DEFAULT_SIZE: usize = 100;
/// Default time a push is kept.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Default largest recovery: more missed pushes than this get
/// `recovered: false`.
pub const DEFAULT_MAX_RECOVER: usize = 1000;
/// Default bound of all kept pushes' bytes: in memory (standalone, and the
/// edge's copy of recent pushes) and per JetStream stream.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Largest `size` and `max_recover`.
pub const MAX_SIZE: usize = 1_000_000;

/// Where a cluster's JetStream keeps history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In the NATS servers' memory: lost when they all restart (a new
    /// epoch). No faster than `file` in `gpush-bench --history
    /// on,memory ingress`; and nats-server 2.9's memory store looks up a
    /// subject's previous message by scanning the stream, so it slows as
    /// topics grow (the ignored test `measure_interleaved_topics` in
    /// `tests/history_jetstream.rs` shows it; not a benchmark figure).
    Memory,
    /// On the NATS servers' disks: history survives a NATS restart.
    #[default]
    File,
}

/// Topics whose names start with `prefix` keep `size` pushes for `ttl`
/// (size 0: no history for them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    /// Topic name prefix; the longest matching rule wins.
    pub prefix: String,
    /// Pushes kept per topic; 0 turns history off for these topics.
    pub size: usize,
    /// How long each push is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// The `[history]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep history at all (then pushes carry offsets and clients can
    /// recover). A cluster needs NATS with JetStream for it.
    pub enabled: bool,
    /// Pushes kept per topic and per user (unless a `topics` rule says
    /// otherwise).
    pub size: usize,
    /// How long each push is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most pushes one recovery sends; a client that missed more gets
    /// `recovered: false`.
    pub max_recover: usize,
    /// Bound of kept pushes' bytes: in total in memory (standalone), and
    /// per JetStream stream (cluster).
    pub max_bytes: u64,
    /// Keep user streams too (user-wide pushes and private topics).
    pub users: bool,
    /// JetStream storage: `memory` or `file` (cluster only).
    pub storage: Storage,
    /// JetStream replicas of each history stream (cluster only).
    pub replicas: usize,
    /// Topic prefixes with their own size and ttl.
    pub topics: Vec<PrefixRule>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            size: DEFAULT_SIZE,
            ttl: DEFAULT_TTL,
            max_recover: DEFAULT_MAX_RECOVER,
            max_bytes: DEFAULT_MAX_BYTES,
            users: true,
            storage: Storage::default(),
            replicas: 1,
            topics: Vec::new(),
        }
    }
}

/// One stream of the history plan: which pushes it keeps and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    /// Short token naming the stream, unique within the plan and stable
    /// across restarts and rule order: `d` (topics no rule matches), `u`
    /// (users), `p<hash of the prefix>` (a prefix rule).
    pub token: String,
    /// Pushes kept per topic or user.
    pub size: usize,
    /// How long each push is kept.
    pub ttl: Duration,
}

/// The streams a config asks for and which one keeps each topic or user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every stream with history (size > 0); empty when history is off.
    pub streams: Vec<StreamPlan>,
    /// (prefix, index into `streams` or None for no history), longest
    /// prefix first.
    rules: Vec<(String, Option<usize>)>,
    /// The stream of topics no rule matches.
    default: Option<usize>,
    /// The stream of users.
    users: Option<usize>,
}

impl Plan {
    /// The stream that keeps `key`'s pushes; None: no history for it.
    pub fn stream_for(&self, key: StreamKey<'_>) -> Option<&StreamPlan> {
        let index = match key {
            StreamKey::User(_) => self.users,
            StreamKey::Topic(topic) => self
                .rules
                .iter()
                .find(|(prefix, _)| topic.starts_with(prefix.as_str()))
                .map_or(self.default, |(_, stream)| *stream),
        }?;
        self.streams.get(index)
    }
}

/// FNV-1a of a prefix, for a stream token that does not depend on rule order.
fn prefix_token(prefix: &str) -> String {
    let hash = prefix
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("p{hash:016x}")
}

impl HistoryConfig {
    /// Adds this section's problems.
    pub fn check(&self, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        let sizes = std::iter::once(self.size).chain(self.topics.iter().map(|r| r.size));
        for size in sizes {
            problems.check(size > MAX_SIZE, || {
                format!("history size {size} is over the maximum {MAX_SIZE}")
            });
        }
        problems.check(self.ttl.is_zero(), || "history.ttl must be > 0".into());
        for rule in &self.topics {
            problems.check(rule.size > 0 && rule.ttl.is_zero(), || {
                format!("history.topics prefix {:?}: ttl must be > 0", rule.prefix)
            });
            problems.check(rule.prefix.is_empty(), || {
                "history.topics: a prefix must not be empty (set history.size instead)".into()
            });
        }
        let mut prefixes: Vec<&str> = self.topics.iter().map(|r| r.prefix.as_str()).collect();
        prefixes.sort_unstable();
        for pair in prefixes.windows(2) {
            problems.check(pair[0] == pair[1], || {
                format!("history.topics: prefix {:?} is given twice", pair[0])
            });
        }
        problems.check(!(1..=MAX_SIZE).contains(&self.max_recover), || {
            format!("history.max_recover must be from 1 to {MAX_SIZE}")
        });
        problems.check(self.max_bytes == 0, || {
            "history.max_bytes must be > 0".into()
        });
        problems.check(!(1..=5).contains(&self.replicas), || {
            "history.replicas must be from 1 to 5".into()
        });
    }

    /// The streams this config asks for.
    pub fn plan(&self) -> Plan {
        let mut streams = Vec::new();
        let mut add = |token: String, size: usize, ttl: Duration| {
            (self.enabled && size > 0).then(|| {
                streams.push(StreamPlan { token, size, ttl });
                streams.len() - 1
            })
        };
        let default = add("d".into(), self.size, self.ttl);
        let users = if self.users {
            add("u".into(), self.size, self.ttl)
        } else {
            None
        };
        let mut rules: Vec<(String, Option<usize>)> = self
            .topics
            .iter()
            .map(|r| {
                (
                    r.prefix.clone(),
                    add(prefix_token(&r.prefix), r.size, r.ttl),
                )
            })
            .collect();
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Plan {
            streams,
            rules,
            default,
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, size: usize) -> PrefixRule {
        PrefixRule {
            prefix: prefix.into(),
            size,
            ttl: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_size_zero_means_none() {
        let config = HistoryConfig {
            topics: vec![
                rule("prices.", 10),
                rule("prices.live.", 0),
                rule("chat", 50),
            ],
            ..HistoryConfig::default()
        };
        let plan = config.plan();
        let size = |topic| plan.stream_for(StreamKey::Topic(topic)).map(|s| s.size);
        assert_eq!(size("news"), Some(DEFAULT_SIZE));
        assert_eq!(size("prices.eur"), Some(10));
        assert_eq!(size("prices.live.eur"), None);
        assert_eq!(size("chatroom"), Some(50));
        assert_eq!(
            plan.stream_for(StreamKey::User("alice"))
                .map(|s| s.token.as_str()),
            Some("u")
        );
        // Tokens do not depend on rule order.
        let reversed = HistoryConfig {
            topics: config.topics.iter().rev().cloned().collect(),
            ..config.clone()
        };
        let token = |plan: &Plan| {
            plan.stream_for(StreamKey::Topic("chat1"))
                .map(|s| s.token.clone())
        };
        assert_eq!(token(&plan), token(&reversed.plan()));
    }

    #[test]
    fn history_off_plans_nothing() {
        let plan = HistoryConfig {
            enabled: false,
            ..HistoryConfig::default()
        }
        .plan();
        assert!(plan.streams.is_empty());
        assert_eq!(plan.stream_for(StreamKey::Topic("news")), None);
        assert_eq!(plan.stream_for(StreamKey::User("u")), None);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let config = HistoryConfig {
            ttl: Duration::ZERO,
            max_recover: 0,
            topics: vec![rule("a", 1), rule("a", 2), rule("", 3)],
            ..HistoryConfig::default()
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        let Err(crate::config::ConfigError::Invalid(list)) = problems.finish() else {
            panic!("accepted");
        };
        assert_eq!(list.len(), 4, "{list:?}");
    }
}

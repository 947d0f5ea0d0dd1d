//! The `[presence]` and `[events]` config sections: which topics tell
//! their subscribers who joins and leaves (and answer request code 7), how
//! those changes are coalesced, and where user online/offline events go.

use gpush_common::config::Problems;
use serde::Deserialize;
use std::time::Duration;

/// Default coalescing window of presence pushes (and of the edges'
/// presence changes to each other).
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest `presence.interval`.
pub const MIN_PRESENCE_INTERVAL: Duration = Duration::from_millis(10);
/// Default most 10005/10006 pushes per topic per window; beyond it one
/// 10010 replaces them.
pub const DEFAULT_PRESENCE_MAX_CHANGES: usize = 100;
/// Default interval of the presence heartbeat each edge publishes; an edge
/// not heard from for [`LIVENESS_HEARTBEATS`] of its heartbeats is taken
/// for dead and its users leave.
pub const DEFAULT_PRESENCE_HEARTBEAT: Duration = Duration::from_secs(2);
/// Shortest `presence.heartbeat`.
pub const MIN_PRESENCE_HEARTBEAT: Duration = Duration::from_millis(100);
/// Heartbeats an edge may miss before the others drop it.
pub const LIVENESS_HEARTBEATS: u32 = 3;
/// Default bound of an edge's presence view (the other edges' users of the
/// topics it tracks), in bytes.
pub const DEFAULT_PRESENCE_MAX_BYTES: usize = 128 * 1024 * 1024;
/// Smallest `presence.max_bytes`.
pub const MIN_PRESENCE_MAX_BYTES: usize = 64 * 1024;
/// Default time an online/offline event is kept in the events stream.
pub const DEFAULT_EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default timeout of one events webhook call.
pub const DEFAULT_EVENTS_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default most events per webhook call.
pub const DEFAULT_EVENTS_WEBHOOK_BATCH: usize = 100;
/// Default bound of the events waiting for the webhook, in bytes.
pub const DEFAULT_EVENTS_WEBHOOK_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Topics whose names start with `prefix` (`""`: every topic): whether
/// their subscribers are told who joins and leaves, and whether they may
/// ask who is there. The longest matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    /// Topic name prefix.
    pub prefix: String,
    /// Pushes 10005 (joined), 10006 (left), 10010 (too many changes) to
    /// the topic's subscribers.
    #[serde(default)]
    pub events: bool,
    /// Request code 7 (the topic's presence) allowed to its subscribers.
    #[serde(default)]
    pub query: bool,
}

/// The `[presence]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Coalescing window: the changes of a topic within one are sent to
    /// its subscribers together, net (a join and a leave of the same user
    /// cancel), at its end. Edges also tell each other their changes once
    /// per window, so a change reaches another edge's subscribers within
    /// about two windows.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most 10005/10006 pushes per topic per window; with more changes the
    /// window's subscribers get one 10010 instead.
    pub max_changes: usize,
    /// How often each edge publishes its presence heartbeat. An edge not
    /// heard from for 3 of its heartbeats is taken for dead: its users
    /// leave every topic (and go offline) on the other edges.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Bound of this edge's view of the other edges' presence, in bytes
    /// (an estimate per tracked (topic, user)); beyond it other edges' new
    /// users are left out of this edge's view and counted.
    pub max_bytes: usize,
    /// Which topics have presence; none by default.
    pub topics: Vec<PresenceRule>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_PRESENCE_INTERVAL,
            max_changes: DEFAULT_PRESENCE_MAX_CHANGES,
            heartbeat: DEFAULT_PRESENCE_HEARTBEAT,
            max_bytes: DEFAULT_PRESENCE_MAX_BYTES,
            topics: Vec::new(),
        }
    }
}

impl PresenceConfig {
    /// The rule for `topic`: the longest matching prefix; None when no
    /// rule matches.
    pub fn rule(&self, topic: &str) -> Option<&PresenceRule> {
        self.topics
            .iter()
            .filter(|rule| topic.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }

    /// How long another edge's silence makes it dead, at this edge's
    /// heartbeat.
    pub fn liveness_timeout(&self) -> Duration {
        self.heartbeat * LIVENESS_HEARTBEATS
    }

    pub(crate) fn check(&self, max_name_len: usize, p: &mut Problems) {
        p.check(self.interval < MIN_PRESENCE_INTERVAL, || {
            format!("presence.interval must be >= {MIN_PRESENCE_INTERVAL:?}")
        });
        p.check(self.max_changes == 0, || {
            "presence.max_changes must be > 0".into()
        });
        p.check(self.heartbeat < MIN_PRESENCE_HEARTBEAT, || {
            format!("presence.heartbeat must be >= {MIN_PRESENCE_HEARTBEAT:?}")
        });
        p.check(self.max_bytes < MIN_PRESENCE_MAX_BYTES, || {
            format!("presence.max_bytes must be >= {MIN_PRESENCE_MAX_BYTES}")
        });
        for (n, rule) in self.topics.iter().enumerate() {
            p.check(rule.prefix.len() > max_name_len, || {
                format!(
                    "presence.topics: prefix {:?} is longer than max_name_len",
                    rule.prefix
                )
            });
            p.check(
                self.topics[..n].iter().any(|r| r.prefix == rule.prefix),
                || format!("presence.topics: prefix {:?} has two rules", rule.prefix),
            );
        }
    }
}

/// The `[events]` section: user online/offline events for backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Publish one event when a user's first connection logs in anywhere
    /// in the cluster and one when its last is gone, on
    /// `<prefix>.events.online` (and into the JetStream stream
    /// `<PREFIX>_EVENTS` with history on); standalone, to `webhook_url`.
    /// Every edge then tracks every logged-in user of the cluster.
    pub online: bool,
    /// How long the events stream keeps an event (cluster, history on).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Standalone: URL the events are POSTed to, in batches
    /// `{"events":[...]}`, retried with backoff until answered 2xx.
    pub webhook_url: Option<String>,
    /// Timeout of one webhook call.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Most events in one webhook call.
    pub webhook_batch: usize,
    /// Bound of the events waiting for the webhook, in bytes (their JSON);
    /// when full, the oldest waiting events are dropped (and counted).
    pub webhook_queue_bytes: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            online: false,
            max_age: DEFAULT_EVENTS_MAX_AGE,
            webhook_url: None,
            webhook_timeout: DEFAULT_EVENTS_WEBHOOK_TIMEOUT,
            webhook_batch: DEFAULT_EVENTS_WEBHOOK_BATCH,
            webhook_queue_bytes: DEFAULT_EVENTS_WEBHOOK_QUEUE_BYTES,
        }
    }
}

impl EventsConfig {
    pub(crate) fn check(&self, standalone: bool, p: &mut Problems) {
        p.check(self.max_age < Duration::from_secs(1), || {
            "events.max_age must be >= 1s".into()
        });
        p.check(self.webhook_timeout.is_zero(), || {
            "events.webhook_timeout must be > 0".into()
        });
        p.check(self.webhook_batch == 0, || {
            "events.webhook_batch must be > 0".into()
        });
        p.check(self.webhook_queue_bytes < 1024, || {
            "events.webhook_queue_bytes must be >= 1024".into()
        });
        match &self.webhook_url {
            Some(url) => {
                p.check(
                    !(url.starts_with("http://") || url.starts_with("https://")),
                    || format!("events.webhook_url {url:?} must be an http:// or https:// URL"),
                );
                p.check(!standalone, || {
                    "events.webhook_url is for standalone edges; a cluster publishes events on \
                     NATS (<prefix>.events.online)"
                        .into()
                });
                p.check(!self.online, || {
                    "events.webhook_url needs events.online = true".into()
                });
            }
            None => p.check(standalone && self.online, || {
                "events.online on a standalone edge needs events.webhook_url (there is no NATS \
                 to publish on)"
                    .into()
            }),
        }
    }
}

/// Where `max_connections_per_user` counts a user's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserLimitScope {
    /// On this edge only.
    #[default]
    Edge,
    /// On this edge, and on all edges together as this edge's presence
    /// tracker knows them (each edge then tracks every logged-in user of
    /// the cluster; see `[presence]`).
    Cluster,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_rules() {
        let config: PresenceConfig = toml::from_str(
            "[[topics]]\nprefix = \"\"\nquery = true\n\
             [[topics]]\nprefix = \"chat.\"\nevents = true\nquery = true\n\
             [[topics]]\nprefix = \"chat.secret.\"\n",
        )
        .expect("parses");
        let rule = |topic| config.rule(topic).map(|r| (r.events, r.query));
        assert_eq!(rule("news"), Some((false, true)));
        assert_eq!(rule("chat.1"), Some((true, true)));
        assert_eq!(rule("chat.secret.1"), Some((false, false)));
        assert_eq!(PresenceConfig::default().rule("chat.1"), None);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let presence = PresenceConfig {
            interval: Duration::ZERO,
            max_changes: 0,
            heartbeat: Duration::from_millis(1),
            max_bytes: 1,
            topics: vec![
                PresenceRule {
                    prefix: "a".into(),
                    events: true,
                    query: false,
                },
                PresenceRule {
                    prefix: "a".into(),
                    events: false,
                    query: true,
                },
            ],
        };
        let mut p = Problems::default();
        presence.check(256, &mut p);
        let events = EventsConfig {
            webhook_url: Some("ftp://x".into()),
            ..EventsConfig::default()
        };
        events.check(false, &mut p);
        let message = p.finish().expect_err("invalid").to_string();
        for needle in [
            "presence.interval",
            "presence.max_changes",
            "presence.heartbeat",
            "presence.max_bytes",
            "two rules",
            "http:// or https://",
            "for standalone edges",
            "needs events.online",
        ] {
            assert!(message.contains(needle), "{needle} not in {message}");
        }
        let mut p = Problems::default();
        EventsConfig {
            online: true,
            ..EventsConfig::default()
        }
        .check(true, &mut p);
        assert!(
            p.finish().is_err(),
            "standalone online events need a webhook"
        );
    }
}

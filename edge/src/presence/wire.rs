//! What edges tell each other about presence on NATS, and the online
//! events backends get. JSON, like the control plane.
//!
//! - A [`Change`] on `<prefix>.pr.t.<topic>` (a topic's group) or
//!   `<prefix>.pr.u` (the logged-in users): one edge's connection counts
//!   of the users that changed there within a window (absolute: 0 is
//!   gone), and of its anonymous connections; numbered per edge, so a
//!   receiver drops what a seed already covered. A *full* change replaces
//!   everything the edge said before (after the edge was frozen or its bus
//!   connection was away, when the others may have dropped it).
//! - A [`Heartbeat`] on `<prefix>.pr.hb` every `presence.heartbeat`: an
//!   edge silent for three of its heartbeats is dead; `bye` when it stops;
//!   `hello` when it starts (every edge answers with its heartbeat, so the
//!   newcomer knows who is there).
//!
//! Each message names the edge (`node`) and when its tracker started
//! (`started`, unix microseconds): an edge restarted under the same node id
//! replaces the one before.

use serde::{Deserialize, Serialize};

/// One edge's changes of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    /// The edge.
    pub(crate) node: String,
    /// When its tracker started (unix microseconds).
    pub(crate) started: u64,
    /// Its number: every change of an edge has a larger one than the last.
    pub(crate) seq: u64,
    /// Replaces everything the edge said of the group before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) full: bool,
    /// (uid, the edge's connections now).
    #[serde(default)]
    pub(crate) users: Vec<(String, u32)>,
    /// The edge's connections without a login now, when that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) anonymous: Option<u32>,
}

/// Bytes of JSON one (uid, count) pair takes besides the uid's own bytes,
/// at most (brackets, quotes, comma, a count of up to 10 digits), a uid's
/// escaped characters taking up to 6 bytes each.
const PAIR_OVERHEAD: usize = 18;
/// Bytes a change takes besides its pairs, at most (a node id counted
/// apart).
const CHANGE_OVERHEAD: usize = 128;

impl Change {
    /// Its size in memory and, at most, in JSON (roughly).
    pub(crate) fn bytes(&self) -> usize {
        CHANGE_OVERHEAD
            + self.node.len() * 6
            + self
                .users
                .iter()
                .map(|(uid, _)| uid.len() * 6 + PAIR_OVERHEAD)
                .sum::<usize>()
    }

    /// `users` cut into parts whose changes stay under `max_bytes` of JSON
    /// (at least one pair each); one part when empty.
    pub(crate) fn chunks(
        node: &str,
        users: Vec<(String, u32)>,
        max_bytes: usize,
    ) -> Vec<Vec<(String, u32)>> {
        let budget = max_bytes.saturating_sub(CHANGE_OVERHEAD + node.len() * 6);
        let mut chunks = vec![Vec::new()];
        let mut used = 0;
        for pair in users {
            let size = pair.0.len() * 6 + PAIR_OVERHEAD;
            if used + size > budget && chunks.last().is_some_and(|c| !c.is_empty()) {
                chunks.push(Vec::new());
                used = 0;
            }
            used += size;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(pair);
            }
        }
        chunks
    }
}

/// An edge's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// The edge.
    pub(crate) node: String,
    /// When its tracker started (unix microseconds).
    pub(crate) started: u64,
    /// Its heartbeat interval, milliseconds.
    pub(crate) every_ms: u64,
    /// Whether it publishes online events (it may be chosen to publish a
    /// user's).
    #[serde(default)]
    pub(crate) online: bool,
    /// It just started: every edge answers with its heartbeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) hello: bool,
    /// It stops: drop it now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) bye: bool,
}

/// A user online/offline event for backends:
/// `{"uid":U,"online":true|false,"at":<unix ms>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OnlineEvent {
    /// The user.
    pub(crate) uid: String,
    /// Whether its first connection appeared (true) or its last is gone.
    pub(crate) online: bool,
    /// When this edge saw it, unix milliseconds.
    pub(crate) at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_and_chunks_stay_under_the_bound() {
        let change = Change {
            node: "edge-1".into(),
            started: 7,
            seq: 3,
            full: false,
            users: vec![("ann".into(), 2), ("b\"ob".into(), 0)],
            anonymous: Some(1),
        };
        let json = serde_json::to_string(&change).expect("json");
        assert_eq!(
            json,
            r#"{"node":"edge-1","started":7,"seq":3,"users":[["ann",2],["b\"ob",0]],"anonymous":1}"#
        );
        assert_eq!(serde_json::from_str::<Change>(&json).expect("read"), change);
        let users: Vec<(String, u32)> = (0..5_000)
            .map(|n| (format!("user-{n}-\u{1}"), u32::MAX))
            .collect();
        let chunks = Change::chunks("edge-1", users.clone(), 16 * 1024);
        assert!(chunks.len() > 3, "{}", chunks.len());
        for chunk in &chunks {
            let part = Change {
                users: chunk.clone(),
                ..change.clone()
            };
            let size = serde_json::to_vec(&part).expect("json").len();
            assert!(size <= 16 * 1024, "{size}");
        }
        assert_eq!(chunks.concat(), users);
        assert_eq!(Change::chunks("n", Vec::new(), 100), [Vec::new()]);
    }

    #[test]
    fn heartbeats_and_events_read_as_documented() {
        let hb: Heartbeat =
            serde_json::from_str(r#"{"node":"a","started":1,"every_ms":2000}"#).expect("read");
        assert!(!hb.online && !hb.hello && !hb.bye);
        let event = OnlineEvent {
            uid: "ann".into(),
            online: true,
            at: 5,
        };
        assert_eq!(
            serde_json::to_string(&event).expect("json"),
            r#"{"uid":"ann","online":true,"at":5}"#
        );
    }
}

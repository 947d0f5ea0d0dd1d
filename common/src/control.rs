//! The control plane: what the server API asks of the edges, and how their
//! answers combine.
//!
//! A [`Command`] steers a user's connections (disconnect, logout,
//! subscribe, unsubscribe) or asks what the edges hold (presence of a
//! topic, online users, active topics). In a cluster, ingress sends it once
//! to every edge on the control subject (`<prefix>.ctl`, see
//! [`Subjects::control`](crate::Subjects::control)) and gathers the replies
//! within a deadline (see [`crate::Bus::control`]); an edge that did not
//! answer in time is named as missing, never silently left out. Standalone,
//! the edge answers from its own hub. No state is kept anywhere but in the
//! edges' indexes, so no new stateful component is needed.
//!
//! An edge's answer can be long (the presence of a topic with 50,000
//! subscribers): it is sent in [`Part`]s, each under the NATS server's
//! `max_payload`, the last one marked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Default time ingress waits for every edge's answer.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(1);
/// Default and largest number of topics `GET /v1/topics` lists.
pub const DEFAULT_TOPICS_LIMIT: usize = 100;
/// Largest `limit` of `GET /v1/topics`; also the most topics one edge
/// reports (beyond it the answer says `truncated`).
pub const MAX_TOPICS_LIMIT: usize = 10_000;
/// Default most bytes of answers one gather keeps (the parts as
/// received, all edges together): a presence of a topic with a million
/// users is about 20 MiB. Beyond it the call fails
/// ([`crate::BusError::AnswerTooLarge`]) instead of holding an unbounded
/// answer in memory.
pub const DEFAULT_CONTROL_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most uids one `GET /v1/online` call may name.
pub const MAX_ONLINE_UIDS: usize = 1_000;

/// What the server API asks of every edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Close every connection logged in as `uid` (close code 4003, with
    /// `reason` as the close reason when given).
    Disconnect {
        /// The user.
        uid: String,
        /// Sent as the close frame's reason (empty: the default text).
        #[serde(default)]
        reason: String,
    },
    /// End `uid`'s logins (push 10004, reason `logout`); the connections
    /// stay open.
    Logout {
        /// The user.
        uid: String,
    },
    /// Subscribe every connection of `uid` to `topic` (push 10008).
    Subscribe {
        /// The user.
        uid: String,
        /// The topic: one of the user's private topics, or public.
        topic: String,
        /// A public topic instead of a private one.
        #[serde(default)]
        public: bool,
        /// Whether the client should keep it across reconnects (said in
        /// the 10008 push; the browser client follows it).
        #[serde(default)]
        keep: bool,
    },
    /// Unsubscribe every connection of `uid` from `topic` (push 10009).
    Unsubscribe {
        /// The user.
        uid: String,
        /// The topic: one of the user's private topics, or public.
        topic: String,
        /// A public topic instead of a private one.
        #[serde(default)]
        public: bool,
    },
    /// The users subscribed to public `topic` (only `uid` when given), with
    /// their connection counts, and the connections subscribed without a
    /// login.
    Presence {
        /// The public topic.
        topic: String,
        /// Only this user (empty: all).
        #[serde(default)]
        uid: String,
    },
    /// Connections logged in as each of `uids`.
    Online {
        /// The users, answered in this order.
        uids: Vec<String>,
    },
    /// Public topics with subscribers whose names start with `prefix`,
    /// with their subscriber counts, at most `limit`, busiest first.
    Topics {
        /// Only topics starting with this.
        #[serde(default)]
        prefix: String,
        /// At most this many.
        limit: usize,
    },
    /// The edge's own presence of `topic` (or of the logged-in users) as
    /// its presence tracker numbers it: what another edge seeds its view
    /// with before it follows the changes published on the presence
    /// subject (see the edge's `presence` module).
    Tracked {
        /// The public topic; None: the logged-in users.
        #[serde(default)]
        topic: Option<String>,
    },
}

impl Command {
    /// The kind of command, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Disconnect { .. } => "disconnect",
            Command::Logout { .. } => "logout",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Presence { .. } => "presence",
            Command::Online { .. } => "online",
            Command::Topics { .. } => "topics",
            Command::Tracked { .. } => "tracked",
        }
    }
}

/// One edge's answer (or one part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// How many connections the command reached (disconnect, logout,
    /// subscribe, unsubscribe).
    Reached {
        /// Connections told.
        connections: u64,
    },
    /// Presence of a topic on the edge, or a part of it.
    Presence {
        /// (uid, connections subscribed) pairs.
        users: Vec<(String, u64)>,
        /// Connections subscribed without a login.
        anonymous: u64,
    },
    /// Connections per uid, in the order asked.
    Online {
        /// One count per uid.
        counts: Vec<u64>,
    },
    /// Topics with subscribers, or a part of them.
    Topics {
        /// (topic, subscribers) pairs.
        topics: Vec<(String, u64)>,
        /// More topics matched than the edge reports.
        truncated: bool,
    },
    /// An edge's own presence of a topic or of the logged-in users, as
    /// its tracker numbers it (see [`Command::Tracked`]), or a part of it.
    Tracked {
        /// When the answering edge's tracker started (unix microseconds):
        /// tells an edge restarted under the same node id from the one
        /// before.
        started: u64,
        /// The number of the answering edge's last presence change this
        /// answer includes: its changes numbered up to it are in here.
        seq: u64,
        /// (uid, connections) pairs.
        users: Vec<(String, u64)>,
        /// Connections subscribed without a login (topics only).
        anonymous: u64,
    },
    /// The edge could not carry out the command (it could not be read).
    Refused {
        /// Why.
        error: String,
    },
}

impl Answer {
    /// About the bytes of this answer in JSON, as it travels between an
    /// edge and ingress (names counted as their bytes plus the entry's
    /// syntax).
    pub fn approx_bytes(&self) -> usize {
        let entries = |list: &[(String, u64)]| {
            list.iter()
                .map(|(name, _)| name.len() + ENTRY_OVERHEAD)
                .sum::<usize>()
        };
        PART_OVERHEAD
            + match self {
                Answer::Presence { users, .. } => entries(users),
                Answer::Topics { topics, .. } => entries(topics),
                Answer::Online { counts } => counts.len() * 21,
                _ => 0,
            }
    }
}

/// What an edge sends on the reply subject: its node id and one part of
/// its answer; `last` marks the end of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The answering edge.
    pub node: String,
    /// This part.
    pub answer: Answer,
    /// Whether this is the answer's last part.
    pub last: bool,
}

/// Bytes a part may take beyond its entries (node id, keys, braces).
const PART_OVERHEAD: usize = 512;
/// What one (name, count) entry takes in JSON beyond the name's bytes:
/// brackets, quotes, comma, a count of up to 20 digits. A name's escaped
/// characters (`\u0001`) take up to 6 bytes each, counted separately.
const ENTRY_OVERHEAD: usize = 28;

/// Splits `answer` into parts of at most `max_bytes` of JSON each (at least
/// one entry per part), the last one marked.
pub fn split(node: &str, answer: Answer, max_bytes: usize) -> Vec<Part> {
    let budget = max_bytes.saturating_sub(PART_OVERHEAD + node.len() * 6);
    let cost = |name: &str| ENTRY_OVERHEAD + name.len() * 6;
    let chunks = |entries: Vec<(String, u64)>| -> Vec<Vec<(String, u64)>> {
        let mut chunks = vec![Vec::new()];
        let mut used = 0;
        for entry in entries {
            let size = cost(&entry.0);
            let current = chunks.last_mut().expect("never empty");
            if !current.is_empty() && used + size > budget {
                chunks.push(Vec::new());
                used = 0;
            }
            used += size;
            chunks.last_mut().expect("never empty").push(entry);
        }
        chunks
    };
    let answers: Vec<Answer> = match answer {
        Answer::Presence { users, anonymous } => chunks(users)
            .into_iter()
            .enumerate()
            .map(|(n, users)| Answer::Presence {
                users,
                anonymous: if n == 0 { anonymous } else { 0 },
            })
            .collect(),
        Answer::Topics { topics, truncated } => chunks(topics)
            .into_iter()
            .map(|topics| Answer::Topics { topics, truncated })
            .collect(),
        Answer::Tracked {
            started,
            seq,
            users,
            anonymous,
        } => chunks(users)
            .into_iter()
            .enumerate()
            .map(|(n, users)| Answer::Tracked {
                started,
                seq,
                users,
                anonymous: if n == 0 { anonymous } else { 0 },
            })
            .collect(),
        other => vec![other],
    };
    let count = answers.len();
    answers
        .into_iter()
        .enumerate()
        .map(|(n, answer)| Part {
            node: node.to_owned(),
            answer,
            last: n + 1 == count,
        })
        .collect()
}

/// Every edge's answer to one command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gathered {
    /// The edges that answered in full, and their answers (the parts of
    /// one answer in order).
    pub answers: BTreeMap<String, Vec<Answer>>,
    /// The edges expected (registered in etcd) that did not answer in full
    /// within the deadline, and any edge that sent part of an answer and
    /// not its end. Their parts are left out.
    pub missing: Vec<String>,
    /// Whether the edges expected were known: without an edge directory
    /// (no etcd) the deadline is waited out and nobody can be named
    /// missing.
    pub expected_known: bool,
}

impl Gathered {
    /// Every answer part of every edge that answered in full.
    pub fn parts(&self) -> impl Iterator<Item = &Answer> {
        self.answers.values().flatten()
    }

    /// The first refusal, if an edge refused.
    pub fn refusal(&self) -> Option<&str> {
        self.parts().find_map(|answer| match answer {
            Answer::Refused { error } => Some(error.as_str()),
            _ => None,
        })
    }

    /// Connections reached, all edges together.
    pub fn reached(&self) -> u64 {
        self.parts()
            .map(|answer| match answer {
                Answer::Reached { connections } => *connections,
                _ => 0,
            })
            .sum()
    }

    /// A topic's presence: connections per uid (summed over edges), and
    /// connections without a login.
    pub fn presence(&self) -> (BTreeMap<String, u64>, u64) {
        let mut users = BTreeMap::<String, u64>::new();
        let mut anonymous = 0;
        for answer in self.parts() {
            if let Answer::Presence {
                users: part,
                anonymous: a,
            } = answer
            {
                anonymous += a;
                for (uid, n) in part {
                    *users.entry(uid.clone()).or_default() += n;
                }
            }
        }
        (users, anonymous)
    }

    /// Connections per uid of `uids`, summed over edges.
    pub fn online(&self, uids: &[String]) -> BTreeMap<String, u64> {
        let mut online: BTreeMap<String, u64> = uids.iter().map(|u| (u.clone(), 0)).collect();
        for answer in self.parts() {
            if let Answer::Online { counts } = answer {
                for (uid, n) in uids.iter().zip(counts) {
                    *online.entry(uid.clone()).or_default() += n;
                }
            }
        }
        online
    }

    /// Subscribers per topic summed over edges, busiest first (ties by
    /// name), at most `limit`; and whether more matched (an edge truncated
    /// its list, or more than `limit` were found).
    pub fn topics(&self, limit: usize) -> (Vec<(String, u64)>, bool) {
        let mut merged = BTreeMap::<String, u64>::new();
        let mut truncated = false;
        for answer in self.parts() {
            if let Answer::Topics {
                topics,
                truncated: t,
            } = answer
            {
                truncated |= t;
                for (topic, n) in topics {
                    *merged.entry(topic.clone()).or_default() += n;
                }
            }
        }
        let mut topics: Vec<(String, u64)> = merged.into_iter().collect();
        topics.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if topics.len() > limit {
            topics.truncate(limit);
            truncated = true;
        }
        (topics, truncated)
    }
}

/// One edge's answer to [`Command::Tracked`], its parts merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracked {
    /// The answering edge's node id.
    pub node: String,
    /// When its tracker started (unix microseconds).
    pub started: u64,
    /// Its last change included.
    pub seq: u64,
    /// (uid, connections) pairs.
    pub users: Vec<(String, u64)>,
    /// Connections without a login.
    pub anonymous: u64,
}

impl Gathered {
    /// Each edge's answer to [`Command::Tracked`], its parts merged.
    pub fn tracked(self) -> Vec<Tracked> {
        let mut all = Vec::with_capacity(self.answers.len());
        for (node, answers) in self.answers {
            let mut merged = Tracked {
                node,
                ..Tracked::default()
            };
            let mut any = false;
            for answer in answers {
                if let Answer::Tracked {
                    started,
                    seq,
                    users,
                    anonymous,
                } = answer
                {
                    any = true;
                    merged.started = started;
                    merged.seq = seq;
                    merged.anonymous += anonymous;
                    merged.users.extend(users);
                }
            }
            if any {
                all.push(merged);
            }
        }
        all
    }
}

/// Collects parts as they arrive; see [`Gathered`].
#[derive(Debug, Default)]
pub struct Gathering {
    done: BTreeMap<String, Vec<Answer>>,
    open: BTreeMap<String, Vec<Answer>>,
}

impl Gathering {
    /// Takes one part.
    pub fn add(&mut self, part: Part) {
        if self.done.contains_key(&part.node) {
            return;
        }
        let answers = self.open.entry(part.node.clone()).or_default();
        answers.push(part.answer);
        if part.last {
            let answers = self.open.remove(&part.node).unwrap_or_default();
            self.done.insert(part.node, answers);
        }
    }

    /// Whether every edge of `expected` has answered in full.
    pub fn has_all(&self, expected: &[String]) -> bool {
        expected.iter().all(|node| self.done.contains_key(node))
    }

    /// The answers, with the edges of `expected` (None: unknown) that did
    /// not answer in full named missing.
    pub fn finish(self, expected: Option<&[String]>) -> Gathered {
        let mut missing: Vec<String> = expected
            .unwrap_or_default()
            .iter()
            .filter(|node| !self.done.contains_key(*node))
            .cloned()
            .collect();
        // Edges that began an answer and did not end it, expected or not.
        for node in self.open.into_keys() {
            if !missing.contains(&node) {
                missing.push(node);
            }
        }
        Gathered {
            answers: self.done,
            missing,
            expected_known: expected.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_split_under_the_size_and_merge_back() {
        let users: Vec<(String, u64)> = (0..10_000).map(|n| (format!("user-{n}"), 1)).collect();
        let answer = Answer::Presence {
            users: users.clone(),
            anonymous: 7,
        };
        let parts = split("edge-1", answer, 16 * 1024);
        assert!(parts.len() > 5, "{} parts", parts.len());
        for part in &parts {
            let size = serde_json::to_vec(part).expect("json").len();
            assert!(size <= 16 * 1024, "a part of {size} bytes");
        }
        assert_eq!(parts.iter().filter(|p| p.last).count(), 1);
        assert!(parts.last().expect("parts").last);
        let mut gathering = Gathering::default();
        for part in parts {
            gathering.add(part);
        }
        let gathered = gathering.finish(Some(&["edge-1".into(), "edge-2".into()]));
        assert_eq!(gathered.missing, ["edge-2"]);
        let (merged, anonymous) = gathered.presence();
        assert_eq!(anonymous, 7);
        assert_eq!(merged.len(), users.len());
    }

    #[test]
    fn an_edge_without_its_last_part_is_missing_and_left_out() {
        let mut gathering = Gathering::default();
        let answer = |users: &[&str]| Answer::Presence {
            users: users.iter().map(|u| (u.to_string(), 1)).collect(),
            anonymous: 0,
        };
        gathering.add(Part {
            node: "a".into(),
            answer: answer(&["x", "y"]),
            last: true,
        });
        gathering.add(Part {
            node: "b".into(),
            answer: answer(&["x"]),
            last: false,
        });
        let gathered = gathering.finish(Some(&["a".into(), "b".into()]));
        assert_eq!(gathered.missing, ["b"]);
        let (users, _) = gathered.presence();
        assert_eq!(
            users.get("x"),
            Some(&1),
            "b's partial answer is not counted"
        );
    }

    #[test]
    fn topics_merge_busiest_first() {
        let mut gathering = Gathering::default();
        for (node, topics) in [("a", vec![("t1", 2), ("t2", 5)]), ("b", vec![("t1", 4)])] {
            gathering.add(Part {
                node: node.into(),
                answer: Answer::Topics {
                    topics: topics.into_iter().map(|(t, n)| (t.into(), n)).collect(),
                    truncated: false,
                },
                last: true,
            });
        }
        let gathered = gathering.finish(None);
        assert!(!gathered.expected_known);
        assert_eq!(
            gathered.topics(10),
            (vec![("t1".into(), 6), ("t2".into(), 5)], false)
        );
        assert_eq!(gathered.topics(1), (vec![("t1".into(), 6)], true));
    }

    #[test]
    fn tracked_answers_split_and_merge_with_their_numbers() {
        let users: Vec<(String, u64)> = (0..2_000).map(|n| (format!("u{n}"), 2)).collect();
        let answer = Answer::Tracked {
            started: 11,
            seq: 42,
            users: users.clone(),
            anonymous: 3,
        };
        let parts = split("edge-1", answer, 8 * 1024);
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut gathering = Gathering::default();
        for part in parts {
            gathering.add(part);
        }
        let tracked = gathering.finish(None).tracked();
        assert_eq!(
            tracked,
            [Tracked {
                node: "edge-1".into(),
                started: 11,
                seq: 42,
                users,
                anonymous: 3,
            }]
        );
        let command: Command = serde_json::from_str(r#"{"op":"tracked"}"#).expect("parse");
        assert_eq!(command, Command::Tracked { topic: None });
    }

    #[test]
    fn commands_read_as_documented() {
        let command: Command =
            serde_json::from_str(r#"{"op":"subscribe","uid":"u","topic":"t","keep":true}"#)
                .expect("parse");
        assert_eq!(
            command,
            Command::Subscribe {
                uid: "u".into(),
                topic: "t".into(),
                public: false,
                keep: true
            }
        );
    }
}

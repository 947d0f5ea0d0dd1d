//! The coordinator ↔ client-process protocol: one JSON object per line.
//!
//! The coordinator writes [`Command`]s to a client's stdin; the client
//! writes [`Event`]s to its stdout. A client first reports [`Event::Ready`]
//! once every connection is set up, then [`Event::Progress`] every few
//! milliseconds while its push count changes (the fan-out pusher paces
//! itself on it), and [`Event::Stats`] when asked. A churn client reports
//! only [`Event::Churn`] at its end. A client exits on [`Command::Quit`] or
//! when its stdin closes, so a dying coordinator takes its clients with it.

use crate::bench::histogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The uid of the user behind connection number `index` (over all client
/// processes of a fleet); the private pushers address users by it.
pub fn user_id(index: usize) -> String {
    format!("u{index}")
}

/// The public topic of connection number `index` when a fleet spreads its
/// connections over `topics` topics named after `base`.
pub fn topic_name(base: &str, topics: usize, index: usize) -> String {
    if topics <= 1 {
        base.to_owned()
    } else {
        format!("{base}-{}", index % topics)
    }
}

/// The `j`-th of `per_conn` public topics of connection number `index`
/// when a fleet spreads `per_conn` subscriptions per connection over
/// `topics` topics named after `base`: topic `(index + j * stride) %
/// topics`. With `topics = per_conn * stride` (and as many connections as
/// topics) every topic has exactly `per_conn` subscribers, `stride`
/// connections apart.
pub fn topic_of(base: &str, topics: usize, stride: usize, index: usize, j: usize) -> String {
    format!("{base}-{}", (index + j * stride) % topics.max(1))
}

/// Coordinator → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Answer with [`Event::Stats`].
    Stats,
    /// Zero every counter and the histogram, then answer with [`Event::Reset`].
    Reset,
    /// Setting up: start no more connections (those not started count as
    /// [`Setup::halted`]); [`Event::Ready`] follows once the started ones
    /// are done. Ignored once ready.
    Halt,
    /// Close everything and exit.
    Quit,
}

/// Client → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every connection was attempted.
    Ready(Setup),
    /// Set-up progress, about once a second while setting up (clients
    /// that find their edge through `/v1/connect` only).
    Connecting {
        /// Connections set up so far.
        connected: u64,
        /// Connections that failed so far.
        failed: u64,
    },
    /// Push frames received so far.
    Progress {
        /// Total push frames over all connections.
        frames: u64,
    },
    /// Counters were zeroed.
    Reset,
    /// The counters, on [`Command::Stats`].
    Stats(Stats),
    /// Result of a churn run.
    Churn(Churn),
}

/// How connection set-up went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Setup {
    /// Connections upgraded and subscribed.
    pub connected: u64,
    /// Connections that failed at some step.
    pub failed: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Seconds from start to the last set-up.
    pub secs: f64,
    /// Connections not started because of [`Command::Halt`].
    #[serde(default)]
    pub halted: u64,
    /// Set-up attempts that failed and were tried again (through
    /// `/v1/connect`).
    #[serde(default)]
    pub retries: u64,
}

impl Setup {
    /// Adds another client's set-up.
    pub fn merge(&mut self, other: &Setup) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.halted += other.halted;
        self.retries += other.retries;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.secs = self.secs.max(other.secs);
    }
}

/// What a client counted since start or the last reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Push frames received.
    pub frames: u64,
    /// Bytes of the push frames received (WebSocket headers included).
    #[serde(default)]
    pub bytes: u64,
    /// Of `frames`, presence frames telling that too many changed at once
    /// (10010).
    #[serde(default)]
    pub presence_overflows: u64,
    /// Push frames whose payload named another user.
    pub misdelivered: u64,
    /// Push frames whose send time could not be found.
    pub unparsed: u64,
    /// Connections the server closed (close frame, EOF or error).
    pub closed: u64,
    /// Why they were closed: close code, `eof` or `error`.
    pub close_reasons: BTreeMap<String, u64>,
    /// Push-to-receive latency in microseconds (when measured).
    pub latency: Histogram,
    /// Pushes whose offset was not above the last one the connection saw
    /// (not counted in `frames`; only when offsets are tracked).
    #[serde(default)]
    pub duplicates: u64,
    /// Reconnecting clients (see [`Roaming`]): what they did.
    #[serde(default)]
    pub roaming: Roaming,
}

/// What the connections of a client that finds its edges through
/// `/v1/connect` did after a connection was lost. Cumulative except where
/// it says so.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Roaming {
    /// Connections subscribed now, per topic index.
    pub held: Vec<u64>,
    /// Connections lost (closed by the server or its end).
    pub lost: u64,
    /// Lost connections connected and subscribed again (with `since`).
    pub resubscribed: u64,
    /// Of those, subscribe replies that did not say `"recovered":true`.
    pub not_recovered: u64,
    /// Reconnect attempts that failed (and were tried again).
    pub failed_attempts: u64,
    /// The last resubscription, Unix microseconds (0: none).
    pub last_resubscribed_us: u64,
    /// `GET /v1/connect` calls.
    pub discoveries: u64,
}

impl Roaming {
    /// Adds another client's figures.
    pub fn merge(&mut self, other: &Roaming) {
        if self.held.len() < other.held.len() {
            self.held.resize(other.held.len(), 0);
        }
        for (mine, theirs) in self.held.iter_mut().zip(&other.held) {
            *mine += theirs;
        }
        self.lost += other.lost;
        self.resubscribed += other.resubscribed;
        self.not_recovered += other.not_recovered;
        self.failed_attempts += other.failed_attempts;
        self.last_resubscribed_us = self.last_resubscribed_us.max(other.last_resubscribed_us);
        self.discoveries += other.discoveries;
    }
}

impl Stats {
    /// Adds another client's counters.
    pub fn merge(&mut self, other: &Stats) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.presence_overflows += other.presence_overflows;
        self.misdelivered += other.misdelivered;
        self.unparsed += other.unparsed;
        self.closed += other.closed;
        self.duplicates += other.duplicates;
        self.roaming.merge(&other.roaming);
        for (reason, n) in &other.close_reasons {
            *self.close_reasons.entry(reason.clone()).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }
}

/// Result of a churn run: connections opened, subscribed and closed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Churn {
    /// Cycles completed (upgrade, subscribe, reply, close).
    pub cycles: u64,
    /// Cycles that failed.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Seconds the run took.
    pub secs: f64,
    /// Duration of one cycle, microseconds.
    pub cycle_time: Histogram,
}

impl Churn {
    /// Adds another client's run.
    pub fn merge(&mut self, other: &Churn) {
        self.cycles += other.cycles;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.secs = self.secs.max(other.secs);
        self.cycle_time.merge(&other.cycle_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roaming_figures_add_up_per_topic() {
        let mut total = Stats::default();
        let a = Stats {
            roaming: Roaming {
                held: vec![3, 4],
                lost: 2,
                resubscribed: 1,
                last_resubscribed_us: 50,
                ..Roaming::default()
            },
            duplicates: 1,
            ..Stats::default()
        };
        let b = Stats {
            roaming: Roaming {
                held: vec![1, 1, 7],
                lost: 1,
                resubscribed: 1,
                last_resubscribed_us: 40,
                ..Roaming::default()
            },
            ..Stats::default()
        };
        total.merge(&a);
        total.merge(&b);
        assert_eq!(total.roaming.held, vec![4, 5, 7]);
        assert_eq!((total.roaming.lost, total.roaming.resubscribed), (3, 2));
        assert_eq!(total.roaming.last_resubscribed_us, 50);
        assert_eq!(total.duplicates, 1);
        // Older clients' lines (no roaming figures) still parse.
        let mut line = serde_json::to_value(Stats::default()).expect("serialize");
        let fields = line.as_object_mut().expect("an object");
        assert!(fields.remove("roaming").is_some() && fields.remove("duplicates").is_some());
        let old: Stats = serde_json::from_value(line).expect("deserialize");
        assert_eq!(old.roaming.held, Vec::<u64>::new());
    }

    #[test]
    fn lines_round_trip() {
        let line = serde_json::to_string(&Command::Stats).expect("serialize");
        assert_eq!(line, r#"{"cmd":"stats"}"#);
        let event = Event::Progress { frames: 3 };
        let line = serde_json::to_string(&event).expect("serialize");
        assert_eq!(line, r#"{"event":"progress","frames":3}"#);
        let stats = Event::Stats(Stats {
            frames: 5,
            ..Stats::default()
        });
        let line = serde_json::to_string(&stats).expect("serialize");
        let back: Event = serde_json::from_str(&line).expect("deserialize");
        assert!(
            matches!(back, Event::Stats(Stats { frames: 5, .. })),
            "{line}"
        );
    }
}

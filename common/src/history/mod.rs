//! History: the pushes kept per topic and per user, so that a client that
//! reconnects gets what it missed, or is told that it cannot.
//!
//! Every push with history gets an *offset*, a position that increases
//! strictly within its stream (a public topic, or a user: user-wide pushes
//! and that user's private topics share one stream). An *epoch* names one
//! life of a stream's history: it changes whenever the history behind it
//! was lost or recreated, so an offset is only meaningful with its epoch.
//! A recovery from offset `n` is all or nothing: every kept push after `n`
//! in order, or [`Read::Gap`] when it cannot be proven that none is
//! missing.
//!
//! - [`config`]: the `[history]` config section, the same on every
//!   process of a cluster.
//! - [`memory`]: history in memory (standalone, and a cluster edge's copy
//!   of recent pushes).
//! - [`jetstream`]: a cluster keeps history in NATS JetStream, one
//!   stream per entry of the plan (see [`config::HistoryConfig::plan`]),
//!   republished on the live subjects with each push's offset.
//!
//! Pushes to everyone have no history.

pub mod config;
pub mod jetstream;
pub mod memory;

pub use config::{HistoryConfig, Plan, Storage, StreamPlan};
pub use memory::MemoryHistory;

use crate::push::{Push, Route};

/// The stream a route's pushes are kept in, if any: a public topic, or a
/// user (user-wide pushes and every private topic of that user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKey<'a> {
    /// A public topic.
    Topic(&'a str),
    /// A user.
    User(&'a str),
}

impl<'a> StreamKey<'a> {
    /// The stream of `route`; None for pushes to everyone.
    pub fn of(route: Route<'a>) -> Option<Self> {
        match route {
            Route::Everyone => None,
            Route::Topic(topic) => Some(StreamKey::Topic(topic)),
            Route::User { uid, .. } => Some(StreamKey::User(uid)),
        }
    }
}

/// Where a stream stands: its last offset and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset of the last push kept (or marked) in the stream; 0 when
    /// the stream has none.
    pub offset: u64,
    /// The life of the stream's history this offset belongs to.
    pub epoch: String,
}

/// A kept push and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position in its stream.
    pub offset: u64,
    /// The push as published.
    pub push: Push,
}

/// What the history API answers: where a stream stands and the pushes it
/// keeps after an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The stream's epoch.
    pub epoch: String,
    /// The stream's last offset.
    pub offset: u64,
    /// Whether every push after the asked offset is still kept (nothing
    /// was lost before the first entry returned).
    pub complete: bool,
    /// The kept pushes after the asked offset, oldest first, at most the
    /// asked limit; ask again after the last one for more.
    pub entries: Vec<Entry>,
}

/// The answer to "what came after offset n".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Every push after n (up to the asked bound), in order.
    Complete(Vec<Entry>),
    /// Some push after n is no longer kept (evicted, expired, another
    /// epoch), or there are more than the asked maximum: nothing is
    /// returned, since a partial recovery is never sent.
    Gap,
}

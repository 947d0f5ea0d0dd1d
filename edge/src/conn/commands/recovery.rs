//! Joining a stream at a position: a subscribe (codes 1 and 5) or a login
//! (3) that carries `since` gets what the client missed, all of it and in
//! order before any live push, or `recovered: false`.
//!
//! The hub delivers a stream's pushes under its index lock and records the
//! offset of the last one there. Joining reads the history up to that
//! offset, then asks the hub to add the connection only if the offset has
//! not moved meanwhile; under the same lock the reply and the recovered
//! pushes are queued, so the first live push comes after them with nothing
//! between. If pushes arrived in between, what they added is read and the
//! join is tried again ([`MAX_ATTEMPTS`] times, then the client is told
//! that recovery failed: a stream that busy is better reloaded).

use crate::conn::Session;
use crate::conn::io::Socket;
use crate::follow::Follower;
use crate::hub::Hub;
use crate::protocol::request::Since;
use crate::protocol::{PushFrames, WireFormat};
use bytes::Bytes;
use gpush_common::history::{Entry, MemoryHistory, Read, StreamKey};

/// Joins tried before a recovery is given up.
pub(super) const MAX_ATTEMPTS: u32 = 8;
/// How long a join waits for this edge to deliver up to the client's
/// `since` (it may have got it from another edge that was ahead), in
/// steps of [`BEHIND_STEP`].
const BEHIND_STEPS: u32 = 600;
/// One wait for the edge to catch up with a client's `since`.
const BEHIND_STEP: std::time::Duration = std::time::Duration::from_millis(5);

/// What a join does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Join if the stream is at this offset (None: wherever it is).
    Join(Option<u64>),
    /// The stream holds the client's offset but this edge has not
    /// delivered it yet: wait [`BEHIND_STEP`] and try again.
    Wait,
}

/// A join in progress.
pub(super) struct Join {
    /// The stream's epoch; None when it keeps no history.
    pub(super) epoch: Option<String>,
    /// Some when the request carried `since`: whether recovery still holds.
    recovered: Option<bool>,
    /// The offset read up to.
    cursor: u64,
    entries: Vec<Entry>,
    attempts: u32,
    /// Waits for this edge to reach the client's offset.
    behind: u32,
    /// How far JetStream has the stream, when asked (cluster).
    stored: Option<u64>,
}

impl Join {
    /// A join of `key`'s stream for a request with `since`.
    pub(super) fn new(history: &MemoryHistory, key: StreamKey<'_>, since: Option<Since>) -> Self {
        let epoch = history.position(key).map(|p| p.epoch);
        let (recovered, cursor) = match (&since, &epoch) {
            (None, _) => (None, 0),
            (Some(since), Some(epoch)) => (Some(since.epoch == *epoch), since.offset),
            // No history for this stream: nothing can be recovered.
            (Some(_), None) => (Some(false), 0),
        };
        Self {
            epoch,
            recovered,
            cursor,
            entries: Vec::new(),
            attempts: 0,
            behind: 0,
            stored: None,
        }
    }

    /// Reads what the stream holds after the cursor up to `at` (where the
    /// hub now stands), keeping the entries `wanted` selects; what to do
    /// next: join at the offset read up to, join wherever the stream is (no
    /// recovery, or it failed), or wait for this edge to catch up.
    /// The offset the join must find `key`'s stream at in the hub (None:
    /// join wherever it is), with what lies between read: catches up with
    /// where the hub stands now, waiting (bounded) while this edge is
    /// behind the client. Called again after a join found the stream moved.
    pub(super) async fn expected(
        &mut self,
        hub: &Hub,
        follower: Option<&Follower>,
        key: StreamKey<'_>,
        max: usize,
        wanted: impl Fn(&Entry) -> bool,
    ) -> Option<u64> {
        loop {
            let at = hub.stream_offset(key);
            match self
                .catch_up(&hub.history, follower, key, at, max, &wanted)
                .await
            {
                Step::Join(expected) => return expected,
                Step::Wait => tokio::time::sleep(BEHIND_STEP).await,
            }
        }
    }

    async fn catch_up(
        &mut self,
        history: &MemoryHistory,
        follower: Option<&Follower>,
        key: StreamKey<'_>,
        at: u64,
        max: usize,
        wanted: impl Fn(&Entry) -> bool,
    ) -> Step {
        if self.recovered != Some(true) {
            return Step::Join(None);
        }
        if self.cursor > at {
            // Delivered elsewhere but not here yet (wait), or an offset the
            // stream never reached (fail).
            self.behind += 1;
            let mut held = history.last(key).is_some_and(|last| last >= self.cursor);
            if let (false, Some(follower)) = (held, follower) {
                // In a cluster another edge may have delivered it already:
                // JetStream knows whether the stream got that far (asked
                // every 20 steps). While it cannot be asked (this edge's
                // NATS connection is coming back), keep waiting.
                if self.behind % 20 == 1 {
                    self.stored = follower.stored_through(key).await.or(self.stored);
                }
                held = self.stored.is_none_or(|stored| stored >= self.cursor);
            }
            return if held && self.behind <= BEHIND_STEPS {
                Step::Wait
            } else {
                self.fail()
            };
        }
        self.attempts += 1;
        if self.attempts > MAX_ATTEMPTS {
            // Too busy: the client is better off reloading.
            return self.fail();
        }
        if at > self.cursor {
            let epoch = self.epoch.as_deref().unwrap_or_default();
            let room = max.saturating_sub(self.entries.len());
            let mut read = history.read(key, epoch, self.cursor, at, room);
            if let (Read::Gap, Some(follower)) = (&read, follower) {
                // A cluster edge's copy holds only what it delivered since it
                // began following the stream: ask JetStream.
                read = follower.read(key, self.cursor, at, room).await;
            }
            match read {
                Read::Complete(entries) => {
                    self.entries
                        .extend(entries.into_iter().filter(|e| wanted(e)).map(|mut entry| {
                            entry.push.offset = entry.offset;
                            entry
                        }));
                    self.cursor = at;
                }
                Read::Gap => return self.fail(),
            }
        }
        Step::Join(Some(self.cursor))
    }

    fn fail(&mut self) -> Step {
        self.recovered = Some(false);
        self.entries = Vec::new();
        Step::Join(None)
    }

    /// The reply's `recovered` field.
    pub(super) fn recovered(&self) -> Option<bool> {
        self.recovered
    }

    /// The recovered pushes, framed for `format`.
    pub(super) fn frames(&self, format: WireFormat) -> impl Iterator<Item = Bytes> + '_ {
        self.entries
            .iter()
            .map(move |entry| PushFrames::new(&entry.push).get(format).clone())
    }
}

impl<S: Socket> Session<S> {
    /// Queues a join's reply, then the pushes it recovered: called under
    /// the hub's index lock, so no live push of the stream comes between.
    pub(super) fn queue_joined(&self, reply: Bytes, join: &Join) {
        self.queue(reply);
        join.frames(self.conn.format)
            .for_each(|frame| self.queue(frame));
    }
}

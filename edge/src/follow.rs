//! A cluster edge following the history streams its clients need: each
//! push arrives on its live subject with its offset and the offset of the
//! push before it (JetStream republishes them, see
//! [`gpush_common::history::jetstream`]), and this edge delivers a stream's
//! pushes without a hole or tells its clients there is one.
//!
//! - A stream is *followed* from the moment a local client needs it (the
//!   first subscriber of a topic, the first login of a user): its position
//!   is read from JetStream (a marker is written when it has none) and the
//!   edge's copy ([`MemoryHistory`], the hub's) is seeded there.
//! - Each live push of a followed stream must follow the last one this
//!   edge has. When it does not (the edge's NATS connection was away, a
//!   failover dropped messages), the missing pushes are read from
//!   JetStream and delivered first, in order. When history no longer holds
//!   them, every local follower gets push 10007 with the last offset it
//!   was given, and the stream goes on from the new push.
//! - After the NATS connection comes back, each reader checks its followed
//!   streams against JetStream at once, so a quiet stream's missed pushes
//!   do not wait for its next push.
//! - A push at or below the last offset is a duplicate, unless the stream
//!   was recreated (its epoch changed): then the copy restarts in the new
//!   epoch and the followers get 10007.
//!
//! Everything for one subject happens in that subject's reader task, so a
//! stream's pushes reach the hub in offset order.

use crate::hub::Hub;
use gpush_common::Push;
use gpush_common::history::jetstream::{JetStreamHistory, LivePosition};
use gpush_common::history::{Read, StreamKey};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// How long a join waits for JetStream to be reachable at start.
const JETSTREAM_WAIT: Duration = Duration::from_secs(5);
/// Bound of each JetStream request of this edge.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a join waits for a bus that is away to come back.
const RECONNECT_WAIT: Duration = Duration::from_millis(300);
/// How often it looks.
const RECONNECT_POLL: Duration = Duration::from_millis(10);

/// Opens the cluster's history (creating or updating its JetStream
/// streams) and hands it to the followers, retrying while JetStream does
/// not answer (NATS not up yet, or without JetStream: say so loudly).
pub(crate) async fn open(
    client: async_nats::Client,
    subjects: gpush_common::Subjects,
    config: gpush_common::history::HistoryConfig,
    ready: watch::Sender<Option<JetStreamHistory>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut backoff =
        gpush_common::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match JetStreamHistory::new(client.clone(), &subjects, &config, JETSTREAM_TIMEOUT).await {
            Ok(js) => {
                tracing::info!("history streams ready");
                let _ = ready.send(Some(js));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "history unavailable (does NATS run with JetStream, -js?); retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// The cluster's history as this edge follows it; cheap to clone.
#[derive(Clone)]
pub(crate) struct Follower {
    /// Set once JetStream answered (the streams exist).
    js: watch::Receiver<Option<JetStreamHistory>>,
    /// The bus: JetStream is not asked while it is away.
    client: async_nats::Client,
    hub: Arc<Hub>,
    max_recover: usize,
    /// When the streams' epochs were last read again: at most once per
    /// [`EPOCH_CHECK`] for duplicates that follow a previous message (a
    /// burst of them follows every gap filled), always for one that
    /// starts its subject (as the first push of a recreated stream does).
    epoch_checked: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// Least time between two epoch checks.
const EPOCH_CHECK: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("ready", &self.js.borrow().is_some())
            .finish()
    }
}

impl Follower {
    pub(crate) fn new(
        js: watch::Receiver<Option<JetStreamHistory>>,
        client: async_nats::Client,
        hub: Arc<Hub>,
        max_recover: usize,
    ) -> Self {
        Self {
            js,
            client,
            hub,
            max_recover,
            epoch_checked: Arc::default(),
        }
    }

    /// Whether `key`'s stream is followed here.
    pub(crate) fn follows(&self, key: StreamKey<'_>) -> bool {
        self.hub.history.follows(key)
    }

    /// JetStream, waiting a moment for it at start, and at most
    /// [`RECONNECT_WAIT`] for a bus that is away (it may be reconnecting
    /// this instant); None after that (a join then carries no position
    /// rather than waiting out a timeout).
    async fn js(&self) -> Option<JetStreamHistory> {
        let connected =
            || self.client.connection_state() == async_nats::connection::State::Connected;
        if !connected() {
            let back = tokio::time::timeout(RECONNECT_WAIT, async {
                while !connected() {
                    tokio::time::sleep(RECONNECT_POLL).await;
                }
            });
            if back.await.is_err() {
                return None;
            }
        }
        let mut js = self.js.clone();
        let ready = tokio::time::timeout(JETSTREAM_WAIT, js.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(js)) => js.clone(),
            _ => None,
        }
    }

    /// Starts following `key`'s stream unless it is followed: seeds the
    /// edge's copy at the stream's position in JetStream. Call with the
    /// stream's subject subscribed (and confirmed), so no push after the
    /// position can pass unseen. A JetStream that does not answer leaves
    /// the stream unfollowed (its joins then carry no position).
    pub(crate) async fn follow(&self, key: StreamKey<'_>) {
        let history = &self.hub.history;
        if history.follows(key) {
            return;
        }
        let Some(js) = self.js().await else {
            tracing::warn!(?key, "history unavailable: stream not followed");
            return;
        };
        match js.position(key).await {
            Ok(Some(position)) => history.seed(key, position.offset, &position.epoch),
            Ok(None) => {}
            Err(e) => tracing::warn!(?key, error = %e, "history position unavailable"),
        }
    }

    /// The last offset JetStream holds of `key`'s stream, if it answers.
    pub(crate) async fn stored_through(&self, key: StreamKey<'_>) -> Option<u64> {
        let js = self.js().await?;
        js.position(key).await.ok().flatten().map(|p| p.offset)
    }

    /// Reads what `key`'s stream holds after `since` up to `upto` from
    /// JetStream (a recovery the edge's copy cannot serve).
    pub(crate) async fn read(&self, key: StreamKey<'_>, since: u64, upto: u64, max: usize) -> Read {
        let Some(js) = self.js().await else {
            return Read::Gap;
        };
        match js.read(key, since, Some(upto), max).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(?key, error = %e, "history read failed");
                Read::Gap
            }
        }
    }

    /// Delivers one live push that came with `position` (None: no
    /// history for it), filling a gap before it first.
    pub(crate) async fn live(&self, mut push: Push, position: Option<LivePosition>) {
        let Some(position) = position else {
            self.hub.deliver(&push);
            return;
        };
        push.offset = position.offset;
        match StreamKey::of(push.route()) {
            // `last` is Some only for followed streams on a cluster edge.
            Some(key) if self.hub.history.last(key).is_some() => {
                if self.before(key, position).await {
                    let previous = self.after(key, position);
                    self.hub.history.append_at(&push, position.offset, previous);
                    self.hub.deliver(&push);
                }
            }
            // Nobody here follows it (another user of a followed bucket).
            _ => self.hub.deliver(&push),
        }
    }

    /// A history marker of `key`'s stream: its position moves on, nothing
    /// is delivered.
    pub(crate) async fn marker(&self, key: StreamKey<'_>, position: LivePosition) {
        if self.follows(key) && self.before(key, position).await {
            let previous = self.after(key, position);
            self.hub.history.advance_at(key, position.offset, previous);
            self.hub.mark(key, position.offset);
        }
    }

    /// The offset the message at `position` follows in the copy, once
    /// [`Self::before`] filled what was missing.
    fn after(&self, key: StreamKey<'_>, position: LivePosition) -> u64 {
        position
            .previous
            .max(self.hub.history.last(key).unwrap_or(0))
    }

    /// Gets `key`'s stream ready for the message at `position`: false for a
    /// duplicate; otherwise fills what was missed before it, so that it
    /// follows the copy's last offset.
    async fn before(&self, key: StreamKey<'_>, position: LivePosition) -> bool {
        let history = &self.hub.history;
        let last = history.last(key).unwrap_or(0);
        if position.offset <= last && !self.recreated(key, last, position).await {
            return false;
        }
        let last = history.last(key).unwrap_or(0);
        if position.previous > last {
            self.fill(key, last, position.previous).await;
        }
        true
    }

    /// Checks `key`'s stream against JetStream (after the bus came back)
    /// and delivers what was missed.
    pub(crate) async fn check(&self, key: StreamKey<'_>) {
        let history = &self.hub.history;
        let Some(last) = history.last(key) else {
            return;
        };
        let Some(js) = self.js().await else { return };
        match js.position(key).await {
            Ok(Some(position)) if position.offset > last => {
                self.fill(key, last, position.offset).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(?key, error = %e, "history check failed"),
        }
    }

    /// Delivers the pushes of `key` after `last` up to `upto` from
    /// JetStream, or tells the followers they are lost; either way the
    /// copy then stands at `upto`.
    async fn fill(&self, key: StreamKey<'_>, last: u64, upto: u64) {
        let history = &self.hub.history;
        match self.read(key, last, upto, self.max_recover).await {
            Read::Complete(entries) => {
                let filled = entries.len() as u64;
                for mut entry in entries {
                    let previous = history.last(key).unwrap_or(last);
                    entry.push.offset = entry.offset;
                    history.append_at(&entry.push, entry.offset, previous);
                    self.hub.deliver(&entry.push);
                }
                self.hub.stats.filled.fetch_add(filled, Ordering::Relaxed);
                tracing::info!(
                    ?key,
                    last,
                    upto,
                    filled,
                    "missed pushes recovered from history"
                );
                let previous = history.last(key).unwrap_or(last);
                if upto > previous {
                    // The last position up to `upto` was a marker.
                    history.advance_at(key, upto, previous);
                    self.hub.mark(key, upto);
                }
            }
            Read::Gap => {
                tracing::warn!(
                    ?key,
                    last,
                    upto,
                    "missed pushes not in history: followers told"
                );
                self.hub.gap(key, last);
                history.advance_at(key, upto, upto);
                self.hub.mark(key, upto);
            }
        }
    }

    /// Whether a push at or below the last offset means the stream was
    /// recreated (a new epoch): then the copy restarts there and the
    /// followers are told (10007); otherwise it is a duplicate.
    async fn recreated(&self, key: StreamKey<'_>, last: u64, position: LivePosition) -> bool {
        {
            let now = tokio::time::Instant::now();
            let mut checked = self
                .epoch_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // The first message of a subject in a (new) stream comes with
            // no previous one: always worth a look. Others only so often.
            let recent = checked.is_some_and(|at| now.duration_since(at) < EPOCH_CHECK);
            if recent && position.previous != 0 {
                return false;
            }
            *checked = Some(now);
        }
        let Some(js) = self.js().await else {
            return false;
        };
        let before = js.epoch(key);
        let now = match js.refresh_epoch(key).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(?key, error = %e, "history epoch unavailable");
                return false;
            }
        };
        let (Some(before), Some(now)) = (before, now) else {
            return false;
        };
        let copy = self.hub.history.position(key).map(|p| p.epoch);
        if copy.as_deref() == Some(now.as_str()) && before == now {
            return false;
        }
        tracing::warn!(?key, epoch = %now, "history stream recreated: followers told");
        self.hub.gap(key, last);
        self.hub.history.seed(key, position.previous, &now);
        self.hub.reset(key, position.previous);
        true
    }
}

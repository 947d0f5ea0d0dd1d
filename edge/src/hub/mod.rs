//! The sharded index of connections and the fan-out of pushes.
//!
//! Four indexes, each a vector of independently locked shards chosen by
//! hash: every connection (for everyone pushes and shutdown), public topic
//! → subscribers, uid → logged-in connections, and (uid, private topic) →
//! subscribers. Locks are held only inside these small synchronous methods,
//! never across an `.await`, and a push to one topic locks only that topic's
//! shard. Each push is framed once per wire format; every connection gets
//! the same bytes. Each index shard counts its entries under its own lock,
//! so the gauges of `GET /metrics` add no work to these paths.

use crate::close::Close;
use crate::outbox::{Outbox, Pushed, QueueLimits};
use crate::protocol::push::PresenceFrames;
use crate::protocol::{PushFrames, WireFormat};
use gpush_common::history::{MemoryHistory, StreamKey};
use gpush_common::metrics::push_kind;
use gpush_common::subject::{TOPIC_BUCKETS, USER_BUCKETS, topic_bucket, user_bucket};
use gpush_common::{LocalDelivery, Push, Route};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

mod control;
mod index;
pub(crate) mod stats;

pub(crate) use control::Order;

use index::Index;
/// Why a subscribe or login at an expected offset did not happen.
pub(crate) use index::NotAdded;
pub(crate) use stats::Stats;

/// The shared handle of one connection: the part that fan-out and the
/// keepalive sweep reach through the hub's indexes, while the connection
/// task (see [`crate::conn`]) owns the socket and the rest.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    /// Unique id within this edge.
    pub(crate) id: u64,
    /// How pushes are framed for it.
    pub(crate) format: WireFormat,
    pub(crate) outbox: Outbox,
    /// When the client was last heard from, in [`Hub::now_ms`] time.
    pub(crate) last_heard: AtomicU64,
    /// When the server last pinged it, in [`Hub::now_ms`] time.
    last_ping: AtomicU64,
    /// When its login ends, in unix seconds: [`NO_LOGIN_END`] while it is
    /// logged out or its login never expires, [`LOGIN_ENDED`] once the
    /// sweep found it past (the connection then logs out). Set by the
    /// connection at each login; a refresh overwrites either.
    pub(crate) login_ends: AtomicU32,
    /// Set when the server API left orders for it in the hub (see
    /// [`Hub::order`]); in the struct's padding, so free.
    pub(crate) ordered: std::sync::atomic::AtomicBool,
}

/// [`ConnHandle::login_ends`]: no end.
pub(crate) const NO_LOGIN_END: u32 = 0;
/// [`ConnHandle::login_ends`]: the sweep found the login past its end.
pub(crate) const LOGIN_ENDED: u32 = u32::MAX;

impl ConnHandle {
    /// Records when the login ends (unix seconds; `None`: never). Times
    /// past 2106 are as good as never.
    pub(crate) fn set_login_end(&self, ends: Option<u64>) {
        let ends = ends.map_or(NO_LOGIN_END, |s| {
            u32::try_from(s)
                .unwrap_or(LOGIN_ENDED - 1)
                .clamp(1, LOGIN_ENDED - 1)
        });
        self.login_ends.store(ends, Ordering::Relaxed);
    }

    /// Whether the sweep found the login past its end.
    pub(crate) fn login_ended(&self) -> bool {
        self.login_ends.load(Ordering::Relaxed) == LOGIN_ENDED
    }
}

/// Room for one connection being upgraded, from [`Hub::admit`]; released
/// when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    hub: Arc<Hub>,
}

impl Admission {
    /// Registers the connection, then releases the reservation (in that
    /// order, so the connection is never uncounted).
    pub(crate) fn connect(self, format: WireFormat) -> Arc<ConnHandle> {
        self.hub.connect(format)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.upgrading.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one keepalive sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Connections sent a ping.
    pub(crate) pinged: usize,
    /// Connections closed as idle.
    pub(crate) idle: usize,
    /// Connections told that their login ended.
    pub(crate) expired: usize,
}

/// How many entries the hub's indexes hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Distinct public topics with a local subscriber.
    pub(crate) topics: usize,
    /// (connection, public topic) subscriptions.
    pub(crate) public_subscriptions: usize,
    /// Distinct logged-in users.
    pub(crate) users: usize,
    /// (connection, private topic) subscriptions.
    pub(crate) private_subscriptions: usize,
}

/// One lock's worth of a map.
type Shard<K, V> = Mutex<HashMap<K, V>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Key of the private index: names cannot contain control characters, so
/// the NUL separator keeps (uid, topic) pairs distinct.
fn private_key(uid: &str, topic: &str) -> String {
    format!("{uid}\0{topic}")
}

/// Every connection of this edge, indexed for fan-out.
#[derive(Debug)]
pub(crate) struct Hub {
    conns: Box<[Shard<u64, Arc<ConnHandle>>]>,
    topics: Index,
    users: Index,
    private: Index,
    /// Distinct logged-in users per user bucket (see
    /// [`gpush_common::subject`]): the bus subscribes to a bucket while it
    /// is non-zero.
    user_buckets: Box<[AtomicU32]>,
    /// Distinct public topics with a local subscriber per topic bucket:
    /// the bus subscribes to a bucket while it is non-zero.
    topic_buckets: Box<[AtomicU32]>,
    /// Connection id -> the uid it is logged in as, for presence: kept
    /// for logged-in connections only.
    logins: Box<[Shard<u64, Arc<str>>]>,
    /// Connection id -> the server API's orders it has not carried out
    /// yet (at most [`MAX_ORDERS`] each).
    orders: Box<[Shard<u64, Vec<Order>>]>,
    limits: QueueLimits,
    /// Origin of [`Hub::now_ms`].
    epoch: Instant,
    count: AtomicU64,
    /// Upgrades admitted by [`Hub::admit`] and not yet connected.
    upgrading: AtomicU64,
    next_id: AtomicU64,
    pub(crate) stats: Stats,
    /// The pushes kept for recovery: the store of a standalone edge, a
    /// cluster edge's copy of what it delivered. A stream's offset in the
    /// indexes starts from its last offset here.
    pub(crate) history: Arc<MemoryHistory>,
}

impl Hub {
    /// An empty hub with `shards` locks per index; connection queues are
    /// bounded by `limits`.
    pub(crate) fn new(shards: usize, limits: QueueLimits) -> Self {
        let shards = shards.max(1);
        Self {
            conns: (0..shards).map(|_| Mutex::default()).collect(),
            topics: Index::new(shards),
            users: Index::new(shards),
            private: Index::new(shards),
            user_buckets: (0..USER_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            topic_buckets: (0..TOPIC_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            logins: (0..shards).map(|_| Mutex::default()).collect(),
            orders: (0..shards).map(|_| Mutex::default()).collect(),
            limits,
            epoch: Instant::now(),
            count: AtomicU64::new(0),
            upgrading: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            stats: Stats::new(shards),
            history: Arc::new(MemoryHistory::new(
                gpush_common::history::HistoryConfig {
                    enabled: false,
                    ..Default::default()
                }
                .plan(),
                0,
            )),
        }
    }

    /// This hub keeping `history`.
    pub(crate) fn with_history(mut self, history: Arc<MemoryHistory>) -> Self {
        self.history = history;
        self
    }

    /// The offset of `key`'s stream as this edge delivered it: where a
    /// subscriber joining now starts. 0 when it keeps no history.
    pub(crate) fn stream_offset(&self, key: StreamKey<'_>) -> u64 {
        let held = match key {
            StreamKey::Topic(topic) => self.topics.offset(topic),
            StreamKey::User(uid) => self.users.offset(uid),
        };
        held.or_else(|| self.history.last(key)).unwrap_or(0)
    }

    /// Records that `key`'s stream moved to `offset` without a push to
    /// deliver (a JetStream marker).
    pub(crate) fn mark(&self, key: StreamKey<'_>, offset: u64) {
        match key {
            StreamKey::Topic(topic) => self.topics.advance(topic, offset, |_| {}),
            StreamKey::User(uid) => self.users.advance(uid, offset, |_| {}),
        }
    }

    /// Sets `key`'s stream offset, lower or not: its history was recreated
    /// and offsets start again.
    pub(crate) fn reset(&self, key: StreamKey<'_>, offset: u64) {
        match key {
            StreamKey::Topic(topic) => self.topics.reset(topic, offset),
            StreamKey::User(uid) => self.users.reset(uid, offset),
        }
    }

    /// Tells every local connection following `key`'s stream that pushes
    /// after `offset` were lost here (push 10007).
    pub(crate) fn gap(&self, key: StreamKey<'_>, offset: u64) {
        let send = |conn: &Arc<ConnHandle>| {
            let topic = match key {
                StreamKey::Topic(topic) => Some(topic),
                StreamKey::User(_) => None,
            };
            let frame = crate::protocol::push::gap(topic, offset, conn.format);
            if conn.outbox.push(frame, self.limits) == Pushed::Overflowed {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
        };
        match key {
            StreamKey::Topic(topic) => self.topics.for_each(topic, send),
            StreamKey::User(uid) => self.users.for_each(uid, send),
        }
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues one coalescing window's presence frames of `topic` (see
    /// [`crate::presence`]) to every local subscriber of it: the same
    /// bytes for every connection of a wire format.
    pub(crate) fn presence_changes(&self, topic: &str, frames: &PresenceFrames<'_>) {
        let mut slow = 0u64;
        self.topics.for_each(topic, |conn| {
            if conn
                .outbox
                .push(frames.get(conn.format).clone(), self.limits)
                == Pushed::Overflowed
            {
                slow += 1;
            }
        });
        if slow > 0 {
            self.stats.slow_consumers.fetch_add(slow, Ordering::Relaxed);
            tracing::info!(slow, "closing slow consumers");
        }
    }

    /// Subscribes `conn` to public `topic` if the topic is at offset
    /// `expected` (any when None), calling `joined` with the offset under
    /// the index's lock (see [`Index::add_at`]). Ok: (first local
    /// subscriber, offset).
    pub(crate) fn subscribe_at(
        &self,
        topic: &str,
        conn: &Arc<ConnHandle>,
        max_topics: usize,
        expected: Option<u64>,
        joined: impl FnOnce(u64),
    ) -> Result<(bool, u64), NotAdded> {
        let seed = || self.history.last(StreamKey::Topic(topic)).unwrap_or(0);
        let added = self
            .topics
            .add_at(topic, conn, max_topics, usize::MAX, expected, seed, joined);
        if let Ok((true, _)) = added {
            self.topic_buckets[usize::from(topic_bucket(topic))].fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Calls `f` with public `topic`'s offset under the index's lock
    /// (None: no local subscriber).
    pub(crate) fn with_topic_offset<R>(&self, topic: &str, f: impl FnOnce(Option<u64>) -> R) -> R {
        self.topics.with_offset(topic, f)
    }

    /// Records `conn` as logged in as `uid` if the user's stream is at
    /// `expected` (any when None) and the user has fewer than `max_conns`
    /// other connections here ([`NotAdded::Crowded`] otherwise), calling
    /// `joined` with the offset under the index's lock. Ok: (first local
    /// connection, offset).
    pub(crate) fn login_at(
        &self,
        uid: &Arc<str>,
        conn: &Arc<ConnHandle>,
        max_conns: usize,
        expected: Option<u64>,
        joined: impl FnOnce(u64),
    ) -> Result<(bool, u64), NotAdded> {
        let seed = || self.history.last(StreamKey::User(uid)).unwrap_or(0);
        let added = self
            .users
            .add_at(uid, conn, usize::MAX, max_conns, expected, seed, joined);
        if added.is_ok() {
            self.record_login(conn.id, uid.clone());
        }
        if let Ok((true, _)) = added {
            self.user_buckets[usize::from(user_bucket(uid))].fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Calls `f` with `uid`'s stream offset under the users index's lock
    /// (None: not logged in here).
    pub(crate) fn with_user_offset<R>(&self, uid: &str, f: impl FnOnce(Option<u64>) -> R) -> R {
        self.users.with_offset(uid, f)
    }

    /// Subscribes `conn`, logged in as `uid`, to private `topic` if the
    /// user's stream is at `expected` (any when None), calling `joined`
    /// with the offset while no push to the user can be delivered.
    pub(crate) fn subscribe_private_at(
        &self,
        uid: &str,
        topic: &str,
        conn: &Arc<ConnHandle>,
        expected: Option<u64>,
        joined: impl FnOnce(u64),
    ) -> Result<u64, NotAdded> {
        self.users.with_offset(uid, |offset| {
            let offset = offset.unwrap_or(0);
            if expected.is_some_and(|e| e != offset) {
                return Err(NotAdded::Moved(offset));
            }
            let _ = self.private.add(&private_key(uid, topic), conn, usize::MAX);
            joined(offset);
            Ok(offset)
        })
    }

    /// Reserves room for one more connection unless the edge already
    /// holds `max` (open ones plus upgrades admitted before). The
    /// reservation counts until the connection is registered with
    /// [`Admission::connect`] or the reservation is dropped, so concurrent
    /// upgrades cannot together pass the limit.
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> Option<Admission> {
        let upgrading = self.upgrading.fetch_add(1, Ordering::AcqRel) + 1;
        if self.connections().saturating_add(upgrading) > max as u64 {
            self.upgrading.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission { hub: self.clone() })
    }

    /// Registers a new connection speaking `format`.
    pub(crate) fn connect(&self, format: WireFormat) -> Arc<ConnHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let conn = Arc::new(ConnHandle {
            id,
            format,
            outbox: Outbox::default(),
            last_heard: AtomicU64::new(now),
            last_ping: AtomicU64::new(now),
            login_ends: AtomicU32::new(NO_LOGIN_END),
            ordered: std::sync::atomic::AtomicBool::new(false),
        });
        lock(&self.conns[id as usize % self.conns.len()]).insert(id, conn.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        conn
    }

    /// Removes a connection from the everyone index. Its topic and user
    /// entries are removed by the connection itself (it knows them).
    pub(crate) fn disconnect(&self, id: u64) {
        self.forget_orders(id);
        if lock(&self.conns[id as usize % self.conns.len()])
            .remove(&id)
            .is_some()
        {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connections(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Topics, users and subscriptions now. Locks every index shard in
    /// turn, briefly: for scrapes, not for hot paths.
    pub(crate) fn counts(&self) -> Counts {
        let (topics, public_subscriptions) = self.topics.counts();
        let (users, _) = self.users.counts();
        let (_, private_subscriptions) = self.private.counts();
        Counts {
            topics,
            public_subscriptions,
            users,
            private_subscriptions,
        }
    }

    #[cfg(test)]
    /// Subscribes `conn` to public `topic`; true if it is the topic's first
    /// local subscriber. A topic without local subscribers is refused when
    /// `max_topics` topics have one already.
    pub(crate) fn subscribe(
        &self,
        topic: &str,
        conn: &Arc<ConnHandle>,
        max_topics: usize,
    ) -> Result<bool, index::Full> {
        let added = self.topics.add(topic, conn, max_topics);
        if added == Ok(true) {
            self.topic_buckets[usize::from(topic_bucket(topic))].fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Unsubscribes connection `id` from public `topic`; true if no local
    /// subscriber is left.
    pub(crate) fn unsubscribe(&self, topic: &str, id: u64) -> bool {
        let last = self.topics.remove(topic, id);
        if last {
            self.topic_buckets[usize::from(topic_bucket(topic))].fetch_sub(1, Ordering::Relaxed);
        }
        last
    }

    /// Whether any local connection subscribes to a public topic of
    /// `bucket`.
    pub(crate) fn has_topic_bucket(&self, bucket: u16) -> bool {
        self.topic_buckets
            .get(usize::from(bucket))
            .is_some_and(|n| n.load(Ordering::Relaxed) > 0)
    }

    #[cfg(test)]
    /// Records `conn` as logged in as `uid`; true if it is the user's first
    /// local connection.
    pub(crate) fn login(&self, uid: &str, conn: &Arc<ConnHandle>) -> bool {
        let first = self.users.add(uid, conn, usize::MAX) == Ok(true);
        self.record_login(conn.id, Arc::from(uid));
        if first {
            self.user_buckets[usize::from(user_bucket(uid))].fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Forgets that connection `id` is logged in as `uid`; true if that
    /// left the uid's bucket without any local user.
    pub(crate) fn logout(&self, uid: &str, id: u64) -> bool {
        self.forget_login(id);
        self.users.remove(uid, id)
            && self.user_buckets[usize::from(user_bucket(uid))].fetch_sub(1, Ordering::Relaxed) == 1
    }

    /// Whether any local connection is logged in as a user of `bucket`.
    pub(crate) fn has_user_bucket(&self, bucket: u16) -> bool {
        self.user_buckets
            .get(usize::from(bucket))
            .is_some_and(|n| n.load(Ordering::Relaxed) > 0)
    }

    #[cfg(test)]
    /// Subscribes `conn`, logged in as `uid`, to private `topic`.
    pub(crate) fn subscribe_private(&self, uid: &str, topic: &str, conn: &Arc<ConnHandle>) {
        let _ = self.private.add(&private_key(uid, topic), conn, usize::MAX);
    }

    /// Unsubscribes connection `id` from `uid`'s private `topic`.
    pub(crate) fn unsubscribe_private(&self, uid: &str, topic: &str, id: u64) {
        self.private.remove(&private_key(uid, topic), id);
    }

    /// Whether any local connection subscribes to public `topic`.
    pub(crate) fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// Milliseconds since the hub was created: the clock of
    /// [`ConnHandle::last_heard`]. An atomic integer is all a connection needs to
    /// carry for keepalive; one sweep per edge does the timing.
    pub(crate) fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    /// Pings every connection not pinged for `ping_interval`, closes
    /// every one not heard from for `idle_timeout`, and wakes every one
    /// whose login is past its end (see [`ConnHandle::login_ends`]). Run by
    /// one task per edge, so connections carry no timer of their own.
    pub(crate) fn sweep(&self, ping_interval: Duration, idle_timeout: Duration) -> Swept {
        let now = self.now_ms();
        let unix = crate::auth::now_secs();
        let ping_ms = ping_interval.as_millis() as u64;
        let idle_ms = idle_timeout.as_millis() as u64;
        let mut swept = Swept::default();
        for shard in &self.conns {
            for conn in lock(shard).values() {
                let ends = conn.login_ends.load(Ordering::Relaxed);
                // A refresh between the load and the exchange wins.
                if ends != NO_LOGIN_END
                    && ends != LOGIN_ENDED
                    && u64::from(ends) <= unix
                    && conn
                        .login_ends
                        .compare_exchange(ends, LOGIN_ENDED, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    conn.outbox.wake();
                    swept.expired += 1;
                }
                if now.saturating_sub(conn.last_heard.load(Ordering::Relaxed)) >= idle_ms {
                    conn.outbox.close(Close::Idle);
                    swept.idle += 1;
                } else if now.saturating_sub(conn.last_ping.load(Ordering::Relaxed)) >= ping_ms {
                    conn.last_ping.store(now, Ordering::Relaxed);
                    if conn.outbox.push(crate::ws::PING.clone(), self.limits) == Pushed::Overflowed
                    {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                    swept.pinged += 1;
                }
            }
        }
        swept
    }

    /// Asks every connection to close.
    pub(crate) fn close_all(&self, request: Close) {
        for shard in &self.conns {
            for conn in lock(shard).values() {
                conn.outbox.close(request);
            }
        }
    }

    /// Queues `push` to every local connection its route selects.
    pub(crate) fn deliver(&self, push: &Push) {
        let route = push.route();
        self.stats.pushes[push_kind(route)].fetch_add(1, Ordering::Relaxed);
        let frames = PushFrames::new(push);
        let mut queued = 0u64;
        let mut slow = 0u64;
        let mut first = true;
        let mut send = |conn: &Arc<ConnHandle>| {
            let frame = frames.get(conn.format);
            if first {
                // Before queueing, so no flush can write it unnoticed.
                first = false;
                self.stats.latency.arm(frame, push.sent_at_us);
            }
            match conn.outbox.push(frame.clone(), self.limits) {
                Pushed::Queued => queued += 1,
                Pushed::Overflowed => slow += 1,
                Pushed::Closing => {}
            }
        };
        match route {
            Route::Everyone => {
                for shard in &self.conns {
                    lock(shard).values().for_each(&mut send);
                }
            }
            Route::Topic(topic) => self
                .topics
                .advance(topic, push.offset, |members| members.for_each(send)),
            Route::User { uid, topic: None } => self
                .users
                .advance(uid, push.offset, |members| members.for_each(send)),
            // Under the user's lock, so that a private subscribe at an
            // offset sees either all of this push or none of it.
            Route::User {
                uid,
                topic: Some(topic),
            } => self.users.advance(uid, push.offset, |_| {
                self.private.for_each(&private_key(uid, topic), send)
            }),
        }
        self.stats.frames.fetch_add(queued, Ordering::Relaxed);
        if slow > 0 {
            self.stats.slow_consumers.fetch_add(slow, Ordering::Relaxed);
            tracing::info!(slow, "closing slow consumers");
        }
    }
}

impl LocalDelivery for Hub {
    fn deliver(&self, push: &Push) {
        Hub::deliver(self, push);
    }

    /// Standalone: the edge is the history's only writer.
    fn stamp(&self, pushes: &mut [Push]) {
        for push in pushes {
            push.offset = self.history.append_next(push);
        }
    }

    fn history(
        &self,
        query: &gpush_common::bus::HistoryQuery,
    ) -> Option<gpush_common::history::Page> {
        let key = query.key()?;
        self.history
            .page(key, query.since, query.limit, |push| query.wants(push))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;

    const LIMITS: QueueLimits = QueueLimits { bytes: 1 << 20 };

    /// Subscribes with no topic limit.
    fn sub(hub: &Hub, topic: &str, conn: &Arc<ConnHandle>) -> bool {
        hub.subscribe(topic, conn, usize::MAX)
            .expect("no topic limit")
    }

    fn drain(conn: &ConnHandle) -> usize {
        let mut frames = VecDeque::new();
        conn.outbox.take(&mut frames);
        frames.len()
    }

    #[test]
    fn routes_reach_exactly_their_connections() {
        let hub = Hub::new(4, LIMITS);
        let [a, b, c] = [(); 3].map(|_| hub.connect(WireFormat::Json));
        assert!(sub(&hub, "news", &a));
        assert!(!sub(&hub, "news", &b));
        assert!(hub.login("u1", &b));
        assert!(!hub.login("u1", &c));
        hub.subscribe_private("u1", "inbox", &c);

        let push = |uid: &str, topic: &str| hub.deliver(&Push::new(uid, topic, Bytes::new()));
        push("", "news");
        assert_eq!((drain(&a), drain(&b), drain(&c)), (1, 1, 0));
        push("u1", "inbox");
        assert_eq!((drain(&a), drain(&b), drain(&c)), (0, 0, 1));
        push("u1", "");
        assert_eq!((drain(&a), drain(&b), drain(&c)), (0, 1, 1));
        push("", "");
        assert_eq!((drain(&a), drain(&b), drain(&c)), (1, 1, 1));
        push("u2", "inbox");
        push("", "other");
        assert_eq!((drain(&a), drain(&b), drain(&c)), (0, 0, 0));
    }

    #[test]
    fn last_leaver_is_reported() {
        let hub = Hub::new(2, LIMITS);
        let [a, b] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        sub(&hub, "t", &a);
        sub(&hub, "t", &b);
        assert!(!hub.unsubscribe("t", a.id));
        assert!(hub.has_topic("t"));
        assert!(hub.unsubscribe("t", b.id));
        assert!(!hub.has_topic("t"));
        assert!(!hub.unsubscribe("t", b.id), "second removal is a no-op");
        assert!(!hub.has_topic_bucket(topic_bucket("t")));
        hub.login("u", &a);
        hub.login("u", &b);
        let bucket = user_bucket("u");
        assert!(hub.has_user_bucket(bucket));
        assert!(!hub.logout("u", a.id), "b is still logged in as u");
        assert!(hub.logout("u", b.id), "bucket now empty");
        assert!(!hub.users.contains("u"));
        assert!(!hub.has_user_bucket(bucket));
    }

    #[test]
    fn a_topic_bucket_is_wanted_while_any_of_its_topics_is() {
        let hub = Hub::new(2, LIMITS);
        let bucket = topic_bucket("t0");
        let twin = (1..)
            .map(|i| format!("t{i}"))
            .find(|t| topic_bucket(t) == bucket)
            .expect("another topic in the bucket");
        let [a, b] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        sub(&hub, "t0", &a);
        sub(&hub, "t0", &b);
        sub(&hub, &twin, &b);
        assert!(hub.has_topic_bucket(bucket));
        assert!(!hub.unsubscribe("t0", a.id));
        assert!(hub.unsubscribe("t0", b.id));
        assert!(
            hub.has_topic_bucket(bucket),
            "{twin} still has a subscriber"
        );
        assert!(hub.unsubscribe(&twin, b.id));
        assert!(!hub.has_topic_bucket(bucket));
        for other in 0..TOPIC_BUCKETS {
            assert!(!hub.has_topic_bucket(other));
        }
    }

    #[test]
    fn private_keys_do_not_collide() {
        let hub = Hub::new(1, LIMITS);
        let a = hub.connect(WireFormat::Json);
        hub.subscribe_private("a", "bc", &a);
        hub.deliver(&Push::new("ab", "c", Bytes::new()));
        assert_eq!(drain(&a), 0);
    }

    #[test]
    fn overflow_closes_only_the_slow_connection() {
        let push = Push::new("", "t", Bytes::new());
        let cost = PushFrames::new(&push).get(WireFormat::Json).len() + crate::outbox::FRAME_SLOT;
        let hub = Hub::new(2, QueueLimits { bytes: 4 * cost });
        let [slow, fast] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        sub(&hub, "t", &slow);
        sub(&hub, "t", &fast);
        for _ in 0..5 {
            hub.deliver(&push);
            drain(&fast);
        }
        assert_eq!(hub.stats.slow_consumers.load(Ordering::Relaxed), 1);
        let mut frames = VecDeque::new();
        let close = slow.outbox.take(&mut frames).expect("slow is closing");
        assert_eq!(close, Close::SlowConsumer);
        assert_eq!(fast.outbox.take(&mut frames), None);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_pings_on_schedule_and_closes_the_silent() {
        let hub = Hub::new(2, LIMITS);
        let [quiet, chatty] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        let ping = Duration::from_secs(25);
        let idle = Duration::from_secs(60);
        assert_eq!(hub.sweep(ping, idle), Swept::default());
        for second in 1..=61u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            chatty.last_heard.store(hub.now_ms(), Ordering::Relaxed);
            let swept = hub.sweep(ping, idle);
            let expected = match second {
                25 | 50 => Swept {
                    pinged: 2,
                    ..Swept::default()
                },
                60 => Swept {
                    idle: 1,
                    ..Swept::default()
                },
                _ => Swept::default(),
            };
            if second <= 60 {
                assert_eq!(swept, expected, "second {second}");
            }
        }
        let mut frames = VecDeque::new();
        assert_eq!(quiet.outbox.take(&mut frames), Some(Close::Idle));
        assert_eq!(frames.len(), 2, "two pings before the close");
        assert_eq!(chatty.outbox.take(&mut frames), None);
    }

    #[tokio::test]
    async fn sweep_wakes_connections_whose_login_ended() {
        let hub = Hub::new(2, LIMITS);
        let [past, future, never] = [(); 3].map(|_| hub.connect(WireFormat::Json));
        let unix = crate::auth::now_secs();
        past.set_login_end(Some(unix - 1));
        future.set_login_end(Some(unix + 3600));
        never.set_login_end(None);
        let ping = Duration::from_secs(25);
        let idle = Duration::from_secs(60);
        let swept = hub.sweep(ping, idle);
        assert_eq!(swept.expired, 1);
        assert!(past.login_ended() && !future.login_ended() && !never.login_ended());
        // Woken once, with nothing queued; not again.
        past.outbox.ready().await;
        assert_eq!(hub.sweep(ping, idle).expired, 0);
        // A refresh after the sweep wins.
        past.set_login_end(Some(unix + 3600));
        assert!(!past.login_ended());
    }

    #[test]
    fn counts_follow_subscriptions_and_pushes() {
        let hub = Hub::new(3, LIMITS);
        let [a, b] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        sub(&hub, "t1", &a);
        sub(&hub, "t1", &a);
        sub(&hub, "t1", &b);
        sub(&hub, "t2", &b);
        hub.login("u", &a);
        hub.login("u", &b);
        hub.subscribe_private("u", "p", &a);
        let expected = Counts {
            topics: 2,
            public_subscriptions: 3,
            users: 1,
            private_subscriptions: 1,
        };
        assert_eq!(hub.counts(), expected);
        hub.unsubscribe("t1", a.id);
        hub.unsubscribe("t1", a.id);
        hub.unsubscribe("t2", b.id);
        hub.unsubscribe_private("u", "p", a.id);
        let expected = Counts {
            topics: 1,
            public_subscriptions: 1,
            users: 1,
            private_subscriptions: 0,
        };
        assert_eq!(hub.counts(), expected);

        for (uid, topic) in [("", ""), ("", "t1"), ("", "t1"), ("u", ""), ("u", "p")] {
            hub.deliver(&Push::new(uid, topic, Bytes::new()));
        }
        assert_eq!(hub.stats.pushes_received(), [1, 2, 2]);
        // everyone: a, b; t1: b twice; u: a, b; u/p: nobody.
        assert_eq!(hub.stats.frames.load(Ordering::Relaxed), 6);
        let armed = hub.stats.latency.armed();
        assert_ne!(armed, 0, "the first push is being timed");
        let mut frames = VecDeque::new();
        a.outbox.take(&mut frames);
        assert_eq!(frames[0].as_ptr() as usize, armed, "with a's first frame");
    }

    /// Every connection holds one handle: a field added to it must fit in
    /// its padding. 136 bytes, 152 with the `Arc`'s counts: mimalloc's
    /// 160-byte class.
    #[test]
    fn connection_handle_stays_small() {
        assert!(
            std::mem::size_of::<ConnHandle>() <= 136,
            "ConnHandle grew to {} bytes",
            std::mem::size_of::<ConnHandle>()
        );
    }

    #[test]
    fn connection_count() {
        let hub = Hub::new(3, LIMITS);
        let a = hub.connect(WireFormat::Raw);
        assert_eq!(hub.connections(), 1);
        hub.disconnect(a.id);
        hub.disconnect(a.id);
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn admission_counts_upgrades_in_flight() {
        let hub = Arc::new(Hub::new(3, LIMITS));
        let first = hub.admit(2).expect("room for two");
        let second = hub.admit(2).expect("room for one more");
        assert!(hub.admit(2).is_none(), "two upgrades in flight fill it");
        let a = first.connect(WireFormat::Json);
        assert_eq!(hub.connections(), 1);
        assert!(hub.admit(2).is_none(), "one open, one upgrading");
        drop(second);
        let third = hub.admit(2).expect("a failed upgrade frees its place");
        assert!(hub.admit(2).is_none());
        third.connect(WireFormat::Json);
        assert_eq!(hub.connections(), 2);
        hub.disconnect(a.id);
        assert!(
            hub.admit(2).is_some(),
            "a closed connection frees its place"
        );
    }
}

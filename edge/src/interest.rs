//! The edge's side of the bus: NATS subscriptions that follow local interest.
//!
//! The edge subscribes to a topic bucket's subjects (see
//! [`gpush_common::subject`]) when the first local connection needs a topic
//! of that bucket and unsubscribes after the last topic of the bucket lost
//! its last local subscriber; likewise to a user bucket's subjects while a
//! local connection is logged in as one of its users. The everyone subject
//! is subscribed for the edge's lifetime. One manager task owns the
//! subscription table and handles requests in order, so a quick
//! leave-then-join can never end unsubscribed: before unsubscribing it asks
//! the hub whether anyone still needs the subject. A bucket subscription
//! also brings the pushes of topics nobody here wants; the hub finds no
//! subscriber for them and they go no further.
//!
//! A subscribe is acknowledged only after the NATS server has the SUB (a
//! round trip through it, see [`ServerEcho`]), so a client that got
//! "subscribed" receives every push published after that through the same
//! server. (In a NATS cluster, the other nodes learn of it over their
//! routes a moment later.) Each subscription has one reader task, which
//! keeps the publish order of each subject it receives, and delivers only
//! pushes whose route is the one their subject stands for: a publisher
//! allowed on topic subjects cannot make the edge deliver a private or
//! everyone push. In standalone mode there is no NATS: pushes reach the
//! hub directly and every method here is a no-op.
//!
//! A topic with presence also has a presence subject (see
//! [`crate::presence`]), subscribed when the topic's presence group is
//! seeded (only while the hub has the topic, so that a seed outliving the
//! topic's last subscriber leaves nothing behind) and released with the
//! topic's last local subscriber (the topic's group then
//! waits for a new seed: what it held of the other edges goes stale); its
//! messages go to the presence tracker.
//!
//! While NATS is away the client holds its commands in a bounded buffer and
//! a subscribe blocks once that is full, which would stall the manager and
//! with it every connection that subscribes. So the manager waits at most
//! [`HANDOFF_WAIT`] for the client to take a subscription; when it does not,
//! that subject and every later one are kept pending (the requests are
//! answered at once, unconfirmed) and handed over once NATS is back.

use crate::follow::Follower;
use crate::hub::Hub;
use crate::presence::{GroupKey, Presence};
use futures_util::StreamExt;
use gpush_common::bus::ServerEcho;
use gpush_common::history::StreamKey;
use gpush_common::history::jetstream::live_position;
use gpush_common::subject::{topic_bucket, user_bucket};
use gpush_common::{Subjects, envelope};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Bound of the manager's request queue.
const REQUEST_QUEUE: usize = 4096;
/// How long a subscribe waits for NATS before the reply is sent anyway
/// (the subscription is kept and becomes active when NATS is reachable).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How long one subscription may take to be handed to the NATS client
/// (its command buffer has room unless NATS is away) before the manager
/// keeps it pending instead and turns to other requests.
const HANDOFF_WAIT: Duration = Duration::from_millis(250);
/// How often pending subscriptions are retried.
const RETRY_PENDING: Duration = Duration::from_millis(250);

/// Something the edge can be interested in on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A public topic.
    Topic(String),
    /// A user bucket (private topics and user-wide pushes of its users).
    UserBucket(u16),
    /// A public topic's presence changes (the edges' own, see
    /// [`crate::presence`]).
    Presence(String),
}

impl Key {
    /// The subscription that brings this key's pushes.
    fn feed(&self) -> Feed {
        match self {
            Key::Topic(topic) => Feed::TopicBucket(topic_bucket(topic)),
            Key::UserBucket(bucket) => Feed::UserBucket(*bucket),
            Key::Presence(topic) => Feed::Presence(topic.clone()),
        }
    }
}

/// What one NATS subscription of the edge receives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Feed {
    /// Everyone pushes, for the edge's lifetime.
    Everyone,
    /// Every public topic of a topic bucket.
    TopicBucket(u16),
    /// Every user of a user bucket.
    UserBucket(u16),
    /// A public topic's presence changes.
    Presence(String),
}

impl Feed {
    /// Whether `stream`'s pushes arrive on this subscription.
    fn carries(&self, stream: StreamKey<'_>) -> bool {
        match (self, stream) {
            (Feed::TopicBucket(bucket), StreamKey::Topic(topic)) => topic_bucket(topic) == *bucket,
            (Feed::UserBucket(bucket), StreamKey::User(uid)) => user_bucket(uid) == *bucket,
            _ => false,
        }
    }
}

#[derive(Debug)]
enum Request {
    Ensure(Key, oneshot::Sender<()>),
    Release(Key),
}

/// Handle to the subscription manager; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interest {
    /// None in standalone mode, where there is nothing to subscribe to.
    tx: Option<mpsc::Sender<Request>>,
    /// The history streams this edge follows; None standalone, or with
    /// history off.
    follower: Option<Follower>,
}

impl Interest {
    /// The standalone handle: every method is a no-op.
    pub(crate) fn local() -> Self {
        Self::default()
    }

    /// Makes sure the edge receives pushes for `key`; returns once NATS has
    /// the subscription (or after a bounded wait while NATS is away).
    pub(crate) async fn ensure(&self, key: Key) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Request::Ensure(key, ack)).await.is_ok() {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT * 2, done).await;
        }
    }

    /// Makes sure the edge receives `key` and follows `stream`'s history
    /// (seeded from JetStream, see [`crate::follow`]) before a client joins
    /// it at a position. Nothing standalone or with history off.
    pub(crate) async fn follow(&self, key: Key, stream: StreamKey<'_>) {
        let Some(follower) = &self.follower else {
            return;
        };
        if follower.follows(stream) {
            return;
        }
        self.ensure(key).await;
        follower.follow(stream).await;
    }

    /// The follower, for reads a join's copy cannot serve.
    pub(crate) fn follower(&self) -> Option<&Follower> {
        self.follower.as_ref()
    }

    /// Tells the manager that the last local connection interested in
    /// `key` has left.
    pub(crate) async fn release(&self, key: Key) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Release(key)).await;
        }
    }
}

/// Starts the NATS subscription manager; it stops when `shutdown` is
/// cancelled.
pub(crate) async fn start(
    client: async_nats::Client,
    subjects: Subjects,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    follower: Option<Follower>,
    shutdown: CancellationToken,
) -> (Interest, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let echo = ServerEcho::new(client.clone())
        .await
        .inspect_err(|e| tracing::error!(error = %e, "bus echo subscription failed"))
        .ok();
    let mut manager = Manager {
        client,
        subjects,
        hub,
        presence,
        active: HashMap::new(),
        pending: HashMap::new(),
        echo,
        connects: 0,
        follower: follower.clone(),
    };
    let everyone = manager.subjects.everyone();
    manager.subscribe(everyone, Feed::Everyone).await;
    let task = tokio::spawn(manager.run(rx, shutdown).in_current_span());
    let interest = Interest {
        tx: Some(tx),
        follower,
    };
    (interest, task)
}

/// A subscription's reader task and the way to ask it to check its
/// followed streams.
struct Reader {
    task: JoinHandle<()>,
    check: mpsc::Sender<()>,
}

/// How often the manager looks whether the NATS client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

struct Manager {
    client: async_nats::Client,
    /// Confirms new subscriptions with a round trip through the server;
    /// None only when the client is closed (then a flush is all we do).
    echo: Option<ServerEcho>,
    subjects: Subjects,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    /// Subject -> the task reading it.
    active: HashMap<String, Reader>,
    /// Subjects wanted but not yet handed to the client, because NATS was
    /// away: retried every [`RETRY_PENDING`] while connected.
    pending: HashMap<String, Feed>,
    /// The client's connection count when last looked at.
    connects: u64,
    follower: Option<Follower>,
}

impl Manager {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut retry = tokio::time::interval(RETRY_PENDING);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnected = tokio::time::interval(RECONNECT_CHECK);
        reconnected.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, 256) => if n == 0 { break },
                _ = retry.tick(), if !self.pending.is_empty() => {
                    self.subscribe_pending().await;
                    continue;
                }
                _ = reconnected.tick(), if self.follower.is_some() => {
                    self.check_after_reconnect();
                    continue;
                }
            }
            let mut subscribed = false;
            for request in batch.drain(..) {
                match request {
                    Request::Ensure(Key::Presence(topic), ack) if !self.hub.has_topic(&topic) => {
                        // The seed that asks outlived the topic's last
                        // local subscriber: nothing would release this
                        // subscription. Its group waits for a new seed
                        // (the one under way is dropped), gathered once
                        // a subscriber comes.
                        self.presence.unsubscribed(&topic);
                        acks.push(ack);
                    }
                    Request::Ensure(key, ack) => {
                        let feed = key.feed();
                        let subject = self.subject(&feed);
                        if !self.active.contains_key(&subject)
                            && !self.pending.contains_key(&subject)
                        {
                            subscribed |= self.subscribe(subject, feed).await;
                        }
                        acks.push(ack);
                    }
                    Request::Release(key) => self.release(&key),
                }
            }
            // While NATS is away there is nothing to confirm with: the
            // client sends its subscriptions on reconnect. Waiting out the
            // timeout for every batch would only back up the queue.
            if subscribed
                && self.connected()
                && tokio::time::timeout(SUBSCRIBE_WAIT, self.confirm())
                    .await
                    .is_err()
            {
                tracing::warn!(
                    "bus did not confirm subscriptions in time; they activate on reconnect"
                );
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        for (_, reader) in self.active.drain() {
            reader.task.abort();
        }
    }

    /// Drops what `key` needed unless the hub still has a subscriber for
    /// it: a topic's presence subject, what this edge follows of the
    /// topic's history, and the topic's bucket subscription once no topic
    /// of the bucket has a local subscriber.
    fn release(&mut self, key: &Key) {
        let wanted = match key {
            Key::Topic(topic) | Key::Presence(topic) => self.hub.has_topic(topic),
            Key::UserBucket(bucket) => self.hub.has_user_bucket(*bucket),
        };
        if wanted {
            return;
        }
        if let Key::Topic(topic) = key {
            // The topic's presence goes with it.
            let presence = self.subjects.presence_topic(topic);
            let pending = self.pending.remove(&presence).is_some();
            let active = self.active.remove(&presence);
            if let Some(reader) = &active {
                reader.task.abort();
            }
            if pending || active.is_some() {
                // Changes are missed from now on: a new local subscriber
                // needs a seed again, which subscribes anew.
                self.presence.unsubscribed(topic);
            }
            // Nobody here follows the topic's history any more, even
            // while its bucket brings its pushes for other topics.
            self.hub.history.forget_stream(StreamKey::Topic(topic));
            if self.hub.has_topic_bucket(topic_bucket(topic)) {
                return;
            }
        }
        let feed = key.feed();
        let subject = self.subject(&feed);
        self.pending.remove(&subject);
        if let Some(reader) = self.active.remove(&subject) {
            // Dropping the subscriber unsubscribes.
            reader.task.abort();
            // What arrives on it is no longer seen here.
            self.hub.history.forget(|stream| feed.carries(stream));
        }
    }

    /// After the client reconnected, asks every reader to check its
    /// followed streams against history (what was published while the
    /// connection was away reached nobody here).
    fn check_after_reconnect(&mut self) {
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        // The first connection counts 1; any count past it and past what
        // the last look saw is a reconnect.
        if connects > self.connects.max(1) {
            tracing::info!("bus reconnected: checking followed history streams");
            for reader in self.active.values() {
                let _ = reader.check.try_send(());
            }
        }
        self.connects = connects;
    }

    /// Returns once the server has every subscription sent so far.
    async fn confirm(&mut self) {
        let confirmed = match &mut self.echo {
            Some(echo) => echo.round_trip().await,
            None => self
                .client
                .flush()
                .await
                .map_err(gpush_common::BusError::Flush),
        };
        if let Err(e) = confirmed {
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "bus subscription not confirmed");
        }
    }

    fn subject(&self, feed: &Feed) -> String {
        match feed {
            Feed::Everyone => self.subjects.everyone(),
            Feed::TopicBucket(bucket) => self.subjects.topic_bucket(*bucket),
            Feed::UserBucket(bucket) => self.subjects.user_bucket(*bucket),
            Feed::Presence(topic) => self.subjects.presence_topic(topic),
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Subscribes to `subject` now if NATS is there, else keeps it pending;
    /// true when the client took the subscription (then it can be
    /// confirmed).
    async fn subscribe(&mut self, subject: String, feed: Feed) -> bool {
        // Behind pending ones: the client's buffer was full a moment ago.
        // (Before the first connection, and for a while after a
        // disconnect, the client buffers subscriptions itself.)
        if !self.pending.is_empty() {
            self.pending.insert(subject, feed);
            return false;
        }
        self.hand_off(subject, feed).await
    }

    /// Hands every pending subscription to the client while it takes them.
    async fn subscribe_pending(&mut self) {
        if !self.connected() {
            return;
        }
        let pending: Vec<(String, Feed)> = self.pending.drain().collect();
        let mut stalled = false;
        for (subject, feed) in pending {
            if stalled {
                self.pending.insert(subject, feed);
            } else {
                stalled = !self.hand_off(subject, feed).await;
            }
        }
        if self.pending.is_empty() {
            tracing::info!("pending bus subscriptions made");
        }
    }

    /// Gives `subject` to the client, waiting at most [`SUBSCRIBE_WAIT`]
    /// while NATS is connected (a busy machine may take a while, and a
    /// subscribe reply should mean the subscription is made) and
    /// [`HANDOFF_WAIT`] while it is away (its command buffer may be full):
    /// true when taken; otherwise the subject is left pending.
    async fn hand_off(&mut self, subject: String, feed: Feed) -> bool {
        let wait = if self.connected() {
            SUBSCRIBE_WAIT
        } else {
            HANDOFF_WAIT
        };
        match tokio::time::timeout(wait, self.client.subscribe(subject.clone())).await {
            Ok(Ok(subscriber)) => {
                let (check, checks) = mpsc::channel(1);
                let reader = ReaderTask {
                    hub: self.hub.clone(),
                    presence: self.presence.clone(),
                    subjects: self.subjects.clone(),
                    follower: self.follower.clone(),
                    feed: feed.clone(),
                };
                let task = tokio::spawn(reader.run(subscriber, checks).in_current_span());
                self.active.insert(subject, Reader { task, check });
                true
            }
            // Only fails when the client is closed; the edge is stopping.
            Ok(Err(e)) => {
                tracing::error!(%subject, error = %e, "bus subscribe failed");
                false
            }
            Err(_) => {
                tracing::warn!(%subject, "bus client busy; subscription kept pending");
                self.pending.insert(subject, feed);
                false
            }
        }
    }
}

/// What one subscription's reader needs.
struct ReaderTask {
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    subjects: Subjects,
    follower: Option<Follower>,
    /// What the subscription receives.
    feed: Feed,
}

impl ReaderTask {
    /// Delivers every message of one subscription, in order, if its route
    /// is the one of the subject it came on (counts and logs the others);
    /// with history, through the follower, which fills gaps. Checks the
    /// followed streams of this subject when asked (after a reconnect).
    async fn run(self, mut subscriber: async_nats::Subscriber, mut checks: mpsc::Receiver<()>) {
        loop {
            tokio::select! {
                message = subscriber.next() => {
                    let Some(message) = message else { break };
                    self.message(message).await;
                }
                Some(()) = checks.recv() => self.check().await,
            }
        }
    }

    async fn message(&self, message: async_nats::Message) {
        if let Feed::Presence(topic) = &self.feed {
            self.presence
                .receive(&GroupKey::Topic(topic.clone()), &message.payload);
            return;
        }
        let position = live_position(message.headers.as_ref());
        if let (Some(follower), Some(position)) = (&self.follower, position)
            && position.marker
        {
            // A history marker: no envelope, its stream is its subject's.
            if let Some((topic, name)) = self.subjects.stream_of(&message.subject) {
                let stream = if topic {
                    StreamKey::Topic(&name)
                } else {
                    StreamKey::User(&name)
                };
                follower.marker(stream, position).await;
            }
            return;
        }
        match envelope::decode(&message.payload) {
            Ok(push) if self.subjects.carries(&message.subject, push.route()) => {
                match &self.follower {
                    Some(follower) => follower.live(push, position).await,
                    None => self.hub.deliver(&push),
                }
            }
            Ok(push) => {
                self.hub.stats.misrouted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subject = %message.subject,
                    route = ?push.route(),
                    "dropping bus message whose route does not match its subject"
                );
            }
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "dropping bus message")
            }
        }
    }

    /// Checks every followed stream that arrives on this subject.
    async fn check(&self) {
        let Some(follower) = &self.follower else {
            return;
        };
        let streams = self
            .hub
            .history
            .followed(|stream| self.feed.carries(stream));
        for (topic, name) in streams {
            let stream = if topic {
                StreamKey::Topic(&name)
            } else {
                StreamKey::User(&name)
            };
            follower.check(stream).await;
        }
    }
}

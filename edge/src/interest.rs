//! The edge's side of the bus: NATS subscriptions that follow local interest.
//!
//! The edge subscribes to a topic's subject when its first local connection
//! needs it and unsubscribes after the last one leaves; likewise to a user
//! bucket's subjects (see [`gpush_common::subject`]) while a local
//! connection is logged in as one of its users. The everyone subject is
//! subscribed for the edge's lifetime. One manager task
//! owns the subscription table and handles requests in order, so a quick
//! leave-then-join can never end unsubscribed: before unsubscribing it asks
//! the hub whether anyone still needs the subject.
//!
//! A subscribe is acknowledged only after the NATS server has the SUB (a
//! round trip through it, see [`ServerEcho`]), so a client that got
//! "subscribed" receives every push published after that through the same
//! server. (In a NATS cluster, the other nodes learn of it over their
//! routes a moment later.) Each subject has one reader task, which keeps the
//! publish order of that subject. In standalone mode there is no NATS:
//! pushes reach the hub directly and every method here is a no-op.

use crate::hub::Hub;
use futures_util::StreamExt;
use gpush_common::bus::ServerEcho;
use gpush_common::{Subjects, envelope};
use std::collections::HashMap;
use std::sync::Arc;
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

/// Something the edge can be interested in on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// A public topic.
    Topic(String),
    /// A user bucket (private topics and user-wide pushes of its users).
    UserBucket(u16),
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
        active: HashMap::new(),
        echo,
    };
    let everyone = manager.subjects.everyone();
    manager.subscribe(everyone).await;
    let task = tokio::spawn(manager.run(rx, shutdown).in_current_span());
    (Interest { tx: Some(tx) }, task)
}

struct Manager {
    client: async_nats::Client,
    /// Confirms new subscriptions with a round trip through the server;
    /// None only when the client is closed (then a flush is all we do).
    echo: Option<ServerEcho>,
    subjects: Subjects,
    hub: Arc<Hub>,
    /// Subject -> the task reading it.
    active: HashMap<String, JoinHandle<()>>,
}

impl Manager {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, 256) => if n == 0 { break },
            }
            let mut subscribed = false;
            for request in batch.drain(..) {
                match request {
                    Request::Ensure(key, ack) => {
                        let subject = self.subject(&key);
                        if !self.active.contains_key(&subject) {
                            self.subscribe(subject).await;
                            subscribed = true;
                        }
                        acks.push(ack);
                    }
                    Request::Release(key) => {
                        let wanted = match &key {
                            Key::Topic(topic) => self.hub.has_topic(topic),
                            Key::UserBucket(bucket) => self.hub.has_user_bucket(*bucket),
                        };
                        if !wanted && let Some(reader) = self.active.remove(&self.subject(&key)) {
                            // Dropping the subscriber unsubscribes.
                            reader.abort();
                        }
                    }
                }
            }
            // While NATS is away there is nothing to confirm with: the
            // client sends its subscriptions on reconnect. Waiting out the
            // timeout for every batch would only back up the queue.
            if subscribed
                && self.client.connection_state() == async_nats::connection::State::Connected
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
            reader.abort();
        }
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

    fn subject(&self, key: &Key) -> String {
        match key {
            Key::Topic(topic) => self.subjects.topic(topic),
            Key::UserBucket(bucket) => self.subjects.user_bucket(*bucket),
        }
    }

    async fn subscribe(&mut self, subject: String) {
        match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                let hub = self.hub.clone();
                let reader = tokio::spawn(read(subscriber, hub).in_current_span());
                self.active.insert(subject, reader);
            }
            // Only fails when the client is closed; the edge is stopping.
            Err(e) => tracing::error!(%subject, error = %e, "bus subscribe failed"),
        }
    }
}

/// Delivers every message of one subscription, in order.
async fn read(mut subscriber: async_nats::Subscriber, hub: Arc<Hub>) {
    while let Some(message) = subscriber.next().await {
        match envelope::decode(&message.payload) {
            Ok(push) => hub.deliver(&push),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "dropping bus message")
            }
        }
    }
}

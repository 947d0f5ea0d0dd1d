//! The publishing side of the bus.
//!
//! In a cluster, ingress publishes every push to NATS under the subject of
//! its route (see [`subject`](crate::subject)) and each edge subscribes to
//! exactly the subjects its clients need. In standalone mode there is one
//! process and no NATS: the push API hands pushes straight to the local edge
//! through [`LocalDelivery`], with the same routing and ordering.

use crate::config::split_list;
use crate::control::{Answer, Command, Gathered, Gathering, Part};
use crate::envelope;
use crate::history::jetstream::{HistoryError, JetStreamHistory};
use crate::history::{Page, StreamKey};
use crate::push::Push;
use crate::subject::Subjects;
use async_nats::connection::State;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Default time a publish may take before the caller is told the bus is
/// unavailable.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The in-process receiver of pushes in standalone mode: the local edge.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Delivers one push to the matching local connections. Must not block.
    fn deliver(&self, push: &Push);

    /// Gives each push its history offset (see [`crate::history`]) as it
    /// is accepted, before it is queued for [`LocalDelivery::deliver`]:
    /// called in publish order, one call at a time. Must not block.
    fn stamp(&self, _pushes: &mut [Push]) {}

    /// The history API's answer for `query`; None when that stream keeps
    /// no history. Must not block.
    fn history(&self, _query: &HistoryQuery) -> Option<Page> {
        None
    }

    /// The local edge's node id and its answer to a server API command
    /// (see [`crate::control`]); None when it takes none. Must not block.
    fn control(&self, _command: &Command) -> Option<(String, Answer)> {
        None
    }
}

/// A history API request: the stream (a public topic; a user, optionally
/// narrowed to one of its private topics) and the pushes wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The user, or empty for a public topic.
    pub uid: String,
    /// The topic: public when `uid` is empty, else private (empty: every
    /// push of the user's stream).
    pub topic: String,
    /// Pushes after this offset.
    pub since: u64,
    /// At most this many.
    pub limit: usize,
}

impl HistoryQuery {
    /// The stream asked for (None: neither uid nor topic).
    pub fn key(&self) -> Option<StreamKey<'_>> {
        match (self.uid.is_empty(), self.topic.is_empty()) {
            (true, true) => None,
            (true, false) => Some(StreamKey::Topic(&self.topic)),
            (false, _) => Some(StreamKey::User(&self.uid)),
        }
    }

    /// Whether `push` of that stream is one asked for.
    pub fn wants(&self, push: &Push) -> bool {
        self.uid.is_empty() || self.topic.is_empty() || push.topic == self.topic
    }
}

/// Where the push API sends pushes.
#[derive(Clone)]
pub enum Bus {
    /// A NATS connection.
    Nats(NatsBus),
    /// The edge in this same process, called by the publishing task itself.
    Local(Arc<dyn LocalDelivery>),
    /// The edge in this same process behind a bounded queue and one
    /// dispatcher task (standalone mode): the push API answers once the
    /// pushes are queued, as it does once NATS has them, and fan-out runs
    /// off the request path, in order.
    Queued(LocalQueue),
}

/// How often the NATS client pings its server. A third ping sent while
/// two are unanswered (a hung server, a silent partition: 10-15 s) makes it
/// drop the connection and fail over to another server of the cluster.
pub const NATS_PING_INTERVAL: Duration = Duration::from_secs(5);

/// The NATS server both binaries use when none is configured.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// When a publish to NATS counts as done (ingress `publish_ack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// The server confirmed it: a probe sent after the messages came back
    /// through the server, which handles a connection's messages in order.
    /// A hung server is noticed within the publish timeout.
    #[default]
    Server,
    /// The messages were written to the server's connection (flushed). About
    /// 1.7x the single-push throughput; a server that hangs without closing
    /// the connection still gets pushes "accepted" until the socket buffers
    /// fill.
    Flush,
}

impl std::fmt::Display for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ack::Server => "server",
            Ack::Flush => "flush",
        })
    }
}

impl std::str::FromStr for Ack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Ack::Server),
            "flush" => Ok(Ack::Flush),
            other => Err(format!("{other:?} is not an ack mode (server or flush)")),
        }
    }
}

/// Default bound of the standalone push queue, in bytes: the largest push
/// API call (a full batch, see `max_batch`) fits.
pub const DEFAULT_LOCAL_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Largest bound of the standalone push queue, in bytes.
pub const MAX_LOCAL_QUEUE_BYTES: usize = u32::MAX as usize;

/// The queue in front of a local edge, bounded in bytes; cheap to clone.
#[derive(Clone)]
pub struct LocalQueue {
    tx: mpsc::UnboundedSender<(Vec<Push>, OwnedSemaphorePermit)>,
    /// Stamps pushes with their offsets.
    delivery: Arc<dyn LocalDelivery>,
    /// Held while a call's pushes are stamped and queued, so they are
    /// queued in offset order.
    order: Arc<std::sync::Mutex<()>>,
    /// One permit per byte queued and not yet delivered.
    room: Arc<Semaphore>,
    capacity: u32,
    timeout: Duration,
}

impl LocalQueue {
    /// Starts the dispatcher task feeding `delivery`, in the caller's
    /// tracing span. A publish waits for room in the queue (`capacity`
    /// bytes, counted by [`queued_bytes`]; a call larger than the whole
    /// queue waits until it is empty) for at most `timeout`. The room a
    /// call takes is given back once its pushes are delivered. Must be
    /// called inside a Tokio runtime; the task ends when every clone is
    /// dropped.
    pub fn start(delivery: Arc<dyn LocalDelivery>, capacity: usize, timeout: Duration) -> Self {
        let capacity = u32::try_from(capacity.clamp(1, MAX_LOCAL_QUEUE_BYTES)).unwrap_or(u32::MAX);
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<Push>, OwnedSemaphorePermit)>();
        let dispatcher = delivery.clone();
        let dispatch = async move {
            let delivery = dispatcher;
            while let Some((pushes, _room)) = rx.recv().await {
                for push in &pushes {
                    delivery.deliver(push);
                }
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(dispatch));
        Self {
            tx,
            delivery,
            order: Arc::default(),
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            timeout,
        }
    }

    /// Queues `pushes` once there is room for them, within the timeout;
    /// their offsets.
    async fn publish(&self, pushes: &[Push]) -> Result<Vec<u64>, BusError> {
        let size = u32::try_from(queued_bytes(pushes)).unwrap_or(u32::MAX);
        let room = self
            .room
            .clone()
            .acquire_many_owned(size.min(self.capacity));
        match tokio::time::timeout(self.timeout, room).await {
            Ok(Ok(room)) => {
                let mut pushes = pushes.to_vec();
                let _order = self
                    .order
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.delivery.stamp(&mut pushes);
                let offsets = pushes.iter().map(|p| p.offset).collect();
                self.tx
                    .send((pushes, room))
                    .map_err(|_| BusError::NotConnected)?;
                Ok(offsets)
            }
            Ok(Err(_)) => Err(BusError::NotConnected),
            Err(_) => Err(BusError::Timeout(self.timeout)),
        }
    }
}

/// What `pushes` take in a [`LocalQueue`]: their names and payloads plus
/// the fixed size of each push and of the call.
pub fn queued_bytes(pushes: &[Push]) -> usize {
    let fixed = std::mem::size_of::<Push>();
    std::mem::size_of::<Vec<Push>>()
        + pushes
            .iter()
            .map(|p| fixed + p.uid.len() + p.topic.len() + p.data.len())
            .sum::<usize>()
}

/// A publishing connection to NATS; cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<NatsInner>,
    /// Where pushes with history are stored (JetStream); None: every push
    /// goes to its live subject.
    history: Option<JetStreamHistory>,
}

struct NatsInner {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
    flusher: Flusher,
    /// The client's counters; `connects` tells reconnects apart.
    stats: Arc<async_nats::Statistics>,
}

/// Most confirmation probes in flight at once. Each covers every publish
/// made before it was sent, so a few keep the pipe full (throughput is not
/// bound by the round-trip time) without a probe per request.
const MAX_PROBES_IN_FLIGHT: usize = 4;
/// Failed ticket ranges remembered for waiters that have not looked yet.
/// A waiter older than this many failures has long passed its own timeout.
const FAILED_RANGES: usize = 16;

/// Confirms publishes, coalesced: a publisher takes a ticket after its
/// messages are queued, and one task sends a probe through the server that
/// covers every ticket issued before it (see [`Confirmer`]). A ticket is
/// confirmed only once the NATS server has processed its messages, not
/// merely once they left our socket. Concurrent requests share a probe
/// instead of paying a round trip each.
#[derive(Clone)]
struct Flusher {
    issued: Arc<AtomicU64>,
    kick: mpsc::Sender<()>,
    state: watch::Receiver<Settled>,
}

/// What the confirming task has settled: tickets up to `ok` are
/// confirmed, except those in a `failed` range (first, last), which were
/// not.
#[derive(Debug, Clone, Default)]
struct Settled {
    ok: u64,
    failed: VecDeque<(u64, u64)>,
}

impl Settled {
    /// Some(true) when `ticket` is confirmed, Some(false) when it failed,
    /// None while it is open.
    fn outcome(&self, ticket: u64) -> Option<bool> {
        if self
            .failed
            .iter()
            .any(|&(first, last)| (first..=last).contains(&ticket))
        {
            return Some(false);
        }
        (self.ok >= ticket).then_some(true)
    }
}

impl Flusher {
    /// Starts the confirming task; a probe that does not come back within
    /// `timeout` fails its tickets. With [`Ack::Flush`] a flush settles the
    /// tickets and no probe is sent.
    fn start(client: async_nats::Client, timeout: Duration, ack: Ack) -> Self {
        let issued = Arc::new(AtomicU64::new(0));
        let (kick, kicks) = mpsc::channel(1);
        let (settled, state) = watch::channel(Settled::default());
        let confirmer = Confirmer {
            issued: issued.clone(),
            settled,
            timeout,
            ack,
            client,
            in_flight: VecDeque::new(),
            covered: 0,
            probe: 0,
        };
        // Ends when every NatsBus clone (every kick sender) is gone.
        tokio::spawn(confirmer.run(kicks));
        Self {
            issued,
            kick,
            state,
        }
    }

    /// Waits until everything published before this call is confirmed by
    /// the server, or known not to be.
    async fn flushed(&self) -> Result<(), BusError> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        // Full means a kick is already due; it will see our ticket.
        let _ = self.kick.try_send(());
        let mut state = self.state.clone();
        let confirmed = state
            .wait_for(|s| s.outcome(ticket).is_some())
            .await
            .map_err(|_| BusError::Unconfirmed("the confirmation task stopped"))?
            .outcome(ticket);
        if confirmed == Some(true) {
            Ok(())
        } else {
            Err(BusError::Unconfirmed("the server did not confirm"))
        }
    }
}

/// A probe on its way: its number, the last ticket it covers, and when it
/// is given up.
struct Probe {
    number: u64,
    covers: u64,
    deadline: tokio::time::Instant,
}

/// The confirming task. A probe is a tiny message to a private inbox this
/// client subscribes to; a NATS server handles each connection's messages
/// in order, so the echo proves it has processed every earlier one sent on
/// the same connection (publishers check that no reconnect came between,
/// see [`NatsBus::publish_all`]). Probes are pipelined (up to
/// [`MAX_PROBES_IN_FLIGHT`]). A probe that times out fails every ticket
/// still open.
struct Confirmer {
    client: async_nats::Client,
    issued: Arc<AtomicU64>,
    settled: watch::Sender<Settled>,
    timeout: Duration,
    ack: Ack,
    in_flight: VecDeque<Probe>,
    /// The last ticket a probe was sent for (or that was settled).
    covered: u64,
    probe: u64,
}

impl Confirmer {
    async fn run(mut self, mut kicks: mpsc::Receiver<()>) {
        let inbox = async_nats::Subject::from(self.client.new_inbox());
        let mut echoes = match self.client.subscribe(inbox.clone()).await {
            Ok(echoes) => echoes,
            Err(e) => {
                // Only when the client is closed; every ticket then fails.
                tracing::error!(error = %e, "bus acknowledgement subscription failed");
                while kicks.recv().await.is_some() {
                    let last = self.issued.load(Ordering::SeqCst);
                    self.fail_through(last);
                }
                return;
            }
        };
        loop {
            let deadline = self.in_flight.front().map(|p| p.deadline);
            tokio::select! {
                kick = kicks.recv(), if self.in_flight.len() < MAX_PROBES_IN_FLIGHT => {
                    if kick.is_none() {
                        return;
                    }
                    self.send_probe(&inbox).await;
                }
                Some(echo) = futures_util::StreamExt::next(&mut echoes) => {
                    if let Ok(number) = <[u8; 8]>::try_from(&echo.payload[..]) {
                        self.echoed(u64::from_be_bytes(number));
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() =>
                {
                    tracing::warn!("bus did not confirm within {:?}", self.timeout);
                    let last = self.issued.load(Ordering::SeqCst);
                    self.fail_through(last);
                }
            }
        }
    }

    /// Sends a probe covering every ticket issued so far.
    async fn send_probe(&mut self, inbox: &async_nats::Subject) {
        let last = self.issued.load(Ordering::SeqCst);
        if last <= self.covered {
            return;
        }
        if self.ack == Ack::Flush {
            match tokio::time::timeout(self.timeout, self.client.flush()).await {
                Ok(Ok(())) => {
                    self.covered = last;
                    self.settled.send_modify(|s| s.ok = s.ok.max(last));
                }
                _ => self.fail_through(last),
            }
            return;
        }
        self.probe += 1;
        let number = self.probe.to_be_bytes();
        let sent = async {
            self.client
                .publish(inbox.clone(), bytes::Bytes::copy_from_slice(&number))
                .await
                .map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(())) => {
                self.covered = last;
                self.in_flight.push_back(Probe {
                    number: self.probe,
                    covers: last,
                    deadline: tokio::time::Instant::now() + self.timeout,
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bus probe failed");
                self.fail_through(last);
            }
            Err(_) => self.fail_through(last),
        }
    }

    /// Probe `number` came back: every probe up to it is confirmed. Late
    /// echoes of probes already given up find nothing.
    fn echoed(&mut self, number: u64) {
        let mut ok = None;
        while self.in_flight.front().is_some_and(|p| p.number <= number) {
            ok = self.in_flight.pop_front().map(|p| p.covers);
        }
        if let Some(ok) = ok {
            self.settled.send_modify(|s| s.ok = s.ok.max(ok));
        }
    }

    /// Fails every open ticket up to `last`, and forgets the probes in
    /// flight.
    fn fail_through(&mut self, last: u64) {
        self.in_flight.clear();
        self.settled.send_modify(|s| {
            let first = s.ok + 1;
            let first = s
                .failed
                .back()
                .map_or(first, |&(_, end)| first.max(end + 1));
            if first <= last {
                if s.failed.len() == FAILED_RANGES
                    && let (Some((oldest, _)), Some((_, next))) =
                        (s.failed.pop_front(), s.failed.pop_front())
                {
                    // Over-failing is the safe direction: merge, never
                    // forget (tickets between them fail too).
                    s.failed.push_front((oldest, next));
                }
                s.failed.push_back((first, last));
            }
        });
        self.covered = self.covered.max(last);
    }
}

/// A sequential round trip through the NATS server on a private inbox:
/// [`ServerEcho::round_trip`] returns once the server has processed
/// everything this client sent before the call (a connection's messages
/// are handled in order). The edge uses it so that "subscribed" means the
/// server has the subscription, not merely that it left our socket.
pub struct ServerEcho {
    client: async_nats::Client,
    inbox: async_nats::Subject,
    echoes: async_nats::Subscriber,
    probe: u64,
}

impl ServerEcho {
    /// Subscribes to a fresh inbox on `client`.
    pub async fn new(client: async_nats::Client) -> Result<Self, BusError> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let echoes = client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::Subscribe)?;
        Ok(Self {
            client,
            inbox,
            echoes,
            probe: 0,
        })
    }

    /// Sends a probe and waits for it to come back; late echoes of earlier
    /// probes are skipped. Not bounded: wrap it in a timeout.
    pub async fn round_trip(&mut self) -> Result<(), BusError> {
        self.probe += 1;
        let number = self.probe.to_be_bytes();
        self.client
            .publish(self.inbox.clone(), bytes::Bytes::copy_from_slice(&number))
            .await
            .map_err(BusError::Publish)?;
        self.client.flush().await.map_err(BusError::Flush)?;
        while let Some(echo) = futures_util::StreamExt::next(&mut self.echoes).await {
            if echo.payload[..] == number {
                return Ok(());
            }
        }
        Err(BusError::NotConnected)
    }
}

/// Why a bus operation failed: one variant per operation, with the NATS
/// client's error kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected to NATS at the moment; nothing was published.
    #[error("bus not connected")]
    NotConnected,
    /// NATS did not take the messages within the publish timeout.
    #[error("bus did not accept the message within {0:?}")]
    Timeout(Duration),
    /// The NATS connection could not be set up (bad URL or options).
    #[error("bus connect failed")]
    Connect(#[source] async_nats::ConnectError),
    /// A subscription could not be made.
    #[error("bus subscribe failed")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The NATS client refused a message.
    #[error("bus publish failed")]
    Publish(#[source] async_nats::PublishError),
    /// Buffered messages could not be written to the server.
    #[error("bus flush failed")]
    Flush(#[source] async_nats::client::FlushError),
    /// The messages were sent but the server's confirmation did not come
    /// back; they may or may not have been delivered.
    #[error("bus publish not confirmed: {0}")]
    Unconfirmed(&'static str),
    /// The edges' answers to a control command passed the bytes the
    /// caller holds (the push API's `control_max_bytes`); what came was
    /// dropped.
    #[error("the edges' answer exceeds {0} bytes")]
    AnswerTooLarge(usize),
    /// JetStream did not confirm storing a push with history (no stream,
    /// an error reply, or no ack within the timeout); the call's other
    /// pushes may or may not be stored and delivered.
    #[error("bus publish not stored in history")]
    NotStored(#[source] HistoryError),
}

impl NatsBus {
    /// Wraps a connected client. `timeout` bounds each [`Bus::publish`]
    /// (and each confirmation probe).
    /// Must be called inside a Tokio runtime (it starts the flusher task).
    pub fn new(
        client: async_nats::Client,
        subjects: Subjects,
        timeout: Duration,
        ack: Ack,
    ) -> Self {
        Self {
            inner: Arc::new(NatsInner {
                flusher: Flusher::start(client.clone(), timeout, ack),
                stats: client.statistics(),
                client,
                subjects,
                timeout,
            }),
            history: None,
        }
    }

    /// Stores pushes with history in `history` (JetStream) instead of
    /// publishing them on their live subjects: the stream republishes
    /// each there once stored, with its offset.
    pub fn with_history(mut self, history: JetStreamHistory) -> Self {
        self.history = Some(history);
        self
    }

    /// How many times the client has connected (a reconnect counts).
    pub fn connects(&self) -> u64 {
        self.inner.stats.connects.load(Ordering::Relaxed)
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Publishes and waits for the server's confirmation: JetStream's ack
    /// for each push with history (all sent first, then the acks awaited),
    /// a probe through the server for the others. Returns each push's
    /// offset (0 without history). A reconnect between the first core
    /// publish and the probe's return fails the call: the messages may
    /// have gone to the old connection and been lost there, while the probe
    /// came back over the new one. (A JetStream ack needs no such check: it
    /// says the push is stored.)
    async fn publish_all(&self, pushes: &[Push]) -> Result<Vec<u64>, BusError> {
        let connects = &self.inner.stats.connects;
        let epoch = connects.load(Ordering::SeqCst);
        let history = self.history.as_ref();
        let mut live = 0_usize;
        for push in pushes {
            if history.is_some_and(|history| history.keeps(push)) {
                continue;
            }
            live += 1;
            let subject = self.inner.subjects.for_route(push.route());
            self.inner
                .client
                .publish(subject, envelope::encode(push))
                .await
                .map_err(BusError::Publish)?;
        }
        let stored = async {
            match history {
                Some(history) => history.store(pushes).await.map_err(BusError::NotStored),
                None => Ok(vec![0; pushes.len()]),
            }
        };
        let flushed = async {
            if live > 0 {
                self.inner.flusher.flushed().await
            } else {
                Ok(())
            }
        };
        let (offsets, flushed) = tokio::join!(stored, flushed);
        flushed?;
        let offsets = offsets?;
        if live > 0 && connects.load(Ordering::SeqCst) != epoch {
            return Err(BusError::Unconfirmed(
                "the bus reconnected before confirming",
            ));
        }
        Ok(offsets)
    }
}

impl Bus {
    /// Publishes `pushes` in order; each one's history offset (0: none).
    /// Pushes on the same route are delivered in this order. On NATS, Ok
    /// means the server has processed the messages (handed them to its
    /// subscribers and routes), and with history that JetStream stored
    /// every push that has it; an error means some may not have been
    /// published.
    pub async fn publish(&self, pushes: &[Push]) -> Result<Vec<u64>, BusError> {
        match self {
            Bus::Local(local) => {
                let mut pushes = pushes.to_vec();
                local.stamp(&mut pushes);
                for push in &pushes {
                    local.deliver(push);
                }
                Ok(pushes.iter().map(|p| p.offset).collect())
            }
            Bus::Queued(queue) => queue.publish(pushes).await,
            Bus::Nats(nats) => {
                if nats.inner.client.connection_state() != State::Connected {
                    return Err(BusError::NotConnected);
                }
                let timeout = nats.inner.timeout;
                tokio::time::timeout(timeout, nats.publish_all(pushes))
                    .await
                    .map_err(|_| BusError::Timeout(timeout))?
            }
        }
    }

    /// The history API's answer for `query`: Ok(None) when that stream
    /// keeps no history (or the bus keeps none).
    pub async fn history(&self, query: &HistoryQuery) -> Result<Option<Page>, BusError> {
        match self {
            Bus::Local(local) => Ok(local.history(query)),
            Bus::Queued(queue) => Ok(queue.delivery.history(query)),
            Bus::Nats(nats) => {
                let (Some(history), Some(key)) = (&nats.history, query.key()) else {
                    return Ok(None);
                };
                let Some(position) = history.position(key).await.map_err(BusError::NotStored)?
                else {
                    return Ok(None);
                };
                // All or nothing, as recoveries are: when `since` is no
                // longer kept, the answer says so and lists nothing.
                let read = history
                    .read(
                        key,
                        query.since,
                        Some(position.offset),
                        crate::history::config::MAX_SIZE,
                    )
                    .await
                    .map_err(BusError::NotStored)?;
                let (complete, entries) = match read {
                    crate::history::Read::Complete(entries) => (true, entries),
                    crate::history::Read::Gap => {
                        // `since` is no longer kept (or is 0): what is kept,
                        // from the oldest on, and `complete` false unless
                        // nothing was kept after `since` to begin with.
                        match history.oldest(key).await.map_err(BusError::NotStored)? {
                            Some((first, oldest)) if first > query.since => {
                                let rest = history
                                    .read(
                                        key,
                                        first,
                                        Some(position.offset),
                                        crate::history::config::MAX_SIZE,
                                    )
                                    .await
                                    .map_err(BusError::NotStored)?;
                                let rest = match rest {
                                    crate::history::Read::Complete(rest) => rest,
                                    crate::history::Read::Gap => Vec::new(),
                                };
                                (false, oldest.into_iter().chain(rest).collect())
                            }
                            _ => (query.since >= position.offset, Vec::new()),
                        }
                    }
                };
                let entries = entries
                    .into_iter()
                    .filter(|entry| query.wants(&entry.push))
                    .take(query.limit)
                    .collect();
                Ok(Some(Page {
                    epoch: position.epoch,
                    offset: position.offset,
                    complete,
                    entries,
                }))
            }
        }
    }

    /// Sends `command` to every edge and gathers their answers (see
    /// [`crate::control`]) until every edge of `expected` (the registered
    /// edges' node ids; None when unknown) has answered in full, or
    /// `timeout` has passed; the edges of `expected` that did not answer
    /// are named missing. Standalone, the local edge answers at once.
    /// Answers over `max_bytes` fail the call ([`BusError::AnswerTooLarge`]).
    pub async fn control(
        &self,
        command: &Command,
        expected: Option<Vec<String>>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Gathered, BusError> {
        let local = match self {
            Bus::Local(local) => Some(local.control(command)),
            Bus::Queued(queue) => Some(queue.delivery.control(command)),
            Bus::Nats(_) => None,
        };
        if let Some(answer) = local {
            let mut gathering = Gathering::default();
            let Some((node, answer)) = answer else {
                return Ok(gathering.finish(None));
            };
            if answer.approx_bytes() > max_bytes {
                return Err(BusError::AnswerTooLarge(max_bytes));
            }
            let expected = [node.clone()];
            gathering.add(Part {
                node,
                answer,
                last: true,
            });
            return Ok(gathering.finish(Some(&expected)));
        }
        let Bus::Nats(nats) = self else {
            unreachable!("local buses answered above")
        };
        gather(
            &nats.inner.client,
            nats.inner.subjects.control(),
            command,
            expected,
            timeout,
            max_bytes,
        )
        .await
    }

    /// Whether pushes can be published now: with history, once its
    /// JetStream streams exist.
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Local(_) => true,
            Bus::Queued(queue) => !queue.tx.is_closed(),
            Bus::Nats(nats) => {
                nats.inner.client.connection_state() == State::Connected
                    && nats.history.as_ref().is_none_or(JetStreamHistory::is_ready)
            }
        }
    }
}

/// Sends `command` on the control `subject` with a reply inbox and gathers
/// the answers' parts (see [`crate::control`]) until every edge of
/// `expected` (None: unknown) has answered in full, or `timeout` has
/// passed; more than `max_bytes` of answers fail it
/// ([`BusError::AnswerTooLarge`]). The server API asks the edges this way ([`Bus::control`]), and
/// so does an edge that seeds its presence view from the others.
pub async fn gather(
    client: &async_nats::Client,
    subject: String,
    command: &Command,
    expected: Option<Vec<String>>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Gathered, BusError> {
    if client.connection_state() != State::Connected {
        return Err(BusError::NotConnected);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let inbox = async_nats::Subject::from(client.new_inbox());
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(BusError::Subscribe)?;
    // Commands are a few fields: encoding cannot fail.
    let payload = serde_json::to_vec(command).unwrap_or_default();
    client
        .publish_with_reply(subject, inbox, payload.into())
        .await
        .map_err(BusError::Publish)?;
    let mut gathering = Gathering::default();
    let mut received = 0_usize;
    let all_in = |gathering: &Gathering| {
        expected
            .as_deref()
            .is_some_and(|expected| gathering.has_all(expected))
    };
    while !all_in(&gathering) {
        tokio::select! {
            reply = futures_util::StreamExt::next(&mut replies) => {
                let Some(reply) = reply else { break };
                received = received.saturating_add(reply.payload.len());
                if received > max_bytes {
                    return Err(BusError::AnswerTooLarge(max_bytes));
                }
                match serde_json::from_slice::<Part>(&reply.payload) {
                    Ok(part) => gathering.add(part),
                    Err(e) => tracing::warn!(error = %e, "unreadable control answer"),
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(gathering.finish(expected.as_deref()))
}

/// Connects to NATS at `urls` (comma-separated list or several entries),
/// retrying in the background forever if the servers are not up yet, so a
/// process can start before NATS. `name` identifies the connection in NATS
/// monitoring.
pub async fn connect_nats(urls: &[String], name: &str) -> Result<async_nats::Client, BusError> {
    let addrs = split_list(urls);
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(NATS_PING_INTERVAL)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("bus connected"),
                async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                other => tracing::info!(event = %other, "bus event"),
            }
        })
        .connect(addrs)
        .await
        .map_err(BusError::Connect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// Records topics; blocks while the test holds `gate`.
    struct Recorder {
        entered: AtomicU64,
        gate: Mutex<()>,
        seen: Mutex<Vec<String>>,
    }

    impl LocalDelivery for Recorder {
        fn deliver(&self, push: &Push) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(push.topic.clone());
        }
    }

    #[test]
    fn failed_ranges_win_over_a_later_confirmation() {
        let mut settled = Settled::default();
        assert_eq!(settled.outcome(1), None);
        settled.ok = 4;
        settled.failed.push_back((5, 7));
        // A later probe (sent after the failure) confirms 8..=9.
        settled.ok = 9;
        assert_eq!(settled.outcome(4), Some(true));
        assert_eq!(settled.outcome(5), Some(false));
        assert_eq!(settled.outcome(7), Some(false));
        assert_eq!(settled.outcome(9), Some(true));
        assert_eq!(settled.outcome(10), None);
    }

    fn push(topic: &str) -> Push {
        Push::new("", topic, Bytes::new())
    }

    // The held guard blocks the dispatcher's thread, which is the point.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_bus_keeps_order_and_bounds_its_queue() {
        let recorder = Arc::new(Recorder {
            entered: AtomicU64::new(0),
            gate: Mutex::new(()),
            seen: Mutex::new(Vec::new()),
        });
        // Room for the first two calls: the first stays queued while the
        // dispatcher is blocked delivering it.
        let room = queued_bytes(&[push("a"), push("b")]) + queued_bytes(&[push("c")]);
        let bus = Bus::Queued(LocalQueue::start(
            recorder.clone(),
            room,
            Duration::from_millis(100),
        ));
        {
            let _held = recorder.gate.lock().expect("gate");
            // One call is being delivered by the blocked dispatcher, one
            // fills the rest of the queue's bytes; the next cannot get in
            // and times out.
            bus.publish(&[push("a"), push("b")]).await.expect("first");
            let blocked = tokio::time::timeout(Duration::from_secs(5), async {
                while recorder.entered.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(blocked.is_ok(), "dispatcher never took the first call");
            bus.publish(&[push("c")]).await.expect("second");
            let third = bus.publish(&[push("lost")]).await;
            assert!(matches!(third, Err(BusError::Timeout(_))), "{third:?}");
        }
        bus.publish(&[push("d")]).await.expect("after");
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            while recorder.seen.lock().expect("seen").len() < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(done.is_ok(), "dispatcher stalled");
        assert_eq!(*recorder.seen.lock().expect("seen"), ["a", "b", "c", "d"]);
    }
}

//! History in NATS JetStream: the cluster's storage layer.
//!
//! One stream per [`StreamPlan`]: `<PREFIX>_HISTORY_<TOKEN>` over the
//! storage subjects `<prefix>-h.<token>.>`, which nobody subscribes to.
//! A push with history is stored under `<prefix>-h.<token>.<rest>`, where
//! `<prefix>.<rest>` is its live subject (see [`crate::subject`]). The
//! stream keeps `size` messages per subject (so per topic and per user) for
//! `ttl`, and *republishes* each stored message on its live subject with
//! the headers `Nats-Sequence` (the push's offset) and `Nats-Last-Sequence`
//! (the previous offset of the same subject, 0 if none). Edges keep their
//! core subscriptions on the live subjects and learn each push's offset and
//! any gap from those headers ([`live_position`]), without a consumer per
//! topic.
//!
//! Offsets are stream sequences: they increase strictly within a subject,
//! not by 1. The epoch of a stream is derived from its creation time, so it
//! changes when the stream is deleted and recreated.
//!
//! Every offset a client is ever given is a message stored on its subject:
//! the position of a subject with no message is a *marker* written for it
//! (an empty message with header `Gpush-Marker: 1`, never delivered to
//! clients). Recovery after offset `n` first proves continuity (message `n`
//! is still stored on that subject; per-subject bounds and `max_age` evict
//! a subject's oldest messages first, so everything after it is too), since
//! JetStream silently starts at the oldest kept message when the asked one
//! is gone.
//!
//! Cost on nats-server 2.9.10 (measured here, `measure_*` in
//! `integration-tests/tests/history_jetstream.rs`): for each republished
//! store the server looks up the subject's previous message
//! (`Nats-Last-Sequence`), and its *memory* store does that by scanning
//! every stream sequence between the subject's first and last kept
//! messages, so a store costs O(size x topics pushed to meanwhile). With
//! 1,000 topics pushed to in turn, memory storage fell from 3,800 to 420
//! stores/s as the stream filled to 40,000 messages (290-420/s over two
//! runs; a position then took 2.7-3.2 ms); file storage kept 29,000-42,000
//! stores/s up to 100,000 messages, then 3,300-6,000/s (mostly 4,200-5,200)
//! up to 200,000 once every store evicts its subject's oldest (a position
//! 0.17-0.24 ms). One caller, calls of 100 pushes, debug-build client.
//! What drives it is how many messages the stream took between a topic's
//! oldest and newest kept push (about `size` x the topics pushed to
//! meanwhile), so sharding topics over more streams would divide it.

use super::config::{HistoryConfig, Plan, Storage, StreamPlan};
use super::{Entry, Position, Read, StreamKey};
use crate::envelope;
use crate::push::Push;
use crate::subject::Subjects;
use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The header that marks a position marker (value `1`).
pub const MARKER_HEADER: &str = "Gpush-Marker";

/// Default bound of each JetStream request and publish ack.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most stores whose acks may be awaited at once over one connection. A
/// call sends all its stores before it awaits any ack, so this bounds the
/// pushes in flight of all concurrent calls together (their size is bounded
/// by the push API's batch limit); beyond it a store fails at once
/// ([`StoreFailure::TooManyInFlight`]) rather than wait for a permit that
/// another waiting call holds.
const MAX_STORES_IN_FLIGHT: usize = 1 << 20;

/// Longest duplicate window of a history stream (JetStream's default).
/// gpush sends no message ids; the window must only not exceed `max_age`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long an unused read consumer lives on the server if its deletion
/// is lost.
const READ_CONSUMER_INACTIVE: Duration = Duration::from_secs(5);

/// A read first takes direct gets (`since` itself, then one message per
/// round trip); after this many pushes it goes on with a consumer. Median
/// times of a whole read (continuity checks included) on this machine:
/// loopback, nats-server 2.9.10, memory storage, 100-byte pushes, debug
/// build, 2 cores busy with other builds; ranges over four runs of
/// `measure_read_methods` (integration tests, ignored by default):
///
/// | pushes | direct get | ordered consumer | pull consumer + no-wait fetch |
/// |---|---|---|---|
/// | 0 | 0.31 ms | 0.70 ms | 0.69 ms |
/// | 1 | 0.42 ms | 0.67 ms | 0.80 ms |
/// | 2 | 0.57 ms | 0.79 ms | 0.75 ms |
/// | 4 | 1.0 ms | 0.89 ms | 0.82 ms |
/// | 8 | 1.6 ms | 1.06 ms | 0.96 ms |
/// | 50 | 7.9-19 ms | 1.2-6.3 ms | 1.2-5.2 ms |
/// | 1000 | 152-347 ms | 6.7-16 ms | 6.6-54 ms |
///
/// A direct get costs a round trip (~0.13 ms here), a consumer about five
/// (create, pull, then deleted in the background), so direct gets win up
/// to 2 pushes and consumers from 4 on. The mixed read costs 0.31 ms for
/// nothing missed, 1.4-2.1 ms for 4 and 1.6-1.9 ms for 50. Reading nothing
/// or one or two missed pushes without a consumer matters beyond this
/// machine: in a JetStream cluster a consumer is created through the
/// meta leader (not measured here). The consumer is the pull + fetch one:
/// as fast as the ordered one, and its no-wait fetch ends by itself.
const DIRECT_READ_LIMIT: usize = 2;

/// How a read gets the messages after its start (measurements; normally
/// [`ReadMethod::Auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMethod {
    /// Direct get `next_by_subj`, one round trip per message.
    DirectGet,
    /// An ordered pull consumer filtered on the subject.
    Ordered,
    /// An ephemeral pull consumer filtered on the subject, read with
    /// no-wait fetches.
    Fetch,
    /// Direct gets for the first messages, then a fetch consumer.
    Auto,
}

/// Why JetStream could not store a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFailure {
    /// No stream took the subject: JetStream is off on the server, or the
    /// history stream was deleted.
    NoStream,
    /// The ack did not come within the timeout: the push may or may not
    /// be stored.
    Timeout,
    /// The connection went away before the ack.
    Disconnected,
    /// Too many stores awaiting their acks on this connection.
    TooManyInFlight,
    /// JetStream refused it (the server's description).
    Refused(String),
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreFailure::NoStream => f.write_str("no JetStream stream for it (JetStream off?)"),
            StoreFailure::Timeout => f.write_str("no ack within the timeout"),
            StoreFailure::Disconnected => f.write_str("disconnected before the ack"),
            StoreFailure::TooManyInFlight => f.write_str("too many stores awaiting acks"),
            StoreFailure::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl From<PublishErrorKind> for StoreFailure {
    fn from(kind: PublishErrorKind) -> Self {
        match kind {
            PublishErrorKind::StreamNotFound => StoreFailure::NoStream,
            PublishErrorKind::TimedOut => StoreFailure::Timeout,
            PublishErrorKind::BrokenPipe => StoreFailure::Disconnected,
            PublishErrorKind::MaxAckPending => StoreFailure::TooManyInFlight,
            other => StoreFailure::Refused(other.to_string()),
        }
    }
}

/// What went wrong with JetStream history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A history stream could not be created, read or updated (JetStream
    /// off, no server, or the server refused the config).
    #[error("history stream {stream}: {action} failed: {detail}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What was tried: `create`, `update`, `info`.
        action: &'static str,
        /// The server's or client's description.
        detail: String,
    },
    /// A push was not stored.
    #[error("history store on {subject} failed: {failure}")]
    Store {
        /// The storage subject.
        subject: String,
        /// Why.
        failure: StoreFailure,
    },
    /// A direct get or a read consumer failed.
    #[error("history read of {subject} failed: {detail}")]
    Read {
        /// The storage subject.
        subject: String,
        /// The server's or client's description.
        detail: String,
    },
    /// A read or position did not finish within the timeout.
    #[error("history {what} of {subject} did not finish within {timeout:?}")]
    Timeout {
        /// `read` or `position`.
        what: &'static str,
        /// The storage subject.
        subject: String,
        /// The bound.
        timeout: Duration,
    },
}

/// The position a republished (live) message carries in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePosition {
    /// Its offset (`Nats-Sequence`).
    pub offset: u64,
    /// The offset of the message before it on the same subject
    /// (`Nats-Last-Sequence`), 0 if none: an edge whose last offset of that
    /// topic differs has missed something.
    pub previous: u64,
    /// A position marker: advance the offset, deliver nothing.
    pub marker: bool,
}

/// The position of a live message from its headers; None for a message
/// not republished by a history stream (no history, or pushes to everyone).
pub fn live_position(headers: Option<&HeaderMap>) -> Option<LivePosition> {
    let headers = headers?;
    let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some(LivePosition {
        offset: number(async_nats::header::NATS_SEQUENCE.as_ref())?,
        previous: number(async_nats::header::NATS_LAST_SEQUENCE.as_ref())?,
        marker: is_marker(headers),
    })
}

fn is_marker(headers: &HeaderMap) -> bool {
    headers
        .get(MARKER_HEADER)
        .is_some_and(|value| value.as_str() == "1")
}

/// One stream of the plan, as JetStream knows it.
#[derive(Debug)]
struct HistoryStream {
    plan: StreamPlan,
    /// `<PREFIX>_HISTORY_<TOKEN>`.
    name: String,
    /// `<prefix>-h.<token>.`: a storage subject is this plus the live
    /// subject without `<prefix>.`.
    storage_prefix: String,
    /// Derived from the stream's creation time; re-read on request.
    epoch: RwLock<String>,
    /// For direct gets and read consumers (a handle by name, no state).
    handle: stream::Stream<()>,
}

/// The history of a cluster in JetStream; cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStreamHistory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    js: jetstream::Context,
    subjects: Subjects,
    plan: Plan,
    /// In the order of `plan.streams`.
    streams: Vec<HistoryStream>,
    storage: Storage,
    replicas: usize,
    max_bytes: u64,
    timeout: Duration,
    /// Set once every stream of the plan was made to match it.
    ready: std::sync::atomic::AtomicBool,
}

/// A subject prefix as the start of a stream name: upper case, `.` and
/// `-` as `_`.
fn stream_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The name of the stream with `token` under subject prefix `prefix`.
pub fn stream_name(prefix: &str, token: &str) -> String {
    format!(
        "{}_HISTORY_{}",
        stream_prefix(prefix),
        token.to_ascii_uppercase()
    )
}

/// The name of the events stream under subject prefix `prefix`:
/// `<PREFIX>_EVENTS`.
pub fn events_stream_name(prefix: &str) -> String {
    format!("{}_EVENTS", stream_prefix(prefix))
}

/// Makes the events stream exist as `config` and `max_age` say: the
/// stream `<PREFIX>_EVENTS` over every events subject (`<prefix>.events.>`,
/// see [`Subjects::events`]) with `config`'s storage, replicas and
/// `max_bytes`, keeping each event for `max_age`. Created when missing,
/// updated when its config drifted. Events are published with core NATS
/// (a backend subscribed to the subject gets them as they happen); the
/// stream keeps what reaches it for backends that read later.
pub async fn ensure_events_stream(
    client: async_nats::Client,
    subjects: &Subjects,
    config: &HistoryConfig,
    max_age: Duration,
    timeout: Duration,
) -> Result<stream::Info, HistoryError> {
    let name = events_stream_name(subjects.prefix());
    let js = jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client);
    let apply = |wanted: &mut stream::Config| {
        wanted.subjects = vec![subjects.events()];
        wanted.max_age = max_age;
        wanted.duplicate_window = max_age.min(DUPLICATE_WINDOW);
        wanted.max_bytes = i64::try_from(config.max_bytes).unwrap_or(i64::MAX);
        wanted.storage = storage_type(config.storage);
        wanted.num_replicas = config.replicas;
        wanted.allow_direct = true;
        wanted.discard = stream::DiscardPolicy::Old;
        wanted.retention = stream::RetentionPolicy::Limits;
    };
    ensure_stream(&js, &name, "events", apply).await
}

/// The JetStream storage type of `storage`.
fn storage_type(storage: Storage) -> stream::StorageType {
    match storage {
        Storage::Memory => stream::StorageType::Memory,
        Storage::File => stream::StorageType::File,
    }
}

/// Makes stream `name` (`what`: "history" or "events", for logs) have the
/// config `apply` sets: created when missing, updated when an existing
/// one's config drifted, left alone otherwise.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    what: &str,
    apply: impl Fn(&mut stream::Config),
) -> Result<stream::Info, HistoryError> {
    let fail = |action: &'static str, detail: String| HistoryError::Stream {
        stream: name.to_owned(),
        action,
        detail,
    };
    match js.get_stream(name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| fail("info", e.to_string()))?
                .clone();
            let mut wanted = info.config.clone();
            apply(&mut wanted);
            if wanted == info.config {
                return Ok(info);
            }
            tracing::info!(stream = %name, "updating {what} stream config");
            js.update_stream(wanted)
                .await
                .map_err(|e| fail("update", format!("{e} (delete the stream to recreate it)")))
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_error)
                    if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let mut config = stream::Config {
                name: name.to_owned(),
                ..Default::default()
            };
            apply(&mut config);
            tracing::info!(stream = %name, "creating {what} stream");
            let mut created = js
                .create_stream(config)
                .await
                .map_err(|e| fail("create", e.to_string()))?;
            created
                .info()
                .await
                .cloned()
                .map_err(|e| fail("info", e.to_string()))
        }
        Err(e) => Err(fail("info", e.to_string())),
    }
}

/// The epoch of a stream created at `created_ns` (Unix nanoseconds).
fn epoch_of(token: &str, created_ns: i128) -> String {
    let mut n = created_ns.unsigned_abs();
    let mut digits = Vec::new();
    loop {
        let digit = (n % 36) as u32;
        digits.push(char::from_digit(digit, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    let digits: String = digits.iter().rev().collect();
    format!("{token}-{digits}")
}

impl JetStreamHistory {
    /// The history of `config` over `client`, with every stream of its plan
    /// created, or updated where its config drifted. Each JetStream request
    /// and each store's ack is bounded by `timeout`.
    pub async fn new(
        client: async_nats::Client,
        subjects: &Subjects,
        config: &HistoryConfig,
        timeout: Duration,
    ) -> Result<Self, HistoryError> {
        let history = Self::handle(client, subjects, config, timeout).await?;
        history.ensure_streams().await?;
        Ok(history)
    }

    /// The history of `config` over `client` without a request to
    /// JetStream: stores fail until the streams exist (see
    /// [`Self::ensure_streams`]), and epochs are empty until then.
    pub async fn handle(
        client: async_nats::Client,
        subjects: &Subjects,
        config: &HistoryConfig,
        timeout: Duration,
    ) -> Result<Self, HistoryError> {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(MAX_STORES_IN_FLIGHT)
            .build(client);
        let plan = config.plan();
        let prefix = subjects.prefix();
        let mut streams = Vec::with_capacity(plan.streams.len());
        for stream in &plan.streams {
            let name = stream_name(prefix, &stream.token);
            // Builds a handle only: no request.
            let handle = js
                .get_stream_no_info(&name)
                .await
                .map_err(|e| HistoryError::Stream {
                    stream: name.clone(),
                    action: "name",
                    detail: e.to_string(),
                })?;
            streams.push(HistoryStream {
                plan: stream.clone(),
                storage_prefix: format!("{prefix}-h.{}.", stream.token),
                epoch: RwLock::new(String::new()),
                handle,
                name,
            });
        }
        let history = Self {
            inner: Arc::new(Inner {
                js,
                subjects: subjects.clone(),
                plan,
                streams,
                storage: config.storage,
                replicas: config.replicas,
                max_bytes: config.max_bytes,
                timeout,
                ready: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        Ok(history)
    }

    /// Creates each stream of the plan that does not exist, updates each
    /// whose config differs from the plan's, and re-reads every epoch.
    /// Fails naming the first stream that cannot be made to match (e.g. a
    /// stream of that name with other storage).
    pub async fn ensure_streams(&self) -> Result<(), HistoryError> {
        for stream in &self.inner.streams {
            let info = self.ensure_stream(stream).await?;
            Self::set_epoch(stream, &info);
        }
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether every stream of the plan was made (a process is not ready
    /// for pushes with history before).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn ensure_stream(&self, stream: &HistoryStream) -> Result<stream::Info, HistoryError> {
        ensure_stream(&self.inner.js, &stream.name, "history", |config| {
            self.apply_plan(stream, config);
        })
        .await
    }

    /// Sets the fields of a stream config that the plan owns.
    fn apply_plan(&self, stream: &HistoryStream, config: &mut stream::Config) {
        let prefix = self.inner.subjects.prefix();
        let size = stream.plan.size;
        config.subjects = vec![format!("{}>", stream.storage_prefix)];
        config.max_messages_per_subject = i64::try_from(size).unwrap_or(i64::MAX);
        config.max_age = stream.plan.ttl;
        config.duplicate_window = stream.plan.ttl.min(DUPLICATE_WINDOW);
        config.max_bytes = i64::try_from(self.inner.max_bytes).unwrap_or(i64::MAX);
        config.storage = storage_type(self.inner.storage);
        config.num_replicas = self.inner.replicas;
        config.allow_direct = true;
        config.discard = stream::DiscardPolicy::Old;
        config.retention = stream::RetentionPolicy::Limits;
        config.republish = Some(stream::Republish {
            source: format!("{}>", stream.storage_prefix),
            destination: format!("{prefix}.>"),
            headers_only: false,
        });
    }

    fn set_epoch(stream: &HistoryStream, info: &stream::Info) {
        let epoch = epoch_of(&stream.plan.token, info.created.unix_timestamp_nanos());
        if let Ok(mut current) = stream.epoch.write() {
            *current = epoch;
        }
    }

    fn stream_of(&self, key: StreamKey<'_>) -> Option<&HistoryStream> {
        let plan = self.inner.plan.stream_for(key)?;
        self.inner
            .streams
            .iter()
            .find(|s| s.plan.token == plan.token)
    }

    /// The name of the JetStream stream that keeps `key`'s pushes.
    pub fn stream_name_of(&self, key: StreamKey<'_>) -> Option<&str> {
        self.stream_of(key).map(|s| s.name.as_str())
    }

    /// The subject `key`'s pushes are stored under; None: no history.
    pub fn storage_subject(&self, key: StreamKey<'_>) -> Option<String> {
        let stream = self.stream_of(key)?;
        let live = self.live_subject(key);
        let rest = live.strip_prefix(self.inner.subjects.prefix())?;
        Some(format!("{}{}", stream.storage_prefix, &rest[1..]))
    }

    /// Whether `push` is kept in history (then [`store`](Self::store)
    /// publishes it; else the caller publishes it on its live subject).
    pub fn keeps(&self, push: &Push) -> bool {
        StreamKey::of(push.route()).is_some_and(|key| self.stream_of(key).is_some())
    }

    /// Stores every push of `pushes` that has history, pipelined: all are
    /// sent, then their acks awaited (one connection publishes in order,
    /// so pushes on one subject keep their order). Returns the offset of
    /// each push, 0 for those without history (which it does not publish).
    /// Fails when any store is not acked (the others may be stored).
    pub async fn store(&self, pushes: &[Push]) -> Result<Vec<u64>, HistoryError> {
        let mut pending: Vec<Option<(String, PublishAckFuture)>> = Vec::with_capacity(pushes.len());
        for push in pushes {
            let subject = StreamKey::of(push.route()).and_then(|key| self.storage_subject(key));
            let Some(subject) = subject else {
                pending.push(None);
                continue;
            };
            let ack = self
                .inner
                .js
                .publish(subject.clone(), envelope::encode(push))
                .await
                .map_err(|e| HistoryError::Store {
                    subject: subject.clone(),
                    failure: e.kind().into(),
                })?;
            pending.push(Some((subject, ack)));
        }
        let offsets = self.confirm(pending).await;
        if let Err(HistoryError::Store {
            failure: StoreFailure::NoStream,
            ..
        }) = &offsets
        {
            // A memory stream is gone after its servers restarted, or
            // someone deleted it: make it again for the next call (this
            // one fails; nothing of it was stored on that stream).
            if let Err(e) = self.ensure_streams().await {
                tracing::warn!(error = %e, "history streams could not be recreated");
            }
        }
        offsets
    }

    async fn confirm(
        &self,
        pending: Vec<Option<(String, PublishAckFuture)>>,
    ) -> Result<Vec<u64>, HistoryError> {
        let mut offsets = Vec::with_capacity(pending.len());
        for slot in pending {
            let offset = match slot {
                None => 0,
                Some((subject, ack)) => {
                    ack.await
                        .map_err(|e| HistoryError::Store {
                            failure: match e.kind() {
                                PublishErrorKind::Other => StoreFailure::Refused(e.to_string()),
                                kind => kind.into(),
                            },
                            subject,
                        })?
                        .sequence
                }
            };
            offsets.push(offset);
        }
        Ok(offsets)
    }

    /// The epoch of `key`'s stream as last read; None: no history for it.
    pub fn epoch(&self, key: StreamKey<'_>) -> Option<String> {
        let stream = self.stream_of(key)?;
        stream.epoch.read().ok().map(|epoch| epoch.clone())
    }

    /// Reads the epoch of `key`'s stream again from JetStream (an edge
    /// does when offsets go backwards: the stream was recreated).
    pub async fn refresh_epoch(&self, key: StreamKey<'_>) -> Result<Option<String>, HistoryError> {
        let Some(stream) = self.stream_of(key) else {
            return Ok(None);
        };
        let info = self
            .inner
            .js
            .get_stream(&stream.name)
            .await
            .map_err(|e| HistoryError::Stream {
                stream: stream.name.clone(),
                action: "info",
                detail: e.to_string(),
            })?
            .cached_info()
            .clone();
        Self::set_epoch(stream, &info);
        Ok(self.epoch(key))
    }

    /// Where `key` stands: the offset of the last message stored on its
    /// subject, with the epoch. A subject with none gets a marker first
    /// (two concurrent callers: one marker, both get its offset). None: no
    /// history for `key`.
    pub async fn position(&self, key: StreamKey<'_>) -> Result<Option<Position>, HistoryError> {
        let (Some(stream), Some(subject)) = (self.stream_of(key), self.storage_subject(key)) else {
            return Ok(None);
        };
        let timeout = self.inner.timeout * 2;
        let offset = tokio::time::timeout(timeout, self.last_or_mark(stream, &subject))
            .await
            .map_err(|_| HistoryError::Timeout {
                what: "position",
                subject: subject.clone(),
                timeout,
            })??;
        let epoch = stream
            .epoch
            .read()
            .map(|epoch| epoch.clone())
            .unwrap_or_default();
        Ok(Some(Position { offset, epoch }))
    }

    async fn last_or_mark(
        &self,
        stream: &HistoryStream,
        subject: &str,
    ) -> Result<u64, HistoryError> {
        let handle = &stream.handle;
        let read_error = |detail: String| HistoryError::Read {
            subject: subject.to_owned(),
            detail,
        };
        if let Some(last) = last_sequence(handle, subject).await.map_err(read_error)? {
            return Ok(last);
        }
        let marker = PublishMessage::build()
            .header(MARKER_HEADER, "1")
            .expected_last_subject_sequence(0);
        let ack = self
            .inner
            .js
            .send_publish(subject.to_owned(), marker)
            .await
            .map_err(|e| HistoryError::Store {
                subject: subject.to_owned(),
                failure: e.kind().into(),
            })?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            // Another caller's marker (or a push) came first: take it.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                last_sequence(handle, subject)
                    .await
                    .map_err(read_error)?
                    .ok_or_else(|| read_error("no message after a refused marker".into()))
            }
            Err(e) => Err(HistoryError::Store {
                subject: subject.to_owned(),
                failure: e.kind().into(),
            }),
        }
    }

    /// The pushes stored on `key`'s subject after offset `since` and up to
    /// `upto` (all when None), in order, markers skipped; or [`Read::Gap`]
    /// when message `since` is no longer stored on that subject (evicted,
    /// expired, another epoch, or `since` is 0) or when there are more than
    /// `max` of them. Messages that are not envelopes of a push on `key`'s
    /// live subject are skipped, as the live path drops them. Bounded by
    /// the history's timeout (for each round trip) and 4 times it overall.
    pub async fn read(
        &self,
        key: StreamKey<'_>,
        since: u64,
        upto: Option<u64>,
        max: usize,
    ) -> Result<Read, HistoryError> {
        self.read_using(ReadMethod::Auto, key, since, upto, max)
            .await
    }

    /// The oldest message still stored of `key`'s stream: its offset, and
    /// its push unless it is a marker. None when the stream keeps nothing
    /// (or no history for `key`). For the history API, which lists what is
    /// kept when `since` is not.
    pub async fn oldest(
        &self,
        key: StreamKey<'_>,
    ) -> Result<Option<(u64, Option<Entry>)>, HistoryError> {
        let (Some(stream), Some(subject)) = (self.stream_of(key), self.storage_subject(key)) else {
            return Ok(None);
        };
        let message = match stream
            .handle
            .direct_get_next_for_subject(&subject, Some(1))
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(HistoryError::Read {
                    subject,
                    detail: e.to_string(),
                });
            }
        };
        let live = self.live_subject(key);
        let reader = Reader {
            history: self,
            handle: &stream.handle,
            subject: &subject,
            live: &live,
            key,
            since: 0,
            upto: u64::MAX,
            max: 1,
        };
        let mut entries = Vec::with_capacity(1);
        reader.take_stream_message(&mut entries, &message);
        Ok(Some((message.sequence, entries.pop())))
    }

    /// The live subject `key`'s pushes are republished on.
    fn live_subject(&self, key: StreamKey<'_>) -> String {
        match key {
            StreamKey::Topic(topic) => self.inner.subjects.topic(topic),
            StreamKey::User(uid) => self.inner.subjects.user(uid),
        }
    }

    /// [`read`](Self::read) by a given method (to measure them).
    pub async fn read_using(
        &self,
        method: ReadMethod,
        key: StreamKey<'_>,
        since: u64,
        upto: Option<u64>,
        max: usize,
    ) -> Result<Read, HistoryError> {
        let (Some(stream), Some(subject)) = (self.stream_of(key), self.storage_subject(key)) else {
            return Ok(Read::Gap);
        };
        if since == 0 {
            return Ok(Read::Gap);
        }
        let live = self.live_subject(key);
        let reader = Reader {
            history: self,
            handle: &stream.handle,
            subject: &subject,
            live: &live,
            key,
            since,
            upto: upto.unwrap_or(u64::MAX),
            max,
        };
        let timeout = self.inner.timeout * 4;
        tokio::time::timeout(timeout, reader.read(method))
            .await
            .map_err(|_| HistoryError::Timeout {
                what: "read",
                subject: subject.clone(),
                timeout,
            })?
    }
}

/// The sequence of the last message on `subject`; None when it has none.
async fn last_sequence(handle: &stream::Stream<()>, subject: &str) -> Result<Option<u64>, String> {
    match handle.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message.sequence)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// One read in progress.
struct Reader<'a> {
    history: &'a JetStreamHistory,
    handle: &'a stream::Stream<()>,
    subject: &'a str,
    live: &'a str,
    key: StreamKey<'a>,
    since: u64,
    upto: u64,
    max: usize,
}

/// How a read (or its first part) ended.
enum Outcome {
    /// Every message up to the end (or `upto`) was read.
    Complete,
    /// Not all of them can be given.
    Gap,
    /// Stopped after message `.0` at the direct-get limit; continue after it.
    Stopped(u64),
}

/// What one message read means to a read.
enum Step {
    /// Keep going.
    More,
    /// Past `upto`: the read is complete.
    Done,
    /// More than `max`: a gap.
    TooMany,
}

impl Reader<'_> {
    fn error(&self, detail: impl std::fmt::Display) -> HistoryError {
        HistoryError::Read {
            subject: self.subject.to_owned(),
            detail: detail.to_string(),
        }
    }

    async fn read(&self, method: ReadMethod) -> Result<Read, HistoryError> {
        let mut entries = Vec::new();
        let outcome = match method {
            ReadMethod::DirectGet => self.direct(&mut entries, usize::MAX).await?,
            ReadMethod::Ordered => self.ordered(&mut entries).await?,
            ReadMethod::Fetch => self.fetch(&mut entries, self.since).await?,
            ReadMethod::Auto => match self.direct(&mut entries, DIRECT_READ_LIMIT).await? {
                Outcome::Stopped(last) => self.fetch(&mut entries, last + 1).await?,
                outcome => outcome,
            },
        };
        if !matches!(outcome, Outcome::Complete) {
            return Ok(Read::Gap);
        }
        // Message `since` still stored after the read: nothing after it on
        // this subject was evicted while the read went on (eviction takes a
        // subject's oldest first).
        if !self.still_stored().await? {
            return Ok(Read::Gap);
        }
        Ok(Read::Complete(entries))
    }

    /// Whether message `since` is stored on this subject.
    async fn still_stored(&self) -> Result<bool, HistoryError> {
        match self.handle.direct_get(self.since).await {
            Ok(message) => Ok(message.subject.as_str() == self.subject),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Takes message `sequence` (with its headers and payload) into the
    /// read.
    fn take(
        &self,
        entries: &mut Vec<Entry>,
        sequence: u64,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Step {
        if sequence > self.upto {
            return Step::Done;
        }
        if headers.is_some_and(is_marker) {
            return Step::More;
        }
        let Ok(mut push) = envelope::decode(payload) else {
            return Step::More;
        };
        let ours = StreamKey::of(push.route()) == Some(self.key)
            && self.history.inner.subjects.carries(self.live, push.route());
        if !ours {
            return Step::More;
        }
        if entries.len() == self.max {
            return Step::TooMany;
        }
        push.offset = sequence;
        entries.push(Entry {
            offset: sequence,
            push,
        });
        Step::More
    }

    /// Direct gets from `since` (which must be the first message found) on;
    /// stops once `limit` + 1 messages after it were read, since more are
    /// likely to follow.
    async fn direct(
        &self,
        entries: &mut Vec<Entry>,
        limit: usize,
    ) -> Result<Outcome, HistoryError> {
        let mut next = self.since;
        let mut after = 0_usize;
        loop {
            let message = match self
                .handle
                .direct_get_next_for_subject(self.subject, Some(next))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                    // Past the end; or `since` itself is gone.
                    return Ok(if next > self.since {
                        Outcome::Complete
                    } else {
                        Outcome::Gap
                    });
                }
                Err(e) => return Err(self.error(e)),
            };
            if next == self.since {
                if message.sequence != self.since {
                    return Ok(Outcome::Gap);
                }
            } else {
                match self.take_stream_message(entries, &message) {
                    Step::More => {}
                    Step::Done => return Ok(Outcome::Complete),
                    Step::TooMany => return Ok(Outcome::Gap),
                }
                after += 1;
                if after > limit {
                    return Ok(Outcome::Stopped(message.sequence));
                }
            }
            next = message.sequence + 1;
        }
    }

    /// One message of a consumer read at `sequence`: while `first`, it must
    /// be message `since` itself (JetStream starts at the oldest kept one
    /// when `since` is gone); after it, each is taken. Some: the read ends
    /// so.
    fn consume(
        &self,
        entries: &mut Vec<Entry>,
        first: &mut bool,
        sequence: u64,
        message: &async_nats::jetstream::Message,
    ) -> Option<Outcome> {
        if std::mem::take(first) {
            return (sequence != self.since).then_some(Outcome::Gap);
        }
        match self.take(
            entries,
            sequence,
            message.headers.as_ref(),
            &message.payload,
        ) {
            Step::More => None,
            Step::Done => Some(Outcome::Complete),
            Step::TooMany => Some(Outcome::Gap),
        }
    }

    fn take_stream_message(&self, entries: &mut Vec<Entry>, message: &StreamMessage) -> Step {
        self.take(
            entries,
            message.sequence,
            Some(&message.headers),
            &message.payload,
        )
    }

    /// An ordered consumer from `since`, read until nothing is pending.
    async fn ordered(&self, entries: &mut Vec<Entry>) -> Result<Outcome, HistoryError> {
        // A consumer from a start that is gone and nothing after it would
        // wait for ever.
        if !self.still_stored().await? {
            return Ok(Outcome::Gap);
        }
        let consumer = self
            .handle
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.since,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(e))?;
        let mut messages = consumer.messages().await.map_err(|e| self.error(e))?;
        let mut first = true;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.error(e))?;
            let info = message.info().map_err(|e| self.error(e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if let Some(outcome) = self.consume(entries, &mut first, sequence, &message) {
                return Ok(outcome);
            }
            if pending == 0 {
                return Ok(Outcome::Complete);
            }
        }
        Err(self.error("ordered consumer ended"))
    }

    /// An ephemeral pull consumer from `start`, read with no-wait fetches
    /// until one comes back short. When `start` is `since`, that message
    /// must come first (the continuity check).
    async fn fetch(&self, entries: &mut Vec<Entry>, start: u64) -> Result<Outcome, HistoryError> {
        let consumer = self
            .handle
            .create_consumer(consumer::pull::Config {
                filter_subject: self.subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READ_CONSUMER_INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(e))?;
        let name = consumer.cached_info().name.clone();
        let result = self.fetch_from(&consumer, entries, start).await;
        // Not awaited: the read's answer does not depend on it, and the
        // server drops the consumer after its inactive threshold anyway.
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let _ = handle.delete_consumer(&name).await;
        });
        result
    }

    async fn fetch_from(
        &self,
        consumer: &consumer::PullConsumer,
        entries: &mut Vec<Entry>,
        start: u64,
    ) -> Result<Outcome, HistoryError> {
        let mut first = start == self.since;
        // The start message, `max` pushes and one more to see a gap.
        let batch = self
            .max
            .saturating_sub(entries.len())
            .saturating_add(2)
            .min(4096);
        loop {
            let mut messages = consumer
                .fetch()
                .max_messages(batch)
                .messages()
                .await
                .map_err(|e| self.error(e))?;
            let mut got = 0;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| self.error(e))?;
                let info = message.info().map_err(|e| self.error(e))?;
                got += 1;
                let sequence = info.stream_sequence;
                if let Some(outcome) = self.consume(entries, &mut first, sequence, &message) {
                    return Ok(outcome);
                }
            }
            if first {
                // Nothing at all: `since` is gone and nothing came after.
                return Ok(Outcome::Gap);
            }
            if got < batch {
                return Ok(Outcome::Complete);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_upper_case_with_underscores() {
        assert_eq!(stream_name("gpush", "d"), "GPUSH_HISTORY_D");
        assert_eq!(
            stream_name("tenant-1.gpush", "p00ff"),
            "TENANT_1_GPUSH_HISTORY_P00FF"
        );
        assert_eq!(events_stream_name("gpush"), "GPUSH_EVENTS");
        assert_eq!(
            events_stream_name("tenant-1.gpush"),
            "TENANT_1_GPUSH_EVENTS"
        );
    }

    #[test]
    fn epochs_are_base36_of_the_creation_time() {
        assert_eq!(epoch_of("d", 0), "d-0");
        assert_eq!(epoch_of("u", 36 * 36 + 35), "u-10z");
        assert_ne!(epoch_of("d", 1), epoch_of("d", 2));
    }

    #[test]
    fn live_positions_come_from_the_republish_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Sequence", "42");
        headers.insert("Nats-Last-Sequence", "40");
        assert_eq!(
            live_position(Some(&headers)),
            Some(LivePosition {
                offset: 42,
                previous: 40,
                marker: false
            })
        );
        headers.insert(MARKER_HEADER, "1");
        assert!(live_position(Some(&headers)).is_some_and(|p| p.marker));
        assert_eq!(live_position(None), None);
        assert_eq!(live_position(Some(&HeaderMap::new())), None);
    }
}

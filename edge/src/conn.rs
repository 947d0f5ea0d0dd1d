//! One WebSocket connection: its requests, its writes, its timers.
//!
//! The task owns the socket: the TCP socket, or for a TLS connection one
//! end of a Unix socket pair whose other end carries the plaintext to and
//! from the TLS stream ([`crate::tls::TlsSocket`]); [`Socket`] is what it
//! needs of either. It reads only when the socket is readable,
//! into a stack buffer, so an idle connection holds no read buffer; only an
//! incomplete frame is kept (see [`ws::FrameReader`]). Writes are batched:
//! fan-out appends shared frames to the connection's [`Outbox`](crate::outbox::Outbox),
//! and the task writes everything queued every `write_interval` (or at once
//! when it is zero) with vectored writes. The connection owns no timer: it
//! waits on the edge's shared flush tick, and the edge's keepalive sweep
//! ([`Hub::sweep`](crate::hub::Hub::sweep)) pings it and closes it when
//! silent.

use crate::close::Close;
use crate::hub::ConnHandle;
use crate::interest::Key;
use crate::outbox::Pushed;
use crate::protocol::{self, BadRequest, Code, Command, Reply, Request, WireFormat};
use crate::state::EdgeState;
use crate::ws::{self, Incoming, ReadError};
use bytes::{Buf, Bytes};
use gpush_common::push::validate_name;
use gpush_common::rate::TokenBucket;
use gpush_common::subject::user_bucket;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

/// Bytes read per read call, on the stack.
const READ_CHUNK: usize = 8 * 1024;
/// Reads per wake-up before yielding to other work.
const READS_PER_WAKE: usize = 8;
/// Frames per vectored write.
const WRITE_SLICES: usize = 64;
/// How long closing may take: writing what is queued and the close frame,
/// then waiting for the client's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one upgraded connection, in a task of its own tracked by the
/// edge, until it closes. `early` holds bytes the client sent right after
/// its handshake.
///
/// The task runs inside a `conn` span (fields `conn` and `node`) when
/// debug logging is on for this module, which is when its events (all
/// debug) are written. Otherwise it has no span: a span stored with each
/// task (40 bytes, even disabled) takes the task (896 bytes of future in
/// release, plus tokio's header and trailer) past mimalloc's 1 KiB size
/// class, measured at +0.25 KiB RSS per idle connection (1.7 -> 2.0 KiB in
/// `gpush-bench idle`), and an enabled span also holds a slot in the
/// subscriber's registry for as long as the connection lives.
pub fn spawn<S: Socket>(stream: S, early: Bytes, conn: Arc<ConnHandle>, shared: Arc<EdgeState>) {
    let span = tracing::debug_span!("conn", conn = conn.id, node = %shared.node_id);
    let tracker = shared.tracker.clone();
    let task = serve(stream, early, conn, shared);
    if span.is_disabled() {
        tracker.spawn(task);
    } else {
        tracker.spawn(task.instrument(span));
    }
}

/// Serves one upgraded connection until it closes; see [`spawn`].
pub async fn serve<S: Socket>(
    stream: S,
    early: Bytes,
    conn: Arc<ConnHandle>,
    shared: Arc<EdgeState>,
) {
    tracing::debug!("connection opened");
    let mut session = Session::new(stream, conn, shared);
    let close = session.run(early).await;
    let reason = close.disconnect();
    session.shared.metrics.disconnect(reason);
    tracing::debug!(
        reason = reason.as_str(),
        code = close.sends_frame().then(|| close.code()),
        "connection closed"
    );
    // Boxed for the same reason: closing happens once.
    Box::pin(session.finish(close)).await;
}

/// What a connection task needs of its socket: readiness, and reads and
/// vectored writes that never block. The task is generic over it, so the
/// plain TCP path compiles to exactly the calls on the `TcpStream`.
pub trait Socket: Send + Sync + 'static {
    /// Waits until the socket may be readable.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits until the socket may be writable.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there without waiting (`WouldBlock` when nothing).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits without waiting (`WouldBlock` when nothing).
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
}

/// Per-connection state. Kept small: it lives as long as the connection.
struct Session<S> {
    stream: S,
    conn: Arc<ConnHandle>,
    shared: Arc<EdgeState>,
    reader: ws::FrameReader,
    /// Frames taken from the outbox, not yet fully written.
    pending: VecDeque<Bytes>,
    public: Topics,
    uid: Option<Box<str>>,
    private: Topics,
    /// Set once the server decided to close the connection.
    closing: Option<Close>,
    /// Request rate limit, refilled from the hub's clock on each request.
    bucket: TokenBucket,
    /// Requests refused by the rate limit since the bucket was last full.
    refused: u32,
}

/// A connection's subscriptions. There are few (at most
/// `max_subscriptions`), so a vector costs less memory than a hash set and
/// is as fast to search.
#[derive(Debug, Default)]
struct Topics(Vec<Box<str>>);

impl Topics {
    fn contains(&self, topic: &str) -> bool {
        self.0.iter().any(|t| &**t == topic)
    }

    fn insert(&mut self, topic: &str) {
        self.0.push(topic.into());
    }

    fn remove(&mut self, topic: &str) -> bool {
        match self.0.iter().position(|t| &**t == topic) {
            Some(at) => {
                self.0.swap_remove(at);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// How the read side ended.
enum ReadEnd {
    /// The peer closed the TCP connection.
    Eof,
    /// The peer sent a close frame with this code.
    Close(Option<u16>),
}

impl<S: Socket> Session<S> {
    fn new(stream: S, conn: Arc<ConnHandle>, shared: Arc<EdgeState>) -> Self {
        let bucket = TokenBucket::full(shared.config.request_limit(), shared.hub.now_ms());
        Self {
            stream,
            conn,
            shared,
            reader: ws::FrameReader::default(),
            pending: VecDeque::new(),
            public: Topics::default(),
            uid: None,
            private: Topics::default(),
            closing: None,
            bucket,
            refused: 0,
        }
    }

    /// Takes a token for one request; false when the connection is over
    /// its rate. Refusals are forgiven once the bucket is full again (the
    /// client paused for `request_burst / request_rate`); a connection
    /// refused `request_burst` times before that keeps sending over its
    /// rate and is marked for closing with [`Close::RateLimited`]. (Counting
    /// refusals in a row instead would never close a flood, since every
    /// refilled token breaks the row.)
    fn admit_request(&mut self) -> bool {
        let rate = self.shared.config.request_limit();
        let now = self.shared.hub.now_ms();
        if self.bucket.available(rate, now) >= rate.burst {
            self.refused = 0;
        }
        if self.bucket.try_take(1, rate, now).is_ok() {
            return true;
        }
        self.refused = self.refused.saturating_add(1);
        if self.refused >= rate.burst {
            self.closing = Some(Close::RateLimited);
        }
        false
    }

    /// Runs until the connection must close; says who ended it and with
    /// which close frame.
    async fn run(&mut self, early: Bytes) -> Close {
        self.queue(Reply::new(Code::Connected).frame(self.conn.format));
        if self.shared.shutdown.is_cancelled() {
            return Close::Shutdown;
        }
        if !early.is_empty() {
            let mut incoming = Vec::new();
            if let Err(e) = self
                .reader
                .feed(&early, self.shared.config.max_message, &mut incoming)
            {
                return Close::from(&e);
            }
            if let Err(end) = self.handle(incoming).await {
                return self.peer_closed(end);
            }
        }
        // `early` may share hyper's read buffer: never keep it past here.
        drop(early);
        let write_interval = self.shared.config.write_interval;
        let mut flush_armed = false;
        loop {
            if let Some(request) = self.closing {
                return request;
            }
            // Frames not yet written: the socket is full; new frames wait in
            // the outbox (bounded) until it drains.
            let blocked = !self.pending.is_empty();
            tokio::select! {
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        return Close::ClientGone;
                    }
                    match self.read().await {
                        Ok(()) => {}
                        Err(Ok(end)) => return self.peer_closed(end),
                        Err(Err(request)) => return request,
                    }
                }
                ready = self.stream.writable(), if blocked => {
                    // Behind: once drained, take what queued meanwhile at once.
                    if ready.is_err() || self.write_pending().is_err() || self.flush().is_err() {
                        return Close::ClientGone;
                    }
                }
                () = self.conn.outbox.ready(), if !flush_armed => {
                    if let Some(request) = self.conn.outbox.closing() {
                        // Close at once, not at the next tick.
                        self.closing = Some(request);
                    } else if blocked {
                        // Picked up when the socket drains.
                    } else if write_interval.is_zero() {
                        if self.flush().is_err() {
                            return Close::ClientGone;
                        }
                    } else {
                        // Written at the edge's next flush tick, with
                        // whatever else queues until then.
                        flush_armed = true;
                    }
                }
                () = self.shared.flush_tick.notified(), if flush_armed => {
                    flush_armed = false;
                    if !blocked && self.flush().is_err() {
                        return Close::ClientGone;
                    }
                }
            }
        }
    }

    /// When nothing is pending: takes everything queued and writes what the
    /// socket accepts. Notes a close request.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            if let Some(request) = self.conn.outbox.take(&mut self.pending) {
                self.closing = Some(request);
            }
            self.write_pending()?;
        }
        Ok(())
    }

    /// The peer sent a close frame (answered) or went away (nothing to say).
    fn peer_closed(&self, end: ReadEnd) -> Close {
        match end {
            ReadEnd::Eof => Close::ClientGone,
            ReadEnd::Close(code) => Close::answering(code),
        }
    }

    /// Reads what is available and handles it. `Err(Ok(_))`: the peer ended
    /// the connection; `Err(Err(_))`: we must close it.
    async fn read(&mut self) -> Result<(), Result<ReadEnd, Close>> {
        let mut incoming = Vec::new();
        match read_available(
            &self.stream,
            &mut self.reader,
            self.shared.config.max_message,
            &mut incoming,
        ) {
            Ok(ReadOutcome::Data) => self.conn.last_heard.store(
                self.shared.hub.now_ms(),
                std::sync::atomic::Ordering::Relaxed,
            ),
            Ok(ReadOutcome::Nothing) => return Ok(()),
            Ok(ReadOutcome::Eof) => return Err(Ok(ReadEnd::Eof)),
            Err(ReadFailure::Io) => return Err(Ok(ReadEnd::Eof)),
            Err(ReadFailure::Protocol(e)) => {
                tracing::debug!(error = %e, "closing on protocol error");
                return Err(Err(Close::from(&e)));
            }
        }
        self.handle(incoming).await.map_err(Ok)
    }

    /// Handles complete client messages; replies are written at once.
    ///
    /// Requests come as text on JSON and raw connections and as binary on
    /// MessagePack ones; the other kind is a bad request (30001) and the
    /// connection stays open. Text `ping` is answered with text `pong` in
    /// every format, so one keepalive works whatever the subprotocol.
    ///
    /// Every text or binary message (requests, bad requests, text pings)
    /// takes a token of the connection's rate limit; without one it is
    /// answered 30006 and not carried out. WebSocket control frames are
    /// not counted.
    async fn handle(&mut self, incoming: Vec<Incoming>) -> Result<(), ReadEnd> {
        let format = self.conn.format;
        let mut replied = false;
        for (n, message) in incoming.into_iter().enumerate() {
            if self.closing.is_some() {
                break;
            }
            if replied && n % WRITE_SLICES == 0 {
                // A long pipelined batch: write its replies as they come,
                // so they do not pile up in the outbox (a client that reads
                // them is not a slow consumer).
                let _ = self.flush();
            }
            let admitted = match message {
                Incoming::Text(_) | Incoming::Binary(_) => self.admit_request(),
                _ => true,
            };
            let parsed = match message {
                Incoming::Text(text) if text.trim_ascii().eq_ignore_ascii_case(b"ping") => {
                    self.queue(if admitted {
                        ws::text(b"pong")
                    } else {
                        rate_limited(None, format)
                    });
                    replied = true;
                    continue;
                }
                Incoming::Text(text) => match format {
                    WireFormat::Json | WireFormat::Raw => protocol::parse_request(&text),
                    WireFormat::Msgpack => Err(BadRequest {
                        id: None,
                        detail: "text messages are not supported; send MessagePack binary".into(),
                    }),
                },
                Incoming::Binary(data) => match format {
                    WireFormat::Msgpack => protocol::parse_msgpack_request(&data),
                    WireFormat::Json | WireFormat::Raw => Err(BadRequest {
                        id: None,
                        detail: "binary messages are not supported; send JSON text".into(),
                    }),
                },
                Incoming::Ping(payload) => {
                    self.queue(ws::pong(&payload));
                    replied = true;
                    continue;
                }
                Incoming::Pong => continue,
                Incoming::Close(code) => return Err(ReadEnd::Close(code)),
            };
            match parsed {
                Ok(Request { id, .. }) | Err(BadRequest { id, .. }) if !admitted => {
                    self.queue(rate_limited(id.as_ref(), format));
                }
                // Boxed: requests are rare and their futures (auth webhook,
                // bus subscribe) are large; kept inline they would grow
                // every idle connection.
                Ok(request) => Box::pin(self.request(request)).await,
                Err(BadRequest { id, detail }) => self.queue(
                    Reply::new(Code::BadRequest)
                        .id(id.as_ref())
                        .detail(&detail)
                        .frame(format),
                ),
            }
            replied = true;
        }
        if replied {
            // Replies go out now, not after `write_interval`. A failed
            // write shows up as EOF on the next read.
            let _ = self.flush();
        }
        Ok(())
    }

    async fn request(&mut self, Request { command, id }: Request) {
        let id = id.as_ref();
        let frame = match command {
            Command::Subscribe(topic) => self.subscribe(topic, id).await,
            Command::Unsubscribe(topic) => self.unsubscribe(topic, id).await,
            Command::Login(token) => self.login(token, id).await,
            Command::Logout => {
                self.logout().await;
                Reply::new(Code::LoggedOut).id(id).frame(self.conn.format)
            }
            Command::SubscribePrivate(topic) => self.subscribe_private(topic, id),
            Command::UnsubscribePrivate(topic) => self.unsubscribe_private(topic, id),
        };
        self.queue(frame);
    }

    /// Checks a topic name; the error reply when it is not acceptable.
    fn check_topic(&self, topic: &str, id: Option<&Value>) -> Result<(), Bytes> {
        validate_name(topic, self.shared.config.max_name_len).map_err(|e| {
            Reply::new(Code::InvalidTopic)
                .id(id)
                .detail(&format!("topic {e}"))
                .frame(self.conn.format)
        })
    }

    /// The limit reply when one more subscription is not allowed.
    fn check_limit(&self, topic: &str, id: Option<&Value>) -> Result<(), Bytes> {
        let max = self.shared.config.max_subscriptions;
        if self.public.len() + self.private.len() < max {
            Ok(())
        } else {
            Err(Reply::new(Code::LimitReached)
                .topic(topic)
                .id(id)
                .detail(&format!("at most {max} subscriptions per connection"))
                .frame(self.conn.format))
        }
    }

    async fn subscribe(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if !self.public.contains(&topic) {
            if let Err(reply) = self.check_limit(&topic, id) {
                return reply;
            }
            self.shared.hub.subscribe(&topic, &self.conn);
            self.public.insert(&topic);
            self.shared.interest.ensure(Key::Topic(topic.clone())).await;
        }
        Reply::new(Code::Subscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    async fn unsubscribe(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if self.public.remove(&topic) && self.shared.hub.unsubscribe(&topic, self.conn.id) {
            self.shared
                .interest
                .release(Key::Topic(topic.clone()))
                .await;
        }
        Reply::new(Code::Unsubscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    async fn login(&mut self, token: Value, id: Option<&Value>) -> Bytes {
        let uid = match self.shared.auth.login(&token).await {
            Ok(uid) => uid,
            Err(e) => {
                tracing::debug!(error = %e, "login refused");
                return Reply::new(Code::AuthFailed)
                    .id(id)
                    .detail(&e.to_string())
                    .frame(self.conn.format);
            }
        };
        if self.uid.as_deref() != Some(uid.as_str()) {
            self.logout().await;
            self.shared.hub.login(&uid, &self.conn);
            self.uid = Some(uid.as_str().into());
            self.shared
                .interest
                .ensure(Key::UserBucket(user_bucket(&uid)))
                .await;
        }
        Reply::new(Code::LoggedIn)
            .uid(&uid)
            .id(id)
            .frame(self.conn.format)
    }

    /// Drops the login and every private subscription.
    async fn logout(&mut self) {
        let Some(uid) = self.uid.take() else { return };
        for topic in std::mem::take(&mut self.private).0 {
            self.shared
                .hub
                .unsubscribe_private(&uid, &topic, self.conn.id);
        }
        if self.shared.hub.logout(&uid, self.conn.id) {
            self.shared
                .interest
                .release(Key::UserBucket(user_bucket(&uid)))
                .await;
        }
    }

    fn subscribe_private(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        let Some(uid) = &self.uid else {
            return Reply::new(Code::NotLoggedIn)
                .topic(&topic)
                .id(id)
                .frame(self.conn.format);
        };
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if !self.private.contains(&topic) {
            if let Err(reply) = self.check_limit(&topic, id) {
                return reply;
            }
            self.shared.hub.subscribe_private(uid, &topic, &self.conn);
            self.private.insert(&topic);
        }
        Reply::new(Code::Subscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    fn unsubscribe_private(&mut self, topic: String, id: Option<&Value>) -> Bytes {
        let Some(uid) = &self.uid else {
            return Reply::new(Code::NotLoggedIn)
                .topic(&topic)
                .id(id)
                .frame(self.conn.format);
        };
        if let Err(reply) = self.check_topic(&topic, id) {
            return reply;
        }
        if self.private.remove(&topic) {
            self.shared
                .hub
                .unsubscribe_private(uid, &topic, self.conn.id);
        }
        Reply::new(Code::Unsubscribed)
            .topic(&topic)
            .id(id)
            .frame(self.conn.format)
    }

    /// Queues a frame of our own (reply, pong, ping) behind queued pushes,
    /// under the same bounds.
    fn queue(&self, frame: Bytes) {
        if self.conn.outbox.push(frame, self.shared.limits) == Pushed::Overflowed {
            self.shared
                .hub
                .stats
                .slow_consumers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes as much of `pending` as the socket takes without blocking,
    /// and counts it: one flush in the hub's write stats (never a shared
    /// counter per frame), and the latency sample if the timed push's
    /// frame is among those written.
    fn write_pending(&mut self) -> io::Result<()> {
        let stats = &self.shared.hub.stats;
        let timed = stats.latency.armed();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let result = loop {
            if self.pending.is_empty() {
                break Ok(());
            }
            // On the stack: this runs on every flush of every connection.
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&self.pending) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let mut written = match self.stream.try_write_vectored(&slices[..count]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            };
            bytes += written as u64;
            while written > 0 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    if timed != 0 && front.as_ptr() as usize == timed {
                        stats.latency.written(timed);
                    }
                    frames += 1;
                    self.pending.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        };
        stats.writes.record(self.conn.id, frames, bytes);
        if self.pending.is_empty() && self.pending.capacity() > WRITE_SLICES {
            // Do not keep a large queue allocated on an idle connection.
            self.pending = VecDeque::new();
        }
        result
    }

    /// Writes everything queued, waiting for the socket, within `deadline`.
    async fn write_all(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            self.write_pending()?;
            if self.pending.is_empty() {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, self.stream.writable())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        }
    }

    /// Sends the close frame (after what is queued), waits briefly for the
    /// client's, and leaves every index.
    async fn finish(mut self, close: Close) {
        self.leave().await;
        if !close.sends_frame() {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        if close != Close::SlowConsumer {
            self.conn.outbox.take(&mut self.pending);
        }
        self.pending
            .push_back(ws::close(close.code(), close.reason()));
        if self.write_all(deadline).await.is_err() {
            return;
        }
        // Wait for the client's close frame (or EOF), discarding the rest.
        let mut discard = Vec::new();
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.stream.readable()).await {
            match read_available(&self.stream, &mut self.reader, usize::MAX, &mut discard) {
                Ok(ReadOutcome::Data) => {
                    if discard.iter().any(|m| matches!(m, Incoming::Close(_))) {
                        break;
                    }
                    discard.clear();
                }
                Ok(ReadOutcome::Nothing) => {}
                _ => break,
            }
        }
    }

    /// Removes the connection from the hub and releases bus interest.
    async fn leave(&mut self) {
        self.shared.hub.disconnect(self.conn.id);
        self.logout().await;
        for topic in std::mem::take(&mut self.public).0 {
            if self.shared.hub.unsubscribe(&topic, self.conn.id) {
                self.shared.interest.release(Key::Topic(topic.into())).await;
            }
        }
    }
}

/// The 30006 reply to a request refused by the rate limit.
fn rate_limited(id: Option<&Value>, format: WireFormat) -> Bytes {
    Reply::new(Code::RateLimited)
        .id(id)
        .detail("too many requests: slow down")
        .frame(format)
}

enum ReadOutcome {
    Data,
    Nothing,
    Eof,
}

enum ReadFailure {
    Io,
    Protocol(ReadError),
}

/// Reads what the socket has into a stack buffer (not part of the
/// connection's state) and parses it into `out`.
fn read_available<S: Socket>(
    stream: &S,
    reader: &mut ws::FrameReader,
    max_message: usize,
    out: &mut Vec<Incoming>,
) -> Result<ReadOutcome, ReadFailure> {
    let mut buf = [0u8; READ_CHUNK];
    let mut outcome = ReadOutcome::Nothing;
    for _ in 0..READS_PER_WAKE {
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => {
                outcome = ReadOutcome::Data;
                reader
                    .feed(&buf[..n], max_message, out)
                    .map_err(ReadFailure::Protocol)?;
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(ReadFailure::Io),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use crate::outbox::QueueLimits;
    use std::sync::Arc;

    /// Bound on the state every connection carries for its whole life (the
    /// task's future). Rare paths are boxed to keep it here; see `handle`.
    /// With the task's header and trailer it fits mimalloc's 1 KiB class;
    /// the 40 bytes of a tracing span would not (see `spawn`).
    const MAX_CONNECTION_FUTURE: usize = 960;

    #[tokio::test]
    async fn connection_state_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        let config = crate::EdgeConfig {
            standalone: true,
            ..Default::default()
        };
        let limits = QueueLimits {
            frames: 8,
            bytes: 1 << 20,
        };
        let hub = Arc::new(crate::hub::Hub::new(4, limits));
        let shared = Arc::new(crate::state::EdgeState {
            node_id: "test".into(),
            auth: crate::auth::Authenticator::new(&config.auth, 64).expect("auth"),
            config,
            limits,
            hub: hub.clone(),
            interest: crate::interest::Interest::local(),
            nats: None,
            shutdown: Default::default(),
            tracker: Default::default(),
            flush_tick: Default::default(),
            metrics: crate::metrics::EdgeMetrics::new(hub.clone(), None),
        });
        let conn = hub.connect(crate::protocol::WireFormat::Json);
        let future = super::serve(server, bytes::Bytes::new(), conn, shared);
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= MAX_CONNECTION_FUTURE,
            "a connection's task state grew to {size} bytes (bound {MAX_CONNECTION_FUTURE})"
        );
    }
}

//! One WebSocket connection: its task and its run loop.
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
//! ([`Hub::sweep`](crate::hub::Hub::sweep)) pings it, closes it when
//! silent, and wakes it when its login expired.
//!
//! - [`io`]: socket reads and vectored writes, below everything else here;
//! - `commands/`: one file per request family (subscribe, login, private);
//! - `topics`: what the connection is subscribed to;
//! - `rate_limit`: the request token bucket;
//! - `closing`: the close handshake;
//! - `echo`: test only, the echo that replaces requests under
//!   `conformance_echo`.

mod closing;
mod commands;
mod echo;
mod io;
mod rate_limit;
mod topics;

pub(crate) use io::Socket;

use crate::close::Close;
use crate::hub::ConnHandle;
use crate::outbox::Pushed;
use crate::protocol::{
    BadRequest, Code, Reply, Request, WireFormat, parse_msgpack_request, parse_request,
};
use crate::state::EdgeState;
use crate::ws::{self, Incoming};
use bytes::Bytes;
use gpush_common::rate::TokenBucket;
use io::{ReadFailure, ReadOutcome, WRITE_SLICES, read_available};
use std::collections::VecDeque;
use std::sync::Arc;
use topics::Topics;
use tracing::Instrument;

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
pub(crate) fn spawn<S: Socket>(
    stream: S,
    early: Bytes,
    conn: Arc<ConnHandle>,
    shared: Arc<EdgeState>,
) {
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
pub(crate) async fn serve<S: Socket>(
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

/// Per-connection state. Kept small: it lives as long as the connection.
struct Session<S> {
    stream: S,
    conn: Arc<ConnHandle>,
    shared: Arc<EdgeState>,
    reader: ws::FrameReader,
    /// Frames taken from the outbox, not yet fully written.
    pending: VecDeque<Bytes>,
    public: Topics,
    /// The uid logged in as, shared with the hub's record of it.
    uid: Option<Arc<str>>,
    private: Topics,
    /// Set once the connection is to close. The close itself is the
    /// outbox's (first request wins), or [`Close::RateLimited`] when the
    /// outbox has none: the state every connection carries holds a flag,
    /// not a copy of the close (24 bytes that took the task past
    /// mimalloc's 1 KiB class). The rate limit does not close the outbox,
    /// so its last 30006 reply is still queued and written.
    closing: bool,
    /// Request rate limit, refilled from the hub's clock on each request.
    bucket: TokenBucket,
    /// Requests refused by the rate limit since the bucket was last full.
    refused: u32,
}

/// What reading and handling the client's messages led to.
enum Flow {
    /// Keep serving.
    Continue,
    /// The connection ends this way.
    End(Close),
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
            closing: false,
            bucket,
            refused: 0,
        }
    }

    /// Runs until the connection must close; says who ended it and with
    /// which close frame.
    async fn run(&mut self, early: Bytes) -> Close {
        if !self.shared.config.conformance_echo {
            self.queue(Reply::new(Code::Connected).frame(self.conn.format));
        }
        if self.shared.shutdown.is_cancelled() {
            return Close::Shutdown;
        }
        if !early.is_empty() {
            let mut incoming = Vec::new();
            let fed = self
                .reader
                .feed(&early, self.shared.config.max_message, &mut incoming);
            // Messages complete before a violation are handled first.
            if let Flow::End(close) = self.handle(incoming).await {
                return close;
            }
            if let Err(e) = fed {
                return Close::from(&e);
            }
        }
        // `early` may share hyper's read buffer: never keep it past here.
        drop(early);
        let write_interval = self.shared.config.write_interval;
        let mut flush_armed = false;
        loop {
            if self.closing {
                return self.conn.outbox.closing().unwrap_or(Close::RateLimited);
            }
            if self.conn.login_ended() {
                // Boxed like requests: rare, and it awaits the bus.
                Box::pin(self.end_expired_login()).await;
            }
            if self.conn.ordered.load(std::sync::atomic::Ordering::Acquire) {
                Box::pin(self.carry_out_orders()).await;
            }
            // Frames not yet written: the socket is full; new frames wait in
            // the outbox (bounded) until it drains.
            let blocked = !self.pending.is_empty();
            tokio::select! {
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        return Close::ClientGone;
                    }
                    if let Flow::End(close) = self.read().await {
                        return close;
                    }
                }
                ready = self.stream.writable(), if blocked => {
                    // Behind: once drained, take what queued meanwhile at once.
                    if ready.is_err() || self.write_pending().is_err() || self.flush().is_err() {
                        return Close::ClientGone;
                    }
                }
                () = self.conn.outbox.ready(), if !flush_armed => {
                    if self.conn.outbox.closing().is_some() {
                        // Close at once, not at the next tick.
                        self.closing = true;
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
    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            if self.conn.outbox.take(&mut self.pending).is_some() {
                self.closing = true;
            }
            self.write_pending()?;
        }
        Ok(())
    }

    /// Reads what is available and handles it.
    async fn read(&mut self) -> Flow {
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
            Ok(ReadOutcome::Nothing) => return Flow::Continue,
            Ok(ReadOutcome::Eof) | Err(ReadFailure::Io) => return Flow::End(Close::ClientGone),
            Err(ReadFailure::Protocol(e)) => {
                tracing::debug!(error = %e, "closing on protocol error");
                // The messages complete before the violation are still
                // handled (and answered) before the close frame.
                if let Flow::End(close) = self.handle(incoming).await {
                    return Flow::End(close);
                }
                return Flow::End(Close::from(&e));
            }
        }
        self.handle(incoming).await
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
    async fn handle(&mut self, incoming: Vec<Incoming>) -> Flow {
        if self.shared.config.conformance_echo {
            return self.echo(incoming);
        }
        let format = self.conn.format;
        let mut replied = false;
        for (n, message) in incoming.into_iter().enumerate() {
            if self.closing {
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
                        self.rate_limited(None)
                    });
                    replied = true;
                    continue;
                }
                Incoming::Text(text) => match format {
                    WireFormat::Json | WireFormat::Raw => parse_request(&text),
                    WireFormat::Msgpack => Err(BadRequest {
                        id: None,
                        detail: "text messages are not supported; send MessagePack binary".into(),
                    }),
                },
                Incoming::Binary(data) => match format {
                    WireFormat::Msgpack => parse_msgpack_request(&data),
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
                Incoming::Close(code) => return Flow::End(Close::answering(code)),
            };
            match parsed {
                Ok(Request { id, .. }) | Err(BadRequest { id, .. }) if !admitted => {
                    self.queue(self.rate_limited(id.as_ref()));
                }
                // Boxed: requests are rare and their futures (auth webhook,
                // bus subscribe) are large; kept inline they would grow
                // every idle connection.
                Ok(request) => {
                    let reply = Box::pin(self.request(request)).await;
                    if !reply.is_empty() {
                        self.queue(reply);
                    }
                }
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
        Flow::Continue
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

    /// Writes what it can of `pending`; see [`io::write_pending`].
    fn write_pending(&mut self) -> std::io::Result<()> {
        io::write_pending(
            &self.stream,
            &mut self.pending,
            &self.shared.hub.stats,
            self.conn.id,
        )
    }
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
        let config = crate::config::EdgeConfig {
            standalone: true,
            ..Default::default()
        };
        let limits = QueueLimits { bytes: 1 << 20 };
        let hub = Arc::new(crate::hub::Hub::new(4, limits));
        let presence = Arc::new(crate::presence::Presence::new(crate::presence::Settings {
            node_id: "test".into(),
            config: config.presence.clone(),
            clustered: false,
            online: false,
            user_limit_cluster: false,
            shards: 4,
        }));
        let shared = Arc::new(crate::state::EdgeState {
            node_id: "test".into(),
            auth: crate::auth::Authenticator::new(&config.auth, 64).expect("auth"),
            config,
            limits,
            hub: hub.clone(),
            interest: crate::interest::Interest::local(),
            presence: presence.clone(),
            nats: None,
            shutdown: Default::default(),
            tracker: Default::default(),
            flush_tick: Default::default(),
            metrics: crate::metrics::EdgeMetrics::new(hub.clone(), presence, None),
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

//! The push API's connections: how many may be open and how long a client
//! may take to start talking, on both listeners.
//!
//! HTTP is run here on hyper rather than `axum::serve`, which has no
//! header timeout and no connection cap, so that a client sending half a
//! request header holds nothing for long and many such clients cannot
//! take every file descriptor. gRPC is run by tonic on connections handed
//! over by [`grpc_plain`] or [`grpc_tls`], under the same two limits.
//!
//! - at most `max_connections` connections are served at once on each
//!   listener (HTTP and gRPC count apart); at the cap the listener stops
//!   accepting, so further connections wait in the kernel's listen backlog
//!   (and are refused when it is full) until one closes: nothing is
//!   allocated for them;
//! - HTTP: a request header must arrive within `header_read_timeout`,
//!   counted again whenever a keep-alive connection waits for its next
//!   request, so an idle connection is closed after it too;
//! - gRPC: the HTTP/2 connection preface (a client's first 24 bytes) must
//!   arrive within `header_read_timeout` of the connection being handed to
//!   tonic ([`GrpcConn`]); later, idle connections are left to HTTP/2
//!   keep-alive pings ([`crate::grpc`]);
//! - the whole call, body included, is bounded by `request_timeout` (HTTP
//!   in the router, [`crate::http::router`]; gRPC by tonic);
//! - over TLS the handshake is bounded too ([`crate::tls`]), and counts
//!   against the cap from the moment the connection is accepted.
//!
//! On shutdown every HTTP connection finishes the request it is serving
//! (bounded by `request_timeout`) and closes.

use crate::tls::TlsListener;
use axum::Router;
use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

/// Where the HTTP push API's connections come from.
pub(crate) enum Incoming {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS: connections whose handshake is done.
    Tls(TlsListener),
}

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time to send a request header (and to start the next one on a
    /// keep-alive connection).
    pub header_read_timeout: Duration,
    /// How long a call may still take once shutdown starts.
    pub request_timeout: Duration,
}

/// Serves `router` on the connections of `incoming` until `stop`, at most
/// as many at once as `slots` has permits, then lets the open ones finish.
pub(crate) async fn serve(
    mut incoming: Incoming,
    slots: Arc<Semaphore>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = next(&mut incoming, &slots) => accepted,
        };
        let Some((io, permit)) = accepted else { break };
        tracker.spawn(connection(io, permit, router.clone(), limits, stop.clone()));
    }
    tracker.close();
    // Each connection bounds its own drain; this only waits for them.
    tracker.wait().await;
}

/// How long to wait after a failed accept (out of file descriptors and
/// similar) before the next one.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Boxed so plain and TLS connections share one connection task.
type Io = Box<dyn ClientIo + Send + Unpin>;

/// A client connection, plain or TLS.
trait ClientIo: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> ClientIo for T {}

/// The next connection with its slot: waits for a free slot first, so
/// at the cap nothing is accepted. `None` when the listener is gone.
async fn next(
    incoming: &mut Incoming,
    slots: &Arc<Semaphore>,
) -> Option<(Io, OwnedSemaphorePermit)> {
    match incoming {
        Incoming::Plain(listener) => {
            let (stream, permit) = accept(listener, slots).await?;
            let io: Io = Box::new(stream);
            Some((io, permit))
        }
        Incoming::Tls(listener) => {
            let (stream, permit) = listener.next().await?;
            let io: Io = Box::new(stream);
            Some((io, permit))
        }
    }
}

/// The next TCP connection on `listener` with its slot, taken first: at
/// the cap nothing is accepted. `None` when `slots` is closed.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let permit = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, permit));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection, holding its slot until it closes.
async fn connection(
    io: Io,
    permit: OwnedSemaphorePermit,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let _permit = permit;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                // Timeouts and clients that went away: theirs to know.
                tracing::debug!(error = %e, "HTTP push API connection ended");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_timeout, connection).await;
        }
    }
}

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection of the gRPC push API, as tonic gets it: it holds its slot
/// until tonic drops it, and fails its reads (so hyper closes it) when the
/// client has not sent the HTTP/2 preface within the time given. hyper
/// reads while it waits for the preface, so the deadline is polled with
/// those reads; once the preface is in, it is gone and reads cost nothing
/// more.
#[derive(Debug)]
pub(crate) struct GrpcConn<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    /// Until the preface is in: when it must be, and how many of its
    /// bytes are still to come.
    preface: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<IO> GrpcConn<IO> {
    /// `io` holding `slot`, closed unless the preface arrives within
    /// `timeout` from now.
    pub(crate) fn new(io: IO, slot: OwnedSemaphorePermit, timeout: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            preface: Some((Box::pin(tokio::time::sleep(timeout)), HTTP2_PREFACE.len())),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GrpcConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((deadline, missing)) = &mut this.preface else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within header_read_timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        *missing = missing.saturating_sub(buf.filled().len() - before);
        if *missing == 0 {
            this.preface = None;
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GrpcConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// tonic puts the connection's info (peer address; over TLS, the client's
/// certificates too) in each request, as for the bare stream.
impl<IO: Connected> Connected for GrpcConn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The plain connections of `listener` for tonic, each with a slot of
/// `slots` (none accepted while they are all taken) and `preface` to send
/// the HTTP/2 preface. Dropping the stream closes the listener.
pub(crate) fn grpc_plain(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    preface: Duration,
) -> impl Stream<Item = io::Result<GrpcConn<TcpStream>>> + Send {
    futures_util::stream::unfold(listener, move |listener| {
        let slots = slots.clone();
        async move {
            let (stream, slot) = accept(&listener, &slots).await?;
            Some((Ok(GrpcConn::new(stream, slot, preface)), listener))
        }
    })
}

/// The connections of a [capped](TlsListener::capped) TLS listener for
/// tonic, handshake done, each with its slot and `preface` to send the
/// HTTP/2 preface. Dropping the stream stops accepting.
pub(crate) fn grpc_tls(
    listener: TlsListener,
    preface: Duration,
) -> impl Stream<Item = io::Result<GrpcConn<TlsStream<TcpStream>>>> + Send {
    futures_util::stream::unfold(listener, move |mut listener| async move {
        let (stream, slot) = listener.next().await?;
        Some((Ok(GrpcConn::new(stream, slot, preface)), listener))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A [`GrpcConn`] over one end of a pipe, and the client's end.
    fn pipe() -> (GrpcConn<DuplexStream>, DuplexStream, Arc<Semaphore>) {
        let slots = Arc::new(Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().expect("a free slot");
        let (server, client) = tokio::io::duplex(1024);
        (GrpcConn::new(server, slot, TIMEOUT), client, slots)
    }

    /// Reads into a buffer once; the error kind if the read fails.
    async fn read_once(conn: &mut GrpcConn<DuplexStream>) -> Result<usize, io::ErrorKind> {
        let mut buf = [0u8; 64];
        conn.read(&mut buf).await.map_err(|e| e.kind())
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_the_read_at_the_deadline() {
        let (mut conn, _client, _) = pipe();
        let started = tokio::time::Instant::now();
        assert_eq!(read_once(&mut conn).await, Err(io::ErrorKind::TimedOut));
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_preface_is_not_enough() {
        let (mut conn, mut client, _) = pipe();
        let half = HTTP2_PREFACE.len() / 2;
        client
            .write_all(&HTTP2_PREFACE[..half])
            .await
            .expect("write");
        assert_eq!(read_once(&mut conn).await, Ok(half));
        assert_eq!(read_once(&mut conn).await, Err(io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_preface_reads_wait_as_long_as_they_need() {
        let (mut conn, mut client, _) = pipe();
        client.write_all(HTTP2_PREFACE).await.expect("pipe");
        let mut preface = [0u8; HTTP2_PREFACE.len()];
        conn.read_exact(&mut preface).await.expect("pipe");
        assert!(conn.preface.is_none(), "the deadline is dropped");
        let later = tokio::time::timeout(TIMEOUT * 3, read_once(&mut conn)).await;
        assert!(later.is_err(), "a read after the preface timed out");
        client.write_all(b"x").await.expect("pipe");
        assert_eq!(read_once(&mut conn).await, Ok(1));
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_connection_is_dropped() {
        let (conn, _client, slots) = pipe();
        assert_eq!(slots.available_permits(), 0);
        drop(conn);
        assert_eq!(slots.available_permits(), 1);
    }
}

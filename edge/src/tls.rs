//! TLS on the edge's listener (`wss://`, and HTTPS for the other routes):
//! the handshake, and how an upgraded TLS connection reaches the same
//! connection task as a plain one.
//!
//! The connection task ([`conn`](crate::conn)) is built for a socket it
//! polls for readiness and reads and writes without blocking, which keeps
//! an idle plain connection at a task and no buffers. A TLS stream is not
//! such a socket. Rather than a second connection task, an upgraded TLS
//! connection gets a Unix socket pair: the connection task serves one end
//! ([`TlsSocket`]) exactly as it serves a TCP socket, and a pump task
//! copies the plaintext between the other end and the TLS stream. Plain
//! connections pay nothing for this; a TLS connection also holds the pump
//! task with its two copy buffers (8 KiB each), rustls' state and the
//! pair's kernel buffers. A slow TLS client is still cut by the outbox
//! bounds: the pump stops reading the pair when the client stops reading,
//! the pair fills up, and the connection task's writes stop.
//!
//! The pump ends when both directions are done (the client closed, and the
//! connection task closed its end, which sends the TLS `close_notify`), or
//! [`LINGER`] after the connection task closed its end, so a client that
//! neither reads nor closes cannot keep it.

use crate::config::EdgeConfig;
use crate::conn::Socket;
use gpush_common::tls::{ALPN_HTTP1, TlsError};
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// How long the pump keeps flushing to the client after the connection
/// task closed its end (its close frame included).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// The TLS acceptor of the edge's listener, when `tls_cert` and `tls_key`
/// are set (ALPN `http/1.1`: WebSocket upgrades are HTTP/1.1).
pub(crate) fn acceptor(config: &EdgeConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls.tls_cert, &config.tls.tls_key) else {
        return Ok(None);
    };
    let config = gpush_common::tls::server_config(cert, key, None, &[ALPN_HTTP1])?;
    Ok(Some(TlsAcceptor::from(config)))
}

/// Runs the TLS handshake on an accepted connection until `deadline`;
/// `None` (logged at debug: a client problem) when it fails, times out or
/// `stop` is cancelled first.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    deadline: Instant,
    stop: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let accepted = tokio::select! {
        _ = stop.cancelled() => return None,
        accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(stream)) => Some(stream),
        // Plain HTTP on the TLS port, a certificate the client does not
        // trust, a scanner: not the edge's problem.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// The connection task's end of an upgraded TLS connection: one end of a
/// Unix socket pair. Dropping it (the connection task ending) starts the
/// pump's [`LINGER`].
#[derive(Debug)]
pub(crate) struct TlsSocket {
    socket: UnixStream,
    _closed: DropGuard,
}

impl Socket for TlsSocket {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.socket.readable()
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.socket.writable()
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.try_read(buf)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.socket.try_write_vectored(bufs)
    }
}

/// Starts the pump of an upgraded TLS connection (tracked by `tracker`, so
/// a drain waits for the last bytes to reach the client) and returns the
/// socket the connection task serves.
pub(crate) fn pump(stream: TlsStream<TcpStream>, tracker: &TaskTracker) -> io::Result<TlsSocket> {
    let (socket, outer) = UnixStream::pair()?;
    let closed = CancellationToken::new();
    tracker.spawn(run_pump(stream, outer, closed.clone()));
    Ok(TlsSocket {
        socket,
        _closed: closed.drop_guard(),
    })
}

/// Copies between the TLS stream and the pair until both directions are
/// done, or [`LINGER`] after the connection task closed its end.
async fn run_pump(stream: TlsStream<TcpStream>, socket: UnixStream, closed: CancellationToken) {
    let (mut tls_read, mut tls_write) = tokio::io::split(stream);
    let (mut socket_read, mut socket_write) = socket.into_split();
    let to_client = async {
        // Ends at EOF, when the connection task has closed its end.
        if tokio::io::copy(&mut socket_read, &mut tls_write)
            .await
            .is_ok()
        {
            let _ = tls_write.shutdown().await;
        }
    };
    let from_client = async {
        let _ = tokio::io::copy(&mut tls_read, &mut socket_write).await;
        // The client is gone or done: the connection task reads EOF.
        let _ = socket_write.shutdown().await;
    };
    let linger = async {
        closed.cancelled().await;
        tokio::time::sleep(LINGER).await;
    };
    tokio::select! {
        _ = async { tokio::join!(to_client, from_client) } => {}
        () = linger => tracing::debug!("TLS client did not finish; connection dropped"),
    }
}

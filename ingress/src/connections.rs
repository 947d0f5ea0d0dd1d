//! The HTTP push API's connections: hyper run here rather than
//! `axum::serve`, which has no header timeout and no connection cap, so
//! that a client sending half a request header holds nothing for long
//! and many such clients cannot take every file descriptor.
//!
//! - at most `max_connections` connections are served at once; at the cap
//!   the listener stops accepting, so further connections wait in the
//!   kernel's listen backlog (and are refused when it is full) until one
//!   closes: nothing is allocated for them;
//! - a request header must arrive within `header_read_timeout`, counted
//!   again whenever a keep-alive connection waits for its next request,
//!   so an idle connection is closed after it too;
//! - the whole call, body included, is bounded by `request_timeout` in
//!   the router ([`crate::http::router`]);
//! - over TLS the handshake is bounded too ([`crate::tls`]), and counts
//!   against the cap from the moment the connection is accepted.
//!
//! On shutdown every connection finishes the request it is serving
//! (bounded by `request_timeout`) and closes.

use crate::tls::TlsListener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
            let permit = slots.clone().acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let io: Io = Box::new(stream);
                        return Some((io, permit));
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Incoming::Tls(listener) => {
            let (stream, _, permit) = listener.next_with_permit().await?;
            let io: Io = Box::new(stream);
            Some((io, permit?))
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

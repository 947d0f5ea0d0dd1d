//! TLS for the push API: HTTPS on the HTTP listener, TLS on the gRPC
//! listener, and there optionally client certificates (mutual TLS).
//!
//! Both servers take their connections from a [`TlsListener`]: one task
//! accepts TCP connections, each once it has a connection slot (so at the
//! cap nothing is accepted), and runs each TLS handshake in a task of its
//! own (bounded by [`HANDSHAKE_TIMEOUT`]), so a client that stalls its
//! handshake holds up nobody. Completed connections, each with its slot,
//! are handed to the HTTP server or to tonic ([`crate::connections`]).

use crate::connections::ACCEPT_BACKOFF;
use gpush_common::tls::{
    ALPN_H2, ALPN_HTTP1, HANDSHAKE_TIMEOUT, ServerConfig, TlsError, server_config,
};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Connections whose handshake is done but that the server has not taken
/// yet. Handshakes that finish while it is full wait for room.
const READY_QUEUE: usize = 64;

/// TLS settings of the push API's two listeners. The default serves both
/// in plain text.
#[derive(Debug, Clone, Default)]
pub struct PushTls {
    /// HTTPS on the HTTP listener (ALPN `http/1.1`).
    pub http: Option<Arc<ServerConfig>>,
    /// TLS on the gRPC listener (ALPN `h2`), with client certificate
    /// verification when a client CA bundle was given.
    pub grpc: Option<Arc<ServerConfig>>,
}

impl PushTls {
    /// TLS with the certificate chain in `cert` and its key in `key` on both
    /// listeners; with `grpc_client_ca`, gRPC callers must present a
    /// certificate signed by one of its CAs. `None` for `cert` or `key`:
    /// plain text (config validation makes sure both or neither are set).
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        grpc_client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let (Some(cert), Some(key)) = (cert, key) else {
            return Ok(Self::default());
        };
        Ok(Self {
            http: Some(server_config(cert, key, None, &[ALPN_HTTP1])?),
            grpc: Some(server_config(cert, key, grpc_client_ca, &[ALPN_H2])?),
        })
    }
}

/// A connection whose handshake is done, with its slot.
type Ready = (TlsStream<TcpStream>, OwnedSemaphorePermit);

/// A TCP listener that hands out connections once their TLS handshake is
/// done. Dropping it stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<Ready>,
}

impl TlsListener {
    /// Starts accepting on `listener`, shaking hands with `config`, only
    /// while `slots` has a permit: each connection holds one from its TCP
    /// accept (handshake included) until it is dropped, so at most that
    /// many are open at once.
    pub fn capped(listener: TcpListener, config: Arc<ServerConfig>, slots: Arc<Semaphore>) -> Self {
        let (ready, rx) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept(listener, TlsAcceptor::from(config), slots, ready));
        Self { ready: rx }
    }

    /// The next connection whose handshake succeeded, with its slot.
    pub async fn next(&mut self) -> Option<Ready> {
        self.ready.recv().await
    }
}

/// Accepts until the [`TlsListener`] is dropped; each handshake runs in a
/// task of its own.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    ready: mpsc::Sender<Ready>,
) {
    loop {
        let permit = tokio::select! {
            () = ready.closed() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, permit)).await;
                }
                // Client errors (plain HTTP on the TLS port, an untrusted or
                // missing client certificate): not the server's problem.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

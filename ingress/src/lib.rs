//! gpush ingress: the stateless push API.
//!
//! Accepts pushes over HTTP (`POST /v1/pushData`, `POST /v1/pushBatch`) and
//! gRPC (`gpush.v1.Push`, and the original `order.Proxy/PushData`),
//! validates them and publishes them on the bus, in request order.
//! Delivery is at-most-once.
//!
//! Other crates use [`cli`], [`config`], [`http::router`], [`run`] and
//! [`serve`] (`gpush-edge --standalone` embeds the push API through
//! [`serve`] and an [`EdgeDirectory`]); the rest is private.
//!
//! # Layout
//! - [`config`]: the config file keys and their defaults; [`cli`]: flags
//!   and `GPUSH_*` environment overrides on top of it.
//! - `api`: the transport-independent push API: API key, validation,
//!   publishing. Both transports go through it.
//! - `error`: `ApiError`, and how it becomes an HTTP status + JSON body
//!   or a gRPC status.
//! - [`http`]: the axum routes (push, health, readiness, edge listing,
//!   stats, metrics).
//! - `control`: the server API (disconnect, logout, subscribe,
//!   unsubscribe a user; presence, online, topics), answered by every
//!   edge through the bus, and its HTTP routes.
//! - `grpc`: the tonic services (push, history and the server API),
//!   health and reflection.
//! - `edges`: the live edge list, watched in etcd, behind [`EdgeDirectory`].
//! - `metrics`: what the push API counts, for `GET /metrics`.
//! - `connections`: the push API's connections: a cap on how many are
//!   open on each listener, and a time limit on the HTTP request header
//!   and on the gRPC (HTTP/2) connection preface.
//! - `batch_scan`: counts a gRPC `PushBatch`'s messages as its bytes
//!   arrive, so one over `max_batch` is refused before prost decodes it.
//! - `tls`: HTTPS and gRPC over TLS (optionally mutual): a listener that
//!   hands out connections once their handshake is done.

mod api;
mod batch_scan;
pub mod cli;
pub mod config;
mod connections;
mod control;
mod edges;
mod error;
mod grpc;
pub mod http;
mod metrics;
mod tls;

pub use api::PushApi;
pub use config::{IngressConfig, PushApiConfig};
pub use edges::{ClusterStats, EdgeDirectory, EdgeList, EdgeStats, Edges, EtcdEdges, Pick};
pub use tls::PushTls;

use anyhow::Context;
use gpush_common::bus::{Bus, NatsBus, connect_nats};
use gpush_common::history::jetstream::JetStreamHistory;
use gpush_common::subject::Subjects;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The bound sockets of the push API.
#[derive(Debug)]
pub struct Listeners {
    /// HTTP push API.
    pub http: TcpListener,
    /// gRPC push API.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds both push API addresses, before anything else starts, so a
    /// taken port fails start-up with an error naming which one.
    pub async fn bind(http: SocketAddr, grpc: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            http: gpush_common::net::bind(http, "HTTP push API").await?,
            grpc: gpush_common::net::bind(grpc, "gRPC push API").await?,
        })
    }
}

/// Creates (or updates) the history streams, retrying while JetStream does
/// not answer (until then pushes with history get 503), and again after
/// every reconnect of the bus: a NATS server that restarted has lost
/// streams kept in memory (their history starts a new epoch).
async fn ensure_history_streams(
    history: JetStreamHistory,
    bus: NatsBus,
    shutdown: CancellationToken,
) {
    let mut ensured_at = None;
    let mut backoff = gpush_common::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    loop {
        let connects = bus.connects();
        let wait = if ensured_at == Some(connects) {
            std::time::Duration::from_secs(1)
        } else {
            match history.ensure_streams().await {
                Ok(()) => {
                    tracing::info!("history streams ready");
                    ensured_at = Some(connects);
                    backoff.reset();
                    std::time::Duration::from_secs(1)
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "history streams unavailable (does NATS run with JetStream, -js?); retrying"
                    );
                    backoff.next_wait()
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs ingress until `shutdown` is cancelled: connects to NATS (in the
/// background; `/readyz` says when it is up), starts watching etcd for
/// edges when endpoints are configured, and serves the push API.
pub async fn run(
    listeners: Listeners,
    config: IngressConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subjects = Subjects::new(&config.nats.subject_prefix)?;
    let tls = PushTls::load(
        config.tls.tls_cert.as_deref(),
        config.tls.tls_key.as_deref(),
        config.grpc_client_ca.as_deref(),
    )?;
    let client = connect_nats(&config.nats.nats_urls, "gpush-ingress")
        .await
        .context("cannot set up the NATS connection")?;
    let mut nats = NatsBus::new(
        client.clone(),
        subjects.clone(),
        config.publish_timeout,
        config.publish_ack,
    );
    if config.history.enabled {
        let history = JetStreamHistory::handle(
            client.clone(),
            &subjects,
            &config.history,
            config.publish_timeout,
        )
        .await?;
        nats = nats.with_history(history.clone());
        tokio::spawn(ensure_history_streams(
            history,
            nats.clone(),
            shutdown.clone(),
        ));
    }
    let bus = Bus::Nats(nats);
    // Stops the etcd watcher when this function returns, whatever the reason.
    let watcher = shutdown.child_token();
    let _stop_watcher = watcher.clone().drop_guard();
    let edges = if config.etcd_endpoints.is_empty() {
        Edges::Disabled
    } else {
        Edges::from_directory(EtcdEdges::start(config.etcd_endpoints.clone(), watcher))
    };
    serve(listeners, tls, bus, config.push, edges, shutdown).await
}

/// Serves the push API (HTTP + gRPC) on `listeners` publishing to `bus`,
/// until `shutdown`, over TLS where `tls` says so. Used by [`run`] and by
/// `gpush-edge --standalone` (which passes `Bus::Queued`, its own
/// [`EdgeDirectory`], and the edge's certificate when it has one).
///
/// Refuses a push API without an API key beyond loopback unless
/// `push.api_insecure` (config validation says so first), and warns when
/// it runs without a key. Returns when both servers have stopped, or with
/// the first one's error.
pub async fn serve(
    listeners: Listeners,
    tls: PushTls,
    bus: gpush_common::Bus,
    push: PushApiConfig,
    edges: Edges,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http_addr = listeners.http.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let mut exposed = gpush_common::config::Problems::default();
    push.check_exposure([http_addr, grpc_addr], &mut exposed);
    exposed.finish()?;
    if push.api_key.is_none() {
        if http_addr.ip().is_loopback() && grpc_addr.ip().is_loopback() {
            tracing::warn!(
                %http_addr,
                %grpc_addr,
                "no api_key: push API unauthenticated, on loopback only"
            );
        } else {
            tracing::warn!(
                %http_addr,
                %grpc_addr,
                "push.api_insecure: push API unauthenticated beyond loopback; \
                 anyone reaching it can push to every user"
            );
        }
    }
    tracing::info!(
        %http_addr,
        %grpc_addr,
        https = tls.http.is_some(),
        grpc_tls = tls.grpc.is_some(),
        "push API listening"
    );

    // Cancelled when this function returns, so that when one server fails
    // the other and the helper tasks stop too.
    let shutdown = shutdown.child_token();
    let _stop = shutdown.clone().drop_guard();
    let api = PushApi::new(bus, push);
    let router = http::router(api.clone(), edges.clone());
    let slots = Arc::new(Semaphore::new(api.config().max_connections));
    let incoming = match tls.http {
        Some(config) => connections::Incoming::Tls(tls::TlsListener::capped(
            listeners.http,
            config,
            slots.clone(),
        )),
        None => connections::Incoming::Plain(listeners.http),
    };
    let limits = connections::Limits {
        header_read_timeout: api.config().header_read_timeout,
        request_timeout: api.config().request_timeout,
    };
    let http = async {
        connections::serve(incoming, slots, router, limits, shutdown.clone()).await;
        anyhow::Ok(())
    };
    let grpc = async {
        grpc::serve(listeners.grpc, tls.grpc, api, edges, shutdown.clone())
            .await
            .context("gRPC push API failed")
    };
    tokio::try_join!(http, grpc)?;
    tracing::info!("push API stopped");
    Ok(())
}

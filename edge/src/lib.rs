//! gpush edge: holds WebSocket connections and fans pushes out to them.
//!
//! A push arrives from NATS in `interest` (or straight from the push API in
//! standalone mode), is framed once in [`protocol`], queued to each
//! connection by `hub`, and written by `conn`.
//!
//! # Layout
//! - `server`: accept loop, WebSocket upgrade at `/ws`, health endpoints,
//!   `GET /metrics`.
//! - `tls`: `wss://`: the TLS handshake, and the pump that hands an
//!   upgraded TLS connection to the same connection task.
//! - `conn`: one connection's task and run loop; `conn/io` socket reads and
//!   batched vectored writes; `conn/commands` one file per request family
//!   (where a subscription is recorded); `conn/topics` the connection's
//!   own subscription list; `conn/rate_limit`; `conn/closing` the close
//!   handshake.
//! - [`protocol`]: client requests (`request`), replies (`reply`), and how a
//!   push is framed (`push`).
//! - [`ws`]: WebSocket frame encoding and the incremental client frame
//!   parser.
//! - [`close`]: every way a connection ends, with its close code, reason
//!   and metric label.
//! - `hub`: the sharded connection index and the fan-out of a push;
//!   `hub/stats` its hot-path counters.
//! - `outbox`: a connection's bounded outgoing queue, where a slow client
//!   is cut.
//! - `interest`: NATS subscriptions that follow local interest.
//! - `follow`: a cluster edge following the history streams its clients
//!   need (seeded from JetStream, gaps filled before the next push).
//! - `control`: the server API's commands (disconnect, logout, subscribe a
//!   user; presence, online, topics) taken from the control subject, or
//!   from the embedded push API standalone; `hub/control` keeps what they
//!   read and the orders they leave for connections.
//! - `presence`: who joins and leaves topics and who is logged in,
//!   cluster-wide: the edges' changes and heartbeats on NATS, the
//!   coalesced 10005/10006/10010 pushes, request code 7's answers, the
//!   online events (NATS, JetStream, or a webhook standalone).
//! - `auth`: login by JWT or webhook.
//! - `registration`: the edge's etcd record and lease.
//! - `metrics`: `GET /metrics`: reads the hub's counters and counts rare
//!   events.
//! - `state`: what every connection and handler of an edge shares.
//! - `standalone`: the push API embedded in the edge (`--standalone`): its
//!   in-process bus and the edge's own record as the edge directory.
//! - [`config`], [`cli`]: every setting with its default, and the flags.
//!
//! This file holds [`run`], which wires them together and drives the
//! edge's two clocks: the flush tick and the keepalive sweep.

mod auth;
pub mod cli;
pub mod close;
pub mod config;
mod conn;
mod control;
mod follow;
mod hub;
mod interest;
mod metrics;
mod outbox;
mod presence;
pub mod protocol;
mod registration;
mod server;
mod standalone;
mod state;
mod tls;
pub mod ws;

pub use config::EdgeConfig;

use crate::auth::Authenticator;
use crate::close::Close;
use crate::hub::Hub;
use crate::interest::Interest;
use crate::metrics::EdgeMetrics;
use crate::outbox::QueueLimits;
use crate::presence::Presence;
use crate::presence::events::Events;
use crate::registration::Registration;
use crate::state::EdgeState;
use gpush_common::Subjects;
use gpush_common::history::MemoryHistory;
use gpush_common::push::now_us;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The bound sockets of an edge.
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket (and edge HTTP) listener.
    pub ws: TcpListener,
    /// Push API listeners, used in standalone mode only.
    pub push: Option<gpush_ingress::Listeners>,
}

/// A node id unique enough for a cluster: host name plus a random suffix.
pub fn default_node_id() -> String {
    let random = RandomState::new().hash_one(now_us()) as u32;
    format!("{}-{random:08x}", hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The URL clients use when `public_url` is not configured: `wss://` with
/// TLS.
fn default_public_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    if addr.ip().is_unspecified() {
        format!("{scheme}://{}:{}/ws", hostname(), addr.port())
    } else {
        format!("{scheme}://{addr}/ws")
    }
}

/// The edge's two clocks: the flush tick every `write_interval` (if not
/// zero) and the keepalive sweep, often enough to keep `ping_interval` and
/// `idle_timeout` within a fifth of their length (10 ms to 1 s).
async fn timers(shared: Arc<EdgeState>, stop: CancellationToken) {
    let config = &shared.config;
    let sweep_every = (config.ping_interval.min(config.idle_timeout) / 5)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let flushing = !config.write_interval.is_zero();
    let mut flush = tokio::time::interval(config.write_interval.max(Duration::from_millis(1)));
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = flush.tick(), if flushing => shared.flush_tick.notify_waiters(),
            _ = sweep.tick() => {
                let swept = shared.hub.sweep(config.ping_interval, config.idle_timeout);
                if swept.idle > 0 {
                    tracing::debug!(idle = swept.idle, "closing idle connections");
                }
                if swept.expired > 0 {
                    tracing::debug!(expired = swept.expired, "ending expired logins");
                }
            }
        }
    }
}

/// Runs an edge until `shutdown` is cancelled, then drains it: deregister,
/// stop accepting, close every client with 1001, wait for them within the
/// grace period.
///
/// Everything runs inside an `edge` span whose `node` field is the node
/// id, so every log line of the edge names it (connections add a `conn`
/// span when debug logging is on; see `conn::spawn`).
pub async fn run(
    listeners: Listeners,
    config: EdgeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
    let span = tracing::info_span!("edge", node = %node_id);
    run_node(listeners, config, node_id, shutdown)
        .instrument(span)
        .await
}

/// [`run`], inside the edge's span. Tasks spawned here carry the span on.
async fn run_node(
    listeners: Listeners,
    config: EdgeConfig,
    node_id: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ws_addr = listeners.ws.local_addr()?;
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| default_public_url(ws_addr, config.tls()));
    let tls = tls::acceptor(&config)?;
    let limits = QueueLimits {
        bytes: config.queue_bytes,
    };
    let hub = Hub::new(config.shards, limits);
    // Standalone keeps history in memory. A cluster edge's history (its
    // copy of what it delivered, in front of JetStream) comes with the
    // cluster's history support; until then it keeps none.
    let max_bytes = usize::try_from(config.history.max_bytes).unwrap_or(usize::MAX);
    let hub = if config.standalone {
        hub.with_history(Arc::new(MemoryHistory::new(
            config.history.plan(),
            max_bytes,
        )))
    } else if config.history.enabled {
        // A copy of the recent pushes of the streams followed here, in
        // front of JetStream (see `follow`).
        hub.with_history(Arc::new(MemoryHistory::copy_of(
            config.history.plan(),
            max_bytes,
        )))
    } else {
        hub
    };
    let hub = Arc::new(hub);
    let auth = Authenticator::new(&config.auth, config.max_name_len)?;
    let background = shutdown.child_token();
    let presence = Arc::new(Presence::new(presence::Settings {
        node_id: node_id.clone(),
        config: config.presence.clone(),
        clustered: !config.standalone,
        online: config.events.online,
        user_limit_cluster: config.max_connections_per_user_scope
            == config::UserLimitScope::Cluster,
        shards: config.shards,
    }));

    let (interest, nats, control_subjects) = if config.standalone {
        (Interest::local(), None, None)
    } else {
        let client = gpush_common::bus::connect_nats(
            &config.nats.nats_urls,
            &format!("gpush-edge {node_id}"),
        )
        .await?;
        let subjects = Subjects::new(&config.nats.subject_prefix)?;
        let follower = config.history.enabled.then(|| {
            let (ready, js) = tokio::sync::watch::channel(None);
            tokio::spawn(
                follow::open(
                    client.clone(),
                    subjects.clone(),
                    config.history.clone(),
                    ready,
                    background.clone(),
                )
                .in_current_span(),
            );
            follow::Follower::new(js, client.clone(), hub.clone(), config.history.max_recover)
        });
        let (interest, _) = interest::start(
            client.clone(),
            subjects.clone(),
            hub.clone(),
            presence.clone(),
            follower,
            background.clone(),
        )
        .await;
        (interest, Some(client), Some(subjects))
    };

    let registration = Registration {
        endpoints: config.etcd_endpoints.clone(),
        node_id: node_id.clone(),
        url,
        ttl: config.lease_ttl,
        started_at: now_us() / 1_000_000,
    };
    let metrics = EdgeMetrics::new(hub.clone(), presence.clone(), nats.clone());
    let deregister = CancellationToken::new();
    let registered = (!config.standalone && !config.etcd_endpoints.is_empty()).then(|| {
        tokio::spawn(
            registration
                .clone()
                .run(
                    hub.clone(),
                    metrics.registration.clone(),
                    deregister.clone(),
                )
                .in_current_span(),
        )
    });

    let grace = config.shutdown_grace;
    let shared = Arc::new(EdgeState {
        node_id: node_id.clone(),
        config,
        limits,
        hub: hub.clone(),
        interest,
        presence: presence.clone(),
        auth,
        nats,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        flush_tick: Notify::new(),
        metrics,
    });
    let push_api = match listeners.push {
        Some(push) if shared.config.standalone => Some(standalone::serve_push_api(
            push,
            shared.clone(),
            ws_addr,
            registration,
            background.clone(),
        )?),
        _ => None,
    };
    // The webhook's sender outlives `background`: the last window (every
    // user gone) still reaches it.
    let events_stop = CancellationToken::new();
    let (events, webhook) = match presence::events::webhook(
        &shared.config.events,
        presence.clone(),
        events_stop.clone(),
    )? {
        Some((events, task)) => (Some(events), Some(task)),
        None => (None, None),
    };
    let presence_task = if let (Some(client), Some(subjects)) = (&shared.nats, control_subjects) {
        tokio::spawn(
            control::serve(
                client.clone(),
                subjects.clone(),
                shared.clone(),
                background.clone(),
            )
            .in_current_span(),
        );
        let config = &shared.config;
        let events = config.events.online.then(|| Events::Nats {
            client: client.clone(),
            subject: subjects.online_events(),
        });
        if config.events.online && config.history.enabled {
            tokio::spawn(
                presence::events::keep_stream(
                    client.clone(),
                    subjects.clone(),
                    config.history.clone(),
                    config.events.max_age,
                    background.clone(),
                )
                .in_current_span(),
            );
        }
        let cluster = presence::cluster::Cluster {
            presence: presence.clone(),
            hub: hub.clone(),
            client: client.clone(),
            subjects,
            interest: shared.interest.clone(),
            events,
            interval: config.presence.interval,
            heartbeat: config.presence.heartbeat,
        };
        presence
            .active()
            .then(|| tokio::spawn(cluster.run(background.clone()).in_current_span()))
    } else {
        presence.active().then(|| {
            tokio::spawn(
                presence::cluster::run_local(
                    presence.clone(),
                    hub.clone(),
                    events,
                    shared.config.presence.interval,
                    background.clone(),
                )
                .in_current_span(),
            )
        })
    };
    // Not a child of `shutdown`: draining needs the flush tick.
    let clocks = CancellationToken::new();
    tokio::spawn(timers(shared.clone(), clocks.clone()).in_current_span());
    let stop_accepting = CancellationToken::new();
    let accept = tokio::spawn(
        server::accept(
            listeners.ws,
            server::router(shared.clone()),
            shared.clone(),
            tls,
            stop_accepting.clone(),
        )
        .in_current_span(),
    );
    tracing::info!(
        %ws_addr,
        tls = shared.config.tls(),
        standalone = shared.config.standalone,
        "edge running"
    );

    shutdown.cancelled().await;
    tracing::info!(connections = hub.connections(), "draining");
    deregister.cancel();
    if let Some(registered) = registered {
        let _ = registered.await;
    }
    stop_accepting.cancel();
    let _ = accept.await;
    hub.close_all(Close::Shutdown);
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = hub.connections(),
            "grace period over; dropping remaining connections"
        );
    }
    background.cancel();
    clocks.cancel();
    // The last window: this edge's users leave everywhere; then bye.
    if let Some(task) = presence_task {
        let _ = task.await;
    }
    events_stop.cancel();
    if let Some(webhook) = webhook {
        let _ = webhook.await;
    }
    if let Some(push_api) = push_api {
        let _ = push_api.await;
    }
    if let Some(client) = &shared.nats {
        let _ = client.flush().await;
    }
    tracing::info!("edge stopped");
    Ok(())
}

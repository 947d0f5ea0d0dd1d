//! State shared by every connection of an edge.

use crate::auth::Authenticator;
use crate::config::EdgeConfig;
use crate::hub::Hub;
use crate::interest::Interest;
use crate::metrics::EdgeMetrics;
use crate::outbox::QueueLimits;
use crate::presence::Presence;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What connection tasks and HTTP handlers share: one per edge.
#[derive(Debug)]
pub(crate) struct EdgeState {
    /// This edge's id (in etcd, in logs).
    pub(crate) node_id: String,
    pub(crate) config: EdgeConfig,
    /// Queue bounds, from the config.
    pub(crate) limits: QueueLimits,
    pub(crate) hub: Arc<Hub>,
    /// Bus subscriptions that follow local interest.
    pub(crate) interest: Interest,
    /// Who joins and leaves topics, and who is logged in, cluster-wide.
    pub(crate) presence: Arc<Presence>,
    pub(crate) auth: Authenticator,
    /// The NATS client, None in standalone mode.
    pub(crate) nats: Option<async_nats::Client>,
    /// Cancelled when the edge starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Connection tasks, awaited (within the grace period) on shutdown.
    pub(crate) tracker: TaskTracker,
    /// Notified every `write_interval`: connections with queued frames
    /// write them then. One shared tick instead of a timer per connection.
    pub(crate) flush_tick: Notify,
    /// What `GET /metrics` shows.
    pub(crate) metrics: EdgeMetrics,
}

impl EdgeState {
    /// Whether the edge can receive pushes: always in standalone mode,
    /// otherwise while connected to NATS.
    pub(crate) fn is_ready(&self) -> bool {
        self.nats.as_ref().is_none_or(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        })
    }
}

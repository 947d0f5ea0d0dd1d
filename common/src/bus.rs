//! The publishing side of the bus.
//!
//! In a cluster, ingress publishes every push to NATS under the subject of
//! its route (see [`subject`](crate::subject)) and each edge subscribes to
//! exactly the subjects its clients need. In standalone mode there is one
//! process and no NATS: the push API hands pushes straight to the local edge
//! through [`LocalDelivery`], with the same routing and ordering.

use crate::config::split_list;
use crate::envelope;
use crate::push::Push;
use crate::subject::Subjects;
use async_nats::connection::State;
use std::sync::Arc;
use std::time::Duration;

/// Default time a publish may take before the caller is told the bus is
/// unavailable.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The in-process receiver of pushes in standalone mode: the local edge.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Delivers one push to the matching local connections. Must not block.
    fn deliver(&self, push: &Push);
}

/// Where the push API sends pushes.
#[derive(Clone)]
pub enum Bus {
    /// A NATS connection.
    Nats(NatsBus),
    /// The edge in this same process (standalone mode).
    Local(Arc<dyn LocalDelivery>),
}

/// A publishing connection to NATS.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected to NATS at the moment; nothing was published.
    #[error("bus not connected")]
    NotConnected,
    /// NATS did not take the messages within the publish timeout.
    #[error("bus did not accept the message within {0:?}")]
    Timeout(Duration),
    /// The NATS client refused the messages.
    #[error("bus publish failed: {0}")]
    Publish(String),
}

impl NatsBus {
    /// Wraps a connected client. `timeout` bounds each [`Bus::publish`].
    pub fn new(client: async_nats::Client, subjects: Subjects, timeout: Duration) -> Self {
        Self {
            client,
            subjects,
            timeout,
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn publish_all(&self, pushes: &[Push]) -> Result<(), BusError> {
        for push in pushes {
            let subject = self.subjects.for_route(push.route());
            self.client
                .publish(subject, envelope::encode(push))
                .await
                .map_err(|e| BusError::Publish(e.to_string()))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Publish(e.to_string()))
    }
}

impl Bus {
    /// Publishes `pushes` in order. Pushes on the same route are delivered
    /// in this order; delivery is at-most-once.
    pub async fn publish(&self, pushes: &[Push]) -> Result<(), BusError> {
        match self {
            Bus::Local(local) => {
                for push in pushes {
                    local.deliver(push);
                }
                Ok(())
            }
            Bus::Nats(nats) => {
                if nats.client.connection_state() != State::Connected {
                    return Err(BusError::NotConnected);
                }
                tokio::time::timeout(nats.timeout, nats.publish_all(pushes))
                    .await
                    .map_err(|_| BusError::Timeout(nats.timeout))?
            }
        }
    }

    /// Whether pushes can be published now.
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Local(_) => true,
            Bus::Nats(nats) => nats.client.connection_state() == State::Connected,
        }
    }
}

/// Connects to NATS at `urls` (comma-separated list or several entries),
/// retrying in the background forever if the servers are not up yet, so a
/// process can start before NATS. `name` identifies the connection in NATS
/// monitoring.
pub async fn connect_nats(urls: &[String], name: &str) -> Result<async_nats::Client, BusError> {
    let addrs = split_list(urls);
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("bus connected"),
                async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                other => tracing::info!(event = %other, "bus event"),
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| BusError::Publish(e.to_string()))
}

//! Keeping this edge's record alive in etcd.
//!
//! The record (`/gpush/edges/<node-id>`, JSON [`EdgeRecord`]) is written
//! under a lease with the configured TTL and kept alive every TTL/3. The
//! connection count in it is rewritten every [`REFRESH_INTERVAL`] when it
//! changed. If etcd goes away or the lease is lost, the edge keeps serving
//! its clients and registers again (new lease) when etcd is back. On
//! shutdown the record is deleted and the lease revoked before anything
//! else happens, so discovery stops sending clients here first.

use crate::hub::Hub;
use crate::metrics::RegistrationMetrics;
use gpush_common::backoff::Backoff;
use gpush_common::push::now_us;
use gpush_common::registry::{EdgeRecord, connect_etcd, edge_key};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the connection count in the record is refreshed (if changed).
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on the deregistration at shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// What to register.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) endpoints: Vec<String>,
    pub(crate) node_id: String,
    /// The WebSocket URL clients should use.
    pub(crate) url: String,
    pub(crate) ttl: Duration,
    /// Start time, seconds since the epoch.
    pub(crate) started_at: u64,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error("lease expired")]
    LeaseLost,
}

impl Registration {
    /// The record as of now.
    pub(crate) fn record(&self, hub: &Hub) -> EdgeRecord {
        EdgeRecord {
            node_id: self.node_id.clone(),
            url: self.url.clone(),
            connections: hub.connections(),
            started_at: self.started_at,
            updated_at: now_us() / 1_000_000,
        }
    }

    /// Registers and stays registered until `stop`, then deregisters.
    /// Counts registrations, lease renewals and failures in `metrics`.
    pub(crate) async fn run(
        self,
        hub: Arc<Hub>,
        metrics: RegistrationMetrics,
        stop: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        loop {
            match self.session(&hub, &metrics, &stop, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    metrics.failures.inc();
                    tracing::warn!(error = %e, "etcd registration lost; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }

    async fn put(
        &self,
        client: &mut etcd_client::Client,
        hub: &Hub,
        lease: i64,
    ) -> Result<u64, SessionError> {
        let record = self.record(hub);
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let options = etcd_client::PutOptions::new().with_lease(lease);
        client
            .put(edge_key(&self.node_id), value, Some(options))
            .await?;
        Ok(record.connections)
    }

    /// One lease's life. Ok when stopped and deregistered. Resets
    /// `backoff` once registered.
    async fn session(
        &self,
        hub: &Hub,
        metrics: &RegistrationMetrics,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let mut client = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            client = connect_etcd(&self.endpoints) => client?,
        };
        let lease = client
            .lease_grant(self.ttl.as_secs().max(1) as i64, None)
            .await?
            .id();
        let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
        let mut written = self.put(&mut client, hub, lease).await?;
        metrics.registrations.inc();
        tracing::info!(lease, "registered in etcd");
        backoff.reset();
        let mut keepalive = tokio::time::interval(self.ttl / 3);
        let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let deregister = async {
                        client.delete(edge_key(&self.node_id), None).await?;
                        client.lease_revoke(lease).await?;
                        Ok::<_, etcd_client::Error>(())
                    };
                    match tokio::time::timeout(DEREGISTER_TIMEOUT, deregister).await {
                        Ok(Ok(())) => tracing::info!("deregistered from etcd"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "deregistration failed"),
                        Err(_) => tracing::warn!("deregistration timed out"),
                    }
                    return Ok(());
                }
                _ = keepalive.tick() => keeper.keep_alive().await?,
                ack = acks.message() => match ack? {
                    Some(ack) if ack.ttl() > 0 => {
                        metrics.lease_renewals.inc();
                    }
                    _ => return Err(SessionError::LeaseLost),
                },
                _ = refresh.tick() => {
                    if hub.connections() != written {
                        written = self.put(&mut client, hub, lease).await?;
                    }
                }
            }
        }
    }
}

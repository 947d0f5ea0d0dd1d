//! The etcd record each edge keeps alive, and how to reach etcd.
//!
//! An edge writes `/gpush/edges/<node-id>` under a lease; the key vanishes
//! when the edge stops renewing it. Ingress watches the prefix to list the
//! live edges.

use crate::config::split_list;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Key prefix of edge records.
pub const EDGES_PREFIX: &str = "/gpush/edges/";

/// Default lease TTL of an edge record.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// What an edge publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// Unique id of the edge.
    pub node_id: String,
    /// WebSocket URL clients connect to, e.g. `ws://10.0.0.5:9992/ws`.
    pub url: String,
    /// Live WebSocket connections at `updated_at`.
    pub connections: u64,
    /// When the edge started, seconds since the Unix epoch.
    pub started_at: u64,
    /// When this record was last written, seconds since the Unix epoch.
    pub updated_at: u64,
}

/// The etcd key of an edge.
pub fn edge_key(node_id: &str) -> String {
    format!("{EDGES_PREFIX}{node_id}")
}

/// Connects to etcd (`endpoints` may hold comma-separated lists), with
/// bounded connect and request timeouts so an outage never hangs a caller.
pub async fn connect_etcd(endpoints: &[String]) -> Result<etcd_client::Client, etcd_client::Error> {
    let endpoints = split_list(endpoints);
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    etcd_client::Client::connect(endpoints, Some(options)).await
}

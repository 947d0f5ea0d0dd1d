//! The live edges, for `GET /v1/edges` and `GET /v1/connect`.
//!
//! Each edge keeps `/gpush/edges/<node-id>` alive in etcd (see
//! [`gpush_common::registry`]). [`EtcdEdges`] lists that prefix once and then
//! watches it from the listed revision, so requests read an in-memory map
//! and never wait on etcd. While etcd is unreachable the last known list is
//! kept and marked stale; the watcher reconnects with capped backoff and
//! lists again.

use etcd_client::{EventType, GetOptions, WatchOptions};
use gpush_common::backoff::Backoff;
use gpush_common::registry::{EDGES_PREFIX, EdgeRecord, connect_etcd};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_util::sync::CancellationToken;

/// The edges the push API describes on `GET /v1/edges`, `/v1/connect` and
/// `/v1/stats`. Ingress implements it with the etcd watch ([`EtcdEdges`]);
/// a standalone edge, which embeds the push API, with its own record.
pub trait EdgeDirectory: Send + Sync + 'static {
    /// The live edges, least loaded first.
    fn list(&self) -> EdgeList;
    /// The edge a new client should use (None inside when there is none).
    fn pick(&self) -> Pick;
}

/// Where the edge list comes from.
#[derive(Clone)]
pub enum Edges {
    /// No etcd configured: the edge endpoints answer 503.
    Disabled,
    /// Read from a directory: etcd's, or a standalone edge's own record.
    Directory(Arc<dyn EdgeDirectory>),
}

impl fmt::Debug for Edges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edges::Disabled => f.write_str("Disabled"),
            Edges::Directory(_) => f.write_str("Directory"),
        }
    }
}

/// A snapshot of the live edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeList {
    /// Least loaded (fewest connections) first; ties by node id.
    pub edges: Vec<EdgeRecord>,
    /// True while the list may be out of date: etcd is unreachable (or not
    /// yet reached) and the last known records are shown.
    pub stale: bool,
}

/// Connections per edge and in total, for `GET /v1/stats`: as the edges
/// last wrote them in etcd (at most a second old while etcd is up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// Every live edge, least loaded first.
    pub edges: Vec<EdgeStats>,
    /// Connections on all of them.
    pub total_connections: u64,
    /// How many edges are live.
    pub edge_count: usize,
    /// As in [`EdgeList::stale`].
    pub stale: bool,
}

/// One edge in [`ClusterStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeStats {
    /// Its node id.
    pub node_id: String,
    /// The WebSocket URL its clients use.
    pub url: String,
    /// Its open connections.
    pub connections: u64,
}

impl EdgeList {
    /// Per-edge connections and their totals.
    pub fn stats(self) -> ClusterStats {
        let edges: Vec<EdgeStats> = self
            .edges
            .into_iter()
            .map(|record| EdgeStats {
                node_id: record.node_id,
                url: record.url,
                connections: record.connections,
            })
            .collect();
        ClusterStats {
            total_connections: edges.iter().map(|e| e.connections).sum(),
            edge_count: edges.len(),
            edges,
            stale: self.stale,
        }
    }
}

/// The edge `GET /v1/connect` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// The least loaded edge, None when no edge is registered.
    pub edge: Option<EdgeRecord>,
    /// As in [`EdgeList::stale`].
    pub stale: bool,
}

impl Edges {
    /// Reads `directory`.
    pub fn from_directory(directory: impl EdgeDirectory) -> Self {
        Edges::Directory(Arc::new(directory))
    }

    /// The least loaded live edge for a new client, or None when edge
    /// listing is disabled. See [`EtcdEdges::pick`].
    pub fn pick(&self) -> Option<Pick> {
        match self {
            Edges::Disabled => None,
            Edges::Directory(directory) => Some(directory.pick()),
        }
    }

    /// The current list, or None when edge listing is disabled.
    pub fn list(&self) -> Option<EdgeList> {
        match self {
            Edges::Disabled => None,
            Edges::Directory(directory) => Some(directory.list()),
        }
    }
}

impl EdgeDirectory for EtcdEdges {
    fn list(&self) -> EdgeList {
        EtcdEdges::list(self)
    }

    fn pick(&self) -> Pick {
        EtcdEdges::pick(self)
    }
}

/// The edges registered in etcd, kept current by a background watch.
/// Cheap to clone; every clone sees the same list.
#[derive(Clone)]
pub struct EtcdEdges {
    shared: Arc<Shared>,
}

struct Shared {
    /// By node id (the key below [`EDGES_PREFIX`]).
    edges: RwLock<HashMap<String, Known>>,
    stale: AtomicBool,
}

/// An edge as this ingress knows it.
#[derive(Debug)]
struct Known {
    record: EdgeRecord,
    /// Clients this ingress sent there since the record was written. An
    /// edge rewrites its count at most once a second; without this, every
    /// client of a reconnect storm would be sent to the same edge.
    handed_out: AtomicU64,
    /// When `handed_out` started counting ([`clock_ms`]).
    counting_since: AtomicU64,
}

/// How long hand-outs count without a new record from the edge. An edge
/// rewrites its record within a second of its count changing, so clients
/// sent there longer ago than this went elsewhere or never came.
const HANDOUT_MEMORY_MS: u64 = 5_000;

/// Milliseconds on a process-wide monotonic clock.
fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Known {
    fn new(record: EdgeRecord) -> Self {
        Self {
            record,
            handed_out: AtomicU64::new(0),
            counting_since: AtomicU64::new(clock_ms()),
        }
    }

    /// Connections now, as far as this ingress can tell; forgets
    /// hand-outs older than [`HANDOUT_MEMORY_MS`].
    fn load(&self, now_ms: u64) -> u64 {
        let since = self.counting_since.load(Ordering::Relaxed);
        if now_ms.saturating_sub(since) > HANDOUT_MEMORY_MS {
            self.handed_out.store(0, Ordering::Relaxed);
            self.counting_since.store(now_ms, Ordering::Relaxed);
        }
        self.record
            .connections
            .saturating_add(self.handed_out.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for EtcdEdges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self.list();
        f.debug_struct("EtcdEdges")
            .field("edges", &list.edges.len())
            .field("stale", &list.stale)
            .finish()
    }
}

impl EtcdEdges {
    /// Starts watching the edges registered in etcd at `endpoints` (each
    /// entry may be a comma-separated list) until `shutdown`. Returns at
    /// once; the list is empty and stale until etcd first answers. Must be
    /// called inside a Tokio runtime.
    pub fn start(endpoints: Vec<String>, shutdown: CancellationToken) -> EtcdEdges {
        let edges = EtcdEdges::new();
        let watched = edges.clone();
        tokio::spawn(async move { watched.watch(&endpoints, shutdown).await });
        edges
    }

    fn new() -> EtcdEdges {
        EtcdEdges {
            shared: Arc::new(Shared {
                edges: RwLock::new(HashMap::new()),
                stale: AtomicBool::new(true),
            }),
        }
    }

    /// The current list, least loaded first.
    pub fn list(&self) -> EdgeList {
        let edges = self
            .shared
            .edges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|known| known.record.clone())
            .collect();
        EdgeList {
            edges: sorted(edges),
            stale: self.shared.stale.load(Ordering::Relaxed),
        }
    }

    /// The edge with the fewest connections, counting the clients this
    /// ingress sent there since its record was last written, and counts
    /// this client. Ties go to the lowest node id.
    pub fn pick(&self) -> Pick {
        let now_ms = clock_ms();
        let edges = self
            .shared
            .edges
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let edge = edges
            .values()
            .min_by_key(|known| (known.load(now_ms), &known.record.node_id))
            .map(|known| {
                known.handed_out.fetch_add(1, Ordering::Relaxed);
                known.record.clone()
            });
        Pick {
            edge,
            stale: self.shared.stale.load(Ordering::Relaxed),
        }
    }

    /// Reconnects until `shutdown`, with backoff between failed sessions.
    async fn watch(&self, endpoints: &[String], shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.session(endpoints, &mut backoff) => result,
            };
            self.shared.stale.store(true, Ordering::Relaxed);
            let wait = backoff.next_wait();
            match result {
                Ok(()) => tracing::warn!("etcd watch of edges ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd edge watch failed; retrying in {wait:?}")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection: list the prefix, then apply watch events until the
    /// stream ends or fails. Resets `backoff` once etcd has answered.
    async fn session(
        &self,
        endpoints: &[String],
        backoff: &mut Backoff,
    ) -> Result<(), etcd_client::Error> {
        let mut client = connect_etcd(endpoints).await?;
        let listed = client
            .get(EDGES_PREFIX, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut edges = HashMap::new();
        for kv in listed.kvs() {
            apply(&mut edges, EventType::Put, kv.key(), kv.value());
        }
        tracing::info!(edges = edges.len(), revision, "listed edges from etcd");
        *self.write() = edges;
        self.shared.stale.store(false, Ordering::Relaxed);
        backoff.reset();

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client.watch(EDGES_PREFIX, Some(options)).await?;
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                return Err(etcd_client::Error::WatchError(format!(
                    "watch canceled by etcd: {} (compacted at {})",
                    response.cancel_reason(),
                    response.compact_revision()
                )));
            }
            let mut edges = self.write();
            for event in response.events() {
                if let Some(kv) = event.kv() {
                    apply(&mut edges, event.event_type(), kv.key(), kv.value());
                }
            }
        }
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Known>> {
        self.shared
            .edges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies one put or delete of an etcd key to the map. A key outside the
/// prefix is ignored; a record that is not valid JSON is dropped (an edge
/// we cannot read is not an edge we can send clients to).
fn apply(edges: &mut HashMap<String, Known>, kind: EventType, key: &[u8], value: &[u8]) {
    let Some(node_id) = std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.strip_prefix(EDGES_PREFIX))
    else {
        return;
    };
    match kind {
        EventType::Delete => {
            edges.remove(node_id);
        }
        EventType::Put => match serde_json::from_slice::<EdgeRecord>(value) {
            Ok(record) => {
                edges.insert(node_id.to_owned(), Known::new(record));
            }
            Err(e) => {
                tracing::warn!(node_id, error = %e, "ignoring unreadable edge record");
                edges.remove(node_id);
            }
        },
    }
}

/// Least loaded first; ties broken by node id so the order is stable.
fn sorted(mut edges: Vec<EdgeRecord>) -> Vec<EdgeRecord> {
    edges.sort_by(|a, b| (a.connections, &a.node_id).cmp(&(b.connections, &b.node_id)));
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node_id: &str, connections: u64) -> EdgeRecord {
        EdgeRecord {
            node_id: node_id.into(),
            url: format!("ws://{node_id}/ws"),
            connections,
            started_at: 1,
            updated_at: 2,
        }
    }

    fn put(edges: &mut HashMap<String, Known>, r: &EdgeRecord) {
        let key = format!("{EDGES_PREFIX}{}", r.node_id);
        let value = serde_json::to_vec(r).expect("json");
        apply(edges, EventType::Put, key.as_bytes(), &value);
    }

    #[test]
    fn puts_and_deletes() {
        let mut edges = HashMap::new();
        put(&mut edges, &record("a", 5));
        put(&mut edges, &record("b", 1));
        put(&mut edges, &record("a", 7));
        assert_eq!(edges.len(), 2);
        assert_eq!(edges["a"].record.connections, 7);
        apply(&mut edges, EventType::Delete, b"/gpush/edges/b", b"");
        assert_eq!(edges.keys().collect::<Vec<_>>(), ["a"]);
        apply(&mut edges, EventType::Put, b"/gpush/edges/a", b"not json");
        assert!(edges.is_empty());
        apply(&mut edges, EventType::Put, b"/other/x", b"{}");
        assert!(edges.is_empty());
    }

    #[test]
    fn least_loaded_first() {
        let list = sorted(vec![record("c", 3), record("b", 1), record("a", 3)]);
        let order: Vec<_> = list.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn list_reads_the_shared_map() {
        let edges = EtcdEdges::new();
        assert!(edges.list().stale);
        put(&mut edges.write(), &record("x", 2));
        put(&mut edges.write(), &record("y", 1));
        edges.shared.stale.store(false, Ordering::Relaxed);
        let list = Edges::from_directory(edges).list().expect("enabled");
        assert!(!list.stale);
        assert_eq!(list.edges[0].node_id, "y");
        assert!(Edges::Disabled.list().is_none());
    }

    #[test]
    fn stats_total_the_connections() {
        let list = EdgeList {
            edges: sorted(vec![record("b", 5), record("a", 2)]),
            stale: true,
        };
        let stats = list.stats();
        assert_eq!(stats.total_connections, 7);
        assert_eq!(stats.edge_count, 2);
        assert!(stats.stale);
        assert_eq!(
            stats.edges[0],
            EdgeStats {
                node_id: "a".into(),
                url: "ws://a/ws".into(),
                connections: 2
            }
        );
    }

    #[test]
    fn hand_outs_are_forgotten_when_no_record_follows() {
        let known = Known::new(record("a", 10));
        let start = known.counting_since.load(Ordering::Relaxed);
        known.handed_out.store(7, Ordering::Relaxed);
        assert_eq!(known.load(start + HANDOUT_MEMORY_MS), 17);
        assert_eq!(known.load(start + HANDOUT_MEMORY_MS + 1), 10);
    }

    #[test]
    fn picks_count_the_clients_handed_out_until_the_next_record() {
        let edges = EtcdEdges::new();
        put(&mut edges.write(), &record("a", 10));
        put(&mut edges.write(), &record("b", 7));
        let picks: Vec<String> = (0..9)
            .filter_map(|_| edges.pick().edge.map(|r| r.node_id))
            .collect();
        // b gets three clients to catch up, then they alternate (ties go
        // to the lower node id).
        assert_eq!(picks, ["b", "b", "b", "a", "b", "a", "b", "a", "b"]);
        // A new record from a is the truth again: its three hand-outs are
        // forgotten (a: 11), b's six still count (b: 13).
        put(&mut edges.write(), &record("a", 11));
        let picks: Vec<String> = (0..4)
            .filter_map(|_| edges.pick().edge.map(|r| r.node_id))
            .collect();
        assert_eq!(picks, ["a", "a", "a", "b"]);
        let empty = EtcdEdges::new();
        assert_eq!(
            empty.pick(),
            Pick {
                edge: None,
                stale: true
            }
        );
    }
}

//! Ingress's edge list ([`EtcdEdges`]) against a real `etcd`: records
//! appear, change and vanish through the watch, least loaded first, and the
//! list goes stale while etcd is down and fresh again after it returns.

use gpush_common::registry::{EdgeRecord, edge_key};
use gpush_ingress::{EdgeList, EtcdEdges};
use gpush_integration_tests::{Etcd, wait_for};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the list gets to reflect a change. Longer than
/// [`gpush_integration_tests::TIMEOUT`]: noticing that etcd is gone takes
/// the client's keep-alive timeout, and coming back the watcher's backoff.
const WAIT: Duration = Duration::from_secs(15);

/// The JSON an edge registers as `node_id` with `connections` clients.
fn record(node_id: &str, connections: u64) -> String {
    serde_json::to_string(&EdgeRecord {
        node_id: node_id.into(),
        url: format!("ws://{node_id}:9992/ws"),
        connections,
        started_at: 1,
        updated_at: 2,
    })
    .expect("json")
}

/// Writes `value` under `key` through the harness's client.
async fn put(etcd: &Etcd, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
    tokio::time::timeout(WAIT, etcd.client().put(key, value, None))
        .await
        .expect("etcd put timed out")
        .expect("put");
}

/// Waits until the list satisfies `ok`.
async fn until(edges: &EtcdEdges, what: &str, ok: impl Fn(&EdgeList) -> bool) {
    wait_for(WAIT, format!("edge list: {what}"), || async {
        let list = edges.list();
        if ok(&list) {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    })
    .await;
}

fn ids(list: &EdgeList) -> Vec<&str> {
    list.edges.iter().map(|e| e.node_id.as_str()).collect()
}

#[tokio::test]
async fn watches_puts_deletes_and_outages() {
    let mut etcd = Etcd::start().await;
    // Present before the watcher starts: found by the initial list.
    put(&etcd, edge_key("a"), record("a", 5)).await;

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let edges = EtcdEdges::start(vec![etcd.url()], shutdown.clone());
    until(&edges, "initial list", |l| !l.stale && ids(l) == ["a"]).await;

    // Arrive through the watch; least loaded first.
    put(&etcd, edge_key("b"), record("b", 1)).await;
    until(&edges, "b first", |l| ids(l) == ["b", "a"]).await;
    put(&etcd, edge_key("b"), record("b", 9)).await;
    until(&edges, "b updated", |l| ids(l) == ["a", "b"]).await;
    put(&etcd, "/unrelated/key", "x").await;
    tokio::time::timeout(WAIT, etcd.client().delete(edge_key("a"), None))
        .await
        .expect("etcd delete timed out")
        .expect("delete");
    until(&edges, "a deleted", |l| ids(l) == ["b"]).await;

    // Down: stale, last known list kept.
    etcd.stop();
    until(&edges, "stale", |l| l.stale && ids(l) == ["b"]).await;
    etcd.restart().await;
    put(&etcd, edge_key("c"), record("c", 0)).await;
    until(&edges, "fresh after restart", |l| {
        !l.stale && ids(l) == ["c", "b"]
    })
    .await;
}

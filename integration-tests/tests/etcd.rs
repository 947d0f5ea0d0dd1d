//! Edge registration in etcd: the record appears, carries the live
//! connection count, is listed by ingress, vanishes on SIGTERM before the
//! process exits, and expires within the lease TTL after SIGKILL.

use gpush_common::registry::EDGES_PREFIX;
use gpush_integration_tests::client::close_code;
use gpush_integration_tests::frames::close;
use gpush_integration_tests::{
    Cluster, Deployment, EdgeProcess, Etcd, NatsServer, TIMEOUT, WsClient, wait_for,
};
use std::time::Duration;

/// Lease TTL given to edge processes by [`EdgeProcess::clustered`].
const PROCESS_LEASE_TTL: Duration = Duration::from_secs(3);

/// Polls `GET /v1/edges` on ingress until `ok(body)` holds.
async fn wait_edges_listing(cluster: &Cluster, what: &str, ok: impl Fn(&str) -> bool) {
    wait_for(TIMEOUT, format!("GET /v1/edges showing {what}"), || async {
        let reply = cluster.api().get("/v1/edges").await;
        if reply.status == 200 && ok(&reply.body) {
            reply.json();
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_register_with_url_and_live_connection_count() {
    let mut cluster = Cluster::start(2, |_| {}).await;
    let etcd = &cluster.etcd;

    for (i, edge) in cluster.edges.iter().enumerate() {
        let node_id = format!("edge-{i}");
        let record = etcd
            .wait_edge_record(&node_id, TIMEOUT, "any content", |_| true)
            .await;
        assert_eq!(record.node_id, node_id, "{record:?}");
        assert_eq!(record.url, edge.ws_url(), "{record:?}");
        assert!(record.started_at > 0, "{record:?}");
        assert!(record.updated_at >= record.started_at, "{record:?}");
    }
    let mut keys = etcd.keys(EDGES_PREFIX).await;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{EDGES_PREFIX}edge-0"),
            format!("{EDGES_PREFIX}edge-1")
        ]
    );

    // The count follows connections as they come and go.
    let mut on_edge_0 = Vec::new();
    for i in 0..3 {
        on_edge_0.push(cluster.connect(0, &format!("c{i}")).await);
    }
    let on_edge_1 = cluster.connect(1, "d0").await;
    etcd.wait_edge_record("edge-0", TIMEOUT, "connections == 3", |r| {
        r.connections == 3
    })
    .await;
    etcd.wait_edge_record("edge-1", TIMEOUT, "connections == 1", |r| {
        r.connections == 1
    })
    .await;
    for client in on_edge_0.drain(1..) {
        client.close().await;
    }
    drop(on_edge_1);
    etcd.wait_edge_record("edge-0", TIMEOUT, "connections == 1", |r| {
        r.connections == 1
    })
    .await;
    etcd.wait_edge_record("edge-1", TIMEOUT, "connections == 0", |r| {
        r.connections == 0
    })
    .await;

    // Ingress lists the live edges...
    let urls: Vec<String> = cluster.edges.iter().map(|e| e.ws_url()).collect();
    wait_edges_listing(&cluster, "both edges", |body| {
        body.contains("edge-0") && body.contains("edge-1") && urls.iter().all(|u| body.contains(u))
    })
    .await;

    // ...and drops one that shut down (and so deregistered).
    let edge_1 = cluster.edges.pop().expect("two edges");
    edge_1
        .shutdown()
        .await
        .expect("edge-1 run() after shutdown");
    assert_eq!(cluster.etcd.edge_record("edge-1").await, None);
    wait_edges_listing(&cluster, "edge-0 only", |body| {
        body.contains("edge-0") && !body.contains("edge-1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_before_exit_and_closes_clients_with_1001() {
    let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
    let mut edge = EdgeProcess::clustered(&nats, &etcd, "proc-term").await;
    let record = etcd
        .wait_edge_record("proc-term", TIMEOUT, "any content", |_| true)
        .await;
    assert_eq!(record.url, edge.ws_url(), "{record:?}");

    let mut a = WsClient::connect(&edge.ws_url()).await;
    a.must_subscribe("t").await;
    let mut b = WsClient::connect(&edge.ws_url()).await;
    etcd.wait_edge_record("proc-term", TIMEOUT, "connections == 2", |r| {
        r.connections == 2
    })
    .await;

    edge.sigterm();
    let (close_a, close_b) = tokio::join!(a.next_close(TIMEOUT), b.next_close(TIMEOUT));
    assert_eq!(close_code(&close_a), Some(close::GOING_AWAY), "{close_a:?}");
    assert_eq!(close_code(&close_b), Some(close::GOING_AWAY), "{close_b:?}");
    let status = edge.wait_exit(TIMEOUT).await;
    assert!(
        status.success(),
        "gpush-edge exited with {status} after SIGTERM; log:\n{}",
        edge.log_tail()
    );
    assert_eq!(
        etcd.edge_record("proc-term").await,
        None,
        "the record must be gone by the time the process has exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_record_to_expire_within_the_lease_ttl() {
    let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
    let mut edge = EdgeProcess::clustered(&nats, &etcd, "proc-kill").await;
    let mut client = WsClient::connect(&edge.ws_url()).await;
    etcd.wait_edge_record("proc-kill", TIMEOUT, "connections == 1", |r| {
        r.connections == 1
    })
    .await;

    edge.sigkill();
    edge.wait_exit(TIMEOUT).await;
    let close_frame = client.next_close(TIMEOUT).await;
    assert_eq!(close_frame, None, "a killed edge cannot send a close frame");
    // etcd expires a lease up to about one TTL after its last renewal, and
    // checks expiry periodically: allow the TTL plus generous slack.
    etcd.wait_edge_gone("proc-kill", PROCESS_LEASE_TTL + Duration::from_secs(5))
        .await;
}

//! A NATS node failover under clients getting a push every 20 ms: three
//! `nats-server` nodes routed to each other with JetStream clustered over
//! them, the history streams replicated on all three
//! (`history.replicas = 3`), ingress given every node, edge a on node 1 and
//! edge b on node 2. Node 1 is killed: edge a fails over to another node,
//! reads what it missed meanwhile from JetStream and delivers it; ingress
//! answers 503 for pushes JetStream could not store (while it elects new
//! leaders, or while ingress itself moves). Every client stays connected
//! and must get every acknowledged push exactly once, in order, with no
//! 10007: nothing is lost silently, and here nothing is lost at all.

use gpush_common::config::sections::NatsConfig;
use gpush_common::history::HistoryConfig;
use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::deploy::edge_test_config;
use gpush_integration_tests::roaming::{Fleet, Pusher};
use gpush_integration_tests::{
    EdgeHandle, IngressHandle, NatsServer, PushApi, wait_for, wait_until,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long a failover (reconnect, leader elections, recovery) may take.
const FAILOVER: Duration = Duration::from_secs(30);
const TOPIC: &str = "prices";
const PUSH_EVERY: Duration = Duration::from_millis(20);
/// First sequence number of the pushes made around the failover.
const DURING: u64 = 1000;
/// Clients per edge.
const CLIENTS: usize = 150;

fn history() -> HistoryConfig {
    HistoryConfig {
        replicas: 3,
        ..HistoryConfig::default()
    }
}

fn edge_config(node_id: &str, nats_url: String) -> EdgeConfig {
    let mut config = edge_test_config();
    config.node_id = Some(node_id.to_owned());
    config.nats.nats_urls = vec![nats_url];
    config.etcd_endpoints = Vec::new();
    config.history = history();
    config
}

/// The index of the node the connection named `name` is on, if any.
async fn node_of(nodes: &[NatsServer], name: &str) -> Option<usize> {
    for (i, node) in nodes.iter().enumerate() {
        if node.is_running() && node.client_names().await.iter().any(|n| n == name) {
            return Some(i);
        }
    }
    None
}

async fn readyz(base: &str) -> u16 {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_failover_loses_no_push() {
    gpush_integration_tests::init_tracing();
    let mut nodes = NatsServer::cluster_jetstream(3).await;
    let all: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let ingress = IngressHandle::start(IngressConfig {
        nats: NatsConfig::with_urls(vec![all.join(",")]),
        etcd_endpoints: Vec::new(),
        history: history(),
        ..IngressConfig::default()
    })
    .await;
    let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
    api.wait_for_status("/readyz", 200, FAILOVER).await;
    let edge_a = EdgeHandle::start(edge_config("edge-a", nodes[1].url())).await;
    let edge_b = EdgeHandle::start(edge_config("edge-b", nodes[2].url())).await;
    assert_eq!(node_of(&nodes, "gpush-edge edge-a").await, Some(1));
    assert_eq!(node_of(&nodes, "gpush-edge edge-b").await, Some(2));

    let fleet = Fleet::start(
        2 * CLIENTS,
        &[edge_a.ws_url(), edge_b.ws_url()],
        &format!("{}/v1/connect", api.http_base()),
        TOPIC,
    );
    fleet.wait_all_subscribed(FAILOVER, "start").await;

    // Steady state: the history streams are there (JetStream may take a
    // moment to place them) and every push reaches everyone.
    let pusher = Pusher::new(api.clone(), TOPIC);
    let mut seq = 1;
    wait_until(FAILOVER, "ten pushes acknowledged", || {
        let pusher = pusher.clone();
        seq += 1;
        let seq = seq;
        async move {
            pusher.push(seq).await;
            pusher.acked().len() >= 10
        }
    })
    .await;
    let last_steady = *pusher.acked().last().expect("acknowledged");
    fleet.wait_all_received(last_steady, FAILOVER).await;
    let leaders = nodes[0].stream_leaders().await;
    let names: Vec<Option<String>> = nodes.iter().map(NatsServer::server_name).collect();
    eprintln!(
        "nodes {names:?}; meta leader {:?}; stream leaders {leaders:?}; ingress on node {:?}",
        nodes[0].meta_leader().await,
        node_of(&nodes, "gpush-ingress").await
    );

    // Pushes every 20 ms; kill the node edge a is on.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(pusher.clone().run(DURING, PUSH_EVERY, stop.clone()));
    pusher.wait_acked(5, "pushes before the failover").await;
    let killed = Instant::now();
    nodes[1].stop();
    let a_base = format!("http://{}", edge_a.ws_addr());
    let moved_to = wait_for(FAILOVER, "edge-a on another node", || async {
        node_of(&nodes, "gpush-edge edge-a").await.ok_or("none")
    })
    .await;
    assert_ne!(moved_to, 1);
    let reconnected = killed.elapsed();
    wait_until(FAILOVER, "edge-a ready again", || async {
        readyz(&a_base).await == 200
    })
    .await;
    // Pushes are acknowledged again after the failover.
    let refused_before = pusher.refused().len();
    pusher
        .wait_acked(1, "a push acknowledged after the failover")
        .await;
    let flowing = killed.elapsed();
    pusher
        .wait_acked(25, "pushes acknowledged after the failover")
        .await;
    stop.store(true, Ordering::SeqCst);
    let last = during.await.expect("pusher");
    let final_seq = last + 1;
    pusher.push(final_seq).await;
    fleet.wait_all_received(final_seq, FAILOVER).await;

    // Nobody left its edge; each got every acknowledged push.
    for (i, client) in fleet.clients.iter().enumerate() {
        assert_eq!(
            client.connections.load(Ordering::SeqCst),
            1,
            "client {i} reconnected"
        );
    }
    let acked = pusher.acked_in(DURING..=final_seq);
    let refused = pusher.refused();
    let delivery = fleet.report(&acked);
    eprintln!(
        "NATS node failover: edge-a on node {moved_to} {reconnected:?} after the kill, pushes \
         acknowledged again {flowing:?} after it; {} refused (503) meanwhile ({refused_before} \
         when edge-a was ready again); {} clients: {delivery}",
        refused.len(),
        fleet.clients.len()
    );
    delivery.assert_none_lost("NATS node failover");
    assert!(acked.len() > 30, "too few pushes acknowledged: {acked:?}");
}

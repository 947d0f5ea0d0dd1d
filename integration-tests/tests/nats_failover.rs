//! NATS node failovers under clients getting a push every 20 ms: three
//! `nats-server` nodes routed to each other with JetStream clustered over
//! them, the history streams replicated on all three
//! (`history.replicas = 3`), ingress given every node. Edge a is put on the
//! node that leads the topics' history stream, edge b on another.
//!
//! 1. Edge b's node is killed: pushes go on being stored; edge b fails
//!    over to another node and recovers from JetStream what it missed on
//!    the bus meanwhile. The node is started again (its file store kept)
//!    and rejoins.
//! 2. Edge a's node, the stream's leader, is killed: JetStream elects a new
//!    leader (ingress answers 503 for the pushes it could not store
//!    meanwhile), edge a fails over and recovers what it missed.
//!
//! Every client stays connected and must get every acknowledged push
//! exactly once, in order, with no `recovered: false` or 10007: nothing is
//! lost silently, and here nothing is lost at all.

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

/// The value of the counter `name` in an edge's `/metrics`.
async fn counter(edge: &EdgeHandle, name: &str) -> f64 {
    let url = format!("http://{}/metrics", edge.ws_addr());
    let text = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{url} has no {name}"))
}

/// Pushes missed on the bus and filled from history, and gaps told with
/// 10007, by `edge`.
async fn fills(edge: &EdgeHandle) -> (f64, f64) {
    (
        counter(edge, "gpush_edge_history_filled_total").await,
        counter(edge, "gpush_edge_history_gaps_total").await,
    )
}

/// Kills node `killed`, which the edge `name` (serving on `base`) is on,
/// waits until that edge is on another node and ready, and until pushes are
/// acknowledged again; returns what it measured, for the report.
async fn fail_over(
    nodes: &mut [NatsServer],
    killed: usize,
    name: &str,
    base: &str,
    pusher: &Pusher,
) -> String {
    assert_eq!(NatsServer::node_of(nodes, name).await, Some(killed));
    let refused_before = pusher.refused().len();
    let start = Instant::now();
    nodes[killed].stop();
    let moved_to = wait_for(FAILOVER, format!("{name} on another node"), || async {
        NatsServer::node_of(nodes, name).await.ok_or("none")
    })
    .await;
    assert_ne!(moved_to, killed);
    let reconnected = start.elapsed();
    wait_until(FAILOVER, format!("{name} ready again"), || async {
        gpush_integration_tests::readyz(base).await == 200
    })
    .await;
    pusher
        .wait_acked_within(1, FAILOVER, "a push acknowledged after the failover")
        .await;
    let flowing = start.elapsed();
    pusher
        .wait_acked_within(25, FAILOVER, "pushes acknowledged after the failover")
        .await;
    format!(
        "{name} on node {moved_to} {reconnected:?} after node {killed} was killed; a push \
         acknowledged {flowing:?} after the kill; {} refused (503)",
        pusher.refused().len() - refused_before
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_failovers_lose_no_push() {
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

    // The history streams exist once a push is acknowledged (JetStream may
    // take a moment to place them); then the node that leads the topics'
    // stream is known.
    let pusher = Pusher::new(api.clone(), TOPIC);
    let mut seq = 0;
    wait_until(FAILOVER, "a push acknowledged", || {
        let pusher = pusher.clone();
        seq += 1;
        let seq = seq;
        async move {
            pusher.push(seq).await;
            !pusher.acked().is_empty()
        }
    })
    .await;
    let leaders = nodes[0].stream_leaders().await;
    let names: Vec<Option<String>> = nodes.iter().map(NatsServer::server_name).collect();
    let leader = leaders
        .iter()
        .find(|(stream, _)| stream.ends_with("_HISTORY_D"))
        .and_then(|(_, leader)| names.iter().position(|n| n.as_deref() == Some(leader)))
        .unwrap_or_else(|| panic!("no leader of the topics' stream among {leaders:?}"));
    let other = (leader + 1) % nodes.len();
    let edge_a = EdgeHandle::start(edge_config("edge-a", nodes[leader].url())).await;
    let edge_b = EdgeHandle::start(edge_config("edge-b", nodes[other].url())).await;
    assert_eq!(
        NatsServer::node_of(&nodes, "gpush-edge edge-a").await,
        Some(leader)
    );
    assert_eq!(
        NatsServer::node_of(&nodes, "gpush-edge edge-b").await,
        Some(other)
    );
    let ingress_on = NatsServer::node_of(&nodes, "gpush-ingress").await;
    eprintln!(
        "nodes {names:?}; meta leader {:?}; stream leaders {leaders:?}; ingress on node \
         {ingress_on:?}, edge-a on node {leader}, edge-b on node {other}",
        nodes[0].meta_leader().await,
    );

    let fleet = Fleet::start(
        2 * CLIENTS,
        &[edge_a.ws_url(), edge_b.ws_url()],
        &format!("{}/v1/connect", api.http_base()),
        TOPIC,
    );
    fleet.wait_all_subscribed(FAILOVER, "start").await;
    // Steady state: every push reaches everyone.
    for seq in 100..110 {
        pusher.push(seq).await;
    }
    fleet.wait_all_received(109, FAILOVER).await;

    // Pushes every 20 ms while the nodes fail.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(pusher.clone().run(DURING, PUSH_EVERY, stop.clone()));
    pusher.wait_acked(5, "pushes before the failovers").await;
    let a_base = format!("http://{}", edge_a.ws_addr());
    let b_base = format!("http://{}", edge_b.ws_addr());

    // 1. Edge b's node (not the stream's leader), then it comes back.
    let first = fail_over(&mut nodes, other, "gpush-edge edge-b", &b_base, &pusher).await;
    let b_fills = fills(&edge_b).await;
    eprintln!("failover 1: {first}; edge-b filled {b_fills:?} (pushes, gaps)");
    nodes[other].restart().await;
    nodes[other].wait_routes(2, FAILOVER).await;
    nodes[other].wait_meta_leader(FAILOVER).await;
    wait_until(
        FAILOVER,
        "the restarted node to hold the stream again",
        || async {
            nodes[other]
                .stream_leaders()
                .await
                .iter()
                .any(|(stream, _)| stream.ends_with("_HISTORY_D"))
        },
    )
    .await;
    pusher.wait_acked(10, "pushes with the node back").await;

    // 2. Edge a's node, the stream's leader.
    let second = fail_over(&mut nodes, leader, "gpush-edge edge-a", &a_base, &pusher).await;
    let a_fills = fills(&edge_a).await;
    eprintln!("failover 2: {second}; edge-a filled {a_fills:?} (pushes, gaps)");

    stop.store(true, Ordering::SeqCst);
    let last = during.await.expect("pusher");
    let final_seq = last + 1;
    pusher.push(final_seq).await;
    fleet.wait_all_received(final_seq, FAILOVER).await;
    let new_leaders = nodes[other].stream_leaders().await;

    // Nobody left its edge; each got every acknowledged push.
    for (i, client) in fleet.clients.iter().enumerate() {
        assert_eq!(
            client.connections.load(Ordering::SeqCst),
            1,
            "client {i} reconnected"
        );
    }
    let acked = pusher.acked_in(DURING..=final_seq);
    let refused: Vec<u64> = pusher
        .refused()
        .into_iter()
        .filter(|s| *s >= DURING)
        .collect();
    let delivery = fleet.report(&acked);
    eprintln!(
        "NATS node failovers: stream leaders now {new_leaders:?}; {} refused (503) in all; \
         edges filled (pushes, gaps): a {:?}, b {:?}; {} clients: {delivery}",
        refused.len(),
        fills(&edge_a).await,
        fills(&edge_b).await,
        fleet.clients.len()
    );
    delivery.assert_none_lost("NATS node failover");
    assert!(acked.len() > 30, "too few pushes acknowledged: {acked:?}");
}

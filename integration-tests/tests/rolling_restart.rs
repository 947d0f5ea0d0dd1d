//! Edges going away under 1,000 connected clients that follow `GET
//! /v1/connect` (set `GPUSH_IT_ROLLING_CLIENTS` to change the number),
//! with a push every 20 ms all the while: two real `gpush-edge` processes
//! on NATS with JetStream (history on, the default).
//!
//! - A rolling restart: each edge in turn gets SIGTERM; it deregisters,
//!   stops accepting, tells each client 1001 with a reason to reconnect
//!   elsewhere, and exits within its grace period; its clients move to the
//!   other edge, and a new process takes its place.
//! - A crash: one edge gets SIGKILL; its clients see the connection drop
//!   and reconnect to the other edge (the dead one stays registered until
//!   its lease expires, so they avoid the edge they lost).
//!
//! Each client resubscribes with `since` (the last offset and epoch it
//! received, as `gpush.js` does), so the edge sends what it missed while it
//! moved. The tests require, per client, every acknowledged push received
//! exactly once, in offset order, with every resubscribe answered
//! `recovered: true` and no 10007, and print the figures.

use gpush_ingress::IngressConfig;
use gpush_integration_tests::roaming::{Fleet, Pusher};
use gpush_integration_tests::{
    EdgeProcess, Etcd, IngressHandle, NatsServer, PushApi, TIMEOUT, wait_for,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long the clients of a drained or killed edge may take to be back.
const MOVE: Duration = Duration::from_secs(30);
/// The edges' shutdown grace (see `EdgeProcess::clustered`) plus slack for
/// the process to exit.
const EXIT: Duration = Duration::from_secs(7);
/// Topic every client subscribes to.
const TOPIC: &str = "roll";
/// Interval of the pushes made while edges go away.
const PUSH_EVERY: Duration = Duration::from_millis(20);
/// First sequence number of those pushes.
const DURING: u64 = 1000;

fn clients() -> usize {
    std::env::var("GPUSH_IT_ROLLING_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// NATS (with JetStream), etcd, ingress, two clustered edge processes and
/// the fleet of clients, spread over both edges and getting pushes.
struct Setup {
    n: usize,
    nats: NatsServer,
    etcd: Etcd,
    _ingress: IngressHandle,
    api: PushApi,
    edges: [EdgeProcess; 2],
    fleet: Fleet,
    pusher: Pusher,
}

impl Setup {
    async fn start() -> Self {
        gpush_integration_tests::init_tracing();
        let n = clients();
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
        let ingress = IngressHandle::start(IngressConfig {
            nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
            etcd_endpoints: vec![etcd.url()],
            ..IngressConfig::default()
        })
        .await;
        let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
        api.wait_for_status("/readyz", 200, TIMEOUT).await;
        let edges = [
            EdgeProcess::clustered(&nats, &etcd, "edge-0").await,
            EdgeProcess::clustered(&nats, &etcd, "edge-1").await,
        ];
        api.wait_edges(TIMEOUT, "both edges", |body| {
            PushApi::edge_ids(body).len() == 2
        })
        .await;

        // Every client asks ingress where to go; ingress counts the clients
        // it hands out, so they spread over both edges.
        let fleet = Fleet::start(n, &[], &format!("{}/v1/connect", api.http_base()), TOPIC);
        fleet.wait_all_subscribed(MOVE, "start").await;
        let spread = fleet.per_edge();
        eprintln!("clients per edge at the start: {spread:?}");
        assert_eq!(spread.len(), 2, "{spread:?}");
        for (_, count) in &spread {
            assert!(
                *count * 10 >= n * 4,
                "unbalanced start, {spread:?}: /v1/connect is not load-aware"
            );
        }

        // Steady state: nothing is lost.
        let pusher = Pusher::new(api.clone(), TOPIC);
        for seq in 1..=10 {
            pusher.push(seq).await;
        }
        fleet.wait_all_received(10, MOVE).await;
        for (i, client) in fleet.clients.iter().enumerate() {
            let got = client.received();
            assert!(
                (1..=10).all(|s| got.contains(&s)),
                "client {i} missed a steady-state push: {got:?}"
            );
        }
        Self {
            n,
            nats,
            etcd,
            _ingress: ingress,
            api,
            edges,
            fleet,
            pusher,
        }
    }

    /// The clients connected to `url` right now.
    fn clients_on(&self, url: &str) -> Vec<usize> {
        (0..self.fleet.clients.len())
            .filter(|&i| self.fleet.clients[i].edge() == url)
            .collect()
    }

    /// Waits until every client of `on_it` is subscribed on another edge
    /// than `url`.
    async fn wait_moved(&self, on_it: &[usize], url: &str, what: &str) {
        let all_moved = format!("{what}: its {} clients back on another edge", on_it.len());
        wait_for(MOVE, all_moved, || async {
            let moved = on_it
                .iter()
                .filter(|&&i| {
                    let client = &self.fleet.clients[i];
                    client.subscribed.load(Ordering::SeqCst) && client.edge() != url
                })
                .count();
            if moved == on_it.len() {
                Ok(())
            } else {
                Err(format!("{moved} back"))
            }
        })
        .await;
    }

    /// Sends `SIGTERM` to edge `i`, checks it exits cleanly in time, and
    /// waits until every client it had is subscribed on another edge.
    async fn drain(&mut self, i: usize, what: &str) {
        let url = self.edges[i].ws_url();
        let on_it = self.clients_on(&url);
        let started = Instant::now();
        self.edges[i].sigterm();
        let status = self.edges[i].wait_exit(EXIT).await;
        assert!(status.success(), "{what} exited with {status}");
        let exited = started.elapsed();
        self.wait_moved(&on_it, &url, what).await;
        eprintln!(
            "{what}: exited {exited:?} after SIGTERM; its {} clients were all subscribed elsewhere {:?} after SIGTERM",
            on_it.len(),
            started.elapsed()
        );
    }

    /// Ends the pushes of `during` (after a few more were acknowledged),
    /// waits until every client is subscribed on one of the current edges
    /// and got one more push, and returns the sequence numbers
    /// acknowledged from [`DURING`] on.
    async fn finish(&self, stop: &AtomicBool, during: tokio::task::JoinHandle<u64>) -> Vec<u64> {
        self.pusher
            .wait_acked(5, "pushes acknowledged afterwards")
            .await;
        stop.store(true, Ordering::SeqCst);
        let last = during.await.expect("pusher");
        self.fleet.wait_all_subscribed(MOVE, "at the end").await;
        let urls: Vec<String> = self
            .edges
            .iter()
            .filter(|e| !e.has_exited())
            .map(EdgeProcess::ws_url)
            .collect();
        for (i, client) in self.fleet.clients.iter().enumerate() {
            assert!(
                urls.contains(&client.edge()),
                "client {i} is on {}",
                client.edge()
            );
        }
        let final_seq = last + 1;
        self.pusher.push(final_seq).await;
        self.fleet.wait_all_received(final_seq, MOVE).await;
        let refused = self.pusher.refused();
        assert!(
            refused.is_empty(),
            "ingress refused pushes while only edges went away: {refused:?}"
        );
        let acked = self.pusher.acked_in(DURING..=final_seq);
        assert!(acked.len() > 10, "too few pushes were made: {acked:?}");
        acked
    }

    /// Starts pushing every [`PUSH_EVERY`] from [`DURING`] on, and waits
    /// until a few were acknowledged.
    async fn start_pushing(&self) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(self.pusher.clone().run(DURING, PUSH_EVERY, stop.clone()));
        self.pusher
            .wait_acked(5, "pushes acknowledged before the edges go")
            .await;
        (stop, during)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_two_edges_under_a_thousand_clients() {
    let mut s = Setup::start().await;
    let first_edge: Vec<String> = s.fleet.clients.iter().map(|c| c.edge()).collect();
    let edge_0 = s.edges[0].ws_url();

    // The rolling restart, with pushes going on all the while.
    let (stop, during) = s.start_pushing().await;
    for i in 0..s.edges.len() {
        let node_id = format!("edge-{i}");
        s.drain(i, &node_id).await;
        s.edges[i] = EdgeProcess::clustered(&s.nats, &s.etcd, &node_id).await;
        let url = s.edges[i].ws_url();
        s.api
            .wait_edges(TIMEOUT, "the restarted edge", |body| {
                body["edges"]
                    .as_array()
                    .is_some_and(|edges| edges.iter().any(|e| e["url"] == url.as_str()))
            })
            .await;
    }
    let acked = s.finish(&stop, during).await;

    // Each client was told to go once per drain of the edge it was on:
    // those that started on edge-0 moved twice (to edge-1, then to the new
    // edge-0), the others once, each time with a reason saying to
    // reconnect elsewhere; and each time it resubscribed with `since` and
    // recovered.
    for (i, client) in s.fleet.clients.iter().enumerate() {
        let expected = if first_edge[i] == edge_0 { 2 } else { 1 };
        let moves = client.going_away.load(Ordering::SeqCst);
        assert_eq!(
            moves, expected,
            "client {i} (first on {}): times told 1001",
            first_edge[i]
        );
        let reason = client
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert!(
            reason.contains("reconnect"),
            "client {i}: 1001 reason {reason:?}"
        );
        assert_eq!(
            client.recoveries.load(Ordering::SeqCst),
            client.connections.load(Ordering::SeqCst) - 1,
            "client {i}: every resubscribe recovered"
        );
    }

    // Every push acknowledged during the restart reached every client.
    let delivery = s.fleet.report(&acked);
    eprintln!("rolling restart, {} clients: {delivery}", s.n);
    delivery.assert_none_lost("rolling restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edges_clients_recover_everything_on_the_other_edge() {
    let mut s = Setup::start().await;
    let (stop, during) = s.start_pushing().await;

    let url = s.edges[0].ws_url();
    let on_it = s.clients_on(&url);
    let others: Vec<usize> = (0..s.n).filter(|i| !on_it.contains(i)).collect();
    let started = Instant::now();
    s.edges[0].sigkill();
    let status = s.edges[0].wait_exit(EXIT).await;
    assert!(!status.success(), "SIGKILLed edge-0 exited with {status}");
    s.wait_moved(&on_it, &url, "edge-0 (SIGKILL)").await;
    eprintln!(
        "edge-0 SIGKILLed: its {} clients were all subscribed on edge-1 {:?} later",
        on_it.len(),
        started.elapsed()
    );
    let acked = s.finish(&stop, during).await;

    // Every client of the killed edge reconnected with `since` and was
    // answered `recovered: true` each time (history keeps 100 pushes, about
    // 2 s of them at this rate); the others never moved.
    for &i in &on_it {
        let client = &s.fleet.clients[i];
        let (connections, recoveries) = (
            client.connections.load(Ordering::SeqCst),
            client.recoveries.load(Ordering::SeqCst),
        );
        assert!(
            connections >= 2 && recoveries == connections - 1,
            "client {i} of edge-0: {connections} connections, {recoveries} recoveries"
        );
    }
    for &i in &others {
        let client = &s.fleet.clients[i];
        assert_eq!(
            client.connections.load(Ordering::SeqCst),
            1,
            "client {i} of edge-1 moved"
        );
    }
    let delivery = s.fleet.report(&acked);
    let moved: u64 = on_it
        .iter()
        .map(|&i| delivery.clients[i].recovered_pushes)
        .sum();
    eprintln!(
        "edge SIGKILL, {} clients ({} on the killed edge, {moved} pushes recovered for them): {delivery}",
        s.n,
        on_it.len()
    );
    delivery.assert_none_lost("edge SIGKILL");
}

//! A rolling restart of two real `gpush-edge` processes under 1,000
//! connected clients that follow `GET /v1/connect` (set
//! `GPUSH_IT_ROLLING_CLIENTS` to change the number). Each edge in turn gets
//! SIGTERM: it deregisters, stops accepting, tells each client 1001 with a
//! reason to reconnect elsewhere, and exits within its grace period; its
//! clients move to the other edge, and a new process takes its place. At
//! the end every client is connected and subscribed again, pushes flow to
//! all of them, and the test prints how many pushes sent during the
//! restart each client missed: delivery is at-most-once, so that number is
//! reported, not required to be zero.

use gpush_ingress::IngressConfig;
use gpush_integration_tests::roaming::Fleet;
use gpush_integration_tests::{
    EdgeProcess, Etcd, IngressHandle, NatsServer, PushApi, TIMEOUT, wait_for, wait_until,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// How long the clients of a drained edge may take to be back.
const MOVE: Duration = Duration::from_secs(30);
/// The edges' shutdown grace (see `EdgeProcess::clustered`) plus slack for
/// the process to exit.
const EXIT: Duration = Duration::from_secs(7);
/// Topic every client subscribes to.
const TOPIC: &str = "roll";
/// Interval of the pushes made during the restart.
const PUSH_EVERY: Duration = Duration::from_millis(20);

fn clients() -> usize {
    std::env::var("GPUSH_IT_ROLLING_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// Pushes `{"seq":n}` with increasing `n`, and which of them ingress
/// acknowledged.
#[derive(Clone)]
struct Pusher {
    api: PushApi,
    acked: Arc<Mutex<Vec<u64>>>,
    refused: Arc<Mutex<Vec<u64>>>,
}

impl Pusher {
    fn new(api: PushApi) -> Self {
        Self {
            api,
            acked: Arc::default(),
            refused: Arc::default(),
        }
    }

    async fn push(&self, seq: u64) {
        let body = PushApi::push_data_body(&gpush_integration_tests::PushMsg::public(
            TOPIC,
            format!("{{\"seq\":{seq}}}"),
        ));
        let reply = self.api.post("/v1/pushData", body, None).await;
        let list = if reply.status == 200 {
            &self.acked
        } else {
            &self.refused
        };
        list.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seq);
    }

    /// Pushes `from..` every [`PUSH_EVERY`] until `stop`; returns the
    /// last sequence number used.
    async fn run(self, from: u64, stop: Arc<AtomicBool>) -> u64 {
        let mut seq = from;
        while !stop.load(Ordering::SeqCst) {
            self.push(seq).await;
            seq += 1;
            sleep(PUSH_EVERY).await;
        }
        seq - 1
    }

    /// Waits until ingress has acknowledged `n` more pushes than so far.
    async fn wait_acked(&self, n: usize, what: &str) {
        let before = self.acked().len();
        wait_until(TIMEOUT, what, || async { self.acked().len() >= before + n }).await;
    }

    fn acked(&self) -> BTreeSet<u64> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

/// Sends `SIGTERM` to `edge`, checks it exits cleanly in time, and waits
/// until every client it had is subscribed on another edge.
async fn drain(edge: &mut EdgeProcess, fleet: &Fleet, what: &str) {
    let url = edge.ws_url();
    let on_it: Vec<usize> = (0..fleet.clients.len())
        .filter(|&i| fleet.clients[i].edge() == url)
        .collect();
    let started = Instant::now();
    edge.sigterm();
    let status = edge.wait_exit(EXIT).await;
    assert!(status.success(), "{what} exited with {status}");
    let exited = started.elapsed();
    let all_moved = format!("{what}: its {} clients back on another edge", on_it.len());
    wait_for(MOVE, all_moved, || async {
        let moved = on_it
            .iter()
            .filter(|&&i| {
                let client = &fleet.clients[i];
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
    eprintln!(
        "{what}: exited {exited:?} after SIGTERM; its {} clients were all subscribed elsewhere {:?} after SIGTERM",
        on_it.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_two_edges_under_a_thousand_clients() {
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
    let mut edges = [
        EdgeProcess::clustered(&nats, &etcd, "edge-0").await,
        EdgeProcess::clustered(&nats, &etcd, "edge-1").await,
    ];
    api.wait_edges(TIMEOUT, "both edges", |body| {
        PushApi::edge_ids(body).len() == 2
    })
    .await;

    // Every client asks ingress where to go; ingress counts the clients it
    // hands out, so they spread over both edges.
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
    let first_edge: Vec<String> = fleet.clients.iter().map(|c| c.edge()).collect();
    let edge_0 = edges[0].ws_url();

    // Steady state: nothing is lost.
    let pusher = Pusher::new(api.clone());
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

    // The rolling restart, with pushes going on all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(pusher.clone().run(1000, stop.clone()));
    pusher
        .wait_acked(5, "pushes acknowledged before the restart")
        .await;
    for (i, edge) in edges.iter_mut().enumerate() {
        let node_id = format!("edge-{i}");
        drain(edge, &fleet, &node_id).await;
        *edge = EdgeProcess::clustered(&nats, &etcd, &node_id).await;
        let url = edge.ws_url();
        api.wait_edges(TIMEOUT, "the restarted edge", |body| {
            body["edges"]
                .as_array()
                .is_some_and(|edges| edges.iter().any(|e| e["url"] == url.as_str()))
        })
        .await;
    }
    pusher
        .wait_acked(5, "pushes acknowledged after the restart")
        .await;
    stop.store(true, Ordering::SeqCst);
    let last = during.await.expect("pusher");

    // Everyone is back and subscribed; new pushes reach everyone.
    fleet.wait_all_subscribed(MOVE, "after the restart").await;
    let urls: Vec<String> = edges.iter().map(EdgeProcess::ws_url).collect();
    for (i, client) in fleet.clients.iter().enumerate() {
        assert!(
            urls.contains(&client.edge()),
            "client {i} is on {}",
            client.edge()
        );
    }
    let final_seq = last + 1;
    pusher.push(final_seq).await;
    fleet.wait_all_received(final_seq, MOVE).await;

    // Each client was told to go once per drain of the edge it was on:
    // those that started on edge-0 moved twice (to edge-1, then to the new
    // edge-0), the others once, each time with a reason saying to
    // reconnect elsewhere.
    for (i, client) in fleet.clients.iter().enumerate() {
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
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert!(
            reason.contains("reconnect"),
            "client {i}: 1001 reason {reason:?}"
        );
    }

    // The report: pushes acknowledged during the restart that a client
    // did not receive.
    let acked: Vec<u64> = pusher
        .acked()
        .into_iter()
        .filter(|s| (1000..=last).contains(s))
        .collect();
    let refused = pusher
        .refused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    let missed: Vec<usize> = fleet
        .clients
        .iter()
        .map(|c| {
            let got = c.received();
            acked.iter().filter(|s| !got.contains(s)).count()
        })
        .collect();
    let total: usize = missed.iter().sum();
    let affected = missed.iter().filter(|&&m| m > 0).count();
    let worst = missed.iter().max().copied().unwrap_or(0);
    eprintln!(
        "rolling restart: {} pushes acknowledged during the restart ({refused} refused), \
         {n} clients: {total} deliveries missed of {} ({:.3} %), {affected} clients missed any, \
         at most {worst} each",
        acked.len(),
        acked.len() * n,
        100.0 * total as f64 / (acked.len() * n).max(1) as f64
    );
    assert_eq!(
        refused, 0,
        "ingress refused pushes while only edges restarted"
    );
    assert!(!acked.is_empty(), "no pushes were made during the restart");
}

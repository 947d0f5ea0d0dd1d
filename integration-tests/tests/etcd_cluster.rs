//! gpush against a real three-member etcd cluster. Losing a member (the
//! leader, even) changes nothing a user can see; losing all of etcd stops
//! only discovery from being current: edges keep serving and pushes keep
//! flowing, ingress serves its last known edge list marked stale, and when
//! etcd returns every edge registers again under a new lease without a
//! restart. A SIGKILLed edge vanishes within its lease TTL, and nobody else
//! notices anything.

use gpush_common::registry::edge_key;
use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::deploy::edge_test_config;
use gpush_integration_tests::frames;
use gpush_integration_tests::{
    EdgeHandle, EdgeProcess, Etcd, IngressHandle, NatsServer, PushApi, TIMEOUT, WsClient, wait_for,
    wait_until,
};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// How long etcd may take to elect a leader, and an edge to register again
/// (its reconnect backoff is capped at 5 s).
const RECOVERY: Duration = Duration::from_secs(20);
/// Lease TTL of the edges in these tests.
const TTL: Duration = Duration::from_secs(3);

struct Setup {
    nats: NatsServer,
    etcd: Etcd,
    /// Kept running for the test's length.
    _ingress: IngressHandle,
    api: PushApi,
}

impl Setup {
    async fn start() -> Self {
        gpush_integration_tests::init_tracing();
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::cluster(3));
        let ingress = IngressHandle::start(IngressConfig {
            nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
            etcd_endpoints: etcd.urls(),
            ..IngressConfig::default()
        })
        .await;
        let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
        api.wait_for_status("/readyz", 200, TIMEOUT).await;
        Self {
            nats,
            etcd,
            _ingress: ingress,
            api,
        }
    }

    fn edge_config(&self, node_id: &str) -> EdgeConfig {
        let mut config = edge_test_config();
        config.node_id = Some(node_id.to_owned());
        config.nats.nats_urls = vec![self.nats.url()];
        // One comma-separated entry, as a flag or env variable gives it.
        config.etcd_endpoints = vec![self.etcd.url()];
        config.lease_ttl = TTL;
        config
    }

    async fn lease(&self, node_id: &str) -> i64 {
        self.etcd
            .lease_of(&edge_key(node_id))
            .await
            .unwrap_or_else(|| panic!("{node_id} is not registered"))
    }
}

fn connections(body: &Value, node_id: &str) -> Option<u64> {
    body["edges"]
        .as_array()?
        .iter()
        .find(|e| e["node_id"] == node_id)?["connections"]
        .as_u64()
}

/// A push on `topic` made now arrives at `client`.
async fn push_arrives(api: &PushApi, client: &mut WsClient, topic: &str, data: &[u8]) {
    api.push_http("", topic, data).await;
    client.expect_push(&frames::public(topic, data)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_and_ingress_ride_out_member_loss_and_a_full_outage() {
    let mut setup = Setup::start().await;
    let edges = [
        EdgeHandle::start(setup.edge_config("edge-0")).await,
        EdgeHandle::start(setup.edge_config("edge-1")).await,
    ];
    let api = setup.api.clone();
    api.wait_edges(RECOVERY, "both edges, fresh", |body| {
        body["stale"] == false && PushApi::edge_ids(body) == ["edge-0", "edge-1"]
    })
    .await;
    let mut subscriber = WsClient::connect(&edges[1].ws_url()).await;
    subscriber.must_subscribe("news").await;
    push_arrives(&api, &mut subscriber, "news", b"1").await;

    // The leader dies: the survivors elect another one, and registrations,
    // count updates and ingress's watch all go on through them.
    let leader = setup.etcd.leader().await;
    setup.etcd.stop_member(leader);
    let _c1 = WsClient::connect(&edges[0].ws_url()).await;
    let _c2 = WsClient::connect(&edges[0].ws_url()).await;
    api.wait_edges(RECOVERY, "edge-0 with 2 connections", |body| {
        body["stale"] == false && connections(body, "edge-0") == Some(2)
    })
    .await;
    push_arrives(&api, &mut subscriber, "news", b"2").await;
    setup.etcd.restart_member(leader).await;

    // All of etcd goes away. Ingress keeps its last view, marked stale,
    // still ordered by load and still handing out edges; edges keep
    // serving and pushes keep flowing.
    // An edge whose keep-alive went to the dead leader registers again
    // (new lease) within its backoff; wait for both records first.
    for node_id in ["edge-0", "edge-1"] {
        setup
            .etcd
            .wait_edge_record(node_id, RECOVERY, "a record", |_| true)
            .await;
    }
    let leases = [setup.lease("edge-0").await, setup.lease("edge-1").await];
    setup.etcd.stop();
    let stale = api
        .wait_edges(RECOVERY, "the last view, stale", |body| {
            body["stale"] == true
        })
        .await;
    assert_eq!(PushApi::edge_ids(&stale), ["edge-1", "edge-0"], "{stale}");
    assert_eq!(connections(&stale, "edge-0"), Some(2), "{stale}");
    let connect = api.get("/v1/connect").await;
    assert_eq!(connect.status, 200, "{connect:?}");
    assert_eq!(connect.json()["stale"], true, "{connect:?}");
    assert_eq!(connect.json()["node_id"], "edge-1", "{connect:?}");
    let mut late = WsClient::connect(&edges[0].ws_url()).await;
    late.must_subscribe("news").await;
    for i in 3..6 {
        let data = format!("{i}");
        api.push_http("", "news", data.as_bytes()).await;
        subscriber
            .expect_push(&frames::public("news", data.as_bytes()))
            .await;
        late.expect_push(&frames::public("news", data.as_bytes()))
            .await;
    }
    // A deliberate sleep: the outage lasts longer than the lease TTL, so
    // that the old leases could not be kept alive anyway and registering
    // again under a new one is the only right outcome.
    sleep(TTL + Duration::from_secs(1)).await;

    // etcd returns: each edge registers again under a new lease, with
    // nothing restarted, and ingress's view is fresh again.
    setup.etcd.restart().await;
    let fresh = api
        .wait_edges(RECOVERY, "both edges, fresh again", |body| {
            body["stale"] == false
                && PushApi::edge_ids(body).len() == 2
                && connections(body, "edge-0") == Some(3)
        })
        .await;
    assert_eq!(PushApi::edge_ids(&fresh), ["edge-1", "edge-0"], "{fresh}");
    for (node_id, old) in ["edge-0", "edge-1"].into_iter().zip(leases) {
        let what = format!("{node_id} registered under a new lease (old {old})");
        wait_for(RECOVERY, what, || async {
            let lease = setup.etcd.lease_of(&edge_key(node_id)).await;
            match lease {
                Some(l) if l != old && l != 0 => Ok(()),
                _ => Err(format!("{lease:?}")),
            }
        })
        .await;
    }
    push_arrives(&api, &mut subscriber, "news", b"6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_edge_vanishes_within_its_lease_and_nobody_else_notices() {
    let setup = Setup::start().await;
    let survivor = EdgeHandle::start(setup.edge_config("survivor")).await;
    let mut victim = EdgeProcess::clustered(&setup.nats, &setup.etcd, "victim").await;
    let api = setup.api.clone();
    api.wait_edges(RECOVERY, "both edges", |body| {
        PushApi::edge_ids(body).len() == 2
    })
    .await;
    let mut watcher = WsClient::connect(&survivor.ws_url()).await;
    watcher.must_subscribe("ticks").await;
    let mut doomed = WsClient::connect(&victim.ws_url()).await;
    doomed.must_subscribe("ticks").await;
    push_arrives(&api, &mut watcher, "ticks", b"0").await;

    // Pushes go on while the victim dies: every one is accepted, and the
    // survivor's client gets every one, in order.
    let pushes = 40;
    let pushed = Arc::new(AtomicU32::new(0));
    let pusher = {
        let api = api.clone();
        let pushed = pushed.clone();
        tokio::spawn(async move {
            for i in 1..=pushes {
                api.push_http("", "ticks", format!("{i}").as_bytes()).await;
                pushed.store(i, Ordering::SeqCst);
                // Paced, so that the kill falls in the middle of them.
                sleep(Duration::from_millis(25)).await;
            }
        })
    };
    wait_until(TIMEOUT, "ten pushes before the kill", || async {
        pushed.load(Ordering::SeqCst) >= 10
    })
    .await;
    let killed = Instant::now();
    victim.sigkill();
    for i in 1..=pushes {
        watcher
            .expect_push(&frames::public("ticks", format!("{i}").as_bytes()))
            .await;
    }
    pusher.await.expect("pusher");

    // The record is gone within the lease TTL (plus etcd's expiry check
    // and the watch), and ingress stops handing the edge out.
    api.wait_edges(TTL + Duration::from_secs(5), "the victim gone", |body| {
        PushApi::edge_ids(body) == ["survivor"]
    })
    .await;
    eprintln!("victim left /v1/edges {:?} after SIGKILL", killed.elapsed());
    assert_eq!(setup.etcd.edge_record("victim").await, None);
    let connect = api.get("/v1/connect").await.json();
    assert_eq!(connect["node_id"], "survivor", "{connect}");
    push_arrives(&api, &mut watcher, "ticks", b"after").await;
}

//! gpush on a real three-node NATS cluster (routes between the nodes on
//! loopback): ingress on node 0, edges on nodes 1 and 2. Every kind of push
//! crosses the routes; when the node an edge is on dies, the edge fails over
//! to another node, re-subscribes every subject its clients still need, and
//! delivers again. With the whole bus gone, edges and ingress say they are
//! not ready and ingress refuses pushes with 503 / UNAVAILABLE within its
//! publish timeout, then recovers by itself.

use gpush_common::Subjects;
use gpush_common::bus::Ack;
use gpush_common::history::HistoryConfig;
use gpush_common::subject::{topic_bucket, user_bucket};
use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::deploy::edge_test_config;
use gpush_integration_tests::frames;
use gpush_integration_tests::{
    EdgeHandle, IngressHandle, NatsServer, PushApi, PushMsg, QUIET, TIMEOUT, Via, WsClient, auth,
    wait_for,
};
use gpush_proto::v1::PushRequest;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// How long a failover (reconnect, re-subscribe, route interest) may take.
const FAILOVER: Duration = Duration::from_secs(15);

fn edge_config(node_id: &str, nats_urls: Vec<String>) -> EdgeConfig {
    let mut config = edge_test_config();
    config.node_id = Some(node_id.to_owned());
    config.nats.nats_urls = nats_urls;
    config.etcd_endpoints = Vec::new();
    config.history.enabled = false;
    config
}

/// The name an edge gives its NATS connection.
fn nats_name(node_id: &str) -> String {
    format!("gpush-edge {node_id}")
}

async fn wait_readyz(base: &str, status: u16, within: Duration) {
    wait_for(
        within,
        format!("{base}/readyz answering {status}"),
        || async {
            let now = gpush_integration_tests::readyz(base).await;
            if now == status { Ok(()) } else { Err(now) }
        },
    )
    .await;
}

/// The clients of one edge: `topic` subscribers, and `uid` logged in with
/// the private topic `p`.
struct EdgeClients {
    public: WsClient,
    user: WsClient,
}

impl EdgeClients {
    async fn connect(edge: &EdgeHandle, uid: &str) -> Self {
        let mut public = WsClient::connect(&edge.ws_url())
            .await
            .with_label(format!("{uid} public"));
        public.must_subscribe("prices").await;
        let mut user = WsClient::connect(&edge.ws_url())
            .await
            .with_label(format!("{uid} user"));
        user.must_login(&auth::hs256(uid), uid).await;
        user.must_sub_private("p").await;
        Self { public, user }
    }

    /// The pushes of `every_kind(.., round)` each client should get.
    fn expected(uid: &str, round: &str) -> [Vec<Value>; 2] {
        let tag = |kind: &str| format!("{{\"{kind}\":\"{round}\"}}").into_bytes();
        [
            vec![
                frames::public("prices", &tag("topic")),
                frames::everyone(&tag("all")),
            ],
            vec![
                frames::private("p", &tag(&format!("private-{uid}"))),
                frames::user(&tag(&format!("user-{uid}"))),
                frames::everyone(&tag("all")),
            ],
        ]
    }

    /// Every kind of push reaches exactly the clients it is for (pushes on
    /// different subjects may overtake each other).
    async fn expect_every_kind(&mut self, uid: &str, round: &str) {
        let [public, user] = Self::expected(uid, round);
        self.public.expect_pushes_unordered(&public).await;
        self.user.expect_pushes_unordered(&user).await;
    }

    /// Whether every push of `round` arrives within a short window.
    async fn got_round(&mut self, uid: &str, round: &str) -> bool {
        let [public, user] = Self::expected(uid, round);
        let mut complete = true;
        for (client, expected) in [(&mut self.public, public), (&mut self.user, user)] {
            let mut seen = Vec::new();
            while let Some(push) = client.try_next_push(Duration::from_millis(300)).await {
                seen.push(push);
            }
            complete &= expected.iter().all(|e| seen.contains(e));
        }
        complete
    }
}

/// Pushes every kind, round after round, until every client gets all of a
/// round. Delivery is at-most-once and a NATS cluster spreads a new
/// subscription over its routes asynchronously, so pushes made before the
/// interest reached ingress's node (right after subscribing, or after a
/// failover) may be lost; after a complete round, none may.
async fn until_every_kind_flows(api: &PushApi, edges: &mut [(&str, &mut EdgeClients)]) -> u32 {
    let uids: Vec<&str> = edges.iter().map(|(uid, _)| *uid).collect();
    let deadline = Instant::now() + FAILOVER;
    for round in 1.. {
        assert!(
            Instant::now() < deadline,
            "pushes did not flow to every client within {FAILOVER:?}"
        );
        let name = format!("warm-up {round}");
        api.send(Via::HttpBatch, &every_kind(&uids, &name)).await;
        let mut complete = true;
        for (uid, clients) in edges.iter_mut() {
            complete &= clients.got_round(uid, &name).await;
        }
        if complete {
            return round;
        }
    }
    unreachable!("the loop only ends by returning or panicking")
}

/// One push of each kind, for users `uids`, tagged with `round`.
fn every_kind(uids: &[&str], round: &str) -> Vec<PushMsg> {
    let tag = |kind: &str| format!("{{\"{kind}\":\"{round}\"}}").into_bytes();
    let mut msgs = vec![
        PushMsg::public("prices", tag("topic")),
        PushMsg::everyone(tag("all")),
    ];
    for uid in uids {
        msgs.push(PushMsg::private(uid, "p", tag(&format!("private-{uid}"))));
        msgs.push(PushMsg::user(uid, tag(&format!("user-{uid}"))));
    }
    msgs
}

/// Pushes a probe on `prices` until `client` receives one: delivery is
/// at-most-once, so pushes made before the failover completed (the edge
/// re-subscribed and NATS spread the interest over its routes) may be
/// lost. Returns how many probes it took.
async fn until_delivered(api: &PushApi, client: &mut WsClient, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    let mut probes = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: no probe arrived within {within:?} after the failover",
            client.label()
        );
        probes += 1;
        api.push_http("", "prices", b"{\"probe\":true}").await;
        if let Some(push) = client.try_next_push(Duration::from_millis(200)).await {
            assert_eq!(push, frames::public("prices", b"{\"probe\":true}"));
            // Drain probes still in flight.
            while client
                .try_next_push(Duration::from_millis(200))
                .await
                .is_some()
            {}
            return probes;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_fail_over_between_nats_nodes_and_resubscribe() {
    gpush_integration_tests::init_tracing();
    let mut nodes = NatsServer::cluster(3).await;
    let ingress = IngressHandle::start(IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nodes[0].url()]),
        etcd_endpoints: Vec::new(),
        // The routed NATS cluster runs without JetStream.
        history: HistoryConfig {
            enabled: false,
            ..HistoryConfig::default()
        },
        ..IngressConfig::default()
    })
    .await;
    let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
    api.wait_for_status("/readyz", 200, TIMEOUT).await;
    // Edge a knows node 1 only and finds the others through the cluster's
    // gossip; edge b is given a list (as one comma-separated entry).
    let edge_a = EdgeHandle::start(edge_config("edge-a", vec![nodes[1].url()])).await;
    let edge_b = EdgeHandle::start(edge_config(
        "edge-b",
        vec![format!("{},{}", nodes[2].url(), nodes[1].url())],
    ))
    .await;
    assert_eq!(
        NatsServer::node_of(&nodes, &nats_name("edge-a")).await,
        Some(1)
    );
    assert!(matches!(
        NatsServer::node_of(&nodes, &nats_name("edge-b")).await,
        Some(1 | 2)
    ));

    let mut on_a = EdgeClients::connect(&edge_a, "alice").await;
    let mut on_b = EdgeClients::connect(&edge_b, "bob").await;
    until_every_kind_flows(&api, &mut [("alice", &mut on_a), ("bob", &mut on_b)]).await;
    api.send(Via::HttpBatch, &every_kind(&["alice", "bob"], "before"))
        .await;
    on_a.expect_every_kind("alice", "before").await;
    on_b.expect_every_kind("bob", "before").await;

    // Kill the node edge a is on: it moves to a surviving node and
    // re-subscribes there to everything its clients still need.
    nodes[1].stop();
    let a_base = format!("http://{}", edge_a.ws_addr());
    let moved_to = wait_for(FAILOVER, "edge-a reconnected to a node", || async {
        NatsServer::node_of(&nodes, &nats_name("edge-a"))
            .await
            .ok_or("none")
    })
    .await;
    assert_ne!(moved_to, 1);
    let needed = [
        "gpush.all".to_owned(),
        Subjects::default().topic_bucket(topic_bucket("prices")),
        format!("gpush.u.{}.*", user_bucket("alice")),
    ];
    let resubscribed = format!("edge-a re-subscribed to {needed:?} on node {moved_to}");
    wait_for(FAILOVER, resubscribed, || async {
        let subjects = nodes[moved_to]
            .subscriptions_of(Some(&nats_name("edge-a")))
            .await;
        if needed.iter().all(|s| subjects.contains(s)) {
            Ok(())
        } else {
            Err(format!("{subjects:?}"))
        }
    })
    .await;
    wait_readyz(&a_base, 200, FAILOVER).await;

    // Pushes sent after the failover are delivered, on both edges, every
    // kind.
    let rounds =
        until_every_kind_flows(&api, &mut [("alice", &mut on_a), ("bob", &mut on_b)]).await;
    eprintln!("every kind flowed again after {rounds} round(s) of pushes");
    api.send(Via::Grpc, &every_kind(&["alice", "bob"], "after"))
        .await;
    on_a.expect_every_kind("alice", "after").await;
    on_b.expect_every_kind("bob", "after").await;
    // Nobody got anybody else's private pushes.
    on_a.user.expect_no_push(QUIET).await;
    on_b.user.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_bus_down_means_not_ready_and_503_then_recovery() {
    whole_bus_down(Ack::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_bus_down_with_flush_acks_too() {
    whole_bus_down(Ack::Flush).await;
}

async fn whole_bus_down(publish_ack: Ack) {
    gpush_integration_tests::init_tracing();
    let mut nodes = NatsServer::cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let publish_timeout = Duration::from_millis(500);
    let ingress = IngressHandle::start(IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(urls.clone()),
        etcd_endpoints: Vec::new(),
        publish_timeout,
        publish_ack,
        // The routed NATS cluster runs without JetStream.
        history: HistoryConfig {
            enabled: false,
            ..HistoryConfig::default()
        },
        ..IngressConfig::default()
    })
    .await;
    let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
    api.wait_for_status("/readyz", 200, TIMEOUT).await;
    let edge = EdgeHandle::start(edge_config("edge-a", urls)).await;
    let edge_base = format!("http://{}", edge.ws_addr());
    let mut client = WsClient::connect(&edge.ws_url()).await;
    client.must_subscribe("prices").await;
    until_delivered(&api, &mut client, FAILOVER).await;

    for node in &mut nodes {
        node.stop();
    }
    wait_readyz(&edge_base, 503, TIMEOUT).await;
    api.wait_for_status("/readyz", 503, TIMEOUT).await;
    // Every push is answered, and answered 503 / UNAVAILABLE, never hangs.
    let pushes = (0..20).map(|i| {
        let api = api.clone();
        async move {
            let body = PushApi::push_data_body(&PushMsg::public("prices", format!("{i}")));
            let reply = tokio::time::timeout(
                publish_timeout + TIMEOUT,
                api.post("/v1/pushData", body, None),
            )
            .await
            .expect("a push hung while the bus was down");
            assert_eq!(reply.status, 503, "{reply:?}");
            let body: Value = serde_json::from_str(&reply.body).expect("JSON error body");
            assert_eq!(body["code"], "bus_unavailable", "{body}");
        }
    });
    futures_util::future::join_all(pushes).await;
    let status = tokio::time::timeout(
        publish_timeout + TIMEOUT,
        api.grpc().push_data(PushRequest {
            uid: String::new(),
            topic: "prices".into(),
            data: b"x".to_vec().into(),
        }),
    )
    .await
    .expect("gRPC push hung while the bus was down")
    .expect_err("gRPC push accepted while the bus was down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Back by itself, no restart of ingress or edge.
    for node in &mut nodes {
        node.restart().await;
    }
    api.wait_for_status("/readyz", 200, FAILOVER).await;
    wait_readyz(&edge_base, 200, FAILOVER).await;
    until_delivered(&api, &mut client, FAILOVER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_gets_503_within_the_publish_timeout() {
    gpush_integration_tests::init_tracing();
    let nats = NatsServer::start().await;
    let publish_timeout = Duration::from_millis(500);
    let ingress = IngressHandle::start(IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
        etcd_endpoints: Vec::new(),
        publish_timeout,
        // The routed NATS cluster runs without JetStream.
        history: HistoryConfig {
            enabled: false,
            ..HistoryConfig::default()
        },
        ..IngressConfig::default()
    })
    .await;
    let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
    api.wait_for_status("/readyz", 200, TIMEOUT).await;
    let edge = EdgeHandle::start(edge_config("edge-a", vec![nats.url()])).await;
    let mut client = WsClient::connect(&edge.ws_url()).await;
    client.must_subscribe("prices").await;
    api.push_http("", "prices", b"1").await;
    client.expect_push(&frames::public("prices", b"1")).await;

    // A frozen server keeps its sockets open and answers nothing: the
    // client still thinks it is connected, so only the confirmation round
    // trip can tell that the push did not reach the server.
    nats.freeze();
    let started = Instant::now();
    let body = PushApi::push_data_body(&PushMsg::public("prices", b"2".to_vec()));
    let reply = tokio::time::timeout(
        publish_timeout + TIMEOUT,
        api.post("/v1/pushData", body, None),
    )
    .await
    .expect("push hung on a frozen NATS server");
    let took = started.elapsed();
    nats.thaw();
    assert_eq!(reply.status, 503, "push to a frozen server: {reply:?}");
    assert!(
        took >= publish_timeout,
        "503 after {took:?}, before the {publish_timeout:?} publish timeout: not from the timeout"
    );

    // Thawed, the same connection confirms again.
    wait_for(FAILOVER, "pushes accepted after the thaw", || async {
        let body = PushApi::push_data_body(&PushMsg::public("prices", b"3".to_vec()));
        let reply = api.post("/v1/pushData", body, None).await;
        if reply.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    })
    .await;
    // At-most-once: "2" may or may not have been delivered after the thaw;
    // "3" flows again (pushed until one arrives: the edge's own connection
    // to the frozen server may have had to recover too).
    let deadline = Instant::now() + FAILOVER;
    loop {
        assert!(
            Instant::now() < deadline,
            "no push arrived {FAILOVER:?} after the thaw"
        );
        match client.try_next_push(Duration::from_millis(500)).await {
            Some(push) if push == frames::public("prices", b"3") => break,
            Some(push) => assert_eq!(push, frames::public("prices", b"2"), "unexpected push"),
            None => api.push_http("", "prices", b"3").await,
        }
    }
}

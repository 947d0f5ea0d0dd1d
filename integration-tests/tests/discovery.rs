//! Load-aware discovery and interchangeable ingress instances: `/v1/edges`
//! lists the live edges least loaded first and `/v1/connect` hands a client
//! the least loaded one; two ingress processes on the same NATS and etcd
//! give the same answers and deliver the same pushes, so any TCP balancer
//! can spread callers over them.

use gpush_ingress::IngressConfig;
use gpush_integration_tests::frames;
use gpush_integration_tests::{
    Cluster, Deployment, IngressHandle, PushApi, PushMsg, TIMEOUT, Via, WsClient,
};
use std::time::Duration;

/// Long enough for edges to rewrite their records (every second) and
/// ingress to see the change.
const SETTLE: Duration = Duration::from_secs(10);

fn connections_of(body: &serde_json::Value) -> Vec<(String, u64)> {
    body["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["node_id"].as_str().unwrap_or_default().to_owned(),
                e["connections"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hands_out_the_least_loaded_edge() {
    let cluster = Cluster::start(2, |_| {}).await;
    let api = cluster.api();
    let mut on_0 = Vec::new();
    for i in 0..3 {
        on_0.push(cluster.connect(0, &format!("c{i}")).await);
    }
    let body = api
        .wait_edges(SETTLE, "edge-1 (0) before edge-0 (3)", |body| {
            connections_of(body) == [("edge-1".into(), 0), ("edge-0".into(), 3)]
        })
        .await;
    assert_eq!(body["stale"], false);
    let connect = api.get("/v1/connect").await.json();
    assert_eq!(connect["node_id"], "edge-1", "{connect}");
    assert_eq!(connect["url"], cluster.edges[1].ws_url(), "{connect}");
    assert_eq!(connect["stale"], false, "{connect}");

    // Five clients on edge-1 turn the order around.
    let mut on_1 = Vec::new();
    for i in 0..5 {
        on_1.push(cluster.connect(1, &format!("d{i}")).await);
    }
    api.wait_edges(SETTLE, "edge-0 (3) before edge-1 (5)", |body| {
        connections_of(body) == [("edge-0".into(), 3), ("edge-1".into(), 5)]
    })
    .await;
    let connect = api.get("/v1/connect").await.json();
    assert_eq!(connect["node_id"], "edge-0", "{connect}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingress_instances_are_interchangeable() {
    let cluster = Cluster::start(2, |_| {}).await;
    let second = IngressHandle::start(IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(vec![cluster.nats.url()]),
        etcd_endpoints: vec![cluster.etcd.url()],
        ..IngressConfig::default()
    })
    .await;
    let apis = [
        cluster.api().clone(),
        PushApi::new(&second.http_base(), &second.grpc_url()),
    ];
    apis[1].wait_for_status("/readyz", 200, TIMEOUT).await;

    // Both list the same edges.
    let lists: Vec<Vec<(String, u64)>> =
        futures_util::future::join_all(apis.iter().map(|api| {
            api.wait_edges(SETTLE, "both edges", |body| connections_of(body).len() == 2)
        }))
        .await
        .iter()
        .map(connections_of)
        .collect();
    assert_eq!(lists[0], lists[1]);

    // Pushes alternate between the two, over every API, and arrive in the
    // order they were acknowledged on both edges.
    let mut clients: Vec<WsClient> = Vec::new();
    for edge in 0..2 {
        let mut client = cluster.connect(edge, &format!("sub{edge}")).await;
        client.must_subscribe("alt").await;
        clients.push(client);
    }
    let vias = [Via::Http, Via::Grpc, Via::HttpBatch, Via::GrpcBatch];
    let mut expected = Vec::new();
    for i in 0..16 {
        let data = format!("{{\"n\":{i}}}");
        apis[i % 2]
            .send(
                vias[i / 2 % vias.len()],
                &[PushMsg::public("alt", data.clone())],
            )
            .await;
        expected.push(frames::public("alt", data.as_bytes()));
    }
    for client in &mut clients {
        for push in &expected {
            client.expect_push(push).await;
        }
    }

    // One of them goes away; the other carries on alone.
    second
        .shutdown()
        .await
        .expect("second ingress shut down cleanly");
    apis[0].push_http("", "alt", b"\"last\"").await;
    for client in &mut clients {
        client
            .expect_push(&frames::public("alt", b"\"last\""))
            .await;
    }
}

//! The server API against three real `gpush-edge` processes (so one can
//! be frozen with SIGSTOP), registered in etcd, behind one ingress:
//!
//! - an edge frozen during a presence query is named in `missing` (and
//!   `complete` is false) in an answer that comes within `control_timeout`
//!   (plus a margin for the call itself), over HTTP and gRPC, with the
//!   other edges' users counted; once it is resumed, the next answer is
//!   complete again;
//! - `POST /v1/disconnect` of a user with a connection on every edge
//!   closes all of them with 4003, and only them.

use gpush_ingress::IngressConfig;
use gpush_integration_tests::client::{close_code, expect_all_quiet};
use gpush_integration_tests::{
    EdgeProcess, Etcd, IngressHandle, NatsServer, PushApi, TIMEOUT, WsClient, auth,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// Ingress's wait for the edges' answers.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);
/// What a call may take beyond `CONTROL_TIMEOUT` (the HTTP or gRPC round
/// trip, a busy test machine): a bound, not a measurement.
const MARGIN: Duration = Duration::from_secs(2);
/// The edges' etcd lease: far longer than an edge stays frozen here, so a
/// frozen edge stays registered (expected) and is named missing, rather
/// than dropping out of the list.
const LEASE_TTL: &str = "30s";
/// The topic everyone subscribes to.
const TOPIC: &str = "room";

/// NATS, etcd, ingress and three edge processes `edge-0`..`edge-2`; on
/// each edge `user-<i>` and `ann`, logged in and subscribed to [`TOPIC`].
struct Setup {
    edges: Vec<EdgeProcess>,
    api: PushApi,
    users: Vec<WsClient>,
    ann: Vec<WsClient>,
    _ingress: IngressHandle,
    _etcd: Etcd,
    _nats: NatsServer,
}

impl Setup {
    async fn start() -> Self {
        gpush_integration_tests::init_tracing();
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
        let mut config = IngressConfig {
            nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
            etcd_endpoints: vec![etcd.url()],
            ..IngressConfig::default()
        };
        config.push.control_timeout = CONTROL_TIMEOUT;
        let ingress = IngressHandle::start(config).await;
        let api = PushApi::new(&ingress.http_base(), &ingress.grpc_url());
        let secret = ["--jwt-secret", auth::JWT_SECRET];
        let mut edges = Vec::new();
        for i in 0..3 {
            let id = format!("edge-{i}");
            edges.push(EdgeProcess::clustered_with(&nats, &etcd, &id, LEASE_TTL, &secret).await);
        }
        api.wait_edges(TIMEOUT, "three edges", |body| {
            PushApi::edge_ids(body).len() == 3
        })
        .await;
        api.wait_for_status("/readyz", 200, TIMEOUT).await;
        let (mut users, mut ann) = (Vec::new(), Vec::new());
        for (i, edge) in edges.iter().enumerate() {
            let uid = format!("user-{i}");
            let mut user = WsClient::connect(&edge.ws_url())
                .await
                .with_label(format!("{uid} (edge-{i})"));
            user.must_login(&auth::hs256(&uid), &uid).await;
            user.must_subscribe(TOPIC).await;
            users.push(user);
            let mut client = WsClient::connect(&edge.ws_url())
                .await
                .with_label(format!("ann (edge-{i})"));
            client.must_login(&auth::hs256("ann"), "ann").await;
            client.must_subscribe(TOPIC).await;
            ann.push(client);
        }
        Self {
            edges,
            api,
            users,
            ann,
            _ingress: ingress,
            _etcd: etcd,
            _nats: nats,
        }
    }

    /// `GET path` over HTTP, answered 200 within [`CONTROL_TIMEOUT`] +
    /// [`MARGIN`].
    async fn get(&self, path: &str) -> Value {
        let started = Instant::now();
        let reply = tokio::time::timeout(CONTROL_TIMEOUT + MARGIN, self.api.get(path))
            .await
            .unwrap_or_else(|_| {
                panic!("GET {path}: no answer within {CONTROL_TIMEOUT:?} + {MARGIN:?}")
            });
        eprintln!("GET {path}: answered after {:?}", started.elapsed());
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }

    /// The gRPC twin of `GET path`, answered within [`CONTROL_TIMEOUT`] +
    /// [`MARGIN`].
    async fn grpc(&self, path: &str) -> Value {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            CONTROL_TIMEOUT + MARGIN,
            self.api.control_grpc(path, &Value::Null),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("gRPC {path}: no answer within {CONTROL_TIMEOUT:?} + {MARGIN:?}")
        })
        .unwrap_or_else(|e| panic!("gRPC {path}: {e}"));
        eprintln!("gRPC {path}: answered after {:?}", started.elapsed());
        answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_edge_is_named_missing_within_the_deadline() {
    let setup = Setup::start().await;
    let path = format!("/v1/presence?topic={TOPIC}");
    let all = json!({"ann": 3, "user-0": 1, "user-1": 1, "user-2": 1});

    let presence = setup.get(&path).await;
    assert_eq!(presence["users"], all, "{presence}");
    assert_eq!(presence["complete"], true, "{presence}");

    setup.edges[1].freeze();
    let presence = setup.get(&path).await;
    assert_eq!(presence["missing"], json!(["edge-1"]), "{presence}");
    assert_eq!(presence["complete"], false, "{presence}");
    assert_eq!(presence["edges"], json!(["edge-0", "edge-2"]), "{presence}");
    assert_eq!(
        presence["users"],
        json!({"ann": 2, "user-0": 1, "user-2": 1}),
        "the answering edges' users are counted: {presence}"
    );
    assert_eq!(presence["connections"], 4, "{presence}");
    let stats = setup
        .grpc(&format!("/v1/presence_stats?topic={TOPIC}"))
        .await;
    assert_eq!(stats["missing"], json!(["edge-1"]), "{stats}");
    assert_eq!(stats["complete"], false, "{stats}");
    assert_eq!(
        (&stats["users"], &stats["connections"]),
        (&json!(3), &json!(4)),
        "{stats}"
    );

    setup.edges[1].thaw();
    let presence = setup.get(&path).await;
    assert_eq!(presence["missing"], json!([]), "{presence}");
    assert_eq!(presence["complete"], true, "{presence}");
    assert_eq!(presence["users"], all, "{presence}");
    let grpc = setup.grpc(&path).await;
    assert_eq!(grpc["complete"], true, "{grpc}");
    assert_eq!(grpc["users"], all, "{grpc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_a_user_on_every_edge_process() {
    let mut setup = Setup::start().await;
    let reply = setup
        .api
        .post(
            "/v1/disconnect",
            json!({"uid": "ann", "reason": "banned"}).to_string(),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["connections"], 3, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    for client in &mut setup.ann {
        let close = client.next_close(Duration::from_secs(1)).await;
        assert_eq!(close_code(&close), Some(4003), "{close:?}");
        assert_eq!(
            close.map(|c| c.reason.to_string()).as_deref(),
            Some("banned")
        );
    }
    expect_all_quiet(&mut setup.users).await;
    let presence = setup.get(&format!("/v1/presence?topic={TOPIC}")).await;
    assert_eq!(
        presence["users"],
        json!({"user-0": 1, "user-1": 1, "user-2": 1}),
        "{presence}"
    );
}

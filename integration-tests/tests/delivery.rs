//! Pushes arrive exactly where the routing rules send them, and nowhere
//! else. Every scenario runs twice: against a cluster (ingress + NATS + two
//! edges, clients spread over both edges) and against a standalone edge
//! (in-process bus), where "edge 1" is the same edge as "edge 0".

use gpush_common::subject::topic_bucket;
use gpush_integration_tests::client::{RawFrame, expect_all_quiet};
use gpush_integration_tests::deploy::{self, External};
use gpush_integration_tests::frames::{self, code};
use gpush_integration_tests::{
    Cluster, Deployment, PushMsg, QUIET, Standalone, TIMEOUT, Via, WsClient, auth,
};
use serde_json::{Value, json};

/// Runs `scenario` against a two-edge cluster and a standalone edge, as
/// two tests `<scenario>::cluster` and `<scenario>::standalone`. When
/// `GPUSH_IT_WS_URLS` names a running deployment (see [`External`] and
/// `deploy/compose-test.sh`), the `cluster` tests run against it instead
/// of starting processes; run them one at a time (`--test-threads=1`), as
/// they share its edges.
macro_rules! on_both {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                match External::from_env() {
                    Some(external) => super::$scenario(&external).await,
                    None => super::$scenario(&Cluster::start(2, |_| {}).await).await,
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$scenario(&Standalone::start(|_| {}).await).await;
            }
        }
    };
}

/// The external-deployment path itself, pointed at a cluster this test
/// starts: the addresses come in through the same variables a user sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_deployment_named_by_variables_gets_the_same_scenarios() {
    let cluster = Cluster::start(2, |_| {}).await;
    let ws_urls = format!("{},{}", cluster.ws_url(0), cluster.ws_url(1));
    let vars = [
        (deploy::ENV_WS_URLS, ws_urls),
        (deploy::ENV_PUSH_HTTP, cluster.api().http_base().to_owned()),
        (deploy::ENV_PUSH_GRPC, cluster.api().grpc_url().to_owned()),
    ];
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let external = External::from_vars(var).expect("variables set");
    assert_eq!(external.edge_count(), 2);
    routing(&external).await;
    batches_arrive_in_order(&external).await;
    assert!(External::from_vars(|_| None).is_none());
    let half = std::panic::catch_unwind(|| {
        External::from_vars(|name| (name == deploy::ENV_WS_URLS).then(|| "ws://x/ws".to_owned()))
    });
    assert!(half.is_err(), "a half-configured target must fail loudly");
}

on_both!(routing);
on_both!(unsubscribe_and_logout_stop_delivery);
on_both!(batches_arrive_in_order);
on_both!(payload_encodings_and_raw_subprotocol);
on_both!(wildcard_looking_names_are_isolated);

/// A client logged in as `uid` (HS256 token) on edge `edge`, subscribed to
/// the private topics `private`.
async fn user_client(
    d: &impl Deployment,
    edge: usize,
    label: &str,
    uid: &str,
    private: &[&str],
) -> WsClient {
    let mut client = d.connect(edge, label).await;
    client.must_login(&auth::hs256(uid), uid).await;
    for topic in private {
        client.must_sub_private(topic).await;
    }
    client
}

/// A client on edge `edge` subscribed to the public topics `topics`.
async fn topic_client(d: &impl Deployment, edge: usize, label: &str, topics: &[&str]) -> WsClient {
    let mut client = d.connect(edge, label).await;
    for topic in topics {
        client.must_subscribe(topic).await;
    }
    client
}

fn payload(fields: Value) -> Vec<u8> {
    fields.to_string().into_bytes()
}

/// Another topic in `topic`'s NATS subject bucket (see
/// [`gpush_common::subject::topic_bucket`]).
fn bucket_twin(topic: &str) -> String {
    let bucket = topic_bucket(topic);
    (0..)
        .map(|i| format!("twin.*{i}"))
        .find(|twin| twin != topic && topic_bucket(twin) == bucket)
        .expect("a twin")
}

/// Public, private, user-wide and everyone pushes, sent over every push
/// call (HTTP, HTTP batch, gRPC, gRPC batch, legacy gRPC), reach exactly
/// the connections their route names, on every edge.
async fn routing(d: &impl Deployment) {
    #[derive(Clone, Copy, PartialEq)]
    enum Route {
        Public,
        Private,
        User,
        Everyone,
    }
    use Route::*;

    let mut clients = vec![
        // Public subscribers of "news" on both edges.
        (
            topic_client(d, 0, "news-0", &["news"]).await,
            vec![Public, Everyone],
        ),
        (
            topic_client(d, 1, "news-1", &["news"]).await,
            vec![Public, Everyone],
        ),
        // Another public topic, and a *public* subscriber of the topic name
        // user u1 uses privately: neither gets the private push.
        (
            topic_client(d, 1, "sports", &["sports"]).await,
            vec![Everyone],
        ),
        (
            topic_client(d, 0, "public-orders", &["orders"]).await,
            vec![Everyone],
        ),
        // u1 with private topic "orders" on both edges.
        (
            user_client(d, 0, "u1-orders-0", "u1", &["orders"]).await,
            vec![Private, User, Everyone],
        ),
        (
            user_client(d, 1, "u1-orders-1", "u1", &["orders"]).await,
            vec![Private, User, Everyone],
        ),
        // u1 without that private topic: only user-wide and everyone.
        (
            user_client(d, 1, "u1-plain", "u1", &[]).await,
            vec![User, Everyone],
        ),
        (
            user_client(d, 0, "u1-invoices", "u1", &["invoices"]).await,
            vec![User, Everyone],
        ),
        // Another user with the same private topic name.
        (
            user_client(d, 1, "u2-orders", "u2", &["orders"]).await,
            vec![Everyone],
        ),
        // Connected, nothing else.
        (d.connect(0, "idle-0").await, vec![Everyone]),
        (d.connect(1, "idle-1").await, vec![Everyone]),
    ];

    for via in Via::ALL {
        let data = |route: &str| payload(json!({"via": via.name(), "route": route}));
        let pushes = [
            (
                Public,
                PushMsg::public("news", data("public")),
                frames::public("news", &data("public")),
            ),
            (
                Private,
                PushMsg::private("u1", "orders", data("private")),
                frames::private("orders", &data("private")),
            ),
            (
                User,
                PushMsg::user("u1", data("user")),
                frames::user(&data("user")),
            ),
            (
                Everyone,
                PushMsg::everyone(data("everyone")),
                frames::everyone(&data("everyone")),
            ),
        ];
        let msgs: Vec<PushMsg> = pushes.iter().map(|(_, msg, _)| msg.clone()).collect();
        d.send(via, &msgs).await;
        for (client, routes) in &mut clients {
            let expected: Vec<Value> = pushes
                .iter()
                .filter(|(route, _, _)| routes.contains(route))
                .map(|(_, _, frame)| frame.clone())
                .collect();
            client.expect_pushes_unordered(&expected).await;
        }
    }
    expect_all_quiet(clients.iter_mut().map(|(client, _)| client)).await;
}

/// Unsubscribing, unsubscribing privately and logging out stop exactly the
/// deliveries they should; subscribing again after an edge had no
/// subscriber left works again.
async fn unsubscribe_and_logout_stop_delivery(d: &impl Deployment) {
    let mut a = topic_client(d, 0, "a", &["t1", "t2"]).await;
    let mut b = topic_client(d, 1, "b", &["t1"]).await;
    let mut u = user_client(d, 1, "u3-p1-p2", "u3", &["p1", "p2"]).await;
    let mut v = user_client(d, 0, "u3-p1", "u3", &["p1"]).await;

    let t1 = payload(json!({"n": 1}));
    d.push_http("", "t1", &t1).await;
    a.expect_push(&frames::public("t1", &t1)).await;
    b.expect_push(&frames::public("t1", &t1)).await;

    // Public unsubscribe: a no longer gets t1, still gets t2.
    let reply = a.unsubscribe("t1").await;
    a.assert_code(&reply, code::UNSUBSCRIBED, "unsubscribe t1");
    let t1 = payload(json!({"n": 2}));
    d.push_grpc("", "t1", &t1).await;
    b.expect_push(&frames::public("t1", &t1)).await;
    let t2 = payload(json!({"n": 3}));
    d.push_grpc("", "t2", &t2).await;
    a.expect_push(&frames::public("t2", &t2)).await;

    // Private unsubscribe: u no longer gets p1, still gets p2.
    let reply = u.unsub_private("p1").await;
    u.assert_code(&reply, code::UNSUBSCRIBED, "private unsubscribe p1");
    let p1 = payload(json!({"n": 4}));
    d.push_grpc("u3", "p1", &p1).await;
    v.expect_push(&frames::private("p1", &p1)).await;
    let p2 = payload(json!({"n": 5}));
    d.push_http("u3", "p2", &p2).await;
    u.expect_push(&frames::private("p2", &p2)).await;

    // Logout drops every private subscription and the user-wide route.
    let reply = u.logout().await;
    u.assert_code(&reply, code::LOGGED_OUT, "logout");
    let p2 = payload(json!({"n": 6}));
    d.push_grpc("u3", "p2", &p2).await;
    let user_wide = payload(json!({"n": 7}));
    d.push_grpc("u3", "", &user_wide).await;
    v.expect_push(&frames::user(&user_wide)).await;
    expect_all_quiet([&mut a, &mut b, &mut u, &mut v]).await;

    // Logging in again does not bring the private subscriptions back.
    u.must_login(&auth::hs256("u3"), "u3").await;
    let p2 = payload(json!({"n": 8}));
    d.push_grpc("u3", "p2", &p2).await;
    let user_wide = payload(json!({"n": 9}));
    d.push_grpc("u3", "", &user_wide).await;
    u.expect_push(&frames::user(&user_wide)).await;
    v.expect_push(&frames::user(&user_wide)).await;

    // The last subscriber of t2 leaves and comes back.
    let reply = a.unsubscribe("t2").await;
    a.assert_code(&reply, code::UNSUBSCRIBED, "unsubscribe t2");
    d.push_grpc("", "t2", b"{\"gone\":true}").await;
    a.expect_no_push(QUIET).await;
    a.must_subscribe("t2").await;
    let t2 = payload(json!({"n": 10}));
    d.push_grpc("", "t2", &t2).await;
    a.expect_push(&frames::public("t2", &t2)).await;

    expect_all_quiet([&mut a, &mut b, &mut u, &mut v]).await;
}

/// Pushes to one route from one batch arrive in the order of the batch, on
/// every edge, for public and private routes interleaved in the batch.
async fn batches_arrive_in_order(d: &impl Deployment) {
    const N: usize = 200;
    let mut public = [
        topic_client(d, 0, "seq-0", &["seq"]).await,
        topic_client(d, 1, "seq-1", &["seq"]).await,
    ];
    let mut private = [
        user_client(d, 1, "u4-seq-1", "u4", &["seq"]).await,
        user_client(d, 0, "u4-seq-0", "u4", &["seq"]).await,
    ];
    for via in [Via::HttpBatch, Via::GrpcBatch] {
        let mut batch = Vec::with_capacity(2 * N);
        for i in 0..N {
            batch.push(PushMsg::public(
                "seq",
                payload(json!({"via": via.name(), "i": i})),
            ));
            batch.push(PushMsg::private(
                "u4",
                "seq",
                payload(json!({"via": via.name(), "p": i})),
            ));
        }
        d.send(via, &batch).await;
        for client in &mut public {
            for i in 0..N {
                let data = payload(json!({"via": via.name(), "i": i}));
                client.expect_push(&frames::public("seq", &data)).await;
            }
        }
        for client in &mut private {
            for i in 0..N {
                let data = payload(json!({"via": via.name(), "p": i}));
                client.expect_push(&frames::private("seq", &data)).await;
            }
        }
    }
    expect_all_quiet(public.iter_mut().chain(private.iter_mut())).await;
}

/// JSON payloads arrive as JSON, other UTF-8 as a string, anything else as
/// base64 with `"encoding":"base64"`; a `gpush.raw` connection gets the
/// bare payload (text frame for UTF-8, binary otherwise) on every route,
/// while its replies stay JSON.
async fn payload_encodings_and_raw_subprotocol(d: &impl Deployment) {
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"a":1}"#.to_vec(),
        br#"  {"spaced": [1, 2.5, null, true]}  "#.to_vec(),
        b"[1,2,3]".to_vec(),
        br#""a JSON string""#.to_vec(),
        b"42".to_vec(),
        b"hello world".to_vec(),
        "h\u{e9}llo \u{2713}".as_bytes().to_vec(),
        br#"{"a":1} trailing"#.to_vec(),
        vec![0xff, 0x00, 0x01, 0x80],
        vec![0x00],
        b"\xc3\x28 not utf-8".to_vec(),
    ];
    let mut json_client = topic_client(d, 0, "json", &["enc"]).await;
    let mut raw = d.connect_raw(1, "raw").await;
    raw.must_subscribe("enc").await;
    raw.must_login(&auth::hs256("raw-user"), "raw-user").await;
    raw.must_sub_private("enc").await;

    let batch: Vec<PushMsg> = payloads
        .iter()
        .map(|p| PushMsg::public("enc", p.clone()))
        .collect();
    d.push_batch_grpc(&batch).await;
    for p in &payloads {
        json_client.expect_push(&frames::public("enc", p)).await;
    }
    for p in &payloads {
        assert_eq!(
            raw.next_raw(TIMEOUT).await,
            raw_frame(p),
            "raw public push of {p:?}"
        );
    }

    // Spot checks of the JSON form, independent of frames::payload_value.
    d.push_http("", "enc", b"{\"a\":1}").await;
    d.push_http("", "enc", b"plain").await;
    d.push_http("", "enc", &[0xff, 0xfe]).await;
    json_client
        .expect_pushes_unordered(&[
            json!({"code": 10001, "topic": "enc", "data": {"a": 1}}),
            json!({"code": 10001, "topic": "enc", "data": "plain"}),
            json!({"code": 10001, "topic": "enc", "data": "//4=", "encoding": "base64"}),
        ])
        .await;
    for _ in 0..3 {
        raw.next_raw(TIMEOUT).await;
    }

    // Private, user-wide and everyone pushes are bare too in raw mode.
    let private = vec![0xde, 0xad, 0xbe, 0xef];
    d.push_grpc("raw-user", "enc", &private).await;
    assert_eq!(raw.next_raw(TIMEOUT).await, RawFrame::Binary(private));
    d.push_legacy_grpc("raw-user", "", b"{\"user\":true}").await;
    assert_eq!(
        raw.next_raw(TIMEOUT).await,
        RawFrame::Text("{\"user\":true}".to_owned())
    );
    d.push_http("", "", b"to everyone").await;
    assert_eq!(
        raw.next_raw(TIMEOUT).await,
        RawFrame::Text("to everyone".to_owned())
    );
    json_client
        .expect_push(&frames::everyone(b"to everyone"))
        .await;

    // Replies on a raw connection are still JSON.
    let reply = raw.unsubscribe("enc").await;
    raw.assert_code(&reply, code::UNSUBSCRIBED, "raw unsubscribe");
    expect_all_quiet([&mut json_client, &mut raw]).await;
}

fn raw_frame(payload: &[u8]) -> RawFrame {
    match std::str::from_utf8(payload) {
        Ok(text) => RawFrame::Text(text.to_owned()),
        Err(_) => RawFrame::Binary(payload.to_vec()),
    }
}

/// Names that look like NATS wildcards, separators or escapes.
const TRICKY_NAMES: &[&str] = &[
    "a",
    "a.b",
    "a.*",
    "a.>",
    "*",
    ">",
    "a b",
    "a%2Eb",
    "a%2eb",
    "%",
    "a.b.c",
    "a.",
    ".a",
    "a..b",
    "a/b",
    "a\\b",
    "a+b",
    "\u{e4}",
    "gpush.t.a",
];

/// Topics and uids such as `a.*`, `>`, `a b` or `a%2Eb` are plain names:
/// each reaches its own subscribers and never another name's.
async fn wildcard_looking_names_are_isolated(d: &impl Deployment) {
    // Public topics: one subscriber per name, alternating edges; and for
    // each name a twin topic of the same NATS subject bucket, subscribed
    // on the other edge (a cluster edge receives both on one bucket
    // subscription and must tell them apart).
    let twins: Vec<String> = TRICKY_NAMES.iter().map(|name| bucket_twin(name)).collect();
    let names: Vec<&str> = TRICKY_NAMES
        .iter()
        .copied()
        .chain(twins.iter().map(String::as_str))
        .collect();
    let mut subscribers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        subscribers.push(topic_client(d, i, &format!("topic {name:?}"), &[name]).await);
    }
    let data = |name: &str| payload(json!({"to": name}));
    let batch: Vec<PushMsg> = names.iter().map(|n| PushMsg::public(n, data(n))).collect();
    d.push_batch_http(&batch).await;
    for (client, name) in subscribers.iter_mut().zip(&names) {
        client.expect_push(&frames::public(name, &data(name))).await;
    }

    // Uids: one user per name, each with private topic "t".
    let mut users = Vec::new();
    for (i, name) in TRICKY_NAMES.iter().enumerate() {
        users.push(user_client(d, i + 1, &format!("user {name:?}"), name, &["t"]).await);
    }
    let batch: Vec<PushMsg> = TRICKY_NAMES
        .iter()
        .flat_map(|n| [PushMsg::private(n, "t", data(n)), PushMsg::user(n, data(n))])
        .collect();
    d.push_batch_grpc(&batch).await;
    for (client, name) in users.iter_mut().zip(TRICKY_NAMES) {
        client.expect_push(&frames::private("t", &data(name))).await;
        client.expect_push(&frames::user(&data(name))).await;
    }

    // Private topics of one user: each name is its own topic.
    let mut owner = user_client(
        d,
        0,
        "owner of tricky private topics",
        "owner",
        TRICKY_NAMES,
    )
    .await;
    let batch: Vec<PushMsg> = TRICKY_NAMES
        .iter()
        .map(|n| PushMsg::private("owner", n, data(n)))
        .collect();
    d.push_batch_grpc(&batch).await;
    for name in TRICKY_NAMES {
        owner.expect_push(&frames::private(name, &data(name))).await;
    }

    expect_all_quiet(
        subscribers
            .iter_mut()
            .chain(users.iter_mut())
            .chain(std::iter::once(&mut owner)),
    )
    .await;
}

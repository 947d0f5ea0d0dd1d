//! The server API (disconnect, logout, subscribe, unsubscribe, presence,
//! presence_stats, online, topics) against a three-edge cluster and a
//! standalone edge, over HTTP and over gRPC: every call reaches every edge,
//! answers add up across edges, the clients are told what changed with the
//! documented codes, and gRPC answers what HTTP answers (and refuses what
//! it refuses, with the same message).

use gpush_integration_tests::deploy::{Cluster, Deployment, Standalone};
use gpush_integration_tests::{WsClient, auth, client::close_code, frames};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// Which transport carries the server API calls of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Http,
    Grpc,
}

/// An HTTP answer without its `"code": "ok"`, as gRPC answers read.
fn without_code(mut answer: Value) -> Value {
    if let Some(fields) = answer.as_object_mut() {
        fields.remove("code");
    }
    answer
}

/// The next text message of `client`, as JSON.
async fn next_json(client: &mut WsClient) -> Value {
    let text = client.next_text(Duration::from_secs(5)).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", client.label()))
}

/// A call that steers connections, over `api`.
async fn post(d: &impl Deployment, api: Api, path: &str, body: Value) -> Value {
    match api {
        Api::Http => {
            let reply = d.api().post(path, body.to_string(), None).await;
            assert_eq!(reply.status, 200, "{} {path}: {}", d.name(), reply.body);
            assert_eq!(reply.json()["code"], "ok");
            without_code(reply.json())
        }
        Api::Grpc => d
            .api()
            .control_grpc(path, &body)
            .await
            .unwrap_or_else(|e| panic!("{} gRPC {path} {body}: {e}", d.name())),
    }
}

/// A question, over `api`; over gRPC it is asked over HTTP too and the
/// answers must match.
async fn get(d: &impl Deployment, api: Api, path: &str) -> Value {
    let reply = d.api().get(path).await;
    assert_eq!(reply.status, 200, "{} {path}: {}", d.name(), reply.body);
    assert_eq!(reply.json()["code"], "ok");
    let http = without_code(reply.json());
    match api {
        Api::Http => http,
        Api::Grpc => {
            let grpc = d
                .api()
                .control_grpc(path, &Value::Null)
                .await
                .unwrap_or_else(|e| panic!("{} gRPC {path}: {e}", d.name()));
            assert_eq!(grpc, http, "{} {path}: gRPC and HTTP answers", d.name());
            grpc
        }
    }
}

/// A bad call: refused over HTTP with 400 and `code`, and (with `api`
/// gRPC) over gRPC with `INVALID_ARGUMENT` and the same message.
async fn refused(d: &impl Deployment, api: Api, path: &str, body: Option<Value>, code: &str) {
    let reply = match &body {
        Some(body) => d.api().post(path, body.to_string(), None).await,
        None => d.api().get(path).await,
    };
    assert_eq!(reply.status, 400, "{path} {body:?}: {}", reply.body);
    let error = reply.json();
    assert_eq!(error["code"], code, "{path} {body:?}");
    if api == Api::Grpc {
        let status = d
            .api()
            .control_grpc(path, &body.unwrap_or(Value::Null))
            .await
            .expect_err("refused over gRPC too");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert_eq!(
            json!(status.message()),
            error["message"],
            "{path}: the same message"
        );
    }
}

/// Every call over `api`, on `d` (edges wrap around when it has fewer
/// than 3).
async fn every_call(d: &impl Deployment, api: Api) {
    let n = d.edge_count();
    // ann on every edge, bob on edge 1, an anonymous client on edge 2; all
    // in "room".
    let mut ann = Vec::new();
    for i in 0..3 {
        let mut client = d.connect(i, &format!("ann {i}")).await;
        client.must_login(&auth::hs256("ann"), "ann").await;
        client.must_subscribe("room").await;
        ann.push(client);
    }
    let mut bob = d.connect(1, "bob").await;
    bob.must_login(&auth::hs256("bob"), "bob").await;
    bob.must_subscribe("room").await;
    let mut anon = d.connect(2, "anonymous").await;
    anon.must_subscribe("room").await;

    let presence = get(d, api, "/v1/presence?topic=room").await;
    assert_eq!(presence["users"], json!({"ann": 3, "bob": 1}), "{presence}");
    assert_eq!(presence["anonymous"], 1);
    assert_eq!(presence["connections"], 5);
    assert_eq!(presence["missing"], json!([]));
    assert_eq!(presence["complete"], true, "{presence}");
    assert_eq!(presence["edges"].as_array().map(Vec::len), Some(n));
    let only = get(d, api, "/v1/presence?topic=room&uid=bob").await;
    assert_eq!(only["users"], json!({"bob": 1}), "{only}");
    let stats = get(d, api, "/v1/presence_stats?topic=room").await;
    assert_eq!(
        (&stats["users"], &stats["connections"], &stats["anonymous"]),
        (&json!(2), &json!(5), &json!(1)),
        "{stats}"
    );
    let online = get(d, api, "/v1/online?uid=ann,bob,carl").await;
    assert_eq!(
        online["online"],
        json!({"ann": 3, "bob": 1, "carl": 0}),
        "{online}"
    );
    let topics = get(d, api, "/v1/topics?prefix=ro").await;
    assert_eq!(
        topics["topics"],
        json!([{"topic": "room", "subscribers": 5}]),
        "{topics}"
    );

    // Server-side private subscribe: told with 10008, then pushes arrive.
    let reached = post(
        d,
        api,
        "/v1/subscribe",
        json!({"uid": "ann", "topic": "inbox"}),
    )
    .await;
    assert_eq!(reached["connections"], 3, "{reached}");
    for client in &mut ann {
        let told = next_json(client).await;
        assert_eq!(
            (
                &told["code"],
                &told["topic"],
                &told["private"],
                &told["keep"]
            ),
            (&json!(10008), &json!("inbox"), &json!(true), &json!(false)),
            "{told}"
        );
    }
    d.push_http("ann", "inbox", b"\"hi\"").await;
    for client in &mut ann {
        client
            .expect_push(&frames::private("inbox", b"\"hi\""))
            .await;
    }
    let reached = post(
        d,
        api,
        "/v1/unsubscribe",
        json!({"uid": "ann", "topic": "inbox"}),
    )
    .await;
    assert_eq!(reached["connections"], 3, "{reached}");
    for client in &mut ann {
        let told = next_json(client).await;
        assert_eq!(
            (&told["code"], &told["topic"]),
            (&json!(10009), &json!("inbox"))
        );
    }
    // Public, kept across reconnects.
    let body = json!({"uid": "bob", "topic": "news", "public": true, "keep": true});
    assert_eq!(post(d, api, "/v1/subscribe", body).await["connections"], 1);
    let told = next_json(&mut bob).await;
    assert_eq!(
        (&told["code"], &told["private"], &told["keep"]),
        (&json!(10008), &json!(false), &json!(true)),
        "{told}"
    );
    d.push_http("", "news", b"1").await;
    bob.expect_push(&frames::public("news", b"1")).await;
    d.push_http("ann", "inbox", b"2").await;

    // Logout: 10004 with reason "logout"; the connections stay.
    assert_eq!(
        post(d, api, "/v1/logout", json!({"uid": "ann"})).await["connections"],
        3
    );
    for client in &mut ann {
        let told = next_json(client).await;
        assert_eq!(
            (&told["code"], &told["uid"], &told["reason"]),
            (&json!(10004), &json!("ann"), &json!("logout")),
            "{told}"
        );
    }
    let online = get(d, api, "/v1/online?uid=ann").await;
    assert_eq!(online["online"], json!({"ann": 0}), "{online}");

    // Disconnect: every connection of ann closes with 4003 and the reason.
    for client in &mut ann {
        client.must_login(&auth::hs256("ann"), "ann").await;
    }
    let started = Instant::now();
    let reached = post(
        d,
        api,
        "/v1/disconnect",
        json!({"uid": "ann", "reason": "banned"}),
    )
    .await;
    assert_eq!(reached["connections"], 3, "{reached}");
    for client in &mut ann {
        let close = client.next_close(Duration::from_secs(1)).await;
        assert_eq!(close_code(&close), Some(4003), "{close:?}");
        assert_eq!(
            close.map(|c| c.reason.to_string()).as_deref(),
            Some("banned")
        );
    }
    // Measured by `gpush-bench presence`; here only bounded (1 s per
    // client after the answer, above).
    eprintln!(
        "{}: every connection closed {:?} after the call",
        d.name(),
        started.elapsed()
    );
    let stats = get(d, api, "/v1/presence_stats?topic=room").await;
    assert_eq!(stats["connections"], 2, "{stats}");
    gpush_integration_tests::client::expect_all_quiet([&mut bob, &mut anon]).await;

    // Bad calls: 400 with a JSON code (INVALID_ARGUMENT), nothing done.
    for (path, body, code) in [
        ("/v1/disconnect", json!({"uid": ""}), "invalid_uid"),
        (
            "/v1/disconnect",
            json!({"uid": "bob", "reason": "r".repeat(124)}),
            "bad_query",
        ),
        ("/v1/logout", json!({"uid": "a\u{1}"}), "invalid_uid"),
        (
            "/v1/subscribe",
            json!({"uid": "bob", "topic": ""}),
            "invalid_topic",
        ),
    ] {
        refused(d, api, path, Some(body), code).await;
    }
    for (path, code) in [
        ("/v1/presence?topic=", "invalid_topic"),
        ("/v1/presence_stats?topic=a%00b", "invalid_topic"),
        ("/v1/online?uid=", "bad_query"),
        ("/v1/topics?limit=10001", "bad_query"),
    ] {
        refused(d, api, path, None, code).await;
    }
    // What only one transport can say wrong.
    match api {
        Api::Http => {
            for (path, body) in [
                ("/v1/disconnect", json!({})),
                ("/v1/subscribe", json!({"uid": "bob", "topic": "t", "x": 1})),
            ] {
                let reply = d.api().post(path, body.to_string(), None).await;
                assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
                assert_eq!(reply.json()["code"], "bad_json", "{path} {body}");
            }
            // A missing field (gRPC has none: it reads as empty), and a
            // limit of 0 (gRPC's "none given").
            for path in ["/v1/presence", "/v1/topics?limit=0"] {
                let reply = d.api().get(path).await;
                assert_eq!(reply.status, 400, "{path}: {}", reply.body);
                assert_eq!(reply.json()["code"], "bad_query", "{path}: {}", reply.body);
            }
        }
        Api::Grpc => {
            // 1,001 uids: refused before they are decoded.
            let uids: Vec<String> = (0..1001).map(|n| format!("u{n}")).collect();
            let request = gpush_proto::v1::OnlineRequest { uids };
            let status = d
                .api()
                .grpc()
                .online(request)
                .await
                .expect_err("1,001 uids");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
    bob.must_subscribe("still-here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_a_three_edge_cluster() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    every_call(&cluster, Api::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_standalone() {
    gpush_integration_tests::init_tracing();
    let standalone = Standalone::start(|_| {}).await;
    every_call(&standalone, Api::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_over_grpc_on_a_three_edge_cluster() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    every_call(&cluster, Api::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_over_grpc_standalone() {
    gpush_integration_tests::init_tracing();
    let standalone = Standalone::start(|_| {}).await;
    every_call(&standalone, Api::Grpc).await;
}

const API_KEY: &str = "control-key";

/// Every server API method over gRPC: UNAUTHENTICATED without the key
/// (and nothing done: the user stays connected), answered with it.
async fn grpc_needs_the_key(d: &impl Deployment) {
    let mut ann = d.connect(0, "ann").await;
    ann.must_login(&auth::hs256("ann"), "ann").await;
    ann.must_subscribe("room").await;
    let calls = [
        ("/v1/disconnect", json!({"uid": "ann"})),
        ("/v1/logout", json!({"uid": "ann"})),
        ("/v1/subscribe", json!({"uid": "ann", "topic": "t"})),
        (
            "/v1/unsubscribe",
            json!({"uid": "ann", "topic": "room", "public": true}),
        ),
        ("/v1/presence?topic=room", Value::Null),
        ("/v1/presence_stats?topic=room", Value::Null),
        ("/v1/online?uid=ann", Value::Null),
        ("/v1/topics", Value::Null),
    ];
    let without = d.api().clone().with_api_key(None);
    let wrong = d.api().clone().with_api_key(Some("wrong".into()));
    for (path, body) in &calls {
        for api in [&without, &wrong] {
            let status = api
                .control_grpc(path, body)
                .await
                .expect_err("refused without the key");
            assert_eq!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
        }
        if body.is_null() {
            let reply = d.api().get(path).await;
            assert_eq!(reply.status, 401, "HTTP {path}: {}", reply.body);
        }
    }
    ann.expect_no_push(gpush_integration_tests::QUIET).await;
    let keyed = d.api().clone().with_api_key(Some(API_KEY.into()));
    let presence = keyed
        .control_grpc("/v1/presence?topic=room", &Value::Null)
        .await
        .expect("with the key");
    assert_eq!(presence["users"], json!({"ann": 1}), "{presence}");
    let reached = keyed
        .control_grpc("/v1/logout", &json!({"uid": "ann"}))
        .await
        .expect("with the key");
    assert_eq!(reached["connections"], 1, "{reached}");
    assert_eq!(next_json(&mut ann).await["code"], 10004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_the_api_key() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start_with(3, |c| c.push.api_key = Some(API_KEY.into()), |_| {}).await;
    grpc_needs_the_key(&cluster).await;
    drop(cluster);
    let standalone = Standalone::start(|c| c.push.api_key = Some(API_KEY.into())).await;
    grpc_needs_the_key(&standalone).await;
}

/// An answer over `push.control_max_bytes` is refused (413
/// `answer_too_large`, gRPC `RESOURCE_EXHAUSTED`) instead of being held;
/// smaller questions on the same topic are answered.
async fn answers_over_the_bound_are_refused(d: &impl Deployment) {
    // About 8 KiB of answers: over the 4 KiB bound.
    let mut clients = Vec::new();
    for i in 0..200 {
        let uid = format!("user-with-a-rather-long-name-{i:03}");
        let mut client = d.connect(i, &uid).await;
        client.must_login(&auth::hs256(&uid), &uid).await;
        client.must_subscribe("crowded").await;
        clients.push(client);
    }
    for path in [
        "/v1/presence?topic=crowded",
        "/v1/presence_stats?topic=crowded",
    ] {
        let reply = d.api().get(path).await;
        assert_eq!(reply.status, 413, "{} {path}: {}", d.name(), reply.body);
        assert_eq!(reply.json()["code"], "answer_too_large", "{path}");
        let status = d
            .api()
            .control_grpc(path, &Value::Null)
            .await
            .expect_err("refused over gRPC too");
        assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
    }
    let one = get(
        d,
        Api::Http,
        "/v1/presence?topic=crowded&uid=user-with-a-rather-long-name-007",
    )
    .await;
    assert_eq!(
        one["users"],
        json!({"user-with-a-rather-long-name-007": 1}),
        "{one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_control_max_bytes_are_refused() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start_with(3, |c| c.push.control_max_bytes = 4096, |_| {}).await;
    answers_over_the_bound_are_refused(&cluster).await;
    drop(cluster);
    let standalone = Standalone::start(|c| c.push.control_max_bytes = 4096).await;
    answers_over_the_bound_are_refused(&standalone).await;
}

//! The server API (disconnect, logout, subscribe, unsubscribe, presence,
//! presence_stats, online, topics) against a three-edge cluster and a
//! standalone edge: every call reaches every edge, answers add up across
//! edges, and the clients are told what changed with the documented codes.

use gpush_integration_tests::deploy::{Cluster, Deployment, Standalone};
use gpush_integration_tests::{WsClient, auth, client::close_code, frames};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// The next text message of `client`, as JSON.
async fn next_json(client: &mut WsClient) -> Value {
    let text = client.next_text(Duration::from_secs(5)).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", client.label()))
}

async fn post(d: &impl Deployment, path: &str, body: Value) -> Value {
    let reply = d.api().post(path, body.to_string(), None).await;
    assert_eq!(reply.status, 200, "{} {path}: {}", d.name(), reply.body);
    reply.json()
}

async fn get(d: &impl Deployment, path: &str) -> Value {
    let reply = d.api().get(path).await;
    assert_eq!(reply.status, 200, "{} {path}: {}", d.name(), reply.body);
    reply.json()
}

/// Every call, on `d` (edges wrap around when it has fewer than 3).
async fn every_call(d: &impl Deployment) {
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

    let presence = get(d, "/v1/presence?topic=room").await;
    assert_eq!(presence["users"], json!({"ann": 3, "bob": 1}), "{presence}");
    assert_eq!(presence["anonymous"], 1);
    assert_eq!(presence["connections"], 5);
    assert_eq!(presence["missing"], json!([]));
    assert_eq!(presence["complete"], true, "{presence}");
    assert_eq!(presence["edges"].as_array().map(Vec::len), Some(n));
    let only = get(d, "/v1/presence?topic=room&uid=bob").await;
    assert_eq!(only["users"], json!({"bob": 1}), "{only}");
    let stats = get(d, "/v1/presence_stats?topic=room").await;
    assert_eq!(
        (&stats["users"], &stats["connections"], &stats["anonymous"]),
        (&json!(2), &json!(5), &json!(1)),
        "{stats}"
    );
    let online = get(d, "/v1/online?uid=ann,bob,carl").await;
    assert_eq!(
        online["online"],
        json!({"ann": 3, "bob": 1, "carl": 0}),
        "{online}"
    );
    let topics = get(d, "/v1/topics?prefix=ro").await;
    assert_eq!(
        topics["topics"],
        json!([{"topic": "room", "subscribers": 5}]),
        "{topics}"
    );

    // Server-side private subscribe: told with 10008, then pushes arrive.
    let reached = post(d, "/v1/subscribe", json!({"uid": "ann", "topic": "inbox"})).await;
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
    assert_eq!(post(d, "/v1/subscribe", body).await["connections"], 1);
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
        post(d, "/v1/logout", json!({"uid": "ann"})).await["connections"],
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
    let online = get(d, "/v1/online?uid=ann").await;
    assert_eq!(online["online"], json!({"ann": 0}), "{online}");

    // Disconnect: every connection of ann closes with 4003 and the reason.
    for client in &mut ann {
        client.must_login(&auth::hs256("ann"), "ann").await;
    }
    let started = Instant::now();
    let reached = post(
        d,
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
    let stats = get(d, "/v1/presence_stats?topic=room").await;
    assert_eq!(stats["connections"], 2, "{stats}");
    gpush_integration_tests::client::expect_all_quiet([&mut bob, &mut anon]).await;

    // Bad calls: 400 with a JSON code, nothing done.
    for (path, body, code) in [
        ("/v1/disconnect", json!({}), "bad_json"),
        ("/v1/disconnect", json!({"uid": ""}), "invalid_uid"),
        (
            "/v1/subscribe",
            json!({"uid": "bob", "topic": "t", "x": 1}),
            "bad_json",
        ),
        ("/v1/logout", json!({"uid": "a\u{1}"}), "invalid_uid"),
    ] {
        let reply = d.api().post(path, body.to_string(), None).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        assert_eq!(reply.json()["code"], code, "{path} {body}");
    }
    for (path, code) in [
        ("/v1/presence", "bad_query"),
        ("/v1/online?uid=", "bad_query"),
        ("/v1/topics?limit=0", "bad_query"),
    ] {
        let reply = d.api().get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.json()["code"], code, "{path}");
    }
    bob.must_subscribe("still-here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_a_three_edge_cluster() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    every_call(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_standalone() {
    gpush_integration_tests::init_tracing();
    let standalone = Standalone::start(|_| {}).await;
    every_call(&standalone).await;
}

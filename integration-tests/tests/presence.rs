//! Presence (issue 13) against a three-edge cluster and a standalone edge:
//! join/leave pushes (10005, 10006) when a user's first connection
//! anywhere subscribes and its last one goes, coalesced per window (at
//! most `max_changes`, else one 10010), request code 7 (20005, or 30007),
//! an edge that stops, freezes or dies taking its users along, user
//! online/offline events on NATS and in JetStream, the cluster-wide
//! `max_connections_per_user`, and the standalone events webhook with its
//! retries.

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use gpush_edge::EdgeConfig;
use gpush_edge::config::{PresenceRule, UserLimitScope};
use gpush_integration_tests::deploy::{Cluster, Deployment, Standalone};
use gpush_integration_tests::procs::scratch_dir;
use gpush_integration_tests::{EdgeProcess, TIMEOUT, WsClient, auth, free_port, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The coalescing window of the test edges.
const WINDOW: Duration = Duration::from_millis(200);
/// Their heartbeat: an edge silent for 900 ms is dead.
const HEARTBEAT: Duration = Duration::from_millis(300);
const MAX_CHANGES: usize = 3;
/// Long enough for a change to reach every edge's subscribers (two
/// windows) with room to spare: a push that was due has come by then.
const SETTLED: Duration = Duration::from_secs(1);

fn rule(prefix: &str, events: bool, query: bool) -> PresenceRule {
    PresenceRule {
        prefix: prefix.into(),
        events,
        query,
    }
}

/// `chat.*`: pushes and queries; `quiet.*`: queries only; `blind.*`:
/// pushes only.
fn with_presence(config: &mut EdgeConfig) {
    config.presence.interval = WINDOW;
    config.presence.heartbeat = HEARTBEAT;
    config.presence.max_changes = MAX_CHANGES;
    config.presence.topics = vec![
        rule("chat.", true, true),
        rule("quiet.", false, true),
        rule("blind.", true, false),
    ];
}

/// The next presence push (or other non-push, non-reply text) of `client`.
async fn next_json(client: &mut WsClient, within: Duration) -> Value {
    let text = client.next_text(within).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", client.label()))
}

/// Waits for `{"code":code,"topic":topic,"uid":uid}`.
async fn expect_change(client: &mut WsClient, code: u64, topic: &str, uid: &str) {
    let got = next_json(client, TIMEOUT).await;
    assert_eq!(
        got,
        json!({"code": code, "topic": topic, "uid": uid}),
        "{}",
        client.label()
    );
}

/// Request code 7.
async fn query(client: &mut WsClient, topic: &str) -> Value {
    client
        .request_value(json!({"code": 7, "topic": topic}))
        .await
}

/// Asks `client`'s edge for `topic`'s presence until it is `users` with
/// `anonymous` connections (changes take up to two windows to cross).
async fn until_presence(client: &mut WsClient, topic: &str, users: Value, anonymous: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = query(client, topic).await;
        assert_eq!(reply["code"], 20005, "{}: {reply}", client.label());
        if reply["users"] == users && reply["anonymous"] == anonymous {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: presence of {topic} is {reply}, expected users {users} and {anonymous} anonymous",
            client.label()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing arrives on any of `clients` for [`SETTLED`].
async fn expect_quiet(clients: &mut [&mut WsClient]) {
    futures_util::future::join_all(clients.iter_mut().map(|c| c.expect_no_push(SETTLED))).await;
}

/// A connection to edge `i` logged in as `uid` and subscribed to `topic`.
async fn member(d: &impl Deployment, i: usize, uid: &str, topic: &str) -> WsClient {
    let mut client = d.connect(i, uid).await;
    client.must_login(&auth::hs256(uid), uid).await;
    client.must_subscribe(topic).await;
    client
}

/// Everything a client sees of presence, on `d` (edges wrap around).
async fn every_case(d: &impl Deployment) {
    // Anonymous watchers on edges 0 and 1, a MessagePack one on edge 2.
    let mut w0 = d.connect(0, "watcher").await;
    w0.must_subscribe("chat.room").await;
    let mut w1 = d.connect(1, "watcher").await;
    w1.must_subscribe("chat.room").await;
    let mut wm = WsClient::connect_with_protocol(&d.ws_url(2), "gpush.msgpack")
        .await
        .with_label(format!("{} msgpack watcher", d.name()));
    wm.must_subscribe("chat.room").await;
    until_presence(&mut w0, "chat.room", json!({}), 3).await;

    // ann's first connection (edge 1): every watcher is told.
    let mut ann1 = member(d, 1, "ann", "chat.room").await;
    expect_change(&mut w0, 10005, "chat.room", "ann").await;
    expect_change(&mut w1, 10005, "chat.room", "ann").await;
    let pushed = wm.next_msgpack(TIMEOUT).await.to_json();
    assert_eq!(
        pushed,
        Some(json!({"code": 10005, "topic": "chat.room", "uid": "ann"})),
        "MessagePack watcher"
    );
    // Her second connection (edge 2): nobody is told.
    let ann2 = member(d, 2, "ann", "chat.room").await;
    expect_quiet(&mut [&mut w0, &mut w1, &mut wm]).await;
    until_presence(&mut w0, "chat.room", json!({"ann": 2}), 3).await;
    let reply = query(&mut wm, "chat.room").await;
    assert_eq!(
        (&reply["code"], &reply["users"], &reply["message"]),
        (&json!(20005), &json!({"ann": 2}), &json!("presence")),
        "MessagePack query: {reply}"
    );
    // The first one leaves the topic: she is still there.
    let reply = ann1.unsubscribe("chat.room").await;
    ann1.assert_code(&reply, 20002, "unsubscribe");
    expect_quiet(&mut [&mut w0, &mut w1]).await;
    until_presence(&mut w1, "chat.room", json!({"ann": 1}), 3).await;
    // The last one goes (the connection drops): she left.
    drop(ann2);
    expect_change(&mut w0, 10006, "chat.room", "ann").await;
    expect_change(&mut w1, 10006, "chat.room", "ann").await;
    // Back, then logged out (code 4): joined, then left.
    ann1.must_subscribe("chat.room").await;
    expect_change(&mut w0, 10005, "chat.room", "ann").await;
    expect_change(&mut w1, 10005, "chat.room", "ann").await;
    let reply = ann1.logout().await;
    ann1.assert_code(&reply, 20004, "logout");
    expect_change(&mut w0, 10006, "chat.room", "ann").await;
    expect_change(&mut w1, 10006, "chat.room", "ann").await;
    until_presence(&mut w0, "chat.room", json!({}), 4).await;

    // Ten users join at once (on one edge, so within at most two of its
    // windows, and within at most two of every other edge's): no window
    // passes more than max_changes of them one by one, so at least one
    // window is a single 10010.
    let mut joiners = Vec::new();
    for n in 0..10 {
        let mut client = d.connect(0, &format!("joiner {n}")).await;
        let uid = format!("j{n}");
        client.must_login(&auth::hs256(&uid), &uid).await;
        joiners.push(client);
    }
    let subscribed =
        futures_util::future::join_all(joiners.iter_mut().map(|c| c.subscribe("chat.room"))).await;
    for reply in subscribed {
        assert_eq!(reply["code"], 20001, "{reply}");
    }
    let everyone: Value = (0..10).map(|n| (format!("j{n}"), json!(1))).collect();
    for watcher in [&mut w0, &mut w1] {
        let mut overflows = 0;
        let mut one_by_one = BTreeSet::new();
        // Until they stop coming.
        while let Ok(push) = tokio::time::timeout(SETTLED, next_json(watcher, SETTLED * 2)).await {
            match push["code"].as_u64() {
                Some(10010) => {
                    assert_eq!(push, json!({"code": 10010, "topic": "chat.room"}));
                    overflows += 1;
                }
                Some(10005) => {
                    let uid = push["uid"].as_str().unwrap_or_default().to_owned();
                    assert!(everyone.get(&uid).is_some(), "{push}");
                    one_by_one.insert(uid);
                }
                _ => panic!("{}: unexpected {push}", watcher.label()),
            }
        }
        assert!(
            overflows >= 1 && one_by_one.len() <= 10 - (MAX_CHANGES + 1),
            "{}: {overflows} 10010s and {one_by_one:?} one by one",
            watcher.label()
        );
        until_presence(watcher, "chat.room", everyone.clone(), 4).await;
    }

    // Refusals: 30007, the connection stays.
    let reply = query(&mut w0, "news").await;
    assert_eq!(reply["code"], 30007, "{reply}");
    assert!(
        reply["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not enabled")),
        "{reply}"
    );
    let reply = query(&mut w0, "chat.other").await;
    assert_eq!(
        (
            &reply["code"],
            &reply["message"],
            &reply["detail"],
            &reply["topic"]
        ),
        (
            &json!(30007),
            &json!("not allowed"),
            &json!("subscribe to the topic first"),
            &json!("chat.other")
        ),
        "{reply}"
    );
    w0.must_subscribe("blind.x").await;
    let reply = query(&mut w0, "blind.x").await;
    assert_eq!(reply["code"], 30007, "query = false: {reply}");
    let reply = w0.request_value(json!({"code": 7})).await;
    assert_eq!(reply["code"], 30001, "no topic: {reply}");
    // A topic whose rule answers queries but pushes nothing.
    w0.must_subscribe("quiet.x").await;
    let _bob = member(d, 1, "bob", "quiet.x").await;
    until_presence(&mut w0, "quiet.x", json!({"bob": 1}), 1).await;
    w0.expect_no_push(SETTLED).await;
    drop(joiners);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_a_three_edge_cluster() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start(3, with_presence).await;
    every_case(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_standalone() {
    gpush_integration_tests::init_tracing();
    let standalone = Standalone::start(with_presence).await;
    every_case(&standalone).await;
}

/// A real `gpush-edge` in `cluster`, as `node`, with the test presence
/// settings.
async fn edge_process(cluster: &Cluster, node: &str) -> EdgeProcess {
    let dir = scratch_dir("presence-edge");
    let ws_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"nats_urls = ["{nats}"]
etcd_endpoints = ["{etcd}"]
node_id = "{node}"
public_url = "ws://{ws_addr}/ws"
lease_ttl = "3s"
shutdown_grace = "2s"
[auth]
jwt_secret = "{secret}"
[presence]
interval = "{window}ms"
heartbeat = "{heartbeat}ms"
max_changes = {MAX_CHANGES}
topics = [{{ prefix = "chat.", events = true, query = true }}]
"#,
        nats = cluster.nats.url(),
        etcd = cluster.etcd.url(),
        secret = auth::JWT_SECRET,
        window = WINDOW.as_millis(),
        heartbeat = HEARTBEAT.as_millis(),
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, config).expect("write the edge config");
    let args: Vec<String> = [
        "--config",
        path.to_str().expect("utf-8"),
        "--ws-addr",
        &ws_addr,
    ]
    .map(str::to_owned)
    .to_vec();
    EdgeProcess::spawn(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_stops_freezes_or_dies_takes_its_users_along() {
    gpush_integration_tests::init_tracing();
    let mut cluster = Cluster::start(3, with_presence).await;
    let mut watcher = cluster.connect(0, "watcher").await;
    watcher.must_subscribe("chat.live").await;

    // An edge that stops says so: its users leave at once.
    let _fay = member(&cluster, 2, "fay", "chat.live").await;
    expect_change(&mut watcher, 10005, "chat.live", "fay").await;
    let stopping = cluster.edges.remove(2);
    stopping.shutdown().await.expect("edge 2 stops cleanly");
    expect_change(&mut watcher, 10006, "chat.live", "fay").await;

    // A frozen edge: its users leave after three of its heartbeats, and
    // come back when it wakes (it tells its whole state again).
    let mut process = edge_process(&cluster, "edge-frozen").await;
    let mut dave = WsClient::connect(&process.ws_url())
        .await
        .with_label("dave (edge process)");
    dave.must_login(&auth::hs256("dave"), "dave").await;
    dave.must_subscribe("chat.live").await;
    expect_change(&mut watcher, 10005, "chat.live", "dave").await;
    process.signal("STOP");
    let frozen = Instant::now();
    expect_change(&mut watcher, 10006, "chat.live", "dave").await;
    eprintln!("a frozen edge's user left after {:?}", frozen.elapsed());
    process.signal("CONT");
    expect_change(&mut watcher, 10005, "chat.live", "dave").await;
    until_presence(&mut watcher, "chat.live", json!({"dave": 1}), 1).await;

    // A killed edge: the same, for good.
    process.sigkill();
    expect_change(&mut watcher, 10006, "chat.live", "dave").await;
    until_presence(&mut watcher, "chat.live", json!({}), 1).await;
}

/// One scrape of an edge's `/metrics`: the value of `name` (no labels).
async fn metric(ws_addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{ws_addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until every edge of `cluster` knows the others alive and has its
/// presence groups seeded.
async fn until_settled(cluster: &Cluster) {
    let others = (cluster.edges.len() - 1) as f64;
    for edge in &cluster.edges {
        let addr = edge.ws_addr();
        wait_for(TIMEOUT, "presence settled", || async move {
            let edges = metric(addr, "gpush_edge_presence_edges").await;
            let pending = metric(addr, "gpush_edge_presence_pending").await;
            if edges == Some(others) && pending == Some(0.0) {
                Ok(())
            } else {
                Err(format!("{addr}: edges {edges:?}, pending {pending:?}"))
            }
        })
        .await;
    }
}

/// The next online event on `events`.
async fn next_event(events: &mut async_nats::Subscriber) -> Value {
    let message = tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(events))
        .await
        .expect("an online event in time")
        .expect("subscription open");
    serde_json::from_slice(&message.payload).expect("an event is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_events_once_per_user_transition_kept_in_jetstream_and_the_cluster_user_limit() {
    gpush_integration_tests::init_tracing();
    let cluster = Cluster::start(3, |config| {
        with_presence(config);
        config.events.online = true;
        config.max_connections_per_user = 2;
        config.max_connections_per_user_scope = UserLimitScope::Cluster;
    })
    .await;
    until_settled(&cluster).await;
    let nats = async_nats::connect(cluster.nats.url())
        .await
        .expect("connect to NATS");
    let mut events = nats
        .subscribe("gpush.events.online")
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");

    let mut carl0 = cluster.connect(0, "carl").await;
    carl0.must_login(&auth::hs256("carl"), "carl").await;
    let event = next_event(&mut events).await;
    assert_eq!(
        (&event["uid"], &event["online"]),
        (&json!("carl"), &json!(true)),
        "{event}"
    );
    assert!(event["at"].as_u64().is_some_and(|at| at > 0), "{event}");
    // A second connection on another edge: no event.
    let mut carl1 = cluster.connect(1, "carl").await;
    carl1.must_login(&auth::hs256("carl"), "carl").await;
    let quiet = tokio::time::timeout(SETTLED, futures_util::StreamExt::next(&mut events)).await;
    assert!(
        quiet.is_err(),
        "no event for a second connection: {quiet:?}"
    );

    // The cluster-wide limit: carl has two connections (edges 0 and 1);
    // a third is refused on any edge.
    for edge in [2, 0] {
        let mut carl = cluster.connect(edge, "carl, one too many").await;
        let reply = carl.login(&auth::hs256("carl")).await;
        assert_eq!(reply["code"], 30005, "{reply}");
        assert!(
            reply["detail"]
                .as_str()
                .is_some_and(|d| d.contains("in the cluster")),
            "{reply}"
        );
    }

    // The first goes: no event; the last goes: offline.
    drop(carl0);
    let quiet = tokio::time::timeout(SETTLED, futures_util::StreamExt::next(&mut events)).await;
    assert!(
        quiet.is_err(),
        "no event while carl is still online: {quiet:?}"
    );
    let reply = carl1.logout().await;
    carl1.assert_code(&reply, 20004, "logout");
    let event = next_event(&mut events).await;
    assert_eq!(
        (&event["uid"], &event["online"]),
        (&json!("carl"), &json!(false)),
        "{event}"
    );
    let quiet = tokio::time::timeout(SETTLED, futures_util::StreamExt::next(&mut events)).await;
    assert!(quiet.is_err(), "one event per transition: {quiet:?}");

    // History is on: the stream GPUSH_EVENTS kept both.
    let js = async_nats::jetstream::new(nats.clone());
    let (first, last) = wait_for(TIMEOUT, "two events stored", || {
        let js = js.clone();
        async move {
            let mut stream = js
                .get_stream("GPUSH_EVENTS")
                .await
                .map_err(|e| e.to_string())?;
            let state = &stream.info().await.map_err(|e| e.to_string())?.state;
            if state.messages == 2 {
                Ok((state.first_sequence, state.last_sequence))
            } else {
                Err(format!("{} events stored", state.messages))
            }
        }
    })
    .await;
    let stream = js.get_stream("GPUSH_EVENTS").await.expect("events stream");
    let stored = |seq: u64| {
        let stream = stream.clone();
        async move {
            let message = stream.get_raw_message(seq).await.expect("stored event");
            assert_eq!(message.subject.as_str(), "gpush.events.online");
            serde_json::from_slice::<Value>(&message.payload).expect("JSON")
        }
    };
    assert_eq!(stored(first).await["online"], true);
    assert_eq!(stored(last).await["online"], false);
}

/// What the events webhook received: every request's body, in order.
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<Value>>,
}

/// Answers 500 to its first request, 200 to the others.
async fn events_webhook(State(received): State<Arc<Received>>, body: Bytes) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut bodies = received.bodies.lock().unwrap_or_else(|e| e.into_inner());
    bodies.push(body);
    if bodies.len() == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_online_events_reach_the_webhook_in_batches_with_retries() {
    gpush_integration_tests::init_tracing();
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/events", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/events", axum::routing::post(events_webhook))
        .with_state(received.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let standalone = Standalone::start(|config| {
        with_presence(config);
        config.events.online = true;
        config.events.webhook_url = Some(url);
    })
    .await;
    let bodies = || {
        received
            .bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    let events_of = |body: &Value| -> Vec<(String, bool)> {
        body["events"]
            .as_array()
            .expect("a batch of events")
            .iter()
            .map(|e| {
                (
                    e["uid"].as_str().unwrap_or_default().to_owned(),
                    e["online"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    };
    // Two users online in one window: one batch, refused, then retried.
    let mut erin = standalone.connect(0, "erin").await;
    let mut finn = standalone.connect(0, "finn").await;
    let (erin_token, finn_token) = (auth::hs256("erin"), auth::hs256("finn"));
    let (a, b) = tokio::join!(erin.login(&erin_token), finn.login(&finn_token));
    assert_eq!(
        (a["code"].as_u64(), b["code"].as_u64()),
        (Some(20003), Some(20003))
    );
    let first_two = wait_for(TIMEOUT, "the batch retried after a 500", || async {
        let bodies = bodies();
        if bodies.len() >= 2 {
            Ok(bodies)
        } else {
            Err(format!("{} requests", bodies.len()))
        }
    })
    .await;
    // The refused batch comes again first (with what was queued since).
    let (refused, retried) = (events_of(&first_two[0]), events_of(&first_two[1]));
    assert_eq!(retried[..refused.len()], refused[..], "{first_two:?}");
    let mut online = wait_for(TIMEOUT, "erin and finn online", || async {
        let mut online: Vec<(String, bool)> = bodies()[1..].iter().flat_map(&events_of).collect();
        online.sort();
        if online.len() >= 2 {
            Ok(online)
        } else {
            Err(format!("{online:?}"))
        }
    })
    .await;
    online.dedup();
    assert_eq!(
        online,
        [("erin".to_owned(), true), ("finn".to_owned(), true)],
        "{:?}",
        bodies()
    );
    let delivered = bodies().len();
    // A second connection of erin: nothing; her last one goes: offline.
    let mut erin2 = standalone.connect(0, "erin 2").await;
    erin2.must_login(&auth::hs256("erin"), "erin").await;
    drop(erin);
    drop(erin2);
    let offline = wait_for(TIMEOUT, "erin offline", || async {
        let events: Vec<(String, bool)> =
            bodies()[delivered..].iter().flat_map(&events_of).collect();
        if events.is_empty() {
            Err("no more events yet".to_owned())
        } else {
            Ok(events)
        }
    })
    .await;
    assert_eq!(offline, [("erin".to_owned(), false)]);
    drop(finn);
    server.abort();
}

/// A topic's last subscriber on an edge leaves and a new one comes within
/// the same window (a long one here, so the gap falls inside it): the
/// edge dropped the topic's presence subject with the topic's, so it must
/// seed the topic's group again, subscribing the subject anew, and hear
/// the other edges' changes after the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_within_a_window_keeps_hearing_the_other_edges() {
    gpush_integration_tests::init_tracing();
    let window = Duration::from_secs(3);
    let cluster = Cluster::start(2, |config| {
        with_presence(config);
        config.presence.interval = window;
    })
    .await;
    let mut ann = member(&cluster, 0, "ann", "chat.x").await;
    until_presence(&mut ann, "chat.x", json!({"ann": 1}), 0).await;
    // A window passes: the group is seeded and settled.
    tokio::time::sleep(window + WINDOW).await;
    let reply = ann.unsubscribe("chat.x").await;
    assert_eq!(reply["code"], 20002, "{reply}");
    let mut watcher = cluster.connect(0, "watcher").await;
    watcher.must_subscribe("chat.x").await;
    let _bob = member(&cluster, 1, "bob", "chat.x").await;
    until_presence(&mut watcher, "chat.x", json!({"bob": 1}), 1).await;
}

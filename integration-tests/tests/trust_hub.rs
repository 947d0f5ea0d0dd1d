//! Defects of the hub and the bus found by reading the code (issue
//! "Trust"), each reproduced against the real servers: no bound on the
//! distinct topics of an edge, names too long for a NATS subject, an edge
//! that froze while NATS was away, an envelope route trusted over the
//! subject it came on, and a standalone push queue bounded in calls only.

use bytes::Bytes;
use futures_util::future::join_all;
use gpush_common::subject::topic_bucket;
use gpush_common::{Push, Subjects, envelope};
use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::frames::code;
use gpush_integration_tests::{
    Cluster, Deployment, PushApi, PushMsg, QUIET, Standalone, TIMEOUT, Via, WsClient, auth,
    wait_for,
};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// A client subscribing to a topic new to an edge that serves `max_topics`
/// already is refused with 30005, saying why; topics already served still
/// take subscribers, and a topic that empties makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_topics_per_edge_are_capped() {
    let d = Standalone::start(|c| c.max_topics = 3).await;
    let mut a = d.connect(0, "a").await;
    for topic in ["t1", "t2", "t3"] {
        a.must_subscribe(topic).await;
    }
    let mut b = d.connect(0, "b").await;
    let refused = b.subscribe("t4").await;
    b.assert_code(&refused, code::LIMIT_REACHED, "a fourth topic");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("3 distinct topics"), "{refused}");
    b.must_subscribe("t1").await;
    a.unsubscribe("t3").await;
    b.must_subscribe("t4").await;
    d.push_http("", "t4", b"\"room again\"").await;
    b.expect_push(&json!({"code": code::PUSH_PUBLIC, "topic": "t4", "data": "room again"}))
        .await;
}

/// Names are escaped into NATS subjects at up to 3 bytes per byte; a
/// subject over NATS's control-line limit breaks the connection on every
/// reconnect. Both binaries refuse a `max_name_len` that allows one.
#[test]
fn a_max_name_len_too_long_for_nats_subjects_is_refused() {
    let edge = |max_name_len, prefix: &str| EdgeConfig {
        max_name_len,
        nats: gpush_common::config::sections::NatsConfig {
            subject_prefix: prefix.to_owned(),
            ..Default::default()
        },
        ..EdgeConfig::default()
    };
    assert!(edge(1276, "gpush").validate().is_ok());
    let error = edge(1400, "gpush")
        .validate()
        .expect_err("1400 bytes")
        .to_string();
    assert!(error.contains("max_name_len must be <= 1276"), "{error}");
    // A longer prefix leaves less room.
    let long_prefix = "a-tenant-with-a-long-name.gpush";
    assert!(edge(1276, long_prefix).validate().is_err());
    let mut ingress = IngressConfig::default();
    ingress.push.max_name_len = 1400;
    let error = ingress.validate().expect_err("1400 bytes").to_string();
    assert!(
        error.contains("push.max_name_len must be <= 1276"),
        "{error}"
    );
}

/// Sends subscribe requests for every topic without waiting, then waits
/// for all their replies; returns the codes seen other than 20001.
async fn subscribe_all(client: &mut WsClient, topics: &[String]) -> Vec<serde_json::Value> {
    for topic in topics {
        client
            .send_json(&json!({"code": code::SUBSCRIBE, "topic": topic}))
            .await;
    }
    let mut refused = Vec::new();
    for _ in topics {
        let reply = client.next_reply(Duration::from_secs(30)).await;
        if reply["code"] != code::SUBSCRIBED {
            refused.push(reply);
        }
    }
    refused
}

/// While NATS is away the client library's subscribe blocks once its
/// command buffer (2,048) is full. The edge must keep answering every
/// client, and subscribe to everything asked for meanwhile once NATS is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_stays_responsive_while_nats_is_away() {
    const CLIENTS: usize = 35;
    const PER_CLIENT: usize = 200;
    let mut d = Cluster::start(1, |c| {
        c.max_subscriptions = PER_CLIENT;
        c.request_rate = 0;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(d.connect(0, &format!("subscriber {i}")).await);
    }
    let mut probe = d.connect(0, "probe").await;
    d.nats.stop();

    let topics: Vec<Vec<String>> = (0..CLIENTS)
        .map(|i| (0..PER_CLIENT).map(|j| format!("away-{i}-{j}")).collect())
        .collect();
    // Topics are subscribed by bucket: every bucket of these topics.
    let buckets: HashSet<String> = topics
        .iter()
        .flatten()
        .map(|topic| Subjects::default().topic_bucket(topic_bucket(topic)))
        .collect();
    let mass = tokio::spawn(async move {
        let refused = join_all(
            clients
                .iter_mut()
                .zip(&topics)
                .map(|(c, topics)| subscribe_all(c, topics)),
        )
        .await;
        (clients, refused)
    });
    // Other clients' requests are answered within a second all along.
    let mut probes = 0;
    while !mass.is_finished() {
        probes += 1;
        let topic = format!("probe-{probes}");
        let answered = tokio::time::timeout(Duration::from_secs(1), async {
            probe.send_text("ping").await;
            assert_eq!(probe.next_text(TIMEOUT).await, "pong");
            probe.subscribe(&topic).await
        })
        .await;
        let reply = answered
            .unwrap_or_else(|_| panic!("probe {probes}: no answer within 1 s while NATS is away"));
        probe.assert_code(&reply, code::SUBSCRIBED, &topic);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut clients, refused) = tokio::time::timeout(Duration::from_secs(60), mass)
        .await
        .expect("every subscribe answered")
        .expect("subscribers");
    assert!(
        refused.iter().all(Vec::is_empty),
        "subscribes refused: {refused:?}"
    );

    d.nats.restart().await;
    d.nats
        .wait_subscriptions(
            Duration::from_secs(30),
            "the bucket of every topic asked for while NATS was away",
            |subjects| buckets.iter().all(|b| subjects.contains(b)),
        )
        .await;
    let last = &mut clients[CLIENTS - 1];
    let topic = format!("away-{}-{}", CLIENTS - 1, PER_CLIENT - 1);
    let back = [PushMsg::public(&topic, "\"back\"")];
    wait_for(TIMEOUT, "ingress back on NATS", || {
        d.api().try_send(Via::Http, &back)
    })
    .await;
    last.expect_push(&json!({"code": code::PUSH_PUBLIC, "topic": topic, "data": "back"}))
        .await;
}

/// The value of counter `name` in an edge's `/metrics`.
async fn edge_counter(ws_addr: std::net::SocketAddr, name: &str) -> Result<u64, String> {
    let text = reqwest::get(format!("http://{ws_addr}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

/// A publisher that may publish on topic subjects (`gpush.t.>`) puts a
/// private push for alice, and an everyone push, on a topic subject: the
/// edge must deliver neither, and count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_route_must_match_its_subject() {
    let d = Cluster::start(1, |_| {}).await;
    let mut alice = d.connect(0, "alice").await;
    alice.must_login(&auth::hs256("alice"), "alice").await;
    alice.must_sub_private("inbox").await;
    let mut reader = d.connect(0, "news reader").await;
    reader.must_subscribe("news").await;

    let nats = async_nats::connect(d.nats.url()).await.expect("NATS");
    let subject = Subjects::default().topic("news");
    let forged = [
        Push::new("alice", "inbox", Bytes::from_static(b"\"forged private\"")),
        Push::new("alice", "", Bytes::from_static(b"\"forged user-wide\"")),
        Push::new("", "", Bytes::from_static(b"\"forged everyone\"")),
        Push::new("", "sports", Bytes::from_static(b"\"forged other topic\"")),
        Push::new("", "news", Bytes::from_static(b"\"genuine\"")),
    ];
    for push in &forged {
        nats.publish(subject.clone(), envelope::encode(push))
            .await
            .expect("publish");
    }
    nats.flush().await.expect("flush");
    // The genuine one comes last on the same subject, so once it is here
    // the edge has read the forged ones.
    reader
        .expect_push(&json!({"code": code::PUSH_PUBLIC, "topic": "news", "data": "genuine"}))
        .await;
    reader.expect_no_push(QUIET).await;
    alice.expect_no_push(QUIET).await;
    let ws_addr = d.edges[0].ws_addr();
    wait_for(TIMEOUT, "4 misrouted messages counted", || async {
        match edge_counter(ws_addr, "gpush_edge_bus_misrouted_total").await? {
            4 => Ok(()),
            n => Err(format!("{n} counted")),
        }
    })
    .await;
}

/// The standalone push queue is bounded in bytes: with room for less than
/// one call, concurrent calls queue one at a time behind the fan-out, and
/// those that cannot get in within `publish_timeout` get 503. (Bounded in
/// calls, 1,024 calls of 64 MiB could be queued.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_push_queue_is_bounded_in_bytes() {
    const CONNECTIONS: usize = 300;
    const CALLS: usize = 30;
    let d = Standalone::start(|c| {
        c.publish_queue_bytes = 1024;
        // Short: a call that finds the queue taken for longer is refused,
        // however the calls' arrivals spread on a loaded machine (20 ms
        // let every call in once, under the full suite).
        c.publish_timeout = Duration::from_millis(1);
        c.queue_bytes = 64 << 20;
    })
    .await;
    // Everyone pushes reach every connection: the fan-out of a call takes
    // a while, and the next call waits for it.
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push(d.connect(0, &format!("listener {i}")).await);
    }
    let batch: Vec<PushMsg> = (0..200)
        .map(|_| PushMsg::everyone(vec![b'x'; 1024]))
        .collect();
    let body = PushApi::push_batch_body(&batch);
    let replies =
        join_all((0..CALLS).map(|_| d.api().post("/v1/pushBatch", body.clone(), None))).await;
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        !refused.is_empty(),
        "{CALLS} calls of {} bytes each into a 1 KiB queue were all accepted",
        body.len()
    );
    for reply in &replies {
        assert!(
            reply.status == 200 || reply.body.contains("bus_unavailable"),
            "{} {}",
            reply.status,
            reply.body
        );
    }
}

//! What the edges ask of NATS, seen from the server's monitoring endpoint:
//! a subject is subscribed while a local connection needs it and dropped
//! after the last one leaves, and topic names are escaped into literal
//! subject tokens, never wildcards. Topics and users are subscribed by
//! bucket (`gpush.t.<bucket>.*`, `gpush.u.<bucket>.*`): the only wildcards
//! an edge ever uses, always in the name's position.

use gpush_common::Subjects;
use gpush_common::subject::{topic_bucket, user_bucket};
use gpush_integration_tests::frames;
use gpush_integration_tests::{Cluster, Deployment, PushMsg, QUIET, TIMEOUT, auth, wait_for};
use serde_json::{Value, json};

/// Subjects under the gpush prefix.
fn gpush_subjects(all: &[String]) -> Vec<&str> {
    all.iter()
        .map(String::as_str)
        .filter(|s| s.starts_with("gpush."))
        .collect()
}

fn has(all: &[String], subject: &str) -> bool {
    all.iter().any(|s| s == subject)
}

/// The bucket subscription that brings public `topic`.
fn topic_subscription(topic: &str) -> String {
    Subjects::default().topic_bucket(topic_bucket(topic))
}

fn payload(fields: Value) -> Vec<u8> {
    fields.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_subscribe_on_demand_to_escaped_literal_subjects() {
    let cluster = Cluster::start(1, |_| {}).await;
    let nats = &cluster.nats;

    let mut a = cluster.connect(0, "a").await;
    let mut b = cluster.connect(0, "b").await;
    a.must_subscribe("a.b").await;
    b.must_subscribe("a.b").await;
    a.must_subscribe("*").await;
    b.must_login(&auth::hs256("u.>"), "u.>").await;
    b.must_sub_private("p").await;
    let user_subject = format!("gpush.u.{}.*", user_bucket("u.>"));
    let (dotted, star) = (topic_subscription("a.b"), topic_subscription("*"));
    assert_ne!(
        dotted, star,
        "the test needs a.b and * in different buckets"
    );
    let subjects = nats
        .wait_subscriptions(TIMEOUT, "the bucket subjects", |s| {
            has(s, &dotted) && has(s, &star) && has(s, &user_subject)
        })
        .await;
    for subject in gpush_subjects(&subjects) {
        let tokens: Vec<&str> = subject.split('.').collect();
        let bucket_subscription = tokens.len() == 4
            && (tokens[1] == "u" || tokens[1] == "t")
            && tokens[2].parse::<u16>().is_ok()
            && tokens[3] == "*";
        assert!(
            bucket_subscription || !tokens.iter().any(|t| *t == "*" || *t == ">"),
            "an edge subscribed to a wildcard subject {subject:?}: {subjects:?}"
        );
    }

    // One subscriber of "a.b" leaves: the edge still needs its bucket.
    let reply = a.unsubscribe("a.b").await;
    a.assert_code(&reply, 20002, "unsubscribe a.b");
    let reply = a.unsubscribe("*").await;
    a.assert_code(&reply, 20002, "unsubscribe *");
    nats.wait_subscriptions(TIMEOUT, "the bucket of * dropped", |s| !has(s, &star))
        .await;
    assert!(
        has(&nats.subscriptions().await, &dotted),
        "{dotted} was dropped while b still subscribes to a.b"
    );

    // The last one leaves (by disconnecting): every subject of b goes.
    b.close().await;
    nats.wait_subscriptions(TIMEOUT, "b's subjects dropped", |s| {
        !has(s, &dotted) && !has(s, &user_subject)
    })
    .await;
}

/// Topics that share a bucket share each edge's bucket subscription
/// (`gpush.t.<bucket>.*`), yet every push reaches its own topic's
/// subscribers only, on every edge: the edge picks the topic out of the
/// envelope. The subscription goes when the last topic of the bucket
/// loses its last local subscriber, not before, and only on that edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_of_one_bucket_stay_apart_and_hold_the_bucket_together() {
    let cluster = Cluster::start(2, |_| {}).await;
    let nats = &cluster.nats;
    // Three topics of one bucket, wildcard-looking.
    let first = "a.*";
    let bucket = topic_bucket(first);
    let twin = |stem: &str| {
        (0..)
            .map(|i| format!("{stem}{i}"))
            .find(|t| topic_bucket(t) == bucket)
            .expect("a topic in the same bucket")
    };
    let (second, third) = (twin("b.>"), twin("c "));
    let bucket_subject = Subjects::default().topic_bucket(bucket);
    let on_edge = |i: usize| async move {
        nats.subscriptions_of(Some(&format!("gpush-edge edge-{i}")))
            .await
    };

    let mut a = cluster.connect(0, "a").await;
    a.must_subscribe(first).await;
    a.must_subscribe(&third).await;
    let mut b = cluster.connect(1, "b").await;
    b.must_subscribe(&second).await;
    let mut c = cluster.connect(1, "c").await;
    c.must_subscribe(first).await;
    for i in 0..2 {
        let subjects = on_edge(i).await;
        assert!(has(&subjects, &bucket_subject), "edge-{i}: {subjects:?}");
        for topic in [first, &second, &third] {
            let own = Subjects::default().topic(topic);
            assert!(!has(&subjects, &own), "edge-{i} subscribed {own}");
        }
    }

    let data = |topic: &str| payload(json!({"to": topic}));
    let push_all = || async {
        let batch: Vec<PushMsg> = [first, &second, &third]
            .iter()
            .map(|t| PushMsg::public(t, data(t)))
            .collect();
        cluster.push_batch_http(&batch).await;
    };
    push_all().await;
    a.expect_push(&frames::public(first, &data(first))).await;
    a.expect_push(&frames::public(&third, &data(&third))).await;
    b.expect_push(&frames::public(&second, &data(&second)))
        .await;
    c.expect_push(&frames::public(first, &data(first))).await;
    for client in [&mut a, &mut b, &mut c] {
        client.expect_no_push(QUIET).await;
    }

    // a leaves `first`: `third` keeps edge-0's bucket subscription. (A
    // subscribe to a topic of another bucket goes through the same
    // manager after the release, and is confirmed by a round trip
    // through NATS, so the release was carried out once it answers.)
    let reply = a.unsubscribe(first).await;
    a.assert_code(&reply, 20002, "unsubscribe a.*");
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|t| topic_bucket(t) != bucket)
        .expect("a topic of another bucket");
    a.must_subscribe(&other).await;
    let subjects = on_edge(0).await;
    assert!(
        has(&subjects, &bucket_subject),
        "edge-0 dropped {bucket_subject} while a still subscribes to {third:?}: {subjects:?}"
    );
    push_all().await;
    a.expect_push(&frames::public(&third, &data(&third))).await;
    b.expect_push(&frames::public(&second, &data(&second)))
        .await;
    c.expect_push(&frames::public(first, &data(first))).await;
    for client in [&mut a, &mut b, &mut c] {
        client.expect_no_push(QUIET).await;
    }

    // a leaves `third`, the bucket's last topic on edge-0: edge-0 drops
    // the bucket; edge-1 keeps it for b and c.
    let reply = a.unsubscribe(&third).await;
    a.assert_code(&reply, 20002, "unsubscribe the third topic");
    let edge0 = "gpush-edge edge-0";
    wait_for(TIMEOUT, "edge-0 dropped the bucket", || async {
        let subjects = nats.subscriptions_of(Some(edge0)).await;
        if has(&subjects, &bucket_subject) {
            Err(format!("{subjects:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let subjects = on_edge(1).await;
    assert!(has(&subjects, &bucket_subject), "edge-1: {subjects:?}");
    push_all().await;
    b.expect_push(&frames::public(&second, &data(&second)))
        .await;
    c.expect_push(&frames::public(first, &data(first))).await;
    for client in [&mut a, &mut b, &mut c] {
        client.expect_no_push(QUIET).await;
    }
}

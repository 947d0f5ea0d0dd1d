//! What the edges ask of NATS, seen from the server's monitoring endpoint:
//! a subject is subscribed while a local connection needs it and dropped
//! after the last one leaves, and topic names are escaped into literal
//! subjects, never wildcards. Users are subscribed by bucket
//! (`gpush.u.<bucket>.*`): the only wildcard an edge ever uses, always in
//! the uid position.

use gpush_common::subject::user_bucket;
use gpush_integration_tests::{Cluster, Deployment, TIMEOUT, auth};

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
    let subjects = nats
        .wait_subscriptions(TIMEOUT, "the escaped subjects", |s| {
            has(s, "gpush.t.a%2Eb") && has(s, "gpush.t.%2A") && has(s, &user_subject)
        })
        .await;
    for subject in gpush_subjects(&subjects) {
        let tokens: Vec<&str> = subject.split('.').collect();
        let user_bucket_subscription = tokens.len() == 4
            && tokens[1] == "u"
            && tokens[2].parse::<u16>().is_ok()
            && tokens[3] == "*";
        assert!(
            user_bucket_subscription || !tokens.iter().any(|t| *t == "*" || *t == ">"),
            "an edge subscribed to a wildcard subject {subject:?}: {subjects:?}"
        );
    }

    // One subscriber of "a.b" leaves: the edge still needs the subject.
    let reply = a.unsubscribe("a.b").await;
    a.assert_code(&reply, 20002, "unsubscribe a.b");
    let reply = a.unsubscribe("*").await;
    a.assert_code(&reply, 20002, "unsubscribe *");
    nats.wait_subscriptions(TIMEOUT, "gpush.t.%2A dropped", |s| !has(s, "gpush.t.%2A"))
        .await;
    assert!(
        has(&nats.subscriptions().await, "gpush.t.a%2Eb"),
        "gpush.t.a%2Eb was dropped while b still subscribes to a.b"
    );

    // The last one leaves (by disconnecting): every subject of b goes.
    b.close().await;
    nats.wait_subscriptions(TIMEOUT, "b's subjects dropped", |s| {
        !has(s, "gpush.t.a%2Eb") && !has(s, &user_subject)
    })
    .await;
}

//! The client protocol: reply codes, ids, every kind of bad request, topic
//! validation, login rules, the subscription limit, and the limits of the
//! upgrade (origins, connections, handshakes) and of the request rate. The protocol is the
//! edge's alone, so these run against a standalone edge.

use gpush_integration_tests::client::expect_all_quiet;
use gpush_integration_tests::frames::{self, code};
use gpush_integration_tests::{
    Deployment, QUIET, Standalone, TIMEOUT, WsClient, auth, silent, wait_for,
};
use serde_json::{Value, json};

/// After whatever happened on `client`, a fresh subscribe works and a push
/// to it arrives.
async fn assert_still_usable(d: &Standalone, client: &mut WsClient, topic: &str) {
    client.must_subscribe(topic).await;
    let data = json!({"alive": topic}).to_string();
    d.push_http("", topic, data.as_bytes()).await;
    client
        .expect_push(&frames::public(topic, data.as_bytes()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_codes_and_echo_ids() {
    let d = Standalone::start(|_| {}).await;
    let mut c = d.connect(0, "c").await;

    for id in [json!("req-a"), json!(7), json!(0)] {
        let reply = c
            .request_value(json!({"code": code::SUBSCRIBE, "topic": "news", "id": id}))
            .await;
        assert_eq!(reply["code"], code::SUBSCRIBED, "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply["message"].is_string(), "{reply}");
    }

    // Without an id, the reply has none.
    c.send_json(&json!({"code": code::UNSUBSCRIBE, "topic": "news"}))
        .await;
    let reply = c.next_reply(TIMEOUT).await;
    assert_eq!(reply["code"], code::UNSUBSCRIBED, "{reply}");
    assert!(
        reply.get("id").is_none(),
        "reply to a request without id has one: {reply}"
    );

    let reply = c.login(&auth::hs256("ann")).await;
    assert_eq!(
        (&reply["code"], &reply["uid"]),
        (&json!(code::LOGGED_IN), &json!("ann")),
        "{reply}"
    );
    let reply = c.sub_private("inbox").await;
    assert_eq!(reply["code"], code::SUBSCRIBED, "{reply}");
    let reply = c.unsub_private("inbox").await;
    assert_eq!(reply["code"], code::UNSUBSCRIBED, "{reply}");
    let reply = c.logout().await;
    assert_eq!(reply["code"], code::LOGGED_OUT, "{reply}");
    c.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_30001_and_the_connection_survives() {
    let d = Standalone::start(|_| {}).await;
    let mut c = d.connect(0, "c").await;

    // (frame, field the detail must name, if any). Frames that are not a
    // JSON object cannot carry an id, so their reply is read without one.
    let unparsable: &[&str] = &[
        "not json",
        "{\"code\":1",
        "",
        "[1,2]",
        "\"just a string\"",
        "42",
        "null",
    ];
    for (i, frame) in unparsable.iter().enumerate() {
        c.send_text(frame).await;
        let reply = c.next_reply(TIMEOUT).await;
        assert_eq!(
            reply["code"],
            code::BAD_REQUEST,
            "reply to {frame:?}: {reply}"
        );
        assert!(
            reply["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "reply to {frame:?} has no detail: {reply}"
        );
        assert_still_usable(&d, &mut c, &format!("alive-text-{i}")).await;
    }

    let with_id: &[(Value, Option<&str>)] = &[
        (json!({}), Some("code")),
        (json!({"topic": "x"}), Some("code")),
        (json!({"code": "1", "topic": "x"}), Some("code")),
        (json!({"code": 99, "topic": "x"}), Some("code")),
        (json!({"code": 0, "topic": "x"}), Some("code")),
        (json!({"code": -1, "topic": "x"}), Some("code")),
        (json!({"code": 1}), Some("topic")),
        (json!({"code": 2}), Some("topic")),
        (json!({"code": 1, "topic": 5}), Some("topic")),
        (json!({"code": 1, "topic": null}), Some("topic")),
        (json!({"code": 3}), Some("data")),
    ];
    for (i, (request, field)) in with_id.iter().enumerate() {
        let mut request = request.clone();
        request["id"] = json!(format!("bad-{i}"));
        let reply = c.request_value(request.clone()).await;
        assert_eq!(
            reply["code"],
            code::BAD_REQUEST,
            "reply to {request}: {reply}"
        );
        let detail = reply["detail"].as_str().unwrap_or_default();
        if let Some(field) = field {
            assert!(
                detail.contains(field),
                "detail of the reply to {request} should name {field:?}: {reply}"
            );
        }
        assert_still_usable(&d, &mut c, &format!("alive-json-{i}")).await;
    }
    c.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_get_30004() {
    let d = Standalone::start(|_| {}).await;
    let max = gpush_common::push::DEFAULT_MAX_NAME_LEN;
    let too_long = "t".repeat(max + 1);
    let longest = "t".repeat(max);
    let invalid = [
        "",
        "a\u{0}b",
        "a\nb",
        "tab\there",
        "\u{7f}",
        "\u{1b}[31m",
        too_long.as_str(),
    ];

    let mut c = d.connect(0, "c").await;
    c.must_login(&auth::hs256("val"), "val").await;
    for topic in invalid {
        let reply = c.subscribe(topic).await;
        assert_eq!(
            reply["code"],
            code::INVALID_TOPIC,
            "subscribe {topic:?}: {reply}"
        );
        let reply = c.sub_private(topic).await;
        assert_eq!(
            reply["code"],
            code::INVALID_TOPIC,
            "private subscribe {topic:?}: {reply}"
        );
    }
    // The longest allowed name, and printable odd ones, are fine.
    for topic in [
        longest.as_str(),
        "a b",
        "a.*",
        "\u{e4}\u{2713}",
        "\u{1F600}",
    ] {
        c.must_subscribe(topic).await;
        c.must_sub_private(topic).await;
    }
    let data = b"{\"longest\":true}";
    d.push_http("", &longest, data).await;
    c.expect_push(&frames::public(&longest, data)).await;
    assert_still_usable(&d, &mut c, "after-invalid").await;
    c.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_requests_need_login() {
    let d = Standalone::start(|_| {}).await;
    let mut c = d.connect(0, "c").await;
    let reply = c.sub_private("mine").await;
    assert_eq!(reply["code"], code::NOT_LOGGED_IN, "{reply}");
    let reply = c.unsub_private("mine").await;
    assert_eq!(reply["code"], code::NOT_LOGGED_IN, "{reply}");

    c.must_login(&auth::hs256("pat"), "pat").await;
    c.must_sub_private("mine").await;
    let reply = c.logout().await;
    assert_eq!(reply["code"], code::LOGGED_OUT, "{reply}");
    let reply = c.sub_private("mine").await;
    assert_eq!(reply["code"], code::NOT_LOGGED_IN, "after logout: {reply}");
    let reply = c.unsub_private("mine").await;
    assert_eq!(reply["code"], code::NOT_LOGGED_IN, "after logout: {reply}");

    d.push_grpc("pat", "mine", b"{}").await;
    d.push_grpc("pat", "", b"{}").await;
    c.expect_no_push(QUIET).await;
    assert_still_usable(&d, &mut c, "after-30002").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limit_counts_public_and_private_together() {
    let d = Standalone::start(|_| {}).await;
    let limit = gpush_edge::config::DEFAULT_MAX_SUBSCRIPTIONS;
    let private_count = 28;
    let public_count = limit - private_count;

    let mut c = d.connect(0, "c").await;
    c.must_login(&auth::hs256("lim"), "lim").await;
    for i in 0..public_count {
        c.must_subscribe(&format!("p{i}")).await;
    }
    for i in 0..private_count {
        c.must_sub_private(&format!("q{i}")).await;
    }
    let reply = c.subscribe("one-more").await;
    assert_eq!(
        reply["code"],
        code::LIMIT_REACHED,
        "public over the limit: {reply}"
    );
    let reply = c.sub_private("one-more").await;
    assert_eq!(
        reply["code"],
        code::LIMIT_REACHED,
        "private over the limit: {reply}"
    );

    // The limit is per connection.
    let mut other = d.connect(0, "other").await;
    other.must_subscribe("one-more").await;

    // Freeing a public slot makes room for a private subscription.
    let reply = c.unsubscribe("p0").await;
    assert_eq!(reply["code"], code::UNSUBSCRIBED, "{reply}");
    c.must_sub_private("one-more").await;
    let reply = c.subscribe("p0").await;
    assert_eq!(reply["code"], code::LIMIT_REACHED, "full again: {reply}");

    // Subscriptions made before the limit still deliver.
    d.push_http("", "p1", b"{\"p\":1}").await;
    c.expect_push(&frames::public("p1", b"{\"p\":1}")).await;
    d.push_http("lim", "one-more", b"{\"q\":1}").await;
    c.expect_push(&frames::private("one-more", b"{\"q\":1}"))
        .await;

    // Logout drops the private subscriptions and frees their slots.
    let reply = c.logout().await;
    assert_eq!(reply["code"], code::LOGGED_OUT, "{reply}");
    for i in 0..=private_count {
        c.must_subscribe(&format!("after-logout-{i}")).await;
    }
    let reply = c.subscribe("over-again").await;
    assert_eq!(reply["code"], code::LIMIT_REACHED, "{reply}");
    expect_all_quiet([&mut c, &mut other]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_as_another_user_logs_out_first() {
    let d = Standalone::start(|_| {}).await;
    let mut c = d.connect(0, "switcher").await;
    let mut witness = d.connect(0, "witness u5").await;
    witness.must_login(&auth::hs256("u5"), "u5").await;
    witness.must_sub_private("p").await;

    c.must_login(&auth::hs256("u5"), "u5").await;
    c.must_sub_private("p").await;
    d.push_grpc("u5", "p", b"{\"n\":1}").await;
    c.expect_push(&frames::private("p", b"{\"n\":1}")).await;
    witness
        .expect_push(&frames::private("p", b"{\"n\":1}"))
        .await;

    c.must_login(&auth::hs256("u6"), "u6").await;
    // Nothing of u5 reaches c any more; u6's private topic "p" was not
    // carried over from u5.
    d.push_grpc("u5", "p", b"{\"n\":2}").await;
    d.push_grpc("u5", "", b"{\"n\":3}").await;
    d.push_grpc("u6", "p", b"{\"n\":4}").await;
    witness
        .expect_pushes_unordered(&[
            frames::private("p", b"{\"n\":2}"),
            frames::user(b"{\"n\":3}"),
        ])
        .await;
    c.expect_no_push(QUIET).await;

    // c is u6 now.
    d.push_grpc("u6", "", b"{\"n\":5}").await;
    c.expect_push(&frames::user(b"{\"n\":5}")).await;
    c.must_sub_private("p").await;
    d.push_grpc("u6", "p", b"{\"n\":6}").await;
    c.expect_push(&frames::private("p", b"{\"n\":6}")).await;
    expect_all_quiet([&mut c, &mut witness]).await;
}

/// The HTTP request of a WebSocket upgrade of `/ws` on `host`, with
/// `extra` header lines (each ending in `\r\n`).
fn upgrade_request(host: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// The status line and body of the edge's answer to `request`.
async fn answer(d: &Standalone, request: &[u8]) -> String {
    let addr = d.edge.ws_addr().to_string();
    let bytes = silent::exchange(&addr, request, std::time::Duration::from_millis(500)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_get_30006_and_persistent_abuse_4002() {
    let d = Standalone::start(|c| {
        c.request_rate = 1;
        c.request_burst = 5;
    })
    .await;
    let mut bystander = d.connect(0, "bystander").await;
    bystander.must_subscribe("news").await;
    let mut c = d.connect(0, "eager").await;
    for i in 0..5 {
        c.must_subscribe(&format!("t{i}")).await;
    }
    let reply = c
        .request_value(json!({"code": code::SUBSCRIBE, "topic": "t5", "id": "over"}))
        .await;
    assert_eq!(reply["code"], code::RATE_LIMITED, "{reply}");
    assert_eq!(reply["id"], "over", "{reply}");
    // One a second: a token is back after a second (the bucket is not
    // full, so the one refusal still counts). A deliberate sleep: the
    // refill is what is tested, and asking until it is there would spend
    // refusals that count towards the 4002 below.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.must_subscribe("t5").await;
    // The refused subscribe did nothing; the accepted ones deliver.
    d.push_http("", "t5", b"{\"n\":5}").await;
    c.expect_push(&frames::public("t5", b"{\"n\":5}")).await;

    // A flood: refused four more times, then closed with 4002.
    for _ in 0..50 {
        c.send_json(&json!({"code": code::UNSUBSCRIBE, "topic": "t0"}))
            .await;
    }
    let (frames_seen, close_frame) = c.read_until_close(TIMEOUT).await;
    assert_eq!(
        gpush_integration_tests::client::close_code(&close_frame),
        Some(frames::close::TOO_MANY_REQUESTS),
        "{close_frame:?}"
    );
    let refused = frames_seen
        .iter()
        .filter(|f| {
            matches!(f, gpush_integration_tests::client::RawFrame::Text(t)
                if serde_json::from_str::<Value>(t).is_ok_and(|v| v["code"] == code::RATE_LIMITED))
        })
        .count();
    assert!(
        (4..=5).contains(&refused),
        "30006 replies before 4002: {refused}"
    );

    // The others are untouched.
    d.push_http("", "news", b"{\"still\":1}").await;
    bystander
        .expect_push(&frames::public("news", b"{\"still\":1}"))
        .await;
    assert_still_usable(&d, &mut bystander, "after-flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_get_403() {
    let d = Standalone::start(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let host = d.edge.ws_addr().to_string();
    let refused = answer(
        &d,
        &upgrade_request(&host, "Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("origin_not_allowed"), "{refused}");
    let allowed = answer(
        &d,
        &upgrade_request(&host, "Origin: https://app.example\r\n"),
    )
    .await;
    assert!(allowed.starts_with("HTTP/1.1 101"), "{allowed}");
    // No Origin header: not a browser, allowed.
    let mut c = d.connect(0, "no origin").await;
    assert_still_usable(&d, &mut c, "no-origin").await;
}

/// Waits until the edge's `gpush_edge_connections` gauge is `n`.
async fn wait_connections(d: &Standalone, n: u64) {
    let url = format!("http://{}/metrics", d.edge.ws_addr());
    wait_for(TIMEOUT, format!("{n} connections"), || async {
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix("gpush_edge_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if now == Some(n as f64) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_over_max_connections_get_503_and_the_others_stay() {
    let d = Standalone::start(|c| c.max_connections = 3).await;
    let host = d.edge.ws_addr().to_string();
    // The start-up probe's connection may still be closing.
    wait_connections(&d, 0).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = d.connect(0, &format!("c{i}")).await;
        c.must_subscribe("full").await;
        clients.push(c);
    }
    let refused = answer(&d, &upgrade_request(&host, "")).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    d.push_http("", "full", b"{\"n\":1}").await;
    for c in &mut clients {
        c.expect_push(&frames::public("full", b"{\"n\":1}")).await;
    }
    // A closed connection frees its place.
    clients.pop().expect("three").close().await;
    wait_connections(&d, 2).await;
    let mut again = d.connect(0, "again").await;
    assert_still_usable(&d, &mut again, "again").await;
    for c in &mut clients {
        assert_still_usable(&d, c, "after-503").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_must_finish_within_the_timeout_and_are_capped() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let timeout = std::time::Duration::from_millis(600);
    let d = Standalone::start(|c| {
        c.handshake_timeout = timeout;
        c.max_handshakes = 4;
    })
    .await;
    let mut upgraded = d.connect(0, "upgraded").await;
    upgraded.must_subscribe("hs").await;
    let addr = d.edge.ws_addr();
    // Four half-finished requests take every handshake slot.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    // A fifth client waits: its upgrade is not even read while they hold on.
    let url = d.ws_url(0);
    let mut waiting = tokio::spawn(async move { WsClient::connect(&url).await });
    assert!(
        tokio::time::timeout(timeout / 3, &mut waiting)
            .await
            .is_err(),
        "upgraded while every slot was taken"
    );
    // The slow ones are cut after the timeout, and the waiting one gets in.
    for mut s in slow {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(TIMEOUT, s.read(&mut buf))
            .await
            .expect("a slow handshake was not closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let mut late = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("the waiting client never got in")
        .expect("client task");
    assert_still_usable(&d, &mut late, "late").await;
    // An upgraded connection is not a handshake: it outlives the timeout.
    d.push_http("", "hs", b"{\"n\":1}").await;
    upgraded
        .expect_push(&frames::public("hs", b"{\"n\":1}"))
        .await;
}

//! Keepalive and connection lifetime: text and WebSocket ping/pong, server
//! pings, the idle timeout, and the close on shutdown.

use gpush_integration_tests::client::close_code;
use gpush_integration_tests::frames::{self, close};
use gpush_integration_tests::silent::{OP_PING, SilentClient};
use gpush_integration_tests::{Deployment, Standalone, TIMEOUT};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_ping_in_any_case_and_websocket_ping_are_answered() {
    let d = Standalone::start(|_| {}).await;
    let mut c = d.connect(0, "pinger").await;
    for ping in ["ping", "PING", "Ping", "pInG"] {
        c.send_text(ping).await;
        assert_eq!(c.next_text(TIMEOUT).await, "pong", "answer to {ping:?}");
    }
    c.ws_ping(b"are you there").await;
    c.ws_ping(b"").await;

    // Pings do not disturb the protocol.
    c.must_subscribe("after-pings").await;
    d.push_http("", "after-pings", b"{\"ok\":true}").await;
    c.expect_push(&frames::public("after-pings", b"{\"ok\":true}"))
        .await;
}

/// With `ping_interval` 200 ms and `idle_timeout` 1 s: a client that never
/// answers sees server pings and then a close frame with code 4000; a
/// client that reads (and so answers pings) outlives the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_with_4000_while_a_reading_client_stays() {
    let idle_timeout = Duration::from_secs(1);
    let d = Standalone::start(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.idle_timeout = idle_timeout;
    })
    .await;
    let mut silent = SilentClient::connect(&d.ws_url(0)).await;
    let mut reader = d.connect(0, "reader").await;

    let (ending, ()) = tokio::join!(silent.read_until_close(idle_timeout + TIMEOUT), async {
        // Reading for well over the idle timeout answers the server pings.
        reader.expect_no_push(idle_timeout * 5 / 2).await;
    });
    assert!(
        ending.count(OP_PING) >= 1,
        "the edge sent no WebSocket ping before closing: {ending:?}"
    );
    assert_eq!(
        ending.close_code(),
        Some(close::IDLE_TIMEOUT),
        "silent client should get a close frame with code 4000: {ending:?}"
    );

    reader.ws_ping(b"still here").await;
    reader.must_subscribe("alive").await;
    d.push_grpc("", "alive", b"{\"alive\":true}").await;
    reader
        .expect_push(&frames::public("alive", b"{\"alive\":true}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001() {
    let d = Standalone::start(|_| {}).await;
    let mut a = d.connect(0, "a").await;
    a.must_subscribe("t").await;
    let mut b = d.connect(0, "b").await;
    let url = d.ws_url(0);

    let Standalone { edge, .. } = d;
    let (stopped, close_a, close_b) = tokio::join!(
        edge.shutdown(),
        a.next_close(TIMEOUT),
        b.next_close(TIMEOUT)
    );
    stopped.expect("edge run() after shutdown");
    assert_eq!(close_code(&close_a), Some(close::GOING_AWAY), "{close_a:?}");
    assert_eq!(close_code(&close_b), Some(close::GOING_AWAY), "{close_b:?}");
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "a stopped edge still accepts WebSocket connections"
    );
}

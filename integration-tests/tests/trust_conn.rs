//! Connection defects from the "Trust" issue, reproduced against a real
//! standalone edge with raw and real clients: a closing handshake that
//! lingered 1 s, close codes taken unchecked, an unbounded read while
//! closing, and a legitimate push batch that cut every subscriber as a
//! slow consumer.

use gpush_integration_tests::silent::{OP_CLOSE, OP_TEXT, SilentClient, client_frame};
use gpush_integration_tests::{Deployment, PushMsg, Standalone, TIMEOUT};

/// Well under the close timeout the edge used to wait for a second close
/// frame (1 s): an edge that answers a client's close and drops TCP at
/// once, as RFC 6455 7.1.1 asks, ends the connection long before it.
const CLOSED_AT_ONCE: std::time::Duration = std::time::Duration::from_millis(800);

/// A raw client whose close frame carries `payload`: the edge's answer,
/// and whether the edge then dropped TCP without waiting.
async fn close_with(d: &Standalone, payload: &[u8]) -> Option<u16> {
    let mut c = SilentClient::connect(&d.ws_url(0)).await;
    let greeting = c.next_frame(TIMEOUT).await.expect("greeting");
    assert_eq!(greeting.opcode, OP_TEXT, "greeting");
    c.send_raw(&client_frame(OP_CLOSE, true, payload)).await;
    let answer = c
        .next_frame(TIMEOUT)
        .await
        .expect("the edge answers a close frame with its own");
    assert_eq!(answer.opcode, OP_CLOSE, "answer to close {payload:?}");
    // The handshake is complete: the edge must not wait for anything more.
    assert_eq!(
        c.next_frame(CLOSED_AT_ONCE).await,
        None,
        "after the closing handshake the edge must drop TCP at once"
    );
    answer.close_code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closing_handshake_ends_tcp_at_once_and_close_codes_are_checked() {
    let d = Standalone::start(|_| {}).await;
    // Valid codes are echoed; RFC 6455 7.4 reserves or forbids the others.
    for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4000, 4999] {
        assert_eq!(
            close_with(&d, &code.to_be_bytes()).await,
            Some(code),
            "close {code}"
        );
    }
    assert_eq!(close_with(&d, b"").await, Some(1000), "close without code");
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        assert_eq!(
            close_with(&d, &code.to_be_bytes()).await,
            Some(1002),
            "close {code} is invalid"
        );
    }
    assert_eq!(close_with(&d, b"\x03").await, Some(1002), "1-byte close");
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"\xff\xfe");
    assert_eq!(
        close_with(&d, &bad_reason).await,
        Some(1007),
        "reason not UTF-8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_own_close_the_edge_reads_no_more_than_max_message() {
    let d = Standalone::start(|_| {}).await;
    let mut c = SilentClient::connect(&d.ws_url(0)).await;
    c.next_frame(TIMEOUT).await.expect("greeting");
    // A text frame that is not UTF-8: the edge closes with 1007 and waits
    // for the client's close frame.
    c.send_raw(&client_frame(OP_TEXT, true, b"\xff")).await;
    let close = c.read_until_close(TIMEOUT).await;
    assert_eq!(close.close_code(), Some(1007));
    // Instead of a close frame, a frame that announces 1 GiB. The edge must
    // not buffer it while it waits: it drops the connection at once.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    c.send_raw(&huge).await;
    c.send_raw(&[0u8; 64 * 1024]).await;
    assert_eq!(
        c.next_frame(CLOSED_AT_ONCE).await,
        None,
        "a frame over max_message while closing must end the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_api_accepts_reaches_every_reading_subscriber() {
    let d = Standalone::start(|_| {}).await;
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let mut c = d.connect(0, &format!("subscriber {i}")).await;
        c.must_subscribe("ticks").await;
        subscribers.push(c);
    }
    let batch: Vec<PushMsg> = (0..5000)
        .map(|n| PushMsg::public("ticks", format!("{{\"n\":{n}}}")))
        .collect();
    d.api().push_batch_http(&batch).await;
    let received = futures_util::future::join_all(subscribers.iter_mut().map(|c| async move {
        let mut seen = Vec::with_capacity(5000);
        while seen.len() < 5000 {
            match c.try_next_push(TIMEOUT).await {
                Some(push) => seen.push(push["data"]["n"].as_u64().unwrap_or(u64::MAX)),
                None => break,
            }
        }
        (c.label().to_owned(), seen)
    }))
    .await;
    for (label, seen) in received {
        let expected: Vec<u64> = (0..5000).collect();
        assert!(
            seen == expected,
            "{label}: got {} of 5000 pushes in order (a reading client must get every push of an accepted batch)",
            seen.len()
        );
    }
}

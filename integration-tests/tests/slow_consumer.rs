//! A client that stops reading is cut off as a slow consumer (close code
//! 4001) once its outgoing queue overflows, while the clients that keep up
//! receive every push, in order.

use gpush_integration_tests::client::{RawFrame, close_code};
use gpush_integration_tests::frames::{close, code};
use gpush_integration_tests::{Cluster, Deployment, PushMsg, Standalone, TIMEOUT, Via, WsClient};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pushes sent in total: 2,000 × 16 KiB is far more than loopback socket
/// buffers and the edge queue can hold for a client that does not read.
const TOTAL: usize = 2_000;
/// Payload size of each push.
const SIZE: usize = 16 * 1024;
/// Pushes per batch call.
const BATCH: usize = 16;
const TOPIC: &str = "firehose";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    slow_consumer(&Cluster::start(2, small_queues).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone() {
    slow_consumer(&Standalone::start(small_queues).await).await;
}

/// Queues big enough for one whole batch (the edge may enqueue a batch
/// before its writer runs, and holds frames for `write_interval` before
/// flushing), far smaller than what the pushes add up to.
fn small_queues(config: &mut gpush_edge::EdgeConfig) {
    config.queue_bytes = 4 * BATCH * SIZE;
}

fn payload(seq: usize) -> Vec<u8> {
    let pad = "x".repeat(SIZE - 32);
    json!({"seq": seq, "pad": pad}).to_string().into_bytes()
}

/// The sequence number of a firehose push.
fn seq_of(push: &Value) -> Option<u64> {
    (push["code"] == code::PUSH_PUBLIC && push["topic"] == TOPIC)
        .then(|| push["data"]["seq"].as_u64())
        .flatten()
}

/// Reads all `TOTAL` pushes, checking their order, and reports progress.
fn spawn_reader(mut client: WsClient, progress: watch::Sender<usize>) -> JoinHandle<WsClient> {
    tokio::spawn(async move {
        for expected in 0..TOTAL {
            let push = client.next_push(TIMEOUT).await;
            assert_eq!(
                seq_of(&push),
                Some(expected as u64),
                "{}: push out of order or malformed",
                client.label()
            );
            progress.send_replace(expected + 1);
        }
        client
    })
}

async fn slow_consumer(d: &impl Deployment) {
    let mut stalled = d.connect(0, "stalled").await;
    stalled.must_subscribe(TOPIC).await;

    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for (i, edge) in [0, 1, 0].into_iter().enumerate() {
        let mut client = d.connect(edge, &format!("reader-{i}")).await;
        client.must_subscribe(TOPIC).await;
        let (tx, rx) = watch::channel(0);
        readers.push(spawn_reader(client, tx));
        progress.push(rx);
    }

    // Send the next batch only when every reader has the previous one, so
    // a reader's queue never holds more than one batch: only the client
    // that does not read at all can overflow its queue.
    for first in (0..TOTAL).step_by(BATCH) {
        let last = (first + BATCH).min(TOTAL);
        let batch: Vec<PushMsg> = (first..last)
            .map(|seq| PushMsg::public(TOPIC, payload(seq)))
            .collect();
        d.send(Via::GrpcBatch, &batch).await;
        for rx in &mut progress {
            let waited = tokio::time::timeout(TIMEOUT, rx.wait_for(|n| *n >= last)).await;
            if !matches!(waited, Ok(Ok(_))) {
                // A reader fell behind or failed: show why.
                for reader in readers {
                    if reader.is_finished() {
                        reader.await.expect("reader task");
                    }
                }
                panic!("a reader did not receive push {} in time", last - 1);
            }
        }
    }
    for reader in readers {
        let mut client = tokio::time::timeout(TIMEOUT * 2, reader)
            .await
            .expect("readers did not finish")
            .expect("reader task");
        client.expect_no_push(gpush_integration_tests::QUIET).await;
    }

    // The stalled client got a prefix of the pushes, then was cut off.
    let (frames, close_frame) = stalled.read_until_close(TIMEOUT).await;
    let seqs: Vec<u64> = frames
        .iter()
        .map(|frame| match frame {
            RawFrame::Text(text) => serde_json::from_str::<Value>(text)
                .ok()
                .as_ref()
                .and_then(seq_of)
                .unwrap_or_else(|| panic!("stalled client: unexpected frame {:.80}", text)),
            RawFrame::Binary(data) => {
                panic!("stalled client: binary frame of {} bytes", data.len())
            }
        })
        .collect();
    eprintln!(
        "stalled client: {} of {TOTAL} pushes, then {close_frame:?}",
        seqs.len()
    );
    assert!(
        seqs.len() < TOTAL,
        "the stalled client received all {TOTAL} pushes: it was never cut off"
    );
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
        "the stalled client's pushes are not an in-order prefix: {:?}",
        &seqs[..seqs.len().min(20)]
    );
    if let Some(code) = close_code(&close_frame) {
        assert_eq!(code, close::SLOW_CONSUMER, "close frame {close_frame:?}");
    }
}

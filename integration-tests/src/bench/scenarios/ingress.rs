//! ingress: pushes/s a cluster ingress accepts, with a real NATS behind it
//! (no edge: NATS drops messages nobody subscribed to, so the figure is
//! ingress's own). Three ways: single `POST /v1/pushData` calls over
//! [`HTTP_CONNECTIONS`] keep-alive connections, `POST /v1/pushBatch` with
//! [`BATCH`] messages per call, and gRPC `PushBatch` with [`BATCH`]
//! messages per call. Requests are built once and sent as bytes by a lean
//! client ([`http`](crate::bench::http)), so the load generator takes as
//! little of the two cores as it can.

use super::Bench;
use crate::bench::cli::HistoryMode;
use crate::bench::http::{Connection, HttpError, post_request};
use crate::bench::push::{batch_json, message_json};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::Cluster;
use anyhow::Context as _;
use bytes::Bytes;
use gpush_proto::v1::push_client::PushClient;
use gpush_proto::v1::{PushBatchRequest, PushRequest};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Concurrent keep-alive connections for single pushes.
const HTTP_CONNECTIONS: usize = 16;
/// Concurrent calls (connections, for HTTP) for batches.
const BATCH_CALLS: usize = 4;
/// Messages per batch call.
const BATCH: usize = 1000;
/// The topic pushed to (no subscribers).
const TOPIC: &str = "ingress-bench";
/// The payload of every push.
const PAYLOAD: &[u8] = br#"{"price":42.5,"symbol":"GPSH","seq":123456}"#;
/// Single HTTP pushes/s target.
const TARGET_SINGLE: f64 = 100_000.0;
/// Batched messages/s target.
const TARGET_BATCH: f64 = 1_000_000.0;

/// What one load worker achieved.
#[derive(Debug, Default)]
struct Tally {
    pushed: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record<E: std::fmt::Display>(&mut self, result: Result<u64, E>) {
        match result {
            Ok(n) => self.pushed += n,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn add(&mut self, other: Tally) {
        self.pushed += other.pushed;
        self.failed += other.failed;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    /// `what`, plus the failures if any.
    fn note(&self, what: &str) -> String {
        match &self.first_error {
            Some(e) => format!("{what}; {} calls FAILED ({e})", self.failed),
            None => what.to_owned(),
        }
    }
}

/// Runs `workers` load workers until `run_for` is over (each gets the end
/// time and pushes back to back); returns messages/s and the tallies.
async fn saturate<W, Fut>(
    workers: usize,
    run_for: Duration,
    worker: W,
) -> anyhow::Result<(f64, Tally)>
where
    W: Fn(Instant) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(started + run_for));
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        total.add(tally.context("load task")?);
    }
    Ok((total.pushed as f64 / started.elapsed().as_secs_f64(), total))
}

/// A worker posting `request` (worth `messages` pushes) over its own
/// keep-alive connection to `addr`, reconnecting after a broken call.
async fn http_worker(addr: SocketAddr, request: Bytes, messages: u64, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut connection = None;
    while Instant::now() < end {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::connect(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tally.record::<HttpError>(Err(e));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let result = conn.call(&request).await;
        if matches!(result, Err(HttpError::Io(_) | HttpError::Closed)) {
            connection = None;
        }
        tally.record(result.map(|()| messages));
    }
    tally
}

/// Runs the ingress scenario with each of the run's history settings.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    for history in bench.history.clone() {
        run_with(bench, history).await?;
    }
    Ok(())
}

/// The ingress scenario's three measurements with `history`.
async fn run_with(bench: &mut Bench, history: HistoryMode) -> anyhow::Result<()> {
    let run_for = bench.sizes.ingress_run;
    let system = history.label("cluster");
    eprintln!("[ingress] nats-server + gpush-ingress ({system})");
    let mut cluster = Cluster::start(&bench.bins, false, history).await?;
    let addr: SocketAddr = cluster
        .http_base
        .trim_start_matches("http://")
        .parse()
        .context("ingress HTTP address")?;
    let host = addr.to_string();

    let mut single = String::new();
    message_json(&mut single, "", TOPIC, PAYLOAD);
    let request = post_request(&host, "/v1/pushData", single.as_bytes());
    let (rate, tally) = saturate(HTTP_CONNECTIONS, run_for, |end| {
        http_worker(addr, request.clone(), 1, end)
    })
    .await?;
    bench.report.add(
        Row::new(
            "ingress",
            &system,
            "HTTP single pushes/s",
            rate,
            Unit::PerSec,
        )
        .target(Target::at_least(TARGET_SINGLE))
        .note(tally.note(&format!("{HTTP_CONNECTIONS} keep-alive connections"))),
    );

    let batch = batch_json((0..BATCH).map(|_| ("", TOPIC, PAYLOAD)));
    let request = post_request(&host, "/v1/pushBatch", batch.as_bytes());
    let (rate, tally) = saturate(BATCH_CALLS, run_for, |end| {
        http_worker(addr, request.clone(), BATCH as u64, end)
    })
    .await?;
    bench.report.add(
        Row::new(
            "ingress",
            &system,
            "HTTP batch messages/s",
            rate,
            Unit::PerSec,
        )
        .target(Target::at_least(TARGET_BATCH))
        .note(tally.note(&format!("{BATCH} per call, {BATCH_CALLS} connections"))),
    );

    let channel = tonic::transport::Endpoint::from_shared(cluster.grpc_url.clone())?
        .connect()
        .await
        .with_context(|| format!("connect to gRPC {}", cluster.grpc_url))?;
    let request = PushBatchRequest {
        messages: vec![
            PushRequest {
                uid: String::new(),
                topic: TOPIC.to_owned(),
                data: Bytes::from_static(PAYLOAD),
            };
            BATCH
        ],
    };
    let client = PushClient::new(channel);
    let (rate, tally) = saturate(BATCH_CALLS, run_for, |end| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let reply = client.push_batch(request.clone()).await;
                tally.record(reply.map(|r| u64::from(r.into_inner().accepted)));
            }
            tally
        }
    })
    .await?;
    bench.report.add(
        Row::new(
            "ingress",
            &system,
            "gRPC batch messages/s",
            rate,
            Unit::PerSec,
        )
        .target(Target::at_least(TARGET_BATCH))
        .note(tally.note(&format!(
            "{BATCH} per call, {BATCH_CALLS} calls in flight on one HTTP/2 connection"
        ))),
    );
    cluster.check_running()?;
    Ok(())
}

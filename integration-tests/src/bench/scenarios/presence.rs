//! presence: the server API of a cluster whose one topic has many
//! subscribers, each a distinct user.
//!
//! NATS, etcd, ingress and [`EDGES`] edge processes registered in etcd
//! (so ingress answers as soon as every edge did, not at
//! `control_timeout`); `presence_subscribers` connections spread evenly
//! over the edges (one fleet per edge: an edge holds its share under the
//! open-files limit), each logged in as its own user (the token is the
//! uid) and subscribed to [`TOPIC`]. Then, one call at a time, [`CALLS`]
//! times each:
//!
//! - `GET /v1/presence?topic=T` (every user and its connection count),
//!   `GET /v1/presence_stats?topic=T`, `GET /v1/topics`, and gRPC
//!   `Presence`: the time from sending the request to having read the whole
//!   answer (p50, p99, max) and the answer's size. Every answer must be
//!   complete and count every subscriber, or the scenario fails.
//! - `POST /v1/disconnect` of a user with one connection on every edge
//!   (held by the bench itself, opened anew each round): the time from
//!   sending the call until each of the user's connections has read its
//!   close frame (4003); [`CALLS`] rounds.

use super::Bench;
use crate::bench::chart;
use crate::bench::cli::SubscribeMode;
use crate::bench::client::{close_of, open_user};
use crate::bench::fleet::{Fleet, FleetSpec};
use crate::bench::histogram::Histogram;
use crate::bench::push::http_client;
use crate::bench::report::{Row, Unit};
use crate::bench::systems::EtcdCluster;
use anyhow::{Context as _, ensure};
use gpush_proto::v1::PresenceRequest;
use gpush_proto::v1::push_client::PushClient;
use prost::Message as _;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// The topic every subscriber is in.
pub const TOPIC: &str = "presence";
/// Edge processes the subscribers are spread over.
pub const EDGES: usize = 3;
/// Calls of each kind measured.
pub const CALLS: usize = 20;
/// The user disconnected, one connection on each edge.
const VICTIM: &str = "victim";
/// Longest a disconnect round may take until every close frame is read.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
/// Largest answer the gRPC client accepts.
const MAX_GRPC_ANSWER: usize = 64 * 1024 * 1024;

/// The answer times of one kind of call, and the size of its answer.
struct Timed {
    micros: Histogram,
    /// Bytes of the last answer (they do not change between calls).
    bytes: usize,
}

impl Timed {
    fn new() -> Self {
        Self {
            micros: Histogram::default(),
            bytes: 0,
        }
    }

    /// Adds the p50 (with `note`), p99 and max rows of `what`, and its
    /// size row when `size`.
    fn rows(&self, bench: &mut Bench, what: &str, size: bool, note: &str) {
        let rows = [
            ("p50", self.micros.quantile(0.5), note),
            ("p99", self.micros.quantile(0.99), ""),
            ("max", self.micros.max(), ""),
        ];
        for (stat, micros, note) in rows {
            bench.report.add(
                Row::new(
                    "presence",
                    "cluster",
                    &format!("{what} {stat}"),
                    micros as f64,
                    Unit::Micros,
                )
                .note(note),
            );
        }
        if size {
            bench.report.add(
                Row::new(
                    "presence",
                    "cluster",
                    &format!("{what} answer size"),
                    self.bytes as f64,
                    Unit::Bytes,
                )
                .note(format!("{} bytes", self.bytes)),
            );
        }
    }
}

/// `GET <http_base><path>` [`CALLS`] times; each answer must pass `check`.
async fn time_get(
    http: &reqwest::Client,
    http_base: &str,
    path: &str,
    check: impl Fn(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<Timed> {
    let url = format!("{http_base}{path}");
    let mut timed = Timed::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        let response = http.get(&url).send().await.with_context(|| url.clone())?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| url.clone())?;
        timed.micros.record(started.elapsed().as_micros() as u64);
        timed.bytes = body.len();
        ensure!(status.is_success(), "GET {path}: {status}");
        let answer: Value = serde_json::from_slice(&body).with_context(|| url.clone())?;
        check(&answer).with_context(|| format!("GET {path}"))?;
    }
    Ok(timed)
}

/// An answer that every edge gave.
fn complete(answer: &Value) -> anyhow::Result<()> {
    ensure!(
        answer["complete"] == true,
        "incomplete: missing {}",
        answer["missing"]
    );
    Ok(())
}

/// gRPC `Presence` of [`TOPIC`], [`CALLS`] times.
async fn time_grpc(grpc_url: &str, users: usize) -> anyhow::Result<Timed> {
    let mut client = PushClient::connect(grpc_url.to_owned())
        .await
        .with_context(|| format!("gRPC {grpc_url}"))?
        .max_decoding_message_size(MAX_GRPC_ANSWER);
    let mut timed = Timed::new();
    for _ in 0..CALLS {
        let request = PresenceRequest {
            topic: TOPIC.into(),
            uid: String::new(),
        };
        let started = Instant::now();
        let answer = client.presence(request).await?.into_inner();
        timed.micros.record(started.elapsed().as_micros() as u64);
        timed.bytes = answer.encoded_len();
        ensure!(
            answer.complete,
            "gRPC Presence incomplete: missing {:?}",
            answer.missing
        );
        ensure!(
            answer.users.len() == users,
            "gRPC Presence: {} users, expected {users}",
            answer.users.len()
        );
    }
    Ok(timed)
}

/// [`CALLS`] rounds of: [`VICTIM`] connects to every edge, then `POST
/// /v1/disconnect`; the time until its last connection read its close
/// frame.
async fn time_disconnect(
    http: &reqwest::Client,
    http_base: &str,
    ws_urls: &[String],
) -> anyhow::Result<Timed> {
    let url = format!("{http_base}/v1/disconnect");
    let body = format!(r#"{{"uid":"{VICTIM}"}}"#);
    let mut timed = Timed::new();
    for _ in 0..CALLS {
        let mut opened = Vec::with_capacity(ws_urls.len());
        for ws_url in ws_urls {
            opened.push(open_user(ws_url, VICTIM, TOPIC).await?);
        }
        let started = Instant::now();
        let deadline = started + CLOSE_LIMIT;
        let closes: Vec<_> = opened
            .into_iter()
            .map(|(stream, early)| tokio::spawn(close_of(stream, early, deadline)))
            .collect();
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .with_context(|| url.clone())?;
        let status = response.status();
        let answer: Value = response.json().await.with_context(|| url.clone())?;
        ensure!(
            status.is_success(),
            "POST /v1/disconnect: {status} {answer}"
        );
        ensure!(
            answer["connections"] == ws_urls.len(),
            "POST /v1/disconnect reached {} connections, expected {}",
            answer["connections"],
            ws_urls.len()
        );
        let mut last = started;
        for close in closes {
            let (code, at) = close.await??;
            ensure!(code == Some(4003), "closed with {code:?}, not 4003");
            last = last.max(at);
        }
        timed.micros.record((last - started).as_micros() as u64);
    }
    Ok(timed)
}

/// Runs the presence scenario on a cluster of [`EDGES`] edges.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let users = bench.sizes.presence_subscribers;
    let mut cluster = EtcdCluster::start(&bench.bins, EDGES, true, bench.history()).await?;
    eprintln!("[presence] {users} users subscribed to {TOPIC:?} over {EDGES} edges");
    let mut fleets = Vec::with_capacity(EDGES);
    let mut first = 0;
    for (i, ws_url) in cluster.ws_urls.iter().enumerate() {
        let conns = users / EDGES + usize::from(i < users % EDGES);
        let spec = FleetSpec {
            subscribe: SubscribeMode::PublicUser,
            first,
            ..FleetSpec::public(ws_url, conns, TOPIC)
        };
        first += conns;
        let fleet = Fleet::start(&spec).await?;
        fleet.require_all(conns, &format!("edge-{i}"))?;
        fleets.push(fleet);
    }
    let http = http_client();
    let base = cluster.http_base.clone();
    let n = users as u64;

    let presence = time_get(&http, &base, &format!("/v1/presence?topic={TOPIC}"), |a| {
        complete(a)?;
        let counted = a["users"].as_object().map_or(0, serde_json::Map::len);
        ensure!(counted == users, "{counted} users, expected {users}");
        Ok(())
    })
    .await?;
    let stats = time_get(
        &http,
        &base,
        &format!("/v1/presence_stats?topic={TOPIC}"),
        |a| {
            complete(a)?;
            ensure!(a["users"] == n, "users {}, expected {n}", a["users"]);
            Ok(())
        },
    )
    .await?;
    let topics = time_get(&http, &base, "/v1/topics", |a| {
        complete(a)?;
        ensure!(
            a["topics"][0]["subscribers"] == n,
            "topics: {}, expected {TOPIC} with {n} subscribers",
            a["topics"]
        );
        Ok(())
    })
    .await?;
    let grpc = time_grpc(&cluster.grpc_url, users).await?;
    let disconnect = time_disconnect(&http, &base, &cluster.ws_urls).await?;

    let mut closed = 0;
    for fleet in &mut fleets {
        closed += fleet.stats().await?.closed;
    }
    for fleet in fleets {
        fleet.stop().await;
    }
    cluster.check_running()?;
    ensure!(
        closed == 0,
        "{closed} subscribers were closed by the server"
    );

    let note = format!("{users} users in one topic over {EDGES} edges, {CALLS} calls");
    presence.rows(bench, "GET /v1/presence", true, &note);
    stats.rows(bench, "GET /v1/presence_stats", true, &note);
    topics.rows(bench, "GET /v1/topics", true, &note);
    grpc.rows(bench, "gRPC Presence", true, &note);
    disconnect.rows(
        bench,
        "disconnect, all closed",
        false,
        &format!(
            "POST /v1/disconnect of a user with a connection on each of {EDGES} edges, \
             until its clients read every close frame; {CALLS} rounds, {users} others connected"
        ),
    );
    bench.report.chart(chart::latency(
        "presence",
        &format!("presence: answer times, {users} users in one topic over {EDGES} edges"),
        &[
            ("GET /v1/presence", &presence.micros),
            ("GET /v1/presence_stats", &stats.micros),
            ("GET /v1/topics", &topics.micros),
            ("gRPC Presence", &grpc.micros),
            ("disconnect, all closed", &disconnect.micros),
        ],
    ));
    Ok(())
}

//! ingress: pushes/s gpush's push API accepts, against the ceiling of this
//! machine measured in the same run.
//!
//! The ceiling is a minimal hyper server ([`api_baseline`]) that answers
//! every HTTP/1.1 POST with 200 and every h2 POST as a successful gRPC
//! call. The same load generator ([`load`], processes of their own) then
//! drives a cluster ingress (real NATS behind it, no edge: NATS drops
//! messages nobody subscribed to, so the figure is ingress's and NATS's)
//! with `publish_ack = server` and `flush`, and a standalone edge's push
//! port. Single pushes (`POST /v1/pushData`, gRPC `PushData`) are reported
//! as a ratio to the ceiling, measured again right before each of them (the
//! baseline server runs throughout), so a machine shared with other work
//! drifts between the two as little as it can; batches (`pushBatch`,
//! `PushBatch` with [`BATCH`] messages per call) as messages/s. Each row's
//! note carries the CPU the server processes and the generator used.
//!
//! [`api_baseline`]: crate::bench::api_baseline

use super::Bench;
use crate::bench::cli::{HistoryMode, LoadProtocol};
use crate::bench::load::{self, LoadSpec, LoadTally};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{ApiBaseline, Cluster, Standalone, cpu_time_of};
use gpush_common::bus::Ack;
use std::net::SocketAddr;
use tokio::time::Instant;

/// Keep-alive connections for single HTTP pushes.
const HTTP_CONNECTIONS: usize = 32;
/// h2 connections for single gRPC calls.
const GRPC_CONNECTIONS: usize = 4;
/// gRPC calls in flight per h2 connection.
const GRPC_IN_FLIGHT: usize = 8;
/// Load-generator processes for HTTP/1.1 (a second one does not raise the
/// ceiling: measured by the scenario's "2 load processes" rows).
const HTTP_LOAD_PROCESSES: usize = 1;
/// Load-generator processes for gRPC: the h2 client costs more per call,
/// and one single-threaded process held the gRPC ceiling down (15.1 k/s
/// against 27.1 k/s with two, same connections and calls in flight).
const GRPC_LOAD_PROCESSES: usize = 2;
/// Connections (HTTP) or calls in flight (gRPC) for batches.
const BATCH_CALLS: usize = 4;
/// Messages per batch call.
const BATCH: usize = 1000;
/// The topic pushed to (no subscribers).
const TOPIC: &str = "ingress-bench";
/// Single pushes through a cluster ingress with the server ack, at least
/// this share of the ceiling.
const TARGET_CLUSTER: f64 = 0.5;
/// Single pushes to a standalone edge, at least this share of the ceiling.
const TARGET_STANDALONE: f64 = 0.8;
/// Batched messages/s target.
const TARGET_BATCH: f64 = 1_000_000.0;

/// The history setting the single-push goals are stated for: off, because
/// with history on every push is also a JetStream store the ceiling does
/// not do (reported beside it, without a goal).
const GOAL_HISTORY: HistoryMode = HistoryMode::Off;

/// The push-API baseline, running through the scenario.
struct Ceiling(ApiBaseline);

impl Ceiling {
    /// The baseline's address for `protocol`.
    fn addr(&self, protocol: LoadProtocol) -> SocketAddr {
        match protocol {
            LoadProtocol::Http => self.0.http,
            LoadProtocol::Grpc => self.0.grpc,
        }
    }

    /// Single pushes to the baseline now.
    async fn measure(&self, bench: &Bench, protocol: LoadProtocol) -> anyhow::Result<Measured> {
        let spec = spec(bench, self.addr(protocol), protocol, 1);
        measure(bench, &spec, &[self.0.pid()]).await
    }
}

/// The load for `protocol` at `addr`, `batch` messages per call.
fn spec(bench: &Bench, addr: SocketAddr, protocol: LoadProtocol, batch: usize) -> LoadSpec {
    let (connections, in_flight) = match (protocol, batch) {
        (LoadProtocol::Http, 1) => (HTTP_CONNECTIONS, 1),
        (LoadProtocol::Grpc, 1) => (GRPC_CONNECTIONS, GRPC_IN_FLIGHT),
        (LoadProtocol::Http, _) => (BATCH_CALLS, 1),
        (LoadProtocol::Grpc, _) => (1, BATCH_CALLS),
    };
    LoadSpec {
        addr,
        protocol,
        connections,
        in_flight,
        batch,
        processes: match protocol {
            LoadProtocol::Http => HTTP_LOAD_PROCESSES,
            LoadProtocol::Grpc => GRPC_LOAD_PROCESSES,
        },
        run_for: bench.sizes.ingress_run,
    }
}

/// What one load run measured.
struct Measured {
    /// Messages/s.
    rate: f64,
    /// CPU seconds the server processes used per message.
    cpu_per_message: f64,
    /// The load and both sides' CPU.
    note: String,
}

/// Runs `spec` against the server processes `pids`.
async fn measure(bench: &Bench, spec: &LoadSpec, pids: &[u32]) -> anyhow::Result<Measured> {
    let (cpu0, t0) = (cpu_time_of(pids)?, Instant::now());
    let tally: LoadTally = load::generate(&bench.bins.bench, spec, TOPIC).await?;
    let cpu = (cpu_time_of(pids)? - cpu0).as_secs_f64();
    let server = cpu / t0.elapsed().as_secs_f64();
    let what = match spec.batch {
        1 => spec.describe(),
        n => format!("{n} per call, {}", spec.describe()),
    };
    let messages = tally.calls * spec.batch as u64;
    Ok(Measured {
        rate: tally.rate() * spec.batch as f64,
        cpu_per_message: cpu / messages.max(1) as f64,
        note: tally.note(&format!("{what}; server {server:.2} cores")),
    })
}

fn metric(protocol: LoadProtocol, batch: usize) -> &'static str {
    match (protocol, batch) {
        (LoadProtocol::Http, 1) => "HTTP single pushes/s",
        (LoadProtocol::Grpc, 1) => "gRPC single pushes/s",
        (LoadProtocol::Http, _) => "HTTP batch messages/s",
        (LoadProtocol::Grpc, _) => "gRPC batch messages/s",
    }
}

const PROTOCOLS: [LoadProtocol; 2] = [LoadProtocol::Http, LoadProtocol::Grpc];

/// Runs the ingress scenario: the ceiling, then each of the run's history
/// settings.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    eprintln!("[ingress] push-API baseline (hyper, answers every POST)");
    let ceiling = Ceiling(ApiBaseline::start(&bench.bins).await?);
    for protocol in PROTOCOLS {
        let top = ceiling.measure(bench, protocol).await?;
        let row = Row::new(
            "ingress",
            "api baseline",
            metric(protocol, 1),
            top.rate,
            Unit::PerSec,
        );
        bench.report.add(row.note(top.note));
        let row = Row::new(
            "ingress",
            "api baseline",
            cpu_metric(protocol),
            top.cpu_per_message * 1e9,
            Unit::Nanos,
        );
        bench.report.add(row);
        // Twice the generator: if the rate rose with it, one was the limit.
        let once = spec(bench, ceiling.addr(protocol), protocol, 1);
        let twice = LoadSpec {
            processes: 2 * once.processes,
            ..once
        };
        let two = measure(bench, &twice, &[ceiling.0.pid()]).await?;
        let system = format!("api baseline, {} load processes", twice.processes);
        let row = Row::new(
            "ingress",
            &system,
            metric(protocol, 1),
            two.rate,
            Unit::PerSec,
        );
        bench.report.add(row.note(two.note));
    }
    for history in bench.history.clone() {
        for ack in [Ack::Server, Ack::Flush] {
            cluster(bench, history, ack, &ceiling).await?;
        }
        standalone(bench, history, &ceiling).await?;
    }
    let Ceiling(mut server) = ceiling;
    server.check_running()
}

fn cpu_metric(protocol: LoadProtocol) -> &'static str {
    match protocol {
        LoadProtocol::Http => "HTTP server CPU per push",
        LoadProtocol::Grpc => "gRPC server CPU per push",
    }
}

/// Single pushes to `addr` with `protocol`, right after the ceiling's: the
/// rate row, with the ceiling as its baseline, and the server CPU per push
/// (every process in `pids`) beside the ceiling's.
async fn single(
    bench: &Bench,
    ceiling: &Ceiling,
    system: &str,
    (addr, protocol): (SocketAddr, LoadProtocol),
    pids: &[u32],
) -> anyhow::Result<(Row, Row)> {
    let top = ceiling.measure(bench, protocol).await?;
    let got = measure(bench, &spec(bench, addr, protocol, 1), pids).await?;
    let rate = Row::new(
        "ingress",
        system,
        metric(protocol, 1),
        got.rate,
        Unit::PerSec,
    )
    .baseline(Some(top.rate))
    .note(got.note);
    let cpu = Row::new(
        "ingress",
        system,
        cpu_metric(protocol),
        got.cpu_per_message * 1e9,
        Unit::Nanos,
    )
    .baseline(Some(top.cpu_per_message * 1e9));
    Ok((rate, cpu))
}

/// Single pushes and batches through ingress and NATS.
async fn cluster(
    bench: &mut Bench,
    history: HistoryMode,
    ack: Ack,
    ceiling: &Ceiling,
) -> anyhow::Result<()> {
    let system = format!("{}, ack {ack}", history.label("cluster"));
    eprintln!("[ingress] nats-server + gpush-ingress ({system})");
    let mut cluster = Cluster::start_with_ack(&bench.bins, false, history, ack).await?;
    let pids = cluster.bus_pids();
    for protocol in PROTOCOLS {
        let addr = match protocol {
            LoadProtocol::Http => cluster.http,
            LoadProtocol::Grpc => cluster.grpc,
        };
        let (mut row, cpu) = single(bench, ceiling, &system, (addr, protocol), &pids).await?;
        if ack == Ack::Server && history == GOAL_HISTORY {
            row = row.target(Target::ratio_at_least(TARGET_CLUSTER));
        }
        bench.report.add(row);
        bench.report.add(cpu);
        let batch = measure(bench, &spec(bench, addr, protocol, BATCH), &pids).await?;
        let row = Row::new(
            "ingress",
            &system,
            metric(protocol, BATCH),
            batch.rate,
            Unit::PerSec,
        )
        .target(Target::at_least(TARGET_BATCH))
        .note(batch.note);
        bench.report.add(row);
    }
    cluster.check_running()
}

/// Single pushes to a standalone edge's push port.
async fn standalone(
    bench: &mut Bench,
    history: HistoryMode,
    ceiling: &Ceiling,
) -> anyhow::Result<()> {
    let system = history.label("standalone");
    eprintln!("[ingress] gpush-edge --standalone ({system})");
    let mut edge = Standalone::start(&bench.bins, false, history).await?;
    let pids = [edge.pid()];
    for protocol in PROTOCOLS {
        let addr = match protocol {
            LoadProtocol::Http => edge.http,
            LoadProtocol::Grpc => edge.grpc,
        };
        let (mut row, cpu) = single(bench, ceiling, &system, (addr, protocol), &pids).await?;
        if history == GOAL_HISTORY {
            row = row.target(Target::ratio_at_least(TARGET_STANDALONE));
        }
        bench.report.add(row);
        bench.report.add(cpu);
    }
    edge.check_running()
}

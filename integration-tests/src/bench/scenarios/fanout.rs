//! fanout: sustained deliveries/s to the subscribers of one topic.
//!
//! The pusher keeps at most [`IN_FLIGHT`] pushes undelivered: before push
//! `i` it waits until the clients have received `(i + 1 - IN_FLIGHT)` ×
//! subscribers frames (they report their counts every few milliseconds),
//! with up to [`PUSH_CALLS`] calls under way at once.
//! So the rate is what the whole path sustains (push API, fan-out, writes,
//! clients), never a queue filling up. After a one-second warm-up the
//! deliveries in the measured window are counted; then the pusher stops,
//! the fleet drains, and loss is pushes × subscribers − frames received.
//! Measured for a standalone edge, a cluster (push through ingress and
//! NATS to one edge) and the baseline.
//!
//! Then, on the same fleet, the server's CPU per delivery at a fixed
//! [`CPU_DELIVERIES`] deliveries/s (the same pushes/s for every server, so
//! batching differs as little as the servers let it): `utime + stime` of
//! the server process over [`CPU_WINDOW`], divided by the deliveries in
//! it. For a cluster the edge is compared to the baseline, and
//! nats-server + ingress are reported apart.

use super::{Bench, FANOUT_TOPIC, join_notes, trouble_note};
use crate::bench::cli::SubscribeMode;
use crate::bench::fleet::{Fleet, FleetSpec, Wait};
use crate::bench::push::{Pusher, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::scenarios::latency::pace;
use crate::bench::systems::{Baseline, Cluster, Standalone, cpu_time_of};
use anyhow::{Context as _, bail};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Pushes sent but not yet delivered to every subscriber, at most.
pub const IN_FLIGHT: u64 = 16;
/// Push calls in flight at once, so the pusher's round trips do not limit
/// the rate at small fleet sizes.
pub const PUSH_CALLS: usize = 4;
/// Unmeasured time at the start of a run.
const WARMUP: Duration = Duration::from_secs(1);
/// A run gives up when deliveries stop moving for this long.
const STALL: Duration = Duration::from_secs(5);
/// Longest wait for the last pushes to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Standalone deliveries/s, at least this share of the baseline's.
const TARGET_STANDALONE: f64 = 0.8;
/// Deliveries/s through NATS, at least this share of the baseline's.
const TARGET_CLUSTER: f64 = 0.7;
/// Deliveries/s at which CPU per delivery is measured.
pub const CPU_DELIVERIES: u64 = 300_000;
/// Measured time of the CPU reading (after a one-second warm-up).
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// Server CPU per delivery, at most this multiple of the baseline's.
const TARGET_CPU: f64 = 1.1;

/// What a fan-out run measured.
#[derive(Debug, Clone)]
pub struct FanoutFigures {
    /// Subscribers connected.
    pub subscribers: u64,
    /// Pushes sent.
    pub pushes: u64,
    /// Deliveries per second in the measured window.
    pub rate: f64,
    /// Deliveries expected but not received (negative: duplicates).
    pub loss: i64,
    /// Sizes, failures, stalls.
    pub note: String,
    /// CPU per delivery at [`CPU_DELIVERIES`]/s.
    pub cpu: CpuFigures,
}

/// CPU per delivery at a fixed delivery rate.
#[derive(Debug, Clone, Default)]
pub struct CpuFigures {
    /// The server's (the edge's, in a cluster) CPU per delivery, seconds.
    pub server: f64,
    /// nats-server's and ingress's CPU per delivery, seconds (clusters).
    pub bus: Option<f64>,
    /// Deliveries/s reached, and the server's CPU in cores.
    pub note: String,
}

/// Pushes to the fleet's subscribers so that they receive
/// [`CPU_DELIVERIES`] a second, and reads the CPU that `server` (and
/// `bus`, if any) used per delivery over [`CPU_WINDOW`].
pub async fn cpu_per_delivery(
    fleet: &Fleet,
    pusher: &Pusher,
    server: &[u32],
    bus: &[u32],
) -> anyhow::Result<CpuFigures> {
    let subscribers = fleet.setup.connected.max(1);
    let rate = (CPU_DELIVERIES / subscribers).max(1) as u32;
    let push = |seq| async move { pusher.push(FANOUT_TOPIC, &stamp(seq, None)).await };
    let warm = pace(rate, WARMUP, 0, push).await?;
    let (t0, d0) = (Instant::now(), fleet.delivered());
    let (server0, bus0) = (cpu_time_of(server)?, cpu_time_of(bus)?);
    let pushed = pace(rate, CPU_WINDOW, warm, push).await?;
    let (server1, bus1) = (cpu_time_of(server)?, cpu_time_of(bus)?);
    let (secs, counted) = (t0.elapsed().as_secs_f64(), fleet.delivered() - d0);
    // What the server had to deliver in the window (the fan-out run above
    // checks that nothing is lost); the clients' own count lags behind
    // when they are short of CPU.
    let delivered = pushed * subscribers;
    let per = |cpu: Duration| cpu.as_secs_f64() / delivered.max(1) as f64;
    let server_cpu = server1 - server0;
    Ok(CpuFigures {
        server: per(server_cpu),
        bus: (!bus.is_empty()).then(|| per(bus1 - bus0)),
        note: format!(
            "{rate} pushes/s: {:.0} deliveries/s ({:.0} counted), server {:.2} cores",
            delivered as f64 / secs,
            counted as f64 / secs,
            server_cpu.as_secs_f64() / secs
        ),
    })
}

/// Pushes to the fleet's subscribers for `run_for` (after a warm-up) with
/// at most [`IN_FLIGHT`] pushes undelivered.
pub async fn drive(
    fleet: &mut Fleet,
    pusher: &Pusher,
    run_for: Duration,
) -> anyhow::Result<FanoutFigures> {
    let subscribers = fleet.setup.connected;
    if subscribers == 0 {
        bail!(
            "no subscriber connected: {}",
            fleet.setup.first_error.as_deref().unwrap_or("?")
        );
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + run_for;
    let mut mark = None;
    let mut sent = 0u64;
    let mut stalled = false;
    let calls_allowed = Arc::new(Semaphore::new(PUSH_CALLS));
    let mut calls = JoinSet::new();
    loop {
        let now = Instant::now();
        if mark.is_none() && now >= measure_from {
            mark = Some((now, fleet.delivered()));
        }
        if now >= end {
            break;
        }
        if sent >= IN_FLIGHT {
            let needed = (sent + 1 - IN_FLIGHT) * subscribers;
            match fleet.wait_delivered(needed, STALL, end).await {
                Wait::Reached => {}
                Wait::Deadline => continue,
                Wait::Stalled => {
                    stalled = true;
                    break;
                }
            }
        }
        let permit = calls_allowed.clone().acquire_owned().await?;
        let (pusher, payload) = (pusher.clone(), stamp(sent, None));
        calls.spawn(async move {
            let result = pusher.push(FANOUT_TOPIC, &payload).await;
            drop(permit);
            result
        });
        sent += 1;
        while let Some(call) = calls.try_join_next() {
            call.context("push task")??;
        }
    }
    while let Some(call) = calls.join_next().await {
        call.context("push task")??;
    }
    let (t0, d0) = mark.unwrap_or((start, 0));
    let (t1, d1) = (Instant::now(), fleet.delivered());
    let rate = d1.saturating_sub(d0) as f64 / t1.duration_since(t0).as_secs_f64();
    let expected = sent * subscribers;
    let drain = fleet
        .wait_delivered(expected, STALL, Instant::now() + DRAIN_LIMIT)
        .await;
    let stats = fleet.stats().await?;
    let setup = &fleet.setup;
    let trouble = trouble_note(setup.failed, setup.first_error.as_deref(), stats.closed);
    let stall = match (stalled, drain) {
        (true, _) => format!("STALLED: deliveries stopped for {STALL:?}"),
        (false, Wait::Reached) => String::new(),
        (false, _) => "did not drain".to_owned(),
    };
    let sizes =
        format!("{subscribers} subs, {sent} pushes, {IN_FLIGHT} in flight, {PUSH_CALLS} calls");
    Ok(FanoutFigures {
        subscribers,
        pushes: sent,
        rate,
        loss: expected as i64 - stats.frames as i64,
        note: join_notes(&[&sizes, &trouble, &stall]),
        cpu: CpuFigures::default(),
    })
}

fn spec(url: &str, subscribers: usize) -> FleetSpec {
    FleetSpec::public(url, subscribers, FANOUT_TOPIC)
}

fn add_rows(
    bench: &mut Bench,
    system: &str,
    figures: &FanoutFigures,
    baseline: Option<&FanoutFigures>,
    target: Option<f64>,
) {
    let mut rate = Row::new("fanout", system, "deliveries/s", figures.rate, Unit::PerSec)
        .baseline(baseline.map(|b| b.rate))
        .note(figures.note.clone());
    if let Some(share) = target {
        rate = rate.target(Target::ratio_at_least(share));
    }
    bench.report.add(rate);
    bench.report.add(
        Row::new("fanout", system, "loss", figures.loss as f64, Unit::Count)
            .target(Target::at_most(0.0)),
    );
    let metric = if figures.cpu.bus.is_some() {
        "edge CPU per delivery"
    } else {
        "server CPU per delivery"
    };
    let cpu = &figures.cpu;
    let mut row = Row::new("fanout", system, metric, cpu.server * 1e9, Unit::Nanos)
        .baseline(baseline.map(|b| b.cpu.server * 1e9))
        .note(cpu.note.clone());
    if baseline.is_some() {
        row = row.target(Target::ratio_at_most(TARGET_CPU));
    }
    bench.report.add(row);
    if let Some(bus) = cpu.bus {
        bench.report.add(
            Row::new(
                "fanout",
                system,
                "nats + ingress CPU per delivery",
                bus * 1e9,
                Unit::Nanos,
            )
            .baseline(baseline.map(|b| b.cpu.server * 1e9)),
        );
    }
}

/// The baseline server's figures; adds its rows.
pub async fn measure_baseline(bench: &mut Bench) -> anyhow::Result<FanoutFigures> {
    let subscribers = bench.sizes.fanout_subscribers;
    eprintln!("[fanout] baseline: {subscribers} subscribers");
    let mut server = Baseline::start(&bench.bins).await?;
    let spec = FleetSpec {
        subscribe: SubscribeMode::None,
        ..spec(&server.ws_url, subscribers)
    };
    let mut fleet = Fleet::start(&spec).await?;
    let pusher = Pusher::baseline(&server.http_base);
    let mut figures = drive(&mut fleet, &pusher, bench.sizes.fanout_run).await?;
    figures.cpu = cpu_per_delivery(&fleet, &pusher, &[server.pid()], &[]).await?;
    fleet.stop().await;
    server.check_running()?;
    add_rows(bench, "baseline", &figures, None, None);
    Ok(figures)
}

/// Runs the fan-out scenario: baseline, then standalone and cluster with
/// each of the run's history settings.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let baseline = bench.baseline_fanout().await?;
    let subscribers = bench.sizes.fanout_subscribers;
    let run_for = bench.sizes.fanout_run;

    for history in bench.history.clone() {
        let system = history.label("standalone");
        eprintln!("[fanout] {system} edge: {subscribers} subscribers");
        let mut edge = Standalone::start(&bench.bins, false, history).await?;
        let mut fleet = Fleet::start(&spec(&edge.ws_url, subscribers)).await?;
        let pusher = Pusher::gpush(&edge.http_base);
        let mut figures = drive(&mut fleet, &pusher, run_for).await?;
        figures.cpu = cpu_per_delivery(&fleet, &pusher, &[edge.pid()], &[]).await?;
        fleet.stop().await;
        edge.check_running()?;
        drop(edge);
        add_rows(
            bench,
            &system,
            &figures,
            Some(&baseline),
            Some(TARGET_STANDALONE),
        );
    }

    for history in bench.history.clone() {
        let system = history.label("cluster");
        eprintln!("[fanout] {system} (ingress -> NATS -> edge): {subscribers} subscribers");
        let mut cluster = Cluster::start(&bench.bins, true, history).await?;
        let ws_url = cluster.ws_url.clone().unwrap_or_default();
        let mut fleet = Fleet::start(&spec(&ws_url, subscribers)).await?;
        cluster.wait_subscribed(FANOUT_TOPIC).await;
        let pusher = Pusher::gpush(&cluster.http_base);
        let mut figures = drive(&mut fleet, &pusher, run_for).await?;
        let edge: Vec<u32> = cluster.edge_pid().into_iter().collect();
        figures.cpu = cpu_per_delivery(&fleet, &pusher, &edge, &cluster.bus_pids()).await?;
        fleet.stop().await;
        cluster.check_running()?;
        drop(cluster);
        add_rows(
            bench,
            &system,
            &figures,
            Some(&baseline),
            Some(TARGET_CLUSTER),
        );
    }
    Ok(())
}

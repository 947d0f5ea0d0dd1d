//! latency: push-to-receive latency at a fixed push rate.
//!
//! [`LATENCY_RATE`] pushes per second go to every subscriber of one topic;
//! each payload carries its send time (unix microseconds, taken just
//! before the HTTP call) and each client records receive time minus send
//! time, so the figure spans the push API, the fan-out, the edge's write
//! batching (default `write_interval`) and the client. A one-second
//! warm-up is pushed, drained and discarded first.

use super::{Bench, FANOUT_TOPIC, LATENCY_RATE, join_notes, trouble_note};
use crate::bench::chart;
use crate::bench::cli::SubscribeMode;
use crate::bench::fleet::{Fleet, FleetSpec, Wait};
use crate::bench::histogram::Histogram;
use crate::bench::push::{Pusher, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{Baseline, Standalone};
use anyhow::bail;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// Unmeasured pushing at the start.
const WARMUP: Duration = Duration::from_secs(1);
/// Give up waiting for deliveries that stopped for this long.
const STALL: Duration = Duration::from_secs(3);
/// Longest wait for the last pushes to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// gpush's p99, at most this multiple of the baseline's.
const TARGET_P99_RATIO: f64 = 1.5;

/// What a latency run measured.
#[derive(Debug, Clone)]
pub struct LatencyFigures {
    /// Median, microseconds.
    pub p50: u64,
    /// 99th percentile, microseconds.
    pub p99: u64,
    /// 99.9th percentile, microseconds.
    pub p999: u64,
    /// Worst, microseconds.
    pub max: u64,
    /// Deliveries expected but not received.
    pub loss: i64,
    /// Every delivery's latency, microseconds (for the chart).
    pub histogram: Histogram,
    /// Sizes and trouble.
    pub note: String,
}

/// Pushes `rate` times a second for `run_for`; payloads are numbered from
/// `first`. Returns how many were pushed.
pub async fn pace<F, Fut>(
    rate: u32,
    run_for: Duration,
    first: u64,
    mut push: F,
) -> anyhow::Result<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut tick = interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let end = Instant::now() + run_for;
    let mut sent = 0;
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            return Ok(sent);
        }
        push(first + sent).await?;
        sent += 1;
    }
}

/// Measures latency on a connected fleet.
pub async fn drive(
    fleet: &mut Fleet,
    pusher: &Pusher,
    run_for: Duration,
) -> anyhow::Result<LatencyFigures> {
    let subscribers = fleet.setup.connected;
    if subscribers == 0 {
        bail!(
            "no subscriber connected: {}",
            fleet.setup.first_error.as_deref().unwrap_or("?")
        );
    }
    let push = |seq| async move { pusher.push(FANOUT_TOPIC, &stamp(seq, None)).await };
    let warm = pace(LATENCY_RATE, WARMUP, 0, push).await?;
    fleet
        .wait_delivered(warm * subscribers, STALL, Instant::now() + DRAIN_LIMIT)
        .await;
    fleet.reset().await?;
    let sent = pace(LATENCY_RATE, run_for, warm, push).await?;
    let drain = fleet
        .wait_delivered(sent * subscribers, STALL, Instant::now() + DRAIN_LIMIT)
        .await;
    let stats = fleet.stats().await?;
    let h = &stats.latency;
    let setup = &fleet.setup;
    let sizes = format!(
        "{subscribers} subs, {sent} pushes at {LATENCY_RATE}/s, mean {:.0} µs",
        h.mean()
    );
    let trouble = trouble_note(setup.failed, setup.first_error.as_deref(), stats.closed);
    let drained = if drain == Wait::Reached {
        ""
    } else {
        "did not drain"
    };
    let unparsed = if stats.unparsed > 0 {
        format!("{} pushes without a send time", stats.unparsed)
    } else {
        String::new()
    };
    Ok(LatencyFigures {
        p50: h.quantile(0.50),
        p99: h.quantile(0.99),
        p999: h.quantile(0.999),
        max: h.max(),
        loss: (sent * subscribers) as i64 - stats.frames as i64,
        note: join_notes(&[&sizes, &trouble, drained, &unparsed]),
        histogram: h.clone(),
    })
}

fn add_rows(
    bench: &mut Bench,
    system: &str,
    figures: &LatencyFigures,
    baseline: Option<&LatencyFigures>,
) {
    let quantiles = [
        ("p50", figures.p50, baseline.map(|b| b.p50)),
        ("p99", figures.p99, baseline.map(|b| b.p99)),
        ("p99.9", figures.p999, baseline.map(|b| b.p999)),
        ("max", figures.max, baseline.map(|b| b.max)),
    ];
    for (name, value, base) in quantiles {
        let mut row = Row::new("latency", system, name, value as f64, Unit::Micros)
            .baseline(base.map(|b| b as f64));
        if name == "p99" && baseline.is_some() {
            row = row.target(Target::ratio_at_most(TARGET_P99_RATIO));
        }
        if name == "p50" {
            row = row.note(figures.note.clone());
        }
        bench.report.add(row);
    }
    bench.report.add(
        Row::new("latency", system, "loss", figures.loss as f64, Unit::Count)
            .target(Target::at_most(0.0)),
    );
}

/// The baseline server's figures; adds its rows.
pub async fn measure_baseline(bench: &mut Bench) -> anyhow::Result<LatencyFigures> {
    let subscribers = bench.sizes.fanout_subscribers;
    eprintln!("[latency] baseline: {subscribers} subscribers, {LATENCY_RATE} pushes/s");
    let mut server = Baseline::start(&bench.bins).await?;
    let spec = FleetSpec {
        subscribe: SubscribeMode::None,
        latency: true,
        ..FleetSpec::public(&server.ws_url, subscribers, FANOUT_TOPIC)
    };
    let mut fleet = Fleet::start(&spec).await?;
    let figures = drive(
        &mut fleet,
        &Pusher::baseline(&server.http_base),
        bench.sizes.latency_run,
    )
    .await?;
    fleet.stop().await;
    server.check_running()?;
    add_rows(bench, "baseline", &figures, None);
    Ok(figures)
}

/// Runs the latency scenario: baseline, then a standalone edge with the
/// default write interval.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let baseline = bench.baseline_latency().await?;
    let subscribers = bench.sizes.fanout_subscribers;
    eprintln!("[latency] standalone edge: {subscribers} subscribers, {LATENCY_RATE} pushes/s");
    let mut edge = Standalone::start(&bench.bins, false, bench.history()).await?;
    let spec = FleetSpec {
        latency: true,
        ..FleetSpec::public(&edge.ws_url, subscribers, FANOUT_TOPIC)
    };
    let mut fleet = Fleet::start(&spec).await?;
    let figures = drive(
        &mut fleet,
        &Pusher::gpush(&edge.http_base),
        bench.sizes.latency_run,
    )
    .await?;
    fleet.stop().await;
    edge.check_running()?;
    add_rows(bench, "standalone", &figures, Some(&baseline));
    bench.report.chart(chart::latency(
        "latency",
        &format!("latency: push to receive, {subscribers} subscribers, {LATENCY_RATE} pushes/s"),
        &[
            ("baseline", &baseline.histogram),
            ("gpush standalone", &figures.histogram),
        ],
    ));
    Ok(())
}

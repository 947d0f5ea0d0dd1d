//! storm: many clients reconnecting at once, each having missed the same
//! [`MISSED`] pushes of one topic, resubscribing with `since`.
//!
//! One push is made to learn the topic's position (`GET /v1/history`),
//! then [`MISSED`] more while nobody is subscribed; then a fleet of
//! `storm_clients` connections starts at once (every set-up in flight the
//! fleet allows), each subscribing with `since` the first push. The time
//! runs from the fleet's start until every client counted its [`MISSED`]
//! recovered pushes. For what bounds it, the same fleet is started again
//! without `since`: the time to connect, upgrade and subscribe alone.
//! Standalone (memory history) and cluster (the edge reads JetStream: it
//! followed nothing when the pushes were made). The chart shows the share
//! of the recovered pushes received against the time since the start,
//! sampled every [`TRACE_EVERY`].

use super::{Bench, join_notes, trouble_note};
use crate::bench::chart::{self, Series};
use crate::bench::cli::HistoryMode;
use crate::bench::fleet::{Fleet, FleetSpec, SETUP_CONCURRENCY, Wait, Watch};
use crate::bench::push::{Pusher, get_json, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{Cluster, Standalone};
use anyhow::{Context as _, bail};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

/// The topic of the storm.
const TOPIC: &str = "storm";
/// Pushes each client missed.
pub const MISSED: u64 = 50;
/// A storm gives up when deliveries stop moving for this long.
const STALL: Duration = Duration::from_secs(10);
/// Longest a storm may take.
const LIMIT: Duration = Duration::from_secs(120);
/// Goal: all recovered within this, microseconds.
const TARGET_MICROS: f64 = 10e6;
/// How often the chart's progress is sampled during a storm.
const TRACE_EVERY: Duration = Duration::from_millis(25);

/// What one storm measured.
struct StormFigures {
    /// Fleet start to the last recovered push, seconds.
    secs: f64,
    /// Fleet start to the last set-up (connected, subscribed), seconds.
    setup_secs: f64,
    /// Recovered pushes expected but not received.
    loss: i64,
    note: String,
    /// `(seconds since the start, % of the expected pushes received)`.
    trace: Vec<(f64, f64)>,
}

/// The topic's epoch and last offset, from the history API.
async fn position(http_base: &str) -> anyhow::Result<(serde_json::Value, u64)> {
    let url = format!("{http_base}/v1/history?topic={TOPIC}&since=0&limit=1");
    let answer = get_json(&url).await?;
    let offset = answer["offset"]
        .as_u64()
        .with_context(|| format!("no offset in {answer}"))?;
    Ok((answer["epoch"].clone(), offset))
}

/// Starts `spec`'s fleet; waits until it received `expected` frames.
async fn storm(spec: &FleetSpec, expected: u64) -> anyhow::Result<StormFigures> {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(spec)?;
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample(fleet.watch(), expected, started, stop.clone()));
    let waited = match fleet.ready(spec).await {
        Ok(()) => Ok(fleet.wait_delivered(expected, STALL, started + LIMIT).await),
        Err(e) => Err(e),
    };
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let mut trace = sampler.await.context("storm sampler")?;
    let wait = match waited {
        Ok(wait) => wait,
        Err(e) => {
            fleet.stop().await;
            return Err(e);
        }
    };
    if expected > 0 {
        trace.push((secs, 100.0 * fleet.delivered() as f64 / expected as f64));
    }
    let stats = fleet.stats().await?;
    let setup = fleet.setup.clone();
    fleet.stop().await;
    if setup.connected == 0 {
        bail!(
            "no client connected: {}",
            setup.first_error.as_deref().unwrap_or("?")
        );
    }
    let trouble = trouble_note(setup.failed, setup.first_error.as_deref(), stats.closed);
    let end = match wait {
        Wait::Reached => String::new(),
        Wait::Stalled => format!("STALLED: deliveries stopped for {STALL:?}"),
        Wait::Deadline => format!("not done within {LIMIT:?}"),
    };
    Ok(StormFigures {
        secs,
        setup_secs: setup.secs,
        loss: expected as i64 - stats.frames as i64,
        note: join_notes(&[&trouble, &end]),
        trace,
    })
}

/// Samples the share of `expected` pushes received every [`TRACE_EVERY`]
/// until `stop`, from `started` on.
async fn sample(
    watch: Watch,
    expected: u64,
    started: Instant,
    stop: CancellationToken,
) -> Vec<(f64, f64)> {
    let mut trace = Vec::new();
    if expected == 0 {
        return trace;
    }
    let mut tick = interval(TRACE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return trace,
            _ = tick.tick() => trace.push((
                started.elapsed().as_secs_f64(),
                100.0 * watch.delivered() as f64 / expected as f64,
            )),
        }
    }
}

/// One system's storm and its connect-only reference; adds the rows and
/// returns the storm's progress for the chart.
async fn measure(
    bench: &mut Bench,
    system: &str,
    ws_url: &str,
    http_base: &str,
) -> anyhow::Result<Series> {
    let clients = bench.sizes.storm_clients;
    let pusher = Pusher::gpush(http_base);
    pusher.push(TOPIC, &stamp(0, None)).await?;
    let (epoch, offset) = position(http_base).await?;
    for seq in 1..=MISSED {
        pusher.push(TOPIC, &stamp(seq, None)).await?;
    }
    let since = format!(r#"{{"offset":{offset},"epoch":{epoch}}}"#);
    eprintln!("[storm] {system}: {clients} clients with since {since}");
    let spec = FleetSpec {
        since: Some(since),
        ..FleetSpec::public(ws_url, clients, TOPIC)
    };
    let recovered = storm(&spec, clients as u64 * MISSED).await?;
    eprintln!("[storm] {system}: {clients} clients without since");
    let plain = storm(&FleetSpec::public(ws_url, clients, TOPIC), 0).await?;

    let in_flight = spec.processes() * SETUP_CONCURRENCY;
    bench.report.add(
        Row::new(
            "storm",
            system,
            "all recovered after",
            recovered.secs * 1e6,
            Unit::Micros,
        )
        .target(Target::at_most(TARGET_MICROS))
        .note(join_notes(&[
            &format!(
                "{clients} clients x {MISSED} missed, {in_flight} set-ups in flight; all subscribed after {:.2} s",
                recovered.setup_secs
            ),
            &recovered.note,
        ])),
    );
    bench.report.add(Row::new(
        "storm",
        system,
        "recovered pushes/s",
        (clients as u64 * MISSED) as f64 / recovered.secs.max(f64::EPSILON),
        Unit::PerSec,
    ));
    bench.report.add(
        Row::new(
            "storm",
            system,
            "recovered pushes missing",
            recovered.loss as f64,
            Unit::Count,
        )
        .target(Target::at_most(0.0)),
    );
    bench.report.add(
        Row::new(
            "storm",
            system,
            "connect + subscribe only (no since)",
            plain.setup_secs * 1e6,
            Unit::Micros,
        )
        .note(join_notes(&[
            &format!("the same {clients} clients, no recovery"),
            &plain.note,
        ])),
    );
    Ok(Series {
        label: system.to_owned(),
        points: recovered.trace,
    })
}

/// Runs the storm scenario: standalone and cluster, with each of the run's
/// history settings that keeps history.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let modes: Vec<HistoryMode> = bench
        .history
        .iter()
        .copied()
        .filter(|m| *m != HistoryMode::Off)
        .collect();
    if modes.is_empty() {
        bail!("the storm needs history: run it with --history on (the default) or memory");
    }
    let mut traces = Vec::new();
    for history in modes {
        let system = history.label("standalone");
        let mut edge = Standalone::start(&bench.bins, false, history).await?;
        let (ws_url, http_base) = (edge.ws_url.clone(), edge.http_base.clone());
        traces.push(measure(bench, &system, &ws_url, &http_base).await?);
        edge.check_running()?;
        drop(edge);

        let system = history.label("cluster");
        let mut cluster = Cluster::start(&bench.bins, true, history).await?;
        let ws_url = cluster.ws_url.clone().unwrap_or_default();
        let http_base = cluster.http_base.clone();
        traces.push(measure(bench, &system, &ws_url, &http_base).await?);
        cluster.check_running()?;
    }
    let clients = bench.sizes.storm_clients;
    bench.report.chart(chart::lines(
        "storm",
        &format!("storm: {clients} clients reconnecting at once, each recovering {MISSED} pushes"),
        "seconds since the clients started",
        "recovered pushes received, %",
        &traces,
    ));
    Ok(())
}

//! presence-churn: the join/leave traffic of a presence topic under churn.
//!
//! Two edges on NATS share a topic whose `[presence]` rule pushes joins
//! and leaves, with the default window (1 s) and `max_changes` (100).
//! `churn_presence_subscribers` clients hold a connection to it, logged in, half
//! on each edge (user i on both: two connections per user, one per edge).
//! Then, at each churn level, clients on both edges connect, log in as a
//! user never seen before, subscribe, stay [`HOLD`] and close: each cycle
//! is one join and one leave of the topic, cluster-wide. The subscribers
//! count the presence frames (10005/10006/10010) and their bytes: per
//! subscriber and second this stays under `max_changes` per window (or
//! one 10010) however fast the churn, while the churn rate grows past it.

use super::Bench;
use crate::bench::cli::SubscribeMode;
use crate::bench::control::Stats;
use crate::bench::fleet::{self, Fleet, FleetSpec};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::EdgeCluster;
use std::time::Duration;
use tokio::time::Instant;

/// The presence topic.
const TOPIC: &str = "room.bench";
/// The edges' config: presence pushes and queries for `room.*`, the
/// default window and `max_changes`.
const CONFIG: &str = "[presence]\ntopics = [{ prefix = \"room.\", events = true, query = true }]\n";
/// `presence.max_changes` and `presence.interval` (the defaults): the
/// bound is this many pushes per subscriber per second.
const MAX_CHANGES_PER_SEC: f64 = 100.0;
/// How long each churning connection stays: longer than a window, so its
/// join and leave fall in different windows and both count.
const HOLD: Duration = Duration::from_secs(2);
/// Churn cycles in flight per edge at each level: with [`HOLD`], about
/// that many cycles (twice as many joins and leaves) per second in all.
const LEVELS: [usize; 4] = [5, 25, 60, 250];
/// Source addresses per churn process.
const SOURCES: usize = 4;
/// Quiet time that ends the subscribers' own joins before the first level.
const SETTLE: Duration = Duration::from_secs(3);

/// The subscribers' counters, summed over every fleet.
async fn stats(fleets: &mut [Fleet]) -> anyhow::Result<Stats> {
    let mut total = Stats::default();
    for fleet in fleets {
        total.merge(&fleet.stats().await?);
    }
    Ok(total)
}

/// Runs the presence-churn scenario on a two-edge cluster.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let subscribers = bench.sizes.churn_presence_subscribers;
    let run_for = bench.sizes.presence_run;
    eprintln!(
        "[presence-churn] 2 edges, {subscribers} subscribers of {TOPIC}; churn levels {LEVELS:?} \
         cycles in flight per edge, each held {HOLD:?}, {run_for:?} each"
    );
    let mut cluster = EdgeCluster::start(&bench.bins, 2, bench.history(), CONFIG).await?;
    let mut fleets = Vec::with_capacity(2);
    for url in &cluster.ws_urls {
        let mut spec = FleetSpec::public(url, subscribers / 2, TOPIC);
        spec.subscribe = SubscribeMode::PublicUser;
        fleets.push(Fleet::start(&spec).await?);
    }
    let connected: u64 = fleets.iter().map(|f| f.setup.connected).sum();
    let failed: u64 = fleets.iter().map(|f| f.setup.failed).sum();
    if failed > 0 {
        eprintln!(
            "[presence-churn] {failed} subscribers FAILED to set up ({})",
            fleets
                .iter()
                .find_map(|f| f.setup.first_error.clone())
                .unwrap_or_default()
        );
    }
    // The subscribers' own joins pass first.
    let quiet_until = Instant::now() + Duration::from_secs(60);
    loop {
        let before: u64 = fleets.iter().map(Fleet::delivered).sum();
        tokio::time::sleep(SETTLE).await;
        let after: u64 = fleets.iter().map(Fleet::delivered).sum();
        if after == before || Instant::now() >= quiet_until {
            break;
        }
    }
    let system = format!("cluster, 2 edges, {connected} subscribers");
    for (level, &concurrency) in LEVELS.iter().enumerate() {
        for fleet in &mut fleets {
            fleet.reset().await?;
        }
        let plan: Vec<String> = [
            "--subscribe",
            "public-user",
            "--topic",
            TOPIC,
            "--hold-ms",
            &HOLD.as_millis().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        // Distinct users at every level and on every edge.
        let first = |edge: usize| 10_000_000 * (level * 2 + edge + 1);
        let (a, b) = tokio::join!(
            fleet::churn_with(
                &cluster.ws_urls[0],
                run_for,
                1,
                concurrency,
                SOURCES,
                first(0),
                &plan
            ),
            fleet::churn_with(
                &cluster.ws_urls[1],
                run_for,
                1,
                concurrency,
                SOURCES,
                first(1),
                &plan
            ),
        );
        let (a, b) = (a?, b?);
        let secs = a.secs.max(b.secs).max(f64::EPSILON);
        let got = stats(&mut fleets).await?;
        cluster.check_running()?;
        let cycles = a.cycles + b.cycles;
        let churn = 2.0 * cycles as f64 / secs;
        let per_subscriber = |n: u64| n as f64 / connected.max(1) as f64 / secs;
        let mut note = format!(
            "{cycles} cycles ({} in flight per edge, held {HOLD:?}) in {secs:.1} s; \
             10010 {:.2}/subscriber/s",
            concurrency,
            per_subscriber(got.presence_overflows)
        );
        let churn_failed = a.failed + b.failed;
        if churn_failed > 0 {
            note.push_str(&format!(
                "; {churn_failed} cycles FAILED ({})",
                a.first_error
                    .as_deref()
                    .or(b.first_error.as_deref())
                    .unwrap_or("?")
            ));
        }
        if got.closed > 0 {
            note.push_str(&format!("; {} subscribers closed", got.closed));
        }
        bench.report.add(
            Row::new(
                "presence-churn",
                &system,
                &format!("joins+leaves/s, level {}", level + 1),
                churn,
                Unit::PerSec,
            )
            .note(note),
        );
        bench.report.add(
            Row::new(
                "presence-churn",
                &system,
                &format!("presence pushes/subscriber/s, level {}", level + 1),
                per_subscriber(got.frames),
                Unit::PerSec,
            )
            .target(Target::at_most(MAX_CHANGES_PER_SEC))
            .note(format!(
                "bound: max_changes (100) per 1 s window, or one 10010; churn {churn:.0} joins+leaves/s"
            )),
        );
        bench.report.add(Row::new(
            "presence-churn",
            &system,
            &format!("presence bytes/subscriber/s, level {}", level + 1),
            per_subscriber(got.bytes),
            Unit::Bytes,
        ));
    }
    for fleet in fleets {
        fleet.stop().await;
    }
    Ok(())
}

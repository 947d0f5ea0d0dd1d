//! private: pushes to random logged-in users through the batch API.
//!
//! Every connection logs in as its own user and subscribes to one private
//! topic. Every `PRIVATE_BATCH / PRIVATE_RATE` seconds one `/v1/pushBatch`
//! call carries [`PRIVATE_BATCH`] pushes, each to a random user with a
//! payload naming that user and its send time. Clients record latency and
//! count any push whose payload names another user (a misdelivery). Calls
//! overlap (see [`push_batches_for`]) so one slow call does not lower the
//! rate; the achieved rate is reported.

use super::{Bench, PRIVATE_BATCH, PRIVATE_RATE, join_notes, trouble_note};
use crate::bench::chart;
use crate::bench::cli::SubscribeMode;
use crate::bench::control::user_id;
use crate::bench::fleet::{Fleet, FleetSpec, Wait};
use crate::bench::push::{Pusher, Rng, push_batches_for, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::Standalone;
use anyhow::bail;
use std::time::Duration;
use tokio::time::Instant;

/// The private topic every user subscribes to.
const TOPIC: &str = "inbox";
/// Unmeasured pushing at the start.
const WARMUP: Duration = Duration::from_secs(1);
/// Give up waiting for deliveries that stopped for this long.
const STALL: Duration = Duration::from_secs(3);
/// Longest wait for the last pushes to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// p99 latency target, microseconds.
const TARGET_P99: f64 = 50_000.0;

/// Sends batches of private pushes to random users among `users` at
/// [`PRIVATE_RATE`] for `run_for`; returns how many pushes were accepted.
async fn push_for(
    pusher: &Pusher,
    users: u64,
    run_for: Duration,
    first: u64,
    rng: &mut Rng,
) -> anyhow::Result<u64> {
    push_batches_for(pusher, PRIVATE_RATE, PRIVATE_BATCH, run_for, first, |seq| {
        let uid = user_id(rng.below(users) as usize);
        let payload = stamp(seq, Some(&uid));
        (uid, TOPIC.to_owned(), payload)
    })
    .await
}

/// Runs the private scenario on a standalone edge.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let users = bench.sizes.private_users;
    let run_for = bench.sizes.private_run;
    eprintln!(
        "[private] standalone edge: {users} users, {PRIVATE_RATE} pushes/s in batches of {PRIVATE_BATCH}"
    );
    let mut edge = Standalone::start(&bench.bins, true, bench.history()).await?;
    let spec = FleetSpec {
        subscribe: SubscribeMode::Private,
        latency: true,
        ..FleetSpec::public(&edge.ws_url, users, TOPIC)
    };
    let mut fleet = Fleet::start(&spec).await?;
    if fleet.setup.connected == 0 {
        bail!(
            "no user connected: {}",
            fleet.setup.first_error.as_deref().unwrap_or("?")
        );
    }
    let pusher = Pusher::gpush(&edge.http_base);
    let mut rng = Rng::seeded();
    let warm = push_for(&pusher, users as u64, WARMUP, 0, &mut rng).await?;
    fleet
        .wait_delivered(warm, STALL, Instant::now() + DRAIN_LIMIT)
        .await;
    fleet.reset().await?;
    let started = Instant::now();
    let sent = push_for(&pusher, users as u64, run_for, warm, &mut rng).await?;
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    let drain = fleet
        .wait_delivered(sent, STALL, Instant::now() + DRAIN_LIMIT)
        .await;
    let stats = fleet.stats().await?;
    let setup = fleet.setup.clone();
    fleet.stop().await;
    edge.check_running()?;

    let h = &stats.latency;
    let sizes = format!(
        "{} users, {sent} pushes at {rate:.0}/s, mean {:.0} µs",
        setup.connected,
        h.mean()
    );
    let trouble = trouble_note(setup.failed, setup.first_error.as_deref(), stats.closed);
    let drained = if drain == Wait::Reached {
        ""
    } else {
        "did not drain"
    };
    let system = "standalone";
    bench.report.add(
        Row::new(
            "private",
            system,
            "p50",
            h.quantile(0.5) as f64,
            Unit::Micros,
        )
        .note(join_notes(&[&sizes, &trouble, drained])),
    );
    bench.report.add(
        Row::new(
            "private",
            system,
            "p99",
            h.quantile(0.99) as f64,
            Unit::Micros,
        )
        .target(Target::at_most(TARGET_P99)),
    );
    bench.report.add(Row::new(
        "private",
        system,
        "p99.9",
        h.quantile(0.999) as f64,
        Unit::Micros,
    ));
    bench.report.add(Row::new(
        "private",
        system,
        "max",
        h.max() as f64,
        Unit::Micros,
    ));
    let received = stats.frames.saturating_sub(stats.misdelivered);
    bench.report.add(
        Row::new(
            "private",
            system,
            "loss",
            sent as f64 - received as f64,
            Unit::Count,
        )
        .target(Target::at_most(0.0)),
    );
    bench.report.add(
        Row::new(
            "private",
            system,
            "misdelivered",
            stats.misdelivered as f64,
            Unit::Count,
        )
        .target(Target::at_most(0.0)),
    );
    bench.report.add(Row::new(
        "private",
        system,
        "pushes/s sent",
        rate,
        Unit::PerSec,
    ));
    bench.report.chart(chart::latency(
        "private",
        &format!(
            "private: latency, {} users, {rate:.0} pushes/s in batches of {PRIVATE_BATCH}",
            setup.connected
        ),
        &[("gpush standalone", h)],
    ));
    Ok(())
}

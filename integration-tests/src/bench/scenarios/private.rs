//! private: pushes to random logged-in users through the batch API.
//!
//! Every connection logs in as its own user and subscribes to one private
//! topic. Every `PRIVATE_BATCH / PRIVATE_RATE` seconds one `/v1/pushBatch`
//! call carries [`PRIVATE_BATCH`] pushes, each to a random user with a
//! payload naming that user and its send time. Clients record latency and
//! count any push whose payload names another user (a misdelivery). Calls
//! overlap (at most [`CALLS_IN_FLIGHT`]) so one slow call does not lower
//! the rate; the achieved rate is reported.

use super::{Bench, PRIVATE_BATCH, PRIVATE_RATE, join_notes, trouble_note};
use crate::bench::chart;
use crate::bench::cli::SubscribeMode;
use crate::bench::control::user_id;
use crate::bench::fleet::{Fleet, FleetSpec, Wait};
use crate::bench::push::{Pusher, batch_json, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::Standalone;
use anyhow::{Context as _, bail};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// The private topic every user subscribes to.
const TOPIC: &str = "inbox";
/// Batch calls in flight at once, at most.
const CALLS_IN_FLIGHT: usize = 16;
/// Unmeasured pushing at the start.
const WARMUP: Duration = Duration::from_secs(1);
/// Give up waiting for deliveries that stopped for this long.
const STALL: Duration = Duration::from_secs(3);
/// Longest wait for the last pushes to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// p99 latency target, microseconds.
const TARGET_P99: f64 = 50_000.0;

/// xorshift64*: a small, good-enough PRNG for picking users.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        Self(crate::bench::client::unix_micros() | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Sends batches of private pushes to random users among `users` at
/// [`PRIVATE_RATE`] for `run_for`; returns how many pushes were accepted.
async fn push_for(
    pusher: &Pusher,
    users: u64,
    run_for: Duration,
    first: u64,
    rng: &mut Rng,
) -> anyhow::Result<u64> {
    let calls_per_sec = PRIVATE_RATE / PRIVATE_BATCH;
    let mut tick = interval(Duration::from_secs(1) / calls_per_sec);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let permits = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let end = Instant::now() + run_for;
    let mut seq = first;
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let uids: Vec<String> = (0..PRIVATE_BATCH)
            .map(|_| user_id(rng.below(users) as usize))
            .collect();
        let payloads: Vec<String> = uids
            .iter()
            .enumerate()
            .map(|(i, uid)| stamp(seq + i as u64, Some(uid)))
            .collect();
        seq += u64::from(PRIVATE_BATCH);
        let body = batch_json(
            uids.iter()
                .zip(&payloads)
                .map(|(uid, payload)| (uid.as_str(), TOPIC, payload.as_bytes())),
        );
        let pusher = pusher.clone();
        calls.spawn(async move {
            let result = pusher.push_batch(body).await;
            drop(permit);
            result
        });
    }
    let mut accepted = 0;
    while let Some(result) = calls.join_next().await {
        result.context("batch call task")??;
        accepted += u64::from(PRIVATE_BATCH);
    }
    Ok(accepted)
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

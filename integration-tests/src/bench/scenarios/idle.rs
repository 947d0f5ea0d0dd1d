//! idle / idle-private: resident memory an edge needs per idle connection.
//!
//! The server's RSS is read once it has settled before the clients connect
//! and again once it has settled with every connection set up (subscribed
//! to one of [`IDLE_TOPICS`] topics, or logged in with one private
//! subscription); the growth divided by the connections is the figure.
//! Kernel socket buffers are not in RSS, so this is the server's own cost.

use super::{Bench, IDLE_TOPICS, join_notes, trouble_note};
use crate::bench::cli::SubscribeMode;
use crate::bench::fleet::{Fleet, FleetSpec};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{Baseline, Standalone, settled_rss};
use std::time::Duration;

/// Target per idle connection subscribed to a topic.
const TARGET_PUBLIC: f64 = 2.0 * 1024.0;
/// Target per idle connection logged in with a private subscription.
const TARGET_PRIVATE: f64 = 3.0 * 1024.0;
/// How long RSS must hold still to count as settled.
const STABLE: Duration = Duration::from_secs(2);
/// Longest wait for RSS to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// RSS growth of a server holding idle connections.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    /// Connections set up.
    pub connected: u64,
    /// RSS before connecting, bytes.
    pub before: u64,
    /// RSS with every connection settled, bytes.
    pub after: u64,
    /// Growth per connection, bytes.
    pub per_connection: f64,
    /// Failures, closures and whether RSS settled.
    pub note: String,
}

/// Connects `spec.conns` clients to the server `pid` and measures its RSS
/// growth.
async fn measure(pid: u32, spec: &FleetSpec) -> anyhow::Result<IdleFigures> {
    let before = settled_rss(pid, STABLE / 2, SETTLE_LIMIT).await?;
    let mut fleet = Fleet::start(spec).await?;
    let after = settled_rss(pid, STABLE, SETTLE_LIMIT).await?;
    let stats = fleet.stats().await?;
    let setup = fleet.setup.clone();
    fleet.stop().await;
    let connected = setup.connected.max(1);
    let per_connection = after.bytes.saturating_sub(before.bytes) as f64 / connected as f64;
    let unsettled = if after.settled {
        String::new()
    } else {
        format!("RSS still moving after {SETTLE_LIMIT:?}")
    };
    let trouble = trouble_note(setup.failed, setup.first_error.as_deref(), stats.closed);
    let sizes = format!(
        "{} conns, RSS {:.1} -> {:.1} MiB",
        setup.connected,
        before.bytes as f64 / 1048576.0,
        after.bytes as f64 / 1048576.0
    );
    Ok(IdleFigures {
        connected: setup.connected,
        before: before.bytes,
        after: after.bytes,
        per_connection,
        note: join_notes(&[&sizes, &trouble, &unsettled]),
    })
}

/// The baseline server's figures; adds its row.
pub async fn measure_baseline(bench: &mut Bench) -> anyhow::Result<IdleFigures> {
    eprintln!("[idle] baseline: {} connections", bench.sizes.idle_conns);
    let mut server = Baseline::start(&bench.bins).await?;
    let spec = FleetSpec {
        subscribe: SubscribeMode::None,
        ..FleetSpec::public(&server.ws_url, bench.sizes.idle_conns, "bench")
    };
    let figures = measure(server.pid(), &spec).await?;
    server.check_running()?;
    bench.report.add(
        Row::new(
            "idle",
            "baseline",
            "RSS per connection",
            figures.per_connection,
            Unit::Bytes,
        )
        .note(figures.note.clone()),
    );
    Ok(figures)
}

/// Runs idle (public subscriptions) or idle-private.
pub async fn run(bench: &mut Bench, private: bool) -> anyhow::Result<()> {
    let baseline = bench.baseline_idle().await?;
    let (scenario, target) = if private {
        ("idle-private", TARGET_PRIVATE)
    } else {
        ("idle", TARGET_PUBLIC)
    };
    let conns = bench.sizes.idle_conns;
    eprintln!("[{scenario}] standalone edge: {conns} connections");
    let mut edge = Standalone::start(&bench.bins, private, bench.history()).await?;
    let spec = if private {
        FleetSpec {
            subscribe: SubscribeMode::Private,
            ..FleetSpec::public(&edge.ws_url, conns, "inbox")
        }
    } else {
        FleetSpec {
            topics: IDLE_TOPICS,
            ..FleetSpec::public(&edge.ws_url, conns, "idle")
        }
    };
    let figures = measure(edge.pid(), &spec).await?;
    edge.check_running()?;
    bench.report.add(
        Row::new(
            scenario,
            "standalone",
            "RSS per connection",
            figures.per_connection,
            Unit::Bytes,
        )
        .target(Target::at_most(target))
        .baseline(Some(baseline.per_connection))
        .note(figures.note),
    );
    Ok(())
}

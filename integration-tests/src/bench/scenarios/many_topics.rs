//! many-topics: many distinct topics with a few subscribers each, spread
//! over several edges, and random pushes to them through ingress.
//!
//! NATS (with JetStream), etcd, ingress and [`EDGES`] edge processes;
//! `many_topics` connections (as many as topics), one fleet per edge in
//! contiguous blocks (an edge holds its block under the open-files limit),
//! each connection subscribed to [`PER_CONN`] topics: connection `i` to
//! topics `(i + j * stride) % topics`, `j < PER_CONN`, `stride = topics /
//! PER_CONN` (see [`topic_of`](crate::bench::control::topic_of)). So every topic has exactly [`PER_CONN`]
//! subscribers, `stride` connections apart: with blocks smaller than the
//! stride they sit on [`PER_CONN`] different edges, and every subscription
//! of an edge is to a distinct topic (the most distinct topics per edge
//! these connections can give).
//!
//! Then pushes to random topics through ingress's `POST /v1/pushBatch`
//! ([`BATCH`] per call) at `many_topics_rate` for `many_topics_run`, each
//! payload carrying its send time; a one-second warm-up first, drained and
//! discarded. Reported: push-to-receive latency, loss (every push is
//! expected [`PER_CONN`] times), nats-server's RSS and subscriptions, and
//! the messages nats-server sent per push.
//!
//! Edge memory per distinct topic: the same cluster and connections are
//! set up twice, each time from fresh processes: first with every
//! connection subscribed to the same [`PER_CONN`] shared topics, then to
//! the distinct ones. Each edge's RSS growth (settled RSS with the
//! connections minus before them) of the second run minus that of the
//! first, divided by the edge's distinct topics, is what the topics cost;
//! connections, sockets and subscription entries per connection are the
//! same in both.

use super::{Bench, join_notes, trouble_note};
use crate::bench::chart;
use crate::bench::fleet::{Fleet, FleetSpec, Wait};
use crate::bench::histogram::Histogram;
use crate::bench::push::{Pusher, Rng, push_batches_for, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{EdgeTuning, EtcdCluster, open_files_limit, rss_bytes, settled_rss};
use anyhow::{Context as _, bail};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Edge processes the connections are spread over.
pub const EDGES: usize = 6;
/// Topics per connection, and so subscribers per topic.
pub const PER_CONN: usize = 5;
/// Pushes per `/v1/pushBatch` call.
pub const BATCH: u32 = 200;
/// Descriptors an edge needs besides its clients' (listeners, NATS, etcd,
/// logs, epoll...).
const EDGE_OWN_FDS: usize = 100;
/// Names of the distinct topics (`many-<n>`) and of the shared ones.
const DISTINCT: &str = "many";
const SHARED: &str = "shared";
/// Unmeasured pushing at the start.
const WARMUP: Duration = Duration::from_secs(1);
/// Give up waiting for deliveries that stopped for this long.
const STALL: Duration = Duration::from_secs(5);
/// Longest wait for the last pushes to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// RSS counts as settled once it stayed put this long...
const RSS_STABLE: Duration = Duration::from_secs(2);
/// ...or when this much time has passed.
const RSS_LIMIT: Duration = Duration::from_secs(20);
/// p99 latency target, microseconds.
const TARGET_P99: f64 = 50_000.0;
/// Edge memory per distinct topic target, bytes.
const TARGET_PER_TOPIC: f64 = 1024.0;

/// One set-up of the cluster and its connections.
struct Phase {
    cluster: EtcdCluster,
    fleets: Vec<Fleet>,
    /// Each edge's settled RSS before the connections and with them.
    before: Vec<u64>,
    after: Vec<u64>,
    /// nats-server's RSS with the connections set up.
    nats_rss: u64,
    /// nats-server's subscription count then.
    nats_subscriptions: u64,
    /// Distinct topics each edge's clients subscribe to.
    distinct: Vec<usize>,
    /// Seconds until every fleet was set up.
    setup_secs: f64,
    /// Whether every RSS reading settled.
    settled: bool,
}

impl Phase {
    /// Mean RSS growth per edge.
    fn growth(&self) -> f64 {
        let total: f64 = self
            .before
            .iter()
            .zip(&self.after)
            .map(|(b, a)| *a as f64 - *b as f64)
            .sum();
        total / self.before.len() as f64
    }
}

/// Every edge's settled RSS; false when one did not settle.
async fn edges_rss(pids: &[u32]) -> anyhow::Result<(Vec<u64>, bool)> {
    let reads = pids
        .iter()
        .map(|&pid| settled_rss(pid, RSS_STABLE, RSS_LIMIT));
    let rss = futures_util::future::try_join_all(reads).await?;
    Ok((
        rss.iter().map(|r| r.bytes).collect(),
        rss.iter().all(|r| r.settled),
    ))
}

/// The topic count, stride and names of a phase's subscriptions.
fn layout(n: usize, distinct: bool) -> (usize, usize, &'static str) {
    if distinct {
        (n, n / PER_CONN, DISTINCT)
    } else {
        (PER_CONN, 1, SHARED)
    }
}

/// Starts the cluster and sets up `n` connections over its edges, each
/// subscribed to [`PER_CONN`] distinct or shared topics.
async fn phase(bench: &Bench, n: usize, distinct: bool) -> anyhow::Result<Phase> {
    // An edge's distinct topics may exceed the default `max_topics`.
    let limit = format!("max_topics = {}\n", n.max(1));
    let tuning = EdgeTuning {
        edge_toml: limit,
        ..EdgeTuning::default()
    };
    let cluster =
        EtcdCluster::start_tuned(&bench.bins, EDGES, false, bench.history(), &tuning).await?;
    let pids = cluster.edge_pids();
    let (before, settled_before) = edges_rss(&pids).await?;
    let (topics, stride, base) = layout(n, distinct);
    let started = Instant::now();
    let mut starting = Vec::with_capacity(EDGES);
    let mut distinct_topics = Vec::with_capacity(EDGES);
    let mut first = 0;
    for (i, ws_url) in cluster.ws_urls.iter().enumerate() {
        let conns = n / EDGES + usize::from(i < n % EDGES);
        let spec = FleetSpec {
            topics,
            per_conn: PER_CONN,
            stride,
            latency: true,
            first,
            ..FleetSpec::public(ws_url, conns, base)
        };
        let mut names = HashSet::new();
        for index in first..first + conns {
            for j in 0..PER_CONN {
                names.insert((index + j * stride) % topics);
            }
        }
        distinct_topics.push(names.len());
        first += conns;
        starting.push(tokio::spawn(async move {
            let fleet = Fleet::start(&spec).await;
            (spec.conns, fleet)
        }));
    }
    let mut fleets = Vec::with_capacity(EDGES);
    for (i, started) in starting.into_iter().enumerate() {
        let (conns, fleet) = started.await.context("fleet start task")?;
        let fleet = fleet.with_context(|| format!("fleet of edge-{i}"))?;
        fleet.require_all(conns, &format!("edge-{i}"))?;
        fleets.push(fleet);
    }
    let setup_secs = started.elapsed().as_secs_f64();
    let (after, settled_after) = edges_rss(&pids).await?;
    let nats = cluster.nats();
    let nats_rss = rss_bytes(nats.pid().context("nats-server is not running")?)?;
    let nats_subscriptions = nats.varz().await["subscriptions"].as_u64().unwrap_or(0);
    Ok(Phase {
        cluster,
        fleets,
        before,
        after,
        nats_rss,
        nats_subscriptions,
        distinct: distinct_topics,
        setup_secs,
        settled: settled_before && settled_after,
    })
}

/// Random pushes to the distinct topics for `run_for`, numbered from
/// `first`; how many were accepted.
async fn push_for(
    pusher: &Pusher,
    rate: u32,
    topics: usize,
    run_for: Duration,
    first: u64,
    rng: &mut Rng,
) -> anyhow::Result<u64> {
    push_batches_for(pusher, rate, BATCH, run_for, first, |seq| {
        let topic = format!("{DISTINCT}-{}", rng.below(topics as u64));
        (String::new(), topic, stamp(seq, None))
    })
    .await
}

/// nats-server's messages sent so far.
async fn nats_out(cluster: &EtcdCluster) -> u64 {
    cluster.nats().varz().await["out_msgs"]
        .as_u64()
        .unwrap_or(0)
}

/// Stops a phase's fleets and checks its processes lived.
async fn end(phase: Phase) -> anyhow::Result<()> {
    let Phase {
        mut cluster,
        fleets,
        ..
    } = phase;
    for fleet in fleets {
        fleet.stop().await;
    }
    cluster.check_running()
}

/// Runs the many-topics scenario.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.sizes.many_topics;
    let rate = bench.sizes.many_topics_rate;
    let run_for = bench.sizes.many_topics_run;
    let per_edge = n.div_ceil(EDGES);
    if let Some(limit) = open_files_limit()
        && (per_edge + EDGE_OWN_FDS) as u64 > limit
    {
        bail!(
            "{per_edge} connections per edge + {EDGE_OWN_FDS} descriptors of the edge's own \
             exceed the open-files limit ({limit}) the edges inherit"
        );
    }
    if !n.is_multiple_of(PER_CONN) || n / PER_CONN < per_edge {
        bail!(
            "{n} topics: must be a multiple of {PER_CONN}, and {n} / {PER_CONN} at least the \
             {per_edge} connections of an edge"
        );
    }
    let system = bench.history().label("cluster");
    eprintln!(
        "[many-topics] {EDGES} edges: {n} connections x {PER_CONN} shared topics (for memory)"
    );
    let shared = phase(bench, n, false).await?;
    let shared_growth = shared.growth();
    let shared_nats = (shared.nats_rss, shared.nats_subscriptions);
    let shared_settled = shared.settled;
    let shared_secs = shared.setup_secs;
    end(shared).await?;

    eprintln!(
        "[many-topics] {EDGES} edges: {n} connections x {PER_CONN} of {n} distinct topics, \
         {rate} pushes/s in batches of {BATCH}"
    );
    let mut phase = phase(bench, n, true).await?;
    let pusher = Pusher::gpush(&phase.cluster.http_base);
    let mut rng = Rng::seeded();
    let expect = PER_CONN as u64;
    let warm = push_for(&pusher, rate, n, WARMUP, 0, &mut rng).await?;
    wait_all(&phase.fleets, warm * expect).await;
    for fleet in &mut phase.fleets {
        fleet.reset().await?;
    }
    let out_before = nats_out(&phase.cluster).await;
    let started = Instant::now();
    let sent = push_for(&pusher, rate, n, run_for, warm, &mut rng).await?;
    let sent_rate = sent as f64 / started.elapsed().as_secs_f64();
    let drain = wait_all(&phase.fleets, sent * expect).await;
    let out_msgs = nats_out(&phase.cluster).await.saturating_sub(out_before);
    let mut latency = Histogram::default();
    let (mut received, mut closed, mut unparsed) = (0, 0, 0);
    for fleet in &mut phase.fleets {
        let stats = fleet.stats().await?;
        latency.merge(&stats.latency);
        received += stats.frames;
        closed += stats.closed;
        unparsed += stats.unparsed;
    }
    let nats_after = rss_bytes(
        phase
            .cluster
            .nats()
            .pid()
            .context("nats-server is not running")?,
    )?;
    let edges_after: Vec<u64> = phase
        .cluster
        .edge_pids()
        .iter()
        .map(|&pid| rss_bytes(pid))
        .collect::<anyhow::Result<_>>()?;
    let distinct_growth = phase.growth();
    let distinct_per_edge =
        phase.distinct.iter().sum::<usize>() as f64 / phase.distinct.len() as f64;
    let per_topic = (distinct_growth - shared_growth) / distinct_per_edge;
    let settled = shared_settled && phase.settled;
    let (nats_rss, nats_subscriptions, distinct_secs) =
        (phase.nats_rss, phase.nats_subscriptions, phase.setup_secs);
    end(phase).await?;

    let scenario = "many-topics";
    let h = &latency;
    let sizes = format!(
        "{n} connections x {PER_CONN} topics over {EDGES} edges ({distinct_per_edge:.0} \
         distinct topics per edge); {sent} pushes at {sent_rate:.0}/s to random topics of \
         {n}; mean {:.0} µs",
        h.mean()
    );
    let trouble = trouble_note(0, None, closed);
    let drained = if drain == Wait::Reached {
        ""
    } else {
        "did not drain"
    };
    let unparsed = if unparsed > 0 {
        format!("{unparsed} frames without a send time")
    } else {
        String::new()
    };
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "p50",
            h.quantile(0.5) as f64,
            Unit::Micros,
        )
        .note(join_notes(&[&sizes, &trouble, drained, &unparsed])),
    );
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "p99",
            h.quantile(0.99) as f64,
            Unit::Micros,
        )
        .target(Target::at_most(TARGET_P99)),
    );
    bench.report.add(Row::new(
        scenario,
        &system,
        "p99.9",
        h.quantile(0.999) as f64,
        Unit::Micros,
    ));
    bench.report.add(Row::new(
        scenario,
        &system,
        "max",
        h.max() as f64,
        Unit::Micros,
    ));
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "loss",
            (sent * expect) as f64 - received as f64,
            Unit::Count,
        )
        .target(Target::at_most(0.0))
        .note(format!(
            "{received} deliveries received of {} expected ({PER_CONN} per push)",
            sent * expect
        )),
    );
    bench.report.add(Row::new(
        scenario,
        &system,
        "pushes/s sent",
        sent_rate,
        Unit::PerSec,
    ));
    let mib = |b: f64| b / (1024.0 * 1024.0);
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "edge RSS per distinct topic",
            per_topic,
            Unit::Bytes,
        )
        .target(Target::at_most(TARGET_PER_TOPIC))
        .note(join_notes(&[
            &format!(
                "mean edge RSS growth with the connections: {:.1} MiB with {PER_CONN} shared \
                 topics, {:.1} MiB with {distinct_per_edge:.0} distinct topics per edge",
                mib(shared_growth),
                mib(distinct_growth)
            ),
            if settled {
                ""
            } else {
                "an RSS reading did NOT settle"
            },
        ])),
    );
    let edges_mean = edges_after.iter().sum::<u64>() as f64 / edges_after.len() as f64;
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "edge RSS after the run (mean)",
            edges_mean,
            Unit::Bytes,
        )
        .note(format!(
            "per edge: {}",
            edges_after
                .iter()
                .map(|b| format!("{:.0}", mib(*b as f64)))
                .collect::<Vec<_>>()
                .join(", ")
                + " MiB"
        )),
    );
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "nats-server RSS, distinct topics",
            nats_rss as f64,
            Unit::Bytes,
        )
        .note(format!(
            "with the connections set up; {:.1} MiB after the run; {:.1} MiB with the shared \
             topics",
            mib(nats_after as f64),
            mib(shared_nats.0 as f64)
        )),
    );
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "nats-server subscriptions, distinct topics",
            nats_subscriptions as f64,
            Unit::Count,
        )
        .note(format!("{} with the shared topics", shared_nats.1)),
    );
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "nats-server messages out per push",
            out_msgs as f64 / sent.max(1) as f64,
            Unit::Count,
        )
        .note(format!(
            "{out_msgs} messages out for {sent} pushes (to edges, acks, JetStream)"
        )),
    );
    bench.report.add(
        Row::new(
            scenario,
            &system,
            "set-up time, distinct topics",
            distinct_secs * 1e6,
            Unit::Micros,
        )
        .note(format!("{shared_secs:.1} s with the shared topics")),
    );
    bench.report.chart(chart::latency(
        scenario,
        &format!(
            "many-topics: latency, {n} topics x {PER_CONN} subscribers over {EDGES} edges, \
             {sent_rate:.0} pushes/s"
        ),
        &[(system.as_str(), h)],
    ));
    Ok(())
}

/// Waits until the fleets together received `target` frames, or they
/// stopped moving for [`STALL`], or [`DRAIN_LIMIT`] passed.
async fn wait_all(fleets: &[Fleet], target: u64) -> Wait {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut last = 0;
    let mut last_move = Instant::now();
    loop {
        let now: u64 = fleets.iter().map(Fleet::delivered).sum();
        if now >= target {
            return Wait::Reached;
        }
        if now != last {
            last = now;
            last_move = Instant::now();
        }
        if Instant::now() >= deadline {
            return Wait::Deadline;
        }
        if last_move.elapsed() >= STALL {
            return Wait::Stalled;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

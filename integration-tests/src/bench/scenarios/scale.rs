//! scale: a million connections (standard size) through the real cluster
//! on one machine, then a push to everyone, a push to one big topic, and
//! an edge SIGKILLed under them. Takes minutes and the whole machine, so
//! it is not part of the default run (`gpush-bench scale`).
//!
//! - The cluster: `nats-server -js`, etcd, one ingress and as many edges
//!   as the open-files limit needs ([`PER_EDGE`] connections each; an
//!   edge refuses upgrades over [`EdgeTuning::max_connections`] with 503
//!   before it runs out of descriptors).
//! - The clients: [`roamer`](crate::bench::roamer) processes of at most
//!   [`MAX_CONNS_PER_CLIENT`] connections, each on [`SOURCES`] loopback
//!   source addresses of its own (an address gives ~28,000 ephemeral
//!   ports per destination). Each connection asks ingress `GET
//!   /v1/connect` for its edge ([`DISCOVER_BATCH`] connections per
//!   answer), as the browser client does, and subscribes to one of
//!   [`TOPICS`] topics (`scale-0` ... : a quarter of the connections
//!   each).
//! - The ramp prints connections, connect rate and memory every
//!   [`SAMPLE`], and stops (halting the clients, keeping what is set up)
//!   when the machine's `MemAvailable` falls under [`MIN_AVAILABLE`], the
//!   count stalls for [`STALL`], more than 1 % of set-ups fail, or a
//!   process of the cluster dies; the size held is then reported.
//! - At the size held: memory per connection (edges' RSS growth, the
//!   machine's `MemTotal - MemAvailable`, kernel slab and TCP buffers from
//!   `/proc/meminfo` and `/proc/net/sockstat`, the clients' RSS), the
//!   connections per edge (ingress `/v1/stats`), and the time from a push
//!   (its send time in the payload) until the first / median / 99th /
//!   last client had it, for a push to everyone and to `scale-0`; loss.
//! - Then edge `edge-0` is SIGKILLed and [`OUTAGE_ROUNDS`] pushes to each
//!   topic are made while its clients come back (through `/v1/connect`
//!   again, resubscribing with `since`): the time until every connection
//!   is subscribed again, and whether every connection has every one of
//!   those pushes (each counts a push once, by its offset).

use super::{Bench, join_notes};
use crate::bench::chart::{self, Series};
use crate::bench::cli::HistoryMode;
use crate::bench::client::unix_micros;
use crate::bench::control::Stats;
use crate::bench::fleet::{Fleet, FleetSpec, MAX_CONNS_PER_CLIENT, Wait};
use crate::bench::push::{Pusher, get_json, stamp};
use crate::bench::report::{Row, Target, Unit};
use crate::bench::systems::{EdgeTuning, EtcdCluster, open_files_limit, rss_bytes};
use anyhow::{Context as _, bail};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// Connections per edge the cluster is sized for (under the 20,000
/// open-files limit, with room for a killed edge's clients).
pub const PER_EDGE: usize = 18_500;
/// Fewest edges.
const MIN_EDGES: usize = 3;
/// Topics the connections spread over (connection `i` takes `i % TOPICS`).
pub const TOPICS: usize = 4;
/// Topic base name.
const TOPIC: &str = "scale";
/// Connections made to one `/v1/connect` answer.
pub const DISCOVER_BATCH: usize = 1;
/// Set-ups in flight per client process.
const CONCURRENCY: usize = 32;
/// Loopback source addresses per client process.
const SOURCES: usize = 2;
/// Progress and time-series interval during the ramp.
const SAMPLE: Duration = Duration::from_secs(2);
/// The ramp stops when the machine has less than this available.
const MIN_AVAILABLE: u64 = 3 * 1024 * 1024 * 1024 / 2;
/// The ramp stops when the count does not move for this long.
const STALL: Duration = Duration::from_secs(20);
/// Pushes to each topic while the killed edge's clients come back.
const OUTAGE_ROUNDS: u64 = 5;
/// Pause between those rounds.
const OUTAGE_PAUSE: Duration = Duration::from_millis(100);
/// Longest the killed edge's clients may take to come back.
const RECONNECT_LIMIT: Duration = Duration::from_secs(180);
/// A delivery wait gives up when the count stops moving for this long.
const DELIVERY_STALL: Duration = Duration::from_secs(20);
/// Longest a delivery wait may take.
const DELIVERY_LIMIT: Duration = Duration::from_secs(180);
/// Edges' ping interval and idle timeout for this long run.
const QUIET: (&str, &str) = ("1800s", "3600s");

/// The machine's memory and TCP sockets now.
#[derive(Debug, Clone, Copy, Default)]
struct MachineMemory {
    /// `MemTotal - MemAvailable`, bytes.
    used: u64,
    /// `MemAvailable`, bytes.
    available: u64,
    /// `Slab`, bytes.
    slab: u64,
    /// `SUnreclaim`, bytes.
    unreclaimable: u64,
    /// `/proc/net/sockstat` TCP `inuse`.
    tcp_inuse: u64,
    /// `/proc/net/sockstat` TCP `mem`, bytes (pages of 4 KiB).
    tcp_mem: u64,
}

impl MachineMemory {
    fn read() -> anyhow::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let kib = |key: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
                * 1024
        };
        let sockstat =
            std::fs::read_to_string("/proc/net/sockstat").context("read /proc/net/sockstat")?;
        let tcp: Vec<&str> = sockstat
            .lines()
            .find_map(|line| line.strip_prefix("TCP:"))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let field = |key: &str| -> u64 {
            tcp.iter()
                .position(|f| *f == key)
                .and_then(|i| tcp.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let available = kib("MemAvailable:");
        Ok(Self {
            used: kib("MemTotal:").saturating_sub(available),
            available,
            slab: kib("Slab:"),
            unreclaimable: kib("SUnreclaim:"),
            tcp_inuse: field("inuse"),
            tcp_mem: field("mem") * 4096,
        })
    }
}

/// A kernel setting, trimmed (`?` when unreadable).
fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().replace('\t', " "))
}

/// CPU seconds (user + system) the processes used so far (those that
/// are gone count 0).
fn cpu_secs(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the ")" that closes the name: state is the
            // first, utime and stime the 12th and 13th.
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// The 1-minute load average (the machine may be shared).
fn load_average() -> String {
    sysctl("/proc/loadavg")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// Sum of the processes' RSS (those that are gone count 0).
fn rss_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| rss_bytes(*pid).ok()).sum()
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The time series sampled during the ramp, x = connections.
#[derive(Debug, Default, Clone)]
pub struct RampSeries {
    /// Machine memory used (`MemTotal - MemAvailable`), GiB.
    pub machine_used: Vec<(f64, f64)>,
    /// Sum of the edges' RSS, GiB.
    pub edges_rss: Vec<(f64, f64)>,
    /// Kernel slab, GiB.
    pub slab: Vec<(f64, f64)>,
    /// Connections set up per second over the last interval.
    pub connect_rate: Vec<(f64, f64)>,
}

/// The ramp's state between samples.
struct Ramp {
    started: Instant,
    last: (Instant, u64),
    last_move: Instant,
    target: u64,
    edge_pids: Vec<u32>,
    client_pids: Vec<u32>,
    base: MachineMemory,
    base_edges: u64,
    stop: Option<String>,
    series: RampSeries,
}

impl Ramp {
    /// One sample: prints it, records the series, decides whether to stop.
    fn sample(&mut self, connected: u64, failed: u64, cluster_error: Option<String>) -> bool {
        let now = Instant::now();
        let (at, before) = self.last;
        let rate = connected.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64();
        if connected != before {
            self.last_move = now;
        }
        self.last = (now, connected);
        let machine = MachineMemory::read().unwrap_or_default();
        let edges = rss_sum(&self.edge_pids);
        let clients = rss_sum(&self.client_pids);
        let conntrack = sysctl("/proc/sys/net/netfilter/nf_conntrack_count");
        eprintln!(
            "[scale] {:>6.0} s  {connected:>8} connected ({failed} failed)  {rate:>7.0}/s  machine used {:.2} GiB (available {:.2}), slab {:.2} GiB, TCP inuse {} mem {:.0} MiB; edges RSS {:.2} GiB, clients {:.2} GiB; conntrack {conntrack}; load {}",
            now.duration_since(self.started).as_secs_f64(),
            machine.used as f64 / GIB,
            machine.available as f64 / GIB,
            machine.slab as f64 / GIB,
            machine.tcp_inuse,
            machine.tcp_mem as f64 / 1024.0 / 1024.0,
            edges as f64 / GIB,
            clients as f64 / GIB,
            load_average(),
        );
        let x = connected as f64;
        let series = &mut self.series;
        series.machine_used.push((x, machine.used as f64 / GIB));
        series.edges_rss.push((x, edges as f64 / GIB));
        series.slab.push((x, machine.slab as f64 / GIB));
        series.connect_rate.push((x, rate));
        if self.stop.is_none() {
            self.stop = if let Some(e) = cluster_error {
                Some(format!("a cluster process died: {e}"))
            } else if machine.available < MIN_AVAILABLE {
                Some(format!(
                    "MemAvailable fell to {:.2} GiB (under {:.1} GiB) at {connected} connections",
                    machine.available as f64 / GIB,
                    MIN_AVAILABLE as f64 / GIB
                ))
            } else if failed * 100 > self.target.max(100) {
                Some(format!("{failed} set-ups failed (over 1 %)"))
            } else if now.duration_since(self.last_move) >= STALL && connected < self.target {
                Some(format!(
                    "the count stalled at {connected} for {} s",
                    STALL.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = &self.stop {
                eprintln!("[scale] stopping the ramp: {why}");
            }
        }
        self.stop.is_some()
    }
}

/// Connections per edge from ingress's `/v1/stats` (as the edges last
/// wrote them to etcd): `(node id, connections)`.
async fn edge_counts(http_base: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let url = format!("{http_base}/v1/stats");
    let answer = get_json(&url).await?;
    let edges = answer["edges"]
        .as_array()
        .with_context(|| format!("no edges in {answer}"))?;
    Ok(edges
        .iter()
        .map(|edge| {
            (
                edge["node_id"].as_str().unwrap_or("?").to_owned(),
                edge["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// Waits (up to 10 s) until `/v1/stats` adds up to `held`; returns the
/// last answer.
async fn settled_counts(http_base: &str, held: u64) -> anyhow::Result<Vec<(String, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = edge_counts(http_base).await?;
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        if total == held || Instant::now() >= deadline {
            return Ok(counts);
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// Pushes `payload` to `topic`, trying again (up to 10 times, 500 ms
/// apart) when the call fails: ingress answers 503 when JetStream does
/// not confirm the store within `publish_timeout`, which a machine this
/// loaded can take. Returns the failed calls.
async fn push_retrying(pusher: &Pusher, topic: &str, payload: &str) -> anyhow::Result<u32> {
    let mut failed = 0;
    loop {
        match pusher.push(topic, payload).await {
            Ok(()) => return Ok(failed),
            Err(e) if failed >= 9 => return Err(e.context(format!("{} tries", failed + 1))),
            Err(e) => {
                eprintln!("[scale] push to {topic:?} failed, trying again: {e:#}");
                failed += 1;
                sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The pushes topic `topic` keeps after offset `since` (`GET
/// /v1/history`), and its last offset.
async fn kept_since(http_base: &str, topic: &str, since: u64) -> anyhow::Result<(usize, u64)> {
    let url = format!("{http_base}/v1/history?topic={topic}&since={since}&limit=1000");
    let answer = get_json(&url).await?;
    let offset = answer["offset"]
        .as_u64()
        .with_context(|| format!("no offset in {answer}"))?;
    let pushes = if since == 0 {
        0
    } else {
        answer["pushes"].as_array().map_or(0, Vec::len)
    };
    Ok((pushes, offset))
}

/// One push measured at every receiver.
struct PushFigures {
    expected: u64,
    stats: Stats,
    wait: Wait,
    /// CPU seconds the edges and the clients used from the push until
    /// the last delivery.
    cpu: (f64, f64),
    /// The load average then.
    load: String,
    /// Push calls that failed and were made again.
    retried: u32,
}

/// Pushes one stamped message to `topic` ("" = everyone) and waits until
/// `expected` connections have it.
async fn measure_push(
    fleet: &mut Fleet,
    pusher: &Pusher,
    topic: &str,
    expected: u64,
    edge_pids: &[u32],
) -> anyhow::Result<PushFigures> {
    fleet.reset().await?;
    let client_pids = fleet.pids();
    let cpu_before = (cpu_secs(edge_pids), cpu_secs(&client_pids));
    let retried = push_retrying(pusher, topic, &stamp(0, None)).await?;
    let wait = fleet
        .wait_delivered(expected, DELIVERY_STALL, Instant::now() + DELIVERY_LIMIT)
        .await;
    let cpu = (
        cpu_secs(edge_pids) - cpu_before.0,
        cpu_secs(&client_pids) - cpu_before.1,
    );
    // Late progress reports: the count is a few milliseconds old.
    sleep(Duration::from_millis(200)).await;
    let stats = fleet.stats().await?;
    Ok(PushFigures {
        expected,
        stats,
        wait,
        cpu,
        load: load_average(),
        retried,
    })
}

fn wait_note(wait: Wait) -> String {
    match wait {
        Wait::Reached => String::new(),
        Wait::Stalled => format!(
            "STALLED: deliveries stopped for {} s",
            DELIVERY_STALL.as_secs()
        ),
        Wait::Deadline => format!("not all within {} s", DELIVERY_LIMIT.as_secs()),
    }
}

/// Adds the rows of one measured push.
fn push_rows(bench: &mut Bench, system: &str, what: &str, figures: &PushFigures) {
    let latency = &figures.stats.latency;
    let loss = figures.expected as i64 - figures.stats.frames as i64;
    let note = join_notes(&[
        &format!(
            "{} receivers; time from the push's send time to each receiver's read; CPU meanwhile: edges {:.2} s, clients {:.2} s; load average {}",
            figures.expected, figures.cpu.0, figures.cpu.1, figures.load
        ),
        &wait_note(figures.wait),
        &if figures.retried > 0 {
            format!("the push call failed {} times first", figures.retried)
        } else {
            String::new()
        },
    ]);
    for (label, value) in [
        ("first", latency.min()),
        ("p50", latency.quantile(0.5)),
        ("p99", latency.quantile(0.99)),
        ("last", latency.max()),
    ] {
        let row = Row::new(
            "scale",
            system,
            &format!("{what}: {label} client has it after"),
            value as f64,
            Unit::Micros,
        );
        let row = if label == "first" {
            row.note(note.clone())
        } else {
            row
        };
        bench.report.add(row);
    }
    bench.report.add(
        Row::new(
            "scale",
            system,
            &format!("{what}: loss"),
            loss as f64,
            Unit::Count,
        )
        .target(Target::at_most(0.0))
        .note(format!(
            "{} received, {} duplicates",
            figures.stats.frames, figures.stats.duplicates
        )),
    );
}

/// Prints the kernel settings the run depends on.
fn print_settings(conns: usize, edges: usize, processes: usize) {
    eprintln!(
        "[scale] {conns} connections over {edges} edges and {processes} client processes; \
         open files {:?} per process; ip_local_port_range {}; fs.file-max {}; fs.nr_open {}; \
         tcp_mem {}; nf_conntrack_max {} (count {}); somaxconn {}",
        open_files_limit(),
        sysctl("/proc/sys/net/ipv4/ip_local_port_range"),
        sysctl("/proc/sys/fs/file-max"),
        sysctl("/proc/sys/fs/nr_open"),
        sysctl("/proc/sys/net/ipv4/tcp_mem"),
        sysctl("/proc/sys/net/netfilter/nf_conntrack_max"),
        sysctl("/proc/sys/net/netfilter/nf_conntrack_count"),
        sysctl("/proc/sys/net/core/somaxconn"),
    );
}

/// The ramp's charts: memory and connect rate against connections.
fn ramp_charts(bench: &mut Bench, series: &RampSeries, edges: usize) {
    let line = |label: &str, points: &[(f64, f64)]| Series {
        label: label.to_owned(),
        points: points.to_vec(),
    };
    bench.report.chart(chart::lines(
        "scale-memory",
        &format!("scale: memory while ramping ({edges} edges, clients on the same box)"),
        "connections",
        "GiB",
        &[
            line(
                "machine used (MemTotal - MemAvailable)",
                &series.machine_used,
            ),
            line("kernel slab", &series.slab),
            line("edges' RSS (sum)", &series.edges_rss),
        ],
    ));
    bench.report.chart(chart::lines(
        "scale-connect-rate",
        &format!("scale: connect rate through /v1/connect ({edges} edges)"),
        "connections",
        "connections set up per second",
        &[line("set-ups/s over the last 2 s", &series.connect_rate)],
    ));
}

/// Runs the scale scenario at `bench.sizes.scale_conns` connections.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let conns = bench.sizes.scale_conns;
    if conns == 0 {
        bail!("--scale-conns must be at least 1");
    }
    let history = bench.history();
    let limit = open_files_limit().unwrap_or(20_000) as usize;
    let max_connections = limit.saturating_sub(500).clamp(1_000, 19_500);
    // Room for every connection with one edge killed, too.
    let edges = conns
        .div_ceil(PER_EDGE)
        .max(conns.div_ceil(max_connections) + 1)
        .max(MIN_EDGES);
    let spec_processes = conns.div_ceil(MAX_CONNS_PER_CLIENT).max(2);
    print_settings(conns, edges, spec_processes);
    let start_memory = MachineMemory::read()?;
    eprintln!(
        "[scale] machine: {:.1} GiB available before the start",
        start_memory.available as f64 / GIB
    );
    let tuning = EdgeTuning {
        quiet: Some((QUIET.0.to_owned(), QUIET.1.to_owned())),
        max_connections: Some(max_connections),
        ..EdgeTuning::default()
    };
    let began = Instant::now();
    let mut cluster = EtcdCluster::start_tuned(&bench.bins, edges, false, history, &tuning).await?;
    eprintln!(
        "[scale] cluster up in {:.1} s (nats-server -js, etcd, ingress, {edges} edges)",
        began.elapsed().as_secs_f64()
    );
    let system = format!("{}, {edges} edges", history.label("cluster"));
    let http_base = cluster.http_base.clone();
    let edge_pids = cluster.edge_pids();
    sleep(Duration::from_secs(1)).await;
    let base = MachineMemory::read()?;
    let base_edges = rss_sum(&edge_pids);

    let spec = FleetSpec {
        topics: TOPICS,
        latency: true,
        discover: Some(http_base.clone()),
        discover_batch: DISCOVER_BATCH,
        concurrency: CONCURRENCY,
        sources: SOURCES,
        ..FleetSpec::public("", conns, TOPIC)
    };
    let started = Instant::now();
    let mut fleet = Fleet::spawn(&spec)?;
    let mut ramp = Ramp {
        started,
        last: (started, 0),
        last_move: started,
        target: conns as u64,
        edge_pids: edge_pids.clone(),
        client_pids: fleet.pids(),
        base,
        base_edges,
        stop: None,
        series: RampSeries::default(),
    };
    // Generous: a stalled ramp is halted long before.
    let deadline = started + Duration::from_secs(3_600);
    fleet
        .wait_ready(deadline, SAMPLE, |connected, failed| {
            let error = cluster.check_running().err().map(|e| format!("{e:#}"));
            ramp.sample(connected, failed, error)
        })
        .await?;
    let ramp_secs = started.elapsed().as_secs_f64();
    let setup = fleet.setup.clone();
    let held = setup.connected;
    eprintln!(
        "[scale] ramp done in {ramp_secs:.1} s: {held} connected, {} failed, {} halted, {} retried",
        setup.failed, setup.halted, setup.retries
    );
    ramp.sample(held, setup.failed, None);
    ramp_charts(bench, &ramp.series, edges);
    if held == 0 {
        bail!(
            "no connection was set up: {}",
            setup.first_error.as_deref().unwrap_or("?")
        );
    }

    // Memory at the size held, once the edges' counts reached etcd.
    let counts = settled_counts(&http_base, held).await?;
    let machine = MachineMemory::read()?;
    let edges_now = rss_sum(&ramp.edge_pids);
    let clients_now = rss_sum(&ramp.client_pids);
    let per = |bytes: u64, base: u64| bytes.saturating_sub(base) as f64 / held as f64;
    let stop_note = ramp.stop.clone().map_or_else(
        || format!("all {conns} asked for"),
        |why| format!("of {conns} asked for: STOPPED, {why}"),
    );
    let mut row = Row::new(
        "scale",
        &system,
        "connections held",
        held as f64,
        Unit::Count,
    )
    .note(join_notes(&[
        &stop_note,
        &setup
            .first_error
            .as_ref()
            .map(|e| format!("{} failed ({e})", setup.failed))
            .unwrap_or_default(),
    ]));
    if !bench.report.quick && conns >= 1_000_000 {
        row = row.target(Target::at_least(1e6));
    }
    bench.report.add(row);
    let stats = fleet.stats().await?;
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "connect rate (through /v1/connect)",
            held as f64 / setup.secs.max(f64::EPSILON),
            Unit::PerSec,
        )
        .note(format!(
            "{held} in {:.1} s; {} /v1/connect calls ({DISCOVER_BATCH} connection(s) per answer), {} set-ups retried; {} processes x {CONCURRENCY} in flight",
            setup.secs,
            stats.roaming.discoveries,
            setup.retries,
            spec.processes()
        )),
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "edge RSS per connection",
            per(edges_now, ramp.base_edges),
            Unit::Bytes,
        )
        .note(format!(
            "the {edges} edges' RSS grew {:.2} GiB to {:.2} GiB",
            edges_now.saturating_sub(ramp.base_edges) as f64 / GIB,
            edges_now as f64 / GIB
        )),
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "machine memory per connection",
            per(machine.used, ramp.base.used),
            Unit::Bytes,
        )
        .note(format!(
            "MemTotal-MemAvailable {:.2} -> {:.2} GiB (available {:.2} GiB); both ends of each connection, the edges and the clients",
            ramp.base.used as f64 / GIB,
            machine.used as f64 / GIB,
            machine.available as f64 / GIB
        )),
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "kernel slab per connection",
            per(machine.slab, ramp.base.slab),
            Unit::Bytes,
        )
        .note(format!(
            "Slab {:.2} -> {:.2} GiB, SUnreclaim {:.2} -> {:.2} GiB; two sockets per connection",
            ramp.base.slab as f64 / GIB,
            machine.slab as f64 / GIB,
            ramp.base.unreclaimable as f64 / GIB,
            machine.unreclaimable as f64 / GIB
        )),
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "TCP buffer memory (sockstat mem)",
            machine.tcp_mem as f64,
            Unit::Bytes,
        )
        .note(format!(
            "TCP inuse {} (before {}); tcp_mem {} pages",
            machine.tcp_inuse,
            ramp.base.tcp_inuse,
            sysctl("/proc/sys/net/ipv4/tcp_mem")
        )),
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "client RSS per connection",
            clients_now as f64 / held as f64,
            Unit::Bytes,
        )
        .note(format!(
            "{} load-client processes, {:.2} GiB",
            ramp.client_pids.len(),
            clients_now as f64 / GIB
        )),
    );
    let per_edge: Vec<u64> = counts.iter().map(|(_, n)| *n).collect();
    let (min, max) = (
        per_edge.iter().copied().min().unwrap_or(0),
        per_edge.iter().copied().max().unwrap_or(0),
    );
    let listed: u64 = per_edge.iter().sum();
    let note = format!(
        "ingress /v1/stats: {} edges, {listed} connections, mean {:.0}",
        per_edge.len(),
        listed as f64 / per_edge.len().max(1) as f64
    );
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "connections per edge, min",
            min as f64,
            Unit::Count,
        )
        .note(note),
    );
    bench.report.add(Row::new(
        "scale",
        &system,
        "connections per edge, max",
        max as f64,
        Unit::Count,
    ));

    // One push to everyone, one to the first topic.
    let pusher = Pusher::gpush(&http_base);
    let everyone = measure_push(&mut fleet, &pusher, "", held, &edge_pids).await?;
    push_rows(bench, &system, "push to everyone", &everyone);
    let topic0 = format!("{TOPIC}-0");
    let subscribers = everyone.stats.roaming.held.first().copied().unwrap_or(0);
    let topic = measure_push(&mut fleet, &pusher, &topic0, subscribers, &edge_pids).await?;
    let topic_label = format!("push to a topic of {}k", subscribers / 1000);
    push_rows(bench, &system, &topic_label, &topic);
    bench.report.chart(chart::latency(
        "scale-latency",
        &format!("scale: push to receive at {held} connections ({edges} edges)"),
        &[
            ("push to everyone", &everyone.stats.latency),
            (&topic_label, &topic.stats.latency),
        ],
    ));

    // SIGKILL edge-0; pushes to every topic while its clients come back.
    let victim = counts
        .iter()
        .find(|(node, _)| node == "edge-0")
        .map_or(0, |(_, n)| *n);
    let keep_history = history != HistoryMode::Off;
    let mut positions = Vec::with_capacity(TOPICS);
    if keep_history {
        for t in 0..TOPICS {
            positions.push(kept_since(&http_base, &format!("{TOPIC}-{t}"), 0).await?.1);
        }
    }
    fleet.reset().await?;
    let before = fleet.stats().await?;
    let killed_at = unix_micros();
    let kill_instant = Instant::now();
    cluster.kill_edge(0);
    eprintln!("[scale] SIGKILLed edge-0 ({victim} connections)");
    let mut push_failures = 0;
    if keep_history {
        for round in 0..OUTAGE_ROUNDS {
            for t in 0..TOPICS {
                let topic = format!("{TOPIC}-{t}");
                push_failures += push_retrying(&pusher, &topic, &stamp(round, None)).await?;
            }
            sleep(OUTAGE_PAUSE).await;
        }
    }
    let mut back;
    let mut last_print = Instant::now();
    loop {
        back = fleet.stats().await?;
        let lost = back.roaming.lost - before.roaming.lost;
        let holding: u64 = back.roaming.held.iter().sum();
        if lost > 0 && holding == held {
            break;
        }
        if kill_instant.elapsed() >= RECONNECT_LIMIT {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "[scale] {:.1} s after the kill: {lost} lost, {} back, {} attempts failed",
                kill_instant.elapsed().as_secs_f64(),
                back.roaming.resubscribed - before.roaming.resubscribed,
                back.roaming.failed_attempts
            );
            last_print = Instant::now();
        }
        // Each poll asks every client process: not too often on a loaded
        // machine (the time measured is the clients' own clock).
        sleep(Duration::from_secs(1)).await;
    }
    let lost = back.roaming.lost - before.roaming.lost;
    let holding: u64 = back.roaming.held.iter().sum();
    let reconnect_secs = back.roaming.last_resubscribed_us.saturating_sub(killed_at) as f64 / 1e6;
    let mut notes = vec![format!(
        "{lost} connections lost (edge-0 had {victim}), all subscribed elsewhere through /v1/connect with since; {} attempts failed and were retried, {} resubscribes not answered recovered:true",
        back.roaming.failed_attempts, back.roaming.not_recovered
    )];
    if holding != held {
        notes.push(format!(
            "NOT ALL BACK within {} s: {holding} of {held} subscribed",
            RECONNECT_LIMIT.as_secs()
        ));
    }
    bench.report.add(
        Row::new(
            "scale",
            &system,
            "SIGKILL an edge: all its clients subscribed elsewhere after",
            reconnect_secs * 1e6,
            Unit::Micros,
        )
        .note(notes.join("; ")),
    );
    if keep_history {
        // What each topic's stream stored since the kill (a call that
        // failed may have been stored too): each subscriber expects those.
        let mut stored = Vec::with_capacity(TOPICS);
        for (t, since) in positions.iter().enumerate() {
            stored.push(
                kept_since(&http_base, &format!("{TOPIC}-{t}"), *since)
                    .await?
                    .0 as u64,
            );
        }
        let expected: u64 = stored
            .iter()
            .zip(&before.roaming.held)
            .map(|(pushes, subscribers)| pushes * subscribers)
            .sum();
        let wait = fleet
            .wait_delivered(expected, DELIVERY_STALL, Instant::now() + DELIVERY_LIMIT)
            .await;
        sleep(Duration::from_millis(200)).await;
        let stats = fleet.stats().await?;
        bench.report.add(
            Row::new(
                "scale",
                &system,
                "SIGKILL an edge: pushes missed",
                expected as f64 - stats.frames as f64,
                Unit::Count,
            )
            .target(Target::at_most(0.0))
            .note(join_notes(&[
                &format!(
                    "{OUTAGE_ROUNDS} pushes to each of the {TOPICS} topics during the outage ({push_failures} calls failed and were made again), stored per topic {stored:?}; every connection expects those of its topic: {expected} expected, {} received (each counted once by offset; {} duplicates dropped)",
                    stats.frames, stats.duplicates
                ),
                &wait_note(wait),
            ])),
        );
    }
    fleet.stop().await;
    cluster.check_running()?;
    Ok(())
}

//! Command line of `gpush-bench`: the scenarios to run, and the hidden
//! roles the program re-executes itself in (load client, baseline server).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Benchmarks gpush against a minimal raw WebSocket server on this machine.
///
/// Needs release binaries next to itself: run `cargo build --release --bins`
/// first, then `cargo run --release -p gpush-integration-tests --bin
/// gpush-bench -- [--quick] [--json out.json] [--charts DIR] [SCENARIO...]`.
#[derive(Debug, Parser)]
#[command(
    name = "gpush-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A hidden role; none runs the benchmark.
    #[command(subcommand)]
    pub role: Option<Role>,
    /// What to run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The roles of the re-executed program.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// A load-client process (started by the benchmark).
    #[command(hide = true)]
    Client(ClientArgs),
    /// The baseline raw server process (started by the benchmark).
    #[command(hide = true)]
    ServeBaseline(BaselineArgs),
    /// The push-API baseline server process (started by the benchmark).
    #[command(hide = true)]
    ServeApiBaseline(ApiBaselineArgs),
    /// A single-push load-generator process (started by the benchmark).
    #[command(hide = true)]
    Load(LoadArgs),
}

/// Flags of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Small sizes and short runs (a smoke test; targets apply to the
    /// standard sizes only).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write each scenario's chart to `DIR/<scenario>.svg` at the end of
    /// the run (the README's are in `integration-tests/bench-charts`).
    #[arg(long, value_name = "DIR", default_value = "bench-charts")]
    pub charts: PathBuf,
    /// Write no charts.
    #[arg(long, conflicts_with = "charts")]
    pub no_charts: bool,
    /// History settings of the gpush systems started: `fanout` and
    /// `ingress` run once per setting, in this order (`fanout
    /// --history on,off` compares them in one run); the other scenarios
    /// use the first.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    pub history: Vec<HistoryMode>,
    /// Connections the `scale` scenario ramps to [default: 1,000,000;
    /// 36,000 with --quick].
    #[arg(long, value_name = "N")]
    pub scale_conns: Option<usize>,
    /// Scenarios to run, in this order [default: all but scale].
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,
}

impl RunArgs {
    /// Where the charts go, if anywhere.
    pub fn charts_dir(&self) -> Option<&Path> {
        (!self.no_charts).then_some(self.charts.as_path())
    }
}

/// The `[history]` section the bench gives gpush's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryMode {
    /// The defaults: history on (JetStream file storage in a cluster).
    On,
    /// `history.enabled = false`.
    Off,
    /// History on, `history.storage = "memory"` (a cluster's JetStream
    /// streams in memory; a standalone edge keeps memory anyway).
    Memory,
}

impl HistoryMode {
    /// The config file lines for it (none for the defaults).
    pub fn toml(self) -> &'static str {
        match self {
            HistoryMode::On => "",
            HistoryMode::Off => "[history]\nenabled = false\n",
            HistoryMode::Memory => "[history]\nstorage = \"memory\"\n",
        }
    }

    /// The name of a system run with it in the report: `system` for the
    /// defaults, else `system, history off` or `system, history memory`.
    pub fn label(self, system: &str) -> String {
        match self {
            HistoryMode::On => system.to_owned(),
            HistoryMode::Off => format!("{system}, history off"),
            HistoryMode::Memory => format!("{system}, history memory"),
        }
    }
}

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Edge RSS per idle connection subscribed to a topic.
    Idle,
    /// Edge RSS per idle connection logged in with a private subscription.
    IdlePrivate,
    /// Sustained deliveries/s to the subscribers of one topic.
    Fanout,
    /// Push-to-receive latency at a fixed push rate.
    Latency,
    /// Pushes to random users through the batch API.
    Private,
    /// Pushes/s accepted by a cluster ingress.
    Ingress,
    /// WebSocket handshakes + subscribe per second.
    Churn,
    /// Fan-out latency on a large topic, quiet and while 50 clients
    /// toggle their subscription to it.
    Toggle,
    /// Many clients reconnecting at once, each recovering the pushes it
    /// missed (subscribe with `since`).
    Storm,
    /// The server API on a topic with many subscribers spread over three
    /// edges: presence, presence_stats and topics answer time and size,
    /// and how soon a disconnect closes a user's connections.
    Presence,
    /// A presence topic with many subscribers over two edges while
    /// clients churn through it: presence pushes and bytes each
    /// subscriber receives per second against the churn rate.
    PresenceChurn,
    /// 100,000 distinct topics with 5 subscribers each over several
    /// edges, random pushes at 20,000/s: latency, loss, edge memory per
    /// distinct topic, nats-server memory. Not in the default set (it
    /// takes a few minutes).
    ManyTopics,
    /// The baseline raw server's idle, fanout and latency figures.
    Baseline,
    /// One million connections (--scale-conns) through nats-server,
    /// etcd, ingress and ~55 edges, each client finding its edge through
    /// /v1/connect: connect rate, memory per connection, per-edge
    /// balance, a push to everyone and to a 250k topic, an edge
    /// SIGKILLed. Takes minutes and the whole machine: not part of the
    /// default run.
    Scale,
}

impl Scenario {
    /// Every scenario, in the default order.
    pub const ALL: [Scenario; 12] = [
        Scenario::Idle,
        Scenario::IdlePrivate,
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::Private,
        Scenario::Ingress,
        Scenario::Churn,
        Scenario::Toggle,
        Scenario::Storm,
        Scenario::Presence,
        Scenario::PresenceChurn,
        Scenario::Baseline,
    ];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::IdlePrivate => "idle-private",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Private => "private",
            Scenario::Ingress => "ingress",
            Scenario::Churn => "churn",
            Scenario::Toggle => "toggle",
            Scenario::Storm => "storm",
            Scenario::Presence => "presence",
            Scenario::PresenceChurn => "presence-churn",
            Scenario::ManyTopics => "many-topics",
            Scenario::Baseline => "baseline",
            Scenario::Scale => "scale",
        }
    }
}

/// How a client sets up each connection after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubscribeMode {
    /// Nothing: the baseline server treats every connection as subscribed.
    None,
    /// Subscribe to a public topic (code 1).
    Public,
    /// Log in as [`user_id`](crate::bench::control::user_id) (code 3, the
    /// token is the uid) and subscribe to a private topic (code 5).
    Private,
    /// Log in as [`user_id`](crate::bench::control::user_id) and subscribe
    /// to a public topic (code 1): a user in the topic's presence.
    PublicUser,
}

/// Flags of a load-client process.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// WebSocket URL, `ws://host:port/path` (unused with `--discover`).
    #[arg(long, default_value = "")]
    pub url: String,
    /// Find the edge through ingress at this base URL
    /// (`http://host:port`), as the browser client does: `GET
    /// /v1/connect`, then connect to the `url` it names. A lost connection
    /// is made again the same way and resubscribes with `since` the last
    /// offset it saw.
    #[arg(long)]
    pub discover: Option<String>,
    /// With `--discover`: connections made to one `/v1/connect` answer.
    #[arg(long, default_value_t = 1)]
    pub discover_batch: usize,
    /// Loopback source addresses to bind (comma-separated; churn rotates
    /// over them).
    #[arg(long, value_delimiter = ',', required = true)]
    pub src: Vec<Ipv4Addr>,
    /// Connections to hold.
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
    /// Index of this process's first connection in the whole fleet (names
    /// users and topics).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// What each connection subscribes to.
    #[arg(long, value_enum, default_value = "public")]
    pub subscribe: SubscribeMode,
    /// Topic name (public), or private topic name.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Spread public subscriptions over this many topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Public topics each connection subscribes to: connection `i`'s
    /// `j`-th is topic `(i + j * stride) % topics` (see
    /// [`topic_of`](crate::bench::control::topic_of)).
    #[arg(long, default_value_t = 1)]
    pub per_conn: usize,
    /// Distance between the topics of one connection (with `per_conn`).
    #[arg(long, default_value_t = 1)]
    pub stride: usize,
    /// Parse each push's send time and record latency.
    #[arg(long)]
    pub latency: bool,
    /// Subscribe (public) with this `since`, `{"offset":N,"epoch":"E"}`:
    /// the missed pushes arrive before the live ones and count as frames.
    #[arg(long)]
    pub since: Option<String>,
    /// Connection set-ups in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Churn for this many seconds instead of holding connections.
    #[arg(long)]
    pub churn_secs: Option<f64>,
    /// Churning: how long each connection stays after its set-up before
    /// it closes, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Interval of progress reports, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub progress_ms: u64,
}

/// Flags of the baseline server process.
#[derive(Debug, Clone, Args)]
pub struct BaselineArgs {
    /// WebSocket listen address.
    #[arg(long)]
    pub ws_addr: SocketAddr,
    /// HTTP address of `POST /push`.
    #[arg(long)]
    pub http_addr: SocketAddr,
    /// The topic named in the push frames.
    #[arg(long, default_value = "bench")]
    pub topic: String,
}

/// Flags of the push-API baseline server process.
#[derive(Debug, Clone, Args)]
pub struct ApiBaselineArgs {
    /// HTTP/1.1 listen address.
    #[arg(long)]
    pub http_addr: SocketAddr,
    /// h2 (gRPC) listen address.
    #[arg(long)]
    pub grpc_addr: SocketAddr,
}

/// What a load process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadProtocol {
    /// HTTP/1.1 `POST /v1/pushData`.
    Http,
    /// gRPC `PushData` over h2.
    Grpc,
}

impl LoadProtocol {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            LoadProtocol::Http => "http",
            LoadProtocol::Grpc => "grpc",
        }
    }
}

/// Flags of a load-generator process.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The server's address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// What to call.
    #[arg(long, value_enum)]
    pub protocol: LoadProtocol,
    /// Connections.
    #[arg(long)]
    pub connections: usize,
    /// Calls in flight per connection (gRPC; HTTP/1.1 has one).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Messages per call: 1 calls `pushData`, more `pushBatch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds of load.
    #[arg(long)]
    pub secs: f64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The topic pushed to.
    #[arg(long)]
    pub topic: String,
}

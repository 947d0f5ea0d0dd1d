//! The systems under test, each started as child processes on free
//! loopback ports: a standalone edge, a cluster (real `nats-server`,
//! `gpush-ingress`, optionally a `gpush-edge` on NATS), a cluster of
//! several edges registered in `etcd`, and the baseline raw server. Every process logs to a file in a scratch directory (its
//! tail is shown when it fails) and is killed on `Drop`. Also: reading a
//! process's resident memory.

use crate::bench::cli::HistoryMode;
use crate::procs::{
    Etcd, LoggedChild, NatsServer, POLL, START_TIMEOUT, build_dir, free_port, scratch_dir,
    sibling_binary,
};
use anyhow::{Context as _, bail};
use gpush_common::bus::Ack;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};
/// Keeps pings and idle timeouts out of the runs: nothing in a run lasts
/// this long, so clients never need to answer pings.
const EDGE_QUIET_FLAGS: [&str; 4] = ["--ping-interval", "300s", "--idle-timeout", "600s"];

/// The release binaries the bench starts, found next to itself.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `gpush-edge`.
    pub edge: PathBuf,
    /// `gpush-ingress`.
    pub ingress: PathBuf,
    /// This program (for the baseline server and the clients).
    pub bench: PathBuf,
}

impl Binaries {
    /// Finds the binaries, or says how to build them.
    pub fn locate() -> anyhow::Result<Self> {
        let bench = std::env::current_exe().context("path of gpush-bench")?;
        let (edge, ingress) = (
            sibling_binary("gpush-edge")?,
            sibling_binary("gpush-ingress")?,
        );
        let missing: Vec<String> = [&edge, &ingress]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing {}: build the release binaries first with `cargo build --release --bins`",
                missing.join(" and ")
            );
        }
        let dir = build_dir()?;
        if !dir.ends_with("release") {
            eprintln!(
                "warning: {} is not a release build directory; numbers will be meaningless",
                dir.display()
            );
        }
        Ok(Self {
            edge,
            ingress,
            bench,
        })
    }
}

/// Starts `program args` with `RUST_LOG=warn` (unless set) and its
/// stdout and stderr in `<dir>/<what>.log`.
fn spawn(
    what: &str,
    program: &Path,
    args: &[String],
    dir: &Scratch,
) -> anyhow::Result<LoggedChild> {
    let mut command = Command::new(program);
    command.args(args);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    LoggedChild::try_spawn(what, command, dir.0.join(format!("{what}.log")))
}

/// [`spawn`], then waits until both the WebSocket port `ws` and the HTTP
/// port `http` accept connections.
async fn spawn_ws_http(
    what: &str,
    program: &Path,
    args: &[String],
    dir: &Scratch,
    (ws, http): (SocketAddr, SocketAddr),
) -> anyhow::Result<LoggedChild> {
    let mut proc = spawn(what, program, args, dir)?;
    proc.try_wait_for_port(ws).await?;
    proc.try_wait_for_port(http).await?;
    Ok(proc)
}

/// Waits until `GET url` answers 200 while `proc` lives.
async fn wait_ok(proc: &mut LoggedChild, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let http = reqwest::Client::new();
    loop {
        proc.check_running()?;
        let status = timeout(POLL * 20, http.get(url).send()).await;
        if let Ok(Ok(response)) = status
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: {url} not OK within {START_TIMEOUT:?}; log:\n{}",
                proc.what(),
                proc.log_tail()
            );
        }
        sleep(POLL * 4).await;
    }
}

/// A scratch directory removed on `Drop`.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
        Self(scratch_dir(label))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `--config <dir>/<name>` holding `toml`, or nothing when `toml` is empty.
fn config_args(dir: &Scratch, name: &str, toml: &str) -> anyhow::Result<Vec<String>> {
    if toml.is_empty() {
        return Ok(Vec::new());
    }
    let path = dir.0.join(name);
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Ok(vec!["--config".to_owned(), path.display().to_string()])
}

/// `gpush-edge --standalone`: WebSocket and push API in one process.
#[derive(Debug)]
pub struct Standalone {
    proc: LoggedChild,
    /// `ws://127.0.0.1:<port>/ws`.
    pub ws_url: String,
    /// `http://127.0.0.1:<port>` of the push API.
    pub http_base: String,
    /// The push API's HTTP address.
    pub http: SocketAddr,
    /// The push API's gRPC address.
    pub grpc: SocketAddr,
    _dir: Scratch,
}

impl Standalone {
    /// Starts a standalone edge with `history`. With `login`, a token is
    /// its own uid (`auth.insecure_token_is_uid`), so clients log in
    /// without JWTs.
    pub async fn start(bins: &Binaries, login: bool, history: HistoryMode) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-standalone");
        let (ws, http, grpc) = (loopback(), loopback(), loopback());
        let mut args = strings(&["--standalone"]);
        args.extend(strings(&[
            "--ws-addr",
            &ws.to_string(),
            "--http-addr",
            &http.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
        ]));
        args.extend(strings(&EDGE_QUIET_FLAGS));
        let mut toml = history.toml().to_owned();
        if login {
            toml.push_str("[auth]\ninsecure_token_is_uid = true\n");
        }
        args.extend(config_args(&dir, "edge.toml", &toml)?);
        let proc = spawn_ws_http("gpush-edge", &bins.edge, &args, &dir, (ws, http)).await?;
        Ok(Self {
            proc,
            ws_url: format!("ws://{ws}/ws"),
            http_base: format!("http://{http}"),
            http,
            grpc,
            _dir: dir,
        })
    }

    /// The edge's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// An error when the edge has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.proc.check_running()
    }
}

/// A cluster: `nats-server`, `gpush-ingress`, and optionally one
/// `gpush-edge` on NATS (no etcd: nothing here lists edges).
#[derive(Debug)]
pub struct Cluster {
    nats: NatsServer,
    ingress: LoggedChild,
    edge: Option<LoggedChild>,
    /// `http://127.0.0.1:<port>` of ingress's push API.
    pub http_base: String,
    /// `http://127.0.0.1:<port>` of ingress's gRPC API.
    pub grpc_url: String,
    /// Ingress's HTTP address.
    pub http: SocketAddr,
    /// Ingress's gRPC address.
    pub grpc: SocketAddr,
    /// `ws://127.0.0.1:<port>/ws` of the edge, when there is one.
    pub ws_url: Option<String>,
    _dir: Scratch,
}

impl Cluster {
    /// Starts NATS (with JetStream) and ingress (and an edge when
    /// `with_edge`), both with `history`, and waits until each is
    /// connected to NATS.
    pub async fn start(
        bins: &Binaries,
        with_edge: bool,
        history: HistoryMode,
    ) -> anyhow::Result<Self> {
        Self::start_with_ack(bins, with_edge, history, Ack::default()).await
    }

    /// [`Cluster::start`] with ingress's `publish_ack` set to `ack`.
    pub async fn start_with_ack(
        bins: &Binaries,
        with_edge: bool,
        history: HistoryMode,
        ack: Ack,
    ) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-cluster");
        let nats = NatsServer::start().await;
        let (http, grpc) = (loopback(), loopback());
        let config = config_args(&dir, "gpush.toml", history.toml())?;
        let mut args = strings(&[
            "--http-addr",
            &http.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
            "--nats-url",
            &nats.url(),
            "--publish-ack",
            &ack.to_string(),
        ]);
        args.extend(config.iter().cloned());
        let mut ingress = spawn("gpush-ingress", &bins.ingress, &args, &dir)?;
        ingress.try_wait_for_port(http).await?;
        wait_ok(&mut ingress, &format!("http://{http}/readyz")).await?;
        let (edge, ws_url) = if with_edge {
            let ws = loopback();
            let mut args = strings(&["--ws-addr", &ws.to_string(), "--nats-url", &nats.url()]);
            args.extend(strings(&EDGE_QUIET_FLAGS));
            args.extend(config);
            let mut edge = spawn("gpush-edge", &bins.edge, &args, &dir)?;
            edge.try_wait_for_port(ws).await?;
            wait_ok(&mut edge, &format!("http://{ws}/readyz")).await?;
            (Some(edge), Some(format!("ws://{ws}/ws")))
        } else {
            (None, None)
        };
        Ok(Self {
            nats,
            ingress,
            edge,
            http_base: format!("http://{http}"),
            grpc_url: format!("http://{grpc}"),
            http,
            grpc,
            ws_url,
            _dir: dir,
        })
    }

    /// The edge's process id, when there is an edge.
    pub fn edge_pid(&self) -> Option<u32> {
        self.edge.as_ref().map(LoggedChild::pid)
    }

    /// The process ids of what carries a push to the edge: nats-server and
    /// ingress.
    pub fn bus_pids(&self) -> Vec<u32> {
        self.nats
            .pid()
            .into_iter()
            .chain([self.ingress.pid()])
            .collect()
    }

    /// Waits until the edge's NATS subscription to public `topic` (its
    /// bucket's) is in place, so a push published now reaches it.
    pub async fn wait_subscribed(&self, topic: &str) {
        let bucket = gpush_common::subject::topic_bucket(topic);
        let subject = gpush_common::Subjects::default().topic_bucket(bucket);
        self.nats
            .wait_subscriptions(Duration::from_secs(10), &subject, |subjects| {
                subjects.contains(&subject)
            })
            .await;
    }

    /// An error when a process of the cluster has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.ingress.check_running()?;
        if let Some(edge) = &mut self.edge {
            edge.check_running()?;
        }
        Ok(())
    }
}

/// A cluster whose edges ingress knows: `nats-server`, `etcd`,
/// `gpush-ingress` watching etcd, and `n` `gpush-edge` processes
/// registered in etcd as `edge-0`, `edge-1`, ... (so the server API
/// expects each of them and answers as soon as all did).
#[derive(Debug)]
pub struct EtcdCluster {
    // Dropped in this order: edges and ingress before the bus and etcd.
    edges: Vec<LoggedChild>,
    ingress: LoggedChild,
    _etcd: Etcd,
    _nats: NatsServer,
    /// `http://127.0.0.1:<port>` of ingress's push API.
    pub http_base: String,
    /// `http://127.0.0.1:<port>` of ingress's gRPC API.
    pub grpc_url: String,
    /// `ws://127.0.0.1:<port>/ws` of each edge, in node id order.
    pub ws_urls: Vec<String>,
    _dir: Scratch,
}

/// Edge settings of an [`EtcdCluster`] beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct EdgeTuning {
    /// `--ping-interval` and `--idle-timeout` (humantime), instead of
    /// [`EDGE_QUIET_FLAGS`]' for runs longer than those.
    pub quiet: Option<(String, String)>,
    /// `--max-connections`: upgrades over it are refused with 503 (a
    /// client then asks `/v1/connect` again) before the edge runs out of
    /// descriptors.
    pub max_connections: Option<usize>,
    /// Top-level edge config lines (limits such as `max_topics`).
    pub edge_toml: String,
}

impl EtcdCluster {
    /// Starts NATS (with JetStream), etcd, ingress and `n` edges, all with
    /// `history`; with `login`, a token is its own uid
    /// (`auth.insecure_token_is_uid`). Waits until ingress lists every
    /// edge.
    pub async fn start(
        bins: &Binaries,
        n: usize,
        login: bool,
        history: HistoryMode,
    ) -> anyhow::Result<Self> {
        Self::start_tuned(bins, n, login, history, &EdgeTuning::default()).await
    }

    /// [`start`](Self::start) with the edges' `tuning`. The edges start
    /// all at once, then each is waited for.
    pub async fn start_tuned(
        bins: &Binaries,
        n: usize,
        login: bool,
        history: HistoryMode,
        tuning: &EdgeTuning,
    ) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-etcd-cluster");
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
        let (http, grpc) = (loopback(), loopback());
        let mut args = strings(&[
            "--http-addr",
            &http.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
            "--nats-url",
            &nats.url(),
            "--etcd-endpoints",
            &etcd.url(),
        ]);
        args.extend(config_args(&dir, "ingress.toml", history.toml())?);
        let mut ingress = spawn("gpush-ingress", &bins.ingress, &args, &dir)?;
        ingress.try_wait_for_port(http).await?;
        wait_ok(&mut ingress, &format!("http://{http}/readyz")).await?;
        let mut toml = format!("{}\n{}", tuning.edge_toml, history.toml());
        if login {
            toml.push_str("[auth]\ninsecure_token_is_uid = true\n");
        }
        let config = config_args(&dir, "edge.toml", &toml)?;
        let quiet = match &tuning.quiet {
            Some((ping, idle)) => strings(&["--ping-interval", ping, "--idle-timeout", idle]),
            None => strings(&EDGE_QUIET_FLAGS),
        };
        let (mut edges, mut ws_urls) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let ws = loopback();
            let url = format!("ws://{ws}/ws");
            let mut args = strings(&[
                "--ws-addr",
                &ws.to_string(),
                "--nats-url",
                &nats.url(),
                "--etcd-endpoints",
                &etcd.url(),
                "--node-id",
                &format!("edge-{i}"),
                "--public-url",
                &url,
            ]);
            args.extend(quiet.iter().cloned());
            if let Some(max) = tuning.max_connections {
                args.extend(strings(&["--max-connections", &max.to_string()]));
            }
            args.extend(config.iter().cloned());
            edges.push(spawn(&format!("gpush-edge-{i}"), &bins.edge, &args, &dir)?);
            ws_urls.push(url);
            addrs.push(ws);
        }
        for (edge, ws) in edges.iter_mut().zip(&addrs) {
            edge.try_wait_for_port(*ws).await?;
            wait_ok(edge, &format!("http://{ws}/readyz")).await?;
        }
        let mut cluster = Self {
            edges,
            ingress,
            _etcd: etcd,
            _nats: nats,
            http_base: format!("http://{http}"),
            grpc_url: format!("http://{grpc}"),
            ws_urls,
            _dir: dir,
        };
        cluster.wait_listed(n).await?;
        Ok(cluster)
    }

    /// The NATS server.
    pub fn nats(&self) -> &NatsServer {
        &self._nats
    }

    /// Waits until `GET /v1/edges` lists `n` edges.
    async fn wait_listed(&mut self, n: usize) -> anyhow::Result<()> {
        let url = format!("{}/v1/edges", self.http_base);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            let listed = match timeout(POLL * 20, http.get(&url).send()).await {
                Ok(Ok(response)) => response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|body| body["edges"].as_array().map(Vec::len)),
                _ => None,
            };
            if listed == Some(n) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("ingress lists {listed:?} edges, not {n}, after {START_TIMEOUT:?}");
            }
            sleep(POLL * 4).await;
        }
    }

    /// An error when a process of the cluster has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.ingress.check_running()?;
        for edge in &mut self.edges {
            edge.check_running()?;
        }
        Ok(())
    }

    /// The edges' process ids (of those not killed), in node id order.
    pub fn edge_pids(&self) -> Vec<u32> {
        self.edges.iter().map(LoggedChild::pid).collect()
    }

    /// Ingress's process id.
    pub fn ingress_pid(&self) -> u32 {
        self.ingress.pid()
    }

    /// SIGKILLs the `i`-th of the edges still running and forgets it
    /// (it is no longer checked or listed in [`edge_pids`](Self::edge_pids)).
    pub fn kill_edge(&mut self, i: usize) {
        let mut edge = self.edges.remove(i);
        edge.signal("KILL");
        edge.kill();
    }
}

/// NATS (with JetStream) and `n` `gpush-edge`s on it, `edge-0`,
/// `edge-1`...: no ingress and no etcd (the edges find each other on NATS,
/// as their presence trackers do). A login token is its own uid.
#[derive(Debug)]
pub struct EdgeCluster {
    _nats: NatsServer,
    edges: Vec<LoggedChild>,
    /// `ws://127.0.0.1:<port>/ws` of each edge.
    pub ws_urls: Vec<String>,
    _dir: Scratch,
}

impl EdgeCluster {
    /// Starts NATS and `n` edges with `history` and the config lines
    /// `toml`, and waits until each is connected to NATS.
    pub async fn start(
        bins: &Binaries,
        n: usize,
        history: HistoryMode,
        toml: &str,
    ) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-edges");
        let nats = NatsServer::start().await;
        let mut config = format!("{toml}\n{}", history.toml());
        config.push_str("[auth]\ninsecure_token_is_uid = true\n");
        let config = config_args(&dir, "edge.toml", &config)?;
        let mut edges = Vec::with_capacity(n);
        let mut ws_urls = Vec::with_capacity(n);
        for i in 0..n {
            let ws = loopback();
            let mut args = strings(&[
                "--ws-addr",
                &ws.to_string(),
                "--nats-url",
                &nats.url(),
                "--node-id",
                &format!("edge-{i}"),
            ]);
            args.extend(strings(&EDGE_QUIET_FLAGS));
            args.extend(config.iter().cloned());
            let mut edge = spawn(&format!("gpush-edge-{i}"), &bins.edge, &args, &dir)?;
            edge.try_wait_for_port(ws).await?;
            wait_ok(&mut edge, &format!("http://{ws}/readyz")).await?;
            edges.push(edge);
            ws_urls.push(format!("ws://{ws}/ws"));
        }
        Ok(Self {
            _nats: nats,
            edges,
            ws_urls,
            _dir: dir,
        })
    }

    /// The edges' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.edges.iter().map(LoggedChild::pid).collect()
    }

    /// An error when an edge has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.edges
            .iter_mut()
            .try_for_each(LoggedChild::check_running)
    }
}

/// The baseline raw server (`gpush-bench serve-baseline`).
#[derive(Debug)]
pub struct Baseline {
    proc: LoggedChild,
    /// `ws://127.0.0.1:<port>/ws`.
    pub ws_url: String,
    /// `http://127.0.0.1:<port>` of `POST /push`.
    pub http_base: String,
    _dir: Scratch,
}

impl Baseline {
    /// Starts the baseline server and waits for both its ports.
    pub async fn start(bins: &Binaries) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-baseline");
        let (ws, http) = (loopback(), loopback());
        let args = strings(&[
            "serve-baseline",
            "--ws-addr",
            &ws.to_string(),
            "--http-addr",
            &http.to_string(),
        ]);
        let proc = spawn_ws_http("baseline", &bins.bench, &args, &dir, (ws, http)).await?;
        Ok(Self {
            proc,
            ws_url: format!("ws://{ws}/ws"),
            http_base: format!("http://{http}"),
            _dir: dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// An error when the server has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.proc.check_running()
    }
}

/// The push-API baseline server (`gpush-bench serve-api-baseline`).
#[derive(Debug)]
pub struct ApiBaseline {
    proc: LoggedChild,
    /// Its HTTP/1.1 address.
    pub http: SocketAddr,
    /// Its h2 (gRPC) address.
    pub grpc: SocketAddr,
    _dir: Scratch,
}

impl ApiBaseline {
    /// Starts the server and waits for both its ports.
    pub async fn start(bins: &Binaries) -> anyhow::Result<Self> {
        let dir = Scratch::new("bench-api-baseline");
        let (http, grpc) = (loopback(), loopback());
        let args = strings(&[
            "serve-api-baseline",
            "--http-addr",
            &http.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
        ]);
        let proc = spawn_ws_http("api-baseline", &bins.bench, &args, &dir, (http, grpc)).await?;
        Ok(Self {
            proc,
            http,
            grpc,
            _dir: dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// An error when the server has died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.proc.check_running()
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux architecture the bench runs on).
const USER_HZ: u64 = 100;

/// CPU time process `pid` used so far, user + system, every thread
/// (`utime + stime` of `/proc/<pid>/stat`; 10 ms resolution).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it
    // start with the state (field 3), so utime (14) and stime (15) are
    // the 12th and 13th.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .into_iter()
        .flatten()
        .map(|field| field.parse::<u64>().ok())
        .sum::<Option<u64>>()
        .with_context(|| format!("no utime/stime in {path}"))?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// CPU time of several processes, added up (see [`cpu_time`]).
pub fn cpu_time_of(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS in {path}"))
}

/// This process's open-files limit (the soft `RLIMIT_NOFILE`, from
/// `/proc/self/limits`); the processes it starts inherit it. `None` when
/// unlimited or unreadable.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// A resident-memory reading once it stopped changing.
#[derive(Debug, Clone, Copy)]
pub struct SettledRss {
    /// Bytes.
    pub bytes: u64,
    /// False when it still moved when the time limit came.
    pub settled: bool,
}

/// Samples `pid`'s RSS every 250 ms until it has stayed within 0.5 % (at
/// least 64 KiB) for `stable`, or `limit` passes.
pub async fn settled_rss(
    pid: u32,
    stable: Duration,
    limit: Duration,
) -> anyhow::Result<SettledRss> {
    const SAMPLE: Duration = Duration::from_millis(250);
    let deadline = Instant::now() + limit;
    let mut window: Vec<(Instant, u64)> = Vec::new();
    loop {
        let now = Instant::now();
        let bytes = rss_bytes(pid)?;
        window.push((now, bytes));
        window.retain(|(at, _)| now.duration_since(*at) <= stable);
        let spans = now.duration_since(window[0].0) + SAMPLE >= stable;
        let (lo, hi) = window
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), (_, b)| (lo.min(*b), hi.max(*b)));
        let tolerance = (hi / 200).max(64 * 1024);
        if spans && hi - lo <= tolerance {
            return Ok(SettledRss {
                bytes,
                settled: true,
            });
        }
        if now >= deadline {
            return Ok(SettledRss {
                bytes,
                settled: false,
            });
        }
        sleep(SAMPLE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_readable() {
        let rss = rss_bytes(std::process::id()).expect("VmRSS");
        assert!(rss > 100 * 1024, "{rss}");
    }

    #[test]
    fn own_cpu_time_grows() {
        let before = cpu_time(std::process::id()).expect("stat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let after = cpu_time(std::process::id()).expect("stat");
        assert!(after > before, "{before:?} -> {after:?}");
    }

    #[test]
    fn open_files_limit_is_readable() {
        let limit = open_files_limit().expect("Max open files");
        assert!(limit >= 64, "{limit}");
    }
}

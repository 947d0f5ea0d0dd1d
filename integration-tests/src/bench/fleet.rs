//! The coordinator's side of the load clients: a [`Fleet`] of client
//! processes holding connections, or a churn run.
//!
//! Connections are split over several processes (one process holds at most
//! [`MAX_CONNS_PER_CLIENT`] sockets, under the 20,000 open-file limit, and
//! at least two processes run so both cores can drive load). Each process
//! binds its own loopback source address ([`next_source`]), so the
//! TIME_WAIT sockets one scenario leaves behind never exhaust the ephemeral
//! ports of the next.

use crate::bench::cli::SubscribeMode;
use crate::bench::control::{Churn, Command, Event, Setup, Stats};
use anyhow::{Context as _, anyhow, bail};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout, timeout_at};

/// Most connections one client process holds.
pub const MAX_CONNS_PER_CLIENT: usize = 18_000;
/// Fewest client processes a fleet uses (one per core on the bench machine).
pub const MIN_CLIENTS: usize = 2;
/// Connection set-ups in flight per client process.
pub const SETUP_CONCURRENCY: usize = 256;
/// How long a fleet may take to connect, on top of two seconds per 1,000
/// connections (per 1,000 subscriptions when connections subscribe to
/// several topics).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A fresh loopback source address (127.0.0.2, 127.0.0.3, ...), never
/// handed out twice in a run.
pub fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(2);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let last = n & 0xFF;
        if last != 0 && last != 255 {
            return Ipv4Addr::from(0x7F00_0000 | (n & 0x00FF_FFFF));
        }
    }
}

/// What the connections of a fleet do.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// `ws://127.0.0.1:<port>/ws`.
    pub url: String,
    /// Connections over all processes.
    pub conns: usize,
    /// What each connection subscribes to.
    pub subscribe: SubscribeMode,
    /// Topic (public) or private topic.
    pub topic: String,
    /// Spread public subscriptions over this many topics.
    pub topics: usize,
    /// Public topics per connection (see
    /// [`topic_of`](crate::bench::control::topic_of)); 1: the one of
    /// [`topic_name`](crate::bench::control::topic_name).
    pub per_conn: usize,
    /// Distance between one connection's topics.
    pub stride: usize,
    /// Record push-to-receive latency.
    pub latency: bool,
    /// Public subscriptions ask for the pushes after this position,
    /// `{"offset":N,"epoch":"E"}`.
    pub since: Option<String>,
    /// Index of the fleet's first connection (names its users and
    /// topics): fleets on different edges with distinct users start
    /// where the previous one ended.
    pub first: usize,
    /// Find the edge through ingress at this base URL (`GET
    /// /v1/connect`, as the browser client does) instead of `url`, and
    /// reconnect lost connections the same way (see
    /// [`roamer`](crate::bench::roamer)).
    pub discover: Option<String>,
    /// With `discover`: connections made to one `/v1/connect` answer.
    pub discover_batch: usize,
    /// Connection set-ups in flight per process.
    pub concurrency: usize,
    /// Loopback source addresses per process (each gives about 28,000
    /// ephemeral ports per destination).
    pub sources: usize,
}

impl FleetSpec {
    /// `conns` connections subscribed to public `topic`.
    pub fn public(url: &str, conns: usize, topic: &str) -> Self {
        Self {
            url: url.to_owned(),
            conns,
            subscribe: SubscribeMode::Public,
            topic: topic.to_owned(),
            topics: 1,
            per_conn: 1,
            stride: 1,
            latency: false,
            since: None,
            first: 0,
            discover: None,
            discover_batch: 1,
            concurrency: SETUP_CONCURRENCY,
            sources: 1,
        }
    }

    /// Processes needed for `conns` connections.
    pub fn processes(&self) -> usize {
        self.conns
            .div_ceil(MAX_CONNS_PER_CLIENT)
            .max(MIN_CLIENTS)
            .min(self.conns.max(1))
    }

    /// Flags shared by every process of the fleet.
    fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            "client".to_owned(),
            "--url".to_owned(),
            self.url.clone(),
            "--subscribe".to_owned(),
            match self.subscribe {
                SubscribeMode::None => "none",
                SubscribeMode::Public => "public",
                SubscribeMode::Private => "private",
                SubscribeMode::PublicUser => "public-user",
            }
            .to_owned(),
            "--topic".to_owned(),
            self.topic.clone(),
            "--topics".to_owned(),
            self.topics.to_string(),
            "--per-conn".to_owned(),
            self.per_conn.to_string(),
            "--stride".to_owned(),
            self.stride.to_string(),
        ];
        if self.latency {
            args.push("--latency".to_owned());
        }
        if let Some(since) = &self.since {
            args.extend(["--since".to_owned(), since.clone()]);
        }
        if let Some(discover) = &self.discover {
            args.extend([
                "--discover".to_owned(),
                discover.clone(),
                "--discover-batch".to_owned(),
                self.discover_batch.to_string(),
            ]);
        }
        args
    }
}

/// Push frames counted by each client, and connections set up while
/// setting up, as last reported.
#[derive(Debug, Default)]
struct Progress {
    frames: Vec<AtomicU64>,
    connected: Vec<AtomicU64>,
    failed: Vec<AtomicU64>,
    changed: Notify,
}

impl Progress {
    fn new(processes: usize) -> Arc<Self> {
        let counters = || (0..processes).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Self {
            frames: counters(),
            connected: counters(),
            failed: counters(),
            changed: Notify::new(),
        })
    }

    fn delivered(&self) -> u64 {
        self.frames.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }
}

/// Reads a fleet's delivered count without borrowing the fleet.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Progress>);

impl Watch {
    /// Push frames received so far over all clients.
    pub fn delivered(&self) -> u64 {
        self.0.delivered()
    }
}

/// One client process.
#[derive(Debug)]
struct Client {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Client {
    /// Starts `gpush-bench client <args>`. Its progress lines update
    /// `progress.frames[slot]`; other events arrive on `events`.
    fn spawn(args: &[String], progress: Arc<Progress>, slot: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("path of gpush-bench")?;
        let mut child = Process::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} {}", exe.display(), args.join(" ")))?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(Event::Progress { frames }) => {
                        progress.frames[slot].store(frames, Ordering::Relaxed);
                        progress.changed.notify_waiters();
                    }
                    Ok(Event::Connecting { connected, failed }) => {
                        progress.connected[slot].store(connected, Ordering::Relaxed);
                        progress.failed[slot].store(failed, Ordering::Relaxed);
                    }
                    Ok(event) => {
                        if matches!(event, Event::Reset) {
                            progress.frames[slot].store(0, Ordering::Relaxed);
                        }
                        if let Event::Ready(ready) = &event {
                            progress.connected[slot].store(ready.connected, Ordering::Relaxed);
                            progress.failed[slot].store(ready.failed, Ordering::Relaxed);
                        }
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("gpush-bench: bad line from client {slot}: {e}: {line}"),
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            events,
        })
    }

    async fn send(&mut self, command: Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(&command)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("write to client process")
    }

    /// The next event (not progress), or an error naming how the process
    /// ended.
    async fn next_event(&mut self, deadline: Instant) -> anyhow::Result<Event> {
        match timeout_at(deadline, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => {
                let status = timeout(Duration::from_secs(2), self.child.wait()).await;
                bail!("client process ended early ({status:?})")
            }
            Err(_) => bail!("client process did not answer in time"),
        }
    }
}

/// How a wait for deliveries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The count was reached.
    Reached,
    /// The count did not move for the stall time.
    Stalled,
    /// The deadline passed first.
    Deadline,
}

/// Client processes holding connections.
#[derive(Debug)]
pub struct Fleet {
    clients: Vec<Client>,
    progress: Arc<Progress>,
    /// How set-up went, over all processes.
    pub setup: Setup,
}

impl Fleet {
    /// Starts the processes and waits until every connection was tried.
    pub async fn start(spec: &FleetSpec) -> anyhow::Result<Self> {
        let mut fleet = Self::spawn(spec)?;
        fleet.ready(spec).await?;
        Ok(fleet)
    }

    /// Starts the processes without waiting for their set-ups (see
    /// [`ready`](Self::ready) and [`wait_ready`](Self::wait_ready));
    /// `setup` stays empty until then.
    pub fn spawn(spec: &FleetSpec) -> anyhow::Result<Self> {
        let processes = spec.processes();
        let progress = Progress::new(processes);
        let mut clients = Vec::with_capacity(processes);
        let mut first = spec.first;
        for slot in 0..processes {
            let conns = spec.conns / processes + usize::from(slot < spec.conns % processes);
            let sources: Vec<String> = (0..spec.sources.max(1))
                .map(|_| next_source().to_string())
                .collect();
            let mut args = spec.common_args();
            args.extend([
                "--src".to_owned(),
                sources.join(","),
                "--conns".to_owned(),
                conns.to_string(),
                "--first".to_owned(),
                first.to_string(),
                "--concurrency".to_owned(),
                spec.concurrency.to_string(),
            ]);
            first += conns;
            clients.push(Client::spawn(&args, progress.clone(), slot)?);
        }
        Ok(Self {
            clients,
            progress,
            setup: Setup::default(),
        })
    }

    /// Waits until every connection of a [`spawn`](Self::spawn)ed fleet
    /// of `spec` was tried.
    pub async fn ready(&mut self, spec: &FleetSpec) -> anyhow::Result<()> {
        let requests = spec.conns * spec.per_conn.max(1);
        let deadline = Instant::now() + READY_TIMEOUT + Duration::from_millis(2 * requests as u64);
        self.wait_ready(deadline, Duration::MAX, |_, _| false).await
    }

    /// A handle that reads [`delivered`](Self::delivered) from elsewhere,
    /// e.g. a task sampling it while the fleet sets up.
    pub fn watch(&self) -> Watch {
        Watch(self.progress.clone())
    }

    /// Waits until every process reported its set-up done (into
    /// [`setup`](Self::setup)), calling `tick` with the connections set up
    /// and failed so far about every `every`; when `tick` answers true, tells every
    /// process to start no more connections ([`Command::Halt`]) and waits
    /// for the ones started.
    pub async fn wait_ready(
        &mut self,
        deadline: Instant,
        every: Duration,
        mut tick: impl FnMut(u64, u64) -> bool,
    ) -> anyhow::Result<()> {
        let mut setup = Setup::default();
        let mut halted = false;
        let mut next_tick = Instant::now().checked_add(every);
        for slot in 0..self.clients.len() {
            loop {
                let until = next_tick.map_or(deadline, |at| at.min(deadline));
                let client = &mut self.clients[slot];
                match timeout_at(until, client.events.recv()).await {
                    Ok(Some(Event::Ready(ready))) => {
                        setup.merge(&ready);
                        break;
                    }
                    Ok(Some(other)) => bail!("client {slot}: expected ready, got {other:?}"),
                    Ok(None) => {
                        let e = client.next_event(deadline).await.err();
                        return Err(anyhow!("client {slot} set-up: {e:?}"));
                    }
                    Err(_) if Instant::now() >= deadline => {
                        bail!("client {slot} set-up: not ready in time")
                    }
                    Err(_) => {
                        next_tick = Instant::now().checked_add(every);
                        if tick(self.connected(), self.failed()) && !halted {
                            halted = true;
                            for client in &mut self.clients {
                                client.send(Command::Halt).await?;
                            }
                        }
                    }
                }
            }
        }
        self.setup = setup;
        Ok(())
    }

    /// An error naming `what` (e.g. `edge-0`) unless the set-up connected
    /// all `conns` connections.
    pub fn require_all(&self, conns: usize, what: &str) -> anyhow::Result<()> {
        if self.setup.connected != conns as u64 {
            bail!(
                "{what}: {} of {conns} connections set up ({})",
                self.setup.connected,
                self.setup.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// Connections set up so far over all processes (as last reported,
    /// about a second old while they set up).
    pub fn connected(&self) -> u64 {
        self.progress
            .connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections that failed to set up so far (as [`connected`](Self::connected)).
    pub fn failed(&self) -> u64 {
        self.progress
            .failed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The client processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.clients
            .iter()
            .filter_map(|client| client.child.id())
            .collect()
    }

    /// Push frames received so far over all clients (as last reported, a
    /// few milliseconds old).
    pub fn delivered(&self) -> u64 {
        self.progress.delivered()
    }

    /// Waits until [`delivered`](Self::delivered) reaches `target`, the
    /// count stops moving for `stall`, or `deadline` passes.
    pub async fn wait_delivered(&self, target: u64, stall: Duration, deadline: Instant) -> Wait {
        let mut last = self.delivered();
        let mut last_move = Instant::now();
        loop {
            let changed = self.progress.changed.notified();
            let now = self.delivered();
            if now >= target {
                return Wait::Reached;
            }
            if now != last {
                last = now;
                last_move = Instant::now();
            }
            let stall_at = last_move + stall;
            if Instant::now() >= deadline {
                return Wait::Deadline;
            }
            if Instant::now() >= stall_at {
                return Wait::Stalled;
            }
            let _ = timeout_at(stall_at.min(deadline), changed).await;
        }
    }

    async fn ask(&mut self, command: Command) -> anyhow::Result<Vec<Event>> {
        for client in &mut self.clients {
            client.send(command).await?;
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut answers = Vec::with_capacity(self.clients.len());
        for (slot, client) in self.clients.iter_mut().enumerate() {
            let event = client
                .next_event(deadline)
                .await
                .with_context(|| format!("client {slot}, {command:?}"))?;
            answers.push(event);
        }
        Ok(answers)
    }

    /// Zeroes every client's counters (frames, latency, misdeliveries).
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        for event in self.ask(Command::Reset).await? {
            if !matches!(event, Event::Reset) {
                bail!("expected reset, got {event:?}");
            }
        }
        Ok(())
    }

    /// Every client's counters, merged.
    pub async fn stats(&mut self) -> anyhow::Result<Stats> {
        let mut total = Stats::default();
        for event in self.ask(Command::Stats).await? {
            match event {
                Event::Stats(stats) => total.merge(&stats),
                other => bail!("expected stats, got {other:?}"),
            }
        }
        Ok(total)
    }

    /// Tells every client to quit and waits for them (killing stragglers).
    pub async fn stop(mut self) {
        for client in &mut self.clients {
            let _ = client.send(Command::Quit).await;
        }
        for client in &mut self.clients {
            if timeout(Duration::from_secs(10), client.child.wait())
                .await
                .is_err()
            {
                let _ = client.child.kill().await;
            }
        }
    }
}

/// Runs `processes` churn clients against `url` for `run_for`, each with
/// `concurrency` cycles in flight and `sources` source addresses.
pub async fn churn(
    url: &str,
    run_for: Duration,
    processes: usize,
    concurrency: usize,
    sources: usize,
) -> anyhow::Result<Churn> {
    let plan = [
        "--subscribe",
        "public",
        "--topic",
        "churn",
        "--topics",
        "100",
    ]
    .map(str::to_owned);
    churn_with(url, run_for, processes, concurrency, sources, 0, &plan).await
}

/// [`churn`] with the clients' set-up flags `plan` (what each cycle
/// subscribes to, how long it holds), numbering the first process's
/// cycles from `first` (users and topics are named after it).
pub async fn churn_with(
    url: &str,
    run_for: Duration,
    processes: usize,
    concurrency: usize,
    sources: usize,
    first: usize,
    plan: &[String],
) -> anyhow::Result<Churn> {
    let progress = Progress::new(processes);
    let mut clients = Vec::with_capacity(processes);
    for slot in 0..processes {
        let src: Vec<String> = (0..sources).map(|_| next_source().to_string()).collect();
        let mut args = [
            "client",
            "--url",
            url,
            "--src",
            &src.join(","),
            "--first",
            &(first + slot * 1_000_000).to_string(),
            "--concurrency",
            &concurrency.to_string(),
            "--churn-secs",
            &run_for.as_secs_f64().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend_from_slice(plan);
        clients.push(Client::spawn(&args, progress.clone(), slot)?);
    }
    let deadline = Instant::now() + run_for + READY_TIMEOUT;
    let mut total = Churn::default();
    for (slot, client) in clients.iter_mut().enumerate() {
        match client.next_event(deadline).await {
            Ok(Event::Churn(churn)) => total.merge(&churn),
            Ok(other) => return Err(anyhow!("churn client {slot}: unexpected {other:?}")),
            Err(e) => return Err(e.context(format!("churn client {slot}"))),
        }
        let _ = timeout(Duration::from_secs(10), client.child.wait()).await;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_hosts() {
        let a = next_source();
        let b = next_source();
        assert_ne!(a, b);
        assert!(a.is_loopback() && b.is_loopback());
        assert_ne!(a.octets()[3], 0);
        assert_ne!(a.octets()[3], 255);
    }

    #[test]
    fn processes_cover_the_connections() {
        let spec = |conns| FleetSpec::public("ws://127.0.0.1:1/ws", conns, "t");
        assert_eq!(spec(1).processes(), 1);
        assert_eq!(spec(2_000).processes(), 2);
        assert_eq!(spec(19_000).processes(), 2);
        assert_eq!(spec(40_000).processes(), 3);
    }
}

//! The load-client process: holds many WebSocket connections and counts
//! what arrives on them.
//!
//! One process runs one single-threaded runtime, so its counters are plain
//! cells and every connection reads into one shared 64 KiB buffer: a
//! connection waits for readiness, reads, walks the frame headers and keeps
//! only the tail of an incomplete frame. Pushes are counted as text frames;
//! the payload is searched (not parsed) for its send time (`"t":`) when
//! latency is measured, and for its uid (`"u":"`) on private
//! subscriptions. Set-up (connect from a given loopback source address,
//! upgrade, subscribe, await the reply) runs with bounded concurrency.
//! See [`control`](crate::bench::control) for how the coordinator drives it.

use crate::bench::cli::{ClientArgs, SubscribeMode};
use crate::bench::control::{self, Churn, Command, Event, Setup, Stats};
use crate::bench::histogram::Histogram;
use crate::bench::wire::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WireError};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead as _, ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::spawn_local;
use tokio::time::{Instant, timeout};

/// Size of the read buffer shared by all connections of a process.
const READ_BUF: usize = 64 * 1024;
/// A connection's leftover buffer larger than this is freed once empty.
const KEEP_PARTIAL: usize = 4 * 1024;
/// Time one connection may take to connect, upgrade and subscribe.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Reply code to a subscribe (public or private).
const SUBSCRIBED: u64 = 20001;
/// Reply code to a login.
const LOGGED_IN: u64 = 20003;
/// Sent once when a connection opens; not an answer to anything.
const CONNECTED: u64 = 20000;
/// Presence push: too many changes in one window of the topic.
const PRESENCE_CHANGED: u64 = 10010;

/// Microseconds since the Unix epoch: the clock in push payloads, shared
/// by every process on the machine.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Runs a client process until told to quit (or, churning, until its time
/// is up).
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    if args.discover.is_some() {
        return crate::bench::roamer::run(args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        match args.churn_secs {
            Some(secs) => churn(&args, Duration::from_secs_f64(secs)).await,
            None => hold(&args).await,
        }
    })
}

/// Writes one event line to stdout; exits when the coordinator is gone.
pub(crate) fn emit(event: &Event) {
    let Ok(line) = serde_json::to_string(event) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Where to connect.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    host: String,
    path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("expected a ws:// URL, got {url:?}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .parse()
            .map_err(|e| anyhow::anyhow!("{url:?}: host must be ip:port ({e})"))?;
        Ok(Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What a connection does after the upgrade.
#[derive(Debug, Clone)]
pub(crate) enum Plan {
    Nothing,
    Public {
        topic: String,
        since: Option<String>,
    },
    Private {
        uid: String,
        topic: String,
    },
    PublicUser {
        uid: String,
        topic: String,
    },
    /// Several public topics, subscribed one after the other.
    Many {
        topics: Vec<String>,
    },
}

impl Plan {
    fn for_connection(args: &ClientArgs, index: usize) -> Self {
        match args.subscribe {
            SubscribeMode::None => Plan::Nothing,
            SubscribeMode::Public if args.per_conn > 1 => Plan::Many {
                topics: (0..args.per_conn)
                    .map(|j| control::topic_of(&args.topic, args.topics, args.stride, index, j))
                    .collect(),
            },
            SubscribeMode::Public => Plan::Public {
                topic: control::topic_name(&args.topic, args.topics, index),
                since: args.since.clone(),
            },
            SubscribeMode::Private => Plan::Private {
                uid: control::user_id(index),
                topic: args.topic.clone(),
            },
            SubscribeMode::PublicUser => Plan::PublicUser {
                uid: control::user_id(index),
                topic: control::topic_name(&args.topic, args.topics, index),
            },
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("server closed the connection during set-up")]
    Closed,
    #[error("expected reply {expected}, got {reply}")]
    Refused { expected: u64, reply: String },
    #[error("set-up took longer than {SETUP_TIMEOUT:?}")]
    Timeout,
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), SetupError> {
    buf.reserve(1024);
    match stream.read_buf(buf).await? {
        0 => Err(SetupError::Closed),
        _ => Ok(()),
    }
}

/// Sends `text` and waits for the reply with code `expected`, skipping the
/// "connected" greeting; returns the reply. Bytes after the reply stay in
/// `buf`.
async fn request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    text: &str,
    expected: u64,
) -> Result<Vec<u8>, SetupError> {
    stream
        .write_all(&wire::client_frame(OP_TEXT, text.as_bytes()))
        .await?;
    reply(stream, buf, expected).await
}

/// Waits for the reply with code `expected`, skipping the "connected"
/// greeting. Bytes after the reply stay in `buf`.
async fn reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    expected: u64,
) -> Result<Vec<u8>, SetupError> {
    loop {
        while let Some((frame, used)) = wire::next_frame(buf)? {
            let code = (frame.opcode == OP_TEXT)
                .then(|| wire::u64_after(frame.payload, b"\"code\":"))
                .flatten();
            match code {
                Some(code) if code == expected => {
                    let reply = frame.payload.to_vec();
                    buf.drain(..used);
                    return Ok(reply);
                }
                Some(CONNECTED) | None => {}
                Some(_) => {
                    return Err(SetupError::Refused {
                        expected,
                        reply: String::from_utf8_lossy(frame.payload).into_owned(),
                    });
                }
            }
            buf.drain(..used);
        }
        read_more(stream, buf).await?;
    }
}

/// Connects from `src`, upgrades and carries out `plan`. Returns the stream
/// and whatever arrived after the last reply.
async fn open(
    endpoint: &Endpoint,
    src: Ipv4Addr,
    plan: &Plan,
) -> Result<(TcpStream, Vec<u8>), SetupError> {
    let (stream, buf, _) = open_replied(endpoint, src, plan).await?;
    Ok((stream, buf))
}

/// [`open`], also returning the last reply (empty for [`Plan::Nothing`]).
pub(crate) async fn open_replied(
    endpoint: &Endpoint,
    src: Ipv4Addr,
    plan: &Plan,
) -> Result<(TcpStream, Vec<u8>, Vec<u8>), SetupError> {
    let socket = TcpSocket::new_v4().map_err(SetupError::Connect)?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(SetupError::Connect)?;
    let mut stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(SetupError::Connect)?;
    stream.set_nodelay(true)?;
    let upgrade = wire::upgrade_request(&endpoint.host, &endpoint.path);
    stream.write_all(upgrade.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        if let Some(head) = wire::head_len(&buf)? {
            break head;
        }
        read_more(&mut stream, &mut buf).await?;
    };
    wire::check_upgrade_response(&buf[..head])?;
    buf.drain(..head);
    let reply = match plan {
        Plan::Nothing => Vec::new(),
        Plan::Public { topic, since } => {
            let subscribe = match since {
                Some(since) => format!(r#"{{"code":1,"topic":"{topic}","since":{since}}}"#),
                None => format!(r#"{{"code":1,"topic":"{topic}"}}"#),
            };
            request(&mut stream, &mut buf, &subscribe, SUBSCRIBED).await?
        }
        Plan::Private { uid, topic } => {
            let login = format!(r#"{{"code":3,"data":"{uid}"}}"#);
            request(&mut stream, &mut buf, &login, LOGGED_IN).await?;
            let subscribe = format!(r#"{{"code":5,"topic":"{topic}"}}"#);
            request(&mut stream, &mut buf, &subscribe, SUBSCRIBED).await?
        }
        Plan::PublicUser { uid, topic } => {
            let login = format!(r#"{{"code":3,"data":"{uid}"}}"#);
            request(&mut stream, &mut buf, &login, LOGGED_IN).await?;
            let subscribe = format!(r#"{{"code":1,"topic":"{topic}"}}"#);
            request(&mut stream, &mut buf, &subscribe, SUBSCRIBED).await?
        }
        Plan::Many { topics } => {
            // Every subscribe in one write, then their replies.
            let mut frames = Vec::new();
            for topic in topics {
                let subscribe = format!(r#"{{"code":1,"topic":"{topic}"}}"#);
                frames.extend_from_slice(&wire::client_frame(OP_TEXT, subscribe.as_bytes()));
            }
            stream.write_all(&frames).await?;
            let mut last = Vec::new();
            for _ in topics {
                last = reply(&mut stream, &mut buf, SUBSCRIBED).await?;
            }
            last
        }
    };
    Ok((stream, buf, reply))
}

/// One connection of the coordinator itself (not of a client process):
/// to `url` from 127.0.0.1, logged in as `uid` (the token is the uid)
/// and subscribed to public `topic`. Returns the stream and whatever
/// arrived after the last reply, for [`close_of`].
pub async fn open_user(url: &str, uid: &str, topic: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let endpoint = Endpoint::parse(url)?;
    let plan = Plan::PublicUser {
        uid: uid.to_owned(),
        topic: topic.to_owned(),
    };
    open_in_time(&endpoint, Ipv4Addr::LOCALHOST, &plan)
        .await
        .map_err(|e| anyhow::anyhow!("{url} as {uid}: {e}"))
}

/// Reads a connection opened by [`open_user`] (`early`: what arrived
/// after its set-up) until its close frame, discarding other frames;
/// returns the close code and when the frame was read. An error when the
/// connection ends without a close frame or `deadline` passes first.
pub async fn close_of(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> anyhow::Result<(Option<u16>, Instant)> {
    loop {
        while let Some((frame, used)) = wire::next_frame(&buf)? {
            if frame.opcode == OP_CLOSE {
                return Ok((frame.close_code(), Instant::now()));
            }
            buf.drain(..used);
        }
        tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("no close frame in time"))??;
    }
}

pub(crate) async fn open_in_time(
    endpoint: &Endpoint,
    src: Ipv4Addr,
    plan: &Plan,
) -> Result<(TcpStream, Vec<u8>), SetupError> {
    timeout(SETUP_TIMEOUT, open(endpoint, src, plan))
        .await
        .unwrap_or(Err(SetupError::Timeout))
}

/// Everything the connections of one process count, plus their shared
/// read buffer. Single-threaded: cells, no atomics.
pub(crate) struct Counters {
    measure_latency: bool,
    /// Drop pushes whose offset is not above the connection's last one
    /// (counted in `duplicates`).
    track_offsets: bool,
    frames: Cell<u64>,
    duplicates: Cell<u64>,
    bytes: Cell<u64>,
    presence_overflows: Cell<u64>,
    misdelivered: Cell<u64>,
    unparsed: Cell<u64>,
    /// Cumulative: not zeroed by a reset, so a connection lost during a
    /// warm-up still shows.
    closed: Cell<u64>,
    close_reasons: RefCell<BTreeMap<String, u64>>,
    latency: RefCell<Histogram>,
    read_buf: RefCell<Box<[u8]>>,
}

impl Counters {
    pub(crate) fn new(measure_latency: bool) -> Self {
        Self::tracking(measure_latency, false)
    }

    /// Counters that also drop repeated offsets when `track_offsets`.
    pub(crate) fn tracking(measure_latency: bool, track_offsets: bool) -> Self {
        Self {
            measure_latency,
            track_offsets,
            frames: Cell::new(0),
            duplicates: Cell::new(0),
            bytes: Cell::new(0),
            presence_overflows: Cell::new(0),
            misdelivered: Cell::new(0),
            unparsed: Cell::new(0),
            closed: Cell::new(0),
            close_reasons: RefCell::default(),
            latency: RefCell::default(),
            read_buf: RefCell::new(vec![0; READ_BUF].into_boxed_slice()),
        }
    }

    /// Push frames counted since the last reset.
    pub(crate) fn frames(&self) -> u64 {
        self.frames.get()
    }

    pub(crate) fn reset(&self) {
        self.frames.set(0);
        self.duplicates.set(0);
        self.bytes.set(0);
        self.presence_overflows.set(0);
        self.misdelivered.set(0);
        self.unparsed.set(0);
        *self.latency.borrow_mut() = Histogram::default();
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            frames: self.frames.get(),
            duplicates: self.duplicates.get(),
            bytes: self.bytes.get(),
            presence_overflows: self.presence_overflows.get(),
            misdelivered: self.misdelivered.get(),
            unparsed: self.unparsed.get(),
            closed: self.closed.get(),
            close_reasons: self.close_reasons.borrow().clone(),
            latency: self.latency.borrow().clone(),
            roaming: Default::default(),
        }
    }

    pub(crate) fn closed(&self, reason: String) {
        self.closed.set(self.closed.get() + 1);
        *self.close_reasons.borrow_mut().entry(reason).or_default() += 1;
    }

    /// Counts one push frame of `size` bytes received at `now` (unix
    /// micros).
    fn push(&self, payload: &[u8], size: usize, me: Option<&[u8]>, now: u64) {
        self.frames.set(self.frames.get() + 1);
        self.bytes.set(self.bytes.get() + size as u64);
        if wire::u64_after(payload, b"\"code\":") == Some(PRESENCE_CHANGED) {
            self.presence_overflows
                .set(self.presence_overflows.get() + 1);
            return;
        }
        if self.measure_latency {
            match wire::u64_after(payload, b"\"t\":") {
                Some(sent) => self.latency.borrow_mut().record(now.saturating_sub(sent)),
                None => self.unparsed.set(self.unparsed.get() + 1),
            }
        }
        if let Some(me) = me
            && wire::str_after(payload, b"\"u\":\"") != Some(me)
        {
            self.misdelivered.set(self.misdelivered.get() + 1);
        }
    }
}

/// Why a receiving connection ended.
enum Ending {
    Close(Option<u16>),
    Eof,
    Error(String),
}

impl Ending {
    fn reason(&self) -> String {
        match self {
            Ending::Close(Some(code)) => format!("close {code}"),
            Ending::Close(None) => "close".into(),
            Ending::Eof => "eof".into(),
            Ending::Error(e) => format!("error: {e}"),
        }
    }
}

/// The receiving side of one connection.
struct Receiver {
    /// The tail of an incomplete frame.
    partial: Vec<u8>,
    /// The uid a private connection logged in as (checked in every push).
    me: Option<Box<[u8]>>,
    /// Pong frames owed to the server.
    pongs: Vec<u8>,
    /// The last push offset seen (when the counters track offsets).
    last_offset: u64,
}

impl Receiver {
    /// Handles the complete frames at the start of `buf`; returns how many
    /// bytes they took, or how the connection ended.
    fn walk(
        buf: &[u8],
        me: Option<&[u8]>,
        (pongs, last_offset): (&mut Vec<u8>, &mut u64),
        counters: &Counters,
        now: u64,
    ) -> Result<usize, Ending> {
        let mut at = 0;
        loop {
            match wire::next_frame(&buf[at..]) {
                Ok(Some((frame, used))) => {
                    at += used;
                    match frame.opcode {
                        OP_TEXT => {
                            if counters.track_offsets
                                && let Some(offset) = wire::u64_after(frame.payload, b"\"offset\":")
                            {
                                if offset <= *last_offset {
                                    counters.duplicates.set(counters.duplicates.get() + 1);
                                    continue;
                                }
                                *last_offset = offset;
                            }
                            counters.push(frame.payload, used, me, now)
                        }
                        OP_PING => {
                            pongs.extend_from_slice(&wire::client_frame(OP_PONG, frame.payload))
                        }
                        OP_CLOSE => return Err(Ending::Close(frame.close_code())),
                        _ => {}
                    }
                }
                Ok(None) => return Ok(at),
                Err(e) => return Err(Ending::Error(e.to_string())),
            }
        }
    }

    /// Takes newly read bytes.
    fn absorb(&mut self, data: &[u8], counters: &Counters, now: u64) -> Result<(), Ending> {
        let me = self.me.as_deref();
        if self.partial.is_empty() {
            let state = (&mut self.pongs, &mut self.last_offset);
            let used = Self::walk(data, me, state, counters, now)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            self.partial.extend_from_slice(data);
            let state = (&mut self.pongs, &mut self.last_offset);
            let used = Self::walk(&self.partial, me, state, counters, now)?;
            self.partial.drain(..used);
            if self.partial.is_empty() && self.partial.capacity() > KEEP_PARTIAL {
                self.partial = Vec::new();
            }
        }
        Ok(())
    }
}

/// Reads pushes until the connection ends; records why it ended.
async fn receive(stream: TcpStream, early: Vec<u8>, me: Option<String>, counters: Rc<Counters>) {
    let me = me.map(|uid| uid.into_bytes().into_boxed_slice());
    receive_from(stream, early, me, 0, &counters).await;
}

/// Reads pushes until the connection ends; records why it ended. Pushes
/// with offsets up to `last_offset` count as duplicates when the counters
/// track offsets. Returns the last offset seen.
pub(crate) async fn receive_from(
    mut stream: TcpStream,
    early: Vec<u8>,
    me: Option<Box<[u8]>>,
    last_offset: u64,
    counters: &Counters,
) -> u64 {
    let mut receiver = Receiver {
        partial: Vec::new(),
        me,
        pongs: Vec::new(),
        last_offset,
    };
    let absorbed = receiver.absorb(&early, counters, unix_micros());
    // Not kept alive across the wait below: it has the set-up's capacity.
    drop(early);
    let ending = match absorbed {
        Ok(()) => read_until_end(&mut stream, &mut receiver, counters).await,
        Err(ending) => ending,
    };
    counters.closed(ending.reason());
    receiver.last_offset
}

/// Waits for readiness, reads into the shared buffer, hands the bytes to
/// `receiver`, answers pings; until the connection ends.
async fn read_until_end(
    stream: &mut TcpStream,
    receiver: &mut Receiver,
    counters: &Counters,
) -> Ending {
    loop {
        if let Err(e) = stream.readable().await {
            return Ending::Error(e.to_string());
        }
        let outcome = {
            let mut buf = counters.read_buf.borrow_mut();
            match read_once(stream, &mut buf) {
                Ok(0) => Err(Ending::Eof),
                Ok(n) => receiver.absorb(&buf[..n], counters, unix_micros()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(Ending::Error(e.to_string())),
            }
        };
        if let Err(ending) = outcome {
            return ending;
        }
        if !receiver.pongs.is_empty() {
            let pongs = std::mem::take(&mut receiver.pongs);
            if let Err(e) = stream.write_all(&pongs).await {
                return Ending::Error(e.to_string());
            }
        }
    }
}

/// One read. A short read means the socket's receive queue is empty, so
/// its readiness is cleared right away (the outer `try_io` sees
/// `WouldBlock`): the next wait goes straight to the poller instead of
/// costing a second `read` that would only return `WouldBlock`. Safe with
/// tokio's edge-triggered readiness: data that arrives after this read
/// raises a new event.
fn read_once(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = None;
    let outer = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read(buf)?;
        got = Some(n);
        if n > 0 && n < buf.len() {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match got {
        Some(n) => Ok(n),
        None => outer,
    }
}

/// Reports [`Event::Progress`] with `frames()` every `interval` while it
/// changes, from a task of its own.
pub(crate) fn report_progress(interval: Duration, frames: impl Fn() -> u64 + 'static) {
    spawn_local(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let now = frames();
            if now != last {
                last = now;
                emit(&Event::Progress { frames: now });
            }
        }
    });
}

/// Answers the coordinator's commands once the set-up is done (`stats`,
/// `reset`) until it says quit, then exits: exiting closes every socket,
/// no need to drop the connections' tasks one by one.
pub(crate) async fn serve_commands(
    mut commands: mpsc::UnboundedReceiver<Command>,
    stats: impl Fn() -> Stats,
    reset: impl Fn(),
) -> ! {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Stats => emit(&Event::Stats(stats())),
            Command::Reset => {
                reset();
                emit(&Event::Reset);
            }
            Command::Halt => {}
            Command::Quit => break,
        }
    }
    std::process::exit(0)
}

/// Commands from stdin, read on a plain thread (stdin is blocking). EOF
/// reads as [`Command::Quit`].
pub(crate) fn commands() -> mpsc::UnboundedReceiver<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if tx.send(command).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("gpush-bench client: bad command {line:?}: {e}"),
            }
        }
        let _ = tx.send(Command::Quit);
    });
    rx
}

/// Opens and holds `args.conns` connections, then serves commands.
async fn hold(args: &ClientArgs) -> anyhow::Result<()> {
    let endpoint = Rc::new(Endpoint::parse(&args.url)?);
    let counters = Rc::new(Counters::new(args.latency));
    let permits = Rc::new(Semaphore::new(args.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    for i in 0..args.conns {
        let index = args.first + i;
        let plan = Plan::for_connection(args, index);
        let src = args.src[i % args.src.len()];
        let (endpoint, counters, permits, done) = (
            endpoint.clone(),
            counters.clone(),
            permits.clone(),
            done_tx.clone(),
        );
        spawn_local(async move {
            let permit = permits.acquire().await;
            let opened = open_in_time(&endpoint, src, &plan).await;
            drop(permit);
            match opened {
                Ok((stream, early)) => {
                    let _ = done.send(Ok(()));
                    // Only private pushes name their user.
                    let me = match plan {
                        Plan::Private { uid, .. } => Some(uid),
                        _ => None,
                    };
                    receive(stream, early, me, counters).await;
                }
                Err(e) => {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        });
    }
    drop(done_tx);
    // Progress from the start: frames that arrive while the others still
    // set up (a storm's recoveries) count as they come.
    let progress = counters.clone();
    report_progress(Duration::from_millis(args.progress_ms.max(1)), move || {
        progress.frames.get()
    });
    let mut setup = Setup::default();
    // Count answers: the senders live on in the receiving tasks.
    for _ in 0..args.conns {
        let Some(result) = done_rx.recv().await else {
            break;
        };
        match result {
            Ok(()) => setup.connected += 1,
            Err(e) => {
                setup.failed += 1;
                setup.first_error.get_or_insert(e);
            }
        }
    }
    setup.secs = started.elapsed().as_secs_f64();
    emit(&Event::Ready(setup));

    serve_commands(commands(), || counters.stats(), || counters.reset()).await
}

/// Opens, sets up (as `args.subscribe` says), holds for `args.hold_ms` and
/// closes connections for `run_for`, with `args.concurrency` cycles in
/// flight, rotating over the source addresses.
async fn churn(args: &ClientArgs, run_for: Duration) -> anyhow::Result<()> {
    let endpoint = Rc::new(Endpoint::parse(&args.url)?);
    let result = Rc::new(RefCell::new(Churn::default()));
    let started = Instant::now();
    let deadline = started + run_for;
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (endpoint, result, args) = (endpoint.clone(), result.clone(), args.clone());
        tasks.push(spawn_local(async move {
            let mut n = worker;
            let hold = Duration::from_millis(args.hold_ms);
            while Instant::now() < deadline {
                let plan = Plan::for_connection(&args, args.first + n);
                let src = args.src[n % args.src.len()];
                n += workers;
                let began = Instant::now();
                let outcome = open_in_time(&endpoint, src, &plan).await;
                let stream = {
                    let mut result = result.borrow_mut();
                    match outcome {
                        Ok((stream, _)) => {
                            result.cycles += 1;
                            result.cycle_time.record(began.elapsed().as_micros() as u64);
                            stream
                        }
                        Err(e) => {
                            result.failed += 1;
                            result.first_error.get_or_insert_with(|| e.to_string());
                            continue;
                        }
                    }
                };
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                drop(stream);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let mut churn = result.borrow().clone();
    churn.secs = started.elapsed().as_secs_f64();
    emit(&Event::Churn(churn));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_counted_once() {
        let counters = Counters::new(true);
        let push =
            wire::server_text(br#"{"code":10001,"topic":"b","data":{"t":100,"i":1,"u":"u1"}}"#);
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(&push);
        }
        let mut receiver = Receiver {
            partial: Vec::new(),
            me: Some(b"u1".to_vec().into_boxed_slice()),
            pongs: Vec::new(),
            last_offset: 0,
        };
        for chunk in stream.chunks(7) {
            assert!(receiver.absorb(chunk, &counters, 350).is_ok());
        }
        assert_eq!(counters.frames.get(), 3);
        assert_eq!(counters.misdelivered.get(), 0);
        assert_eq!(counters.latency.borrow().max(), 250);
        assert!(receiver.partial.is_empty());

        receiver.me = Some(b"u2".to_vec().into_boxed_slice());
        assert!(receiver.absorb(&push, &counters, 350).is_ok());
        assert_eq!(counters.misdelivered.get(), 1);
    }

    #[test]
    fn presence_frames_count_their_bytes_and_overflows() {
        let counters = Counters::new(false);
        let joined = wire::server_text(br#"{"code":10005,"topic":"room","uid":"u1"}"#);
        let overflow = wire::server_text(br#"{"code":10010,"topic":"room"}"#);
        let mut receiver = Receiver {
            partial: Vec::new(),
            me: None,
            pongs: Vec::new(),
            last_offset: 0,
        };
        let stream = [&joined[..], &overflow[..]].concat();
        assert!(receiver.absorb(&stream, &counters, 0).is_ok());
        let stats = counters.stats();
        assert_eq!((stats.frames, stats.presence_overflows), (2, 1));
        assert_eq!(stats.bytes, stream.len() as u64);
    }

    #[test]
    fn close_frames_end_the_connection() {
        let counters = Counters::new(false);
        let mut receiver = Receiver {
            partial: Vec::new(),
            me: None,
            pongs: Vec::new(),
            last_offset: 0,
        };
        let close = [0x88, 0x02, 0x0F, 0xA1]; // 4001
        match receiver.absorb(&close, &counters, 0) {
            Err(Ending::Close(Some(4001))) => {}
            _ => panic!("close frame not seen"),
        }
    }

    #[test]
    fn endpoints_parse() {
        let endpoint = Endpoint::parse("ws://127.0.0.1:9992/ws").expect("valid");
        assert_eq!(endpoint.addr.port(), 9992);
        assert_eq!(endpoint.path, "/ws");
        assert!(Endpoint::parse("http://x").is_err());
    }
}

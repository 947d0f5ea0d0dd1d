//! The roaming load client of the `scale` scenario: a client process
//! (`gpush-bench client --discover <ingress>`) whose connections find
//! their edge as the browser client does, and come back when they lose it.
//!
//! Each connection asks ingress `GET /v1/connect` for the least loaded
//! edge (one answer serves `--discover-batch` connections; the calls go
//! one at a time over one keep-alive connection per process), connects
//! there, upgrades and subscribes to its public topic; the subscribe
//! reply's `offset` and `epoch` are its stream position. It then counts
//! pushes as the plain client does, remembering the last offset it saw.
//! When the connection ends (its edge was killed), it asks `/v1/connect`
//! again, skipping the edge it just lost (which stays listed until its
//! etcd lease expires), and resubscribes with `since` that offset, so the
//! pushes it missed arrive before the live ones (pushes at or below an
//! offset it already has count as duplicates, not as frames). Failed
//! attempts are retried with backoff from [`RETRY_FIRST`] to
//! [`RETRY_MAX`], each through `/v1/connect` again. A first set-up that
//! fails [`SETUP_ATTEMPTS`] times counts as failed.
//!
//! Beyond the plain client's protocol it reports set-up progress
//! ([`Event::Connecting`]) once a second and obeys [`Command::Halt`], so
//! the coordinator can stop a ramp that stalls.

use crate::bench::cli::ClientArgs;
use crate::bench::client::{
    Counters, Endpoint, Plan, SETUP_TIMEOUT, commands, emit, open_replied, receive_from,
    report_progress, serve_commands, unix_micros,
};
use crate::bench::control::{self, Command, Event, Roaming, Setup, Stats};
use crate::bench::wire;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::spawn_local;
use tokio::time::{Instant, sleep, timeout};

/// Attempts of a new connection's set-up before it counts as failed.
const SETUP_ATTEMPTS: u32 = 5;
/// Wait after a lost connection's first failed reconnect attempt.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest a `/v1/connect` call may take.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of [`Event::Connecting`] reports.
const CONNECTING_EVERY: Duration = Duration::from_secs(1);

/// Runs a roaming client process until told to quit.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, hold(args))
}

/// `GET /v1/connect` over one keep-alive connection, its answer reused
/// for `batch` connections.
struct Discovery {
    addr: SocketAddr,
    request: Vec<u8>,
    batch: usize,
    state: Mutex<DiscoveryState>,
    calls: Cell<u64>,
}

#[derive(Default)]
struct DiscoveryState {
    conn: Option<TcpStream>,
    cached: Option<Rc<Endpoint>>,
    left: usize,
}

impl Discovery {
    fn new(base: &str, batch: usize) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--discover must be http://host:port, got {base:?}"))?
            .trim_end_matches('/');
        let addr = host
            .parse()
            .map_err(|e| anyhow::anyhow!("--discover {base:?}: host must be ip:port ({e})"))?;
        Ok(Self {
            addr,
            request: format!("GET /v1/connect HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes(),
            batch: batch.max(1),
            state: Mutex::new(DiscoveryState::default()),
            calls: Cell::new(0),
        })
    }

    /// The edge to connect to: the last answer while it serves more
    /// connections, else a new one; never `avoid`.
    async fn endpoint(&self, avoid: Option<SocketAddr>) -> Result<Rc<Endpoint>, String> {
        let mut state = self.state.lock().await;
        if let Some(cached) = state.cached.clone()
            && state.left > 0
            && Some(cached.addr) != avoid
        {
            state.left -= 1;
            return Ok(cached);
        }
        let mut error = "/v1/connect named only the edge just lost".to_owned();
        for _ in 0..4 {
            match self.call(&mut state.conn).await {
                Ok(endpoint) if Some(endpoint.addr) == avoid => {}
                Ok(endpoint) => {
                    let endpoint = Rc::new(endpoint);
                    state.cached = Some(endpoint.clone());
                    state.left = self.batch - 1;
                    return Ok(endpoint);
                }
                Err(e) => {
                    state.conn = None;
                    error = e;
                }
            }
        }
        state.cached = None;
        Err(error)
    }

    /// One call; an error drops the connection (the caller does).
    async fn call(&self, conn: &mut Option<TcpStream>) -> Result<Endpoint, String> {
        self.calls.set(self.calls.get() + 1);
        let exchange = async {
            let stream = match conn {
                Some(stream) => stream,
                None => {
                    let stream = TcpStream::connect(self.addr)
                        .await
                        .map_err(|e| format!("connect to ingress: {e}"))?;
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    conn.insert(stream)
                }
            };
            stream
                .write_all(&self.request)
                .await
                .map_err(|e| format!("/v1/connect: {e}"))?;
            read_response(stream).await
        };
        let body = timeout(DISCOVER_TIMEOUT, exchange)
            .await
            .map_err(|_| "/v1/connect timed out".to_owned())??;
        let url = wire::str_after(&body, b"\"url\":\"")
            .ok_or_else(|| format!("no url in {}", String::from_utf8_lossy(&body)))?;
        Endpoint::parse(&String::from_utf8_lossy(url)).map_err(|e| e.to_string())
    }
}

/// Reads one HTTP/1.1 response with a `content-length`; its body when
/// the status is 200.
async fn read_response(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(512);
    let head = loop {
        if let Some(head) = wire::head_len(&buf).map_err(|e| e.to_string())? {
            break head;
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("ingress closed the connection".into());
        }
    };
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let length: usize = text
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("/v1/connect: no content-length")?;
    while buf.len() < head + length {
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("ingress closed the connection".into());
        }
    }
    let body = buf[head..head + length].to_vec();
    if !text.starts_with("http/1.1 200") {
        return Err(format!(
            "/v1/connect: {} {}",
            text.lines().next().unwrap_or_default(),
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}

/// A connection set up: the stream, what arrived after the reply, the
/// stream position the reply named, the edge, and whether the reply said
/// it recovered.
struct Opened {
    stream: TcpStream,
    early: Vec<u8>,
    offset: u64,
    edge: SocketAddr,
    recovered: bool,
}

/// Everything the connections of the process share.
struct Shared {
    args: ClientArgs,
    counters: Counters,
    discovery: Discovery,
    permits: Semaphore,
    halted: Cell<bool>,
    /// The epoch each topic's subscribe replies named.
    epochs: RefCell<Vec<Option<Rc<str>>>>,
    roaming: RefCell<Roaming>,
    retries: Cell<u64>,
}

impl Shared {
    /// One set-up through `/v1/connect`: `since` the offset given (when
    /// the topic's epoch is known), never on edge `avoid`.
    async fn attempt(
        &self,
        index: usize,
        since: Option<u64>,
        avoid: Option<SocketAddr>,
    ) -> Result<Opened, String> {
        let args = &self.args;
        let slot = index % args.topics.max(1);
        let endpoint = self.discovery.endpoint(avoid).await?;
        let epoch = self.epochs.borrow()[slot].clone();
        let since = since
            .zip(epoch)
            .map(|(offset, epoch)| format!(r#"{{"offset":{offset},"epoch":"{epoch}"}}"#));
        let plan = Plan::Public {
            topic: control::topic_name(&args.topic, args.topics, index),
            since,
        };
        let src = args.src[index % args.src.len()];
        let opened = timeout(SETUP_TIMEOUT, Box::pin(open_replied(&endpoint, src, &plan))).await;
        let (stream, early, reply) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(format!("{}: {e}", endpoint.addr)),
            Err(_) => return Err(format!("{}: set-up timed out", endpoint.addr)),
        };
        if let Some(epoch) = wire::str_after(&reply, b"\"epoch\":\"") {
            let mut epochs = self.epochs.borrow_mut();
            if epochs[slot].as_deref().map(str::as_bytes) != Some(epoch) {
                epochs[slot] = Some(String::from_utf8_lossy(epoch).into());
            }
        }
        Ok(Opened {
            stream,
            early,
            offset: wire::u64_after(&reply, b"\"offset\":").unwrap_or(0),
            edge: endpoint.addr,
            recovered: wire::find(&reply, b"\"recovered\":true").is_some(),
        })
    }

    fn stats(&self) -> Stats {
        let mut stats = self.counters.stats();
        stats.roaming = self.roaming.borrow().clone();
        stats.roaming.discoveries = self.discovery.calls.get();
        stats
    }

    fn reset(&self) {
        self.counters.reset();
        let mut roaming = self.roaming.borrow_mut();
        roaming.not_recovered = 0;
        roaming.failed_attempts = 0;
        roaming.last_resubscribed_us = 0;
    }
}

/// Sets up connection `index` (reporting on `done`), then holds it and
/// makes it again whenever it is lost.
async fn connection(shared: Rc<Shared>, index: usize, done: mpsc::UnboundedSender<Setup>) {
    let slot = index % shared.args.topics.max(1);
    let mut attempts = 0;
    let mut opened = loop {
        let permit = shared.permits.acquire().await;
        if shared.halted.get() {
            let _ = done.send(Setup {
                halted: 1,
                ..Setup::default()
            });
            return;
        }
        let attempt = Box::pin(shared.attempt(index, None, None)).await;
        drop(permit);
        match attempt {
            Ok(opened) => break opened,
            Err(e) => {
                attempts += 1;
                if attempts >= SETUP_ATTEMPTS {
                    let _ = done.send(Setup {
                        failed: 1,
                        first_error: Some(e),
                        ..Setup::default()
                    });
                    return;
                }
                shared.retries.set(shared.retries.get() + 1);
                sleep(RETRY_FIRST * attempts).await;
            }
        }
    };
    shared.roaming.borrow_mut().held[slot] += 1;
    let _ = done.send(Setup {
        connected: 1,
        ..Setup::default()
    });
    drop(done);
    let mut last = opened.offset;
    loop {
        let Opened {
            stream,
            early,
            edge,
            ..
        } = opened;
        last = receive_from(stream, early, None, last, &shared.counters).await;
        {
            let mut roaming = shared.roaming.borrow_mut();
            roaming.held[slot] -= 1;
            roaming.lost += 1;
        }
        let mut wait = RETRY_FIRST;
        opened = loop {
            let permit = shared.permits.acquire().await;
            let attempt = Box::pin(shared.attempt(index, Some(last), Some(edge))).await;
            drop(permit);
            match attempt {
                Ok(opened) => break opened,
                Err(_) => {
                    shared.roaming.borrow_mut().failed_attempts += 1;
                    sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        };
        let mut roaming = shared.roaming.borrow_mut();
        roaming.held[slot] += 1;
        roaming.resubscribed += 1;
        roaming.not_recovered += u64::from(!opened.recovered);
        roaming.last_resubscribed_us = roaming.last_resubscribed_us.max(unix_micros());
    }
}

/// Sets up `args.conns` connections, then serves commands.
async fn hold(args: ClientArgs) -> anyhow::Result<()> {
    let topics = args.topics.max(1);
    let shared = Rc::new(Shared {
        counters: Counters::tracking(args.latency, true),
        discovery: Discovery::new(
            args.discover.as_deref().unwrap_or_default(),
            args.discover_batch,
        )?,
        permits: Semaphore::new(args.concurrency.max(1)),
        halted: Cell::new(false),
        epochs: RefCell::new(vec![None; topics]),
        roaming: RefCell::new(Roaming {
            held: vec![0; topics],
            ..Roaming::default()
        }),
        retries: Cell::new(0),
        args,
    });
    let conns = shared.args.conns;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Setup>();
    let started = Instant::now();
    for i in 0..conns {
        let index = shared.args.first + i;
        spawn_local(connection(shared.clone(), index, done_tx.clone()));
    }
    drop(done_tx);
    let mut commands = commands();
    let mut setup = Setup::default();
    let mut answered = 0;
    let mut tick = tokio::time::interval(CONNECTING_EVERY);
    while answered < conns {
        tokio::select! {
            result = done_rx.recv() => {
                let Some(result) = result else { break };
                answered += 1;
                setup.merge(&result);
            }
            _ = tick.tick() => emit(&Event::Connecting {
                connected: setup.connected,
                failed: setup.failed,
            }),
            command = commands.recv() => match command {
                Some(Command::Halt) => shared.halted.set(true),
                Some(Command::Stats) => emit(&Event::Stats(shared.stats())),
                Some(Command::Reset) => {
                    shared.reset();
                    emit(&Event::Reset);
                }
                Some(Command::Quit) | None => std::process::exit(0),
            },
        }
    }
    setup.secs = started.elapsed().as_secs_f64();
    setup.retries = shared.retries.get();
    emit(&Event::Ready(setup));

    let progress = shared.clone();
    report_progress(
        Duration::from_millis(shared.args.progress_ms.max(1)),
        move || progress.counters.frames(),
    );
    serve_commands(commands, || shared.stats(), || shared.reset()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn ok(url: &str) -> String {
        let body = format!(r#"{{"url":"{url}","node_id":"edge-1","stale":false}}"#);
        format!(
            "200 OK\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn discovery_follows_connect_and_skips_the_edge_just_lost() {
        let first = ok("ws://127.0.0.1:7001/ws");
        let second = ok("ws://127.0.0.1:7002/ws");
        let answers: Vec<&'static str> = vec![
            Box::leak(first.into_boxed_str()),
            Box::leak(second.into_boxed_str()),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0; 1024];
            for answer in answers {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(buf[..n].starts_with(b"GET /v1/connect HTTP/1.1\r\n"));
                let response = format!("HTTP/1.1 {answer}");
                stream.write_all(response.as_bytes()).await.expect("write");
            }
        });
        let discovery = Discovery::new(&format!("http://{addr}"), 2).expect("discovery");
        let a = discovery.endpoint(None).await.expect("first answer");
        assert_eq!(a.addr.port(), 7001);
        // The batch of two: the second connection gets the same answer.
        let b = discovery.endpoint(None).await.expect("cached");
        assert_eq!(b.addr.port(), 7001);
        assert_eq!(discovery.calls.get(), 1);
        // Its batch used up, and 7001 lost anyway: asks again.
        let c = discovery
            .endpoint(Some(a.addr))
            .await
            .expect("second answer");
        assert_eq!(c.addr.port(), 7002);
        assert_eq!(discovery.calls.get(), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_with_its_status() {
        let body = r#"{"code":"unavailable","message":"no edge"}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0; 1024];
            let _ = stream.read(&mut buf).await;
            stream.write_all(response.as_bytes()).await.expect("write");
        });
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let error = read_response(&mut stream).await.expect_err("503");
        assert!(
            error.contains("503") && error.contains("no edge"),
            "{error}"
        );
    }
}

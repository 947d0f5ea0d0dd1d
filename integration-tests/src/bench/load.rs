//! The single-push load generator: a process of its own (`gpush-bench
//! load`, started by the ingress scenario) that sends one push per call as
//! fast as the server answers, so it shares no runtime with the
//! coordinator and its CPU can be read apart from the server's.
//!
//! Each request is built once and sent as the same bytes: HTTP/1.1
//! `POST /v1/pushData` (or `/v1/pushBatch`) over keep-alive connections
//! with one call in flight each (no pipelining, as a real client), or gRPC
//! `PushData` (or `PushBatch`) over h2 connections with several calls in
//! flight each. It prints one JSON line, a [`LoadTally`]; [`generate`]
//! runs such processes and adds them up.

use crate::bench::cli::{LoadArgs, LoadProtocol};
use crate::bench::http::{Connection, HttpError, post_request};
use crate::bench::push::{batch_json, message_json};
use crate::bench::systems::cpu_time;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use gpush_proto::v1::{PushBatchRequest, PushRequest};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HeaderValue, TE};
use hyper::{Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The payload of every push.
pub const PAYLOAD: &[u8] = br#"{"price":42.5,"symbol":"GPSH","seq":123456}"#;

/// What a load process (or several, added up) achieved.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LoadTally {
    /// Calls answered with success.
    pub calls: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Seconds of load (after every connection was up).
    pub secs: f64,
    /// CPU seconds the load process(es) used, user + system.
    pub cpu_secs: f64,
    /// The first failure.
    pub first_error: Option<String>,
}

impl LoadTally {
    fn record<E: std::fmt::Display>(&mut self, result: Result<(), E>) {
        match result {
            Ok(()) => self.calls += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn add(&mut self, other: LoadTally) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.secs = self.secs.max(other.secs);
        self.cpu_secs += other.cpu_secs;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.calls as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The generator's CPU, in cores (1.0: one core busy).
    pub fn cores(&self) -> f64 {
        if self.secs > 0.0 {
            self.cpu_secs / self.secs
        } else {
            0.0
        }
    }

    /// `what`, the generator's CPU, and the failures if any.
    pub fn note(&self, what: &str) -> String {
        let what = format!("{what}; generator {:.2} cores", self.cores());
        match &self.first_error {
            Some(e) => format!("{what}; {} calls FAILED ({e})", self.failed),
            None => what,
        }
    }
}

/// How [`generate`] loads a server.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// The server's HTTP/1.1 or h2 address.
    pub addr: SocketAddr,
    /// HTTP `pushData` or gRPC `PushData`.
    pub protocol: LoadProtocol,
    /// Connections, spread over the processes.
    pub connections: usize,
    /// Calls in flight per connection (gRPC only; HTTP/1.1 has one).
    pub in_flight: usize,
    /// Messages per call: 1 calls `pushData`, more `pushBatch`.
    pub batch: usize,
    /// Load processes.
    pub processes: usize,
    /// How long.
    pub run_for: Duration,
}

impl LoadSpec {
    /// A short description for the report.
    pub fn describe(&self) -> String {
        let procs = match self.processes {
            1 => String::new(),
            n => format!(", {n} load processes"),
        };
        match self.protocol {
            LoadProtocol::Http => format!("{} keep-alive connections{procs}", self.connections),
            LoadProtocol::Grpc => format!(
                "{} h2 connections x {} calls in flight{procs}",
                self.connections, self.in_flight
            ),
        }
    }
}

/// Runs `spec.processes` load processes of `bench` (this program) against
/// `spec.addr`, pushing to `topic`, and adds up what they report.
pub async fn generate(bench: &Path, spec: &LoadSpec, topic: &str) -> anyhow::Result<LoadTally> {
    let processes = spec.processes.max(1);
    let mut runs = JoinSet::new();
    for i in 0..processes {
        let connections =
            spec.connections / processes + usize::from(i < spec.connections % processes);
        let mut command = tokio::process::Command::new(bench);
        command
            .arg("load")
            .args(["--addr", &spec.addr.to_string()])
            .args(["--protocol", spec.protocol.name()])
            .args(["--connections", &connections.to_string()])
            .args(["--in-flight", &spec.in_flight.to_string()])
            .args(["--batch", &spec.batch.to_string()])
            .args(["--secs", &spec.run_for.as_secs_f64().to_string()])
            .args(["--topic", topic])
            .kill_on_drop(true);
        runs.spawn(async move { command.output().await });
    }
    let mut total = LoadTally::default();
    while let Some(output) = runs.join_next().await {
        let output = output.context("load task")?.context("run a load process")?;
        if !output.status.success() {
            bail!(
                "load process failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tally: LoadTally = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "load process output: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        total.add(tally);
    }
    Ok(total)
}

/// The load process: loads the server, prints its [`LoadTally`].
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let mut tally = runtime.block_on(load(&args))?;
    tally.cpu_secs = cpu_time(std::process::id())?.as_secs_f64();
    println!("{}", serde_json::to_string(&tally)?);
    Ok(())
}

/// Connects every connection, then calls back to back for `args.secs`.
async fn load(args: &LoadArgs) -> anyhow::Result<LoadTally> {
    let workers = match args.protocol {
        LoadProtocol::Http => args.connections,
        LoadProtocol::Grpc => args.connections * args.in_flight,
    };
    // Every worker and this task start the clock together.
    let start = Arc::new(Barrier::new(workers + 1));
    let run_for = Duration::from_secs_f64(args.secs);
    let mut tasks = JoinSet::new();
    match args.protocol {
        LoadProtocol::Http => {
            let request = if args.batch > 1 {
                let messages = (0..args.batch).map(|_| ("", args.topic.as_str(), PAYLOAD));
                let body = batch_json(messages);
                post_request(&args.addr.to_string(), "/v1/pushBatch", body.as_bytes())
            } else {
                let mut body = String::new();
                message_json(&mut body, "", &args.topic, PAYLOAD);
                post_request(&args.addr.to_string(), "/v1/pushData", body.as_bytes())
            };
            for _ in 0..args.connections {
                let connection = Connection::connect(args.addr).await?;
                let (request, start) = (request.clone(), start.clone());
                tasks.spawn(http_worker(args.addr, connection, request, start, run_for));
            }
        }
        LoadProtocol::Grpc => {
            let (method, body) = grpc_request(&args.topic, args.batch);
            let uri: Uri = format!("http://{}/gpush.v1.Push/{method}", args.addr).parse()?;
            for _ in 0..args.connections {
                let sender = grpc_connect(args.addr).await?;
                for _ in 0..args.in_flight {
                    let (sender, uri, body) = (sender.clone(), uri.clone(), body.clone());
                    tasks.spawn(grpc_worker(sender, uri, body, start.clone(), run_for));
                }
            }
        }
    }
    start.wait().await;
    let started = Instant::now();
    let mut total = LoadTally::default();
    while let Some(tally) = tasks.join_next().await {
        total.add(tally.context("load worker")?);
    }
    total.secs = started.elapsed().as_secs_f64();
    Ok(total)
}

/// Posts `request` over `connection` until `run_for` has passed since the
/// start, reconnecting after a broken call.
async fn http_worker(
    addr: SocketAddr,
    connection: Connection,
    request: Bytes,
    start: Arc<Barrier>,
    run_for: Duration,
) -> LoadTally {
    start.wait().await;
    let end = Instant::now() + run_for;
    let mut tally = LoadTally::default();
    let mut connection = Some(connection);
    while Instant::now() < end {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::connect(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tally.record(Err(e));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let result = conn.call(&request).await;
        if matches!(result, Err(HttpError::Io(_) | HttpError::Closed)) {
            connection = None;
        }
        tally.record(result);
    }
    tally
}

/// The method and length-prefixed message of a public push to `topic`:
/// `PushData`, or `PushBatch` of `batch` pushes when `batch > 1`.
fn grpc_request(topic: &str, batch: usize) -> (&'static str, Bytes) {
    let push = PushRequest {
        uid: String::new(),
        topic: topic.to_owned(),
        data: Bytes::from_static(PAYLOAD),
    };
    let (method, message) = if batch > 1 {
        let messages = vec![push; batch];
        ("PushBatch", PushBatchRequest { messages }.encode_to_vec())
    } else {
        ("PushData", push.encode_to_vec())
    };
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    (method, frame.into())
}

/// An h2 connection to `addr`, driven by a task of its own.
async fn grpc_connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("h2 handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Calls `PushData` with `body` until `run_for` has passed since the start.
async fn grpc_worker(
    mut sender: SendRequest<Full<Bytes>>,
    uri: Uri,
    body: Bytes,
    start: Arc<Barrier>,
    run_for: Duration,
) -> LoadTally {
    start.wait().await;
    let end = Instant::now() + run_for;
    let mut tally = LoadTally::default();
    while Instant::now() < end {
        let result = grpc_call(&mut sender, &uri, &body).await;
        let broken = result.is_err() && sender.is_closed();
        tally.record(result);
        if broken {
            break;
        }
    }
    tally
}

/// One unary call; an error unless it answers `grpc-status: 0`.
async fn grpc_call(
    sender: &mut SendRequest<Full<Bytes>>,
    uri: &Uri,
    body: &Bytes,
) -> anyhow::Result<()> {
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    // A trailers-only answer carries the status in its headers.
    let early = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await?;
    let status = early.or_else(|| collected.trailers()?.get("grpc-status").cloned());
    match status.as_ref().map(HeaderValue::as_bytes) {
        Some(b"0") => Ok(()),
        Some(code) => bail!("grpc-status {}", String::from_utf8_lossy(code)),
        None => bail!("no grpc-status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::api_baseline;
    use tokio::net::TcpListener;

    /// The generator against the push-API baseline, in process: every
    /// call of both protocols succeeds (status, `grpc-status` trailer).
    #[tokio::test]
    async fn loads_the_api_baseline() {
        for (protocol, h2) in [(LoadProtocol::Http, false), (LoadProtocol::Grpc, true)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(api_baseline::serve(listener, h2));
            for batch in [1, 3] {
                let args = LoadArgs {
                    addr,
                    protocol,
                    connections: 2,
                    in_flight: 2,
                    batch,
                    secs: 0.2,
                    threads: 1,
                    topic: "t".into(),
                };
                let tally = load(&args).await.expect("load");
                assert_eq!(tally.failed, 0, "{protocol:?}: {:?}", tally.first_error);
                assert!(tally.calls > 0, "{protocol:?}: no call answered");
            }
            server.abort();
        }
    }

    #[test]
    fn grpc_frames_are_length_prefixed() {
        let (method, frame) = grpc_request("t", 1);
        assert_eq!(method, "PushData");
        let len = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes")) as usize;
        assert_eq!(frame[0], 0);
        assert_eq!(frame.len(), 5 + len);
        let request = PushRequest::decode(&frame[5..]).expect("a PushRequest");
        assert_eq!(request.topic, "t");
        assert_eq!(request.data.as_ref(), PAYLOAD);
        let (method, frame) = grpc_request("t", 3);
        assert_eq!(method, "PushBatch");
        let batch = PushBatchRequest::decode(&frame[5..]).expect("a PushBatchRequest");
        assert_eq!(batch.messages.len(), 3);
    }
}

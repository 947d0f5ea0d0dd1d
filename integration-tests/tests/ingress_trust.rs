//! Push API defects from the issue "Trust", reproduced against the real
//! `gpush-ingress` binary (and `gpush-edge --standalone`): a gRPC batch
//! decoded before its caller was authenticated, batches counted only
//! after every element was allocated (gRPC and HTTP), half-sent request
//! headers (HTTP) and missing HTTP/2 prefaces (gRPC) that held
//! connections forever with no cap on how many, and an unauthenticated
//! push API served beyond loopback without being asked to.
//!
//! Memory is read from the process itself: its peak resident set
//! (`VmHWM` in `/proc/<pid>/status`) before and after a call.

use bytes::{Buf as _, BufMut as _, Bytes};
use gpush_integration_tests::procs::{LoggedChild, assert_refuses, scratch_dir, sibling_binary};
use gpush_integration_tests::{NatsServer, PushApi, PushMsg, QUIET, TIMEOUT, Via, free_port};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

const MIB: u64 = 1024 * 1024;
/// The API key of the keyed ingresses.
const KEY: &str = "ingress-trust-test-key";
/// What a refused call may add to the peak resident set of ingress: far
/// below what decoding the element lists of these bodies takes (hundreds
/// of MiB).
const GROWTH_BOUND: u64 = 64 * MIB;
/// How long the slowloris test waits for the server to close half-sent
/// requests: the default `header_read_timeout` (10 s) and some slack.
const SLOWLORIS_WAIT: Duration = Duration::from_secs(30);

fn ingress_binary() -> std::path::PathBuf {
    let binary = sibling_binary("gpush-ingress").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        binary.is_file(),
        "{} does not exist: build it first with `cargo build --workspace`",
        binary.display()
    );
    binary
}

/// The real `gpush-ingress` on loopback ports, killed on drop.
struct Ingress {
    proc: LoggedChild,
    http: SocketAddr,
    grpc: SocketAddr,
}

impl Ingress {
    /// Starts ingress on `nats` with `args` added (and a config file
    /// holding `toml`, when given), and waits until it is ready.
    async fn start(nats: &NatsServer, args: &[&str], toml: Option<&str>) -> Self {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = scratch_dir("ingress-trust");
        let mut command = Command::new(ingress_binary());
        command
            .args(["--http-addr", &http.to_string()])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--nats-url", &nats.url()])
            .args(args)
            .env("RUST_LOG", "info");
        if let Some(toml) = toml {
            let path = dir.join("ingress.toml");
            std::fs::write(&path, toml).expect("write config");
            command.arg("--config").arg(path);
        }
        let mut proc = LoggedChild::spawn("gpush-ingress", command, dir.join("ingress.log"));
        proc.wait_for_port(http).await;
        proc.wait_for_port(grpc).await;
        let ingress = Self { proc, http, grpc };
        ingress.api().wait_for_status("/readyz", 200, TIMEOUT).await;
        ingress
    }

    fn api(&self) -> PushApi {
        PushApi::new(
            &format!("http://{}", self.http),
            &format!("http://{}", self.grpc),
        )
    }

    /// Peak resident set size so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib * 1024
    }

    /// Asserts the peak resident set grew by less than `bound` since
    /// `before`, and that the process still runs.
    fn assert_grew_less_than(&mut self, before: u64, bound: u64, what: &str) {
        self.proc.assert_running();
        let growth = self.peak_rss().saturating_sub(before);
        assert!(
            growth < bound,
            "{what}: ingress peak RSS grew by {} MiB (bound {} MiB)",
            growth / MIB,
            bound / MIB
        );
    }
}

/// A gRPC codec sending a request message as given (the protobuf bytes)
/// and ignoring the reply's: it lets the tests send bodies no generated
/// client would build without allocating every element.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// A `PushBatchRequest` of `n` empty messages: field 1, length 0, each.
fn empty_messages(n: usize) -> Bytes {
    [0x0a, 0x00].repeat(n).into()
}

/// Sends `body` as a `gpush.v1.Push/PushBatch` request, with the API key
/// when `bearer` is given.
async fn raw_push_batch(
    ingress: &Ingress,
    body: Bytes,
    bearer: Option<&str>,
) -> Result<(), Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ingress.grpc))
        .expect("gRPC URL")
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT * 6)
        .connect()
        .await
        .expect("connect to the gRPC push API");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("gRPC channel ready");
    let mut request = tonic::Request::new(body);
    if let Some(key) = bearer {
        let value = format!("Bearer {key}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    let path = PathAndQuery::from_static("/gpush.v1.Push/PushBatch");
    client.unary(request, path, Raw).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_grpc_batch_is_refused_before_it_is_read() {
    let nats = NatsServer::start().await;
    let mut ingress = Ingress::start(&nats, &["--api-key", KEY], None).await;
    // 46 MiB of empty messages: ~24 million elements.
    let body = empty_messages(23 * 1024 * 1024);
    let before = ingress.peak_rss();
    let refused = raw_push_batch(&ingress, body.clone(), None)
        .await
        .expect_err("no API key");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = raw_push_batch(&ingress, body, Some("wrong"))
        .await
        .expect_err("wrong API key");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    ingress.assert_grew_less_than(before, GROWTH_BOUND, "unauthenticated 46 MiB PushBatch");
    // The key still opens the door.
    raw_push_batch(&ingress, empty_messages(2), Some(KEY))
        .await
        .expect("a keyed batch is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_batch_stops_at_max_batch_plus_one_while_decoding() {
    let nats = NatsServer::start().await;
    let mut ingress = Ingress::start(&nats, &["--api-key", KEY], None).await;
    let max = gpush_ingress::config::DEFAULT_MAX_BATCH;
    raw_push_batch(&ingress, empty_messages(max), Some(KEY))
        .await
        .expect("a full batch is accepted");
    let refused = raw_push_batch(&ingress, empty_messages(max + 1), Some(KEY))
        .await
        .expect_err("one over max_batch");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    for needle in ["messages", &max.to_string()] {
        assert!(
            refused.message().contains(needle),
            "{needle:?}: {refused:?}"
        );
    }
    // 8 MiB of empty messages: ~4 million elements, refused without
    // allocating them.
    let before = ingress.peak_rss();
    let refused = raw_push_batch(&ingress, empty_messages(4 * 1024 * 1024), Some(KEY))
        .await
        .expect_err("far over max_batch");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    ingress.assert_grew_less_than(before, GROWTH_BOUND, "8 MiB PushBatch of empty messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_batch_stops_at_max_batch_plus_one_while_parsing() {
    let nats = NatsServer::start().await;
    let mut ingress = Ingress::start(&nats, &["--api-key", KEY], None).await;
    let api = ingress.api();
    // Just under the 64 MiB body limit of {"data":""} elements: ~5.6
    // million of them.
    let limit = 64 * 1024 * 1024;
    let element = r#"{"data":""}"#;
    let n = (limit - 64) / (element.len() + 1);
    let mut body = String::with_capacity(limit);
    body.push_str(r#"{"messages":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(element);
    }
    body.push_str("]}");
    let before = ingress.peak_rss();
    let reply = api.post("/v1/pushBatch", body, Some(KEY)).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["code"], "batch_too_large", "{json}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains("messages"), "{json}");
    // The body itself is buffered (twice at worst while its chunks are
    // joined): the elements must add no more than the usual bound.
    let body_bytes = limit as u64;
    ingress.assert_grew_less_than(
        before,
        2 * body_bytes + GROWTH_BOUND,
        "64 MiB pushBatch body of {\"data\":\"\"}",
    );
    // max_batch + 1 is refused, max_batch accepted.
    let max = gpush_ingress::config::DEFAULT_MAX_BATCH;
    let full = vec![PushMsg::public("t", "x"); max];
    let reply = api
        .post("/v1/pushBatch", PushApi::push_batch_body(&full), Some(KEY))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let over = vec![PushMsg::public("t", "x"); max + 1];
    let reply = api
        .post("/v1/pushBatch", PushApi::push_batch_body(&over), Some(KEY))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["code"], "batch_too_large", "{}", reply.body);
}

/// Opens a connection to `addr` and sends half a request header.
async fn half_header(addr: SocketAddr) -> TcpStream {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect within the timeout")
        .expect("connect");
    stream
        .write_all(b"POST /v1/pushData HTTP/1.1\r\nHost: ingress\r\nContent-Ty")
        .await
        .expect("send half a header");
    stream
}

/// Waits until the server closes `stream` (EOF or reset); panics after
/// `within`. Whatever it answers first (a 408) is read and dropped.
async fn closed_by_server(mut stream: TcpStream, within: Duration) {
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection that never sent a full request header (or HTTP/2 \
         preface) was still open after {within:?}"
    );
}

/// Everything `stream` sends until the server closes it, after what was
/// read already (`read`), as text; panics after [`TIMEOUT`] saying `what`
/// did not happen.
async fn answer_of(stream: &mut TcpStream, mut read: Vec<u8>, what: &str) -> String {
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut read))
        .await
        .unwrap_or_else(|_| panic!("not {what} within {TIMEOUT:?}"))
        .expect("read the answer");
    String::from_utf8_lossy(&read).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_headers_are_closed_and_pushes_keep_working() {
    let nats = NatsServer::start().await;
    let ingress = Ingress::start(&nats, &[], None).await;
    let mut attack = Vec::new();
    for _ in 0..200 {
        attack.push(half_header(ingress.http).await);
    }
    // Pushes get through while the attack holds its connections.
    ingress
        .api()
        .try_send(Via::Http, &[PushMsg::public("t", "during")])
        .await
        .expect("a push during the attack");
    let waits = attack
        .into_iter()
        .map(|stream| closed_by_server(stream, SLOWLORIS_WAIT));
    futures_util::future::join_all(waits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let nats = NatsServer::start().await;
    let ingress = Ingress::start(&nats, &[], Some("[push]\nmax_connections = 2\n")).await;
    // The readiness probe's connection is idle in reqwest's pool: give the
    // server a moment, then hold both slots.
    let first = half_header(ingress.http).await;
    let second = half_header(ingress.http).await;
    let mut third = TcpStream::connect(ingress.http).await.expect("connect");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ingress\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut answer = Vec::new();
    let early = tokio::time::timeout(
        gpush_integration_tests::QUIET,
        third.read_to_end(&mut answer),
    )
    .await;
    assert!(
        early.is_err(),
        "a connection beyond max_connections was served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(first);
    let answer = answer_of(&mut third, answer, "served once a slot is free").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_bodies_are_closed() {
    let nats = NatsServer::start().await;
    let config = "[push]\nheader_read_timeout = \"1s\"\nrequest_timeout = \"2s\"\n";
    let ingress = Ingress::start(&nats, &[], Some(config)).await;
    // A keep-alive connection, answered, then silent.
    let mut idle = TcpStream::connect(ingress.http).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: ingress\r\n\r\n")
        .await
        .expect("send request");
    closed_by_server(idle, TIMEOUT).await;
    // A body that stops halfway.
    let mut slow = TcpStream::connect(ingress.http).await.expect("connect");
    slow.write_all(
        b"POST /v1/pushData HTTP/1.1\r\nHost: ingress\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"data\":",
    )
    .await
    .expect("send half a request");
    let answer = answer_of(&mut slow, Vec::new(), "a slow body answered and closed").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// What an HTTP/2 client sends first.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The `header_read_timeout` of the gRPC preface test's ingress.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a connection to `addr` and sends the first `sent` bytes of the
/// HTTP/2 preface (none: a connection that says nothing).
async fn partial_preface(addr: SocketAddr, sent: usize) -> TcpStream {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect within the timeout")
        .expect("connect");
    stream
        .write_all(&HTTP2_PREFACE[..sent])
        .await
        .expect("send part of the preface");
    stream
}

/// Like [`partial_preface`] with half the preface, returning once the
/// server has answered with its own SETTINGS: the connection is accepted
/// and holds a slot.
async fn accepted_half_preface(addr: SocketAddr) -> TcpStream {
    let mut stream = partial_preface(addr, HTTP2_PREFACE.len() / 2).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .expect("the server speaks first once it serves a connection")
        .expect("read the server's SETTINGS");
    assert!(read > 0, "closed at once");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_without_a_preface_are_closed_and_pushes_keep_working() {
    let nats = NatsServer::start().await;
    let config = format!(
        "[push]\nheader_read_timeout = \"{}s\"\n",
        PREFACE_TIMEOUT.as_secs()
    );
    let ingress = Ingress::start(&nats, &[], Some(&config)).await;
    // A real client's connection: the preface and an empty SETTINGS frame,
    // then silence. Only the preface is timed; this one stays.
    let mut talker = partial_preface(ingress.grpc, HTTP2_PREFACE.len()).await;
    talker
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("send SETTINGS");
    let mut attack = Vec::new();
    for i in 0..200 {
        let sent = [0, 1, HTTP2_PREFACE.len() / 2, HTTP2_PREFACE.len() - 1][i % 4];
        attack.push(partial_preface(ingress.grpc, sent).await);
    }
    // Pushes get through while the attack holds its connections.
    ingress
        .api()
        .try_send(Via::Grpc, &[PushMsg::public("t", "during")])
        .await
        .expect("a gRPC push during the attack");
    let waits = attack
        .into_iter()
        .map(|stream| closed_by_server(stream, PREFACE_TIMEOUT + TIMEOUT));
    futures_util::future::join_all(waits).await;
    // Well past the preface timeout, the connection that sent it is open.
    let mut buf = [0u8; 256];
    let open = tokio::time::timeout(PREFACE_TIMEOUT * 2, async {
        loop {
            match talker.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        open.is_err(),
        "a connection that sent the preface was closed"
    );
    ingress
        .api()
        .try_send(Via::Grpc, &[PushMsg::public("t", "after")])
        .await
        .expect("a gRPC push after the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_beyond_max_connections_wait_until_one_closes() {
    let nats = NatsServer::start().await;
    let ingress = Ingress::start(&nats, &[], Some("[push]\nmax_connections = 2\n")).await;
    let first = accepted_half_preface(ingress.grpc).await;
    let second = accepted_half_preface(ingress.grpc).await;
    let api = ingress.api();
    let push = tokio::spawn(async move {
        api.try_send(Via::Grpc, &[PushMsg::public("t", "third")])
            .await
    });
    tokio::time::sleep(QUIET).await;
    if push.is_finished() {
        let result = push.await.expect("join the push");
        panic!("a gRPC connection beyond max_connections was served: {result:?}");
    }
    drop(first);
    tokio::time::timeout(TIMEOUT, push)
        .await
        .expect("served once a slot is free")
        .expect("join the push")
        .expect("the push is accepted");
    drop(second);
}

/// Runs `binary` with `args` (and `env`), expecting it to serve on
/// `port` (on every interface, so reachable on loopback); returns its log.
async fn assert_starts(
    binary: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
    log_says: Option<&str>,
) -> String {
    let dir = scratch_dir("open-api");
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", "info");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut proc = LoggedChild::spawn("push API", command, dir.join("log"));
    proc.wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)))
        .await;
    if let Some(text) = log_says {
        // The warning comes from the push API's task, which may log it
        // just after the port is bound.
        let log = proc.log().to_owned();
        gpush_integration_tests::wait_until(TIMEOUT, format!("{text:?} in the log"), || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(text)
            }
        })
        .await;
    }
    proc.kill();
    std::fs::read_to_string(proc.log()).unwrap_or_default()
}

/// A port free on every interface (a port free on loopback may be some
/// other socket's local port on another address), as `0.0.0.0:<port>`.
fn any_addr() -> (u16, String) {
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 0.0.0.0:0");
    (port, format!("0.0.0.0:{port}"))
}

fn loopback_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_push_api_beyond_loopback_needs_a_key_or_api_insecure() {
    let ingress = ingress_binary();
    let edge = gpush_integration_tests::EdgeProcess::binary();
    let nats = ["--nats-url", "nats://127.0.0.1:1"];
    let refusal = ["--api-insecure", "api_key"];

    // Either address counts, on both binaries.
    let (_, any) = any_addr();
    let lo = loopback_addr();
    let ingress_http = [&nats[..], &["--http-addr", &any, "--grpc-addr", &lo]].concat();
    assert_refuses(&ingress, &ingress_http, &refusal).await;
    let (_, any) = any_addr();
    let lo = loopback_addr();
    let ingress_grpc = [&nats[..], &["--http-addr", &lo, "--grpc-addr", &any]].concat();
    assert_refuses(&ingress, &ingress_grpc, &refusal).await;
    let (_, any) = any_addr();
    let ws = loopback_addr();
    let standalone = ["--standalone", "--ws-addr", &ws, "--http-addr", &any];
    assert_refuses(&edge, &standalone, &refusal).await;

    // With a key.
    let (port, any) = any_addr();
    let lo = loopback_addr();
    let keyed = [
        &nats[..],
        &["--http-addr", &any, "--grpc-addr", &lo, "--api-key", KEY],
    ]
    .concat();
    assert_starts(&ingress, &keyed, &[], port, None).await;
    // With the opt-out, as a flag or in the environment; it warns.
    let (port, any) = any_addr();
    let lo = loopback_addr();
    let insecure = [
        &nats[..],
        &["--http-addr", &any, "--grpc-addr", &lo, "--api-insecure"],
    ]
    .concat();
    let log = assert_starts(&ingress, &insecure, &[], port, Some("api_insecure")).await;
    assert!(log.contains("api_insecure"), "ingress should warn: {log}");
    let (port, any) = any_addr();
    let ws = loopback_addr();
    let grpc = loopback_addr();
    let standalone = [
        "--standalone",
        "--ws-addr",
        &ws,
        "--http-addr",
        &any,
        "--grpc-addr",
        &grpc,
    ];
    let log = assert_starts(
        &edge,
        &standalone,
        &[("GPUSH_API_INSECURE", "true")],
        port,
        Some("api_insecure"),
    )
    .await;
    assert!(log.contains("api_insecure"), "the edge should warn: {log}");
}

//! Hostile clients. Each test runs one attack against an edge while an
//! audience of 200 well-behaved clients, subscribed to one topic, receives
//! a steady stream of sequence-numbered pushes; at the end every one of
//! them must have received every push, in order, and still be connected
//! and served. The attacks are hand-made bytes on raw TCP where a
//! WebSocket library would refuse to send them.

use futures_util::future::join_all;
use gpush_edge::EdgeConfig;
use gpush_integration_tests::auth::{self, MockWebhook, WebhookMode};
use gpush_integration_tests::client::{MSGPACK_PROTOCOL, close_code};
use gpush_integration_tests::frames::{close, code};
use gpush_integration_tests::silent::{
    self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, SilentClient, client_frame,
};
use gpush_integration_tests::{
    Deployment, EdgeProcess, PushApi, PushMsg, Standalone, TIMEOUT, Via, WsClient, free_port,
    wait_for, wait_until,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Well-behaved clients that must not notice the attack.
const AUDIENCE: usize = 200;
/// Their topic.
const TOPIC: &str = "ticks";
/// Interval between pushes to the audience.
const TICK: Duration = Duration::from_millis(20);
/// Opcode of a continuation frame.
const OP_CONTINUE: u8 = 0x0;

/// Small limits, so that attacks hit them quickly.
fn hostile_limits(config: &mut EdgeConfig) {
    config.handshake_timeout = Duration::from_secs(1);
    config.max_handshakes = 256;
    config.queue_bytes = 256 * 1024;
}

/// The well-behaved clients and the pushes they receive.
struct Audience {
    readers: Vec<JoinHandle<(WsClient, u64)>>,
    pusher: JoinHandle<u64>,
    /// How many pushes the pusher has made so far.
    pushed: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Audience {
    /// Connects [`AUDIENCE`] clients to `ws_url`, subscribes them to
    /// [`TOPIC`], and starts pushing to it through `api`.
    async fn start(ws_url: &str, api: &PushApi) -> Self {
        let mut clients = Vec::with_capacity(AUDIENCE);
        for wave in 0..AUDIENCE / 50 {
            clients.extend(
                join_all((0..50).map(|i| {
                    let url = ws_url.to_owned();
                    async move {
                        let label = format!("good-{}", wave * 50 + i);
                        let mut client = WsClient::connect(&url).await.with_label(label);
                        client.must_subscribe(TOPIC).await;
                        client
                    }
                }))
                .await,
            );
        }
        let readers = clients.into_iter().map(|c| tokio::spawn(read(c))).collect();
        let stop = CancellationToken::new();
        let pushed = Arc::new(AtomicU64::new(0));
        let pusher = tokio::spawn(push(api.clone(), pushed.clone(), stop.clone()));
        Self {
            readers,
            pusher,
            pushed,
            stop,
        }
    }

    /// Stops pushing, then checks that every client got every push, in
    /// order, and is still served.
    async fn finish(self) {
        // A few more pushes after the attack.
        let after = self.pushed.load(Ordering::SeqCst) + 10;
        wait_until(TIMEOUT, "ten more pushes after the attack", || async {
            self.pushed.load(Ordering::SeqCst) >= after
        })
        .await;
        self.stop.cancel();
        let sent = tokio::time::timeout(TIMEOUT, self.pusher)
            .await
            .expect("the pusher did not stop")
            .expect("pusher task");
        assert!(sent >= 5, "only {sent} pushes during the attack");
        for reader in self.readers {
            let (mut client, received) = tokio::time::timeout(TIMEOUT * 2, reader)
                .await
                .expect("a good client did not get the last push")
                .expect("reader task");
            assert_eq!(received, sent, "{}", client.label());
            client.must_subscribe("still-here").await;
        }
    }
}

/// Reads pushes `{"seq":0}`, `{"seq":1}`... until the one marked `done`;
/// returns how many came before it.
async fn read(mut client: WsClient) -> (WsClient, u64) {
    let mut next = 0;
    loop {
        let push = client.next_push(TIMEOUT).await;
        let data = &push["data"];
        assert_eq!(
            data["seq"],
            next,
            "{}: a push is missing or out of order: {push}",
            client.label()
        );
        if data["done"] == true {
            return (client, next);
        }
        next += 1;
    }
}

/// Pushes `{"seq":n}` to [`TOPIC`] every [`TICK`] until `stop`, then one
/// marked `done`; returns how many came before it, and counts them in
/// `pushed` as it goes.
async fn push(api: PushApi, pushed: Arc<AtomicU64>, stop: CancellationToken) -> u64 {
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(TICK);
    while !stop.is_cancelled() {
        tick.tick().await;
        let data = json!({ "seq": seq }).to_string();
        api.push_http("", TOPIC, data.as_bytes()).await;
        seq += 1;
        pushed.store(seq, Ordering::SeqCst);
    }
    let data = json!({ "seq": seq, "done": true }).to_string();
    api.push_http("", TOPIC, data.as_bytes()).await;
    seq
}

/// A standalone edge with [`hostile_limits`] (then `tweak`) and its
/// audience.
async fn standalone(tweak: impl FnOnce(&mut EdgeConfig)) -> (Standalone, Audience) {
    let d = Standalone::start(|config| {
        hostile_limits(config);
        tweak(config);
    })
    .await;
    let audience = Audience::start(&d.ws_url(0), d.api()).await;
    (d, audience)
}

/// `count` attackers at once, each running `attack(i)`.
async fn swarm<F, Fut>(count: usize, attack: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    join_all((0..count).map(attack)).await;
}

/// A text frame announcing a payload of `len` bytes, without the payload.
fn huge_header(len: u64) -> Vec<u8> {
    let mut frame = vec![0x80 | OP_TEXT, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame
}

/// Reads from a raw connection until the edge closes it; panics if it
/// stays open for `within`.
async fn expect_closed(stream: &mut TcpStream, within: Duration) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the edge kept a connection open for {within:?}"),
        }
    }
}

/// The value of `series` (a metric name, with its labels written as in
/// the text format) on the edge at `ws_addr`.
async fn metric(ws_addr: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{ws_addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Waits until `series` on the edge at `ws_addr` is `value`.
async fn wait_metric(ws_addr: &str, series: &str, value: usize) {
    wait_for(TIMEOUT * 2, format!("{series} at {value}"), || async {
        let now = metric(ws_addr, series).await;
        if now == value as f64 {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
}

/// Waits until the edge holds exactly `n` connections.
async fn wait_connections(ws_addr: &str, n: usize) {
    wait_metric(ws_addr, "gpush_edge_connections", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_closed_with_1009() {
    let (d, audience) = standalone(|_| {}).await;
    let url = d.ws_url(0);
    swarm(60, |i| {
        let url = url.clone();
        async move {
            let mut c = SilentClient::connect(&url).await;
            let attack = match i % 3 {
                // Announced, never sent: refused from the header alone.
                0 => huge_header(1 << 40),
                1 => client_frame(OP_TEXT, true, &[b'a'; 5000]),
                // Two fragments, each fine, too big together.
                _ => {
                    let mut wire = client_frame(OP_BINARY, false, &[b'a'; 3000]);
                    wire.extend(client_frame(OP_CONTINUE, true, &[b'a'; 3000]));
                    wire
                }
            };
            c.send_raw(&attack).await;
            let ending = c.read_until_close(TIMEOUT).await;
            assert_eq!(ending.close_code(), Some(close::TOO_BIG), "attack {i}");
        }
    })
    .await;
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_text_frames_is_closed_with_1007() {
    let (d, audience) = standalone(|_| {}).await;
    let url = d.ws_url(0);
    swarm(60, |i| {
        let url = url.clone();
        async move {
            let mut c = SilentClient::connect(&url).await;
            let attack = match i % 3 {
                0 => client_frame(OP_TEXT, true, &[0xff, 0xfe, b'{']),
                // Valid start, a broken sequence in the continuation.
                1 => {
                    let mut wire = client_frame(OP_TEXT, false, b"{\"code\":1,\"topic\":\"");
                    wire.extend(client_frame(OP_CONTINUE, true, &[0xc3, 0x28, b'"', b'}']));
                    wire
                }
                // A close frame whose reason is not UTF-8.
                _ => client_frame(OP_CLOSE, true, &[0x03, 0xe8, 0xff]),
            };
            c.send_raw(&attack).await;
            let ending = c.read_until_close(TIMEOUT).await;
            assert_eq!(ending.close_code(), Some(close::INVALID_DATA), "attack {i}");
        }
    })
    .await;
    // A character split across fragments is fine.
    let mut c = SilentClient::connect(&url).await;
    let text = "{\"code\":1,\"topic\":\"caf\u{e9}\"}".as_bytes();
    let at = text.len() - 3; // between the two bytes of "é"
    let mut wire = client_frame(OP_TEXT, false, &text[..at]);
    wire.extend(client_frame(OP_CONTINUE, true, &text[at..]));
    c.send_raw(&wire).await;
    let greeting = c.next_frame(TIMEOUT).await.expect("greeting");
    assert_eq!(greeting.opcode, OP_TEXT);
    let reply = c.next_frame(TIMEOUT).await.expect("reply");
    let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    assert_eq!(reply["code"], code::SUBSCRIBED, "{reply}");
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_and_interleaved_control_frames() {
    let (d, audience) = standalone(|_| {}).await;
    let url = d.ws_url(0);
    // Allowed: a ping between the fragments of a request.
    swarm(30, |i| {
        let url = url.clone();
        async move {
            let mut c = SilentClient::connect(&url).await;
            let topic = format!("frag-{i}");
            let request = json!({"code": code::SUBSCRIBE, "topic": topic}).to_string();
            let (a, b) = request.as_bytes().split_at(7);
            let mut wire = client_frame(OP_TEXT, false, a);
            wire.extend(client_frame(OP_PING, true, b"between"));
            wire.extend(client_frame(OP_CONTINUE, false, &b[..3]));
            wire.extend(client_frame(OP_PONG, true, b"unasked"));
            wire.extend(client_frame(OP_CONTINUE, true, &b[3..]));
            c.send_raw(&wire).await;
            let greeting = c.next_frame(TIMEOUT).await.expect("greeting");
            assert_eq!(greeting.opcode, OP_TEXT);
            let pong = c.next_frame(TIMEOUT).await.expect("pong");
            assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &b"between"[..]));
            let reply = c.next_frame(TIMEOUT).await.expect("reply");
            let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
            assert_eq!(reply["code"], code::SUBSCRIBED, "{reply}");
        }
    })
    .await;
    // Violations: each closes with 1002.
    let violations: Vec<Vec<u8>> = vec![
        client_frame(OP_PING, false, b"fragmented ping"),
        client_frame(OP_PING, true, &[b'p'; 126]),
        client_frame(OP_CONTINUE, true, b"no start"),
        {
            let mut wire = client_frame(OP_TEXT, false, b"{");
            wire.extend(client_frame(OP_TEXT, true, b"}"));
            wire
        },
        client_frame(0x3, true, b"reserved opcode"),
        client_frame(0xB, true, b"reserved control"),
        // Unmasked.
        b"\x81\x02{}".to_vec(),
        // Reserved bit.
        {
            let mut wire = client_frame(OP_TEXT, true, b"{}");
            wire[0] |= 0x40;
            wire
        },
    ];
    swarm(violations.len() * 5, |i| {
        let url = url.clone();
        let attack = violations[i % violations.len()].clone();
        async move {
            let mut c = SilentClient::connect(&url).await;
            c.send_raw(&attack).await;
            let ending = c.read_until_close(TIMEOUT).await;
            assert_eq!(
                ending.close_code(),
                Some(close::PROTOCOL_ERROR),
                "violation {}",
                i % 8
            );
        }
    })
    .await;
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_and_msgpack_get_30001() {
    let (d, audience) = standalone(|_| {}).await;
    let url = d.ws_url(0);
    let depth = 2000; // 4,000 bytes: within max_message
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let in_id = format!(
        "{{\"code\":1,\"topic\":\"t\",\"id\":{}{}}}",
        "[".repeat(depth - 20),
        "]".repeat(depth - 20)
    );
    let objects = format!(
        "{{\"code\":3,\"data\":{}1{}}}",
        "{\"a\":".repeat(600),
        "}".repeat(600)
    );
    swarm(20, |i| {
        let url = url.clone();
        let attacks = [arrays.clone(), in_id.clone(), objects.clone()];
        async move {
            let mut c = WsClient::connect(&url)
                .await
                .with_label(format!("nester-{i}"));
            for attack in &attacks {
                assert!(attack.len() <= 4096, "{}", attack.len());
                c.send_text(attack).await;
                let reply = c.next_reply(TIMEOUT).await;
                assert_eq!(reply["code"], code::BAD_REQUEST, "{reply}");
            }
            c.must_subscribe("after-nesting").await;
        }
    })
    .await;
    // MessagePack: 4,000 nested one-element arrays.
    let mut packed = vec![0x91u8; 4000];
    packed.push(0xc0);
    let mut c = WsClient::connect_with_protocol(&url, MSGPACK_PROTOCOL).await;
    c.send_binary(&packed).await;
    let reply = c.next_reply(TIMEOUT).await;
    assert_eq!(reply["code"], code::BAD_REQUEST, "{reply}");
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_flood_is_rate_limited_then_closed() {
    let (d, audience) = standalone(|_| {}).await;
    let url = d.ws_url(0);
    let burst = gpush_edge::config::DEFAULT_REQUEST_BURST as usize;
    swarm(20, |i| {
        let url = url.clone();
        async move {
            let mut c = WsClient::connect(&url)
                .await
                .with_label(format!("flooder-{i}"));
            // More than a burst accepted and a burst refused.
            for n in 0..2 * burst + 100 {
                let code = if n % 2 == 0 {
                    code::SUBSCRIBE
                } else {
                    code::UNSUBSCRIBE
                };
                c.send_json(&json!({"code": code, "topic": format!("flood-{i}-{}", n % 64)}))
                    .await;
            }
            let (frames, close_frame) = c.read_until_close(TIMEOUT).await;
            assert_eq!(
                close_code(&close_frame),
                Some(close::TOO_MANY_REQUESTS),
                "flooder {i} after {} frames",
                frames.len()
            );
        }
    })
    .await;
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_against_a_slow_webhook_times_out_alone() {
    let webhook = MockWebhook::start(WebhookMode::Slow(Duration::from_secs(3))).await;
    let (d, audience) = standalone(|config| {
        config.auth.webhook_url = Some(webhook.url());
        config.auth.webhook_timeout = Duration::from_millis(300);
    })
    .await;
    let url = d.ws_url(0);
    let storm = swarm(100, |i| {
        let url = url.clone();
        async move {
            let mut c = WsClient::connect(&url)
                .await
                .with_label(format!("storm-{i}"));
            for _ in 0..3 {
                let started = Instant::now();
                let reply = c.login(&format!("tok-storm{i}")).await;
                assert_eq!(reply["code"], code::AUTH_FAILED, "{reply}");
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "a login took {:?}",
                    started.elapsed()
                );
            }
            // Still connected, and not logged in.
            let reply = c.sub_private("mine").await;
            assert_eq!(reply["code"], code::NOT_LOGGED_IN, "{reply}");
        }
    });
    // Meanwhile, JWT logins are answered at once.
    let bystander = async {
        let mut c = WsClient::connect(&url).await.with_label("jwt user");
        wait_until(
            TIMEOUT,
            "the storm's logins waiting on the webhook",
            || async { webhook.requests().len() >= 50 },
        )
        .await;
        let started = Instant::now();
        c.must_login(&auth::hs256("calm"), "calm").await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a JWT login during the storm took {:?}",
            started.elapsed()
        );
    };
    tokio::join!(storm, bystander);
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_opened_and_dropped_abruptly() {
    let (d, audience) = standalone(|_| {}).await;
    let addr = d.edge.ws_addr().to_string();
    let url = d.ws_url(0);
    for wave in 0..10 {
        swarm(500, |i| {
            let (addr, url) = (addr.clone(), url.clone());
            async move {
                match (wave * 500 + i) % 4 {
                    // Connect and go.
                    0 | 1 => drop(TcpStream::connect(&addr).await),
                    // Half a request, then go.
                    2 => {
                        if let Ok(mut s) = TcpStream::connect(&addr).await {
                            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpg").await;
                        }
                    }
                    // Upgrade, subscribe, and go without a close frame.
                    _ => {
                        let mut c = SilentClient::connect(&url).await;
                        c.send_text("{\"code\":1,\"topic\":\"ticks\"}").await;
                    }
                }
            }
        })
        .await;
    }
    // Every dropped connection is gone; the audience is all that is left.
    wait_connections(&addr, AUDIENCE).await;
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_cut_after_the_handshake_timeout() {
    let (d, audience) = standalone(|_| {}).await;
    let addr = d.edge.ws_addr();
    // More than max_handshakes (256): the rest wait to be accepted.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        } else {
            b""
        };
        s.write_all(partial).await.expect("write");
        held.push(s);
    }
    // 1 s each, at most two rounds of slots.
    join_all(held.iter_mut().map(|s| expect_closed(s, TIMEOUT))).await;
    // New clients get in again.
    let mut late = WsClient::connect(&d.ws_url(0)).await.with_label("late");
    late.must_subscribe("late").await;
    audience.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrade_requests_are_refused() {
    let (d, audience) = standalone(|_| {}).await;
    let addr = d.edge.ws_addr().to_string();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let big_header = format!("X-Big: {}\r\n", "a".repeat(512 * 1024));
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<Vec<u8>> = vec![
        // A TLS client hello on the plain port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\n\r\n".to_vec(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{key}Sec-WebSocket-Version: 13\r\n\r\n").into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 8\r\n\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n")
            .into_bytes(),
        format!("POST /ws HTTP/1.1\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\n{big_header}\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\n{many_headers}\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\nContent-Length: -1\r\n\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/1.1\r\nHost: x\0y\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\n\r\n")
            .into_bytes(),
        format!("GET /ws HTTP/9.9\r\nHost: x\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\n\r\n")
            .into_bytes(),
        format!("GET /ws\r\n{upgrade}{key}\r\n").into_bytes(),
        b"\r\n\r\n\r\n\r\n".repeat(1000),
    ];
    swarm(cases.len() * 10, |i| {
        let addr = addr.clone();
        let request = cases[i % cases.len()].clone();
        async move {
            let answer = silent::exchange(&addr, &request, Duration::from_secs(3)).await;
            let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
            assert!(
                !head.contains(" 101 "),
                "case {} was upgraded: {head}",
                i % 14
            );
            let refused = ["HTTP/1.1 4", "HTTP/1.0 4", "HTTP/1.1 505", "HTTP/1.0 505"];
            assert!(
                answer.is_empty() || refused.iter().any(|r| head.starts_with(r)),
                "case {}: unexpected answer {head:?}",
                i % 14
            );
        }
    })
    .await;
    audience.finish().await;
}

/// The resident and peak memory (VmRSS, VmHWM) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_clients_are_cut_and_edge_memory_stays_bounded() {
    const SLOW: usize = 20;
    const PAYLOAD: usize = 64 * 1024;
    const PUSHES: usize = 1600; // 100 MiB: far more than kernel buffers hold
    const BATCH: usize = 16;
    const QUEUE_BYTES: usize = 256 * 1024;
    // The real binary, so that its memory is its own.
    let dir = gpush_integration_tests::procs::scratch_dir("hostile-slow");
    let config = dir.join("edge.toml");
    std::fs::write(&config, format!("queue_bytes = {QUEUE_BYTES}\n")).expect("write config");
    let ws = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--config",
        config.to_str().expect("utf-8 path"),
        "--standalone",
        "--ws-addr",
        &ws,
        "--http-addr",
        &http,
        "--grpc-addr",
        &grpc,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let edge = EdgeProcess::spawn(&args).await;
    let api = PushApi::new(&format!("http://{http}"), &format!("http://{grpc}"));
    api.wait_for_status("/healthz", 200, TIMEOUT).await;
    let audience = Audience::start(&edge.ws_url(), &api).await;

    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut c = SilentClient::connect(&edge.ws_url()).await;
        c.send_text("{\"code\":1,\"topic\":\"firehose\"}").await;
        slow.push(c);
    }
    // The subscriptions have landed: the audience's and the slow ones'.
    wait_metric(
        &ws,
        "gpush_edge_subscriptions{kind=\"public\"}",
        AUDIENCE + SLOW,
    )
    .await;
    let (before, _) = memory_kib(edge.pid());
    let payload = vec![b'x'; PAYLOAD];
    for _ in 0..PUSHES / BATCH {
        let batch: Vec<PushMsg> = (0..BATCH)
            .map(|_| PushMsg::public("firehose", payload.clone()))
            .collect();
        api.send(Via::GrpcBatch, &batch).await;
    }
    // Each slow client is cut: what it had in the kernel, then the end.
    for mut c in slow {
        let ending = c.read_until_close(TIMEOUT * 2).await;
        if let Some(code) = ending.close_code() {
            assert_eq!(code, close::SLOW_CONSUMER);
        }
    }
    let cut = metric(
        &ws,
        "gpush_edge_disconnects_total{reason=\"slow_consumer\"}",
    )
    .await;
    assert_eq!(cut, SLOW as f64, "slow consumers cut");
    let (_, peak) = memory_kib(edge.pid());
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("edge RSS: {before} KiB before the firehose, peak {peak} KiB");
    // Unbounded queues would have kept most of the 100 MiB pushed.
    let bound_mib = (SLOW * QUEUE_BYTES) as u64 / (1024 * 1024) + 32;
    assert!(
        growth_mib <= bound_mib,
        "edge memory grew by {growth_mib} MiB (bound {bound_mib} MiB)"
    );
    audience.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}

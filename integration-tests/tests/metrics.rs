//! `GET /metrics` on edges and ingress, `GET /v1/stats`, and the JSON log
//! fields: real work is done (connections, subscriptions, pushes of each
//! kind through each API, refused calls, closes of each kind, a NATS
//! restart), then the scraped Prometheus text must show exactly that.
//!
//! Counters are compared as differences between a scrape before and one
//! after, so start-up traffic (the harness's readiness handshakes) does not
//! matter; gauges are compared as they are.

use gpush_integration_tests::auth::hs256;
use gpush_integration_tests::client::close_code;
use gpush_integration_tests::frames::{self, close};
use gpush_integration_tests::procs::{EdgeProcess, LoggedChild, scratch_dir};
use gpush_integration_tests::silent::SilentClient;
use gpush_integration_tests::{
    Cluster, Deployment, PushMsg, Standalone, TIMEOUT, Via, WsClient, free_port, wait_for,
};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// One scrape of a `/metrics` endpoint.
#[derive(Debug, Clone)]
struct Scrape {
    url: String,
    text: String,
    samples: Vec<Sample>,
}

/// Parses the Prometheus text format (as far as our servers write it:
/// no escapes in label values, no timestamps).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

impl Scrape {
    /// `GET url`; panics unless 200 with the Prometheus text content type.
    async fn get(url: &str) -> Scrape {
        let response = tokio::time::timeout(TIMEOUT, reqwest::get(url))
            .await
            .unwrap_or_else(|_| panic!("GET {url} timed out"))
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "GET {url}: content type {content_type:?}"
        );
        let text = response.text().await.expect("metrics body");
        Scrape {
            url: url.to_owned(),
            samples: parse(&text),
            text,
        }
    }

    /// The value of series `name` with (at least) `labels`; panics, showing
    /// the scrape, when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| {
            panic!(
                "{} has no {name}{labels:?}; it served:\n{}",
                self.url, self.text
            )
        })
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }
}

/// `after - before` for one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// Scrapes `url` until `ok` holds; panics after [`TIMEOUT`] with the last
/// scrape.
async fn scrape_until(url: &str, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    scrape_within(url, what, TIMEOUT, ok).await
}

async fn scrape_within(
    url: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&Scrape) -> bool,
) -> Scrape {
    wait_for(within, format!("{url} showing {what}"), || async {
        let scrape = Scrape::get(url).await;
        if ok(&scrape) {
            Ok(scrape)
        } else {
            Err(format!("scrape:\n{}", scrape.text))
        }
    })
    .await
}

fn edge_metrics_url(ws_addr: std::net::SocketAddr) -> String {
    format!("http://{ws_addr}/metrics")
}

/// Gauges of an edge: connections, public and private subscriptions,
/// topics, users.
fn edge_gauges(s: &Scrape) -> [f64; 5] {
    [
        s.value("gpush_edge_connections", &[]),
        s.value("gpush_edge_subscriptions", &[("kind", "public")]),
        s.value("gpush_edge_subscriptions", &[("kind", "private")]),
        s.value("gpush_edge_topics", &[]),
        s.value("gpush_edge_users", &[]),
    ]
}

const KINDS: [&str; 3] = ["everyone", "topic", "user"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_follow_the_work() {
    let mut d = Cluster::start(2, |_| {}).await;
    let edge_urls: Vec<String> = d
        .edges
        .iter()
        .map(|e| edge_metrics_url(e.ws_addr()))
        .collect();
    let ingress_url = format!("{}/metrics", d.ingress.http_base());
    // Quiet first: the harness's readiness handshakes have closed.
    let mut before = Vec::new();
    for url in &edge_urls {
        before.push(
            scrape_until(url, "no connection", |s| {
                s.value("gpush_edge_connections", &[]) == 0.0
            })
            .await,
        );
    }
    let ingress_before = Scrape::get(&ingress_url).await;

    let mut a = d.connect(0, "a").await;
    let mut b = d.connect(0, "b").await;
    let mut c = d.connect(1, "c").await;
    a.must_subscribe("news").await;
    b.must_subscribe("news").await;
    b.must_login(&hs256("u1"), "u1").await;
    b.must_sub_private("inbox").await;
    c.must_subscribe("sports").await;

    let gauges0 = scrape_until(&edge_urls[0], "2 connections, 3 subscriptions", |s| {
        edge_gauges(s) == [2.0, 2.0, 1.0, 1.0, 1.0]
    })
    .await;
    assert_eq!(edge_gauges(&gauges0), [2.0, 2.0, 1.0, 1.0, 1.0]);
    scrape_until(&edge_urls[1], "1 connection, 1 subscription", |s| {
        edge_gauges(s) == [1.0, 1.0, 0.0, 1.0, 0.0]
    })
    .await;

    // Each kind, through each API; every client takes what it is owed
    // before the next call.
    d.send(Via::Http, &[PushMsg::public("news", b"1".to_vec())])
        .await;
    a.expect_push(&frames::public("news", b"1")).await;
    b.expect_push(&frames::public("news", b"1")).await;
    d.send(Via::Grpc, &[PushMsg::private("u1", "inbox", b"2".to_vec())])
        .await;
    b.expect_push(&frames::private("inbox", b"2")).await;
    d.send(
        Via::HttpBatch,
        &[
            PushMsg::everyone(b"3".to_vec()),
            PushMsg::public("sports", b"4".to_vec()),
        ],
    )
    .await;
    a.expect_push(&frames::everyone(b"3")).await;
    b.expect_push(&frames::everyone(b"3")).await;
    c.expect_pushes_unordered(&[frames::everyone(b"3"), frames::public("sports", b"4")])
        .await;
    d.send(Via::GrpcBatch, &[PushMsg::user("u1", b"5".to_vec())])
        .await;
    b.expect_push(&frames::user(b"5")).await;
    // Refused: nothing is published, each is counted once.
    let bad = [PushMsg::public("bad\ntopic", b"x".to_vec())];
    assert!(d.api().try_send(Via::Http, &bad).await.is_err());
    assert!(d.api().try_send(Via::Grpc, &bad).await.is_err());

    // Edges: received by kind, queued per connection reached, written.
    let expected_received = [[1.0, 1.0, 2.0], [1.0, 1.0, 0.0]];
    let expected_deliveries = [6.0, 2.0];
    for (i, url) in edge_urls.iter().enumerate() {
        let after = Scrape::get(url).await;
        let received: Vec<f64> = KINDS
            .iter()
            .map(|k| {
                delta(
                    &before[i],
                    &after,
                    "gpush_edge_pushes_received_total",
                    &[("kind", k)],
                )
            })
            .collect();
        assert_eq!(
            received, expected_received[i],
            "edge-{i} pushes by kind (everyone, topic, user)"
        );
        assert_eq!(
            delta(&before[i], &after, "gpush_edge_deliveries_total", &[]),
            expected_deliveries[i],
            "edge-{i} deliveries"
        );
        let frames = delta(&before[i], &after, "gpush_edge_frames_written_total", &[]);
        assert!(
            frames >= expected_deliveries[i],
            "edge-{i}: {frames} frames written, fewer than the pushes delivered"
        );
        assert!(delta(&before[i], &after, "gpush_edge_written_bytes_total", &[]) > frames);
        assert_eq!(
            delta(&before[i], &after, "gpush_edge_write_batch_frames_sum", &[]),
            frames,
            "edge-{i}: the batch histogram sums the frames written"
        );
        let flushes = delta(
            &before[i],
            &after,
            "gpush_edge_write_batch_frames_count",
            &[],
        );
        assert!(
            (1.0..=frames).contains(&flushes),
            "edge-{i}: {flushes} flushes"
        );
        assert_eq!(
            after.value("gpush_edge_write_batch_frames_bucket", &[("le", "+Inf")]),
            after.value("gpush_edge_write_batch_frames_count", &[]),
        );
        // Sampled: at least one push timed, at most every one.
        let pushes: f64 = received.iter().sum();
        let timed = delta(
            &before[i],
            &after,
            "gpush_edge_push_to_write_seconds_count",
            &[],
        );
        assert!(
            (1.0..=pushes).contains(&timed),
            "edge-{i}: {timed} of {pushes} pushes timed"
        );
        let seconds = delta(
            &before[i],
            &after,
            "gpush_edge_push_to_write_seconds_sum",
            &[],
        );
        assert!(
            (0.0..timed * 2.0).contains(&seconds),
            "edge-{i}: {seconds} s over {timed} timed pushes"
        );
        assert_eq!(
            delta(
                &before[i],
                &after,
                "gpush_edge_handshakes_total",
                &[("result", "ok")]
            ),
            [2.0, 1.0][i],
            "edge-{i} handshakes"
        );
        assert_eq!(after.value("gpush_bus_connected", &[]), 1.0);
        assert_eq!(after.value("gpush_bus_reconnects_total", &[]), 0.0);
    }

    // Ingress: published by kind and API, refused by API and reason.
    let ingress = Scrape::get(&ingress_url).await;
    let pushes = |kind: &str, api: &str| {
        delta(
            &ingress_before,
            &ingress,
            "gpush_ingress_pushes_total",
            &[("kind", kind), ("api", api)],
        )
    };
    assert_eq!(
        [
            pushes("everyone", "http"),
            pushes("topic", "http"),
            pushes("user", "http")
        ],
        [1.0, 2.0, 0.0]
    );
    assert_eq!(
        [
            pushes("everyone", "grpc"),
            pushes("topic", "grpc"),
            pushes("user", "grpc")
        ],
        [0.0, 0.0, 2.0]
    );
    for api in ["http", "grpc"] {
        assert_eq!(
            ingress.value(
                "gpush_ingress_push_errors_total",
                &[("api", api), ("reason", "invalid_topic")]
            ),
            1.0,
            "{api} refusal"
        );
    }
    let calls = delta(
        &ingress_before,
        &ingress,
        "gpush_ingress_publish_batch_messages_count",
        &[],
    );
    assert_eq!(calls, 4.0, "publish calls");
    assert_eq!(
        delta(
            &ingress_before,
            &ingress,
            "gpush_ingress_publish_batch_messages_sum",
            &[]
        ),
        5.0,
        "messages published"
    );
    assert_eq!(
        delta(
            &ingress_before,
            &ingress,
            "gpush_ingress_publish_seconds_count",
            &[]
        ),
        4.0
    );
    assert_eq!(ingress.value("gpush_bus_connected", &[]), 1.0);
    assert!(
        delta(
            &ingress_before,
            &ingress,
            "gpush_bus_messages_sent_total",
            &[]
        ) >= 5.0
    );

    // /v1/stats: per edge and total, as the edges last wrote it in etcd.
    let stats = wait_for(TIMEOUT, "/v1/stats showing 3 connections", || async {
        let reply = d.api().get("/v1/stats").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let stats = reply.json();
        if stats["total_connections"] == 3 {
            Ok(stats)
        } else {
            Err(stats)
        }
    })
    .await;
    assert_eq!(stats["edge_count"], 2, "{stats}");
    assert_eq!(stats["stale"], false, "{stats}");
    let by_node: Vec<(String, u64)> = stats["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node_id"].as_str().unwrap_or("?").to_owned(),
                e["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_node,
        [("edge-1".to_owned(), 1), ("edge-0".to_owned(), 2)],
        "{stats}"
    );
    assert_eq!(stats["edges"][1]["url"], d.edges[0].ws_url().as_str());

    // Registered once each, and leases renewed (the first keep-alive goes
    // out at once).
    for url in &edge_urls {
        let s = scrape_until(url, "a lease renewal", |s| {
            s.value("gpush_edge_lease_renewals_total", &[]) >= 1.0
        })
        .await;
        assert_eq!(s.value("gpush_edge_registrations_total", &[]), 1.0);
        assert_eq!(s.value("gpush_edge_registration_failures_total", &[]), 0.0);
    }

    // A client that closes, one that vanishes.
    a.close().await;
    drop(c);
    scrape_until(&edge_urls[0], "a client close", |s| {
        s.value(
            "gpush_edge_disconnects_total",
            &[("reason", "client_close")],
        ) - before[0].value(
            "gpush_edge_disconnects_total",
            &[("reason", "client_close")],
        ) == 1.0
            && s.value("gpush_edge_connections", &[]) == 1.0
    })
    .await;
    let edge1 = scrape_until(&edge_urls[1], "a client gone", |s| {
        s.value("gpush_edge_connections", &[]) == 0.0
    })
    .await;
    assert_eq!(
        delta(
            &before[1],
            &edge1,
            "gpush_edge_disconnects_total",
            &[("reason", "client_gone")]
        ),
        1.0,
        "edge-1 disconnects:\n{}",
        edge1.text
    );
    assert_eq!(
        edge_gauges(&edge1),
        [0.0; 5],
        "edge-1 forgot its subscription"
    );

    // The bus comes back after a NATS restart, and that is counted.
    d.nats.restart().await;
    let reconnected = |s: &Scrape| {
        s.value("gpush_bus_reconnects_total", &[]) >= 1.0
            && s.value("gpush_bus_connected", &[]) == 1.0
    };
    scrape_within(&ingress_url, "a bus reconnect", TIMEOUT * 3, reconnected).await;
    for url in &edge_urls {
        scrape_within(url, "a bus reconnect", TIMEOUT * 3, reconnected).await;
    }
    drop(b);
}

/// The closes a standalone edge can tell apart, its push API's metrics
/// (the ingress ones, on the push port) and `/v1/stats` from the edge
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_counts_closes_by_reason() {
    const BURST: usize = 10;
    let d = Standalone::start(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.ping_interval = Duration::from_millis(200);
        // A burst lands in one flush interval and overflows the queue.
        c.queue_bytes = 1024;
        c.write_interval = Duration::from_millis(200);
    })
    .await;
    let edge_url = edge_metrics_url(d.edge.ws_addr());
    let api_url = format!("{}/metrics", d.edge.http_base());
    let before = scrape_until(&edge_url, "no connection", |s| {
        s.value("gpush_edge_connections", &[]) == 0.0
    })
    .await;
    let api_before = Scrape::get(&api_url).await;

    // /v1/stats comes from the edge itself.
    let c = d.connect(0, "counted").await;
    let stats = d.api().get("/v1/stats").await.json();
    assert_eq!(stats["total_connections"], 1, "{stats}");
    assert_eq!(stats["edge_count"], 1, "{stats}");
    // client_close
    c.close().await;

    // client_gone: the TCP connection just ends.
    drop(d.connect(0, "vanishing").await);

    // protocol_error: a message over max_message (4096 bytes).
    let mut big = d.connect(0, "too big").await;
    big.send_text(&"x".repeat(5000)).await;
    let (_, frame) = big.read_until_close(TIMEOUT).await;
    assert_eq!(close_code(&frame), Some(1009));

    // slow_consumer: a burst twice the queue within one flush interval.
    let mut slow = d.connect(0, "slow").await;
    slow.must_subscribe("burst").await;
    // 10 pushes of ~250 bytes: over the 1 KiB queue.
    let burst: Vec<PushMsg> = (0..BURST)
        .map(|i| PushMsg::public("burst", format!("\"{i}{}\"", "x".repeat(200)).into_bytes()))
        .collect();
    d.send(Via::HttpBatch, &burst).await;
    let (_, frame) = slow.read_until_close(TIMEOUT).await;
    assert_eq!(close_code(&frame), Some(close::SLOW_CONSUMER));

    // idle: a client that never answers the pings.
    let mut silent = SilentClient::connect(&d.ws_url(0)).await;
    let ending = silent.read_until_close(TIMEOUT).await;
    assert_eq!(ending.close_code(), Some(close::IDLE_TIMEOUT));

    let after = scrape_until(&edge_url, "every client gone", |s| {
        s.value("gpush_edge_connections", &[]) == 0.0
    })
    .await;
    let closes: Vec<(&str, f64)> = [
        "client_close",
        "client_gone",
        "protocol_error",
        "slow_consumer",
        "idle",
        "shutdown",
    ]
    .into_iter()
    .map(|reason| {
        (
            reason,
            delta(
                &before,
                &after,
                "gpush_edge_disconnects_total",
                &[("reason", reason)],
            ),
        )
    })
    .collect();
    assert_eq!(
        closes,
        [
            ("client_close", 1.0),
            ("client_gone", 1.0),
            ("protocol_error", 1.0),
            ("slow_consumer", 1.0),
            ("idle", 1.0),
            ("shutdown", 0.0),
        ]
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "gpush_edge_handshakes_total",
            &[("result", "ok")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "gpush_edge_pushes_received_total",
            &[("kind", "topic")]
        ),
        BURST as f64
    );
    assert!(
        after.find("gpush_bus_connected", &[]).is_none(),
        "a standalone edge has no NATS connection"
    );

    // A request that is not a WebSocket upgrade is counted as such.
    let reply = reqwest::get(format!("http://{}/ws", d.edge.ws_addr()))
        .await
        .expect("GET /ws");
    assert_eq!(reply.status(), 400);
    let after = Scrape::get(&edge_url).await;
    assert_eq!(
        delta(
            &before,
            &after,
            "gpush_edge_handshakes_total",
            &[("result", "bad_request")]
        ),
        1.0
    );

    // The push API's own metrics, on its port.
    let api = Scrape::get(&api_url).await;
    assert_eq!(
        delta(
            &api_before,
            &api,
            "gpush_ingress_pushes_total",
            &[("kind", "topic"), ("api", "http")]
        ),
        BURST as f64
    );
    assert_eq!(
        delta(
            &api_before,
            &api,
            "gpush_ingress_publish_batch_messages_count",
            &[]
        ),
        1.0
    );
}

/// With `--log-format json`, a connection's log lines carry the
/// connection id and the node id as span fields, and the edge's own lines
/// the node id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_connection_and_node() {
    let ws_addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(EdgeProcess::binary());
    command
        .args([
            "--standalone",
            "--ws-addr",
            &ws_addr,
            "--node-id",
            "json-node",
        ])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,gpush_edge::conn=debug");
    let dir = scratch_dir("json-logs");
    let mut edge = LoggedChild::spawn("gpush-edge", command, dir.join("gpush-edge.log"));
    edge.wait_for_port(ws_addr.parse().expect("address")).await;

    let mut client = WsClient::connect(&format!("ws://{ws_addr}/ws")).await;
    client.must_subscribe("logged").await;
    client.close().await;

    let logged = "the log showing a connection opened and closed";
    let (opened, closed, running) = wait_for(TIMEOUT, logged, || async {
        let log = std::fs::read_to_string(edge.log()).expect("read the edge's log");
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        let find = |message: &str| {
            lines
                .iter()
                .find(|l| l["fields"]["message"] == message)
                .cloned()
        };
        if let (Some(opened), Some(closed), Some(running)) = (
            find("connection opened"),
            find("connection closed"),
            find("edge running"),
        ) {
            Ok((opened, closed, running))
        } else {
            Err(format!("log:\n{log}"))
        }
    })
    .await;
    for line in [&opened, &closed] {
        assert_eq!(line["span"]["name"], "conn", "{line}");
        assert_eq!(line["span"]["node"], "json-node", "{line}");
        assert!(line["span"]["conn"].as_u64().is_some(), "{line}");
    }
    assert_eq!(opened["span"]["conn"], closed["span"]["conn"]);
    assert_eq!(closed["fields"]["reason"], "client_close", "{closed}");
    assert_eq!(running["span"]["name"], "edge", "{running}");
    assert_eq!(running["span"]["node"], "json-node", "{running}");
    drop(edge);
    let _ = std::fs::remove_dir_all(dir);
}

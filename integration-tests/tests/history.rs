//! History and recovery on a standalone edge (memory history): pushes
//! carry offsets, subscribe and login replies carry the stream's position,
//! and a client that comes back with `since` gets every push it missed, in
//! order, before any live one and with none twice, or `recovered: false`.

use gpush_common::config::sections::NatsConfig;
use gpush_common::history::HistoryConfig;
use gpush_common::history::config::PrefixRule;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::api::PushMsg;
use gpush_integration_tests::cut::CutRelay;
use gpush_integration_tests::frames::code;
use gpush_integration_tests::servers::{EdgeHandle, IngressHandle};
use gpush_integration_tests::{Cluster, Deployment, QUIET, Standalone, TIMEOUT, WsClient, auth};
use gpush_integration_tests::{Etcd, NatsServer, readyz};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `{"code":C,"topic":T,"since":{...}}` (no topic for a login).
async fn join(client: &mut WsClient, request: Value) -> Value {
    let reply = client.request_value(request).await;
    assert!(
        reply["code"] == code::SUBSCRIBED || reply["code"] == code::LOGGED_IN,
        "{}: {reply}",
        client.label()
    );
    reply
}

/// Subscribes to public `topic` with `since`; the reply.
async fn resubscribe(client: &mut WsClient, topic: &str, since: Value) -> Value {
    join(
        client,
        json!({"code": code::SUBSCRIBE, "topic": topic, "since": since}),
    )
    .await
}

/// The reply's position: (offset, epoch).
fn position(reply: &Value) -> (u64, String) {
    let offset = reply["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {reply}"));
    let epoch = reply["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch: {reply}"));
    (offset, epoch.to_owned())
}

fn since(offset: u64, epoch: &str) -> Value {
    json!({"offset": offset, "epoch": epoch})
}

/// The next `n` pushes' (offset, data).
async fn pushes(client: &mut WsClient, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let push = client.next_push(TIMEOUT).await;
        let offset = push["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {push}"));
        got.push((offset, push["data"].as_str().unwrap_or_default().to_owned()));
    }
    got
}

/// Pushes `texts` to public `topic`; each answer's offset.
async fn push_all(
    api: &gpush_integration_tests::PushApi,
    topic: &str,
    texts: impl IntoIterator<Item = String>,
) -> Vec<u64> {
    let mut offsets = Vec::new();
    for text in texts {
        let body = json!({"topic": topic, "data": base64(&text)}).to_string();
        let reply = api.post("/v1/pushData", body, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        offsets.push(reply.json()["offset"].as_u64().expect("an offset"));
    }
    offsets
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn texts(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n}")).collect()
}

/// A client that disconnects and comes back (in a cluster, to another
/// edge) with `since` gets the pushes it missed, in order, then live ones.
async fn comes_back(d: &impl Deployment) {
    let mut a = d.connect(0, "a").await;
    let reply = join(&mut a, json!({"code": code::SUBSCRIBE, "topic": "news"})).await;
    let (start, epoch) = position(&reply);
    assert!(
        reply.get("recovered").is_none(),
        "no since, no recovered: {reply}"
    );

    let offsets = push_all(d.api(), "news", texts("n", 0..3)).await;
    assert!(
        offsets[0] > start && offsets.windows(2).all(|w| w[0] < w[1]),
        "{offsets:?}"
    );
    let got = pushes(&mut a, 3).await;
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), offsets);
    let last = got[2].0;
    a.close().await;

    let missed = push_all(d.api(), "news", texts("missed", 0..20)).await;
    let mut back = d.connect(1, "back").await;
    let reply = resubscribe(&mut back, "news", since(last, &epoch)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(position(&reply), (missed[19], epoch.clone()), "{reply}");
    let recovered = pushes(&mut back, 20).await;
    let expected: Vec<(u64, String)> = missed
        .iter()
        .enumerate()
        .map(|(n, offset)| (*offset, format!("missed{n}")))
        .collect();
    assert_eq!(recovered, expected);

    let live = push_all(d.api(), "news", ["live".to_owned()]).await;
    assert_eq!(pushes(&mut back, 1).await, [(live[0], "live".to_owned())]);
    back.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_comes_back_gets_what_it_missed_then_live_pushes() {
    comes_back(&Standalone::start(|_| {}).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_comes_back_to_another_edge_gets_what_it_missed() {
    comes_back(&Cluster::start(2, |_| {}).await).await;
}

/// Pushes arrive all the time while clients recover: each client sees
/// every offset after its `since` exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_a_stream_of_pushes_has_no_gap_and_no_duplicate() {
    let d = Arc::new(Standalone::start(|_| {}).await);
    let mut first = d.connect(0, "first").await;
    let (_, epoch) = position(
        &join(
            &mut first,
            json!({"code": code::SUBSCRIBE, "topic": "busy"}),
        )
        .await,
    );
    push_all(d.api(), "busy", texts("seed", 0..5)).await;

    let stop = Arc::new(AtomicBool::new(false));
    // The last offset the push API answered.
    let answered = Arc::new(AtomicU64::new(5));
    let pusher = {
        let (d, stop, answered) = (d.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<serde_json::Value> = (0..5)
                    .map(|i| json!({"topic": "busy", "data": base64(&format!("p{n}-{i}"))}))
                    .collect();
                let body = json!({"messages": batch}).to_string();
                let reply = d.api().post("/v1/pushBatch", body, None).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                let last = reply.json()["offsets"][4].as_u64().expect("offsets");
                answered.store(last, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    for round in 0..10u64 {
        // A few pushes back: kept (size 100), and more arrive meanwhile.
        let from = answered
            .load(Ordering::Relaxed)
            .saturating_sub(1 + round % 10);
        let mut c = d.connect(0, &format!("round {round}")).await;
        let reply = resubscribe(&mut c, "busy", since(from, &epoch)).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let (at, _) = position(&reply);
        // Everything up to the reply's offset, then live ones, contiguous.
        let got = pushes(&mut c, (at - from) as usize + 20).await;
        for (i, (offset, _)) in got.iter().enumerate() {
            assert_eq!(*offset, from + 1 + i as u64, "round {round}: {got:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(pusher.await.expect("pusher") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_history_no_longer_holds_is_not_recovered() {
    let d = Standalone::start(|c| {
        c.history.size = 5;
        c.history.max_recover = 3;
    })
    .await;
    let mut a = d.connect(0, "a").await;
    let (_, epoch) = position(&join(&mut a, json!({"code": code::SUBSCRIBE, "topic": "t"})).await);
    push_all(d.api(), "t", texts("x", 0..10)).await;

    let cases = [
        // Offset 3 was evicted (size 5 keeps 6..=10).
        ("evicted", since(3, &epoch), false),
        // 6..=10 are kept, but 5 missed is more than max_recover (3).
        ("too many", since(5, &epoch), false),
        ("another epoch", since(8, "other"), false),
        ("never reached", since(99, &epoch), false),
        ("kept and few", since(7, &epoch), true),
    ];
    for (label, from, recovered) in cases {
        let mut c = d.connect(0, label).await;
        let reply = resubscribe(&mut c, "t", from).await;
        assert_eq!(reply["recovered"], recovered, "{label}: {reply}");
        assert_eq!(position(&reply).0, 10, "{label}: {reply}");
        if recovered {
            let got = pushes(&mut c, 3).await;
            assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [8, 9, 10]);
        }
        // A partial recovery is never sent.
        c.expect_no_push(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standalone_edge_starts_a_new_epoch() {
    let d = Standalone::start(|_| {}).await;
    let mut a = d.connect(0, "a").await;
    let (_, epoch) = position(&join(&mut a, json!({"code": code::SUBSCRIBE, "topic": "t"})).await);
    push_all(d.api(), "t", texts("x", 0..3)).await;
    drop(a);
    let config = d.edge.stop().await;
    let d = Standalone::from_edge(EdgeHandle::start_again(config).await);
    push_all(d.api(), "t", texts("y", 0..3)).await;
    let mut b = d.connect(0, "b").await;
    let reply = resubscribe(&mut b, "t", since(2, &epoch)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(position(&reply).1, epoch);
    b.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_streams_recover_private_topics_and_user_wide_pushes_apart() {
    let d = Standalone::start(|_| {}).await;
    let mut a = d.connect(0, "a").await;
    let reply = join(
        &mut a,
        json!({"code": code::LOGIN, "data": auth::hs256("ann")}),
    )
    .await;
    let (_, epoch) = position(&reply);
    let reply = join(
        &mut a,
        json!({"code": code::SUBSCRIBE_PRIVATE, "topic": "inbox"}),
    )
    .await;
    assert_eq!(
        position(&reply).1,
        epoch,
        "a private topic shares its user's stream"
    );
    drop(a);

    let send =
        |uid: &str, topic: &str, text: &str| PushMsg::new(uid, topic, text.as_bytes().to_vec());
    d.push_batch_http(&[
        send("ann", "inbox", "i1"),
        send("ann", "", "u1"),
        send("ann", "other", "o1"),
        send("bob", "inbox", "not ann's"),
        send("ann", "inbox", "i2"),
    ])
    .await;

    let mut b = d.connect(0, "b").await;
    let reply = join(
        &mut b,
        json!({"code": code::LOGIN, "data": auth::hs256("ann"), "since": since(0, &epoch)}),
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = pushes(&mut b, 1).await;
    assert_eq!(
        got,
        [(2, "u1".to_owned())],
        "the login recovers user-wide pushes only"
    );
    let reply = join(
        &mut b,
        json!({"code": code::SUBSCRIBE_PRIVATE, "topic": "inbox", "since": since(0, &epoch)}),
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = pushes(&mut b, 2).await;
    assert_eq!(got, [(1, "i1".to_owned()), (4, "i2".to_owned())]);
    b.expect_no_push(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_without_history_have_no_offsets() {
    let d = Standalone::start(|c| {
        c.history.topics = vec![PrefixRule {
            prefix: "live.".into(),
            size: 0,
            ttl: Duration::from_secs(1),
        }];
    })
    .await;
    let mut a = d.connect(0, "a").await;
    let reply = resubscribe(&mut a, "live.eur", since(1, "e")).await;
    assert!(
        reply.get("offset").is_none() && reply.get("epoch").is_none(),
        "{reply}"
    );
    assert_eq!(reply["recovered"], false, "{reply}");
    let body = json!({"topic": "live.eur", "data": base64("tick")}).to_string();
    let answer = d.api().post("/v1/pushData", body, None).await.json();
    assert!(answer.get("offset").is_none(), "{answer}");
    let push = a.next_push(TIMEOUT).await;
    assert!(push.get("offset").is_none(), "{push}");
    // Everyone pushes never have offsets; a batch answer lists them.
    let answer = d
        .api()
        .post(
            "/v1/pushBatch",
            json!({"messages": [{"data": base64("all")}, {"topic": "kept", "data": base64("k")}]})
                .to_string(),
            None,
        )
        .await
        .json();
    assert_eq!(answer["offsets"], json!([0, 1]), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_since_is_a_bad_request() {
    let d = Standalone::start(|_| {}).await;
    let mut a = d.connect(0, "a").await;
    for bad in [
        json!("5"),
        json!({"offset": -1, "epoch": "e"}),
        json!({"offset": 1}),
        json!({"offset": 1, "epoch": "e".repeat(65)}),
    ] {
        let reply = a
            .request_value(json!({"code": code::SUBSCRIBE, "topic": "t", "since": bad}))
            .await;
        assert_eq!(reply["code"], code::BAD_REQUEST, "{bad}: {reply}");
    }
    a.must_subscribe("t").await;
}

/// `GET /v1/history` and gRPC `History`: what backends rebuilding state
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_pages_through_what_is_kept() {
    let d = Standalone::start(|c| c.history.size = 4).await;
    push_all(d.api(), "t", texts("x", 0..6)).await;
    d.push_batch_http(&[
        PushMsg::private("ann", "inbox", b"i1".to_vec()),
        PushMsg::user("ann", b"u1".to_vec()),
    ])
    .await;

    let get = |path: &str| {
        let path = path.to_owned();
        let api = d.api().clone();
        async move { api.get(&path).await }
    };
    let page = get("/v1/history?topic=t&since=1&limit=2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(
        (page["offset"].as_u64(), &page["complete"]),
        (Some(6), &json!(false)),
        "{page}"
    );
    let pushes = page["pushes"].as_array().expect("pushes");
    assert_eq!(pushes.len(), 2, "{page}");
    assert_eq!(
        pushes[0],
        json!({"offset": 3, "topic": "t", "data": base64("x2")})
    );
    let page = get("/v1/history?topic=t&since=4").await.json();
    assert_eq!(page["complete"], true, "{page}");
    assert_eq!(page["pushes"].as_array().map(Vec::len), Some(2), "{page}");

    let page = get("/v1/history?uid=ann&topic=inbox").await.json();
    let data: Vec<&Value> = page["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, [&json!(base64("i1"))], "{page}");
    let page = get("/v1/history?uid=ann").await.json();
    assert_eq!(
        page["pushes"].as_array().map(Vec::len),
        Some(2),
        "the user's whole stream: {page}"
    );

    for (query, status, code) in [
        ("", 400, "bad_query"),
        ("?topic=t&limit=0", 400, "bad_query"),
        ("?topic=t&limit=1001", 400, "bad_query"),
        ("?topic=t&Since=1", 400, "bad_query"),
        ("?topic=a%0Ab", 400, "invalid_topic"),
    ] {
        let reply = get(&format!("/v1/history{query}")).await;
        assert_eq!(
            (reply.status, reply.json()["code"].as_str()),
            (status, Some(code)),
            "{query}: {}",
            reply.body
        );
    }

    let reply = d
        .api()
        .grpc()
        .history(gpush_proto::v1::HistoryRequest {
            uid: String::new(),
            topic: "t".into(),
            since: 4,
            limit: 0,
        })
        .await
        .expect("History")
        .into_inner();
    assert_eq!(
        (reply.offset, reply.complete, reply.pushes.len()),
        (6, true, 2)
    );
    assert_eq!(&reply.pushes[1].data[..], b"x5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_says_where_none_is_kept() {
    let d = Standalone::start(|c| c.history.enabled = false).await;
    let reply = d.api().get("/v1/history?topic=t").await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str()),
        (404, Some("no_history")),
        "{}",
        reply.body
    );
    let status = d
        .api()
        .grpc()
        .history(gpush_proto::v1::HistoryRequest {
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect_err("no history");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// NATS, etcd and ingress, and a relay to NATS that a test can cut: edges
/// started through it lose their bus while everything else keeps it.
struct Relayed {
    nats: NatsServer,
    etcd: Etcd,
    /// Kept running for as long as the test.
    _ingress: IngressHandle,
    relay: CutRelay,
    api: gpush_integration_tests::PushApi,
    /// The `[history]` of every process.
    history: HistoryConfig,
}

impl Relayed {
    async fn start() -> Self {
        Self::start_with(HistoryConfig::default()).await
    }

    /// With this history config on ingress (edges get it from
    /// [`Self::edge`]'s `history`).
    async fn start_with(history: HistoryConfig) -> Self {
        let (nats, etcd) = tokio::join!(NatsServer::start(), Etcd::start());
        let ingress = IngressHandle::start(IngressConfig {
            nats: NatsConfig::with_urls(vec![nats.url()]),
            history: history.clone(),
            ..IngressConfig::default()
        })
        .await;
        let relay = CutRelay::start(nats.addr()).await;
        let api = gpush_integration_tests::PushApi::new(&ingress.http_base(), &ingress.grpc_url());
        api.wait_for_status("/readyz", 200, TIMEOUT).await;
        Self {
            nats,
            etcd,
            _ingress: ingress,
            relay,
            api,
            history,
        }
    }

    /// An edge on NATS directly, or through the relay.
    async fn edge(&self, through_relay: bool) -> EdgeHandle {
        let mut config = gpush_integration_tests::deploy::edge_test_config();
        config.nats.nats_urls = vec![if through_relay {
            self.relay.nats_url()
        } else {
            self.nats.url()
        }];
        config.etcd_endpoints = vec![self.etcd.url()];
        config.history = self.history.clone();
        EdgeHandle::start(config).await
    }

    /// Cuts the relay and waits until `edge` says it lost NATS.
    async fn cut(&self, edge: &EdgeHandle) {
        self.relay.cut();
        gpush_integration_tests::wait_until(TIMEOUT, "the edge to lose NATS", || async {
            readyz(&format!("http://{}", edge.ws_addr())).await == 503
        })
        .await;
    }
}

/// A cluster edge whose NATS connection was away while pushes were made
/// recovers them from history by itself, in order, before the next live
/// one: a quiet topic (nothing after the outage) when the connection comes
/// back, a busy one at its next push. Its clients notice nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_missed_pushes_recovers_them_itself() {
    let r = Relayed::start().await;
    let edge = r.edge(true).await;
    let api = &r.api;
    let mut quiet = WsClient::connect(&edge.ws_url()).await.with_label("quiet");
    let mut busy = WsClient::connect(&edge.ws_url()).await.with_label("busy");
    join(
        &mut quiet,
        json!({"code": code::SUBSCRIBE, "topic": "quiet"}),
    )
    .await;
    join(&mut busy, json!({"code": code::SUBSCRIBE, "topic": "busy"})).await;
    let push = |topic: &str, text: String| {
        let body = json!({"topic": topic, "data": base64(&text)}).to_string();
        let api = api.clone();
        async move {
            let reply = api.post("/v1/pushData", body, None).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.json()["offset"].as_u64().expect("offset")
        }
    };
    let before = push("quiet", "q-before".into()).await;
    assert_eq!(
        pushes(&mut quiet, 1).await,
        [(before, "q-before".to_owned())]
    );

    r.cut(&edge).await;
    let mut missed_quiet = Vec::new();
    let mut missed_busy = Vec::new();
    for n in 0..5 {
        missed_quiet.push((push("quiet", format!("q{n}")).await, format!("q{n}")));
        missed_busy.push((push("busy", format!("b{n}")).await, format!("b{n}")));
    }
    r.relay.restore();

    // The quiet topic: recovered when the connection is back.
    assert_eq!(pushes(&mut quiet, 5).await, missed_quiet);
    // The busy topic: its next push reveals the gap (if the check after
    // the reconnect did not fill it first); either way all in order.
    let next = push("busy", "b-next".into()).await;
    missed_busy.push((next, "b-next".to_owned()));
    assert_eq!(pushes(&mut busy, 6).await, missed_busy);
    quiet.expect_no_push(QUIET).await;
    busy.expect_no_push(QUIET).await;
}

/// A cluster's history API reads JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_history_api_reads_jetstream() {
    let d = Cluster::start(1, |_| {}).await;
    let offsets = push_all(d.api(), "t", texts("x", 0..3)).await;
    let page = d
        .api()
        .get(&format!("/v1/history?topic=t&since={}", offsets[0]))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(
        (page["offset"].as_u64(), &page["complete"]),
        (Some(offsets[2]), &json!(true)),
        "{page}"
    );
    let got: Vec<(u64, String)> = page["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap_or(0),
                p["data"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(offsets[1], base64("x1")), (offsets[2], base64("x2"))]
    );
    // From 0: everything kept, without a proof that nothing older was lost.
    let page = d.api().get("/v1/history?topic=t").await.json();
    assert_eq!(page["complete"], false, "{page}");
    let kept: Vec<u64> = page["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(kept, offsets, "{page}");
}

/// In a cluster: a client whose `since` was evicted past `history.size`,
/// or belongs to a stream that was deleted and recreated (a new epoch),
/// gets `recovered:false`; a client subscribed while its stream was
/// recreated is told (10007) and goes on with the new stream's pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_says_when_history_was_evicted_or_recreated() {
    let d = Cluster::start_with(
        1,
        |ingress| ingress.history.size = 5,
        |edge| edge.history.size = 5,
    )
    .await;
    let mut a = d.connect(0, "a").await;
    let (_, epoch) = position(&join(&mut a, json!({"code": code::SUBSCRIBE, "topic": "t"})).await);
    let first = push_all(d.api(), "t", texts("x", 0..10)).await;
    let got = pushes(&mut a, 10).await;
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), first);

    // Evicted: size 5 keeps the last 5 only.
    let mut late = d.connect(0, "late").await;
    let reply = resubscribe(&mut late, "t", since(first[1], &epoch)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    late.expect_no_push(QUIET).await;
    let mut kept = d.connect(0, "kept").await;
    let reply = resubscribe(&mut kept, "t", since(first[6], &epoch)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        pushes(&mut kept, 3)
            .await
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        first[7..]
    );

    // The stream is deleted (an operator, or a NATS that lost its store).
    let client = async_nats::connect(d.nats.url()).await.expect("nats");
    async_nats::jetstream::new(client)
        .delete_stream("GPUSH_HISTORY_D")
        .await
        .expect("delete the stream");
    // The first push after it may find no stream (503) while ingress
    // creates it again: push until one is stored.
    let mut after = None;
    for _ in 0..50 {
        let body = json!({"topic": "t", "data": base64("new")}).to_string();
        let reply = d.api().post("/v1/pushData", body, None).await;
        if reply.status == 200 {
            after = reply.json()["offset"].as_u64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = after.expect("a push stored in the recreated stream");
    // The live client is told, then gets the new stream's push.
    let notice = a.next_text(TIMEOUT).await;
    let notice: Value = serde_json::from_str(&notice).expect("json");
    assert_eq!(
        notice,
        json!({"code": 10007, "topic": "t", "offset": first[9]})
    );
    assert_eq!(pushes(&mut a, 1).await, [(after, "new".to_owned())]);
    // A client of the old epoch is not recovered.
    let mut old = d.connect(0, "old epoch").await;
    let reply = resubscribe(&mut old, "t", since(first[9], &epoch)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(position(&reply).1, epoch, "{reply}");
}

/// A client that moves to an edge that is behind (its NATS connection was
/// away while the client's old edge delivered more) waits for that edge to
/// catch up instead of being told `recovered:false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_an_edge_that_is_behind_is_still_recovered() {
    let r = Relayed::start().await;
    let ahead = r.edge(false).await;
    let behind = r.edge(true).await;
    let api = &r.api;

    // Both edges follow the topic.
    let mut watcher = WsClient::connect(&behind.ws_url())
        .await
        .with_label("watcher");
    let reply = join(&mut watcher, json!({"code": code::SUBSCRIBE, "topic": "t"})).await;
    position(&reply); // followed: the edge has the stream's position
    let mut mover = WsClient::connect(&ahead.ws_url()).await.with_label("mover");
    let (_, epoch) =
        position(&join(&mut mover, json!({"code": code::SUBSCRIBE, "topic": "t"})).await);

    r.cut(&behind).await;
    let mut sent = Vec::new();
    for n in 0..5 {
        let body = json!({"topic": "t", "data": base64(&format!("m{n}"))}).to_string();
        let reply = api.post("/v1/pushData", body, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        sent.push((
            reply.json()["offset"].as_u64().expect("offset"),
            format!("m{n}"),
        ));
    }
    let got = pushes(&mut mover, 5).await;
    assert_eq!(got, sent);
    drop(mover);
    r.relay.restore();
    gpush_integration_tests::wait_until(TIMEOUT, "the edge to be back on NATS", || async {
        readyz(&format!("http://{}", behind.ws_addr())).await == 200
    })
    .await;

    // At once: the edge is back on NATS but has not caught up yet (it
    // checks its streams on its next reconnect tick, within a second).
    let mut moved = WsClient::connect(&behind.ws_url())
        .await
        .with_label("moved");
    let reply = resubscribe(&mut moved, "t", since(sent[4].0, &epoch)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(position(&reply).0, sent[4].0, "{reply}");
    moved.expect_no_push(QUIET).await;
    // The watcher on that edge got them too, late and in order.
    assert_eq!(pushes(&mut watcher, 5).await, sent);
}

/// An edge that missed more pushes than history still holds tells each
/// client following that stream (push 10007 with the last offset it
/// delivered), then goes on with the live pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_missed_what_history_lost_tells_its_clients() {
    let r = Relayed::start_with(HistoryConfig {
        size: 2,
        ..HistoryConfig::default()
    })
    .await;
    let edge = r.edge(true).await;
    let mut c = WsClient::connect(&edge.ws_url()).await.with_label("c");
    join(&mut c, json!({"code": code::SUBSCRIBE, "topic": "t"})).await;
    let before = push_all(&r.api, "t", ["before".to_owned()]).await;
    assert_eq!(pushes(&mut c, 1).await, [(before[0], "before".to_owned())]);

    r.cut(&edge).await;
    push_all(&r.api, "t", texts("lost", 0..5)).await;
    r.relay.restore();

    let notice: Value = serde_json::from_str(&c.next_text(TIMEOUT).await).expect("json");
    assert_eq!(
        notice,
        json!({"code": 10007, "topic": "t", "offset": before[0]})
    );
    let live = push_all(&r.api, "t", ["live".to_owned()]).await;
    assert_eq!(pushes(&mut c, 1).await, [(live[0], "live".to_owned())]);
}

/// A subscribe with `since` on a connection already subscribed to the
/// topic (after a 10007, say) joins again from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_on_a_subscribed_topic_recovers_from_there() {
    let d = Standalone::start(|_| {}).await;
    let mut a = d.connect(0, "a").await;
    let (_, epoch) = position(&join(&mut a, json!({"code": code::SUBSCRIBE, "topic": "t"})).await);
    let offsets = push_all(d.api(), "t", texts("x", 0..3)).await;
    assert_eq!(pushes(&mut a, 3).await.len(), 3);
    let reply = resubscribe(&mut a, "t", since(offsets[0], &epoch)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let again: Vec<u64> = pushes(&mut a, 2).await.iter().map(|p| p.0).collect();
    assert_eq!(again, offsets[1..]);
    let live = push_all(d.api(), "t", ["live".to_owned()]).await;
    assert_eq!(pushes(&mut a, 1).await, [(live[0], "live".to_owned())]);
    a.expect_no_push(QUIET).await;
}

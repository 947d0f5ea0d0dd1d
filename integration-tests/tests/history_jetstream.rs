//! The cluster's history storage layer against a real `nats-server -js`:
//! pushes with history are stored in JetStream and republished on their
//! live subjects with their offsets; positions are messages actually
//! stored (markers for empty subjects); recovery reads are all or nothing;
//! a recreated stream is a new epoch; prefix rules get their own streams;
//! JetStream away is an error, never a hang.

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use gpush_common::Push;
use gpush_common::bus::{Ack, Bus, BusError, NatsBus};
use gpush_common::history::config::PrefixRule;
use gpush_common::history::jetstream::{
    HistoryError, JetStreamHistory, ReadMethod, StoreFailure, live_position,
};
use gpush_common::history::{HistoryConfig, Read, StreamKey};
use gpush_common::subject::Subjects;
use gpush_integration_tests::{NatsServer, QUIET, TIMEOUT};
use std::time::{Duration, Instant};
use tokio::time::timeout;

/// Bound of each JetStream request and ack in these tests.
const JS_TIMEOUT: Duration = Duration::from_secs(2);

const METHODS: [ReadMethod; 4] = [
    ReadMethod::Auto,
    ReadMethod::DirectGet,
    ReadMethod::Ordered,
    ReadMethod::Fetch,
];

async fn connect(nats: &NatsServer) -> async_nats::Client {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(1))
        .connect(nats.url())
        .await
        .expect("connect to nats");
    client.flush().await.expect("flush");
    client
}

fn rule(prefix: &str, size: usize) -> PrefixRule {
    PrefixRule {
        prefix: prefix.into(),
        size,
        ttl: Duration::from_secs(60),
    }
}

/// A config with `rules`, otherwise the defaults.
fn config(rules: Vec<PrefixRule>) -> HistoryConfig {
    HistoryConfig {
        topics: rules,
        ..HistoryConfig::default()
    }
}

async fn history(client: &async_nats::Client, config: &HistoryConfig) -> JetStreamHistory {
    gpush_integration_tests::init_tracing();
    timeout(
        TIMEOUT,
        JetStreamHistory::new(client.clone(), &Subjects::default(), config, JS_TIMEOUT),
    )
    .await
    .expect("history start timed out")
    .expect("history streams")
}

fn bus(client: &async_nats::Client, history: &JetStreamHistory) -> Bus {
    Bus::Nats(
        NatsBus::new(client.clone(), Subjects::default(), JS_TIMEOUT, Ack::Server)
            .with_history(history.clone()),
    )
}

fn topic(name: &str, data: &str) -> Push {
    Push::new("", name, Bytes::from(data.to_owned()))
}

async fn publish(bus: &Bus, pushes: &[Push]) -> Vec<u64> {
    timeout(TIMEOUT, bus.publish(pushes))
        .await
        .expect("publish timed out")
        .expect("publish")
}

async fn read(
    history: &JetStreamHistory,
    method: ReadMethod,
    key: StreamKey<'_>,
    since: u64,
    upto: Option<u64>,
    max: usize,
) -> Read {
    timeout(TIMEOUT, history.read_using(method, key, since, upto, max))
        .await
        .unwrap_or_else(|_| panic!("{method:?} read timed out"))
        .unwrap_or_else(|e| panic!("{method:?} read: {e}"))
}

/// (offset, data) of each entry, or None for a gap.
fn entries(read: &Read) -> Option<Vec<(u64, String)>> {
    match read {
        Read::Gap => None,
        Read::Complete(entries) => Some(
            entries
                .iter()
                .map(|e| (e.offset, String::from_utf8_lossy(&e.push.data).into_owned()))
                .collect(),
        ),
    }
}

/// The next message of `sub`, within the timeout.
async fn next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    timeout(TIMEOUT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no live message on {what}"))
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pushes_get_increasing_offsets_and_go_out_live_with_them() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(&client, &config(vec![rule("nohist.", 0)])).await;
    let bus = bus(&client, &history);
    let subjects = Subjects::default();
    let mut news = client.subscribe(subjects.topic("news")).await.expect("sub");
    let mut other = client
        .subscribe(subjects.topic("other"))
        .await
        .expect("sub");
    let mut alice = client.subscribe(subjects.user("alice")).await.expect("sub");
    let mut everyone = client.subscribe(subjects.everyone()).await.expect("sub");
    let mut nohist = client
        .subscribe(subjects.topic("nohist.x"))
        .await
        .expect("sub");
    client.flush().await.expect("flush");

    let pushes = [
        topic("news", "n1"),
        topic("other", "o1"),
        topic("news", "n2"),
        Push::new("alice", "", Bytes::from_static(b"a1")),
        topic("", "all"),
        topic("nohist.x", "x1"),
        topic("news", "n3"),
        Push::new("alice", "inbox", Bytes::from_static(b"a2")),
        topic("other", "o2"),
    ];
    let mut offsets = publish(&bus, &pushes).await;
    // A second call continues each subject.
    offsets.extend(publish(&bus, &[topic("news", "n4")]).await);
    let of = |data: &str| {
        let i = pushes
            .iter()
            .chain(std::iter::once(&topic("news", "n4")))
            .position(|p| p.data == data.as_bytes())
            .expect("push");
        offsets[i]
    };
    assert_eq!((of("all"), of("x1")), (0, 0), "no history: no offset");
    let news_offsets = [of("n1"), of("n2"), of("n3"), of("n4")];
    assert!(news_offsets[0] > 0);
    assert!(news_offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(of("o1") < of("o2") && of("a1") < of("a2"), "{offsets:?}");

    // Live: each with its offset and the previous offset of its subject.
    let mut previous = 0;
    for (i, offset) in news_offsets.into_iter().enumerate() {
        let message = next(&mut news, "news").await;
        let position = live_position(message.headers.as_ref()).expect("position headers");
        assert_eq!((position.offset, position.previous), (offset, previous));
        assert!(!position.marker);
        let push = gpush_common::envelope::decode(&message.payload).expect("envelope");
        assert_eq!(push.data, format!("n{}", i + 1).as_bytes());
        previous = offset;
    }
    for (sub, first, second) in [(&mut other, "o1", "o2"), (&mut alice, "a1", "a2")] {
        let one = live_position(next(sub, first).await.headers.as_ref()).expect("headers");
        let two = live_position(next(sub, second).await.headers.as_ref()).expect("headers");
        assert_eq!((one.offset, one.previous), (of(first), 0));
        assert_eq!((two.offset, two.previous), (of(second), of(first)));
    }
    // Everyone and no-history pushes go out on their live subjects as
    // before, without a position, and are not stored.
    for (sub, what) in [(&mut everyone, "everyone"), (&mut nohist, "nohist.x")] {
        let message = next(sub, what).await;
        assert_eq!(live_position(message.headers.as_ref()), None, "{what}");
    }
    assert_eq!(history.storage_subject(StreamKey::Topic("nohist.x")), None);
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("GPUSH_HISTORY_D").await.expect("stream");
    let stored = stream.info().await.expect("info").state.messages;
    assert_eq!(stored, 6, "news x4 and other x2 only");
    // Nothing else arrives (no duplicate from the storage subject).
    for (sub, what) in [(&mut news, "news"), (&mut everyone, "everyone")] {
        assert!(
            timeout(QUIET, sub.next()).await.is_err(),
            "a second copy on {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_of_an_empty_subject_is_one_marker() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(&client, &HistoryConfig::default()).await;
    let bus = bus(&client, &history);
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("GPUSH_HISTORY_D").await.expect("stream");
    let mut live = client
        .subscribe(Subjects::default().topic("quiet0"))
        .await
        .expect("sub");
    client.flush().await.expect("flush");

    for i in 0..5 {
        let name = format!("quiet{i}");
        let key = StreamKey::Topic(&name);
        let (a, b) = tokio::join!(history.position(key), history.position(key));
        let (a, b) = (
            a.expect("position").expect("history"),
            b.expect("position").expect("history"),
        );
        assert_eq!(a, b, "two concurrent positions of {name}");
        assert!(a.offset > 0 && !a.epoch.is_empty());
        // Exactly one message on the subject: the marker, at that offset.
        let subject = history.storage_subject(key).expect("subject");
        let first = stream
            .direct_get_next_for_subject(subject.as_str(), None)
            .await
            .expect("first");
        assert_eq!(first.sequence, a.offset);
        assert_eq!(
            first.headers.get("Gpush-Marker").map(|v| v.as_str()),
            Some("1")
        );
        let after = stream
            .direct_get_next_for_subject(subject.as_str(), Some(a.offset + 1))
            .await;
        assert!(after.is_err(), "a second marker on {name}");
        // Later calls return the same offset.
        let again = history.position(key).await.expect("position");
        assert_eq!(again, Some(a.clone()));
    }
    // The marker goes out live, flagged.
    let marker = next(&mut live, "quiet0").await;
    let position = live_position(marker.headers.as_ref()).expect("headers");
    assert!(position.marker && position.previous == 0);

    // After pushes, the position is the last push's offset.
    let offsets = publish(&bus, &[topic("quiet0", "1"), topic("quiet0", "2")]).await;
    let position = history
        .position(StreamKey::Topic("quiet0"))
        .await
        .expect("position")
        .expect("history");
    assert_eq!(position.offset, offsets[1]);
    // And a topic with pushes but never asked: no marker needed.
    let offsets = publish(&bus, &[topic("busy", "1")]).await;
    let position = history
        .position(StreamKey::Topic("busy"))
        .await
        .expect("position")
        .expect("history");
    assert_eq!(position.offset, offsets[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_an_offset_are_all_or_nothing() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(&client, &config(vec![rule("small.", 5)])).await;
    let bus = bus(&client, &history);

    // Ten pushes on "feed", interleaved with others that must not show.
    let mut pushes = Vec::new();
    for i in 1..=10 {
        pushes.push(topic("feed", &format!("f{i}")));
        pushes.push(topic("noise", &format!("x{i}")));
    }
    let all = publish(&bus, &pushes).await;
    let feed: Vec<(u64, String)> = (0..10)
        .map(|i| (all[2 * i], format!("f{}", i + 1)))
        .collect();
    let key = StreamKey::Topic("feed");
    for method in METHODS {
        // Since push 3: pushes 4..10 in order.
        let got = read(&history, method, key, feed[2].0, None, 1000).await;
        assert_eq!(entries(&got).as_deref(), Some(&feed[3..]), "{method:?}");
        // Up to push 7.
        let got = read(&history, method, key, feed[2].0, Some(feed[6].0), 1000).await;
        assert_eq!(
            entries(&got).as_deref(),
            Some(&feed[3..7]),
            "{method:?} upto"
        );
        // More than max: a gap, never a part.
        let got = read(&history, method, key, feed[2].0, None, 6).await;
        assert_eq!(entries(&got), None, "{method:?} max 6 of 7");
        let got = read(&history, method, key, feed[2].0, None, 7).await;
        assert_eq!(entries(&got).map(|e| e.len()), Some(7), "{method:?} max 7");
        // From the last: nothing missed.
        let got = read(&history, method, key, feed[9].0, None, 1000).await;
        assert_eq!(entries(&got), Some(vec![]), "{method:?} from the last");
        // An offset that is not a message of this subject: a gap.
        let got = read(&history, method, key, all[1], None, 1000).await;
        assert_eq!(entries(&got), None, "{method:?} another subject's offset");
        let got = read(&history, method, key, 0, None, 1000).await;
        assert_eq!(entries(&got), None, "{method:?} offset 0");
    }

    // Past `size` (5): the kept five read fine, anything older is a gap.
    let mut small = Vec::new();
    for i in 1..=8 {
        small.push(topic("small.a", &format!("s{i}")));
    }
    let offsets = publish(&bus, &small).await;
    let key = StreamKey::Topic("small.a");
    for method in METHODS {
        for evicted in &offsets[..3] {
            let got = read(&history, method, key, *evicted, None, 1000).await;
            assert_eq!(entries(&got), None, "{method:?} from evicted {evicted}");
        }
        let got = read(&history, method, key, offsets[3], None, 1000).await;
        let data: Vec<String> = entries(&got)
            .expect("complete")
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(data, ["s5", "s6", "s7", "s8"], "{method:?}");
    }

    // From a marker: the pushes after it (the marker itself is no push).
    let key = StreamKey::Topic("fresh");
    let marker = history
        .position(key)
        .await
        .expect("position")
        .expect("history");
    for method in METHODS {
        let got = read(&history, method, key, marker.offset, None, 1000).await;
        assert_eq!(entries(&got), Some(vec![]), "{method:?} marker only");
    }
    let offsets = publish(&bus, &[topic("fresh", "r1"), topic("fresh", "r2")]).await;
    for method in METHODS {
        let got = read(&history, method, key, marker.offset, None, 1000).await;
        assert_eq!(
            entries(&got),
            Some(vec![(offsets[0], "r1".into()), (offsets[1], "r2".into())]),
            "{method:?} from the marker"
        );
    }

    // User streams: user-wide and private-topic pushes share one.
    let alice = [
        Push::new("alice", "", Bytes::from_static(b"u1")),
        Push::new("alice", "inbox", Bytes::from_static(b"u2")),
        Push::new("alice", "", Bytes::from_static(b"u3")),
    ];
    let offsets = publish(&bus, &alice).await;
    let got = history
        .read(StreamKey::User("alice"), offsets[0], None, 1000)
        .await
        .expect("read");
    let Read::Complete(got) = got else {
        panic!("user read: gap");
    };
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].push, {
        let mut p = alice[1].clone();
        p.sent_at_us = got[0].push.sent_at_us;
        p.offset = offsets[1];
        p
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_is_a_new_epoch() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(&client, &HistoryConfig::default()).await;
    let bus = bus(&client, &history);
    let key = StreamKey::Topic("news");

    let offsets = publish(&bus, &[topic("news", "1"), topic("news", "2")]).await;
    let before = history.position(key).await.expect("pos").expect("history");
    assert_eq!(before.offset, offsets[1]);

    let js = jetstream::new(client.clone());
    js.delete_stream("GPUSH_HISTORY_D").await.expect("delete");
    // The first store after it fails (nothing took it) and recreates the
    // stream; the next one is stored.
    let lost = timeout(TIMEOUT, bus.publish(&[topic("news", "3")]))
        .await
        .expect("publish timed out");
    assert!(
        matches!(
            lost,
            Err(BusError::NotStored(HistoryError::Store {
                failure: StoreFailure::NoStream,
                ..
            }))
        ),
        "{lost:?}"
    );
    let offsets = publish(&bus, &[topic("news", "4")]).await;
    assert_eq!(offsets, [1], "a new stream starts again");
    let after = history.position(key).await.expect("pos").expect("history");
    assert_ne!(after.epoch, before.epoch, "same epoch after recreation");
    // Old offsets are gone with their epoch.
    let got = history
        .read(key, before.offset, None, 1000)
        .await
        .expect("read");
    assert_eq!(got, Read::Gap);

    // Recreated by someone else: refresh_epoch reads the new epoch.
    js.delete_stream("GPUSH_HISTORY_D").await.expect("delete");
    let other = history_again(&client).await;
    let refreshed = history.refresh_epoch(key).await.expect("refresh");
    assert_eq!(refreshed, other.epoch(key));
    assert_ne!(refreshed.as_deref(), Some(after.epoch.as_str()));
}

async fn history_again(client: &async_nats::Client) -> JetStreamHistory {
    history(client, &HistoryConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_rules_keep_their_topics_in_their_own_streams() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(
        &client,
        &config(vec![rule("chat.", 3), rule("chat.vip.", 7)]),
    )
    .await;
    let bus = bus(&client, &history);
    let names = [
        history.stream_name_of(StreamKey::Topic("news")),
        history.stream_name_of(StreamKey::Topic("chat.a")),
        history.stream_name_of(StreamKey::Topic("chat.vip.a")),
        history.stream_name_of(StreamKey::User("alice")),
    ];
    let names: Vec<String> = names
        .into_iter()
        .map(|n| n.expect("stream").to_owned())
        .collect();
    assert_eq!(names[0], "GPUSH_HISTORY_D");
    assert_eq!(names[3], "GPUSH_HISTORY_U");
    assert!(names[1] != names[0] && names[2] != names[1], "{names:?}");

    let js = jetstream::new(client.clone());
    for (name, size) in [(&names[0], 100), (&names[1], 3), (&names[2], 7)] {
        let mut stream = js.get_stream(name).await.expect("stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.max_messages_per_subject, size, "{name}");
    }
    let mut pushes = Vec::new();
    for i in 0..10 {
        for name in ["news", "chat.a", "chat.vip.a"] {
            pushes.push(topic(name, &i.to_string()));
        }
    }
    publish(&bus, &pushes).await;
    for (name, topic, kept) in [
        (&names[0], "news", 10),
        (&names[1], "chat.a", 3),
        (&names[2], "chat.vip.a", 7),
    ] {
        let mut stream = js.get_stream(name).await.expect("stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.state.messages, kept, "{topic} in {name}");
    }
    // Config drift: a new size updates the stream in place.
    let history = history_with(&client, vec![rule("chat.", 4), rule("chat.vip.", 7)]).await;
    let mut stream = js.get_stream(&names[1]).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_messages_per_subject, 4);
    assert!(history.epoch(StreamKey::Topic("chat.a")).is_some());
}

async fn history_with(client: &async_nats::Client, rules: Vec<PrefixRule>) -> JetStreamHistory {
    history(client, &config(rules)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_streams_are_updated_or_named_in_the_error() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let js = jetstream::new(client.clone());
    // A stream of the history's name made by hand with a smaller bound
    // and a short max_age: brought to the plan.
    let republish = jetstream::stream::Republish {
        source: "gpush-h.d.>".into(),
        destination: "gpush.>".into(),
        headers_only: false,
    };
    js.create_stream(jetstream::stream::Config {
        name: "GPUSH_HISTORY_D".into(),
        subjects: vec!["gpush-h.d.>".into()],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(5),
        republish: Some(republish.clone()),
        allow_direct: true,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("hand-made stream");
    let history = history(&client, &HistoryConfig::default()).await;
    let mut stream = js.get_stream("GPUSH_HISTORY_D").await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.config.subjects, ["gpush-h.d.>"]);
    assert_eq!(info.config.max_messages_per_subject, 100);
    assert_eq!(info.config.max_age, HistoryConfig::default().ttl);
    assert_eq!(info.config.republish, Some(republish));
    let bus = bus(&client, &history);
    let offsets = publish(&bus, &[topic("news", "1"), topic("news", "2")]).await;
    let got = history
        .read(StreamKey::Topic("news"), offsets[0], None, 10)
        .await
        .expect("read");
    assert_eq!(entries(&got).map(|e| e.len()), Some(1));

    // A stream of a plan's name without the republish (nats-server 2.9
    // cannot add one in place): an error that names the stream.
    js.delete_stream("GPUSH_HISTORY_U").await.expect("delete");
    js.create_stream(jetstream::stream::Config {
        name: "GPUSH_HISTORY_U".into(),
        subjects: vec!["gpush-h.u.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("hand-made stream");
    let started = timeout(
        TIMEOUT,
        JetStreamHistory::new(
            client.clone(),
            &Subjects::default(),
            &HistoryConfig::default(),
            JS_TIMEOUT,
        ),
    )
    .await
    .expect("start hung");
    let Err(error) = started else {
        panic!("republish added in place");
    };
    let text = error.to_string();
    assert!(
        text.contains("GPUSH_HISTORY_U") && text.contains("RePublish"),
        "{text}"
    );
    js.delete_stream("GPUSH_HISTORY_U").await.expect("delete");
    history_again(&client).await;

    // What JetStream cannot change in place (file to memory storage): an
    // error that names the stream.
    let file = HistoryConfig {
        storage: gpush_common::history::Storage::Memory,
        ..HistoryConfig::default()
    };
    let started = timeout(
        TIMEOUT,
        JetStreamHistory::new(client.clone(), &Subjects::default(), &file, JS_TIMEOUT),
    )
    .await
    .expect("start hung");
    let Err(error) = started else {
        panic!("storage changed in place");
    };
    let text = error.to_string();
    assert!(
        text.contains("GPUSH_HISTORY_D") && text.contains("update"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_a_publish_fails_and_never_hangs() {
    // A server without JetStream: the streams cannot be made.
    let mut nats = NatsServer::start_plain().await;
    let client = connect(&nats).await;
    let started = timeout(
        TIMEOUT,
        JetStreamHistory::new(
            client.clone(),
            &Subjects::default(),
            &HistoryConfig::default(),
            JS_TIMEOUT,
        ),
    )
    .await
    .expect("start hung");
    let Err(error) = started else {
        panic!("history started without JetStream");
    };
    assert!(
        error.to_string().contains("GPUSH_HISTORY_D"),
        "error does not name the stream: {error}"
    );

    // JetStream on, then the server comes back without it.
    nats.set_jetstream(true);
    nats.restart().await;
    let history = timeout(TIMEOUT * 2, async {
        loop {
            match JetStreamHistory::new(
                client.clone(),
                &Subjects::default(),
                &HistoryConfig::default(),
                JS_TIMEOUT,
            )
            .await
            {
                Ok(history) => return history,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("no history after the restart with JetStream");
    let bus = bus(&client, &history);
    publish(&bus, &[topic("news", "1")]).await;

    nats.set_jetstream(false);
    nats.restart().await;
    // Until the client notices and reconnects, a publish may fail as not
    // connected; once connected, JetStream's absence fails it.
    let failure = timeout(TIMEOUT * 2, async {
        loop {
            let started = Instant::now();
            let result = bus.publish(&[topic("news", "2")]).await;
            assert!(
                started.elapsed() < JS_TIMEOUT * 2,
                "a publish took too long"
            );
            match result {
                Err(BusError::NotConnected) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return other,
            }
        }
    })
    .await
    .expect("publish never failed for the missing JetStream");
    assert!(
        matches!(
            failure,
            Err(BusError::NotStored(HistoryError::Store {
                failure: StoreFailure::NoStream,
                ..
            }))
        ),
        "{failure:?}"
    );

    // A stopped server: an error within the bus timeout.
    nats.stop();
    let started = Instant::now();
    let result = timeout(TIMEOUT, bus.publish(&[topic("news", "3")]))
        .await
        .expect("publish hung with the server stopped");
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() <= JS_TIMEOUT + Duration::from_millis(500));
}

/// Prints how long a recovery read of 50 and of 1,000 pushes takes by each
/// method (the figures behind `DIRECT_READ_LIMIT`). A measurement, not a
/// check: `cargo test -p gpush-integration-tests --test history_jetstream
/// -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_read_methods() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(&client, &config(vec![rule("m.", 2000)])).await;
    let bus = bus(&client, &history);
    for count in [0_usize, 1, 2, 4, 8, 50, 1000] {
        let name = format!("m.{count}");
        let pushes: Vec<Push> = (0..=count)
            .map(|i| topic(&name, &format!("{i:0100}")))
            .collect();
        let offsets = publish(&bus, &pushes).await;
        let key = StreamKey::Topic(&name);
        for method in METHODS {
            let runs = if count >= 1000 { 15 } else { 41 };
            // One warm-up.
            read(&history, method, key, offsets[0], None, count).await;
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let started = Instant::now();
                let got = read(&history, method, key, offsets[0], None, count).await;
                times.push(started.elapsed());
                assert_eq!(entries(&got).map(|e| e.len()), Some(count));
            }
            times.sort();
            let each = times[runs / 2];
            println!("read {count:>4} pushes by {method:?}: median {each:?}");
        }
    }
}

/// Prints pushes/s through the NATS bus with history (JetStream store and
/// ack) and without (core publish and server probe): 20,000 pushes in
/// calls of `batch`, from 1 and from 8 concurrent callers. A measurement,
/// not a check (see `measure_read_methods`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_publish_throughput() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let history = history(
        &client,
        &config(vec![rule("off.", 0), rule("big.", 100_000)]),
    )
    .await;
    let bus = bus(&client, &history);
    const TOTAL: usize = 20_000;
    for (prefix, what) in [
        ("on.", "history on, size 100    "),
        ("big.", "history on, size 100,000"),
        ("off.", "history off             "),
    ] {
        for batch in [1_usize, 100] {
            for callers in [1_usize, 8] {
                let calls = TOTAL / batch / callers;
                let started = Instant::now();
                let tasks: Vec<_> = (0..callers)
                    .map(|c| {
                        let bus = bus.clone();
                        let name = format!("{prefix}{c}");
                        tokio::spawn(async move {
                            let pushes: Vec<Push> =
                                (0..batch).map(|_| topic(&name, &"x".repeat(100))).collect();
                            for _ in 0..calls {
                                publish(&bus, &pushes).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("caller");
                }
                let rate = (calls * batch * callers) as f64 / started.elapsed().as_secs_f64();
                println!("{what}: batch {batch:>3}, {callers} callers: {rate:>8.0} pushes/s");
            }
        }
    }
}

/// Prints the store rate while 1,000 topics are pushed to in turn (each
/// keeps `size` 100, so a topic's kept pushes span 100,000 stream
/// sequences once the stream is full), with memory and with file storage.
/// nats-server 2.9.10's memory store finds a subject's last message (for
/// the `Nats-Last-Sequence` of every republished store, and for a direct
/// get of the last) by scanning every stream sequence between the
/// subject's first and last kept messages. A measurement, not a check (see
/// `measure_read_methods`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_interleaved_topics() {
    let nats = NatsServer::start_jetstream().await;
    let client = connect(&nats).await;
    let slow = Duration::from_secs(60);
    for (prefix, storage) in [
        ("file", gpush_common::history::Storage::File),
        ("mem", gpush_common::history::Storage::Memory),
    ] {
        let subjects = Subjects::new(prefix).expect("prefix");
        let config = HistoryConfig {
            storage,
            ..HistoryConfig::default()
        };
        let history = JetStreamHistory::new(client.clone(), &subjects, &config, slow)
            .await
            .expect("history");
        let bus = Bus::Nats(
            NatsBus::new(client.clone(), subjects, slow, Ack::Server).with_history(history.clone()),
        );
        let mut stored = 0;
        let mut report = Vec::new();
        let started = Instant::now();
        while stored < 200_000 && started.elapsed() < Duration::from_secs(60) {
            let round = Instant::now();
            for chunk in 0..10 {
                let pushes: Vec<Push> = (0..100)
                    .map(|i| topic(&format!("t{}", chunk * 100 + i), "x"))
                    .collect();
                bus.publish(&pushes).await.expect("publish");
            }
            stored += 1000;
            if stored % 10_000 == 0 {
                let rate = 1000.0 / round.elapsed().as_secs_f64();
                report.push(format!("{}k: {rate:.0}/s", stored / 1000));
            }
        }
        let started = Instant::now();
        history
            .position(StreamKey::Topic("t5"))
            .await
            .expect("position");
        let position = started.elapsed();
        println!(
            "{storage:?}: store rate at 1,000 topics after n stored: {}; a position {position:?}",
            report.join(", ")
        );
    }
}

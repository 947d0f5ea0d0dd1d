//! The `gpush.msgpack` subprotocol: every request kind and every push kind
//! as MessagePack maps in binary frames, with the exact maps the JSON
//! protocol has, payloads as bin byte for byte, bad input answered with
//! 30001 on a connection that stays open. Every scenario runs against a
//! two-edge cluster and a standalone edge.

use gpush_integration_tests::client::{MSGPACK_PROTOCOL, RawFrame};
use gpush_integration_tests::frames::{self, MsgValue, code, msgpack};
use gpush_integration_tests::{
    Cluster, Deployment, PushMsg, QUIET, Standalone, TIMEOUT, Via, WsClient, auth,
};
use serde_json::{Value, json};

/// Subscriptions per connection in these deployments, so that 30005 is
/// reached in a few requests.
const MAX_SUBSCRIPTIONS: usize = 3;

/// Runs `scenario` against a two-edge cluster and a standalone edge, as
/// two tests `<scenario>::cluster` and `<scenario>::standalone`.
macro_rules! on_both {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let d = Cluster::start(2, |c| c.max_subscriptions = MAX_SUBSCRIPTIONS).await;
                super::$scenario(&d).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                let d = Standalone::start(|c| c.max_subscriptions = MAX_SUBSCRIPTIONS).await;
                super::$scenario(&d).await;
            }
        }
    };
}

on_both!(every_request_kind_and_reply);
on_both!(bad_input_gets_30001_and_the_connection_survives);
on_both!(every_push_kind_carries_the_payload_as_bin);

/// A `gpush.msgpack` client on edge `edge` (wrapping around).
async fn connect(d: &impl Deployment, edge: usize, label: &str) -> WsClient {
    let label = format!(
        "{} {label} (msgpack, edge {})",
        d.name(),
        edge % d.edge_count()
    );
    WsClient::connect_with_protocol(&d.ws_url(edge), MSGPACK_PROTOCOL)
        .await
        .with_label(label)
}

/// `reply` without `key`, whose value must pass `check`.
fn without(mut reply: Value, key: &str, check: impl Fn(&Value) -> bool) -> Value {
    let value = reply.as_object_mut().and_then(|object| object.remove(key));
    assert!(
        value.as_ref().is_some_and(check),
        "reply without a good {key}: {reply} ({key} {value:?})"
    );
    reply
}

/// `reply` without its `detail`, which must be a non-empty string.
fn without_detail(reply: Value) -> Value {
    without(reply, "detail", |d| {
        d.as_str().is_some_and(|d| !d.is_empty())
    })
}

/// A login reply without its `expires`, which must be a time in the
/// future (the test tokens expire in an hour).
fn without_expires(reply: Value) -> Value {
    without(reply, "expires", |e| {
        e.as_i64().is_some_and(|e| e > auth::now())
    })
}

/// A subscribe or login reply without its stream position (`offset`, a
/// number, and `epoch`, a string: both or neither; a standalone edge keeps
/// history, a cluster edge does not yet).
fn without_position(mut reply: Value) -> Value {
    let object = reply.as_object_mut().expect("a map");
    let offset = object.remove("offset");
    let epoch = object.remove("epoch");
    assert!(
        matches!((&offset, &epoch), (None, None))
            || (offset.as_ref().is_some_and(Value::is_u64)
                && epoch.as_ref().is_some_and(Value::is_string)),
        "reply with a bad position: {reply} (offset {offset:?}, epoch {epoch:?})"
    );
    reply
}

/// The request map `{"code":code, ...fields}`.
fn request(code: u64, fields: impl IntoIterator<Item = (&'static str, MsgValue)>) -> MsgValue {
    let mut request = MsgValue::map(fields);
    request.insert("code", code.into());
    request
}

/// After whatever happened on `client`, a fresh subscribe works and a push
/// to it arrives as MessagePack.
async fn assert_still_usable(d: &impl Deployment, client: &mut WsClient, topic: &str) {
    client.must_subscribe(topic).await;
    let data = [0xc1, 0xff, topic.len() as u8];
    d.push_grpc("", topic, &data).await;
    client
        .expect_msgpack_push(&msgpack::public(topic, &data))
        .await;
    let reply = client.unsubscribe(topic).await;
    client.assert_code(&reply, code::UNSUBSCRIBED, "unsubscribe after a check");
}

/// Codes 1 to 6 and text `ping`, each with its success reply and every
/// error reply it can get, as the exact maps of the JSON protocol with the
/// request's id echoed (string, number, or absent).
async fn every_request_kind_and_reply(d: &impl Deployment) {
    let mut c = connect(d, 0, "c").await;
    assert_eq!(
        c.greeting(),
        &json!({"code": 20000, "message": "connected"}),
        "greeting"
    );

    // 1: subscribe; ids of each kind are echoed as sent.
    let reply = c
        .request_value(json!({"code": 1, "topic": "news", "id": "s-1"}))
        .await;
    assert_eq!(
        without_position(reply),
        json!({"code": 20001, "message": "subscribed", "topic": "news", "id": "s-1"})
    );
    let reply = c
        .request_value(json!({"code": 1, "topic": "news", "id": 7}))
        .await;
    assert_eq!(
        without_position(reply),
        json!({"code": 20001, "message": "subscribed", "topic": "news", "id": 7})
    );
    c.send_msgpack(&request(1, [("topic", "sports".into())]))
        .await;
    assert_eq!(
        without_position(c.next_reply(TIMEOUT).await),
        json!({"code": 20001, "message": "subscribed", "topic": "sports"}),
        "no id, none echoed"
    );
    // A topic sent as bin that spells UTF-8 is that topic.
    let reply = c
        .request_msgpack(request(
            1,
            [("topic", MsgValue::bin(b"weather")), ("id", "b-1".into())],
        ))
        .await;
    assert_eq!(
        without_position(reply),
        json!({"code": 20001, "message": "subscribed", "topic": "weather", "id": "b-1"})
    );
    // 30005: three subscriptions are the limit here.
    let reply = c
        .request_value(json!({"code": 1, "topic": "one-more", "id": "lim-1"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30005, "message": "limit reached", "topic": "one-more", "id": "lim-1"})
    );
    // 30004: an invalid topic.
    let reply = c
        .request_value(json!({"code": 1, "topic": "a\nb", "id": "inv-1"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30004, "message": "invalid topic", "id": "inv-1"})
    );

    // 2: unsubscribe.
    for (topic, id) in [("sports", json!(-2)), ("weather", json!("u-1"))] {
        let reply = c
            .request_value(json!({"code": 2, "topic": topic, "id": id}))
            .await;
        assert_eq!(
            reply,
            json!({"code": 20002, "message": "unsubscribed", "topic": topic, "id": id})
        );
    }
    let reply = c
        .request_value(json!({"code": 2, "topic": "", "id": "inv-2"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30004, "message": "invalid topic", "id": "inv-2"})
    );

    // 5 and 6 before login: 30002.
    for (code, id) in [(5, "p-1"), (6, "p-2")] {
        let reply = c
            .request_value(json!({"code": code, "topic": "inbox", "id": id}))
            .await;
        assert_eq!(
            reply,
            json!({"code": 30002, "message": "not logged in", "topic": "inbox", "id": id}),
            "code {code} before login"
        );
    }

    // 3: login. Refused tokens get 30003 and change nothing.
    let reply = c
        .request_value(json!({"code": 3, "data": "not-a-jwt", "id": "l-1"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30003, "message": "authentication failed", "id": "l-1"})
    );
    let reply = c
        .request_msgpack(request(
            3,
            [("data", MsgValue::bin(&[0xff, 0x00])), ("id", "l-2".into())],
        ))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30003, "message": "authentication failed", "id": "l-2"}),
        "a bin token that is not UTF-8 is no token"
    );
    let reply = c
        .request_value(json!({"code": 3, "data": auth::hs256("mp-ann"), "id": "l-3"}))
        .await;
    assert_eq!(
        without_position(without_expires(reply)),
        json!({"code": 20003, "message": "logged in", "uid": "mp-ann", "id": "l-3"}),
        "str token"
    );
    let token = auth::hs256("mp-bob");
    let reply = c
        .request_msgpack(request(
            3,
            [
                ("data", MsgValue::bin(token.as_bytes())),
                ("id", 33u64.into()),
            ],
        ))
        .await;
    assert_eq!(
        without_position(without_expires(reply)),
        json!({"code": 20003, "message": "logged in", "uid": "mp-bob", "id": 33}),
        "bin token"
    );

    // 5: private subscribe, up to the limit (news and two private topics
    // fill the three slots).
    let reply = c
        .request_value(json!({"code": 5, "topic": "inbox", "id": "ps-1"}))
        .await;
    assert_eq!(
        without_position(reply),
        json!({"code": 20001, "message": "subscribed", "topic": "inbox", "id": "ps-1"})
    );
    let reply = c
        .request_value(json!({"code": 5, "topic": "alerts", "id": "ps-2"}))
        .await;
    assert_eq!(
        without_position(reply),
        json!({"code": 20001, "message": "subscribed", "topic": "alerts", "id": "ps-2"})
    );
    let reply = c
        .request_value(json!({"code": 5, "topic": "spam", "id": "ps-3"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30005, "message": "limit reached", "topic": "spam", "id": "ps-3"})
    );
    let reply = c
        .request_value(json!({"code": 5, "topic": "\u{7f}", "id": "ps-4"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30004, "message": "invalid topic", "id": "ps-4"})
    );
    d.push_grpc("mp-bob", "inbox", b"\x00for bob").await;
    c.expect_msgpack_push(&msgpack::private("inbox", b"\x00for bob"))
        .await;

    // 6: private unsubscribe.
    let reply = c
        .request_value(json!({"code": 6, "topic": "alerts", "id": "pu-1"}))
        .await;
    assert_eq!(
        reply,
        json!({"code": 20002, "message": "unsubscribed", "topic": "alerts", "id": "pu-1"})
    );
    let reply = c
        .request_value(json!({"code": 6, "topic": "", "id": "pu-2"}))
        .await;
    assert_eq!(
        without_detail(reply),
        json!({"code": 30004, "message": "invalid topic", "id": "pu-2"})
    );

    // 4: logout, with and without an id.
    let reply = c.request_value(json!({"code": 4, "id": "out-1"})).await;
    assert_eq!(
        reply,
        json!({"code": 20004, "message": "logged out", "id": "out-1"})
    );
    c.send_msgpack(&request(4, [])).await;
    assert_eq!(
        c.next_reply(TIMEOUT).await,
        json!({"code": 20004, "message": "logged out"})
    );
    d.push_grpc("mp-bob", "inbox", b"after logout").await;
    d.push_grpc("mp-bob", "", b"after logout").await;

    // Text `ping` is answered with text `pong`, a WebSocket ping with a pong.
    c.send_text("ping").await;
    assert_eq!(c.next_text(TIMEOUT).await, "pong");
    c.send_text(" PING\n").await;
    assert_eq!(c.next_text(TIMEOUT).await, "pong");
    c.ws_ping(b"mp").await;

    // The public subscription made first still delivers.
    d.push_http("", "news", b"{\"still\":1}").await;
    c.expect_msgpack_push(&msgpack::public("news", b"{\"still\":1}"))
        .await;
    c.expect_no_push(QUIET).await;
}

/// Text frames, bytes that are not MessagePack, values that are not maps
/// and maps that are not requests all get 30001 (in MessagePack, with the
/// id when it could be read), and the connection keeps working.
async fn bad_input_gets_30001_and_the_connection_survives(d: &impl Deployment) {
    let mut c = connect(d, 1, "c").await;

    // Not a request at all: no id to echo.
    let map_with_int_key = vec![0x81, 0x01, 0x01];
    let mut trailing = request(4, [("id", "t".into())]).encode();
    trailing.push(0xc0);
    let unparsable: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "JSON text",
            Some(r#"{"code":1,"topic":"x","id":"t"}"#),
            vec![],
        ),
        ("text", Some("hello"), vec![]),
        ("JSON bytes", None, br#"{"code":1,"topic":"x"}"#.to_vec()),
        ("empty", None, vec![]),
        ("reserved marker", None, vec![0xc1]),
        (
            "truncated map",
            None,
            vec![0x82, 0xa4, b'c', b'o', b'd', b'e'],
        ),
        ("array", None, MsgValue::Array(vec![1u64.into()]).encode()),
        ("str", None, MsgValue::from("subscribe").encode()),
        ("int key", None, map_with_int_key),
        ("trailing bytes", None, trailing),
    ];
    for (i, (what, text, bytes)) in unparsable.into_iter().enumerate() {
        match text {
            Some(text) => c.send_text(text).await,
            None => c.send_binary(&bytes).await,
        }
        let reply = without_detail(c.next_reply(TIMEOUT).await);
        assert_eq!(
            reply,
            json!({"code": 30001, "message": "bad request"}),
            "{what}"
        );
        assert_still_usable(d, &mut c, &format!("alive-{i}")).await;
    }

    // Maps that are not valid requests: the id is echoed and the detail
    // names the field.
    let with_id: Vec<(MsgValue, &str)> = vec![
        (MsgValue::map([]), "code"),
        (MsgValue::map([("topic", "x".into())]), "code"),
        (request(99, [("topic", "x".into())]), "code"),
        (
            MsgValue::map([("code", "1".into()), ("topic", "x".into())]),
            "code",
        ),
        (
            MsgValue::map([("code", MsgValue::Float(1.5)), ("topic", "x".into())]),
            "code",
        ),
        (request(1, []), "topic"),
        (request(2, [("topic", MsgValue::Nil)]), "topic"),
        (request(5, [("topic", 5u64.into())]), "topic"),
        (request(1, [("topic", MsgValue::bin(&[0xff]))]), "topic"),
        (request(3, []), "data"),
        (request(3, [("data", MsgValue::Nil)]), "data"),
    ];
    for (i, (bad, field)) in with_id.into_iter().enumerate() {
        let id = format!("bad-{i}");
        let mut sent = bad.clone();
        sent.insert("id", id.as_str().into());
        let reply = c.request_msgpack(sent).await;
        let detail = reply["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.contains(field),
            "detail of the reply to {bad:?} should name {field:?}: {reply}"
        );
        assert_eq!(
            without_detail(reply),
            json!({"code": 30001, "message": "bad request", "id": id}),
            "{bad:?}"
        );
        assert_still_usable(d, &mut c, &format!("alive-map-{i}")).await;
    }
    // An id that is neither a number nor a string is not echoed.
    c.send_msgpack(&request(
        1,
        [
            ("topic", "x".into()),
            ("id", MsgValue::Array(vec![1u64.into()])),
        ],
    ))
    .await;
    let reply = without_detail(c.next_reply(TIMEOUT).await);
    assert_eq!(reply, json!({"code": 30001, "message": "bad request"}));
    c.expect_no_push(QUIET).await;
}

/// Public (10001), private (10002 with topic), user-wide (10002 without)
/// and everyone (10003) pushes, over every push call, reach MessagePack
/// connections on every edge as `{"code","topic"?,"data":bin}` with the
/// payload byte for byte, JSON, text or not UTF-8 alike; JSON and raw
/// connections subscribed alongside still get their own forms.
async fn every_push_kind_carries_the_payload_as_bin(d: &impl Deployment) {
    let mut subscribers = Vec::new();
    for edge in 0..2 {
        let mut c = connect(d, edge, &format!("news-{edge}")).await;
        c.must_subscribe("news").await;
        subscribers.push(c);
    }
    let mut orders = connect(d, 1, "u-orders").await;
    orders.must_login(&auth::hs256("mp-u"), "mp-u").await;
    orders.must_sub_private("orders").await;
    let mut plain = connect(d, 0, "u-plain").await;
    plain.must_login(&auth::hs256("mp-u"), "mp-u").await;
    // Another user with the same private topic gets none of mp-u's pushes.
    let mut other = connect(d, 0, "v-orders").await;
    other.must_login(&auth::hs256("mp-v"), "mp-v").await;
    other.must_sub_private("orders").await;
    let mut json_client = d.connect(1, "json").await;
    json_client.must_subscribe("news").await;
    let mut raw = d.connect_raw(0, "raw").await;
    raw.must_subscribe("news").await;

    let payloads: [&[u8]; 5] = [
        br#"{"a":1}"#,
        "h\u{e9}llo \u{2713}".as_bytes(),
        &[0xff, 0x00, 0x80, 0xc1, 0xfe],
        // A MessagePack map: still bytes, not embedded.
        &[0x81, 0xa1, b'a', 0x01],
        b"\xc3\x28 not utf-8",
    ];
    for (via, payload) in Via::ALL.into_iter().zip(payloads.iter().cycle()) {
        let data = |route: &str| {
            let suffix = format!(" {} {route}", via.name());
            [*payload, suffix.as_bytes()].concat()
        };
        let (public, private, user, everyone) = (
            data("public"),
            data("private"),
            data("user"),
            data("everyone"),
        );
        d.send(
            via,
            &[
                PushMsg::public("news", public.clone()),
                PushMsg::private("mp-u", "orders", private.clone()),
                PushMsg::user("mp-u", user.clone()),
                PushMsg::everyone(everyone.clone()),
            ],
        )
        .await;
        for c in &mut subscribers {
            c.expect_msgpack_pushes_unordered(&[
                msgpack::public("news", &public),
                msgpack::everyone(&everyone),
            ])
            .await;
        }
        orders
            .expect_msgpack_pushes_unordered(&[
                msgpack::private("orders", &private),
                msgpack::user(&user),
                msgpack::everyone(&everyone),
            ])
            .await;
        plain
            .expect_msgpack_pushes_unordered(&[msgpack::user(&user), msgpack::everyone(&everyone)])
            .await;
        other
            .expect_msgpack_push(&msgpack::everyone(&everyone))
            .await;
        json_client
            .expect_pushes_unordered(&[
                frames::public("news", &public),
                frames::everyone(&everyone),
            ])
            .await;
        let mut got = vec![raw.next_raw(TIMEOUT).await, raw.next_raw(TIMEOUT).await];
        let mut want = vec![raw_frame(&public), raw_frame(&everyone)];
        got.sort_by_key(|f| format!("{f:?}"));
        want.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(got, want, "raw pushes via {}", via.name());
    }

    // Spot checks independent of frames::msgpack: the exact map, bin and
    // not str even for text, and a payload large enough for bin 16.
    d.push_http("", "news", b"plain text").await;
    let push = subscribers[0].next_msgpack_push(TIMEOUT).await;
    let expected = MsgValue::map([
        ("code", 10001u64.into()),
        ("topic", "news".into()),
        ("data", MsgValue::Bin(b"plain text".to_vec())),
    ]);
    // Where history is kept, the history offset is an integer key too.
    if d.name() == "standalone" {
        assert!(
            matches!(push.get("offset"), Some(MsgValue::Int(n)) if *n > 0),
            "{push:?}"
        );
    }
    assert_eq!(push.comparable(&expected), expected);
    let big: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8 | 0x80).collect();
    d.push_grpc("mp-u", "", &big).await;
    for c in [&mut orders, &mut plain] {
        let push = c.next_msgpack_push(TIMEOUT).await;
        assert_eq!(push.get("data"), Some(&MsgValue::Bin(big.clone())));
        let expected = msgpack::user(&big);
        assert_eq!(push.comparable(&expected), expected);
    }
    subscribers[1]
        .expect_msgpack_push(&msgpack::public("news", b"plain text"))
        .await;
    json_client
        .expect_push(&frames::public("news", b"plain text"))
        .await;
    assert_eq!(
        raw.next_raw(TIMEOUT).await,
        RawFrame::Text("plain text".into())
    );

    let mut all: Vec<&mut WsClient> = subscribers.iter_mut().collect();
    all.extend([
        &mut orders,
        &mut plain,
        &mut other,
        &mut json_client,
        &mut raw,
    ]);
    gpush_integration_tests::client::expect_all_quiet(all).await;
}

fn raw_frame(payload: &[u8]) -> RawFrame {
    match std::str::from_utf8(payload) {
        Ok(text) => RawFrame::Text(text.to_owned()),
        Err(_) => RawFrame::Binary(payload.to_vec()),
    }
}

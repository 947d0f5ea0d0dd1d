//! Fuzz harnesses for the parsers an attacker reaches first, shared by the
//! cargo-fuzz targets (`integration-tests/fuzz/fuzz_targets/`) and the
//! corpus replay test (`tests/fuzz_corpus.rs`), so both run the same checks.
//!
//! Each harness takes arbitrary bytes. The parser under test must not panic
//! on any input; where a cheap invariant ties its output to something else
//! (a re-encode, the other wire format, another chunking, validation), the
//! harness asserts it, so a broken invariant is a crash like any panic.
//!
//! | target | parser | invariants |
//! |---|---|---|
//! | `ws_frames` | [`FrameReader`] | any chunking gives the same messages and error; each message re-encodes to itself |
//! | `request` | [`protocol::parse_request`], [`protocol::parse_msgpack_request`] | a JSON object and its MessagePack twin parse alike; a parsed request re-encodes to itself in both formats |
//! | `envelope` | [`envelope::decode`] | `decode(encode(p)) == p`, encoding is deterministic, the route's subject is literal |
//! | `push_body` | the ingress HTTP router (`/v1/pushData`, `/v1/pushBatch`) | only 200, 400 or 413; a refused body publishes nothing; an accepted push has valid names, fits the limits, survives the bus envelope and is accepted again when re-sent |
//!
//! [`TARGETS`] lists them with their hand-written seeds, which are
//! committed in the corpus as `seed-<name>` files.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gpush_common::push::validate_optional_name;
use gpush_common::{Bus, LocalDelivery, Push, Subjects, envelope};
use gpush_edge::close::{self, Close};
use gpush_edge::protocol::{self, Command, Request as ClientRequest};
use gpush_edge::ws::{FrameReader, Incoming, ReadError};
use gpush_ingress::{Edges, PushApiConfig};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use tower::ServiceExt as _;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// One fuzz target: its name (the cargo-fuzz target and corpus directory),
/// its harness and its seeds.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name of the fuzz target and of its directory under `fuzz/corpus/`.
    pub name: &'static str,
    /// The harness: panics only when the parser panics or an invariant
    /// does not hold.
    pub run: fn(&[u8]),
    /// Hand-written inputs, as `(name, bytes)`.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ws_frames",
        run: ws_frames,
        seeds: ws_frames_seeds,
    },
    Target {
        name: "request",
        run: request,
        seeds: request_seeds,
    },
    Target {
        name: "envelope",
        run: envelope,
        seeds: envelope_seeds,
    },
    Target {
        name: "push_body",
        run: push_body,
        seeds: push_body_seeds,
    },
];

// ---------------------------------------------------------------------------
// ws_frames

/// `max_message` the frame harness reads with: small, so that oversized and
/// fragmented messages are within the fuzzer's reach.
pub const FRAME_MAX_MESSAGE: usize = 512;

/// What a [`FrameReader`] made of some input: the messages, and then
/// either the error that ends the connection or whether it is idle.
#[derive(Debug, PartialEq)]
struct Read {
    messages: Vec<Incoming>,
    end: Result<bool, ReadError>,
}

fn read_in_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Read {
    let mut reader = FrameReader::default();
    let mut messages = Vec::new();
    for chunk in chunks {
        if let Err(error) = reader.feed(chunk, FRAME_MAX_MESSAGE, &mut messages) {
            return Read {
                messages,
                end: Err(error),
            };
        }
    }
    Read {
        messages,
        end: Ok(reader.is_idle()),
    }
}

/// Splits `data` into chunks whose sizes (1 to 17) come from its own bytes,
/// so the fuzzer explores chunkings along with contents.
fn uneven_chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    let mut sizes = data.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().map_or(1, |b| 1 + usize::from(b % 17));
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// A masked client frame. The all-zero key leaves the payload as it is.
fn client_frame(opcode: OpCode, is_final: bool, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final,
        opcode,
        mask: Some(key),
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    header
        .format(len, &mut out)
        .expect("writing into a Vec cannot fail");
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// The client frame that carries `message` again.
fn reencode(message: &Incoming) -> Vec<u8> {
    let (opcode, payload) = match message {
        Incoming::Text(text) => (OpCode::Data(Data::Text), text.to_vec()),
        Incoming::Binary(data) => (OpCode::Data(Data::Binary), data.to_vec()),
        Incoming::Ping(data) => (OpCode::Control(Control::Ping), data.to_vec()),
        Incoming::Pong => (OpCode::Control(Control::Pong), Vec::new()),
        Incoming::Close(code) => (
            OpCode::Control(Control::Close),
            code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default(),
        ),
    };
    client_frame(opcode, true, [0; 4], &payload)
}

/// Client WebSocket frames through [`FrameReader`].
pub fn ws_frames(data: &[u8]) {
    let whole = read_in_chunks([data]);
    assert_eq!(read_in_chunks(data.chunks(1)), whole, "byte by byte");
    assert_eq!(read_in_chunks(uneven_chunks(data)), whole, "uneven chunks");
    if let Err(error) = &whole.end {
        // Every error maps to a close code the connection sends.
        assert!(
            [close::PROTOCOL_ERROR, close::INVALID_DATA, close::TOO_BIG]
                .contains(&Close::from(error).code()),
            "{error}"
        );
    }
    for message in &whole.messages {
        match message {
            Incoming::Text(text) => assert!(std::str::from_utf8(text).is_ok()),
            Incoming::Binary(data) => assert!(data.len() <= FRAME_MAX_MESSAGE),
            Incoming::Ping(data) => assert!(data.len() <= 125),
            Incoming::Pong | Incoming::Close(_) => {}
        }
        let again = read_in_chunks([reencode(message).as_slice()]);
        assert_eq!(
            again.messages.as_slice(),
            std::slice::from_ref(message),
            "re-encoded"
        );
        assert_eq!(again.end, Ok(true), "{message:?} re-encoded");
    }
}

fn ws_frames_seeds() -> Vec<(String, Vec<u8>)> {
    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BINARY: OpCode = OpCode::Data(Data::Binary);
    const CONTINUE: OpCode = OpCode::Data(Data::Continue);
    const PING: OpCode = OpCode::Control(Control::Ping);
    const PONG: OpCode = OpCode::Control(Control::Pong);
    const CLOSE: OpCode = OpCode::Control(Control::Close);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let frame = |opcode, fin, payload: &[u8]| client_frame(opcode, fin, key, payload);
    let subscribe = br#"{"code":1,"topic":"news","id":1}"#;
    let msgpack =
        rmp_serde::to_vec_named(&json!({"code": 1, "topic": "news"})).expect("encode a request");
    let mut unmasked = Vec::new();
    FrameHeader::default()
        .format(2, &mut unmasked)
        .expect("format");
    unmasked.extend_from_slice(b"hi");
    // A frame with a reserved bit or opcode, patched into a valid one.
    let patched = |first_byte: u8| {
        let mut f = frame(TEXT, true, b"x");
        f[0] = first_byte;
        f
    };
    let mut two_frames = frame(TEXT, true, subscribe);
    two_frames.extend(frame(BINARY, true, &msgpack));
    let mut fragmented = frame(TEXT, false, b"{\"code\":");
    fragmented.extend(frame(PING, true, b"keepalive"));
    fragmented.extend(frame(CONTINUE, false, b"4,"));
    fragmented.extend(frame(PONG, true, b""));
    fragmented.extend(frame(CONTINUE, true, b"\"id\":\"x\"}"));
    let mut fragmented_binary = frame(BINARY, false, &msgpack[..3]);
    fragmented_binary.extend(frame(CONTINUE, true, &msgpack[3..]));
    let mut nested = frame(TEXT, false, b"a");
    nested.extend(frame(TEXT, true, b"b"));
    let mut truncated = frame(TEXT, true, subscribe);
    truncated.truncate(truncated.len() - 5);
    // "é" split across two fragments: valid once whole.
    let mut split_utf8 = frame(TEXT, false, b"\xc3");
    split_utf8.extend(frame(CONTINUE, true, b"\xa9"));
    let mut close_reason = 1000u16.to_be_bytes().to_vec();
    close_reason.extend_from_slice(b"bye");
    let mut close_bad_reason = 1000u16.to_be_bytes().to_vec();
    close_bad_reason.push(0xff);
    let mut too_many_fragments = frame(BINARY, false, &[b'a'; 300]);
    too_many_fragments.extend(frame(CONTINUE, true, &[b'a'; 300]));
    vec![
        ("text", frame(TEXT, true, subscribe)),
        ("text-zero-key", client_frame(TEXT, true, [0; 4], subscribe)),
        ("binary-msgpack", frame(BINARY, true, &msgpack)),
        ("two-frames", two_frames),
        ("fragmented-with-controls", fragmented),
        ("fragmented-binary", fragmented_binary),
        ("split-utf8", split_utf8),
        ("ping", frame(PING, true, b"p")),
        ("pong", frame(PONG, true, b"")),
        ("close-empty", frame(CLOSE, true, b"")),
        ("close-code-reason", frame(CLOSE, true, &close_reason)),
        ("close-one-byte", frame(CLOSE, true, b"\x03")),
        ("close-bad-utf8", frame(CLOSE, true, &close_bad_reason)),
        ("len16", frame(BINARY, true, &[7; 300])),
        (
            "len64-too-big",
            frame(BINARY, true, &[7; 70_000])[..20].to_vec(),
        ),
        ("too-many-fragments", too_many_fragments),
        ("unmasked", unmasked),
        ("rsv1", patched(0xc1)),
        ("reserved-data-opcode", patched(0x83)),
        ("reserved-control-opcode", patched(0x8b)),
        ("control-not-final", frame(PING, false, b"")),
        ("control-too-long", frame(PING, true, &[0; 126])),
        ("continuation-alone", frame(CONTINUE, true, b"x")),
        ("message-inside-fragmented", nested),
        ("invalid-utf8", frame(TEXT, true, b"\xff\xfe")),
        ("truncated", truncated),
        ("empty", Vec::new()),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_owned(), bytes))
    .collect()
}

// ---------------------------------------------------------------------------
// request

/// Client requests, as text (JSON) and as binary (MessagePack) messages.
pub fn request(data: &[u8]) {
    let json = protocol::parse_request(data);
    check_request(&json);
    if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
        // The same object in MessagePack parses to the same request, or
        // is refused for the same reason with the same id.
        let twin = rmp_serde::to_vec_named(&value).expect("a JSON value encodes as MessagePack");
        assert_eq!(protocol::parse_msgpack_request(&twin), json, "{value}");
    }
    check_request(&protocol::parse_msgpack_request(data));
}

/// A parsed request re-encodes to itself in both formats; a refused one
/// has a detail and an id that is a number or a string.
fn check_request(result: &Result<ClientRequest, protocol::BadRequest>) {
    let id_ok = |id: &Option<Value>| matches!(id, None | Some(Value::Number(_) | Value::String(_)));
    match result {
        Ok(request) => {
            assert!(id_ok(&request.id), "{request:?}");
            let canonical = Value::Object(canonical(request));
            let text = serde_json::to_vec(&canonical).expect("a JSON value encodes");
            assert_eq!(
                protocol::parse_request(&text).as_ref(),
                Ok(request),
                "{canonical}"
            );
            let binary =
                rmp_serde::to_vec_named(&canonical).expect("a JSON value encodes as MessagePack");
            assert_eq!(
                protocol::parse_msgpack_request(&binary).as_ref(),
                Ok(request),
                "{canonical}"
            );
        }
        Err(bad) => {
            assert!(id_ok(&bad.id), "{bad:?}");
            assert!(!bad.detail.is_empty());
        }
    }
}

/// The plainest object that spells `request`.
fn canonical(request: &ClientRequest) -> Map<String, Value> {
    let (code, topic, data) = match &request.command {
        Command::Subscribe(topic) => (protocol::SUBSCRIBE, Some(topic), None),
        Command::Unsubscribe(topic) => (protocol::UNSUBSCRIBE, Some(topic), None),
        Command::Login(token) => (protocol::LOGIN, None, Some(token)),
        Command::Logout => (protocol::LOGOUT, None, None),
        Command::SubscribePrivate(topic) => (protocol::SUBSCRIBE_PRIVATE, Some(topic), None),
        Command::UnsubscribePrivate(topic) => (protocol::UNSUBSCRIBE_PRIVATE, Some(topic), None),
    };
    let mut object = Map::new();
    object.insert("code".into(), code.into());
    if let Some(topic) = topic {
        object.insert("topic".into(), topic.as_str().into());
    }
    if let Some(data) = data {
        object.insert("data".into(), data.clone());
    }
    if let Some(id) = &request.id {
        object.insert("id".into(), id.clone());
    }
    object
}

fn request_seeds() -> Vec<(String, Vec<u8>)> {
    let valid = [
        ("subscribe", json!({"code": 1, "topic": "news", "id": 1})),
        (
            "unsubscribe",
            json!({"code": 2, "topic": "news", "id": "u-1"}),
        ),
        (
            "login",
            json!({"code": 3, "data": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}),
        ),
        (
            "login-object",
            json!({"code": 3, "data": {"webhook": ["token", 1, 2.5, null, true]}, "id": 1.5}),
        ),
        ("logout", json!({"code": 4})),
        (
            "subscribe-private",
            json!({"code": 5, "topic": "inbox", "id": -3}),
        ),
        ("unsubscribe-private", json!({"code": 6, "topic": "inbox"})),
        (
            "subscribe-tricky-topic",
            json!({"code": 1, "topic": "a.b *>%2E\u{e4}\u{6f22}\u{1f980}"}),
        ),
        (
            "extra-keys",
            json!({"code": 4, "topic": 5, "extra": [1, {"a": null}]}),
        ),
    ];
    let refused = [
        ("missing-code", json!({"topic": "a", "id": "x"})),
        ("string-code", json!({"code": "1", "id": "x"})),
        ("float-code", json!({"code": 1.0, "topic": "a"})),
        ("unknown-code", json!({"code": 9, "id": "x"})),
        ("huge-code", json!({"code": u64::MAX, "topic": "a"})),
        ("missing-topic", json!({"code": 1, "id": "x"})),
        ("null-topic", json!({"code": 1, "topic": null})),
        ("number-topic", json!({"code": 5, "topic": 3, "id": "x"})),
        ("missing-token", json!({"code": 3, "id": "x"})),
        ("array-id", json!({"code": 1, "topic": "a", "id": [1]})),
        ("not-an-object", json!([1, 2])),
    ];
    let mut seeds = Vec::new();
    for (name, value) in valid.iter().chain(&refused) {
        seeds.push((name.to_string(), value.to_string().into_bytes()));
    }
    for (name, value) in &valid {
        let bytes = rmp_serde::to_vec_named(value).expect("encode");
        seeds.push((format!("msgpack-{name}"), bytes));
    }
    // MessagePack only: bin for strings, a non-UTF-8 bin, trailing bytes,
    // an integer key, an ext value, nesting, a lying array length.
    let bin_token = [
        &b"\x83\xa4code\x03\xa4data\xc4\x03tok\xa2id\x07"[..],
        b"\x82\xa4code\x01\xa5topic\xc4\x04news",
        b"\x82\xa4code\x01\xa5topic\xc4\x01\xff",
        b"\x82\xa4code\x03\xa4data\xc4\x02\xff\x00",
        b"\x81\xa4code\x04\xc0",
        b"\x81\x01\x01",
        b"\x82\xa4code\x03\xa4data\xd4\x01\x00",
        b"\x82\xa4code\x03\xa4data\x91\x91\x91\x91\x90",
        b"\x82\xa4code\x03\xa4data\xdd\xff\xff\xff\xff",
        b"\x82\xa4code\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa5topic\xa1a",
    ];
    let bin_names = [
        "msgpack-bin-token",
        "msgpack-bin-topic",
        "msgpack-non-utf8-topic",
        "msgpack-non-utf8-token",
        "msgpack-trailing-byte",
        "msgpack-int-key",
        "msgpack-ext-token",
        "msgpack-nested-token",
        "msgpack-lying-array-length",
        "msgpack-float-code",
    ];
    for (name, bytes) in bin_names.into_iter().zip(bin_token) {
        seeds.push((name.to_owned(), bytes.to_vec()));
    }
    seeds.push(("invalid-json".into(), b"{\"code\":1,".to_vec()));
    seeds.push((
        "deep-json".into(),
        [&[b'['; 200][..], &[b']'; 200]].concat(),
    ));
    seeds
}

// ---------------------------------------------------------------------------
// envelope

/// Bus message bodies through [`envelope::decode`].
pub fn envelope(data: &[u8]) {
    let Ok(push) = envelope::decode(data) else {
        return;
    };
    let body = envelope::encode(&push);
    let again = envelope::decode(&body).expect("an encoded envelope decodes");
    assert_eq!(again, push);
    assert_eq!(envelope::encode(&again), body, "encoding is deterministic");
    assert_literal_subject(&Subjects::default().for_route(push.route()));
}

/// A subject a push is published under is a literal: non-empty tokens of
/// ASCII letters, digits, `-`, `_` and `%` (the escape), so no name turns
/// into a wildcard or an extra token.
fn assert_literal_subject(subject: &str) {
    for token in subject.split('.') {
        assert!(
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
            "{subject:?}"
        );
    }
}

fn envelope_seeds() -> Vec<(String, Vec<u8>)> {
    let push = |uid: &str, topic: &str, data: &[u8]| Push {
        uid: uid.into(),
        topic: topic.into(),
        data: data.to_vec().into(),
        sent_at_us: 1_700_000_000_000_000,
    };
    let encoded = |p: Push| envelope::encode(&p).to_vec();
    vec![
        ("everyone", encoded(push("", "", b"hello"))),
        ("topic", encoded(push("", "news", br#"{"a":1}"#))),
        ("user", encoded(push("u-1", "", b"\x00\xff"))),
        ("private", encoded(push("u.1", "a*b >c", b"x"))),
        ("large-data", encoded(push("", "t", &[0xab; 300]))),
        (
            "unknown-key",
            b"\x85\xa1u\xa0\xa1t\xa1x\xa1d\xc4\x02hi\xa2ts\x05\xa5extra\x09".to_vec(),
        ),
        ("only-topic", b"\x81\xa1t\xa4news".to_vec()),
        ("empty-map", b"\x80".to_vec()),
        ("array-form", b"\x94\xa1u\xa1t\xc4\x01d\x07".to_vec()),
        ("data-as-array", b"\x81\xa1d\x92\x01\x02".to_vec()),
        ("wrong-type", b"\x81\xa1u\x01".to_vec()),
        ("lying-map-length", b"\xde\xff\xff".to_vec()),
        ("json", br#"{"u":1}"#.to_vec()),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_owned(), bytes))
    .collect()
}

// ---------------------------------------------------------------------------
// push_body

/// Limits of the push API the harness calls: small, so that each limit is
/// within the fuzzer's reach.
pub fn push_config() -> PushApiConfig {
    PushApiConfig {
        max_payload: 64,
        max_batch: 4,
        max_name_len: 32,
        ..PushApiConfig::default()
    }
}

/// Collects what the push API publishes.
#[derive(Default)]
struct Recorder(Mutex<Vec<Push>>);

impl LocalDelivery for Recorder {
    fn deliver(&self, push: &Push) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(push.clone());
    }
}

impl Recorder {
    fn take(&self) -> Vec<Push> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The ingress HTTP router on an in-process bus, called without a socket.
struct PushServer {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    recorder: Arc<Recorder>,
}

impl PushServer {
    fn new() -> Self {
        let recorder = Arc::new(Recorder::default());
        let api = gpush_ingress::PushApi::new(Bus::Local(recorder.clone()), push_config());
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime"),
            app: gpush_ingress::http::router(api, Edges::Disabled),
            recorder,
        }
    }

    /// POSTs `body` as JSON to `path`: the status, the JSON answer and
    /// what was published.
    fn post(&self, path: &str, body: &[u8]) -> (StatusCode, Value, Vec<Push>) {
        self.recorder.take();
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a valid request");
        let (status, answer) = self.runtime.block_on(async {
            let response = self
                .app
                .clone()
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            let status = response.status();
            let answer = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("an in-memory body");
            (status, answer)
        });
        let answer = serde_json::from_slice(&answer).expect("answers are JSON");
        (status, answer, self.recorder.take())
    }
}

thread_local! {
    static PUSH_SERVER: PushServer = PushServer::new();
}

/// Push API request bodies, each sent to both `/v1/pushData` and
/// `/v1/pushBatch`.
pub fn push_body(data: &[u8]) {
    let config = push_config();
    PUSH_SERVER.with(|server| {
        for path in ["/v1/pushData", "/v1/pushBatch"] {
            let (status, answer, pushes) = server.post(path, data);
            if status != StatusCode::OK {
                assert!(
                    [StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE].contains(&status),
                    "{path}: {status} {answer}"
                );
                assert!(answer["code"].is_string(), "{path}: {answer}");
                assert!(pushes.is_empty(), "{path}: refused but published");
                continue;
            }
            assert_eq!(answer["accepted"], pushes.len(), "{path}: {answer}");
            let expected = if path == "/v1/pushData" {
                1..=1
            } else {
                1..=config.max_batch
            };
            assert!(expected.contains(&pushes.len()), "{path}: {answer}");
            for push in &pushes {
                check_accepted(server, &config, push);
            }
        }
    });
}

/// An accepted push has valid names, fits the payload limit, survives the
/// bus envelope, has a literal subject, and is accepted again as it is
/// when re-sent with its payload in base64.
fn check_accepted(server: &PushServer, config: &PushApiConfig, push: &Push) {
    assert_eq!(
        validate_optional_name(&push.uid, config.max_name_len),
        Ok(())
    );
    assert_eq!(
        validate_optional_name(&push.topic, config.max_name_len),
        Ok(())
    );
    assert!(push.data.len() <= config.max_payload);
    let decoded = envelope::decode(&envelope::encode(push)).expect("an encoded envelope decodes");
    assert_eq!(&decoded, push);
    assert_literal_subject(&Subjects::default().for_route(push.route()));
    let again = json!({"uid": push.uid, "topic": push.topic, "data": BASE64.encode(&push.data)});
    let (status, answer, pushes) = server.post("/v1/pushData", again.to_string().as_bytes());
    assert_eq!(status, StatusCode::OK, "{again} re-sent: {answer}");
    let same = |p: &Push| (p.uid.clone(), p.topic.clone(), p.data.clone());
    assert_eq!(
        pushes.iter().map(same).collect::<Vec<_>>(),
        [same(push)],
        "{again} re-sent"
    );
}

fn push_body_seeds() -> Vec<(String, Vec<u8>)> {
    let seeds = [
        ("everyone", json!({"data": "aGk="})),
        ("topic", json!({"topic": "news", "data": "eyJhIjoxfQ=="})),
        ("user", json!({"uid": "u-1", "data": ""})),
        (
            "private",
            json!({"uid": "u.1", "topic": "a*b >c", "data": "AP8"}),
        ),
        ("url-safe-base64", json!({"data": "-_8="})),
        ("unpadded-base64", json!({"data": "+/8"})),
        (
            "unicode-names",
            json!({"uid": "\u{e4}", "topic": "\u{6f22}\u{1f980}", "data": ""}),
        ),
        (
            "batch",
            json!({"messages": [
                {"topic": "t", "data": "MQ=="},
                {"uid": "7", "data": "Mg=="},
                {"uid": "7", "topic": "inbox", "data": "Mw=="},
                {"data": ""},
            ]}),
        ),
        ("batch-of-one", json!({"messages": [{"data": "aGk="}]})),
        ("empty-batch", json!({"messages": []})),
        (
            "batch-too-large",
            json!({"messages": [{"data": ""}, {"data": ""}, {"data": ""}, {"data": ""}, {"data": ""}]}),
        ),
        (
            "batch-one-bad",
            json!({"messages": [{"topic": "ok", "data": ""}, {"topic": "a\u{7}b", "data": ""}]}),
        ),
        ("control-char-topic", json!({"topic": "a\nb", "data": ""})),
        ("nul-uid", json!({"uid": "u\u{0}", "data": ""})),
        ("long-topic", json!({"topic": "x".repeat(33), "data": ""})),
        (
            "payload-too-large",
            json!({"data": BASE64.encode([0u8; 65])}),
        ),
        ("bad-base64", json!({"data": "not base64!"})),
        ("missing-data", json!({"topic": "t"})),
        ("number-topic", json!({"topic": 5, "data": ""})),
        ("null-uid", json!({"uid": null, "data": ""})),
    ];
    let mut out: Vec<(String, Vec<u8>)> = seeds
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_string().into_bytes()))
        .collect();
    out.push(("invalid-json".into(), b"{\"data\":".to_vec()));
    out.push(("not-an-object".into(), b"[\"aGk=\"]".to_vec()));
    out
}

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
//! | `ws_differential` | [`FrameReader`] and tungstenite's server-side reader | the same messages, and the same end: idle, pending, a close with an allowed code (RFC 6455 7.4), or the same failure code; known edge bugs listed in [`KNOWN_EDGE_CLOSE_CODE_BUGS`] and [`KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS`] |
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
use tungstenite::error::Error as TungsteniteError;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};

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
    /// Corpus files (names) that reproduce known bugs not fixed yet: the
    /// corpus replay expects exactly these to fail.
    pub known_failures: fn() -> Vec<&'static str>,
}

fn no_known_failures() -> Vec<&'static str> {
    Vec::new()
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ws_frames",
        run: ws_frames,
        seeds: ws_frames_seeds,
        known_failures: no_known_failures,
    },
    Target {
        name: "ws_differential",
        run: ws_differential,
        seeds: ws_differential_seeds,
        known_failures: ws_differential_known_failures,
    },
    Target {
        name: "request",
        run: request,
        seeds: request_seeds,
        known_failures: no_known_failures,
    },
    Target {
        name: "envelope",
        run: envelope,
        seeds: envelope_seeds,
        known_failures: no_known_failures,
    },
    Target {
        name: "push_body",
        run: push_body,
        seeds: push_body_seeds,
        known_failures: no_known_failures,
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
// ws_differential

/// Inputs of `ws_differential` on which the edge is known to disagree
/// with RFC 6455 7.4 on close codes; the corpus replay expects exactly
/// these files to fail. Empty: the edge validates close codes (0-999,
/// 1004-1006, 1015, 1016-2999 and 5000 and up fail with 1002).
pub const KNOWN_EDGE_CLOSE_CODE_BUGS: &[&str] = &[];

/// Inputs of `ws_differential` on which the edge is known to count a
/// control frame inside a fragmented message against the message size
/// limit; the corpus replay expects exactly these files to fail. Empty:
/// the edge counts only data frames (RFC 6455 5.4).
pub const KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS: &[&str] = &[];

fn ws_differential_known_failures() -> Vec<&'static str> {
    KNOWN_EDGE_CLOSE_CODE_BUGS
        .iter()
        .chain(KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS)
        .copied()
        .collect()
}

/// A message, as both readers report it. Pong payloads are not compared:
/// the edge drops them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
}

/// How reading some input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every byte used, at a message boundary.
    Idle,
    /// Waiting for the rest of a frame or of a fragmented message.
    Pending,
    /// A close frame the connection accepts, with its code.
    Close(Option<u16>),
    /// The connection fails with this close code (1002, 1007 or 1009).
    Fail(u16),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    end: End,
}

/// Close codes an endpoint may send, so may receive (RFC 6455 7.4.1 and
/// 7.4.2, with 1012-1014 from the IANA registry): 1000-1003, 1007-1014 and
/// 3000-4999. Anything else fails the connection with 1002, as Autobahn's
/// cases 7.9.* expect.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The edge's [`FrameReader`], given the whole input at once (`ws_frames`
/// already checks that chunking does not matter).
fn edge_outcome(data: &[u8]) -> Outcome {
    let read = read_in_chunks([data]);
    let mut events = Vec::new();
    for message in read.messages {
        events.push(match message {
            Incoming::Text(text) => Event::Text(text.to_vec()),
            Incoming::Binary(data) => Event::Binary(data.to_vec()),
            Incoming::Ping(data) => Event::Ping(data.to_vec()),
            Incoming::Pong => Event::Pong,
            // The connection loop stops reading at the first close frame
            // (`conn.rs` returns `ReadEnd::Close`), while `FrameReader`
            // goes on parsing the rest of its input: what follows a close
            // is never acted upon, as in tungstenite, which stops there
            // too. The code is taken as the edge reports it: not checked
            // here, since that check is what this target tests.
            Incoming::Close(code) => {
                return Outcome {
                    events,
                    end: End::Close(code),
                };
            }
        });
    }
    let end = match read.end {
        Ok(true) => End::Idle,
        Ok(false) => End::Pending,
        Err(error) => End::Fail(Close::from(&error).code()),
    };
    Outcome { events, end }
}

/// A stream that yields the input, then `WouldBlock`; writes (pongs, the
/// close reply) go nowhere.
struct MockStream {
    input: Vec<u8>,
    position: usize,
}

impl std::io::Read for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.input[self.position..];
        if rest.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        Ok(n)
    }
}

impl std::io::Write for MockStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The text message appended once tungstenite has used all the input, to
/// tell idle (it reads the probe back) from pending (the probe lands inside
/// a frame or a fragmented message).
const PROBE: &[u8] = b"gpush differential probe";

enum Step {
    Event(Event),
    End(End),
}

/// The code of the first close frame in `data`, if it has one: the frames
/// are walked with the header parser both readers use.
fn first_close_code(data: &[u8]) -> Option<u16> {
    let mut cursor = std::io::Cursor::new(data);
    while let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
        let start = usize::try_from(cursor.position()).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let payload = data.get(start..end)?;
        if header.opcode == OpCode::Control(Control::Close) {
            let mask = header.mask.unwrap_or_default();
            let code = payload.get(..2)?;
            return Some(u16::from_be_bytes([code[0] ^ mask[0], code[1] ^ mask[1]]));
        }
        cursor.set_position(end as u64);
    }
    None
}

/// One `read()` of tungstenite, classified.
fn tungstenite_step(ws: &mut WebSocket<MockStream>) -> Step {
    match ws.read() {
        Ok(Message::Text(text)) => Step::Event(Event::Text(text.as_bytes().to_vec())),
        Ok(Message::Binary(data)) => Step::Event(Event::Binary(data.to_vec())),
        Ok(Message::Ping(data)) => Step::Event(Event::Ping(data.to_vec())),
        Ok(Message::Pong(_)) => Step::Event(Event::Pong),
        // tungstenite returns every close frame, but one whose code it does
        // not allow (`CloseCode::is_allowed`) it returns, and answers, as
        // 1002 "Protocol violation": the code the client sent is read from
        // the input instead, and held to the RFC rule, which differs from
        // tungstenite's only for 1014 (registered with IANA after
        // tungstenite's table was written).
        Ok(Message::Close(None)) => Step::End(End::Close(None)),
        Ok(Message::Close(Some(_))) => {
            let code = first_close_code(&ws.get_ref().input)
                .expect("tungstenite read a close frame with a code");
            Step::End(if close_code_allowed(code) {
                End::Close(Some(code))
            } else {
                End::Fail(close::PROTOCOL_ERROR)
            })
        }
        Ok(Message::Frame(_)) => unreachable!("read() returns no raw frames"),
        Err(TungsteniteError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Step::End(End::Pending)
        }
        // No ProtocolError is about UTF-8: invalid text is Error::Utf8.
        Err(TungsteniteError::Protocol(_)) => Step::End(End::Fail(close::PROTOCOL_ERROR)),
        Err(TungsteniteError::Utf8(_)) => Step::End(End::Fail(close::INVALID_DATA)),
        Err(TungsteniteError::Capacity(_)) => Step::End(End::Fail(close::TOO_BIG)),
        Err(e) => panic!("tungstenite: unexpected error {e:?}"),
    }
}

/// tungstenite's server-side reader, with the edge's limit as both its
/// message and its frame size limit, refusing unmasked frames.
fn tungstenite_outcome(data: &[u8]) -> Outcome {
    let config = WebSocketConfig::default()
        .max_message_size(Some(FRAME_MAX_MESSAGE))
        .max_frame_size(Some(FRAME_MAX_MESSAGE))
        .accept_unmasked_frames(false);
    let stream = MockStream {
        input: data.to_vec(),
        position: 0,
    };
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut events = Vec::new();
    let end = loop {
        match tungstenite_step(&mut ws) {
            Step::Event(event) => events.push(event),
            Step::End(End::Pending) => break probe(&mut ws),
            Step::End(end) => break end,
        }
    };
    Outcome { events, end }
}

/// Idle if a complete text message sent now comes back as it is, and
/// nothing else with it.
fn probe(ws: &mut WebSocket<MockStream>) -> End {
    ws.get_mut().input.extend(client_frame(
        OpCode::Data(Data::Text),
        true,
        [9, 8, 7, 6],
        PROBE,
    ));
    match tungstenite_step(ws) {
        Step::Event(Event::Text(text)) if text == PROBE => match tungstenite_step(ws) {
            Step::End(End::Pending) => End::Idle,
            _ => End::Pending,
        },
        _ => End::Pending,
    }
}

/// Differences between the two readers that follow from design choices
/// both are free to make, not from RFC 6455.
fn legitimately_different(edge: &Outcome, reference: &Outcome) -> bool {
    // The edge checks a frame's length against the message limit as soon
    // as the frame header arrives (length plus the fragments buffered so
    // far); tungstenite checks a frame alone against its frame limit at the
    // header, but the message total only once the continuation frame's
    // payload is in. So the edge refuses an oversized fragmented message
    // one frame header earlier: where tungstenite still waits for that
    // frame's payload, or finds something else wrong with it (reserved
    // bits, no mask, a data frame where a continuation belongs), the edge
    // says 1009. Were the frame alone over the limit, tungstenite would
    // have said 1009 too.
    let size_checked_earlier = edge.end == End::Fail(close::TOO_BIG)
        && matches!(reference.end, End::Pending | End::Fail(_))
        && edge.events == reference.events;
    // tungstenite validates a fragmented text message's UTF-8 as each
    // fragment arrives and fails fast (RFC 6455 8.1 allows either); the
    // edge validates the whole message when it completes. After the bad
    // fragment the edge goes on and may still report control frames, a
    // close, or another error (found by the fuzzer: a ping, then 1009),
    // but never completes a message.
    let utf8_checked_later = reference.end == End::Fail(close::INVALID_DATA)
        && edge.end != End::Idle
        && edge.events.starts_with(&reference.events)
        && edge.events[reference.events.len()..]
            .iter()
            .all(|e| matches!(e, Event::Ping(_) | Event::Pong));
    size_checked_earlier || utf8_checked_later
}

/// Whether the disagreement is one of the known edge bugs the lists above
/// name: a close frame with a code the RFC forbids accepted, or a control
/// frame inside a long fragmented message refused as too big. Only the
/// cargo-fuzz target tolerates them, so that a fuzz run finds other
/// disagreements instead of stopping at the seeds of these.
fn known_edge_bug(edge: &Outcome, reference: &Outcome) -> bool {
    let close_code = matches!(
        (edge.end, reference.end),
        (End::Close(Some(code)), End::Fail(close::PROTOCOL_ERROR)) if !close_code_allowed(code)
    ) && edge.events == reference.events;
    // The edge refused a frame that tungstenite accepted, and what
    // tungstenite reports next is a control frame or a close.
    let control_size = edge.end == End::Fail(close::TOO_BIG)
        && reference.events.starts_with(&edge.events)
        && match reference.events.get(edge.events.len()) {
            Some(next) => matches!(next, Event::Ping(_) | Event::Pong),
            None => matches!(reference.end, End::Close(_)),
        };
    close_code || control_size
}

fn differential(data: &[u8], tolerate_known_bugs: bool) {
    let edge = edge_outcome(data);
    let reference = tungstenite_outcome(data);
    if edge == reference || legitimately_different(&edge, &reference) {
        return;
    }
    if tolerate_known_bugs && known_edge_bug(&edge, &reference) {
        return;
    }
    panic!(
        "the edge and tungstenite disagree\n  edge:       {edge:?}\n  tungstenite: {reference:?}"
    );
}

/// The same client bytes through the edge's [`FrameReader`] and through
/// tungstenite's server-side reader: the messages (text, binary, ping,
/// pong) must be the same, and both must end alike: idle, waiting for more
/// bytes, at a close frame with the same code, or failing with the same
/// close code. Close codes are held to RFC 6455 7.4 on both sides.
pub fn ws_differential(data: &[u8]) {
    differential(data, false);
}

/// [`ws_differential`] for the cargo-fuzz target: tolerates the
/// disagreements [`KNOWN_EDGE_CLOSE_CODE_BUGS`] and
/// [`KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS`] stand for, while those lists are
/// not empty.
pub fn ws_differential_fuzz(data: &[u8]) {
    let known =
        !KNOWN_EDGE_CLOSE_CODE_BUGS.is_empty() || !KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS.is_empty();
    differential(data, known);
}

fn ws_differential_seeds() -> Vec<(String, Vec<u8>)> {
    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BINARY: OpCode = OpCode::Data(Data::Binary);
    const CONTINUE: OpCode = OpCode::Data(Data::Continue);
    const PING: OpCode = OpCode::Control(Control::Ping);
    const CLOSE: OpCode = OpCode::Control(Control::Close);
    let key = [0x5a, 0x01, 0xc3, 0x7e];
    let frame = |opcode, fin, payload: &[u8]| client_frame(opcode, fin, key, payload);
    let close = |code: u16, reason: &[u8]| {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        frame(CLOSE, true, &payload)
    };
    let concat = |frames: &[Vec<u8>]| frames.concat();
    // Every ws_frames seed, then cases where the two readers could part.
    let mut seeds = ws_frames_seeds();
    for code in [
        0, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
        1014, 1015, 1016, 2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535,
    ] {
        seeds.push((format!("close-code-{code}"), close(code, b"")));
    }
    seeds.extend(
        [
            ("close-code-1005-with-reason", close(1005, b"bye")),
            (
                "close-code-1000-bad-utf8",
                close(1000, b"\xce\xba\xe1\xbd\xb9\xcf"),
            ),
            ("close-code-1004-bad-utf8", close(1004, b"\xff")),
            (
                "close-then-garbage",
                concat(&[close(1000, b""), b"\x8f\x00".to_vec()]),
            ),
            (
                "close-then-text",
                concat(&[close(1001, b""), frame(TEXT, true, b"late")]),
            ),
            (
                // 500 + 10 bytes: within the 512-byte limit, with a 20-byte
                // ping between the fragments.
                "ping-inside-long-fragmented",
                concat(&[
                    frame(BINARY, false, &[1; 500]),
                    frame(PING, true, &[2; 20]),
                    frame(CONTINUE, true, &[3; 10]),
                ]),
            ),
            (
                "close-inside-long-fragmented",
                concat(&[frame(BINARY, false, &[1; 511]), close(1000, b"")]),
            ),
            (
                "fragmented-exactly-max",
                concat(&[
                    frame(BINARY, false, &[1; 300]),
                    frame(CONTINUE, true, &[2; 212]),
                ]),
            ),
            (
                "fragmented-one-over-max",
                concat(&[
                    frame(BINARY, false, &[1; 300]),
                    frame(CONTINUE, true, &[2; 213]),
                ]),
            ),
            (
                "fragmented-over-max-truncated",
                concat(&[
                    frame(BINARY, false, &[1; 300]),
                    frame(CONTINUE, true, &[2; 213]),
                ])[..320]
                    .to_vec(),
            ),
            (
                "fragmented-over-max-unmasked-continuation",
                concat(&[frame(BINARY, false, &[1; 300]), {
                    let mut f = Vec::new();
                    FrameHeader::default().format(213, &mut f).expect("format");
                    f[0] = 0x80; // final continuation
                    f.extend_from_slice(&[2; 213]);
                    f
                }]),
            ),
            ("text-exactly-max", frame(TEXT, true, &[b'a'; 512])),
            ("text-one-over-max", frame(TEXT, true, &[b'a'; 513])),
            (
                "fragmented-text-bad-utf8-first",
                concat(&[
                    frame(TEXT, false, b"\xff"),
                    frame(PING, true, b""),
                    frame(CONTINUE, true, b"ok"),
                ]),
            ),
            (
                "fragmented-text-bad-utf8-pending",
                frame(TEXT, false, b"ok\xed\xa0\x80"),
            ),
            (
                "fragmented-text-split-codepoint",
                concat(&[
                    frame(TEXT, false, b"\xf0\x9f"),
                    frame(CONTINUE, false, b"\xa6"),
                    frame(CONTINUE, true, b"\x80"),
                ]),
            ),
            ("ping-125", frame(PING, true, &[7; 125])),
            ("empty-text", frame(TEXT, true, b"")),
            ("empty-binary", frame(BINARY, true, b"")),
        ]
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes)),
    );
    seeds
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
        Command::Presence(topic) => (protocol::PRESENCE, Some(topic), None),
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
        ("presence", json!({"code": 7, "topic": "chat.1", "id": 2})),
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
        offset: 0,
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
            // Timers: the router bounds each call by `request_timeout`.
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
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

//! How a push is framed: the push codes, the JSON and MessagePack push
//! objects, and [`PushFrames`], which encodes a push at most once per wire
//! format for every connection it reaches.

use super::WireFormat;
use crate::ws;
use base64::Engine as _;
use bytes::Bytes;
use gpush_common::{Push, Route};
use serde::{Serialize, Serializer};
use std::cell::OnceCell;

/// Push code: a public topic push.
pub const PUSH_PUBLIC: u32 = 10001;
/// Push code: a push to one user (private topic or user-wide).
pub const PUSH_PRIVATE: u32 = 10002;
/// Push code: a push to everyone.
pub const PUSH_EVERYONE: u32 = 10003;
/// Push code: the connection's login ended (its token expired and was not
/// refreshed): no more private or user-wide pushes; the connection stays
/// open and may log in again. Sent by the edge to one connection, not
/// routed like the others.
pub const PUSH_LOGIN_ENDED: u32 = 10004;

/// Push code: this edge missed pushes of a stream the connection follows
/// and could not recover them from history: the pushes after `offset` (the
/// last one delivered) up to the next one delivered are lost for it. The
/// client resubscribes with `since` (and is told `recovered: false`) or
/// reloads. Sent by the edge to each affected connection.
pub const PUSH_GAP: u32 = 10007;

/// Push code: user `uid` joined public topic `topic`: its first connection
/// (on any edge of the cluster) subscribed to it. Sent to the topic's
/// subscribers when its `[presence]` rule has `events`, at the end of the
/// coalescing window the change fell in.
pub const PUSH_JOINED: u32 = 10005;
/// Push code: user `uid` left public topic `topic`: its last connection
/// subscribed to it (cluster-wide) unsubscribed, logged out or closed.
pub const PUSH_LEFT: u32 = 10006;
/// Push code: topic `topic`'s presence changed more than `max_changes`
/// times within one coalescing window: that window's 10005/10006 are not
/// sent; ask for the presence (request code 7).
pub const PUSH_PRESENCE_CHANGED: u32 = 10010;

/// Why a login ended, in a 10004 push: its token expired.
pub const LOGIN_ENDED_EXPIRED: &str = "expired";
/// Why a login ended, in a 10004 push: the server API logged the user out
/// (`POST /v1/logout`). Clients do not log in again by themselves.
pub const LOGIN_ENDED_LOGOUT: &str = "logout";

/// The frames of one push, encoded at most once per wire format and shared
/// by every connection it goes to.
#[derive(Debug)]
pub struct PushFrames<'a> {
    push: &'a Push,
    json: OnceCell<Bytes>,
    raw: OnceCell<Bytes>,
    msgpack: OnceCell<Bytes>,
}

impl<'a> PushFrames<'a> {
    /// Frames for `push`, encoded lazily.
    pub fn new(push: &'a Push) -> Self {
        Self {
            push,
            json: OnceCell::new(),
            raw: OnceCell::new(),
            msgpack: OnceCell::new(),
        }
    }

    /// The frame for connections speaking `format`.
    pub fn get(&self, format: WireFormat) -> &Bytes {
        match format {
            WireFormat::Json => self.json.get_or_init(|| ws::text(&json_push(self.push))),
            WireFormat::Raw => self.raw.get_or_init(|| {
                let data = &self.push.data;
                if std::str::from_utf8(data).is_ok() {
                    ws::text(data)
                } else {
                    ws::binary(data)
                }
            }),
            WireFormat::Msgpack => self
                .msgpack
                .get_or_init(|| ws::binary(&msgpack_push(self.push))),
        }
    }
}

/// The push code and the topic a push names, by route.
fn code_and_topic(push: &Push) -> (u32, Option<&str>) {
    match push.route() {
        Route::Everyone => (PUSH_EVERYONE, None),
        Route::Topic(topic) => (PUSH_PUBLIC, Some(topic)),
        Route::User { topic, .. } => (PUSH_PRIVATE, topic),
    }
}

/// The JSON push object: `{"code":C,"topic"?:T,"data":D,"encoding"?:"base64"}`.
pub fn json_push(push: &Push) -> Vec<u8> {
    let (code, topic) = code_and_topic(push);
    let data = &push.data;
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    if let Some(topic) = topic {
        out.extend_from_slice(b",\"topic\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, topic);
    }
    out.extend_from_slice(b",\"data\":");
    if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
        out.extend_from_slice(data);
    } else if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::to_writer(&mut out, text);
    } else {
        out.push(b'"');
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(data)
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"encoding\":\"base64\"");
    }
    if push.offset > 0 {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(push.offset.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// The MessagePack push map: `{"code":C,"topic"?:T,"data":<bin>}`. The
/// payload goes as it is, whatever it holds: no JSON sniffing, no base64.
pub fn msgpack_push(push: &Push) -> Vec<u8> {
    let (code, topic) = code_and_topic(push);
    let map = MsgpackPush {
        code,
        topic,
        data: Bin(&push.data),
        offset: (push.offset > 0).then_some(push.offset),
    };
    let mut out = Vec::with_capacity(push.data.len() + 32);
    // Writing a number, a string and bytes into a Vec cannot fail.
    let _ = rmp_serde::encode::write_named(&mut out, &map);
    out
}

/// The 10004 push telling a connection that `uid`'s login ended:
/// `{"code":10004,"uid":U,"reason":R}` (R: [`LOGIN_ENDED_EXPIRED`] or
/// [`LOGIN_ENDED_LOGOUT`]), as JSON text (also on `gpush.raw`
/// connections, like replies) or the same map in MessagePack.
pub fn login_ended(uid: &str, reason: &'static str, format: WireFormat) -> Bytes {
    #[derive(Serialize)]
    struct LoginEnded<'a> {
        code: u32,
        uid: &'a str,
        reason: &'static str,
    }
    let push = LoginEnded {
        code: PUSH_LOGIN_ENDED,
        uid,
        reason,
    };
    // Serialising a number and strings cannot fail.
    match format {
        WireFormat::Json | WireFormat::Raw => {
            ws::text(&serde_json::to_vec(&push).unwrap_or_default())
        }
        WireFormat::Msgpack => ws::binary(&rmp_serde::to_vec_named(&push).unwrap_or_default()),
    }
}

/// The 10007 push: `{"code":10007,"topic":T,"offset":N}` for a public
/// topic, `{"code":10007,"offset":N}` for the logged-in user's stream
/// (user-wide pushes and private topics), as JSON text (also on
/// `gpush.raw`) or the same map in MessagePack.
pub fn gap(topic: Option<&str>, offset: u64, format: WireFormat) -> Bytes {
    #[derive(Serialize)]
    struct Gap<'a> {
        code: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        offset: u64,
    }
    let push = Gap {
        code: PUSH_GAP,
        topic,
        offset,
    };
    // Serialising a number and a string cannot fail.
    match format {
        WireFormat::Json | WireFormat::Raw => {
            ws::text(&serde_json::to_vec(&push).unwrap_or_default())
        }
        WireFormat::Msgpack => ws::binary(&rmp_serde::to_vec_named(&push).unwrap_or_default()),
    }
}

/// One coalescing window's presence changes of one topic, as its
/// subscribers get them: a 10005 or 10006 frame per change (uid, joined),
/// or a single 10010 when there were too many. All of them are encoded at
/// most once per wire format, into one buffer (the frames back to back)
/// that every subscriber's queue shares.
#[derive(Debug)]
pub struct PresenceFrames<'a> {
    topic: &'a str,
    /// None: too many changes (10010).
    changes: Option<&'a [(String, bool)]>,
    json: OnceCell<Bytes>,
    msgpack: OnceCell<Bytes>,
}

impl<'a> PresenceFrames<'a> {
    /// The frames of `changes` (uid, joined) of `topic`.
    pub fn changes(topic: &'a str, changes: &'a [(String, bool)]) -> Self {
        Self {
            topic,
            changes: Some(changes),
            json: OnceCell::new(),
            msgpack: OnceCell::new(),
        }
    }

    /// The 10010 frame of `topic`.
    pub fn overflow(topic: &'a str) -> Self {
        Self {
            topic,
            changes: None,
            json: OnceCell::new(),
            msgpack: OnceCell::new(),
        }
    }

    /// How many frames the buffer holds.
    pub fn len(&self) -> usize {
        self.changes.map_or(1, <[_]>::len)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.changes.is_some_and(<[_]>::is_empty)
    }

    /// The buffer for connections speaking `format`: JSON text frames on
    /// JSON and raw connections (like replies), MessagePack binary frames
    /// on MessagePack ones.
    pub fn get(&self, format: WireFormat) -> &Bytes {
        match format {
            WireFormat::Json | WireFormat::Raw => self.json.get_or_init(|| self.encode(false)),
            WireFormat::Msgpack => self.msgpack.get_or_init(|| self.encode(true)),
        }
    }

    fn encode(&self, msgpack: bool) -> Bytes {
        #[derive(Serialize)]
        struct Change<'a> {
            code: u32,
            topic: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            uid: Option<&'a str>,
        }
        let one = |change: &Change<'_>| {
            // Serialising a number and strings cannot fail.
            if msgpack {
                ws::binary(&rmp_serde::to_vec_named(change).unwrap_or_default())
            } else {
                ws::text(&serde_json::to_vec(change).unwrap_or_default())
            }
        };
        let Some(changes) = self.changes else {
            return one(&Change {
                code: PUSH_PRESENCE_CHANGED,
                topic: self.topic,
                uid: None,
            });
        };
        let mut out = Vec::with_capacity(changes.len() * (self.topic.len() + 48));
        for (uid, joined) in changes {
            out.extend_from_slice(&one(&Change {
                code: if *joined { PUSH_JOINED } else { PUSH_LEFT },
                topic: self.topic,
                uid: Some(uid),
            }));
        }
        Bytes::from(out)
    }
}

#[derive(Serialize)]
struct MsgpackPush<'a> {
    code: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    data: Bin<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// Bytes that serialise as MessagePack bin, not as an array of numbers.
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::{bin, msgpack};
    use serde_json::{Value, json};

    fn push_json(uid: &str, topic: &str, data: &[u8]) -> Value {
        let push = Push::new(uid, topic, Bytes::copy_from_slice(data));
        serde_json::from_slice(&json_push(&push)).expect("push is JSON")
    }

    #[test]
    fn push_data_is_json_text_or_base64() {
        assert_eq!(
            push_json("", "t", br#"{"a":1}"#),
            json!({"code":10001,"topic":"t","data":{"a":1}})
        );
        assert_eq!(
            push_json("", "", b"hello"),
            json!({"code":10003,"data":"hello"})
        );
        assert_eq!(
            push_json("u", "p", b"\xff\x00"),
            json!({"code":10002,"topic":"p","data":"/wA=","encoding":"base64"})
        );
        assert_eq!(push_json("u", "", b"42"), json!({"code":10002,"data":42}));
        assert_eq!(
            push_json("", "quote\"d", b"{\"unterminated"),
            json!({"code":10001,"topic":"quote\"d","data":"{\"unterminated"})
        );
    }

    #[test]
    fn login_ended_has_the_same_keys_in_every_format() {
        let expected = json!({"code": 10004, "uid": "ann", "reason": "expired"});
        for format in [WireFormat::Json, WireFormat::Raw] {
            let frame = login_ended("ann", LOGIN_ENDED_EXPIRED, format);
            assert_eq!(frame[0], 0x81, "{format:?}: a text frame");
            let got: Value = serde_json::from_slice(&frame[2..]).expect("json");
            assert_eq!(got, expected, "{format:?}");
        }
        let frame = login_ended("ann", LOGIN_ENDED_EXPIRED, WireFormat::Msgpack);
        assert_eq!(frame[0], 0x82, "a binary frame");
        let got: Value = rmp_serde::from_slice(&frame[2..]).expect("msgpack");
        assert_eq!(got, expected);
    }

    /// The WebSocket frames back to back in `buffer`: (opcode, payload).
    fn split_frames(mut buffer: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !buffer.is_empty() {
            let opcode = buffer[0] & 0x0f;
            let (len, header) = match buffer[1] {
                126 => (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4),
                n => (usize::from(n), 2),
            };
            frames.push((opcode, buffer[header..header + len].to_vec()));
            buffer = &buffer[header + len..];
        }
        frames
    }

    #[test]
    fn presence_changes_are_framed_once_per_format_back_to_back() {
        let changes = [("ann".to_owned(), true), ("bob".to_owned(), false)];
        let frames = PresenceFrames::changes("chat.1", &changes);
        assert_eq!(frames.len(), 2);
        let json = frames.get(WireFormat::Json).clone();
        assert_eq!(
            json.as_ptr(),
            frames.get(WireFormat::Raw).as_ptr(),
            "raw connections share the JSON frames"
        );
        let expected = [
            json!({"code": 10005, "topic": "chat.1", "uid": "ann"}),
            json!({"code": 10006, "topic": "chat.1", "uid": "bob"}),
        ];
        let text = split_frames(&json);
        assert_eq!(text.len(), 2);
        for ((opcode, payload), expected) in text.iter().zip(&expected) {
            assert_eq!(*opcode, 1, "a text frame");
            let got: Value = serde_json::from_slice(payload).expect("json");
            assert_eq!(&got, expected);
        }
        let binary = frames.get(WireFormat::Msgpack).clone();
        assert_eq!(binary.as_ptr(), frames.get(WireFormat::Msgpack).as_ptr());
        let packed = split_frames(&binary);
        assert_eq!(packed.len(), 2);
        for ((opcode, payload), expected) in packed.iter().zip(&expected) {
            assert_eq!(*opcode, 2, "a binary frame");
            let got: Value = rmp_serde::from_slice(payload).expect("msgpack");
            assert_eq!(&got, expected);
        }
        // Exact bytes of one MessagePack change: a map of three, the code
        // as uint16.
        assert_eq!(
            packed[0].1,
            [&b"\x83\xa4code\xcd\x27\x15\xa5topic\xa6chat.1\xa3uid\xa3ann"[..]].concat()
        );
    }

    #[test]
    fn an_overflowing_window_is_one_10010_frame() {
        let frames = PresenceFrames::overflow("chat.1");
        assert_eq!(frames.len(), 1);
        let json = split_frames(frames.get(WireFormat::Json));
        assert_eq!(json.len(), 1);
        let got: Value = serde_json::from_slice(&json[0].1).expect("json");
        assert_eq!(got, json!({"code": 10010, "topic": "chat.1"}));
        let packed = split_frames(frames.get(WireFormat::Msgpack));
        assert_eq!(
            packed,
            [(2, b"\x82\xa4code\xcd\x27\x1a\xa5topic\xa6chat.1".to_vec())]
        );
        assert!(PresenceFrames::changes("t", &[]).is_empty());
    }

    #[test]
    fn frames_are_encoded_once_per_format() {
        let push = Push::new("", "t", Bytes::from_static(b"\xff"));
        let frames = PushFrames::new(&push);
        let a = frames.get(WireFormat::Json).clone();
        let b = frames.get(WireFormat::Json).clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes, not a re-encode");
        assert_eq!(&frames.get(WireFormat::Raw)[..], b"\x82\x01\xff");
        let c = frames.get(WireFormat::Msgpack).clone();
        let d = frames.get(WireFormat::Msgpack).clone();
        assert_eq!(c.as_ptr(), d.as_ptr(), "same bytes, not a re-encode");
        assert_eq!(c[0], 0x82, "a binary frame");
        assert_eq!(&c[2..], msgpack_push(&push));
    }

    #[test]
    fn msgpack_pushes_carry_the_payload_as_bin() {
        let push = |uid: &str, topic: &str, data: &[u8]| {
            msgpack_push(&Push::new(uid, topic, Bytes::copy_from_slice(data)))
        };
        let code = |c: u16| {
            let mut out = b"\xa4code\xcd".to_vec();
            out.extend(c.to_be_bytes());
            out
        };
        let topic = |t: &str| [b"\xa5topic".as_slice(), &msgpack(&json!(t))].concat();
        let data = |d: &[u8]| [b"\xa4data".as_slice(), &bin(d)].concat();
        // JSON payloads are not parsed: they are bytes like any other.
        assert_eq!(
            push("", "t", br#"{"a":1}"#),
            [&[0x83], &code(10001)[..], &topic("t"), &data(br#"{"a":1}"#)].concat()
        );
        assert_eq!(
            push("u", "p", b"\xff\x00"),
            [&[0x83], &code(10002)[..], &topic("p"), &data(b"\xff\x00")].concat()
        );
        assert_eq!(
            push("u", "", b"hi"),
            [&[0x82], &code(10002)[..], &data(b"hi")].concat()
        );
        assert_eq!(
            push("", "", b""),
            [&[0x82], &code(10003)[..], &data(b"")].concat()
        );
        // Large payloads use the wider bin headers and stay byte-exact.
        let big = vec![0xab; 70_000];
        let mut bin32 = b"\xa4data\xc6".to_vec();
        bin32.extend(70_000u32.to_be_bytes());
        assert_eq!(
            push("", "", &big),
            [&[0x82], &code(10003)[..], &bin32, &big].concat()
        );
    }
}

//! The client protocol: requests, replies, and how a push is framed.
//!
//! Requests are JSON text messages `{"code":N,"topic":"...","data":...,"id":...}`;
//! replies are `{"code":C,"message":"...","topic"?,"id"?,"detail"?,"uid"?}`
//! with the reply codes of the original gpush. Pushes are framed once per
//! wire format and the same bytes go to every connection.
//!
//! A `gpush.msgpack` connection speaks the same protocol in binary frames
//! holding MessagePack maps: requests and replies have the same keys and
//! values as in JSON, and a push carries its payload as bin, byte for byte.

use crate::ws;
use base64::Engine as _;
use bytes::Bytes;
use gpush_common::{Push, Route};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};
use std::cell::OnceCell;
use std::fmt;
use std::io::Cursor;

/// Request code: subscribe to a public topic.
pub const SUBSCRIBE: i64 = 1;
/// Request code: unsubscribe from a public topic.
pub const UNSUBSCRIBE: i64 = 2;
/// Request code: log in; `data` is the token.
pub const LOGIN: i64 = 3;
/// Request code: log out, dropping every private subscription.
pub const LOGOUT: i64 = 4;
/// Request code: subscribe to a private topic (needs login).
pub const SUBSCRIBE_PRIVATE: i64 = 5;
/// Request code: unsubscribe from a private topic (needs login).
pub const UNSUBSCRIBE_PRIVATE: i64 = 6;

/// Push code: a public topic push.
pub const PUSH_PUBLIC: u32 = 10001;
/// Push code: a push to one user (private topic or user-wide).
pub const PUSH_PRIVATE: u32 = 10002;
/// Push code: a push to everyone.
pub const PUSH_EVERYONE: u32 = 10003;

/// How deeply a MessagePack request may nest, as serde_json limits JSON.
/// Requests hardly nest at all; the bound keeps decoding off deep stacks.
const MAX_MSGPACK_DEPTH: usize = 128;

/// Reply codes, as in the original gpush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 20000: sent once when the connection opens.
    Connected,
    /// 20001: subscribe (public or private) succeeded.
    Subscribed,
    /// 20002: unsubscribe (public or private) succeeded.
    Unsubscribed,
    /// 20003: login succeeded.
    LoggedIn,
    /// 20004: logout succeeded.
    LoggedOut,
    /// 30001: malformed request; `detail` says what is wrong.
    BadRequest,
    /// 30002: the request needs a login.
    NotLoggedIn,
    /// 30003: the token was refused.
    AuthFailed,
    /// 30004: the topic is not acceptable.
    InvalidTopic,
    /// 30005: a per-connection limit was reached.
    LimitReached,
    /// 30006: the connection sends requests faster than `request_rate`;
    /// the request was not carried out.
    RateLimited,
}

impl Code {
    /// The numeric code.
    pub fn number(self) -> u32 {
        match self {
            Code::Connected => 20000,
            Code::Subscribed => 20001,
            Code::Unsubscribed => 20002,
            Code::LoggedIn => 20003,
            Code::LoggedOut => 20004,
            Code::BadRequest => 30001,
            Code::NotLoggedIn => 30002,
            Code::AuthFailed => 30003,
            Code::InvalidTopic => 30004,
            Code::LimitReached => 30005,
            Code::RateLimited => 30006,
        }
    }

    /// The fixed message that goes with the code.
    pub fn message(self) -> &'static str {
        match self {
            Code::Connected => "connected",
            Code::Subscribed => "subscribed",
            Code::Unsubscribed => "unsubscribed",
            Code::LoggedIn => "logged in",
            Code::LoggedOut => "logged out",
            Code::BadRequest => "bad request",
            Code::NotLoggedIn => "not logged in",
            Code::AuthFailed => "authentication failed",
            Code::InvalidTopic => "invalid topic",
            Code::LimitReached => "limit reached",
            Code::RateLimited => "rate limited",
        }
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Code 1.
    Subscribe(String),
    /// Code 2.
    Unsubscribe(String),
    /// Code 3, with the token (`data`).
    Login(Value),
    /// Code 4.
    Logout,
    /// Code 5.
    SubscribePrivate(String),
    /// Code 6.
    UnsubscribePrivate(String),
}

/// A parsed request: the command and the `id` to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Echoed in the reply when present.
    pub id: Option<Value>,
}

/// A request that could not be parsed; answered with 30001.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The request's `id`, when it could be read.
    pub id: Option<Value>,
    /// What is wrong, for the reply's `detail`.
    pub detail: String,
}

fn bad(id: Option<Value>, detail: String) -> BadRequest {
    BadRequest { id, detail }
}

/// Parses one text message as a request.
pub fn parse_request(text: &[u8]) -> Result<Request, BadRequest> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| bad(None, format!("invalid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(bad(None, "request must be a JSON object".into()));
    };
    request_from_object(object)
}

/// Parses one binary message of a `gpush.msgpack` connection as a request.
///
/// The map is read as the JSON object it spells, so both formats accept
/// and refuse the same requests with the same details. A bin value counts
/// as the string it spells when it is UTF-8 (so `data` may be a bin token)
/// and as an array of its bytes otherwise, which no string field accepts.
pub fn parse_msgpack_request(bytes: &[u8]) -> Result<Request, BadRequest> {
    let mut decoder = rmp_serde::Deserializer::new(Cursor::new(bytes));
    decoder.set_max_depth(MAX_MSGPACK_DEPTH);
    let JsonValue(value) = JsonValue::deserialize(&mut decoder)
        .map_err(|e| bad(None, format!("invalid MessagePack: {e}")))?;
    let Value::Object(object) = value else {
        return Err(bad(None, "request must be a MessagePack map".into()));
    };
    if decoder.position() != bytes.len() as u64 {
        return Err(bad(
            None,
            "invalid MessagePack: bytes after the request map".into(),
        ));
    }
    request_from_object(object)
}

/// Reads the command of a request object, whichever format it came in.
fn request_from_object(mut object: Map<String, Value>) -> Result<Request, BadRequest> {
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => return Err(bad(None, "field id must be a number or a string".into())),
    };
    let code = match object.get("code") {
        None => return Err(bad(id, "missing field code".into())),
        Some(code) => code
            .as_i64()
            .ok_or_else(|| bad(id.clone(), "field code must be an integer".into()))?,
    };
    let topic = || match object.get("topic") {
        None | Some(Value::Null) => Err(bad(id.clone(), "missing field topic".into())),
        Some(Value::String(topic)) => Ok(topic.clone()),
        Some(_) => Err(bad(id.clone(), "field topic must be a string".into())),
    };
    let command = match code {
        SUBSCRIBE => Command::Subscribe(topic()?),
        UNSUBSCRIBE => Command::Unsubscribe(topic()?),
        LOGIN => match object.remove("data") {
            None | Some(Value::Null) => {
                return Err(bad(id, "missing field data (the login token)".into()));
            }
            Some(token) => Command::Login(token),
        },
        LOGOUT => Command::Logout,
        SUBSCRIBE_PRIVATE => Command::SubscribePrivate(topic()?),
        UNSUBSCRIBE_PRIVATE => Command::UnsubscribePrivate(topic()?),
        other => return Err(bad(id, format!("unknown code {other} (expected 1-6)"))),
    };
    Ok(Request { command, id })
}

/// A MessagePack value read as JSON (see [`parse_msgpack_request`]).
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(JsonValue)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value with a JSON equivalent")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // NaN and infinities have no JSON form: null, as serde_json's own
        // `Value` reads them from other formats.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(match std::str::from_utf8(v) {
            Ok(text) => text.into(),
            Err(_) => v.iter().copied().map(Value::from).collect(),
        })
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(match String::from_utf8(v) {
            Ok(text) => Value::String(text),
            Err(e) => e.into_bytes().into_iter().map(Value::from).collect(),
        })
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The announced length is the client's word: do not allocate by it.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(JsonValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((key, JsonValue(value))) = map.next_entry::<String, JsonValue>()? {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A reply to a request, or the greeting.
#[derive(Debug, Serialize)]
pub struct Reply<'a> {
    code: u32,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl<'a> Reply<'a> {
    /// A reply with `code` and its message.
    pub fn new(code: Code) -> Self {
        Self {
            code: code.number(),
            message: code.message(),
            topic: None,
            uid: None,
            id: None,
            detail: None,
        }
    }

    /// Adds the topic the request named.
    pub fn topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Adds the uid (login replies).
    pub fn uid(mut self, uid: &'a str) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Echoes the request id.
    pub fn id(mut self, id: Option<&'a Value>) -> Self {
        self.id = id;
        self
    }

    /// Adds an explanation.
    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The reply as a frame for a connection speaking `format`: JSON in a
    /// text frame, or the same map in MessagePack in a binary frame.
    pub fn frame(&self, format: WireFormat) -> Bytes {
        // Serialising strings and numbers cannot fail.
        match format {
            WireFormat::Json | WireFormat::Raw => {
                ws::text(&serde_json::to_vec(self).unwrap_or_default())
            }
            WireFormat::Msgpack => ws::binary(&rmp_serde::to_vec_named(self).unwrap_or_default()),
        }
    }
}

/// How pushes are framed for one connection, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// JSON push objects (default; subprotocol `gpush.json` or none).
    #[default]
    Json,
    /// The bare payload, as the original gpush sent it (`gpush.raw`).
    Raw,
    /// MessagePack maps in binary frames for requests, replies and pushes,
    /// with the payload as bin (`gpush.msgpack`).
    Msgpack,
}

impl WireFormat {
    /// Subprotocols we speak, by name.
    pub const SUBPROTOCOLS: [(&'static str, WireFormat); 3] = [
        ("gpush.json", WireFormat::Json),
        ("gpush.raw", WireFormat::Raw),
        ("gpush.msgpack", WireFormat::Msgpack),
    ];
}

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
    };
    let mut out = Vec::with_capacity(push.data.len() + 32);
    // Writing a number, a string and bytes into a Vec cannot fail.
    let _ = rmp_serde::encode::write_named(&mut out, &map);
    out
}

#[derive(Serialize)]
struct MsgpackPush<'a> {
    code: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    data: Bin<'a>,
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
    use serde_json::json;

    fn parse(text: &str) -> Result<Request, BadRequest> {
        parse_request(text.as_bytes())
    }

    #[test]
    fn every_code_parses() {
        let cases = [
            (r#"{"code":1,"topic":"a"}"#, Command::Subscribe("a".into())),
            (
                r#"{"code":2,"topic":"a"}"#,
                Command::Unsubscribe("a".into()),
            ),
            (r#"{"code":3,"data":"tok"}"#, Command::Login(json!("tok"))),
            (r#"{"code":4}"#, Command::Logout),
            (
                r#"{"code":5,"topic":"p"}"#,
                Command::SubscribePrivate("p".into()),
            ),
            (
                r#"{"code":6,"topic":"p"}"#,
                Command::UnsubscribePrivate("p".into()),
            ),
        ];
        for (text, command) in cases {
            assert_eq!(parse(text).expect(text).command, command);
        }
        assert_eq!(
            parse(r#"{"code":1,"topic":"a","id":7}"#).expect("id").id,
            Some(json!(7))
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong_and_keep_the_id() {
        let cases = [
            ("not json", "invalid JSON"),
            ("[1]", "JSON object"),
            (r#"{"topic":"a","id":"x"}"#, "missing field code"),
            (r#"{"code":"1","id":"x"}"#, "integer"),
            (r#"{"code":9,"id":"x"}"#, "unknown code 9"),
            (r#"{"code":1,"id":"x"}"#, "missing field topic"),
            (r#"{"code":5,"topic":3,"id":"x"}"#, "must be a string"),
            (r#"{"code":3,"id":"x"}"#, "missing field data"),
            (r#"{"code":1,"topic":"a","id":[1]}"#, "id must be"),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.detail.contains(needle), "{text}: {}", err.detail);
            if text.contains("\"id\":\"x\"") {
                assert_eq!(err.id, Some(json!("x")), "{text}");
            }
        }
    }

    #[test]
    fn float_ids_are_echoed_exactly() {
        // Found by the `request` fuzz target: 1.5 plus 93 ulps, written the
        // shortest way. Parsed to a neighbouring double, it was echoed as
        // 1.5000000000000209 and its MessagePack twin did not match it.
        let text = r#"{"code":4,"id":1.5000000000000207}"#;
        let id = parse(text).expect("parses").id;
        let reply = Reply::new(Code::LoggedOut).id(id.as_ref());
        let frame = reply.frame(WireFormat::Json);
        assert!(
            frame.ends_with(br#""id":1.5000000000000207}"#),
            "{:?}",
            String::from_utf8_lossy(&frame[2..])
        );
        let twin = msgpack(&json!({"code": 4, "id": f64::from_bits(0x3ff8_0000_0000_005d)}));
        assert_eq!(parse_msgpack_request(&twin), parse(text));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn replies_carry_optional_fields_only_when_set() {
        let id = json!(5);
        let frame = Reply::new(Code::Subscribed)
            .topic("t")
            .id(Some(&id))
            .frame(WireFormat::Json);
        assert_eq!(
            &frame[2..],
            br#"{"code":20001,"message":"subscribed","topic":"t","id":5}"#
        );
        assert_eq!(
            &Reply::new(Code::Connected).frame(WireFormat::Raw)[2..],
            br#"{"code":20000,"message":"connected"}"#
        );
    }

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
    fn msgpack_is_a_subprotocol() {
        assert!(
            WireFormat::SUBPROTOCOLS.contains(&("gpush.msgpack", WireFormat::Msgpack)),
            "{:?}",
            WireFormat::SUBPROTOCOLS
        );
    }

    fn msgpack(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).expect("encode")
    }

    /// A msgpack request map from `(key, value)` pairs, where a value is
    /// already-encoded MessagePack (to put bin where JSON has none).
    fn msgpack_map(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = vec![0x80 | u8::try_from(entries.len()).expect("fixmap")];
        for (key, value) in entries {
            out.extend(msgpack(&json!(key)));
            out.extend_from_slice(value);
        }
        out
    }

    /// MessagePack bin8 holding `bytes`.
    fn bin(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc4, u8::try_from(bytes.len()).expect("bin8")];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn msgpack_requests_parse_like_their_json() {
        let cases = [
            r#"{"code":1,"topic":"a","id":7}"#,
            r#"{"code":2,"topic":"a","id":"x"}"#,
            r#"{"code":3,"data":"tok"}"#,
            r#"{"code":3,"data":{"webhook":["token"]},"id":1.5}"#,
            r#"{"code":4,"topic":5}"#,
            r#"{"code":5,"topic":"p","extra":[1,{"a":null}]}"#,
            r#"{"code":6,"topic":"p","id":-3}"#,
            r#"{"topic":"a","id":"x"}"#,
            r#"{"code":"1","id":"x"}"#,
            r#"{"code":1.0,"topic":"a"}"#,
            r#"{"code":9,"id":"x"}"#,
            r#"{"code":1,"id":"x"}"#,
            r#"{"code":1,"topic":null,"id":"x"}"#,
            r#"{"code":5,"topic":3,"id":"x"}"#,
            r#"{"code":3,"id":"x"}"#,
            r#"{"code":3,"data":null,"id":"x"}"#,
            r#"{"code":1,"topic":"a","id":[1]}"#,
            r#"{"code":1,"topic":"a","id":null}"#,
        ];
        for text in cases {
            let value: Value = serde_json::from_str(text).expect(text);
            assert_eq!(
                parse_msgpack_request(&msgpack(&value)),
                parse(text),
                "{text}"
            );
        }
    }

    #[test]
    fn msgpack_bin_is_read_as_the_string_it_spells() {
        let token = msgpack_map(&[("code", &[3]), ("data", &bin(b"tok")), ("id", &[7])]);
        assert_eq!(
            parse_msgpack_request(&token),
            Ok(Request {
                command: Command::Login(json!("tok")),
                id: Some(json!(7)),
            })
        );
        let topic = msgpack_map(&[("code", &[1]), ("topic", &bin(b"news"))]);
        assert_eq!(
            parse_msgpack_request(&topic).expect("bin topic").command,
            Command::Subscribe("news".into())
        );
        // Not UTF-8: an array of bytes, which is no string.
        let topic = msgpack_map(&[("code", &[1]), ("topic", &bin(b"\xff")), ("id", &[1])]);
        let err = parse_msgpack_request(&topic).expect_err("non-UTF-8 topic");
        assert_eq!(err.id, Some(json!(1)));
        assert!(err.detail.contains("topic must be a string"), "{err:?}");
        let token = msgpack_map(&[("code", &[3]), ("data", &bin(b"\xff\x00"))]);
        assert_eq!(
            parse_msgpack_request(&token).expect("any token").command,
            Command::Login(json!([255, 0]))
        );
    }

    #[test]
    fn bad_msgpack_says_what_is_wrong() {
        let with_int_key = [0x81, 0x01, 0x01];
        let mut trailing = msgpack(&json!({"code": 4}));
        trailing.push(0xc0);
        let cases: [(&[u8], &str); 8] = [
            (b"", "invalid MessagePack"),
            (b"{\"code\":1,\"topic\":\"a\"}", "MessagePack map"),
            (&[0xc1], "invalid MessagePack"),
            (
                &[0x83, 0xa4, b'c', b'o', b'd', b'e', 0x01],
                "invalid MessagePack",
            ),
            (&[0x92, 0x01, 0x02], "MessagePack map"),
            (&with_int_key, "invalid MessagePack"),
            (&trailing, "bytes after"),
            (&[0xd4, 0x01, 0x00], "invalid MessagePack"),
        ];
        for (bytes, needle) in cases {
            let err = parse_msgpack_request(bytes).expect_err(needle);
            assert!(err.detail.contains(needle), "{bytes:x?}: {}", err.detail);
            assert_eq!(err.id, None, "{bytes:x?}");
        }
    }

    #[test]
    fn deep_msgpack_is_an_error_not_a_crash() {
        // 100 000 nested one-element arrays, as the whole request and as `data`.
        let mut deep = vec![0x91; 100_000];
        deep.push(0x90);
        let err = parse_msgpack_request(&deep).expect_err("deep");
        assert!(err.detail.contains("depth"), "{}", err.detail);
        let in_data = msgpack_map(&[("code", &[3]), ("data", &deep)]);
        assert!(parse_msgpack_request(&in_data).is_err());
        // An array's announced length is not trusted for allocation.
        let huge = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_msgpack_request(&huge).is_err());
    }

    #[test]
    fn msgpack_replies_have_the_json_keys() {
        let id = json!("r-1");
        let reply = Reply::new(Code::LoggedIn).uid("ann").id(Some(&id));
        let frame = reply.frame(WireFormat::Msgpack);
        assert_eq!(frame[0], 0x82, "a binary frame");
        let json = reply.frame(WireFormat::Json);
        assert_eq!(json[0], 0x81, "a text frame");
        let decoded: Value = rmp_serde::from_slice(&frame[2..]).expect("msgpack");
        let expected: Value = serde_json::from_slice(&json[2..]).expect("json");
        assert_eq!(decoded, expected);
        assert_eq!(
            decoded,
            json!({"code": 20003, "message": "logged in", "uid": "ann", "id": "r-1"})
        );
        // Exact bytes of the greeting: a map of two, the code as uint16.
        let hello = Reply::new(Code::Connected).frame(WireFormat::Msgpack);
        assert_eq!(
            &hello[..],
            b"\x82\x1b\x82\xa4code\xcd\x4e\x20\xa7message\xa9connected"
        );
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

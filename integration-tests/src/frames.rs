//! Client protocol codes and the exact JSON frames tests expect, and
//! [`MsgValue`] with the exact MessagePack pushes ([`msgpack`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;

/// Request and reply codes of the client protocol (the original gpush ones).
pub mod code {
    /// Request: subscribe to a public topic.
    pub const SUBSCRIBE: u64 = 1;
    /// Request: unsubscribe from a public topic.
    pub const UNSUBSCRIBE: u64 = 2;
    /// Request: log in (`data` = token).
    pub const LOGIN: u64 = 3;
    /// Request: log out (drops every private subscription).
    pub const LOGOUT: u64 = 4;
    /// Request: subscribe to a private topic (needs login).
    pub const SUBSCRIBE_PRIVATE: u64 = 5;
    /// Request: unsubscribe from a private topic (needs login).
    pub const UNSUBSCRIBE_PRIVATE: u64 = 6;

    /// Push to a public topic.
    pub const PUSH_PUBLIC: u64 = 10001;
    /// Push to a private topic, or to every connection of a user.
    pub const PUSH_PRIVATE: u64 = 10002;
    /// Push to everyone.
    pub const PUSH_EVERYONE: u64 = 10003;

    /// Sent on open.
    pub const CONNECTED: u64 = 20000;
    /// Subscribed.
    pub const SUBSCRIBED: u64 = 20001;
    /// Unsubscribed.
    pub const UNSUBSCRIBED: u64 = 20002;
    /// Logged in.
    pub const LOGGED_IN: u64 = 20003;
    /// Logged out.
    pub const LOGGED_OUT: u64 = 20004;
    /// Bad request: bad JSON, unknown code, missing field.
    pub const BAD_REQUEST: u64 = 30001;
    /// Not logged in.
    pub const NOT_LOGGED_IN: u64 = 30002;
    /// Authentication failed.
    pub const AUTH_FAILED: u64 = 30003;
    /// Invalid topic.
    pub const INVALID_TOPIC: u64 = 30004;
    /// Limit reached (subscriptions per connection).
    pub const LIMIT_REACHED: u64 = 30005;
    /// Rate limited (requests per connection).
    pub const RATE_LIMITED: u64 = 30006;
}

/// WebSocket close codes the edge uses.
pub mod close {
    /// The edge is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The connection was silent for `idle_timeout`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's outgoing queue overflowed (slow consumer).
    pub const SLOW_CONSUMER: u16 = 4001;
    /// The client kept sending over its request rate.
    pub const TOO_MANY_REQUESTS: u16 = 4002;
    /// A message larger than `max_message`.
    pub const TOO_BIG: u16 = 1009;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A WebSocket protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
}

/// Whether `frame` is a push (code 10001..=10003).
pub fn is_push(frame: &Value) -> bool {
    matches!(
        frame["code"].as_u64(),
        Some(code::PUSH_PUBLIC..=code::PUSH_EVERYONE)
    )
}

/// Whether `frame` is a reply (a JSON object with a code of 20000 or more
/// and a message).
pub fn is_reply(frame: &Value) -> bool {
    frame["code"].as_u64().is_some_and(|c| c >= code::CONNECTED) && frame["message"].is_string()
}

/// How the edge represents payload `data` in a JSON push: the payload
/// itself when it is JSON, a JSON string when it is other UTF-8, and a
/// base64 string otherwise (in which case the push also carries
/// `"encoding":"base64"`). Returns the `data` value and whether it is
/// base64.
pub fn payload_value(data: &[u8]) -> (Value, bool) {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        (value, false)
    } else if let Ok(text) = std::str::from_utf8(data) {
        (Value::String(text.to_owned()), false)
    } else {
        (Value::String(BASE64.encode(data)), true)
    }
}

fn with_data(mut frame: Value, data: &[u8]) -> Value {
    let (value, base64) = payload_value(data);
    frame["data"] = value;
    if base64 {
        frame["encoding"] = json!("base64");
    }
    frame
}

/// The push a subscriber of public topic `topic` receives for `data`.
pub fn public(topic: &str, data: &[u8]) -> Value {
    with_data(json!({"code": code::PUSH_PUBLIC, "topic": topic}), data)
}

/// `got` as a test compares it with `expected`: without the history
/// `offset` a push carries when `expected` names none (tests of other
/// features do not spell offsets out; the history tests check them).
pub fn comparable(mut got: Value, expected: &Value) -> Value {
    if expected.get("offset").is_none()
        && let Some(object) = got.as_object_mut()
    {
        object.remove("offset");
    }
    got
}

/// The push a connection subscribed to private topic `topic` receives.
pub fn private(topic: &str, data: &[u8]) -> Value {
    with_data(json!({"code": code::PUSH_PRIVATE, "topic": topic}), data)
}

/// The push every connection of a user receives for a user-wide push
/// (no topic).
pub fn user(data: &[u8]) -> Value {
    with_data(json!({"code": code::PUSH_PRIVATE}), data)
}

/// The push every connection receives for an everyone push.
pub fn everyone(data: &[u8]) -> Value {
    with_data(json!({"code": code::PUSH_EVERYONE}), data)
}

/// A decoded MessagePack value that keeps what JSON loses: bin apart from
/// str, and the exact keys of a map. Integers compare by value whatever
/// their width on the wire; maps compare regardless of key order (the
/// protocol does not fix one) and must have str keys.
#[derive(Debug, Clone, PartialEq)]
pub enum MsgValue {
    /// nil.
    Nil,
    /// true or false.
    Bool(bool),
    /// Any integer.
    Int(i128),
    /// float 32 or float 64.
    Float(f64),
    /// str.
    Str(String),
    /// bin.
    Bin(Vec<u8>),
    /// array.
    Array(Vec<MsgValue>),
    /// map with str keys.
    Map(BTreeMap<String, MsgValue>),
}

impl MsgValue {
    /// `self` without the history `offset` when `expected` has none; see
    /// [`comparable`].
    pub fn comparable(mut self, expected: &MsgValue) -> Self {
        if let (MsgValue::Map(got), MsgValue::Map(want)) = (&mut self, expected)
            && !want.contains_key("offset")
        {
            got.remove("offset");
        }
        self
    }

    /// A map of `entries`.
    pub fn map<'a>(entries: impl IntoIterator<Item = (&'a str, MsgValue)>) -> Self {
        MsgValue::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// bin holding `bytes`.
    pub fn bin(bytes: &[u8]) -> Self {
        MsgValue::Bin(bytes.to_vec())
    }

    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&MsgValue> {
        match self {
            MsgValue::Map(map) => map.get(key),
            _ => None,
        }
    }

    /// Adds or replaces `key` of a map; panics on anything else.
    pub fn insert(&mut self, key: &str, value: MsgValue) {
        match self {
            MsgValue::Map(map) => {
                map.insert(key.to_owned(), value);
            }
            other => panic!("not a map: {other:?}"),
        }
    }

    /// The same value as JSON, or `None` when it holds bin (which JSON
    /// cannot tell from a string) or an integer JSON numbers cannot hold.
    pub fn to_json(&self) -> Option<Value> {
        Some(match self {
            MsgValue::Nil => Value::Null,
            MsgValue::Bool(b) => Value::Bool(*b),
            MsgValue::Int(i) => match (u64::try_from(*i), i64::try_from(*i)) {
                (Ok(u), _) => u.into(),
                (_, Ok(i)) => i.into(),
                _ => return None,
            },
            MsgValue::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
            MsgValue::Str(s) => Value::String(s.clone()),
            MsgValue::Bin(_) => return None,
            MsgValue::Array(items) => items
                .iter()
                .map(MsgValue::to_json)
                .collect::<Option<Vec<_>>>()?
                .into(),
            MsgValue::Map(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), v.to_json()?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }

    /// The MessagePack encoding (maps with str keys, bin as bin).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("MessagePack encoding into a Vec")
    }

    /// Decodes exactly one value filling all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut decoder = rmp_serde::Deserializer::new(Cursor::new(bytes));
        let value = MsgValue::deserialize(&mut decoder).map_err(|e| e.to_string())?;
        match decoder.position() {
            read if read == bytes.len() as u64 => Ok(value),
            read => Err(format!(
                "{} bytes after the first value",
                bytes.len() as u64 - read
            )),
        }
    }
}

impl From<&str> for MsgValue {
    fn from(s: &str) -> Self {
        MsgValue::Str(s.to_owned())
    }
}

impl From<u64> for MsgValue {
    fn from(i: u64) -> Self {
        MsgValue::Int(i.into())
    }
}

impl From<i64> for MsgValue {
    fn from(i: i64) -> Self {
        MsgValue::Int(i.into())
    }
}

impl Serialize for MsgValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MsgValue::Nil => serializer.serialize_unit(),
            MsgValue::Bool(b) => serializer.serialize_bool(*b),
            MsgValue::Int(i) => match (u64::try_from(*i), i64::try_from(*i)) {
                (Ok(u), _) => serializer.serialize_u64(u),
                (_, Ok(i)) => serializer.serialize_i64(i),
                _ => Err(serde::ser::Error::custom(format!(
                    "{i} does not fit 64 bits"
                ))),
            },
            MsgValue::Float(f) => serializer.serialize_f64(*f),
            MsgValue::Str(s) => serializer.serialize_str(s),
            MsgValue::Bin(b) => serializer.serialize_bytes(b),
            MsgValue::Array(items) => serializer.collect_seq(items),
            MsgValue::Map(map) => serializer.collect_map(map),
        }
    }
}

impl<'de> Deserialize<'de> for MsgValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MsgVisitor)
    }
}

struct MsgVisitor;

impl<'de> Visitor<'de> for MsgVisitor {
    type Value = MsgValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<MsgValue, E> {
        Ok(MsgValue::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<MsgValue, E> {
        Ok(MsgValue::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<MsgValue, E> {
        Ok(MsgValue::Int(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<MsgValue, E> {
        Ok(MsgValue::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<MsgValue, E> {
        Ok(MsgValue::Str(v.to_owned()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<MsgValue, E> {
        Ok(MsgValue::Bin(v.to_vec()))
    }

    fn visit_unit<E>(self) -> Result<MsgValue, E> {
        Ok(MsgValue::Nil)
    }

    fn visit_none<E>(self) -> Result<MsgValue, E> {
        Ok(MsgValue::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<MsgValue, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MsgValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(MsgValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MsgValue, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<MsgValue, MsgValue>()? {
            let MsgValue::Str(key) = key else {
                return Err(de::Error::custom(format!("map key {key:?} is not a str")));
            };
            if entries.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("map key {key:?} appears twice")));
            }
        }
        Ok(MsgValue::Map(entries))
    }
}

/// The exact pushes a `gpush.msgpack` connection receives: the keys of the
/// JSON pushes, with `data` the payload as bin whatever it holds.
pub mod msgpack {
    use super::{MsgValue, code};

    fn push(code: u64, topic: Option<&str>, data: &[u8]) -> MsgValue {
        let mut push = MsgValue::map([("code", code.into()), ("data", MsgValue::bin(data))]);
        if let Some(topic) = topic {
            push.insert("topic", topic.into());
        }
        push
    }

    /// The push a subscriber of public topic `topic` receives for `data`.
    pub fn public(topic: &str, data: &[u8]) -> MsgValue {
        push(code::PUSH_PUBLIC, Some(topic), data)
    }

    /// The push a connection subscribed to private topic `topic` receives.
    pub fn private(topic: &str, data: &[u8]) -> MsgValue {
        push(code::PUSH_PRIVATE, Some(topic), data)
    }

    /// The push every connection of a user receives for a user-wide push.
    pub fn user(data: &[u8]) -> MsgValue {
        push(code::PUSH_PRIVATE, None, data)
    }

    /// The push every connection receives for an everyone push.
    pub fn everyone(data: &[u8]) -> MsgValue {
        push(code::PUSH_EVERYONE, None, data)
    }
}

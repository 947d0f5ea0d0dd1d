//! Client requests: the request codes, and parsing one message, JSON text
//! or MessagePack binary, into a [`Request`] or a [`BadRequest`].

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
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
/// Request code: who is subscribed to a public topic, cluster-wide (reply
/// 20005; 30007 unless the topic's `[presence]` rule allows queries and
/// the connection is subscribed to it).
pub const PRESENCE: i64 = 7;

/// How deeply a MessagePack request may nest, as serde_json limits JSON.
/// Requests hardly nest at all; the bound keeps decoding off deep stacks.
const MAX_MSGPACK_DEPTH: usize = 128;

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
    /// Code 7.
    Presence(String),
}

/// A parsed request: the command and the `id` to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Echoed in the reply when present.
    pub id: Option<Value>,
    /// Subscribes (codes 1 and 5) and logins (3): the position the client
    /// had, to recover what it missed since.
    pub since: Option<Since>,
}

/// `"since":{"offset":N,"epoch":E}`: the last offset a client received of
/// a stream, in that stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The last offset received.
    pub offset: u64,
    /// The epoch it belongs to.
    pub epoch: String,
}

/// Longest epoch a `since` may carry; the edge's are far shorter.
pub const MAX_EPOCH_LEN: usize = 64;

/// Reads a request's `since`.
fn since(value: Option<Value>, id: &Option<Value>) -> Result<Option<Since>, BadRequest> {
    let object = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(bad(id.clone(), "field since must be an object".into())),
    };
    let offset = object
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            bad(
                id.clone(),
                "field since.offset must be a non-negative integer".into(),
            )
        })?;
    let epoch = match object.get("epoch") {
        Some(Value::String(epoch)) if epoch.len() <= MAX_EPOCH_LEN => epoch.clone(),
        _ => {
            return Err(bad(
                id.clone(),
                format!("field since.epoch must be a string of at most {MAX_EPOCH_LEN} bytes"),
            ));
        }
    };
    Ok(Some(Since { offset, epoch }))
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
        PRESENCE => Command::Presence(topic()?),
        other => return Err(bad(id, format!("unknown code {other} (expected 1-7)"))),
    };
    let since = match command {
        Command::Subscribe(_) | Command::SubscribePrivate(_) | Command::Login(_) => {
            since(object.remove("since"), &id)?
        }
        _ => None,
    };
    Ok(Request { command, id, since })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::{bin, msgpack};
    use crate::protocol::{Code, Reply, WireFormat};
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
            (r#"{"code":7,"topic":"t"}"#, Command::Presence("t".into())),
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
            r#"{"code":7,"topic":"chat.1","id":9}"#,
            r#"{"code":7,"id":9}"#,
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
                since: None,
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
}

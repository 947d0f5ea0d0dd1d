//! The client protocol: requests, replies, and how a push is framed.
//!
//! Requests are JSON text messages `{"code":N,"topic":"...","data":...,"id":...}`;
//! replies are `{"code":C,"message":"...","topic"?,"id"?,"detail"?,"uid"?}`
//! with the reply codes of the original gpush. Pushes are framed once per
//! wire format and the same bytes go to every connection.

use crate::ws;
use base64::Engine as _;
use bytes::Bytes;
use gpush_common::{Push, Route};
use serde::Serialize;
use serde_json::Value;
use std::cell::OnceCell;

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

/// Parses one text message as a request.
pub fn parse_request(text: &[u8]) -> Result<Request, BadRequest> {
    let bad = |id: Option<Value>, detail: String| BadRequest { id, detail };
    let value: Value =
        serde_json::from_slice(text).map_err(|e| bad(None, format!("invalid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad(None, "request must be a JSON object".into()));
    };
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

    /// The reply as a text frame.
    pub fn frame(&self) -> Bytes {
        // Serialising strings and numbers cannot fail.
        ws::text(&serde_json::to_vec(self).unwrap_or_default())
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
}

impl WireFormat {
    /// Subprotocols we speak, by name.
    pub const SUBPROTOCOLS: [(&'static str, WireFormat); 2] = [
        ("gpush.json", WireFormat::Json),
        ("gpush.raw", WireFormat::Raw),
    ];
}

/// The frames of one push, encoded at most once per wire format and shared
/// by every connection it goes to.
#[derive(Debug)]
pub struct PushFrames<'a> {
    push: &'a Push,
    json: OnceCell<Bytes>,
    raw: OnceCell<Bytes>,
}

impl<'a> PushFrames<'a> {
    /// Frames for `push`, encoded lazily.
    pub fn new(push: &'a Push) -> Self {
        Self {
            push,
            json: OnceCell::new(),
            raw: OnceCell::new(),
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
        }
    }
}

/// The JSON push object: `{"code":C,"topic"?:T,"data":D,"encoding"?:"base64"}`.
pub fn json_push(push: &Push) -> Vec<u8> {
    let (code, topic) = match push.route() {
        Route::Everyone => (PUSH_EVERYONE, None),
        Route::Topic(topic) => (PUSH_PUBLIC, Some(topic)),
        Route::User { topic, .. } => (PUSH_PRIVATE, topic),
    };
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
            .frame();
        assert_eq!(
            &frame[2..],
            br#"{"code":20001,"message":"subscribed","topic":"t","id":5}"#
        );
        assert_eq!(
            &Reply::new(Code::Connected).frame()[2..],
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
    }
}

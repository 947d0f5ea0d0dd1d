//! Client protocol codes and the exact JSON frames tests expect.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

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
}

/// WebSocket close codes the edge uses.
pub mod close {
    /// The edge is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The connection was silent for `idle_timeout`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's outgoing queue overflowed (slow consumer).
    pub const SLOW_CONSUMER: u16 = 4001;
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

//! Replies to requests (and the greeting): the reply codes of the original
//! gpush, and a reply framed for a connection's wire format.

use super::WireFormat;
use crate::ws;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Reply codes, as in the original gpush; and the server API's 10008 and
/// 10009, which tell a client what the server changed (no request id).
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
    /// 10008: the server API subscribed the connection to `topic`
    /// (`private`, `keep`, and the stream's position where it keeps
    /// history).
    ServerSubscribed,
    /// 10009: the server API unsubscribed the connection from `topic`.
    ServerUnsubscribed,
    /// 20005: a topic's presence (request code 7): `users` (uid ->
    /// connections) and `anonymous`, cluster-wide.
    Presence,
    /// 30007: the request is not allowed here (`detail` says why): a
    /// presence query on a topic whose `[presence]` rule does not allow
    /// queries, or that the connection is not subscribed to.
    NotAllowed,
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
            Code::ServerSubscribed => 10008,
            Code::ServerUnsubscribed => 10009,
            Code::Presence => 20005,
            Code::NotAllowed => 30007,
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
            Code::ServerSubscribed => "subscribed by the server",
            Code::ServerUnsubscribed => "unsubscribed by the server",
            Code::Presence => "presence",
            Code::NotAllowed => "not allowed",
        }
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
    /// When the login expires (unix seconds), on login replies whose
    /// token expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    /// On 10008 and 10009: whether the topic is one of the user's private
    /// topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    private: Option<bool>,
    /// On 10008: whether the client should subscribe again after a
    /// reconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    keep: Option<bool>,
    /// On 20005: uid -> connections subscribed, cluster-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<UsersMap<'a>>,
    /// On 20005: connections subscribed without a login, cluster-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous: Option<u64>,
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
            expires: None,
            offset: None,
            epoch: None,
            recovered: None,
            private: None,
            keep: None,
            users: None,
            anonymous: None,
            id: None,
            detail: None,
        }
    }

    /// A topic's presence (20005): `users` as (uid, connections) pairs,
    /// written as a map in their order, and the anonymous connections.
    pub fn presence(mut self, users: &'a [(String, u64)], anonymous: u64) -> Self {
        self.users = Some(UsersMap(users));
        self.anonymous = Some(anonymous);
        self
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

    /// Adds when the login expires, if it does (login replies).
    pub fn expires(mut self, expires: Option<u64>) -> Self {
        self.expires = expires;
        self
    }

    /// A stream's position: its offset and epoch (subscribe and login
    /// replies, where the stream keeps history).
    pub fn position(mut self, offset: u64, epoch: &'a str) -> Self {
        self.offset = Some(offset);
        self.epoch = Some(epoch);
        self
    }

    /// Whether what was missed since the request's `since` follows.
    pub fn recovered(mut self, recovered: Option<bool>) -> Self {
        self.recovered = recovered;
        self
    }

    /// Says whether the topic is private (10008, 10009).
    pub fn private(mut self, private: bool) -> Self {
        self.private = Some(private);
        self
    }

    /// Says whether the client should keep the subscription (10008).
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = Some(keep);
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

/// (uid, connections) pairs serialised as a map (JSON object, MessagePack
/// map) without building one.
#[derive(Debug, Clone, Copy)]
struct UsersMap<'a>(&'a [(String, u64)]);

impl Serialize for UsersMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (uid, connections) in self.0 {
            map.serialize_entry(uid, connections)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn msgpack_replies_have_the_json_keys() {
        let id = json!("r-1");
        let reply = Reply::new(Code::LoggedIn)
            .uid("ann")
            .expires(Some(1_900_000_000))
            .id(Some(&id));
        let frame = reply.frame(WireFormat::Msgpack);
        assert_eq!(frame[0], 0x82, "a binary frame");
        let json = reply.frame(WireFormat::Json);
        assert_eq!(json[0], 0x81, "a text frame");
        let decoded: Value = rmp_serde::from_slice(&frame[2..]).expect("msgpack");
        let expected: Value = serde_json::from_slice(&json[2..]).expect("json");
        assert_eq!(decoded, expected);
        assert_eq!(
            decoded,
            json!({"code": 20003, "message": "logged in", "uid": "ann", "expires": 1_900_000_000, "id": "r-1"})
        );
        // Exact bytes of the greeting: a map of two, the code as uint16.
        let hello = Reply::new(Code::Connected).frame(WireFormat::Msgpack);
        assert_eq!(
            &hello[..],
            b"\x82\x1b\x82\xa4code\xcd\x4e\x20\xa7message\xa9connected"
        );
    }

    #[test]
    fn presence_replies_carry_a_users_map_in_both_formats() {
        let id = json!(3);
        let users = [("ann".to_owned(), 2), ("bob".to_owned(), 1)];
        let reply = Reply::new(Code::Presence)
            .topic("chat.1")
            .presence(&users, 4)
            .id(Some(&id));
        let json = reply.frame(WireFormat::Json);
        assert_eq!(
            &json[2..],
            br#"{"code":20005,"message":"presence","topic":"chat.1","users":{"ann":2,"bob":1},"anonymous":4,"id":3}"#
        );
        let frame = reply.frame(WireFormat::Msgpack);
        assert_eq!(frame[0], 0x82, "a binary frame");
        let decoded: Value = rmp_serde::from_slice(&frame[2..]).expect("msgpack");
        let expected: Value = serde_json::from_slice(&json[2..]).expect("json");
        assert_eq!(decoded, expected);
        let refused = Reply::new(Code::NotAllowed)
            .topic("t")
            .detail("why")
            .frame(WireFormat::Json);
        assert_eq!(
            &refused[2..],
            br#"{"code":30007,"message":"not allowed","topic":"t","detail":"why"}"#
        );
    }
}

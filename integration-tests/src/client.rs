//! A WebSocket client of the gpush client protocol.
//!
//! Every method that waits is bounded: it panics (naming the client) when
//! the expected frame does not come in time, so a test never hangs. Pushes
//! that arrive while the client waits for a reply are kept, in order, for
//! the next [`WsClient::next_push`]. Server WebSocket pings are answered by
//! tungstenite whenever the client reads.
//!
//! A client connected with [`MSGPACK_PROTOCOL`] sends its requests as
//! MessagePack binary frames and reads replies from them, so the request
//! helpers work unchanged; its pushes are read with
//! [`WsClient::next_msgpack_push`] as [`MsgValue`]s, which keep bin apart
//! from str.

use crate::frames::{self, MsgValue, code};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The subprotocol that makes the edge send bare payloads.
pub const RAW_PROTOCOL: &str = "gpush.raw";

/// The subprotocol that makes the edge speak MessagePack in binary frames.
pub const MSGPACK_PROTOCOL: &str = "gpush.msgpack";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What one read of the socket produced.
#[derive(Debug)]
enum Event {
    /// A text or binary frame.
    Data(Message),
    /// A pong (answer to our ping).
    Pong(Bytes),
    /// A close frame (`Some`), or the end of the stream / a socket error
    /// (`None`).
    Closed(Option<CloseFrame>),
}

/// A data frame as it arrived: the form pushes take in `gpush.raw` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// One WebSocket connection to an edge.
#[derive(Debug)]
pub struct WsClient {
    ws: Ws,
    label: String,
    next_id: u64,
    /// Data frames read while looking for something else (a reply, a pong),
    /// in arrival order.
    inbox: VecDeque<Message>,
    /// Requests and replies are MessagePack binary frames, not JSON text.
    msgpack: bool,
    /// The 20000 reply the edge greeted us with.
    greeting: Value,
}

impl WsClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:1234/ws`) and checks that the
    /// first frame is `{"code":20000,...}`.
    pub async fn connect(url: &str) -> Self {
        Self::open(url, None, None).await
    }

    /// Connects to a `wss://` `url` with TLS settings of its own (e.g. a
    /// root store holding a test CA), and checks the greeting as
    /// [`Self::connect`] does.
    pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::open(url, None, Some(Connector::Rustls(tls))).await
    }

    /// Connects asking for subprotocol `protocol` (e.g. [`RAW_PROTOCOL`]),
    /// checks that the edge selected it and that the first frame is still
    /// `{"code":20000,...}` (as a MessagePack map for [`MSGPACK_PROTOCOL`]).
    pub async fn connect_with_protocol(url: &str, protocol: &str) -> Self {
        Self::open(url, Some(protocol), None).await
    }

    async fn open(url: &str, protocol: Option<&str>, tls: Option<Connector>) -> Self {
        let mut request = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("bad WebSocket URL {url:?}: {e}"));
        if let Some(protocol) = protocol {
            let value = HeaderValue::from_str(protocol).expect("subprotocol header value");
            request
                .headers_mut()
                .insert("sec-websocket-protocol", value);
        }
        let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, tls);
        let (ws, response) = tokio::time::timeout(crate::TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| panic!("WebSocket handshake with {url} timed out"))
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url} failed: {e}"));
        if let Some(protocol) = protocol {
            let selected = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                selected,
                Some(protocol),
                "{url}: edge did not select subprotocol {protocol}"
            );
        }
        let mut client = Self {
            ws,
            label: url.to_owned(),
            next_id: 0,
            inbox: VecDeque::new(),
            msgpack: protocol == Some(MSGPACK_PROTOCOL),
            greeting: Value::Null,
        };
        let hello = client.next_reply(crate::TIMEOUT).await;
        assert_eq!(
            hello["code"],
            code::CONNECTED,
            "{url}: first frame should be the 20000 connected message, got {hello}"
        );
        assert!(
            client.inbox.is_empty(),
            "{url}: frames before the 20000 connected message: {:?}",
            client.inbox
        );
        client.greeting = hello;
        client
    }

    /// The 20000 connected reply the edge sent first, as JSON.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Names the client in failure messages (default: its URL).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The name used in failure messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        let label = &self.label;
        self.ws
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("{label}: send failed: {e}"));
    }

    /// Sends `value` as a JSON text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) {
        let label = &self.label;
        self.ws
            .send(Message::binary(data.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{label}: send failed: {e}"));
    }

    /// Sends `value` as a MessagePack binary frame.
    pub async fn send_msgpack(&mut self, value: &MsgValue) {
        self.send_binary(&value.encode()).await;
    }

    /// Sends `request` (a JSON object) with a fresh numeric `id` added
    /// unless it has one, and returns the reply carrying that `id`. On a
    /// MessagePack connection the request goes as the same map in
    /// MessagePack.
    pub async fn request_value(&mut self, mut request: Value) -> Value {
        let id = match request.get("id") {
            Some(id) => id.clone(),
            None => {
                self.next_id += 1;
                let id = json!(self.next_id);
                request["id"] = id.clone();
                id
            }
        };
        if self.msgpack {
            let encoded = rmp_serde::to_vec(&request).expect("MessagePack encoding");
            self.send_binary(&encoded).await;
        } else {
            self.send_json(&request).await;
        }
        let reply = self.next_reply(crate::TIMEOUT).await;
        assert_eq!(
            reply["id"], id,
            "{}: reply to {request} does not carry its id: {reply}",
            self.label
        );
        reply
    }

    /// Sends `request` (a MessagePack map, which may hold bin) with a fresh
    /// numeric `id` added unless it has one, and returns the reply carrying
    /// that `id`.
    pub async fn request_msgpack(&mut self, mut request: MsgValue) -> Value {
        let id = match request.get("id") {
            Some(id) => id.clone(),
            None => {
                self.next_id += 1;
                let id = MsgValue::from(self.next_id);
                request.insert("id", id.clone());
                id
            }
        };
        self.send_msgpack(&request).await;
        let reply = self.next_reply(crate::TIMEOUT).await;
        assert_eq!(
            Some(&reply["id"]),
            id.to_json().as_ref(),
            "{}: reply to {request:?} does not carry its id: {reply}",
            self.label
        );
        reply
    }

    /// Sends request `code` with `topic` and `data` (each omitted when
    /// `None`) and returns the reply.
    pub async fn request(&mut self, code: u64, topic: Option<&str>, data: Option<Value>) -> Value {
        let mut request = json!({"code": code});
        if let Some(topic) = topic {
            request["topic"] = json!(topic);
        }
        if let Some(data) = data {
            request["data"] = data;
        }
        self.request_value(request).await
    }

    /// Subscribes to public topic `topic`; returns the reply.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.request(code::SUBSCRIBE, Some(topic), None).await
    }

    /// Unsubscribes from public topic `topic`; returns the reply.
    pub async fn unsubscribe(&mut self, topic: &str) -> Value {
        self.request(code::UNSUBSCRIBE, Some(topic), None).await
    }

    /// Logs in with `token`; returns the reply.
    pub async fn login(&mut self, token: &str) -> Value {
        self.request(code::LOGIN, None, Some(json!(token))).await
    }

    /// Logs out; returns the reply.
    pub async fn logout(&mut self) -> Value {
        self.request(code::LOGOUT, None, None).await
    }

    /// Subscribes to private topic `topic`; returns the reply.
    pub async fn sub_private(&mut self, topic: &str) -> Value {
        self.request(code::SUBSCRIBE_PRIVATE, Some(topic), None)
            .await
    }

    /// Unsubscribes from private topic `topic`; returns the reply.
    pub async fn unsub_private(&mut self, topic: &str) -> Value {
        self.request(code::UNSUBSCRIBE_PRIVATE, Some(topic), None)
            .await
    }

    /// Subscribes to public `topic`, panicking unless the reply is 20001.
    pub async fn must_subscribe(&mut self, topic: &str) {
        let reply = self.subscribe(topic).await;
        self.assert_code(&reply, code::SUBSCRIBED, &format!("subscribe {topic:?}"));
    }

    /// Logs in with `token`, panicking unless the reply is 20003 for `uid`.
    pub async fn must_login(&mut self, token: &str, uid: &str) {
        let reply = self.login(token).await;
        self.assert_code(&reply, code::LOGGED_IN, &format!("login as {uid:?}"));
        assert_eq!(
            reply["uid"], uid,
            "{}: login reply names another uid: {reply}",
            self.label
        );
    }

    /// Subscribes to private `topic`, panicking unless the reply is 20001.
    pub async fn must_sub_private(&mut self, topic: &str) {
        let reply = self.sub_private(topic).await;
        self.assert_code(
            &reply,
            code::SUBSCRIBED,
            &format!("private subscribe {topic:?}"),
        );
    }

    /// Panics unless `reply` has code `expected`.
    pub fn assert_code(&self, reply: &Value, expected: u64, what: &str) {
        assert_eq!(
            reply["code"], expected,
            "{}: {what}: expected code {expected}, got {reply}",
            self.label
        );
    }

    async fn read(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let next = timeout_at(deadline, self.ws.next()).await.ok()?;
            return Some(match next {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => Event::Data(message),
                Some(Ok(Message::Pong(payload))) => Event::Pong(payload),
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => Event::Closed(frame),
                Some(Err(_)) | None => Event::Closed(None),
            });
        }
    }

    /// The next data frame (text or binary), from the inbox first; `None`
    /// when nothing arrives by `deadline`. Panics if the connection closes.
    async fn next_data(&mut self, deadline: Instant, what: &str) -> Option<Message> {
        if let Some(message) = self.inbox.pop_front() {
            return Some(message);
        }
        loop {
            match self.read(deadline).await {
                Some(Event::Data(message)) => return Some(message),
                Some(Event::Pong(_)) => continue,
                Some(Event::Closed(frame)) => {
                    panic!(
                        "{}: closed ({frame:?}) while waiting for {what}",
                        self.label
                    )
                }
                None => return None,
            }
        }
    }

    /// The next push (JSON text frame with code 10001..=10003). Panics on
    /// timeout, on close, or when the next data frame is anything else.
    pub async fn next_push(&mut self, within: Duration) -> Value {
        match self.try_next_push(within).await {
            Some(push) => push,
            None => panic!("{}: no push within {within:?}", self.label),
        }
    }

    /// The next push, or `None` if none arrives within `within` (for
    /// tests that retry until a path works again). Panics on close or when
    /// the next data frame is not a push.
    pub async fn try_next_push(&mut self, within: Duration) -> Option<Value> {
        let message = self.next_data(Instant::now() + within, "a push").await?;
        let value = match &message {
            Message::Text(text) => serde_json::from_str::<Value>(text.as_str()).ok(),
            _ => None,
        };
        match value {
            Some(value) if frames::is_push(&value) => Some(value),
            _ => panic!("{}: expected a push, got {message:?}", self.label),
        }
    }

    /// The next data frame, which must be a binary frame holding exactly
    /// one MessagePack value. Panics on timeout, on close, or otherwise.
    pub async fn next_msgpack(&mut self, within: Duration) -> MsgValue {
        match self
            .next_data(Instant::now() + within, "a MessagePack frame")
            .await
        {
            Some(Message::Binary(data)) => MsgValue::decode(&data).unwrap_or_else(|e| {
                panic!(
                    "{}: binary frame {data:x?} is not MessagePack: {e}",
                    self.label
                )
            }),
            Some(other) => panic!("{}: expected a binary frame, got {other:?}", self.label),
            None => panic!("{}: no frame within {within:?}", self.label),
        }
    }

    /// The next push on a MessagePack connection (a map with code
    /// 10001..=10003). Panics on timeout, on close, or when the next data
    /// frame is anything else.
    pub async fn next_msgpack_push(&mut self, within: Duration) -> MsgValue {
        let push = self.next_msgpack(within).await;
        let is_push = matches!(
            push.get("code"),
            Some(MsgValue::Int(c)) if (i128::from(code::PUSH_PUBLIC)..=i128::from(code::PUSH_EVERYONE)).contains(c)
        );
        assert!(is_push, "{}: expected a push, got {push:?}", self.label);
        push
    }

    /// The next push on a MessagePack connection, which must equal
    /// `expected` (same keys, same values, bin as bin).
    pub async fn expect_msgpack_push(&mut self, expected: &MsgValue) {
        let got = self.next_msgpack_push(crate::TIMEOUT).await;
        let got = got.comparable(expected);
        assert_eq!(&got, expected, "{}: wrong push", self.label);
    }

    /// The next `expected.len()` MessagePack pushes, compared with
    /// `expected` ignoring order.
    pub async fn expect_msgpack_pushes_unordered(&mut self, expected: &[MsgValue]) {
        let mut got = Vec::with_capacity(expected.len());
        for want in expected {
            let push = self.next_msgpack_push(crate::TIMEOUT).await;
            got.push(format!("{:?}", push.comparable(want)));
        }
        let mut want: Vec<String> = expected.iter().map(|v| format!("{v:?}")).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}: wrong pushes", self.label);
    }

    /// The next `n` pushes.
    pub async fn next_pushes(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let mut pushes = Vec::with_capacity(n);
        for _ in 0..n {
            pushes.push(self.next_push(within).await);
        }
        pushes
    }

    /// The next `expected.len()` pushes, compared with `expected` ignoring
    /// order (pushes on different routes may interleave either way).
    pub async fn expect_pushes_unordered(&mut self, expected: &[Value]) {
        let mut got: Vec<String> = self
            .next_pushes(expected.len(), crate::TIMEOUT)
            .await
            .into_iter()
            .zip(expected)
            .map(|(got, want)| frames::comparable(got, want).to_string())
            .collect();
        let mut want: Vec<String> = expected.iter().map(Value::to_string).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}: wrong pushes", self.label);
    }

    /// The next push, which must equal `expected`.
    pub async fn expect_push(&mut self, expected: &Value) {
        let got = frames::comparable(self.next_push(crate::TIMEOUT).await, expected);
        assert_eq!(&got, expected, "{}: wrong push", self.label);
    }

    /// The next data frame as it arrived, for `gpush.raw` connections.
    pub async fn next_raw(&mut self, within: Duration) -> RawFrame {
        match self.next_data(Instant::now() + within, "a frame").await {
            Some(Message::Text(text)) => RawFrame::Text(text.as_str().to_owned()),
            Some(Message::Binary(data)) => RawFrame::Binary(data.to_vec()),
            Some(other) => panic!("{}: unexpected frame {other:?}", self.label),
            None => panic!("{}: no frame within {within:?}", self.label),
        }
    }

    /// `message` as a reply of this client's format, if it is one: a JSON
    /// text frame, or a binary frame holding a MessagePack map without bin
    /// (returned as the same JSON).
    fn as_reply(&self, message: &Message) -> Option<Value> {
        let value = match message {
            Message::Text(text) if !self.msgpack => serde_json::from_str(text.as_str()).ok()?,
            Message::Binary(data) if self.msgpack => MsgValue::decode(data).ok()?.to_json()?,
            _ => return None,
        };
        frames::is_reply(&value).then_some(value)
    }

    /// The next reply (a JSON object with a code of 20000 or more, or on a
    /// MessagePack connection the same map in MessagePack, returned as
    /// JSON); pushes and other data frames read meanwhile are kept for
    /// later.
    pub async fn next_reply(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Some(Event::Data(message)) => {
                    if let Some(value) = self.as_reply(&message) {
                        return value;
                    }
                    self.inbox.push_back(message);
                }
                Some(Event::Pong(_)) => continue,
                Some(Event::Closed(frame)) => {
                    panic!(
                        "{}: closed ({frame:?}) while waiting for a reply",
                        self.label
                    )
                }
                None => panic!("{}: no reply within {within:?}", self.label),
            }
        }
    }

    /// The next text frame that is neither a push nor a reply (such as
    /// `pong`); pushes read meanwhile are kept for later.
    pub async fn next_text(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Some(Event::Data(message)) => {
                    if let Message::Text(text) = &message {
                        // On a MessagePack connection no text frame is a
                        // push or a reply.
                        let parsed = serde_json::from_str::<Value>(text.as_str()).ok();
                        if self.msgpack
                            || !parsed
                                .as_ref()
                                .is_some_and(|v| frames::is_push(v) || frames::is_reply(v))
                        {
                            return text.as_str().to_owned();
                        }
                    }
                    self.inbox.push_back(message);
                }
                Some(Event::Pong(_)) => continue,
                Some(Event::Closed(frame)) => {
                    panic!("{}: closed ({frame:?}) while waiting for text", self.label)
                }
                None => panic!("{}: no text frame within {within:?}", self.label),
            }
        }
    }

    /// Sends a WebSocket ping with `payload` and waits for the matching pong.
    pub async fn ws_ping(&mut self, payload: &[u8]) {
        let label = self.label.clone();
        self.ws
            .send(Message::Ping(Bytes::copy_from_slice(payload)))
            .await
            .unwrap_or_else(|e| panic!("{label}: sending ping failed: {e}"));
        let deadline = Instant::now() + crate::TIMEOUT;
        loop {
            match self.read(deadline).await {
                Some(Event::Pong(got)) if got.as_ref() == payload => return,
                Some(Event::Pong(_)) => continue,
                Some(Event::Data(message)) => self.inbox.push_back(message),
                Some(Event::Closed(frame)) => {
                    panic!("{label}: closed ({frame:?}) while waiting for a pong")
                }
                None => panic!("{label}: no pong within {:?}", crate::TIMEOUT),
            }
        }
    }

    /// Listens for `quiet` and panics if any data frame arrives (or the
    /// connection closes). Keeps answering server pings meanwhile.
    pub async fn expect_no_push(&mut self, quiet: Duration) {
        if let Some(message) = self.inbox.pop_front() {
            panic!("{}: expected nothing, got {message:?}", self.label);
        }
        let deadline = Instant::now() + quiet;
        loop {
            match self.read(deadline).await {
                None => return,
                Some(Event::Pong(_)) => continue,
                Some(Event::Data(message)) => {
                    panic!("{}: expected nothing, got {message:?}", self.label)
                }
                Some(Event::Closed(frame)) => {
                    panic!("{}: expected nothing, but closed: {frame:?}", self.label)
                }
            }
        }
    }

    /// Reads until the connection closes, discarding data frames; returns
    /// the close frame, or `None` when the stream just ended (EOF or
    /// reset). Panics if it stays open for `within`.
    pub async fn next_close(&mut self, within: Duration) -> Option<CloseFrame> {
        self.inbox.clear();
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Some(Event::Closed(frame)) => return frame,
                Some(_) => continue,
                None => panic!("{}: still open after {within:?}", self.label),
            }
        }
    }

    /// Reads every data frame until the connection closes, allowing `gap`
    /// between frames; returns the frames and the close frame (`None` for
    /// EOF or reset).
    pub async fn read_until_close(&mut self, gap: Duration) -> (Vec<RawFrame>, Option<CloseFrame>) {
        let mut frames: Vec<RawFrame> = self.inbox.drain(..).filter_map(raw).collect();
        loop {
            match self.read(Instant::now() + gap).await {
                Some(Event::Data(message)) => frames.extend(raw(message)),
                Some(Event::Pong(_)) => continue,
                Some(Event::Closed(frame)) => return (frames, frame),
                None => panic!(
                    "{}: still open {gap:?} after the last of {} frames",
                    self.label,
                    frames.len()
                ),
            }
        }
    }

    /// Closes the connection politely (bounded wait).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(crate::TIMEOUT, self.ws.close(None)).await;
    }
}

/// Listens on every client at once for [`crate::QUIET`] and panics if any
/// of them receives a data frame or is closed.
pub async fn expect_all_quiet<'a>(clients: impl IntoIterator<Item = &'a mut WsClient>) {
    futures_util::future::join_all(
        clients
            .into_iter()
            .map(|client| client.expect_no_push(crate::QUIET)),
    )
    .await;
}

fn raw(message: Message) -> Option<RawFrame> {
    match message {
        Message::Text(text) => Some(RawFrame::Text(text.as_str().to_owned())),
        Message::Binary(data) => Some(RawFrame::Binary(data.to_vec())),
        _ => None,
    }
}

/// The close code of `frame`, if any.
pub fn close_code(frame: &Option<CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}

//! The client protocol, by concept:
//!
//! - [`request`]: what a client may ask, parsed from JSON text or
//!   MessagePack binary messages;
//! - [`reply`]: the reply codes and how a reply is framed;
//! - [`push`]: how a push is framed, once per wire format.
//!
//! Requests are JSON text messages `{"code":N,"topic":"...","data":...,"id":...}`;
//! replies are `{"code":C,"message":"...","topic"?,"id"?,"detail"?,"uid"?}`
//! with the reply codes of the original gpush. Pushes are framed once per
//! wire format and the same bytes go to every connection.
//!
//! A `gpush.msgpack` connection speaks the same protocol in binary frames
//! holding MessagePack maps: requests and replies have the same keys and
//! values as in JSON, and a push carries its payload as bin, byte for byte.

pub mod push;
pub mod reply;
pub mod request;

pub use push::PushFrames;
pub use reply::{Code, Reply};
pub use request::{
    BadRequest, Command, LOGIN, LOGOUT, PRESENCE, Request, SUBSCRIBE, SUBSCRIBE_PRIVATE,
    UNSUBSCRIBE, UNSUBSCRIBE_PRIVATE, parse_msgpack_request, parse_request,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_is_a_subprotocol() {
        assert!(
            WireFormat::SUBPROTOCOLS.contains(&("gpush.msgpack", WireFormat::Msgpack)),
            "{:?}",
            WireFormat::SUBPROTOCOLS
        );
    }
}

/// Helpers shared by the protocol's tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;

    pub(crate) fn msgpack(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).expect("encode")
    }

    /// MessagePack bin8 holding `bytes`.
    pub(crate) fn bin(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc4, u8::try_from(bytes.len()).expect("bin8")];
        out.extend_from_slice(bytes);
        out
    }
}

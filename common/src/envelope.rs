//! The MessagePack body of a bus message.
//!
//! A map with short keys (`u`, `t`, `d`, `ts`), so fields can be added later
//! without breaking edges that run an older version: unknown keys are ignored
//! and missing ones take their defaults.

use crate::push::Push;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Serialised form of a [`Push`] on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "u", default, borrow)]
    uid: std::borrow::Cow<'a, str>,
    #[serde(rename = "t", default, borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(rename = "d", default)]
    data: Bytes,
    #[serde(rename = "ts", default)]
    sent_at_us: u64,
}

/// A bus message that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed bus envelope: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// Encodes a push for the bus.
pub fn encode(push: &Push) -> Bytes {
    let envelope = Envelope {
        uid: push.uid.as_str().into(),
        topic: push.topic.as_str().into(),
        data: push.data.clone(),
        sent_at_us: push.sent_at_us,
    };
    // Sized up front (keys, markers and lengths take < 32 bytes): this runs
    // once per published message. Serialising strings, bytes and an integer
    // into a Vec cannot fail.
    let mut body = Vec::with_capacity(push.uid.len() + push.topic.len() + push.data.len() + 32);
    let _ = rmp_serde::encode::write_named(&mut body, &envelope);
    body.into()
}

/// Decodes a bus message.
pub fn decode(body: &[u8]) -> Result<Push, DecodeError> {
    let envelope: Envelope<'_> = rmp_serde::from_slice(body)?;
    Ok(Push {
        uid: envelope.uid.into_owned(),
        topic: envelope.topic.into_owned(),
        data: envelope.data,
        sent_at_us: envelope.sent_at_us,
        offset: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let push = Push {
            uid: "u.1".into(),
            topic: "a*b".into(),
            data: Bytes::from_static(b"\x00\xffbinary"),
            sent_at_us: 1_700_000_000_000_000,
            offset: 0,
        };
        assert_eq!(decode(&encode(&push)).expect("decode"), push);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\xc1",
            b"\x92\x01",
            b"{\"u\":1}",
            b"\xde\xff\xff",
        ] {
            assert!(decode(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored() {
        #[derive(Serialize)]
        struct Newer<'a> {
            u: &'a str,
            t: &'a str,
            #[serde(with = "serde_bytes_compat")]
            d: &'a [u8],
            ts: u64,
            extra: u32,
        }
        mod serde_bytes_compat {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let body = rmp_serde::to_vec_named(&Newer {
            u: "",
            t: "x",
            d: b"hi",
            ts: 5,
            extra: 9,
        })
        .expect("encode");
        let push = decode(&body).expect("decode");
        assert_eq!((push.topic.as_str(), &push.data[..]), ("x", &b"hi"[..]));
    }
}

//! The few pieces of WebSocket (RFC 6455) the bench speaks, by hand.
//!
//! Both the load clients and the baseline server need only a sliver of the
//! protocol: the HTTP upgrade, masked client text frames, unmasked server
//! text frames, and a walker over a buffer of server frames. Writing them
//! here keeps the clients lean enough that the server, not the client, is
//! what a benchmark measures.

use bytes::{BufMut, Bytes, BytesMut};

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Key` every bench client sends (any 16 bytes, base64).
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The mask of every client frame. Any value is valid; a fixed one is free.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// An upgrade request or response head longer than this is refused.
pub const MAX_HEAD: usize = 8 * 1024;

/// What is wrong with an upgrade exchange or a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The server answered the upgrade with something other than 101.
    #[error("upgrade refused: {0}")]
    Refused(String),
    /// The request lacks `Sec-WebSocket-Key`.
    #[error("upgrade request without Sec-WebSocket-Key")]
    NoKey,
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("HTTP head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// A server frame had the mask bit set, or a length that does not fit.
    #[error("malformed server frame (header {0:02x?})")]
    BadFrame([u8; 2]),
}

/// The client's upgrade request for `ws://<host><path>`.
pub fn upgrade_request(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Length of the HTTP head in `buf` (through the blank line), if complete.
pub fn head_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    match find(buf, b"\r\n\r\n") {
        Some(end) => Ok(Some(end + 4)),
        None if buf.len() > MAX_HEAD => Err(WireError::HeadTooLong),
        None => Ok(None),
    }
}

/// Checks a complete response head: it must be `101 Switching Protocols`.
pub fn check_upgrade_response(head: &[u8]) -> Result<(), WireError> {
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        let first = head.split(|&b| b == b'\r').next().unwrap_or_default();
        Err(WireError::Refused(
            String::from_utf8_lossy(first).into_owned(),
        ))
    }
}

/// The `Sec-WebSocket-Key` of a complete request head.
pub fn request_key(head: &[u8]) -> Result<&[u8], WireError> {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"sec-websocket-key")
                .then(|| value[1..].trim_ascii())
        })
        .ok_or(WireError::NoKey)
}

/// The server's 101 answer to a request that carried `key`.
pub fn upgrade_response(key: &[u8]) -> String {
    let accept = tungstenite::handshake::derive_accept_key(key);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

fn put_header(out: &mut BytesMut, opcode: u8, len: usize, mask_bit: u8) {
    out.put_u8(0x80 | opcode);
    match len {
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
    }
}

/// A masked client frame (clients must mask; the mask is fixed).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    put_header(&mut out, opcode, payload.len(), 0x80);
    out.put_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    out.freeze()
}

/// An unmasked server text frame.
pub fn server_text(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, OP_TEXT, payload.len(), 0);
    out.put_slice(payload);
    out.freeze()
}

/// One complete server frame inside a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The opcode (`OP_*`).
    pub opcode: u8,
    /// The payload (server frames are not masked).
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// The status code of a close frame, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The first complete frame at the start of `buf` and its length on the
/// wire; `Ok(None)` when `buf` holds only part of a frame.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(WireError::BadFrame([*b0, *b1]));
    }
    let (len, header) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Ok(len) = usize::try_from(len) else {
        return Err(WireError::BadFrame([*b0, *b1]));
    };
    let total = header + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Frame {
        opcode: b0 & 0x0F,
        payload: &buf[header..total],
    };
    Ok(Some((frame, total)))
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after `key` (e.g. `"t":`) in a JSON text,
/// found by searching rather than parsing: the bench's payloads are its own.
pub fn u64_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(text, key)? + key.len();
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    text[start..start + digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The string right after `key` (e.g. `"u":"`) up to the next quote.
pub fn str_after<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(text, key)? + key.len();
    let len = text[start..].iter().position(|&b| b == b'"')?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_walker() {
        let short = server_text(b"hello");
        let medium = server_text(&[b'a'; 300]);
        let long = server_text(&vec![b'b'; 70_000]);
        let mut buf = Vec::new();
        for f in [&short, &medium, &long] {
            buf.extend_from_slice(f);
        }
        let mut at = 0;
        let mut lens = Vec::new();
        while let Some((frame, used)) = next_frame(&buf[at..]).expect("valid") {
            assert_eq!(frame.opcode, OP_TEXT);
            lens.push(frame.payload.len());
            at += used;
        }
        assert_eq!(lens, [5, 300, 70_000]);
        assert_eq!(at, buf.len());
        // Every strict prefix of a frame is incomplete, never an error.
        for cut in 0..medium.len() {
            assert_eq!(next_frame(&medium[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let frame = client_frame(OP_TEXT, b"{\"code\":1}");
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 0x80 | 10);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .zip(frame[2..6].iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"{\"code\":1}");
        assert!(matches!(next_frame(&frame), Err(WireError::BadFrame(_))));
    }

    #[test]
    fn handshake_pieces() {
        let request = upgrade_request("127.0.0.1:1", "/ws");
        let head_end = head_len(request.as_bytes()).expect("ok").expect("complete");
        assert_eq!(head_end, request.len());
        let key = request_key(request.as_bytes()).expect("key");
        assert_eq!(key, CLIENT_KEY.as_bytes());
        let response = upgrade_response(key);
        // The RFC 6455 example key and accept value.
        assert!(
            response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{response}"
        );
        assert_eq!(check_upgrade_response(response.as_bytes()), Ok(()));
        assert!(check_upgrade_response(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert_eq!(head_len(b"HTTP/1.1 101"), Ok(None));
    }

    #[test]
    fn fields_are_found_without_parsing() {
        let push =
            br#"{"code":10001,"topic":"bench","data":{"t":1712345678901234,"i":7,"u":"u42"}}"#;
        assert_eq!(u64_after(push, b"\"t\":"), Some(1_712_345_678_901_234));
        assert_eq!(u64_after(push, b"\"i\":"), Some(7));
        assert_eq!(str_after(push, b"\"u\":\""), Some(&b"u42"[..]));
        assert_eq!(u64_after(push, b"\"x\":"), None);
    }
}

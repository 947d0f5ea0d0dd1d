//! WebSocket framing owned by gpush: server frames are encoded once per push
//! and shared by every connection, and client frames are parsed from a
//! buffer that exists only while a frame is incomplete (the "half message").
//!
//! tungstenite's header parser and types are reused; what is ours is the
//! buffering, so an idle connection holds no read or write buffer.

use bytes::{Buf, Bytes, BytesMut};
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Encodes one unmasked server frame.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut out);
    out.extend_from_slice(payload);
    out.into()
}

/// A text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// A binary frame.
pub fn binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

/// A close frame with `code` and a reason (truncated to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// An empty ping frame. Static: the keepalive sweep sends the same bytes to
/// every connection.
pub static PING: Bytes = Bytes::from_static(b"\x89\x00");

/// A pong frame echoing `payload`.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with its code (if any).
    Close(Option<u16>),
}

/// The client broke the protocol; the connection must be closed (with the
/// code [`Close::from`](crate::close::Close) gives the error).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Malformed framing (unmasked frame, reserved bits, bad opcode, bad
    /// continuation, oversized control frame).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message larger than the configured maximum.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooBig {
        /// Size announced or accumulated so far.
        size: u64,
        /// The maximum.
        max: usize,
    },
    /// A text message that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// The client's close frame is invalid. The client has closed all
    /// the same: the answer ends the closing handshake.
    #[error("invalid close frame: {0}")]
    BadClose(BadClose),
}

/// What is wrong with a client's close frame (RFC 6455 5.5.1, 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadClose {
    /// A payload of one byte: too short for a code.
    #[error("payload of one byte")]
    OneByte,
    /// A code RFC 6455 7.4 forbids on the wire: 0-999, 1004-1006, 1015,
    /// 1016-2999 (unassigned in the IANA registry), 5000 and over.
    #[error("close code {0} may not be sent")]
    Code(u16),
    /// A reason that is not UTF-8.
    #[error("reason is not valid UTF-8")]
    ReasonNotUtf8,
}

/// Incremental parser of client frames.
///
/// Holds at most one incomplete frame and one incomplete fragmented
/// message, each bounded by `max_message`; both are released as soon as
/// they complete, so an idle connection owns no buffer.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes of an incomplete frame.
    partial: BytesMut,
    /// A fragmented message being assembled: its opcode and data so far.
    /// Boxed: rare, and this struct lives in every connection.
    fragments: Option<Box<(Data, BytesMut)>>,
}

impl FrameReader {
    /// Whether no partial frame or message is buffered.
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.fragments.is_none()
    }

    /// Parses every complete frame in `input` (prefixed by any buffered
    /// partial frame), appending messages to `out`. An incomplete tail is
    /// kept for the next call.
    pub fn feed(
        &mut self,
        input: &[u8],
        max_message: usize,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ReadError> {
        if self.partial.is_empty() {
            let used = self.parse(input, max_message, out)?;
            if used < input.len() {
                self.partial = BytesMut::from(&input[used..]);
            }
        } else {
            self.partial.extend_from_slice(input);
            let buf = std::mem::take(&mut self.partial);
            let used = self.parse(&buf, max_message, out)?;
            if used == 0 {
                // Still the same incomplete frame: keep the buffer as it
                // is. Copying it here would make a frame that trickles in
                // a byte at a time cost quadratic time.
                self.partial = buf;
            } else if used < buf.len() {
                // Copy only the tail, releasing the frames before it.
                self.partial = BytesMut::from(&buf[used..]);
            }
        }
        Ok(())
    }

    /// Parses complete frames from `buf`; returns how many bytes were used.
    fn parse(
        &mut self,
        buf: &[u8],
        max_message: usize,
        out: &mut Vec<Incoming>,
    ) -> Result<usize, ReadError> {
        let mut cursor = Cursor::new(buf);
        loop {
            let start = cursor.position() as usize;
            let header = FrameHeader::parse(&mut cursor)
                .map_err(|_| ReadError::Protocol("malformed frame header"))?;
            let Some((header, len)) = header else {
                return Ok(start);
            };
            // A control frame may come between a message's fragments: it is
            // no part of the message.
            let buffered = match header.opcode {
                OpCode::Control(_) => 0,
                OpCode::Data(_) => self.fragments.as_ref().map_or(0, |f| f.1.len() as u64),
            };
            if len.saturating_add(buffered) > max_message as u64 {
                return Err(ReadError::TooBig {
                    size: len.saturating_add(buffered),
                    max: max_message,
                });
            }
            let header_end = cursor.position() as usize;
            let len = len as usize;
            if buf.len() - header_end < len {
                return Ok(start);
            }
            cursor.advance(len);
            let mut payload = BytesMut::from(&buf[header_end..header_end + len]);
            self.frame(header, &mut payload, out)?;
        }
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &mut BytesMut,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ReadError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol("client frames must be masked"));
        };
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(ReadError::Protocol("invalid control frame"));
                }
                out.push(match control {
                    Control::Ping => Incoming::Ping(payload.split().freeze()),
                    Control::Pong => Incoming::Pong,
                    Control::Close => Incoming::Close(close_code(payload)?),
                    Control::Reserved(_) => {
                        return Err(ReadError::Protocol("reserved control opcode"));
                    }
                });
            }
            OpCode::Data(Data::Continue) => {
                let Some((_, data)) = self.fragments.as_deref_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                data.extend_from_slice(payload);
                if header.is_final
                    && let Some((kind, data)) = self.fragments.take().map(|f| *f)
                {
                    out.push(message(kind, data.freeze())?);
                }
            }
            OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                if self.fragments.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                let data = payload.split();
                if header.is_final {
                    out.push(message(kind, data.freeze())?);
                } else {
                    self.fragments = Some(Box::new((kind, data)));
                }
            }
            OpCode::Data(Data::Reserved(_)) => {
                return Err(ReadError::Protocol("reserved data opcode"));
            }
        }
        Ok(())
    }
}

fn message(kind: Data, data: Bytes) -> Result<Incoming, ReadError> {
    if kind == Data::Text {
        std::str::from_utf8(&data).map_err(|_| ReadError::InvalidUtf8)?;
        Ok(Incoming::Text(data))
    } else {
        Ok(Incoming::Binary(data))
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    let bad = |what| Err(ReadError::BadClose(what));
    match payload {
        [] => Ok(None),
        [_] => bad(BadClose::OneByte),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !may_be_sent(code) {
                return bad(BadClose::Code(code));
            }
            if std::str::from_utf8(reason).is_err() {
                return bad(BadClose::ReasonNotUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Whether a close frame may carry `code` (RFC 6455 7.4): the codes 7.4.1
/// defines except those reserved for "no code" and TLS failures, the IANA
/// registered 1012-1014, and the 3000-4999 ranges for libraries and
/// applications.
pub fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header
            .format(payload.len() as u64, &mut out)
            .expect("format");
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);

    #[test]
    fn server_frames_are_unmasked_and_sized() {
        assert_eq!(&text(b"hi")[..], b"\x81\x02hi");
        let big = text(&[b'a'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        assert_eq!(big.len(), 304);
        assert_eq!(&close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
        assert_eq!(PING, encode(OpCode::Control(Control::Ping), &[]));
    }

    #[test]
    fn byte_by_byte_feeding_yields_whole_messages() {
        let mut wire = client_frame(TEXT, true, b"{\"code\":1}");
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        for byte in &wire {
            reader.feed(&[*byte], 4096, &mut out).expect("feed");
        }
        assert_eq!(
            out,
            vec![
                Incoming::Text(Bytes::from_static(b"{\"code\":1}")),
                Incoming::Ping(Bytes::from_static(b"p"))
            ]
        );
        assert!(reader.is_idle());
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut wire = client_frame(TEXT, false, b"hel");
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b""));
        wire.extend(client_frame(OpCode::Data(Data::Continue), true, b"lo"));
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        reader.feed(&wire, 4096, &mut out).expect("feed");
        assert_eq!(
            out,
            vec![
                Incoming::Ping(Bytes::new()),
                Incoming::Text(Bytes::from_static(b"hello"))
            ]
        );
    }

    #[test]
    fn violations_are_errors() {
        let mut out = Vec::new();
        let protocol = |e: &ReadError| matches!(e, ReadError::Protocol(_));
        type Expected = fn(&ReadError) -> bool;
        let cases: Vec<(Vec<u8>, Expected)> = vec![
            (b"\x81\x02hi".to_vec(), protocol), // unmasked
            (client_frame(TEXT, true, &[0xff, 0xfe]), |e| {
                *e == ReadError::InvalidUtf8
            }),
            (client_frame(TEXT, true, &[b'a'; 100]), |e| {
                matches!(e, ReadError::TooBig { .. })
            }),
            (
                client_frame(OpCode::Data(Data::Continue), true, b"x"),
                protocol,
            ),
            (
                client_frame(OpCode::Control(Control::Ping), false, b""),
                protocol,
            ),
        ];
        for (wire, expected) in cases {
            let err = FrameReader::default()
                .feed(&wire, 64, &mut out)
                .expect_err("must fail");
            assert!(expected(&err), "{err}");
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_before_buffering() {
        let mut header = Vec::new();
        FrameHeader {
            opcode: TEXT,
            mask: Some([0; 4]),
            ..FrameHeader::default()
        }
        .format(1 << 40, &mut header)
        .expect("format");
        let err = FrameReader::default()
            .feed(&header, 4096, &mut Vec::new())
            .expect_err("too big");
        assert!(matches!(err, ReadError::TooBig { .. }));
    }

    #[test]
    fn a_ping_inside_a_large_fragmented_message_is_not_counted_against_it() {
        let mut wire = client_frame(TEXT, false, &[b'a'; 60]);
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"ping"));
        wire.extend(client_frame(OpCode::Data(Data::Continue), true, b"bc"));
        let mut out = Vec::new();
        FrameReader::default()
            .feed(&wire, 62, &mut out)
            .expect("a 62-byte message fits 62 bytes");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn close_frames_are_checked() {
        let close = |payload: &[u8]| {
            let mut out = Vec::new();
            FrameReader::default()
                .feed(
                    &client_frame(OpCode::Control(Control::Close), true, payload),
                    64,
                    &mut out,
                )
                .map(|()| out)
        };
        for code in [1000u16, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(
                close(&code.to_be_bytes()),
                Ok(vec![Incoming::Close(Some(code))]),
                "{code}"
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(
                close(&code.to_be_bytes()),
                Err(ReadError::BadClose(BadClose::Code(code))),
                "{code}"
            );
        }
        assert_eq!(close(b"\x03"), Err(ReadError::BadClose(BadClose::OneByte)));
        assert_eq!(
            close(b"\x03\xe8\xff"),
            Err(ReadError::BadClose(BadClose::ReasonNotUtf8))
        );
        assert_eq!(close(b""), Ok(vec![Incoming::Close(None)]));
    }

    #[test]
    fn fragmented_total_is_bounded() {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        reader
            .feed(&client_frame(TEXT, false, &[b'a'; 40]), 64, &mut out)
            .expect("first");
        let err = reader
            .feed(
                &client_frame(OpCode::Data(Data::Continue), true, &[b'a'; 40]),
                64,
                &mut out,
            )
            .expect_err("too big");
        assert!(matches!(err, ReadError::TooBig { .. }), "{err}");
    }
}

//! Counting a gRPC `PushBatch`'s messages (and an `Online` call's uids)
//! before prost decodes them.
//!
//! prost decodes a `repeated` field completely, allocating every element,
//! and only then could the handler compare the count with `max_batch`:
//! 46 MiB of empty messages became over half a GiB of `PushRequest`s.
//! [`BatchGuard`] sits in front of the `gpush.v1.Push` service (behind the
//! API key check): for `PushBatch` and `Online` it reads the request body
//! frame by frame, keeping the chunks as they are, while a [`Scanner`]
//! walks the protobuf and counts the top-level entries of field 1
//! (`messages`, `uids`) without allocating anything per element. At
//! `max_batch + 1` messages (or [`MAX_ONLINE_UIDS`] + 1 uids) it answers
//! `INVALID_ARGUMENT` and reads no further; otherwise the chunks go on to
//! tonic unchanged. A message over the decoding limit is refused from its
//! 5-byte gRPC header, before its body is read.

use crate::error::ApiError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use gpush_common::control::MAX_ONLINE_UIDS;
use http_body_util::BodyExt as _;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// The methods whose bodies are scanned.
const PUSH_BATCH: &str = "/gpush.v1.Push/PushBatch";
const ONLINE: &str = "/gpush.v1.Push/Online";
/// Tag of the counted field (`PushBatchRequest.messages`,
/// `OnlineRequest.uids`): field 1, length-delimited.
const MESSAGES_TAG: u64 = (1 << 3) | 2;

/// What is counted in one method's request: its message name (for
/// errors), the most entries allowed and the error beyond them.
#[derive(Debug, Clone, Copy)]
struct Counted {
    message: &'static str,
    max: usize,
    over: fn(usize) -> ApiError,
}

impl Counted {
    fn batch(max_batch: usize) -> Self {
        Counted {
            message: "PushBatchRequest",
            max: max_batch,
            over: |max| ApiError::BatchTooLarge { max },
        }
    }

    fn online() -> Self {
        Counted {
            message: "OnlineRequest",
            max: MAX_ONLINE_UIDS,
            over: |max| ApiError::BadQuery(format!("uids: at most {max} in one call")),
        }
    }
}

/// Wraps the `gpush.v1.Push` service; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct BatchGuard<S> {
    inner: S,
    max_batch: usize,
    max_message: usize,
}

impl<S> BatchGuard<S> {
    /// `inner` behind a guard refusing batches over `max_batch` and
    /// messages over `max_message` bytes.
    pub(crate) fn new(inner: S, max_batch: usize, max_message: usize) -> Self {
        Self {
            inner,
            max_batch,
            max_message,
        }
    }
}

impl<S: NamedService> NamedService for BatchGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for BatchGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let counted = match request.uri().path() {
            PUSH_BATCH => Counted::batch(self.max_batch),
            ONLINE => Counted::online(),
            _ => return Box::pin(self.inner.call(request)),
        };
        // The ready service answers this call; a fresh clone waits for
        // the next (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_message = self.max_message;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match scan(body, counted, max_message).await {
                Ok(chunks) => {
                    let body = Body::new(Chunks(chunks.into()));
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Reads `body` while scanning it; its chunks, or the status that refuses
/// it.
async fn scan(mut body: Body, counted: Counted, max_message: usize) -> Result<Vec<Bytes>, Status> {
    let mut scanner = Scanner::new(max_message);
    let mut chunks = Vec::new();
    // A unary call's body is one message and its 5-byte header.
    let most = max_message as u64 + 5;
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read += data.len() as u64;
        if read > most {
            return Err(Refused::TooLarge(read.saturating_sub(5)).status(counted, max_message));
        }
        if let Err(refused) = scanner.feed(&data) {
            return Err(refused.status(counted, max_message));
        }
        if scanner.messages > counted.max {
            return Err((counted.over)(counted.max).into());
        }
        chunks.push(data);
    }
    Ok(chunks)
}

/// A body of chunks already read.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why the scanner stopped.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The gRPC header announces a message over the limit.
    TooLarge(u64),
    /// The frame is compressed: nothing here negotiates compression, so
    /// tonic would refuse it too.
    Compressed,
    /// Not protobuf (a varint over 10 bytes, a group, a length past the
    /// message's end).
    Malformed(&'static str),
}

impl Refused {
    fn status(self, counted: Counted, max_message: usize) -> Status {
        match self {
            Refused::TooLarge(len) => Status::out_of_range(format!(
                "message is {len} bytes, the limit is {max_message} (max_grpc_message)"
            )),
            Refused::Compressed => Status::unimplemented("compressed messages are not accepted"),
            Refused::Malformed(why) => Status::invalid_argument(format!(
                "{} is not valid protobuf: {why}",
                counted.message
            )),
        }
    }
}

/// Where the scanner is in the first gRPC message of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the 5-byte header: bytes seen so far.
    Header { seen: u8 },
    /// At a field's key (a varint).
    Key,
    /// In a varint field's value.
    Varint,
    /// In a length-delimited field's length; `messages` says whether it
    /// is field 1.
    Length { messages: bool },
    /// Bytes of a field's value still to skip.
    Skip(u64),
    /// Past the first message: the rest is tonic's business.
    Done,
}

/// Counts the top-level field-1 entries of the first gRPC message of a
/// body fed to it in chunks. Allocates nothing.
#[derive(Debug)]
struct Scanner {
    state: State,
    /// The header's bytes, then the length of the message.
    header: [u8; 5],
    /// Message bytes not yet consumed.
    left: u64,
    /// The varint being read, and its shift.
    varint: u64,
    shift: u32,
    max_message: usize,
    /// `messages` entries seen so far.
    messages: usize,
}

impl Scanner {
    fn new(max_message: usize) -> Self {
        Self {
            state: State::Header { seen: 0 },
            header: [0; 5],
            left: 0,
            varint: 0,
            shift: 0,
            max_message,
            messages: 0,
        }
    }

    /// Consumes `data`.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Refused> {
        while !data.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::Header { seen } => {
                    self.header[usize::from(seen)] = data[0];
                    data = &data[1..];
                    let seen = seen + 1;
                    self.state = State::Header { seen };
                    if seen == 5 {
                        self.start_message()?;
                    }
                }
                State::Skip(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.left -= take;
                    self.state = State::Skip(n - take);
                    self.after_value();
                }
                State::Key | State::Varint | State::Length { .. } => {
                    let byte = data[0];
                    data = &data[1..];
                    self.left -= 1;
                    if self.shift >= 64 {
                        return Err(Refused::Malformed("varint too long"));
                    }
                    self.varint |= u64::from(byte & 0x7f) << self.shift;
                    self.shift += 7;
                    if byte & 0x80 == 0 {
                        let value = std::mem::take(&mut self.varint);
                        self.shift = 0;
                        self.end_varint(value)?;
                    } else if self.left == 0 {
                        return Err(Refused::Malformed("message ends inside a varint"));
                    }
                }
            }
        }
        Ok(())
    }

    fn start_message(&mut self) -> Result<(), Refused> {
        if self.header[0] != 0 {
            return Err(Refused::Compressed);
        }
        let len = u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]);
        let len = u64::from(len);
        if len > self.max_message as u64 {
            return Err(Refused::TooLarge(len));
        }
        self.left = len;
        self.state = if len == 0 { State::Done } else { State::Key };
        Ok(())
    }

    fn end_varint(&mut self, value: u64) -> Result<(), Refused> {
        match self.state {
            State::Key => {
                self.state = match value & 7 {
                    0 => State::Varint,
                    1 => State::Skip(8),
                    2 => State::Length {
                        messages: value == MESSAGES_TAG,
                    },
                    5 => State::Skip(4),
                    _ => return Err(Refused::Malformed("unsupported wire type")),
                };
                if value == MESSAGES_TAG {
                    self.messages += 1;
                }
                if self.left == 0 {
                    return Err(Refused::Malformed("message ends inside a field"));
                }
                self.check_skip()
            }
            State::Varint => {
                self.after_value();
                Ok(())
            }
            State::Length { .. } => {
                self.state = State::Skip(value);
                self.check_skip()?;
                self.after_value();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A value to skip must end within the message.
    fn check_skip(&self) -> Result<(), Refused> {
        match self.state {
            State::Skip(n) if n > self.left => Err(Refused::Malformed(
                "a field runs past the end of the message",
            )),
            _ => Ok(()),
        }
    }

    /// After a value: the next key, or the end of the message.
    fn after_value(&mut self) {
        if matches!(self.state, State::Varint | State::Skip(0)) {
            self.state = if self.left == 0 {
                State::Done
            } else {
                State::Key
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend(message);
        out
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; the count or the refusal.
    fn count(bytes: &[u8], chunk: usize) -> Result<usize, Refused> {
        let mut scanner = Scanner::new(1 << 20);
        for piece in bytes.chunks(chunk) {
            scanner.feed(piece)?;
        }
        Ok(scanner.messages)
    }

    fn batch(n: usize) -> Vec<u8> {
        use prost::Message as _;
        let request = gpush_proto::v1::PushBatchRequest {
            messages: (0..n)
                .map(|i| gpush_proto::v1::PushRequest {
                    uid: format!("user-{i}"),
                    topic: if i % 2 == 0 {
                        String::new()
                    } else {
                        "t".repeat(200)
                    },
                    data: vec![7; i * 40].into(),
                })
                .collect(),
        };
        request.encode_to_vec()
    }

    #[test]
    fn counts_messages_however_the_body_is_cut() {
        for n in [0, 1, 2, 5, 17] {
            let bytes = framed(&batch(n));
            for chunk in [1, 2, 3, 7, 64, bytes.len().max(1)] {
                assert_eq!(
                    count(&bytes, chunk),
                    Ok(n),
                    "{n} messages, chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped_not_counted() {
        // Field 2 varint 300, field 3 fixed64, field 4 bytes "ab",
        // field 5 fixed32, then one message.
        let mut message = vec![0x10, 0xac, 0x02, 0x19];
        message.extend([0; 8]);
        message.extend([0x22, 2, b'a', b'b', 0x2d, 0, 0, 0, 0, 0x0a, 0x00]);
        assert_eq!(count(&framed(&message), 1), Ok(1));
    }

    #[test]
    fn bad_input_is_refused() {
        let mut big = vec![0];
        big.extend((2u32 << 20).to_be_bytes());
        assert_eq!(count(&big, 5), Err(Refused::TooLarge(2 << 20)));
        assert_eq!(count(&[1, 0, 0, 0, 0], 5), Err(Refused::Compressed));
        assert!(matches!(
            count(&framed(&[0x0a, 5, 0]), 1),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            count(&framed(&[0x0b]), 1),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            count(&framed(&[0x08, 0x80]), 1),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            count(&framed(&[0x08; 1]), 1),
            Err(Refused::Malformed(_))
        ));
        let long = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(matches!(
            count(&framed(&long), 1),
            Err(Refused::Malformed(_))
        ));
    }
}

//! A connection's socket I/O: what the task needs of a socket, reading
//! what is there into the frame parser, and vectored writes of queued
//! frames. These helpers take the buffers they work on and return an
//! outcome; they never call back into the session, so this module sits
//! below the run loop and the commands.

use crate::hub::Stats;
use crate::ws::{FrameReader, Incoming, ReadError};
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read per read call, on the stack.
const READ_CHUNK: usize = 8 * 1024;
/// Reads per wake-up before yielding to other work.
const READS_PER_WAKE: usize = 8;
/// Frames per vectored write.
pub(super) const WRITE_SLICES: usize = 64;

/// What a connection task needs of its socket: readiness, and reads and
/// vectored writes that never block. The task is generic over it, so the
/// plain TCP path compiles to exactly the calls on the `TcpStream`.
pub(crate) trait Socket: Send + Sync + 'static {
    /// Waits until the socket may be readable.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits until the socket may be writable.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there without waiting (`WouldBlock` when nothing).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits without waiting (`WouldBlock` when nothing).
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
}

/// What one [`read_available`] got.
pub(super) enum ReadOutcome {
    /// Bytes arrived (and were parsed).
    Data,
    /// Nothing to read after all.
    Nothing,
    /// The peer closed the TCP connection.
    Eof,
}

/// Why [`read_available`] failed.
pub(super) enum ReadFailure {
    /// The socket failed.
    Io,
    /// The client broke the WebSocket protocol.
    Protocol(ReadError),
}

/// Reads what the socket has into a stack buffer (not part of the
/// connection's state) and parses it into `out`.
pub(super) fn read_available<S: Socket>(
    stream: &S,
    reader: &mut FrameReader,
    max_message: usize,
    out: &mut Vec<Incoming>,
) -> Result<ReadOutcome, ReadFailure> {
    let mut buf = [0u8; READ_CHUNK];
    let mut outcome = ReadOutcome::Nothing;
    for _ in 0..READS_PER_WAKE {
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => {
                outcome = ReadOutcome::Data;
                reader
                    .feed(&buf[..n], max_message, out)
                    .map_err(ReadFailure::Protocol)?;
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(ReadFailure::Io),
        }
    }
    Ok(outcome)
}

/// Writes as much of `pending` as the socket takes without blocking,
/// and counts it: one flush in the hub's write stats (never a shared
/// counter per frame), and the latency sample if the timed push's frame
/// is among those written. `conn` picks the stats stripe.
pub(super) fn write_pending<S: Socket>(
    stream: &S,
    pending: &mut VecDeque<Bytes>,
    stats: &Stats,
    conn: u64,
) -> io::Result<()> {
    let timed = stats.latency.armed();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let result = loop {
        if pending.is_empty() {
            break Ok(());
        }
        // On the stack: this runs on every flush of every connection.
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(&*pending) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        let mut written = match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) => break Err(e),
        };
        bytes += written as u64;
        while written > 0 {
            let Some(front) = pending.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                if timed != 0 && front.as_ptr() as usize == timed {
                    stats.latency.written(timed);
                }
                frames += 1;
                pending.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    };
    stats.writes.record(conn, frames, bytes);
    if pending.is_empty() && pending.capacity() > WRITE_SLICES {
        // Do not keep a large queue allocated on an idle connection.
        *pending = VecDeque::new();
    }
    result
}

/// Writes all of `pending`, waiting for the socket, within `deadline`.
pub(super) async fn write_all<S: Socket>(
    stream: &S,
    pending: &mut VecDeque<Bytes>,
    stats: &Stats,
    conn: u64,
    deadline: Instant,
) -> io::Result<()> {
    loop {
        write_pending(stream, pending, stats, conn)?;
        if pending.is_empty() {
            return Ok(());
        }
        tokio::time::timeout_at(deadline, stream.writable())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
}

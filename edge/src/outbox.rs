//! A connection's outgoing queue: bounded in bytes.
//!
//! Fan-out never waits on a client. It appends the shared frame to the
//! queue under a short lock; when a client has fallen so far behind that
//! the bound would be exceeded, the queue is dropped, the connection is
//! marked for closing with [`Close::SlowConsumer`],
//! and the caller counts a slow consumer. The connection task drains the
//! queue in batches and writes them with vectored writes.
//!
//! The bound is in bytes only, so a burst of many small frames (a push
//! batch) is judged by the memory it holds, not by its count: a client
//! that reads gets every frame of a burst that fits. Each frame is charged
//! its length plus its slot in the queue ([`FRAME_SLOT`]), so a flood of
//! tiny frames is bounded in memory too.

use crate::close::Close;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// What a queued frame costs beside its bytes: its slot in the queue.
pub const FRAME_SLOT: usize = std::mem::size_of::<Bytes>();

/// What `frame` is charged against the bound.
fn charge(frame: &Bytes) -> usize {
    frame.len() + FRAME_SLOT
}

/// Bounds of one outgoing queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Maximum queued bytes, each frame charged its length plus
    /// [`FRAME_SLOT`].
    pub(crate) bytes: usize,
}

/// Outcome of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The frame is queued.
    Queued,
    /// The queue overflowed just now: the connection is being closed as a
    /// slow consumer and the frame was dropped.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closing,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
}

/// A bounded queue of encoded frames with a wake-up for its writer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` unless that would exceed `limits`.
    pub(crate) fn push(&self, frame: Bytes, limits: QueueLimits) -> Pushed {
        let mut state = self.lock();
        if state.close.is_some() {
            return Pushed::Closing;
        }
        let cost = charge(&frame);
        if state.bytes + cost > limits.bytes {
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.close = Some(Close::SlowConsumer);
            drop(state);
            self.ready.notify_one();
            return Pushed::Overflowed;
        }
        state.bytes += cost;
        state.frames.push_back(frame);
        let first = state.frames.len() == 1;
        drop(state);
        if first {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Asks the connection to close; the first request wins. Frames already
    /// queued are still written before the close frame.
    pub(crate) fn close(&self, request: Close) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(request);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Wakes the connection without queueing anything: the hub's signal
    /// that something else changed (its login ended; see
    /// [`ConnHandle::login_ends`](crate::hub::ConnHandle::login_ends)).
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Moves every queued frame to the end of `into`, and returns the close
    /// request, if any.
    pub(crate) fn take(&self, into: &mut VecDeque<Bytes>) -> Option<Close> {
        let mut state = self.lock();
        state.bytes = 0;
        if into.is_empty() {
            std::mem::swap(into, &mut state.frames);
        } else {
            into.append(&mut state.frames);
        }
        state.close
    }

    /// The close request, if any, without taking frames.
    pub(crate) fn closing(&self) -> Option<Close> {
        self.lock().close
    }

    /// Waits until frames were queued or a close was requested since the
    /// last wait. A wake-up that arrives while nobody waits is kept.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for three one-byte frames, or one of eight bytes.
    const LIMITS: QueueLimits = QueueLimits {
        bytes: 3 * (1 + FRAME_SLOT),
    };

    #[test]
    fn tiny_frames_are_charged_their_slot() {
        let outbox = Outbox::default();
        for _ in 0..3 {
            assert_eq!(
                outbox.push(Bytes::from_static(b"a"), LIMITS),
                Pushed::Queued
            );
        }
        assert_eq!(
            outbox.push(Bytes::from_static(b"a"), LIMITS),
            Pushed::Overflowed
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"a"), LIMITS),
            Pushed::Closing
        );
        let mut taken = VecDeque::new();
        let close = outbox.take(&mut taken).expect("closing");
        assert_eq!(close, Close::SlowConsumer);
        assert!(taken.is_empty(), "an overflowed queue is dropped");
    }

    #[test]
    fn bounded_by_bytes() {
        let outbox = Outbox::default();
        let big = LIMITS.bytes - 2 * FRAME_SLOT;
        assert_eq!(
            outbox.push(Bytes::from(vec![0; big]), LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            outbox.push(Bytes::from(vec![0; 3]), LIMITS),
            Pushed::Overflowed
        );
    }

    #[test]
    fn many_frames_that_fit_are_queued() {
        let outbox = Outbox::default();
        let limits = QueueLimits {
            bytes: 10_000 * (8 + FRAME_SLOT),
        };
        for n in 0..10_000 {
            assert_eq!(
                outbox.push(Bytes::from(vec![0; 8]), limits),
                Pushed::Queued,
                "frame {n}"
            );
        }
    }

    #[test]
    fn take_drains_and_resets_the_byte_count() {
        let outbox = Outbox::default();
        let mut taken = VecDeque::new();
        for round in 0..5 {
            assert_eq!(outbox.push(Bytes::from(vec![0; 8]), LIMITS), Pushed::Queued);
            assert_eq!(outbox.take(&mut taken), None, "round {round}");
        }
        assert_eq!(taken.len(), 5);
    }

    #[tokio::test]
    async fn close_wakes_the_writer_and_first_request_wins() {
        let outbox = Outbox::default();
        let first = Close::Shutdown;
        outbox.close(first);
        outbox.close(Close::Idle);
        outbox.ready().await;
        assert_eq!(outbox.take(&mut VecDeque::new()), Some(first));
    }
}

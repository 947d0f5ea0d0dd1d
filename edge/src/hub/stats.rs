//! The hub's hot-path counters: hub state, written where pushes fan out
//! and connections flush, never through a counter every connection shares.
//! [`crate::metrics`] only reads them at scrape time.
//!
//! - what connections write is counted once per flush, not per frame, in
//!   [`WriteStats`]: one cache line per hub shard, picked by connection id,
//!   summed at scrape time;
//! - push-to-write latency is sampled by [`LatencyProbe`]: one push at a
//!   time is timed, when the first connection writes its frame.

use bytes::Bytes;
use gpush_common::metrics::PUSH_KINDS;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Counters of what the hub and its connections did, read by
/// `GET /metrics` (see [`crate::metrics`]).
#[derive(Debug)]
pub(crate) struct Stats {
    /// Pushes handed to [`Hub::deliver`](super::Hub::deliver), by [`push_kind`](gpush_common::metrics::push_kind).
    pub(super) pushes: [AtomicU64; PUSH_KINDS.len()],
    /// Push frames queued to connections.
    pub(crate) frames: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub(crate) slow_consumers: AtomicU64,
    /// Bus messages dropped because their route does not match the
    /// subject they arrived on (see [`crate::interest`]).
    pub(crate) misrouted: AtomicU64,
    /// Streams whose missed pushes could not be recovered from history
    /// (each told its local followers with push 10007).
    pub(crate) gaps: AtomicU64,
    /// Missed pushes this edge recovered from history and delivered late.
    pub(crate) filled: AtomicU64,
    /// What connections wrote, counted per flush in one stripe per shard.
    pub(crate) writes: WriteStats,
    /// Push-to-write latency, sampled.
    pub(crate) latency: LatencyProbe,
}

impl Stats {
    pub(super) fn new(stripes: usize) -> Self {
        Self {
            pushes: Default::default(),
            frames: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            writes: WriteStats::new(stripes),
            latency: LatencyProbe::default(),
        }
    }

    /// Pushes received so far, by route kind, in [`PUSH_KINDS`] order.
    pub(crate) fn pushes_received(&self) -> [u64; PUSH_KINDS.len()] {
        std::array::from_fn(|kind| self.pushes[kind].load(Ordering::Relaxed))
    }
}

/// Upper bounds of the `gpush_edge_write_batch_frames` buckets: powers of
/// two up to 1,024 frames.
pub(crate) const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Upper bounds of the `gpush_edge_push_to_write_seconds` buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A timed push whose frame no connection wrote within this long (its
/// connections all closed, say) stops being timed, so the next push is.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connections of one stripe wrote. Aligned to a cache line pair
/// so that stripes written by different threads never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct WriteStripe {
    flushes: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Flushes per [`BATCH_BUCKETS`] bucket (not cumulative), then the
    /// flushes above the last bound.
    buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
}

/// Frames and bytes written to clients, counted per flush in stripes.
#[derive(Debug)]
pub(crate) struct WriteStats {
    stripes: Box<[WriteStripe]>,
}

/// The sum of every stripe of [`WriteStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WriteTotals {
    /// Flushes that wrote at least one whole frame.
    pub(crate) flushes: u64,
    /// Whole frames written.
    pub(crate) frames: u64,
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Flushes per [`BATCH_BUCKETS`] bucket (not cumulative), then the
    /// flushes above the last bound.
    pub(crate) buckets: [u64; BATCH_BUCKETS.len() + 1],
}

impl WriteStats {
    /// `stripes` stripes (at least one).
    pub(crate) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1))
                .map(|_| WriteStripe::default())
                .collect(),
        }
    }

    /// Records one flush of connection `conn`: `frames` whole frames and
    /// `bytes` bytes (partly written frames included) reached the socket.
    pub(crate) fn record(&self, conn: u64, frames: u64, bytes: u64) {
        let stripe = &self.stripes[conn as usize % self.stripes.len()];
        if frames > 0 {
            stripe.flushes.fetch_add(1, Ordering::Relaxed);
            stripe.frames.fetch_add(frames, Ordering::Relaxed);
            // The first bound >= frames: ceil(log2(frames)).
            let bucket = (u64::BITS - (frames - 1).leading_zeros()) as usize;
            stripe.buckets[bucket.min(BATCH_BUCKETS.len())].fetch_add(1, Ordering::Relaxed);
        }
        if bytes > 0 {
            stripe.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Every stripe summed.
    pub(crate) fn totals(&self) -> WriteTotals {
        let mut totals = WriteTotals::default();
        for stripe in &self.stripes {
            totals.flushes += stripe.flushes.load(Ordering::Relaxed);
            totals.frames += stripe.frames.load(Ordering::Relaxed);
            totals.bytes += stripe.bytes.load(Ordering::Relaxed);
            for (total, n) in totals.buckets.iter_mut().zip(&stripe.buckets) {
                *total += n.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

/// Samples push-to-write latency: from when the push API accepted a push
/// ([`Push::sent_at_us`](gpush_common::Push::sent_at_us), the ingress
/// clock) to when the first connection of this edge finished writing its
/// frame to the socket (this edge's clock).
///
/// One push is timed at a time: [`Hub::deliver`](super::Hub::deliver) arms the probe with the
/// frame it queues first, unless a push is already being timed; every
/// flush compares the frames it wrote with the armed frame's address (one
/// load per flush) and the first match records the sample. Under load
/// that times the first push after each write, the one that waited the
/// longest for the flush tick. The probe keeps a reference to the frame,
/// so its address cannot be reused by another frame while armed.
#[derive(Debug)]
pub(crate) struct LatencyProbe {
    /// Address of the armed frame's bytes; 0 when none is armed.
    address: AtomicUsize,
    armed: Mutex<Option<Armed>>,
    histogram: Histogram,
}

#[derive(Debug)]
struct Armed {
    frame: Bytes,
    sent_at_us: u64,
    since: Instant,
}

impl Default for LatencyProbe {
    fn default() -> Self {
        Self {
            address: AtomicUsize::new(0),
            armed: Mutex::new(None),
            histogram: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl LatencyProbe {
    /// Times the push sent at `sent_at_us` (0: unknown, not timed) through
    /// `frame`, unless another push is being timed.
    pub(crate) fn arm(&self, frame: &Bytes, sent_at_us: u64) {
        if sent_at_us == 0 || frame.is_empty() {
            return;
        }
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        if armed
            .as_ref()
            .is_some_and(|a| a.since.elapsed() < PROBE_TIMEOUT)
        {
            return;
        }
        self.address
            .store(frame.as_ptr() as usize, Ordering::Relaxed);
        *armed = Some(Armed {
            frame: frame.clone(),
            sent_at_us,
            since: Instant::now(),
        });
    }

    /// The histogram of samples, for `GET /metrics`.
    pub(crate) fn histogram(&self) -> Histogram {
        self.histogram.clone()
    }

    /// The address to compare written frames with (`Bytes::as_ptr`); 0
    /// when no push is being timed.
    pub(crate) fn armed(&self) -> usize {
        self.address.load(Ordering::Relaxed)
    }

    /// A connection finished writing the frame at `address` (which equals
    /// [`Self::armed`]): records the sample, if nobody did first.
    pub(crate) fn written(&self, address: usize) {
        let taken = {
            let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
            match &*armed {
                Some(a) if a.frame.as_ptr() as usize == address => {
                    self.address.store(0, Ordering::Relaxed);
                    armed.take()
                }
                _ => None,
            }
        };
        if let Some(armed) = taken {
            let now = gpush_common::push::now_us();
            // A clock behind ingress's would give a negative time.
            let micros = now.saturating_sub(armed.sent_at_us);
            self.histogram.observe(micros as f64 / 1e6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn flushes_land_in_their_power_of_two_bucket() {
        let stats = WriteStats::new(3);
        for (conn, frames) in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 1024), (6, 1025)] {
            stats.record(conn, frames, 10);
        }
        stats.record(7, 0, 5);
        let totals = stats.totals();
        assert_eq!(totals.flushes, 7);
        assert_eq!(totals.frames, 1 + 2 + 3 + 4 + 5 + 1024 + 1025);
        assert_eq!(totals.bytes, 75);
        //                          1  2  4  8  16 32 64 128 256 512 1024 +Inf
        assert_eq!(totals.buckets, [1, 1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn probe_times_one_push_until_its_frame_is_written() {
        let probe = LatencyProbe::default();
        let first = Bytes::from(vec![1u8; 8]);
        let second = Bytes::from(vec![2u8; 8]);
        let sent = gpush_common::push::now_us() - 3_000;
        probe.arm(&first, sent);
        probe.arm(&second, sent);
        assert_eq!(
            probe.armed(),
            first.as_ptr() as usize,
            "the first stays armed"
        );
        probe.written(second.as_ptr() as usize);
        assert_eq!(probe.armed(), first.as_ptr() as usize, "not its frame");
        probe.written(first.as_ptr() as usize);
        probe.written(first.as_ptr() as usize);
        assert_eq!(probe.armed(), 0);
        let mut registry = Registry::default();
        registry.register("t", "", probe.histogram.clone());
        let text = gpush_common::metrics::render(&registry).expect("render");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
        };
        assert_eq!(value("t_count"), 1.0, "recorded once");
        let seconds = value("t_sum");
        assert!((0.003..1.0).contains(&seconds), "{seconds}");
        probe.arm(&second, 0);
        assert_eq!(probe.armed(), 0, "an untimed push is not armed");
        probe.arm(&second, sent);
        assert_eq!(probe.armed(), second.as_ptr() as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_never_written_stops_being_timed() {
        let probe = LatencyProbe::default();
        let lost = Bytes::from(vec![1u8; 8]);
        let next = Bytes::from(vec![2u8; 8]);
        probe.arm(&lost, 1);
        tokio::time::advance(PROBE_TIMEOUT).await;
        probe.arm(&next, 1);
        assert_eq!(probe.armed(), next.as_ptr() as usize);
    }
}

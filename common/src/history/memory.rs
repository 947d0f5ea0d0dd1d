//! History kept in memory: the store of a standalone edge, and a cluster
//! edge's copy of the recent pushes it delivered (so that most recoveries
//! never reach JetStream).
//!
//! Each stream key has a [`Log`]: the pushes kept, in offset order, and a
//! *floor*: every push of the stream with an offset above the floor is
//! kept. A recovery from offset `n` is complete when `n >= floor`; that is
//! the whole continuity proof, kept up to date by every eviction (which
//! raises the floor to the evicted offset) and every gap (which raises it
//! past what is missing).
//!
//! Bounds: per stream `size` pushes and `ttl` (from the stream's
//! [`StreamPlan`](super::StreamPlan)), and in total `max_bytes` of kept
//! pushes (their names and payloads plus a fixed cost each) and logs,
//! evicting the oldest push of any stream first, and empty logs when
//! only they are left. A log with nothing kept is forgotten
//! once it has been idle for its ttl; a stream that comes back then starts
//! a new epoch, so an old offset can never be mistaken for a new one.

use super::{Entry, Plan, Position, Read, StreamKey};
use crate::push::Push;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What one kept push costs beyond its names and payload: the entry, the
/// push's fixed part and its place in the eviction order.
pub const ENTRY_COST: usize = std::mem::size_of::<Entry>()
    + std::mem::size_of::<(Instant, usize)>()
    + std::mem::size_of::<(Box<str>, u64)>();

/// What a stream's log costs with nothing kept, beyond its name.
pub const LOG_COST: usize = std::mem::size_of::<Log>() + 48;

/// Keeps each stream's recent pushes in memory; see the module doc.
#[derive(Debug)]
pub struct MemoryHistory {
    plan: Plan,
    max_bytes: usize,
    /// Names this process's epochs: random per process, so a restarted
    /// standalone edge never repeats an epoch.
    base: String,
    /// True on a standalone edge, the stream's only writer: a stream
    /// starts the first time it is asked about. False on a cluster edge:
    /// only [`MemoryHistory::seed`] starts one (from JetStream).
    writer: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    logs: HashMap<Box<str>, Log>,
    /// Every kept push in the order it was added: (stream, offset). The
    /// oldest push of any stream is at the front. Entries evicted by their
    /// own stream's size or ttl stay here until they reach the front or a
    /// compaction drops them.
    order: VecDeque<(Box<str>, u64)>,
    /// Bytes of every kept push.
    bytes: usize,
    /// Pushes kept, all streams together.
    kept: usize,
    /// Epochs handed out by this process.
    generation: u64,
    /// Logs held when idle ones are next looked for.
    next_sweep: usize,
}

/// One stream's kept pushes.
#[derive(Debug)]
struct Log {
    epoch: String,
    /// Every push of the stream with an offset above this is kept.
    floor: u64,
    /// The last offset added (or seeded).
    last: u64,
    /// (when added, entry, its cost in bytes), in offset order.
    entries: VecDeque<(Instant, Entry, usize)>,
    size: usize,
    ttl: Duration,
    /// When the log last changed or was read: an empty log idle for its
    /// ttl is forgotten.
    touched: Instant,
}

/// What [`MemoryHistory::append_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Kept; it followed the last push of its stream.
    Kept,
    /// Kept, but it did not follow the stream's last push (`previous` is
    /// not the last offset the log had): the pushes between are missing
    /// here, and the floor moved up to `previous`.
    AfterGap {
        /// The log's last offset before this push.
        last: u64,
    },
    /// Older than what the log already has: a duplicate, not kept.
    Stale,
    /// The stream keeps no history, or this edge does not follow it (no
    /// log: [`MemoryHistory::seed`] was never called for it).
    NoHistory,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The map key of a stream: a tag byte and the name (names hold no
/// control characters, so the tags cannot collide).
fn map_key(key: StreamKey<'_>) -> String {
    match key {
        StreamKey::Topic(topic) => format!("t\u{1}{topic}"),
        StreamKey::User(uid) => format!("u\u{1}{uid}"),
    }
}

fn cost(push: &Push) -> usize {
    ENTRY_COST + push.uid.len() + push.topic.len() + push.data.len()
}

impl MemoryHistory {
    /// An empty history following `plan`, keeping at most `max_bytes` of
    /// pushes in total, for the only writer of its streams (standalone).
    pub fn new(plan: Plan, max_bytes: usize) -> Self {
        let base = format!("{:x}", rand_u64());
        Self {
            plan,
            max_bytes,
            base,
            writer: true,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// An empty copy of streams kept elsewhere (a cluster edge in front of
    /// JetStream): a stream is known only once [`Self::seed`]ed.
    pub fn copy_of(plan: Plan, max_bytes: usize) -> Self {
        Self {
            writer: false,
            ..Self::new(plan, max_bytes)
        }
    }

    /// Whether `key`'s pushes are kept.
    pub fn keeps(&self, key: StreamKey<'_>) -> bool {
        self.plan.stream_for(key).is_some()
    }

    /// Adds `push` as the next push of its stream (standalone: this
    /// process is the only writer) and returns its offset; 0 when its
    /// stream keeps no history.
    pub fn append_next(&self, push: &Push) -> u64 {
        let Some(key) = StreamKey::of(push.route()) else {
            return 0;
        };
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Some(log) = self.log(&mut inner, key, now, true) else {
            return 0;
        };
        let offset = log.last + 1;
        self.keep(&mut inner, key, offset, push, now);
        offset
    }

    /// Adds `push` at `offset`, where `previous` is the offset of the
    /// stream's push before it (a cluster edge's copy of what it
    /// delivered; both come from JetStream). Only to a stream this edge
    /// follows (seeded).
    pub fn append_at(&self, push: &Push, offset: u64, previous: u64) -> Appended {
        match StreamKey::of(push.route()) {
            Some(key) => self.place(key, Some(push), offset, previous),
            None => Appended::NoHistory,
        }
    }

    /// Records that `key`'s stream reached `offset` (after `previous`)
    /// with a position that holds no push (a JetStream marker): like
    /// [`Self::append_at`], nothing kept.
    pub fn advance_at(&self, key: StreamKey<'_>, offset: u64, previous: u64) -> Appended {
        self.place(key, None, offset, previous)
    }

    /// The followed streams that `select` picks (a reader's topic, the
    /// users of its bucket), for a check after the bus reconnected.
    pub fn followed(&self, select: impl Fn(StreamKey<'_>) -> bool) -> Vec<(bool, String)> {
        lock(&self.inner)
            .logs
            .keys()
            .filter_map(|name| {
                let (tag, rest) = name.split_once('\u{1}')?;
                let key = if tag == "t" {
                    StreamKey::Topic(rest)
                } else {
                    StreamKey::User(rest)
                };
                select(key).then(|| (tag == "t", rest.to_owned()))
            })
            .collect()
    }

    /// Stops following the streams `select` picks (their subject is no
    /// longer received here, so what the copy has would go stale): the
    /// next [`Self::seed`] starts them afresh.
    pub fn forget(&self, select: impl Fn(StreamKey<'_>) -> bool) {
        let mut inner = lock(&self.inner);
        let Inner {
            logs, bytes, kept, ..
        } = &mut *inner;
        logs.retain(|name, log| {
            let Some((tag, rest)) = name.split_once('\u{1}') else {
                return true;
            };
            let key = if tag == "t" {
                StreamKey::Topic(rest)
            } else {
                StreamKey::User(rest)
            };
            if !select(key) {
                return true;
            }
            for (_, _, size) in &log.entries {
                *bytes -= size;
                *kept -= 1;
            }
            *bytes -= LOG_COST + name.len();
            false
        });
    }

    /// Stops following `key`'s stream, like [`Self::forget`] for one
    /// stream, without looking at the others.
    pub fn forget_stream(&self, key: StreamKey<'_>) {
        let name = map_key(key);
        let mut inner = lock(&self.inner);
        let Inner {
            logs, bytes, kept, ..
        } = &mut *inner;
        if let Some(log) = logs.remove(name.as_str()) {
            for (_, _, size) in &log.entries {
                *bytes -= size;
                *kept -= 1;
            }
            *bytes -= LOG_COST + name.len();
        }
    }

    /// Whether this edge follows `key`'s stream (it was seeded).
    pub fn follows(&self, key: StreamKey<'_>) -> bool {
        lock(&self.inner).logs.contains_key(map_key(key).as_str())
    }

    fn place(
        &self,
        key: StreamKey<'_>,
        push: Option<&Push>,
        offset: u64,
        previous: u64,
    ) -> Appended {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Some(log) = self.log(&mut inner, key, now, false) else {
            return Appended::NoHistory;
        };
        if offset <= log.last {
            return Appended::Stale;
        }
        let last = log.last;
        let appended = if previous == last {
            Appended::Kept
        } else {
            // What lies between is not here: nothing at or below
            // `previous` can be vouched for any more.
            log.floor = log.floor.max(previous);
            log.entries.retain(|(_, entry, _)| entry.offset > previous);
            Appended::AfterGap { last }
        };
        match push {
            Some(push) => self.keep(&mut inner, key, offset, push, now),
            None => log.last = offset,
        }
        appended
    }

    /// Starts `key`'s log at `offset` in `epoch` (a cluster edge that just
    /// began receiving the stream): nothing before it is kept. A log of
    /// another epoch is replaced.
    pub fn seed(&self, key: StreamKey<'_>, offset: u64, epoch: &str) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Some(log) = self.log(&mut inner, key, now, true) else {
            return;
        };
        if log.epoch != epoch || offset > log.last {
            log.epoch = epoch.to_owned();
            log.floor = offset;
            log.last = offset;
            log.entries.clear();
        }
    }

    /// Where `key`'s stream stands; None when it keeps no history. A stream
    /// never pushed to is at offset 0 of a new epoch.
    pub fn position(&self, key: StreamKey<'_>) -> Option<Position> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let log = self.log(&mut inner, key, now, self.writer)?;
        Some(Position {
            offset: log.last,
            epoch: log.epoch.clone(),
        })
    }

    /// The last offset of `key`'s stream; None when it keeps no history
    /// (or, on a cluster edge, is not followed). Runs for every push a
    /// cluster edge receives: no allocation beyond the key.
    pub fn last(&self, key: StreamKey<'_>) -> Option<u64> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        self.log(&mut inner, key, now, self.writer)
            .map(|log| log.last)
    }

    /// The pushes of `key`'s stream after `since` in `epoch`, up to and
    /// including `upto`, all of them or [`Read::Gap`]: another epoch, a
    /// push after `since` no longer kept, or more than `max`.
    pub fn read(&self, key: StreamKey<'_>, epoch: &str, since: u64, upto: u64, max: usize) -> Read {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Some(log) = self.log(&mut inner, key, now, false) else {
            return Read::Gap;
        };
        if log.epoch != epoch || since < log.floor || since > log.last {
            return Read::Gap;
        }
        let upto = upto.min(log.last);
        let first = log.entries.partition_point(|(_, e, _)| e.offset <= since);
        let last = log.entries.partition_point(|(_, e, _)| e.offset <= upto);
        if last.saturating_sub(first) > max {
            return Read::Gap;
        }
        Read::Complete(
            log.entries
                .range(first..last.max(first))
                .map(|(_, entry, _)| entry.clone())
                .collect(),
        )
    }

    /// The history API's page of `key`'s stream: the pushes kept after
    /// `since` that `wanted` selects, at most `limit`. None when the stream
    /// keeps no history.
    pub fn page(
        &self,
        key: StreamKey<'_>,
        since: u64,
        limit: usize,
        wanted: impl Fn(&Push) -> bool,
    ) -> Option<super::Page> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let log = self.log(&mut inner, key, now, self.writer)?;
        let first = log.entries.partition_point(|(_, e, _)| e.offset <= since);
        Some(super::Page {
            epoch: log.epoch.clone(),
            offset: log.last,
            complete: since >= log.floor,
            entries: log
                .entries
                .range(first..)
                .filter(|(_, entry, _)| wanted(&entry.push))
                .take(limit)
                .map(|(_, entry, _)| entry.clone())
                .collect(),
        })
    }

    /// Bytes of pushes kept now, all streams together.
    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }

    /// Streams with a log now.
    pub fn streams(&self) -> usize {
        lock(&self.inner).logs.len()
    }

    /// `key`'s log, created when missing if `create` (None: no history
    /// for it, or no log), with its expired pushes dropped. Forgets idle
    /// empty logs now and then.
    fn log<'a>(
        &self,
        inner: &'a mut Inner,
        key: StreamKey<'_>,
        now: Instant,
        create: bool,
    ) -> Option<&'a mut Log> {
        let plan = self.plan.stream_for(key)?;
        let name = map_key(key);
        if !inner.logs.contains_key(name.as_str()) {
            if !create {
                return None;
            }
            if inner.logs.len() >= inner.next_sweep.max(1024) {
                inner.forget_idle(now);
                inner.next_sweep = 2 * inner.logs.len();
            }
            inner.generation += 1;
            inner.bytes += LOG_COST + name.len();
            let log = Log {
                epoch: format!("{}-{}", self.base, inner.generation),
                floor: 0,
                last: 0,
                entries: VecDeque::new(),
                size: plan.size,
                ttl: plan.ttl,
                touched: now,
            };
            inner.logs.insert(name.clone().into_boxed_str(), log);
        }
        let Inner {
            logs, bytes, kept, ..
        } = inner;
        let log = logs.get_mut(name.as_str())?;
        log.touched = now;
        while let Some((added, entry, size)) = log.entries.front() {
            if now.duration_since(*added) < log.ttl {
                break;
            }
            log.floor = entry.offset;
            *bytes -= size;
            *kept -= 1;
            log.entries.pop_front();
        }
        Some(log)
    }

    /// Keeps `push` at `offset` in `key`'s log (which exists), then
    /// enforces the stream's size and the total bytes.
    fn keep(&self, inner: &mut Inner, key: StreamKey<'_>, offset: u64, push: &Push, now: Instant) {
        let name = map_key(key).into_boxed_str();
        let size = cost(push);
        let Some(log) = inner.logs.get_mut(&name) else {
            return;
        };
        log.last = offset;
        let mut push = push.clone();
        push.offset = offset;
        log.entries.push_back((now, Entry { offset, push }, size));
        inner.bytes += size;
        inner.kept += 1;
        while log.entries.len() > log.size {
            if let Some((_, entry, size)) = log.entries.pop_front() {
                log.floor = entry.offset;
                inner.bytes -= size;
                inner.kept -= 1;
            }
        }
        inner.order.push_back((name.clone(), offset));
        while inner.bytes > self.max_bytes {
            let Some((stream, offset)) = inner.order.pop_front() else {
                // Only logs are left: forget the empty ones (their
                // streams start a new epoch when they come back).
                inner.forget_empty(&name);
                break;
            };
            let Some(log) = inner.logs.get_mut(&stream) else {
                continue;
            };
            if log
                .entries
                .front()
                .is_some_and(|(_, e, _)| e.offset == offset)
                && let Some((_, entry, size)) = log.entries.pop_front()
            {
                log.floor = entry.offset;
                inner.bytes -= size;
                inner.kept -= 1;
            }
        }
        // Records of pushes their own stream already evicted: drop them
        // once they outnumber the kept ones, so `order` stays bounded.
        if inner.order.len() > 2 * inner.kept + 1024 {
            let logs = &inner.logs;
            inner.order.retain(|(stream, offset)| {
                logs.get(stream)
                    .is_some_and(|log| *offset > log.floor && *offset <= log.last)
            });
        }
    }
}

impl Inner {
    /// Forgets logs with nothing kept that were idle for their ttl.
    fn forget_idle(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.logs.retain(|name, log| {
            let keep = !log.entries.is_empty() || now.duration_since(log.touched) < log.ttl;
            if !keep {
                *bytes -= LOG_COST + name.len();
            }
            keep
        });
    }

    /// Forgets every log with nothing kept but `current`'s.
    fn forget_empty(&mut self, current: &str) {
        let bytes = &mut self.bytes;
        self.logs.retain(|name, log| {
            let keep = !log.entries.is_empty() || &**name == current;
            if !keep {
                *bytes -= LOG_COST + name.len();
            }
            keep
        });
    }
}

/// A random number for epoch names, from the standard library's randomly
/// keyed hasher (no extra crate for one number).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(crate::push::now_us())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryConfig;
    use crate::history::config::PrefixRule;
    use bytes::Bytes;

    fn history(size: usize, max_bytes: usize) -> MemoryHistory {
        let config = HistoryConfig {
            size,
            topics: vec![PrefixRule {
                prefix: "off.".into(),
                size: 0,
                ttl: Duration::from_secs(1),
            }],
            ..HistoryConfig::default()
        };
        MemoryHistory::new(config.plan(), max_bytes)
    }

    fn push(topic: &str, data: &str) -> Push {
        Push::new("", topic, Bytes::from(data.to_owned()))
    }

    fn data(read: Read) -> Vec<String> {
        match read {
            Read::Complete(entries) => entries
                .into_iter()
                .map(|e| format!("{}:{}", e.offset, String::from_utf8_lossy(&e.push.data)))
                .collect(),
            Read::Gap => vec!["gap".into()],
        }
    }

    #[test]
    fn forgetting_one_stream_leaves_the_others_and_their_bytes() {
        let h = history(3, 1 << 20);
        let (news, other) = (StreamKey::Topic("news"), StreamKey::Topic("other"));
        h.seed(news, 4, "e");
        h.seed(other, 7, "e");
        h.append_at(&push("news", "a"), 5, 4);
        let before = h.bytes();
        h.forget_stream(news);
        assert!(!h.follows(news));
        assert!(h.follows(other));
        assert!(h.bytes() < before);
        h.forget(|key| key == other);
        assert_eq!(h.bytes(), 0, "nothing left counted");
        h.forget_stream(news);
        assert_eq!(h.bytes(), 0, "forgetting twice is a no-op");
    }

    #[test]
    fn offsets_count_per_stream_and_reads_are_all_or_nothing() {
        let h = history(3, 1 << 20);
        let news = StreamKey::Topic("news");
        let epoch = h.position(news).expect("kept").epoch;
        assert_eq!(h.append_next(&push("news", "a")), 1);
        assert_eq!(h.append_next(&push("other", "x")), 1);
        assert_eq!(h.append_next(&push("news", "b")), 2);
        assert_eq!(h.append_next(&push("", "everyone")), 0);
        assert_eq!(h.append_next(&push("off.x", "no history")), 0);
        assert_eq!(data(h.read(news, &epoch, 0, u64::MAX, 10)), ["1:a", "2:b"]);
        assert_eq!(data(h.read(news, &epoch, 1, u64::MAX, 10)), ["2:b"]);
        assert_eq!(data(h.read(news, &epoch, 1, 1, 10)), Vec::<String>::new());
        assert_eq!(
            data(h.read(news, &epoch, 0, u64::MAX, 1)),
            ["gap"],
            "over max"
        );
        assert_eq!(
            data(h.read(news, "other", 0, u64::MAX, 10)),
            ["gap"],
            "epoch"
        );
        assert_eq!(
            data(h.read(news, &epoch, 9, u64::MAX, 10)),
            ["gap"],
            "future"
        );
        for d in ["c", "d"] {
            h.append_next(&push("news", d));
        }
        // size 3: 1 evicted, so only readers at 1 or later are served.
        assert_eq!(data(h.read(news, &epoch, 0, u64::MAX, 10)), ["gap"]);
        assert_eq!(
            data(h.read(news, &epoch, 1, u64::MAX, 10)),
            ["2:b", "3:c", "4:d"]
        );
        assert_eq!(h.position(StreamKey::Topic("off.x")), None);
    }

    #[test]
    fn the_total_bound_evicts_the_oldest_of_any_stream() {
        let one = cost(&push("a", "0123456789"));
        let logs = 2 * (LOG_COST + map_key(StreamKey::Topic("a")).len());
        let h = history(100, 3 * one + logs);
        let (a, b) = (StreamKey::Topic("a"), StreamKey::Topic("b"));
        let (ea, eb) = (
            h.position(a).expect("a").epoch,
            h.position(b).expect("b").epoch,
        );
        h.append_next(&push("a", "0123456789"));
        h.append_next(&push("b", "0123456789"));
        h.append_next(&push("a", "0123456789"));
        assert_eq!(h.bytes(), 3 * one + logs);
        h.append_next(&push("b", "0123456789"));
        assert_eq!(h.bytes(), 3 * one + logs);
        assert_eq!(
            data(h.read(a, &ea, 0, u64::MAX, 10)),
            ["gap"],
            "a's first went"
        );
        assert_eq!(data(h.read(a, &ea, 1, u64::MAX, 10)).len(), 1);
        assert_eq!(data(h.read(b, &eb, 0, u64::MAX, 10)).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_expire_and_idle_empty_streams_get_a_new_epoch() {
        let h = history(10, 1 << 20);
        let news = StreamKey::Topic("news");
        h.append_next(&push("news", "a"));
        let epoch = h.position(news).expect("kept").epoch;
        tokio::time::advance(crate::history::config::DEFAULT_TTL).await;
        assert_eq!(
            data(h.read(news, &epoch, 0, u64::MAX, 10)),
            ["gap"],
            "expired"
        );
        assert_eq!(
            data(h.read(news, &epoch, 1, u64::MAX, 10)),
            Vec::<String>::new()
        );
        // Idle past its ttl with nothing kept: forgotten when the map is
        // next swept, and a new epoch when it comes back.
        tokio::time::advance(crate::history::config::DEFAULT_TTL).await;
        for n in 0..1024 {
            h.position(StreamKey::Topic(&format!("filler{n}")));
        }
        let again = h.position(news).expect("kept");
        assert_ne!(again.epoch, epoch);
        assert_eq!(again.offset, 0);
    }

    #[test]
    fn appends_at_given_offsets_notice_gaps_and_duplicates() {
        let h = history(10, 1 << 20);
        let news = StreamKey::Topic("news");
        assert_eq!(
            h.append_at(&push("news", "a"), 9, 8),
            Appended::NoHistory,
            "not followed"
        );
        assert!(!h.follows(news));
        h.seed(news, 10, "e1");
        assert!(h.follows(news));
        assert_eq!(h.append_at(&push("news", "a"), 12, 10), Appended::Kept);
        assert_eq!(h.append_at(&push("news", "a"), 12, 10), Appended::Stale);
        assert_eq!(
            h.append_at(&push("news", "c"), 20, 15),
            Appended::AfterGap { last: 12 }
        );
        assert_eq!(data(h.read(news, "e1", 10, u64::MAX, 10)), ["gap"]);
        assert_eq!(data(h.read(news, "e1", 15, u64::MAX, 10)), ["20:c"]);
        // A marker moves the stream on without a push.
        assert_eq!(h.advance_at(news, 21, 20), Appended::Kept);
        assert_eq!(h.append_at(&push("news", "d"), 22, 21), Appended::Kept);
        assert_eq!(data(h.read(news, "e1", 20, u64::MAX, 10)), ["22:d"]);
        // A new epoch replaces the log.
        h.seed(news, 3, "e2");
        assert_eq!(
            h.position(news).map(|p| (p.offset, p.epoch)),
            Some((3, "e2".into()))
        );
    }
}

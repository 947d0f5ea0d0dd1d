//! A sharded map from a name to the connections that want it: the hub's
//! topic, user and private-topic indexes are one each.
//!
//! A name's subscribers are an insertion-ordered hash set keyed by
//! connection id ([`IndexSet`]): fan-out walks its entries as one
//! contiguous vector, and adding or removing one connection is a hash
//! lookup plus a swap-remove, never a scan of the list, so toggling a
//! subscription costs the same on a topic of a hundred thousand subscribers
//! as on a topic of one. Per subscription that is 16 bytes of entry (the
//! hash and the `Arc`) plus about 9 bytes of hash table, against 8 for the
//! plain vector it replaces (each up to twice that right after growing).

use super::{ConnHandle, lock};
use indexmap::IndexSet;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One subscriber: the connection, hashed and compared by its id, so the
/// set is looked up by id alone (`u64: Borrow`).
#[derive(Debug, Clone)]
struct Member(Arc<ConnHandle>);

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        #[cfg(test)]
        tests::COMPARED.with(|n| n.set(n.get() + 1));
        self.0.id == other.0.id
    }
}

impl Eq for Member {}

impl Hash for Member {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl Borrow<u64> for Member {
    fn borrow(&self) -> &u64 {
        #[cfg(test)]
        tests::COMPARED.with(|n| n.set(n.get() + 1));
        &self.0.id
    }
}

/// Hashes a connection id: ids are unique integers handed out in sequence,
/// so a multiply (Fibonacci hashing) spreads them over the table's buckets
/// and control bytes at no cost. Not keyed: a client cannot choose its id.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Subscribers = IndexSet<Member, BuildHasherDefault<IdHasher>>;

/// A name's subscribers and the history offset of the last push they were
/// given (or that they were told of when they joined): a push at or below
/// it is not delivered again.
#[derive(Debug, Default)]
struct Group {
    members: Subscribers,
    offset: u64,
}

/// The connections under one name, handed to a closure while the shard is
/// locked.
pub(super) struct Members<'a>(&'a Subscribers);

impl Members<'_> {
    pub(super) fn for_each(&self, mut f: impl FnMut(&Arc<ConnHandle>)) {
        self.0.iter().for_each(|member| f(&member.0));
    }
}

/// Why [`Index::add_at`] did not add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotAdded {
    /// The index holds its maximum of keys.
    Full,
    /// The key's offset is not the one expected: pushes were delivered
    /// since it was read.
    Moved(u64),
    /// The key holds its maximum of members.
    Crowded,
}

/// One shard of an [`Index`].
#[derive(Debug, Default)]
struct IndexShard {
    map: HashMap<Box<str>, Group>,
    /// Connections in `map`, all keys together: kept here, under the lock
    /// that is taken anyway, so counting costs nothing extra.
    entries: usize,
}

/// A sharded map from a name to the connections that want it.
#[derive(Debug)]
pub(super) struct Index {
    shards: Box<[Mutex<IndexShard>]>,
    hasher: RandomState,
    /// Distinct keys, all shards together: changed under the lock of the
    /// shard whose key appears or goes, so [`Index::add`] can bound it.
    keys: AtomicUsize,
}

/// A new key refused by [`Index::add`]: the index holds its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

impl Index {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            keys: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<IndexShard> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash % self.shards.len()]
    }

    /// Adds `conn` under `key`; true when `key` had no subscriber before.
    /// A new key is refused when the index already holds `max_keys`.
    pub(super) fn add(
        &self,
        key: &str,
        conn: &Arc<ConnHandle>,
        max_keys: usize,
    ) -> Result<bool, Full> {
        match self.add_at(key, conn, max_keys, usize::MAX, None, || 0, |_| {}) {
            Ok((first, _)) => Ok(first),
            Err(_) => Err(Full),
        }
    }

    /// Adds `conn` under `key` if the key's offset is `expected` (any when
    /// None) and it has fewer than `max_members` others, then calls `joined` with that offset, all under the shard's
    /// lock, so that no push of the key is delivered between what `joined`
    /// queues and the first live push. A key without subscribers starts at
    /// `seed()`. Ok: (whether `key` had no subscriber before, its offset).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_at(
        &self,
        key: &str,
        conn: &Arc<ConnHandle>,
        max_keys: usize,
        max_members: usize,
        expected: Option<u64>,
        seed: impl FnOnce() -> u64,
        joined: impl FnOnce(u64),
    ) -> Result<(bool, u64), NotAdded> {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        if let Some(group) = shard.map.get_mut(key) {
            if expected.is_some_and(|e| e != group.offset) {
                return Err(NotAdded::Moved(group.offset));
            }
            if group.members.len() >= max_members && !group.members.contains(&conn.id) {
                return Err(NotAdded::Crowded);
            }
            if group.members.insert(Member(conn.clone())) {
                shard.entries += 1;
            }
            joined(group.offset);
            return Ok((false, group.offset));
        }
        let offset = seed();
        if expected.is_some_and(|e| e != offset) {
            return Err(NotAdded::Moved(offset));
        }
        if self.keys.fetch_add(1, Ordering::Relaxed) >= max_keys {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            return Err(NotAdded::Full);
        }
        let mut group = Group {
            members: Subscribers::default(),
            offset,
        };
        group.members.insert(Member(conn.clone()));
        shard.map.insert(key.into(), group);
        shard.entries += 1;
        joined(offset);
        Ok((true, offset))
    }

    /// The offset of `key`, when it has subscribers.
    pub(super) fn offset(&self, key: &str) -> Option<u64> {
        lock(self.shard(key)).map.get(key).map(|group| group.offset)
    }

    /// Calls `f` with `key`'s offset (None: no subscribers) under the
    /// shard's lock.
    pub(super) fn with_offset<R>(&self, key: &str, f: impl FnOnce(Option<u64>) -> R) -> R {
        f(lock(self.shard(key)).map.get(key).map(|group| group.offset))
    }

    /// Sets `key`'s offset, lower or not (its stream was recreated).
    pub(super) fn reset(&self, key: &str, offset: u64) {
        if let Some(group) = lock(self.shard(key)).map.get_mut(key) {
            group.offset = offset;
        }
    }

    /// Calls `f` with `key`'s subscribers, under the shard's lock, unless
    /// `offset` is not past the key's (0: a push without history, always
    /// delivered); records `offset` as the key's.
    pub(super) fn advance(&self, key: &str, offset: u64, f: impl FnOnce(Members<'_>)) {
        let mut shard = lock(self.shard(key));
        let Some(group) = shard.map.get_mut(key) else {
            return;
        };
        if offset > 0 {
            if offset <= group.offset {
                return;
            }
            group.offset = offset;
        }
        f(Members(&group.members));
    }

    /// Removes connection `id` from `key`; true when that left `key`
    /// without subscribers.
    pub(super) fn remove(&self, key: &str, id: u64) -> bool {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        let Some(group) = shard.map.get_mut(key) else {
            return false;
        };
        if group.members.swap_remove(&id) {
            shard.entries -= 1;
        }
        if group.members.is_empty() {
            shard.map.remove(key);
            self.keys.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        lock(self.shard(key)).map.contains_key(key)
    }

    pub(super) fn for_each(&self, key: &str, mut f: impl FnMut(&Arc<ConnHandle>)) {
        if let Some(group) = lock(self.shard(key)).map.get(key) {
            group.members.iter().for_each(|member| f(&member.0));
        }
    }

    /// The ids of `key`'s subscribers.
    pub(super) fn ids(&self, key: &str) -> Vec<u64> {
        lock(self.shard(key))
            .map
            .get(key)
            .map(|group| group.members.iter().map(|member| member.0.id).collect())
            .unwrap_or_default()
    }

    /// `key`'s subscribers.
    pub(super) fn members(&self, key: &str) -> Vec<Arc<ConnHandle>> {
        lock(self.shard(key))
            .map
            .get(key)
            .map(|group| {
                group
                    .members
                    .iter()
                    .map(|member| member.0.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many subscribers `key` has.
    pub(super) fn len(&self, key: &str) -> usize {
        lock(self.shard(key))
            .map
            .get(key)
            .map_or(0, |group| group.members.len())
    }

    /// Every key starting with `prefix`, with its subscriber count; each
    /// shard locked in turn.
    pub(super) fn keys(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut keys = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            keys.extend(
                shard
                    .map
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .map(|(key, group)| (key.to_string(), group.members.len() as u64)),
            );
        }
        keys
    }

    /// (distinct keys, connections under all keys), each shard locked in
    /// turn.
    pub(super) fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(keys, entries), shard| {
            let shard = lock(shard);
            (keys + shard.map.len(), entries + shard.entries)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::outbox::QueueLimits;
    use crate::protocol::WireFormat;
    use std::cell::Cell;

    thread_local! {
        /// Subscribers compared with another connection or a looked-up
        /// id, on this thread.
        pub(super) static COMPARED: Cell<usize> = const { Cell::new(0) };
    }

    /// Subscribers compared while `f` runs.
    fn compared(f: impl FnOnce()) -> usize {
        COMPARED.with(|n| n.set(0));
        f();
        COMPARED.with(Cell::get)
    }

    /// Adding, re-adding and removing one connection compares it with a
    /// bounded number of others (a hash probe), wherever it sits in a list
    /// of 100,000: no operation walks the list. The old vector compared
    /// every subscriber on a duplicate add and up to all of them on a
    /// remove.
    #[test]
    fn subscribe_and_unsubscribe_do_not_scan_the_subscribers() {
        const N: usize = 100_000;
        /// A hash probe meets a few candidates at most.
        const PROBE: usize = 4;
        let hub = Hub::new(1, QueueLimits { bytes: 1 });
        let index = Index::new(1);
        let conns: Vec<_> = (0..N).map(|_| hub.connect(WireFormat::Json)).collect();
        for conn in &conns {
            index.add("big", conn, 1).expect("one key");
        }
        assert_eq!(index.counts(), (1, N));
        let (first, middle, last) = (&conns[0], &conns[N / 2], &conns[N - 1]);
        for conn in [first, middle, last] {
            let again = compared(|| assert_eq!(index.add("big", conn, 1), Ok(false)));
            assert!(again <= PROBE, "re-adding {} compared {again}", conn.id);
        }
        for conn in [last, first, middle] {
            let removed = compared(|| assert!(!index.remove("big", conn.id)));
            assert!(removed <= PROBE, "removing {} compared {removed}", conn.id);
            let added = compared(|| assert_eq!(index.add("big", conn, 1), Ok(false)));
            assert!(added <= PROBE, "adding {} compared {added}", conn.id);
        }
        assert_eq!(index.counts(), (1, N));
        let mut seen = 0;
        index.for_each("big", |_| seen += 1);
        assert_eq!(seen, N, "fan-out still reaches every subscriber once");
        for conn in &conns[1..] {
            assert!(!index.remove("big", conn.id));
        }
        assert!(index.remove("big", first.id), "the last leaver is reported");
        assert_eq!(index.counts(), (0, 0));
    }

    #[test]
    fn new_keys_are_refused_at_the_maximum() {
        let hub = Hub::new(1, QueueLimits { bytes: 1 });
        let index = Index::new(4);
        let [a, b] = [(); 2].map(|_| hub.connect(WireFormat::Json));
        assert_eq!(index.add("t1", &a, 2), Ok(true));
        assert_eq!(index.add("t2", &a, 2), Ok(true));
        assert_eq!(index.add("t3", &a, 2), Err(Full));
        assert_eq!(
            index.add("t1", &b, 2),
            Ok(false),
            "known keys still take subscribers"
        );
        assert!(!index.contains("t3"));
        assert!(index.remove("t2", a.id));
        assert_eq!(
            index.add("t3", &b, 2),
            Ok(true),
            "a key that left makes room"
        );
        assert_eq!(index.counts(), (2, 3));
    }
}

//! A sharded map from a name to the connections that want it: the hub's
//! topic, user and private-topic indexes are one each.

use super::{ConnHandle, lock};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

type Subscribers = Vec<Arc<ConnHandle>>;

/// One shard of an [`Index`].
#[derive(Debug, Default)]
struct IndexShard {
    map: HashMap<Box<str>, Subscribers>,
    /// Connections in `map`, all keys together: kept here, under the lock
    /// that is taken anyway, so counting costs nothing extra.
    entries: usize,
}

/// A sharded map from a name to the connections that want it.
#[derive(Debug)]
pub(super) struct Index {
    shards: Box<[Mutex<IndexShard>]>,
    hasher: RandomState,
}

impl Index {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<IndexShard> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash % self.shards.len()]
    }

    /// Adds `conn` under `key`; true when `key` had no subscriber before.
    pub(super) fn add(&self, key: &str, conn: &Arc<ConnHandle>) -> bool {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        match shard.map.get_mut(key) {
            Some(subscribers) => {
                if !subscribers.iter().any(|c| c.id == conn.id) {
                    subscribers.push(conn.clone());
                    shard.entries += 1;
                }
                false
            }
            None => {
                shard.map.insert(key.into(), vec![conn.clone()]);
                shard.entries += 1;
                true
            }
        }
    }

    /// Removes connection `id` from `key`; true when that left `key`
    /// without subscribers.
    pub(super) fn remove(&self, key: &str, id: u64) -> bool {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        let Some(subscribers) = shard.map.get_mut(key) else {
            return false;
        };
        if let Some(at) = subscribers.iter().position(|c| c.id == id) {
            subscribers.swap_remove(at);
            shard.entries -= 1;
        }
        if subscribers.is_empty() {
            shard.map.remove(key);
            true
        } else {
            false
        }
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        lock(self.shard(key)).map.contains_key(key)
    }

    pub(super) fn for_each(&self, key: &str, mut f: impl FnMut(&Arc<ConnHandle>)) {
        if let Some(subscribers) = lock(self.shard(key)).map.get(key) {
            subscribers.iter().for_each(&mut f);
        }
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

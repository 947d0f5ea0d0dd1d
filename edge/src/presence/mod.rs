//! Presence: who is subscribed to a topic, and who is logged in, across the
//! edges of a cluster; the join/leave pushes (10005, 10006, 10010), the
//! presence query (request code 7), user online/offline events for
//! backends, and the cluster-wide `max_connections_per_user`.
//!
//! Only topics whose `[presence]` rule has `events` or `query` are tracked,
//! and only on edges with a local subscriber; the logged-in users are
//! tracked (on every edge, all of the cluster's) only for online events or
//! the cluster-wide user limit. Nothing else pays for it: a subscribe to a
//! topic without presence takes one branch more.
//!
//! Each tracked *group* (a topic, or the logged-in users) holds, per user,
//! this edge's connections (counted by the connections themselves as they
//! subscribe, log in, leave) and the other edges' as they last told
//! ([`view`]). Each edge publishes its own changes once per window
//! (`presence.interval`) on the group's subject as absolute counts,
//! numbered ([`wire`]); every edge with the group applies them and works
//! out the cluster-wide transitions itself: "U's first connection
//! anywhere", "U's last one gone". A new group is seeded by asking every
//! edge for its own state over the control plane (a [`Command::Tracked`]
//! gathering, which names the edges that did not answer), with the
//! changes that arrive meanwhile buffered and applied on top by number.
//!
//! Edges publish a heartbeat; one silent for three of its heartbeats is
//! taken for dead and its users leave (`cluster`). An edge that was frozen
//! or cut off from NATS that long tells its whole state again and seeds
//! its groups again.
//!
//! At the end of each window the net changes of each topic since the last
//! one are pushed to its local subscribers, at most `max_changes`, else
//! one 10010: per subscriber and topic, at most `max_changes` pushes or
//! one 10010 per window, whatever the churn. The logged-in users' changes
//! become online events, each published by one edge: the live edge (with
//! online events on) whose rendezvous hash with the uid is highest, so a
//! user's events come from one view in order.
//!
//! Not "the edge whose local change caused it": when a client moves from
//! edge A to edge B (A drains, say), A sees her last connection go while
//! its view still lacks B's, and B sees her first one come while its view
//! still holds A's: A would publish "offline" and nobody "online". One
//! view per user gets the final state right. Each transition is then
//! published once while the edges agree on who is alive. For about one
//! heartbeat they may not: when an edge starts, or stops (it says bye
//! after its last window), a user's event may be published twice. When an
//! edge dies, the edge that takes over its users republishes the state of
//! those whose presence flipped within the liveness timeout and two
//! windows (duplicates rather than losses). Events are states with a time
//! (`at`): a backend keeps the latest per uid.
//!
//! [`Command::Tracked`]: gpush_common::control::Command::Tracked

pub(crate) mod cluster;
pub(crate) mod events;
mod view;
mod wire;

pub(crate) use wire::OnlineEvent;

use crate::config::{LIVENESS_HEARTBEATS, PresenceConfig};
use crate::hub::Hub;
use crate::protocol::push::PresenceFrames;
use gpush_common::control::{Answer, Tracked};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use view::{Budget, Group, NodeIx};
use wire::{Change, Heartbeat};

/// How long a presence query waits for its topic's seed.
pub(crate) const QUERY_WAIT: Duration = Duration::from_secs(2);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which group: a public topic's subscribers, or the logged-in users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum GroupKey {
    /// A public topic.
    Topic(String),
    /// The logged-in users.
    Users,
}

impl GroupKey {
    /// The topic, None for the users.
    pub(crate) fn topic(&self) -> Option<&str> {
        match self {
            GroupKey::Topic(topic) => Some(topic),
            GroupKey::Users => None,
        }
    }
}

/// One lock's worth of the topic groups.
type TopicShard = Mutex<HashMap<Box<str>, Group>>;

/// Another edge, as its heartbeats and changes tell.
#[derive(Debug)]
struct Node {
    id: Box<str>,
    started: u64,
    /// When last heard from, in tracker milliseconds.
    heard: AtomicU64,
    /// Its heartbeat interval, milliseconds.
    every: AtomicU64,
    /// Whether it publishes online events.
    online: AtomicBool,
}

/// The other edges.
#[derive(Debug, Default)]
struct Nodes {
    by_id: HashMap<Box<str>, NodeIx>,
    nodes: HashMap<NodeIx, Node>,
    next: NodeIx,
}

/// What a window gave: changes to publish, pushes to deliver, events to
/// send.
#[derive(Debug, Default)]
pub(crate) struct Tick {
    /// This edge's changes, numbered, per group.
    pub(crate) publish: Vec<(GroupKey, Change)>,
    /// Per topic with `events`: its net changes (uid, joined).
    pub(crate) pushes: Vec<(String, Vec<(String, bool)>)>,
    /// Online events this edge publishes.
    pub(crate) events: Vec<OnlineEvent>,
}

/// Counters for `GET /metrics`.
#[derive(Debug, Default)]
pub(crate) struct PresenceStats {
    /// Windows of a topic pushed as 10005/10006 frames, and the frames.
    pub(crate) windows: AtomicU64,
    pub(crate) changes: AtomicU64,
    /// Windows of a topic pushed as one 10010.
    pub(crate) overflows: AtomicU64,
    /// Online events this edge published (or queued for the webhook).
    pub(crate) events: AtomicU64,
    /// Online events dropped: the webhook queue was full, or the webhook
    /// refused them for good.
    pub(crate) events_dropped: AtomicU64,
    /// Edges taken for dead (silent for three heartbeats).
    pub(crate) expired: AtomicU64,
}

/// This edge's presence tracker; one per edge.
#[derive(Debug)]
pub(crate) struct Presence {
    node_id: String,
    /// When this tracker started, unix microseconds: this edge instance.
    started: u64,
    config: PresenceConfig,
    /// Part of a cluster: groups wait for their seed, changes are
    /// published. Standalone there is no other edge.
    clustered: bool,
    /// This edge publishes online events.
    online: bool,
    /// `max_connections_per_user` counts the whole cluster.
    user_limit_cluster: bool,
    /// The last number given to a change of this edge.
    seq: AtomicU64,
    /// The last number given to a seed gathering.
    gatherings: AtomicU64,
    topics: Box<[TopicShard]>,
    hasher: RandomState,
    /// The logged-in users, when tracked.
    users: Option<Mutex<Group>>,
    nodes: RwLock<Nodes>,
    pub(crate) budget: Budget,
    /// Wakes the cluster task: a group waits for its seed.
    pub(crate) wake: Notify,
    /// Notified when a group's seed is in.
    synced: Notify,
    epoch: Instant,
    pub(crate) stats: PresenceStats,
}

/// The tracker's settings, from the edge config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) node_id: String,
    pub(crate) config: PresenceConfig,
    pub(crate) clustered: bool,
    /// `events.online`.
    pub(crate) online: bool,
    /// `max_connections_per_user_scope = "cluster"`.
    pub(crate) user_limit_cluster: bool,
    pub(crate) shards: usize,
}

impl Presence {
    pub(crate) fn new(settings: Settings) -> Self {
        let Settings {
            node_id,
            config,
            clustered,
            online,
            user_limit_cluster,
            shards,
        } = settings;
        let user_limit_cluster = user_limit_cluster && clustered;
        let users = (online || user_limit_cluster).then(|| Mutex::new(Group::new(clustered)));
        Self {
            node_id,
            started: gpush_common::push::now_us(),
            budget: Budget::new(config.max_bytes),
            config,
            clustered,
            online,
            user_limit_cluster,
            seq: AtomicU64::new(0),
            gatherings: AtomicU64::new(0),
            topics: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            users,
            nodes: RwLock::default(),
            wake: Notify::new(),
            synced: Notify::new(),
            epoch: Instant::now(),
            stats: PresenceStats::default(),
        }
    }

    /// Whether anything is tracked at all: without a `[presence]` rule and
    /// without online events or the cluster-wide user limit the edge runs
    /// no presence task (no heartbeat either).
    pub(crate) fn active(&self) -> bool {
        self.users.is_some()
            || self
                .config
                .topics
                .iter()
                .any(|rule| rule.events || rule.query)
    }

    /// Whether `topic` is tracked: its rule has `events` or `query`.
    pub(crate) fn tracks(&self, topic: &str) -> bool {
        !self.config.topics.is_empty()
            && self
                .config
                .rule(topic)
                .is_some_and(|rule| rule.events || rule.query)
    }

    /// Whether `topic`'s rule allows presence queries.
    pub(crate) fn queryable(&self, topic: &str) -> bool {
        self.config.rule(topic).is_some_and(|rule| rule.query)
    }

    /// Whether the logged-in users are tracked.
    pub(crate) fn tracks_users(&self) -> bool {
        self.users.is_some()
    }

    fn shard(&self, topic: &str) -> &TopicShard {
        let hash = self.hasher.hash_one(topic) as usize;
        &self.topics[hash % self.topics.len()]
    }

    /// Tracker seconds (for when a user's presence last flipped).
    fn now_secs(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One connection more (`add`) or less of this edge subscribed to
    /// tracked `topic`, logged in as `uid` (None: without a login).
    pub(crate) fn topic_changed(&self, topic: &str, uid: Option<&str>, add: bool) {
        let now = self.now_secs();
        let mut shard = lock(self.shard(topic));
        let group = match shard.get_mut(topic) {
            Some(group) => group,
            None if !add => return,
            None => {
                if self.clustered {
                    self.wake.notify_one();
                }
                shard
                    .entry(topic.into())
                    .or_insert_with(|| Group::new(self.clustered))
            }
        };
        if add && !group.synced() && !group.has_local() {
            // A group left waiting while nobody here needed it.
            self.wake.notify_one();
        }
        group.local(uid, add, &self.budget, now);
    }

    /// One connection more (`add`) or less of this edge logged in as
    /// `uid`.
    pub(crate) fn user_changed(&self, uid: &str, add: bool) {
        if let Some(users) = &self.users {
            lock(users).local(Some(uid), add, &self.budget, self.now_secs());
        }
    }

    /// `uid`'s connections on the other edges, when
    /// `max_connections_per_user` counts the cluster.
    pub(crate) fn connections_elsewhere(&self, uid: &str) -> Option<u64> {
        let users = self.users.as_ref().filter(|_| self.user_limit_cluster)?;
        Some(lock(users).remote_count(uid))
    }

    /// `topic`'s presence, cluster-wide: (uid, connections) sorted by uid,
    /// and the connections without a login. Waits up to `wait` for the
    /// topic's seed (a query right after the first subscribe).
    pub(crate) async fn query(&self, topic: &str, wait: Duration) -> (Vec<(String, u64)>, u64) {
        let deadline = Instant::now() + wait;
        loop {
            let seeded = self.synced.notified();
            {
                let shard = lock(self.shard(topic));
                match shard.get(topic) {
                    None => return (Vec::new(), 0),
                    Some(group) if group.synced() || Instant::now() >= deadline => {
                        return group.presence();
                    }
                    Some(_) => {}
                }
            }
            let _ = tokio::time::timeout_at(deadline, seeded).await;
        }
    }

    /// This edge's own state of a group for another edge's seed, numbered
    /// after every change of it this edge published.
    pub(crate) fn tracked(&self, topic: Option<&str>) -> Answer {
        let own = |group: Option<&Group>| group.map(Group::own).unwrap_or_default();
        let ((users, anonymous), seq) = match topic {
            Some(topic) => {
                let shard = lock(self.shard(topic));
                (own(shard.get(topic)), self.next_seq())
            }
            None => match &self.users {
                Some(users) => {
                    let users = lock(users);
                    (own(Some(&users)), self.next_seq())
                }
                None => ((Vec::new(), 0), self.next_seq()),
            },
        };
        Answer::Tracked {
            started: self.started,
            seq,
            users: users.into_iter().map(|(u, n)| (u, u64::from(n))).collect(),
            anonymous: u64::from(anonymous),
        }
    }

    /// Calls `f` with the group of `key` under its lock, if it exists.
    fn with_group<R>(&self, key: &GroupKey, f: impl FnOnce(&mut Group) -> R) -> Option<R> {
        match key {
            GroupKey::Topic(topic) => lock(self.shard(topic)).get_mut(topic.as_str()).map(f),
            GroupKey::Users => self.users.as_ref().map(|users| f(&mut lock(users))),
        }
    }

    /// Every group, each under its lock in turn.
    fn each_group(&self, mut f: impl FnMut(GroupKey, &mut Group)) {
        for shard in &self.topics {
            for (topic, group) in lock(shard).iter_mut() {
                f(GroupKey::Topic(topic.to_string()), group);
            }
        }
        if let Some(users) = &self.users {
            f(GroupKey::Users, &mut lock(users));
        }
    }

    /// Tracked `topic`'s presence subject was dropped (its last local
    /// subscriber left): its group, if it is still there, waits for a new
    /// seed, gathered once a local subscriber needs it (see
    /// [`Presence::take_unsynced`]).
    pub(crate) fn unsubscribed(&self, topic: &str) {
        let restarted = lock(self.shard(topic))
            .get_mut(topic)
            .map(|group| group.restart(&self.budget))
            .is_some();
        if restarted {
            self.wake.notify_one();
        }
    }

    /// Up to `max` groups waiting for their seed, each marked as being
    /// gathered under a number of its own (for [`Presence::seeded`]);
    /// topic groups only while `needed` (a local subscriber is there: the
    /// group may be about to go, and a seed subscribes the topic's
    /// presence subject).
    pub(crate) fn take_unsynced(
        &self,
        max: usize,
        needed: impl Fn(&str) -> bool,
    ) -> Vec<(GroupKey, u64)> {
        let mut keys = Vec::new();
        if max == 0 {
            return keys;
        }
        let next = || self.gatherings.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(users) = &self.users {
            let gathering = next();
            if lock(users).start_sync(gathering) {
                keys.push((GroupKey::Users, gathering));
            }
        }
        for shard in &self.topics {
            if keys.len() >= max {
                break;
            }
            for (topic, group) in lock(shard).iter_mut() {
                if keys.len() >= max {
                    break;
                }
                if !group.synced() && (group.has_local() || needed(topic)) {
                    let gathering = next();
                    if group.start_sync(gathering) {
                        keys.push((GroupKey::Topic(topic.to_string()), gathering));
                    }
                }
            }
        }
        keys
    }

    /// The seed of `key` gathered as number `gathering` (`seeds`: each
    /// edge's answer), or not (None: it is tried again). Dropped unless the
    /// group there now waits for that very gathering: the group it was
    /// gathered for may have gone since (its last local subscriber left)
    /// or been restarted, and a newer one has its own.
    pub(crate) fn seeded(&self, key: &GroupKey, gathering: u64, seeds: Option<Vec<Tracked>>) {
        let Some(seeds) = seeds else {
            self.with_group(key, |group| group.sync_failed(gathering));
            return;
        };
        if self.with_group(key, |group| group.awaits(gathering)) != Some(true) {
            return;
        }
        let mut changes = Vec::with_capacity(seeds.len());
        for seed in seeds {
            if seed.node == self.node_id {
                continue;
            }
            let Some(ix) = self.node_for(&seed.node, seed.started) else {
                continue;
            };
            changes.push((
                ix,
                Change {
                    node: seed.node,
                    started: seed.started,
                    seq: seed.seq,
                    full: true,
                    users: seed
                        .users
                        .into_iter()
                        .map(|(u, n)| (u, u32::try_from(n).unwrap_or(u32::MAX)))
                        .collect(),
                    anonymous: Some(u32::try_from(seed.anonymous).unwrap_or(u32::MAX)),
                },
            ));
        }
        let now = self.now_secs();
        {
            // No edge is forgotten while its seed goes in.
            let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
            changes.retain(|(ix, _)| nodes.nodes.contains_key(ix));
            self.with_group(key, |group| {
                if group.awaits(gathering) {
                    group.seed(&changes, &self.budget, now);
                }
            });
        }
        self.synced.notify_waiters();
    }

    /// The node ids of the other edges alive now.
    pub(crate) fn live_ids(&self) -> Vec<String> {
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        nodes.nodes.values().map(|n| n.id.to_string()).collect()
    }

    /// The index of edge `id` (registered when new), or None when the
    /// message comes from an instance older than the one known. An edge
    /// restarted under the same id replaces the one before (whose state is
    /// forgotten).
    fn node_for(&self, id: &str, started: u64) -> Option<NodeIx> {
        let now = self.now_ms();
        {
            let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(node) = nodes.by_id.get(id).and_then(|ix| nodes.nodes.get(ix)) {
                if node.started == started {
                    node.heard.store(now, Ordering::Relaxed);
                    return nodes.by_id.get(id).copied();
                }
                if started < node.started {
                    return None;
                }
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&ix) = nodes.by_id.get(id) {
            match nodes.nodes.get(&ix).map(|n| n.started) {
                Some(known) if known == started => return Some(ix),
                Some(known) if started < known => return None,
                _ => {
                    tracing::info!(node = %id, "edge restarted: forgetting its presence");
                    self.forget(&mut nodes, ix);
                }
            }
        }
        let ix = nodes.next;
        nodes.next += 1;
        nodes.by_id.insert(id.into(), ix);
        nodes.nodes.insert(
            ix,
            Node {
                id: id.into(),
                started,
                heard: AtomicU64::new(now),
                every: AtomicU64::new(self.config.heartbeat.as_millis() as u64),
                online: AtomicBool::new(false),
            },
        );
        Some(ix)
    }

    /// Removes edge `ix` and everything it said (the write lock held, so
    /// no change of it goes in meanwhile).
    fn forget(&self, nodes: &mut Nodes, ix: NodeIx) {
        if let Some(node) = nodes.nodes.remove(&ix) {
            nodes.by_id.remove(&node.id);
        }
        let now = self.now_secs();
        self.each_group(|_, group| group.remove_node(ix, &self.budget, now));
    }

    /// Takes another edge's change of group `key` (a message on its
    /// presence subject).
    pub(crate) fn receive(&self, key: &GroupKey, payload: &[u8]) {
        let change: Change = match serde_json::from_slice(payload) {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable presence change dropped");
                return;
            }
        };
        if change.node == self.node_id {
            return;
        }
        let Some(ix) = self.node_for(&change.node, change.started) else {
            return;
        };
        let now = self.now_secs();
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        if nodes.nodes.contains_key(&ix) {
            self.with_group(key, |group| group.receive(ix, change, &self.budget, now));
        }
    }

    /// Takes another edge's heartbeat; true when it asks for ours (it just
    /// started).
    pub(crate) fn heartbeat(&self, payload: &[u8]) -> bool {
        let beat: Heartbeat = match serde_json::from_slice(payload) {
            Ok(beat) => beat,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable presence heartbeat dropped");
                return false;
            }
        };
        if beat.node == self.node_id {
            return false;
        }
        if beat.bye {
            let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(&ix) = nodes.by_id.get(beat.node.as_str())
                && nodes
                    .nodes
                    .get(&ix)
                    .is_some_and(|n| n.started == beat.started)
            {
                tracing::info!(node = %beat.node, "edge stopped: forgetting its presence");
                self.forget(&mut nodes, ix);
            }
            return false;
        }
        if let Some(ix) = self.node_for(&beat.node, beat.started) {
            let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(node) = nodes.nodes.get(&ix) {
                node.every.store(beat.every_ms.max(1), Ordering::Relaxed);
                node.online.store(beat.online, Ordering::Relaxed);
            }
        }
        beat.hello
    }

    /// This edge's heartbeat.
    pub(crate) fn own_heartbeat(&self, hello: bool, bye: bool) -> Vec<u8> {
        let beat = Heartbeat {
            node: self.node_id.clone(),
            started: self.started,
            every_ms: self.config.heartbeat.as_millis() as u64,
            online: self.online,
            hello,
            bye,
        };
        serde_json::to_vec(&beat).unwrap_or_default()
    }

    /// Counts every other edge as heard from now: this edge itself was
    /// frozen (or cut off), so their silence says nothing.
    pub(crate) fn touch_all(&self) {
        let now = self.now_ms();
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        for node in nodes.nodes.values() {
            node.heard.store(now, Ordering::Relaxed);
        }
    }

    /// Drops the edges silent for three of their heartbeats: their users
    /// leave. Returns the online events this edge takes over from them:
    /// the users it now publishes for whose presence flipped within the
    /// last liveness timeout and two windows, which the dead edge may not
    /// have published (their state as it was).
    pub(crate) fn expire(&self) -> Vec<OnlineEvent> {
        let now = self.now_ms();
        let dead: Vec<NodeIx> = {
            let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
            nodes
                .nodes
                .iter()
                .filter(|(_, node)| {
                    let every = node.every.load(Ordering::Relaxed);
                    now.saturating_sub(node.heard.load(Ordering::Relaxed))
                        > every * u64::from(LIVENESS_HEARTBEATS)
                })
                .map(|(ix, _)| *ix)
                .collect()
        };
        if dead.is_empty() {
            return Vec::new();
        }
        let before = self.candidates();
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        let replay = self.config.liveness_timeout() + self.config.interval * 2;
        let since = self
            .now_secs()
            .saturating_sub(u32::try_from(replay.as_secs()).unwrap_or(u32::MAX) + 1);
        for ix in &dead {
            if let Some(node) = nodes.nodes.get(ix) {
                tracing::warn!(node = %node.id, "edge silent for three heartbeats: its users leave");
            }
            if let Some(node) = nodes.nodes.remove(ix) {
                nodes.by_id.remove(&node.id);
            }
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        let after = candidates_of(&self.node_id, self.online, &nodes);
        if self.online
            && let Some(users) = &self.users
        {
            let at = gpush_common::push::now_us() / 1000;
            for (uid, online) in lock(users).changed_since(since) {
                let was = responsible(&uid, &before);
                let now_mine = responsible(&uid, &after) == Some(self.node_id.as_str());
                if now_mine && was != Some(self.node_id.as_str()) {
                    taken.push(OnlineEvent { uid, online, at });
                }
            }
        }
        let now = self.now_secs();
        for ix in dead {
            self.each_group(|_, group| group.remove_node(ix, &self.budget, now));
        }
        taken
    }

    /// The node ids that may publish online events: this edge (when it
    /// does) and the live edges that do.
    fn candidates(&self) -> Vec<String> {
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        candidates_of(&self.node_id, self.online, &nodes)
    }

    /// Marks every group to be seeded again (this edge was frozen or its
    /// bus connection was away: changes may be missing).
    pub(crate) fn resync_all(&self) {
        self.each_group(|_, group| group.resync());
        self.wake.notify_one();
    }

    /// This edge's whole state of every group, as full changes cut under
    /// `max_bytes`: for the others after this edge was frozen or cut off
    /// (they may have dropped it).
    pub(crate) fn full_state(&self, max_bytes: usize) -> Vec<(GroupKey, Change)> {
        let mut all = Vec::new();
        self.each_group(|key, group| {
            let (users, anonymous) = group.own();
            self.numbered(&key, users, Some(anonymous), true, max_bytes, &mut all);
        });
        all
    }

    /// `users` (and `anonymous`) of group `key` as changes cut under
    /// `max_bytes`, numbered now (under the group's lock); the first one
    /// `full` when asked.
    fn numbered(
        &self,
        key: &GroupKey,
        users: Vec<(String, u32)>,
        anonymous: Option<u32>,
        full: bool,
        max_bytes: usize,
        out: &mut Vec<(GroupKey, Change)>,
    ) {
        for (n, users) in Change::chunks(&self.node_id, users, max_bytes)
            .into_iter()
            .enumerate()
        {
            out.push((
                key.clone(),
                Change {
                    node: self.node_id.clone(),
                    started: self.started,
                    seq: self.next_seq(),
                    full: full && n == 0,
                    users,
                    anonymous: if n == 0 { anonymous } else { None },
                },
            ));
        }
    }

    /// Ends a window: each group's own changes (numbered, cut under
    /// `max_bytes`, in a cluster), the net presence changes of topics with
    /// `events`, the online events this edge publishes; and drops the
    /// topic groups without a local subscriber left (`hub`).
    pub(crate) fn window(&self, hub: &Hub, max_bytes: usize) -> Tick {
        let mut tick = Tick::default();
        for shard in &self.topics {
            let mut shard = lock(shard);
            shard.retain(|topic, group| {
                let window = group.window(&self.budget);
                if self.clustered && (!window.local.is_empty() || window.anonymous.is_some()) {
                    self.numbered(
                        &GroupKey::Topic(topic.to_string()),
                        window.local,
                        window.anonymous,
                        false,
                        max_bytes,
                        &mut tick.publish,
                    );
                }
                if !window.changes.is_empty()
                    && self.config.rule(topic).is_some_and(|rule| rule.events)
                {
                    tick.pushes.push((topic.to_string(), window.changes));
                }
                !group.locally_empty() || hub.has_topic(topic)
            });
        }
        if let Some(users) = &self.users {
            let candidates = self.candidates();
            let at = gpush_common::push::now_us() / 1000;
            let mut users = lock(users);
            let window = users.window(&self.budget);
            if self.clustered && !window.local.is_empty() {
                self.numbered(
                    &GroupKey::Users,
                    window.local,
                    None,
                    false,
                    max_bytes,
                    &mut tick.publish,
                );
            }
            if self.online {
                for (uid, online) in window.changes {
                    if responsible(&uid, &candidates) == Some(self.node_id.as_str()) {
                        tick.events.push(OnlineEvent { uid, online, at });
                    }
                }
            }
        }
        tick
    }

    /// Pushes one window's `changes` of `topic` to its local subscribers:
    /// 10005/10006 frames, or one 10010 when there are more than
    /// `max_changes`.
    pub(crate) fn deliver(&self, hub: &Hub, topic: &str, changes: &[(String, bool)]) {
        let frames = if changes.len() > self.config.max_changes {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            PresenceFrames::overflow(topic)
        } else {
            self.stats.windows.fetch_add(1, Ordering::Relaxed);
            self.stats
                .changes
                .fetch_add(changes.len() as u64, Ordering::Relaxed);
            PresenceFrames::changes(topic, changes)
        };
        hub.presence_changes(topic, &frames);
    }

    /// Tracked (group, user) entries now, and the groups waiting for
    /// their seed; every shard locked in turn.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let (mut entries, mut pending) = (0, 0);
        self.each_group(|_, group| {
            entries += group.len();
            pending += usize::from(!group.synced());
        });
        (entries, pending)
    }
}

/// The candidates to publish online events among `nodes`.
fn candidates_of(me: &str, online: bool, nodes: &Nodes) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .nodes
        .values()
        .filter(|node| node.online.load(Ordering::Relaxed))
        .map(|node| node.id.to_string())
        .collect();
    if online {
        ids.push(me.to_owned());
    }
    ids
}

/// The edge of `candidates` that publishes `uid`'s online events: the one
/// whose rendezvous hash with the uid is highest (FNV-1a of the node id,
/// a separator and the uid, mixed), the same choice on every edge that
/// knows the same candidates, and only the users of an edge that goes or
/// comes move.
fn responsible<'a>(uid: &str, candidates: &'a [String]) -> Option<&'a str> {
    let score = |node: &str| {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for byte in node.bytes().chain([0xff]).chain(uid.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // splitmix64's finaliser: FNV's low bits alone spread poorly.
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^ (hash >> 31)
    };
    candidates
        .iter()
        .max_by(|a, b| score(a).cmp(&score(b)).then_with(|| a.cmp(b)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PresenceRule;
    use crate::outbox::QueueLimits;
    use crate::protocol::WireFormat;
    use gpush_common::control::Answer;

    fn settings(node: &str, clustered: bool, online: bool) -> Settings {
        Settings {
            node_id: node.into(),
            config: PresenceConfig {
                max_changes: 2,
                topics: vec![PresenceRule {
                    prefix: "chat.".into(),
                    events: true,
                    query: true,
                }],
                ..PresenceConfig::default()
            },
            clustered,
            online,
            user_limit_cluster: true,
            shards: 4,
        }
    }

    /// The keys of groups taken for their seeds.
    fn keys(taken: &[(GroupKey, u64)]) -> Vec<GroupKey> {
        taken.iter().map(|(key, _)| key.clone()).collect()
    }

    /// Frames queued for `conn`, as JSON values.
    fn pushes(conn: &crate::hub::ConnHandle) -> Vec<serde_json::Value> {
        let mut frames = std::collections::VecDeque::new();
        conn.outbox.take(&mut frames);
        let mut values = Vec::new();
        for frame in frames {
            let mut rest = &frame[..];
            while !rest.is_empty() {
                let len = usize::from(rest[1]);
                values.push(serde_json::from_slice(&rest[2..2 + len]).expect("json"));
                rest = &rest[2 + len..];
            }
        }
        values
    }

    #[tokio::test]
    async fn standalone_windows_push_net_changes_bounded_by_max_changes() {
        let hub = Hub::new(2, QueueLimits { bytes: 1 << 20 });
        let presence = Presence::new(settings("a", false, true));
        let watcher = hub.connect(WireFormat::Json);
        hub.subscribe("chat.1", &watcher, usize::MAX)
            .expect("subscribe");
        assert!(presence.tracks("chat.1") && !presence.tracks("news"));
        presence.topic_changed("chat.1", None, true);
        presence.topic_changed("chat.1", Some("ann"), true);
        presence.user_changed("ann", true);
        let tick = presence.window(&hub, usize::MAX);
        assert!(tick.publish.is_empty(), "standalone publishes nothing");
        assert_eq!(
            tick.events
                .iter()
                .map(|e| (&*e.uid, e.online))
                .collect::<Vec<_>>(),
            [("ann", true)]
        );
        for (topic, changes) in &tick.pushes {
            presence.deliver(&hub, topic, changes);
        }
        assert_eq!(
            pushes(&watcher),
            [serde_json::json!({"code": 10005, "topic": "chat.1", "uid": "ann"})]
        );
        // Three joins in one window: over max_changes (2), one 10010.
        for uid in ["b", "c", "d"] {
            presence.topic_changed("chat.1", Some(uid), true);
        }
        // ann leaves and comes back: nets out.
        presence.topic_changed("chat.1", Some("ann"), false);
        presence.topic_changed("chat.1", Some("ann"), true);
        for (topic, changes) in &presence.window(&hub, usize::MAX).pushes {
            presence.deliver(&hub, topic, changes);
        }
        assert_eq!(
            pushes(&watcher),
            [serde_json::json!({"code": 10010, "topic": "chat.1"})]
        );
        let (users, anonymous) = presence.query("chat.1", QUERY_WAIT).await;
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["ann", "b", "c", "d"]);
        assert_eq!(anonymous, 1);
        // Everyone leaves; the watcher's edge drops the group once the hub
        // has no subscriber left.
        for uid in ["ann", "b", "c", "d"] {
            presence.topic_changed("chat.1", Some(uid), false);
        }
        presence.user_changed("ann", false);
        presence.topic_changed("chat.1", None, false);
        hub.unsubscribe("chat.1", watcher.id);
        let tick = presence.window(&hub, usize::MAX);
        assert_eq!(tick.pushes[0].1.len(), 4);
        assert_eq!(
            tick.events
                .iter()
                .map(|e| (&*e.uid, e.online))
                .collect::<Vec<_>>(),
            [("ann", false)]
        );
        assert_eq!(presence.counts(), (0, 0));
        assert_eq!(presence.query("chat.1", QUERY_WAIT).await, (vec![], 0));
    }

    #[tokio::test(start_paused = true)]
    async fn two_edges_agree_on_joins_and_a_dead_edge_takes_its_users() {
        let hub = Hub::new(2, QueueLimits { bytes: 1 << 20 });
        let a = Presence::new(settings("a", true, true));
        let b = Presence::new(settings("b", true, true));
        let watcher = hub.connect(WireFormat::Json);
        hub.subscribe("chat.1", &watcher, usize::MAX)
            .expect("subscribe");
        // Both know each other.
        a.heartbeat(&b.own_heartbeat(true, false));
        b.heartbeat(&a.own_heartbeat(false, false));
        // b seeds its users from a (empty).
        let taken = b.take_unsynced(8, |_| true);
        assert_eq!(keys(&taken), [GroupKey::Users]);
        b.seeded(&GroupKey::Users, taken[0].1, Some(Vec::new()));
        // a's subscriber comes first; a seeds from b (empty).
        a.topic_changed("chat.1", None, true);
        let taken = a.take_unsynced(8, |_| true);
        assert_eq!(
            keys(&taken),
            [GroupKey::Users, GroupKey::Topic("chat.1".into())]
        );
        let answer = |p: &Presence, topic: Option<&str>| match p.tracked(topic) {
            Answer::Tracked {
                started,
                seq,
                users,
                anonymous,
            } => Tracked {
                node: p.node_id.clone(),
                started,
                seq,
                users,
                anonymous,
            },
            other => panic!("{other:?}"),
        };
        a.seeded(&GroupKey::Users, taken[0].1, Some(vec![answer(&b, None)]));
        a.seeded(
            &GroupKey::Topic("chat.1".into()),
            taken[1].1,
            Some(vec![answer(&b, Some("chat.1"))]),
        );
        // ann logs in on b and subscribes: b's window publishes it.
        b.topic_changed("chat.1", Some("ann"), true);
        b.user_changed("ann", true);
        let from_b = b.window(&hub, 64 * 1024);
        assert_eq!(from_b.publish.len(), 2, "{:?}", from_b.publish);
        for (key, change) in &from_b.publish {
            a.receive(key, &serde_json::to_vec(change).expect("json"));
        }
        let tick = a.window(&hub, 64 * 1024);
        assert_eq!(
            tick.pushes,
            [("chat.1".to_owned(), vec![("ann".to_owned(), true)])]
        );
        assert_eq!(a.connections_elsewhere("ann"), Some(1));
        // One of a, b publishes ann's online event, not both.
        let by_a: Vec<_> = tick.events.iter().map(|e| e.uid.as_str()).collect();
        let by_b: Vec<_> = from_b.events.iter().map(|e| e.uid.as_str()).collect();
        assert_eq!(by_a.len() + by_b.len(), 1, "{by_a:?} {by_b:?}");
        // A late copy of a change already applied is dropped.
        let (key, change) = &from_b.publish[0];
        a.receive(key, &serde_json::to_vec(change).expect("json"));
        assert!(a.window(&hub, 64 * 1024).pushes.is_empty());
        // b goes silent: after three heartbeats ann leaves on a.
        tokio::time::advance(a.config.liveness_timeout() / 2).await;
        assert!(a.expire().is_empty());
        assert_eq!(a.live_ids(), ["b"]);
        tokio::time::advance(a.config.liveness_timeout()).await;
        let taken = a.expire();
        assert!(a.live_ids().is_empty());
        let tick = a.window(&hub, 64 * 1024);
        assert_eq!(
            tick.pushes,
            [("chat.1".to_owned(), vec![("ann".to_owned(), false)])]
        );
        // a publishes ann's offline event now; and, if b published her
        // online event, takes that over too (it may not have got out).
        let offline: Vec<_> = tick.events.iter().map(|e| (&*e.uid, e.online)).collect();
        assert_eq!(offline, [("ann", false)]);
        assert!(taken.len() <= 1);
        assert_eq!(a.connections_elsewhere("ann"), Some(0));
    }

    #[test]
    fn a_restarted_edge_replaces_the_one_before_and_stale_messages_are_dropped() {
        let a = Presence::new(settings("a", true, false));
        let hub = Hub::new(1, QueueLimits { bytes: 1 << 20 });
        a.topic_changed("chat.1", None, true);
        for (key, gathering) in a.take_unsynced(8, |_| true) {
            a.seeded(&key, gathering, Some(Vec::new()));
        }
        let change = |started: u64, uid: &str| Change {
            node: "b".into(),
            started,
            seq: 1,
            full: false,
            users: vec![(uid.into(), 1)],
            anonymous: None,
        };
        let key = GroupKey::Topic("chat.1".into());
        let send = |c: Change| a.receive(&key, &serde_json::to_vec(&c).expect("json"));
        send(change(10, "ann"));
        send(change(20, "bob"));
        send(change(15, "carl"));
        a.window(&hub, usize::MAX);
        let (users, _) = a.with_group(&key, |g| g.presence()).expect("group");
        assert_eq!(
            users,
            [("bob".to_owned(), 1)],
            "ann's edge restarted; carl's is older"
        );
    }

    #[test]
    fn a_seed_gathered_for_a_dropped_group_does_not_land_on_the_next_one() {
        let a = Presence::new(settings("a", true, false));
        let hub = Hub::new(1, QueueLimits { bytes: 1 << 20 });
        let key = GroupKey::Topic("chat.1".into());
        a.topic_changed("chat.1", None, true);
        let taken = a.take_unsynced(8, |_| true);
        assert_eq!(keys(&taken), [GroupKey::Users, key.clone()]);
        a.seeded(&GroupKey::Users, taken[0].1, Some(Vec::new()));
        // The subscriber leaves while the seed is gathered: two windows
        // drop the group.
        a.topic_changed("chat.1", None, false);
        a.window(&hub, usize::MAX);
        a.window(&hub, usize::MAX);
        assert_eq!(a.counts(), (0, 0));
        // A new subscriber: a new group, which waits for its own seed.
        a.topic_changed("chat.1", None, true);
        let stale = Tracked {
            node: "b".into(),
            started: 1,
            seq: 1,
            users: vec![("bob".into(), 1)],
            anonymous: 0,
        };
        a.seeded(&key, taken[1].1, Some(vec![stale]));
        assert_eq!(a.counts(), (0, 1), "the stale seed was dropped");
        assert_eq!(keys(&a.take_unsynced(8, |_| true)), [key], "seeded anew");
    }

    #[test]
    fn rendezvous_picks_one_edge_and_moves_few_users() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let mut moved = 0;
        let mut counts = HashMap::<&str, usize>::new();
        for n in 0..3000 {
            let uid = format!("user-{n}");
            let with = responsible(&uid, &three).expect("some");
            *counts.entry(with).or_default() += 1;
            let without = responsible(&uid, &two).expect("some");
            if with != "c" {
                assert_eq!(with, without, "only c's users move");
            } else {
                moved += 1;
            }
        }
        assert!(counts.values().all(|&n| n > 800), "{counts:?}");
        assert_eq!(moved, counts["c"]);
        assert_eq!(responsible("x", &[]), None);
    }
}

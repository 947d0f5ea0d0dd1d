//! One group's presence as this edge sees it: a public topic's users, or
//! the logged-in users (the group online events and the cluster-wide user
//! limit read). For each user: this edge's own connections, the other
//! edges' as they last told (each edge's changes are absolute counts,
//! numbered), and whether this edge last announced the user present.
//!
//! A group starts *pending*: changes from other edges are buffered until
//! its seed (every edge's own state, gathered over the control plane) is
//! in; then the seed is applied, the buffered changes numbered after it on
//! top, and the group follows the changes as they come. Changes of one
//! edge carry increasing numbers, so one that arrives late (a change
//! already covered by a seed) is dropped.

use super::wire::Change;
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// An edge in the tracker's node table: never reused within a process
/// (a restarted edge gets a new one).
pub(super) type NodeIx = u32;

/// Bytes one tracked (group, user) costs besides its uid, roughly: the
/// map key (16), the entry (48) and the hash table's share at its usual
/// load (~20), rounded up for the allocator.
pub(crate) const ENTRY_BYTES: usize = 96;
/// Bytes per other edge holding a tracked user.
pub(crate) const REMOTE_BYTES: usize = 8;
/// Most bytes of changes buffered for one pending group (its seed is being
/// gathered); beyond it, or beyond the view's budget (which the buffers
/// count in), the buffer is dropped and the seed gathered again.
pub(crate) const MAX_SYNC_BUFFER: usize = 4 * 1024 * 1024;

/// What every group's tracked users may take together.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
    /// Other edges' users left out because the budget was spent.
    pub(crate) refused: AtomicU64,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` for another edge's user, unless the budget is spent.
    fn take(&self, bytes: usize) -> bool {
        if self.used.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes `bytes` for changes buffered while a seed is gathered, unless
    /// the budget is spent (not counted as a refusal: the seed is
    /// gathered again).
    fn take_buffer(&self, bytes: usize) -> bool {
        if self.used.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes `bytes` for this edge's own user: always (the hub bounds
    /// those).
    fn force(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One user of a group.
#[derive(Debug, Default)]
struct Entry {
    /// Connections here.
    local: u32,
    /// (edge, connections) of the other edges holding the user.
    remote: Vec<(NodeIx, u32)>,
    /// The sum of `remote`.
    remote_total: u32,
    /// Present as this edge last announced it (pushes, events).
    announced: bool,
    /// `local` changed since this edge last published it.
    local_dirty: bool,
    /// When the user's presence (anywhere) last flipped, in tracker
    /// seconds.
    changed: u32,
}

impl Entry {
    fn present(&self) -> bool {
        self.local > 0 || self.remote_total > 0
    }

    fn total(&self) -> u64 {
        u64::from(self.local) + u64::from(self.remote_total)
    }

    fn bytes(uid: &str, remotes: usize) -> usize {
        ENTRY_BYTES + uid.len() + remotes * REMOTE_BYTES
    }
}

/// Another edge's part of a group.
#[derive(Debug)]
struct NodeState {
    ix: NodeIx,
    /// Its last change applied.
    seq: u64,
    /// Its connections without a login.
    anonymous: u32,
    /// Entries holding it.
    users: u32,
    /// Empty at the last window: forgotten at the next one if still empty
    /// (kept a window so a late change it already sent is recognised).
    idle: bool,
}

/// Where a group's seed stands.
#[derive(Debug)]
enum Sync {
    /// Changes from other edges wait here until the seed is in.
    Pending {
        buffer: Vec<(NodeIx, Change)>,
        bytes: usize,
        /// The buffer outgrew [`MAX_SYNC_BUFFER`] and was dropped: the
        /// seed must be gathered again.
        overflowed: bool,
        /// The group's first seed: what it brings is not announced.
        first: bool,
        /// The number of the gathering under way, if one is: only its
        /// result is taken (a seed gathered for a group since dropped, or
        /// restarted, must not land on this one).
        in_flight: Option<u64>,
    },
    Done,
}

/// What one window of a group gave.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// This edge's users whose connection counts changed: (uid, count).
    pub(super) local: Vec<(String, u32)>,
    /// This edge's anonymous connections, when that changed.
    pub(super) anonymous: Option<u32>,
    /// Users whose presence flipped since the last announcement: (uid,
    /// present), net.
    pub(super) changes: Vec<(String, bool)>,
}

/// One group's presence.
#[derive(Debug)]
pub(super) struct Group {
    entries: HashMap<Box<str>, Entry>,
    anonymous_local: u32,
    anonymous_dirty: bool,
    /// This edge's connections in the group, logged in or not.
    local_total: u32,
    nodes: Vec<NodeState>,
    /// Some user's presence may have flipped since the last window.
    dirty: bool,
    /// This edge's own counts changed since the last window.
    local_dirty: bool,
    sync: Sync,
}

impl Group {
    /// A group that waits for its seed (`pending`), or one that needs none
    /// (standalone: no other edge).
    pub(super) fn new(pending: bool) -> Self {
        Self {
            entries: HashMap::new(),
            anonymous_local: 0,
            anonymous_dirty: false,
            local_total: 0,
            nodes: Vec::new(),
            dirty: false,
            local_dirty: false,
            sync: if pending {
                Sync::Pending {
                    buffer: Vec::new(),
                    bytes: 0,
                    overflowed: false,
                    first: true,
                    in_flight: None,
                }
            } else {
                Sync::Done
            },
        }
    }

    /// Whether the seed is in.
    pub(super) fn synced(&self) -> bool {
        matches!(self.sync, Sync::Done)
    }

    /// Whether this edge has no connection in the group.
    pub(super) fn locally_empty(&self) -> bool {
        self.local_total == 0 && !self.local_dirty
    }

    /// Marks a pending group's seed as being gathered, as gathering
    /// number `gathering`; false when it is not pending or already under
    /// way.
    pub(super) fn start_sync(&mut self, gathering: u64) -> bool {
        match &mut self.sync {
            Sync::Pending { in_flight, .. } if in_flight.is_none() => {
                *in_flight = Some(gathering);
                true
            }
            _ => false,
        }
    }

    /// Whether gathering number `gathering` is the one this group waits
    /// for.
    pub(super) fn awaits(&self, gathering: u64) -> bool {
        matches!(self.sync, Sync::Pending { in_flight: Some(n), .. } if n == gathering)
    }

    /// Waits for a new seed (after the bus reconnected, or this edge was
    /// frozen): what it changes is announced.
    pub(super) fn resync(&mut self) {
        if self.synced() {
            self.sync = Sync::Pending {
                buffer: Vec::new(),
                bytes: 0,
                overflowed: false,
                first: false,
                in_flight: None,
            };
        }
    }

    /// Waits for a new seed, whatever the state: this edge no longer
    /// receives the group's changes (its subject was dropped), so what it
    /// holds of the other edges goes stale until a seed is gathered again
    /// (which subscribes the subject anew). A seed under way is not waited
    /// for. What the next seed changes is announced, unless the group was
    /// never seeded.
    pub(super) fn restart(&mut self, budget: &Budget) {
        let first = match &self.sync {
            Sync::Pending { bytes, first, .. } => {
                budget.give(*bytes);
                *first
            }
            Sync::Done => false,
        };
        self.sync = Sync::Pending {
            buffer: Vec::new(),
            bytes: 0,
            overflowed: false,
            first,
            in_flight: None,
        };
    }

    /// Whether this edge has a connection in the group now.
    pub(super) fn has_local(&self) -> bool {
        self.local_total > 0
    }

    /// Gathering number `gathering` failed: it may be tried again.
    pub(super) fn sync_failed(&mut self, gathering: u64) {
        if let Sync::Pending { in_flight, .. } = &mut self.sync
            && *in_flight == Some(gathering)
        {
            *in_flight = None;
        }
    }

    /// Records one more (`add`) or one less connection of this edge: of
    /// user `uid`, or without a login.
    pub(super) fn local(&mut self, uid: Option<&str>, add: bool, budget: &Budget, now: u32) {
        let step = |n: &mut u32| {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            }
        };
        self.local_dirty = true;
        step(&mut self.local_total);
        let Some(uid) = uid else {
            step(&mut self.anonymous_local);
            self.anonymous_dirty = true;
            return;
        };
        if !self.entries.contains_key(uid) {
            budget.force(Entry::bytes(uid, 0));
            self.entries.insert(uid.into(), Entry::default());
        }
        if let Some(entry) = self.entries.get_mut(uid) {
            let was = entry.present();
            step(&mut entry.local);
            entry.local_dirty = true;
            if entry.present() != was {
                entry.changed = now;
            }
        }
        self.dirty = true;
    }

    /// Takes another edge's change: buffered while pending, applied
    /// otherwise.
    pub(super) fn receive(&mut self, ix: NodeIx, change: Change, budget: &Budget, now: u32) {
        match &mut self.sync {
            Sync::Pending {
                buffer,
                bytes,
                overflowed,
                ..
            } => {
                if *overflowed {
                    return;
                }
                let size = change.bytes();
                if *bytes + size > MAX_SYNC_BUFFER || !budget.take_buffer(size) {
                    budget.give(*bytes);
                    *bytes = 0;
                    *buffer = Vec::new();
                    *overflowed = true;
                } else {
                    *bytes += size;
                    buffer.push((ix, change));
                }
            }
            Sync::Done => self.apply(ix, &change, budget, now),
        }
    }

    /// Applies the seed (each answering edge's state, as a full change)
    /// and then the changes buffered meanwhile. False when the buffer
    /// overflowed: the group stays pending, to be gathered again.
    ///
    /// What a group's first seed brings is not news: it was there before
    /// this edge looked (a topic's subscribers ask, request code 7). What
    /// happened here since the group began is: this edge's own users whom
    /// no other edge holds (they joined, or logged in, here while the seed
    /// was gathered), and the changes buffered meanwhile.
    pub(super) fn seed(&mut self, seeds: &[(NodeIx, Change)], budget: &Budget, now: u32) -> bool {
        let sync = std::mem::replace(&mut self.sync, Sync::Done);
        let Sync::Pending {
            buffer,
            bytes,
            overflowed,
            first,
            ..
        } = sync
        else {
            return true;
        };
        budget.give(bytes);
        if overflowed {
            self.sync = Sync::Pending {
                buffer: Vec::new(),
                bytes: 0,
                overflowed: false,
                first,
                in_flight: None,
            };
            return false;
        }
        for (ix, change) in seeds {
            self.apply(*ix, change, budget, now);
        }
        if first {
            for entry in self.entries.values_mut() {
                entry.announced = entry.remote_total > 0;
            }
        }
        // What changed while the seed was gathered is news.
        for (ix, change) in &buffer {
            self.apply(*ix, change, budget, now);
        }
        true
    }

    fn node_at(&mut self, ix: NodeIx) -> usize {
        match self.nodes.iter().position(|n| n.ix == ix) {
            Some(at) => at,
            None => {
                self.nodes.push(NodeState {
                    ix,
                    seq: 0,
                    anonymous: 0,
                    users: 0,
                    idle: false,
                });
                self.nodes.len() - 1
            }
        }
    }

    /// Applies edge `ix`'s change unless it is not newer than the last one
    /// applied.
    fn apply(&mut self, ix: NodeIx, change: &Change, budget: &Budget, now: u32) {
        let at = self.node_at(ix);
        let node = &mut self.nodes[at];
        if change.seq <= node.seq {
            return;
        }
        node.seq = change.seq;
        node.idle = false;
        if change.full {
            node.anonymous = 0;
            self.clear(ix, budget, now);
        }
        if let Some(anonymous) = change.anonymous {
            self.nodes[at].anonymous = anonymous;
        }
        for (uid, count) in &change.users {
            self.set_remote(at, uid, *count, budget, now);
        }
    }

    /// Sets edge `nodes[at]`'s connections of `uid` to `count`.
    fn set_remote(&mut self, at: usize, uid: &str, count: u32, budget: &Budget, now: u32) {
        let ix = self.nodes[at].ix;
        let entry = match self.entries.entry(uid.into()) {
            MapEntry::Occupied(entry) => entry.into_mut(),
            MapEntry::Vacant(_) if count == 0 => return,
            MapEntry::Vacant(vacant) => {
                if !budget.take(Entry::bytes(uid, 1)) {
                    return;
                }
                self.nodes[at].users += 1;
                self.dirty = true;
                vacant.insert(Entry {
                    remote: vec![(ix, count)],
                    remote_total: count,
                    changed: now,
                    ..Entry::default()
                });
                return;
            }
        };
        let was = entry.present();
        match entry.remote.iter().position(|(n, _)| *n == ix) {
            Some(i) => {
                let old = entry.remote[i].1;
                entry.remote_total = entry.remote_total.saturating_sub(old);
                if count == 0 {
                    entry.remote.swap_remove(i);
                    self.nodes[at].users = self.nodes[at].users.saturating_sub(1);
                    budget.give(REMOTE_BYTES);
                } else {
                    entry.remote[i].1 = count;
                    entry.remote_total = entry.remote_total.saturating_add(count);
                }
            }
            None if count == 0 => return,
            None => {
                if !budget.take(REMOTE_BYTES) {
                    return;
                }
                entry.remote.push((ix, count));
                entry.remote_total = entry.remote_total.saturating_add(count);
                self.nodes[at].users += 1;
            }
        }
        if entry.present() != was {
            entry.changed = now;
        }
        self.dirty = true;
    }

    /// Forgets everything edge `ix` said.
    fn clear(&mut self, ix: NodeIx, budget: &Budget, now: u32) {
        for entry in self.entries.values_mut() {
            if let Some(i) = entry.remote.iter().position(|(n, _)| *n == ix) {
                let was = entry.present();
                entry.remote_total = entry.remote_total.saturating_sub(entry.remote[i].1);
                entry.remote.swap_remove(i);
                budget.give(REMOTE_BYTES);
                if entry.present() != was {
                    entry.changed = now;
                }
                self.dirty = true;
            }
        }
        if let Some(node) = self.nodes.iter_mut().find(|n| n.ix == ix) {
            node.users = 0;
        }
    }

    /// Forgets edge `ix` (it is dead, left, or restarted).
    pub(super) fn remove_node(&mut self, ix: NodeIx, budget: &Budget, now: u32) {
        self.clear(ix, budget, now);
        self.nodes.retain(|n| n.ix != ix);
        if let Sync::Pending { buffer, bytes, .. } = &mut self.sync {
            buffer.retain(|(n, change)| {
                let keep = *n != ix;
                if !keep {
                    *bytes -= change.bytes();
                    budget.give(change.bytes());
                }
                keep
            });
        }
    }

    /// Ends a window: this edge's changed counts (to publish), the users
    /// whose presence flipped since the last announcement (once the seed
    /// is in), and the entries nobody holds any more dropped.
    pub(super) fn window(&mut self, budget: &Budget) -> Window {
        let mut window = Window::default();
        if self.local_dirty {
            for (uid, entry) in &mut self.entries {
                if entry.local_dirty {
                    entry.local_dirty = false;
                    window.local.push((uid.to_string(), entry.local));
                }
            }
            if self.anonymous_dirty {
                self.anonymous_dirty = false;
                window.anonymous = Some(self.anonymous_local);
            }
            self.local_dirty = false;
        }
        let synced = self.synced();
        if self.dirty && synced {
            for (uid, entry) in &mut self.entries {
                let present = entry.present();
                if present != entry.announced {
                    entry.announced = present;
                    window.changes.push((uid.to_string(), present));
                }
            }
        }
        if self.dirty {
            self.entries.retain(|uid, entry| {
                let keep = entry.present() || entry.announced || entry.local_dirty;
                if !keep {
                    budget.give(Entry::bytes(uid, entry.remote.len()));
                }
                keep
            });
            if synced {
                self.dirty = false;
            }
        }
        if synced {
            self.age_nodes();
        }
        window
    }

    /// Forgets the edges with nothing here for two windows in a row.
    fn age_nodes(&mut self) {
        self.nodes.retain_mut(|node| {
            if node.users > 0 || node.anonymous > 0 {
                node.idle = false;
                true
            } else if node.idle {
                false
            } else {
                node.idle = true;
                true
            }
        });
    }

    /// This edge's own state: (uid, connections here) and its anonymous
    /// connections.
    pub(super) fn own(&self) -> (Vec<(String, u32)>, u32) {
        let users = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.local > 0)
            .map(|(uid, entry)| (uid.to_string(), entry.local))
            .collect();
        (users, self.anonymous_local)
    }

    /// The group's presence, cluster-wide: (uid, connections) sorted by
    /// uid, and the connections without a login.
    pub(super) fn presence(&self) -> (Vec<(String, u64)>, u64) {
        let mut users: Vec<(String, u64)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.present())
            .map(|(uid, entry)| (uid.to_string(), entry.total()))
            .collect();
        users.sort_unstable();
        let anonymous = u64::from(self.anonymous_local)
            + self
                .nodes
                .iter()
                .map(|n| u64::from(n.anonymous))
                .sum::<u64>();
        (users, anonymous)
    }

    /// `uid`'s connections on the other edges.
    pub(super) fn remote_count(&self, uid: &str) -> u64 {
        self.entries
            .get(uid)
            .map_or(0, |entry| u64::from(entry.remote_total))
    }

    /// The users whose presence flipped at or after `since` (tracker
    /// seconds), with their presence now.
    pub(super) fn changed_since(&self, since: u32) -> Vec<(String, bool)> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.changed >= since)
            .map(|(uid, entry)| (uid.to_string(), entry.present()))
            .collect()
    }

    /// Tracked users.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, users: &[(&str, u32)], anonymous: Option<u32>) -> Change {
        Change {
            node: "b".into(),
            started: 1,
            seq,
            full: false,
            users: users.iter().map(|(u, n)| (u.to_string(), *n)).collect(),
            anonymous,
        }
    }

    fn budget() -> Budget {
        Budget::new(1 << 20)
    }

    #[test]
    fn joins_and_leaves_within_a_window_cancel() {
        let budget = budget();
        let mut group = Group::new(false);
        group.local(Some("ann"), true, &budget, 0);
        group.local(Some("bob"), true, &budget, 0);
        let window = group.window(&budget);
        let mut changes = window.changes.clone();
        changes.sort();
        assert_eq!(changes, [("ann".into(), true), ("bob".into(), true)]);
        assert_eq!(window.local.len(), 2);
        // ann leaves and comes back, bob comes a second time: no news.
        group.local(Some("ann"), false, &budget, 0);
        group.local(Some("ann"), true, &budget, 0);
        group.local(Some("bob"), true, &budget, 0);
        let window = group.window(&budget);
        assert!(window.changes.is_empty(), "{window:?}");
        let mut local = window.local;
        local.sort();
        assert_eq!(local, [("ann".into(), 1), ("bob".into(), 2)]);
        group.local(Some("ann"), false, &budget, 0);
        let window = group.window(&budget);
        assert_eq!(window.changes, [("ann".into(), false)]);
        assert_eq!(window.local, [("ann".into(), 0)]);
        assert_eq!(group.len(), 1, "ann is forgotten once announced gone");
        assert_eq!(group.presence(), (vec![("bob".into(), 2)], 0));
    }

    #[test]
    fn another_edge_holding_a_user_keeps_it_present() {
        let budget = budget();
        let mut group = Group::new(false);
        group.receive(1, change(1, &[("ann", 2)], Some(3)), &budget, 0);
        group.local(Some("ann"), true, &budget, 0);
        group.local(None, true, &budget, 0);
        assert_eq!(group.window(&budget).changes, [("ann".into(), true)]);
        assert_eq!(group.presence(), (vec![("ann".into(), 3)], 4));
        assert_eq!(group.remote_count("ann"), 2);
        group.local(Some("ann"), false, &budget, 0);
        assert!(group.window(&budget).changes.is_empty(), "still on edge 1");
        // A change not newer than the last one applied is dropped.
        group.receive(1, change(1, &[("ann", 0)], None), &budget, 0);
        assert_eq!(group.remote_count("ann"), 2);
        group.receive(1, change(2, &[("ann", 0)], Some(0)), &budget, 0);
        assert_eq!(group.window(&budget).changes, [("ann".into(), false)]);
        assert_eq!(group.presence(), (vec![], 1));
    }

    #[test]
    fn a_first_seed_is_not_announced_and_buffered_changes_apply_after_it() {
        let budget = budget();
        let mut group = Group::new(true);
        assert!(group.start_sync(1));
        assert!(!group.start_sync(1), "one gathering at a time");
        group.local(Some("me"), true, &budget, 0);
        // Buffered: one change the seed already covers, one after it.
        group.receive(1, change(5, &[("ann", 1)], None), &budget, 0);
        group.receive(1, change(9, &[("bob", 1)], None), &budget, 0);
        assert!(group.window(&budget).changes.is_empty(), "pending");
        let seed = Change {
            full: true,
            ..change(7, &[("ann", 1), ("carl", 2)], Some(1))
        };
        assert!(group.seed(&[(1, seed)], &budget, 0));
        assert!(group.synced());
        let (users, anonymous) = group.presence();
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["ann", "bob", "carl", "me"]);
        assert_eq!(anonymous, 1);
        let mut news = group.window(&budget).changes;
        news.sort();
        assert_eq!(
            news,
            [("bob".into(), true), ("me".into(), true)],
            "the seed is not news; what came after it, and this edge's own user, are"
        );
        // This edge's own user another edge holds too is not.
        let mut users = Group::new(true);
        assert!(users.start_sync(1));
        users.local(Some("me"), true, &budget, 0);
        users.local(Some("ann"), true, &budget, 0);
        let seed = Change {
            full: true,
            ..change(3, &[("ann", 1)], None)
        };
        assert!(users.seed(&[(1, seed)], &budget, 0));
        assert_eq!(users.window(&budget).changes, [("me".into(), true)]);
        // A resync announces what it changes.
        group.resync();
        assert!(group.start_sync(1));
        let seed = Change {
            full: true,
            ..change(20, &[("ann", 1)], Some(0))
        };
        assert!(group.seed(&[(1, seed)], &budget, 0));
        let mut changes = group.window(&budget).changes;
        changes.sort();
        assert_eq!(changes, [("bob".into(), false), ("carl".into(), false)]);
    }

    #[test]
    fn an_overflowing_buffer_asks_for_another_seed() {
        let budget = budget();
        let mut group = Group::new(true);
        assert!(group.start_sync(1));
        let big: Vec<(String, u32)> = (0..MAX_SYNC_BUFFER / 8)
            .map(|n| (format!("u{n}"), 1))
            .collect();
        let mut change = change(1, &[], None);
        change.users = big;
        group.receive(1, change, &budget, 0);
        assert!(!group.seed(&[], &budget, 0));
        assert!(!group.synced());
        assert!(group.start_sync(1), "gathered again");
        assert!(group.seed(&[], &budget, 0));
    }

    #[test]
    fn a_removed_edge_takes_its_users_and_the_budget_bounds_the_view() {
        let budget = Budget::new(Entry::bytes("ann", 1) + Entry::bytes("bob", 1));
        let mut group = Group::new(false);
        group.receive(
            1,
            change(1, &[("ann", 1), ("bob", 1), ("carl", 1)], None),
            &budget,
            0,
        );
        assert_eq!(budget.refused.load(Ordering::Relaxed), 1, "carl left out");
        assert_eq!(group.window(&budget).changes.len(), 2);
        group.remove_node(1, &budget, 5);
        let mut changes = group.window(&budget).changes;
        changes.sort();
        assert_eq!(changes, [("ann".into(), false), ("bob".into(), false)]);
        assert_eq!(group.len(), 0);
        assert_eq!(budget.used(), 0, "every byte given back");
        assert_eq!(group.changed_since(5).len(), 0);
    }

    #[test]
    fn own_state_is_what_this_edge_holds() {
        let budget = budget();
        let mut group = Group::new(false);
        group.local(Some("ann"), true, &budget, 0);
        group.local(Some("bob"), true, &budget, 0);
        group.local(Some("bob"), false, &budget, 0);
        group.local(None, true, &budget, 0);
        group.receive(1, change(1, &[("carl", 1)], None), &budget, 0);
        assert_eq!(group.own(), (vec![("ann".into(), 1)], 1));
        let mut local = group.window(&budget).local;
        local.sort();
        assert_eq!(local, [("ann".into(), 1), ("bob".into(), 0)]);
        assert!(!group.locally_empty());
        group.local(Some("ann"), false, &budget, 0);
        group.local(None, false, &budget, 0);
        group.window(&budget);
        assert!(group.locally_empty());
    }
}

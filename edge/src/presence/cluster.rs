//! The presence task of an edge: its clocks and its side of the bus.
//!
//! - Every `presence.interval`: ends the window ([`Presence::window`]):
//!   publishes this edge's changes (in a cluster), pushes each topic's net
//!   changes to its local subscribers, sends the online events.
//! - Every `presence.heartbeat`: publishes the heartbeat, drops the edges
//!   silent for three of theirs. When this edge's own clock jumped (the
//!   process was stopped) or its NATS connection came back, the others may
//!   have dropped it and it may have missed changes: it publishes its
//!   whole state and seeds every group again.
//! - Seeds new groups, a few at a time: subscribes to the topic's
//!   presence subject (through [`Interest`], confirmed by the server), then
//!   gathers every edge's own state ([`Command::Tracked`]) within the
//!   control deadline, expecting the edges it knows alive (until it has
//!   heard every heartbeat once after its start, it waits the deadline
//!   out).
//!
//! Standalone ([`run_local`]) only the window clock runs: no other edge.

use super::events::Events;
use super::{GroupKey, Presence, Tick};
use crate::hub::Hub;
use crate::interest::{Interest, Key};
use futures_util::StreamExt;
use gpush_common::Subjects;
use gpush_common::control::{Command, DEFAULT_CONTROL_TIMEOUT};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Seeds gathered at once.
const MAX_SYNCS: usize = 16;
/// Wait before a failed seed (the bus away) is gathered again.
const RETRY_SEED: Duration = Duration::from_millis(500);
/// Time after the first heartbeat by which every live edge has answered
/// it, beyond one heartbeat interval.
const SETTLE_MARGIN: Duration = Duration::from_millis(250);

/// What the presence task of a cluster edge works with.
pub(crate) struct Cluster {
    pub(crate) presence: Arc<Presence>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) client: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) interest: Interest,
    pub(crate) events: Option<Events>,
    /// `presence.interval`, `presence.heartbeat`.
    pub(crate) interval: Duration,
    pub(crate) heartbeat: Duration,
}

/// Half the server's `max_payload`: room for headers and protocol lines.
fn max_bytes(client: &async_nats::Client) -> usize {
    (client.server_info().max_payload / 2).max(4096)
}

impl Cluster {
    /// Runs until `shutdown`; then ends the last window (this edge's
    /// connections are gone by then: its users leave everywhere) and says
    /// bye.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let presence = &self.presence;
        let mut heartbeats = match self
            .client
            .subscribe(self.subjects.presence_heartbeat())
            .await
        {
            Ok(heartbeats) => heartbeats,
            Err(e) => {
                // Only when the client is closed.
                tracing::error!(error = %e, "presence heartbeat subscription failed");
                return;
            }
        };
        let mut users = if presence.tracks_users() {
            match self.client.subscribe(self.subjects.presence_users()).await {
                Ok(users) => Some(users),
                Err(e) => {
                    tracing::error!(error = %e, "presence users subscription failed");
                    return;
                }
            }
        } else {
            None
        };
        self.beat(true, false).await;
        let settled_at = Instant::now() + self.heartbeat + SETTLE_MARGIN;
        let mut window = tokio::time::interval(self.interval);
        window.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        let mut connects = self.connects();
        let syncs = Arc::new(Semaphore::new(MAX_SYNCS));
        let (synced_tx, mut synced) = mpsc::channel::<()>(MAX_SYNCS);
        // Whether groups may wait for a seed: looked for (every group
        // scanned) only then, not on every message.
        let mut look = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = window.tick() => {
                    let tick = presence.window(&self.hub, max_bytes(&self.client));
                    self.carry_out(tick).await;
                }
                _ = beat.tick() => {
                    let now = Instant::now();
                    let gap = now.duration_since(last_beat);
                    last_beat = now;
                    let seen = self.connects();
                    if gap > self.heartbeat * 2 || seen != connects {
                        tracing::warn!(
                            ?gap,
                            reconnected = seen != connects,
                            "presence: this edge was frozen or cut off; telling its state again"
                        );
                        connects = seen;
                        presence.touch_all();
                        self.publish(presence.full_state(max_bytes(&self.client))).await;
                        presence.resync_all();
                    }
                    let taken = presence.expire();
                    if let Some(events) = &self.events {
                        events.send(taken, &presence.stats).await;
                    }
                    self.beat(false, false).await;
                    // Seeds that failed are tried again.
                    look = true;
                }
                Some(message) = heartbeats.next() => {
                    if presence.heartbeat(&message.payload) {
                        self.beat(false, false).await;
                    }
                }
                Some(message) = next(&mut users) => {
                    presence.receive(&GroupKey::Users, &message.payload);
                }
                () = presence.wake.notified() => look = true,
                Some(()) = synced.recv() => look = true,
            }
            if look {
                look = false;
                self.start_syncs(&syncs, &synced_tx, Instant::now() >= settled_at);
            }
        }
        let tick = presence.window(&self.hub, max_bytes(&self.client));
        self.carry_out(tick).await;
        self.beat(false, true).await;
        let _ = self.client.flush().await;
    }

    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Publishes this edge's heartbeat.
    async fn beat(&self, hello: bool, bye: bool) {
        let payload = self.presence.own_heartbeat(hello, bye);
        if let Err(e) = self
            .client
            .publish(self.subjects.presence_heartbeat(), payload.into())
            .await
        {
            tracing::warn!(error = %e, "presence heartbeat not published");
        }
    }

    /// Publishes changes on their groups' subjects.
    async fn publish(&self, changes: Vec<(GroupKey, super::wire::Change)>) {
        for (key, change) in changes {
            let subject = match &key {
                GroupKey::Topic(topic) => self.subjects.presence_topic(topic),
                GroupKey::Users => self.subjects.presence_users(),
            };
            // Plain data: encoding cannot fail.
            let payload = serde_json::to_vec(&change).unwrap_or_default();
            if let Err(e) = self.client.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "presence change not published");
            }
        }
    }

    /// Publishes a window's changes, pushes its presence changes, sends its
    /// events.
    async fn carry_out(&self, tick: Tick) {
        let Tick {
            publish,
            pushes,
            events,
        } = tick;
        self.publish(publish).await;
        for (topic, changes) in &pushes {
            self.presence.deliver(&self.hub, topic, changes);
        }
        if let Some(sink) = &self.events {
            sink.send(events, &self.presence.stats).await;
        }
    }

    /// Starts gathering the seeds of the groups that wait for one, while
    /// fewer than [`MAX_SYNCS`] are under way.
    fn start_syncs(&self, syncs: &Arc<Semaphore>, done: &mpsc::Sender<()>, settled: bool) {
        let free = syncs.available_permits();
        if free == 0 {
            return;
        }
        for (key, gathering) in self
            .presence
            .take_unsynced(free, |topic| self.hub.has_topic(topic))
        {
            let Ok(permit) = syncs.clone().try_acquire_owned() else {
                self.presence.seeded(&key, gathering, None);
                continue;
            };
            let seed = Seed {
                presence: self.presence.clone(),
                client: self.client.clone(),
                subjects: self.subjects.clone(),
                interest: self.interest.clone(),
                settled,
            };
            let done = done.clone();
            tokio::spawn(
                async move {
                    seed.gather(key, gathering).await;
                    drop(permit);
                    let _ = done.try_send(());
                }
                .in_current_span(),
            );
        }
    }
}

/// The next message of an optional subscription (pending forever without
/// one).
async fn next(subscriber: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match subscriber {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// The most bytes of answers one seed gathering holds: `max_bytes` (the
/// presence bound) shared by the [`MAX_SYNCS`] gathered at once. A larger
/// seed fails and is gathered again.
fn seed_max_bytes(max_bytes: usize) -> usize {
    (max_bytes / MAX_SYNCS).max(1)
}

/// What gathering one group's seed needs.
struct Seed {
    presence: Arc<Presence>,
    client: async_nats::Client,
    subjects: Subjects,
    interest: Interest,
    /// Every live edge is known: stop once they all answered.
    settled: bool,
}

impl Seed {
    /// Gathers the seed of `key` as gathering number `gathering`.
    async fn gather(self, key: GroupKey, gathering: u64) {
        if let GroupKey::Topic(topic) = &key {
            // The changes must arrive (and be buffered) before the states
            // they follow are asked for.
            self.interest.ensure(Key::Presence(topic.clone())).await;
        }
        let expected = self.settled.then(|| self.presence.live_ids());
        let command = Command::Tracked {
            topic: key.topic().map(str::to_owned),
        };
        let gathered = gpush_common::bus::gather(
            &self.client,
            self.subjects.control(),
            &command,
            expected,
            DEFAULT_CONTROL_TIMEOUT,
            seed_max_bytes(self.presence.config.max_bytes),
        )
        .await;
        match gathered {
            Ok(gathered) => {
                if !gathered.missing.is_empty() {
                    tracing::debug!(
                        missing = ?gathered.missing,
                        group = ?key,
                        "presence seed without some edges: their users appear as they change"
                    );
                }
                self.presence
                    .seeded(&key, gathering, Some(gathered.tracked()));
            }
            Err(e) => {
                tracing::debug!(error = %e, group = ?key, "presence seed failed; retrying");
                tokio::time::sleep(RETRY_SEED).await;
                self.presence.seeded(&key, gathering, None);
            }
        }
    }
}

/// The presence task of a standalone edge: windows only.
pub(crate) async fn run_local(
    presence: Arc<Presence>,
    hub: Arc<Hub>,
    events: Option<Events>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut window = tokio::time::interval(interval);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = window.tick() => false,
        };
        let tick = presence.window(&hub, usize::MAX);
        for (topic, changes) in &tick.pushes {
            presence.deliver(&hub, topic, changes);
        }
        if let Some(sink) = &events {
            sink.send(tick.events, &presence.stats).await;
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PresenceConfig;

    #[test]
    fn the_seeds_under_way_together_stay_within_presence_max_bytes() {
        let max_bytes = PresenceConfig::default().max_bytes;
        assert!(seed_max_bytes(max_bytes) * MAX_SYNCS <= max_bytes);
        assert_eq!(seed_max_bytes(1), 1);
    }
}

//! What the edge counts, and how `GET /metrics` reads it.
//!
//! The fan-out and write paths run for every connection a push reaches, up
//! to tens of thousands per push, so they never touch a counter that every
//! connection shares:
//!
//! - gauges (connections, subscriptions, topics) are read from the hub's
//!   own state at scrape time;
//! - pushes, deliveries, writes and push-to-write latency are the hub's own
//!   counters ([`crate::hub::stats`]), read here at scrape time;
//! - rare events (handshakes, disconnects, logins ended at expiry, etcd
//!   registration) are plain counters in [`EdgeMetrics`].

use crate::close::Disconnect;
use crate::hub::Hub;
use crate::hub::stats::BATCH_BUCKETS;
use crate::presence::Presence;
use gpush_common::metrics::{Labels, PUSH_KINDS, encode_counter, encode_gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// How a WebSocket handshake on `/ws` ended: the `result` label of
/// `gpush_edge_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// Upgraded; the connection is served.
    Ok,
    /// Not a WebSocket upgrade, or no `Sec-WebSocket-Key`: 400.
    BadRequest,
    /// A WebSocket version other than 13: 426.
    BadVersion,
    /// The edge is draining: 503.
    ShuttingDown,
    /// Answered 101, but the connection could not be taken over.
    Failed,
    /// The edge holds `max_connections`: 503.
    Full,
    /// The `Origin` is not in `allowed_origins`: 403.
    Forbidden,
}

impl Handshake {
    /// Every result, in label order.
    pub(crate) const ALL: [Handshake; 7] = [
        Handshake::Ok,
        Handshake::BadRequest,
        Handshake::BadVersion,
        Handshake::ShuttingDown,
        Handshake::Failed,
        Handshake::Full,
        Handshake::Forbidden,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::BadRequest => "bad_request",
            Handshake::BadVersion => "bad_version",
            Handshake::ShuttingDown => "shutting_down",
            Handshake::Failed => "failed",
            Handshake::Full => "full",
            Handshake::Forbidden => "forbidden_origin",
        }
    }
}

/// Counters of the etcd registration; cheap to clone (shared counts).
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistrationMetrics {
    /// Records written under a new lease.
    pub(crate) registrations: Counter,
    /// Lease keep-alives etcd acknowledged.
    pub(crate) lease_renewals: Counter,
    /// Registrations lost (etcd unreachable, lease expired) and retried.
    pub(crate) failures: Counter,
}

/// The edge's metrics: its registry and the counters of rare events.
#[derive(Debug)]
pub(crate) struct EdgeMetrics {
    registry: Registry,
    handshakes: [Counter; Handshake::ALL.len()],
    disconnects: [Counter; Disconnect::ALL.len()],
    logins_expired: Counter,
    logins_crowded: Counter,
    control: [Counter; CONTROL_OPS.len()],
    /// Passed to the registration task.
    pub(crate) registration: RegistrationMetrics,
}

/// The counters of `family` for `label` = each of `values`, created now so
/// that every series shows from the first scrape, zero included.
fn series<const N: usize>(
    family: &Family<Labels<1>, Counter>,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    values.map(|value| family.get_or_create_owned(&[(label, value)]))
}

/// The `op` label values of `gpush_edge_control_commands_total`.
const CONTROL_OPS: [&str; 8] = [
    "disconnect",
    "logout",
    "subscribe",
    "unsubscribe",
    "presence",
    "online",
    "topics",
    "tracked",
];

impl EdgeMetrics {
    /// Registers every edge metric: `hub`'s state and counts, the NATS
    /// client's figures (None in standalone mode) and the counters here.
    pub(crate) fn new(
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        nats: Option<async_nats::Client>,
    ) -> Self {
        let mut registry = gpush_common::metrics::new_registry();
        let handshakes = Family::<Labels<1>, Counter>::default();
        registry.register(
            "edge_handshakes",
            "WebSocket handshakes on /ws, by result",
            handshakes.clone(),
        );
        let disconnects = Family::<Labels<1>, Counter>::default();
        registry.register(
            "edge_disconnects",
            "Connections ended, by reason",
            disconnects.clone(),
        );
        let logins_expired = Counter::default();
        registry.register(
            "edge_logins_expired",
            "Logins ended because their token expired (push 10004), the connection kept",
            logins_expired.clone(),
        );
        let logins_crowded = Counter::default();
        registry.register(
            "edge_logins_crowded",
            "Logins refused (30005) because the user had max_connections_per_user here",
            logins_crowded.clone(),
        );
        let control = Family::<Labels<1>, Counter>::default();
        registry.register(
            "edge_control_commands",
            "Server API commands this edge carried out, by op",
            control.clone(),
        );
        let registration = RegistrationMetrics::default();
        registry.register(
            "edge_registrations",
            "Times this edge wrote its etcd record under a new lease",
            registration.registrations.clone(),
        );
        registry.register(
            "edge_lease_renewals",
            "etcd lease keep-alives acknowledged",
            registration.lease_renewals.clone(),
        );
        registry.register(
            "edge_registration_failures",
            "etcd registrations lost (etcd unreachable or lease expired) and retried",
            registration.failures.clone(),
        );
        registry.register_with_unit(
            "edge_push_to_write",
            "Sampled time from the push API accepting a push to its frame being written to \
             the first connection of this edge",
            Unit::Seconds,
            hub.stats.latency.histogram(),
        );
        registry.register_collector(Box::new(HubCollector { hub }));
        registry.register_collector(Box::new(PresenceCollector { presence }));
        if let Some(client) = nats {
            gpush_common::metrics::register_bus(&mut registry, client);
        }
        Self {
            handshakes: series(&handshakes, "result", Handshake::ALL.map(Handshake::as_str)),
            disconnects: series(
                &disconnects,
                "reason",
                Disconnect::ALL.map(Disconnect::as_str),
            ),
            logins_expired,
            logins_crowded,
            control: series(&control, "op", CONTROL_OPS),
            registry,
            registration,
        }
    }

    pub(crate) fn handshake(&self, result: Handshake) {
        self.handshakes[result as usize].inc();
    }

    /// Counts a connection that ended.
    pub(crate) fn disconnect(&self, reason: Disconnect) {
        self.disconnects[reason as usize].inc();
    }

    /// Counts a login refused by `max_connections_per_user`.
    pub(crate) fn login_crowded(&self) {
        self.logins_crowded.inc();
    }

    /// Counts a server API command (`op` as [`Command::name`]).
    ///
    /// [`Command::name`]: gpush_common::control::Command::name
    pub(crate) fn control(&self, op: &str) {
        if let Some(at) = CONTROL_OPS.iter().position(|o| *o == op) {
            self.control[at].inc();
        }
    }

    /// Counts a login ended at its token's expiry.
    pub(crate) fn login_expired(&self) {
        self.logins_expired.inc();
    }

    /// Every metric in the Prometheus text format.
    pub(crate) fn render(&self) -> Result<String, fmt::Error> {
        gpush_common::metrics::render(&self.registry)
    }
}

/// Reads the hub at scrape time.
#[derive(Debug)]
struct HubCollector {
    hub: Arc<Hub>,
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let hub = &self.hub;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        encode_gauge(
            &mut encoder,
            "edge_connections",
            "Open WebSocket connections.",
            gauge(hub.connections() as usize),
        )?;
        let counts = hub.counts();
        let mut subscriptions = encoder.encode_descriptor(
            "edge_subscriptions",
            "Subscriptions of connections to topics, by kind (public, or private to the \
             logged-in user).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("public", counts.public_subscriptions),
            ("private", counts.private_subscriptions),
        ] {
            let labels = [("kind", kind)];
            prometheus_client::metrics::gauge::ConstGauge::new(gauge(n))
                .encode(subscriptions.encode_family(&labels)?)?;
        }
        encode_gauge(
            &mut encoder,
            "edge_topics",
            "Distinct public topics with at least one subscriber here.",
            gauge(counts.topics),
        )?;
        encode_gauge(
            &mut encoder,
            "edge_users",
            "Distinct users logged in here.",
            gauge(counts.users),
        )?;

        let mut pushes = encoder.encode_descriptor(
            "edge_pushes_received",
            "Pushes this edge received for fan-out, by route kind (everyone, topic, or user: \
             user-wide and private).",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in PUSH_KINDS.iter().zip(hub.stats.pushes_received()) {
            let labels = [("kind", *kind)];
            ConstCounter::new(n).encode(pushes.encode_family(&labels)?)?;
        }
        encode_counter(
            &mut encoder,
            "edge_bus_misrouted",
            "Bus messages dropped because the route in their envelope does not match the \
             subject they arrived on.",
            None,
            hub.stats.misrouted.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_history_filled",
            "Pushes this edge missed on the bus (NATS away, a failover) and recovered \
             from history before delivering the next one.",
            None,
            hub.stats.filled.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_history_gaps",
            "Times this edge missed pushes of a stream and could not recover them from \
             history: its followers got push 10007.",
            None,
            hub.stats.gaps.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_deliveries",
            "Push frames queued to connections: one per connection a push reached.",
            None,
            hub.stats.frames.load(Ordering::Relaxed),
        )?;

        let writes = hub.stats.writes.totals();
        encode_counter(
            &mut encoder,
            "edge_frames_written",
            "WebSocket frames written to clients (pushes, replies, pings, closes).",
            None,
            writes.frames,
        )?;
        encode_counter(
            &mut encoder,
            "edge_written",
            "Bytes written to client sockets.",
            Some(&Unit::Bytes),
            writes.bytes,
        )?;
        let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .iter()
            .map(|&bound| bound as f64)
            .chain([f64::INFINITY])
            .zip(writes.buckets)
            .collect();
        encoder
            .encode_descriptor(
                "edge_write_batch_frames",
                "Frames written per flush of one connection (everything it had queued, in \
                 vectored writes).",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(writes.frames as f64, writes.flushes, &buckets, None)
    }
}

/// Reads the presence tracker at scrape time.
#[derive(Debug)]
struct PresenceCollector {
    presence: Arc<Presence>,
}

impl Collector for PresenceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let presence = &self.presence;
        let stats = &presence.stats;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (entries, pending) = presence.counts();
        encode_gauge(
            &mut encoder,
            "edge_presence_entries",
            "Tracked (group, user) entries of the presence view: a group is a topic with \
             presence and a local subscriber, or the logged-in users.",
            gauge(entries),
        )?;
        encode_gauge(
            &mut encoder,
            "edge_presence_pending",
            "Presence groups waiting for their seed (the other edges' state).",
            gauge(pending),
        )?;
        encode_gauge(
            &mut encoder,
            "edge_presence_edges",
            "Other edges this edge's presence tracker knows alive (heard within three of \
             their heartbeats).",
            gauge(presence.live_ids().len()),
        )?;
        encode_gauge(
            &mut encoder,
            "edge_presence_view_bytes",
            "Estimated bytes of the presence view (bounded by presence.max_bytes).",
            gauge(presence.budget.used()),
        )?;
        encode_counter(
            &mut encoder,
            "edge_presence_view_refused",
            "Other edges' users left out of the presence view: presence.max_bytes reached.",
            None,
            presence.budget.refused.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_presence_windows",
            "Windows of a topic whose changes were pushed as 10005/10006 frames (one per \
             topic and window, framed once for all its subscribers).",
            None,
            stats.windows.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_presence_changes",
            "10005/10006 frames framed (each sent to every local subscriber of its topic).",
            None,
            stats.changes.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_presence_overflows",
            "Windows of a topic with more than presence.max_changes changes: one 10010 instead.",
            None,
            stats.overflows.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_presence_edges_expired",
            "Other edges taken for dead (silent for three presence heartbeats).",
            None,
            stats.expired.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_online_events",
            "User online/offline events this edge published (or queued for the webhook).",
            None,
            stats.events.load(Ordering::Relaxed),
        )?;
        encode_counter(
            &mut encoder,
            "edge_online_events_dropped",
            "Online events dropped: the webhook queue was full (oldest first), or the \
             webhook refused a batch for good (4xx).",
            None,
            stats.events_dropped.load(Ordering::Relaxed),
        )
    }
}

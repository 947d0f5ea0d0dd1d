//! What every gpush process shares: the shape of a push, how it is named on
//! the bus, how it is encoded there, and the small operational helpers.
//!
//! # Layout
//! - [`push`]: a push message, its route (everyone / topic / user) and the
//!   rules for valid topic and uid names.
//! - [`subject`]: the NATS subject a route is published under. Names are
//!   escaped so that no topic or uid can act as a wildcard or reach another
//!   topic's or user's subject.
//! - [`envelope`]: the MessagePack body of a bus message.
//! - [`history`]: the pushes kept per topic and user for recovery, and
//!   the `[history]` config.
//! - [`bus`]: the publishing side of the bus: NATS, or in-process for
//!   standalone mode.
//! - [`control`]: the server API's commands to the edges (disconnect,
//!   logout, subscribe a user; presence, online, topics) and how the
//!   edges' answers are gathered.
//! - [`registry`]: the etcd key and record an edge registers itself under.
//! - [`backoff`]: the jittered, capped waits of every reconnect loop.
//! - [`config`], [`telemetry`], [`shutdown`]: loading TOML config, tracing
//!   set-up, and the signal that starts a graceful shutdown.
//! - [`net`]: binding a listener with an error that names it.
//! - [`rate`]: the token bucket behind the per-connection request limit
//!   (edge) and the push rate limit (ingress).
//! - [`metrics`]: the registry behind `GET /metrics`, its Prometheus text
//!   rendering, and the NATS connection's figures.
//! - [`tls`]: rustls server configs from PEM files (certificate, key,
//!   client CA bundle), and their config checks.

pub mod backoff;
pub mod bus;
pub mod config;
pub mod control;
pub mod envelope;
pub mod history;
pub mod metrics;
pub mod net;
pub mod push;
pub mod rate;
pub mod registry;
pub mod shutdown;
pub mod subject;
pub mod telemetry;
pub mod tls;

pub use bus::{Bus, BusError, LocalDelivery};
pub use push::{NameError, Push, Route};
pub use subject::Subjects;

//! End-to-end test harness for gpush.
//!
//! Tests start the real thing: `nats-server` and `etcd` as child processes
//! on free ports, ingress and edges in-process on port 0 (or the real
//! `gpush-edge` binary when a test needs to signal it), and WebSocket
//! clients that speak the client protocol. Everything started is stopped on
//! `Drop`, and every wait is bounded by a timeout, so a broken server makes a
//! test fail, never hang.
//!
//! # Layout
//! - [`procs`]: child processes: [`NatsServer`], [`Etcd`], [`EdgeProcess`],
//!   plus [`free_port`].
//! - [`servers`]: in-process servers: [`IngressHandle`], [`EdgeHandle`].
//! - [`deploy`]: whole deployments behind one [`Deployment`] trait:
//!   [`Cluster`] (NATS + etcd + ingress + n edges) and [`Standalone`] (one
//!   edge with its own push API), so delivery tests run against both.
//! - [`api`]: the push API client ([`PushApi`]): HTTP, gRPC, batch and the
//!   legacy `order.Proxy` method, selected by [`Via`].
//! - [`client`]: [`WsClient`], a WebSocket client of the client protocol.
//! - [`roaming`]: a fleet of clients that follow `/v1/connect` and move
//!   to another edge when theirs drains (rolling restarts).
//! - [`silent`]: [`silent::SilentClient`], a hand-driven WebSocket client
//!   that never answers pings (to test the idle timeout).
//! - [`frames`]: protocol codes and the exact JSON of each kind of push.
//! - [`auth`]: JWT minting with test keys and a mock auth webhook.
//! - [`fuzzing`]: the fuzz harnesses of the client frame and request
//!   parsers, the bus envelope and the push API bodies, shared by the
//!   cargo-fuzz targets in `fuzz/` and the corpus replay test.
//! - [`bench`]: the `gpush-bench` benchmark program (load clients, baseline
//!   server, scenarios, report).

pub mod api;
pub mod auth;
pub mod bench;
pub mod client;
pub mod deploy;
pub mod frames;
pub mod fuzzing;
pub mod procs;
pub mod roaming;
pub mod servers;
pub mod silent;

pub use api::{PushApi, PushMsg, Via};
pub use client::WsClient;
pub use deploy::{Cluster, Deployment, Standalone};
pub use procs::{EdgeProcess, Etcd, NatsServer, free_port};
pub use servers::{EdgeHandle, IngressHandle};

use std::time::Duration;

/// How long a test waits for something that should happen (a reply, a
/// push, a process start) before failing.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test listens to make sure that something does *not* arrive.
/// Loopback delivery takes milliseconds, so a push that was wrongly routed
/// shows up well within this window.
pub const QUIET: Duration = Duration::from_millis(400);

/// Installs a tracing subscriber once, so `RUST_LOG=gpush=debug cargo test`
/// shows what the in-process servers do. Quiet (errors only) by default.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

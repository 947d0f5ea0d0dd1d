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
//! - [`roaming`]: a fleet of clients that follow `/v1/connect`, move to
//!   another edge when theirs drains or dies and resubscribe there with
//!   `since`, counting per client what they missed (rolling restarts, edge
//!   crashes, NATS failovers); and a [`roaming::Pusher`] of numbered pushes.
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
pub mod cut;
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

use std::fmt::Display;
use std::time::Duration;

/// How long a test waits for something that should happen (a reply, a
/// push, a process start) before failing.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test listens to make sure that something does *not* arrive.
/// Loopback delivery takes milliseconds, so a push that was wrongly routed
/// shows up well within this window.
pub const QUIET: Duration = Duration::from_millis(400);

/// How often [`wait_for`] and [`wait_until`] check their condition.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Checks `probe` every few milliseconds until it returns `Ok(value)`, and
/// returns that value. Panics naming `what` if that takes longer than
/// `within` (a check still running then counts as too late), with the
/// probe's last `Err`: what it saw instead, for the failure message.
///
/// For a condition that cannot be awaited directly (a metric, an etcd
/// record, a count kept by another task), instead of sleeping "long
/// enough".
pub async fn wait_for<T, E, F, Fut>(within: Duration, what: impl Display, mut probe: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(last)) => last.to_string(),
            Err(_) => "(the last check was still running)".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last seen: {last}");
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// [`wait_for`] a condition that has nothing to report while false.
pub async fn wait_until<F, Fut>(within: Duration, what: impl Display, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(within, what, || {
        let check = cond();
        async move { if check.await { Ok(()) } else { Err("not yet") } }
    })
    .await
}

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

/// `GET <base>/readyz`: its status code, 0 when unreachable.
pub async fn readyz(base: &str) -> u16 {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}
